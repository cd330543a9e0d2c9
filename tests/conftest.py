"""Fixtures: real memcached servers, both backends, a controllable clock, apps."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import pytest
from webtest import TestApp

from pagecache import PageCacheMiddleware
from pagecache.entry import Page

from .servers import MemcachedServer


@pytest.fixture(scope="session")
def memcached_server():
    server = MemcachedServer().start()
    yield server
    server.stop()


@pytest.fixture
def memcached(memcached_server):
    """The session's memcached server, emptied for this test (restarted if a test stopped it)."""
    if memcached_server.process is None or memcached_server.process.poll() is not None:
        memcached_server.start()
    memcached_server.resume()
    memcached_server.flush()
    return memcached_server


@pytest.fixture
def memcached_pair():
    """Two memcached servers of this test's own."""
    servers = [MemcachedServer().start(), MemcachedServer().start()]
    yield servers
    for server in servers:
        server.stop()


class Clock:
    """A clock the test moves by hand; the middleware reads it for every decision."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


class CountingApp:
    """A WSGI app that counts its calls and answers what the test tells it."""

    def __init__(self, body: bytes = b"page", status: str = "200 OK",
                 headers: Optional[List] = None):
        self.body = body
        self.status = status
        self.headers = headers if headers is not None else [("Content-Type", "text/plain")]
        self.calls = 0
        self.environs: List[Dict] = []
        self._lock = threading.Lock()

    def __call__(self, environ: Dict, start_response: Callable) -> List[bytes]:
        with self._lock:
            self.calls += 1
            number = self.calls
        self.environs.append(environ)
        body = self.body + b" #%d" % number
        start_response(self.status, list(self.headers))
        return [body]


@pytest.fixture
def counting_app():
    return CountingApp()


@pytest.fixture(params=["memory", "memcached"])
def backend(request):
    """Options selecting each backend in turn: the embedded cache, real memcached."""
    if request.param == "memory":
        return {}
    server = request.getfixturevalue("memcached")
    return {"memcached_servers": server.address}


_prefixes = itertools.count()


@pytest.fixture
def make(backend, clock):
    """Build a middleware on this test's backend and clock: make(app, rules, **options)."""
    def build(app: Callable, rules: Any = "/ 30 120", **options: Any) -> PageCacheMiddleware:
        settings = dict(backend)
        settings.setdefault("key_prefix", f"t{next(_prefixes)}")
        settings.update(options)
        return PageCacheMiddleware(app, rules, clock=clock, **settings)
    return build


def stored(middleware: PageCacheMiddleware, url: str, environ: Optional[Dict] = None):
    """What the cache holds for ``url`` (a Page, VaryMarker, Pass or None),
    read through the middleware's own keys and store, on whichever backend."""
    digest = middleware.keys.digest_of_url(url)
    return middleware.store.load(middleware.keys.page(digest))


def client(middleware: PageCacheMiddleware, host: str = "example.com") -> TestApp:
    return TestApp(middleware, extra_environ={"HTTP_HOST": host})


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` (for things that happen in another thread or process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %ss" % timeout)
        time.sleep(0.005)


__all__ = ["Clock", "CountingApp", "stored", "client", "wait_until", "Page"]
