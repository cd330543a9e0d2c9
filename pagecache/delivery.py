"""Delivering: a stored page to its client (the representation it accepts,
its ESI assembled, a 304 when its validators match), an answer that is not
stored (labelled, what is meant for pagecache alone removed, its ESI
processed), and the application's own answer when the cache is not used; and
the labels, counters and log line of each decision. The steps of the request
flow that answer (:class:`~pagecache.middleware.PageCacheMiddleware` is made
of these and of :mod:`pagecache.storing`'s).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

from . import admin, freshness, http
from .capture import Captured, capture
from .compression import Compression
from .entry import ESI, SHARED, Page
from .exchange import BYPASS, HIT, MISS, Exchange, Label, Stored
from .fragments import Failure as FragmentFailure

log = logging.getLogger("pagecache")

StartResponse = Callable[..., Any]


class DeliverySteps:
    """The middleware's steps that answer clients (a part of its class)."""

    def _deliver_fetched(self, exchange: Exchange, rebuilt: Stored) -> List[bytes]:
        """Give the client whose request fetched it the page just stored (or revalidated)."""
        page = rebuilt.page
        now = self.clock()
        fwd = "stale" if exchange.cached is not None else ("vary-miss" if exchange.marker else "uri-miss")
        info = rebuilt.cookies + self.labels.forwarded(MISS, fwd, rebuilt.saved, 304 if rebuilt.revalidated else 0)
        if now - page.stored >= 1:  # it came with an age of its own (an Age header, a Date in the past)
            info = [("Age", str(int(now - page.stored)))] + info
        return self.deliver(exchange, page, MISS, now, rebuilt.why, info)

    def deliver(self, exchange: Exchange, page: Page, label: Label, now: float,
                why: str = "", info: Optional[http.Headers] = None) -> List[bytes]:
        """Answer with a stored page, or a 304 when the request's validators
        match it; labelled (``info``: the labels of a page just fetched),
        counted (a MISS was counted when it was computed) and logged."""
        environ = exchange.environ
        if exchange.shared_only and SHARED not in page.flags:  # rendered for everybody, not shared with cookies
            return self.to_app(exchange, BYPASS, "bypasses", "cookie (the page is not shared)")
        headers, body = page.headers, page.body
        if ESI in page.flags:
            if SHARED in page.flags:
                exchange.route.shared = True
            try:
                headers, body, fragments = self.fragments.assemble(environ, exchange.route, page,
                                                                   exchange.prefetched)
            except Exception as error:  # a fragment failed that nothing stands in for
                log.error("%s: %s", admin.url_of(environ), error, exc_info=not isinstance(error, FragmentFailure))
                self.stats.incr("esi_failures", 1, exchange.route.index)
                return admin.plain(exchange.start_response, "502 Bad Gateway",
                                   "a part of this page could not be made\n")
            self.stats.incr("esi_fragments", len(fragments), exchange.route.index)
            if exchange.started:
                why = f"{why}; fragments: {fragments}" if why else f"fragments: {fragments}"
        elif page.encoding:
            representation = Compression.representation(page, environ.get("HTTP_ACCEPT_ENCODING"))
            if representation is None:
                log.warning("%s: the stored bytes do not decode; asking the application", admin.url_of(environ))
                return self.to_app(exchange, MISS, "misses", "stored bytes do not decode")
            headers, body = representation
        if info is None:
            self._count(exchange, "hits" if label is HIT else "stale")
            info = page.timed(now, self._hit if label is HIT else self._stale)
        if label is HIT and not why and not exchange.started:  # a plain hit (an ESI page's): as on the hit path
            if now >= self._next_hit_record:
                self._record_hit(environ, now)
        else:
            self._decided(exchange, label, why)
        if ("HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ) \
                and http.not_modified(environ, page.status, headers):
            exchange.start_response("304 Not Modified", http.not_modified_headers(headers) + info)
            return []
        exchange.start_response(page.status, headers + info)
        if environ["REQUEST_METHOD"] == "HEAD":
            return []
        return [body]

    def to_app(self, exchange: Exchange, label: Label, counter: str, why: str) -> Iterable[bytes]:
        """Let the application answer, its response labelled; counted and
        logged. On a URL a rule caches, pagecache announces ESI and processes
        it in the answer, so the response is held until complete (up to
        max_entry_size; a longer one streams through as it is)."""
        self._count(exchange, counter)
        self._decided(exchange, label, why)
        environ = exchange.environ
        if not (self.esi and exchange.route.cacheable):
            return self.app(environ, self._labelled(exchange.start_response, label))
        environ["HTTP_SURROGATE_CAPABILITY"] = self.fill_environ.capability
        captured = capture(self.app, environ, self.max_entry_size, self._labelled(exchange.start_response, label))
        return self._respond(exchange, captured, label)

    def _respond(self, exchange: Exchange, captured: Captured, label: Label) -> Iterable[bytes]:
        """Hand a response that is not stored to its client, labelled, without
        what is meant for pagecache alone, its ESI (if it says it has some) processed."""
        labels = self.labels.forwarded(label, "bypass" if label is BYPASS else "uri-miss")
        if captured.complete and self.esi and freshness.esi_marked(
                freshness.surrogate_directives([v for n, v in captured.headers if n.lower() == "surrogate-control"],
                                               self.policy.target)):
            body = captured.body
            captured.close()
            headers = [(name, value) for name, value in captured.headers if name.lower() not in self._hidden]
            try:
                headers, body, _ = self.fragments.assemble_answer(exchange.environ, exchange.route, captured.status,
                                                                  headers, body)
            except Exception as error:
                log.error("%s: %s", admin.url_of(exchange.environ), error)
                self.stats.incr("esi_failures", 1, exchange.route.index)
                return admin.plain(exchange.start_response, "502 Bad Gateway", "a part of this page could not be made\n")
            exchange.start_response(captured.status, headers + labels)
            return [] if exchange.method == "HEAD" else [body]
        return captured.respond(exchange.start_response, labels, self._hidden)

    def _labelled(self, start_response: StartResponse, label: Label) -> StartResponse:
        """A start_response adding the labels, and removing what is meant for
        pagecache alone (tags, Surrogate-Control) from the application's answer."""
        extra = self.labels.forwarded(label, "bypass" if label is BYPASS else "uri-miss")
        hidden = self._hidden

        def labelled(status: str, headers: http.Headers, exc_info: Any = None) -> Any:
            kept = [(name, value) for name, value in headers if name.lower() not in hidden]
            return start_response(status, kept + extra, exc_info)
        return labelled

    def _decided(self, exchange: Exchange, outcome: Label, why: str = "") -> None:
        """Remember the decision for the dashboard, and log it at DEBUG (when
        the request was timed for it)."""
        environ = exchange.environ
        url = admin.url_of(environ)
        took = (time.perf_counter() - exchange.started) * 1000 if exchange.started else 0.0
        self.stats.decision(time.time(), environ.get("REQUEST_METHOD", ""), url, outcome.value, why, took)
        if exchange.started:
            log.debug("%s %s %s %.1fms%s", environ.get("REQUEST_METHOD"), url, outcome.value, took,
                      f" ({why})" if why else "")

    def _record_hit(self, environ: Dict, now: float) -> None:
        """Remember a hit among the last decisions, at most one a second: the
        hit path has no time for more."""
        self._next_hit_record = now + 1.0
        self.stats.decision(time.time(), "GET", admin.url_of(environ), HIT.value, "", 0.0)

    def _count(self, exchange: Exchange, counter: str) -> None:
        self.stats.incr(counter, 1, exchange.route.index)
