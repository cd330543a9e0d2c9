"""How long a response may be kept and served, decided once, when it is stored.

The response decides, in this order (RFC 9111 4.2.1, and the Edge
Architecture's ``Surrogate-Control``, which is meant for pagecache alone and
removed before the client sees the response):

1. ``Surrogate-Control: max-age=N[+M]`` (untargeted, or targeted at
   pagecache's name: ``max-age=60;pagecache``), where ``M`` is a grace period;
2. ``Cache-Control: s-maxage``;
3. ``Cache-Control: max-age``;
4. ``Expires`` minus ``Date``;

the response's own ``Age`` counting against it. A response that gives none of
them gets its rule's TTL and grace, if its status is in ``cache_statuses``.
``stale-while-revalidate`` sets the grace period and ``stale-if-error`` the
error window (RFC 5861); ``must-revalidate``, ``proxy-revalidate``,
``s-maxage`` and ``no-cache`` forbid serving it stale (``no-cache``, and a
lifetime of 0, leave a response that is revalidated on every use, worth
storing only when it has a validator). A rule with ``force``, or
``response_freshness = ignore``, gives the rule's lifetimes to every response,
as 0.1 did.

What never changes: a response that says ``private`` or ``no-store`` (or whose
``Surrogate-Control`` says ``no-store``) is not stored; directives are parsed
strictly, and anything ambiguous (a value that is not a number, two different
values for one directive, an ``Age`` that is not one number) counts as stale,
never as fresher than it said. A 4xx or 5xx is stored only with a lifetime of
its own (or a listed status), and then for at most ``negative_ttl``.
"""

from __future__ import annotations

import re
from typing import Collection, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Tuple

from .entry import ESI, MUST_REVALIDATE, SHARED, VALIDATORS, Headers
from .http import http_date

MAX_AGE = 2147483648          # RFC 9111 1.2.2: larger delta-seconds are this
KEEP_FOR_REVALIDATION = 600.0  # seconds an expired page with validators is kept, to be revalidated
# Status codes pagecache understands, for must-understand (RFC 9111 5.2.2.3).
UNDERSTOOD = frozenset({200, 203, 204, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 410, 414, 500, 501,
                        502, 503, 504})
NEVER_STORED_STATUSES = frozenset({206, 304})  # partial content; a 304 is a revalidation, not a page

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ELEMENT = re.compile(rf"\s*({_TOKEN})(?:=({_TOKEN}|{_QUOTED}))?\s*(?:;\s*({_TOKEN}))?\s*(?:,|$)")
_DIGITS = re.compile(r"^[0-9]+$")
_SURROGATE_AGE = re.compile(r"^([0-9]+)(?:\+([0-9]+))?$")
INVALID = object()   # a directive given a value it can't have, or two different values


def directives(values: Iterable[str]) -> Dict[str, Optional[str]]:
    """The directives of ``Cache-Control`` field values: lower-case name to its
    value (unquoted), None when it has none, or :data:`INVALID` when it was
    given twice with different values. Elements that don't parse are ignored."""
    found: Dict[str, object] = {}
    for name, value, _target in _elements(", ".join(values)):
        _add(found, name, value)
    return found  # type: ignore[return-value]


def surrogate_directives(values: Iterable[str], target: str) -> Dict[str, Optional[str]]:
    """The directives of ``Surrogate-Control`` values that apply to pagecache:
    untargeted ones, and those targeted at ``target`` (``max-age=60;target``),
    the targeted ones winning."""
    general: Dict[str, object] = {}
    mine: Dict[str, object] = {}
    for name, value, device in _elements(", ".join(values)):
        if device is None:
            _add(general, name, value)
        elif device.lower() == target:
            _add(mine, name, value)
    general.update(mine)
    return general  # type: ignore[return-value]


def _elements(text: str) -> Iterable[Tuple[str, Optional[str], Optional[str]]]:
    position = 0
    while position < len(text):
        match = _ELEMENT.match(text, position)
        if match is None:  # skip to the next comma outside quotes
            position = _next_comma(text, position) + 1
            continue
        position = match.end()
        name, value, target = match.group(1).lower(), match.group(2), match.group(3)
        if value is not None and value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        yield name, value, target


def _next_comma(text: str, position: int) -> int:
    quoted = False
    while position < len(text):
        char = text[position]
        if char == '"':
            quoted = not quoted
        elif char == "\\" and quoted:
            position += 1
        elif char == "," and not quoted:
            return position
        position += 1
    return position


