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
_MEMO_SIZE = 2048    # request URLs whose digest each Keys remembers
_MEMO_LENGTH = 512   # longest URL (host + path + query) remembered


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
        # digests of recent request URLs: a hot page's digest is computed once
        self._memo: Dict[Tuple[str, str, str, str], str] = {}

    def digest(self, environ: Dict) -> str:
        """The digest of the page a request asks for."""
        scheme = environ.get("wsgi.url_scheme", "http")
        host = environ.get("HTTP_HOST")
        if not host:
            host = f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        url = (scheme, host, path, query)
        digest = self._memo.get(url)
        if digest is None:
            digest = self._url_digest(scheme, _host(scheme, host), _bytes(path), query)
            if len(host) + len(path) + len(query) <= _MEMO_LENGTH:
                if len(self._memo) >= _MEMO_SIZE:
                    self._memo.clear()
                self._memo[url] = digest
        return digest

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
