"""PasteDeploy entry points: the ``egg:pagecache#main`` filter and the
``egg:pagecache#demo`` application of ``development.ini``.

The filter reads its options as INI strings and checks them all when the INI
is loaded, before any request: a bad value is a :class:`ConfigError` naming
the option and, when the INI file can be read, its line.
"""

from __future__ import annotations

import html
import itertools
import os
import re
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .config import ConfigError, convert_options
from .middleware import PageCacheMiddleware
from .rules import Rules, parse_rules


def load_settings(local_conf: Dict[str, str], ini_file: Optional[str] = None) -> Tuple[Rules, Dict[str, Any]]:
    """The rules and typed options of a ``[filter:...]`` section's local options."""
    options = dict(local_conf)
    try:
        if "cached_urls" not in options:
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


class DemoApp:
    """A page that takes ``delay`` seconds to render and says when and by which
    process it was rendered, so HIT, STALE and MISS can be watched in a browser."""

    def __init__(self, delay: float = 1.0):
        self.delay = delay
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, environ: Dict, start_response: Callable) -> Iterable[bytes]:
        with self._lock:
            number = next(self._count)
        time.sleep(self.delay)
        path = environ.get("PATH_INFO", "/")
        rendered = time.strftime("%H:%M:%S", time.localtime())
        links = "".join(f'<li><a href="{p}">{p}</a></li>' for p in ("/", "/news", "/private", "/uncached/"))
        body = (f"<!doctype html><title>pagecache demo</title>"
                f"<h1>{html.escape(path)}</h1>"
                f"<p>Rendered at <b>{rendered}</b> by process {os.getpid()} "
                f"(render #{number}, which took {self.delay:g}s).</p>"
                f"<p>Reload: inside the TTL the time stays (X-Cache: HIT); in the grace period "
                f"one reload rebuilds it while others get the old copy (STALE).</p>"
                f"<ul>{links}</ul>").encode("utf-8")
        headers: List[Tuple[str, str]] = [("Content-Type", "text/html; charset=utf-8"),
                                          ("Content-Length", str(len(body)))]
        if path.startswith("/private"):
            headers.append(("Cache-Control", "private"))
        start_response("200 OK", headers)
        return [body]


def demo_app_factory(global_conf: Dict[str, str], delay: str = "1") -> DemoApp:
    """``use = egg:pagecache#demo``: the slow demo page."""
    try:
        seconds = float(delay)
    except ValueError:
        raise ConfigError(f"option delay: {delay!r} is not a number of seconds", "delay") from None
    return DemoApp(seconds)
