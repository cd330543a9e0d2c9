"""Counters of what the cache did since the process started (per process)."""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Tuple

COUNTERS = (
    "hits",            # served fresh from the cache (local tier included)
    "local_hits",      # of which from process memory, without memcached
    "stale",           # stale copy served: grace period, or covering an app error
    "misses",          # the application was called for a cacheable request
    "bypasses",        # a rule matched but the request may not use the cache
    "passes",          # the URL's responses could not be stored lately: straight to the app
    "waits",           # waited for a page another request was computing
    "wait_timeouts",   # ... and gave up after wait_timeout
    "stores",          # pages stored
    "store_failures",  # pages the cache refused or could not take
    "uncacheable",     # responses that may not be stored (status, Cache-Control, size ...)
    "app_errors",      # rebuilds that raised or answered 5xx
    "refreshes",       # background refreshes started
    "purges",          # URLs purged that had something stored
    "memcached_errors",  # failed cache operations (each counts as a miss)
    "revalidations",   # stored pages the application was asked about (If-None-Match / If-Modified-Since)
    "invalidations",   # stored pages an unsafe method's success made misses
)


class Stats:
    """Counters kept per thread, so counting costs no lock on the hit path;
    reading them adds the tables up. Tables of threads that have ended are
    folded into one, so servers that start a thread per request don't grow it."""

    def __init__(self) -> None:
        self.started = time.time()
        self._local = threading.local()
        self._tables: List[Tuple[threading.Thread, Dict[str, int]]] = []
        self._retired = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()

    def _table(self) -> Dict[str, int]:
        table = dict.fromkeys(COUNTERS, 0)
        with self._lock:
            alive = []
            for thread, old in self._tables:
                if thread.is_alive():
                    alive.append((thread, old))
                else:
                    for name, count in old.items():
                        self._retired[name] += count
            alive.append((threading.current_thread(), table))
            self._tables = alive
        self._local.table = table
        return table

    def incr(self, name: str, amount: int = 1) -> None:
        try:
            table = self._local.table
        except AttributeError:
            table = self._table()
        table[name] += amount

    def __getitem__(self, name: str) -> int:
        return self.snapshot()[name]

    def snapshot(self) -> Dict[str, float]:
        with self._lock:
            tables = [self._retired] + [table for _, table in self._tables]
            counts: Dict[str, float] = {name: sum(t[name] for t in tables) for name in COUNTERS}
        counts["uptime"] = round(time.time() - self.started, 3)
        return counts
