"""pagecache listens to the application (DESIGN.md, promise 4): a real Pyramid
2 site (:mod:`tests.apps.pyramid_site`) says how long its pages may be kept,
and pagecache keeps them exactly that long, revalidates them with the
validators the views set, forgets them when an unsafe method changes them,
and protects the site from the dog-pile with lifetimes that come from the
responses alone: the whole site is one rule, ``/ ttl=0`` ("the responses
decide").

Time is driven by hand: in-process, the middleware and the embedded cache
read the ``clock`` fixture; across processes, every server reads one clock
shared through a ``multiprocessing.Value``, which only the test moves.
memcached's own expiry is in real seconds and always outlives the page's
life in these tests, so what they check is the middleware's decisions
and the lifetimes of the entries it stored (``stored(...).ttl``). Nothing is
synchronised with a sleep: renders of the site are held (a flag in its
control directory) until the test has seen, through counters and answers,
that every other client is waiting or served.

What the site's views say about themselves (see the "listening" section of
:mod:`tests.apps.pyramid_site`):

* ``/http-cache/60``, ``/http-cache/5``: Pyramid's ``http_cache=60`` / ``5``
  (``Cache-Control: max-age=60`` and an ``Expires``);
* ``/policy/<name>``: a ``Cache-Control`` of its own (``swr``: ``max-age=1,
  stale-while-revalidate=60``; ``sie``: ``max-age=1, stale-if-error=600``;
  ``must-revalidate``; ``cold``: ``max-age=60``; ``aged``: ``max-age=60``
  with ``Age: 30``);
* ``/validated/etag/<name>``, ``/validated/last-modified/<name>``:
  ``http_cache=1``, a validator and ``conditional_response``: WebOb answers
  a matching conditional request with 304 without rendering the body;
* ``/notes/<id>``: an article all processes share, edited through a
  CSRF-protected form (POST, then a redirect to GET);
* ``/items/<id>``: PUT, DELETE and POST change it (an API: no CSRF token).
"""

from __future__ import annotations

import itertools
import json
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
from webob import Request

from pagecache import PageCacheMiddleware
from pagecache.entry import MUST_REVALIDATE, VALIDATORS, Page, Pass

from .apps.harness import HOST, Browser, CallLog, Reply, Served, deploy, send  # noqa: F401 (deploy: fixture)
from .apps.pyramid_site import main as pyramid_site
from .conftest import stored, wait_until
from .crowds import Crowd
from .servers import AppServer

WHOLE_SITE = "/ ttl=0"      # one rule for the whole site, giving no lifetime: the responses decide
LOCAL_HOST = "example.com"  # the Host of in-process requests
CROWD = 32
HOLD = 30.0                 # longest the test waits for anything (reached only when something is wrong)
STATS = "/_pagecache/stats"
SECRET = "listening-secret"


# -- the site, in-process ---------------------------------------------------------

class Control:
    """The test's end of the site's control directory (see the "listening"
    section of :mod:`tests.apps.pyramid_site`)."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _size(self, name: str) -> int:
        path = self.directory / name
        return path.stat().st_size if path.exists() else 0

    def renders(self, name: str) -> int:
        """How many times page ``name``'s body was rendered (by any process)."""
        return self._size("renders-" + name)

    def entered(self, name: str) -> int:
        """How many renders of ``name`` were held so far."""
        return self._size("entered-" + name)

    def hold(self, name: str) -> None:
        """From now on renders of ``name`` wait until :meth:`release`."""
        (self.directory / ("hold-" + name)).write_text("1")

    def release(self, name: str) -> None:
        (self.directory / ("hold-" + name)).unlink(missing_ok=True)

    def fail(self, name: str, how: str) -> None:
        """Renders of ``name`` raise (``how="raise"``) or answer status ``how``."""
        (self.directory / ("fail-" + name)).write_text(how)

    def recover(self, name: str) -> None:
        (self.directory / ("fail-" + name)).unlink(missing_ok=True)

    def set_version(self, name: str, version: int) -> None:
        (self.directory / ("version-" + name)).write_text(str(version))


class Site:
    """The Pyramid site as a WSGI app of the test process."""

    def __init__(self, directory: Path):
        self.control = Control(directory / "control")
        self.calls = CallLog(directory / "calls.jsonl")
        self.app = pyramid_site({}, calls_file=str(self.calls.path), control_dir=str(self.control.directory),
                                session_secret=SECRET)


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


