"""The shared-cache rules of HTTP, one table row each, through the INI-configured
filter on both backends. Every row says what each client gets (status,
X-Cache, body) and what is stored for the URL afterwards."""

import textwrap
from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest
from paste.deploy import loadapp
from webtest import TestApp, TestRequest

from pagecache.entry import Page, Pass, VaryMarker

from .test_paste import restart_tags

APPS: Dict[str, "ScriptedApp"] = {}


class ScriptedApp:
    """Answers with the row's status and headers; the body names the call and
    echoes the request headers pages may vary on, so variants are visible."""

    def __init__(self, status: str, headers: List[Tuple[str, str]], body: bytes = b""):
        self.status, self.headers, self.body = status, headers, body
        self.calls = 0
        self.environs: List[Dict] = []

    def __call__(self, environ, start_response):
        self.calls += 1
        self.environs.append(dict(environ))
        body = self.body or (f"#{self.calls} {environ['PATH_INFO']} "
                             f"ae={environ.get('HTTP_ACCEPT_ENCODING')} "
                             f"lang={environ.get('HTTP_ACCEPT_LANGUAGE')} "
                             f"xfh={environ.get('HTTP_X_FORWARDED_HOST')}").encode()
        start_response(self.status, list(self.headers))
        return [body]


def scripted_app_factory(global_conf, name):
    return APPS[name]


class Req(NamedTuple):
    method: str = "GET"
    path: str = "/page"
    headers: Dict[str, str] = {}
    environ: Dict[str, str] = {}
    status: int = 200
    label: Optional[str] = "MISS"     # X-Cache expected; None: no header at all
    body: Optional[str] = None        # expected prefix of the body ("" for none)


class Row(NamedTuple):
    name: str
    requests: List[Req]
    stored: object = Page             # what is stored at `url` afterwards: Page, Pass, VaryMarker or None
    calls: Optional[int] = None       # how many times the app ran
    status: str = "200 OK"
    headers: List[Tuple[str, str]] = [("Content-Type", "text/plain")]
    options: str = ""
    url: str = "http://example.com/page"
    body: bytes = b""


HIT, MISS, STALE, BYPASS = "HIT", "MISS", "STALE", "BYPASS"
ETAG = [("Content-Type", "text/plain"), ("ETag", '"v1"')]
LAST_MODIFIED = [("Content-Type", "text/plain"), ("Last-Modified", "Wed, 21 Oct 2026 07:28:00 GMT")]
VARY_AE = [("Content-Type", "text/plain"), ("Vary", "Accept-Encoding")]

