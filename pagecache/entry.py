"""What pagecache stores under a key, as bytes, and how those bytes are read back.

Three kinds of value live under a page's key:

* :class:`Page`: a response (status, headers, body) with the time it was
  stored and its lifetimes, the tags it carries and how its body is held;
* :class:`VaryMarker`: "this URL's response varies on these request headers";
  the page itself is stored under a variant key;
* :class:`Pass`: "this URL's last response could not be stored"; requests go
  to the application without waiting on each other until the marker expires,
  and the first response that may be stored replaces it (hit-for-miss).

The format is a one-line ASCII header giving every length, then for a page
its tags, its status line and header lines (latin-1, as in WSGI) and its
body. It is never pickle: :func:`parse` accepts exactly what ``to_bytes``
writes and returns ``None`` for anything else (another program's value, a
truncated write, an older format), which the middleware treats as a miss.
What it reads is filtered again: whoever wrote the entry, a page read back
never carries ``Set-Cookie``, hop-by-hop headers or ``Age``, and never a
``Content-Length`` other than its body's.
"""

from __future__ import annotations

import math
import re
from typing import Callable, FrozenSet, List, Optional, Tuple, Union

Headers = List[Tuple[str, str]]


def header_value(headers: Headers, name: str) -> Optional[str]:
    """The first value of the header ``name`` (given in lower case), or None."""
    return next((value for key, value in headers if key.lower() == name), None)


MAGIC = b"PC2 "
FRESH, GRACE, ERROR_ONLY, EXPIRED = "fresh", "grace", "error-only", "expired"

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Never stored and never sent from a stored entry: hop-by-hop headers, cookies,
# the age (pagecache says it), and what is meant for pagecache alone or for
# one client alone (RFC 9111, 3.1).
NEVER_STORED = HOP_BY_HOP | {"set-cookie", "age", "proxy-authentication-info", "surrogate-control",
                             "www-authenticate-shared"}

# flags of a page
MUST_REVALIDATE = "r"   # never served stale: must-revalidate, proxy-revalidate or no-cache
VALIDATORS = "v"        # its ETag / Last-Modified are the application's: it can be revalidated
SHARED = "s"            # may be served to requests with cookies (ESI with Cache-Control: public)
ESI = "e"               # the body is ESI parts (pagecache.esi.to_bytes)
GENERATED_ETAG = "g"    # its ETag is pagecache's (a hash of the body), not the application's
FLAGS = MUST_REVALIDATE + VALIDATORS + SHARED + ESI + GENERATED_ETAG

_HEAD = re.compile(rb"[1-5]\d\d(?: [^\r\n]*)?(?:\n[!#$%&'*+.^_`|~0-9A-Za-z-]+: [^\r\n]*)*\Z")
_TOKEN = re.compile(r"^[0-9a-f]{1,32}$")
_TAG = re.compile(r"^[!-~]{1,200}$")
_FLAGS = re.compile(r"^(?:-|[" + FLAGS + r"]{1,5})$")
_ENCODING = re.compile(r"^(?:-|gzip|br)$")
_REASON = re.compile(rb"[ -~]{0,200}\n\Z")  # what Pass.to_bytes writes after its first line


def _number(text: bytes) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def _length(text: bytes) -> int:
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


class _Value:
    """Entries are values: equal when of one kind with equal ``FIELDS``."""

    __slots__ = ()
    FIELDS: Tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, name) == getattr(other, name) for name in self.FIELDS)