class Recorder:
    """The site with each call's conditional headers and status recorded."""

    def __init__(self, app: Callable):
        self.app = app
        self.seen: List[Tuple[Optional[str], Optional[str], str]] = []

    def __call__(self, environ: Dict, start_response: Callable) -> Any:
        conditional = (environ.get("HTTP_IF_NONE_MATCH"), environ.get("HTTP_IF_MODIFIED_SINCE"))

        def start(status: str, headers: List, exc_info: Any = None) -> Any:
            self.seen.append((*conditional, status))
            return start_response(status, headers, exc_info)
        return self.app(environ, start)


def get(app: Callable, path: str, method: str = "GET", headers: Sequence[Tuple[str, str]] = (),
        body: Optional[bytes] = None, form: Optional[Dict[str, str]] = None, host: str = LOCAL_HOST) -> Reply:
    """One request to a WSGI app in this process (WebOb), as a :class:`Reply`."""
    environ = {"HTTP_HOST": host, "REQUEST_METHOD": method}
    request = Request.blank(path, environ, headers=dict(headers))
    if form is not None:
        request.method = method
        request.content_type = "application/x-www-form-urlencoded"
        request.body = urllib.parse.urlencode(form).encode("ascii")
    elif body is not None:
        request.body = body
    response = request.get_response(app)
    return Reply(response.status_code, list(response.headerlist), response.body)


def labels(replies: Sequence[Reply]) -> Dict[Optional[str], int]:
    counted: Dict[Optional[str], int] = {}
    for reply in replies:
        counted[reply.cache] = counted.get(reply.cache, 0) + 1
    return counted


def page_at(middleware: PageCacheMiddleware, path: str, host: str = LOCAL_HOST) -> Any:
    return stored(middleware, f"http://{host}{path}")


# -- the site across processes, on one clock -----------------------------------

ctx = AppServer.context
_prefixes = itertools.count()


class SharedClock:
    """A clock every server process reads (a shared Value): it starts at the
    real time and moves only when the test moves it."""

    def __init__(self) -> None:
        self._now = ctx.Value("d", time.time())

    def __call__(self) -> float:
        return self._now.value

    @property
    def now(self) -> float:
        return self._now.value

    def advance(self, seconds: float) -> None:
        with self._now.get_lock():
            self._now.value += seconds


class Cluster:
    """Waitress processes, each serving the Pyramid site behind a
    PageCacheMiddleware built in the process, all on one memcached, one
    ``key_prefix`` and one :class:`SharedClock`, with ``stats_path`` on."""

    def __init__(self, directory: Path, memcached: Any, processes: int = 2, rules: str = WHOLE_SITE,
                 **options: Any):
        self.control = Control(directory / "control")
        self.calls = CallLog(directory / "calls.jsonl")
        self.clock = SharedClock()
        settings = dict(memcached_servers=memcached.address, key_prefix=f"listening{next(_prefixes)}",
                        stats_path=STATS, purge_allowed="127.0.0.1", wait_timeout=HOLD, **options)
        calls, control, clock = str(self.calls.path), str(self.control.directory), self.clock

        def make_app() -> PageCacheMiddleware:
            app = pyramid_site({}, calls_file=calls, control_dir=control, session_secret=SECRET)
            return PageCacheMiddleware(app, rules, clock=clock, **settings)

        # more threads than clients, so that the stats requests are answered while the crowd waits
        self.servers = [AppServer(make_app, threads=CROWD + 8) for _ in range(processes)]
        for server in self.servers:
            server.start()
        self.inspector = PageCacheMiddleware(lambda environ, start_response: [], rules, clock=clock, **settings)

    def get(self, index: int, path: str) -> Reply:
        return send(self.servers[index].port, path)

    def counter(self, name: str) -> int:
        return sum(json.loads(send(server.port, STATS, headers=[("Accept", "application/json")]).body)[name]
                   for server in self.servers)

    def stored(self, path: str) -> Any:
        return stored(self.inspector, f"http://{HOST}{path}")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.inspector.cache.disconnect_all()


