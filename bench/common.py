"""Shared helpers of the benchmarks in bench/: real servers, careful timing,
resident memory, load generation, and the result lines.

Every benchmark compares pagecache with a baseline measured in the same run, on
the same machine, in the same conditions, and reports the ratio beside its
target with :func:`result`. The machine may be busy (other processes compete
for the CPUs), so timings are taken in many short interleaved blocks and
summarised by their median: a burst of noise then hits both sides alike and
moves the median little.

Run as a script, this module is the Python load generator used when ``wrk`` is
not installed (``python bench/common.py loadgen URL CONNECTIONS SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.servers import MemcachedServer  # noqa: E402  (needs ROOT on sys.path)

PAGE_SIZE = 5 * 1024
CLIENTS = ("python-memcached", "pymemcache")


# -- results -----------------------------------------------------------------

class Result(NamedTuple):
    name: str
    value: str
    target: str
    status: str  # "PASS", "MISS" or "info"


RESULTS: List[Result] = []


def result(name: str, value: float, target: Optional[str] = None, unit: str = "x") -> Result:
    """Print one result line ``name  value  target  PASS/MISS`` and record it.

    ``target`` is ``"<= 1.15"`` or ``">= 0.95"`` (in ``unit``); without one the
    line is information only."""
    shown = f"{value:.3f}{unit}" if unit == "x" else f"{value:.1f} {unit}"
    if target is None:
        status, target_text = "info", "-"
    else:
        operator, bound = target.split()
        limit = float(bound)
        met = value <= limit if operator == "<=" else value >= limit
        status = "PASS" if met else "MISS"
        target_text = f"{operator} {bound}{unit if unit == 'x' else ' ' + unit}"
    line = Result(name, shown, target_text, status)
    RESULTS.append(line)
    print(f"  {name:<58} {shown:>12}  {target_text:>12}  {status}", flush=True)
    return line


def note(text: str) -> None:
    """A line of context (what was measured, raw figures)."""
    print(f"    {text}", flush=True)


def machine() -> str:
    """nproc, CPU model and Python version, for the record."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    with contextlib.suppress(OSError):
        load = ", load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()} "
            f"({platform.python_implementation()}), {platform.system()} {platform.release()}{load}")


# -- servers -----------------------------------------------------------------

@contextlib.contextmanager
def memcached(memory_mb: int = 64) -> Iterator[MemcachedServer]:
    """A real memcached on a free loopback port for the duration of the block."""
    server = MemcachedServer(memory_mb=memory_mb, lru_maintainer=True).start()  # as deployed
    try:
        yield server
    finally:
        server.stop()


# -- timing ------------------------------------------------------------------

def interleaved(variants: Dict[str, Callable[[], object]], rounds: int = 200,
                block: int = 50, warmup: int = 200) -> Dict[str, float]:
    """Median seconds per call of each variant.

    The variants run in turns of ``block`` calls, ``rounds`` times, the order
    rotating each round, so slow phases of a busy machine fall on all of them
    alike; the median of the per-block figures ignores the blocks a burst of
    other work spoiled."""
    names = list(variants)
    for name in names:
        call = variants[name]
        for _ in range(warmup):
            call()
    samples: Dict[str, List[float]] = {name: [] for name in names}
    gc.collect()
    clock = time.perf_counter
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            call = variants[name]
            started = clock()
            for _ in range(block):
                call()
            samples[name].append((clock() - started) / block)
    return {name: statistics.median(values) for name, values in samples.items()}


def micros(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


# -- memory ------------------------------------------------------------------

def status_kb(field: str, pid: str = "self") -> int:
    """A ``/proc/<pid>/status`` figure in KiB (``VmRSS``, ``VmHWM``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def run_child(module_file: str, *args: str, timeout: float = 600) -> Dict:
    """Run ``python module_file args`` in a fresh process; the JSON it prints last."""
    completed = subprocess.run([sys.executable, module_file, *args], capture_output=True, text=True,
                               timeout=timeout, cwd=ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f"{os.path.basename(module_file)} {' '.join(args)} failed "
                           f"({completed.returncode}):\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# -- load generation -----------------------------------------------------------

def wrk_path() -> Optional[str]:
    """The wrk binary given by ``PAGECACHE_WRK`` (set by ``dev.py bench``), if any."""
    path = os.environ.get("PAGECACHE_WRK")
    return path if path and os.access(path, os.X_OK) else None


class Load(NamedTuple):
    rps: float       # requests per second
    requests: int    # requests completed


def load(urls: Sequence[str], connections: int, seconds: float) -> List[Load]:
    """What load generators got from ``urls``, one in a process of its own per
    URL, all running at once, each with ``connections`` keep-alive connections
    for ``seconds``: wrk if given, else the Python one below. Any non-2xx
    answer or socket error is an error."""
    wrk = wrk_path()
    if wrk:
        seconds = max(1, round(seconds))  # wrk takes whole seconds
        commands = [[wrk, "-t1", f"-c{connections}", f"-d{seconds}s", url] for url in urls]
    else:
        commands = [[sys.executable, os.path.abspath(__file__), "loadgen", url, str(connections), str(seconds)]
                    for url in urls]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for command in commands]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=seconds + 60)
        if wrk:
            if process.returncode != 0 or "Requests/sec:" not in out:
                raise RuntimeError(f"wrk failed: {err or out}")
            if "Non-2xx" in out or re.search(r"Socket errors: .*(?:read|write|timeout) [1-9]", out):
                raise RuntimeError(f"wrk saw errors:\n{out}")
            results.append(Load(float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1)),
                                int(re.search(r"(\d+) requests in", out).group(1))))
        else:
            if process.returncode != 0:
                raise RuntimeError(f"the load generator failed ({process.returncode}):\n{err}")
            answer = json.loads(out.strip().splitlines()[-1])
            results.append(Load(float(answer["rps"]), int(answer["requests"])))
    return results


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_generator_name() -> str:
    return "wrk -t1" if wrk_path() else "Python asyncio load generator (wrk not found)"


async def _connection(host: str, port: int, request: bytes, stop_at: float, counts: List[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    done = 0
    try:
        while time.monotonic() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 2"):
                raise RuntimeError(f"unexpected answer: {head[:80]!r}")
            match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
            if match is None:
                raise RuntimeError("answer without Content-Length")
            await reader.readexactly(int(match.group(1)))
            done += 1
    finally:
        writer.close()
        counts.append(done)


async def _generate(url: str, connections: int, seconds: float) -> Tuple[int, float]:
    match = re.match(r"http://([^/:]+):(\d+)(/.*)?$", url)
    host, port, path = match.group(1), int(match.group(2)), match.group(3) or "/"
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench\r\n\r\n".encode("ascii")
    counts: List[int] = []
    started = time.monotonic()
    await asyncio.gather(*(_connection(host, port, request, started + seconds, counts)
                           for _ in range(connections)))
    return sum(counts), time.monotonic() - started


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 4 and argv[0] == "loadgen":
        requests, elapsed = asyncio.run(_generate(argv[1], int(argv[2]), float(argv[3])))
        print(json.dumps({"rps": requests / elapsed, "requests": requests}))
        return 0
    print("usage: python bench/common.py loadgen URL CONNECTIONS SECONDS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
