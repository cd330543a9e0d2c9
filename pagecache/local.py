"""The optional in-process tier (``local_ttl``): recently read entries kept in
process memory, so a hot page is served without a memcached round trip.

An entry is kept at most ``local_ttl`` seconds after it was read from the
cache, and a page only while it is fresh: once its TTL has run out the request
goes to memcached, where grace, locks and purges from other processes decide.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Tuple

from .entry import FRESH, Entry, Page


class LocalTier:
    """At most ``size`` entries, each for at most ``ttl`` seconds."""

    def __init__(self, ttl: float, size: int):
        self.ttl = ttl
        self.size = size
        self._items: "OrderedDict[str, Tuple[Entry, float]]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> Optional[Entry]:
        """The entry for ``key`` if read less than ``ttl`` ago (and fresh, for a page)."""
        item = self._items.get(key)
        if item is None:
            return None
        entry, read_at = item
        if now - read_at >= self.ttl or (isinstance(entry, Page) and entry.state(now) is not FRESH):
            with self._lock:
                if self._items.get(key) is item:
                    del self._items[key]
            return None
        return entry

    def put(self, key: str, entry: Entry, now: float) -> None:
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = (entry, now)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
