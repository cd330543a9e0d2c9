"""Revalidation with the application (RFC 9111 4.3): asking it whether a
stored page is still current instead of having it render the page again.

When a stored page whose ``ETag`` or ``Last-Modified`` came from the
application needs refreshing (past its TTL, in grace, in the background, or
a ``no-cache`` page on every use), the fill asks with ``If-None-Match`` and
``If-Modified-Since``. A ``304 Not Modified`` then refreshes the stored
page's headers and lifetime without a new body (4.3.4); a ``200`` replaces
it. The client's own conditional headers are never forwarded: pagecache
answers them from the page it has.
"""

from __future__ import annotations

from typing import Dict, Optional

from .entry import GENERATED_ETAG, VALIDATORS, Headers, Page

# Never taken from a 304 (RFC 9111 3.2: they describe the stored body).
NOT_UPDATED = frozenset({"content-length", "content-encoding", "content-md5", "content-range", "etag",
                         "transfer-encoding"})


def conditional(page: Optional[Page]) -> Dict[str, str]:
    """The environ entries that ask the application whether ``page`` is still
    current (none when its validators are not the application's own)."""
    if page is None or VALIDATORS not in page.flags:
        return {}
    found = {}
    etag = page.header("ETag")
    if etag is not None and GENERATED_ETAG not in page.flags:
        found["HTTP_IF_NONE_MATCH"] = etag
    modified = page.header("Last-Modified")
    if modified is not None:
        found["HTTP_IF_MODIFIED_SINCE"] = modified
    return found


def updated_headers(stored: Headers, not_modified: Headers) -> Headers:
    """The stored headers, each field the 304 carries replaced by its values
    (all of a field's lines at once), except those of :data:`NOT_UPDATED`."""
    fresh: Dict[str, Headers] = {}
    for name, value in not_modified:
        if name.lower() not in NOT_UPDATED:
            fresh.setdefault(name.lower(), []).append((name, value))
    replaced = set(fresh)
    merged = []
    for name, value in stored:
        lower = name.lower()
        if lower not in replaced:
            merged.append((name, value))
        elif lower in fresh:  # where the field was: its new lines, once
            merged.extend(fresh.pop(lower))
    for lines in fresh.values():
        merged.extend(lines)
    return merged