ROWS = [
    # -- which requests may use the cache ----------------------------------
    Row("GET is stored and served", [Req(), Req(label=HIT, body="#1")], Page, 1),
    Row("HEAD on a miss goes to the app and stores nothing",
        [Req("HEAD"), Req("HEAD")], None, 2),
    Row("HEAD is answered from the stored GET",
        [Req(), Req("HEAD", label=HIT, body="")], Page, 1),
    Row("POST bypasses", [Req("POST", label=BYPASS), Req("POST", label=BYPASS, body="#2")], None, 2),
    Row("POST after a stored GET reaches the app and invalidates the page",
        [Req(), Req("POST", label=BYPASS, body="#2"), Req(body="#3"), Req(label=HIT, body="#3")], Page, 3),
    Row("PUT, DELETE, OPTIONS bypass",
        [Req("PUT", label=BYPASS), Req("DELETE", label=BYPASS), Req("OPTIONS", label=BYPASS)], None, 3),
    Row("Authorization bypasses, even when a page is stored",
        [Req(), Req(headers={"Authorization": "Basic YWxpY2U6eA=="}, label=BYPASS, body="#2"),
         Req(label=HIT, body="#1")], Page, 2),
    Row("a bypass cookie bypasses",
        [Req(headers={"Cookie": "theme=dark; sessionid=abc"}, label=BYPASS),
         Req(headers={"Cookie": "sessionid=abc"}, label=BYPASS, body="#2")], None, 2,
        options="bypass_cookies = sessionid auth_tkt"),
    Row("other cookies do not",
        [Req(headers={"Cookie": "theme=dark"}), Req(headers={"Cookie": "sessionid_x=1"}, label=HIT)],
        Page, 1, options="bypass_cookies = sessionid"),
    Row("request Cache-Control and Pragma do not force a refresh",
        [Req(), Req(headers={"Cache-Control": "no-cache", "Pragma": "no-cache"}, label=HIT, body="#1"),
         Req(headers={"Cache-Control": "max-age=0"}, label=HIT, body="#1")], Page, 1),

    # -- which responses may be stored -------------------------------------
    *[Row(f"status {code} is stored", [Req(status=code), Req(status=code, label=HIT)], Page, 1,
          status=f"{code} Whatever") for code in (200, 203, 300, 301, 308)],
    *[Row(f"status {code} is not stored", [Req(status=code), Req(status=code, body="#2")], Pass, 2,
          status=f"{code} Whatever") for code in (302, 303, 307, 403, 404, 410, 500, 503)],
    *[Row(f"status {code} is stored when cache_statuses lists it", [Req(status=code), Req(status=code, label=HIT)],
          Page, 1, status=f"{code} Whatever", options="cache_statuses = 200 404 410") for code in (404, 410)],
    Row("cache_statuses decides", [Req(status=302), Req(status=302, label=HIT)], Page, 1,
        status="302 Found", headers=[("Content-Type", "text/plain"), ("Location", "/elsewhere")], options="cache_statuses = 200 302"),
    *[Row(f"Cache-Control: {value} is not stored", [Req(), Req(body="#2")], Pass, 2,
          headers=[("Content-Type", "text/plain"), ("Cache-Control", value)])
      for value in ("private", "no-store", "no-cache", "Private, max-age=60", "max-age=0, NO-STORE",
                    "public,no-cache", 'no-cache, private="Set-Cookie"')],
    Row('Cache-Control: private="X-Secret" is stored without X-Secret',
        [Req(), Req(label=HIT, body="#1")], Page, 1,
        headers=[("Content-Type", "text/plain"), ("Cache-Control", 'private="X-Secret", max-age=60'),
                 ("X-Secret", "for the first client")]),
    Row("Cache-Control: public, max-age is stored", [Req(), Req(label=HIT)], Page, 1,
        headers=[("Content-Type", "text/plain"), ("Cache-Control", "public, max-age=60")]),
    Row("Vary: * is not stored", [Req(), Req(body="#2")], Pass, 2,
        headers=[("Content-Type", "text/plain"), ("Vary", "*")]),
    Row("a body over max_entry_size is streamed and not stored",
        [Req(body="x" * 100), Req(body="x" * 100)], Pass, 2, options="max_entry_size = 1KB\ncompression = off",
        body=b"x" * 5000),
    Row("a compressible body over max_entry_size is stored compressed if that fits",
        [Req(body="x" * 100), Req(label=HIT, body="x" * 5000)], Page, 1, options="max_entry_size = 1KB",
        body=b"x" * 5000),
    Row("a body of exactly max_entry_size is stored", [Req(), Req(label=HIT)], Page, 1,
        options="max_entry_size = 1KB", body=b"x" * 1024),

    # -- variants -------------------------------------------------------------
    Row("Vary: Accept-Encoding: one page for every encoding, the application asked for the one stored",
        [Req(headers={"Accept-Encoding": "gzip"}, body="#1 /page ae=gzip"),
         Req(headers={"Accept-Encoding": "br"}, label=HIT, body="#1 /page ae=gzip"),
         Req(label=HIT, body="#1 /page ae=gzip")],
        Page, 1, headers=VARY_AE),
    Row("compression off: Vary: Accept-Encoding keeps one variant per encoding, not per header",
        [Req(headers={"Accept-Encoding": "gzip, deflate"}, body="#1 /page ae=gzip"),
         Req(headers={"Accept-Encoding": "deflate, gzip;q=0.9, br"}, body="#2 /page ae=br"),
         Req(headers={"Accept-Encoding": "x-gzip"}, label=HIT, body="#1 /page ae=gzip"),
         Req(headers={"Accept-Encoding": "br"}, label=HIT, body="#2 /page ae=br"),
         Req(body="#3 /page ae=identity"), Req(headers={"Accept-Encoding": "identity"}, label=HIT,
                                                 body="#3 /page ae=identity")],
        VaryMarker, 3, headers=VARY_AE, options="compression = off"),
    Row("variant values are normalised (whitespace)",
        [Req(headers={"Accept-Language": "fr,  de"}),
         Req(headers={"Accept-Language": " fr, de "}, label=HIT, body="#1")],
        VaryMarker, 1, headers=[("Content-Type", "text/plain"), ("Vary", "Accept-Language")]),
    Row("Vary header names are normalised (case, order, repeats)",
        [Req(headers={"Accept-Language": "fr", "Accept-Encoding": "gzip"}),
         Req(headers={"Accept-Encoding": "gzip", "Accept-Language": "fr"}, label=HIT, body="#1"),
         Req(headers={"Accept-Encoding": "gzip", "Accept-Language": "de"}, body="#2")],
        VaryMarker, 2, headers=[("Content-Type", "text/plain"), ("Vary", "accept-language, ACCEPT-ENCODING"),
                 ("Vary", "Accept-Language")]),

    # -- serving from the cache --------------------------------------------
    Row("a stored 200 without ETag gets one, a matching If-None-Match gets 304",
        [Req(), Req(headers={"If-None-Match": '"stale-tag"'}, label=HIT, body="#1")], Page, 1),
    Row("If-None-Match with the app's ETag (weak comparison) gets 304 from the cache",
        [Req(), Req(headers={"If-None-Match": 'W/"v1"'}, status=304, label=HIT, body=""),
         Req(headers={"If-None-Match": '"other", "v1"'}, status=304, label=HIT, body=""),
         Req(headers={"If-None-Match": "*"}, status=304, label=HIT, body=""),
         Req(headers={"If-None-Match": '"other"'}, label=HIT, body="#1")], Page, 1, headers=ETAG),
    Row("the first request's If-None-Match is answered too, and the app gets a full request",
        [Req(headers={"If-None-Match": '"v1"'}, status=304, body="")], Page, 1, headers=ETAG),
    Row("If-Modified-Since against Last-Modified",
        [Req(), Req(headers={"If-Modified-Since": "Wed, 21 Oct 2026 07:28:00 GMT"}, status=304, label=HIT, body=""),
         Req(headers={"If-Modified-Since": "Thu, 22 Oct 2026 00:00:00 GMT"}, status=304, label=HIT, body=""),
         Req(headers={"If-Modified-Since": "Tue, 20 Oct 2026 00:00:00 GMT"}, label=HIT, body="#1"),
         Req(headers={"If-Modified-Since": "garbage"}, label=HIT, body="#1")], Page, 1, headers=LAST_MODIFIED),
    Row("If-None-Match takes precedence over If-Modified-Since",
        [Req(), Req(headers={"If-None-Match": '"other"', "If-Modified-Since": "Thu, 22 Oct 2026 00:00:00 GMT"},
                    label=HIT, body="#1")], Page, 1,
        headers=[("Content-Type", "text/plain"), ("ETag", '"v1"'),
                 ("Last-Modified", "Wed, 21 Oct 2026 07:28:00 GMT")]),
    Row("a 404 is not answered 304", [Req(status=404), Req(headers={"If-None-Match": "*"}, status=404, label=HIT)],
        Page, 1, status="404 Not Found", headers=ETAG, options="cache_statuses = 200 404"),

    # -- keys -------------------------------------------------------------
    Row("two hosts never share a page",
        [Req(environ={"HTTP_HOST": "a.example"}, body="#1"), Req(environ={"HTTP_HOST": "b.example"}, body="#2"),
         Req(environ={"HTTP_HOST": "a.example"}, label=HIT, body="#1")], None, 2),
    Row("the default port is the same host, another port is not",
        [Req(environ={"HTTP_HOST": "example.com:80"}), Req(label=HIT, body="#1"),
         Req(environ={"HTTP_HOST": "example.com:8080"}, body="#2")], Page, 2),
    Row("http and https never share a page",
        [Req(), Req(environ={"wsgi.url_scheme": "https"}, body="#2"), Req(label=HIT, body="#1")], Page, 2),
    Row("the script name is part of the key",
        [Req(environ={"SCRIPT_NAME": "/app1"}, body="#1"), Req(environ={"SCRIPT_NAME": "/app2"}, body="#2"),
         Req(environ={"SCRIPT_NAME": "/app1"}, label=HIT, body="#1")], None, 2),
    Row("the query string is part of the key",
        [Req(path="/page?a=1"), Req(path="/page?a=2", body="#2"), Req(path="/page?a=1", label=HIT, body="#1"),
         Req(path="/page?b=2&a=1", body="#3"), Req(path="/page", body="#4")], Page, 4),
    Row("ignore_query drops tracking parameters from the key",
        [Req(path="/page?id=3&utm_source=x"), Req(path="/page?utm_medium=y&id=3", label=HIT, body="#1"),
         Req(path="/page?id=4", body="#2")], None, 2, options="ignore_query = utm_source utm_medium"),
    Row("sort_query makes parameter order irrelevant",
        [Req(path="/page?a=1&b=2"), Req(path="/page?b=2&a=1", label=HIT, body="#1")], None, 1,
        options="sort_query = true"),
    Row("X-Forwarded-Host can't plant a page for others",
        [Req(headers={"X-Forwarded-Host": "evil.example"}, body="#1 /page ae=gzip lang=None xfh=None"),
         Req(label=HIT, body="#1 /page ae=gzip lang=None xfh=None"),
         Req(headers={"X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example"},
             label=HIT, body="#1 /page ae=gzip lang=None xfh=None")], Page, 1),
]


