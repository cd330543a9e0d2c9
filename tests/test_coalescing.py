"""No stampede inside one process: real threads against both backends.

The concurrent cases send 64 requests (threads released together by a
barrier) through one middleware and control the application with events: the
request computing a page is held inside the application until the test has
seen, through ``middleware.stats`` or the responses already returned, that
every other client is waiting or has been served. Time moves with the fake
clock, never by sleeping. The same cases across processes and memcached
servers are in ``test_coalescing_processes.py``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional
from wsgiref.util import setup_testing_defaults

import pytest

from pagecache import PageCacheMiddleware
from pagecache.entry import Pass

from .conftest import stored, wait_until
from .crowds import Crowd
from .servers import free_port

CLIENTS = 64
HOLD = 30.0  # longest an app call waits for the test to let it go (a test bug, never reached when passing)
TTL, GRACE = 30, 120
RULES = f"/ {TTL} {GRACE}"


class Reply(NamedTuple):
    status: str
    cache: Optional[str]
    body: bytes


def call(middleware: Callable, path: str, host: str = "example.com") -> Reply:
    """One GET through the middleware, as a WSGI server would make it."""
    environ: Dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD="GET", PATH_INFO=path, QUERY_STRING="", HTTP_HOST=host)
    started: Dict[str, Any] = {}

    def start_response(status: str, headers: List, exc_info: Any = None) -> Callable:
        started["status"], started["headers"] = status, headers
        return lambda data: None

    iterable = middleware(environ, start_response)
    try:
        body = b"".join(iterable)
    finally:
        if hasattr(iterable, "close"):
            iterable.close()
    cache = next((v for k, v in started["headers"] if k.lower() == "x-cache"), None)
    return Reply(started["status"], cache, body)


def url(path: str) -> str:
    return "http://example.com" + path


class App:
    """A WSGI app the test steers: counts its calls, answers ``version`` (or
    fails as ``mode`` says), and holds the calls the test chose with
    :meth:`hold` until it sets the event that gave. ``barrier``, when set, must
    be passed by the calls after the first: they must all be inside the app at
    once."""

    def __init__(self, headers: Optional[List] = None, status: str = "200 OK"):
        self.calls = 0
        self.version = b"v1"
        self.mode = "ok"
        self.status = status
        self.headers = headers or []
        self.barrier: Optional[threading.Barrier] = None
        self.gates: Dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def hold(self, *numbers: int) -> threading.Event:
        """Hold the calls with these numbers (1 is the first call) until the event is set."""
        release = threading.Event()
        for number in numbers:
            self.gates[number] = release
        return release

    def release_all(self) -> None:
        for release in self.gates.values():
            release.set()

    def __call__(self, environ: Dict, start_response: Callable) -> List[bytes]:
        with self._lock:
            self.calls += 1
            number = self.calls
        gate = self.gates.get(number)
        if gate is not None and not gate.wait(HOLD):
            raise AssertionError("the test never released the application")
        if self.barrier is not None and number > 1:
            self.barrier.wait()  # BrokenBarrierError if the calls were serialised
        if self.mode == "raise":
            raise RuntimeError("the database is down")
        if self.mode == "503":
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"down"]
        body = b"%s #%d" % (self.version, number)
        start_response(self.status, [("Content-Type", "text/plain")] + self.headers)
        return [body]


@pytest.fixture
def app():
    app = App()
    yield app
    app.release_all()  # never leave a thread held, whatever the test did


def labels(replies: List[Reply]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for reply in replies:
        counts[reply.cache] = counts.get(reply.cache, 0) + 1
    return counts


def crowd_behind_the_first(middleware: Callable, app: App, path: str) -> List[Reply]:
    """The replies to ``CLIENTS`` concurrent requests for ``path``; the first is
    held inside the app until all the others wait for it."""
    release = app.hold(1)
    crowd = Crowd(CLIENTS, lambda i: call(middleware, path)).start()
    wait_until(lambda: middleware.stats["waits"] == CLIENTS - 1 and app.calls == 1)
    release.set()
    return crowd.finish()


def stored_lock(middleware: PageCacheMiddleware, path: str) -> Any:
    """The raw value of the page's update lock (None when nobody holds it)."""
    return middleware.cache.get(middleware.keys.lock(middleware.keys.digest_of_url(url(path))))


# -- cold pages --------------------------------------------------------------

