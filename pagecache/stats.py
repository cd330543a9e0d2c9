"""What the cache did since the process started: counters (in total and per
rule), two timing histograms, the cumulative totals of the last ten minutes
and the last decisions. One :class:`Stats` per middleware, per process;
:mod:`pagecache.metrics` adds up the processes of a server and speaks
Prometheus.

Counting costs no lock: each thread counts in tables of its own, and reading
adds the tables up. Tables of threads that have ended are folded into one, so
servers that start a thread per request don't grow them. A process forked
from one that counted starts again from zero (its parent's counts are its
parent's), with a fresh lock and its own history thread.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
import weakref
from collections import deque
from itertools import accumulate
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

COUNTER_HELP = {  # name: what it counts (the help text of its Prometheus counter); the order is COUNTERS'
    "hits": "served fresh from the cache (local tier included)",
    "local_hits": "of which from process memory, without memcached",
    "stale": "stale copy served: grace period, or covering an app error",
    "misses": "the application was called for a cacheable request",
    "bypasses": "a rule matched but the request may not use the cache",
    "passes": "the URL's responses could not be stored lately: straight to the app",
    "waits": "waited for a page another request was computing",
    "wait_timeouts": "... and gave up after wait_timeout",
    "stores": "pages stored",
    "store_failures": "pages the cache refused or could not take",
    "uncacheable": "responses that may not be stored (status, Cache-Control, size ...)",
    "app_errors": "rebuilds that raised or answered 5xx",
    "refreshes": "background refreshes started",
    "purges": "URLs purged that had something stored",
    "memcached_errors": "failed cache operations (each counts as a miss)",
    "tag_purges": "tags purged (each may invalidate many pages)",
    "tag_invalidated": "reads of a stored page that a purge of its tags had invalidated (hard or soft)",
    "compressed_bytes_saved": "bytes not sent thanks to a stored compressed encoding",
    "esi_fragments": "ESI fragments included in assembled pages",
    "esi_failures": "ESI fragments that could not be fetched (their fallback was used)",
    "backoffs": "rebuilds that failed while a stale copy was served: the application is left alone for error_backoff",
    "revalidations": "stale pages revalidated with the application (conditional request)",
    "not_modified": "... that the application answered 304 Not Modified",
    "invalidations": "pages invalidated by an unsafe request (POST, PUT, DELETE ...) to their URL",
}
COUNTERS: Tuple[str, ...] = tuple(COUNTER_HELP)

HISTOGRAM_HELP = {
    "app_seconds": "time the application took per call, in seconds",
    "wait_seconds": "time spent waiting for a page another request was computing, in seconds",
}
HISTOGRAMS: Tuple[str, ...] = tuple(HISTOGRAM_HELP)
BUCKETS: Tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)  # seconds, + inf
BUCKET_BOUNDS: List[Any] = list(BUCKETS) + ["+Inf"]  # as the snapshot gives them

HISTORY_COUNTERS = ("hits", "stale", "misses", "bypasses", "passes")  # what the hit-ratio chart needs
HISTORY_EVERY = 10  # seconds between two samples, on a grid shared by every process (multiples of 10)
HISTORY_LENGTH = 60  # samples kept: ten minutes
RECENT = 50  # decisions kept for the dashboard

NO_RULE = ""  # how the snapshot's histograms name observations not tied to a rule

_COUNTER_SET = frozenset(COUNTERS)
_HISTOGRAM_SET = frozenset(HISTOGRAMS)
_CELLS = len(BUCKETS) + 2  # a count per bucket (the last: +inf), then the sum of the observed values

Counts = Dict[str, Dict[Optional[int], int]]  # counter -> rule index (None: no rule) -> count
Cells = Dict[str, Dict[Optional[int], List[Any]]]  # histogram -> rule index -> [count per bucket..., sum]


class Stats:
    """The counters, histograms, history and recent decisions of one process.

    ``rules`` names the rules in order (their patterns); ``rule=`` arguments
    are indexes into it. Names that repeat are told apart in snapshots by a
    suffix `` #<n>``, ``n`` the rule's 1-based position."""

    def __init__(self, rules: Sequence[str] = ()) -> None:
        self.rules: Tuple[str, ...] = _unique_names(rules)
        self._hooks: List[Callable[[], None]] = []
        self._reset()
        _LIVE.add(self)

    def on_first_count(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` whenever a thread counts for the first time (so at
        least once in each process that counts, a forked child included):
        :class:`pagecache.metrics.Shared` starts its writer so."""
        self._hooks.append(hook)

    def _reset(self) -> None:
        self.started = time.time()
        self.pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._tables: List[Tuple[threading.Thread, Counts, Cells]] = []
        self._retired_counts: Counts = {}
        self._retired_cells: Cells = {}
        self._recent: Deque[Tuple[float, str, str, str, str, float]] = deque(maxlen=RECENT)
        self._history: Deque[Dict[str, Any]] = deque(maxlen=HISTORY_LENGTH)

    # -- counting (any thread) ------------------------------------------------

    def incr(self, name: str, amount: int = 1, rule: Optional[int] = None) -> None:
        """Count ``amount`` more ``name`` (one of :data:`COUNTERS`), for the
        rule at index ``rule`` or for none. An unknown name or rule raises."""
        try:
            self._local.counts[name][rule] += amount
        except (AttributeError, KeyError):
            self._first_incr(name, amount, rule)

    def observe(self, histogram: str, seconds: float, rule: Optional[int] = None) -> None:
        """Add one observation of ``seconds`` to ``histogram`` (one of :data:`HISTOGRAMS`)."""
        try:
            cells = self._local.cells[histogram][rule]
        except (AttributeError, KeyError):
            cells = self._first_cells(histogram, rule)
        cells[bisect.bisect_left(BUCKETS, seconds)] += 1
        cells[-1] += seconds

    def decision(self, when: float, method: str, url: str, outcome: str, reason: str, ms: float) -> None:
        """Remember one decision (unix time, request, ``HIT``/``MISS``/..., why, how long)
        among the last :data:`RECENT`."""
        self._recent.append((when, method, url, outcome, reason, ms))

    # the slow paths: the first count of a thread, of a counter in a thread, of a rule in a counter

    def _check(self, rule: Optional[int]) -> None:
        if rule is not None and not (type(rule) is int and 0 <= rule < len(self.rules)):
            raise IndexError(f"rule {rule!r} is not an index into the {len(self.rules)} rules")

    def _first_incr(self, name: str, amount: int, rule: Optional[int]) -> None:
        if name not in _COUNTER_SET:
            raise KeyError(name)
        self._check(rule)
        counts = self._own_tables()[0]
        per_rule = counts.get(name)
        if per_rule is None:
            counts[name] = {rule: amount}
        else:
            per_rule[rule] = per_rule.get(rule, 0) + amount

    def _first_cells(self, histogram: str, rule: Optional[int]) -> List[Any]:
        if histogram not in _HISTOGRAM_SET:
            raise KeyError(histogram)
        self._check(rule)
        cells = self._own_tables()[1]
        per_rule = cells.setdefault(histogram, {})
        return per_rule.setdefault(rule, [0] * (_CELLS - 1) + [0.0])

    def _own_tables(self) -> Tuple[Counts, Cells]:
        """This thread's tables, made (and those of ended threads folded) if it has none."""
        local = self._local
        try:
            return local.counts, local.cells
        except AttributeError:
            pass
        counts: Counts = {}
        cells: Cells = {}
        with self._lock:
            alive = []
            for thread, old_counts, old_cells in self._tables:
                if thread.is_alive():
                    alive.append((thread, old_counts, old_cells))
                else:
                    _add_counts(self._retired_counts, old_counts)
                    _add_cells(self._retired_cells, old_cells)
            alive.append((threading.current_thread(), counts, cells))
            self._tables = alive
        local.counts = counts
        local.cells = cells
        _SAMPLER.ensure()
        for hook in list(self._hooks):
            hook()
        return counts, cells

    # -- reading (any thread) -------------------------------------------------

    def _gather(self) -> Tuple[Counts, Cells]:
        """All tables added up (call with the lock held)."""
        counts: Counts = {}
        cells: Cells = {}
        _add_counts(counts, self._retired_counts)
        _add_cells(cells, self._retired_cells)
        for _, thread_counts, thread_cells in self._tables:
            _add_counts(counts, thread_counts)
            _add_cells(cells, thread_cells)
        return counts, cells

    def __getitem__(self, name: str) -> int:
        """The total of counter ``name``, every rule and none."""
        if name not in _COUNTER_SET:
            raise KeyError(name)
        with self._lock:
            tables = [self._retired_counts] + [counts for _, counts, _ in self._tables]
            return sum(sum(table.get(name, {}).copy().values()) for table in tables)

    def counts(self) -> Dict[str, int]:
        """Every counter's total (what the stats JSON held before 0.3, without ``uptime``)."""
        with self._lock:
            counts, _ = self._gather()
        return {name: sum(counts.get(name, {}).values()) for name in COUNTERS}

    def sample(self, when: Optional[float] = None) -> None:
        """Add the current totals of :data:`HISTORY_COUNTERS` to the history,
        as the sample of the grid time ``when`` (default: the last multiple of
        :data:`HISTORY_EVERY`). A second sample for the same time replaces the
        first. The history thread calls this every :data:`HISTORY_EVERY` seconds."""
        if when is None:
            now = time.time()
            when = now - now % HISTORY_EVERY
        with self._lock:
            tables = [self._retired_counts] + [counts for _, counts, _ in self._tables]
            row: Dict[str, Any] = {"time": float(when)}
            for name in HISTORY_COUNTERS:
                row[name] = sum(sum(table.get(name, {}).copy().values()) for table in tables)
            if self._history and self._history[-1]["time"] == row["time"]:
                self._history.pop()
            self._history.append(row)

    def snapshot(self) -> Dict[str, Any]:
        """This process's numbers, JSON-able (see :mod:`pagecache.metrics` for the schema)."""
        _SAMPLER.ensure()
        now = time.time()
        with self._lock:
            counts, cells = self._gather()
            history = [dict(row) for row in self._history]
        recent = self._recent.copy()
        snapshot: Dict[str, Any] = {name: sum(counts.get(name, {}).values()) for name in COUNTERS}
        per_rule = [name for name in COUNTERS if any(rule is not None for rule in counts.get(name, ()))]
        snapshot.update(
            uptime=round(now - self.started, 3),
            processes=1,
            pid=self.pid,
            started=self.started,
            time=now,
            rules={rule_name: {name: counts[name].get(index, 0) for name in per_rule}
                   for index, rule_name in enumerate(self.rules)},
            histograms={histogram: {(NO_RULE if rule is None else self.rules[rule]): _histogram(values)
                                    for rule, values in sorted(cells.get(histogram, {}).items(),
                                                               key=lambda item: -1 if item[0] is None else item[0])}
                        for histogram in HISTOGRAMS},
            history=history,
            recent=[{"time": when, "method": method, "url": url, "outcome": outcome, "reason": reason,
                     "ms": round(ms, 3)} for when, method, url, outcome, reason, ms in reversed(recent)],
        )
        return snapshot

    def _after_fork(self) -> None:
        self._reset()


def _unique_names(rules: Sequence[str]) -> Tuple[str, ...]:
    names: List[str] = []
    for position, rule in enumerate(rules, 1):
        name = str(getattr(rule, "name", rule))
        names.append(f"{name} #{position}" if name in names else name)
    return tuple(names)


def _add_counts(into: Counts, table: Counts) -> None:
    for name, per_rule in table.copy().items():
        target = into.setdefault(name, {})
        for rule, count in per_rule.copy().items():
            target[rule] = target.get(rule, 0) + count


def _add_cells(into: Cells, table: Cells) -> None:
    for histogram, per_rule in table.copy().items():
        target = into.setdefault(histogram, {})
        for rule, cells in per_rule.copy().items():
            cells = list(cells)
            mine = target.get(rule)
            if mine is None:
                target[rule] = cells
            else:
                target[rule] = [a + b for a, b in zip(mine, cells)]


def _histogram(cells: List[Any]) -> Dict[str, Any]:
    counts = list(accumulate(cells[:-1]))
    return {"buckets": list(BUCKET_BOUNDS), "counts": counts, "sum": cells[-1], "count": counts[-1]}


# -- per process: the history thread, hooks, and what a fork resets ----------------


_LIVE: "weakref.WeakSet[Stats]" = weakref.WeakSet()
forked_from: Optional[int] = None  # the pid this process was forked from, if it was (after this module was imported)


class _Sampler:
    """One daemon thread per process, started at the first count, that samples
    the history of every live Stats on the :data:`HISTORY_EVERY` grid."""

    def __init__(self) -> None:
        self.pid: Optional[int] = None
        self.lock = threading.Lock()

    def ensure(self) -> None:
        if self.pid == os.getpid():
            return
        with self.lock:
            if self.pid == os.getpid():
                return
            thread = threading.Thread(target=self.run, name="pagecache-stats-history", daemon=True)
            thread.start()
            self.pid = os.getpid()

    def run(self) -> None:
        pid = os.getpid()
        while True:
            now = time.time()
            due = now - now % HISTORY_EVERY + HISTORY_EVERY
            while now < due:
                time.sleep(due - now)
                now = time.time()
            if os.getpid() != pid:  # pragma: no cover - a thread does not survive a fork
                return
            for stats in list(_LIVE):
                if stats.pid == pid:
                    stats.sample(due)


_SAMPLER = _Sampler()


def _after_fork_in_child() -> None:
    global forked_from
    forked_from = os.getppid()
    _SAMPLER.pid = None
    _SAMPLER.lock = threading.Lock()
    for stats in list(_LIVE):
        stats._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
