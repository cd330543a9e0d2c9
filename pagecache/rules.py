"""The ``cached_urls`` rules: which URLs are cached, for how long, with what grace.

A rule is ``<pattern> <ttl> <grace>``. The pattern is a path prefix
(``/blog/``) or ``~`` followed by a regular expression searched in
``path?query`` (``~^/item/\\d+$``). Rules come as the seed's tuples
``("/foo", 30, 120)`` or as a text table, one rule per line; the first rule
that matches a request decides. Everything is parsed and compiled once, when
the middleware is built; a malformed rule is a :class:`RuleError` naming its
line.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, List, Optional, Sequence, Union

from .config import ConfigError, duration


class RuleError(ConfigError):
    """A ``cached_urls`` rule that cannot be used; the message names the line."""


class Rule:
    """One rule: a pattern with the TTL and grace period (seconds) of its pages."""

    __slots__ = ("pattern", "ttl", "grace", "line", "_prefix", "_regex")

    def __init__(self, pattern: str, ttl: float, grace: float, line: int = 0):
        self.pattern = pattern
        self.ttl = ttl
        self.grace = grace
        self.line = line
        if pattern.startswith("~"):
            self._prefix = None
            self._regex = re.compile(pattern[1:])
        else:
            self._prefix = pattern
            self._regex = None

    def matches(self, path: str, query: str) -> bool:
        """Whether a request for ``path`` (decoded) and ``query`` (raw) falls under this rule."""
        if self._prefix is not None:
            return path.startswith(self._prefix)
        return self._regex.search(f"{path}?{query}" if query else path) is not None

    def __repr__(self) -> str:
        return f"Rule({self.pattern!r}, ttl={self.ttl:g}, grace={self.grace:g})"


class Rules:
    """An ordered list of rules; :meth:`match` gives the first that matches."""

    __slots__ = ("rules",)

    def __init__(self, rules: Sequence[Rule]):
        self.rules = tuple(rules)

    def match(self, path: str, query: str) -> Optional[Rule]:
        for rule in self.rules:
            if rule.matches(path, query):
                return rule
        return None

    def __iter__(self):
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)


RuleSpec = Union[str, Iterable[Union[Sequence[Any], Rule]], Rules]


def parse_rules(spec: RuleSpec) -> Rules:
    """Rules from a text table or from ``(pattern, ttl, grace)`` tuples."""
    if isinstance(spec, Rules):
        return spec
    if isinstance(spec, str):
        return Rules(_parse_table(spec))
    rules: List[Rule] = []
    for number, item in enumerate(spec, 1):
        if isinstance(item, Rule):
            rules.append(item)
            continue
        if isinstance(item, (str, bytes)) or len(item) != 3:
            raise RuleError(f"cached_urls rule {number}: {item!r}: expected (pattern, ttl, grace)",
                            "cached_urls")
        rules.append(_make_rule(f"cached_urls rule {number}: {tuple(item)!r}", number, *item))
    return Rules(rules)


def _parse_table(text: str) -> List[Rule]:
    rules = []
    lines = text.splitlines()
    if lines and not lines[0].strip():
        del lines[0]  # "cached_urls =" with the rules on the lines below: they start at line 1
    for number, raw in enumerate(lines, 1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 3 and fields[3].startswith("#"):
            fields = fields[:3]
        if len(fields) != 3:
            raise RuleError(f"cached_urls line {number}: {raw.strip()!r}: "
                            "expected '<pattern> <ttl> <grace>'", "cached_urls", raw.strip())
        rules.append(_make_rule(f"cached_urls line {number}: {raw.strip()!r}", number, *fields,
                                text=raw.strip()))
    return rules


def _make_rule(where: str, number: int, pattern: Any, ttl: Any, grace: Any, text: str = "") -> Rule:
    if not isinstance(pattern, str) or not pattern.startswith(("/", "~")):
        raise RuleError(f"{where}: pattern must be a path starting with / or ~ and a regular expression",
                        "cached_urls", text)
    try:
        ttl_s, grace_s = duration(ttl), duration(grace)
    except ValueError as error:
        raise RuleError(f"{where}: {error}", "cached_urls", text) from None
    try:
        return Rule(pattern, ttl_s, grace_s, number)
    except re.error as error:
        raise RuleError(f"{where}: bad regular expression: {error}", "cached_urls", text) from None

