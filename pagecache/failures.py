"""Application failures that a stale copy covers: logged once, then counted.

When a rebuild raises or answers 5xx while a stale copy is served, the
application is left alone for ``error_backoff`` (the page's update lock is
kept that long, so one attempt per back-off is made, in any process), and the
failure is logged with its traceback the first time; the failures that
follow for the same URL are counted and said in one line each back-off,
until a rebuild of it succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Optional, Tuple

log = logging.getLogger("pagecache")

REMEMBERED = 1000  # URLs whose failures are remembered per process (the oldest forgotten beyond)


class FailureLog:
    """Per process: which URLs have been failing, since when, how often."""

    def __init__(self) -> None:
        self._failing: Dict[str, Tuple[int, float]] = {}
        self._lock = threading.Lock()

    def failed(self, url: str, what: str, exc_info: Any = None, backoff: float = 0.0) -> None:
        """Log a failure of the application for ``url``: with its traceback
        the first time, in one line with the count after that."""
        with self._lock:
            count, since = self._failing.get(url, (0, time.time()))
            if len(self._failing) >= REMEMBERED and url not in self._failing:
                del self._failing[next(iter(self._failing))]
            self._failing[url] = (count + 1, since)
        pause = f"; the application is left alone for {backoff:g}s" if backoff else ""
        if count == 0:
            log.error("%s; serving the stale copy%s", what, pause, exc_info=exc_info)
        else:
            log.error("%s again (%d failures since %s, traceback logged the first time); serving the stale copy%s",
                      what, count + 1, time.strftime("%H:%M:%S", time.localtime(since)), pause)

    def recovered(self, url: str) -> Optional[int]:
        """A rebuild of ``url`` succeeded: how many failures it had, if any (logged)."""
        with self._lock:
            found = self._failing.pop(url, None)
        if found is not None:
            log.warning("%s answers again, after %d failures", url, found[0])
            return found[0]
        return None
