"""The demo (pagecache/demo.py behind development.ini): served by real waitress
and looked at in headless Chromium, as a person trying it would.

The demo's renders are made instant, except the burst target's first render,
which waits on an Event the test sets once pagecache says other requests are
waiting for it: coalescing is seen, not raced.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request

import pytest
from paste.deploy import loadapp
from playwright.sync_api import expect
from webtest import TestApp

from pagecache import ConfigError
from pagecache.demo import DASHBOARD, PAGES, DemoApp
from pagecache.paste import demo_app_factory

from .browser import TIMEOUT_MS, chromium, open_page, playwright_driver  # noqa: F401 (fixtures)
from .conftest import wait_until
from .servers import AppServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

expect.set_options(timeout=TIMEOUT_MS)


def demo_of(app):
    """The DemoApp at the end of a loaded pipeline."""
    seen = app
    for _ in range(10):
        if isinstance(seen, DemoApp):
            return seen
        seen = getattr(seen, "app", None)
    raise AssertionError(f"no DemoApp in the pipeline {app!r}")


def load_development_ini():
    return loadapp("config:development.ini", relative_to=ROOT)


def gated_demo(gate):
    """development.ini's pipeline, its renders instant but /burst's, which wait for ``gate``."""
    app = load_development_ini()
    demo_of(app).pause = lambda path: gate.wait(30) if path == "/burst" else None
    return app


@pytest.fixture
def demo_server():
    gate = AppServer.context.Event()
    server = AppServer(lambda: gated_demo(gate), threads=16)
    server.gate = gate
    server.start()
    yield server
    gate.set()
    server.stop()


def stats(server):
    asked = urllib.request.Request(server.url + "/_pagecache/stats", headers={"Accept": "application/json"})
    with urllib.request.urlopen(asked, timeout=10) as answer:
        return json.load(answer)


def burst_labels(page):
    results = page.locator("#burst-results li[data-label]")
    expect(results).to_have_count(8)
    return results.evaluate_all("items => items.map(item => item.dataset.label)")


def test_a_page_shows_its_cache_status_and_bursts_coalesce(demo_server, open_page):
    page = open_page(demo_server.url + "/news")
    expect(page).to_have_title("News \u00b7 pagecache demo")

    page.get_by_role("button", name="Send a burst").click()          # a cold /burst?n=... URL
    wait_until(lambda: stats(demo_server)["waits"] >= 1)              # others wait for its one render
    demo_server.gate.set()
    labels = burst_labels(page)
    assert labels.count("MISS") == 1 and len(labels) == 8, labels
    assert all(label in ("HIT", "STALE") for label in labels if label != "MISS"), labels
    expect(page.locator("#burst-summary")).to_have_text("7 HIT, 1 MISS")
    assert re.fullmatch(r"/burst\?n=\d+", page.locator("#burst-results").get_attribute("data-url"))
    ages = page.locator("#burst-results li").all_inner_texts()
    assert sum("Age none" in text for text in ages) == 1 and all("status 200" in text for text in ages), ages

    # What this page load was: pagecache's Server-Timing header (server_timing = true).
    expect(page.locator("#cache-label")).to_have_text("MISS")
    page.reload()
    expect(page.locator("#cache-label")).to_have_text("HIT")
    expect(page.locator("#cache-age")).to_have_text(re.compile(r"^\d+ seconds?$"))
    expect(page.locator("#cache-ttl")).to_have_text(re.compile(r"^\d+ seconds?$"))

    page.get_by_role("radio", name=re.compile("^this page")).check()  # a burst on a fresh page: all HIT
    page.get_by_role("button", name="Send a burst").click()
    assert burst_labels(page) == ["HIT"] * 8
    assert page.locator("#burst-results").get_attribute("data-url") == "/news"


TIMINGS = [
    'cache;desc="HIT", age;dur=3, ttl;dur=7',
    'cache;desc="STALE", age;desc="12", ttl;desc="-2"',
    'cache;desc="MISS"',
    'cache;desc=HIT;dur=0.1, age;dur=0, ttl;dur=1',
    None,
]


class WithServerTiming:
    """The demo (without pagecache) with the Server-Timing header ``TIMINGS[int(query)]``
    on its answers (none for None)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        timing = TIMINGS[int(environ.get("QUERY_STRING") or 0)]
        extra = [("Server-Timing", timing)] if timing else []

        def timed(status, headers, exc_info=None):
            return start_response(status, list(headers) + extra, exc_info)
        return self.app(environ, timed)


@pytest.fixture(scope="module")
def timed_demo():
    server = AppServer(lambda: WithServerTiming(DemoApp(delay=0)), threads=4).start()
    yield server
    server.stop()


