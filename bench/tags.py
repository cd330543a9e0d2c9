"""Tags benchmark: what tags cost a hit, what a tag purge costs, and what a
soft tag purge costs the application.

1. hit on a page with 5 tags / hit on an untagged page: hit_path's harness
   (in-process, sequential, real memcached, interleaved blocks, median), both
   pages served by one middleware over one client. Target: at most 1.10x with
   the default ``tag_check_interval`` (1 s: a page's tags are looked up in
   process memory, memcached is asked about them once a second). With
   ``tag_check_interval = 0`` every hit asks memcached: information only.
   The memcached operations per hit are counted with a wrapper client.
2. purging one tag carried by 10,000 stored pages: its time and memcached
   operations, beside purging the same 10,000 URLs one by one with
   ``middleware.purge(url)``. A tag purge must not depend on the number of
   pages: the same purge of a tag carried by 1,000 pages, interleaved with
   it, must take as long (target: 10,000 / 1,000 at most 1.5x), with one
   memcached ``set``.
3. a soft purge of a tag carried by 100 pages under load: 64 concurrent
   clients (threads, keep-alive connections) ask for those pages from 2
   waitress processes sharing memcached, the application taking
   ``--render-ms`` per page, until every page has been rebuilt; application
   calls per page (target: 1), against the 64 a page would cost without a
   cache.

    python bench/run.py tags [-- --rounds N --render-ms MS]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import os
import random
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import hit_path  # noqa: E402  (its harness: the environ, serve(), the 5 KB body)

from pagecache import PageCacheMiddleware  # noqa: E402
from pagecache.backends import memcached_client  # noqa: E402
from pagecache.entry import Page  # noqa: E402
from tests.servers import AppServer  # noqa: E402

HIT_TARGET = "<= 1.10"
CONSTANT_TARGET = "<= 1.5"
FIVE_TAGS = "article-42 author-7 section-news front tag-caching"
HOST = "bench.example"


class Counting:
    """A memcached client that counts the operations made through it, by name."""

    def __init__(self, client: Any):
        self._client = client
        self.ops: collections.Counter = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute
        ops = self.ops

        def counted(*args: Any, **kwargs: Any) -> Any:
            ops[name] += 1
            return attribute(*args, **kwargs)
        return counted

    def total(self) -> int:
        return sum(self.ops.values())

    def reset(self) -> None:
        self.ops.clear()


def tagged_app(environ: Dict, start_response: Callable) -> List[bytes]:
    """hit_path's page, with 5 tags on /articles/42 and none elsewhere."""
    headers = list(hit_path.HEADERS)
    if environ["PATH_INFO"] == "/articles/42":
        headers.append(("Surrogate-Key", FIVE_TAGS))
    start_response("200 OK", headers)
    return [hit_path.BODY]


def environ_for(path: str) -> Dict:
    environ = hit_path.request_environ()
    environ["PATH_INFO"] = environ["REQUEST_URI"] = path
    return environ


def hit_label(middleware: Callable, environ: Dict) -> str:
    seen: List = []
    middleware(dict(environ), lambda status, headers, exc_info=None: seen.append(dict(headers)))
    return seen[0].get("X-Cache", "")


# -- 1. the hit ----------------------------------------------------------------------


def measure_hits(server: common.MemcachedServer, interval: Any, rounds: int) -> Dict[str, float]:
    middleware = PageCacheMiddleware(tagged_app, "/ 1h 1h", memcached_servers=[server.address],
                                     key_prefix=f"tags-hit-{interval}", tag_check_interval=interval)
    tagged, untagged = environ_for("/articles/42"), environ_for("/articles/43")
    for environ in (tagged, untagged):
        hit_path.serve(middleware, dict(environ))
        if hit_label(middleware, environ) != "HIT":
            raise RuntimeError(f"{environ['PATH_INFO']} was not served from the cache")
    page = middleware.store.load(middleware.keys.page(middleware.keys.digest(tagged)))
    if type(page) is not Page or len(page.tags) != 5:
        raise RuntimeError(f"the tagged page was not stored with its 5 tags: {page!r}")
    return common.interleaved({
        "tagged": lambda: hit_path.serve(middleware, tagged),
        "untagged": lambda: hit_path.serve(middleware, untagged),
    }, rounds=rounds)


def ops_per_hit(server: common.MemcachedServer, interval: Any, path: str, hits: int = 200) -> Dict[str, float]:
    """memcached operations per hit on ``path`` (in one go: about ``hits`` ms
    for the default interval, so its once-a-second look shows up as 0)."""
    client = Counting(memcached_client([server.address]))
    middleware = PageCacheMiddleware(tagged_app, "/ 1h 1h", client, key_prefix=f"tags-ops-{interval}",
                                     tag_check_interval=interval)
    environ = environ_for(path)
    hit_path.serve(middleware, dict(environ))
    hit_path.serve(middleware, dict(environ))
    client.reset()
    for _ in range(hits):
        hit_path.serve(middleware, environ)
    return {name: count / hits for name, count in sorted(client.ops.items())}


