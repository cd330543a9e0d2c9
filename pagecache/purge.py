"""Purging: removing a URL's page from the cache now, or (soft) ending its TTL so
that it is rebuilt while its grace period lasts.

Used by :meth:`PageCacheMiddleware.purge`, by HTTP ``PURGE`` requests and by
the ``pagecache purge`` command, which needs only the INI file (not the
application). A URL's variants are purged with it: a hard purge removes its
vary marker, so they are never found again (they expire on their own); a soft
purge records the time in the marker, which ends the TTL of every older variant.
"""

from __future__ import annotations

from typing import Callable, Optional

from .entry import Pass, VaryMarker
from .keys import Keys
from .local import LocalTier
from .stats import Stats
from .store import Store


class Purger:
    """Purges pages by URL, or by the digest of a request's URL."""

    def __init__(self, store: Store, keys: Keys, local: Optional[LocalTier],
                 clock: Callable[[], float], stats: Stats):
        self.store = store
        self.keys = keys
        self.local = local
        self.clock = clock
        self.stats = stats

    def purge(self, url: str, soft: bool = False) -> bool:
        """Purge the page at the absolute ``url``; whether anything was stored."""
        return self.purge_digest(self.keys.digest_of_url(url), soft)

    def purge_digest(self, digest: str, soft: bool = False) -> bool:
        key = self.keys.page(digest)
        entry = self.store.load(key)
        if self.local is not None:
            self.local.clear()
        if entry is None or type(entry) is Pass:
            if entry is not None:
                self.store.delete(key)
            return False
        now = self.clock()
        if not soft:
            self.store.delete(key)
        elif type(entry) is VaryMarker:
            marker = VaryMarker(entry.names, entry.generation, entry.stored, entry.life, now)
            self.store.save(key, marker, max(1.0, entry.stored + entry.life - now))
        else:
            page = entry.expired_at(now)
            self.store.save(key, page, max(1.0, page.stored + page.lifetime() + 1 - now))
        self.stats.incr("purges")
        return True

