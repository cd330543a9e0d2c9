"""Where a request's URL leads: the rule that covers it and the key of its page.

Both depend on the URL alone, so they are worked out once per URL and
remembered: a hit on a hot page costs one dict lookup here, not a rule match
and a hash. The table is bounded (it starts over when full), and very long
URLs are worked out every time rather than kept.
"""

from __future__ import annotations

from typing import Dict, Optional

from .keys import Keys, RequestURL
from .rules import Rule, Rules

MAX_ROUTES = 4096       # URLs remembered
MAX_URL_LENGTH = 1024   # longest URL (path + query + host) remembered


class Route:
    """A URL's rule, or None when no rule covers it (then ``digest`` and
    ``key`` are empty); the digest of its page, and the page's cache key."""

    __slots__ = ("rule", "digest", "key")

    def __init__(self, rule: Optional[Rule], digest: str = "", key: str = ""):
        self.rule, self.digest, self.key = rule, digest, key

    def __repr__(self) -> str:
        return f"<Route {self.rule!r} {self.key}>"


class Routes(Dict[RequestURL, Route]):
    """Routes by :func:`pagecache.keys.request_url`: ``routes[url]`` works a
    route out the first time a URL is asked for and remembers it."""

    def __init__(self, rules: Rules, keys: Keys, charset: str):
        super().__init__()
        self.rules = rules
        self.keys = keys
        self.charset = charset

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
        rule = self.rules.match(self.decode(url[0]), url[1])
        if rule is None:
            return Route(None)
        digest = self.keys.digest_of_request(url)
        return Route(rule, digest, self.keys.page(digest))

    def decode(self, path: str) -> str:
        """A PATH_INFO (bytes as latin-1, per WSGI) decoded with ``charset``, as rules see it."""
        if path.isascii():
            return path
        try:
            return path.encode("latin-1").decode(self.charset, "replace")
        except UnicodeEncodeError:
            return path