def shown(ops: Dict[str, float]) -> str:
    return ", ".join(f"{count:g} {name}" for name, count in ops.items()) or "none"


def bench_hits(server: common.MemcachedServer, rounds: int) -> None:
    print("1. a hit on a page with 5 tags / a hit on an untagged page (in-process, sequential, 5 KB)")
    default = measure_hits(server, "1s", rounds)
    common.note(f"tag_check_interval = 1s: tagged {common.micros(default['tagged'])}, "
                f"untagged {common.micros(default['untagged'])}; memcached operations per hit: "
                f"tagged {shown(ops_per_hit(server, '1s', '/articles/42'))}, "
                f"untagged {shown(ops_per_hit(server, '1s', '/articles/43'))}")
    common.result("hit, 5 tags / untagged (tag_check_interval = 1s)", default["tagged"] / default["untagged"],
                  HIT_TARGET)
    eager = measure_hits(server, 0, rounds)
    common.note(f"tag_check_interval = 0: tagged {common.micros(eager['tagged'])}, "
                f"untagged {common.micros(eager['untagged'])}; memcached operations per hit: "
                f"tagged {shown(ops_per_hit(server, 0, '/articles/42'))}, "
                f"untagged {shown(ops_per_hit(server, 0, '/articles/43'))}")
    common.result("hit, 5 tags / untagged (tag_check_interval = 0)", eager["tagged"] / eager["untagged"])
    common.result("hit, 5 tags, interval 0 / untagged, interval 1s", eager["tagged"] / default["untagged"])


# -- 2. the purge ---------------------------------------------------------------------


def page_app(environ: Dict, start_response: Callable) -> List[bytes]:
    """A small page tagged as its query says (``?tag=t10k``)."""
    tag = environ["QUERY_STRING"].partition("tag=")[2]
    body = b"page %s" % environ["PATH_INFO"].encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Surrogate-Key", f"{tag} every-page")])
    return [body]


def bench_purge(server: common.MemcachedServer, pages: int, small: int, rounds: int) -> None:
    print(f"2. purging one tag carried by {pages:,} pages, and those {pages:,} URLs one by one")
    client = Counting(memcached_client([server.address]))
    middleware = PageCacheMiddleware(page_app, "/ 1h 1h", client, key_prefix="tags-purge")
    urls = {"t10k": [f"/big/{n}?tag=t10k" for n in range(pages)],
            "t1k": [f"/small/{n}?tag=t1k" for n in range(small)]}
    started = time.perf_counter()
    for group in urls.values():
        for url in group:
            path, _, query = url.partition("?")
            environ = environ_for(path)
            environ["QUERY_STRING"] = query
            hit_path.serve(middleware, environ)
    stored = middleware.stats["stores"]
    if stored != pages + small:
        raise RuntimeError(f"{stored} pages stored of {pages + small}")
    common.note(f"stored {stored:,} pages in {time.perf_counter() - started:.1f} s")

    # the time of one tag purge, for a tag on 10,000 pages and one on 1,000, interleaved
    times = common.interleaved({
        "t10k": lambda: middleware.purge_tags(["t10k"]),
        "t1k": lambda: middleware.purge_tags(["t1k"]),
    }, rounds=rounds, block=5, warmup=20)
    client.reset()
    if middleware.purge_tags(["t10k"]):
        raise RuntimeError("the tag purge was not taken")
    tag_ops = dict(client.ops)
    # it worked: a page of the tag is now a miss, a page of the other tag still a hit
    probe = environ_for("/big/7")
    probe["QUERY_STRING"] = "tag=t10k"
    if hit_label(middleware, probe) != "MISS" or hit_label(middleware, probe) != "HIT":
        raise RuntimeError("a page of the purged tag was not a miss, then a hit")

    client.reset()
    started = time.perf_counter()
    found = sum(middleware.purge(f"http://127.0.0.1:8080{url}") for url in urls["t10k"])
    by_url = time.perf_counter() - started
    url_ops = client.total()
    if found != pages:
        raise RuntimeError(f"the URL purge found {found} of {pages} pages")

    common.note(f"one tag purge: {common.micros(times['t10k'])} ({pages:,} pages), "
                f"{common.micros(times['t1k'])} ({small:,} pages); memcached operations: "
                f"{shown(tag_ops)}")
    common.note(f"{pages:,} URLs purged one by one: {by_url * 1000:.0f} ms, {url_ops:,} memcached operations "
                f"({url_ops / pages:g} per URL)")
    common.result(f"purge 1 tag on {pages:,} pages / on {small:,} pages (time)", times["t10k"] / times["t1k"],
                  CONSTANT_TARGET)
    common.result(f"purge 1 tag on {pages:,} pages: memcached operations", sum(tag_ops.values()), "<= 1",
                  unit="ops")
    common.result(f"purge {pages:,} URLs one by one / purge 1 tag on them (time)", by_url / times["t10k"])


# -- 3. a soft purge under load -------------------------------------------------------------


