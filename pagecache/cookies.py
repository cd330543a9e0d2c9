"""Which cookies a request carries, found the way frameworks find them.

WebOb and ``http.cookies`` split a ``Cookie`` header at ``;``, ``,`` and
whitespace, and servers join repeated ``Cookie`` lines with ``, ``, ``,`` or
``; `` into one environ value. So a cookie name is anything after the start,
``;``, ``,`` or whitespace and before ``=``: a request is looked at as
carrying every name any of those parsers could read. Reading more names than
a framework does only sends more requests past the cache.
"""

from __future__ import annotations

import re
from typing import FrozenSet

_SEPARATORS = re.compile(r"[;,\s]+")


def cookie_names(header: str) -> FrozenSet[str]:
    """Every name a framework could read from the ``Cookie`` header ``header``."""
    names = set()
    for part in _SEPARATORS.split(header):
        name = part.split("=", 1)[0].strip('"')
        if name:
            names.add(name)
    return frozenset(names)


def has_cookies(header: str) -> bool:
    """Whether ``header`` holds any cookie at all."""
    return bool(header.strip(" \t;,"))


def carries_any(header: str, names: FrozenSet[str]) -> bool:
    """Whether the ``Cookie`` header ``header`` carries one of ``names``."""
    return not names.isdisjoint(cookie_names(header))
