"""Purging: middleware.purge(), PURGE over HTTP (allowed, refused, soft, off),
and purges seen by every process sharing memcached, on both backends.

A hard purge removes the page and every Vary variant (the next request
computes it); a soft purge only ends the TTL, so the stale copy is served while
one request rebuilds it, then the fresh page is served.
"""

from __future__ import annotations

import http.client
import threading
from typing import Callable, Dict, List, Optional

import pytest
from webtest import TestApp

from pagecache import PageCacheMiddleware
from pagecache.entry import GRACE, Page, VaryMarker

from .conftest import client, stored
from .servers import AppServer

URL = "http://example.com/news"


class GatedApp:
    """Answers ``<prefix> #<call number>``; while ``gate`` is closed a call
    sets ``entered`` and blocks until the test opens it, so a test can hold a
    rebuild in progress and see what other requests get meanwhile."""

    def __init__(self, vary: str = ""):
        self.vary = vary
        self.calls = 0
        self.methods: List[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, environ: Dict, start_response: Callable) -> List[bytes]:
        with self._lock:
            self.calls += 1
            number = self.calls
        self.methods.append(environ["REQUEST_METHOD"])
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        prefix = "page"
        headers = [("Content-Type", "text/plain")]
        if self.vary:
            prefix = environ.get("HTTP_" + self.vary.upper().replace("-", "_"), "none")
            headers.append(("Vary", self.vary))
        body = f"{prefix} #{number}".encode("ascii")
        start_response("200 OK", headers + [("Content-Length", str(len(body)))])
        return [body]


def rebuilt_while_requesting(mw: PageCacheMiddleware, app: GatedApp, path: str = "/news",
                             headers: Optional[Dict[str, str]] = None):
    """One request rebuilds ``path`` (held inside the app) while another asks for
    it; returns (the other's response, the rebuilding request's response)."""
    app.gate.clear()
    app.entered.clear()
    rebuilding: Dict = {}
    thread = threading.Thread(target=lambda: rebuilding.update(response=client(mw).get(path, headers=headers)))
    thread.start()
    try:
        assert app.entered.wait(10), "no request reached the application"
        during = client(mw).get(path, headers=headers)
    finally:
        app.gate.set()
        thread.join(10)
    return during, rebuilding["response"]


def purge_request(mw: PageCacheMiddleware, path: str, address: str, soft: bool = False):
    """A PURGE request from ``address`` (lint off: WebTest warns about unknown methods)."""
    headers = {"Host": "example.com", **({"X-Purge-Soft": "1"} if soft else {})}
    return TestApp(mw, extra_environ={"REMOTE_ADDR": address}, lint=False).request(
        path, method="PURGE", headers=headers, expect_errors=True)


# -- middleware.purge() ---------------------------------------------------


def test_hard_purge_removes_the_page(make):
    app = GatedApp()
    mw = make(app, "/ 30 120")
    assert client(mw).get("/news").headers["X-Cache"] == "MISS"
    assert client(mw).get("/news").headers["X-Cache"] == "HIT"

    assert mw.purge(URL) is True
    assert stored(mw, URL) is None
    response = client(mw).get("/news")
    assert (response.headers["X-Cache"], response.body) == ("MISS", b"page #2")
    assert mw.purge(URL + "?other=1") is False


def test_purge_says_whether_anything_was_there(make):
    mw = make(GatedApp(), "/ 30 120")
    assert mw.purge(URL) is False
    assert mw.purge(URL, soft=True) is False
    client(mw).get("/news")
    assert mw.purge(URL) is True
    assert mw.purge(URL) is False


@pytest.mark.parametrize("purged, hits", [
    ("http://example.com/news?page=2", True),
    ("http://EXAMPLE.com:80/news?page=2", True),
    ("http://example.com/news?page=2#comments", True),
    ("http://example.com/news?page=3", False),
    ("http://example.com/news", False),
    ("https://example.com/news?page=2", False),
    ("http://example.com:8080/news?page=2", False),
    ("http://other.example/news?page=2", False),
])
def test_purge_finds_the_page_a_request_for_that_url_would_get(make, purged, hits):
    mw = make(GatedApp(), "/ 30 120")
    client(mw).get("/news?page=2")
    assert mw.purge(purged) is hits
    assert (stored(mw, "http://example.com/news?page=2") is None) is hits


