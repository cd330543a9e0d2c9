"""Options of pagecache: their names, defaults and how a value is read.

Every option can be given as an INI string (``wait_timeout = 5s``) or, to
:class:`~pagecache.PageCacheMiddleware`, as a Python value (``wait_timeout=5``).
:data:`OPTIONS` is the single table of names, converters and defaults; an
unknown name or a value its converter refuses is a :class:`ConfigError` that
names the option, raised when the configuration is loaded, never later.
"""

from __future__ import annotations

import codecs
import difflib
import ipaddress
import re
from typing import Any, Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Tuple


from . import encoding
from .encoding import DEFAULT_TYPES


class ConfigError(ValueError):
    """A configuration value that pagecache cannot use; the message names it.

    ``option`` is the option's name and ``text`` the offending text (for a
    rule, its line), so a loader can point at the line of the INI file."""

    def __init__(self, message: str, option: str = "", text: str = ""):
        super().__init__(message)
        self.option = option
        self.text = text


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$", re.I)
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|k|mb|m|gb|g)?\s*$", re.I)
_SIZE_UNITS = {None: 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20,
               "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", ""}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_KEY_PREFIX = re.compile(r"^[!-~]{1,64}$")
_SERVER = re.compile(r"^(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>\d{1,5})$")


def duration(value: Any) -> float:
    """Seconds from ``90``, ``90s``, ``250ms``, ``5m``, ``2h`` or ``1d``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, 90s, 5m, 2h or 1d")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 30, 90s, 5m, 2h or 1d")
    unit = match.group(2).lower() if match.group(2) else None
    return float(match.group(1)) * _DURATION_UNITS[unit]


def size(value: Any) -> int:
    """Bytes from ``1048576``, ``512KB``, ``1MB`` or ``2GB`` (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size such as 65536, 512KB or 64MB")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


def boolean(value: Any) -> bool:
    """``true``/``false`` (also yes/no, on/off, 1/0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not true or false")


def words(value: Any) -> Tuple[str, ...]:
    """A list from a string separated by whitespace or commas (a ``#`` starts a
    comment to the end of its line), or an iterable."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = "\n".join(line.split("#", 1)[0] for line in value.splitlines())
        return tuple(w for w in re.split(r"[\s,]+", text) if w)
    return tuple(str(w) for w in value)


def server_address(text: str) -> Tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` as (host, port)."""
    match = _SERVER.match(text)
    port = int(match.group("port")) if match else 0
    if not match or not 0 < port < 65536:
        raise ValueError(f"{text!r} is not host:port (for example 127.0.0.1:11211 or [::1]:11211)")
    return match.group("ip6") or match.group("host"), port


def servers(value: Any) -> Tuple[str, ...]:
    """memcached servers as ``host:port`` words, each checked."""
    result = words(value)
    for text in result:
        server_address(text)
    return result


def positive_int(value: Any) -> int:
    """A whole number of at least 1."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise ValueError(f"{number} is less than 1")
    return number


def statuses(value: Any) -> frozenset:
    """HTTP status codes, such as ``200 301 404``."""
    codes = set()
    for word in words(value):
        if not re.fullmatch(r"[1-5]\d\d", word):
            raise ValueError(f"{word!r} is not an HTTP status code")
        codes.add(int(word))
    return frozenset(codes)


def networks(value: Any) -> Tuple[Any, ...]:
    """IP addresses or CIDR networks, such as ``127.0.0.1 10.0.0.0/8 ::1``."""
    result = []
    for word in words(value):
        try:
            result.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise ValueError(f"{word!r} is not an IP address or network") from None
    return tuple(result)


def charset(value: Any) -> str:
    """The name of a Python codec, such as ``utf-8`` or ``latin-1``."""
    try:
        return codecs.lookup(str(value).strip()).name
    except LookupError:
        raise ValueError(f"{value!r} is not a known character set") from None


def header_name(value: Any) -> str:
    """An HTTP header name, or empty for none."""
    text = "" if value is None else str(value).strip()
    if text and not _HEADER_NAME.match(text):
        raise ValueError(f"{text!r} is not an HTTP header name")
    return text


def cache_name(value: Any) -> str:
    """A token naming the cache (``pagecache``), or empty."""
    text = "" if value is None else str(value).strip()
    if text and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text):
        raise ValueError(f"{text!r} is not a name of letters, digits, '.', '_' or '-'")
    return text


def key_prefix(value: Any) -> str:
    """1 to 64 printable ASCII characters without spaces (part of every key)."""
    text = str(value).strip()
    if not _KEY_PREFIX.match(text):
        raise ValueError(f"{text!r} must be 1 to 64 printable ASCII characters without spaces")
    return text


def url_path(value: Any) -> str:
    """An absolute URL path such as ``/_pagecache/stats``, or empty for none."""
    text = "" if value is None else str(value).strip()
    if text and (not text.startswith("/") or any(c.isspace() for c in text)):
        raise ValueError(f"{text!r} is not a path starting with /")
    return text


def header_names(value: Any) -> Tuple[str, ...]:
    """HTTP header names, such as ``X-Tenant X-Debug-Path``."""
    names = words(value)
    for name in names:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
    return names


def directory(value: Any) -> str:
    """A directory path (made when first used), or empty for none."""
    text = "" if value is None else str(value).strip()
    if text and "\0" in text:
        raise ValueError(f"{text!r} is not a path")
    return text


def compression_mode(value: Any) -> str:
    """gzip, br (with the brotli package, 1.2 or newer) or off."""
    mode = one_of("gzip", "br", "off")(value)
    if mode == "br" and not encoding.BROTLI:
        raise ValueError("br needs the brotli package, 1.2 or newer (pip install 'pagecache[brotli]')")
    return mode


def one_of(*choices: str) -> Callable[[Any], str]:
    """A converter accepting exactly one of ``choices``."""
    def convert(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
        return text
    convert.__doc__ = "One of: " + ", ".join(choices)
    return convert


class Option(NamedTuple):
    convert: Callable[[Any], Any]
    default: Any
    help: str


OPTIONS: Dict[str, Option] = {
    "memcached_servers": Option(servers, (), "host:port of each memcached server; none: the embedded memory cache"),
    "memcached_client": Option(one_of("python-memcached", "pymemcache"), "python-memcached",
                               "which memcached client library talks to the servers"),
    "memcached_timeout": Option(duration, 0.25, "bound on every memcached operation, connecting included"),
    "memcached_retry": Option(duration, 30.0, "how long a failed memcached server is left alone"),
    "memory_limit": Option(size, 64 << 20, "bytes the embedded memory cache may hold"),
    "key_prefix": Option(key_prefix, "pagecache", "namespace of every key, so apps can share a memcached"),
    "charset": Option(charset, "utf-8", "how request paths are decoded before rules match them"),
    "status_header": Option(header_name, "X-Cache", "response header saying HIT/STALE/MISS/BYPASS; empty: none"),
    "cache_status": Option(cache_name, "pagecache",
                           "the cache's name in the Cache-Status header (RFC 9211) and Surrogate-Control; empty: no Cache-Status"),
    "server_timing": Option(boolean, False, "add Server-Timing with the label, age and time left, for a page's own script"),
    "response_freshness": Option(one_of("honour", "ignore"), "honour",
                                 "honour: lifetimes from the response, rules as defaults; ignore: the rules' always"),
    "bypass_cookies": Option(words, (), "cookie names that send a request past the cache; none: any cookie does"),
    "cookie_responses": Option(one_of("pass", "strip"), "pass",
                               "responses setting cookies: pass (not stored) or strip (stored without them)"),
    "strip_request_headers": Option(header_names, (),
                                    "more request headers the application never sees when it fills the cache"),
    "cache_statuses": Option(statuses, frozenset({200, 203, 300, 301, 308}),
                             "response statuses that may be stored"),
    "negative_ttl": Option(duration, 10.0, "longest life of a stored 404 or 410 (when cache_statuses lists them)"),
    "max_entry_size": Option(size, 1000 << 10, "largest body stored; larger ones stream through"),
    "compression": Option(compression_mode, "gzip",
                          "how compressible pages are stored: gzip, br (needs brotli) or off"),
    "compress_min_size": Option(size, 1 << 10, "smallest body worth storing compressed"),
    "compress_types": Option(words, DEFAULT_TYPES, "content types stored compressed (text/*, application/*+json ...)"),
    "compress_max_size": Option(size, 8 << 20,
                                "largest compressible body buffered to be stored compressed (what is stored must "
                                "still fit max_entry_size)"),
    "esi": Option(boolean, True, "process Edge Side Includes in responses that say they hold them (or whose rule says esi)"),
    "esi_depth": Option(positive_int, 3, "how deep ESI includes may nest"),
    "esi_timeout": Option(duration, 5.0, "how long a page waits for its ESI fragments"),
    "esi_workers": Option(positive_int, 16, "most threads per process rendering fragments at once (beyond: in the request thread)"),
    "ignore_query": Option(words, (), "query parameters left out of the key (utm_source ...)"),
    "sort_query": Option(boolean, False, "key ?a=1&b=2 and ?b=2&a=1 as one page"),
    "wait_timeout": Option(duration, 5.0, "how long a request waits for a page another request computes"),
    "lock_timeout": Option(duration, 30.0, "longest life of an update lock"),
    "background_refresh": Option(boolean, False, "rebuild pages in grace in the background, serving stale"),
    "background_workers": Option(positive_int, 2, "threads per process rebuilding pages in the background"),
    "stale_if_error": Option(duration, 0.0, "how long past its grace a page is kept to cover app errors"),
    "error_backoff": Option(duration, 5.0,
                            "after a rebuild fails while a stale copy is served, how long the application is left "
                            "alone for that page (one attempt per back-off); 0: ask again at once"),
    "uncacheable_ttl": Option(duration, 10.0, "how long a URL whose response may not be stored skips the lock"),
    "local_ttl": Option(duration, 0.0, "seconds a page may be served from process memory; 0: off"),
    "local_size": Option(positive_int, 1000, "most pages held in process memory"),
    "local_memory_limit": Option(size, 16 << 20, "most bytes of pages held in process memory"),
    "tag_header": Option(header_name, "Surrogate-Key",
                         "response header naming a page's tags (space-separated), removed before clients see it"),
    "tag_check_interval": Option(duration, 1.0,
                                 "how long a process trusts what it read of tag purges: the bound on a purge's reach"),
    "expose_tags": Option(boolean, False, "keep the tag header in responses (to debug what a page is tagged with)"),
    "purge_allowed": Option(networks, (), "networks allowed PURGE and stats; none: PURGE goes to the app"),
    "stats_path": Option(url_path, "", "path serving the dashboard (browsers) and the counters as JSON; empty: off"),
    "metrics_path": Option(url_path, "", "path serving the counters in Prometheus' text format; empty: off"),
    "stats_dir": Option(directory, "", "a directory where the worker processes of one server share their counters"),
}


def did_you_mean(name: str, names: Optional[Iterable[str]] = None) -> str:
    """`` (did you mean 'x'?)`` for a misspelled option name, or the list of
    the known ones when nothing is close."""
    known = sorted(names if names is not None else set(OPTIONS) | {"cached_urls"})
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.75)
    if close:
        return " (did you mean " + " or ".join(repr(match) for match in close) + "?)"
    return f" (known options: {', '.join(known)})"


def convert_options(values: Mapping[str, Any]) -> Dict[str, Any]:
    """All options typed, with defaults filled in; ConfigError names any bad one."""
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}{did_you_mean(unknown[0])}", unknown[0])
    result = {}
    for name, option in OPTIONS.items():
        if name not in values:
            result[name] = option.default
            continue
        try:
            result[name] = option.convert(values[name])
        except (TypeError, ValueError) as error:
            raise ConfigError(f"option {name}: {error}", name, str(values[name])) from None
    return result
