"""PasteDeploy entry points: the ``egg:pagecache#main`` filter and the
``egg:pagecache#demo`` application of ``development.ini``.

The filter reads its options as INI strings and checks them all when the INI
is loaded, before any request: a bad value is a :class:`ConfigError` naming
the option and, when the INI file can be read, its line.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Dict, Optional, Tuple

from .config import ConfigError, convert_options
from .demo import DemoApp
from .middleware import PageCacheMiddleware
from .rules import Rules, parse_rules


def load_settings(local_conf: Dict[str, str], ini_file: Optional[str] = None) -> Tuple[Rules, Dict[str, Any]]:
    """The rules and typed options of a ``[filter:...]`` section's local options."""
    options = dict(local_conf)
    try:
        if "cached_urls" not in options:
            near = [key for key in options if difflib.get_close_matches(key, ["cached_urls"], cutoff=0.75)]
            if near:
                raise ConfigError(f"option cached_urls is missing, and {near[0]!r} is not an option: "
                                  f"did you mean cached_urls?", near[0])
            raise ConfigError("option cached_urls is missing: without rules nothing is cached",
                              "cached_urls")
        rules = parse_rules(options.pop("cached_urls"))
        return rules, convert_options(options)
    except ConfigError as error:
        place = locate(ini_file, error.option, error.text)
        if place:
            raise ConfigError(f"{place}: {error}", error.option, error.text) from None
        raise


def filter_factory(global_conf: Dict[str, str], **local_conf: str) -> Callable[[Callable], Callable]:
    """``use = egg:pagecache#main``: a filter wrapping the next app in the pipeline."""
    rules, settings = load_settings(local_conf, global_conf.get("__file__"))

    def make_filter(app: Callable) -> PageCacheMiddleware:
        return PageCacheMiddleware(app, rules, **settings)
    return make_filter


def locate(ini_file: Optional[str], option: str, text: str = "") -> Optional[str]:
    """``file line N`` of ``option`` (or of ``text`` inside its value), if found."""
    if not ini_file or not option:
        return None
    try:
        with open(ini_file, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    start = re.compile(r"^\s*" + re.escape(option) + r"\s*[=:]")
    for number, line in enumerate(lines, 1):
        if not start.match(line):
            continue
        if text:
            for offset, value_line in enumerate(lines[number - 1:], 0):
                if offset and value_line[:1] not in (" ", "\t") and value_line.strip():
                    break
                if text in value_line:
                    return f"{ini_file} line {number + offset}"
        return f"{ini_file} line {number}"
    return None


def demo_app_factory(global_conf: Dict[str, str], delay: str = "1") -> DemoApp:
    """``use = egg:pagecache#demo``: the demo's slow pages (:mod:`pagecache.demo`);
    ``delay`` is the seconds each page takes to render (default 1)."""
    try:
        seconds = float(delay)
        if not 0 <= seconds < float("inf"):
            raise ValueError(delay)
    except ValueError:
        raise ConfigError(f"option delay: {delay!r} is not a number of seconds", "delay") from None
    return DemoApp(seconds)
