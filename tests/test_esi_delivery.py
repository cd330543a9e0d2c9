"""Edge Side Includes at delivery (pagecache/fragments.py and the ESI steps of
pagecache/middleware.py): a page stored once with holes, filled for each
request with fragments that have lives of their own, in front of a real
Pyramid 2 site (the ESI section of :mod:`tests.apps.pyramid_site`) on a real
memcached, and through real waitress and gunicorn where processes matter.

The site's pages say they hold ESI (``Surrogate-Control: content="ESI/1.0"``)
and, most of them, ``Cache-Control: public`` (they may be shared with requests
that carry cookies: their personal parts are fragments). ``/esi/greeting``
greets the Pyramid session's user; no rule caches it (a ``pass`` rule), so it
is rendered for each request. ``/esi/fragment/<name>`` are shared fragments
with a TTL of their own.

Time is the ``clock`` fixture (the middleware's clock); renders are counted
by the site in files; a fragment that hangs waits on a ``threading.Event``
the test sets once it has its answer. Nothing is synchronised with a sleep,
and nothing asserts how long anything took.
"""

from __future__ import annotations

import collections
import itertools
import logging
import re
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import memcache
import pytest
from webob import Request

from pagecache import PageCacheMiddleware
from pagecache.entry import ESI, SHARED, Page

from .apps.harness import Browser, CallLog, Reply, crowd, deploy  # noqa: F401 (deploy: a fixture)
from .apps.pyramid_site import FAILING
from .apps.pyramid_site import main as pyramid_site
from .conftest import stored

SECRET = "esi-delivery-secret"
HOST = "example.com"          # the Host of in-process requests
HOLD = 30.0                   # the longest anything is waited for (reached only when something is wrong)
RULES = """
/esi/greeting    pass
/esi/visits      pass
/esi/fragment/   ttl=60  grace=60
/esi/            ttl=1h  grace=1h
"""
PAGE_TTL = 3600
GREETING = re.compile(r"<p id=greeting>(.*?)</p>")
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


# -- the site, in-process -------------------------------------------------------

class Site:
    """The Pyramid site as a WSGI app of this process, and the test's end of its
    control directory: render counts, fragment versions, failures and gates."""

    def __init__(self, directory: Path):
        self.control = directory / "control"
        self.control.mkdir(parents=True)
        self.calls = CallLog(directory / "calls.jsonl")
        self.gates: Dict[str, threading.Event] = {}
        self.app = pyramid_site({}, calls_file=str(self.calls.path), control_dir=str(self.control),
                                session_secret=SECRET, esi_gates=self.gates)

    def renders(self, name: str) -> int:
        """Renders of ``esi-<page>``, ``fragment-<name>``, ``greeting``, ``nest-<n>`` so far."""
        path = self.control / ("renders-" + name)
        return path.stat().st_size if path.exists() else 0

    def set_version(self, fragment: str, version: int) -> None:
        (self.control / ("version-fragment-" + fragment)).write_text(str(version))

    def fail(self, fragment: str, how: str) -> None:
        """Renders of the fragment raise (``raise``) or answer status ``how``."""
        (self.control / ("fail-fragment-" + fragment)).write_text(how)

    def recover(self, fragment: str) -> None:
        (self.control / ("fail-fragment-" + fragment)).unlink(missing_ok=True)

    def hold(self, fragment: str) -> threading.Event:
        """From now on renders of the fragment wait until the Event returned is set."""
        gate = self.gates[fragment] = threading.Event()
        return gate

    def release_all(self) -> None:
        for gate in self.gates.values():
            gate.set()


@pytest.fixture
def site(tmp_path):
    made = Site(tmp_path)
    yield made
    made.release_all()  # a test that failed half-way leaves no render waiting


_prefixes = itertools.count()


@pytest.fixture
def cache(site, memcached, clock):
    """``cache(rules=RULES, **options)``: pagecache in front of the site, on the
    test's memcached and clock, with a key prefix of its own."""
    def make(rules: str = RULES, client: Any = None, **options: Any) -> PageCacheMiddleware:
        prefix = f"esi{next(_prefixes)}"
        if client is not None:
            return PageCacheMiddleware(site.app, rules, client, clock=clock, key_prefix=prefix, **options)
        return PageCacheMiddleware(site.app, rules, clock=clock, memcached_servers=memcached.address,
                                   key_prefix=prefix, **options)
    return make


