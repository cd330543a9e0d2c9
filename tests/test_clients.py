"""Both memcached client libraries, the embedded cache's memory bound, and
responses larger than ``max_entry_size``.

Hits, stores, update locks (memcached ``add``; released only by their
holder), grace and stale serving are checked with python-memcached and with
pymemcache against a real memcached, including pages written by one library
and read by the other. :class:`MemoryCache` is checked to hold no more than
``memory_limit`` (plus per-item bookkeeping) whatever is written to it. A
response larger than ``max_entry_size`` must reach the client while the
application is still producing it, and must not be stored.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import tracemalloc
from typing import Any, Callable, Dict, Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagecache import PageCacheMiddleware
from pagecache.backends import ITEM_OVERHEAD, MemoryCache
from pagecache.entry import Page, Pass
from pagecache.store import LOST

from .conftest import CountingApp, client, stored
from .servers import AppServer

LIBRARIES = ["python-memcached", "pymemcache"]
HOLD = 30.0  # longest anything waits for the test to let it go (never reached when passing)
_prefixes = itertools.count()


@pytest.fixture(params=LIBRARIES)
def library(request):
    return request.param


@pytest.fixture
def build(memcached, clock):
    """build(app, library, **options): a middleware with its own client of
    ``library`` on the test's memcached (one "process" of a deployment)."""
    prefix = f"cl{next(_prefixes)}"

    def make(app: Callable, library: str, rules: Any = "/ 30 120", **options: Any) -> PageCacheMiddleware:
        options.setdefault("key_prefix", prefix)
        return PageCacheMiddleware(app, rules, clock=clock, memcached_servers=[memcached.address],
                                   memcached_client=library, memcached_timeout=1, **options)
    return make


def lock_key(middleware: PageCacheMiddleware, url: str) -> str:
    return middleware.keys.lock(middleware.keys.digest_of_url(url))


# -- hits and stores ----------------------------------------------------------

def test_a_miss_stores_the_page_in_memcached_and_then_hits(build, library, memcached, counting_app):
    middleware = build(counting_app, library)
    browser = client(middleware)
    first = browser.get("/page")
    assert (first.body, first.headers["X-Cache"]) == (b"page #1", "MISS")
    key = middleware.keys.page(middleware.keys.digest_of_url("http://example.com/page"))
    assert key in memcached.keys()
    page = stored(middleware, "http://example.com/page")
    assert type(page) is Page and page.body == b"page #1" and (page.ttl, page.grace) == (30, 120)
    for _ in range(3):
        response = browser.get("/page")
        assert (response.body, response.headers["X-Cache"], response.headers["Age"]) == (b"page #1", "HIT", "0")
    assert counting_app.calls == 1
    assert middleware.stats["hits"] == 3 and middleware.stats["stores"] == 1


@pytest.mark.parametrize("writer", LIBRARIES)
@pytest.mark.parametrize("reader", LIBRARIES)
def test_a_page_stored_by_one_library_is_a_hit_for_the_other(build, writer, reader, counting_app):
    client(build(counting_app, writer)).get("/shared")
    response = client(build(counting_app, reader)).get("/shared")
    assert (response.body, response.headers["X-Cache"]) == (b"page #1", "HIT")
    assert counting_app.calls == 1


def test_a_page_too_large_for_memcached_is_served_and_not_stored(build, library, clock):
    """memcached refuses items over 1 MB (its default item size): the page is
    served all the same, and counted as a store failure, never as stored."""
    app = CountingApp(body=b"x" * (1100 << 10))
    middleware = build(app, library, max_entry_size="2MB", compression="off")  # stored as it is
    browser = client(middleware)
    assert len(browser.get("/huge").body) > 1100 << 10
    assert stored(middleware, "http://example.com/huge") is None
    assert middleware.stats["stores"] == 0 and middleware.stats["store_failures"] == 1
    assert browser.get("/huge").headers["X-Cache"] == "MISS" and app.calls == 2