def test_purge_of_an_encoded_path(make):
    mw = make(GatedApp(), "/ 30 120")
    assert client(mw).get("/caf%C3%A9/menu").headers["X-Cache"] == "MISS"
    assert mw.purge("http://example.com/caf%C3%A9/menu") is True
    assert client(mw).get("/caf%C3%A9/menu").headers["X-Cache"] == "MISS"


def test_hard_purge_removes_every_vary_variant(make):
    app = GatedApp(vary="Accept-Language")
    mw = make(app, "/ 30 120")
    for language in ("en", "fr"):
        assert client(mw).get("/news", headers={"Accept-Language": language}).headers["X-Cache"] == "MISS"
        assert client(mw).get("/news", headers={"Accept-Language": language}).headers["X-Cache"] == "HIT"
    assert type(stored(mw, URL)) is VaryMarker

    assert mw.purge(URL) is True
    assert stored(mw, URL) is None
    for language, number in (("en", 3), ("fr", 4)):
        response = client(mw).get("/news", headers={"Accept-Language": language})
        assert (response.headers["X-Cache"], response.text) == ("MISS", f"{language} #{number}")


def test_soft_purge_serves_stale_while_one_request_rebuilds_then_fresh(make, clock):
    app = GatedApp()
    mw = make(app, "/ 30 120")
    client(mw).get("/news")
    clock.advance(5)
    assert client(mw).get("/news").headers["X-Cache"] == "HIT"

    assert mw.purge(URL, soft=True) is True
    page = stored(mw, URL)
    assert type(page) is Page and page.state(clock()) == GRACE and page.body == b"page #1"

    during, rebuilding = rebuilt_while_requesting(mw, app)
    assert (during.headers["X-Cache"], during.body) == ("STALE", b"page #1")
    assert (rebuilding.headers["X-Cache"], rebuilding.body) == ("MISS", b"page #2")
    after = client(mw).get("/news")
    assert (after.headers["X-Cache"], after.body) == ("HIT", b"page #2")
    assert app.calls == 2


def test_soft_purge_after_the_grace_period_leaves_nothing_to_serve(make, clock):
    app = GatedApp()
    mw = make(app, "/ 30 0")
    client(mw).get("/news")
    assert mw.purge(URL, soft=True) is True
    response = client(mw).get("/news")
    assert (response.headers["X-Cache"], response.body) == ("MISS", b"page #2")


def test_soft_purge_ends_the_ttl_of_every_vary_variant(make, clock):
    app = GatedApp(vary="Accept-Language")
    mw = make(app, "/ 30 120")
    for language in ("en", "fr"):
        client(mw).get("/news", headers={"Accept-Language": language})
    clock.advance(5)

    assert mw.purge(URL, soft=True) is True
    during, rebuilding = rebuilt_while_requesting(mw, app, headers={"Accept-Language": "en"})
    assert (during.headers["X-Cache"], during.text) == ("STALE", "en #1")
    assert (rebuilding.headers["X-Cache"], rebuilding.text) == ("MISS", "en #3")
    response = client(mw).get("/news", headers={"Accept-Language": "fr"})
    assert (response.headers["X-Cache"], response.text) == ("MISS", "fr #4")
    for language, number in (("en", 3), ("fr", 4)):
        response = client(mw).get("/news", headers={"Accept-Language": language})
        assert (response.headers["X-Cache"], response.text) == ("HIT", f"{language} #{number}")


# -- PURGE over HTTP --------------------------------------------------------


