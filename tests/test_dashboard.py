"""The dashboard (pagecache/dashboard.py) in headless Chromium.

The page is served with a stats snapshot by a small WSGI app of this module
(:class:`SnapshotSource`) under real waitress in a child process; the test
switches the snapshot it serves (:meth:`Source.show`) and waits, with
Playwright's own waiting, for the page to follow.

To look at another server's dashboard, open it with the ``open_page`` fixture
(``open_page(url)`` returns the loaded Playwright page) and use the
locators below: ``tile(page, "hits")``, ``rule_row(page, "/news")``.

``PAGECACHE_SCREENSHOTS=1 python3 dev.py test tests/test_dashboard.py -k screenshot``
writes ``docs/dashboard.png`` from :data:`SHOWCASE` (every run takes the
screenshot; only with the variable set is it kept in docs/).
"""

from __future__ import annotations

import copy
import json
import os
import re
import urllib.request
from datetime import datetime, timezone

import pytest
from playwright.sync_api import expect

from pagecache import dashboard

from .browser import TIMEOUT_MS, Chromium, chromium, open_page, playwright_driver  # noqa: F401 (fixtures)
from .servers import AppServer
from .test_demo import demo_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_700_000_000.0
HOSTILE = '<img src=x onerror="window.__pwned=1">'
HOSTILE_REASON = "<script>window.__pwned=2</script> & friends"
HOSTILE_RULE = "~^/<b>bold</b>"

expect.set_options(timeout=TIMEOUT_MS)


def history(*ratios, start=T0, per_interval=(20,)):
    """Cumulative samples every 10 s whose intervals have these hit ratios (None: no request),
    with ``per_interval`` requests each (a sequence, repeated)."""
    sample = {"time": start, "hits": 0, "stale": 0, "misses": 0, "bypasses": 0, "passes": 0}
    samples = [dict(sample)]
    for number, ratio in enumerate(ratios, 1):
        sample["time"] = start + 10 * number
        if ratio is not None:
            asked = per_interval[(number - 1) % len(per_interval)]
            served = round(ratio * asked)
            sample["hits"] += served
            sample["misses"] += asked - served
        samples.append(dict(sample))
    return samples


FIRST = {
    "hits": 10, "stale": 1, "misses": 3, "bypasses": 2, "passes": 0, "stores": 3, "store_failures": 0,
    "uncacheable": 0, "app_errors": 0, "waits": 1, "wait_timeouts": 0, "refreshes": 0, "purges": 0,
    "memcached_errors": 0, "local_hits": 0, "uptime": 12.5, "processes": 2, "pid": 1234,
    "rules": {
        "/news": {"hits": 8, "stale": 1, "misses": 2, "bypasses": 0, "passes": 0, "stores": 2, "app_errors": 0},
        "/": {"hits": 2, "stale": 0, "misses": 1, "bypasses": 2, "passes": 0, "stores": 1, "app_errors": 0},
        HOSTILE_RULE: {"hits": 0, "misses": 0},
    },
    "histograms": {
        "app_seconds": {"/news": {"buckets": [0.005, 0.05, 0.5, 5, "+Inf"], "counts": [0, 0, 2, 2, 2],
                                  "sum": 0.4, "count": 2}},
        "wait_seconds": {},
    },
    "history": history(0.5, 0.75, None, 0.9),
    "recent": [
        {"time": T0 + 12.3, "method": "GET", "url": "http://h/news?q=" + HOSTILE, "outcome": "HIT",
         "reason": HOSTILE_REASON, "ms": 0.4},
        {"time": T0 + 11.0, "method": "GET", "url": "http://h/news", "outcome": "MISS", "reason": "cold",
         "ms": 203.0},
    ],
    "servers": [{"address": "127.0.0.1:11211", "state": "up", "error": None},
                {"address": "127.0.0.1:11212", "state": "down", "error": "connection refused " + HOSTILE}],
}