def get(app: Callable, path: str, cookie: Optional[str] = None, headers: Sequence[Tuple[str, str]] = (),
        method: str = "GET", form: Optional[Dict[str, str]] = None) -> Reply:
    """One request to a WSGI app of this process, as a :class:`Reply`. Whatever
    it is, what is meant for pagecache alone never reaches the client."""
    request = Request.blank(path, {"HTTP_HOST": HOST}, headers=dict(headers))
    if cookie:
        request.headers["Cookie"] = cookie
    if form is not None:
        request.method = method
        request.content_type = "application/x-www-form-urlencoded"
        request.body = "&".join(f"{key}={value}" for key, value in form.items()).encode("ascii")
    response = request.get_response(app)
    reply = Reply(response.status_code, list(response.headerlist), response.body)
    assert reply.header("Surrogate-Control") is None, reply.headers
    assert reply.header("Surrogate-Key") is None, reply.headers
    return reply


def log_in(app: Callable, name: str) -> str:
    """Log ``name`` in through the site's form (CSRF token and all); the
    ``Cookie`` header of their session."""
    form = get(app, "/login")
    session = form.header("Set-Cookie").split(";")[0]
    token = TOKEN.search(form.text).group(1)
    answer = get(app, "/login", session, method="POST", form={"name": name, "csrf_token": token})
    assert answer.status == 302, answer
    cookie = answer.header("Set-Cookie").split(";")[0]
    assert f"Logged in as {name}" in get(app, "/", cookie).text
    return cookie


def greeting(reply: Reply) -> str:
    found = GREETING.findall(reply.text)
    assert len(found) == 1, reply.text
    return found[0]


def page_at(middleware: PageCacheMiddleware, path: str) -> Any:
    return stored(middleware, f"http://{HOST}{path}")


def fragment_url(name: str) -> str:
    return f"http://{HOST}/esi/fragment/{name}"


def answered(call: Callable[[], Reply]) -> Reply:
    """``call()`` in a thread of its own: a request that never ends fails the
    test (after HOLD) instead of hanging it."""
    got: List[Any] = []
    thread = threading.Thread(target=lambda: got.append(call()), daemon=True)
    thread.start()
    thread.join(HOLD)
    assert not thread.is_alive(), "the request never got an answer"
    assert got, "the request raised (see the thread's traceback above)"
    return got[0]


# == 1. personal fragments in a shared page ==========================================

def test_a_logged_in_user_gets_the_cached_page_with_their_own_greeting(cache, site):
    middleware = cache()
    alice, bob = log_in(middleware, "alice"), log_in(middleware, "bob")

    first = get(middleware, "/esi/page/greeting")
    assert (first.status, first.cache, greeting(first)) == (200, "MISS", "Hello, visitor")
    for cookie, name in [(alice, "alice"), (bob, "bob"), (None, "visitor"), (alice, "alice"), (bob, "bob")]:
        reply = get(middleware, "/esi/page/greeting", cookie)
        assert (reply.status, reply.cache, greeting(reply)) == (200, "HIT", f"Hello, {name}"), reply
        assert "page render #1<" in reply.text
    assert site.renders("esi-greeting") == 1          # the page: once, for everybody
    assert site.renders("greeting") == 6              # the fragment: for each request
    page = page_at(middleware, "/esi/page/greeting")
    assert type(page) is Page and ESI in page.flags and SHARED in page.flags
    assert b"alice" not in page.body and b"bob" not in page.body and b"visitor" not in page.body


def test_users_never_see_each_others_fragment_concurrently(cache, site):
    middleware = cache()
    people = [(log_in(middleware, name), f"Hello, {name}") for name in ("alice", "bob", "carol")]
    people.append((None, "Hello, visitor"))
    assert get(middleware, "/esi/page/greeting").cache == "MISS"

    def visit(i: int) -> Tuple[str, Reply]:
        cookie, expected = people[i % len(people)]
        return expected, get(middleware, "/esi/page/greeting", cookie)

    for expected, reply in crowd(32, visit):
        assert (reply.status, reply.cache, greeting(reply)) == (200, "HIT", expected), reply
    assert site.renders("esi-greeting") == 1 and site.renders("greeting") == 33