def test_cold_page_is_computed_once_for_64_clients(make, app):
    middleware = make(app, RULES)
    replies = crowd_behind_the_first(middleware, app, "/cold")

    assert app.calls == 1
    assert set(replies) == {Reply("200 OK", "HIT", b"v1 #1"), Reply("200 OK", "MISS", b"v1 #1")}
    assert labels(replies) == {"MISS": 1, "HIT": CLIENTS - 1}
    assert stored(middleware, url("/cold")).body == b"v1 #1"
    assert stored_lock(middleware, "/cold") is None
    assert middleware.stats["wait_timeouts"] == 0


def test_waiter_reaching_wait_timeout_computes_the_page_without_storing_it(make, app):
    middleware = make(app, RULES, wait_timeout=0.2)
    release = app.hold(1)
    leader = Crowd(1, lambda i: call(middleware, "/slow")).start()
    wait_until(lambda: app.calls == 1)

    # The first request is still computing: this one gives up waiting after
    # wait_timeout, gets a page of its own, and leaves the store to the first.
    assert call(middleware, "/slow") == Reply("200 OK", "MISS", b"v1 #2")
    assert middleware.stats["wait_timeouts"] == 1
    assert stored(middleware, url("/slow")) is None

    release.set()
    assert leader.finish() == [Reply("200 OK", "MISS", b"v1 #1")]
    assert stored(middleware, url("/slow")).body == b"v1 #1"
    assert call(middleware, "/slow") == Reply("200 OK", "HIT", b"v1 #1")


# -- pages in their grace period ------------------------------------------

def test_page_in_grace_is_rebuilt_once_while_63_clients_get_it_stale(make, app, clock):
    middleware = make(app, RULES)
    assert call(middleware, "/news") == Reply("200 OK", "MISS", b"v1 #1")
    clock.advance(TTL + 1)
    app.version, release = b"v2", app.hold(2)

    crowd = Crowd(CLIENTS, lambda i: call(middleware, "/news")).start()
    # The rebuild is held inside the app until the 63 others have their answer.
    wait_until(lambda: crowd.arrived == CLIENTS - 1)
    assert app.calls == 2
    release.set()
    replies = crowd.finish()

    assert app.calls == 2
    assert labels(replies) == {"STALE": CLIENTS - 1, "MISS": 1}
    assert set(replies) == {Reply("200 OK", "STALE", b"v1 #1"), Reply("200 OK", "MISS", b"v2 #2")}
    assert stored(middleware, url("/news")).body == b"v2 #2"
    assert call(middleware, "/news") == Reply("200 OK", "HIT", b"v2 #2")


def test_background_refresh_serves_all_64_clients_stale_before_the_rebuild_ends(make, app, clock):
    middleware = make(app, RULES, background_refresh=True)
    assert call(middleware, "/news") == Reply("200 OK", "MISS", b"v1 #1")
    clock.advance(TTL + 1)
    app.version, release = b"v2", app.hold(2)

    crowd = Crowd(CLIENTS, lambda i: call(middleware, "/news")).start()
    # All 64 answers arrive while the rebuild is held inside the app.
    wait_until(lambda: crowd.arrived == CLIENTS)
    replies = crowd.finish()
    assert set(replies) == {Reply("200 OK", "STALE", b"v1 #1")}
    wait_until(lambda: app.calls == 2)
    assert stored(middleware, url("/news")).body == b"v1 #1"

    release.set()
    middleware.refresher.join()
    assert app.calls == 2
    assert stored(middleware, url("/news")).body == b"v2 #2"
    assert stored_lock(middleware, "/news") is None
    assert call(middleware, "/news") == Reply("200 OK", "HIT", b"v2 #2")
    assert app.calls == 2


def test_background_rebuild_gets_the_request_environ_without_a_body(make, app, clock):
    seen: List[Dict] = []

    def recording(environ: Dict, start_response: Callable) -> List[bytes]:
        seen.append(dict(environ, body=environ["wsgi.input"].read()))
        return app(environ, start_response)

    middleware = make(recording, RULES, background_refresh=True)
    call(middleware, "/news")
    clock.advance(TTL + 1)
    assert call(middleware, "/news").cache == "STALE"
    middleware.refresher.join()
    rebuild = seen[-1]
    assert rebuild["pagecache.background"] is True
    assert (rebuild["PATH_INFO"], rebuild["HTTP_HOST"], rebuild["body"]) == ("/news", "example.com", b"")


