"""Edge Side Includes at delivery: a stored page's holes filled for the
request at hand.

A page the application marked as holding ESI (``Surrogate-Control:
content="ESI/1.0"``, or a rule with the word ``esi``) is parsed once, when it
is stored (:mod:`pagecache.esi`); every delivery assembles it. Each include
is a sub-request through pagecache for the fragment's URL (same host,
resolved against the page), made from the client's own request, so a
fragment has its own rule, lifetime, grace, tags and coalescing, and a
personal fragment (one no rule caches, or whose request bypasses: the
user's cookies, ``Authorization``) is rendered by the application for that
user. The cached fragments of a page are read in one ``get_multi``, which
the page's own ``get`` joins once the page is known to have them; when they
all come from there, the assembled page is remembered per process for as
long as the page and its fragments are the ones read. The others are
sub-requests, each on a thread of its own (at most ``esi_workers`` at once
per process; beyond, in the request's thread), so a page's personal
fragments render at once and one that hangs is given up after
``esi_timeout`` without holding up other pages.

A fragment that fails (raises, times out, answers 4xx or 5xx) gives its
``alt``, or nothing with ``onerror="continue"``, or else the whole page
fails as an application error does (a stale copy of the page when one can
stand in, else a 502); nothing of it is stored. Nesting is bounded by
``esi_depth``; a loop (a fragment including itself, a->b->a) ends as a
failed include.

The assembled response has the ``Content-Length`` of its body, an ``ETag``
made from it (so it changes when any part does), no ``Last-Modified``, the
``Set-Cookie`` headers of its personal fragments, and, when any fragment
was personal, ``Cache-Control: private, no-cache`` (never more shared than its
most private part).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

from . import esi, http
from .capture import capture
from .entry import ESI, SHARED, Headers, Page, header_value
from .keys import RequestURL, request_url

log = logging.getLogger("pagecache")

CHAIN = "pagecache.esi"  # environ key: the URLs of the pages being assembled around a sub-request
PERSONAL_CONTROL = ("Cache-Control", "private, no-cache")
SUB_REQUEST_REMOVED = ("CONTENT_TYPE", "HTTP_TRANSFER_ENCODING", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE",
                       "HTTP_IF_MATCH", "HTTP_IF_UNMODIFIED_SINCE", "HTTP_IF_RANGE", "HTTP_RANGE", "pagecache")
PERSONAL = ("REQUEST_METHOD", "HTTP_AUTHORIZATION", "REMOTE_USER", "HTTP_COOKIE")


class Fragment:
    """What one include gave: for the debug log and the assembled headers."""

    __slots__ = ("url", "label", "status", "personal", "cookies")

    def __init__(self, url: str, label: str, status: int, personal: bool, cookies: Headers = ()):
        self.url, self.label, self.status, self.personal, self.cookies = url, label, status, personal, list(cookies)

    def __repr__(self) -> str:
        return f"{self.url} {self.label or '-'} {self.status}{' personal' if self.personal else ''}"


class Failure(Exception):
    """A fragment failed with neither alt nor onerror="continue"."""


class Pending:
    """A sub-request running on a thread of its own."""

    def __init__(self, work: Callable[[], esi.Fetched], done: Callable[[], None]):
        self.result: Optional[esi.Fetched] = None
        self.finished = threading.Event()
        self._work, self._done = work, done
        threading.Thread(target=self._run, name="pagecache-esi", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._work()
        finally:
            self.finished.set()
            self._done()


class Fragments:
    """The ESI delivery of one middleware."""

    def __init__(self, middleware: Any, depth: int, timeout: float, workers: int):
        self.middleware = middleware
        self.depth = depth
        self.timeout = timeout
        self.workers = workers
        self._threads = threading.BoundedSemaphore(workers)

    # -- at store time -------------------------------------------------------

    @staticmethod
    def prepare(body: bytes) -> bytes:
        """The stored form of an ESI body (EsiError if it does not parse)."""
        return esi.to_bytes(esi.parse(body))

    @staticmethod
    def parts(page: Page) -> esi.Parts:
        """A stored ESI page's parts, parsed once per page and process."""
        memo = page.memo()
        parts = memo.get("esi")
        if parts is None:
            parts = memo["esi"] = esi.from_bytes(page.body)
        return parts

    # -- at delivery -----------------------------------------------------------

    def assemble(self, environ: Dict, route: Any, page: Page,
                 prefetched: Optional[Dict[str, Any]] = None) -> Tuple[Headers, bytes, List[Fragment]]:
        """The headers and body of ``page`` assembled for the request of
        ``environ`` (whose route is ``route``), and the fragments; Failure when
        a fragment failed that nothing may stand in for."""
        outer = environ.get(CHAIN, ())
        if not outer and prefetched is not None:
            assembled = self._assembled_before(environ, route, page, prefetched)
            if assembled is not None:
                return assembled
        parts = self.parts(page)
        page_url = self._url(environ, route)
        chain = outer + (page_url,)
        urls = [url for url in (esi.resolve(page_url, include.src) for include in esi.includes(parts))
                if url is not None and url not in chain]
        keys, cached = self._cached(environ, urls, prefetched)
        route.fragments = tuple(keys.values())  # read with the page next time
        # the page itself (not a fragment), all its fragments from the cache and none with includes of its
        # own: the same entries make the same page
        top = len(chain) == 1 and urls and len(cached) == len(urls) and not any(
            ESI in entry.flags for _, entry in cached.values())
        deadline = time.monotonic() + self.timeout
        pending: Dict[str, Pending] = {}
        if len(chain) == 1:  # the page itself: its sub-requests at once, each on a thread
            for url in urls:
                if url not in cached and url not in pending and self._threads.acquire(blocking=False):
                    pending[url] = Pending(lambda url=url: self._sub_request(environ, url, chain),
                                           self._threads.release)
        fragments: List[Fragment] = []

        def fetch(url: str) -> esi.Fetched:
            if url in chain:
                return esi.Fetched(False, (), Fragment(url, "loop", 0, False))
            if url in cached:
                fetched = self._from_cache(environ, route, url, cached[url][1], chain)
            elif url in pending:
                fetched = self._wait(url, pending[url], deadline)
            else:
                fetched = self._sub_request(environ, url, chain)
            fragments.append(fetched.info)
            return fetched

        try:
            body, _ = esi.assemble(parts, page_url, fetch, 1 if len(chain) <= self.depth else 0)
        except esi.FragmentFailed as failed:
            raise Failure(f"fragment {failed.include.src} failed ({fragments})") from None
        headers = self._headers(page.headers, body, fragments)
        if top and not any(fragment.personal for fragment in fragments):
            page.memo()["assembled"] = (route, tuple(key for key, _ in cached.values()),
                                        tuple(entry for _, entry in cached.values()), (headers, body, fragments))
        return headers, body, fragments

    def _assembled_before(self, environ: Dict, route: Any, page: Page, prefetched: Dict[str, Any]
                          ) -> Optional[Tuple[Headers, bytes, List[Fragment]]]:
        """The page as it was last assembled for its URL, if this request would
        get it from the same fragment entries, all still fresh and usable by
        it: the hit path of an ESI page whose fragments are all cached."""
        found = page.memo().get("assembled")
        if found is None or found[0] is not route:
            return None
        _, keys, entries, assembled = found
        personal = None
        if "HTTP_COOKIE" in environ or "HTTP_AUTHORIZATION" in environ or environ.get("REMOTE_USER"):
            personal = self._personal(environ)
            if personal is not None and personal != "cookie":
                return None
        middleware = self.middleware
        now = middleware.clock()
        for key, entry in zip(keys, entries):
            if prefetched.get(key) is not entry or now - entry.stored >= entry.ttl \
                    or not middleware._unpurged(entry, now) or (personal is not None and SHARED not in entry.flags):
                return None
        return assembled

    def assemble_answer(self, environ: Dict, route: Any, status: str, headers: Headers,
                        body: bytes) -> Tuple[Headers, bytes, List[Fragment]]:
        """:meth:`assemble` for a response that is not stored (parsed for this
        request alone)."""
        page = Page(status, headers, self.prepare(body), 0.0, 0.0, 0.0, flags=ESI)
        return self.assemble(environ, route, page)

    def _cached(self, environ: Dict, urls: List[str], prefetched: Optional[Dict[str, Any]]
                ) -> Tuple[Dict[str, str], Dict[str, Tuple[str, Any]]]:
        """The keys of the fragments a rule caches (url -> key), and those that
        may be served straight from the cache to this request, read in one
        round trip (or found among ``prefetched``): url -> (key, entry)."""
        middleware = self.middleware
        keys: Dict[str, str] = {}
        for url in urls:
            route = middleware.routes[self._request_url(environ, url)]
            if route.cacheable:
                keys[url] = route.key
        if not keys:
            return keys, {}
        found = dict(prefetched or {})
        wanted = [key for key in keys.values() if key not in found]
        if wanted:
            found.update(middleware.store.load_many(wanted))
        now = middleware.clock()
        personal = self._personal(environ)
        usable = {}
        for url, key in keys.items():
            entry = found.get(key)
            if type(entry) is not Page or now - entry.stored >= entry.ttl or not middleware._unpurged(entry, now):
                continue
            if personal is not None and not (personal == "cookie" and SHARED in entry.flags):
                continue
            usable[url] = (key, entry)
        return keys, usable

    def _from_cache(self, environ: Dict, route: Any, url: str, entry: Page, chain: Tuple[str, ...]) -> esi.Fetched:
        middleware = self.middleware
        fragment_route = middleware.routes[self._request_url(environ, url)]
        middleware.stats.incr("hits", 1, fragment_route.index)
        if ESI in entry.flags:
            try:
                sub = self._sub_environ(environ, url, chain)
                _, body, inner = self.assemble(sub, fragment_route, entry)
            except Failure:
                return esi.Fetched(False, (), Fragment(url, "HIT", 500, False))
            personal = any(fragment.personal for fragment in inner)
            return esi.Fetched(True, (body,), Fragment(url, "HIT", 200, personal,
                                                       [c for f in inner for c in f.cookies]))
        representation = middleware.compression.representation(entry, None) if entry.encoding else \
            (entry.headers, entry.body)
        if representation is None:
            return esi.Fetched(False, (), Fragment(url, "HIT", 500, False))
        return esi.Fetched(True, (representation[1],), Fragment(url, "HIT", http.status_code(entry.status), False))

    def _wait(self, url: str, pending: Pending, deadline: float) -> esi.Fetched:
        if not pending.finished.wait(max(0.0, deadline - time.monotonic())) or pending.result is None:
            log.warning("ESI fragment %s: no answer within esi_timeout (%gs)", url, self.timeout)
            return esi.Fetched(False, (), Fragment(url, "timeout", 0, True))
        return pending.result

    def _sub_request(self, environ: Dict, url: str, chain: Tuple[str, ...]) -> esi.Fetched:
        """The fragment at ``url`` through pagecache, for the client of ``environ``."""
        middleware = self.middleware
        sub = self._sub_environ(environ, url, chain)
        try:
            captured = capture(middleware, sub, middleware.max_entry_size)
        except Exception:
            log.error("ESI fragment %s raised", url, exc_info=True)
            return esi.Fetched(False, (), Fragment(url, "error", 500, True))
        try:
            code = http.status_code(captured.status)
            headers = captured.headers
            label = header_value(headers, "x-cache") or ""
            status_line = header_value(headers, "cache-status") or ""
            control = ",".join(value for name, value in headers if name.lower() == "cache-control").lower()
            shared = ("; hit" in status_line or "stored" in status_line) and "private" not in control
            cookies = http.set_cookies(headers)
            fragment = Fragment(url, label, code, not shared or bool(cookies), cookies)
            if not captured.complete or not 200 <= code < 300:
                return esi.Fetched(False, (), fragment)
            return esi.Fetched(True, (captured.body,), fragment)
        finally:
            captured.close()

    def _sub_environ(self, environ: Dict, url: str, chain: Tuple[str, ...]) -> Dict:
        """A GET of ``url`` made from the client's request (its cookies and
        credentials, for personal fragments), without body or validators."""
        sub = {name: value for name, value in environ.items() if name not in SUB_REQUEST_REMOVED}
        path, query = self._path_of(environ, url)
        sub.update({"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
                    "CONTENT_LENGTH": "0", "wsgi.input": io.BytesIO(b""), "HTTP_ACCEPT_ENCODING": "identity",
                    CHAIN: chain})
        return sub

    @staticmethod
    def _path_of(environ: Dict, url: str) -> Tuple[str, str]:
        parts = urlsplit(url)
        path = unquote(parts.path, "latin-1")
        script = environ.get("SCRIPT_NAME", "")
        if script and path.startswith(script):
            path = path[len(script):]
        return path, parts.query

    def _request_url(self, environ: Dict, url: str) -> RequestURL:
        """The request URL of the sub-request for ``url`` (see :meth:`_sub_environ`)."""
        return self._path_of(environ, url) + request_url(environ)[2:]

    def _personal(self, environ: Dict) -> Optional[str]:
        """Why this request may not be served shared entries (None: it may)."""
        return http.bypass_reason({name: environ.get(name) for name in PERSONAL if name in environ},
                                  self.middleware.bypass_cookies)

    @staticmethod
    def _url(environ: Dict, route: Any) -> str:
        scheme = environ.get("wsgi.url_scheme", "http")
        host = route.host or environ.get("HTTP_HOST", "")
        query = environ.get("QUERY_STRING", "")
        return f"{scheme}://{host}{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}" + \
            (f"?{query}" if query else "")

    @staticmethod
    def _headers(stored: Headers, body: bytes, fragments: List[Fragment]) -> Headers:
        personal = any(fragment.personal for fragment in fragments)
        dropped = {"content-length", "etag", "last-modified"} | ({"cache-control"} if personal else set())
        headers = [(name, value) for name, value in stored if name.lower() not in dropped]
        if personal:
            headers.append(PERSONAL_CONTROL)
        headers += [cookie for fragment in fragments for cookie in fragment.cookies]
        headers += [("Content-Length", str(len(body))), ("ETag", http.make_etag(body))]
        return headers

