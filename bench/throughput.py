"""Benchmark 2: requests per second of cached hits under a real server.

Each application below is served by waitress (same number of threads) in a
process of its own (:class:`tests.servers.AppServer`), a fresh one for every
turn. In a turn, both sides of a comparison are served at once, each asked for
a 5 KB page over keep-alive connections on loopback by a load generator of its
own (``wrk -t1`` when ``PAGECACHE_WRK`` names it, as ``dev.py bench`` does;
else the Python one in ``common.py``), for a second of warm-up and then a few
seconds. The figure is the median of the per-turn ratios of requests answered:
whatever else the machine does falls on both sides alike, and a turn it spoils
does not move the median. A control line compares the hand-written application
with another process of itself, to show how precise that is on the machine at
hand. Both sides' memcached clients have the same settings (2 s timeout, 1 s
retry). The server process's CPU time per request is shown as well.

1. pagecache as configured from an INI file (``paste.deploy.loadapp``:
   ``egg:pagecache#main`` in front of the page's application), every request a
   hit in memcached, against a hand-written application that does one
   ``get`` of the page's body with the same client and returns it.
   Target: at least 0.95x. Done with python-memcached and with pymemcache.
2. The same with ``local_ttl = 1`` (hits served from process memory), against
   an application returning a constant body. Target: at least 0.9x.
3. Information: the hits (from memcached, and from the local tier) against
   the hand-written and the constant application sending the seven headers a
   hit carries (``Content-Type``, ``Content-Length``, ``ETag``, ``Vary``,
   ``Age``, ``Cache-Status``, ``X-Cache``), and the hand-written application
   answering with those seven against itself answering with two: what the
   headers alone cost the server (waitress handles each header in Python, a
   few microseconds apiece).

    python bench/run.py throughput [--seconds S] [--repeats N] [--connections C]
                                   [--threads T] [--clients python-memcached,pymemcache]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import urllib.request
from typing import Callable, Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from pagecache.backends import memcached_client  # noqa: E402
from tests.servers import AppServer  # noqa: E402

PATH = "/articles/42"
BODY = (b"<!doctype html><title>bench</title>" + b"x" * common.PAGE_SIZE)[:common.PAGE_SIZE]
RAW_KEY = "bench:raw-page"
# Both sides' clients: generous, so that a busy machine's hiccup is not taken
# for a dead server (which would turn hits into misses for memcached_retry).
TIMEOUT, RETRY = 2.0, 1.0

INI = """\
[pipeline:main]
pipeline = pagecache page

[filter:pagecache]
use = egg:pagecache#main
memcached_servers = {server}
memcached_client = {library}
memcached_timeout = {timeout}
memcached_retry = {retry}
key_prefix = bench-{name}
cached_urls =
    /articles/   1h   1h
{extra}
[app:page]
use = call:throughput:page_app_factory
"""


def page_app_factory(global_conf: Dict[str, str]) -> Callable:
    """The application behind the cache (``use = call:throughput:page_app_factory``)."""
    def page(environ: Dict, start_response: Callable) -> List[bytes]:
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [BODY]
    return page


def constant_app(environ: Dict, start_response: Callable) -> List[bytes]:
    """The least a WSGI application can do: a constant 5 KB page."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(BODY)))])
    return [BODY]


# what a pagecache hit adds to the application's headers (ETag: generated when
# stored; Vary: the page is stored compressed, each client gets what it accepts)
HIT_HEADERS = [("ETag", '"pc-0123456789abcdef01234567"'), ("Vary", "Accept-Encoding"), ("Age", "3"),
               ("Cache-Status", "pagecache; hit; ttl=3600"), ("X-Cache", "HIT")]
HEADER_COUNT = 2 + len(HIT_HEADERS)
SERVER_HEADERS = {"server", "date", "connection"}  # what waitress adds to every answer