@pytest.fixture
def cluster(tmp_path, memcached):
    made: List[Cluster] = []

    def make(**options: Any) -> Cluster:
        made.append(Cluster(tmp_path / f"cluster-{len(made)}", memcached, **options))
        return made[-1]
    yield make
    for one in made:
        for flag in one.control.directory.glob("hold-*"):  # no render is left waiting
            flag.unlink()
        one.stop()


# == 1. a view's http_cache is how long its page is cached ========================

def test_a_view_with_http_cache_60_is_cached_for_60_seconds(make, clock, site):
    cache = make(site.app, WHOLE_SITE)
    start = clock.now
    first = get(cache, "/http-cache/60")
    assert (first.status, first.cache) == (200, "MISS")
    assert first.header("Cache-Control") == "max-age=60"
    assert first.header("Cache-Status") == "pagecache; fwd=uri-miss; stored"
    assert "render #1" in first.text
    page = page_at(cache, "/http-cache/60")
    assert type(page) is Page
    assert (page.stored, page.ttl, page.grace, page.stale) == (start, 60.0, 0.0, 0.0)

    for seconds in (0, 1, 30, 59, 59.999):
        clock.now = start + seconds
        hit = get(cache, "/http-cache/60")
        assert (hit.cache, hit.header("Age"), hit.body) == ("HIT", str(int(seconds)), first.body), seconds
        assert hit.header("Cache-Status") == f"pagecache; hit; ttl={60 - int(seconds)}"

    clock.now = start + 60
    expired = get(cache, "/http-cache/60")
    assert (expired.status, expired.cache) == (200, "MISS")
    assert "render #2" in expired.text and expired.header("Age") is None
    assert site.control.renders("http-cache-60") == 2
    renewed = page_at(cache, "/http-cache/60")
    assert (renewed.stored, renewed.ttl) == (start + 60, 60.0)


@pytest.mark.parametrize("rules", [WHOLE_SITE, "/ ttl=1h grace=0", "/ 1h 0"])
def test_a_view_with_http_cache_5_is_not_served_at_age_7(make, clock, site, rules):
    """The response's max-age=5 is the page's lifetime, whatever TTL the rule
    gives as a default: at 7 seconds it is rebuilt, not a HIT with Age 7."""
    cache = make(site.app, rules)
    start = clock.now
    assert get(cache, "/http-cache/5").cache == "MISS"
    assert page_at(cache, "/http-cache/5").ttl == 5.0
    clock.now = start + 4
    assert (get(cache, "/http-cache/5").cache, get(cache, "/http-cache/5").header("Age")) == ("HIT", "4")
    clock.now = start + 7
    late = get(cache, "/http-cache/5")
    assert (late.cache, late.header("Age")) == ("MISS", None), f"served {late.cache} with Age {late.header('Age')}"
    assert "render #2" in late.text
    assert site.control.renders("http-cache-5") == 2


def test_force_keeps_the_rules_lifetime_whatever_the_view_says(make, clock, site):
    """The contrast: a rule with ``force`` (0.1's behaviour) keeps the page
    for its own TTL, so at 7 seconds a max-age=5 page is a HIT with Age 7."""
    cache = make(site.app, "/ ttl=1h force")
    start = clock.now
    assert get(cache, "/http-cache/5").cache == "MISS"
    clock.now = start + 7
    hit = get(cache, "/http-cache/5")
    assert (hit.cache, hit.header("Age")) == ("HIT", "7")
    assert page_at(cache, "/http-cache/5").ttl == 3600.0


def test_a_response_30_seconds_old_is_fresh_for_30_more_seconds(make, clock, site):
    """``Cache-Control: max-age=60`` with ``Age: 30`` (it came through another
    cache): generated 30 s ago, fresh until 30 s from now."""
    cache = make(site.app, WHOLE_SITE)
    start = clock.now
    first = get(cache, "/policy/aged")
    assert (first.cache, first.header("Age")) == ("MISS", "30")
    page = page_at(cache, "/policy/aged")
    assert (page.stored, page.ttl) == (start - 30, 60.0)
    clock.now = start + 29
    hit = get(cache, "/policy/aged")
    assert (hit.cache, hit.header("Age"), hit.body) == ("HIT", "59", first.body)
    clock.now = start + 30
    assert get(cache, "/policy/aged").cache == "MISS"


