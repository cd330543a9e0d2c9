"""Soak: a real server behind the INI-configured pagecache filter, driven for
minutes with mixed hits, misses, purges and memcached faults.

A waitress server (a child process) runs the ``[pipeline:main]`` of a
generated INI file: ``egg:pagecache#main`` on two real memcached servers in
front of a small application. Client threads keep requesting hot pages (hits,
stale copies in grace, rebuilds), cold pages (misses), pages that vary on
``Accept-Encoding`` (half of them gzipped by the application itself for
clients that accept it), private pages (never stored), large pages (streamed past
``max_entry_size``), URLs no rule matches, and ``PURGE`` hot pages. Meanwhile
memcached is faulted in turn: one server SIGKILLed then started again, one
restarted, one hung (SIGSTOP) then resumed, both killed then started.

Reported: requests served; errors caused by the cache (target 0): any 5xx
(the application never answers one), a body that is not the page of the URL
asked for, a ``Content-Encoding`` the client did not accept (or a body that
does not decode), a page that varies without ``Vary: Accept-Encoding``, a
connection that fails; the server process's
resident memory after a warm-up and at the end (target: flat, end/start <=
1.10); throughput while a fault is on against outside faults (information).

    python bench/soak.py                     # 3 minutes, both clients (half each)
    python bench/soak.py --quick             # about 20 seconds
    python bench/soak.py --duration 600 --client pymemcache
    python bench/run.py soak -- --quick
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import common  # noqa: E402
from tests.servers import AppServer, MemcachedServer  # noqa: E402

PAGE_SIZE = 4096
BIG_SIZE = 200 * 1024          # over max_entry_size: streamed, never stored
HOT, ITEMS, VARY, PRIVATE = 20, 1000, 20, 50
ENCODINGS = ["gzip", "br", "identity", "gzip, deflate"]
CLIENT_LIBRARIES = ("python-memcached", "pymemcache")
SLOW = 0.5                     # seconds: requests this slow are listed with the fault they met

INI = """\
[app:soak]
use = call:soak:app_factory

[filter:pagecache]
use = egg:pagecache#main
memcached_servers = {servers}
memcached_client = {client}
memcached_timeout = 100ms
memcached_retry = 2s
wait_timeout = 2s
max_entry_size = 100KB
purge_allowed = 127.0.0.1
stats_path = /_pagecache/stats
key_prefix = soak
cached_urls =
    /hot/       2    30
    /item/      30   300
    /cold/      60   60
    /vary/      30   60
    /private/   30   60
    /big/       30   60

