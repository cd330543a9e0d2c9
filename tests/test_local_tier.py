"""The in-process tier (``local_ttl``, ``local_size``) in front of a real memcached.

A hot page is served from process memory, without a round trip; it is never
kept longer than ``local_ttl`` after it was read, never served past its own TTL
as fresh, and grace, locks and purges keep the meaning they have without it.
Round trips are counted by a wrapper that delegates every call to a real
memcached client; memcached is also stopped outright to show that no round
trip is needed at all.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Dict, List

import pytest
from webtest import TestApp

from pagecache import PageCacheMiddleware
from pagecache.backends import memcached_client
from pagecache.entry import Page

from .conftest import CountingApp, client, stored

_prefixes = itertools.count()


class CountingClient:
    """A real memcached client that records every call made through it."""

    def __init__(self, client: Any):
        self.client = client
        self.calls: List[tuple] = []
        self._lock = threading.Lock()

    def _record(self, *call: Any) -> None:
        with self._lock:
            self.calls.append(call)

    def page_gets(self) -> int:
        """How many ``get`` calls asked for a page key (``<prefix>:p:...``)."""
        return sum(1 for call in self.calls if call[0] == "get" and ":p:" in call[1])

    def get(self, key: str) -> Any:
        self._record("get", key)
        return self.client.get(key)

    def set(self, key: str, value: bytes, expiry: int = 0) -> Any:
        self._record("set", key)
        return self.client.set(key, value, expiry)

    def add(self, key: str, value: bytes, expiry: int = 0) -> Any:
        self._record("add", key)
        return self.client.add(key, value, expiry)

    def delete(self, key: str) -> Any:
        self._record("delete", key)
        return self.client.delete(key)


@pytest.fixture(params=["python-memcached", "pymemcache"])
def library(request):
    return request.param


@pytest.fixture
def process(memcached, clock, library):
    """build(app, rules, **options) -> (middleware, counting client): one
    "process" of a deployment, with its own client to the shared memcached."""
    prefix = f"local{next(_prefixes)}"

    def build(app: Any, rules: Any = "/ 30 120", **options: Any):
        counting = CountingClient(memcached_client([memcached.address], library, timeout=0.5))
        options.setdefault("key_prefix", prefix)
        return PageCacheMiddleware(app, rules, counting, clock=clock, **options), counting
    return build


def test_hot_page_is_served_without_memcached_round_trips(process, counting_app, memcached):
    middleware, cache = process(counting_app, local_ttl=10)
    browser = client(middleware)
    assert browser.get("/hot").headers["X-Cache"] == "MISS"
    gets = cache.page_gets()
    for _ in range(5):
        response = browser.get("/hot")
        assert (response.body, response.headers["X-Cache"]) == (b"page #1", "HIT")
    assert cache.page_gets() == gets and counting_app.calls == 1
    assert middleware.stats["local_hits"] == 5 and middleware.stats["hits"] == 5

    memcached.stop()                         # no server at all: still served, still HIT
    response = browser.get("/hot")
    assert (response.body, response.headers["X-Cache"]) == (b"page #1", "HIT")
    assert middleware.stats["memcached_errors"] == 0 and counting_app.calls == 1


def test_page_read_from_memcached_is_then_served_locally(process, counting_app):
    writer, _ = process(counting_app)                  # another process stored the page
    client(writer).get("/shared")
    reader, cache = process(counting_app, local_ttl=10)
    browser = client(reader)
    assert [browser.get("/shared").headers["X-Cache"] for _ in range(4)] == ["HIT"] * 4
    assert cache.page_gets() == 1 and reader.stats["local_hits"] == 3


def test_without_local_ttl_every_hit_is_a_round_trip(process, counting_app):
    middleware, cache = process(counting_app)
    browser = client(middleware)
    browser.get("/p")
    gets = cache.page_gets()
    for _ in range(3):
        assert browser.get("/p").headers["X-Cache"] == "HIT"
    assert cache.page_gets() == gets + 3 and middleware.stats["local_hits"] == 0


def test_entry_is_kept_at_most_local_ttl_after_it_was_read(process, counting_app, clock):
    """Another process replaces the page: this one sees the new page as soon as
    its local copy is local_ttl old, not later (and not sooner)."""
    local, cache = process(counting_app, local_ttl=5)
    other, _ = process(counting_app)
    browser = client(local)
    assert browser.get("/news").body == b"page #1"
    assert other.purge("http://example.com/news")
    assert client(other).get("/news").body == b"page #2"

    clock.advance(4.9)
    response = browser.get("/news")
    assert (response.body, response.headers["X-Cache"]) == (b"page #1", "HIT")
    gets = cache.page_gets()
    clock.advance(0.1)                                   # 5 s after it was read
    response = browser.get("/news")
    assert (response.body, response.headers["X-Cache"]) == (b"page #2", "HIT")
    assert cache.page_gets() == gets + 1


def test_never_served_past_its_ttl_as_fresh(process, counting_app, clock):
    """local_ttl longer than the page's TTL: at the TTL the request goes to
    memcached, and the grace rules decide (here: this request rebuilds)."""
    middleware, cache = process(counting_app, rules="/ 10 60", local_ttl=3600)
    browser = client(middleware)
    browser.get("/short")
    clock.advance(9.9)
    assert browser.get("/short").headers["X-Cache"] == "HIT"
    gets = cache.page_gets()
    clock.advance(0.1)                                   # the TTL is over
    response = browser.get("/short")
    assert (response.body, response.headers["X-Cache"]) == (b"page #2", "MISS")
    assert cache.page_gets() > gets and counting_app.calls == 2
    assert browser.get("/short").headers["X-Cache"] == "HIT"


def test_in_grace_another_process_rebuilding_means_stale(process, counting_app, clock):
    """The update lock keeps its meaning: while another process holds it, a page
    past its TTL is served STALE (from memcached), never HIT from memory."""
    middleware, cache = process(counting_app, rules="/ 10 60", local_ttl=3600)
    other, _ = process(counting_app)
    browser = client(middleware)
    browser.get("/g")
    clock.advance(15)
    digest = other.keys.digest_of_url("http://example.com/g")
    token = other.store.lock(other.keys.lock(digest), 30)       # the other process rebuilds
    assert isinstance(token, bytes)
    gets = cache.page_gets()
    response = browser.get("/g")
    assert (response.body, response.headers["X-Cache"], response.headers["Age"]) == (b"page #1", "STALE", "15")
    assert cache.page_gets() == gets + 1 and counting_app.calls == 1
    assert [call for call in cache.calls[-2:] if call[0] == "add"], "the lock was asked for"

    other.store.unlock(other.keys.lock(digest), token)
    response = browser.get("/g")                                 # now this one rebuilds
    assert (response.body, response.headers["X-Cache"]) == (b"page #2", "MISS")


def test_purge_on_the_same_middleware_clears_the_local_tier(process, counting_app):
    middleware, cache = process(counting_app, local_ttl=3600)
    browser = client(middleware)
    browser.get("/a")
    assert browser.get("/a").headers["X-Cache"] == "HIT"
    assert middleware.purge("http://example.com/a")
    response = browser.get("/a")
    assert (response.body, response.headers["X-Cache"]) == (b"page #2", "MISS")


def test_soft_purge_ends_the_local_copy_too(process, counting_app):
    middleware, cache = process(counting_app, local_ttl=3600)
    browser = client(middleware)
    browser.get("/s")
    assert middleware.purge("http://example.com/s", soft=True)
    entry = stored(middleware, "http://example.com/s")
    assert type(entry) is Page and entry.ttl == 0           # in grace now
    response = browser.get("/s")                             # rebuilt, not the local copy
    assert (response.body, response.headers["X-Cache"]) == (b"page #2", "MISS")


def test_http_purge_clears_the_local_tier(process, counting_app):
    middleware, cache = process(counting_app, local_ttl=3600, purge_allowed="127.0.0.1")
    browser = client(middleware)
    browser.get("/h")
    purger = TestApp(middleware, extra_environ={"REMOTE_ADDR": "127.0.0.1"},
                     lint=False)  # WebTest's lint refuses unknown methods
    assert purger.request("/h", method="PURGE", headers={"Host": "example.com"}).status_int == 200
    assert browser.get("/h").body == b"page #2"


def test_local_size_bounds_the_pages_held(process, counting_app):
    middleware, cache = process(counting_app, local_ttl=3600, local_size=3)
    browser = client(middleware)
    for number in range(1, 6):
        browser.get(f"/p{number}")                   # each stored, and kept locally
    gets = cache.page_gets()
    for number in (5, 4, 3):                         # the 3 most recent: from memory
        assert browser.get(f"/p{number}").headers["X-Cache"] == "HIT"
    assert cache.page_gets() == gets
    for number in (1, 2):                            # pushed out: from memcached
        assert browser.get(f"/p{number}").headers["X-Cache"] == "HIT"
        gets += 1
        assert cache.page_gets() == gets
    assert len(middleware.local._items) <= 3
    assert counting_app.calls == 5


def test_variants_are_served_from_memory_each_their_own(process, memcached):
    def app(environ: Dict, start_response: Any) -> List[bytes]:
        language = environ.get("HTTP_ACCEPT_LANGUAGE", "none")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Vary", "Accept-Language")])
        return [f"page in {language}".encode()]

    middleware, cache = process(app, local_ttl=3600)
    browser = client(middleware)
    for language in ("en", "fr"):
        browser.get("/v", headers={"Accept-Language": language})
    gets = cache.page_gets()
    for language in ("en", "fr", "en"):
        response = browser.get("/v", headers={"Accept-Language": language})
        assert (response.body, response.headers["X-Cache"]) == (f"page in {language}".encode(), "HIT")
    assert cache.page_gets() == gets


def test_uncacheable_responses_are_not_kept_in_memory(process, clock):
    app = CountingApp(headers=[("Content-Type", "text/plain"), ("Cache-Control", "private")])
    middleware, cache = process(app, local_ttl=3600)
    browser = client(middleware)
    bodies = [browser.get("/private").body for _ in range(3)]
    assert bodies == [b"page #1", b"page #2", b"page #3"]
    assert middleware.stats["local_hits"] == 0 and middleware.stats["hits"] == 0