SECOND = copy.deepcopy(FIRST)
SECOND.update(hits=25, uptime=14.5, pid=1235)
SECOND["rules"]["/news"]["hits"] = 23
SECOND["recent"].insert(0, {"time": T0 + 14.0, "method": "HEAD", "url": "http://h/second", "outcome": "STALE",
                            "reason": "in grace", "ms": 0.2})
SECOND["history"] = history(0.5, 0.75, None, 0.9, 1.0)
SECOND["servers"][1] = {"address": "127.0.0.1:11212", "state": "up", "error": None}

# Older or odder versions: keys missing, or of the wrong type. pid marks which one is shown.
EMPTY = {}
ODD = {"pid": 4242, "hits": "many", "rules": ["/news"], "history": "none", "recent": [None, 5, {"url": None}],
       "servers": "down", "histograms": None, "processes": None, "uptime": -3}

SHOWCASE = {
    "hits": 18_412, "stale": 436, "misses": 1_203, "bypasses": 377, "passes": 52, "stores": 1_188,
    "store_failures": 0, "uncacheable": 15, "app_errors": 2, "waits": 96, "wait_timeouts": 0, "refreshes": 0,
    "purges": 4, "memcached_errors": 3, "local_hits": 0, "uptime": 3_725.4, "processes": 4, "pid": 31877,
    "rules": {
        "/news": {"hits": 9_870, "stale": 301, "misses": 512, "bypasses": 40, "passes": 0, "stores": 506,
                  "app_errors": 2},
        "~^/$": {"hits": 6_020, "stale": 120, "misses": 388, "bypasses": 212, "passes": 0, "stores": 388,
                 "app_errors": 0},
        "/burst": {"hits": 2_401, "stale": 15, "misses": 288, "bypasses": 0, "passes": 0, "stores": 288,
                   "app_errors": 0},
        "/private": {"hits": 121, "stale": 0, "misses": 15, "bypasses": 125, "passes": 52, "stores": 6,
                     "app_errors": 0},
    },
    "histograms": {"app_seconds": {
        "/news": {"sum": 523.1, "count": 514}, "~^/$": {"sum": 391.0, "count": 388},
        "/burst": {"sum": 290.2, "count": 288}, "/private": {"sum": 67.9, "count": 67}}},
    "history": history(0.1, 0.45, 0.8, 0.9, 0.93, 0.95, 0.94, 0.96, 0.6, 0.85, 0.93, 0.95, 0.97, 0.96, 0.95,
                       0.97, 0.98, 0.96, 0.7, 0.9, 0.95, 0.97, 0.96, 0.98, 0.97, 0.96, 0.98, 0.97, 0.99, 0.98,
                       start=T0 + 3_400,
                       per_interval=(30, 44, 52, 61, 58, 66, 70, 64, 90, 75, 62, 57, 55, 60, 68, 72, 80, 77,
                                     95, 70, 61, 58, 55, 57, 63, 66, 71, 64, 60, 62)),
    "recent": [
        {"time": T0 + 3_725.1, "method": "GET", "url": "http://127.0.0.1:6543/news", "outcome": "HIT",
         "reason": "", "ms": 0.3},
        {"time": T0 + 3_724.8, "method": "GET", "url": "http://127.0.0.1:6543/burst?n=81723", "outcome": "HIT",
         "reason": "computed by another request", "ms": 1_003.9},
        {"time": T0 + 3_724.8, "method": "GET", "url": "http://127.0.0.1:6543/burst?n=81723", "outcome": "MISS",
         "reason": "stored", "ms": 1_004.2},
        {"time": T0 + 3_723.0, "method": "GET", "url": "http://127.0.0.1:6543/news", "outcome": "STALE",
         "reason": "in grace: another request rebuilds it", "ms": 0.4},
        {"time": T0 + 3_722.5, "method": "POST", "url": "http://127.0.0.1:6543/private", "outcome": "BYPASS",
         "reason": "method POST", "ms": 1_001.7},
        {"time": T0 + 3_721.9, "method": "GET", "url": "http://127.0.0.1:6543/private", "outcome": "MISS",
         "reason": "not stored: Cache-Control: private", "ms": 1_002.0},
        {"time": T0 + 3_720.2, "method": "GET", "url": "http://127.0.0.1:6543/", "outcome": "HIT", "reason": "",
         "ms": 0.3},
    ],
    "servers": [{"address": "10.0.0.5:11211", "state": "up", "error": None},
                {"address": "10.0.0.6:11211", "state": "up", "error": None},
                {"address": "10.0.0.7:11211", "state": "down",
                 "error": "timed out after 250 ms; retried in 30 s"}],
}

