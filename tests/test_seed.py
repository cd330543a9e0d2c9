"""The seed's scenarios (cached, not cached, expiry, grace recompute, stale while
another request recomputes), its usage snippet, Set-Cookie, odd URLs."""

import threading

import memcache
from webtest import TestApp

from pagecache import PageCacheMiddleware
from pagecache.entry import Page, Pass

from .conftest import CountingApp, client, stored, wait_until

SEED_RULES = (("/foo", 30, 120), ("/bar", 3600, 60))


def test_seed_usage_snippet_works_as_written(memcached):
    app = CountingApp(b"foo page")
    cached_urls = (('/foo', 30, 120), ('/bar', 3600, 60))   # url prefix, TTL, grace period
    app_with_cache = PageCacheMiddleware(app, cached_urls, memcache.Client([memcached.address]))
    browser = TestApp(app_with_cache)
    first, second = browser.get("/foo"), browser.get("/foo")
    assert first.body == second.body == b"foo page #1"
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
    assert app.calls == 1
    assert any(key.startswith("pagecache:p:") for key in memcached.keys())


def test_cached(make, counting_app):
    browser = client(make(counting_app, SEED_RULES))
    bodies = [browser.get("/foo/page").body for _ in range(3)]
    assert bodies == [b"page #1"] * 3 and counting_app.calls == 1


def test_not_cached(make, counting_app):
    middleware = make(counting_app, SEED_RULES)
    browser = client(middleware)
    responses = [browser.get("/other") for _ in range(3)]
    assert [r.body for r in responses] == [b"page #1", b"page #2", b"page #3"]
    assert all("X-Cache" not in r.headers for r in responses)
    assert stored(middleware, "http://example.com/other") is None


def test_expiry(make, counting_app, clock):
    browser = client(make(counting_app, SEED_RULES))
    assert browser.get("/foo").body == b"page #1"
    clock.advance(29.9)
    assert browser.get("/foo").headers["X-Cache"] == "HIT"
    clock.advance(30 + 120)                      # past TTL and grace: gone
    response = browser.get("/foo")
    assert (response.body, response.headers["X-Cache"]) == (b"page #2", "MISS")


def test_grace_recompute(make, counting_app, clock):
    middleware = make(counting_app, SEED_RULES)
    browser = client(middleware)
    browser.get("/foo")
    clock.advance(31)                            # in the grace period
    rebuilt = browser.get("/foo")
    assert (rebuilt.body, rebuilt.headers["X-Cache"]) == (b"page #2", "MISS")
    after = browser.get("/foo")
    assert (after.body, after.headers["X-Cache"]) == (b"page #2", "HIT")
    assert stored(middleware, "http://example.com/foo").body == b"page #2"
    assert counting_app.calls == 2


def test_stale_served_while_another_request_recomputes(make, clock):
    rendering, release = threading.Event(), threading.Event()
    calls = []

    def app(environ, start_response):
        calls.append(1)
        if len(calls) == 2:                      # the rebuild in the grace period
            rendering.set()
            assert release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"version %d" % len(calls)]

    middleware = make(app, SEED_RULES)
    browser = client(middleware)
    browser.get("/foo")
    clock.advance(31)
    rebuilding = {}
    worker = threading.Thread(target=lambda: rebuilding.update(r=client(middleware).get("/foo")))
    worker.start()
    assert rendering.wait(10)
    others = [browser.get("/foo") for _ in range(5)]
    assert [(r.body, r.headers["X-Cache"]) for r in others] == [(b"version 1", "STALE")] * 5
    release.set()
    worker.join(10)
    assert (rebuilding["r"].body, rebuilding["r"].headers["X-Cache"]) == (b"version 2", "MISS")
    assert browser.get("/foo").body == b"version 2"
    assert len(calls) == 2


