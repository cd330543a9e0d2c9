"""A transparent reverse proxy as a WSGI application, standard library only.

It stands in for the application behind pagecache in the conformance run
(``bench/conformance.py``): every request goes to one origin server (method,
path, query, headers, body), and the origin's answer comes back as it was sent
(status, headers, body). It caches nothing and adds nothing, so whatever the
HTTP cache test suite sees beyond the origin's behaviour is pagecache's doing;
the same proxy run alone through the suite is the baseline that shows which
failures are the proxy's.

What does change, in both directions, is only the hop-by-hop headers, which
belong to one connection and may not cross a proxy: those of RFC 9110 section
7.6.1 (``Connection`` and the headers it names, ``Keep-Alive``,
``Proxy-Connection``, ``TE``, ``Transfer-Encoding``, ``Upgrade``) and the
ones PEP 3333 forbids a WSGI application to send (``Proxy-Authenticate``,
``Proxy-Authorization``, ``Trailers``; waitress refuses a response carrying
them). The body is buffered, so a response the origin sent chunked reaches
the client with the ``Content-Length`` its server works out. When the origin
cannot be reached or drops the connection, the answer is ``502 Bad Gateway``.

In a PasteDeploy INI::

    [app:proxy]
    use = call:bench.proxy:app_factory
    origin = http://127.0.0.1:8000

(with the repository root on ``sys.path``).
"""

from __future__ import annotations

import http.client
import urllib.parse
from typing import Callable, Dict, Iterable, List, Tuple

Headers = List[Tuple[str, str]]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authorization", "trailer", "trailers",
})
NO_BODY_STATUSES = frozenset({204, 304})
# Characters left as they are when a path is percent-encoded again (RFC 3986 pchar and "/").
PATH_SAFE = "/:@!$&'()*+,;=-._~"


class ReverseProxy:
    """Forwards each request to ``origin`` (``http://host:port`` or
    ``https://host:port``) and returns its response as it came, less the
    hop-by-hop headers. One connection per request: nothing is pooled, so
    nothing is shared between requests."""

    def __init__(self, origin: str, timeout: float = 30.0):
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"origin {origin!r} is not an http:// or https:// URL")
        self.origin = origin
        self.timeout = timeout
        self._connection_class = (http.client.HTTPSConnection if parts.scheme == "https"
                                  else http.client.HTTPConnection)
        self._host = parts.hostname
        self._port = parts.port

    def __call__(self, environ: Dict, start_response: Callable) -> Iterable[bytes]:
        try:
            status, headers, body = self.forward(environ)
        except (OSError, http.client.HTTPException) as error:
            status, headers, body = bad_gateway(self.origin, error)
        start_response(status, headers)
        return [body]

    def forward(self, environ: Dict) -> Tuple[str, Headers, bytes]:
        """Send the request of ``environ`` to the origin; its status, headers and body."""
        method = environ.get("REQUEST_METHOD", "GET")
        body = request_body(environ)
        connection = self._connection_class(self._host, self._port, timeout=self.timeout)
        try:
            connection.putrequest(method, request_target(environ), skip_host=True,
                                  skip_accept_encoding=True)
            for name, value in request_headers(environ):
                connection.putheader(name, value)
            connection.endheaders(body if body else None)
            response = connection.getresponse()
            data = b"" if method == "HEAD" or response.status in NO_BODY_STATUSES else response.read()
            return status_line(response), end_to_end(response.getheaders()), data
        finally:
            connection.close()


def app_factory(global_conf: Dict[str, str], origin: str = "http://127.0.0.1:8000",
                timeout: str = "30") -> ReverseProxy:
    """``use = call:bench.proxy:app_factory``: a proxy to ``origin``, giving up
    on a silent origin after ``timeout`` seconds."""
    return ReverseProxy(origin.strip(), float(timeout))


def request_target(environ: Dict) -> str:
    """The path and query to ask the origin for: the client's own request
    target when the server kept it (waitress's ``REQUEST_URI``) and no
    middleware changed the path since, else the path rebuilt from
    ``SCRIPT_NAME``, ``PATH_INFO`` and ``QUERY_STRING``."""
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if raw and raw.startswith("/"):
        raw_path, _, raw_query = raw.partition("?")
        if urllib.parse.unquote(raw_path, "latin-1") == path and raw_query == query:
            return raw
    target = urllib.parse.quote(path.encode("latin-1"), safe=PATH_SAFE) or "/"
    return f"{target}?{query}" if query else target


def request_headers(environ: Dict) -> Headers:
    """The end-to-end request headers of ``environ`` (``HTTP_*``,
    ``CONTENT_TYPE``, ``CONTENT_LENGTH``), ``Host`` included."""
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_") and key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
            headers.append((header_name(key[5:]), value))
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    if environ.get("CONTENT_LENGTH"):
        headers.append(("Content-Length", environ["CONTENT_LENGTH"]))
    return end_to_end(headers)


def header_name(cgi_name: str) -> str:
    """``X_TEST_ID`` -> ``X-Test-Id`` (header names are case-insensitive)."""
    return "-".join(part.capitalize() for part in cgi_name.split("_"))


def request_body(environ: Dict) -> bytes:
    """The request body: ``CONTENT_LENGTH`` bytes, or all of a terminated input."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > 0:
        return stream.read(length)
    if environ.get("wsgi.input_terminated"):
        return stream.read()
    return b""


def end_to_end(headers: Headers) -> Headers:
    """``headers`` without the hop-by-hop ones, those a ``Connection`` header names included."""
    dropped = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            dropped.update(token.strip().lower() for token in value.split(",") if token.strip())
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def status_line(response: http.client.HTTPResponse) -> str:
    """The WSGI status of an origin response, its reason phrase kept."""
    reason = (response.reason or "").strip() or "Unknown"
    return f"{response.status} {reason}"


def bad_gateway(origin: str, error: Exception) -> Tuple[str, Headers, bytes]:
    """The answer when the origin could not be asked or did not answer."""
    body = f"bad gateway: {origin}: {type(error).__name__}: {error}\n".encode("utf-8", "replace")
    return "502 Bad Gateway", [("Content-Type", "text/plain; charset=utf-8"),
                               ("Content-Length", str(len(body)))], body