@pytest.fixture
def load_filter(tmp_path, backend):
    def load(row: Row) -> Tuple[TestApp, object]:
        name = f"app{len(APPS)}"
        APPS[name] = ScriptedApp(row.status, row.headers, row.body)
        servers = f"memcached_servers = {backend['memcached_servers']}\n" if backend else ""
        path = tmp_path / "filter.ini"
        path.write_text(textwrap.dedent(f"""\
            [app:scripted]
            use = call:tests.test_http_rules:scripted_app_factory
            name = {name}

            [filter:pagecache]
            use = egg:pagecache#main
            key_prefix = {name}
            cached_urls = / 30 60
            """) + servers + row.options + "\n" + textwrap.dedent("""
            [pipeline:main]
            pipeline = pagecache scripted
            """))
        middleware = loadapp(f"config:{path}")
        return TestApp(middleware, extra_environ={"HTTP_HOST": "example.com"}), middleware
    return load


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_http_rule(row: Row, load_filter):
    browser, middleware = load_filter(row)
    app = APPS[middleware.keys.prefix]
    for number, req in enumerate(row.requests, 1):
        request = TestRequest.blank(req.path, environ={"HTTP_HOST": "example.com", **req.environ},
                                    method=req.method, headers=dict(req.headers))
        response = browser.do_request(request, status=None, expect_errors=True)
        where = f"request {number} ({req.method} {req.path} {req.headers} {req.environ})"
        assert response.status_int == req.status, where
        assert response.headers.get("X-Cache") == req.label, where
        if req.body is not None:
            if req.body == "":
                assert response.body == b"", where
            else:
                assert response.body.startswith(req.body.encode()), (where, response.body[:80])
        if response.status_int == 304:
            assert "ETag" in response.headers or "Last-Modified" in response.headers
    found = middleware.store.load(middleware.keys.page(middleware.keys.digest_of_url(row.url)))
    assert (type(found) if found is not None else None) is row.stored, found
    if row.calls is not None:
        assert app.calls == row.calls


