"""Run pagecache's benchmarks and summarise them against their targets.

    python bench/run.py                 # every benchmark except the long ones (soak)
    python bench/run.py hit_path memory # just these
    python bench/run.py soak            # a long one, by name
    python3 dev.py bench [NAMES]        # the same, after setting up .venv and memcached

A benchmark is any module ``bench/<name>.py`` defining ``main(args: list) -> int``
(arguments after ``--`` are passed to every benchmark run). Each prints its
ratios beside their targets; this runner ends with a summary of them. A missed
target is reported, not an error: the exit status is non-zero only when a
benchmark fails to run (raises, or returns non-zero).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from typing import List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

NOT_BENCHMARKS = {"run", "common", "proxy"}  # proxy: the conformance run's reverse proxy
LONG = {"soak", "conformance"}  # run only when named


def discover() -> List[str]:
    """Names of the benchmark modules in bench/ (by file name)."""
    names = []
    for filename in sorted(os.listdir(HERE)):
        name, ext = os.path.splitext(filename)
        if ext == ".py" and not name.startswith("_") and name not in NOT_BENCHMARKS:
            names.append(name)
    return names


def run(name: str, args: List[str]) -> Tuple[bool, float]:
    """Run one benchmark; whether it ran without error, and how long it took."""
    started = time.monotonic()
    print(f"\n== {name} ==", flush=True)
    try:
        module = importlib.import_module(name)
        main = getattr(module, "main", None)
        if main is None:
            print(f"bench/{name}.py has no main(args)", flush=True)
            return False, time.monotonic() - started
        status = main(list(args))
    except Exception:
        traceback.print_exc()
        return False, time.monotonic() - started
    if status:
        print(f"{name} exited with status {status}", flush=True)
    return not status, time.monotonic() - started


def main(argv: List[str]) -> int:
    extra: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    available = discover()
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        print("benchmarks: " + ", ".join(available))
        return 0
    unknown = [name for name in argv if name not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}",
              file=sys.stderr)
        return 2
    names = argv or [name for name in available if name not in LONG]
    print(f"pagecache benchmarks: {', '.join(names)}")
    print(f"machine: {common.machine()}")
    print(f"load generator: {common.load_generator_name()}")
    failed, silent = [], []
    for name in names:
        recorded = len(common.RESULTS)
        ok, seconds = run(name, extra)
        print(f"-- {name}: {'done' if ok else 'FAILED'} in {seconds:.0f}s", flush=True)
        if not ok:
            failed.append(name)
        elif len(common.RESULTS) == recorded:
            silent.append(name)

    print("\n== summary ==")
    targeted = [line for line in common.RESULTS if line.status != "info"]
    for line in common.RESULTS:
        print(f"  {line.name:<58} {line.value:>12}  {line.target:>12}  {line.status}")
    if silent:
        print(f"  ({', '.join(silent)}: figures printed above, no targets)")
    missed = [line for line in targeted if line.status == "MISS"]
    print(f"\n{len(targeted) - len(missed)} of {len(targeted)} targets met.")
    if missed:
        print("Missed targets:")
        for line in missed:
            print(f"  MISSED: {line.name}: {line.value} (target {line.target})")
    if failed:
        print(f"Benchmarks that failed to run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
