"""Purging from inside a Pyramid application: ``config.include("pagecache")``.

The filter puts itself in the environ of every request it hands to the
application (``environ["pagecache"]``); this adds ``request.pagecache``, so
that the view that handles a write can invalidate what it changed::

    @view_config(route_name="edit_article", request_method="POST")
    def edit(request):
        article = save(request)
        request.pagecache.purge_tags(f"article-{article.id}")
        return HTTPSeeOther(request.route_url("article", id=article.id))

    @view_config(route_name="article", http_cache=300)
    def show(request):
        request.pagecache.tag(f"article-{request.matchdict['id']}", "articles")
        ...

Without the filter in front of the application (in tests, say) the methods
do nothing and say so in their return values.
"""

from __future__ import annotations

import logging
from typing import Any, List, Tuple
from urllib.parse import urljoin

log = logging.getLogger("pagecache")


def includeme(config: Any) -> None:
    """Add ``request.pagecache`` (a :class:`RequestCache`)."""
    config.add_request_method(RequestCache, "pagecache", reify=True)


class RequestCache:
    """The cache as one request sees it."""

    def __init__(self, request: Any):
        self.request = request
        self.middleware = request.environ.get("pagecache")
        self._tags: List[str] = []

    def purge(self, url: str, soft: bool = False) -> bool:
        """Purge the page at ``url`` (absolute, or relative to this request's
        URL); whether anything was stored there."""
        if self.middleware is None:
            return self._absent("purge", url)
        return self.middleware.purge(urljoin(self.request.url, url), soft)

    def purge_tags(self, *tags: str, soft: bool = False) -> List[str]:
        """Purge every page tagged with one of ``tags``; the tags not purged."""
        if self.middleware is None:
            self._absent("purge_tags", " ".join(tags))
            return list(tags)
        return self.middleware.purge_tags(tags, soft)

    def purge_all(self, soft: bool = False) -> bool:
        """Purge every page the filter stored; whether the cache took it."""
        if self.middleware is None:
            return self._absent("purge_all", "")
        return self.middleware.purge_all(soft)

    def tag(self, *tags: str) -> Tuple[str, ...]:
        """Tag this request's response (adds them to the tag header, which the
        filter stores and removes); all its tags so far."""
        if not self._tags:
            self.request.add_response_callback(self._add_tags)
        self._tags.extend(tag for tag in tags if tag not in self._tags)
        return tuple(self._tags)

    def _add_tags(self, request: Any, response: Any) -> None:
        name = self.middleware.tag_header if self.middleware is not None else "Surrogate-Key"
        if name:
            given = response.headers.get(name, "")
            response.headers[name] = " ".join(filter(None, [given, " ".join(self._tags)]))

    def _absent(self, what: str, detail: str) -> bool:
        log.debug("request.pagecache.%s(%s): no pagecache filter in front of the application", what, detail)
        return False
