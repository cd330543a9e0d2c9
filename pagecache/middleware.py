"""The request flow of pagecache (see DESIGN.md, "How a request flows")."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from . import http
from .backends import cache_from_options
from .capture import Captured, capture
from .config import ConfigError, convert_options
from .entry import ERROR_ONLY, FRESH, GRACE, Page, Pass, VaryMarker
from .keys import Keys, request_url
from .local import LocalTier
from .locks import Flights
from .purge import Purger
from .refresh import Refresher
from .routes import Route, Routes
from .rules import Rule, RuleSpec, parse_rules
from .stats import Stats
from .store import LOST, UNAVAILABLE, Store

log = logging.getLogger("pagecache")

HIT, STALE, MISS, BYPASS = "HIT", "STALE", "MISS", "BYPASS"
POLL_FIRST, POLL_MAX = 0.005, 0.05  # seconds between looks at memcached while waiting
MAX_RESTARTS = 2
ERROR_PASS_TTL = 1.0  # seconds a URL that answered 5xx (with no stale copy) skips the lock

StartResponse = Callable[..., Any]


class _Target:
    """Where a request's page lives: the URL's digest, the variant's digest
    (the same when the page does not vary), and the URL's vary marker."""

    __slots__ = ("primary", "digest", "marker")

    def __init__(self, primary: str, digest: str, marker: Optional[VaryMarker]):
        self.primary, self.digest, self.marker = primary, digest, marker


class _Outcome:
    """What the leader of a flight got, for the requests waiting on it."""

    __slots__ = ("label", "page", "variant")

    def __init__(self, label: str, page: Page, variant: Optional[str]):
        self.label, self.page, self.variant = label, page, variant


_PASS, _RESTART = "pass", "restart"          # flight outcomes besides _Outcome and None
_STORED, _PASSED, _FAILED = "stored", "passed", "failed"  # what a rebuild did


