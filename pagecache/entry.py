"""What pagecache stores under a key, as bytes, and how those bytes are read back.

Three kinds of value live under a page's key:

* :class:`Page`: a response (status, headers, body) with the time it was
  stored and its TTL, grace period and stale-if-error window;
* :class:`VaryMarker`: "this URL's response varies on these request headers";
  the page itself is stored under a variant key;
* :class:`Pass`: "this URL's last response could not be stored"; requests go
  straight to the application until the marker expires.

The format is a one-line ASCII header, then for a page the status line and
header lines (latin-1, as in WSGI), a blank line and the body. It is never
pickle: :func:`parse` accepts exactly what :meth:`to_bytes` writes and returns
``None`` for anything else (another program's value, a truncated write, an
older format), which the middleware treats as a miss.
"""

from __future__ import annotations

import math
import re
from typing import List, Optional, Tuple, Union

Headers = List[Tuple[str, str]]

MAGIC = b"PC1 "
FRESH, GRACE, ERROR_ONLY, EXPIRED = "fresh", "grace", "error-only", "expired"

_HEAD = re.compile(rb"[1-5]\d\d(?: [^\r\n]*)?(?:\n[!#$%&'*+.^_`|~0-9A-Za-z-]+: [^\r\n]*)*\Z")
_TOKEN = re.compile(r"^[0-9a-f]{1,32}$")
_REASON = re.compile(rb"[ -~]{0,200}\n\Z")  # what Pass.to_bytes writes after its first line


def _number(text: bytes) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


class _Value:
    """Entries are values: equal when of one kind with equal ``FIELDS``."""

    __slots__ = ()
    FIELDS: Tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, name) == getattr(other, name) for name in self.FIELDS)


class Page(_Value):
    """A stored response and its timing."""

    FIELDS = ("status", "headers", "body", "stored", "ttl", "grace", "stale")
    __slots__ = FIELDS + ("_age",)

    def __init__(self, status: str, headers: Headers, body: bytes,
                 stored: float, ttl: float, grace: float, stale: float = 0.0):
        self.status = status
        self.headers = headers
        self.body = body
        self.stored = stored
        self.ttl = ttl
        self.grace = grace
        self.stale = stale
        self._age = (0.0, 0.0, ("Age", "0"))  # the last Age header and when it holds

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

    def state(self, now: float) -> str:
        """FRESH inside the TTL, GRACE inside the grace period, ERROR_ONLY while
        it may only cover an application error, EXPIRED after that."""
        age = now - self.stored
        if age < self.ttl:
            return FRESH
        if age < self.ttl + self.grace:
            return GRACE
        if age < self.ttl + self.grace + self.stale:
            return ERROR_ONLY
        return EXPIRED

    def lifetime(self) -> float:
        """Seconds from storing until the page is of no use at all."""
        return self.ttl + self.grace + self.stale

    def expired_at(self, when: float) -> "Page":
        """A copy whose TTL ends at ``when`` (a soft purge), grace unchanged."""
        ttl = min(self.ttl, max(0.0, when - self.stored))
        return Page(self.status, self.headers, self.body, self.stored, ttl, self.grace, self.stale)

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def to_bytes(self) -> bytes:
        head = "\n".join([self.status] + [f"{k}: {v}" for k, v in self.headers])
        return b"".join((
            MAGIC,
            f"P {self.stored!r} {self.ttl!r} {self.grace!r} {self.stale!r} {len(self.body)}\n".encode("ascii"),
            head.encode("latin-1"),
            b"\n\n",
            self.body,
        ))

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
    """The last response for this URL could not be stored (hit-for-pass)."""

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


def parse(value: object) -> Optional[Entry]:
    """The entry ``value`` holds, or None if it is not exactly one pagecache wrote."""
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
        if kind == b"P" and len(fields) == 6:
            return _parse_page(value, newline, fields)
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


def _parse_page(value: bytes, newline: int, fields: List[bytes]) -> Optional[Page]:
    end = value.find(b"\n\n", newline)
    if end < 0:
        return None
    body_length = int(fields[5])
    if len(value) - end - 2 != body_length:
        return None
    block = value[newline + 1:end]
    if not _HEAD.match(block):
        return None
    lines = block.decode("latin-1").split("\n")
    status = lines[0]
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    return Page(status, headers, value[end + 2:], _number(fields[1]), _number(fields[2]),
                _number(fields[3]), _number(fields[4]))


_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _valid_name(name: str) -> bool:
    return bool(_NAME.match(name))