# == 2. POST-redirect-GET across processes ===========================================

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(text: str) -> str:
    found = TOKEN.search(text)
    assert found, f"no CSRF token in the page: {text[:300]!r}"
    return found.group(1)


def log_in(browser: Browser, server: Served, name: str) -> None:
    form = browser.get(server, "/login")
    assert form.status == 200, form
    answer = browser.post(server, "/login", {"name": name, "csrf_token": csrf_token(form.text)})
    assert answer.status == 200 and f"Logged in as {name}" in answer.text, answer


@pytest.mark.parametrize("servers", [("waitress", "waitress"), ("waitress", "gunicorn")],
                         ids=["waitress+waitress", "waitress+gunicorn"])
def test_an_edit_posted_through_one_process_is_read_at_once_through_another(deploy, servers):
    deployment = deploy("pyramid", f"cached_urls = {WHOLE_SITE}", servers=servers)
    reader_side, writer_side = deployment.servers

    before = send(reader_side.port, "/notes/1")
    assert (before.status, before.cache) == (200, "MISS") and "Note 1: first draft" in before.text
    assert send(reader_side.port, "/notes/1").cache == "HIT"
    assert send(writer_side.port, "/notes/1").cache == "HIT"  # the other process shares the page

    writer = Browser()
    log_in(writer, writer_side, "editor")
    form = writer.get(writer_side, "/notes/1")
    assert (form.status, form.cache) == (200, "BYPASS") and "first draft" in form.text
    posted = writer.post(writer_side, "/notes/1", {"title": "Second draft", "csrf_token": csrf_token(form.text)},
                         follow=False)
    assert (posted.status, posted.cache) == (302, "BYPASS"), posted
    assert posted.header("Location") == f"http://{HOST}/notes/1"
    after = writer.get(writer_side, "/notes/1")  # the redirect, followed with the session cookie
    assert (after.status, after.cache) == (200, "BYPASS") and "Second draft" in after.text

    reader = send(reader_side.port, "/notes/1")  # an anonymous reader on the other process
    assert (reader.status, reader.cache) == (200, "MISS"), reader
    assert "Second draft" in reader.text and "csrf_token" not in reader.text
    again = send(reader_side.port, "/notes/1")
    assert (again.cache, again.body) == ("HIT", reader.body)
    assert send(writer_side.port, "/notes/1").body == reader.body


# == 3. validators: revalidated with a 304, not rendered again ========================

@pytest.mark.parametrize("kind", ["etag", "last-modified"])
def test_a_view_with_a_validator_is_revalidated_with_a_304_and_not_rendered_again(make, clock, site, kind):
    app = Recorder(site.app)
    cache = make(app, WHOLE_SITE)
    path, start = f"/validated/{kind}/doc", clock.now
    first = get(cache, path)
    assert (first.status, first.cache) == (200, "MISS") and "doc v1 render #1" in first.text
    page = page_at(cache, path)
    assert (page.stored, page.ttl, page.grace) == (start, 1.0, 0.0)
    assert page.keep > 0 and VALIDATORS in page.flags
    validator = (first.header("ETag"), None) if kind == "etag" else (None, first.header("Last-Modified"))
    assert validator == (('"doc-v1"', None) if kind == "etag" else (None, "Tue, 02 Jan 2024 00:00:00 GMT"))

    clock.now = start + 0.5
    assert get(cache, path).cache == "HIT"

    clock.now = start + 1  # past its TTL: pagecache asks the app whether it changed
    revalidated = get(cache, path)
    assert (revalidated.status, revalidated.cache, revalidated.body) == (200, "MISS", first.body)
    assert revalidated.header("Cache-Status") == "pagecache; fwd=stale; fwd-status=304; stored"
    assert app.seen == [(None, None, "200 OK"), (*validator, "304 Not Modified")]
    assert site.calls.count(path=path) == 2 and site.control.renders("doc") == 1
    renewed = page_at(cache, path)
    assert (renewed.stored, renewed.ttl, renewed.body) == (start + 1, 1.0, page.body)

    clock.now = start + 1.5
    hit = get(cache, path)
    assert (hit.cache, hit.body, hit.header("Age")) == ("HIT", first.body, "0")
    assert site.calls.count(path=path) == 2

    site.control.set_version("doc", 2)  # the document changes: the next revalidation gets a 200
    clock.now = start + 2
    changed = get(cache, path)
    assert (changed.status, changed.cache) == (200, "MISS") and "doc v2 render #2" in changed.text
    assert changed.header("Cache-Status") == "pagecache; fwd=stale; stored"
    assert app.seen[-1] == (*validator, "200 OK")
    assert get(cache, path).body == changed.body
    assert site.control.renders("doc") == 2


