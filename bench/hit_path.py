"""Benchmark 1: the cost of a cache hit, in-process, against the round trip it
can't avoid.

Sequential requests for a 5 KB page, in one thread, straight into the WSGI
callable (no server, no HTTP): pagecache answering from a real memcached,
against one ``get`` of the same stored entry with the same client object (so
the same connection), plus a call of a trivial WSGI application returning a
constant 5 KB body. Target: at most 1.15x. Done with python-memcached and
with pymemcache. Then the in-process tier (``local_ttl = 1``): its hit against
the trivial WSGI call alone (no target: it shows what is left once the round
trip is gone). The 5 KB page is stored as it is (``compression = off``), as
in 0.1; then once more with the default ``compression = gzip`` for a client
that accepts gzip, against a get of the same compressed entry.

    python bench/run.py hit_path [--rounds N]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from pagecache import PageCacheMiddleware  # noqa: E402

TARGET = "<= 1.15"
BODY = (b"<!doctype html><title>bench</title>" + b"x" * common.PAGE_SIZE)[:common.PAGE_SIZE]
HEADERS = [("Content-Type", "text/html; charset=utf-8")]


def page_app(environ: Dict, start_response: Callable) -> List[bytes]:
    """The application behind the cache (called once, to fill it)."""
    start_response("200 OK", list(HEADERS))
    return [BODY]


def trivial_app(environ: Dict, start_response: Callable) -> List[bytes]:
    """The least a WSGI application can do: a constant 5 KB page."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", "5120")])
    return [BODY]


def start_response(status: str, headers: list, exc_info: object = None) -> Callable:
    return _write


def _write(data: bytes) -> None:
    pass


def request_environ() -> Dict:
    """An environ as waitress builds it for ``GET /articles/42`` from wrk."""
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/articles/42", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "waitress", "REMOTE_ADDR": "127.0.0.1", "REMOTE_HOST": "127.0.0.1",
        "REMOTE_PORT": "50000", "REQUEST_URI": "/articles/42", "GATEWAY_INTERFACE": "CGI/1.1",
        "HTTP_HOST": "127.0.0.1:8080", "HTTP_USER_AGENT": "bench", "HTTP_ACCEPT": "*/*",
        "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def serve(app: Callable, environ: Dict) -> int:
    """What a server does with the answer: iterate it, close it."""
    iterable = app(environ, start_response)
    size = 0
    for chunk in iterable:
        size += len(chunk)
    close = getattr(iterable, "close", None)
    if close is not None:
        close()
    return size


def measure_client(server: common.MemcachedServer, library: str, rounds: int,
                   compression: str = "off") -> Dict[str, float]:
    """Per-hit seconds of pagecache and of the baseline, with ``library``;
    with ``compression`` on, the client accepts gzip (as browsers do) and the
    baseline gets the same compressed entry."""
    environ = request_environ()
    if compression != "off":
        environ["HTTP_ACCEPT_ENCODING"] = "gzip, deflate, br"
    middleware = PageCacheMiddleware(page_app, "/ 1h 1h", memcached_servers=[server.address],
                                     memcached_client=library, compression=compression,
                                     key_prefix=f"hit-{library}-{compression}")
    serve(middleware, dict(environ))                       # MISS: fills the cache
    probe = []
    middleware(dict(environ), lambda status, headers, exc_info=None: probe.append(headers))
    if ("X-Cache", "HIT") not in probe[0]:
        raise RuntimeError(f"the page was not served from the cache: {probe}")
    if (("Content-Encoding", compression) in probe[0]) != (compression != "off"):
        raise RuntimeError(f"the hit's encoding is not the stored one ({compression}): {probe}")
    key = middleware.keys.page(middleware.keys.digest(environ))
    # The baseline's get goes through the middleware's own client, hence its
    # own connection: memcached serves each connection on one of its worker
    # threads, and which one alone can change a round trip by 10%.
    client = middleware.cache
    stored = client.get(key)
    if not stored or (compression == "off" and len(stored) < common.PAGE_SIZE):
        raise RuntimeError(f"the bare client did not find the entry under {key}")

    def bare() -> int:
        client.get(key)
        return serve(trivial_app, environ)

    return common.interleaved({
        "pagecache": lambda: serve(middleware, environ),
        "bare": bare,
        "get": lambda: client.get(key),
    }, rounds=rounds)


def measure_local(server: common.MemcachedServer, rounds: int) -> Dict[str, float]:
    environ = request_environ()
    middleware = PageCacheMiddleware(page_app, "/ 1h 1h", memcached_servers=[server.address],
                                     local_ttl=1, compression="off", key_prefix="hit-local")
    serve(middleware, dict(environ))
    serve(middleware, dict(environ))
    before = middleware.stats["local_hits"]
    serve(middleware, dict(environ))
    if middleware.stats["local_hits"] != before + 1:
        raise RuntimeError("the page was not served from the local tier")
    return common.interleaved({
        "local": lambda: serve(middleware, environ),
        "trivial": lambda: serve(trivial_app, environ),
    }, rounds=rounds, block=200)


def main(args: list) -> int:
    parser = argparse.ArgumentParser(prog="hit_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="interleaved blocks per variant")
    options = parser.parse_args(args)
    print("hit_path: sequential in-process hits on a 5 KB page, memcached on loopback")
    with common.memcached() as server:
        per_get = {}
        for library in common.CLIENTS:
            times = measure_client(server, library, options.rounds)
            per_get[library] = times["get"]
            common.note(f"{library}: pagecache hit {common.micros(times['pagecache'])}, "
                        f"bare get + trivial app {common.micros(times['bare'])} "
                        f"(get alone {common.micros(times['get'])})")
            common.result(f"hit via {library} / (bare get + trivial app)",
                          times["pagecache"] / times["bare"], TARGET)
        times = measure_client(server, "python-memcached", options.rounds, compression="gzip")
        common.note(f"compression = gzip, client accepting gzip: pagecache hit {common.micros(times['pagecache'])}, "
                    f"bare get of the same entry + trivial app {common.micros(times['bare'])}")
        common.result("hit, stored and sent gzipped / (bare get + trivial app)",
                      times["pagecache"] / times["bare"], TARGET)
        times = measure_local(server, options.rounds)
        common.note(f"local tier hit {common.micros(times['local'])}, "
                    f"trivial app {common.micros(times['trivial'])}")
        common.result("local-tier hit (local_ttl=1) / trivial app", times["local"] / times["trivial"])
        common.result("local-tier hit / bare python-memcached get",
                      times["local"] / per_get["python-memcached"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