# -- locks --------------------------------------------------------------------

def test_the_update_lock_is_memcached_add(build, library, counting_app):
    one, other = build(counting_app, library), build(counting_app, library)
    key = lock_key(one, "http://example.com/l")
    token = one.store.lock(key, 30)
    assert isinstance(token, bytes)
    assert other.store.lock(key, 30) is LOST          # another client: add fails
    assert one.store.lock(key, 30) is LOST            # and the same one too
    one.store.unlock(key, token)
    again = other.store.lock(key, 30)
    assert isinstance(again, bytes) and again != token


def test_a_lock_is_released_only_by_its_holder(build, library, counting_app):
    holder, intruder = build(counting_app, library), build(counting_app, library)
    key = lock_key(holder, "http://example.com/l")
    token = holder.store.lock(key, 30)
    intruder.store.unlock(key, b"0" * len(token))     # a token that does not hold it
    assert intruder.store.lock(key, 30) is LOST
    intruder.store.unlock(key, LOST)                  # losing is no token either
    assert intruder.store.lock(key, 30) is LOST
    holder.store.unlock(key, token)
    assert isinstance(intruder.store.lock(key, 30), bytes)


def test_an_abandoned_lock_expires_after_lock_timeout(build, library, counting_app):
    """A process died holding the lock: memcached drops it after lock_timeout."""
    middleware = build(counting_app, library)
    key = lock_key(middleware, "http://example.com/l")
    assert isinstance(middleware.store.lock(key, 1), bytes)
    assert middleware.store.lock(key, 1) is LOST
    deadline = threading.Event()
    timer = threading.Timer(10, deadline.set)          # generous: memcached counts whole seconds
    timer.start()
    try:
        while not isinstance(middleware.store.lock(key, 1), bytes):
            assert not deadline.wait(0.05), "the lock outlived lock_timeout by far"
    finally:
        timer.cancel()


def test_a_cold_page_is_computed_once_by_clients_of_both_libraries(build, counting_app):
    """Two "processes", one per library, three threads each, released together
    while the first request is held inside the application."""
    entered, release = threading.Event(), threading.Event()

    def app(environ: Dict, start_response: Callable) -> List[bytes]:
        entered.set()
        assert release.wait(HOLD)
        return counting_app(environ, start_response)

    middlewares = [build(app, library, wait_timeout=HOLD) for library in LIBRARIES]
    barrier = threading.Barrier(6)
    results: List[Any] = [None] * 6

    def request(number: int) -> None:
        barrier.wait(HOLD)
        results[number] = client(middlewares[number % 2]).get("/cold")

    threads = [threading.Thread(target=request, args=(n,), daemon=True) for n in range(6)]
    for thread in threads:
        thread.start()
    assert entered.wait(HOLD)
    release.set()
    for thread in threads:
        thread.join(HOLD)
    assert [r.body for r in results] == [b"page #1"] * 6
    assert sorted(r.headers["X-Cache"] for r in results) == ["HIT"] * 5 + ["MISS"]
    assert counting_app.calls == 1


# -- grace and stale ---------------------------------------------------------

def test_in_grace_one_request_rebuilds_while_the_others_get_the_stale_page(build, library, clock):
    app = CountingApp()
    middleware = build(app, library)
    browser = client(middleware)
    browser.get("/g")
    clock.advance(40)                                 # TTL 30 over, grace 120 running
    inside, release = threading.Event(), threading.Event()
    original = app.__call__

    def held(environ: Dict, start_response: Callable) -> List[bytes]:
        inside.set()
        assert release.wait(HOLD)
        return original(environ, start_response)

    middleware.app = held
    rebuilt: Dict[str, Any] = {}
    rebuilder = threading.Thread(target=lambda: rebuilt.update(r=client(middleware).get("/g")), daemon=True)
    rebuilder.start()
    try:
        assert inside.wait(HOLD)
        other_process = build(app, library)
        for browser_of in (middleware, other_process):
            response = client(browser_of).get("/g")
            assert (response.body, response.headers["X-Cache"], response.headers["Age"]) == \
                (b"page #1", "STALE", "40")
    finally:
        release.set()
        rebuilder.join(HOLD)
    assert (rebuilt["r"].body, rebuilt["r"].headers["X-Cache"]) == (b"page #2", "MISS")
    response = browser.get("/g")
    assert (response.body, response.headers["X-Cache"]) == (b"page #2", "HIT")
    assert app.calls == 2