# == 4. unsafe methods invalidate ======================================================

ITEMS = ("/items/1", "/items/2", "/items/3")


def warmed(cache: PageCacheMiddleware, *hosts: str) -> Dict[Tuple[str, str], bytes]:
    """Every item cached (on each host); their bodies."""
    bodies = {}
    for host in hosts or (LOCAL_HOST,):
        for path in ITEMS:
            get(cache, path, host=host)
            hit = get(cache, path, host=host)
            assert hit.cache == "HIT", (host, path, hit)
            bodies[host, path] = hit.body
    return bodies


def outcomes(cache: PageCacheMiddleware, host: str = LOCAL_HOST) -> Dict[str, Optional[str]]:
    return {path: get(cache, path, host=host).cache for path in ITEMS}


def test_put_invalidates_its_url(make, site):
    cache = make(site.app, WHOLE_SITE)
    warmed(cache)
    put = get(cache, "/items/1", "PUT", body=b"replaced")
    assert (put.status, put.cache) == (200, "BYPASS")
    after = get(cache, "/items/1")
    assert (after.cache, after.text) == ("MISS", "item 1: replaced (render #2)\n")
    assert outcomes(cache) == {"/items/1": "HIT", "/items/2": "HIT", "/items/3": "HIT"}


def test_delete_invalidates_its_url(make, site):
    cache = make(site.app, WHOLE_SITE)
    warmed(cache)
    assert get(cache, "/items/2", "DELETE").status == 200
    assert outcomes(cache) == {"/items/1": "HIT", "/items/2": "MISS", "/items/3": "HIT"}
    assert "item 2: deleted" in get(cache, "/items/2").text


def test_post_invalidates_its_url_and_its_location(make, site):
    cache = make(site.app, WHOLE_SITE)
    warmed(cache)
    posted = get(cache, "/items/1", "POST", form={"text": "posted", "location": "/items/2"})
    assert (posted.status, posted.cache) == (303, "BYPASS")
    assert posted.header("Location") == f"http://{LOCAL_HOST}/items/2"
    assert outcomes(cache) == {"/items/1": "MISS", "/items/2": "MISS", "/items/3": "HIT"}


@pytest.mark.parametrize("content_location", ["/items/3", "3", f"http://{LOCAL_HOST}/items/3"])
def test_post_invalidates_its_content_location(make, site, content_location):
    cache = make(site.app, WHOLE_SITE)
    warmed(cache)
    posted = get(cache, "/items/1", "POST", form={"text": "x", "content_location": content_location})
    assert (posted.status, posted.header("Content-Location")) == (200, content_location)
    assert outcomes(cache) == {"/items/1": "MISS", "/items/2": "HIT", "/items/3": "MISS"}


def test_a_post_answered_500_invalidates_nothing(make, site):
    cache = make(site.app, WHOLE_SITE)
    bodies = warmed(cache)
    failed = get(cache, "/items/1", "POST", form={"status": "500", "location": "/items/2",
                                                   "content_location": "/items/3"})
    assert (failed.status, failed.cache) == (500, "BYPASS")
    assert outcomes(cache) == {"/items/1": "HIT", "/items/2": "HIT", "/items/3": "HIT"}
    assert get(cache, "/items/1").body == bodies[LOCAL_HOST, "/items/1"]


def test_a_location_on_another_host_is_ignored(make, site):
    cache = make(site.app, WHOLE_SITE)
    bodies = warmed(cache, LOCAL_HOST, "other.example")
    posted = get(cache, "/items/1", "POST", form={"text": "x", "location": "http://other.example/items/2",
                                                  "content_location": "https://example.com/items/3"})
    assert posted.status == 303
    assert outcomes(cache) == {"/items/1": "MISS", "/items/2": "HIT", "/items/3": "HIT"}
    assert outcomes(cache, "other.example") == {"/items/1": "HIT", "/items/2": "HIT", "/items/3": "HIT"}
    assert get(cache, "/items/2", host="other.example").body == bodies["other.example", "/items/2"]


