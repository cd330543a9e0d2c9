"""No stampede across processes: three waitress server processes sharing two
memcached servers, 64 HTTP clients spread over them.

The application runs in the server processes; it counts its calls in a
``multiprocessing.Value`` and is held on a ``multiprocessing.Event`` until the
test has seen (through each process's ``stats_path`` counters, or the answers
its clients already got) that every other client is waiting or served. Pages
expire in real time here, with TTLs of one second: the test waits for that
with ``wait_until``, and asserts on what happened, never on how long it took.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import pytest

from pagecache import PageCacheMiddleware
from pagecache.entry import Page, Pass

from .conftest import stored, wait_until
from .crowds import Crowd
from .servers import AppServer

CLIENTS = 64
PROCESSES = 3
THREADS = 24            # per process: more than its share of the 64 clients, so none queues
HOLD = 30.0             # longest an app call waits for the test (a test bug, never reached when passing)
HOST = "example.com"    # one Host header for all processes, so they share the pages
STATS = "/_pagecache"
TTL, GRACE = 1, 60
ctx = AppServer.context


class Reply(NamedTuple):
    status: int
    cache: Optional[str]
    body: bytes


def fetch(server: AppServer, path: str) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HOLD * 2)
    try:
        connection.request("GET", path, headers={"Host": HOST})
        response = connection.getresponse()
        return Reply(response.status, response.getheader("X-Cache"), response.read())
    finally:
        connection.close()


def counters(server: AppServer) -> Dict[str, float]:
    return json.loads(fetch(server, STATS).body)


def total(servers: List[AppServer], name: str) -> int:
    return sum(counters(server)[name] for server in servers)


def crowd_of(n: int, servers: List[AppServer], path: str) -> Crowd:
    """``n`` clients released together, client ``i`` asking ``servers[i % len(servers)]``."""
    return Crowd(n, lambda i: fetch(servers[i % len(servers)], path))


class Gate:
    """A one-way gate between processes: closed until :meth:`open`, then open
    for every waiter. Made of a semaphore, unlike ``multiprocessing.Event``,
    whose ``set`` hangs for good once a process waiting on it was SIGKILLed."""

    def __init__(self) -> None:
        self._semaphore = ctx.Semaphore(0)
        self._opened = ctx.Value("b", 0)

    def open(self) -> None:
        with self._opened.get_lock():
            if self._opened.value:
                return
            self._opened.value = 1
        self._semaphore.release()

    def wait(self, timeout: float) -> bool:
        """Whether the gate opened within ``timeout`` seconds."""
        if not self._semaphore.acquire(timeout=timeout):
            return False
        self._semaphore.release()  # let the next waiter through too
        return True


class App:
    """The application of every server process, steered from the test through
    shared objects: ``calls`` counts calls of all processes; calls whose number
    is in ``held`` open ``entered`` and wait for ``release``; ``mode`` is 0 (answer
    ``v<version> #<call>``), 1 (raise) or 2 (answer 503); with ``private`` the
    answer may not be stored; with ``barrier``, calls after the first must all
    be inside the app at once."""

    def __init__(self, held: Any = (), private: bool = False, barrier: Any = None):
        self.calls = ctx.Value("i", 0)
        self.version = ctx.Value("i", 1)
        self.mode = ctx.Value("i", 0)
        self.entered = Gate()
        self.release = Gate()
        self.held = frozenset(held)
        self.private = private
        self.barrier = barrier

    def __call__(self, environ: Dict, start_response: Callable) -> List[bytes]:
        with self.calls.get_lock():
            self.calls.value += 1
            number = self.calls.value
        if number in self.held:
            self.entered.open()
            if not self.release.wait(HOLD):
                raise AssertionError("the test never released the application")
        if self.barrier is not None and number > 1:
            self.barrier.wait()  # BrokenBarrierError if the calls were serialised
        if self.mode.value == 1:
            raise RuntimeError("the database is down")
        if self.mode.value == 2:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"down"]
        headers = [("Content-Type", "text/plain")]
        if self.private:
            headers.append(("Cache-Control", "private"))
        start_response("200 OK", headers)
        return [b"v%d #%d" % (self.version.value, number)]


class Cluster:
    """Server processes running ``App`` behind pagecache, sharing memcached."""

    def __init__(self, memcached: List[Any]):
        self.addresses = " ".join(server.address for server in memcached)
        self.servers: List[AppServer] = []
        self.apps: List[App] = []
        self.inspector: Optional[PageCacheMiddleware] = None

    def start(self, app: App, rules: str = f"/ {TTL} {GRACE}", processes: int = PROCESSES,
              **options: Any) -> List[AppServer]:
        self.apps.append(app)
        settings = dict(memcached_servers=self.addresses, key_prefix="coalescing", stats_path=STATS,
                        purge_allowed="127.0.0.1", **options)

        def make_app() -> PageCacheMiddleware:
            return PageCacheMiddleware(app, rules, **settings)

        servers = [AppServer(make_app, threads=THREADS) for _ in range(processes)]
        self.servers += servers
        for server in servers:
            server.start()
        # A middleware of the test's own, to look into memcached with the same keys.
        self.inspector = PageCacheMiddleware(app, rules, **settings)
        return servers

    def stored(self, path: str) -> Any:
        return stored(self.inspector, "http://" + HOST + path)

    def lock(self, path: str) -> Any:
        keys = self.inspector.keys
        return self.inspector.cache.get(keys.lock(keys.digest_of_url("http://" + HOST + path)))

    def stop(self) -> None:
        for app in self.apps:
            app.release.open()
        for server in self.servers:
            server.stop()
        if self.inspector is not None:
            self.inspector.cache.disconnect_all()


@pytest.fixture
def cluster(memcached_pair):
    cluster = Cluster(memcached_pair)
    yield cluster
    cluster.stop()


def labels(replies: List[Reply]) -> Dict[Optional[str], int]:
    counts: Dict[Optional[str], int] = {}
    for reply in replies:
        counts[reply.cache] = counts.get(reply.cache, 0) + 1
    return counts


def into_grace(cluster: Cluster, path: str) -> Page:
    """Wait (real time) until the page stored for ``path`` is past its TTL;
    the stored page."""
    page = cluster.stored(path)
    assert type(page) is Page
    wait_until(lambda: time.time() > page.stored + page.ttl + 0.01)
    return page


# -- cold pages ----------------------------------------------------------------

def test_cold_page_is_computed_once_across_processes_and_memcached_servers(cluster):
    app = App(held={1})
    servers = cluster.start(app)
    crowd = crowd_of(CLIENTS, servers, "/cold").start()
    # One request computes; the 63 others wait for it in all three processes,
    # either on their process's flight or polling memcached.
    wait_until(lambda: app.calls.value == 1 and total(servers, "waits") == CLIENTS - 1)
    app.release.open()
    replies = crowd.finish()

    assert app.calls.value == 1
    assert set(replies) == {Reply(200, "MISS", b"v1 #1"), Reply(200, "HIT", b"v1 #1")}
    assert labels(replies) == {"MISS": 1, "HIT": CLIENTS - 1}
    assert total(servers, "wait_timeouts") == 0
    assert all(counters(server)["waits"] >= CLIENTS // PROCESSES - 1 for server in servers)
    assert cluster.stored("/cold").body == b"v1 #1"
    assert cluster.lock("/cold") is None


# -- pages in their grace period ----------------------------------------------

def test_page_in_grace_is_rebuilt_once_across_processes(cluster):
    app = App(held={2})
    servers = cluster.start(app)
    assert fetch(servers[0], "/news") == Reply(200, "MISS", b"v1 #1")
    into_grace(cluster, "/news")
    app.version.value = 2

    crowd = crowd_of(CLIENTS, servers, "/news").start()
    # The rebuild is held inside the app until 63 clients have their answer.
    wait_until(lambda: crowd.arrived == CLIENTS - 1)
    assert set(crowd.so_far()) == {Reply(200, "STALE", b"v1 #1")}
    app.release.open()
    replies = crowd.finish()

    assert app.calls.value == 2
    assert labels(replies) == {"STALE": CLIENTS - 1, "MISS": 1}
    assert Reply(200, "MISS", b"v2 #2") in replies
    assert cluster.stored("/news").body == b"v2 #2"


def test_background_refresh_across_processes_makes_no_client_wait(cluster):
    app = App(held={2})
    servers = cluster.start(app, background_refresh=True)
    assert fetch(servers[0], "/news") == Reply(200, "MISS", b"v1 #1")
    into_grace(cluster, "/news")
    app.version.value = 2

    crowd = crowd_of(CLIENTS, servers, "/news").start()
    # All 64 answers arrive while the one rebuild is held inside the app.
    wait_until(lambda: crowd.arrived == CLIENTS)
    replies = crowd.finish()
    assert set(replies) == {Reply(200, "STALE", b"v1 #1")}
    assert app.entered.wait(HOLD)
    assert cluster.stored("/news").body == b"v1 #1"

    app.release.open()
    wait_until(lambda: cluster.stored("/news").body == b"v2 #2")
    wait_until(lambda: cluster.lock("/news") is None)
    assert app.calls.value == 2
    assert total(servers, "refreshes") == 1


# -- failing rebuilds --------------------------------------------------------

@pytest.mark.parametrize("failure", [1, 2], ids=["raise", "503"])
def test_failing_rebuild_across_processes_serves_stale_and_stores_nothing(cluster, failure):
    app = App(held={2})
    servers = cluster.start(app, error_backoff=0)  # each process tries again (test_backoff.py: with one)
    assert fetch(servers[0], "/shop") == Reply(200, "MISS", b"v1 #1")
    good = into_grace(cluster, "/shop")
    app.mode.value = failure

    crowd = crowd_of(CLIENTS, servers, "/shop").start()
    wait_until(lambda: crowd.arrived == CLIENTS - 1)
    app.release.open()
    replies = crowd.finish()
    assert app.calls.value == 2
    assert set(replies) == {Reply(200, "STALE", b"v1 #1")}

    for server in servers:  # it keeps failing, in every process
        assert fetch(server, "/shop") == Reply(200, "STALE", b"v1 #1")
    assert app.calls.value == 2 + len(servers)
    assert total(servers, "app_errors") == 1 + len(servers)
    assert cluster.stored("/shop") == good
    assert cluster.lock("/shop") is None

    app.mode.value, app.version.value = 0, 2
    number = app.calls.value + 1
    assert fetch(servers[1], "/shop") == Reply(200, "MISS", b"v2 #%d" % number)
    assert cluster.stored("/shop").body == b"v2 #%d" % number
    assert fetch(servers[2], "/shop") == Reply(200, "HIT", b"v2 #%d" % number)


@pytest.mark.parametrize("failure", [1, 2], ids=["raise", "503"])
def test_waiter_in_another_process_falls_back_to_stale_after_wait_timeout(cluster, failure):
    # Past its TTL (no grace), the page is only kept for stale_if_error. The
    # rebuild in one process is slow and fails; a request in another process
    # waits for it up to wait_timeout, then computes the page itself, which
    # fails too: both get the stale copy, and it stays stored.
    app = App(held={2})
    holder, other, _ = cluster.start(app, rules=f"/ {TTL} 0", stale_if_error=60, wait_timeout=0.3)
    assert fetch(holder, "/shop") == Reply(200, "MISS", b"v1 #1")
    good = into_grace(cluster, "/shop")
    app.mode.value = failure
    crowd = crowd_of(1, [holder], "/shop").start()
    assert app.entered.wait(HOLD)

    assert fetch(other, "/shop") == Reply(200, "STALE", b"v1 #1")
    assert counters(other)["wait_timeouts"] == 1
    assert app.calls.value == 3
    app.release.open()
    assert crowd.finish() == [Reply(200, "STALE", b"v1 #1")]
    assert cluster.stored("/shop") == good


# -- a lock holder killed --------------------------------------------------

LOCK_TIMEOUT = 2


def kill_while_computing(app: App, holder: AppServer, path: str) -> threading.Thread:
    """Send a request to ``holder``, and SIGKILL it once that request is inside
    the application (holding the page's update lock)."""
    def doomed() -> None:
        try:
            fetch(holder, path)
        except (OSError, http.client.HTTPException):
            pass  # the connection dies with the process

    thread = threading.Thread(target=doomed, daemon=True)
    thread.start()
    assert app.entered.wait(HOLD)
    holder.kill()
    thread.join(HOLD)
    return thread


def test_cold_page_whose_lock_holder_was_killed_is_rebuilt_by_another_process(cluster):
    # wait_timeout is longer than lock_timeout: the waiters outlive the dead
    # holder's lock, and one of them takes it over and stores the page.
    app = App(held={1})
    holder, *others = cluster.start(app, lock_timeout=LOCK_TIMEOUT, wait_timeout=4 * LOCK_TIMEOUT)
    kill_while_computing(app, holder, "/cold")
    assert cluster.lock("/cold") is not None  # the dead process's lock is still there

    replies = crowd_of(16, others, "/cold").start().finish()
    assert app.calls.value == 2
    assert set(replies) <= {Reply(200, "MISS", b"v1 #2"), Reply(200, "HIT", b"v1 #2")}
    assert labels(replies) == {"MISS": 1, "HIT": 15}
    assert total(others, "wait_timeouts") == 0  # taken over before wait_timeout, so within lock_timeout
    assert cluster.stored("/cold").body == b"v1 #2"
    assert cluster.lock("/cold") is None


def test_cold_page_waiters_give_up_after_wait_timeout_when_the_holder_died(cluster):
    # wait_timeout shorter than lock_timeout: a waiter computes the page for
    # itself and does not store it (the dead holder's lock still stands);
    # once the lock has expired, the next request stores the page.
    app = App(held={1})
    holder, *others = cluster.start(app, lock_timeout=LOCK_TIMEOUT, wait_timeout=0.2)
    kill_while_computing(app, holder, "/cold")

    assert fetch(others[0], "/cold") == Reply(200, "MISS", b"v1 #2")
    assert counters(others[0])["wait_timeouts"] == 1
    assert cluster.stored("/cold") is None

    wait_until(lambda: cluster.lock("/cold") is None, timeout=10 * LOCK_TIMEOUT)
    number = app.calls.value + 1
    assert fetch(others[1], "/cold") == Reply(200, "MISS", b"v1 #%d" % number)
    assert cluster.stored("/cold").body == b"v1 #%d" % number
    assert fetch(others[0], "/cold") == Reply(200, "HIT", b"v1 #%d" % number)


def test_page_in_grace_whose_lock_holder_was_killed_is_served_stale_then_rebuilt(cluster):
    app = App(held={2})
    holder, *others = cluster.start(app, lock_timeout=LOCK_TIMEOUT)
    assert fetch(holder, "/news") == Reply(200, "MISS", b"v1 #1")
    into_grace(cluster, "/news")
    app.version.value = 2
    kill_while_computing(app, holder, "/news")

    # Until the dead holder's lock expires, everybody gets the stale copy at
    # once; the first request after that rebuilds the page.
    seen: List[Reply] = []

    def rebuilt() -> bool:
        seen.append(fetch(others[len(seen) % len(others)], "/news"))
        return seen[-1].cache != "STALE"

    wait_until(rebuilt, timeout=10 * LOCK_TIMEOUT)
    assert set(seen[:-1]) <= {Reply(200, "STALE", b"v1 #1")}
    assert seen[-1] == Reply(200, "MISS", b"v2 #3")
    assert app.calls.value == 3
    assert cluster.stored("/news").body == b"v2 #3"


# -- uncacheable URLs ----------------------------------------------------------

def test_uncacheable_url_is_not_serialised_across_processes(cluster):
    barrier = ctx.Barrier(CLIENTS, timeout=HOLD / 3)
    app = App(private=True, barrier=barrier)
    servers = cluster.start(app)
    assert fetch(servers[0], "/me") == Reply(200, "MISS", b"v1 #1")
    assert type(cluster.stored("/me")) is Pass
    assert cluster.lock("/me") is None

    # The pass marker is in memcached: all processes send all 64 requests
    # straight to the app, where they must all be at once to pass the barrier.
    replies = crowd_of(CLIENTS, servers, "/me").start().finish()
    assert app.calls.value == CLIENTS + 1
    assert {(r.status, r.cache) for r in replies} == {(200, "MISS")}
    assert len({r.body for r in replies}) == CLIENTS
    assert total(servers, "waits") == 0
    assert total(servers, "passes") == CLIENTS
