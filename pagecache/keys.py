"""Cache keys: which requests share a stored page, and the memcached keys for it.

A page is identified by the URL the request asked for: scheme, host (lower
case, without the scheme's default port), script name, path and query string
(normalised by ``ignore_query`` and ``sort_query``), nothing else. The parts
are framed (each preceded by its length) before they are hashed, so no two
different URLs give the same bytes, whatever characters they hold. Request
headers that the key does not hold are removed before the application renders
a page for the cache (see :mod:`pagecache.fill`), so they cannot change what
others are served. The hash makes any URL a short, valid memcached key:
``<key_prefix>:<kind>:<digest>``.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Iterable, Tuple
from urllib.parse import unquote_to_bytes, urlsplit

from .urls import canonical_host, normalise_query

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


def _digest(*parts: bytes) -> str:
    framed = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    return hashlib.blake2b(framed, digest_size=16).hexdigest()


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
        return self.digest_of_parts(scheme, self.host(host, scheme), script + path, self.query(query))

    def digest_of_url(self, url: str) -> str:
        """The digest of the page at an absolute URL, as a request for it would get."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        host = self.host(parts.netloc.rpartition("@")[2], parts.scheme)
        path = unquote_to_bytes(parts.path or "/").decode("latin-1")
        return self.digest_of_parts(parts.scheme, host, path, self.query(parts.query))

    def digest_of_parts(self, scheme: str, host: str, path: str, query: str) -> str:
        """The digest of a page from its canonical parts (host from
        :meth:`host`, query from :meth:`query`, path with the script name)."""
        return _digest(_bytes(scheme), _bytes(host), _bytes(path), _bytes(query))

    @staticmethod
    def host(host: str, scheme: str) -> str:
        """The host as the key holds it (see :func:`pagecache.urls.canonical_host`)."""
        return canonical_host(host, scheme) or host.lower()

    def query(self, query: str) -> str:
        """The query as the key holds it."""
        if self._normalise and query:
            return normalise_query(query, self.ignore_query, self.sort_query)
        return query

    def normalise_query(self, query: str) -> str:
        """``query`` without the ignored parameters, sorted if ``sort_query``."""
        return normalise_query(query, self.ignore_query, self.sort_query)

    def page(self, digest: str) -> str:
        """Key of the page (or vary marker, or pass marker) for ``digest``."""
        return self._page + digest

    def lock(self, digest: str) -> str:
        """Key of the update lock for ``digest``."""
        return self._lock + digest

    def variant(self, digest: str, generation: str, variant: str) -> str:
        """Digest of one variant of a page that varies on request headers."""
        return _digest(digest.encode("ascii"), generation.encode("ascii"), _bytes(variant))
