"""A broken application is left alone while a stale copy covers it; the logs
say what happened; configuration mistakes are named."""

from __future__ import annotations

import logging
import re
import textwrap

import pytest
from paste.deploy import loadapp

from pagecache import ConfigError, PageCacheMiddleware

from .conftest import CountingApp, client, stored
from .servers import AppServer
from .test_stats_logs import FailingApp

URL = "http://example.com/shop"


def test_after_a_failed_rebuild_the_application_is_left_alone_for_the_back_off(make, clock):
    app = FailingApp()
    mw = make(app, "/ 30 120", error_backoff=20)
    client(mw).get("/shop")
    good = stored(mw, URL)
    clock.advance(31)                        # in grace
    app.fail = "raise"
    assert client(mw).get("/shop").headers["X-Cache"] == "STALE"
    assert app.calls == 2
    for _ in range(5):                       # the back-off: stale, the application not asked
        assert client(mw).get("/shop").headers["X-Cache"] == "STALE"
    assert app.calls == 2 and mw.stats["backoffs"] == 1 and stored(mw, URL) == good
    end_back_off(mw, clock, 20, URL)
    assert client(mw).get("/shop").headers["X-Cache"] == "STALE"   # one attempt per back-off
    assert app.calls == 3
    app.fail = ""
    end_back_off(mw, clock, 21, URL)
    assert client(mw).get("/shop").headers["X-Cache"] == "MISS"    # recovered: stored again
    assert client(mw).get("/shop").headers["X-Cache"] == "HIT" and app.calls == 4


def end_back_off(mw, clock, seconds, url):
    """Let ``seconds`` pass: the embedded cache ends the held lock by the
    middleware's clock; memcached would in its own time, so it is ended by hand."""
    clock.advance(seconds)
    if mw.settings["memcached_servers"]:
        mw.cache.delete(mw.keys.lock(mw.keys.digest_of_url(url)))


@pytest.mark.parametrize("rules", ["/ 1 600", "/ 1 0"], ids=["in grace", "past grace, stale_if_error"])
def test_the_back_off_holds_in_every_process(memcached, rules):
    """The back-off is the update lock, held in memcached: a second process
    leaves the broken application alone too, whether the stale copy is in its
    grace period or only kept to cover errors."""
    app = BrokenAfterFirst()
    settings = dict(memcached_servers=memcached.address, key_prefix="backoff", error_backoff=600,
                    stale_if_error=3600, stats_path="/_stats", purge_allowed="127.0.0.1")
    servers = [AppServer(lambda: PageCacheMiddleware(app, rules, **settings), threads=4).start()
               for _ in range(2)]
    inspector = PageCacheMiddleware(app, rules, **settings)
    try:
        assert get(servers[0]) == ("MISS", b"page #1")
        key = inspector.keys.page(inspector.keys.digest_of_url(f"http://{HOST}/shop"))
        page = inspector.store.load(key)
        inspector.store.save(key, page.replace(ttl=0.0), 3600)  # its TTL over, without waiting
        answers = [get(servers[0])]                       # the rebuild: the application raises
        answers += [get(server) for server in servers for _ in range(4)]
        assert answers == [("STALE", b"page #1")] * 9, answers
        assert app.calls.value == 2                       # the first render, the failed rebuild
        assert total(servers, "app_errors") == 1 and total(servers, "backoffs") == 1
        lock = inspector.keys.lock(inspector.keys.digest_of_url(f"http://{HOST}/shop"))
        assert inspector.cache.get(lock) is not None      # held for the back-off
        inspector.cache.delete(lock)                      # the back-off ends: one request tries again
        assert get(servers[1]) == ("STALE", b"page #1")
        assert app.calls.value == 3 and total(servers, "app_errors") == 2
    finally:
        for server in servers:
            server.stop()
        inspector.cache.disconnect_all()


HOST = "shop.example"


class BrokenAfterFirst:
    """Renders the page once, then raises: its calls counted across processes."""

    def __init__(self):
        self.calls = AppServer.context.Value("i", 0)

    def __call__(self, environ, start_response):
        with self.calls.get_lock():
            self.calls.value += 1
            number = self.calls.value
        if number > 1:
            raise RuntimeError("the database is down")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"page #1"]


def get(server):
    import urllib.request

    request = urllib.request.Request(server.url + "/shop", headers={"Host": HOST})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.headers["X-Cache"], answer.read()