def test_stored_pages_keep_no_hop_by_hop_or_cookie_headers(load_filter):
    row = Row("hop-by-hop", [], headers=[
        ("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
        ("Keep-Alive", "timeout=5"), ("Trailer", "X-Sum"), ("Upgrade", "h2c"),
        ("Connection", "X-Private-Hop"), ("X-Private-Hop", "secret"), ("X-Kept", "yes"), ("Age", "10")],
        options="cookie_responses = strip")
    browser, middleware = load_filter(row)
    first = TestApp(middleware, lint=False, extra_environ={"HTTP_HOST": "example.com"}).get("/page")
    assert first.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    page = middleware.store.load(middleware.keys.page(middleware.keys.digest_of_url("http://example.com/page")))
    names = {name.lower() for name, _ in page.headers}
    assert names == {"content-type", "x-kept", "content-length", "etag"}
    hit = TestApp(middleware, lint=False, extra_environ={"HTTP_HOST": "example.com"}).get("/page")
    # the response arrived 10 s old: its Age is not stored as a header, it counts (RFC 9111 4.2.3)
    assert hit.headers["X-Cache"] == "HIT" and hit.headers["Age"] == "10" and "Set-Cookie" not in hit.headers


def test_generated_etag_is_served_and_revalidates(load_filter):
    browser, middleware = load_filter(Row("etag", []))
    first = browser.get("/page")
    etag = first.headers["ETag"]
    assert etag.startswith('"pc-')
    assert browser.get("/page").headers["ETag"] == etag
    revalidated = browser.get("/page", headers={"If-None-Match": etag}, status=304)
    assert revalidated.body == b"" and revalidated.headers["ETag"] == etag


def test_stale_label_in_grace(tmp_path, load_filter, clock):
    browser, middleware = load_filter(Row("grace", []))
    middleware.clock = clock
    if hasattr(middleware.cache, "clock"):
        middleware.cache.clock = clock
    restart_tags(middleware, clock)
    browser.get("/page")
    clock.advance(31)
    lock = middleware.store.lock(middleware.keys.lock(middleware.keys.digest_of_url("http://example.com/page")), 30)
    assert isinstance(lock, bytes)   # someone else is rebuilding it
    stale = browser.get("/page")
    assert stale.headers["X-Cache"] == "STALE" and stale.headers["Age"] == "31" and stale.body.startswith(b"#1")


def test_the_app_never_sees_forwarding_or_conditional_headers_when_filling(load_filter):
    browser, middleware = load_filter(Row("fill", []))
    browser.get("/page", headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
                                  "Forwarded": "host=evil.example", "If-None-Match": '"x"',
                                  "If-Modified-Since": "Wed, 21 Oct 2026 07:28:00 GMT", "Range": "bytes=0-1",
                                  "X-Forwarded-For": "203.0.113.9"})
    seen = APPS[middleware.keys.prefix].environs[0]
    for name in ("HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PROTO", "HTTP_FORWARDED", "HTTP_IF_NONE_MATCH",
                 "HTTP_IF_MODIFIED_SINCE", "HTTP_RANGE", "HTTP_X_FORWARDED_FOR"):  # the whole X-Forwarded-* family
        assert name not in seen


def test_a_variant_costs_at_most_one_extra_lookup(load_filter):
    browser, middleware = load_filter(Row("vary", [], headers=[("Content-Type", "text/plain"),
                                                               ("Vary", "Accept-Language")]))
    browser.get("/page", headers={"Accept-Language": "fr"})
    gets = []
    real_get = middleware.cache.get
    middleware.cache.get = lambda key: gets.append(key) or real_get(key)
    try:
        hit = browser.get("/page", headers={"Accept-Language": "fr"})
    finally:
        middleware.cache.get = real_get
    assert hit.headers["X-Cache"] == "HIT" and len(gets) == 2