def test_invalidation_reaches_another_process(deploy):
    deployment = deploy("pyramid", f"cached_urls = {WHOLE_SITE}", servers=("waitress", "waitress"))
    reader, writer = deployment.servers
    for path in ITEMS:
        assert reader.get(path).cache == "MISS"
        assert reader.get(path).cache == "HIT"

    put = writer.request("PUT", "/items/1", body=b"changed")
    assert (put.status, put.cache) == (200, "BYPASS")
    after = reader.get("/items/1")
    assert (after.cache, after.text) == ("MISS", "item 1: changed (render #2)\n")
    assert reader.get("/items/1").cache == "HIT"

    posted = writer.request("POST", "/items/1", headers=[("Content-Type", "application/x-www-form-urlencoded")],
                            body=b"text=again&location=/items/2")
    assert (posted.status, posted.cache) == (303, "BYPASS")
    assert {path: reader.get(path).cache for path in ITEMS} == {"/items/1": "MISS", "/items/2": "MISS",
                                                                "/items/3": "HIT"}
    posted = writer.request("POST", "/items/2", headers=[("Content-Type", "application/x-www-form-urlencoded")],
                            body=b"text=more&content_location=/items/3")
    assert (posted.status, posted.cache) == (200, "BYPASS")
    assert {path: reader.get(path).cache for path in ITEMS} == {"/items/1": "HIT", "/items/2": "MISS",
                                                                "/items/3": "MISS"}
    assert {path: reader.get(path).cache for path in ITEMS} == {"/items/1": "HIT", "/items/2": "HIT",
                                                                "/items/3": "HIT"}


# == 5. the dog-pile, with lifetimes from the responses ================================

def one_render_while_the_others_wait(control: Control, name: str, visit: Callable[[int], Reply],
                                     waits: Callable[[], int]) -> List[Reply]:
    """A crowd asks for the page ``name`` while its one render is held; the
    render is let go once the 31 others wait for it (``waits``: the cache's
    waits counter). All the replies."""
    control.hold(name)
    crowd = Crowd(CROWD, visit).start()
    try:
        wait_until(lambda: control.entered(name) == 1 and waits() == CROWD - 1, timeout=HOLD)
    finally:
        control.release(name)
    return crowd.finish()


def test_a_cold_page_requested_by_32_threads_is_computed_once(make, site):
    cache = make(site.app, WHOLE_SITE, wait_timeout=HOLD)
    replies = one_render_while_the_others_wait(site.control, "cold", lambda i: get(cache, "/policy/cold"),
                                               lambda: cache.stats.snapshot()["waits"])
    assert site.control.renders("cold") == 1 and site.calls.count(path="/policy/cold") == 1
    assert labels(replies) == {"MISS": 1, "HIT": CROWD - 1}
    assert {reply.body for reply in replies} == {replies[0].body} and b"cold v1 render #1" in replies[0].body
    page = page_at(cache, "/policy/cold")
    assert (page.ttl, page.grace) == (60.0, 0.0)


def test_a_cold_page_requested_by_32_clients_of_two_processes_is_computed_once(cluster):
    site = cluster()
    replies = one_render_while_the_others_wait(site.control, "cold", lambda i: site.get(i % 2, "/policy/cold"),
                                               lambda: site.counter("waits"))
    assert site.control.renders("cold") == 1 and site.calls.count(path="/policy/cold") == 1
    assert labels(replies) == {"MISS": 1, "HIT": CROWD - 1}
    assert {reply.body for reply in replies} == {replies[0].body}
    assert site.counter("wait_timeouts") == 0
    assert (site.stored("/policy/cold").stored, site.stored("/policy/cold").ttl) == (site.clock.now, 60.0)


