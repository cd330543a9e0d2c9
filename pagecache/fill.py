"""The request an application renders a page for the cache from.

A stored page is served to everybody who asks for its URL, so the application
must render it from nothing but what the key holds: the scheme, the host as
the key holds it, the script name, the path and the normalised query. On every
fill (foreground or background) it gets a copy of the request with:

* ``Host`` and ``QUERY_STRING`` as the key holds them (lower-case host without
  the default port; the query without ``ignore_query`` parameters, sorted with
  ``sort_query``);
* an empty body;
* no ``Cookie``, ``Authorization`` or ``REMOTE_USER`` (requests carrying them
  bypass the cache, except cookies that ``bypass_cookies`` leaves out, which
  the page for everybody must not depend on);
* no conditional or ``Range`` header of the client's (the cache needs the
  whole page and answers those itself), but its own validators when it
  revalidates a stored page;
* ``Surrogate-Capability: pagecache="Surrogate/1.0 ESI/1.0"``, which tells
  the application that Edge Side Includes will be processed, and the name
  ``Surrogate-Control`` directives may be targeted at;
* no header that makes an application believe in another URL, scheme, script
  name, host or method: the ``X-Forwarded-*``, ``X-Original-*`` and
  ``X-Rewrite-*`` families, ``Forwarded``, ``X-Host``, ``X-Script-Name``,
  ``X-Scheme``, ``X-Url-Scheme``, ``Front-End-Https``,
  ``X-HTTP-Method-Override`` and the like, plus ``strip_request_headers``.

A proxy-aware component that turns trusted forwarding headers into the environ
(waitress's ``trusted_proxy``, werkzeug's ``ProxyFix``) belongs in front of
pagecache, so that the key holds what it decided.
"""

from __future__ import annotations

import io
from typing import Dict, FrozenSet, Iterable, Optional, Tuple
from urllib.parse import quote

FAMILIES: Tuple[str, ...] = ("HTTP_X_FORWARDED_", "HTTP_X_ORIGINAL_", "HTTP_X_REWRITE_")
REMOVED: FrozenSet[str] = frozenset({
    "HTTP_COOKIE", "HTTP_AUTHORIZATION", "REMOTE_USER", "AUTH_TYPE",
    "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_MATCH", "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_IF_RANGE", "HTTP_RANGE",
    "HTTP_FORWARDED", "HTTP_X_HOST", "HTTP_X_SCRIPT_NAME", "HTTP_X_SCHEME", "HTTP_X_URL_SCHEME",
    "HTTP_X_FORWARDED", "HTTP_FRONT_END_HTTPS", "HTTP_X_ARR_SSL", "HTTP_X_PROTO",
    "HTTP_X_HTTP_METHOD_OVERRIDE", "HTTP_X_HTTP_METHOD", "HTTP_X_METHOD_OVERRIDE",
    "HTTP_X_PROXY_URL", "HTTP_X_ENVOY_ORIGINAL_PATH", "HTTP_X_ENVOY_ORIGINAL_HOST",
    "HTTP_TRANSFER_ENCODING", "CONTENT_TYPE",
})


RAW_TARGETS = ("REQUEST_URI", "RAW_URI")  # waitress, gunicorn: the request target as sent
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def request_target(environ: Dict, query: str) -> str:
    """The request target of a page as the key holds it: script name and path
    percent-encoded again, then the key's query."""
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:
        target = quote(path.encode("latin-1"), safe=_PATH_SAFE) or "/"
    except UnicodeEncodeError:
        target = quote(path, safe=_PATH_SAFE) or "/"
    return f"{target}?{query}" if query else target


def environ_key(header: str) -> str:
    """The WSGI environ key of a request header name (``X-Foo`` -> ``HTTP_X_FOO``)."""
    return "HTTP_" + header.upper().replace("-", "_")


class FillEnviron:
    """Makes the environ of a fill from a request's (see the module docstring)."""

    def __init__(self, extra_headers: Iterable[str] = (), surrogate: str = "pagecache", esi: bool = True):
        self.removed = REMOVED | {environ_key(name) for name in extra_headers}
        # Edge Architecture: says what pagecache can do, and the name its
        # Surrogate-Control directives may be targeted at (max-age=60;pagecache)
        self.capability = f'{surrogate}="Surrogate/1.0{" ESI/1.0" if esi else ""}"'

    def __call__(self, environ: Dict, host: str, query: str, background: bool = False,
                 conditional: Optional[Dict[str, str]] = None, accept_encoding: Optional[str] = None) -> Dict:
        """The fill environ for ``environ``, whose page the key describes with
        ``host`` and ``query``; ``conditional`` adds revalidation headers, and
        ``accept_encoding`` says which encoding to ask for (the one pagecache
        stores, or the one the variant is for)."""
        removed = self.removed
        fill = {name: value for name, value in environ.items()
                if name not in removed and not name.startswith(FAMILIES)}
        fill["HTTP_HOST"] = host
        fill["QUERY_STRING"] = query
        for raw in RAW_TARGETS:
            if raw in fill:  # the request line as the client wrote it: as the key holds it instead
                fill[raw] = request_target(environ, query)
        fill["wsgi.input"] = io.BytesIO(b"")
        fill["CONTENT_LENGTH"] = "0"
        fill["HTTP_SURROGATE_CAPABILITY"] = self.capability
        if background:
            fill["pagecache.background"] = True
        if conditional:
            fill.update(conditional)
        if accept_encoding is not None:
            fill["HTTP_ACCEPT_ENCODING"] = accept_encoding
        return fill
