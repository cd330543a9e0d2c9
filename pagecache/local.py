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

from .entry import Entry, Page

_FOREVER = float("inf")


class LocalTier:
    """At most ``size`` entries, each for at most ``ttl`` seconds."""

    def __init__(self, ttl: float, size: int):
        self.ttl = ttl
        self.size = size
        # key -> (entry, read at, page stored at, page TTL); for entries that
        # are not pages (0.0, inf), so that one test covers both kinds
        self._items: "OrderedDict[str, Tuple[Entry, float, float, float]]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> Optional[Entry]:
        """The entry for ``key`` if read less than ``ttl`` ago (and fresh, for a page)."""
        item = self._items.get(key)
        if item is None:
            return None
        entry, read_at, stored, page_ttl = item
        # a page is fresh while now - stored < ttl (Page.state's FRESH, inlined)
        if now - read_at >= self.ttl or now - stored >= page_ttl:
            with self._lock:
                if self._items.get(key) is item:
                    del self._items[key]
            return None
        return entry

    def put(self, key: str, entry: Entry, now: float) -> None:
        if type(entry) is Page:
            item = (entry, now, entry.stored, entry.ttl)
        else:
            item = (entry, now, 0.0, _FOREVER)
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = item
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