@pytest.mark.parametrize("failure", ["raises", "500"])
def test_stale_if_error_covers_a_failing_rebuild(build, library, clock, failure):
    app = CountingApp()
    middleware = build(app, library, rules="/ 10 20", stale_if_error=3600, error_backoff=0)  # retried at once
    browser = client(middleware)
    browser.get("/e")
    clock.advance(100)                                # past TTL and grace, inside stale_if_error

    def broken(environ: Dict, start_response: Callable) -> List[bytes]:
        if failure == "raises":
            raise RuntimeError("database down")
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"error"]

    middleware.app = broken
    response = browser.get("/e")
    assert (response.status_int, response.body, response.headers["X-Cache"]) == (200, b"page #1", "STALE")
    assert type(stored(middleware, "http://example.com/e")) is Page
    assert stored(middleware, "http://example.com/e").body == b"page #1"
    middleware.app = app
    response = browser.get("/e")
    assert (response.body, response.headers["X-Cache"]) == (b"page #2", "MISS")


# -- the embedded cache's bound ------------------------------------------------

operations = st.lists(st.tuples(st.sampled_from(["set", "add", "delete", "get"]),
                                st.integers(0, 40),                # key
                                st.integers(0, 3000)),             # value size
                      max_size=120)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, limit=st.integers(1, 8000))
def test_memory_cache_never_counts_more_than_its_limit(ops, limit):
    cache = MemoryCache(limit)
    for op, number, size in ops:
        key = f"key-{number}"
        value = bytes([number]) * size
        if op == "set":
            assert cache.set(key, value, 0) == (len(key) + size + ITEM_OVERHEAD <= limit)
        elif op == "add":
            cache.add(key, value, 0)
        elif op == "delete":
            cache.delete(key)
        else:
            cache.get(key)
        held = {k: v for k, (v, _, _) in cache._items.items()}
        assert cache.size == sum(len(k) + len(v) + ITEM_OVERHEAD for k, v in held.items())
        assert cache.size <= limit
        if op == "set" and len(key) + size + ITEM_OVERHEAD <= limit:
            assert cache.get(key) == value        # the newest write is kept (oldest go first)


def test_memory_cache_bound_holds_through_the_middleware(clock):
    """Pages of many sizes written through the middleware: never more than
    memory_limit counted, the newest page always there."""
    sizes = itertools.cycle([100, 5000, 20000, 700, 60000, 12000])

    def app(environ: Dict, start_response: Callable) -> List[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"x" * next(sizes)]

    middleware = PageCacheMiddleware(app, "/ 30 120", clock=clock, memory_limit="128KB")
    browser = client(middleware)
    for number in range(300):
        browser.get(f"/p/{number}")
        assert middleware.cache.size <= 128 << 10
        assert type(stored(middleware, f"http://example.com/p/{number}")) is Page
    assert len(middleware.cache) < 300