def test_only_the_holder_releases_the_lock(make, app, clock):
    # A rebuild outlives its lock: another request takes the lock and rebuilds
    # too; when the first one ends it must not release the second's lock.
    # (The lock's expiry is played by deleting it: the killed-process tests in
    # test_coalescing_processes.py show the real expiry after lock_timeout.)
    middleware = make(app, RULES)
    call(middleware, "/news")
    clock.advance(TTL + 1)
    app.version = b"v2"
    release_first, release_second = app.hold(2), app.hold(3)
    first = Crowd(1, lambda i: call(middleware, "/news")).start()
    wait_until(lambda: app.calls == 2)
    first_token = stored_lock(middleware, "/news")
    assert first_token

    lock_key = middleware.keys.lock(middleware.keys.digest_of_url(url("/news")))
    assert middleware.cache.delete(lock_key)
    second = Crowd(1, lambda i: call(middleware, "/news")).start()
    wait_until(lambda: app.calls == 3)
    second_token = stored_lock(middleware, "/news")
    assert second_token and second_token != first_token

    release_first.set()
    assert first.finish() == [Reply("200 OK", "MISS", b"v2 #2")]
    assert stored_lock(middleware, "/news") == second_token
    release_second.set()
    assert second.finish() == [Reply("200 OK", "MISS", b"v2 #3")]
    assert stored_lock(middleware, "/news") is None
    assert stored(middleware, url("/news")).body == b"v2 #3"


@pytest.mark.parametrize("library", ["python-memcached", "pymemcache"])
def test_with_memcached_down_a_process_still_computes_a_cold_page_once(app, clock, library):
    # Nothing listens on the port: no lock, no store. The threads of one
    # process still share one computation; every request after that computes
    # the page again (nothing could be stored), and none of them fails.
    middleware = PageCacheMiddleware(app, RULES, clock=clock, memcached_client=library,
                                     memcached_servers=f"127.0.0.1:{free_port()}")
    replies = crowd_behind_the_first(middleware, app, "/cold")
    assert app.calls == 1
    assert {(r.status, r.body) for r in replies} == {("200 OK", b"v1 #1")}
    assert call(middleware, "/cold") == Reply("200 OK", "MISS", b"v1 #2")
    assert middleware.stats["memcached_errors"] > 0


# -- failing rebuilds ----------------------------------------------------

@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
@pytest.mark.parametrize("failure", ["raise", "503"])
def test_failing_rebuild_in_grace_serves_stale_and_stores_nothing(make, app, clock, failure, background):
    # error_backoff 0: every request past the failure tries again (test_backoff.py: with a back-off)
    middleware = make(app, RULES, background_refresh=background, error_backoff=0)
    call(middleware, "/shop")
    good = stored(middleware, url("/shop"))
    clock.advance(TTL + 1)
    app.mode, release = failure, app.hold(2)

    crowd = Crowd(CLIENTS, lambda i: call(middleware, "/shop")).start()
    wait_until(lambda: crowd.arrived == (CLIENTS if background else CLIENTS - 1))
    release.set()
    replies = crowd.finish()
    if background:
        middleware.refresher.join()
    assert app.calls == 2
    assert set(replies) == {Reply("200 OK", "STALE", b"v1 #1")}

    # It keeps failing: every client keeps getting the stale page.
    for _ in range(3):
        assert call(middleware, "/shop") == Reply("200 OK", "STALE", b"v1 #1")
        if background:
            middleware.refresher.join()
    assert app.calls == 5
    assert middleware.stats["app_errors"] == 4
    assert stored(middleware, url("/shop")) == good
    assert stored_lock(middleware, "/shop") is None

    # Recovery: the next rebuild stores the new page.
    app.mode, app.version = "ok", b"v2"
    if background:
        assert call(middleware, "/shop") == Reply("200 OK", "STALE", b"v1 #1")
        middleware.refresher.join()
    else:
        assert call(middleware, "/shop") == Reply("200 OK", "MISS", b"v2 #6")
    assert stored(middleware, url("/shop")).body == b"v2 #6"
    assert call(middleware, "/shop") == Reply("200 OK", "HIT", b"v2 #6")
    assert app.calls == 6


@pytest.mark.parametrize("failure", ["raise", "503"])
def test_stale_if_error_covers_failures_past_grace(make, app, clock, failure):
    middleware = make(app, RULES, stale_if_error=300, error_backoff=0)
    call(middleware, "/shop")
    good = stored(middleware, url("/shop"))
    clock.advance(TTL + GRACE + 10)  # past grace: only an error may be covered
    app.mode, release = failure, app.hold(2)

    crowd = Crowd(CLIENTS, lambda i: call(middleware, "/shop")).start()
    # Past grace nobody is served stale at once: the others wait for the rebuild.
    wait_until(lambda: middleware.stats["waits"] == CLIENTS - 1 and app.calls == 2)
    release.set()
    replies = crowd.finish()
    assert app.calls == 2
    assert set(replies) == {Reply("200 OK", "STALE", b"v1 #1")}
    assert stored(middleware, url("/shop")) == good

    app.mode, app.version = "ok", b"v2"
    assert call(middleware, "/shop") == Reply("200 OK", "MISS", b"v2 #3")
    assert stored(middleware, url("/shop")).body == b"v2 #3"
    assert call(middleware, "/shop") == Reply("200 OK", "HIT", b"v2 #3")


