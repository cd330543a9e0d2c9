"""The filter egg: INI files loaded with paste.deploy.loadapp, on both backends."""

import os
import textwrap

import pytest
from paste.deploy import loadapp
from webtest import TestApp

from pagecache import ConfigError, PageCacheMiddleware
from pagecache.entry import Page

from .conftest import CountingApp, stored

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = {}


def counting_app_factory(global_conf, name="main", **local_conf):
    """``use = call:tests.test_paste:counting_app_factory``: a CountingApp the test can see."""
    APPS[name] = CountingApp(b"page from " + name.encode())
    return APPS[name]


def write_ini(tmp_path, filter_options, name="app.ini"):
    path = tmp_path / name
    path.write_text(textwrap.dedent("""\
        [app:counting]
        use = call:tests.test_paste:counting_app_factory
        name = {name}

        [filter:pagecache]
        use = egg:pagecache#main
        """).format(name=name) + textwrap.dedent(filter_options) + textwrap.dedent("""
        [pipeline:main]
        pipeline = pagecache counting
        """))
    return str(path)


def load(path):
    return loadapp("config:" + path)


def middleware_of(app):
    assert isinstance(app, PageCacheMiddleware)
    return app


def use_clock(middleware, clock):
    """Drive a loaded middleware (and its embedded cache) from the test's clock."""
    middleware.clock = clock
    middleware.purger.clock = clock
    if hasattr(middleware.cache, "clock"):
        middleware.cache.clock = clock
    restart_tags(middleware, clock)


def restart_tags(middleware, clock):
    """The keys of "purge everything" were made when the middleware started, by
    the real clock: made again by the test's, which is years behind."""
    for key in middleware.tags.keys("*"):
        middleware.cache.delete(key)
    middleware.tags.everything = (0.0, 0.0, -1.0)
    middleware.tags._started = 0
    middleware.tags.start(clock())


@pytest.fixture
def servers_option(backend):
    return f"memcached_servers = {backend['memcached_servers']}\n" if backend else ""


def test_the_issue_ini_caches_and_serves_stale(tmp_path, servers_option, clock):
    path = write_ini(tmp_path, servers_option + textwrap.dedent("""\
        cached_urls =
            /foo          30   2m
            ~^/item/\\d+$  5m   1m
        key_prefix = myapp
        charset = utf-8
        """))
    middleware = middleware_of(load(path))
    use_clock(middleware, clock)
    app, browser = APPS["app.ini"], TestApp(middleware, extra_environ={"HTTP_HOST": "example.com"})
    assert [r.pattern for r in middleware.rules] == ["/foo", r"~^/item/\d+$"]
    assert [(r.ttl, r.grace) for r in middleware.rules] == [(30, 120), (300, 60)]
    assert browser.get("/foo").headers["X-Cache"] == "MISS"
    assert browser.get("/foo").headers["X-Cache"] == "HIT"
    assert browser.get("/item/7").headers["X-Cache"] == "MISS"
    assert browser.get("/item/7").headers["X-Cache"] == "HIT"
    assert "X-Cache" not in browser.get("/item/7/edit").headers
    assert app.calls == 3
    assert isinstance(stored(middleware, "http://example.com/foo"), Page)
    assert middleware.keys.page("x").startswith("myapp:p:")

    clock.advance(31)
    rebuilt = browser.get("/foo")
    assert (rebuilt.headers["X-Cache"], rebuilt.body) == ("MISS", b"page from app.ini #4")
    assert browser.get("/foo").body == b"page from app.ini #4"
    clock.advance(300 + 1)                      # /item/7 is in its grace period now
    assert browser.get("/item/7").headers["X-Cache"] == "MISS" and app.calls == 5


def test_memcached_keys_carry_the_key_prefix(tmp_path, memcached):
    path = write_ini(tmp_path, f"""\
        memcached_servers = {memcached.address}
        cached_urls = / 30 60
        key_prefix = shop
        """)
    TestApp(load(path)).get("/")
    assert memcached.keys() and all(key.startswith("shop:") for key in memcached.keys())


def test_two_servers_from_the_ini_both_get_pages(tmp_path, memcached_pair):
    path = write_ini(tmp_path, f"""\
        memcached_servers = {memcached_pair[0].address}, {memcached_pair[1].address}
        cached_urls = / 30 60
        """)
    browser = TestApp(load(path))
    for number in range(40):
        browser.get(f"/page/{number}")
    assert all(len(server.keys()) > 0 for server in memcached_pair)
    assert all(browser.get(f"/page/{n}").headers["X-Cache"] == "HIT" for n in range(40))


def test_pymemcache_client_from_the_ini(tmp_path, memcached):
    path = write_ini(tmp_path, f"""\
        memcached_servers = {memcached.address}
        memcached_client = pymemcache
        cached_urls = / 30 60
        """)
    browser = TestApp(load(path))
    assert browser.get("/").headers["X-Cache"] == "MISS"
    assert browser.get("/").headers["X-Cache"] == "HIT"
    keys = memcached.keys()
    assert len([key for key in keys if key.startswith("pagecache:p:")]) == 1
    # and the two keys of "purge everything" (its hard and soft times): pagecache:t:h:..., pagecache:t:s:...
    assert sorted(key[:12] for key in keys if not key.startswith("pagecache:p:")) == ["pagecache:t:", "pagecache:t:"]


def test_embedded_cache_when_no_servers_are_listed(tmp_path):
    from pagecache.backends import MemoryCache

    path = write_ini(tmp_path, """\
        cached_urls = / 30 60
        memory_limit = 2MB
        """)
    middleware = middleware_of(load(path))
    assert isinstance(middleware.cache, MemoryCache) and middleware.cache.limit == 2 << 20


def test_percent_signs_in_a_regex_are_written_doubled(tmp_path):
    path = write_ini(tmp_path, """\
        cached_urls =
            ~^/a%%20b$   30  60
        """)
    assert [r.pattern for r in middleware_of(load(path)).rules] == ["~^/a%20b$"]


@pytest.mark.parametrize("options, words, line", [
    ("cached_urls = / 30 60\nwait_timout = 5s\n", "unknown option 'wait_timout'", 8),
    ("cached_urls = / 30 60\nwait_timeout = soon\n", "option wait_timeout: 'soon' is not a duration", 8),
    ("cached_urls =\n    /a 30 60\n    /b 30 sixty\n", "cached_urls line 2: '/b 30 sixty'", 9),
    ("cached_urls =\n    /a 30 60\n    # a comment\n    ~([ 30 60\n", "bad regular expression", 10),
    ("key_prefix = x\n", "option cached_urls is missing", None),
    ("cached_urls = / 1 1\nmemcached_servers = nowhere\n", "option memcached_servers: 'nowhere'", 8),
])
def test_malformed_options_fail_at_load_naming_option_and_line(tmp_path, options, words, line):
    path = write_ini(tmp_path, options)
    with pytest.raises(ConfigError) as error:
        load(path)
    message = str(error.value)
    assert words in message
    if line is not None:
        assert f"{path} line {line}:" in message


def test_development_ini_serves_the_demo_from_the_embedded_cache():
    app = loadapp("config:development.ini", relative_to=ROOT)
    browser = TestApp(app)
    first = browser.get("/news")
    assert first.headers["X-Cache"] == "MISS" and b"Rendered at" in first.body
    second = browser.get("/news")
    assert second.headers["X-Cache"] == "HIT" and second.body == first.body
    assert browser.get("/private").headers["X-Cache"] == "MISS"
