"""The HTTP rules of a shared cache: which requests may use it, which responses
may be stored, what is kept of them, and how a stored page answers a
conditional request.

pagecache follows RFC 9111 where it applies to a cache whose lifetimes come
from configured rules rather than from the response: a response that says
``private``, ``no-store`` or ``no-cache``, ``Vary: *``, or whose status is not
in ``cache_statuses`` is never stored, and nothing a client sends forces a
refresh. ``Set-Cookie`` and hop-by-hop headers are never stored.
"""

from __future__ import annotations

import hashlib
import io
import re
from email.utils import parsedate_tz, mktime_tz
from typing import Collection, Dict, FrozenSet, Iterable, Optional, Tuple

from .entry import Headers, Page

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})

# Kept from the stored response in a 304 (RFC 9110, 15.4.5).
NOT_MODIFIED_HEADERS = frozenset({
    "cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified",
})

# Request headers removed before the application renders a page for the cache:
# conditionals and ranges (the cache needs the whole 200 and answers them
# itself), and headers that make an application believe in another scheme, host
# or path than the key holds (so nobody can plant a page rendered for them).
FILL_REMOVED = (
    "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_MATCH", "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_IF_RANGE", "HTTP_RANGE",
    "HTTP_FORWARDED", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_PREFIX", "HTTP_X_FORWARDED_SCHEME", "HTTP_X_FORWARDED_SSL",
    "HTTP_X_FORWARDED_SERVER", "HTTP_X_HOST", "HTTP_X_ORIGINAL_HOST", "HTTP_X_ORIGINAL_URL",
    "HTTP_X_REWRITE_URL",
)

_UNSTORABLE_DIRECTIVES = ("private", "no-store", "no-cache")
_DIRECTIVE = re.compile(r"(?:^|,)\s*([A-Za-z-]+)")
_STATUS_OK = re.compile(r"^[1-5]\d\d(?: [\t\x20-\x7e\x80-\xff]*)?$")
_HEADER_NAME_OK = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE_OK = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")


def bypass_reason(environ: Dict, bypass_cookies: FrozenSet[str]) -> Optional[str]:
    """Why this request may not use the cache, or None if it may."""
    if environ.get("REQUEST_METHOD") not in CACHEABLE_METHODS:
        return "method"
    if "HTTP_AUTHORIZATION" in environ:
        return "authorization"
    if bypass_cookies:
        cookie = environ.get("HTTP_COOKIE")
        if cookie and any(part.split("=", 1)[0].strip() in bypass_cookies
                          for part in cookie.split(";")):
            return "cookie"
    return None


def fill_environ(environ: Dict, background: bool = False) -> Dict:
    """The environ for an application call whose response may be stored: a copy
    without :data:`FILL_REMOVED`; for a background rebuild, also with an empty
    body and ``pagecache.background`` set."""
    if not background and not any(name in environ for name in FILL_REMOVED):
        return environ
    copy = dict(environ)
    for name in FILL_REMOVED:
        copy.pop(name, None)
    if background:
        copy["wsgi.input"] = io.BytesIO(b"")
        copy["CONTENT_LENGTH"] = "0"
        copy["pagecache.background"] = True
    return copy


def status_code(status: str) -> int:
    """The code of a WSGI status line (``"200 OK"`` -> 200), or 0 if it has none."""
    try:
        return int(status[:3])
    except (TypeError, ValueError):
        return 0


def unstorable_reason(status: str, headers: Headers, cache_statuses: Collection[int]) -> Optional[str]:
    """Why a response may not be stored, or None if it may."""
    if not isinstance(status, str) or not _STATUS_OK.match(status):
        return "invalid status line"
    code = status_code(status)
    if code not in cache_statuses:
        return f"status {code}"
    for name, value in headers:
        if not (isinstance(name, str) and isinstance(value, str)
                and _HEADER_NAME_OK.match(name) and _HEADER_VALUE_OK.match(value)):
            return f"invalid header {name!r}"
        lower = name.lower()
        if lower == "cache-control":
            directives = {d.lower() for d in _DIRECTIVE.findall(value)}
            for directive in _UNSTORABLE_DIRECTIVES:
                if directive in directives:
                    return f"Cache-Control: {directive}"
        elif lower == "vary" and "*" in value:
            return "Vary: *"
    return None


def headers_to_store(headers: Headers, body: bytes, drop: Iterable[str] = ()) -> Headers:
    """The headers kept in a stored page: no Set-Cookie, hop-by-hop or Age, plus
    an exact Content-Length and, for a page without one, a strong ETag."""
    dropped = set(HOP_BY_HOP) | {"set-cookie", "age", "content-length"} | {d.lower() for d in drop}
    for name, value in headers:
        if name.lower() == "connection":
            dropped.update(token.strip().lower() for token in value.split(","))
    kept = [(name, value) for name, value in headers if name.lower() not in dropped]
    kept.append(("Content-Length", str(len(body))))
    if not any(name.lower() == "etag" for name, _ in kept):
        kept.append(("ETag", make_etag(body)))
    return kept


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
            names.update(v.strip().lower() for v in value.split(",") if v.strip())
    return tuple(sorted(names))


def variant_of(environ: Dict, names: Tuple[str, ...]) -> str:
    """The values of request headers ``names``, normalised, as one string."""
    parts = []
    for name in names:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        if name == "content-type":
            value = environ.get("CONTENT_TYPE")
        parts.append(" ".join(value.split()) if value is not None else "\x00")
    return "\x01".join(parts)


def not_modified(environ: Dict, page: Page) -> bool:
    """Whether a conditional GET/HEAD may be answered 304 from ``page``."""
    if not page.status.startswith("200"):
        return False
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        etag = page.header("ETag")
        if etag is None:
            return False
        if if_none_match.strip() == "*":
            return True
        wanted = _weak(etag)
        return any(_weak(tag) == wanted for tag in if_none_match.split(","))
    if_modified_since = environ.get("HTTP_IF_MODIFIED_SINCE")
    if if_modified_since is not None:
        last_modified = page.header("Last-Modified")
        since, modified = _http_date(if_modified_since), _http_date(last_modified)
        return since is not None and modified is not None and modified <= since
    return False


def not_modified_headers(headers: Headers) -> Headers:
    """The headers of a stored page that a 304 for it carries."""
    return [(name, value) for name, value in headers if name.lower() in NOT_MODIFIED_HEADERS]


def _weak(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def _http_date(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        parsed = parsedate_tz(value)
        return float(mktime_tz(parsed)) if parsed else None
    except (TypeError, ValueError, OverflowError):
        return None
