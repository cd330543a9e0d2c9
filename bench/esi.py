"""ESI benchmark: what a page assembled from cached fragments costs a hit, and
what personal fragments in a cached page are worth to logged-in users.

1. A hit on a 5 KB page holding three cached fragments (``Surrogate-Control:
   content="ESI/1.0"``, three ``<esi:include>`` of 300-byte fragments each
   cached by a rule): hit_path's harness (in-process, sequential, real
   memcached, interleaved blocks, median), against one ``get`` of the stored
   page with the same client plus a trivial WSGI call. Target: at most 1.5x.
   Done with python-memcached and with pymemcache. The per-hit microseconds
   are shown, beside a hit on a plain 5 KB page and a bare ``get_multi`` of
   the four keys; when the target is missed, where an ESI hit's time goes
   (its steps timed one by one; ``--profile`` adds cProfile's view).
2. Requests per second for logged-in users (every request carries a session
   cookie, ``session=user-<n>``, a thousand users drawn at random by wrk's
   Lua script; without wrk, one user per connection of the Python load
   generator) on a page whose body takes 100 ms to render and whose greeting
   is a personal fragment (a pass rule; its view takes 5 ms and reads the
   cookie), against the same site without ESI (the greeting rendered in the
   page, so every logged-in request bypasses the cache and renders the 100 ms
   page). Both are the INI filter in front of the site, served by waitress (8
   threads) in a process of their own, a fresh one every turn, both loaded at
   once (throughput's method: the median of the per-turn ratios). Target: at
   least 10x. For information, the same with ``esi_workers = 8`` (as many as
   waitress's threads; the default, 4, bounds how many personal fragments a
   process renders at once), and each side's server CPU per request.

    python bench/run.py esi [-- --rounds N --turns N --seconds S --profile --skip-hit --no-workers
                                --extra "esi_workers = 8"]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Callable, Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import hit_path  # noqa: E402  (its harness: the environ, serve(), the trivial app)

from pagecache import PageCacheMiddleware  # noqa: E402
from tests.servers import AppServer  # noqa: E402

HIT_TARGET = "<= 1.5"
RATE_TARGET = ">= 10"
ESI_MARKER = ("Surrogate-Control", 'content="ESI/1.0"')
FRAGMENT_SIZE = 300
USERS = 1000
PAGE_RENDER, FRAGMENT_RENDER = 0.100, 0.005   # seconds


# -- 1. the hit ---------------------------------------------------------------

def _fragment_body(name: str) -> bytes:
    return (f"<section id=fragment-{name}>".encode("ascii") + b"f" * FRAGMENT_SIZE)[:FRAGMENT_SIZE - 10] \
        + b"</section>"


def _esi_page_body() -> bytes:
    """A 5 KB page with three includes spread through it."""
    filler = (common.PAGE_SIZE - 200) // 4
    parts = [b"<!doctype html><title>bench</title>"]
    for name in "abc":
        parts += [b"x" * filler, f'<esi:include src="/fragments/{name}"/>'.encode("ascii")]
    parts.append(b"x" * filler)
    return b"".join(parts)


ESI_PAGE = _esi_page_body()


def hit_app(environ: Dict, start_response: Callable) -> List[bytes]:
    """The application behind the cache (called once per URL, to fill it)."""
    path = environ["PATH_INFO"]
    if path.startswith("/fragments/"):
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [_fragment_body(path.rsplit("/", 1)[1])]
    if path == "/plain":
        start_response("200 OK", list(hit_path.HEADERS))
        return [hit_path.BODY]
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "public"),
                              ESI_MARKER])
    return [ESI_PAGE]


def environ_for(path: str) -> Dict:
    environ = hit_path.request_environ()
    environ["PATH_INFO"] = environ["REQUEST_URI"] = path
    return environ


def measure_hit(server: common.MemcachedServer, library: str, rounds: int, profile: bool) -> None:
    middleware = PageCacheMiddleware(hit_app, "/fragments/ 1h 1h\n/ 1h 1h", memcached_servers=[server.address],
                                     memcached_client=library, key_prefix=f"esi-hit-{library}")
    page, plain = environ_for("/articles/42"), environ_for("/plain")
    for environ in (page, page, page, plain, plain):   # MISS (fragments too), first assembly, then warm hits
        hit_path.serve(middleware, dict(environ))
    seen: List = []
    body = b"".join(middleware(dict(page), lambda status, headers, exc_info=None: seen.append(headers)))
    labels = dict(seen[0])
    expected = ESI_PAGE
    for name in "abc":
        expected = expected.replace(f'<esi:include src="/fragments/{name}"/>'.encode("ascii"), _fragment_body(name))
    if labels.get("X-Cache") != "HIT" or body != expected:
        raise RuntimeError(f"the ESI page was not assembled from the cache: {labels}")
    route = middleware.routes[("/articles/42", "", page["HTTP_HOST"], "", "http")]
    if len(route.fragments) != 3:
        raise RuntimeError(f"the page's fragments are not read with it: {route.fragments}")
    client = middleware.cache   # the middleware's own client, hence its connection (see hit_path)
    keys = list((route.key,) + route.fragments)
    get_multi = getattr(client, "get_multi", None) or client.get_many
    if not client.get(route.key) or len(get_multi(keys)) != 4:
        raise RuntimeError("the bare client did not find the page and its fragments")

    def bare() -> int:
        client.get(route.key)
        return hit_path.serve(hit_path.trivial_app, page)

    times = common.interleaved({
        "esi": lambda: hit_path.serve(middleware, page),
        "bare": bare,
        "plain": lambda: hit_path.serve(middleware, plain),
        "get": lambda: client.get(route.key),
        "get_multi": lambda: get_multi(keys),
    }, rounds=rounds)
    common.note(f"{library}: ESI hit {common.micros(times['esi'])}, bare get + trivial app "
                f"{common.micros(times['bare'])}; plain 5 KB hit {common.micros(times['plain'])}; get alone "
                f"{common.micros(times['get'])}, get_multi of the page and its 3 fragments "
                f"{common.micros(times['get_multi'])}")
    common.result(f"hit via {library}, page with 3 cached fragments / (get + trivial app)",
                  times["esi"] / times["bare"], HIT_TARGET)
    common.result("  same, per hit", times["esi"] * 1e6, unit="µs")
    common.result("  plain 5 KB hit / (get + trivial app), for comparison", times["plain"] / times["bare"])
    common.result("  get_multi of the 4 keys / get of the page (the round trip)", times["get_multi"] / times["get"])
    common.result("  the rest of an ESI hit (hit - get_multi - trivial app)",
                  (times["esi"] - times["get_multi"] - (times["bare"] - times["get"])) * 1e6, unit="µs")
    if times["esi"] / times["bare"] > float(HIT_TARGET.split()[1]):
        explain(middleware, page, route, rounds)
    if profile:
        show_profile(middleware, page)


def explain(middleware: PageCacheMiddleware, environ: Dict, route: object, rounds: int) -> None:
    """Where an ESI hit's time goes: its steps timed one by one (interleaved,
    median), with the middleware's own objects. They are pagecache's internals
    as they are today: if they changed, say so rather than fail the run."""
    from pagecache import esi as parsing, http
    from pagecache.exchange import Exchange, Label

    try:
        fragments = middleware.fragments
        keys = [route.key, *route.fragments]
        found = middleware.store.load_many(keys)
        page = found[route.key]
        parts = fragments.parts(page)
        page_url = fragments._url(environ, route)
        urls = [parsing.resolve(page_url, include.src) for include in parsing.includes(parts)]
        cached = fragments._cached(environ, urls, found)[1]
        body, infos = fragments.assemble(environ, route, page, found)[1:]
        client = middleware.cache
        get_multi = getattr(client, "get_multi", None) or client.get_many
        steps: Dict[str, Callable[[], object]] = {
            "the whole hit": lambda: hit_path.serve(middleware, environ),
            "get of the page": lambda: client.get(route.key),
            "get_multi of the page alone": lambda: get_multi(keys[:1]),
            "get_multi of the page and its 3 fragments": lambda: get_multi(keys),
            "Store.load_many of them (get_multi, bytes compared with the last parse)":
                lambda: middleware.store.load_many(keys),
            "Fragments.assemble (all of the assembly)": lambda: fragments.assemble(environ, route, page, found),
            "  _cached: routes of the 3 URLs, a copy of the environ for bypass_reason, freshness":
                lambda: fragments._cached(environ, urls, found),
            "    of which the environ copy (_sub_environ)": lambda: fragments._sub_environ(environ, urls[0], ()),
            "  _from_cache of the 3 fragments (routes again, counters)":
                lambda: [fragments._from_cache(environ, route, url, cached[url][1], (page_url,)) for url in cached],
            "  esi.assemble with the fragments at hand":
                lambda: parsing.assemble(parts, page_url, {url: parsing.Fetched(True, (b"f" * 300,), None)
                                                           for url in urls}.__getitem__, 1),
            "  _headers (Content-Length, ETag)": lambda: fragments._headers(page.headers, body, infos),
            "    of which the ETag (blake2b of the assembled body)": lambda: http.make_etag(body),
            "deliver's decision record (_decided: the dashboard's recent list, every ESI hit)":
                lambda: middleware._decided(Exchange(environ, None, route, 0.0), Label.HIT, "fragments: [...]"),
        }
        times = common.interleaved(steps, rounds=max(20, rounds // 3), block=50, warmup=50)
    except Exception as error:  # noqa: BLE001 (information only)
        common.note(f"(no breakdown: pagecache's internals changed: {error!r})")
        return
    common.note("where an ESI hit's time goes (each step alone, median µs):")
    for name, seconds in times.items():
        common.note(f"  {seconds * 1e6:7.1f}  {name}")


def show_profile(middleware: PageCacheMiddleware, environ: Dict, hits: int = 20000) -> None:
    """Where the time of an ESI hit goes: cProfile of ``hits`` hits, by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(hits):
        hit_path.serve(middleware, environ)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_stats(18)
    common.note(f"cProfile of {hits} ESI hits (own time; cProfile slows Python calls down, not the round trip):")
    for line in out.getvalue().splitlines():
        if re.match(r"\s*\d+", line) or "ncalls" in line:
            common.note("  " + line.rstrip())