def _add(found: Dict[str, object], name: str, value: Optional[str]) -> None:
    if name in found and found[name] != value:
        found[name] = INVALID
    else:
        found[name] = value


def seconds(value: object) -> Optional[float]:
    """A delta-seconds directive value (``max-age=60``): seconds, None if invalid."""
    if not isinstance(value, str) or not _DIGITS.match(value):
        return None
    return float(min(int(value), MAX_AGE))


def field_names(value: object) -> FrozenSet[str]:
    """The header names of a qualified ``no-cache="a, b"`` or ``private="a"``."""
    if not isinstance(value, str):
        return frozenset()
    return frozenset(name.strip().lower() for name in value.split(",") if name.strip())


class Decision(NamedTuple):
    """What to store of a response, and for how long; or why not."""

    reason: Optional[str] = None     # why it may not be stored; None: it may
    stored: float = 0.0              # when it was generated (its age counts from then)
    ttl: float = 0.0
    grace: float = 0.0
    stale: float = 0.0
    keep: float = 0.0
    flags: str = ""
    dropped: FrozenSet[str] = frozenset()  # headers that may not be stored (no-cache="a", private="a")
    explicit: bool = False           # the response gave its own lifetime
    fetched: float = 0.0             # when the application was asked for it (purges are compared with it)


class Rule(NamedTuple):
    """The defaults a response gets when it says nothing (a rule's, with the options')."""

    ttl: float
    grace: float
    stale_if_error: float
    force: bool = False
    esi: bool = False


class Policy:
    """The freshness policy of one middleware (its options), applied to responses."""

    def __init__(self, cache_statuses: Collection[int], negative_ttl: float, honour: bool = True,
                 target: str = "pagecache"):
        self.cache_statuses = frozenset(cache_statuses)
        self.negative_ttl = negative_ttl
        self.honour = honour
        self.target = target.lower()

    def decide(self, code: int, headers: Headers, rule: Rule, requested: float, received: float) -> Decision:
        """The decision for a response with status ``code`` and ``headers``,
        asked for at ``requested`` and received at ``received`` (Unix times)."""
        values = _values(headers)
        control = directives(values.get("cache-control", ()))
        surrogate = surrogate_directives(values.get("surrogate-control", ()), self.target)
        if "no-store" in surrogate:
            return Decision("Surrogate-Control: no-store")
        if "private" in control and (control["private"] is None or control["private"] is INVALID):
            return Decision("Cache-Control: private")
        understood = code in UNDERSTOOD
        if "must-understand" in control and not understood:
            return Decision(f"Cache-Control: must-understand, and status {code} is not understood")
        if "no-store" in control and "max-age" not in surrogate \
                and not ("must-understand" in control and understood):
            return Decision("Cache-Control: no-store")
        if code in NEVER_STORED_STATUSES or code < 200:
            return Decision(f"status {code}")
        if not self.honour or rule.force:
            return self._by_rule(code, control, surrogate, rule, requested, received, values)
        return self._by_response(code, control, surrogate, rule, requested, received, values)

    def _by_rule(self, code: int, control: Dict, surrogate: Dict, rule: Rule, requested: float,
                 received: float, values: Dict[str, List[str]]) -> Decision:
        """0.1's policy: the rule's lifetimes; no-cache is not stored at all."""
        if "no-cache" in control and control["no-cache"] is None:
            return Decision("Cache-Control: no-cache")
        if code not in self.cache_statuses:
            return Decision(f"status {code}")
        ttl, grace, stale = rule.ttl, rule.grace, rule.stale_if_error
        if code >= 400:
            ttl, grace, stale = min(ttl, self.negative_ttl), 0.0, 0.0
        if ttl <= 0 and grace <= 0:
            return Decision("the rule gives no lifetime")
        return Decision(None, received, ttl, grace, stale, 0.0, _flags(values, control, surrogate, rule),
                        _dropped(control), fetched=min(requested, received))

    def _by_response(self, code: int, control: Dict, surrogate: Dict, rule: Rule, requested: float,
                     received: float, values: Dict[str, List[str]]) -> Decision:
        flags = _flags(values, control, surrogate, rule)
        lifetime, grace = _lifetime(control, surrogate, values, received)
        explicit = lifetime is not None
        age = _initial_age(values, requested, received)
        if explicit:
            ttl = min(lifetime, self.negative_ttl) if code >= 400 else lifetime
            if age is None:  # an Age that is not one number: stale on arrival
                ttl, age = 0.0, 0.0
        elif code in self.cache_statuses:
            ttl = min(rule.ttl, self.negative_ttl) if code >= 400 else rule.ttl
            age = age or 0.0
        else:
            return Decision(f"status {code} without a lifetime of its own")
        if grace is None:
            grace = _seconds_or(control.get("stale-while-revalidate"), rule.grace)
        stale = _seconds_or(control.get("stale-if-error"), rule.stale_if_error)
        revalidate = ("no-cache" in control and control["no-cache"] is None) or "must-revalidate" in control \
            or "proxy-revalidate" in control or "s-maxage" in control
        if "no-cache" in control and control["no-cache"] is None:
            ttl = 0.0
        if revalidate or code >= 400:
            grace, stale = 0.0, 0.0
        if revalidate:
            flags += MUST_REVALIDATE
        keep = KEEP_FOR_REVALIDATION if VALIDATORS in flags else 0.0
        born = received - age  # the age counts once: from when the response was generated
        if born + ttl + grace + stale + keep <= received:
            return Decision("stale on arrival, without a validator to revalidate it" if explicit
                            else "no lifetime: the response gives none and the rule gives none")
        return Decision(None, born, ttl, grace, stale, keep, flags, _dropped(control), explicit,
                        min(requested, received))


