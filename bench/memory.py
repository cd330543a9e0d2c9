"""Benchmark 3: resident memory of the embedded cache and of a huge response.

Each measurement runs in a fresh Python process (this file, run as a child),
so nothing else that process did is counted. Growth is the process's peak
resident set (``VmHWM``, reset just before the workload where the kernel
allows it) minus its resident set (``VmRSS``) just before the workload, read
from ``/proc/self/status``.

1. ``memory_limit = 32MB`` (embedded memory cache): 10x that much written
   through the middleware, as pages of 1 to 64 KB at distinct URLs, each
   request a miss that stores its page. Target: growth within 1.25x
   ``memory_limit``.
2. A 100 MB response, produced lazily by a generator in 64 KB chunks, passing
   through the middleware (default ``max_entry_size``) to a client that reads
   and drops it. Target: growth under 10 MB.

    python bench/run.py memory [--limit-mb N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from typing import Callable, Dict, Iterator, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from pagecache import PageCacheMiddleware  # noqa: E402

MB = 1 << 20
STREAM_SIZE = 100 * MB
STREAM_CHUNK = 64 << 10


def reset_peak() -> bool:
    """Make VmHWM start again from the current resident set (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def start_response(status: str, headers: list, exc_info: object = None) -> Callable:
    return lambda data: None


def drain(iterable) -> int:
    """What a server does: read every chunk (dropping it), then close."""
    size = 0
    try:
        for chunk in iterable:
            size += len(chunk)
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    return size


def environ_for(path: str) -> Dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SCRIPT_NAME": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "HTTP_HOST": "bench.example",
            "wsgi.url_scheme": "http"}


def fill(limit: int) -> Dict:
    """Child: write 10x ``limit`` bytes of pages into the embedded cache."""
    sizes = [(1 << 10) * (1 + (i * 37) % 64) for i in range(64)]  # 1..64 KB, mixed

    def app(environ: Dict, start_response: Callable) -> List[bytes]:
        number = int(environ["PATH_INFO"].rsplit("/", 1)[1])
        size = sizes[number % len(sizes)]
        body = (b"%010d" % number) * (size // 10)
        start_response("200 OK", [("Content-Type", "text/html")])
        return [body]

    middleware = PageCacheMiddleware(app, "/ 1h 1h", memory_limit=limit)
    drain(middleware(environ_for("/warm/0"), start_response))
    gc.collect()
    before = common.status_kb("VmRSS")
    exact_peak = reset_peak()
    written = number = 0
    while written < 10 * limit:
        number += 1
        written += drain(middleware(environ_for(f"/page/{number}"), start_response))
    gc.collect()
    cache = middleware.cache
    return {"before_kb": before, "peak_kb": common.status_kb("VmHWM"), "after_kb": common.status_kb("VmRSS"),
            "exact_peak": exact_peak, "written": written, "pages": number, "limit": limit,
            "cache_bytes": cache.size, "cache_items": len(cache), "stores": middleware.stats["stores"]}


def stream() -> Dict:
    """Child: pass a 100 MB generated response through the middleware."""
    produced = []

    def app(environ: Dict, start_response: Callable) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        for number in range(STREAM_SIZE // STREAM_CHUNK):
            produced.append(number)
            yield bytes([number % 251]) * STREAM_CHUNK

    middleware = PageCacheMiddleware(app, "/ 1h 1h")
    labels = []
    gc.collect()
    before = common.status_kb("VmRSS")
    exact_peak = reset_peak()
    received = drain(middleware(environ_for("/big"),
                                lambda status, headers, exc_info=None: labels.append(dict(headers))))
    return {"before_kb": before, "peak_kb": common.status_kb("VmHWM"), "after_kb": common.status_kb("VmRSS"),
            "exact_peak": exact_peak, "received": received, "chunks": len(produced),
            "label": labels[0].get("X-Cache"), "stored": middleware.stats["stores"],
            "max_entry_size": middleware.max_entry_size}


def main(args: list) -> int:
    parser = argparse.ArgumentParser(prog="memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-mb", type=int, default=32, help="memory_limit of the fill test")
    options = parser.parse_args(args)
    print("memory: resident growth of fresh processes (peak VmHWM - VmRSS before the workload)")
    here = os.path.abspath(__file__)

    got = common.run_child(here, "fill", str(options.limit_mb * MB))
    growth = (got["peak_kb"] - got["before_kb"]) * 1024
    common.note(f"wrote {got['written'] / MB:.0f} MB in {got['pages']} pages with memory_limit "
                f"{got['limit'] / MB:.0f} MB; the cache holds {got['cache_items']} pages, "
                f"{got['cache_bytes'] / MB:.1f} MB counted; peak growth {growth / MB:.1f} MB, "
                f"growth at the end {(got['after_kb'] - got['before_kb']) / 1024:.1f} MB"
                + ("" if got["exact_peak"] else " (VmHWM could not be reset: peak since start)"))
    if got["written"] < 10 * got["limit"] or got["stores"] < got["pages"]:
        raise RuntimeError(f"the fill test did not store what it wrote: {got}")
    common.result(f"memory cache growth / memory_limit ({options.limit_mb} MB, 10x written)",
                  growth / got["limit"], "<= 1.25")

    got = common.run_child(here, "stream")
    growth = (got["peak_kb"] - got["before_kb"]) * 1024
    common.note(f"passed {got['received'] / MB:.0f} MB in {got['chunks']} chunks of "
                f"{STREAM_CHUNK >> 10} KB (X-Cache: {got['label']}, max_entry_size "
                f"{got['max_entry_size'] >> 10} KB, pages stored: {got['stored']}); "
                f"peak growth {growth / MB:.1f} MB")
    if got["received"] != STREAM_SIZE or got["stored"]:
        raise RuntimeError(f"the stream test did not pass the response through: {got}")
    common.result("100 MB response passed through: resident growth", growth / MB, "<= 10", unit="MB")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] in ("fill", "stream"):
        outcome = fill(int(sys.argv[2])) if sys.argv[1] == "fill" else stream()
        print(json.dumps(outcome))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
