"""The demo (pagecache/demo.py behind development.ini): served by real waitress
and looked at in headless Chromium, as a person trying it would.

The demo's renders are made instant, except the burst target's first render,
which waits on an Event the test sets once pagecache says other requests are
waiting for it: coalescing is seen, not raced.

The pages greet their visitor by the name they gave (a cookie): they are
shared ESI pages whose greeting is a fragment rendered for each request, so
a visitor with a name still gets the page from the cache.
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
from pagecache.demo import DASHBOARD, GREETING, NAME_COOKIE, NAME_FORM, PAGES, DemoApp
from pagecache.paste import demo_app_factory

from .browser import TIMEOUT_MS, Chromium, chromium, open_page, playwright_driver  # noqa: F401 (fixtures)
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
    # the cached pages are shared ESI pages, their greeting a fragment that no rule caches
    assert all(rules[pattern].esi for pattern in ("/news", "/burst", "~^/$"))
    assert not rules["/private"].esi and app.rules.match(GREETING, "back=/news") is None
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
    assert "Hello, stranger!" in html.find(id="greeting").text    # no surrogate: the greeting inline
    assert html.find(id="greeting").find("form", action=NAME_FORM) and "<esi:" not in answer.text
    assert "Surrogate-Control" not in answer.headers
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


# -- the personal greeting -------------------------------------------------------

def set_name(browser, name, back="/news"):
    """Send the name form as a browser does; the redirect back."""
    answer = browser.get(NAME_FORM, {"name": name, "back": back}, status=303)
    assert answer.headers["Location"] == back and answer.headers["Cache-Control"] == "no-store"
    return answer


def hello(answer):
    found = re.findall(r'<p id="hello">(.*?)</p>', answer.text)
    assert len(found) == 1, answer.text[:500]
    return found[0]


def render_number(answer):
    return re.search(r"render #(\d+),", answer.text).group(1)


def test_a_visitor_with_a_name_gets_the_cached_page_with_their_own_greeting():
    app = load_development_ini()
    demo_of(app).delay = 0
    anonymous, alice, bob = TestApp(app), TestApp(app), TestApp(app)
    first = anonymous.get("/news")
    assert first.headers["X-Cache"] == "MISS" and hello(first).startswith("Hello, stranger!")
    set_name(alice, "Alice")
    set_name(bob, "Bob <script>")
    for _ in range(2):
        for browser, greeted in ((alice, "<b id=\"visitor-name\">Alice</b>"),
                                 (bob, "<b id=\"visitor-name\">Bob &lt;script&gt;</b>"),
                                 (anonymous, "Hello, stranger!")):
            answer = browser.get("/news")
            assert answer.headers["X-Cache"] == "HIT", answer.headers
            assert greeted in hello(answer) and render_number(answer) == render_number(first)
            assert answer.headers["Cache-Control"] == "private, no-cache"
            assert "Surrogate-Control" not in answer.headers and "<esi:" not in answer.text
            assert 'cache;desc="HIT"' in answer.headers["Server-Timing"]   # what the status box reads
    assert "Alice" not in bob.get("/news").text and "Bob" not in alice.get("/news").text
    # a page nobody shares: rendered for the visitor, the greeting inline
    private = alice.get("/private")
    assert private.headers["X-Cache"] == "BYPASS" and "Alice" in hello(private) and "<esi:" not in private.text
    # forgetting the name: the cookie goes, the greeting too
    set_name(alice, "")
    assert hello(alice.get("/news")).startswith("Hello, stranger!")


def test_the_name_form_sets_or_forgets_the_cookie_and_goes_back_to_a_demo_page_only():
    browser = TestApp(DemoApp(delay=0))
    answer = browser.get(NAME_FORM, {"name": "  Zoë   the\tcoder ", "back": "/private"}, status=303)
    assert answer.headers["Location"] == "/private"
    assert answer.headers["Set-Cookie"] == (f"{NAME_COOKIE}=Zo%C3%AB%20the%20coder; Path=/; Max-Age=31536000; "
                                            f"SameSite=Lax")
    assert "Zoë the coder" in browser.get("/news").text
    for back in ("//evil.example/", "https://evil.example/", "/no/such/page", ""):
        assert browser.get(NAME_FORM, {"name": "x", "back": back}, status=303).headers["Location"] == "/"
    assert browser.get(NAME_FORM, {"name": "y" * 100}, status=303).headers["Set-Cookie"].startswith(
        f"{NAME_COOKIE}={'y' * 40};")
    forgotten = browser.get(NAME_FORM, {"name": "", "back": "/"}, status=303)
    assert forgotten.headers["Set-Cookie"] == f"{NAME_COOKIE}=; Path=/; Max-Age=0; SameSite=Lax"
    assert browser.post(NAME_FORM, {"name": "x"}, status=405).headers["Allow"] == "GET, HEAD"


def test_a_page_rendered_for_pagecache_holds_the_greeting_as_a_fragment():
    browser = TestApp(DemoApp(delay=0), extra_environ={"HTTP_SURROGATE_CAPABILITY":
                                                       'pagecache="Surrogate/1.0 ESI/1.0"'})
    for path in ("/", "/news", "/burst", "/uncached/"):
        answer = browser.get(path, headers={"Cookie": f"{NAME_COOKIE}=Alice"})
        assert answer.headers["Cache-Control"] == "public"
        assert answer.headers["Surrogate-Control"] == 'content="ESI/1.0"'
        assert f'<div id="greeting" class="greeting"><esi:include src="{GREETING}?back={path}"/></div>' \
            in answer.text and "Alice" not in answer.text
    private = browser.get("/private", headers={"Cookie": f"{NAME_COOKIE}=Alice"})
    assert private.headers["Cache-Control"] == "private" and "Surrogate-Control" not in private.headers
    assert "<esi:" not in private.text and "Alice" in private.text
    fragment = browser.get(GREETING, {"back": "/news"}, headers={"Cookie": f"{NAME_COOKIE}=Alice%20B"})
    assert fragment.headers["Cache-Control"] == "private" and "Set-Cookie" not in fragment.headers
    assert '<b id="visitor-name">Alice B</b>' in fragment.text and 'name="back" value="/news"' in fragment.text


def test_in_the_browser_each_visitor_is_greeted_by_name_in_a_page_from_the_cache(demo_server, chromium,
                                                                                playwright_driver, tmp_path):
    first = chromium.open(demo_server.url + "/news")
    expect(first.locator("#cache-label")).to_have_text("MISS")
    expect(first.locator("#hello")).to_contain_text("Hello, stranger!")
    rendered = first.locator(".rendered").inner_text()

    first.get_by_label("Your name").fill("Alice")
    first.get_by_role("button", name="Greet me").click()        # the form, then its redirect back here
    expect(first.locator("#visitor-name")).to_have_text("Alice")
    assert first.url == demo_server.url + "/news"
    first.reload()
    expect(first.locator("#visitor-name")).to_have_text("Alice")
    expect(first.locator("#cache-label")).to_have_text("HIT")
    assert first.locator(".rendered").inner_text() == rendered    # the page was not rendered again

    other = Chromium(playwright_driver, str(tmp_path / "second-profile"))   # another visitor
    try:
        second = other.open(demo_server.url + "/news")
        expect(second.locator("#cache-label")).to_have_text("HIT")
        expect(second.locator("#hello")).to_contain_text("Hello, stranger!")
        second.get_by_label("Your name").fill("Bob")
        second.get_by_role("button", name="Greet me").click()
        expect(second.locator("#visitor-name")).to_have_text("Bob")
        second.reload()
        expect(second.locator("#visitor-name")).to_have_text("Bob")
        expect(second.locator("#cache-label")).to_have_text("HIT")
        assert second.locator(".rendered").inner_text() == rendered
        assert "Alice" not in second.content()
    finally:
        other.close()
    assert not other.errors, other.errors

    first.reload()
    expect(first.locator("#visitor-name")).to_have_text("Alice")
    expect(first.locator("#cache-label")).to_have_text("HIT")
    assert "Bob" not in first.content()

    # A burst from a visitor with a name carries their cookie: it still coalesces on one render.
    first.get_by_role("button", name="Send a burst").click()
    wait_until(lambda: stats(demo_server)["waits"] >= 1)
    demo_server.gate.set()
    expect(first.locator("#burst-summary")).to_have_text("7 HIT, 1 MISS")