# -- 2. logged-in users -----------------------------------------------------------

INI = """\
[pipeline:main]
pipeline = pagecache site

[filter:pagecache]
use = egg:pagecache#main
memcached_servers = {server}
memcached_timeout = 2s
memcached_retry = 1s
key_prefix = bench-esi-{name}
cached_urls =
    /fragments/   pass
    /page         1h  1h
{extra}

[app:site]
use = call:esi:site_factory
esi = {esi}
"""

PAGE_TEXT = (b"<p>" + b"news " * 1000 + b"</p>")[:common.PAGE_SIZE - 200]


def _user(environ: Dict) -> str:
    match = re.search(r"(?:^|;)\s*session=([\w-]+)", environ.get("HTTP_COOKIE", ""))
    return match.group(1) if match else "visitor"


def site_factory(global_conf: Dict[str, str], esi: str = "true") -> Callable:
    """The site (``use = call:esi:site_factory``): /page takes 100 ms, its
    greeting (a view of 5 ms reading the session cookie) is a fragment with
    ``esi = true``, part of the page without."""
    with_esi = esi == "true"

    def greeting(environ: Dict) -> bytes:
        time.sleep(FRAGMENT_RENDER)
        return f"<p id=greeting>Hello, {_user(environ)}</p>".encode("ascii")

    def site(environ: Dict, start_response: Callable) -> List[bytes]:
        if environ["PATH_INFO"] == "/fragments/greeting":
            body = greeting(environ)
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                      ("Content-Length", str(len(body))), ("Cache-Control", "private")])
            return [body]
        time.sleep(PAGE_RENDER)
        headers = [("Content-Type", "text/html; charset=utf-8")]
        if with_esi:
            personal = b'<esi:include src="/fragments/greeting"/>'
            headers += [("Cache-Control", "public"), ESI_MARKER]
        else:
            personal = greeting(environ)
            if "HTTP_COOKIE" in environ:
                headers.append(("Cache-Control", "private"))
        body = b"<!doctype html><title>bench</title>" + personal + PAGE_TEXT
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]
    return site


