"""The requests pagecache answers itself, never the application: HTTP ``PURGE``
and the counters at ``stats_path``, both for ``purge_allowed`` addresses only."""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any, Callable, Dict, Iterable, List, Sequence

from .keys import request_url

log = logging.getLogger("pagecache")

StartResponse = Callable[..., Any]
_YES = ("1", "true", "yes", "on")


def allowed(environ: Dict, networks: Sequence[Any]) -> bool:
    """Whether the request comes from one of ``networks`` (by ``REMOTE_ADDR``)."""
    try:
        address = ipaddress.ip_address(environ.get("REMOTE_ADDR", "").split("%")[0])
    except ValueError:
        return False
    return any(address in network for network in networks)


def url_of(environ: Dict) -> str:
    """The request's URL, for logs and answers."""
    path, query, host, script, scheme = request_url(environ)
    return f"{scheme}://{host}{script}{path}" + (f"?{query}" if query else "")


def plain(start_response: StartResponse, status: str, text: str) -> List[bytes]:
    """A short text answer that no cache keeps."""
    body = text.encode("utf-8", "replace")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
    return [body]


def http_purge(middleware: Any, environ: Dict, start_response: StartResponse) -> Iterable[bytes]:
    """``PURGE <url>``: purge the page a GET of that URL would get (``X-Purge-Soft: 1``: soft)."""
    url = url_of(environ)
    if not allowed(environ, middleware.purge_allowed):
        log.warning("PURGE %s refused for %s", url, environ.get("REMOTE_ADDR"))
        return plain(start_response, "403 Forbidden", f"PURGE not allowed from {environ.get('REMOTE_ADDR')}\n")
    soft = environ.get("HTTP_X_PURGE_SOFT", "").strip().lower() in _YES
    found = middleware.purger.purge_digest(middleware.keys.digest(environ), soft)
    kind = "soft-purged" if soft else "purged"
    log.info("PURGE %s from %s: %s", url, environ.get("REMOTE_ADDR"), kind if found else "nothing cached")
    if found:
        return plain(start_response, "200 OK", f"{kind} {url}\n")
    return plain(start_response, "404 Not Found", f"nothing cached for {url}\n")


def serve_stats(middleware: Any, environ: Dict, start_response: StartResponse) -> Iterable[bytes]:
    """The counters, as JSON."""
    if not allowed(environ, middleware.purge_allowed):
        return plain(start_response, "403 Forbidden", "stats not allowed from this address\n")
    body = json.dumps(middleware.stats.snapshot(), indent=1, sort_keys=True).encode("ascii")
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                              ("Cache-Control", "no-store")])
    return [body]
