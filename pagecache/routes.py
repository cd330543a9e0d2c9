"""Where a request's URL leads: the rule that covers it, whether its URL may be
cached at all, and the key of its page.

All of it depends on the URL alone, so it is worked out once per URL and
remembered: a hit on a hot page costs one dict lookup here, not a rule match,
URL checks and a hash. The table is bounded (it starts over when full), and
very long URLs are worked out every time rather than kept.
"""

from __future__ import annotations

from typing import Dict, Optional

from .keys import Keys, RequestURL
from .rules import Rule, Rules
from .urls import canonical_host, path_is_plain

MAX_ROUTES = 4096       # URLs remembered
MAX_URL_LENGTH = 1024   # longest URL (path + query + host) remembered
SCHEMES = ("http", "https")


class Route:
    """A URL's rule (None when no rule covers it: the application answers,
    untouched), and for a covered URL either why it bypasses the cache
    (``bypass``: a ``pass`` rule, a Host that names no host, a path routers
    read differently) or the digest and cache key of its page, with the host
    and query as the key holds them (the application renders the page from
    exactly those)."""

    __slots__ = ("rule", "index", "bypass", "digest", "key", "host", "query", "cacheable", "fragments", "shared")

    def __init__(self, rule: Optional[Rule], bypass: Optional[str] = None, digest: str = "",
                 key: str = "", host: str = "", query: str = "", index: Optional[int] = None):
        self.rule, self.bypass = rule, bypass
        self.index = index  # the rule's position in the table: how counters name it
        self.digest, self.key, self.host, self.query = digest, key, host, query
        self.cacheable = rule is not None and bypass is None
        self.fragments: tuple = ()  # keys of the cached ESI fragments its page was assembled with last
        self.shared = False         # its page was seen shared with requests that carry cookies (ESI, public)

    def __repr__(self) -> str:
        return f"<Route {self.rule!r} {self.bypass or self.key}>"


class Routes(Dict[RequestURL, Route]):
    """Routes by :func:`pagecache.keys.request_url`: ``routes[url]`` works a
    route out the first time a URL is asked for and remembers it."""

    def __init__(self, rules: Rules, keys: Keys, charset: str):
        super().__init__()
        self.rules = rules
        self.keys = keys
        self.charset = charset
        self.positions = {id(rule): index for index, rule in enumerate(rules)}

    def __missing__(self, url: RequestURL) -> Route:
        route = self.route(url)
        path, query, host = url[0], url[1], url[2]
        if len(path) + len(query) + len(host) <= MAX_URL_LENGTH:
            if len(self) >= MAX_ROUTES:
                self.clear()
            self[url] = route
        return route

    def route(self, url: RequestURL) -> Route:
        """The route of ``url``, worked out (not remembered)."""
        path, query, raw_host, script, scheme = url
        rule = self.rules.match(self.decode(path), query)
        if rule is None:
            return Route(None)
        index = self.positions.get(id(rule))
        if rule.passes:
            return Route(rule, "pass rule", index=index)
        host = canonical_host(raw_host, scheme)
        if host is None:
            return Route(rule, "Host is not a host name", index=index)
        if scheme not in SCHEMES:
            return Route(rule, "scheme", index=index)
        if not path_is_plain(path) or not path_is_plain(script):
            return Route(rule, "path read differently by routers (dot or empty segments, escapes)", index=index)
        query = self.keys.query(query)
        digest = self.keys.digest_of_parts(scheme, host, script + path, query)
        return Route(rule, None, digest, self.keys.page(digest), host, query, index)

    def decode(self, path: str) -> str:
        """A PATH_INFO (bytes as latin-1, per WSGI) decoded with ``charset``, as rules see it."""
        if path.isascii():
            return path
        try:
            return path.encode("latin-1").decode(self.charset, "replace")
        except UnicodeEncodeError:
            return path