@pytest.mark.parametrize("timing, label, age, left, later", [
    (0, "HIT", "3 seconds", r"7 seconds", r"[0-6] seconds?"),
    (1, "STALE", "12 seconds", r"expired 2 seconds ago: .*", r"expired ([3-9]|\d\d+) seconds ago: .*"),
    (2, "MISS", "none (just rendered)", r"its rule's TTL, if it may be stored", None),
    (3, "HIT", "0 seconds", r"1 second", r"expired \d+ seconds? ago: .*"),
])
def test_the_status_box_reads_server_timing_and_counts_down(timed_demo, open_page, timing, label, age, left,
                                                            later):
    page = open_page(f"{timed_demo.url}/?{timing}")
    expect(page.locator("#cache-label")).to_have_text(label)
    expect(page.locator("#cache-label")).to_have_class(f"label {label.lower()}")
    expect(page.locator("#cache-age")).to_have_text(age)
    countdown = page.locator("#cache-ttl")
    if later is None:
        expect(countdown).to_have_text(re.compile(f"^{left}$"))
    else:
        expect(countdown).to_have_text(re.compile(f"^(?:{left}|{later})$"))
        expect(countdown).to_have_text(re.compile(f"^{later}$"))          # it counts: wait for the change


def test_without_the_header_the_status_is_unknown(timed_demo, open_page):
    page = open_page(f"{timed_demo.url}/?{TIMINGS.index(None)}")
    expect(page.locator("#cache-label")).to_have_text("unknown")
    expect(page.locator("#cache-age")).to_have_text("unknown")
    expect(page.locator("#cache-ttl")).to_have_text("unknown")
    expect(page.locator("#cache-note")).to_contain_text("No Server-Timing header")
    expect(page.get_by_role("link", name="Cache dashboard")).to_have_attribute("href", DASHBOARD)


def test_favicon_and_unknown_paths_are_404_and_never_hits():
    browser = TestApp(load_development_ini())
    for path in ("/favicon.ico", "/no/such/page", "/news/more", "/burstiness"):
        for _ in range(2):
            answer = browser.get(path, status=404)
            assert answer.headers.get("X-Cache") != "HIT", (path, answer.headers)
            assert "Set-Cookie" not in answer.headers


def test_development_ini_names_the_demo_pages():
    app = load_development_ini()
    demo_of(app).delay = 0
    rules = {rule.pattern: rule for rule in app.rules}
    assert rules["/uncached/"].passes
    assert (rules["/news"].ttl, rules["/news"].grace) == (10, 60)
    assert (rules["/burst"].ttl, rules["/burst"].grace) == (5, 30)
    assert app.rules.match("/", "") is rules["~^/$"] and app.rules.match("/favicon.ico", "") is None
    browser = TestApp(app)
    for path in ("/", "/news", "/burst"):
        assert browser.get(path).headers["X-Cache"] == "MISS"
        assert browser.get(path).headers["X-Cache"] == "HIT"
    assert browser.get("/burst?n=1").headers["X-Cache"] == "MISS"      # each n: a cold page
    for _ in range(2):
        private = browser.get("/private")
        assert private.headers["X-Cache"] == "MISS" and private.headers["Cache-Control"] == "private"
        assert browser.get("/uncached/").headers.get("X-Cache") in (None, "BYPASS")   # a pass rule
    assert browser.get("/_pagecache/stats", extra_environ={"REMOTE_ADDR": "127.0.0.1"}).status_int == 200


@pytest.mark.parametrize("path", sorted(PAGES))
def test_every_page_is_a_decent_page_and_sets_no_cookie(path):
    browser = TestApp(DemoApp(delay=0))
    answer = browser.get(path)
    assert answer.content_type == "text/html" and "Set-Cookie" not in answer.headers
    assert f"<title>{PAGES[path].title} &middot; pagecache demo</title>" in answer.text
    assert "<style>" in answer.text and answer.text.count("<script>") == 1
    html = answer.html
    assert html.find(id="cache-status") and html.find(id="greeting") is not None
    assert html.find("a", href=DASHBOARD) and html.find("button", id="burst-button")
    assert len(html.select("p.try")) == 1 and "Rendered at" in answer.text
    assert ("Cache-Control", "private") in answer.headerlist if PAGES[path].private \
        else "Cache-Control" not in answer.headers
    head = browser.head(path)
    assert head.body == b"" and head.headers["Content-Length"] == answer.headers["Content-Length"]
    assert browser.post(path, status=405).headers["Allow"] == "GET, HEAD"


def test_every_render_is_counted_and_says_its_delay():
    browser = TestApp(DemoApp(delay=0))
    assert "render #1," in browser.get("/news").text and "render #2," in browser.get("/").text
    assert "which took 0s" in browser.get("/").text
    assert demo_app_factory({}, delay="0.5").delay == 0.5 and demo_app_factory({}).delay == 1
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ConfigError, match="option delay"):
            demo_app_factory({}, delay=bad)