class SlowSite:
    """Pages ``/p/<n>`` tagged ``hot``, rendered in ``render`` seconds; per-page
    call counts shared by every server process."""

    def __init__(self, render: float, pages: int):
        self.render = render
        self.calls = AppServer.context.Array("i", pages)

    def __call__(self, environ: Dict, start_response: Callable) -> List[bytes]:
        number = int(environ["PATH_INFO"].rsplit("/", 1)[1])
        with self.calls.get_lock():
            self.calls[number] += 1
        time.sleep(self.render)
        body = b"page %d rendered at %.6f" % (number, time.time())
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                                  ("Surrogate-Key", f"hot page-{number}")])
        return [body]


def bench_soft_purge(server: common.MemcachedServer, pages: int, clients: int, render_ms: float) -> None:
    print(f"3. a soft purge of a tag on {pages} pages, then {clients} concurrent clients asking for them "
          f"(app: {render_ms:g} ms a page, 2 waitress processes)")
    site = SlowSite(render_ms / 1000.0, pages)
    settings = dict(memcached_servers=server.address, key_prefix="tags-soft", wait_timeout=60)

    def make_app() -> Callable:
        return PageCacheMiddleware(site, "/ 1h 1h", **settings)
    servers = [AppServer(make_app, threads=clients).start() for _ in range(2)]
    try:
        paths = [f"/p/{n}" for n in range(pages)]
        for path in paths:
            for port in (servers[0].port, servers[1].port):
                fetch(http.client.HTTPConnection("127.0.0.1", port, timeout=60), path)
        if list(site.calls) != [1] * pages:
            raise RuntimeError(f"filling called the application {sum(site.calls)} times for {pages} pages")
        for number in range(pages):
            site.calls[number] = 0

        purger = PageCacheMiddleware(site, "/ 1h 1h", **settings)
        purged_at = time.time()
        if purger.purge_tags(["hot"], soft=True):
            raise RuntimeError("the soft purge was not taken")
        started = time.perf_counter()
        labels = load_until_rebuilt(servers, paths, clients, site, purged_at)
        took = time.perf_counter() - started
    finally:
        for app_server in servers:
            app_server.stop()
    calls = list(site.calls)
    total = sum(labels.values())
    common.note(f"{total:,} requests in {took:.1f} s: "
                + ", ".join(f"{labels[name]:,} {name}" for name in sorted(labels))
                + " (HIT old: a page rendered before the purge, served by a process within "
                  "tag_check_interval of it)")
    common.note(f"application calls per page: mean {statistics.mean(calls):.2f}, max {max(calls)}, "
                f"min {min(calls)} (without a cache: {clients} a pass)")
    common.result(f"soft purge of {pages} pages, {clients} clients: app calls per page", statistics.mean(calls),
                  "<= 1.0", unit="calls")
    common.result("soft purge: most app calls for one page", max(calls), "<= 1", unit="calls")


def fetch(connection: http.client.HTTPConnection, path: str, purged_at: float = 0.0) -> str:
    """GET ``path``; its X-Cache label, ``HIT old`` for a hit rendered before ``purged_at``."""
    connection.request("GET", path, headers={"Host": HOST})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}")
    label = response.getheader("X-Cache", "")
    if label == "HIT" and float(body.rsplit(b" ", 1)[1]) < purged_at:
        label = "HIT old"
    return label


def load_until_rebuilt(servers: List[AppServer], paths: List[str], clients: int, site: SlowSite,
                       purged_at: float) -> Dict[str, int]:
    """``clients`` threads, released together, each asking for every page,
    pass after pass, until every page has been rebuilt; the labels of all the
    answers. The clients are in 8 groups, each with an order of the pages of
    its own, so that several clients ask for a page at about the same time."""
    barrier = threading.Barrier(clients)
    done = threading.Event()
    labels: collections.Counter = collections.Counter()
    errors: List[BaseException] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", servers[number % len(servers)].port, timeout=60)
        order = list(paths)
        random.Random(number % 8).shuffle(order)
        seen: collections.Counter = collections.Counter()
        try:
            barrier.wait(60)
            while True:
                for path in order:
                    seen[fetch(connection, path, purged_at)] += 1
                if done.is_set() or all(site.calls):
                    done.set()
                    break
        except BaseException as error:
            errors.append(error)
            done.set()
        finally:
            connection.close()
            with lock:
                labels.update(seen)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]
    return labels


def main(args: list) -> int:
    parser = argparse.ArgumentParser(prog="tags", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="interleaved blocks per variant (300)")
    parser.add_argument("--pages", type=int, default=10000, help="pages carrying the purged tag (10000)")
    parser.add_argument("--render-ms", type=float, default=20.0, help="time the app takes per page in 3 (20)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients in 3 (64)")
    options = parser.parse_args(args)
    with common.memcached() as server:
        bench_hits(server, options.rounds)
        bench_purge(server, options.pages, options.pages // 10, options.rounds)
        bench_soft_purge(server, 100, options.clients, options.render_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
