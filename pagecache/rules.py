"""The ``cached_urls`` rules: which URLs are cached, and the lifetimes of pages
that say nothing about their own.

One rule per line, the first that matches a request decides::

    /account/       pass                    # never cached: as if no rule matched
    /static/        ttl=1d  grace=1d  force # these lifetimes, whatever the response says
    /news/          ttl=5m  grace=1h        # for responses that don't give their own
    ~^/item/\\d+$    30  2m                  # 0.1's form: <ttl> <grace>
    ~^/search\\?q=   ttl=1m  query           # the regular expression also sees the query
    /               ttl=0                   # only what the response says it may be kept for

The pattern is a path prefix (``/blog/``) or ``~`` followed by a regular
expression searched in the path (and in ``path?query`` with the ``query``
word). After it come the two durations of 0.1 (``<ttl> <grace>``; ``0 0``
means ``pass``), or ``pass``, or words: ``ttl=``, ``grace=``,
``stale_if_error=`` (durations), ``force`` and ``query``. Rules come as the
seed's tuples ``("/foo", 30, 120)`` or as this text table; everything is
parsed and compiled once, when the middleware is built, and a malformed rule is
a :class:`RuleError` naming its line.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from .config import ConfigError, duration


class RuleError(ConfigError):
    """A ``cached_urls`` rule that cannot be used; the message names the line."""


FLAGS = ("force", "query", "esi")
DURATIONS = ("ttl", "grace", "stale_if_error")
SYNTAX = "expected '<pattern> <ttl> <grace>', '<pattern> pass' or '<pattern> ttl=... grace=... [force] [query]'"


class Rule:
    """One rule: a pattern, the default (or, with ``force``, the only) TTL and
    grace period of its pages in seconds, and what the words said. A rule that
    ``passes`` keeps its URLs out of the cache."""

    __slots__ = ("pattern", "ttl", "grace", "stale_if_error", "line", "passes", "force", "query", "esi",
                 "_prefix", "_regex")

    def __init__(self, pattern: str, ttl: float, grace: float, line: int = 0, *, passes: bool = False,
                 force: bool = False, query: bool = False, esi: bool = False,
                 stale_if_error: Optional[float] = None):
        self.pattern = pattern
        self.ttl = ttl
        self.grace = grace
        self.stale_if_error = stale_if_error  # None: the stale_if_error option
        self.line = line
        self.passes = passes
        self.force = force
        self.query = query
        self.esi = esi
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
        subject = f"{path}?{query}" if self.query and query else path
        return self._regex.search(subject) is not None

    @property
    def name(self) -> str:
        """How counters and logs name the rule: its pattern."""
        return self.pattern

    def __repr__(self) -> str:
        if self.passes:
            return f"Rule({self.pattern!r}, pass)"
        words = "".join(f", {flag}" for flag in FLAGS if getattr(self, flag))
        return f"Rule({self.pattern!r}, ttl={self.ttl:g}, grace={self.grace:g}{words})"


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
    """Rules from a text table or from ``(pattern, ttl, grace)`` tuples (or
    ``(pattern, "pass")``)."""
    if isinstance(spec, Rules):
        return spec
    if isinstance(spec, str):
        return Rules(_parse_table(spec))
    rules: List[Rule] = []
    for number, item in enumerate(spec, 1):
        if isinstance(item, Rule):
            rules.append(item)
            continue
        if isinstance(item, (str, bytes)) or not 2 <= len(item) <= 3:
            raise RuleError(f"cached_urls rule {number}: {item!r}: expected (pattern, ttl, grace) "
                            "or (pattern, 'pass')", "cached_urls")
        where = f"cached_urls rule {number}: {tuple(item)!r}"
        rules.append(_make_rule(where, number, item[0], list(item[1:])))
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
        for cut, field in enumerate(fields):
            if cut and field.startswith("#"):
                fields = fields[:cut]
                break
        where = f"cached_urls line {number}: {raw.strip()!r}"
        rules.append(_make_rule(where, number, fields[0], fields[1:], raw.strip()))
    return rules


def _make_rule(where: str, number: int, pattern: Any, fields: List[Any], text: str = "") -> Rule:
    def fail(message: str) -> RuleError:
        return RuleError(f"{where}: {message}", "cached_urls", text)

    if not isinstance(pattern, str) or not pattern.startswith(("/", "~")):
        raise fail("pattern must be a path starting with / or ~ and a regular expression")
    words: Dict[str, Any] = {}
    try:
        if fields == ["pass"]:
            words["passes"] = True
        else:
            positional = [field for field in fields
                          if not isinstance(field, str) or ("=" not in field and field not in FLAGS)]
            if len(positional) not in (0, 2) or (positional and fields[:2] != positional):
                raise fail(SYNTAX)
            if positional:
                words["ttl"], words["grace"] = duration(positional[0]), duration(positional[1])
                words["passes"] = words["ttl"] == 0 and words["grace"] == 0 and len(fields) == 2
            for field in fields[len(positional):]:
                _add_word(words, field, fail)
    except ValueError as error:
        raise fail(str(error)) from None
    if words.get("passes"):
        words.pop("ttl", None), words.pop("grace", None)
    ttl, grace = words.pop("ttl", 0.0), words.pop("grace", 0.0)
    try:
        return Rule(pattern, ttl, grace, number, **words)
    except re.error as error:
        raise fail(f"bad regular expression: {error}") from None


def _add_word(words: Dict[str, Any], field: str, fail) -> None:
    name, equals, value = field.partition("=")
    if not equals:
        if name in FLAGS:
            words[name] = True
            return
        raise fail(f"unknown word {field!r} ({SYNTAX})")
    if name not in DURATIONS:
        raise fail(f"unknown setting {name!r} (known: {', '.join(DURATIONS)})")
    if name in words:
        raise fail(f"{name} given twice")
    words[name] = duration(value)
