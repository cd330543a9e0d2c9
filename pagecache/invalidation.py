"""Invalidation on unsafe methods (RFC 9111 4.4).

A request whose method may change what the server holds (anything but GET,
HEAD, OPTIONS and TRACE) that gets a non-error answer (2xx or 3xx) makes the
stored pages at its own URL and at the same-host ``Location`` and
``Content-Location`` URLs of the answer misses: they are deleted from the
cache, for every process sharing it, so that after a POST that redirects
back to the page it changed, the writer and every reader see the new page
(and cold-page coalescing shields the application from the readers). Each
process's in-memory tier (``local_ttl``) is its own: other processes may
serve their copy for up to ``local_ttl``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional
from urllib.parse import unquote, urljoin, urlsplit

from .entry import Headers
from .keys import request_url

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
LOCATIONS = ("location", "content-location")


def is_unsafe(method: Optional[str]) -> bool:
    return method not in SAFE_METHODS


def targets(environ: Dict, headers: Headers) -> List[tuple]:
    """The request URLs (as :func:`pagecache.keys.request_url` gives them) an
    answer to ``environ`` with ``headers`` invalidates: the request's own, and
    the Location / Content-Location ones on the same scheme, host and script."""
    own = request_url(environ)
    found = [own]
    path, _query, host, script, scheme = own
    base = f"{scheme}://{host}{script}{path}"
    for name, value in headers:
        if name.lower() not in LOCATIONS or not value.strip():
            continue
        parts = urlsplit(urljoin(base, value.strip()))
        if parts.scheme != scheme or parts.netloc.lower() != host.lower():
            continue
        target = unquote(parts.path, "latin-1")
        if script and not target.startswith(script + "/") and target != script:
            continue
        found.append((target[len(script):] or "/", parts.query, host, script, scheme))
    return found


def watching(start_response: Callable, environ: Dict,
             invalidate: Callable[[List[tuple]], Any]) -> Callable:
    """A start_response that, once the application answers 2xx or 3xx,
    invalidates what :func:`targets` names."""
    def start(status: str, headers: Headers, exc_info: Any = None) -> Any:
        if exc_info is None and status[:1] in ("2", "3"):
            invalidate(targets(environ, headers))
        return start_response(status, headers, exc_info)
    return start
