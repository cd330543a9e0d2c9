"""Dog-pile benchmark: N clients at once on a cold page and on an expired page.

A slow application (``--render-ms`` per page, at most ``--slots`` renders at
a time, like a database with that many connections) is served by several
waitress processes over real HTTP; pagecache in front of it shares two real
memcached servers. For each case the benchmark sends ``--clients`` concurrent
requests for one page (released together by a barrier), ``--rounds`` times
with a new page each round, and prints the application calls per page and the
latency the clients saw (median, p95, max), beside the same figures with no
cache at all, measured in the same run, and their ratios to it.

Cases:

* no cache        every client renders the page (the baseline);
* cold page       a page nobody has cached: one client computes, the rest wait;
* expired, grace  a page just past its TTL: one client rebuilds, the rest get
                  the stale copy at once;
* expired, bg     the same with ``background_refresh = true``: every client
                  gets the stale copy at once, the page is rebuilt behind them.

Run: ``python bench/dogpile.py [--clients 32] [--render-ms 200] ...``
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pagecache import PageCacheMiddleware  # noqa: E402
from pagecache.entry import Page  # noqa: E402
from tests.servers import AppServer, MemcachedServer  # noqa: E402

HOST = "bench.example"
TTL, GRACE = 1, 600
ctx = AppServer.context


class SlowApp:
    """A page that takes ``render`` seconds to render, at most ``slots`` at a
    time over all processes; ``calls`` counts renders of all processes."""

    def __init__(self, render: float, slots: int):
        self.render = render
        self.slots = ctx.BoundedSemaphore(slots) if slots else None
        self.calls = ctx.Value("i", 0)

    def __call__(self, environ: Dict, start_response: Callable) -> List[bytes]:
        with self.calls.get_lock():
            self.calls.value += 1
        if self.slots is not None:
            with self.slots:
                time.sleep(self.render)
        else:
            time.sleep(self.render)
        body = b"<html><body>%s rendered at %.6f</body></html>" % (
            environ.get("PATH_INFO", "/").encode("latin-1"), time.time())
        start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
        return [body]


def fetch(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", path, headers={"Host": HOST})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def burst(ports: List[int], path: str, clients: int) -> List[float]:
    """``clients`` concurrent GETs of ``path`` spread over ``ports``; their latencies in seconds."""
    barrier = threading.Barrier(clients)
    latencies: List[float] = []
    errors: List[BaseException] = []
    lock = threading.Lock()

    def client(port: int) -> None:
        try:
            barrier.wait(60)
            started = time.perf_counter()
            status = fetch(port, path)
            elapsed = time.perf_counter() - started
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
        except BaseException as error:
            errors.append(error)
            return
        with lock:
            latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(ports[i % len(ports)],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return latencies


class Result(NamedTuple):
    name: str
    calls_per_page: float
    latencies: List[float]

    def figure(self, q: str) -> float:
        values = sorted(self.latencies)
        if q == "median":
            return statistics.median(values)
        if q == "p95":
            return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
        return values[-1]


class Deployment:
    """``processes`` waitress processes serving ``app`` (behind pagecache when
    ``options`` is not None), sharing ``memcached``."""

    def __init__(self, app: SlowApp, processes: int, threads: int, memcached: List[MemcachedServer],
                 options: Optional[Dict[str, Any]]):
        self.app = app
        self.inspector: Optional[PageCacheMiddleware] = None
        if options is None:
            def make_app() -> Callable:
                return app
        else:
            settings = dict(options, memcached_servers=" ".join(m.address for m in memcached))

            def make_app() -> Callable:
                return PageCacheMiddleware(app, f"/ {TTL} {GRACE}", **settings)
            self.inspector = PageCacheMiddleware(app, f"/ {TTL} {GRACE}", **settings)
        self.servers = [AppServer(make_app, threads=threads) for _ in range(processes)]

    def __enter__(self) -> "Deployment":
        for server in self.servers:
            server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for server in self.servers:
            server.stop()

    @property
    def ports(self) -> List[int]:
        return [server.port for server in self.servers]

    def stored(self, path: str) -> Optional[Page]:
        keys = self.inspector.keys
        entry = self.inspector.store.load(keys.page(keys.digest_of_url(f"http://{HOST}{path}")))
        return entry if type(entry) is Page else None


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the benchmark waited too long for the cache")
        time.sleep(0.01)


def measure(name: str, deployment: Deployment, paths: List[str], clients: int,
            settle: Optional[Callable[[str], bool]] = None) -> Result:
    """One burst per path; app calls per page counted once each page has settled."""
    latencies: List[float] = []
    calls = 0
    for path in paths:
        before = deployment.app.calls.value
        latencies += burst(deployment.ports, path, clients)
        if settle is not None:
            wait_for(lambda: settle(path))
        calls += deployment.app.calls.value - before
    return Result(name, calls / len(paths), latencies)


def expired_pages(deployment: Deployment, prefix: str, rounds: int) -> List[str]:
    """Pages stored once, then waited for (real time) until they are past their TTL."""
    paths = [f"/{prefix}/{n}" for n in range(rounds)]
    for path in paths:
        fetch(deployment.ports[0], path)
    pages = [deployment.stored(path) for path in paths]
    if not all(pages):
        raise RuntimeError("the pages to expire were not stored")
    wait_for(lambda: all(time.time() > page.stored + page.ttl + 0.01 for page in pages))
    return paths


def rebuilt_after(deployment: Deployment, since: float) -> Callable[[str], bool]:
    def settled(path: str) -> bool:
        page = deployment.stored(path)
        return page is not None and page.stored > since
    return settled


def run(options: argparse.Namespace) -> List[Result]:
    memcached = [MemcachedServer(lru_maintainer=True).start(), MemcachedServer(lru_maintainer=True).start()]
    try:
        app = SlowApp(options.render_ms / 1000.0, options.slots)
        threads = options.clients  # every client gets a server thread at once
        results = []
        rounds = range(options.rounds)
        with Deployment(app, options.processes, threads, memcached, None) as bare:
            results.append(measure("no cache", bare, [f"/bare/{n}" for n in rounds], options.clients))
        cache = dict(key_prefix="dogpile", wait_timeout=60)
        with Deployment(app, options.processes, threads, memcached, cache) as cached:
            results.append(measure("cold page", cached, [f"/cold/{n}" for n in rounds], options.clients))
            paths = expired_pages(cached, "grace", options.rounds)
            results.append(measure("expired, grace", cached, paths, options.clients,
                                   rebuilt_after(cached, time.time())))
        background = dict(cache, key_prefix="dogpile-bg", background_refresh=True)
        with Deployment(app, options.processes, threads, memcached, background) as cached:
            paths = expired_pages(cached, "bg", options.rounds)
            results.append(measure("expired, background", cached, paths, options.clients,
                                   rebuilt_after(cached, time.time())))
        return results
    finally:
        for server in memcached:
            server.stop()


def report(results: List[Result], options: argparse.Namespace) -> str:
    slots = f"at most {options.slots} at once" if options.slots else "no limit on concurrent renders"
    lines = [f"dogpile: {options.clients} concurrent clients per page, {options.rounds} pages per case; "
             f"app renders in {options.render_ms:g} ms ({slots}); {options.processes} waitress processes, "
             f"2 memcached servers",
             "",
             f"{'case':<22}{'app calls/page':>15}{'median ms':>11}{'p95 ms':>9}{'max ms':>9}"]
    for result in results:
        lines.append(f"{result.name:<22}{result.calls_per_page:>15.1f}"
                     + "".join(f"{result.figure(q) * 1000:>{w}.1f}" for q, w in
                               (("median", 11), ("p95", 9), ("max", 9))))
    base = results[0]
    lines += ["", f"ratios against {base.name} (lower is better)",
              f"{'case':<22}{'app calls':>15}{'median':>11}{'p95':>9}{'max':>9}"]
    for result in results[1:]:
        ratios = [result.calls_per_page / base.calls_per_page] + \
                 [result.figure(q) / base.figure(q) for q in ("median", "p95", "max")]
        lines.append(f"{result.name:<22}{ratios[0]:>14.3f}x"
                     + "".join(f"{r:>{w - 1}.3f}x" for r, w in zip(ratios[1:], (11, 9, 9))))
    return "\n".join(lines)


def parse(args: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dogpile.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients per page (32)")
    parser.add_argument("--render-ms", type=float, default=200.0, help="time the app takes per page (200)")
    parser.add_argument("--slots", type=int, default=4,
                        help="renders the app can do at once over all processes; 0: no limit (4)")
    parser.add_argument("--processes", type=int, default=3, help="waitress processes (3)")
    parser.add_argument("--rounds", type=int, default=3, help="pages per case, each a new burst (3)")
    options = parser.parse_args(args)
    if options.clients < 1 or options.rounds < 1 or options.processes < 1 or options.slots < 0:
        parser.error("--clients, --rounds and --processes must be at least 1, --slots at least 0")
    return options


def record(results: List[Result]) -> None:
    """Give the figures to bench/run.py's summary (bench/common.py), when it is
    there: one app call per page is the target; latency ratios are information."""
    try:
        import common  # bench/common.py, beside this file
    except ImportError:
        return
    result = getattr(common, "result", None)
    if result is None:
        return
    base = results[0]
    for case in results[1:]:
        result(f"dogpile {case.name}: app calls per page", case.calls_per_page, "<= 1", unit="calls")
        result(f"dogpile {case.name}: p95 latency / no cache", case.figure("p95") / base.figure("p95"))


def main(args: list) -> int:
    """Run the benchmark with command-line ``args`` and print its figures.
    A dog-pile (more than one app call per page in a cached case) is
    reported, not an error: the status is 0 once the benchmark has run."""
    options = parse(args)
    results = run(options)
    print(report(results, options), flush=True)
    piled = [r.name for r in results[1:] if r.calls_per_page > 1]
    if piled:
        print(f"DOG-PILE: more than one app call per page in: {', '.join(piled)}", flush=True)
    print(flush=True)
    record(results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