class Page(_Value):
    """A stored response and its timing.

    ``stored`` is when the response was generated (its age counts from it),
    ``ttl`` how long it is fresh, ``grace`` how long after that it may be
    served stale while one request rebuilds it, ``stale`` how much longer it
    may stand in for a failing application, and ``keep`` how much longer
    again it is kept only to be revalidated. ``flags`` hold the letters of
    :data:`FLAGS`; ``encoding`` is the body's content coding (``""`` for
    identity) and ``identity_length`` its length decoded; ``tags`` are the
    tags it was stored with; ``fetched`` is when pagecache asked the
    application for it (no later than ``stored``'s, and what purges are
    compared with: a page asked for before a purge is purged, however old the
    answer said it was)."""

    FIELDS = ("status", "headers", "body", "stored", "ttl", "grace", "stale", "keep", "flags",
              "encoding", "identity_length", "tags", "fetched")
    __slots__ = FIELDS + ("_age", "_timed", "_memo", "reps")

    def __init__(self, status: str, headers: Headers, body: bytes,
                 stored: float, ttl: float, grace: float, stale: float = 0.0, *,
                 keep: float = 0.0, flags: str = "", encoding: str = "",
                 identity_length: Optional[int] = None, tags: Tuple[str, ...] = (),
                 fetched: Optional[float] = None):
        self.status = status
        self.headers = headers
        self.body = body
        self.stored = stored
        self.ttl = ttl
        self.grace = grace
        self.stale = stale
        self.keep = keep
        self.flags = flags
        self.encoding = encoding
        self.identity_length = len(body) if identity_length is None else identity_length
        self.tags = tags
        self.fetched = stored if fetched is None else fetched
        self._age = (0.0, 0.0, ("Age", "0"))  # the last Age header and when it holds
        self._timed: tuple = (0.0, 0.0, None, None)  # the last timed() headers: from, until, builder, headers
        self._memo: Optional[dict] = None      # what delivery works out once per page
        self.reps: dict = {}                   # Accept-Encoding -> (headers, body), worked out once per value

    def memo(self) -> dict:
        """A dict for what delivery works out once per stored page (not part of its value)."""
        memo = self._memo
        if memo is None:
            memo = self._memo = {}
        return memo

    def age_header(self, now: float) -> Tuple[str, str]:
        """The ``Age`` header at ``now``: whole seconds since it was stored, 0
        if the storing host's clock is ahead. Worked out once a second."""
        start, end, header = self._age
        if start <= now < end:
            return header
        seconds = int(now - self.stored) if now - self.stored >= 1 else 0
        start = self.stored + seconds if seconds else -math.inf
        header = ("Age", str(seconds))
        self._age = (start, self.stored + seconds + 1, header)
        return header

    def timed(self, now: float, build: Callable[["Page", int], Headers]) -> Headers:
        """``build(self, age)`` for the page's age at ``now`` in whole seconds
        (0 if the storing host's clock is ahead), worked out once a second:
        the headers that say how old a page is change no more often. The
        caller passes the same ``build`` object every time."""
        start, end, builder, headers = self._timed
        if builder is build and start <= now < end:
            return headers
        seconds = int(now - self.stored) if now - self.stored >= 1 else 0
        start = self.stored + seconds if seconds else -math.inf
        headers = build(self, seconds)
        self._timed = (start, self.stored + seconds + 1, build, headers)
        return headers

    def state(self, now: float) -> str:
        """FRESH inside the TTL, GRACE inside the grace period, ERROR_ONLY while
        it may only cover an application error, EXPIRED after that (or at
        once after the TTL when it must be revalidated)."""
        age = now - self.stored
        if age < self.ttl:
            return FRESH
        if MUST_REVALIDATE in self.flags:
            return EXPIRED
        if age < self.ttl + self.grace:
            return GRACE
        if age < self.ttl + self.grace + self.stale:
            return ERROR_ONLY
        return EXPIRED

    def lifetime(self) -> float:
        """Seconds from storing until the page is of no use at all."""
        return self.ttl + self.grace + self.stale + self.keep

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def expired_at(self, when: float) -> "Page":
        """A copy whose TTL ends at ``when`` (a soft purge), grace unchanged."""
        return self.replace(ttl=min(self.ttl, max(0.0, when - self.stored)))

    def replace(self, **changes: object) -> "Page":
        """A copy with ``changes`` to its fields."""
        fields = {name: getattr(self, name) for name in self.FIELDS}
        fields.update(changes)
        status, headers, body = fields.pop("status"), fields.pop("headers"), fields.pop("body")
        stored, ttl, grace = fields.pop("stored"), fields.pop("ttl"), fields.pop("grace")
        return Page(status, headers, body, stored, ttl, grace, **fields)

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def to_bytes(self) -> bytes:
        head = "\n".join([self.status] + [f"{k}: {v}" for k, v in self.headers]).encode("latin-1")
        tags = " ".join(self.tags).encode("ascii")
        line = (f"P {self.stored!r} {self.ttl!r} {self.grace!r} {self.stale!r} {self.keep!r} {self.fetched!r} "
                f"{self.flags or '-'} {self.encoding or '-'} {self.identity_length} "
                f"{len(tags)} {len(head)} {len(self.body)}\n")
        return b"".join((MAGIC, line.encode("ascii"), tags, head, self.body))

    def __repr__(self) -> str:
        return f"<Page {self.status!r} {len(self.body)} bytes stored={self.stored:.3f} ttl={self.ttl:g}>"


