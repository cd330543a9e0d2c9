"""Coalescing inside one process: the requests of a process that want the same
page while it is being computed (or awaited from another process) wait on one
:class:`Flight` instead of each asking memcached, and are woken the moment its
leader has an outcome.

Across processes the update lock in memcached does the same job; see
:meth:`pagecache.store.Store.lock`.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Tuple


class Flight:
    """One page being computed or awaited; ``outcome`` is set before ``done``."""

    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: Any = None


class Flights:
    """The flights of one process, by page key."""

    def __init__(self) -> None:
        self._flights: Dict[str, Flight] = {}
        self._lock = threading.Lock()

    def join(self, key: str) -> Tuple[Flight, bool]:
        """The flight for ``key``, and whether the caller leads it."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight()
            return flight, True

    def land(self, key: str, flight: Flight, outcome: Any) -> None:
        """End the flight: later requests start a new one; waiters get ``outcome``."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.outcome = outcome
        flight.done.set()
