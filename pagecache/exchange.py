"""One request's way through the cache, and the outcomes the steps of the flow
hand each other.

An :class:`Exchange` is made for each request that a rule covers and that does
not take the hit path: it holds what the request asked for (environ, route),
where its page lives (the URL's digest, the variant's digest, the vary
marker), the stale copy kept in reserve, and when it started (for the log).
The steps of :mod:`pagecache.middleware` take it instead of long lists of
positional parameters.

Outcomes are types, never strings compared by identity: a rebuild is
:class:`Stored`, :class:`NotStored` or :class:`Failed`; a flight (requests of
one process waiting for the same page) lands with :class:`Served` or a
:class:`Signal`.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Dict, Optional

from .entry import Headers, Page, VaryMarker
from .routes import Route

StartResponse = Callable[..., Any]


class Label(str, enum.Enum):
    """What ``X-Cache`` says about a response."""

    HIT = "HIT"        # from the cache, fresh (or waited for another request that computed it)
    STALE = "STALE"    # from the cache past its TTL: grace, or covering an application failure
    MISS = "MISS"      # this request called the application for the cache
    BYPASS = "BYPASS"  # a rule matched, but this request may not use the cache

    def __str__(self) -> str:
        return self.value


HIT, STALE, MISS, BYPASS = Label.HIT, Label.STALE, Label.MISS, Label.BYPASS


class Exchange:
    """A request on its way through the flow."""

    __slots__ = ("environ", "start_response", "route", "started", "restarts",
                 "digest", "marker", "fallback", "cached", "requested", "prefetched", "shared_only", "too_large")

    def __init__(self, environ: Dict, start_response: StartResponse, route: Route,
                 started: float, restarts: int = 0):
        self.environ = environ
        self.start_response = start_response
        self.route = route
        self.started = started      # perf_counter at arrival; 0.0 when decisions are not logged
        self.restarts = restarts    # looks taken again because the page turned out to vary
        self.digest = route.digest  # the variant's digest: the URL's own until a vary marker says otherwise
        self.marker: Optional[VaryMarker] = None
        self.fallback: Optional[Page] = None  # a stale copy that may stand in for a failure
        self.cached: Optional[Page] = None    # the page found, whatever its state: revalidated by a fill
        self.requested = 0.0                  # when the application was asked (for the response's age)
        self.prefetched: Optional[Dict] = None  # entries read with the page's (its ESI fragments)
        self.shared_only = False              # it carries cookies: only a page shared with them may serve it
        self.too_large = False                # the URL's last answer was too large even compressed

    @property
    def method(self) -> str:
        return self.environ["REQUEST_METHOD"]

    @property
    def primary(self) -> str:
        """The digest of the URL (where its page or vary marker lives)."""
        return self.route.digest


class Served:
    """A flight's leader has a page for its followers (those wanting its variant)."""

    __slots__ = ("label", "page", "variant")

    def __init__(self, label: Label, page: Page, variant: Optional[str]):
        self.label, self.page, self.variant = label, page, variant


class Signal(enum.Enum):
    """A flight's outcome that holds no page."""

    PASS = "pass"        # the response may not be stored: followers go to the application
    RESTART = "restart"  # the page varies: followers look again for their own variant


class Stored:
    """A rebuild gave ``page``: ``saved`` if the cache took it; ``shared``
    unless it may only go to this request's client (the requests waiting for
    it ask the application then); ``cookies`` go to that client only;
    ``revalidated``: a 304 refreshed a stored page."""

    __slots__ = ("page", "cookies", "saved", "shared", "revalidated", "why")

    def __init__(self, page: Page, cookies: Headers, saved: bool = True, shared: bool = True,
                 revalidated: bool = False, why: str = ""):
        self.page, self.cookies, self.saved, self.shared = page, cookies, saved, shared
        self.revalidated = revalidated
        self.why = why  # what happened, as the log says it: stored, not stored and why


class NotStored:
    """A rebuild's response may not be stored (``reason``); it goes to its client as it is."""

    __slots__ = ("captured", "reason")

    def __init__(self, captured: Any, reason: str):
        self.captured, self.reason = captured, reason


class Failed:
    """A rebuild raised or answered 5xx while a stale copy could stand in for it."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason
