"""The requests pagecache answers itself, never the application, for
``purge_allowed`` addresses only: HTTP ``PURGE``, the dashboard and counters
at ``stats_path`` (HTML for browsers, JSON for anything that doesn't ask for
HTML first), and Prometheus' text format at ``metrics_path``."""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any, Callable, Dict, Iterable, List, Sequence

from . import dashboard, metrics
from .backends import server_states
from .config import ConfigError
from .fill import environ_key
from .keys import request_url
from .tags import parse_header

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
    """``PURGE <url>``: purge the page a GET of that URL would get; with the
    tag header (``Surrogate-Key: a b``), the pages tagged so instead; with
    ``X-Purge-All: 1``, every page. ``X-Purge-Soft: 1``: soft."""
    url = url_of(environ)
    if not allowed(environ, middleware.purge_allowed):
        log.warning("PURGE %s refused for %s", url, environ.get("REMOTE_ADDR"))
        return plain(start_response, "403 Forbidden", f"PURGE not allowed from {environ.get('REMOTE_ADDR')}\n")
    soft = environ.get("HTTP_X_PURGE_SOFT", "").strip().lower() in _YES
    kind = "soft-purged" if soft else "purged"
    if environ.get("HTTP_X_PURGE_ALL", "").strip().lower() in _YES:
        if not middleware.purge_all(soft):
            return plain(start_response, "503 Service Unavailable", "not purged: the cache did not take it\n")
        log.info("PURGE everything from %s: %s", environ.get("REMOTE_ADDR"), kind)
        return plain(start_response, "200 OK", f"{kind} everything\n")
    tags = parse_header(environ.get(environ_key(middleware.tag_header))) if middleware.tag_header else ()
    if tags:
        failed = middleware.purge_tags(tags, soft)
        if failed:
            return plain(start_response, "503 Service Unavailable", f"not purged: {' '.join(failed)}\n")
        return plain(start_response, "200 OK", f"{kind} tags {' '.join(tags)}\n")
    found = middleware.purger.purge_digest(middleware.keys.digest(environ), soft)
    log.info("PURGE %s from %s: %s", url, environ.get("REMOTE_ADDR"), kind if found else "nothing cached")
    if found:
        return plain(start_response, "200 OK", f"{kind} {url}\n")
    return plain(start_response, "404 Not Found", f"nothing cached for {url}\n")


def snapshot(middleware: Any) -> Dict[str, Any]:
    """The counters of this process, or of every worker of its server with
    ``stats_dir``; and the state of the cache's servers."""
    found = middleware.shared.combined() if middleware.shared is not None else middleware.stats.snapshot()
    found["servers"] = server_states(middleware.cache)
    return found


def serve_stats(middleware: Any, environ: Dict, start_response: StartResponse) -> Iterable[bytes]:
    """The dashboard for a browser, the counters as JSON for anything else."""
    if not allowed(environ, middleware.purge_allowed):
        return plain(start_response, "403 Forbidden", "stats not allowed from this address\n")
    if wants_html(environ.get("HTTP_ACCEPT", "")):
        body = dashboard.page(environ.get("SCRIPT_NAME", "") + middleware.stats_path)
        start_response("200 OK", dashboard.HEADERS + [("Content-Length", str(len(body)))])
        return [body]
    body = json.dumps(snapshot(middleware), indent=1, sort_keys=True).encode("ascii")
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                              ("Cache-Control", "no-store"), ("Vary", "Accept")])
    return [body]


def check_metrics() -> None:
    """``metrics_path`` needs prometheus_client: a ConfigError at load time without it."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(f"option metrics_path: prometheus_client is not installed ({metrics.PIP_HINT})",
                          "metrics_path") from None


def serve_metrics(middleware: Any, environ: Dict, start_response: StartResponse) -> Iterable[bytes]:
    """The counters in Prometheus' text format."""
    if not allowed(environ, middleware.purge_allowed):
        return plain(start_response, "403 Forbidden", "metrics not allowed from this address\n")
    content_type, body = metrics.prometheus(snapshot(middleware))
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                              ("Cache-Control", "no-store")])
    return [body]


def wants_html(accept: str) -> bool:
    """Whether an ``Accept`` header prefers HTML to JSON (a browser's does;
    ``*/*``, none or ``application/json`` do not)."""
    html = json_ = 0.0
    for item in accept.split(","):
        media, _, parameters = item.strip().partition(";")
        quality = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.strip().lower()
        if media in ("text/html", "application/xhtml+xml"):
            html = max(html, quality)
        elif media in ("application/json", "*/*", "application/*"):
            json_ = max(json_, quality)
    return html > json_
