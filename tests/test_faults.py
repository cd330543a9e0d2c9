"""memcached faults: servers killed, restarted, hung, or silent, with both clients.

Every test talks to real memcached processes (or, for "accepts connections and
never answers", a real listening socket) through ``memcached_servers``, so the
client library, its timeouts and its dead-server bookkeeping are the ones a
deployment gets. ``memcached_timeout`` is 100 ms, and "at most about the
timeout" is asserted as ten times that; recovery is awaited with
``wait_until``, and "within memcached_retry" (1 s here) is asserted as
memcached_retry plus five of those bounds. Lower bounds are asserted only
where slowness cannot break them (a time measured after the event).
"""

from __future__ import annotations

import itertools
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence
from wsgiref.util import setup_testing_defaults

import pytest

from pagecache import PageCacheMiddleware
from pagecache.entry import Page

from .conftest import CountingApp, stored, wait_until
from .servers import MemcachedServer

LIBRARIES = ["python-memcached", "pymemcache"]
TIMEOUT = 0.1        # memcached_timeout of these tests
BOUND = 10 * TIMEOUT  # "at most about memcached_timeout", said generously
RETRY = 1.0          # memcached_retry where a test waits for a server to be asked again
HOST = "example.com"
APP_BODY = re.compile(rb"^page #\d+$")
_prefixes = itertools.count()


class Reply(NamedTuple):
    status: str
    label: Optional[str]
    body: bytes
    seconds: float


def request(app: Callable, path: str, host: str = HOST) -> Reply:
    """One GET straight into the WSGI callable, as a server would make it
    (drained and closed); how long the whole call took."""
    environ: Dict = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "HTTP_HOST": host}
    setup_testing_defaults(environ)
    seen: Dict = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers
        return seen.setdefault("written", []).append

    started = time.monotonic()
    result = app(environ, start_response)
    try:
        body = b"".join(seen.get("written", [])) + b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    label = dict(seen["headers"]).get("X-Cache")
    return Reply(seen["status"], label, body, time.monotonic() - started)


def middleware(app: Callable, addresses: Sequence[str], library: str, **options) -> PageCacheMiddleware:
    settings = dict(memcached_servers=" ".join(addresses), memcached_client=library,
                    memcached_timeout=TIMEOUT, memcached_retry=RETRY, key_prefix=f"f{next(_prefixes)}")
    settings.update(options)
    return PageCacheMiddleware(app, "/ 30 120", **settings)


def assert_answered_by_app(replies: List[Reply]) -> None:
    for reply in replies:
        assert reply.status == "200 OK", reply
        assert APP_BODY.match(reply.body), reply


@pytest.fixture
def server():
    """A memcached of this test's own, which it may kill, pause and restart."""
    own = MemcachedServer().start()
    yield own
    own.stop()


class SilentServer:
    """A TCP port where nothing is ever answered.

    ``accepting``: connections are accepted (and counted) and whatever is sent
    is read and dropped, like a wedged memcached. Otherwise the listen backlog
    is full and never drained, so connecting itself hangs."""

    def __init__(self, accepting: bool = True):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64 if accepting else 0)
        self.port = self.listener.getsockname()[1]
        self.connections: List[socket.socket] = []
        self.received = 0
        self._closed = threading.Event()
        self._threads: List[threading.Thread] = []
        if accepting:
            self._spawn(self._accept)
        else:
            # fill the backlog: later connects get no SYN-ACK
            filler = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            self.connections.append(filler)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            self._spawn(self._drain, connection)

    def _drain(self, connection: socket.socket) -> None:
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received += len(data)

    def close(self) -> None:
        self._closed.set()
        for connection in self.connections:
            connection.close()
        self.listener.close()