class VaryMarker(_Value):
    """The header names a URL's response varies on, and which generation of
    variants is current (a purge starts a new one). ``life`` is how long the
    marker was stored for; ``purged`` is the time of the last soft purge, which
    ends the TTL of every variant stored before it."""

    FIELDS = __slots__ = ("names", "generation", "stored", "life", "purged")

    def __init__(self, names: Tuple[str, ...], generation: str, stored: float,
                 life: float, purged: float = 0.0):
        self.names = names
        self.generation = generation
        self.stored = stored
        self.life = life
        self.purged = purged

    def to_bytes(self) -> bytes:
        # the final newline marks the end: a truncated copy does not parse
        return MAGIC + (f"V {self.stored!r} {self.life!r} {self.purged!r} {self.generation}\n"
                        + " ".join(self.names) + "\n").encode("ascii")

    def __repr__(self) -> str:
        return f"<VaryMarker {self.names} generation={self.generation}>"


class Pass(_Value):
    """The last response for this URL could not be stored (hit-for-miss)."""

    FIELDS = __slots__ = ("stored", "reason")

    def __init__(self, stored: float, reason: str = ""):
        self.stored = stored
        self.reason = reason

    def to_bytes(self) -> bytes:
        reason = re.sub(r"[^!-~ ]", "?", self.reason)[:200]
        return MAGIC + f"U {self.stored!r}\n{reason}\n".encode("ascii")  # newline: the end

    def __repr__(self) -> str:
        return f"<Pass {self.reason!r}>"


Entry = Union[Page, VaryMarker, Pass]


def parse(value: object, never_sent: FrozenSet[str] = frozenset()) -> Optional[Entry]:
    """The entry ``value`` holds, or None if it is not exactly one pagecache
    wrote. A page's headers named in :data:`NEVER_STORED` or ``never_sent``
    (lower-case) are dropped."""
    if type(value) is not bytes:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            return None
        value = bytes(value)
    if not value.startswith(MAGIC):
        return None
    try:
        newline = value.index(b"\n")
        fields = value[4:newline].split(b" ")
        kind = fields[0]
        if kind == b"P" and len(fields) == 13:
            return _parse_page(value, newline, fields, never_sent)
        if kind == b"V" and len(fields) == 5 and value.endswith(b"\n"):
            names = tuple(value[newline + 1:-1].decode("ascii").split(" "))
            generation = fields[4].decode("ascii")
            if not _TOKEN.match(generation) or not all(_valid_name(n) for n in names):
                return None
            return VaryMarker(names, generation, _number(fields[1]), _number(fields[2]),
                              _number(fields[3]))
        if kind == b"U" and len(fields) == 2 and _REASON.match(value, newline + 1):
            return Pass(_number(fields[1]), value[newline + 1:-1].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    return None


def _parse_page(value: bytes, newline: int, fields: List[bytes], never_sent: FrozenSet[str]) -> Optional[Page]:
    flags, encoding = fields[7].decode("ascii"), fields[8].decode("ascii")
    if not _FLAGS.match(flags) or not _ENCODING.match(encoding):
        return None
    identity_length, tags_length, head_length, body_length = (_length(f) for f in fields[9:13])
    start = newline + 1
    if len(value) != start + tags_length + head_length + body_length:
        return None
    tags = tuple(value[start:start + tags_length].decode("ascii").split(" ")) if tags_length else ()
    if not all(_TAG.match(tag) for tag in tags):
        return None
    block = value[start + tags_length:start + tags_length + head_length]
    if not _HEAD.match(block):
        return None
    body = value[start + tags_length + head_length:]
    lines = block.decode("latin-1").split("\n")
    pairs = [line.split(": ", 1) for line in lines[1:]]
    named = {token.strip(" \t").lower() for name, text in pairs if name.lower() == "connection"
             for token in text.split(",")}
    headers = []
    for name, text in pairs:
        lower = name.lower()
        if lower in NEVER_STORED or lower in never_sent or lower in named:
            continue
        if lower == "content-length" and (text.strip() != str(len(body)) or
                                          any(n.lower() == "content-length" for n, _ in headers)):
            return None  # a length that is not the body's would desynchronise the client
        headers.append((name, text))
    return Page(lines[0], headers, body, _number(fields[1]), _number(fields[2]), _number(fields[3]),
                _number(fields[4]), keep=_number(fields[5]), fetched=_number(fields[6]),
                flags="" if flags == "-" else flags,
                encoding="" if encoding == "-" else encoding, identity_length=identity_length, tags=tags)


_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _valid_name(name: str) -> bool:
    return bool(_NAME.match(name))