@pytest.mark.parametrize("allowed, address, status", [
    ("127.0.0.1", "127.0.0.1", 200),
    ("127.0.0.1 10.0.0.0/8", "10.20.30.40", 200),
    ("192.0.2.0/24", "192.0.2.255", 200),
    ("10.0.0.0/8, ::1", "::1", 200),
    ("fe80::/10", "fe80::1%eth0", 200),
    ("10.0.0.0/8", "192.0.2.1", 403),
    ("192.0.2.0/24", "192.0.3.1", 403),
    ("127.0.0.1", "::1", 403),
    ("127.0.0.1", "", 403),
    ("127.0.0.1", "localhost", 403),
])
def test_purge_over_http_only_from_allowed_networks(make, allowed, address, status):
    app = GatedApp()
    mw = make(app, "/ 30 120", purge_allowed=allowed)
    client(mw).get("/news")

    response = purge_request(mw, "/news", address)
    assert response.status_int == status
    if status == 200:
        assert response.text == f"purged {URL}\n"
        assert stored(mw, URL) is None
        assert client(mw).get("/news").headers["X-Cache"] == "MISS"
    else:
        assert response.text.startswith("PURGE not allowed")
        assert type(stored(mw, URL)) is Page
        assert client(mw).get("/news").headers["X-Cache"] == "HIT"
        assert app.methods == ["GET"]
    assert response.headers["Cache-Control"] == "no-store"


def test_purge_over_http_answers_404_when_nothing_was_cached(make):
    mw = make(GatedApp(), "/ 30 120", purge_allowed="127.0.0.1")
    client(mw).get("/news?page=2")
    response = purge_request(mw, "/news?page=3", "127.0.0.1")
    assert response.status_int == 404
    assert response.text == "nothing cached for http://example.com/news?page=3\n"
    assert type(stored(mw, "http://example.com/news?page=2")) is Page
    assert purge_request(mw, "/news?page=2", "127.0.0.1").status_int == 200
    assert purge_request(mw, "/news?page=2", "127.0.0.1").status_int == 404


def test_soft_purge_over_http(make, clock):
    app = GatedApp()
    mw = make(app, "/ 30 120", purge_allowed="127.0.0.1")
    client(mw).get("/news")
    clock.advance(1)

    response = purge_request(mw, "/news", "127.0.0.1", soft=True)
    assert (response.status_int, response.text) == (200, f"soft-purged {URL}\n")
    assert stored(mw, URL).state(clock()) == GRACE
    during, rebuilding = rebuilt_while_requesting(mw, app)
    assert (during.headers["X-Cache"], during.body) == ("STALE", b"page #1")
    assert (rebuilding.headers["X-Cache"], rebuilding.body) == ("MISS", b"page #2")
    assert purge_request(mw, "/other", "127.0.0.1", soft=True).status_int == 404


def test_purge_goes_to_the_application_when_purge_allowed_is_empty(make):
    app = GatedApp()
    mw = make(app, "/ 30 120")
    client(mw).get("/news")
    response = purge_request(mw, "/news", "127.0.0.1")
    assert (response.status_int, response.body) == (200, b"page #2")
    assert app.methods == ["GET", "PURGE"]
    # the application accepted an unsafe method on the URL: that invalidates it (RFC 9111 4.4)
    assert stored(mw, URL) is None
    assert client(mw).get("/news").headers["X-Cache"] == "MISS"


# -- across processes ---------------------------------------------------------


def _http(server: AppServer, method: str, path: str):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, headers={"Host": "example.com"})
        response = connection.getresponse()
        return response.status, response.getheader("X-Cache"), response.read()
    finally:
        connection.close()


@pytest.fixture
def two_processes(backend):
    """Two server processes running the same configuration on this test's backend."""
    def make_app():
        return PageCacheMiddleware(GatedApp(), "/ 30 120", key_prefix="processes",
                                   purge_allowed="127.0.0.1", **backend)
    servers = [AppServer(make_app, threads=4).start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.parametrize("backend", ["memcached"], indirect=True)
def test_a_purge_reaches_every_process_sharing_memcached(two_processes):
    first, second = two_processes
    assert _http(first, "GET", "/news")[1] == "MISS"
    assert _http(second, "GET", "/news")[1] == "HIT"
    status, _, body = _http(second, "PURGE", "/news")
    assert (status, body) == (200, f"purged {URL}\n".encode())
    assert _http(first, "GET", "/news")[1] == "MISS"
    assert _http(second, "GET", "/news")[1] == "HIT"


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_the_embedded_cache_is_purged_only_in_the_process_asked(two_processes):
    first, second = two_processes
    assert [_http(server, "GET", "/news")[1] for server in (first, second)] == ["MISS", "MISS"]
    assert _http(first, "PURGE", "/news")[0] == 200
    assert _http(second, "GET", "/news")[1] == "HIT"
    assert _http(first, "GET", "/news")[1] == "MISS"
