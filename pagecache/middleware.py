"""The request flow of pagecache (see DESIGN.md, "How a request flows").

Each step is a short method named for what it does: route the URL (in
``__call__``), :meth:`classify` the request, :meth:`lookup` its entry, then
:meth:`serve_stale`, :meth:`fill` or :meth:`fetch` it; unsafe methods
:meth:`invalidate` what they changed. Storing what the application answered
is :mod:`pagecache.storing`'s steps (``store_response``), answering the
client :mod:`pagecache.delivery`'s (``deliver``, ``to_app``): the middleware
class is made of the three. Per-request state travels in an
:class:`~pagecache.exchange.Exchange`; the policies live in their own modules
(:mod:`~pagecache.freshness`, :mod:`~pagecache.revalidation`,
:mod:`~pagecache.invalidation`, :mod:`~pagecache.tags`,
:mod:`~pagecache.compression`, :mod:`~pagecache.fragments`).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from . import admin, encoding, freshness, http, invalidation, metrics, revalidation
from .backends import cache_from_options
from .capture import Captured, capture
from .compression import Compression
from .config import ConfigError, convert_options
from .delivery import DeliverySteps
from .entry import ERROR_ONLY, ESI, FRESH, GRACE, SHARED, Page, Pass, VaryMarker
from .exchange import BYPASS, HIT, MISS, STALE, Exchange, Failed, NotStored, Served, Signal, Stored
from .failures import FailureLog
from .fill import FillEnviron
from .fragments import Fragments
from .keys import Keys, request_url
from .labels import Labels
from .local import LocalTier
from .locks import Flight, Flights
from .purge import Purger
from .refresh import Refresher
from .routes import Routes
from .rules import Rule, RuleSpec, parse_rules
from .stats import Stats
from .store import LOST, UNAVAILABLE, Store
from .storing import TOO_LARGE, StoringSteps
from .tags import ALL, TagTimes, parse_header

log = logging.getLogger("pagecache")

POLL_FIRST, POLL_MAX = 0.005, 0.05  # seconds between looks at memcached while waiting
MAX_RESTARTS = 2

StartResponse = Callable[..., Any]
Rebuilt = Union[Stored, NotStored, Failed]
LockAnswer = Union[bytes, Page, Any]  # a token, a page stored meanwhile, LOST or UNAVAILABLE


class PageCacheMiddleware(StoringSteps, DeliverySteps):
    """WSGI middleware caching whole responses, with grace periods and no dog-pile.

    ``cached_urls`` says which URLs are cached: the seed's tuples
    ``(("/foo", 30, 120), ...)`` or a text table of rules (see
    :mod:`pagecache.rules`). ``cache`` is any object with memcached's
    ``get``/``set``/``add``/``delete`` (python-memcached, pymemcache with
    ``default_noreply=False``, ...); without one, the ``memcached_servers``
    option or else an embedded memory cache is used. Every other option is a
    keyword argument named as in the INI file (see
    :data:`pagecache.config.OPTIONS`)::

        from pagecache import PageCacheMiddleware
        app = PageCacheMiddleware(app, [("/foo", 30, 120), ("/bar", 3600, 60)],
                                  memcache.Client(["127.0.0.1:11211"]))

    What it does to a request for a URL a rule caches: a GET or HEAD without
    a body that identifies nobody (no cookie, or none ``bypass_cookies``
    names; no ``Authorization``; no ``REMOTE_USER``) is answered from the
    cache when it can; the application renders pages for the cache from a
    request that holds only what the key holds (see :mod:`pagecache.fill`),
    and says how long they may be kept (see :mod:`pagecache.freshness`).
    Responses carry ``X-Cache``, ``Cache-Status`` and, from the cache,
    ``Age``. URLs no rule matches pass through untouched, except that an
    unsafe method's success invalidates the pages it names.

    Security: a stored page is served to everybody who asks for its URL. It
    never holds ``Set-Cookie`` (responses that set cookies are not stored),
    and ``private``/``no-store`` responses are not stored, but a page that
    shows per-user content to a request that carries nothing personal must be
    kept out by its rule (``pass``).
    """

    def __init__(self, app: Callable, cached_urls: RuleSpec, cache: Any = None, *,
                 clock: Optional[Callable[[], float]] = None, **options: Any):
        settings = convert_options(options)
        self.app = app
        self.rules = parse_rules(cached_urls)
        self.settings = settings
        self.clock = clock or time.time
        self.stats = Stats(self.rules)
        if cache is None:
            cache = cache_from_options(settings, self.clock, on_error=lambda what: self.store.failed(what))
        elif settings["memcached_servers"]:
            raise ConfigError("give either a cache object or memcached_servers, not both")
        elif isinstance(cache, (str, bytes, list, tuple, set, dict)) or not all(
                callable(getattr(cache, name, None)) for name in ("get", "set", "add", "delete")):
            raise ConfigError(f"cache must be a client object with get, set, add and delete (such as "
                              f"memcache.Client([...])), not {type(cache).__name__} {cache!r:.60}; to name "
                              f"servers, pass memcached_servers={cache!r:.60}", "cache")
        self.cache = cache
        header = settings["status_header"]
        self.tag_header = settings["tag_header"]
        hidden = [name for name in (header, self.tag_header) if name and not (
            name == self.tag_header and settings["expose_tags"])]
        self.store = Store(cache, self.stats, never_sent=hidden)
        self.keys = Keys.from_settings(settings)
        self.tags = TagTimes(cache, settings["key_prefix"], settings["tag_check_interval"], self.clock,
                             on_error=self.store.failed)
        self.routes = Routes(self.rules, self.keys, settings["charset"])
        self.local = LocalTier(settings["local_ttl"], settings["local_size"], settings["local_memory_limit"]) \
            if settings["local_ttl"] else None
        self._load = self.store.load if self.local is None else self._load_local
        self.purger = Purger(self.store, self.keys, self.local, self.clock, self.stats)
        self.flights = Flights()
        self.refresher = Refresher(settings["background_workers"]) if settings["background_refresh"] else None
        self.bypass_cookies = frozenset(settings["bypass_cookies"])
        self.store_cookies = settings["cookie_responses"] == "strip"
        name = settings["cache_status"] or "pagecache"
        self.fill_environ = FillEnviron(settings["strip_request_headers"], surrogate=name, esi=settings["esi"])
        self.policy = freshness.Policy(settings["cache_statuses"], settings["negative_ttl"],
                                       honour=settings["response_freshness"] == "honour", target=name)
        self._defaults = {rule: self._rule_defaults(rule) for rule in self.rules}
        self.max_entry_size = settings["max_entry_size"]
        self.compression = Compression(settings["compression"], settings["compress_min_size"],
                                       settings["compress_types"], settings["compress_max_size"])
        self.esi = settings["esi"]
        self.fragments = Fragments(self, settings["esi_depth"], settings["esi_timeout"], settings["esi_workers"])
        self.wait_timeout = settings["wait_timeout"]
        self.lock_timeout = settings["lock_timeout"]
        self.uncacheable_ttl = settings["uncacheable_ttl"]
        self.error_backoff = settings["error_backoff"]
        self.failures = FailureLog()
        self.purge_allowed = settings["purge_allowed"]
        self.stats_path = settings["stats_path"]
        self.labels = Labels(header, settings["cache_status"], settings["server_timing"])
        self._hit = self.labels.hit       # one bound method, so Page.timed knows it again
        self._stale = self.labels.stale
        self._dropped_headers = tuple(hidden)
        self._hidden = frozenset(name.lower() for name in hidden) | {"surrogate-control"}
        self.metrics_path = settings["metrics_path"]
        self._next_hit_record = 0.0
        self.shared = self._share_stats(settings["stats_dir"])
        if self.metrics_path:
            admin.check_metrics()
        self._special = bool(self.purge_allowed or self.stats_path or self.metrics_path)

    def _share_stats(self, directory: str) -> Optional[metrics.Shared]:
        """With ``stats_dir``, the counters of the worker processes of one server are added up."""
        if not directory:
            return None
        try:
            shared = metrics.Shared(self.stats, directory)
        except (OSError, ValueError) as error:
            raise ConfigError(f"option stats_dir: {error}", "stats_dir", directory) from None
        shared.start()
        return shared

    def _rule_defaults(self, rule: Rule) -> freshness.Rule:
        stale = self.settings["stale_if_error"] if rule.stale_if_error is None else rule.stale_if_error
        return freshness.Rule(rule.ttl, rule.grace, stale, rule.force, rule.esi)

    # -- the flow ---------------------------------------------------------

    def __call__(self, environ: Dict, start_response: StartResponse) -> Iterable[bytes]:
        if self._special:
            if self.purge_allowed and environ.get("REQUEST_METHOD") == "PURGE":
                return admin.http_purge(self, environ, start_response)
            if self.stats_path and environ.get("PATH_INFO") == self.stats_path:
                return admin.serve_stats(self, environ, start_response)
            if self.metrics_path and environ.get("PATH_INFO") == self.metrics_path:
                return admin.serve_metrics(self, environ, start_response)
        route = self.routes[request_url(environ)]
        method = environ.get("REQUEST_METHOD")
        if route.cacheable and method == "GET" and "HTTP_COOKIE" not in environ \
                and "HTTP_AUTHORIZATION" not in environ and "REMOTE_USER" not in environ \
                and not environ.get("CONTENT_LENGTH") and "HTTP_TRANSFER_ENCODING" not in environ:
            now = self.clock()
            prefetched = None
            if route.fragments:  # an ESI page: its cached fragments in the same round trip
                prefetched = self.store.load_many((route.key,) + route.fragments)
                entry = prefetched.get(route.key)
            else:
                entry = self._load(route.key)
            if type(entry) is Page and now - entry.stored < entry.ttl and self._unpurged(entry, now):  # the hit path
                if "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MODIFIED_SINCE" in environ \
                        or ESI in entry.flags or log.isEnabledFor(logging.DEBUG):
                    exchange = self._exchange(environ, start_response, route)
                    exchange.prefetched = prefetched
                    return self.deliver(exchange, entry, HIT, now)
                headers, body = entry.headers, entry.body
                if entry.encoding:
                    representation = Compression.representation(entry, environ.get("HTTP_ACCEPT_ENCODING"))
                    if representation is None:
                        return self.deliver(self._exchange(environ, start_response, route), entry, HIT, now)
                    headers, body = representation
                self.stats.incr("hits", 1, route.index)
                if now >= self._next_hit_record:
                    self._record_hit(environ, now)
                start_response(entry.status, headers + entry.timed(now, self._hit))
                return [body]
            return self.lookup(self._exchange(environ, start_response, route), entry, now)
        if invalidation.is_unsafe(method):
            start_response = invalidation.watching(start_response, environ, self.invalidate)
        if route.rule is None:
            environ["pagecache"] = self
            return self.app(environ, start_response)
        exchange = self._exchange(environ, start_response, route)
        reason = route.bypass or self.classify(exchange)
        if reason is http.COOKIE and self.esi:
            return self._with_cookies(exchange)
        if reason is not None:
            return self.to_app(exchange, BYPASS, "bypasses", reason)
        return self.lookup(exchange, self._load(route.key), self.clock())

    def _with_cookies(self, exchange: Exchange) -> Iterable[bytes]:
        """A request with cookies uses the cache only for a page the
        application said may be shared (ESI, Cache-Control: public): its
        personal parts are fragments rendered for this request. A URL whose
        rule says ``esi``, or whose page was seen shared, is looked up (and
        rendered for everybody if missing); any other goes to the application."""
        route = exchange.route
        now = self.clock()
        entry = self._load(route.key)
        if type(entry) is VaryMarker:
            entry = self._variant_entry(exchange, entry)
        exchange.shared_only = True  # whatever it is served must be a shared page (see deliver)
        if type(entry) is Page and SHARED in entry.flags:
            route.shared = True
            return self._lookup_variant(exchange, entry, now)
        if entry is None and (route.shared or route.rule.esi) and exchange.method == "GET":
            return self._lookup_variant(exchange, None, now)
        return self.to_app(exchange, BYPASS, "bypasses", "cookie")

    def _exchange(self, environ: Dict, start_response: StartResponse, route: Any) -> Exchange:
        environ["pagecache"] = self  # the application can purge what it changes (pagecache.pyramid)
        started = time.perf_counter() if log.isEnabledFor(logging.DEBUG) else 0.0  # 0: not logged
        return Exchange(environ, start_response, route, started)

    def classify(self, exchange: Exchange) -> Optional[str]:
        """Why this request may not use the cache, or None if it may."""
        return http.bypass_reason(exchange.environ, self.bypass_cookies)

    def lookup(self, exchange: Exchange, entry: Any, now: float) -> Iterable[bytes]:
        """Act on the entry found under the URL's key (None: nothing usable):
        find the variant a vary marker points to, then serve it fresh, serve it
        stale while one request rebuilds it, or compute (or revalidate) the page."""
        if type(entry) is VaryMarker:
            entry = self._variant_entry(exchange, entry)
        return self._lookup_variant(exchange, entry, now)

    def _lookup_variant(self, exchange: Exchange, entry: Any, now: float) -> Iterable[bytes]:
        """:meth:`lookup` once the variant's entry is found."""
        if type(entry) is Page:
            entry = self._judged(entry, now)
        if type(entry) is Page:
            exchange.cached = entry
            state = entry.state(now)
            if state is FRESH:
                return self.deliver(exchange, entry, HIT, now)
            if state is GRACE:
                return self.serve_stale(exchange, entry, now)
            if state is ERROR_ONLY:
                exchange.fallback = entry
        elif type(entry) is Pass:
            exchange.too_large = entry.reason.startswith(TOO_LARGE)
            if exchange.method == "HEAD":
                return self.to_app(exchange, MISS, "passes", "uncacheable lately: " + entry.reason)
            return self.fetch_uncoalesced(exchange, "uncacheable lately: " + entry.reason)
        if exchange.method == "HEAD":
            return self.to_app(exchange, MISS, "misses", "HEAD is not stored")
        return self.fill(exchange)

    def _unpurged(self, page: Page, now: float) -> bool:
        """Whether no purge of the page's tags (or of everything) came after it."""
        everything = self.tags.everything
        if not page.tags and everything[2] > now:
            return page.fetched >= everything[0] and page.fetched >= everything[1]
        return self.tags.purged_since(page.tags, page.fetched, now) == (0.0, 0.0)

    def _judged(self, page: Page, now: float) -> Optional[Page]:
        """``page`` as its tags' purges leave it: None after a hard purge, a
        copy whose TTL ended at the last soft purge, or the page itself."""
        hard, soft = self.tags.purged_since(page.tags, page.fetched, now)
        if hard:
            self.stats.incr("tag_invalidated")
            return None
        if soft:
            self.stats.incr("tag_invalidated")
            return page.expired_at(soft)
        return page

    def _variant_entry(self, exchange: Exchange, marker: VaryMarker) -> Any:
        """The entry of the variant ``marker`` points this request to (a soft
        purge recorded in the marker ends its TTL)."""
        exchange.marker = marker
        exchange.digest = self.keys.variant(exchange.primary, marker.generation,
                                            http.variant_of(exchange.environ, marker.names))
        entry = self._load(self.keys.page(exchange.digest))
        if type(entry) is Page and entry.fetched < marker.purged:
            entry = entry.expired_at(marker.purged)
        return entry

    def serve_stale(self, exchange: Exchange, stale: Page, now: float) -> Iterable[bytes]:
        """The page's TTL has run out: one request rebuilds it, the others get it stale."""
        token: LockAnswer = LOST
        if exchange.method != "HEAD":
            token = self._lock(exchange, newer_than=stale.fetched)
        if isinstance(token, Page):
            return self.deliver(exchange, token, HIT, now, "rebuilt meanwhile")
        if token is LOST:
            return self.deliver(exchange, stale, STALE, now, "another request rebuilds it")
        exchange.fallback = stale
        if self.refresher is not None:
            return self._refresh_in_background(exchange, token, stale, now)
        response, _ = self._rebuild_for_client(exchange, token)
        return response

    def _refresh_in_background(self, exchange: Exchange, token: Any, stale: Page,
                               now: float) -> Iterable[bytes]:
        job = Exchange(exchange.environ, None, exchange.route, 0.0)
        job.digest, job.marker, job.fallback, job.cached = exchange.digest, exchange.marker, stale, stale
        queued = self.refresher.submit(lambda: self._refresh(job, token))
        if queued:
            self._count(exchange, "refreshes")
        else:
            self._unlock(exchange, token)
        return self.deliver(exchange, stale, STALE, now,
                            "rebuilding in the background" if queued else "background queue full")

    def fill(self, exchange: Exchange) -> Iterable[bytes]:
        """No usable page: one request per process leads, one process computes,
        the others wait for what it stores."""
        key = self.keys.page(exchange.digest)
        flight, leader = self.flights.join(key)
        if not leader:
            return self._follow(exchange, flight)
        outcome: Any = None
        try:
            token = self._lock(exchange)
            if token is LOST and exchange.fallback is not None \
                    and self.store.backing_off(self.keys.lock(exchange.digest)):
                outcome = Served(STALE, exchange.fallback, self._variant(exchange.environ, exchange.fallback))
                return self.deliver(exchange, exchange.fallback, STALE, self.clock(),
                                    "the application failed lately: left alone for error_backoff")
            if token is LOST:
                waited = time.perf_counter()
                token = self._await(exchange, key)
                self.stats.observe("wait_seconds", time.perf_counter() - waited, exchange.route.index)
            if isinstance(token, Page):
                outcome = Served(HIT, token, self._variant(exchange.environ, token))
                return self.deliver(exchange, token, HIT, self.clock(), "computed by another request")
            if token is Signal.PASS:
                outcome = Signal.PASS
                return self.fetch_uncoalesced(exchange, "uncacheable lately")
            if token is Signal.RESTART:
                outcome = Signal.RESTART
                return self._restart(exchange)
            if token is None:
                self._count(exchange, "wait_timeouts")
                return self._unstored(exchange, "wait_timeout reached")
            response, outcome = self._rebuild_for_client(exchange, token)
            return response
        finally:
            self.flights.land(key, flight, outcome)

    def _follow(self, exchange: Exchange, flight: Flight) -> Iterable[bytes]:
        """Wait for the page this process's leader computes or awaits."""
        self._count(exchange, "waits")
        waited = time.perf_counter()
        done = flight.done.wait(self.wait_timeout)
        self.stats.observe("wait_seconds", time.perf_counter() - waited, exchange.route.index)
        if not done:
            self._count(exchange, "wait_timeouts")
            return self._unstored(exchange, "wait_timeout reached")
        outcome = flight.outcome
        if type(outcome) is Served:
            if outcome.variant == self._variant(exchange.environ, outcome.page):
                return self.deliver(exchange, outcome.page, outcome.label, self.clock(), "waited for it")
            return self._restart(exchange)
        if outcome is Signal.PASS:
            return self.fetch_uncoalesced(exchange, "uncacheable")
        if outcome is Signal.RESTART:
            return self._restart(exchange)
        return self._unstored(exchange, "the request computing it failed")

    def fetch_uncoalesced(self, exchange: Exchange, why: str) -> Iterable[bytes]:
        """The URL's responses could not be stored lately: ask the application
        at once, without a lock or waiting on others, and store its answer if
        it may be stored after all (hit-for-miss)."""
        self._count(exchange, "passes")
        rebuilt = self.fetch(exchange, None, exchange.start_response, count=False)
        if type(rebuilt) is NotStored:
            self._decided(exchange, MISS, f"{why}; not stored: {rebuilt.reason}")
            return self._respond(exchange, rebuilt.captured, MISS)
        return self._deliver_fetched(exchange, rebuilt)

    def _restart(self, exchange: Exchange) -> Iterable[bytes]:
        """Look again: the page turned out to vary, and this request wants another variant."""
        if exchange.restarts >= MAX_RESTARTS:
            exchange.fallback = None
            return self._unstored(exchange, "variant kept changing")
        route = self.routes[request_url(exchange.environ)]
        again = Exchange(exchange.environ, exchange.start_response, route, exchange.started,
                         exchange.restarts + 1)
        return self.lookup(again, self._load(route.key), self.clock())

    def _unstored(self, exchange: Exchange, why: str) -> Iterable[bytes]:
        """Let the application answer this request, storing nothing; if it
        raises or answers 5xx, the exchange's fallback (a page kept for
        stale_if_error) is served instead."""
        if exchange.fallback is None:
            return self.to_app(exchange, MISS, "misses", why)
        self._count(exchange, "misses")
        captured, failure = self._call_app(exchange, exchange.environ, exchange.start_response, "computing")
        if captured is not None:
            self._decided(exchange, MISS, why)
            return self._respond(exchange, captured, MISS)
        return self.deliver(exchange, exchange.fallback, STALE, self.clock(),
                            f"{why}; the application failed: {failure}")

    # -- locks and waiting ------------------------------------------------

    def _lock(self, exchange: Exchange, newer_than: float = -1.0) -> LockAnswer:
        """The update lock's token, LOST or UNAVAILABLE; or a Page stored since
        the caller looked (then the lock is not kept)."""
        lock_key = self.keys.lock(exchange.digest)
        token = self.store.lock(lock_key, self.lock_timeout)
        if isinstance(token, bytes):
            entry = self.store.load(self.keys.page(exchange.digest))
            now = self.clock()
            if type(entry) is Page and entry.fetched > newer_than and entry.state(now) is FRESH \
                    and self._unpurged(entry, now):
                self.store.unlock(lock_key, token)
                return entry
        return token

    def _unlock(self, exchange: Exchange, token: Any) -> None:
        self.store.unlock(self.keys.lock(exchange.digest), token)

    def _await(self, exchange: Exchange, key: str) -> Any:
        """Another process computes the page: poll memcached until it is stored
        (a Page), found uncacheable (Signal.PASS), found to vary
        (Signal.RESTART), or the lock is free to take (a token); None after
        ``wait_timeout``."""
        self._count(exchange, "waits")
        deadline = time.monotonic() + self.wait_timeout
        delay = POLL_FIRST
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, POLL_MAX)
            entry = self.store.load(key)
            now = self.clock()
            if type(entry) is Page and entry.state(now) in (FRESH, GRACE) and self._unpurged(entry, now):
                return entry
            if type(entry) is Pass:
                return Signal.PASS
            if type(entry) is VaryMarker:
                return Signal.RESTART
            token = self._lock(exchange)
            if token is UNAVAILABLE:
                return None
            if token is not LOST:
                return token

    # -- computing pages (storing them: pagecache.storing) ----------------

    def _rebuild_for_client(self, exchange: Exchange, token: Any) -> Tuple[Iterable[bytes], Any]:
        """Rebuild the page for this request's client: the response, and the
        outcome for the requests waiting on it."""
        rebuilt = self.fetch(exchange, token, exchange.start_response)
        if type(rebuilt) is Failed:
            fallback = exchange.fallback
            return (self.deliver(exchange, fallback, STALE, self.clock(),
                                 "the application failed: " + rebuilt.reason),
                    Served(STALE, fallback, self._variant(exchange.environ, fallback)))
        if type(rebuilt) is NotStored:
            self._decided(exchange, MISS, "not stored: " + rebuilt.reason)
            return self._respond(exchange, rebuilt.captured, MISS), Signal.PASS
        outcome = Served(HIT, rebuilt.page, self._variant(exchange.environ, rebuilt.page)) \
            if rebuilt.shared else Signal.PASS
        return self._deliver_fetched(exchange, rebuilt), outcome

    def _refresh(self, job: Exchange, token: Any) -> None:
        """Rebuild a page in the background (a worker thread)."""
        rebuilt = self.fetch(job, token, None)
        if type(rebuilt) is NotStored:
            rebuilt.captured.close()

    def fetch(self, exchange: Exchange, token: Any, start_response: Optional[StartResponse],
              count: bool = True) -> Rebuilt:
        """Call the application for the page the key describes (asking it to
        revalidate the page found, if it can be) and store what may be stored;
        the lock (``token``) is released whatever happens. Without a
        fallback, exceptions propagate; with one, a failure is :class:`Failed`."""
        if count:
            self._count(exchange, "misses")
        try:
            route = exchange.route
            environ = self.fill_environ(exchange.environ, route.host, route.query, start_response is None,
                                        revalidation.conditional(exchange.cached),
                                        self.compression.fill_accept_encoding
                                        or encoding.normalised_accept_encoding(
                                            exchange.environ.get("HTTP_ACCEPT_ENCODING")))
            self.tags.start(self.clock())
            exchange.requested = self.clock()
            captured, failure = self._call_app(exchange, environ, start_response, "rebuilding")
            if captured is None:
                if isinstance(token, bytes) and self.error_backoff:
                    self._back_off(exchange, token)
                    token = None
                return Failed(failure)
            return self.store_response(exchange, captured)
        finally:
            if isinstance(token, bytes):
                self._unlock(exchange, token)

    def _back_off(self, exchange: Exchange, token: bytes) -> None:
        """Keep the update lock for ``error_backoff``: until then every
        request, in any process, gets the stale copy without asking the
        failing application, and then one request tries again."""
        self._count(exchange, "backoffs")
        if not self.store.hold(self.keys.lock(exchange.digest), token, self.error_backoff):
            self._unlock(exchange, token)

    def _call_app(self, exchange: Exchange, environ: Dict, start_response: Optional[StartResponse],
                  doing: str) -> Tuple[Optional[Captured], str]:
        """Call the application and capture its response: (captured, ""), or,
        when it raised or answered 5xx and the exchange's fallback may stand in
        for it, (None, what went wrong), logged. Without a fallback, exceptions
        propagate."""
        fallback = exchange.fallback
        if start_response is not None:  # a response written past max_entry_size goes out at once
            start_response = self._labelled(start_response, MISS)
        called = time.perf_counter()
        try:
            captured = capture(self.app, environ, self.max_entry_size, start_response,
                               None if exchange.too_large else self._buffer_limit)
        except Exception as error:
            self.stats.observe("app_seconds", time.perf_counter() - called, exchange.route.index)
            self._count(exchange, "app_errors")
            if fallback is None:
                raise
            url = admin.url_of(environ)
            self.failures.failed(url, f"{doing} {url} failed", sys.exc_info(), self.error_backoff)
            return None, f"{type(error).__name__}: {error}"
        self.stats.observe("app_seconds", time.perf_counter() - called, exchange.route.index)
        if fallback is not None and http.status_code(captured.status) >= 500 and not captured.sent:
            captured.close()
            self._count(exchange, "app_errors")
            url = admin.url_of(environ)
            self.failures.failed(url, f"{doing} {url} answered {captured.status}", None, self.error_backoff)
            return None, f"status {captured.status}"
        if fallback is not None:
            self.failures.recovered(admin.url_of(environ))
        return captured, ""

    # -- serving (the answers: pagecache.delivery) -------------------------

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

    def _variant(self, environ: Dict, page: Page) -> Optional[str]:
        names = self._vary_names(page.headers)
        return http.variant_of(environ, names) if names else None

    # -- purge and invalidation ------------------------------------------

    def invalidate(self, urls: Iterable[tuple]) -> int:
        """Make the pages at these request URLs (see
        :func:`pagecache.keys.request_url`) misses, in every process sharing
        the cache (an unsafe method succeeded on them); how many were cached."""
        found = 0
        for url in urls:
            route = self.routes.route(url)
            if route.cacheable and self.store.delete(route.key):
                found += 1
        if self.local is not None:
            self.local.clear()
        if found:
            self.stats.incr("invalidations", found)
        return found

    def purge(self, url: str, soft: bool = False) -> bool:
        """Remove the page at ``url`` (all its variants); with ``soft``, only end
        its TTL so that it is rebuilt while its grace period lasts. Whether
        anything was stored there."""
        return self.purger.purge(url, soft)

    def purge_tags(self, tags: Iterable[str], soft: bool = False) -> List[str]:
        """Make every page carrying one of ``tags`` a miss (``soft``: end its
        TTL, so that one request rebuilds it while the others get it stale), in
        every process within ``tag_check_interval``; the tags whose purge the
        cache could not take (empty: all done)."""
        if isinstance(tags, str):
            tags = [tags]
        tags = list(tags)
        for tag in tags:
            if tag != ALL and parse_header(tag) != (tag,):
                raise ValueError(f"{tag!r} is not a tag (printable ASCII without spaces; '*' is purge_all)")
        failed = self.tags.purge(tags, soft, self.clock())
        self.stats.incr("tag_purges", len(tags) - len(failed))
        log.info("%s tags %s%s", "soft-purged" if soft else "purged", " ".join(tags),
                 f" (not reached: {' '.join(failed)})" if failed else "")
        return failed

    def purge_all(self, soft: bool = False) -> bool:
        """Make every page this middleware stored a miss (``soft``: stale until
        rebuilt), without flushing memcached or touching other applications'
        keys; whether the cache took it."""
        return not self.purge_tags([ALL], soft)