def constant_app_with_hit_headers(environ: Dict, start_response: Callable) -> List[bytes]:
    """The constant page with the headers a hit carries: what waitress charges for them."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(BODY))), *HIT_HEADERS])
    return [BODY]


def get_app_factory(server: str, library: str,
                    extra_headers: Sequence[Tuple[str, str]] = ()) -> Callable[[], Callable]:
    """A hand-written cache: one ``get`` of the page with the client pagecache
    builds for ``library`` (same timeouts), and the body as the answer."""
    def make() -> Callable:
        client = memcached_client([server], library, timeout=TIMEOUT, retry=RETRY)

        def app(environ: Dict, start_response: Callable) -> List[bytes]:
            body = client.get(RAW_KEY)
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                      ("Content-Length", str(len(body))), *extra_headers])
            return [body]
        return app
    return make


def filter_factory(directory: str, name: str, server: str, library: str, local_ttl: float = 0) -> Callable:
    """pagecache as a user configures it: an INI file loaded by PasteDeploy."""
    extra = f"local_ttl = {local_ttl:g}\n" if local_ttl else ""
    path = os.path.join(directory, f"{name}.ini")
    with open(path, "w") as f:
        f.write(INI.format(server=server, library=library, name=name, extra=extra,
                           timeout=TIMEOUT, retry=RETRY))

    def make() -> Callable:
        from paste.deploy import loadapp
        return loadapp("config:" + path)
    return make


def check(url: str, cached: bool) -> None:
    """Ask once (filling the cache) and make sure the next answer is a hit."""
    for attempt in range(2 if cached else 1):
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
            label = response.headers.get("X-Cache")
            names = {name.lower() for name in response.headers if name.lower() not in SERVER_HEADERS}
    if body != BODY:
        raise RuntimeError(f"{url} answered a wrong body ({len(body)} bytes)")
    if cached and label != "HIT":
        raise RuntimeError(f"{url} was not served from the cache (X-Cache: {label})")
    expected = {"content-type", "content-length", *(name.lower() for name, _ in HIT_HEADERS)}
    if cached and names != expected:
        raise RuntimeError(f"a hit's headers are no longer those the comparisons assume: {sorted(names)}")


class Side:
    """What one side of a comparison got in each turn."""

    def __init__(self, name: str):
        self.name = name
        self.rates: List[float] = []
        self.cpu: List[float] = []   # server CPU seconds per request

    def summary(self) -> str:
        return (f"{self.name}: median {statistics.median(self.rates):.0f} req/s "
                f"(turns: {', '.join(f'{r:.0f}' for r in self.rates)}), server CPU "
                f"{statistics.median(self.cpu) * 1e6:.0f} µs/request")


def turn(makers: Dict[str, Callable], sides: Dict[str, Side], options: argparse.Namespace) -> Dict[str, int]:
    """One turn: a fresh server process per side, both loaded at once for a
    second of warm-up and then ``options.seconds``; the requests each answered."""
    servers = {}
    try:
        for name in sides:
            servers[name] = AppServer(makers[name], threads=options.threads).start()
        urls = [servers[name].url + PATH for name in sides]
        for name, url in zip(sides, urls):
            check(url, cached=name.startswith("pagecache"))
        common.load(urls, options.connections, 1)  # connections, caches, CPU governor
        cpu_before = {name: common.cpu_seconds(servers[name].process.pid) for name in sides}
        got = dict(zip(sides, common.load(urls, options.connections, options.seconds)))
        for name, side in sides.items():
            side.rates.append(got[name].rps)
            used = common.cpu_seconds(servers[name].process.pid) - cpu_before[name]
            side.cpu.append(used / max(1, got[name].requests))
        return {name: got[name].requests for name in sides}
    finally:
        for server in servers.values():
            server.stop()


def compare(makers: Dict[str, Callable], a: str, b: str,
            options: argparse.Namespace) -> Tuple[float, float]:
    """The median over turns of the ratio of the requests ``a`` answered to
    those ``b`` answered in the same turn; and the ratio of their median
    server CPU time per request.

    Both sides are loaded at the same time, so what the rest of the machine
    does (here it moved one side's requests/s by up to a factor of two from
    one second to the next) falls on both alike. Each turn has server
    processes of its own, started in alternating order: two processes of the
    same application were seen to differ by up to 4% in CPU per request (where
    their threads and memcached connections landed), so that luck is drawn
    anew every turn instead of once for the whole comparison."""
    ratios = []
    sides = {a: Side(a), b: Side(b)}
    for repeat in range(options.repeats):
        order = (a, b) if repeat % 2 == 0 else (b, a)
        got = turn(makers, {name: sides[name] for name in order}, options)
        ratios.append(got[a] / got[b])
    for side in sides.values():
        common.note(side.summary())
    cpu_a, cpu_b = (statistics.median(sides[name].cpu) for name in (a, b))
    common.note(f"req/s ratios of the turns: {', '.join(f'{r:.3f}' for r in ratios)}")
    return statistics.median(ratios), cpu_a / cpu_b


def main(args: list) -> int:
    parser = argparse.ArgumentParser(prog="throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=2, help="length of one turn (whole seconds)")
    parser.add_argument("--repeats", type=int, default=11, help="turns per comparison")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads")
    parser.add_argument("--clients", default=",".join(common.CLIENTS), help="memcached client libraries")
    options = parser.parse_args(args)
    libraries = [name for name in options.clients.split(",") if name]
    print(f"throughput: waitress ({options.threads} threads) in its own process, "
          f"{common.load_generator_name()}, {options.connections} connections, "
          f"{options.repeats} turns of {options.seconds:g}s, both sides at once, 5 KB page")
    with common.memcached() as server, tempfile.TemporaryDirectory(prefix="pagecache-bench-") as directory:
        seed = memcached_client([server.address], "python-memcached")
        if not seed.set(RAW_KEY, BODY, time=0):
            raise RuntimeError("could not store the hand-written app's page")
        makers: Dict[str, Callable] = {"constant app": lambda: constant_app,
                                       "constant app with a hit's headers": lambda: constant_app_with_hit_headers}
        for library in libraries:
            makers[f"pagecache/{library}"] = filter_factory(directory, library, server.address, library)
            makers[f"get app/{library}"] = get_app_factory(server.address, library)
        makers["pagecache/local_ttl=1"] = filter_factory(directory, "local", server.address,
                                                          "python-memcached", local_ttl=1)
        makers["get app with a hit's headers"] = get_app_factory(server.address, "python-memcached",
                                                                 HIT_HEADERS)
        makers["get app, another process"] = makers[f"get app/{libraries[0]}"]
        ratio, cpu = compare(makers, "get app, another process", f"get app/{libraries[0]}", options)
        common.result(f"control: get app / itself (req/s), {libraries[0]}", ratio)
        common.result("  same, server CPU per request (lower is better)", cpu)
        for library in libraries:
            ratio, cpu = compare(makers, f"pagecache/{library}", f"get app/{library}", options)
            common.result(f"hits via {library} / get-and-return app (req/s)", ratio, ">= 0.95")
            common.result("  same, server CPU per request (lower is better)", cpu)
        ratio, cpu = compare(makers, "pagecache/local_ttl=1", "constant app", options)
        common.result("local-tier hits (local_ttl=1) / constant app (req/s)", ratio, ">= 0.9")
        common.result("  same, server CPU per request (lower is better)", cpu)
        ratio, cpu = compare(makers, "pagecache/local_ttl=1", "constant app with a hit's headers", options)
        common.result(f"local-tier hits / constant app with the same {HEADER_COUNT} headers (req/s)", ratio)
        common.result("  same, server CPU per request (lower is better)", cpu)
        if "python-memcached" in libraries:
            ratio, cpu = compare(makers, "pagecache/python-memcached", "get app with a hit's headers", options)
            common.result(f"hits via python-memcached / get app with the same {HEADER_COUNT} headers (req/s)", ratio)
            common.result("  same, server CPU per request (lower is better)", cpu)
            ratio, cpu = compare(makers, "get app with a hit's headers", "get app/python-memcached", options)
            common.result(f"get app with a hit's {HEADER_COUNT} headers / with 2 (req/s)", ratio)
            common.result("  same, server CPU per request (lower is better)", cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