def test_past_stale_if_error_a_failure_reaches_the_client_and_is_not_stored(make, app, clock):
    middleware = make(app, RULES, stale_if_error=300)
    call(middleware, "/shop")
    clock.advance(TTL + GRACE + 300 + 1)
    app.mode = "503"
    reply = call(middleware, "/shop")
    assert (reply.status, reply.cache) == ("503 Service Unavailable", "MISS")
    # The 503 is not stored; the URL is only remembered as uncacheable for a while.
    assert type(stored(middleware, url("/shop"))) is Pass


def test_without_stale_if_error_a_failure_past_grace_reaches_the_client(make, app, clock):
    middleware = make(app, RULES)
    call(middleware, "/shop")
    clock.advance(TTL + GRACE + 1)
    app.mode = "503"
    assert call(middleware, "/shop").status == "503 Service Unavailable"
    assert type(stored(middleware, url("/shop"))) is Pass


# -- uncacheable URLs ----------------------------------------------------

UNCACHEABLE = [
    pytest.param([("Cache-Control", "private")], "200 OK", id="private"),
    pytest.param([("Location", "/elsewhere")], "302 Found", id="status-302"),
]


@pytest.mark.parametrize("headers,status", UNCACHEABLE)
def test_uncacheable_url_is_not_serialised_behind_a_lock(make, app, headers, status):
    app.headers, app.status = headers, status
    middleware = make(app, RULES)
    first = call(middleware, "/me")
    assert (first.status, first.cache) == (status, "MISS")
    assert type(stored(middleware, url("/me"))) is Pass
    assert stored_lock(middleware, "/me") is None

    # All 64 must be inside the app at once to pass the barrier.
    app.barrier = threading.Barrier(CLIENTS, timeout=HOLD / 3)
    replies = Crowd(CLIENTS, lambda i: call(middleware, "/me")).start().finish()
    assert app.calls == CLIENTS + 1
    assert {(r.status, r.cache) for r in replies} == {(status, "MISS")}
    assert len({r.body for r in replies}) == CLIENTS  # each its own response
    assert middleware.stats["waits"] == 0


@pytest.mark.parametrize("headers,status", UNCACHEABLE)
def test_first_burst_on_an_uncacheable_url_is_released_at_once(make, app, headers, status):
    # Before anybody knows the URL is uncacheable, the others wait for the
    # first response; once it says "not storable" they all go to the app at
    # once, and none of them is given the first client's response.
    app.headers, app.status = headers, status
    middleware = make(app, RULES)
    app.barrier = threading.Barrier(CLIENTS - 1, timeout=HOLD / 3)
    replies = crowd_behind_the_first(middleware, app, "/me")
    assert app.calls == CLIENTS
    assert len({r.body for r in replies}) == CLIENTS
    assert type(stored(middleware, url("/me"))) is Pass
    assert stored_lock(middleware, "/me") is None


@pytest.mark.parametrize("failure", ["raise", "503"])
def test_waiter_reaching_wait_timeout_past_grace_falls_back_to_stale(make, app, clock, failure):
    # The page is past grace, in its stale_if_error window; the rebuild is slow
    # and so is the waiter's own attempt after wait_timeout: both fail, and
    # both clients get the stale copy rather than the error.
    middleware = make(app, RULES, stale_if_error=300, wait_timeout=0.2)
    call(middleware, "/shop")
    good = stored(middleware, url("/shop"))
    clock.advance(TTL + GRACE + 10)
    app.mode, release = failure, app.hold(2)
    leader = Crowd(1, lambda i: call(middleware, "/shop")).start()
    wait_until(lambda: app.calls == 2)

    assert call(middleware, "/shop") == Reply("200 OK", "STALE", b"v1 #1")
    assert (app.calls, middleware.stats["wait_timeouts"]) == (3, 1)
    release.set()
    assert leader.finish() == [Reply("200 OK", "STALE", b"v1 #1")]
    assert stored(middleware, url("/shop")) == good