def rebuilt_once_while_the_crowd_gets_stale(control: Control, visit: Callable[[int], Reply],
                                            old: bytes) -> List[Reply]:
    """The page ``swr`` is past its TTL: a crowd asks for it while its rebuild
    is held; the 31 others must have their answer, stale, before the rebuild
    is let go. All the replies."""
    control.set_version("swr", 2)
    control.hold("swr")
    crowd = Crowd(CROWD, visit).start()
    try:
        wait_until(lambda: crowd.arrived == CROWD - 1 and control.entered("swr") == 1, timeout=HOLD)
        early = crowd.so_far()
    finally:
        control.release("swr")
    assert {(reply.status, reply.cache, reply.body) for reply in early} == {(200, "STALE", old)}
    assert {reply.header("Cache-Status") for reply in early} == {"pagecache; hit; ttl=-1"}
    replies = crowd.finish()
    assert labels(replies) == {"STALE": CROWD - 1, "MISS": 1}
    assert control.renders("swr") == 2
    return replies


def test_an_expired_page_is_rebuilt_by_one_request_while_31_get_it_stale(make, clock, site):
    cache = make(site.app, WHOLE_SITE)
    first = get(cache, "/policy/swr")
    assert first.cache == "MISS" and b"swr v1 render #1" in first.body
    page = page_at(cache, "/policy/swr")
    assert (page.ttl, page.grace, page.stale, MUST_REVALIDATE in page.flags) == (1.0, 60.0, 0.0, False)
    clock.advance(2)
    replies = rebuilt_once_while_the_crowd_gets_stale(site.control, lambda i: get(cache, "/policy/swr"), first.body)
    fresh = [reply for reply in replies if reply.cache == "MISS"][0]
    assert b"swr v2 render #2" in fresh.body
    assert page_at(cache, "/policy/swr").body == fresh.body
    assert (get(cache, "/policy/swr").cache, get(cache, "/policy/swr").body) == ("HIT", fresh.body)


def test_an_expired_page_is_rebuilt_once_across_two_processes_while_the_others_get_it_stale(cluster):
    site = cluster()
    first = site.get(0, "/policy/swr")
    assert first.cache == "MISS"
    assert site.get(1, "/policy/swr").cache == "HIT"
    site.clock.advance(2)
    replies = rebuilt_once_while_the_crowd_gets_stale(site.control, lambda i: site.get(i % 2, "/policy/swr"),
                                                      first.body)
    fresh = [reply for reply in replies if reply.cache == "MISS"][0]
    assert b"swr v2 render #2" in fresh.body
    assert {site.get(i, "/policy/swr").cache for i in (0, 1)} == {"HIT"}
    assert site.calls.count(path="/policy/swr") == 2


@pytest.mark.parametrize("failure", ["raise", "503"])
def test_stale_beats_broken_with_stale_if_error_from_the_response(make, clock, site, failure):
    cache = make(site.app, WHOLE_SITE, wait_timeout=HOLD)
    first = get(cache, "/policy/sie")
    assert first.cache == "MISS"
    good = page_at(cache, "/policy/sie")
    assert (good.ttl, good.grace, good.stale) == (1.0, 0.0, 600.0)
    clock.advance(2)
    site.control.fail("sie", failure)

    # a crowd: one request tries the rebuild (held, then failing), the others wait for it
    calls = site.calls.mark()
    replies = one_render_while_the_others_wait(site.control, "sie", lambda i: get(cache, "/policy/sie"),
                                               lambda: cache.stats.snapshot()["waits"])
    assert {(reply.status, reply.cache, reply.body) for reply in replies} == {(200, "STALE", first.body)}
    assert site.calls.count(path="/policy/sie", since=calls) == 1
    assert page_at(cache, "/policy/sie") == good  # nothing broken was stored

    assert site.control.renders("sie") == 1


def test_after_a_failed_rebuild_the_next_request_gets_the_stale_copy_at_once(make, clock, site):
    """DESIGN.md, promise 3: when a rebuild fails, clients get the stale copy
    and "the application is not asked again on every request". The page is
    past its TTL, with no grace, inside its stale-if-error window: the next
    request must neither ask the failing application again at once nor wait
    for wait_timeout (counted as ``wait_timeouts``) before being served."""
    cache = make(site.app, WHOLE_SITE)
    first = get(cache, "/policy/sie")
    clock.advance(2)
    site.control.fail("sie", "503")
    assert (get(cache, "/policy/sie").cache, site.calls.count(path="/policy/sie")) == ("STALE", 2)

    following = get(cache, "/policy/sie")
    assert (following.status, following.cache, following.body) == (200, "STALE", first.body)
    snapshot = cache.stats.snapshot()
    assert (site.calls.count(path="/policy/sie"), snapshot["wait_timeouts"]) == (2, 0), (
        f"the request after the failed rebuild asked the application again "
        f"({site.calls.count(path='/policy/sie') - 2} calls) after {snapshot['wait_timeouts']} wait_timeouts")