def total(servers, counter):
    import json
    import urllib.request

    found = 0
    for server in servers:
        request = urllib.request.Request(server.url + "/_stats", headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            found += json.load(answer)[counter]
    return found


def test_a_failure_is_logged_once_with_its_traceback_then_counted(make, clock, caplog):
    caplog.set_level(logging.WARNING, logger="pagecache")
    app = FailingApp()
    mw = make(app, "/ 30 120", error_backoff=5)
    client(mw).get("/a")
    clock.advance(31)
    app.fail = "raise"
    for _ in range(3):                         # three back-offs, one attempt each
        assert client(mw).get("/a").headers["X-Cache"] == "STALE"
        end_back_off(mw, clock, 5, "http://example.com/a")
    app.fail = ""
    assert client(mw).get("/a").headers["X-Cache"] == "MISS"
    records = [record for record in caplog.records if record.name == "pagecache"]
    messages = [record.getMessage() for record in records]
    assert messages[0] == ("rebuilding http://example.com/a failed; serving the stale copy; "
                           "the application is left alone for 5s")
    assert records[0].exc_info[0] is RuntimeError
    assert re.fullmatch(r"rebuilding http://example\.com/a failed again \(2 failures since \d\d:\d\d:\d\d, "
                        r"traceback logged the first time\); serving the stale copy; the application is left "
                        r"alone for 5s", messages[1]), messages[1]
    assert "(3 failures since" in messages[2] and records[1].exc_info is None and records[2].exc_info is None
    assert messages[3] == "http://example.com/a answers again, after 3 failures"
    assert caplog.text.count("Traceback") == 1


# -- honest logs --------------------------------------------------------------------


def test_the_debug_line_says_when_memcached_refused_the_page(memcached, caplog):
    caplog.set_level(logging.DEBUG, logger="pagecache")
    app = CountingApp(body=b"x" * (1100 << 10))  # over memcached's 1 MB item limit
    mw = PageCacheMiddleware(app, "/ 30 120", memcached_servers=memcached.address, key_prefix="honest",
                             max_entry_size="2MB", compression="off")
    assert client(mw).get("/big").headers["X-Cache"] == "MISS"
    lines = [record.getMessage() for record in caplog.records
             if record.name == "pagecache" and record.levelno == logging.DEBUG]
    assert len(lines) == 1 and re.fullmatch(
        r"GET http://example\.com/big MISS [\d.]+ms \(not stored: the cache refused it \(\d+ bytes\)\)",
        lines[0]), lines
    assert stored(mw, "http://example.com/big") is None


def test_the_debug_line_says_stored_when_it_was(make, caplog):
    caplog.set_level(logging.DEBUG, logger="pagecache")
    mw = make(CountingApp(), "/ 30 120")
    client(mw).get("/a")
    line = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG][0]
    assert line.endswith("(stored)") and stored(mw, "http://example.com/a") is not None


# -- configuration mistakes ------------------------------------------------------------


def test_an_unknown_option_gets_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown option 'wait_timout' \(did you mean 'wait_timeout'\?\)"):
        PageCacheMiddleware(CountingApp(), "/ 30 60", wait_timout="5s")
    with pytest.raises(ConfigError, match=r"unknown option 'xyzzy' \(known options: background_refresh, "):
        PageCacheMiddleware(CountingApp(), "/ 30 60", xyzzy="1")


def test_a_misspelled_cached_urls_is_named(tmp_path):
    path = tmp_path / "site.ini"
    path.write_text(textwrap.dedent("""\
        [app:main]
        use = egg:pagecache#demo

        [filter:pagecache]
        use = egg:pagecache#main
        cached_urlz = / 30 60

        [pipeline:site]
        pipeline = pagecache main
        """))
    with pytest.raises(ConfigError) as error:
        loadapp(f"config:{path}", name="site")
    assert str(error.value) == (f"{path} line 6: option cached_urls is missing, and 'cached_urlz' is not "
                                f"an option: did you mean cached_urls?")


@pytest.mark.parametrize("wrong", [["127.0.0.1:11211"], "127.0.0.1:11211", ("a:1", "b:2"), object()])
def test_a_list_where_a_cache_object_belongs_fails_at_construction(wrong):
    with pytest.raises(ConfigError, match=r"cache must be a client object with get, set, add and delete"):
        PageCacheMiddleware(CountingApp(), "/ 30 60", wrong)