def site_maker(directory: str, name: str, server: str, esi: bool, extra: str = "") -> Callable[[], Callable]:
    path = os.path.join(directory, f"{name}.ini")
    with open(path, "w") as f:
        f.write(INI.format(server=server, name=name, esi="true" if esi else "false", extra=extra))

    def make() -> Callable:
        from paste.deploy import loadapp
        return loadapp("config:" + path)
    return make


def ask(url: str, cookie: str = "") -> tuple:
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers.get("X-Cache"), response.read()


def check(url: str, esi: bool) -> None:
    """An anonymous request stores the page; then a logged-in user's is a HIT
    greeting them (with ESI) or a BYPASS (without)."""
    ask(url)
    label, body = ask(url, "session=user-7")
    if label != ("HIT" if esi else "BYPASS") or b"<p id=greeting>Hello, user-7</p>" not in body:
        raise RuntimeError(f"{url} (esi={esi}): {label} {body[:120]!r}")


WRK_SCRIPT = f"""
math.randomseed(os.time())
request = function()
  return wrk.format(nil, nil, {{["Cookie"] = "session=user-" .. math.random(1, {USERS})}})
end
"""


def load(urls: Sequence[str], connections: int, seconds: float, script: str) -> List[common.Load]:
    """common.load with a session cookie on every request: wrk with a Lua
    script drawing one of the users per request, else the Python load
    generator below (one user per connection)."""
    wrk = common.wrk_path()
    if wrk:
        seconds = max(1, round(seconds))
        commands = [[wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script, url] for url in urls]
    else:
        commands = [[sys.executable, os.path.abspath(__file__), "loadgen", url, str(connections), str(seconds)]
                    for url in urls]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=common.ROOT) for command in commands]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=seconds + 60)
        if process.returncode != 0:
            raise RuntimeError(f"the load generator failed ({process.returncode}): {err or out}")
        if wrk:
            if "Non-2xx" in out or re.search(r"Socket errors: .*(?:read|write|timeout) [1-9]", out):
                raise RuntimeError(f"wrk saw errors:\n{out}")
            results.append(common.Load(float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1)),
                                       int(re.search(r"(\d+) requests in", out).group(1))))
        else:
            rps, requests = out.strip().splitlines()[-1].split()
            results.append(common.Load(float(rps), int(requests)))
    return results