def test_must_revalidate_gives_the_client_the_error_never_the_stale_copy(make, clock, site):
    cache = make(site.app, WHOLE_SITE, stale_if_error=600)
    first = get(cache, "/policy/must-revalidate")
    assert first.cache == "MISS"
    page = page_at(cache, "/policy/must-revalidate")
    # its stale-while-revalidate, stale-if-error and the stale_if_error option are all overruled
    assert (page.ttl, page.grace, page.stale, MUST_REVALIDATE in page.flags) == (1.0, 0.0, 0.0, True)
    clock.advance(0.5)
    assert get(cache, "/policy/must-revalidate").cache == "HIT"

    clock.advance(1.5)
    site.control.fail("must-revalidate", "502")
    for _ in range(2):
        failed = get(cache, "/policy/must-revalidate")
        assert (failed.status, failed.cache) == (502, "MISS"), failed
        assert failed.body == b"must-revalidate: backend error 502\n"
    assert type(page_at(cache, "/policy/must-revalidate")) is not Page

    site.control.recover("must-revalidate")
    clock.advance(2)
    recovered = get(cache, "/policy/must-revalidate")
    assert (recovered.status, recovered.cache) == (200, "MISS")
    assert b"must-revalidate v1 render #2" in recovered.body


# == 6. Cache-Status ===================================================================

def test_cache_status_says_what_the_cache_did(make, clock, site):
    cache = make(site.app, WHOLE_SITE, server_timing=True)
    start = clock.now

    stored_miss = get(cache, "/http-cache/60")
    assert (stored_miss.cache, stored_miss.header("Cache-Status")) == ("MISS", "pagecache; fwd=uri-miss; stored")
    assert stored_miss.header("Server-Timing") == 'cache;desc="MISS"'

    clock.now = start + 3
    hit = get(cache, "/http-cache/60")
    assert (hit.cache, hit.header("Cache-Status")) == ("HIT", "pagecache; hit; ttl=57")
    assert hit.header("Server-Timing") == 'cache;desc="HIT", age;desc="3", ttl;desc="57"'

    for _ in range(2):  # the public index says nothing about its lifetime: never stored
        unstored = get(cache, "/public/")
        assert (unstored.status, unstored.cache, unstored.header("Cache-Status")) == (
            200, "MISS", "pagecache; fwd=uri-miss")
    assert type(page_at(cache, "/public/")) is Pass

    bypass = get(cache, "/http-cache/60", headers=[("Cookie", "theme=dark")])
    assert (bypass.cache, bypass.header("Cache-Status")) == ("BYPASS", "pagecache; fwd=bypass")
    assert b"render #2" in bypass.body

    assert get(cache, "/policy/swr").header("Cache-Status") == "pagecache; fwd=uri-miss; stored"
    clock.advance(2)
    site.control.hold("swr")
    rebuild = Crowd(1, lambda i: get(cache, "/policy/swr")).start()
    try:
        wait_until(lambda: site.control.entered("swr") == 1, timeout=HOLD)
        stale = get(cache, "/policy/swr")
    finally:
        site.control.release("swr")
    assert (stale.cache, stale.header("Cache-Status"), stale.header("Age")) == ("STALE", "pagecache; hit; ttl=-1", "2")
    assert stale.header("Server-Timing") == 'cache;desc="STALE", age;desc="2", ttl;desc="-1"'
    [rebuilt] = rebuild.finish()
    assert (rebuilt.cache, rebuilt.header("Cache-Status")) == ("MISS", "pagecache; fwd=stale; stored")

    assert get(cache, "/validated/etag/status").header("Cache-Status") == "pagecache; fwd=uri-miss; stored"
    clock.advance(1)
    revalidated = get(cache, "/validated/etag/status")
    assert (revalidated.cache, revalidated.header("Cache-Status")) == (
        "MISS", "pagecache; fwd=stale; fwd-status=304; stored")
