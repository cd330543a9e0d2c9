"""The headers that tell what the cache did with a response.

* ``X-Cache`` (``status_header``): ``HIT``, ``STALE``, ``MISS`` or ``BYPASS``;
* ``Cache-Status`` (RFC 9211), under the name ``cache_status``:
  ``pagecache; hit; ttl=12``, ``pagecache; hit; ttl=-3`` (stale),
  ``pagecache; fwd=uri-miss; stored``, ``pagecache; fwd=stale;
  fwd-status=304; stored`` (revalidated), ``pagecache; fwd=bypass``;
* ``Age`` on everything served from the cache;
* with ``server_timing``, ``Server-Timing: cache;desc="HIT", age;desc="3",
  ttl;desc="7"``, which a page's own script can read
  (``performance.getEntriesByType("navigation")[0].serverTiming``).

The headers of a hit change once a second at most, so they are built once a
second per page (:meth:`pagecache.entry.Page.timed`), never per request.
"""

from __future__ import annotations

from typing import List, Tuple

from .entry import Headers, Page
from .exchange import Label


class Labels:
    """Builds the labelling headers of one middleware's responses."""

    def __init__(self, status_header: str, cache_status: str, server_timing: bool):
        self.status_header = status_header
        self.cache_status = cache_status
        self.server_timing = server_timing
        self.plain = {label: [(status_header, label.value)] if status_header else [] for label in Label}

    def hit(self, page: Page, age: int) -> Headers:
        """A fresh page served from the cache, ``age`` seconds old (for :meth:`Page.timed`)."""
        return self._served(page, age, Label.HIT)

    def stale(self, page: Page, age: int) -> Headers:
        """A page served from the cache past its TTL."""
        return self._served(page, age, Label.STALE)

    def _served(self, page: Page, age: int, label: Label) -> Headers:
        left = int(page.ttl) - age
        headers: List[Tuple[str, str]] = [("Age", str(age))]
        if self.cache_status:
            headers.append(("Cache-Status", f"{self.cache_status}; hit; ttl={left}"))
        if self.server_timing:
            headers.append(("Server-Timing", f'cache;desc="{label.value}", age;desc="{age}", ttl;desc="{left}"'))
        return headers + self.plain[label]

    def forwarded(self, label: Label, fwd: str = "uri-miss", stored: bool = False,
                  fwd_status: int = 0) -> Headers:
        """A response the application gave for this request (MISS or BYPASS)."""
        headers: List[Tuple[str, str]] = []
        if self.cache_status:
            value = f"{self.cache_status}; fwd={fwd}"
            if fwd_status:
                value += f"; fwd-status={fwd_status}"
            if stored:
                value += "; stored"
            headers.append(("Cache-Status", value))
        if self.server_timing:
            headers.append(("Server-Timing", f'cache;desc="{label.value}"'))
        return headers + self.plain[label]
