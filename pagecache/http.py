"""The HTTP rules of a shared cache: which requests may use it, which responses
may be stored, what is kept of them, and how a stored page answers a
conditional request.

A request may use the cache when it is a ``GET`` or ``HEAD`` without a body
that identifies nobody: no ``Authorization``, no ``REMOTE_USER``, and no
cookie (or, with ``bypass_cookies``, none of the cookies named). A response
may be stored when its status line and headers are well formed, it sets no
cookie (unless ``cookie_responses = strip``) and its ``Vary`` names only
valid header names (not ``*``); how long, if at all, its status and
``Cache-Control`` allow is :mod:`pagecache.freshness`'s. ``Set-Cookie`` and hop-by-hop headers are never stored,
and never sent from a stored entry whoever wrote it (:mod:`pagecache.entry`).
"""

from __future__ import annotations

import hashlib
import re
from email.utils import parsedate_tz, mktime_tz
from typing import Dict, FrozenSet, Iterable, Optional, Tuple

from .cookies import carries_any, has_cookies
from .encoding import normalised_accept_encoding
from .entry import NEVER_STORED, Headers, header_value

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
COOKIE = "cookie"  # the bypass reason a page shared with cookies (ESI, public) overrides

# Kept from the stored response in a 304 (RFC 9110, 15.4.5).
NOT_MODIFIED_HEADERS = frozenset({
    "cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified",
})

_STATUS_OK = re.compile(r"^[1-5]\d\d(?: [\t\x20-\x7e\x80-\xff]*)?$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE_OK = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
_SPACES = re.compile(r"[ \t]+")


def bypass_reason(environ: Dict, bypass_cookies: FrozenSet[str]) -> Optional[str]:
    """Why this request may not use the cache, or None if it may."""
    if environ.get("REQUEST_METHOD") not in CACHEABLE_METHODS:
        return "method"
    if "HTTP_AUTHORIZATION" in environ:
        return "authorization"
    if environ.get("REMOTE_USER"):
        return "REMOTE_USER"
    if has_body(environ):
        return "request body"
    cookie = environ.get("HTTP_COOKIE")
    if cookie and (carries_any(cookie, bypass_cookies) if bypass_cookies else has_cookies(cookie)):
        return COOKIE
    return None


def has_body(environ: Dict) -> bool:
    """Whether the request says it carries a body (a ``GET`` with one is not cached)."""
    length = environ.get("CONTENT_LENGTH")
    return bool(length and length.strip() not in ("", "0")) or "HTTP_TRANSFER_ENCODING" in environ


def status_code(status: str) -> int:
    """The code of a WSGI status line (``"200 OK"`` -> 200), or 0 if it has none."""
    try:
        return int(status[:3])
    except (TypeError, ValueError):
        return 0


def unstorable_reason(status: str, headers: Headers, store_cookies: bool = False) -> Optional[str]:
    """Why a response may not be stored whatever its lifetime (a malformed
    status line or header, a Vary naming no header, a cookie), or None.
    What its status and Cache-Control allow is :mod:`pagecache.freshness`'s."""
    if not isinstance(status, str) or not _STATUS_OK.match(status):
        return "invalid status line"
    for name, value in headers:
        if not (isinstance(name, str) and isinstance(value, str)
                and _TOKEN.match(name) and _HEADER_VALUE_OK.match(value)):
            return f"invalid header {name!r}"
        lower = name.lower()
        if lower == "vary":
            reason = _vary_problem(value)
            if reason is not None:
                return reason
        elif lower == "set-cookie" and not store_cookies:
            return "Set-Cookie (cookie_responses = pass)"
    return None


def _vary_problem(value: str) -> Optional[str]:
    for name in value.split(","):
        name = name.strip(" \t")
        if name == "*":
            return "Vary: *"
        if name and not _TOKEN.match(name):
            return f"Vary names {name!r}, which is not a header name"
    return None


def headers_to_store(headers: Headers, body: Optional[bytes], drop: Iterable[str] = ()) -> Tuple[Headers, bool]:
    """The headers kept in a stored page: none of :data:`NEVER_STORED`,
    ``drop`` or the headers ``Connection`` names, plus an exact Content-Length
    and, for a page without an ETag, a strong one made from the body; and
    whether it was made. ``body`` None: the body is not the stored bytes (ESI
    parts), so neither is added."""
    dropped = set(NEVER_STORED) | {"content-length"} | {d.lower() for d in drop}
    for name, value in headers:
        if name.lower() == "connection":
            dropped.update(token.strip().lower() for token in value.split(","))
    kept = [(name, value) for name, value in headers if name.lower() not in dropped]
    if body is None:
        return kept, False
    kept.append(("Content-Length", str(len(body))))
    if any(name.lower() == "etag" for name, _ in kept):
        return kept, False
    kept.append(("ETag", make_etag(body)))
    return kept, True


def make_etag(body: bytes) -> str:
    """A strong entity tag for ``body``."""
    return '"pc-' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def set_cookies(headers: Headers) -> Headers:
    """The Set-Cookie headers of a response (kept for the client that caused it)."""
    return [(name, value) for name, value in headers if name.lower() == "set-cookie"]


def vary_names(headers: Headers) -> Tuple[str, ...]:
    """The request headers a response varies on, lower-cased and sorted."""
    names = set()
    for name, value in headers:
        if name.lower() == "vary":
            names.update(v.strip(" \t").lower() for v in value.split(",") if v.strip(" \t"))
    return tuple(sorted(names))


def variant_of(environ: Dict, names: Tuple[str, ...]) -> str:
    """The values of request headers ``names``, with runs of spaces and tabs
    made one space (nothing else: a no-break space is another value), as one
    string; ``Accept-Encoding`` as the encoding pagecache would serve."""
    parts = []
    for name in names:
        if name == "content-type":
            value = environ.get("CONTENT_TYPE")
        else:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        if name == "accept-encoding":  # one variant per encoding pagecache can serve, not per browser
            value = normalised_accept_encoding(value)
        parts.append(_SPACES.sub(" ", value).strip(" ") if value is not None else "\x00")
    return "\x01".join(parts)


def not_modified(environ: Dict, status: str, headers: Headers) -> bool:
    """Whether a conditional GET/HEAD may be answered 304 from a stored page
    with this status and these headers (the representation the client gets)."""
    if not status.startswith("200"):
        return False
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        etag = header_value(headers, "etag")
        if etag is None:
            return False
        if if_none_match.strip() == "*":
            return True
        wanted = _weak(etag)
        return any(_weak(tag) == wanted for tag in if_none_match.split(","))
    if_modified_since = environ.get("HTTP_IF_MODIFIED_SINCE")
    if if_modified_since is not None:
        last_modified = header_value(headers, "last-modified")
        since, modified = http_date(if_modified_since), http_date(last_modified)
        return since is not None and modified is not None and modified <= since
    return False


def not_modified_headers(headers: Headers) -> Headers:
    """The headers of a stored page that a 304 for it carries."""
    return [(name, value) for name, value in headers if name.lower() in NOT_MODIFIED_HEADERS]


def _weak(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def http_date(value: Optional[str]) -> Optional[float]:
    """The Unix time of an HTTP date, or None when it is not one."""
    if not value:
        return None
    try:
        parsed = parsedate_tz(value)
        return float(mktime_tz(parsed)) if parsed else None
    except (TypeError, ValueError, OverflowError):
        return None