def test_entry_is_gone_from_memcached_after_ttl_and_grace(memcached):
    """Real time, real memcached: the server itself drops the entry."""
    app = CountingApp()
    middleware = PageCacheMiddleware(app, "/ 1 0", memcached_servers=memcached.address)
    client(middleware).get("/short")
    assert isinstance(stored(middleware, "http://example.com/short"), Page)
    wait_until(lambda: stored(middleware, "http://example.com/short") is None, timeout=10)


def test_set_cookie_goes_to_its_client_only(make):
    """The seed stored such a page with its cookies removed; that is now
    ``cookie_responses = strip``."""
    app = CountingApp(headers=[("Content-Type", "text/plain"), ("Set-Cookie", "session=alice; HttpOnly")])
    middleware = make(app, cookie_responses="strip")
    computed = client(middleware).get("/page")
    assert computed.headers.getall("Set-Cookie") == ["session=alice; HttpOnly"]
    hit = client(middleware).get("/page")
    assert hit.headers["X-Cache"] == "HIT" and "Set-Cookie" not in hit.headers
    assert all(name.lower() != "set-cookie" for name, _ in stored(middleware, "http://example.com/page").headers)


def test_by_default_a_response_setting_cookies_is_not_stored(make):
    app = CountingApp(headers=[("Content-Type", "text/plain"), ("Set-Cookie", "csrf=token-of-the-caller")])
    middleware = make(app)
    for number in (1, 2, 3):
        answer = client(middleware).get("/page")
        assert answer.headers["X-Cache"] == "MISS" and answer.body == b"page #%d" % number
        assert answer.headers.getall("Set-Cookie") == ["csrf=token-of-the-caller"]
    assert type(stored(middleware, "http://example.com/page")) is Pass
    app.headers = [("Content-Type", "text/plain")]    # the next cacheable answer is stored at once
    assert client(middleware).get("/page").headers["X-Cache"] == "MISS"
    assert client(middleware).get("/page").headers["X-Cache"] == "HIT"


def test_age_header_on_responses_from_the_cache(make, counting_app, clock):
    browser = client(make(counting_app))
    assert "Age" not in browser.get("/a").headers
    clock.advance(7.6)
    assert browser.get("/a").headers["Age"] == "7"
    clock.advance(-10)  # a host whose clock is behind the one that stored the page
    assert browser.get("/a").headers["Age"] == "0"


def test_status_header_can_be_renamed_or_disabled(make, counting_app):
    renamed = client(make(counting_app, status_header="X-Page-Cache")).get("/")
    assert renamed.headers["X-Page-Cache"] == "MISS" and "X-Cache" not in renamed.headers
    disabled = client(make(counting_app, status_header="")).get("/")
    assert "X-Cache" not in disabled.headers


def test_undecodable_and_huge_urls(make, counting_app):
    middleware = make(counting_app, "/caf\u00e9 30 60\n/ 30 60", charset="utf-8")
    browser = client(middleware)
    odd_paths = [
        "/caf\xc3\xa9",                     # UTF-8 bytes as WSGI's latin-1 str: matches the decoded rule
        "/\xff\xfe\x80 broken utf-8",        # undecodable: decoded with replacement, never raises
        "/" + "x" * 100_000,                 # 100 KB
        "/sp ace/~",
    ]
    for path in odd_paths:
        first = browser.get("/", extra_environ={"PATH_INFO": path, "QUERY_STRING": "q=\xff" * 100})
        second = browser.get("/", extra_environ={"PATH_INFO": path, "QUERY_STRING": "q=\xff" * 100})
        assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT"), path
        assert first.body == second.body
    assert counting_app.calls == len(odd_paths)
    controls = browser.get("/", extra_environ={"PATH_INFO": "/sp ace/\x01\x7f"})
    assert controls.headers["X-Cache"] == "BYPASS"  # control characters: routers may read it otherwise
    assert middleware.routes["/caf\xc3\xa9", "", "localhost:80", "", "http"].rule.pattern == "/caf\u00e9"
