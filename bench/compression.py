"""Compression benchmark: what storing pages gzip-compressed saves, and what
it costs a hit.

1. Stored bytes (the whole memcached value) of a 60 KB HTML article list and
   a 200 KB JSON document, generated from a fixed seed (varied words with a
   Zipf-like frequency, markup repeated with varied content: gzip -6 takes
   them to about 20%, where real pages sit; 40 rustdoc pages of 40-300 KB on
   the machine this was written on gave 16-30%, median 27%), against the
   entry ``compression = off`` stores. Target: at most 0.3x each.
2. A hit for a client accepting gzip (Chrome's ``gzip, deflate, br, zstd``),
   against a bare ``get`` of the same stored (compressed) entry plus a
   trivial WSGI call: hit_path's harness (in-process, sequential,
   python-memcached on loopback, interleaved blocks, median). Target: at most
   1.15x.
3. A hit for a client accepting no compression (curl without
   ``--compressed``): the body is decoded once per page and process and
   remembered, so after the first it costs what a gzip hit does. Against the
   same baseline; target at most 2x for the 60 KB page (the 200 KB document:
   information). What the one decoding costs is printed beside it, and, as
   the reference of the hit path without compression, a hit on a page of
   the same stored bytes that is not compressed (application/octet-stream).
4. Application calls for one page asked for by ten clients with ten distinct
   ``Accept-Encoding`` values (browsers, curl with and without
   ``--compressed``, crawlers, libraries, refusals), the application sending
   ``Vary: Accept-Encoding``: 1 (target at most 1). For comparison,
   ``compression = off``: one call per encoding pagecache knows (br, gzip,
   identity), 3 here.
5. The largest HTML page stored under the default ``max_entry_size``
   (1000 KB), with ``compression = off`` and with gzip, by bisection over the
   number of articles of the generated page; both in KB and their ratio
   (information).

    python bench/run.py compression [-- --rounds N]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import hit_path  # noqa: E402  (its harness: the environ as waitress makes it, serve())

from pagecache import PageCacheMiddleware, encoding  # noqa: E402
from pagecache.entry import Page  # noqa: E402
from tests.content import HEAD, TAIL, article, json_document  # noqa: E402  (common puts the root on sys.path)

SIZE_TARGET = "<= 0.3"
GZIP_HIT_TARGET = "<= 1.15"
IDENTITY_HIT_TARGET = "<= 2"
CALLS_TARGET = "<= 1"
MAX_ENTRY_SIZE = 1000 * 1024  # the default of max_entry_size
CHROME = "gzip, deflate, br, zstd"

# Ten clients, ten distinct Accept-Encoding values (None: no header).
CLIENTS: List[Tuple[str, Optional[str]]] = [
    ("Chrome, Edge, Firefox", "gzip, deflate, br, zstd"),
    ("Safari, Googlebot", "gzip, deflate, br"),
    ("curl --compressed", "deflate, gzip, br, zstd"),
    ("curl", None),
    ("python-requests", "gzip, deflate"),
    ("Go net/http", "gzip"),
    ("wget", "identity"),
    ("anything", "*"),
    ("refuses gzip", "gzip;q=0"),
    ("refuses identity", "identity;q=0"),
]


# -- realistic content ----------------------------------------------------------

class Articles:
    """The articles of generated pages, made once from a fixed seed: page(n)
    is the list page holding the first n."""

    def __init__(self, seed: int = 1):
        self.rng = random.Random(seed)
        self.items: List[bytes] = []
        self.ends: List[int] = [len(HEAD) + len(TAIL)]  # page size with 0, 1, 2 ... articles

    def _grow(self, count: int) -> None:
        while len(self.items) < count:
            self.items.append(article(self.rng, 1001 + len(self.items)))
            self.ends.append(self.ends[-1] + len(self.items[-1]))

    def count_for(self, size: int) -> int:
        """The fewest articles making a page of at least ``size`` bytes."""
        while self.ends[-1] < size:
            self._grow(len(self.items) + 256)
        low, high = 0, len(self.ends) - 1
        while low < high:
            middle = (low + high) // 2
            if self.ends[middle] >= size:
                high = middle
            else:
                low = middle + 1
        return low

    def page(self, count: int) -> bytes:
        self._grow(count)
        return HEAD + b"".join(self.items[:count]) + TAIL


# -- helpers --------------------------------------------------------------------

class PageApp:
    """Answers each path with its body and type, counting its calls."""

    def __init__(self, pages: Dict[str, Tuple[bytes, str]], vary: bool = True):
        self.pages = pages
        self.vary = vary
        self.calls = 0

    def __call__(self, environ: Dict, start_response: Callable) -> List[bytes]:
        self.calls += 1
        body, content_type = self.pages[environ["PATH_INFO"]]
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if self.vary:
            headers.append(("Vary", "Accept-Encoding"))
        start_response("200 OK", headers)
        return [body]


def environ_for(path: str, accept_encoding: Optional[str]) -> Dict:
    environ = hit_path.request_environ()
    environ["PATH_INFO"] = environ["REQUEST_URI"] = path
    if accept_encoding is not None:
        environ["HTTP_ACCEPT_ENCODING"] = accept_encoding
    return environ


def answer(middleware: Callable, environ: Dict) -> Tuple[str, Dict[str, str], bytes]:
    got: List = []
    iterable = middleware(dict(environ), lambda status, headers, exc_info=None: got.append((status, headers)))
    body = b"".join(iterable)
    close = getattr(iterable, "close", None)
    if close is not None:
        close()
    status, headers = got[0]
    return status, {name.lower(): value for name, value in headers}, body


def stored_value(middleware: PageCacheMiddleware, environ: Dict) -> bytes:
    value = middleware.cache.get(middleware.keys.page(middleware.keys.digest(environ)))
    if not value:
        raise RuntimeError(f"nothing stored for {environ['PATH_INFO']}")
    return value


def middleware_for(server: common.MemcachedServer, app: Callable, prefix: str, **options) -> PageCacheMiddleware:
    return PageCacheMiddleware(app, "/ 1h 1h", memcached_servers=[server.address], key_prefix=prefix, **options)


# -- 1. stored bytes -------------------------------------------------------------

def stored_sizes(server: common.MemcachedServer, pages: Dict[str, Tuple[bytes, str]]) -> None:
    sizes: Dict[str, Dict[str, int]] = {}
    for mode in ("gzip", "off"):
        # without Vary, so that compression = off stores the page under its URL's key too
        middleware = middleware_for(server, PageApp(pages, vary=False), f"size-{mode}", compression=mode)
        for path in pages:
            environ = environ_for(path, CHROME)
            answer(middleware, environ)
            sizes.setdefault(path, {})[mode] = len(stored_value(middleware, environ))
    for path, (body, content_type) in pages.items():
        on, off = sizes[path]["gzip"], sizes[path]["off"]
        common.note(f"{path} ({content_type.split(';')[0]}, {len(body) / 1024:.0f} KB): stored {on / 1024:.1f} KB "
                    f"gzip-compressed, {off / 1024:.1f} KB with compression = off")
        common.result(f"stored bytes, {path}: gzip / compression = off", on / off, SIZE_TARGET)


# -- 2, 3. hits ---------------------------------------------------------------------

def hit_costs(server: common.MemcachedServer, pages: Dict[str, Tuple[bytes, str]], rounds: int) -> None:
    pages = dict(pages)
    middleware = middleware_for(server, PageApp(pages), "hit")
    for path, (body, _) in list(pages.items()):
        gzip_environ, identity_environ = environ_for(path, CHROME), environ_for(path, None)
        status, headers, sent = answer(middleware, gzip_environ)        # MISS: stores the page
        status, headers, sent = answer(middleware, gzip_environ)
        if headers.get("x-cache") != "HIT" or headers.get("content-encoding") != "gzip":
            raise RuntimeError(f"the gzip client's hit was not a gzip hit: {status} {headers}")
        stored_body = sent
        decode_started = time.perf_counter()
        status, headers, sent = answer(middleware, identity_environ)    # the one decoding
        decode_seconds = time.perf_counter() - decode_started
        if headers.get("x-cache") != "HIT" or "content-encoding" in headers or sent != body:
            raise RuntimeError(f"the identity client's hit was not an identity hit: {status} {headers}")
        decodings = []
        real = encoding.decompress
        encoding.decompress = lambda *args: decodings.append(1) or real(*args)
        try:
            answer(middleware, identity_environ)
        finally:
            encoding.decompress = real
        if decodings:
            raise RuntimeError("the identity client's second hit decoded the body again")
        # The reference of the hit path without compression: a page of the same
        # bytes stored as they are (a type that is not compressed).
        pages[path + ".bin"] = (stored_body, "application/octet-stream")
        plain_environ = environ_for(path + ".bin", CHROME)
        answer(middleware, plain_environ)
        status, headers, sent = answer(middleware, plain_environ)
        if headers.get("x-cache") != "HIT" or "content-encoding" in headers or sent != stored_body:
            raise RuntimeError(f"the reference page was not an identity hit: {status} {headers}")

        key = middleware.keys.page(middleware.keys.digest(gzip_environ))
        client = middleware.cache  # the middleware's own client, hence its own connection (see hit_path)
        if not client.get(key):
            raise RuntimeError(f"the bare client did not find the entry under {key}")
        trivial_headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(stored_body)))]

        def trivial_app(environ: Dict, start_response: Callable) -> List[bytes]:
            start_response("200 OK", trivial_headers)
            return [stored_body]

        def bare() -> int:
            client.get(key)
            return hit_path.serve(trivial_app, gzip_environ)

        times = common.interleaved({
            "gzip": lambda: hit_path.serve(middleware, gzip_environ),
            "identity": lambda: hit_path.serve(middleware, identity_environ),
            "plain": lambda: hit_path.serve(middleware, plain_environ),
            "bare": bare,
            "get": lambda: client.get(key),
        }, rounds=rounds)
        common.note(f"{path} ({len(body) / 1024:.0f} KB, {len(stored_body) / 1024:.1f} KB gzip): gzip hit "
                    f"{common.micros(times['gzip'])}, identity hit {common.micros(times['identity'])}, hit on the "
                    f"same bytes stored uncompressed {common.micros(times['plain'])}, bare get + trivial app "
                    f"{common.micros(times['bare'])} (get alone {common.micros(times['get'])}); the first identity "
                    f"hit, which decodes, took {common.micros(decode_seconds)}")
        common.result(f"gzip-client hit, {path} / (bare get + trivial app)", times["gzip"] / times["bare"],
                      GZIP_HIT_TARGET)
        common.result(f"identity-client hit, {path} / (bare get + trivial app)", times["identity"] / times["bare"],
                      IDENTITY_HIT_TARGET if path == "/articles" else None)
        common.result("... reference: hit on the same bytes uncompressed / (bare ...)", times["plain"] / times["bare"])


# -- 4. application calls for a mix of clients -----------------------------------------

def calls_for_mix(server: common.MemcachedServer, body: bytes) -> None:
    pages = {"/articles": (body, "text/html; charset=utf-8")}
    distinct = len({accept for _, accept in CLIENTS})
    found: Dict[str, int] = {}
    for mode in ("gzip", "off"):
        app = PageApp(pages, vary=True)
        middleware = middleware_for(server, app, f"mix-{mode}", compression=mode)
        for _, accept in CLIENTS:
            status, headers, sent = answer(middleware, environ_for("/articles", accept))
            if not status.startswith("200"):
                raise RuntimeError(f"{accept!r}: {status}")
        for _, accept in CLIENTS:  # all from the cache now
            status, headers, sent = answer(middleware, environ_for("/articles", accept))
            if headers.get("x-cache") != "HIT":
                raise RuntimeError(f"{mode}: {accept!r} was not a hit the second time: {headers}")
        found[mode] = app.calls
    common.note(f"{len(CLIENTS)} clients, {distinct} distinct Accept-Encoding values (no header counted as one), "
                f"the application sending Vary: Accept-Encoding")
    common.result("application calls for the mix of ten clients", found["gzip"], CALLS_TARGET, unit="calls")
    common.result("... with compression = off (one per encoding: br, gzip, identity)", found["off"],
                  unit="calls")
    common.note(f"0.1, which stored one variant per distinct header value, would call it {distinct} times "
                f"(not measured: stated from its variant key, the raw header value)")


# -- 5. the largest page that is cached ------------------------------------------------

def largest_cached(server: common.MemcachedServer, articles: Articles, mode: str, upper: int) -> Tuple[int, int]:
    """(articles, bytes) of the largest generated page stored with ``compression = mode``,
    by bisection over the number of articles; ``upper`` must not be stored."""
    current: Dict[str, bytes] = {}

    def app(environ: Dict, start_response: Callable) -> List[bytes]:
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [current["body"]]

    middleware = middleware_for(server, app, f"largest-{mode}", compression=mode)

    def stored(count: int) -> bool:
        current["body"] = articles.page(count)
        environ = environ_for(f"/list/{count}", CHROME)
        answer(middleware, environ)
        return type(middleware.store.load(middleware.keys.page(middleware.keys.digest(environ)))) is Page

    low, high = 1, upper
    if not stored(low) or stored(high):
        raise RuntimeError(f"{mode}: the bisection's bounds are wrong ({low}, {high} articles)")
    while high - low > 1:
        middle = (low + high) // 2
        if stored(middle):
            low = middle
        else:
            high = middle
    return low, len(articles.page(low))


def largest_pages(server: common.MemcachedServer) -> None:
    articles = Articles(seed=5)
    off_count, off_size = largest_cached(server, articles, "off", articles.count_for(MAX_ENTRY_SIZE + 1))
    compress_max_size = 8 << 20  # the default: the most that is buffered to be compressed
    on_count, on_size = largest_cached(server, articles, "gzip", articles.count_for(compress_max_size + 1))
    common.note(f"largest page stored: {off_count} articles ({off_size / 1024:.0f} KB) with compression = off, "
                f"{on_count} articles ({on_size / 1024:.0f} KB) gzip-compressed, under max_entry_size 1000 KB")
    common.result("largest HTML page cached, compression = off", off_size / 1024, unit="KB")
    common.result("largest HTML page cached, gzip", on_size / 1024, unit="KB")
    common.result("largest HTML page cached: gzip / off", on_size / off_size)


def main(args: list) -> int:
    parser = argparse.ArgumentParser(prog="compression", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="interleaved blocks per variant")
    options = parser.parse_args(args)
    print("compression: stored sizes, hit costs and application calls with pages stored gzip-compressed")
    html = Articles(seed=1).page(Articles(seed=1).count_for(60 * 1024))
    document = json_document(200 * 1024)
    pages = {"/articles": (html, "text/html; charset=utf-8"), "/api/articles": (document, "application/json")}
    with common.memcached(memory_mb=256) as server:
        stored_sizes(server, pages)
        hit_costs(server, pages, options.rounds)
        calls_for_mix(server, html)
        largest_pages(server)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
