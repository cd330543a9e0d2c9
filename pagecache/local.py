"""The optional in-process tier (``local_ttl``): recently read entries kept in
process memory, so a hot page is served without a memcached round trip.

An entry is kept at most ``local_ttl`` seconds after it was read from the
cache, and a page only while it is fresh: once its TTL has run out the request
goes to memcached, where grace, locks and purges from other processes decide.
The tier holds at most ``size`` entries and ``limit`` bytes (bodies and
headers), the least recently stored dropped first, and entries past their
time are dropped as they are met and from the oldest end on every store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Tuple

from .entry import Entry, Page

_FOREVER = float("inf")
ENTRY_OVERHEAD = 400  # bytes of Python objects per entry, counted against the limit


def size_of(entry: Entry) -> int:
    """About how many bytes ``entry`` holds in memory."""
    if type(entry) is Page:
        decoded = entry.identity_length if entry.encoding else 0  # the decoded copy it may come to hold
        return ENTRY_OVERHEAD + len(entry.body) + decoded + sum(len(k) + len(v) + 60 for k, v in entry.headers)
    return ENTRY_OVERHEAD


class LocalTier:
    """At most ``size`` entries and ``limit`` bytes, each for at most ``ttl`` seconds."""

    def __init__(self, ttl: float, size: int, limit: int = 16 << 20):
        self.ttl = ttl
        self.size = size
        self.limit = limit
        self.used = 0
        # key -> (entry, read at, kept until, bytes); kept until: read at + ttl,
        # or the end of a page's TTL if sooner
        self._items: "OrderedDict[str, Tuple[Entry, float, float, int]]" = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, now: float) -> Optional[Entry]:
        """The entry for ``key`` if read less than ``ttl`` ago (and fresh, for a page)."""
        item = self._items.get(key)
        if item is None:
            return None
        if now >= item[2]:
            with self._lock:
                if self._items.get(key) is item:
                    self._drop(key)
            return None
        return item[0]

    def put(self, key: str, entry: Entry, now: float) -> None:
        until = now + self.ttl
        if type(entry) is Page:
            until = min(until, entry.stored + entry.ttl)
        cost = size_of(entry)
        if cost > self.limit or until <= now:
            return
        with self._lock:
            if key in self._items:
                self._drop(key)
            self._items[key] = (entry, now, until, cost)
            self.used += cost
            while self._items:
                oldest_key, oldest = next(iter(self._items.items()))
                if len(self._items) <= self.size and self.used <= self.limit and oldest[2] > now:
                    break
                self._drop(oldest_key)

    def _drop(self, key: str) -> None:
        self.used -= self._items.pop(key)[3]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0