class PageCacheMiddleware:
    """WSGI middleware caching whole responses, with grace periods and no dog-pile.

    ``cached_urls`` says which URLs are cached: the seed's tuples
    ``(("/foo", 30, 120), ...)`` or a text table of ``<pattern> <ttl> <grace>``
    lines (see :mod:`pagecache.rules`). ``cache`` is any object with
    memcached's ``get``/``set``/``add``/``delete`` (python-memcached,
    pymemcache with ``default_noreply=False``, ...); without one, the
    ``memcached_servers`` option or else an embedded memory cache is used.
    Every other option is a keyword argument named as in the INI file (see
    :data:`pagecache.config.OPTIONS`)::

        from pagecache import PageCacheMiddleware
        app = PageCacheMiddleware(app, [("/foo", 30, 120), ("/bar", 3600, 60)],
                                  memcache.Client(["127.0.0.1:11211"]))

    What it does to a request for a URL a rule matches: GET and HEAD without
    ``Authorization`` or a ``bypass_cookies`` cookie are answered from the
    cache when it can; when the application is called to render a page for the
    cache it gets a copy of the environ without conditional, ``Range`` and
    forwarding headers (``X-Forwarded-Host``, ``Forwarded``, ...), because the
    key does not hold them: a proxy-aware component (ProxyFix) belongs in
    front of pagecache. Responses carry ``X-Cache`` and, from the cache,
    ``Age``. URLs no rule matches pass through untouched.

    Security: a stored page is served to everybody who asks for its URL. It
    never holds ``Set-Cookie``, and ``private``/``no-store``/``no-cache``
    responses are not stored, but a page that shows per-user content without
    saying so must be kept out by its rule or by ``bypass_cookies``.
    """

    def __init__(self, app: Callable, cached_urls: RuleSpec, cache: Any = None, *,
                 clock: Optional[Callable[[], float]] = None, **options: Any):
        settings = convert_options(options)
        self.app = app
        self.rules = parse_rules(cached_urls)
        self.settings = settings
        self.clock = clock or time.time
        self.stats = Stats()
        if cache is None:
            cache = cache_from_options(settings, self.clock, on_error=lambda what: self.store.failed(what))
        elif settings["memcached_servers"]:
            raise ConfigError("give either a cache object or memcached_servers, not both")
        self.cache = cache
        self.store = Store(cache, self.stats)
        self.keys = Keys.from_settings(settings)
        self.routes = Routes(self.rules, self.keys, settings["charset"])
        self.local = LocalTier(settings["local_ttl"], settings["local_size"]) if settings["local_ttl"] else None
        self._load = self.store.load if self.local is None else self._load_local
        self.purger = Purger(self.store, self.keys, self.local, self.clock, self.stats)
        self.flights = Flights()
        self.refresher = Refresher(settings["background_workers"]) if settings["background_refresh"] else None
        self.bypass_cookies = frozenset(settings["bypass_cookies"])
        self.cache_statuses = settings["cache_statuses"]
        self.max_entry_size = settings["max_entry_size"]
        self.wait_timeout = settings["wait_timeout"]
        self.lock_timeout = settings["lock_timeout"]
        self.stale_if_error = settings["stale_if_error"]
        self.uncacheable_ttl = settings["uncacheable_ttl"]
        self.purge_allowed = settings["purge_allowed"]
        self.stats_path = settings["stats_path"]
        header = settings["status_header"]
        self._labels = {label: [(header, label)] if header else [] for label in (HIT, STALE, MISS, BYPASS)}
        self._dropped_headers = (header,) if header else ()
        self._special = bool(self.purge_allowed or self.stats_path)

    # -- the flow ---------------------------------------------------------

    def __call__(self, environ: Dict, start_response: StartResponse) -> Iterable[bytes]:
        if self._special:
            if self.purge_allowed and environ.get("REQUEST_METHOD") == "PURGE":
                return self._http_purge(environ, start_response)
            if self.stats_path and environ.get("PATH_INFO") == self.stats_path:
                return self._serve_stats(environ, start_response)
        route = self.routes[request_url(environ)]
        if route.rule is None:
            return self.app(environ, start_response)
        started = time.perf_counter() if log.isEnabledFor(logging.DEBUG) else 0.0  # 0: not logged
        if environ.get("REQUEST_METHOD") != "GET" or "HTTP_AUTHORIZATION" in environ \
                or ("HTTP_COOKIE" in environ and self.bypass_cookies):  # else it can't be bypassed
            reason = http.bypass_reason(environ, self.bypass_cookies)
            if reason is not None:
                return self._to_app(environ, start_response, BYPASS, "bypasses", started, reason)
        now = self.clock()
        entry = self._load(route.key)
        if type(entry) is Page and now - entry.stored < entry.ttl:  # fresh: the hit path
            return self._send(environ, start_response, entry, HIT, now, started)
        return self._lookup(environ, start_response, route, entry, now, started)

    def _lookup(self, environ: Dict, start_response: StartResponse, route: Route, entry: Any,
                now: float, started: float, restarts: int = 0) -> Iterable[bytes]:
        """What to do with the entry found under the URL's key (None: nothing usable)."""
        primary = digest = route.digest
        rule = route.rule
        marker = None
        if type(entry) is VaryMarker:
            marker = entry
            digest = self.keys.variant(primary, marker.generation, http.variant_of(environ, marker.names))
            entry = self._load(self.keys.page(digest))
            if type(entry) is Page and entry.stored < marker.purged:
                entry = entry.expired_at(marker.purged)
        target = _Target(primary, digest, marker)
        fallback = None
        if type(entry) is Page:
            state = entry.state(now)
            if state is FRESH:
                return self._send(environ, start_response, entry, HIT, now, started)
            if state is GRACE:
                return self._in_grace(environ, start_response, rule, target, entry, now, started)
            if state is ERROR_ONLY:
                fallback = entry
        elif type(entry) is Pass:
            return self._to_app(environ, start_response, MISS, "passes", started,
                                "uncacheable lately: " + entry.reason)
        if environ["REQUEST_METHOD"] == "HEAD":
            return self._to_app(environ, start_response, MISS, "misses", started, "HEAD is not stored")
        return self._fill(environ, start_response, rule, target, fallback, started, restarts)

    def _in_grace(self, environ: Dict, start_response: StartResponse, rule: Rule,
                  target: _Target, stale: Page, now: float, started: float) -> Iterable[bytes]:
        """The page's TTL has run out: one request rebuilds it, the others get it stale."""
        token = LOST
        if environ["REQUEST_METHOD"] != "HEAD":
            token = self._lock(target, newer_than=stale.stored)
        if isinstance(token, Page):
            return self._send(environ, start_response, token, HIT, now, started, "rebuilt meanwhile")
        if token is LOST:
            return self._send(environ, start_response, stale, STALE, now, started,
                              "another request rebuilds it")
        if self.refresher is not None:
            job_environ = http.fill_environ(environ, background=True)
            queued = self.refresher.submit(lambda: self._refresh(job_environ, rule, target, token, stale))
            if queued:
                self.stats.incr("refreshes")
            else:
                self._unlock(target, token)
            return self._send(environ, start_response, stale, STALE, now, started,
                              "rebuilding in the background" if queued else "background queue full")
        response, _ = self._rebuild_for(environ, start_response, rule, target, token, stale, started)
        return response

    def _fill(self, environ: Dict, start_response: StartResponse, rule: Rule, target: _Target,
              fallback: Optional[Page], started: float, restarts: int) -> Iterable[bytes]:
        """No usable page: one request per process leads, one process computes."""
        key = self.keys.page(target.digest)
        flight, leader = self.flights.join(key)
        if not leader:
            return self._follow(environ, start_response, flight, fallback, started, restarts)
        outcome: Any = None
        try:
            token = self._lock(target)
            if token is LOST:
                token = self._await(target, key)
            if isinstance(token, Page):
                outcome = _Outcome(HIT, token, self._variant(environ, token))
                return self._send(environ, start_response, token, HIT, self.clock(), started,
                                  "computed by another request")
            if token is _PASS:
                outcome = _PASS
                return self._to_app(environ, start_response, MISS, "passes", started, "uncacheable lately")
            if token is _RESTART:
                outcome = _RESTART
                return self._restart(environ, start_response, started, restarts)
            if token is None:
                self.stats.incr("wait_timeouts")
                return self._unstored(environ, start_response, started, "wait_timeout reached", fallback)
            response, outcome = self._rebuild_for(environ, start_response, rule, target, token,
                                                  fallback, started)
            return response
        finally:
            self.flights.land(key, flight, outcome)

    def _follow(self, environ: Dict, start_response: StartResponse, flight: Any,
                fallback: Optional[Page], started: float, restarts: int) -> Iterable[bytes]:
        """Wait for the page this process's leader computes or awaits."""
        self.stats.incr("waits")
        if not flight.done.wait(self.wait_timeout):
            self.stats.incr("wait_timeouts")
            return self._unstored(environ, start_response, started, "wait_timeout reached", fallback)
        outcome = flight.outcome
        if type(outcome) is _Outcome:
            if outcome.variant == self._variant(environ, outcome.page):
                return self._send(environ, start_response, outcome.page, outcome.label, self.clock(),
                                  started, "waited for it")
            return self._restart(environ, start_response, started, restarts)
        if outcome is _PASS:
            return self._to_app(environ, start_response, MISS, "passes", started, "uncacheable")
        if outcome is _RESTART:
            return self._restart(environ, start_response, started, restarts)
        return self._unstored(environ, start_response, started, "the request computing it failed", fallback)

    def _restart(self, environ: Dict, start_response: StartResponse,
                 started: float, restarts: int) -> Iterable[bytes]:
        """Look again: the page turned out to vary, and this request wants another variant."""
        if restarts >= MAX_RESTARTS:
            return self._unstored(environ, start_response, started, "variant kept changing")
        route = self.routes[request_url(environ)]
        now = self.clock()
        entry = self._load(route.key)
        return self._lookup(environ, start_response, route, entry, now, started, restarts + 1)

    def _unstored(self, environ: Dict, start_response: StartResponse, started: float,
                  why: str, fallback: Optional[Page] = None) -> Iterable[bytes]:
        """Let the application answer this request, storing nothing; if it
        raises or answers 5xx, ``fallback`` (a page kept for stale_if_error)
        is served instead."""
        if fallback is None:
            return self._to_app(environ, start_response, MISS, "misses", started, why)
        self.stats.incr("misses")
        captured, failure = self._call_app(environ, start_response, fallback, "computing")
        if captured is not None:
            self._decided(environ, MISS, started, why)
            return captured.respond(start_response, self._labels[MISS])
        return self._send(environ, start_response, fallback, STALE, self.clock(), started,
                          f"{why}; the application failed: {failure}")

    def _call_app(self, environ: Dict, start_response: Optional[StartResponse],
                  fallback: Optional[Page], doing: str) -> Tuple[Optional[Captured], str]:
        """Call the application and capture its response: (captured, ""), or,
        when it raised or answered 5xx and ``fallback`` may stand in for it,
        (None, what went wrong), logged. Without a fallback, exceptions propagate."""
        if start_response is not None:  # a response written past max_entry_size goes out at once
            start_response = self._labelled(start_response, MISS)
        try:
            captured = capture(self.app, environ, self.max_entry_size, start_response)
        except Exception as error:
            self.stats.incr("app_errors")
            if fallback is None:
                raise
            log.error("%s %s failed; serving the stale copy", doing, _url(environ), exc_info=True)
            return None, f"{type(error).__name__}: {error}"
        if fallback is not None and http.status_code(captured.status) >= 500 and not captured.sent:
            captured.close()
            self.stats.incr("app_errors")
            log.error("%s %s answered %s; serving the stale copy", doing, _url(environ), captured.status)
            return None, f"status {captured.status}"
        return captured, ""

    # -- locks and waiting ------------------------------------------------

    def _lock(self, target: _Target, newer_than: float = -1.0) -> Any:
        """The update lock's token, LOST or UNAVAILABLE; or a Page stored since
        the caller looked (then the lock is not kept)."""
        lock_key = self.keys.lock(target.digest)
        token = self.store.lock(lock_key, self.lock_timeout)
        if isinstance(token, bytes):
            entry = self.store.load(self.keys.page(target.digest))
            if type(entry) is Page and entry.stored > newer_than and entry.state(self.clock()) is FRESH:
                self.store.unlock(lock_key, token)
                return entry
        return token

    def _unlock(self, target: _Target, token: Any) -> None:
        self.store.unlock(self.keys.lock(target.digest), token)

    def _await(self, target: _Target, key: str) -> Any:
        """Another process computes the page: poll memcached until it is stored
        (a Page), found uncacheable (_PASS), found to vary (_RESTART), or the
        lock is free to take (a token); None after ``wait_timeout``."""
        self.stats.incr("waits")
        deadline = time.monotonic() + self.wait_timeout
        delay = POLL_FIRST
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, POLL_MAX)
            entry = self.store.load(key)
            if type(entry) is Page and entry.state(self.clock()) in (FRESH, GRACE):
                return entry
            if type(entry) is Pass:
                return _PASS
            if type(entry) is VaryMarker:
                return _RESTART
            token = self._lock(target)
            if token is UNAVAILABLE:
                return None
            if token is not LOST:
                return token

    # -- computing and storing pages -------------------------------------

    def _rebuild_for(self, environ: Dict, start_response: StartResponse, rule: Rule, target: _Target,
                     token: Any, fallback: Optional[Page], started: float) -> Tuple[Iterable[bytes], Any]:
        """Rebuild the page for this request's client; the response and the flight outcome."""
        done, result = self._rebuild(environ, rule, target, token, fallback, start_response)
        if done is _FAILED:
            return self._send(environ, start_response, fallback, STALE, self.clock(), started,
                              "the application failed: " + result), \
                _Outcome(STALE, fallback, self._variant(environ, fallback))
        if done is _PASSED:
            self._decided(environ, MISS, started, "not stored: " + result[1])
            return result[0].respond(start_response, self._labels[MISS]), _PASS
        page, cookies = result
        return (self._send(environ, start_response, page, MISS, page.stored, started, "stored", cookies),
                _Outcome(HIT, page, self._variant(environ, page)))

    def _refresh(self, environ: Dict, rule: Rule, target: _Target, token: Any, stale: Page) -> None:
        """Rebuild a page in the background (a worker thread)."""
        done, result = self._rebuild(environ, rule, target, token, stale, None)
        if done is _PASSED:
            result[0].close()

    def _rebuild(self, environ: Dict, rule: Rule, target: _Target, token: Any,
                 fallback: Optional[Page], start_response: Optional[StartResponse]) -> Tuple[str, Any]:
        """Call the application for the page and store what may be stored; the
        lock is released whatever happens. Returns (_STORED, (page, cookies)),
        (_PASSED, (captured, reason)) or, when ``fallback`` may stand in for a
        failure, (_FAILED, reason). Without a fallback, exceptions propagate."""
        self.stats.incr("misses")
        try:
            captured, failure = self._call_app(http.fill_environ(environ), start_response, fallback,
                                               "rebuilding")
            if captured is None:
                return _FAILED, failure
            code = http.status_code(captured.status)
            now = self.clock()
            reason = self._unstorable(captured)
            if reason is not None:
                self.stats.incr("uncacheable")
                remember = self.uncacheable_ttl
                if code >= 500:
                    # long enough to release the requests waiting now, short
                    # enough not to keep a recovered page uncached
                    self.stats.incr("app_errors")
                    remember = min(remember, ERROR_PASS_TTL)
                self.store.save(self.keys.page(target.digest), Pass(now, reason), remember)
                return _PASSED, (captured, reason)
            body = captured.body
            captured.close()
            headers = http.headers_to_store(captured.headers, body, self._dropped_headers)
            page = Page(captured.status, headers, body, now, rule.ttl, rule.grace, self.stale_if_error)
            self._store_page(environ, target, page, now)
            return _STORED, (page, http.set_cookies(captured.headers))
        finally:
            if isinstance(token, bytes):
                self._unlock(target, token)

    def _unstorable(self, captured: Captured) -> Optional[str]:
        if captured.exc_info is not None:
            return "error response (start_response with exc_info)"
        if not captured.complete:
            if captured.size > self.max_entry_size:
                return "larger than max_entry_size"
            return "body is not bytes"
        return http.unstorable_reason(captured.status, captured.headers, self.cache_statuses)

    def _store_page(self, environ: Dict, target: _Target, page: Page, now: float) -> None:
        lifetime = page.lifetime() + 1
        names = http.vary_names(page.headers)
        digest = target.primary
        if names:
            marker = target.marker
            if marker is None or marker.names != names:
                marker = VaryMarker(names, os.urandom(8).hex(), now, lifetime)
            else:
                marker = VaryMarker(names, marker.generation, now, lifetime, marker.purged)
            self.store.save(self.keys.page(target.primary), marker, lifetime)
            digest = self.keys.variant(target.primary, marker.generation, http.variant_of(environ, names))
        key = self.keys.page(digest)
        if self.store.save(key, page, lifetime):
            self.stats.incr("stores")
            if self.local is not None:
                self.local.put(key, page, now)
        else:
            self.stats.incr("store_failures")

    # -- serving ----------------------------------------------------------

    def _load_local(self, key: str) -> Any:
        """The entry under ``key`` from the local tier, else from the cache (kept locally)."""
        now = self.clock()
        entry = self.local.get(key, now)
        if entry is not None:
            if type(entry) is Page:
                self.stats.incr("local_hits")
            return entry
        entry = self.store.load(key)
        if entry is not None and (type(entry) is not Page or entry.state(now) is FRESH):
            self.local.put(key, entry, now)
        return entry

    def _send(self, environ: Dict, start_response: StartResponse, page: Page, label: str,
              now: float, started: float, why: str = "", extra: http.Headers = ()) -> List[bytes]:
        """Answer with a stored page, or a 304 when the request's validators
        match it; labelled, counted (a MISS was counted when it was computed)
        and logged."""
        if label is MISS:
            info = self._labels[MISS]
        else:
            self.stats.incr("hits" if label is HIT else "stale")
            info = [page.age_header(now)] + self._labels[label]
        if started:
            self._log_decision(environ, label, started, why)
        if extra:
            info = list(extra) + info
        if ("HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ) \
                and http.not_modified(environ, page):
            start_response("304 Not Modified", http.not_modified_headers(page.headers) + info)
            return []
        start_response(page.status, page.headers + info)
        if environ["REQUEST_METHOD"] == "HEAD":
            return []
        return [page.body]

    def _to_app(self, environ: Dict, start_response: StartResponse, label: str, counter: str,
                started: float, why: str) -> Iterable[bytes]:
        """Let the application answer, its response labelled; counted and logged."""
        self.stats.incr(counter)
        self._decided(environ, label, started, why)
        return self.app(environ, self._labelled(start_response, label))

    def _labelled(self, start_response: StartResponse, label: str) -> StartResponse:
        extra = self._labels[label]
        if not extra:
            return start_response

        def labelled(status: str, headers: http.Headers, exc_info: Any = None) -> Any:
            return start_response(status, list(headers) + extra, exc_info)
        return labelled

    def _variant(self, environ: Dict, page: Page) -> Optional[str]:
        names = http.vary_names(page.headers)
        return http.variant_of(environ, names) if names else None

    def _decided(self, environ: Dict, outcome: str, started: float, why: str = "") -> None:
        if started:
            self._log_decision(environ, outcome, started, why)

    def _log_decision(self, environ: Dict, outcome: str, started: float, why: str) -> None:
        log.debug("%s %s %s %.1fms%s", environ.get("REQUEST_METHOD"), _url(environ), outcome,
                  (time.perf_counter() - started) * 1000, f" ({why})" if why else "")

    # -- purge and stats --------------------------------------------------

    def purge(self, url: str, soft: bool = False) -> bool:
        """Remove the page at ``url`` (all its variants); with ``soft``, only end
        its TTL so that it is rebuilt while its grace period lasts. Whether
        anything was stored there."""
        return self.purger.purge(url, soft)

    def _allowed(self, environ: Dict) -> bool:
        try:
            address = ipaddress.ip_address(environ.get("REMOTE_ADDR", "").split("%")[0])
        except ValueError:
            return False
        return any(address in network for network in self.purge_allowed)

    def _http_purge(self, environ: Dict, start_response: StartResponse) -> Iterable[bytes]:
        url = _url(environ)
        if not self._allowed(environ):
            log.warning("PURGE %s refused for %s", url, environ.get("REMOTE_ADDR"))
            return _plain(start_response, "403 Forbidden", f"PURGE not allowed from {environ.get('REMOTE_ADDR')}\n")
        soft = environ.get("HTTP_X_PURGE_SOFT", "").strip().lower() in ("1", "true", "yes", "on")
        found = self.purger.purge_digest(self.keys.digest(environ), soft)
        kind = "soft-purged" if soft else "purged"
        log.info("PURGE %s from %s: %s", url, environ.get("REMOTE_ADDR"), kind if found else "nothing cached")
        if found:
            return _plain(start_response, "200 OK", f"{kind} {url}\n")
        return _plain(start_response, "404 Not Found", f"nothing cached for {url}\n")

    def _serve_stats(self, environ: Dict, start_response: StartResponse) -> Iterable[bytes]:
        if not self._allowed(environ):
            return _plain(start_response, "403 Forbidden", "stats not allowed from this address\n")
        body = json.dumps(self.stats.snapshot(), indent=1, sort_keys=True).encode("ascii")
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]


def _url(environ: Dict) -> str:
    """The request's URL, for logs and answers."""
    path, query, host, script, scheme = request_url(environ)
    return f"{scheme}://{host}{script}{path}" + (f"?{query}" if query else "")


def _plain(start_response: StartResponse, status: str, text: str) -> List[bytes]:
    body = text.encode("utf-8", "replace")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
    return [body]