def test_memory_cache_resident_size_stays_within_its_limit():
    """Real allocations (tracemalloc), not the cache's own count: 10x the limit
    written, in values of 1 to 16 KB; what stays allocated is the limit plus
    per-item bookkeeping (well under 10% here)."""
    limit = 2 << 20
    tracemalloc.start()
    try:
        cache = MemoryCache(limit)
        before = tracemalloc.get_traced_memory()[0]
        written, number = 0, 0
        while written < 10 * limit:
            size = 1024 * (1 + number % 16)
            cache.set(f"pagecache:p:{number:032x}", b"%08d" % number * (size // 8), 3600)
            written += size
            number += 1
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) < number
    assert held <= 1.1 * limit, f"{held} bytes held for a {limit}-byte limit"


# -- responses larger than max_entry_size ----------------------------------------

class LazyBody:
    """A response body produced chunk by chunk, recording how far it got."""

    def __init__(self, chunks: int, size: int):
        self.chunks, self.size = chunks, size
        self.produced = 0
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for number in range(self.chunks):
            self.produced += 1
            yield bytes([65 + number]) * self.size

    def close(self) -> None:
        self.closed += 1


def test_a_response_larger_than_max_entry_size_streams_through_unstored(make):
    bodies: List[LazyBody] = []

    def app(environ: Dict, start_response: Callable) -> LazyBody:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        bodies.append(LazyBody(chunks=10, size=600))
        return bodies[-1]

    middleware = make(app, max_entry_size=1024)
    for request in range(2):
        started: List[Any] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/big", "QUERY_STRING": "", "SCRIPT_NAME": "",
                   "SERVER_NAME": "example.com", "SERVER_PORT": "80", "HTTP_HOST": "example.com",
                   "wsgi.url_scheme": "http"}
        iterable = middleware(environ, lambda status, headers, exc_info=None: started.append(dict(headers)))
        chunks = iter(iterable)
        first = next(chunks)
        assert first == b"A" * 600
        assert started and started[0]["X-Cache"] == "MISS"
        # what was produced before the client got its first chunk: at most
        # max_entry_size and one chunk more, never the whole response
        assert bodies[-1].produced <= 2
        rest = b"".join(chunks)
        assert first + rest == b"".join(bytes([65 + n]) * 600 for n in range(10))
        assert bodies[-1].produced == 10 and bodies[-1].closed == 0
        iterable.close()
        assert bodies[-1].closed == 1
        assert type(stored(middleware, "http://example.com/big")) is not Page
    assert middleware.stats["stores"] == 0 and len(bodies) == 2


def _streaming_app(gate: Any, produced: Any) -> Callable:
    """Three 64 KB chunks, then (once the test lets it) the last one."""
    def app(environ: Dict, start_response: Callable) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        for number in range(3):
            produced.value += 1
            yield bytes([65 + number]) * (64 << 10)
        gate.wait(HOLD)
        produced.value += 1
        yield b"D" * (64 << 10)
    return app


def test_a_large_response_reaches_a_real_client_before_it_is_complete(memcached):
    """Through waitress: the client reads the first 192 KB while the application
    is still held before its last chunk; then the rest. Nothing is stored."""
    gate = AppServer.context.Event()
    produced = AppServer.context.Value("i", 0)
    prefix = f"cl{next(_prefixes)}"

    def make_app() -> PageCacheMiddleware:
        return PageCacheMiddleware(_streaming_app(gate, produced), "/ 30 120", key_prefix=prefix,
                                   memcached_servers=[memcached.address], max_entry_size="100KB")

    server = AppServer(make_app, threads=2).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HOLD / 2)
        connection.request("GET", "/big")
        response = connection.getresponse()
        assert (response.status, response.getheader("X-Cache")) == (200, "MISS")
        head = response.read(3 * (64 << 10))
        assert head == b"A" * (64 << 10) + b"B" * (64 << 10) + b"C" * (64 << 10)
        assert produced.value == 3 and not gate.is_set()
        gate.set()
        assert response.read() == b"D" * (64 << 10)
        connection.close()
    finally:
        gate.set()
        server.stop()
    reader = PageCacheMiddleware(CountingApp(), "/ 30 120", key_prefix=prefix,
                                 memcached_servers=[memcached.address])
    entry = stored(reader, f"http://127.0.0.1:{server.port}/big")
    assert type(entry) is Pass and "max_entry_size" in entry.reason
