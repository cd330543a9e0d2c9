"""Storing what the application answered: whether it may be kept, as what,
for how long, under which key; the steps of the request flow that decide it
(:class:`~pagecache.middleware.PageCacheMiddleware` is made of these and of
:mod:`pagecache.delivery`'s).

A response is stored when nothing forbids it (:mod:`pagecache.http`: syntax,
cookies, Vary; a static-looking URL answered with another type), for as long
as :mod:`pagecache.freshness` says, compressed when worth it
(:mod:`pagecache.compression`) or parsed into ESI parts
(:mod:`pagecache.fragments`), with its tags; a 304 refreshes the page it
revalidated (:mod:`pagecache.revalidation`). Otherwise the URL is remembered
as uncacheable for a while (hit-for-miss), unless a stale copy is kept.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Tuple, Union

from . import freshness, http, revalidation, urls
from .capture import Captured
from .entry import ESI, GENERATED_ETAG, SHARED, Page, Pass, VaryMarker, header_value
from .exchange import Exchange, NotStored, Stored
from .fragments import Fragments
from .tags import parse_header

log = logging.getLogger("pagecache")

ERROR_PASS_TTL = 1.0  # seconds a URL that answered 5xx (with no stale copy) skips the lock
TOO_LARGE = "larger than max_entry_size"  # a pass marker's reason: don't buffer the next one to compress it


class StoringSteps:
    """The middleware's steps that store answers (a part of its class)."""

    def _buffer_limit(self, headers: http.Headers) -> int:
        return self.compression.buffer_limit(self.max_entry_size, headers)

    def store_response(self, exchange: Exchange, captured: Captured) -> Union[Stored, NotStored]:
        """Store the application's response if it may be stored, for as long
        as :mod:`pagecache.freshness` says; a 304 refreshes the page it
        revalidated. Otherwise remember the URL as uncacheable for a while
        (hit-for-miss), unless a stale copy is kept in reserve: that one stays,
        and the next request past its TTL asks again while the others are
        served stale."""
        received = self.clock()
        code = http.status_code(captured.status)
        cached = exchange.cached
        if code == 304 and revalidation.conditional(cached):  # the answer to the question fetch asked
            return self._revalidated(exchange, captured, cached, received)
        reason = self._unstorable(captured) or self._deceptive(exchange, captured)
        decision = None
        if reason is None:
            decision = self.policy.decide(code, captured.headers, self._defaults[exchange.route.rule],
                                          exchange.requested, received)
            reason = decision.reason
        if reason is not None:
            return self._not_stored(exchange, captured, reason, received)
        body = captured.body
        captured.close()
        page = self._page(captured.status, captured.headers, body, decision)
        if type(page) is str:
            return self._not_stored(exchange, captured, page, received)
        self.tags.ensure(page.tags, page.fetched, received)
        return self._stored(exchange, page, http.set_cookies(captured.headers), received)

    def _not_stored(self, exchange: Exchange, captured: Captured, reason: str, received: float) -> NotStored:
        """Remember the URL as uncacheable for a while, unless a stale copy is kept in reserve."""
        self._count(exchange, "uncacheable")
        remember = self.uncacheable_ttl
        if http.status_code(captured.status) >= 500:
            # long enough to release the requests waiting now, short
            # enough not to keep a recovered page uncached
            self._count(exchange, "app_errors")
            remember = min(remember, ERROR_PASS_TTL)
        if exchange.fallback is None:
            self.store.save(self.keys.page(exchange.digest), Pass(received, reason), remember)
        return NotStored(captured, reason)

    def _revalidated(self, exchange: Exchange, captured: Captured, cached: Page,
                     received: float) -> Stored:
        """The application said the page is still current: its headers and
        lifetime as the 304 updates them, its body as stored."""
        captured.close()
        self._count(exchange, "revalidations")
        fresh, _ = http.headers_to_store(captured.headers, None, self._dropped_headers)
        headers = revalidation.updated_headers(cached.headers, fresh)
        decision = self.policy.decide(http.status_code(cached.status), headers,
                                      self._defaults[exchange.route.rule], exchange.requested, received)
        cookies = http.set_cookies(captured.headers)
        if decision.reason is not None:
            self.store.delete(self.keys.page(exchange.digest))
            return Stored(cached.replace(headers=headers), cookies, saved=False, shared=False, revalidated=True,
                          why=f"revalidated (304), not stored: {decision.reason}")
        page = cached.replace(headers=headers, stored=decision.stored, fetched=decision.fetched,
                              ttl=decision.ttl, grace=decision.grace,
                              stale=decision.stale, keep=decision.keep,
                              flags=decision.flags + (GENERATED_ETAG if cached.has(GENERATED_ETAG) else ""))
        return self._stored(exchange, page, cookies, received, revalidated=True)

    def _page(self, status: str, headers: http.Headers, body: bytes,
              decision: freshness.Decision) -> Union[Page, str]:
        """The page to store for a response, or why it can't be stored."""
        if ESI in decision.flags and self.esi:
            return self._esi_page(status, headers, body, decision)
        flags = decision.flags.replace(ESI, "").replace(SHARED, "")
        kept, generated = http.headers_to_store(headers, body, self._dropped_headers + tuple(decision.dropped))
        prepared = self.compression.prepare(status, headers, kept, body, flags + (GENERATED_ETAG if generated else ""))
        if type(prepared) is str:
            return prepared
        kept, stored, coding, identity_length, flags = prepared
        if len(stored) > self.max_entry_size:
            return TOO_LARGE + (", even compressed" if coding else "")
        if coding and len(stored) < identity_length:
            self.stats.incr("compressed_bytes_saved", identity_length - len(stored))
        return Page(status, kept, stored, decision.stored, decision.ttl, decision.grace, decision.stale,
                    keep=decision.keep, flags=flags, encoding=coding, identity_length=identity_length,
                    tags=self._tags_of(headers), fetched=decision.fetched)

    def _esi_page(self, status: str, headers: http.Headers, body: bytes,
                  decision: freshness.Decision) -> Union[Page, str]:
        """A page holding ESI: stored parsed, assembled at every delivery."""
        if any(name.lower() == "content-encoding" and value.strip().lower() not in ("", "identity")
               for name, value in headers):
            return "ESI in an encoded body: pagecache processes ESI in identity bodies only"
        try:
            parts = Fragments.prepare(body)
        except ValueError as error:
            log.warning("ESI that does not parse, not stored: %s", error)
            return f"ESI that does not parse: {error}"
        if len(parts) > self.max_entry_size:
            return TOO_LARGE
        kept, _ = http.headers_to_store(headers, None, self._dropped_headers + tuple(decision.dropped))
        kept = [(name, value) for name, value in kept if name.lower() not in ("content-length", "content-encoding")]
        return Page(status, kept, parts, decision.stored, decision.ttl, decision.grace, decision.stale,
                    keep=decision.keep, flags=decision.flags, tags=self._tags_of(headers), fetched=decision.fetched)

    def _tags_of(self, headers: http.Headers) -> Tuple[str, ...]:
        if not self.tag_header:
            return ()
        name = self.tag_header.lower()
        return parse_header(" ".join(value for key, value in headers if key.lower() == name))

    def _unstorable(self, captured: Captured) -> Optional[str]:
        if captured.exc_info is not None:
            return "error response (start_response with exc_info)"
        if not captured.complete:
            if captured.size > self.max_entry_size:
                return TOO_LARGE
            return "body is not bytes"
        return http.unstorable_reason(captured.status, captured.headers, self.store_cookies)

    def _deceptive(self, exchange: Exchange, captured: Captured) -> Optional[str]:
        """A URL that looks like a static file stores only a response of that type."""
        return urls.static_type_mismatch(exchange.environ.get("PATH_INFO", ""),
                                         header_value(captured.headers, "content-type"))

    def _stored(self, exchange: Exchange, page: Page, cookies: http.Headers, now: float,
                revalidated: bool = False) -> Stored:
        """Save ``page`` (see :meth:`_save_page`): the rebuild's outcome, saying what happened."""
        saved = self._save_page(exchange, page, now)
        done = "revalidated (304) and stored" if revalidated else "stored"
        why = done if saved else f"not stored: {self.store.refused()}"
        return Stored(page, cookies, saved, revalidated=revalidated, why=why)

    def _save_page(self, exchange: Exchange, page: Page, now: float) -> bool:
        """Save ``page`` under its variant's key (writing the URL's vary marker
        first when it varies), and keep it in the local tier; whether the
        cache took it."""
        lifetime = max(1.0, page.stored + page.lifetime() - now) + 1
        names = self._vary_names(page.headers)
        digest = exchange.primary
        if names:
            marker = exchange.marker
            if marker is None or marker.names != names:
                marker = VaryMarker(names, os.urandom(8).hex(), now, lifetime)
            else:
                marker = VaryMarker(names, marker.generation, now, lifetime, marker.purged)
            self.store.save(self.keys.page(exchange.primary), marker, lifetime)
            digest = self.keys.variant(exchange.primary, marker.generation,
                                       http.variant_of(exchange.environ, names))
        key = self.keys.page(digest)
        if self.store.save(key, page, lifetime):
            self._count(exchange, "stores")
            if self.local is not None:
                self.local.put(key, page, now)
            return True
        self._count(exchange, "store_failures")
        return False

    def _vary_names(self, headers: http.Headers) -> Tuple[str, ...]:
        """The request headers a page's variants are told apart by: those its
        Vary names, but Accept-Encoding when pagecache serves every encoding
        from one entry."""
        names = http.vary_names(headers)
        if self.compression.on and "accept-encoding" in names:
            names = tuple(name for name in names if name != "accept-encoding")
        return names
