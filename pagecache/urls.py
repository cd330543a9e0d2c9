"""The parts of a request's URL as an application will read them: which Host
headers name a host, which paths every router reads alike, and which query
parameters can be dropped or reordered without changing what an application
sees.

A shared cache is only safe when two requests that share a stored page would
be routed by the application to the same page. Routers disagree about dot
segments (Pyramid's traversal resolves ``/a/../b``, URL dispatch does not),
empty segments and backslashes, and query parsers disagree about separators
(WebOb and CherryPy split at ``;`` as well as ``&``). So pagecache caches only
what they all read alike, and anything else goes to the application uncached.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple
from urllib.parse import unquote_plus

_DEFAULT_PORTS = {"http": "80", "https": "443"}
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(
    rf"^(?:(?:{_LABEL}\.)*{_LABEL}\.?"      # a host name (or an IPv4 address, which is one too)
    r"|\[[0-9a-f:.]{2,45}\])"               # an IPv6 literal
    r"(?::(?P<port>[0-9]{1,5}))?$")
# Paths whose routing depends on the router: dot segments, empty segments,
# backslashes, control characters, and percent signs left after the server
# decoded the path (an application that decodes again sees another path).
_AMBIGUOUS_PATH = re.compile(r"(?:^|/)\.\.?(?:/|$)|//|\\|[\x00-\x1f\x7f]|%[0-9A-Fa-f]{2}")
_PLAIN_PARAMETER = re.compile(r"^[^;=]*(?:=[^;]*)?$")


def canonical_host(host: str, scheme: str) -> Optional[str]:
    """``host`` (a Host header) lower-cased without the scheme's default port,
    or None when it is not a host name or IP literal with an optional port."""
    host = host.lower()
    match = _HOST.match(host)
    if match is None:
        return None
    port = match.group("port")
    if port is not None:
        if not 0 < int(port) < 65536:
            return None
        if port == _DEFAULT_PORTS.get(scheme):
            host = host[: -len(port) - 1]
    return host


def path_is_plain(path: str) -> bool:
    """Whether every router reads the (decoded) ``path`` as written: no dot or
    empty segments, backslashes, control characters or leftover escapes."""
    if not path:
        return True
    return path.startswith("/") and _AMBIGUOUS_PATH.search(path) is None


def normalise_query(query: str, ignored: Iterable[str] = (), sort: bool = False) -> str:
    """``query`` without the ``ignored`` parameters, and sorted by name if
    ``sort``. Only plain ``name=value`` parts (no ``;``) are dropped or moved;
    with any other part the order is kept, since parsers that split at ``;``
    would see other parameters in another order."""
    ignored = frozenset(ignored)
    parts = query.split("&")
    plain = all(_PLAIN_PARAMETER.match(part) for part in parts)
    kept: List[str] = []
    for part in parts:
        if not part:
            continue
        if ignored and _PLAIN_PARAMETER.match(part) and _name(part) in ignored:
            continue
        kept.append(part)
    if sort and plain:
        kept.sort(key=_name)  # stable: repeated names keep their order
    return "&".join(kept)


def _name(part: str) -> str:
    return unquote_plus(part.split("=", 1)[0])


# What a URL that looks like a static file must be answered with to be stored:
# web cache deception makes a router answer /account/x.css with the account
# page, which a rule meant for stylesheets would store for everybody.
STATIC_TYPES: Dict[str, Tuple[str, ...]] = {
    "css": ("text/css",),
    "js": ("application/javascript", "text/javascript", "application/x-javascript", "application/ecmascript"),
    "mjs": ("application/javascript", "text/javascript"),
    "json": ("application/json",), "map": ("application/json",),
    "png": ("image/png",), "gif": ("image/gif",), "jpg": ("image/jpeg",), "jpeg": ("image/jpeg",),
    "webp": ("image/webp",), "avif": ("image/avif",), "svg": ("image/svg+xml",),
    "ico": ("image/x-icon", "image/vnd.microsoft.icon"),
    "woff": ("font/woff", "application/font-woff"), "woff2": ("font/woff2",),
    "ttf": ("font/ttf", "application/x-font-ttf", "font/sfnt"), "otf": ("font/otf", "font/sfnt"),
    "txt": ("text/plain",), "xml": ("application/xml", "text/xml"), "pdf": ("application/pdf",),
    "mp4": ("video/mp4",), "webm": ("video/webm",), "mp3": ("audio/mpeg",), "wasm": ("application/wasm",),
}


def static_type_mismatch(path: str, content_type: Optional[str]) -> Optional[str]:
    """Why a response to ``path`` may not be stored because the path looks like
    a static file (by its extension) and the response is not of that type, or
    None."""
    name = path.rpartition("/")[2]
    stem, dot, extension = name.rpartition(".")
    expected = STATIC_TYPES.get(extension.lower()) if dot and stem else None
    if expected is None:
        return None
    given = (content_type or "").split(";", 1)[0].strip().lower()
    if given in expected or (extension.lower() in ("json", "map") and given.endswith("+json")):
        return None
    return f"Content-Type {given or '(none)'} does not match .{extension.lower()} (web cache deception)"