ERROR = "error"  # a 500
LOOKS = [FIRST, SECOND, ERROR, EMPTY, ODD, SHOWCASE]


class SnapshotSource:
    """``/``: the dashboard; ``/stats.json``: the snapshot ``LOOKS[look.value]``
    (or a 500 for ``"error"``), only for requests that ask for JSON."""

    def __init__(self, look):
        self.look = look

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO")
        if path == "/":
            body = dashboard.page("/stats.json")
            start_response("200 OK", dashboard.HEADERS + [("Content-Length", str(len(body)))])
            return [body]
        if path != "/stats.json":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        if environ.get("HTTP_ACCEPT") != "application/json":
            start_response("406 Not Acceptable", [("Content-Type", "text/plain")])
            return [b"ask for application/json"]
        snapshot = LOOKS[self.look.value]
        if snapshot is ERROR:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"broken"]
        body = json.dumps(snapshot).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                                  ("Content-Length", str(len(body)))])
        return [body]


class Source:
    def __init__(self):
        self.look = AppServer.context.Value("i", 0)
        self.server = AppServer(lambda: SnapshotSource(self.look), threads=4)

    @property
    def url(self) -> str:
        return self.server.url + "/"

    def show(self, snapshot) -> None:
        self.look.value = next(i for i, look in enumerate(LOOKS) if look is snapshot)


@pytest.fixture
def source():
    """A live snapshot source, showing FIRST until the test says otherwise."""
    source = Source()
    source.server.start()
    yield source
    source.server.stop()


@pytest.fixture
def dashboard_page(source, open_page):
    """The dashboard in Chromium, once it shows FIRST."""
    page = open_page(source.url)
    expect(page.locator("#meta")).to_contain_text("pid 1234")
    return page


def tile(page, counter):
    return page.locator(f'#totals [data-counter="{counter}"] .n')


def rule_row(page, rule):
    return page.locator("#rules-body tr").filter(has=page.locator("td:first-child", has_text=rule))


def cells(row):
    return [text.strip() for text in row.locator("td").all_inner_texts()]


