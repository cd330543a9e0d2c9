"""What pagecache tells its operators: the counters of ``middleware.stats`` (and
their JSON at ``stats_path``), and the lines it logs on the ``pagecache``
logger, including the ``[loggers]`` setup of development.ini.

Each scenario checks every counter, not only the one it is about: a counter
that moves when it should not is as wrong as one that stays still.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import types
from typing import Dict

import pytest

import pagecache.store
from pagecache import PageCacheMiddleware
from pagecache.stats import COUNTERS, Stats

from .conftest import CountingApp, client, wait_until
from .servers import free_port
from .test_purge import GatedApp, rebuilt_while_requesting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def moved(mw) -> Dict[str, float]:
    """The counters that are not zero."""
    return {name: value for name, value in mw.stats.counts().items() if value}


class FailingApp(CountingApp):
    """A CountingApp whose calls raise (``fail = "raise"``) or answer 503 (``fail = "503"``)."""

    fail = ""

    def __call__(self, environ, start_response):
        if self.fail == "raise":
            self.calls += 1
            raise RuntimeError("the database is down")
        if self.fail == "503":
            self.calls += 1
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"down"]
        return super().__call__(environ, start_response)


@pytest.fixture
def dead_memcached():
    """The address of a port nothing listens on: every connection is refused."""
    return f"127.0.0.1:{free_port()}"


# -- counters -----------------------------------------------------------------


def test_misses_stores_and_hits(make):
    mw = make(CountingApp(), "/a 30 120")
    assert moved(mw) == {}
    client(mw).get("/a")
    assert moved(mw) == {"misses": 1, "stores": 1}
    client(mw).get("/a")
    client(mw).get("/a")
    assert moved(mw) == {"misses": 1, "stores": 1, "hits": 2}
    client(mw).get("/not-cached")  # no rule: untouched and uncounted
    assert moved(mw) == {"misses": 1, "stores": 1, "hits": 2}


def test_bypasses(make):
    mw = make(CountingApp(), "/a 30 120\n/b 30 120", bypass_cookies="session")
    client(mw).get("/a", headers={"Authorization": "Basic dTpw"})
    client(mw).get("/a", headers={"Cookie": "theme=dark; session=42"})
    client(mw).post("/a")
    assert moved(mw) == {"bypasses": 3}


def test_stale_serves_in_the_grace_period(make, clock):
    app = GatedApp()
    mw = make(app, "/ 30 120")
    client(mw).get("/news")
    clock.advance(40)
    during, rebuilding = rebuilt_while_requesting(mw, app)
    assert (during.headers["X-Cache"], rebuilding.headers["X-Cache"]) == ("STALE", "MISS")
    client(mw).get("/news")
    assert moved(mw) == {"misses": 2, "stores": 2, "stale": 1, "hits": 1}


def test_waits_for_a_page_another_request_computes(make):
    app = GatedApp()
    mw = make(app, "/ 30 120")
    app.gate.clear()
    results = {}
    leader = threading.Thread(target=lambda: results.update(leader=client(mw).get("/news")))
    follower = threading.Thread(target=lambda: results.update(follower=client(mw).get("/news")))
    leader.start()
    try:
        assert app.entered.wait(10)
        follower.start()
        wait_until(lambda: mw.stats["waits"] == 1)
    finally:
        app.gate.set()
        leader.join(10)
        follower.join(10)
    assert results["leader"].headers["X-Cache"] == "MISS"
    assert results["follower"].headers["X-Cache"] == "HIT"
    assert results["follower"].body == results["leader"].body
    assert app.calls == 1
    assert moved(mw) == {"misses": 1, "stores": 1, "waits": 1, "hits": 1}


def test_store_failures(make, backend):
    if "memcached_servers" in backend:  # memcached refuses items over 1 MB
        mw = make(CountingApp(body=b"x" * (1200 << 10)), "/ 30 120", max_entry_size="4MB", compression="off")
    else:  # the embedded cache refuses items over memory_limit
        mw = make(CountingApp(body=b"x" * (8 << 10)), "/ 30 120", memory_limit="4KB", compression="off")
    response = client(mw).get("/big")
    assert response.headers["X-Cache"] == "MISS" and len(response.body) > 8000
    assert moved(mw) == {"misses": 1, "store_failures": 1, "memcached_errors": 1}


@pytest.mark.parametrize("failure", ["raise", "503"])
def test_app_errors_covered_by_a_stale_copy(make, clock, failure):
    app = FailingApp()
    mw = make(app, "/ 30 120", error_backoff=0)
    client(mw).get("/a")
    clock.advance(40)
    app.fail = failure
    response = client(mw).get("/a")
    assert (response.status_int, response.headers["X-Cache"], response.body) == (200, "STALE", b"page #1")
    assert moved(mw) == {"misses": 2, "stores": 1, "app_errors": 1, "stale": 1}


def test_purges(make):
    mw = make(CountingApp(), "/ 30 120", purge_allowed="127.0.0.1")
    client(mw).get("/a")
    client(mw).get("/b")
    mw.purge("http://example.com/nothing-here")
    assert moved(mw) == {"misses": 2, "stores": 2}
    mw.purge("http://example.com/a")
    mw.purge("http://example.com/b", soft=True)
    assert moved(mw) == {"misses": 2, "stores": 2, "purges": 2}


@pytest.mark.parametrize("library", ["python-memcached", "pymemcache"])
def test_memcached_errors_are_counted_and_requests_still_served(dead_memcached, library):
    mw = PageCacheMiddleware(CountingApp(), "/ 30 120", memcached_servers=dead_memcached,
                             memcached_client=library, memcached_timeout=0.5)
    for number in (1, 2):
        response = client(mw).get("/a")
        assert (response.status_int, response.headers["X-Cache"]) == (200, "MISS")
        assert response.body == b"page #%d" % number
    counts = moved(mw)
    assert counts.pop("memcached_errors") >= 2
    assert counts == {"misses": 2, "store_failures": 2}


# -- stats_path -----------------------------------------------------------------


def test_stats_path_serves_the_counters_as_json_to_allowed_networks(make):
    mw = make(CountingApp(), "/news 30 120", stats_path="/_pagecache/stats", purge_allowed="10.0.0.0/8")
    client(mw).get("/news")
    client(mw).get("/news")
    response = client(mw).get("/_pagecache/stats", extra_environ={"REMOTE_ADDR": "10.1.2.3"})
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    counts = json.loads(response.text)
    assert set(counts) == set(COUNTERS) | {"uptime", "processes", "pid", "started", "time", "rules",
                                           "histograms", "history", "recent", "servers"}
    assert counts["uptime"] >= 0 and counts["processes"] == 1
    assert {name: counts[name] for name in COUNTERS if counts[name]} == {"misses": 1, "stores": 1, "hits": 1}
    assert counts["rules"]["/news"] == {"misses": 1, "stores": 1, "hits": 1}  # counted for its rule
    assert counts["histograms"]["app_seconds"]["/news"]["count"] == 1
    assert [(d["method"], d["url"], d["outcome"]) for d in counts["recent"]] == [
        ("GET", "http://example.com/news", "HIT"), ("GET", "http://example.com/news", "MISS")]
    assert counts["servers"] == ([{"address": "embedded cache (in each process)", "state": "embedded", "error": None}]
                                 if "memcached_servers" not in mw.settings or not mw.settings["memcached_servers"]
                                 else [{"address": mw.settings["memcached_servers"][0], "state": "up",
                                        "error": None}])
    assert moved(mw) == {"misses": 1, "stores": 1, "hits": 1}  # asking is not counted


@pytest.mark.parametrize("allowed, address", [
    ("10.0.0.0/8", "192.0.2.1"),
    ("10.0.0.0/8", ""),
    ("", "127.0.0.1"),  # no purge_allowed: nobody
])
def test_stats_path_refused_elsewhere(make, allowed, address):
    mw = make(CountingApp(), "/ 30 120", stats_path="/_pagecache/stats", purge_allowed=allowed)
    response = client(mw).get("/_pagecache/stats", extra_environ={"REMOTE_ADDR": address}, status=403)
    assert "hits" not in response.text
    assert mw.app.calls == 0


def test_without_stats_path_the_path_is_the_applications(make):
    mw = make(CountingApp(), "/news 30 120", purge_allowed="127.0.0.1")
    response = client(mw).get("/_pagecache/stats", extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    assert response.body == b"page #1"


# -- logs -------------------------------------------------------------------------


def test_one_debug_line_per_decision_with_url_outcome_and_time(make, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="pagecache")
    app = FailingApp()
    mw = make(app, "/a 30 120")
    client(mw).get("/a?x=1")
    client(mw).get("/a?x=1")
    client(mw).get("/a?x=1", headers={"Authorization": "Basic dTpw"})
    client(mw).get("/elsewhere")
    clock.advance(40)
    app.fail = "raise"
    client(mw).get("/a?x=1")
    lines = [record.getMessage() for record in caplog.records
             if record.name == "pagecache" and record.levelno == logging.DEBUG]
    expected = [r"MISS [\d.]+ms \(stored\)", r"HIT [\d.]+ms", r"BYPASS [\d.]+ms \(authorization\)",
                r"STALE [\d.]+ms \(the application failed: RuntimeError: the database is down\)"]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected):
        assert re.fullmatch(r"GET http://example\.com/a\?x=1 " + pattern, line), line


def test_no_debug_lines_unless_asked(make, caplog):
    caplog.set_level(logging.INFO, logger="pagecache")
    mw = make(CountingApp(), "/ 30 120")
    client(mw).get("/a")
    client(mw).get("/a")
    assert [record for record in caplog.records if record.name == "pagecache"] == []


@pytest.mark.parametrize("library", ["python-memcached", "pymemcache"])
def test_memcached_errors_log_one_warning_per_window(dead_memcached, library, caplog, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(pagecache.store, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    caplog.set_level(logging.WARNING, logger="pagecache")
    mw = PageCacheMiddleware(CountingApp(), "/ 30 120", memcached_servers=dead_memcached,
                             memcached_client=library, memcached_timeout=0.5)

    def warnings():
        return [record.getMessage() for record in caplog.records
                if record.name == "pagecache" and record.levelno == logging.WARNING]

    for _ in range(20):
        assert client(mw).get("/a").status_int == 200
    errors = mw.stats["memcached_errors"]
    assert errors >= 20
    assert len(warnings()) == 1
    assert warnings()[0].startswith("cache error, served without the cache: ")

    now[0] += pagecache.store.WARN_EVERY - 1
    client(mw).get("/a")
    assert len(warnings()) == 1
    errors = mw.stats["memcached_errors"]

    now[0] += 2  # the window has passed
    client(mw).get("/a")
    assert len(warnings()) == 2
    assert warnings()[1].endswith(f" ({errors - 1} more cache errors since the last warning)")


@pytest.mark.parametrize("failure, message", [
    ("raise", "rebuilding http://example.com/a failed; serving the stale copy"),
    ("503", "rebuilding http://example.com/a answered 503 Service Unavailable; serving the stale copy"),
])
def test_error_when_a_rebuild_fails_and_stale_is_served(make, clock, caplog, failure, message):
    caplog.set_level(logging.WARNING, logger="pagecache")
    app = FailingApp()
    mw = make(app, "/ 30 120", error_backoff=0)
    client(mw).get("/a")
    clock.advance(40)
    app.fail = failure
    assert client(mw).get("/a").headers["X-Cache"] == "STALE"
    errors = [record for record in caplog.records if record.name == "pagecache"]
    assert [(record.levelno, record.getMessage()) for record in errors] == [(logging.ERROR, message)]
    if failure == "raise":
        assert errors[0].exc_info[0] is RuntimeError
        assert "Traceback" in caplog.text and "RuntimeError: the database is down" in caplog.text


def test_development_ini_logging_setup_shows_decisions(tmp_path):
    """What pserve does with development.ini: logging.config.fileConfig on it
    (with __file__ and here), then load the app; decisions appear on stderr."""
    script = textwrap.dedent("""
        import logging.config, os, sys
        from wsgiref.util import setup_testing_defaults
        from paste.deploy import loadapp
        path = sys.argv[1]
        logging.config.fileConfig(path, {"__file__": path, "here": os.path.dirname(path)})
        app = loadapp("config:" + path)
        for _ in range(2):
            environ = {"PATH_INFO": "/news"}
            setup_testing_defaults(environ)
            b"".join(app(environ, lambda status, headers, exc_info=None: None))
    """)
    result = subprocess.run([sys.executable, "-c", script, os.path.join(ROOT, "development.ini")],
                            capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "[pagecache]" in line]
    assert len(lines) == 2, result.stderr
    assert re.search(r"DEBUG \[pagecache\]\S* GET http://127\.0\.0\.1/news MISS [\d.]+ms", lines[0]), lines
    assert re.search(r"DEBUG \[pagecache\]\S* GET http://127\.0\.0\.1/news HIT [\d.]+ms", lines[1]), lines


def test_counts_from_many_threads_add_up_and_ended_threads_are_folded():
    stats = Stats()
    together = threading.Barrier(8)

    def work():
        together.wait(timeout=10)
        for _ in range(1000):
            stats.incr("hits")
        stats.incr("stale", 2)

    for _ in range(5):
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert (stats["hits"], stats["stale"]) == (40_000, 80)
    # left: this thread's table and at most the last round's; the others were folded
    assert len(stats._tables) <= 9