def _values(headers: Headers) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for name, value in headers:
        found.setdefault(name.lower(), []).append(value)
    return found


def _lifetime(control: Dict, surrogate: Dict, values: Dict[str, List[str]],
              received: float) -> Tuple[Optional[float], Optional[float]]:
    """The freshness lifetime the response gives (None: none) and, from
    Surrogate-Control's ``max-age=N+M``, a grace period (None: none)."""
    if "max-age" in surrogate:
        match = _SURROGATE_AGE.match(surrogate["max-age"]) if isinstance(surrogate["max-age"], str) else None
        if match is None:
            return 0.0, None
        grace = float(min(int(match.group(2)), MAX_AGE)) if match.group(2) else None
        return float(min(int(match.group(1)), MAX_AGE)), grace
    for name in ("s-maxage", "max-age"):
        if name in control:
            value = seconds(control[name])
            return (0.0 if value is None else value), None
    if "expires" in values:
        expires = http_date(values["expires"][0])
        if expires is None:
            return 0.0, None   # an invalid date is in the past (RFC 9111 5.3)
        date = http_date(values["date"][0]) if "date" in values else None
        return max(0.0, expires - (received if date is None else date)), None
    return None, None


def _initial_age(values: Dict[str, List[str]], requested: float, received: float) -> Optional[float]:
    """The response's age on arrival (RFC 9111 4.2.3: at least the time it
    took, so that it counts as generated when it was asked for), or None when
    its Age header is not one non-negative number (then it counts as stale)."""
    apparent = 0.0
    if "date" in values:
        date = http_date(values["date"][0])
        if date is not None:
            apparent = max(0.0, received - date)
    delay = max(0.0, received - requested)  # the response may have been generated as soon as it was asked for
    ages = values.get("age")
    if ages is None:
        return max(apparent, delay)
    if len(ages) != 1 or not _DIGITS.match(ages[0].strip()):
        return None
    return max(apparent, float(int(ages[0].strip())) + delay)


def _seconds_or(value: object, default: float) -> float:
    found = seconds(value)
    return default if found is None else found


def esi_marked(surrogate: Dict) -> bool:
    """Whether Surrogate-Control says the body holds ESI (``content="ESI/1.0"``)."""
    content = surrogate.get("content")
    return isinstance(content, str) and "esi/1.0" in content.lower().split()


def _flags(values: Dict[str, List[str]], control: Dict, surrogate: Dict, rule: Rule) -> str:
    flags = ""
    if "etag" in values or "last-modified" in values:
        flags += VALIDATORS
    if rule.esi or esi_marked(surrogate):
        flags += ESI
        if "public" in control:
            flags += SHARED
    return flags


def _dropped(control: Dict) -> FrozenSet[str]:
    return field_names(control.get("no-cache")) | field_names(control.get("private"))