def test_shows_the_snapshot_and_follows_it_live(source, dashboard_page):
    page = dashboard_page
    expect(tile(page, "hits")).to_have_text("10")
    expect(tile(page, "stale")).to_have_text("1")
    expect(tile(page, "misses")).to_have_text("3")
    expect(page.locator("#ratio")).to_have_text("68.8%")             # (10 + 1) / (10 + 1 + 3 + 0 + 2)
    expect(page.locator("#meta")).to_contain_text("2 processes")
    expect(page.locator("#meta")).to_contain_text("up 12")
    expect(page.locator("#updated")).not_to_have_text("never")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#ratio-latest")).to_have_text("last interval: 90.0% of 20 requests (2.0 per second)")

    news = rule_row(page, "/news")
    expect(news).to_have_count(1)
    assert cells(news) == ["/news", "8", "1", "2", "0", "0", "2", "0", "81.8%", "200 ms"]
    assert cells(page.locator("#rules-body tr").first)[0] == "/news"        # most requests first
    front = page.locator("#rules-body tr").nth(1)
    assert cells(front) == ["/", "2", "0", "1", "2", "0", "1", "0", "40.0%", "\u2013"]

    servers = page.locator("#servers li")
    expect(servers).to_have_count(2)
    expect(servers.nth(0)).to_contain_text("up")
    expect(servers.nth(0)).to_contain_text("127.0.0.1:11211")
    expect(servers.nth(1)).to_contain_text("down")
    expect(servers.nth(1)).to_contain_text("connection refused")

    recent = page.locator("#recent-body tr")
    expect(recent).to_have_count(2)
    newest = cells(recent.nth(0))
    assert newest[1:5] == ["GET", "http://h/news?q=" + HOSTILE, "HIT", HOSTILE_REASON]
    assert re.search(r"\d", newest[0]) and newest[5] == "0.4"
    assert cells(recent.nth(1))[1:4] == ["GET", "http://h/news", "MISS"]

    chart = page.locator("#chart svg")
    expect(chart).to_have_attribute("data-points", "3")               # 4 intervals, one without requests
    path = chart.locator("path.ratio").get_attribute("d")
    assert path.count("M") == 2 and path.count("L") == 1, path        # a gap where nothing was asked
    expect(chart.locator("rect.bar")).to_have_count(3)

    source.show(SECOND)
    expect(tile(page, "hits")).to_have_text("25")
    expect(rule_row(page, "/news").locator("td").nth(1)).to_have_text("23")
    expect(page.locator("#recent-body tr")).to_have_count(3)
    assert cells(page.locator("#recent-body tr").first)[1:5] == ["HEAD", "http://h/second", "STALE", "in grace"]
    expect(page.locator("#chart svg")).to_have_attribute("data-points", "4")
    expect(page.locator("#servers li").nth(1)).not_to_contain_text("down")
    expect(page.locator("#meta")).to_contain_text("pid 1235")


def test_a_failed_update_shows_a_banner_and_keeps_the_last_data(source, dashboard_page, chromium):
    page = dashboard_page
    source.show(ERROR)
    banner = page.locator("#error")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("HTTP 500")
    expect(banner).to_contain_text("Showing the data of")
    expect(tile(page, "hits")).to_have_text("10")
    expect(page.locator("#recent-body tr")).to_have_count(2)

    source.show(SECOND)
    expect(banner).to_be_hidden()
    expect(tile(page, "hits")).to_have_text("25")
    assert any("500" in line for line in chromium.console)            # the browser's own note of the 500


def test_hostile_strings_are_shown_as_text(source, dashboard_page):
    page = dashboard_page
    expect(page.locator("#recent-body tr").first.locator("td.url")).to_have_text("http://h/news?q=" + HOSTILE)
    expect(page.locator("#recent-body tr").first.locator("td.reason")).to_have_text(HOSTILE_REASON)
    expect(rule_row(page, HOSTILE_RULE).locator("td").first).to_have_text(HOSTILE_RULE)
    expect(page.locator("#servers li").nth(1).locator(".error")).to_have_text("connection refused " + HOSTILE)
    assert page.locator("img").count() == 0 and page.locator("#rules-body b").count() == 0
    assert page.locator("script").count() == 1
    assert page.evaluate("() => [window.__pwned, document.title]") == [None, "pagecache dashboard"]


def test_renders_snapshots_with_keys_missing_or_odd(source, open_page, chromium):
    source.show(EMPTY)
    page = open_page(source.url)
    expect(page.locator("#updated")).not_to_have_text("never")
    expect(page.locator("#servers")).to_have_text(re.compile("embedded cache"))
    expect(page.locator("#ratio")).to_have_text("\u2013")
    expect(page.locator("#rules-body")).to_contain_text("no per-rule counters")
    expect(page.locator("#recent-body")).to_contain_text("no decisions")
    expect(page.locator("#chart")).to_contain_text("no history yet")
    expect(tile(page, "hits")).to_have_text("\u2013")
    expect(page.locator("#error")).to_be_hidden()

    source.show(ODD)
    expect(page.locator("#meta")).to_contain_text("pid 4242")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#servers")).to_have_text(re.compile("embedded cache"))
    expect(page.locator("#recent-body tr")).to_have_count(3)
    expect(tile(page, "hits")).to_have_text("\u2013")
    assert not [line for line in chromium.console if line.startswith("error")], chromium.console