@pytest.fixture
def silent():
    servers: List[SilentServer] = []

    def make(accepting: bool = True) -> SilentServer:
        servers.append(SilentServer(accepting))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def burst(apps: Sequence[Callable], threads: int, requests: int,
          paths: Callable[[int, int], str]) -> List[Reply]:
    """``requests`` requests from each of ``threads`` threads, all started
    together; thread ``n`` asks ``apps[n % len(apps)]`` for ``paths(n, i)``."""
    replies: List[Reply] = []
    errors: List[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(number: int) -> None:
        try:
            barrier.wait(10)
            for i in range(requests):
                replies.append(request(apps[number % len(apps)], paths(number, i)))
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors, errors
    assert len(replies) == threads * requests
    return replies


# -- a server killed and restarted --------------------------------------------

@pytest.mark.parametrize("library", LIBRARIES)
def test_killed_during_a_burst_every_request_is_answered_and_caching_resumes_after_restart(server, library):
    """Eight threads keep requesting their own four pages while memcached is
    SIGKILLed and later restarted (empty, same port): every request is answered
    200 with the application's page, nothing waits for a lock, and within
    ``memcached_retry`` of the restart every thread gets cache hits again."""
    app = CountingApp()
    mw = middleware(app, [server.address], library, wait_timeout=30)
    threads, pages = 8, 4
    phase = ["before"]
    log: List[List] = [[] for _ in range(threads)]  # per thread: (phase at start, reply, finished at)
    errors: List[BaseException] = []
    stop = threading.Event()

    def worker(number: int) -> None:
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                current = phase[0]
                reply = request(mw, f"/w{number}/{i % pages}")
                log[number].append((current, reply, time.monotonic()))
        except BaseException as error:
            errors.append(error)

    def seen(name: str, count: int, label: Optional[str] = None) -> Callable[[], bool]:
        return lambda: errors or all(
            sum(1 for p, r, _ in entries if p == name and (label is None or r.label == label)) >= count
            for entries in log)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    try:
        wait_until(seen("before", 2 * pages, "HIT"), timeout=30)
        server.kill()
        phase[0] = "dead"
        wait_until(seen("dead", 25), timeout=30)
        server.start()
        phase[0] = "restarted"
        restarted = time.monotonic()
        wait_until(seen("restarted", 1, "HIT"), timeout=30)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert not errors, errors

    everything = [reply for entries in log for _, reply, _ in entries]
    assert_answered_by_app(everything)
    dead = [reply for entries in log for p, reply, _ in entries if p == "dead"]
    assert {reply.label for reply in dead} == {"MISS"}
    assert len({reply.body for reply in dead}) == len(dead), "each was computed by the application"
    for entries in log:
        first_hit = min(at for p, reply, at in entries if p == "restarted" and reply.label == "HIT")
        assert first_hit - restarted < RETRY + BOUND * 5
    assert mw.stats["wait_timeouts"] == 0
    assert mw.stats["memcached_errors"] > 0


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_restart_nobody_saw_costs_a_few_misses_not_memcached_retry(server, library):
    """memcached restarted between requests (every connection the client holds
    is stale, the server empty), with the default ``memcached_retry`` of 30s:
    the server is not taken for dead. Requests are answered by the
    application, and each thread is served from the cache again after at most
    one miss per stale connection (python-memcached: one per thread, so
    exactly one miss; pymemcache: one per pooled connection)."""
    app = CountingApp()
    mw = middleware(app, [server.address], library, memcached_retry=30)
    threads = 4
    barrier = threading.Barrier(threads)

    def until_hit(path: str) -> List[Reply]:
        barrier.wait(10)  # one task on each pool thread: each has its own connection
        replies = [request(mw, path)]
        while replies[-1].label != "HIT" and len(replies) <= threads + 2:
            replies.append(request(mw, path))
        return replies

    with ThreadPoolExecutor(max_workers=threads) as pool:
        before = list(pool.map(until_hit, [f"/before{n}" for n in range(threads)]))
        assert [[r.label for r in replies] for replies in before] == [["MISS", "HIT"]] * threads
        server.restart()
        after = list(pool.map(until_hit, [f"/after{n}" for n in range(threads)]))
    labels = [[r.label for r in replies] for replies in after]
    assert all(replies[-1] == "HIT" for replies in labels), labels
    assert sum(len(replies) - 2 for replies in labels) <= threads, labels
    if library == "python-memcached":
        assert labels == [["MISS", "HIT"]] * threads
    assert_answered_by_app([r for replies in after for r in replies])
    assert request(mw, "/before0").label == "MISS"  # the restarted server is empty


# -- servers that accept connections and never answer ---------------------------

@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("hang", ["sigstop", "silent socket", "connect hangs"])
def test_a_server_that_never_answers_costs_each_request_at_most_about_the_timeout(
        server, silent, library, hang):
    app = CountingApp()
    if hang == "sigstop":
        address = server.address
    else:
        address = silent(accepting=hang == "silent socket").address
    mw = middleware(app, [address], library, wait_timeout=30, memcached_retry=30)
    stores = 0
    if hang == "sigstop":
        for n in range(4):  # pages that are stored, and connections open, when it stops
            assert request(mw, f"/warm{n}").label == "MISS"
            assert request(mw, f"/warm{n}").label == "HIT"
        stores = mw.stats["stores"]
        server.pause()
    # each thread its own pages: no request waits for another's (that is coalescing, tested elsewhere)
    replies = burst([mw], threads=4, requests=8, paths=lambda n, i: [f"/warm{n}", f"/t{n}/{i}"][i % 2])
    assert_answered_by_app(replies)
    assert {reply.label for reply in replies} == {"MISS"}
    slowest = max(reply.seconds for reply in replies)
    assert slowest < BOUND, f"a request waited {slowest:.3f}s for a server that never answers"
    assert mw.stats["wait_timeouts"] == 0 and mw.stats["stores"] == stores
    assert mw.stats["memcached_errors"] > 0


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_silent_server_is_left_alone_for_memcached_retry_then_asked_again(silent, library):
    """After a timeout the server is not asked again on every request: four
    worker threads (a server's thread pool) open at most one connection each
    in a first burst, and ask again only once ``memcached_retry`` has passed
    since the first request started. (python-memcached keeps this bookkeeping
    per thread, pymemcache per process: both meet this.)"""
    hung = silent(accepting=True)
    app = CountingApp()
    retry, threads = 0.5, 4
    mw = middleware(app, [hung.address], library, memcached_retry=retry)
    barrier = threading.Barrier(threads)

    def first(n: int) -> List[Reply]:
        barrier.wait(10)  # one task on each pool thread
        return [request(mw, f"/s{n}/{i}") for i in range(10)]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        started = time.monotonic()
        replies = [r for rs in pool.map(first, range(threads)) for r in rs]
        assert_answered_by_app(replies)
        connections = len(hung.connections)
        assert 1 <= connections <= threads
        replies = [r for rs in pool.map(lambda n: [request(mw, f"/t{n}")], range(threads)) for r in rs]
        asked_again_at: List[float] = []

        def asked_again() -> bool:
            replies.extend(pool.map(lambda n: request(mw, f"/again{n}"), range(threads)))
            if len(hung.connections) > connections:
                asked_again_at.append(time.monotonic())
                return True
            return False
        wait_until(asked_again, timeout=10 + retry)
    assert asked_again_at[0] - started >= retry
    assert_answered_by_app(replies)


def holds(server: MemcachedServer, key: str) -> bool:
    """Whether ``server`` has a value under ``key`` (asked directly)."""
    return server.command(f"get {key}").startswith(b"VALUE ")


class Raising:
    """A cache client wrapper that records the type of every exception the
    client raises (the Store turns them into misses; which ones they are
    tells a failing server from a client's own bookkeeping going wrong)."""

    def __init__(self, client):
        self.client = client
        self.raised: List[type] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):
        method = getattr(self.client, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as error:
                with self._lock:
                    self.raised.append(type(error))
                raise
        return call


@pytest.mark.parametrize("library", LIBRARIES)
def test_concurrent_failures_only_ever_raise_connection_errors(memcached_pair, library):
    """Eight threads on two servers, one killed and restarted and the other
    hung and resumed, several times: every request is answered by the
    application or the cache, and every exception the client raised says the
    server failed (a socket error or the library's own memcached error), none
    that its dead-server bookkeeping tripped over itself (pymemcache's
    HashClient, shared by the threads, raised ValueError and KeyError here)."""
    from pymemcache.exceptions import MemcacheError

    first, second = memcached_pair
    mw = middleware(CountingApp(), [first.address, second.address], library, memcached_retry=0.2)
    mw.store.client = recorder = Raising(mw.store.client)
    stop = threading.Event()
    replies: List[Reply] = []
    errors: List[BaseException] = []

    def worker(number: int) -> None:
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                replies.append(request(mw, f"/c{number}/{i % 40}"))
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for w in workers:
        w.start()
    try:
        for _ in range(5):
            count = len(replies)
            wait_until(lambda: len(replies) > count + 50)
            first.kill()
            wait_until(lambda: len(replies) > count + 150)
            first.start()
            second.pause()
            wait_until(lambda: len(replies) > count + 250)
            second.resume()
    finally:
        second.resume()
        stop.set()
        for w in workers:
            w.join(30)
    assert not errors, errors
    for reply in replies:
        assert reply.status == "200 OK" and re.match(rb"^page #\d+$", reply.body), reply
    assert recorder.raised or library == "python-memcached"  # python-memcached swallows its errors
    unexpected = {kind for kind in recorder.raised if not issubclass(kind, (OSError, MemcacheError))}
    assert not unexpected, unexpected


# -- two servers, one killed --------------------------------------------------------

@pytest.mark.parametrize("library", LIBRARIES)
def test_with_one_of_two_servers_killed_pages_on_the_other_are_still_hits(memcached_pair, library):
    first, second = memcached_pair
    app = CountingApp()
    mw = middleware(app, [first.address, second.address], library, memcached_retry=30)
    paths = [f"/p/{i}" for i in range(40)]
    bodies = {path: request(mw, path).body for path in paths}
    assert all(request(mw, path).label == "HIT" for path in paths)

    def key(path: str) -> str:
        return mw.keys.page(mw.keys.digest_of_url(f"http://{HOST}{path}"))
    on_first = [p for p in paths if holds(first, key(p))]
    on_second = [p for p in paths if holds(second, key(p))]
    assert on_first and on_second and sorted(on_first + on_second) == sorted(paths)

    first.kill()
    calls = app.calls
    for lost, kept in itertools.zip_longest(on_first, on_second):
        if lost is not None:
            reply = request(mw, lost)
            assert reply.status == "200 OK" and reply.label == "MISS" and APP_BODY.match(reply.body)
        if kept is not None:
            reply = request(mw, kept)
            assert (reply.label, reply.body) == ("HIT", bodies[kept]), kept
    assert app.calls == calls + len(on_first)
    # the pages the dead server held are now stored on the live one
    for path in on_first:
        assert request(mw, path).label == "HIT"
    assert type(stored(mw, f"http://{HOST}{on_first[0]}")) is Page
    assert all(holds(second, key(p)) for p in paths)


# -- nothing answers: no lock held, nothing stored -------------------------------------

@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("outage", ["killed", "silent socket"])
def test_while_no_server_answers_no_lock_is_held_and_nothing_is_stored(server, silent, library, outage):
    """Two middlewares (two processes' worth) on a pool of two dead servers,
    with a long ``wait_timeout`` and the in-process tier on: concurrent
    requests for one page all get the application's answer without waiting
    for a lock, and later requests call the application again each time."""
    other = MemcachedServer().start()
    addresses = [server.address, other.address]
    server.kill()
    other.kill()
    if outage == "silent socket":
        addresses = [silent().address, silent().address]
    app = CountingApp()
    processes = [middleware(app, addresses, library, wait_timeout=30, local_ttl=60, memcached_retry=RETRY)
                 for _ in range(2)]
    replies = burst(processes, threads=6, requests=1, paths=lambda n, i: "/same")
    for mw in processes:
        replies += [request(mw, "/same") for _ in range(3)]
    assert_answered_by_app(replies)
    assert max(reply.seconds for reply in replies) < BOUND
    for mw in processes:
        assert mw.stats["wait_timeouts"] == 0
        assert mw.stats["stores"] == 0 and mw.stats["local_hits"] == 0
        assert mw.stats["store_failures"] > 0
    sequential = replies[6:]
    assert {reply.label for reply in sequential} == {"MISS"}
    assert len({reply.body for reply in sequential}) == len(sequential), "each one computed by the app"


# -- a lock taken by an add that timed out ---------------------------------------------

@pytest.mark.parametrize("library", LIBRARIES)
def test_a_lock_taken_by_an_add_that_timed_out_is_released_once_the_server_answers(server, library):
    """The server hangs (SIGSTOP) while a request takes a page's lock: the add
    times out, but the server carries it out when it resumes, so the lock is
    held by nobody. The first lock the server answers afterwards releases it:
    the page is computed and stored at once, not after ``wait_timeout`` or
    ``lock_timeout`` (a minute each here)."""
    import memcache

    app = CountingApp()
    mw = middleware(app, [server.address], library, wait_timeout=60, lock_timeout=60)
    assert request(mw, "/warm").label == "MISS"  # stored, and a connection open when it stops
    client = mw.store.client

    class HangsBeforeTheAdd:
        """The real client, with the server stopped between the get and the add."""

        def __getattr__(self, name):
            return getattr(client, name)

        def add(self, *args):
            server.pause()
            return client.add(*args)

    mw.store.client = HangsBeforeTheAdd()
    try:
        assert request(mw, "/orphan").label == "MISS"
    finally:
        server.resume()
        mw.store.client = client
    assert mw.stats["memcached_errors"] > 0
    probe = memcache.Client([server.address])
    lock_key = mw.keys.lock(mw.keys.digest_of_url(f"http://{HOST}/orphan"))
    wait_until(lambda: probe.get(lock_key) is not None)       # the add, carried out late
    wait_until(lambda: request(mw, "/warm").label == "HIT")   # the client asks the server again
    replies: List[Reply] = []
    answered = threading.Event()

    def ask() -> None:
        replies.append(request(mw, "/orphan"))
        answered.set()

    threading.Thread(target=ask, daemon=True).start()
    assert answered.wait(10), "the request waited for a lock nobody holds"
    assert replies[0].label == "MISS" and APP_BODY.match(replies[0].body)
    assert request(mw, "/orphan").label == "HIT"
    assert probe.get(lock_key) is None