async def _generate(url: str, connections: int, seconds: float) -> tuple:
    match = re.match(r"http://([^/:]+):(\d+)(/.*)?$", url)
    host, port, path = match.group(1), int(match.group(2)), match.group(3) or "/"
    counts: List[int] = []
    started = time.monotonic()
    requests = [(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench\r\n"
                 f"Cookie: session=user-{random.randint(1, USERS)}\r\n\r\n").encode("ascii")
                for _ in range(connections)]
    await asyncio.gather(*(common._connection(host, port, request, started + seconds, counts)
                           for request in requests))
    return sum(counts), time.monotonic() - started


def measure_rate(server: common.MemcachedServer, options: argparse.Namespace, extra: str = "",
                 target: bool = True) -> None:
    """The comparison of 2.; ``extra``: more filter options of the ESI side
    (a line each); without ``target``, an information line."""
    with tempfile.TemporaryDirectory(prefix="pagecache-bench-esi-") as directory:
        script = os.path.join(directory, "cookies.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT)
        makers = {"esi": site_maker(directory, "esi", server.address, True, extra),
                  "inline": site_maker(directory, "inline", server.address, False)}
        rates: Dict[str, List[float]] = {"esi": [], "inline": []}
        cpu: Dict[str, List[float]] = {"esi": [], "inline": []}
        ratios = []
        for turn in range(options.turns):
            order = ["esi", "inline"] if turn % 2 == 0 else ["inline", "esi"]
            servers = {}
            try:
                for name in order:
                    servers[name] = AppServer(makers[name], threads=8).start()
                urls = [servers[name].url + "/page" for name in order]
                for name, url in zip(order, urls):
                    check(url, name == "esi")
                load(urls, options.connections, 1, script)  # warm-up
                before = {name: common.cpu_seconds(servers[name].process.pid) for name in order}
                got = dict(zip(order, load(urls, options.connections, options.seconds, script)))
                for name in order:
                    used = common.cpu_seconds(servers[name].process.pid) - before[name]
                    cpu[name].append(used / max(1, got[name].requests))
            finally:
                for started in servers.values():
                    started.stop()
            for name in order:
                rates[name].append(got[name].rps)
            ratios.append(got["esi"].requests / got["inline"].requests)
        for name, words in (("esi", "with ESI (page from the cache, greeting rendered)"),
                            ("inline", "without (every logged-in request renders the page)")):
            common.note(f"{words}: median {statistics.median(rates[name]):.0f} req/s "
                        f"(turns: {', '.join(f'{r:.0f}' for r in rates[name])}), server CPU "
                        f"{statistics.median(cpu[name]) * 1e6:.0f} µs/request")
        common.note(f"ratios of the turns: {', '.join(f'{r:.2f}' for r in ratios)}")
        if target:
            common.result("logged-in req/s, cached page + personal fragment / no ESI",
                          statistics.median(ratios), RATE_TARGET)
        else:
            common.result(f"  same, with {extra.strip()} (information)", statistics.median(ratios))


def main(args: list) -> int:
    parser = argparse.ArgumentParser(prog="esi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=150, help="interleaved blocks per variant (hit)")
    parser.add_argument("--turns", type=int, default=5, help="turns of the requests/s comparison")
    parser.add_argument("--seconds", type=int, default=2, help="length of one turn (whole seconds)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections per side")
    parser.add_argument("--profile", action="store_true", help="show where an ESI hit's time goes")
    parser.add_argument("--extra", default="", help="more filter options of the ESI side, ';'-separated "
                        "(esi_workers = 8)")
    parser.add_argument("--skip-hit", action="store_true", help="only the requests/s comparison")
    parser.add_argument("--no-workers", dest="workers_too", action="store_false",
                        help="leave out the information run with esi_workers = 8")
    options = parser.parse_args(args)
    print("esi: 1. in-process hits on a 5 KB page with 3 cached fragments, memcached on loopback")
    with common.memcached() as server:
        for library in () if options.skip_hit else common.CLIENTS:
            measure_hit(server, library, options.rounds, options.profile)
        print(f"esi: 2. logged-in users, waitress (8 threads) per side, {common.load_generator_name()}, "
              f"{options.connections} connections, {options.turns} turns of {options.seconds}s, both sides at once")
        measure_rate(server, options, options.extra.replace(";", "\n"))
        if not options.extra and options.workers_too:
            # The personal fragments of a process render on its esi_workers threads (4): with one fragment of
            # 5 ms per request, at most about 4 / 5 ms = 800 requests/s. With as many as waitress has threads:
            common.note("the same with esi_workers = 8 (waitress's threads), to show what the pool bounds:")
            measure_rate(server, options, "esi_workers = 8", target=False)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "loadgen":
        done, elapsed = asyncio.run(_generate(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
        print(f"{done / elapsed} {done}")
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
