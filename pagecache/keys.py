"""Cache keys: which requests share a stored page, and the memcached keys for it.

A page is identified by the URL the request asked for: scheme, host (with a
non-default port), script name, path and query string, nothing else. Request
headers that the key does not hold are removed before the application renders
a page for the cache (see :data:`pagecache.http.FILL_REMOVED`), so they cannot
change what others are served. The URL is hashed, so any URL (long,
non-ASCII, with spaces or control characters) gives a short, valid memcached
key: ``<key_prefix>:<kind>:<digest>``.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Iterable, Tuple
from urllib.parse import unquote_plus, unquote_to_bytes, urlsplit

_DEFAULT_PORTS = {"http": "80", "https": "443"}

RequestURL = Tuple[str, str, str, str, str]


def request_url(environ: Dict) -> RequestURL:
    """The URL a request asks for, as the environ has it: (path, query, host,
    script name, scheme), the path still raw (bytes as latin-1, per WSGI)."""
    return (environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""),
            environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}",
            environ.get("SCRIPT_NAME", ""), environ.get("wsgi.url_scheme", "http"))


def _bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _host(scheme: str, host: str) -> str:
    host = host.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and host.endswith(":" + default) and not host.endswith("]"):
        host = host[: -len(default) - 1]
    return host


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Keys:
    """Turns requests and URLs into page digests, and digests into cache keys."""

    def __init__(self, prefix: str, ignore_query: Iterable[str] = (), sort_query: bool = False):
        self.prefix = prefix
        self.ignore_query = frozenset(ignore_query)
        self.sort_query = sort_query
        self._normalise = bool(self.ignore_query) or sort_query
        self._page = prefix + ":p:"
        self._lock = prefix + ":l:"

    @classmethod
    def from_settings(cls, settings: Dict) -> "Keys":
        """The keys of a filter configured with ``settings`` (converted options)."""
        return cls(settings["key_prefix"], settings["ignore_query"], settings["sort_query"])

    def digest(self, environ: Dict) -> str:
        """The digest of the page a request asks for."""
        return self.digest_of_request(request_url(environ))

    def digest_of_request(self, url: RequestURL) -> str:
        """The digest of the page at a :func:`request_url`."""
        path, query, host, script, scheme = url
        return self._url_digest(scheme, _host(scheme, host), _bytes(script + path), query)

    def digest_of_url(self, url: str) -> str:
        """The digest of the page at an absolute URL, as a request for it would get."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        host = parts.netloc.rpartition("@")[2]
        return self._url_digest(parts.scheme, _host(parts.scheme, host),
                                unquote_to_bytes(parts.path or "/"), parts.query)

    def _url_digest(self, scheme: str, host: str, path: bytes, query: str) -> str:
        if self._normalise and query:
            query = self.normalise_query(query)
        return _digest(b"".join((_bytes(scheme), b"://", _bytes(host), path, b"?", _bytes(query))))

    def normalise_query(self, query: str) -> str:
        """``query`` without the ignored parameters, sorted if ``sort_query``."""
        parts = [part for part in query.split("&") if part]
        if self.ignore_query:
            parts = [part for part in parts
                     if unquote_plus(part.split("=", 1)[0]) not in self.ignore_query]
        if self.sort_query:
            parts.sort()
        return "&".join(parts)

    def page(self, digest: str) -> str:
        """Key of the page (or vary marker, or pass marker) for ``digest``."""
        return self._page + digest

    def lock(self, digest: str) -> str:
        """Key of the update lock for ``digest``."""
        return self._lock + digest

    def variant(self, digest: str, generation: str, variant: str) -> str:
        """Digest of one variant of a page that varies on request headers."""
        return _digest(b"\x00".join((digest.encode("ascii"), generation.encode("ascii"), _bytes(variant))))