def test_the_page_holds_no_data_and_allows_only_its_own_script_and_style():
    document = dashboard.page('/stats"><script>alert(1)</script>').decode()
    assert document.count("<script>") == 1 and "alert(1)</script>" not in document
    assert 'data-json-url="/stats&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in document
    assert dashboard.page("/a") == dashboard.page("/a")
    script = re.search(r"<script>(.*)</script>", document, re.S).group(1)
    style = re.search(r"<style>(.*)</style>", document, re.S).group(1)
    policy = dict(part.strip().split(" ", 1) for part in dashboard.CONTENT_SECURITY_POLICY.split(";"))
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["script-src"] == dashboard._hash(script) and policy["style-src"] == dashboard._hash(style)
    assert "unsafe-inline" not in dashboard.CONTENT_SECURITY_POLICY


def test_screenshot(source, playwright_driver, tmp_path):
    """The showcase snapshot in a fixed window, clock and time zone; kept as docs/dashboard.png
    when PAGECACHE_SCREENSHOTS is set."""
    source.show(SHOWCASE)
    browser = Chromium(playwright_driver, str(tmp_path / "profile"), viewport={"width": 1280, "height": 800},
                       timezone_id="UTC", color_scheme="light")
    try:
        page = browser.new_page()
        page.clock.set_fixed_time(datetime.fromtimestamp(T0 + 3_726, tz=timezone.utc))
        browser.open(source.url, page=page)
        expect(page.locator("#meta")).to_contain_text("pid 31877")
        expect(page.locator("#chart svg")).to_have_attribute("data-points", "30")
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert browser.errors == []
    finally:
        browser.close()
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000
    if os.environ.get("PAGECACHE_SCREENSHOTS"):
        os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
        with open(os.path.join(ROOT, "docs", "dashboard.png"), "wb") as f:
            f.write(data)


def test_the_source_wants_json(source):
    """The test's source answers only what the dashboard asks for, as pagecache will."""
    asked = urllib.request.Request(source.server.url + "/stats.json", headers={"Accept": "application/json"})
    with urllib.request.urlopen(asked, timeout=10) as answer:
        assert json.load(answer)["hits"] == 10


class BesideThePipeline:
    """development.ini's pipeline with its demo instant: the middleware serves
    the dashboard at its stats_path to the browser, and the JSON it reads."""

    def __init__(self):
        from paste.deploy import loadapp

        self.app = loadapp("config:development.ini", relative_to=ROOT)
        demo_of(self.app).delay = 0

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


def test_reads_the_snapshot_of_the_real_middleware(open_page):
    """Two requests for /news through development.ini, then the dashboard on its stats_path JSON."""
    server = AppServer(BesideThePipeline, threads=4).start()
    try:
        for _ in range(2):
            with urllib.request.urlopen(server.url + "/news", timeout=10) as answer:
                answer.read()
        page = open_page(server.url + "/_pagecache/stats")  # a browser asks for HTML: the dashboard
        expect(page.locator("#updated")).not_to_have_text("never")
        expect(page.locator("#error")).to_be_hidden()
        expect(tile(page, "hits")).to_have_text("1")
        expect(tile(page, "misses")).to_have_text("1")
        expect(page.locator("#ratio")).to_have_text("50.0%")
        expect(page.locator("#servers")).to_contain_text("embedded cache")
        expect(rule_row(page, "/news")).to_be_visible()
        expect(page.locator("#recent-body td.url").first).to_have_text(f"http://127.0.0.1:{server.port}/news")
        with urllib.request.urlopen(server.url + "/news", timeout=10) as answer:  # live: the page follows
            answer.read()
        expect(tile(page, "hits")).to_have_text("2")
    finally:
        server.stop()