def test_two_users_and_a_visitor_through_waitress_and_gunicorn_on_memcached(deploy):
    """A crowd of two logged-in users and anonymous visitors, released together
    on a cold page, through a waitress process and two gunicorn workers sharing
    memcached: the page is rendered once for all of them (its rule says
    ``esi``, so requests with cookies wait for it too), each gets their own
    greeting, and nobody ever sees another's."""
    deployment = deploy("pyramid", """
        cached_urls =
            /esi/greeting    pass
            /esi/fragment/   ttl=60  grace=60
            /esi/            ttl=1h  grace=1h  esi
        """, servers=("waitress", "gunicorn"))
    sessions = {}
    for name, server in (("alice", deployment.servers[0]), ("bob", deployment.servers[1])):
        browser = Browser()
        form = browser.get(server, "/login")
        answer = browser.post(server, "/login", {"name": name, "csrf_token": TOKEN.search(form.text).group(1)})
        assert answer.status == 200 and f"Logged in as {name}" in answer.text, answer
        sessions[name] = f"session={browser.cookie('session')}"
    people = [("alice", sessions["alice"]), ("bob", sessions["bob"]), ("visitor", None)]
    names = {"alice", "bob", "visitor"}

    def visit(i: int) -> Tuple[str, Reply]:
        name, cookie = people[i % len(people)]
        server = deployment.servers[(i // len(people)) % len(deployment.servers)]
        return name, server.get("/esi/page/greeting", [("Cookie", cookie)] if cookie else [])

    renders = deployment.control_dir / "renders-esi-greeting"
    for round_number in range(2):  # a cold page, then a warm one
        replies = crowd(24, visit)
        for name, reply in replies:
            assert reply.status == 200, reply
            assert greeting(reply) == f"Hello, {name}", (name, reply)
            assert not any(other in reply.text for other in names - {name}), (name, reply.text)
            assert reply.header("Cache-Control") == "private, no-cache"
            assert reply.header("Surrogate-Control") is None
        labels = collections.Counter(reply.cache for _, reply in replies)
        assert labels == ({"MISS": 1, "HIT": 23} if round_number == 0 else {"HIT": 24}), labels
        assert renders.stat().st_size == 1, "the page was rendered more than once"
    assert deployment.calls.count("/esi/greeting") == 48   # the fragment: once per request, with its cookies


def test_a_personal_fragment_sets_its_cookies_in_the_assembled_response_only(cache, site):
    middleware = cache()
    first = get(middleware, "/esi/page/visits")
    assert first.cache == "MISS" and "<p id=visits>visit #1</p>" in first.text
    assert first.all("Set-Cookie") == ["visits=1; Path=/"]
    second = get(middleware, "/esi/page/visits", "visits=1")
    assert second.cache == "HIT" and "<p id=visits>visit #2</p>" in second.text
    assert second.all("Set-Cookie") == ["visits=2; Path=/"]
    assert get(middleware, "/esi/page/visits").all("Set-Cookie") == ["visits=1; Path=/"]
    page = page_at(middleware, "/esi/page/visits")
    assert not [name for name, _ in page.headers if name.lower() == "set-cookie"]
    assert site.renders("esi-visits") == 1


# == 2. a fragment changes, the page stays ============================================

@pytest.mark.parametrize("update", ["purge", "tag purge", "TTL"])
def test_a_fragment_update_does_not_rebuild_the_page(cache, site, clock, update):
    middleware = cache("/esi/fragment/a  ttl=10  grace=60\n" + RULES)
    first = get(middleware, "/esi/page/three")
    assert first.cache == "MISS" and "<div id=a>fragment a v1</div>" in first.text
    assert get(middleware, "/esi/page/three").cache == "HIT"
    site.set_version("a", 2)
    assert "fragment a v1" in get(middleware, "/esi/page/three").text  # cached: not asked again
    clock.advance(1)  # a purge is later than what it purges
    if update == "purge":
        assert middleware.purge(fragment_url("a"))
    elif update == "tag purge":
        assert middleware.purge_tags(["fragment-a"]) == []
    else:
        clock.advance(10)  # past a's TTL (10 s), far from the page's (1 h) and b's and c's (60 s)
    after = get(middleware, "/esi/page/three")
    assert (after.status, after.cache) == (200, "HIT"), after
    assert "<div id=a>fragment a v2</div><div id=b>fragment b v1</div><div id=c>fragment c v1</div>" in after.text
    assert "page render #1<" in after.text and site.renders("esi-three") == 1
    assert (site.renders("fragment-a"), site.renders("fragment-b"), site.renders("fragment-c")) == (2, 1, 1)
    again = get(middleware, "/esi/page/three")
    assert again.cache == "HIT" and again.body == after.body and site.renders("fragment-a") == 2


def test_a_page_whose_fragment_is_stale_shows_the_stale_fragment_while_its_rebuild_fails(cache, site, clock):
    middleware = cache()
    assert "fragment a v1" in get(middleware, "/esi/page/three").text
    clock.advance(61)          # the fragments' TTL is over; their grace (60 s) is not
    site.fail("a", "raise")
    reply = get(middleware, "/esi/page/three")
    assert (reply.status, reply.cache) == (200, "HIT") and "<div id=a>fragment a v1</div>" in reply.text
    assert site.renders("esi-three") == 1


# == 3. a fragment fails ==============================================================

@pytest.mark.parametrize("kind", ["cached", "personal"])
@pytest.mark.parametrize("handling", ["alt", "continue", "strict"])
@pytest.mark.parametrize("failure", ["raise", "503", "hang"])
def test_a_failing_fragment_gives_its_alt_or_nothing_or_the_pages_error(cache, site, kind, handling, failure):
    """The page's includes of /esi/fragment/flaky say alt="/esi/fragment/spare",
    onerror="continue", or nothing; the fragment is cached by a rule (and
    purged before it fails) or personal (a pass rule). It raises, answers 503,
    or hangs past esi_timeout. Afterwards the page is still the one stored:
    once the fragment works, the next request is a HIT of the same render."""
    rules = ("/esi/fragment/flaky  pass\n" if kind == "personal" else "") + RULES
    middleware = cache(rules, esi_timeout="200ms")
    path = f"/esi/page/{handling}"
    warm = get(middleware, path)
    assert (warm.status, warm.cache) == (200, "MISS") and "<div id=flaky>fragment flaky v1</div>" in warm.text
    stored_at = page_at(middleware, path).stored

    gate = None
    if failure == "hang":
        gate = site.hold("flaky")
    else:
        site.fail("flaky", failure)
    if kind == "cached":
        assert middleware.purge(f"http://{HOST}{FAILING}")
    try:
        broken = answered(lambda: get(middleware, path))
    finally:
        if gate is not None:
            gate.set()  # the held render goes on, in its pool thread, after the page's answer

    if handling == "alt":
        assert (broken.status, broken.cache) == (200, "HIT"), broken
        assert "<div id=flaky>fragment spare v1</div>" in broken.text
    elif handling == "continue":
        assert (broken.status, broken.cache) == (200, "HIT"), broken
        assert "<div id=flaky></div>" in broken.text
    else:
        assert broken.status == 502, broken
        assert "fragment flaky" not in broken.text and "page render" not in broken.text
        assert broken.header("Cache-Control") == "no-store"
    assert broken.header("Content-Length") == str(len(broken.body))

    site.recover("flaky")
    again = get(middleware, path)
    assert (again.status, again.cache) == (200, "HIT"), again
    assert "<div id=flaky>fragment flaky v1</div>" in again.text and "page render #1<" in again.text
    assert site.renders("esi-" + handling) == 1 and page_at(middleware, path).stored == stored_at


def test_a_hung_fragment_does_not_fail_the_healthy_fragments_of_other_pages(cache, site):
    """One page's fragment hangs (its backend is down, say) and its request
    gives up on it after esi_timeout; a render still holds the thread it runs
    on. Other pages, whose fragments are healthy, must still be assembled:
    here a page with a personal greeting, asked for while the hung render
    holds the process's only ESI worker (esi_workers = 1)."""
    middleware = cache(esi_workers=1, esi_timeout="200ms")
    assert get(middleware, "/esi/page/continue").status == 200
    assert get(middleware, "/esi/page/mixed").status == 200
    gate = site.hold("flaky")
    try:
        assert middleware.purge(f"http://{HOST}{FAILING}")
        hung = answered(lambda: get(middleware, "/esi/page/continue"))
        assert (hung.status, hung.cache) == (200, "HIT") and "<div id=flaky></div>" in hung.text
        healthy = answered(lambda: get(middleware, "/esi/page/mixed"))
        assert (healthy.status, healthy.cache) == (200, "HIT"), healthy
        assert greeting(healthy) == "Hello, visitor" and "<div id=a>fragment a v1</div>" in healthy.text
    finally:
        gate.set()


# == 4. nesting and loops ============================================================

def nested(top: int, bottom: int = 0) -> str:
    """What /esi/nest/<top> assembles to when the levels down to ``bottom`` are there."""
    return "".join(f"[{level}" for level in range(top, bottom - 1, -1)) + "]" * (top - bottom + 1)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_nested_includes_are_assembled_down_to_esi_depth_and_no_deeper(cache, site, depth):
    options = {} if depth == 3 else {"esi_depth": depth}  # 3: the default
    middleware = cache(**options)
    for label in ("MISS", "HIT"):  # fragments fetched through sub-requests, then from the cache
        reply = get(middleware, f"/esi/nest/{depth}")
        assert (reply.status, reply.cache, reply.text) == (200, label, nested(depth)), reply
        assert reply.header("Content-Length") == str(len(reply.body))
        deeper = get(middleware, f"/esi/nest/{depth + 1}?onerror=continue")  # the last level dropped
        assert (deeper.status, deeper.cache, deeper.text) == (200, label, nested(depth + 1, 1)), deeper
        assert get(middleware, f"/esi/nest/{depth + 1}").status == 502       # no onerror: the page fails
    assert site.renders("nest-0") == 1  # /esi/nest/0 only as the deepest level of nest/<depth>


@pytest.mark.parametrize("path, body", [
    ("/esi/page/self-continue", "<div id=self></div>"),
    ("/esi/page/loop-a-continue", "<div id=a><!doctype html><title>ESI page loop-b-continue</title>"),
    ("/esi/page/loop-b-continue", "<div id=b><!doctype html><title>ESI page loop-a-continue</title>"),
])
def test_a_loop_ends_as_a_failed_include_with_onerror_continue(cache, site, path, body):
    middleware = cache()
    for label in ("MISS", "HIT"):
        reply = answered(lambda: get(middleware, path))
        assert (reply.status, reply.cache) == (200, label), reply
        assert body in reply.text and reply.text.count("<title>") == (1 if "self" in path else 2)


@pytest.mark.parametrize("path", ["/esi/page/self", "/esi/page/loop-a", "/esi/page/loop-b"])
def test_a_loop_without_onerror_fails_the_page_and_never_hangs(cache, site, path):
    middleware = cache()
    for _ in range(2):
        assert answered(lambda: get(middleware, path)).status == 502
    name = path.rsplit("/", 1)[1]
    assert site.renders("esi-" + name) == 1 and type(page_at(middleware, path)) is Page


# == 5. the assembled response is correct HTTP =========================================

def test_content_length_and_etag_are_the_assembled_bodys_and_if_none_match_gets_a_304(cache, site):
    middleware = cache()
    first = get(middleware, "/esi/page/three")
    second = get(middleware, "/esi/page/three")
    for reply in (first, second):
        assert reply.header("Content-Length") == str(len(reply.body))
        assert reply.header("Last-Modified") is None
    etag = first.header("ETag")
    assert etag and second.header("ETag") == etag and second.body == first.body  # nothing changed

    not_modified = get(middleware, "/esi/page/three", headers=[("If-None-Match", etag)])
    assert (not_modified.status, not_modified.body, not_modified.cache) == (304, b"", "HIT")
    assert not_modified.header("ETag") == etag

    site.set_version("b", 2)
    middleware.purge(fragment_url("b"))
    changed = get(middleware, "/esi/page/three", headers=[("If-None-Match", etag)])
    assert (changed.status, changed.cache) == (200, "HIT") and "fragment b v2" in changed.text
    assert changed.header("ETag") not in (None, etag)
    assert changed.header("Content-Length") == str(len(changed.body))
    assert get(middleware, "/esi/page/three", headers=[("If-None-Match", changed.header("ETag"))]).status == 304
    assert site.renders("esi-three") == 1


def test_a_personal_pages_etag_is_each_users_own(cache, site):
    middleware = cache()
    alice, bob = log_in(middleware, "alice"), log_in(middleware, "bob")
    get(middleware, "/esi/page/greeting")
    mine, theirs = get(middleware, "/esi/page/greeting", alice), get(middleware, "/esi/page/greeting", bob)
    assert mine.header("ETag") != theirs.header("ETag")
    assert get(middleware, "/esi/page/greeting", alice, [("If-None-Match", mine.header("ETag"))]).status == 304
    for_bob = get(middleware, "/esi/page/greeting", bob, [("If-None-Match", mine.header("ETag"))])
    assert for_bob.status == 200 and greeting(for_bob) == "Hello, bob"


def test_no_last_modified_and_if_modified_since_never_answers_for_the_fragments(cache, site):
    middleware = cache()
    first = get(middleware, "/esi/page/dated")
    assert first.status == 200 and first.header("Last-Modified") is None
    since = [("If-Modified-Since", "Tue, 01 Jan 2030 00:00:00 GMT")]  # after the page's own Last-Modified
    site.set_version("a", 2)
    middleware.purge(fragment_url("a"))
    reply = get(middleware, "/esi/page/dated", headers=since)
    assert (reply.status, reply.cache) == (200, "HIT") and "fragment a v2" in reply.text


@pytest.mark.parametrize("path, personal", [
    ("/esi/page/three", False), ("/esi/page/greeting", True), ("/esi/page/mixed", True),
])
def test_cache_control_is_private_no_cache_when_a_fragment_was_personal_else_the_pages(cache, site, path,
                                                                                     personal):
    middleware = cache()
    for _ in range(2):
        reply = get(middleware, path)
        assert reply.status == 200 and reply.all("Cache-Control") == (["private, no-cache"] if personal
                                                                      else ["public"]), reply.headers
    assert ("Cache-Control", "public") in page_at(middleware, path).headers   # the stored page keeps its own


def test_with_cookies_a_fragment_is_shared_only_if_it_says_so_as_a_page_does(cache, site):
    """For a request with cookies, a fragment is a sub-request with those
    cookies, and the rule of pages applies: it comes from the cache only if it
    said ESI and ``Cache-Control: public``; otherwise it is rendered for the
    request, and the assembled page is private."""
    middleware = cache()
    alice = log_in(middleware, "alice")
    for path in ("/esi/page/three", "/esi/page/three-shared"):
        assert get(middleware, path).header("Cache-Control") == "public"  # anonymous: fragments from the cache
    renders = [site.renders(f"fragment-{name}") for name in "abc"]
    assert renders == [2, 2, 2]   # /esi/fragment/<name> and /esi/fragment/<name>?shared=1

    mine = get(middleware, "/esi/page/three", alice)
    assert (mine.cache, mine.header("Cache-Control")) == ("HIT", "private, no-cache")
    assert [site.renders(f"fragment-{name}") for name in "abc"] == [3, 3, 3]   # rendered for alice
    shared = get(middleware, "/esi/page/three-shared", alice)
    assert (shared.cache, shared.header("Cache-Control")) == ("HIT", "public")
    assert [site.renders(f"fragment-{name}") for name in "abc"] == [3, 3, 3]   # from the cache
    assert "<div id=a>fragment a v1</div>" in shared.text


def test_age_and_cache_status_are_the_pages_not_the_fragments(cache, site, clock):
    middleware = cache()
    assert get(middleware, "/esi/page/three").cache == "MISS"
    clock.advance(5)
    middleware.purge(fragment_url("a"))
    fresh = get(middleware, "/esi/page/three")          # a: rendered now; the page: 5 s old
    assert (fresh.cache, fresh.header("Age")) == ("HIT", "5")
    clock.advance(2)
    reply = get(middleware, "/esi/page/three")
    assert (reply.cache, reply.header("Age")) == ("HIT", "7")
    assert reply.header("Cache-Status") == f"pagecache; hit; ttl={PAGE_TTL - 7}"
    assert len(reply.all("Age")) == 1 and len(reply.all("Cache-Status")) == 1 and len(reply.all("X-Cache")) == 1


def test_the_debug_log_names_each_fragments_cache_label(cache, site, caplog):
    middleware = cache()
    caplog.set_level(logging.DEBUG, logger="pagecache")

    def line_of(reply: Reply) -> str:
        lines = [record.getMessage() for record in caplog.records
                 if record.name == "pagecache" and "/esi/page/mixed" in record.getMessage()]
        assert len(lines) == 1, lines
        caplog.clear()
        return lines[0]

    first = line_of(get(middleware, "/esi/page/mixed"))
    assert re.search(r"\bMISS\b", first.split("fragments")[0]), first           # the page's own label
    assert re.search(r"http://example\.com/esi/greeting BYPASS\b", first), first
    assert re.search(r"http://example\.com/esi/fragment/a MISS\b", first), first
    again = line_of(get(middleware, "/esi/page/mixed"))
    assert re.search(r"\bHIT\b", again.split("fragments")[0]), again
    assert re.search(r"http://example\.com/esi/greeting BYPASS\b", again), again
    assert re.search(r"http://example\.com/esi/fragment/a HIT\b", again), again


def test_fills_announce_that_pagecache_processes_esi(cache, site):
    seen: Dict[str, List[Optional[str]]] = collections.defaultdict(list)
    app = site.app

    def recording(environ: Dict, start_response: Callable) -> Any:
        seen[environ["PATH_INFO"]].append(environ.get("HTTP_SURROGATE_CAPABILITY"))
        return app(environ, start_response)
    site.app = recording
    middleware = cache()
    for _ in range(2):
        assert get(middleware, "/esi/page/mixed").status == 200
    assert seen["/esi/page/mixed"] == ['pagecache="Surrogate/1.0 ESI/1.0"']   # a fill, once
    assert seen["/esi/fragment/a"] == ['pagecache="Surrogate/1.0 ESI/1.0"']   # a fill, once
    assert seen["/esi/greeting"] == [None, None]   # a pass rule: the request as it came, each time


def test_with_esi_off_fills_do_not_announce_esi(cache, site):
    """``esi = false``: pagecache never processes ESI, so it must not tell the
    application it does (``Surrogate-Capability``), or an application that
    asks (as the Edge Architecture says it should, as Symfony's does) sends
    includes that nobody will fill."""
    seen: List[Optional[str]] = []
    app = site.app

    def recording(environ: Dict, start_response: Callable) -> Any:
        seen.append(environ.get("HTTP_SURROGATE_CAPABILITY"))
        return app(environ, start_response)
    site.app = recording
    middleware = cache(esi=False)
    for label in ("MISS", "HIT"):   # stored and served as the application wrote it ("false: never")
        reply = get(middleware, "/esi/page/three")
        assert reply.cache == label and reply.text.count('<esi:include src="/esi/fragment/') == 3
    assert seen and not any(capability and "ESI/1.0" in capability for capability in seen), seen


# == 6. requests with cookies: only shared ESI pages ===================================

def test_with_cookies_only_a_page_marked_esi_and_public_comes_from_the_cache(cache, site):
    middleware = cache()
    alice = log_in(middleware, "alice")
    for path in ("/esi/page/unshared", "/esi/page/greeting", "/esi/plain"):
        assert get(middleware, path).cache == "MISS" and get(middleware, path).cache == "HIT"  # stored for all
    for cookie in (alice, "theme=dark"):
        unshared = get(middleware, "/esi/page/unshared", cookie)   # ESI, but not Cache-Control: public
        assert (unshared.status, unshared.cache) == (200, "BYPASS"), unshared
        shared = get(middleware, "/esi/page/greeting", cookie)     # ESI and public
        assert (shared.status, shared.cache) == (200, "HIT"), shared
        plain = get(middleware, "/esi/plain", cookie)              # public, but no ESI
        assert (plain.status, plain.cache) == (200, "BYPASS"), plain
    assert greeting(get(middleware, "/esi/page/greeting", alice)) == "Hello, alice"
    assert (site.renders("esi-unshared"), site.renders("esi-greeting"), site.renders("esi-plain")) == (3, 1, 3)


def test_a_cold_page_asked_for_with_cookies_is_rendered_for_everybody_if_its_rule_says_esi(cache, site):
    middleware = cache("/esi/greeting pass\n/esi/fragment/ ttl=60\n/esi/page/ ttl=1h grace=1h esi\n")
    alice, bob = log_in(middleware, "alice"), log_in(middleware, "bob")
    first = get(middleware, "/esi/page/greeting", alice)
    assert (first.status, first.cache, greeting(first)) == (200, "MISS", "Hello, alice")
    second = get(middleware, "/esi/page/greeting", bob)
    assert (second.status, second.cache, greeting(second)) == (200, "HIT", "Hello, bob")
    assert site.renders("esi-greeting") == 1


def test_without_the_esi_word_a_cold_page_is_looked_up_with_cookies_once_it_was_seen_shared(cache, site):
    middleware = cache()
    alice = log_in(middleware, "alice")
    cold = get(middleware, "/esi/page/greeting", alice)   # never seen: it might be anybody's page
    assert (cold.status, cold.cache) == (200, "BYPASS")     # (its includes: see the test after the next)
    assert page_at(middleware, "/esi/page/greeting") is None
    assert get(middleware, "/esi/page/greeting").cache == "MISS"
    assert get(middleware, "/esi/page/greeting", alice).cache == "HIT"   # seen shared
    middleware.purge(f"http://{HOST}/esi/page/greeting")
    again = get(middleware, "/esi/page/greeting", alice)
    assert (again.cache, greeting(again)) == ("MISS", "Hello, alice")    # rendered for everybody
    assert get(middleware, "/esi/page/greeting").cache == "HIT"
    assert site.renders("esi-greeting") == 3


def test_an_esi_response_that_is_not_served_from_the_cache_still_has_its_includes_processed(cache, site):
    """``esi = true`` processes ESI "in responses that say they hold them": a
    logged-in user's BYPASS of a page that may not be shared with them, and a
    ``private`` page nobody may share, are responses too. A client must never
    get ``<esi:include>`` tags (a browser shows nothing for them)."""
    middleware = cache()
    alice = log_in(middleware, "alice")
    bypassed = get(middleware, "/esi/page/unshared", alice)
    assert bypassed.cache == "BYPASS"
    assert "<esi:" not in bypassed.text and greeting(bypassed) == "Hello, alice", bypassed.text
    private = get(middleware, "/esi/page/private")
    assert private.cache == "MISS"
    assert "<esi:" not in private.text and greeting(private) == "Hello, visitor", private.text


# == 7. one round trip =================================================================

class CountingClient:
    """python-memcached's Client, with its reads counted."""

    def __init__(self, client: Any):
        self.client = client
        self.calls: collections.Counter = collections.Counter()
        self.multi: List[List[str]] = []

    def get(self, key: str) -> Any:
        self.calls["get"] += 1
        return self.client.get(key)

    def get_multi(self, keys: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        self.calls["get_multi"] += 1
        self.multi.append(list(keys))
        return self.client.get_multi(keys, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_warm_hit_reads_the_page_and_its_three_fragments_in_one_get_multi(cache, site, memcached):
    client = CountingClient(memcache.Client([memcached.address]))
    middleware = cache(client=client)
    assert get(middleware, "/esi/page/three").cache == "MISS"
    assert get(middleware, "/esi/page/three").cache == "HIT"   # the first assembly from the cache
    for _ in range(3):
        client.calls.clear()
        client.multi.clear()
        reply = get(middleware, "/esi/page/three")
        assert reply.cache == "HIT" and "fragment c v1" in reply.text
        assert dict(client.calls) == {"get_multi": 1}, (client.calls, client.multi)
        page_key = middleware.routes.route(("/esi/page/three", "", HOST, "", "http")).key
        fragment_keys = {middleware.routes.route((f"/esi/fragment/{name}", "", HOST, "", "http")).key
                         for name in "abc"}
        assert client.multi[0][0] == page_key and set(client.multi[0][1:]) == fragment_keys
    assert site.renders("esi-three") == 1 and site.renders("fragment-a") == 1


def test_a_warm_hit_stays_one_get_multi_when_logged_in_users_visit_the_page_too(cache, site, memcached):
    """Requests with cookies assemble the page with fewer cached fragments (for
    them, only those that said they may be shared): that must not make the
    next anonymous hit read its fragments in a second round trip."""
    client = CountingClient(memcache.Client([memcached.address]))
    middleware = cache(client=client)
    alice = log_in(middleware, "alice")
    for _ in range(3):
        get(middleware, "/esi/page/three")
    for visitor in range(3):
        assert get(middleware, "/esi/page/three", alice).cache == "HIT"
        client.calls.clear()
        client.multi.clear()
        reply = get(middleware, "/esi/page/three")
        assert reply.cache == "HIT" and "fragment c v1" in reply.text
        assert dict(client.calls) == {"get_multi": 1}, (visitor, client.calls, client.multi)