[pipeline:main]
pipeline = pagecache soak
"""


# -- the application (runs in the server process) -------------------------------------

def page_body(path: str, extra: str, number: int) -> bytes:
    """The page of ``path``: it starts with the path (and ``extra``), so the
    client can tell it got the page it asked for."""
    head = f"{path}|{extra}|render {number}|pid {os.getpid()}\n".encode("utf-8", "surrogateescape")
    size = BIG_SIZE if path.startswith("/big/") else PAGE_SIZE
    return head + b"." * max(0, size - len(head))


def app_factory(global_conf: Dict, **local_conf: str) -> Callable:
    """``use = call:soak:app_factory``: the application behind the cache."""
    lock = threading.Lock()
    renders = [0]

    def app(environ: Dict, start_response: Callable) -> List[bytes]:
        with lock:
            renders[0] += 1
            number = renders[0]
        path = environ.get("PATH_INFO", "")
        headers = [("Content-Type", "text/plain")]
        extra = ""
        encode = False
        if path.startswith("/vary/"):
            encode = path.endswith(("0", "2", "4", "6", "8")) and "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
            extra = "gzip" if encode else "identity"
            headers.append(("Vary", "Accept-Encoding"))
        if path.startswith("/private/"):
            headers.append(("Cache-Control", "private"))
        if environ.get("REQUEST_METHOD") == "PURGE":  # PURGE reaches the app only if the filter let it
            extra = "purge reached the app"
        body = page_body(path, extra, number)
        if encode:
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]
    return app


def make_server_app(ini_path: str) -> Callable:
    from paste.deploy import loadapp
    return loadapp("config:" + ini_path)


# -- the clients ---------------------------------------------------------------------------

class Tally:
    """What the clients saw, shared by their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.errors: Dict[str, int] = {}
        self.examples: List[str] = []
        self.labels: Dict[str, int] = {}
        self.latencies: List[float] = []
        self.per_second: Dict[int, int] = {}
        self.slow: List[Tuple[float, float, str, str]] = []  # (finished at, seconds, request, X-Cache)

    def count(self, label: Optional[str], seconds: float, what: str = "") -> None:
        with self.lock:
            self.requests += 1
            if seconds >= SLOW:
                self.slow.append((time.monotonic(), seconds, what, label or "-"))
            self.labels[label or "-"] = self.labels.get(label or "-", 0) + 1
            self.latencies.append(seconds)
            second = int(time.monotonic())
            self.per_second[second] = self.per_second.get(second, 0) + 1

    def error(self, kind: str, detail: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if len(self.examples) < 10:
                self.examples.append(f"{kind}: {detail}")


def pick(rng: random.Random) -> Tuple[str, str, Dict[str, str], str]:
    """(method, path, headers, what the body must start with) of one request."""
    roll = rng.random()
    headers: Dict[str, str] = {}
    if roll < 0.35:
        path = f"/hot/{rng.randrange(HOT)}"
    elif roll < 0.60:
        path = f"/item/{rng.randrange(ITEMS)}"
    elif roll < 0.72:
        path = f"/cold/{rng.getrandbits(64):x}"
    elif roll < 0.82:
        path = f"/vary/{rng.randrange(VARY)}"
        headers["Accept-Encoding"] = rng.choice(ENCODINGS)
        return "GET", path, headers, f"{path}|"
    elif roll < 0.88:
        path = f"/private/{rng.randrange(PRIVATE)}"
    elif roll < 0.91:
        path = f"/big/{rng.randrange(5)}"
    elif roll < 0.96:
        path = f"/uncached/{rng.randrange(100)}"
    else:
        return "PURGE", f"/hot/{rng.randrange(HOT)}", headers, ""
    return "GET", path, headers, f"{path}||"


def representation_problem(response: http.client.HTTPResponse, body: bytes, headers: Dict[str, str],
                           expected: str) -> str:
    """What is wrong with a 200 answer for this client ('' if nothing): the
    page of the URL, in a coding the client accepts. A page that varies on
    ``Accept-Encoding`` may come from a rendering for another client: the
    application's answer is the same page whatever its coding."""
    coding = response.getheader("Content-Encoding", "identity")
    if coding == "gzip":
        if "gzip" not in headers.get("Accept-Encoding", ""):
            return "coding not accepted"
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            return "body does not decode"
    elif coding != "identity":
        return "coding not accepted"
    if not body.startswith(expected.encode("utf-8")):
        return "wrong page"
    if "Accept-Encoding" in headers and "accept-encoding" not in response.getheader("Vary", "").lower():
        return "no Vary"
    return ""


def client_loop(port: int, stop: threading.Event, tally: Tally, seed: int) -> None:
    """Requests on one keep-alive connection (a new one after any failure)."""
    rng = random.Random(seed)
    connection: Optional[http.client.HTTPConnection] = None
    while not stop.is_set():
        method, path, headers, expected = pick(rng)
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.monotonic()
        try:
            connection.request(method, path, headers=dict(headers, Host="soak.example"))
            response = connection.getresponse()
            body = response.read()
            label = response.getheader("X-Cache")
        except (OSError, http.client.HTTPException) as error:
            tally.error("connection", f"{method} {path}: {error!r}")
            connection.close()
            connection = None
            continue
        tally.count(label, time.monotonic() - started, f"{method} {path}")
        if response.status >= 500:
            tally.error("5xx", f"{method} {path}: {response.status} {body[:100]!r}")
        elif method == "PURGE":
            if response.status not in (200, 404):
                tally.error("purge", f"PURGE {path}: {response.status} {body[:100]!r}")
        elif response.status != 200:
            tally.error("wrong page", f"{path} {headers}: {response.status} {body[:80]!r}")
        else:
            problem = representation_problem(response, body, headers, expected)
            if problem:
                tally.error(problem, f"{path} {headers}: {response.getheader('Content-Encoding')} {body[:80]!r}")
        if response.getheader("Connection", "").lower() == "close":
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


# -- faults --------------------------------------------------------------------------------

def fault_loop(servers: List[MemcachedServer], stop: threading.Event, interval: float,
               windows: List[Tuple[float, float, str]]) -> None:
    """Every ``interval`` seconds, the next fault in turn; each lasts about 1.5 s."""
    first, second = servers

    def kill_one():
        first.kill()
        stop.wait(1.5)
        first.start()

    def restart_one():
        second.restart()

    def hang_one():
        first.pause()
        stop.wait(1.5)
        first.resume()

    def kill_all():
        for server in servers:
            server.kill()
        stop.wait(1.5)
        for server in servers:
            server.start()

    faults = [("kill one server", kill_one), ("restart one server", restart_one),
              ("hang one server (SIGSTOP)", hang_one), ("kill both servers", kill_all)]
    number = 0
    while not stop.wait(interval):
        name, fault = faults[number % len(faults)]
        started = time.monotonic()
        fault()
        windows.append((started, time.monotonic() + 2.0, name))  # + memcached_retry: recovery
        number += 1


def rss_kb(pid: int) -> int:
    return common.status_kb("VmRSS", str(pid))


# -- one run -------------------------------------------------------------------------------

def soak(library: str, seconds: float, clients: int, interval: float) -> Dict:
    """Drive one server for ``seconds`` with ``library``; what was seen."""
    servers = [MemcachedServer(lru_maintainer=True).start(), MemcachedServer(lru_maintainer=True).start()]
    directory = tempfile.mkdtemp(prefix="pagecache-soak-")
    ini_path = os.path.join(directory, "soak.ini")
    with open(ini_path, "w") as f:
        f.write(INI.format(servers=" ".join(s.address for s in servers), client=library))
    server = AppServer(lambda: make_server_app(ini_path), threads=max(8, clients))
    stop = threading.Event()
    faults_stop = threading.Event()
    tally = Tally()
    windows: List[Tuple[float, float, str]] = []
    samples: List[Tuple[float, int]] = []
    threads: List[threading.Thread] = []
    try:
        server.start()
        pid = server.process.pid
        threads = [threading.Thread(target=client_loop, args=(server.port, stop, tally, seed), daemon=True)
                   for seed in range(clients)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        warmup = max(3.0, seconds * 0.15)
        fault_thread = threading.Thread(target=fault_loop, args=(servers, faults_stop, interval, windows),
                                        daemon=True)
        fault_thread.start()
        while time.monotonic() - started < seconds:
            time.sleep(1.0)
            if not server.process.is_alive():
                raise RuntimeError("the server process died")
            samples.append((time.monotonic() - started, rss_kb(pid)))
        faults_stop.set()
        fault_thread.join(30)
        for s in servers:  # every server up for the last look at the counters
            if s.process is None:
                s.start()
            s.resume()
        stop.set()
        for thread in threads:
            thread.join(60)
        stats = fetch_stats(server.port)
        ended = time.monotonic()
    finally:
        stop.set()
        faults_stop.set()
        server.stop()
        for s in servers:
            s.stop()
        os.unlink(ini_path)
        os.rmdir(directory)
    after_warmup = [kb for at, kb in samples if at >= warmup]
    start_kb = statistics.median(after_warmup[:3]) if after_warmup else samples[0][1]
    end_kb = statistics.median([kb for _, kb in samples[-3:]])
    return dict(tally=tally, stats=stats, windows=windows, start_kb=start_kb, end_kb=end_kb,
                peak_kb=max(kb for _, kb in samples), first_kb=samples[0][1], seconds=ended - started,
                warmup=warmup)


def fetch_stats(port: int) -> Dict:
    import json
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/_pagecache/stats", headers={"Host": "soak.example"})
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def throughput_ratio(tally: Tally, windows: List[Tuple[float, float, str]]) -> Optional[float]:
    """Requests per second in seconds with a fault (or its recovery) on,
    against seconds without; None if either kind is missing."""
    seconds = sorted(tally.per_second)[1:-1]  # the first and last are partial
    if not seconds:
        return None

    def faulty(second: int) -> bool:
        return any(start - 1 <= second <= end for start, end, _ in windows)
    inside = [tally.per_second[s] for s in seconds if faulty(s)]
    outside = [tally.per_second[s] for s in seconds if not faulty(s)]
    if not inside or not outside:
        return None
    return statistics.mean(inside) / statistics.mean(outside)


def report(library: str, got: Dict) -> None:
    tally: Tally = got["tally"]
    stats = got["stats"]
    errors = sum(tally.errors.values())
    latencies = sorted(tally.latencies)
    faults: Dict[str, int] = {}
    for _, _, name in got["windows"]:
        faults[name] = faults.get(name, 0) + 1
    common.note(f"{library}: {got['seconds']:.0f} s, {tally.requests} requests "
                f"({tally.requests / got['seconds']:.0f}/s), X-Cache: "
                + ", ".join(f"{k} {v}" for k, v in sorted(tally.labels.items())))
    common.note("faults: " + (", ".join(f"{name} x{n}" for name, n in faults.items()) or "none"))
    common.note("server counters: " + ", ".join(f"{k} {stats.get(k)}" for k in (
        "hits", "stale", "misses", "stores", "store_failures", "passes", "purges", "waits",
        "wait_timeouts", "memcached_errors")))
    if latencies:
        median, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        common.note(f"latency: median {median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
                    f"max {latencies[-1] * 1000:.0f} ms")
    common.note(f"server RSS: {got['first_kb'] / 1024:.1f} MB at 1 s, {got['start_kb'] / 1024:.1f} MB after "
                f"the {got['warmup']:.0f} s warm-up, {got['end_kb'] / 1024:.1f} MB at the end, "
                f"peak {got['peak_kb'] / 1024:.1f} MB")
    for example in tally.examples:
        common.note("error: " + example)
    if tally.slow:
        common.note(f"{len(tally.slow)} requests took {SLOW:g} s or more (wait_timeout is 2 s), e.g.:")
        for at, seconds, what, label in sorted(tally.slow, key=lambda item: -item[1])[:5]:
            fault = min(got["windows"], key=lambda w: abs(w[0] - at), default=None)
            near = f"{at - fault[0]:+.1f} s from the start of '{fault[2]}'" if fault else "no fault"
            common.note(f"  {seconds:.2f} s {what} (X-Cache: {label}), {near}")
    common.result(f"{library}: requests served", tally.requests, None, unit="requests")
    common.result(f"{library}: errors caused by the cache (5xx, wrong page, connection)", errors, "<= 0",
                  unit="errors")
    common.result(f"{library}: server resident memory, end / after warm-up", got["end_kb"] / got["start_kb"],
                  "<= 1.10")
    ratio = throughput_ratio(tally, got["windows"])
    if ratio is not None:
        common.result(f"{library}: throughput during memcached faults / outside", ratio)


def main(args: list) -> int:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0,
                        help="seconds in all (split between the clients); default 180")
    parser.add_argument("--quick", action="store_true", help="about 20 seconds, to try it")
    parser.add_argument("--client", choices=CLIENT_LIBRARIES + ("both",), default="both",
                        help="memcached client library; default both, one after the other")
    parser.add_argument("--clients", type=int, default=8, help="client threads (connections); default 8")
    options = parser.parse_args(args)
    duration = 20.0 if options.quick else options.duration
    libraries = CLIENT_LIBRARIES if options.client == "both" else (options.client,)
    each = duration / len(libraries)
    interval = max(2.5, min(15.0, each / 8))
    print(f"soak: {each:.0f} s per client library, {options.clients} client threads, a memcached fault "
          f"every {interval:.1f} s", flush=True)
    for library in libraries:
        report(library, soak(library, each, options.clients, interval))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
