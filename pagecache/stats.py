"""Counters of what the cache did since the process started (per process)."""

from __future__ import annotations

import threading
import time
from typing import Dict

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
)


class Stats:
    """Thread-safe counters; :meth:`snapshot` gives them as a dict."""

    def __init__(self) -> None:
        self.started = time.time()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def __getitem__(self, name: str) -> int:
        return self._counts[name]

    def snapshot(self) -> Dict[str, float]:
        with self._lock:
            counts = dict(self._counts)
        counts["uptime"] = round(time.time() - self.started, 3)
        return counts
