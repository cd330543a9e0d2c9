"""The ``pagecache`` command: purge pages and check memcached, from the INI file.

    pagecache purge [--soft] -c production.ini [-n NAME] URL...
    pagecache purge [--soft] -c production.ini --tag TAG [--tag TAG...]
    pagecache purge [--soft] -c production.ini --all
    pagecache check -c production.ini [-n NAME]

Both read the ``[filter:NAME]`` section exactly as PasteDeploy hands it to the
filter (``[DEFAULT]``, ``%(here)s`` and ``%%`` mean the same), check it as the
filter does, and reach the memcached servers it names with the same client
library and key prefix. The application is never imported: the command works
on a host that only has the INI file and pagecache. Without ``-n``, the one
filter section that uses pagecache is found by itself.

Exit status: 0 done; 1 memcached could not be reached (a purge may be
incomplete); 2 a usage or configuration error. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import configparser
import os
import socket
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from paste.deploy.loadwsgi import FILTER, loadcontext

from . import __version__
from .backends import cache_from_options, parse_servers
from .config import OPTIONS, ConfigError
from .keys import Keys
from .paste import filter_factory, load_settings, locate
from .purge import Purger
from .rules import Rules
from .stats import Stats
from .store import Store
from .tags import ALL, TagTimes, parse_header

UNREACHABLE, BAD_CONFIG = 1, 2
EMBEDDED = ("it has no memcached_servers: pages live in the embedded memory cache of each "
            "server process, which no other process can reach")


class Failure(Exception):
    """A problem to report as one line on stderr, ending the command with ``status``."""

    def __init__(self, message: str, status: int = BAD_CONFIG):
        super().__init__(" ".join(message.split()))
        self.status = status


class Filter(NamedTuple):
    """A pagecache filter section, checked: where it is and what it says."""
    path: str
    name: str
    rules: Rules
    settings: Dict[str, Any]
    raw: configparser.RawConfigParser


def load_filter(path: str, name: Optional[str] = None) -> Filter:
    """The ``[filter:NAME]`` section of ``path`` (found by itself if ``name`` is
    None), read as PasteDeploy gives it to the filter and checked as the filter
    checks it; a :class:`Failure` for any problem."""
    path = os.path.abspath(path)
    try:
        raw = _read_raw(path)
    except OSError as error:
        raise Failure(f"{path}: cannot read it: {error.strerror or error}") from None
    except configparser.Error as error:
        raise Failure(f"{path}: not an INI file: {error}") from None
    name = name or _find_filter(path, raw)
    if not raw.has_section("filter:" + name):
        sections = ", ".join(f"[{s}]" for s in raw.sections()) or "none"
        raise Failure(f"{path}: no [filter:{name}] section (sections: {sections})")
    try:
        context = loadcontext(FILTER, "config:" + path, name=name)
    except Exception as error:  # PasteDeploy: interpolation, unknown egg or entry point ...
        where, text = f"{path}: [filter:{name}]", str(error).replace(f"Error in file {path}: ", "")
        if isinstance(error, configparser.InterpolationError):
            where = f"{locate(path, error.option) or path}: option {error.option}"
            text += " (write %% for a literal % sign)"
        raise Failure(f"{where}: {text}") from None
    if context.object is not filter_factory:
        raise Failure(f"{path}: [filter:{name}] is not a pagecache filter (use = egg:pagecache#main)")
    try:
        rules, settings = load_settings(context.local_conf, path)
    except ConfigError as error:  # names the line when it can find it
        raise Failure(str(error) if str(error).startswith(path) else f"{path}: {error}") from None
    try:
        parse_servers(settings["memcached_servers"])  # the filter checks them when it is applied
    except ConfigError as error:
        raise Failure(f"{locate(path, 'memcached_servers') or path}: {error}") from None
    return Filter(path, name, rules, settings, raw)


def _read_raw(path: str) -> configparser.RawConfigParser:
    """The file's sections and keys as written ([DEFAULT] as a plain section)."""
    raw = configparser.RawConfigParser(default_section="\0")  # no real section has that name
    raw.optionxform = str  # type: ignore[assignment,method-assign]  # as PasteDeploy: case kept
    with open(path) as f:
        raw.read_file(f)
    return raw


def _find_filter(path: str, raw: configparser.RawConfigParser) -> str:
    """The name of the one filter section whose factory is pagecache's."""
    found = [section[len("filter:"):] for section in raw.sections() if section.startswith("filter:")
             and "pagecache" in (raw.get(section, "use", fallback="")
                                 + raw.get(section, "paste.filter_factory", fallback="")).lower()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise Failure(f"{path}: no [filter:NAME] section with use = egg:pagecache#main; name one with -n")
    raise Failure(f"{path}: several pagecache filters ({', '.join(found)}): choose one with -n")


def hidden_options(section: Filter) -> List[str]:
    """pagecache options set in [DEFAULT], which PasteDeploy does not pass to the
    filter (and because of which it drops the section's own value)."""
    if not section.raw.has_section("DEFAULT"):
        return []
    own = section.raw["filter:" + section.name]
    fetched = {key[4:].strip() for key in own if key.startswith("get ")}
    names = set(OPTIONS) | {"cached_urls"}
    return [key for key in section.raw["DEFAULT"] if key in names and key not in fetched]


class _RecordingStore(Store):
    """A Store that keeps each cache failure to report it, instead of logging it."""

    def __init__(self, client: Any, errors: List[str]):
        super().__init__(client, Stats())
        self.errors = errors

    def failed(self, what: str) -> None:
        self.errors.append(what)


def open_store(section: Filter) -> _RecordingStore:
    """A Store on the section's memcached servers, through its client library."""
    if not section.settings["memcached_servers"]:
        raise Failure(f"[filter:{section.name}] cannot be purged from outside: {EMBEDDED}; purge with an "
                      "HTTP PURGE request (see purge_allowed) or middleware.purge()")
    errors: List[str] = []
    # memcached_retry 0: a server that failed is asked again for the next URL, so that
    # each URL whose server is down is reported (not silently sent to another server).
    settings = dict(section.settings, memcached_retry=0.0)
    try:
        client = cache_from_options(settings, on_error=errors.append)
    except ImportError as error:
        raise Failure(f"memcached_client = {section.settings['memcached_client']} cannot be used: {error} "
                      f"(pip install 'pagecache[pymemcache]')") from None
    return _RecordingStore(client, errors)


def purge(args: argparse.Namespace) -> int:
    """``pagecache purge``: one line per URL or tag; 1 if memcached could not be reached."""
    if not (args.urls or args.tags or args.all):
        raise Failure("purge what? give URLs, --tag TAG or --all")
    section = load_filter(args.config, args.name)
    settings = section.settings
    keys = Keys.from_settings(settings)
    tags = list(args.tags or ())
    for tag in tags:
        if parse_header(tag) != (tag,):
            raise Failure(f"--tag {tag!r}: a tag is printable ASCII without spaces, and not '*' (that is --all)")
    if args.all:
        tags.append(ALL)
    for url in args.urls:
        try:
            keys.digest_of_url(url)
        except ValueError as error:
            raise Failure(f"{error} (give the full URL, as http://example.com/page)") from None
    store = open_store(section)
    purger = Purger(store, keys, None, time.time, store.stats)
    status = 0
    if tags:
        times = TagTimes(store.client, settings["key_prefix"], 0.0, time.time, store.failed)
        failed = set(times.purge(tags, args.soft, time.time()))
        for tag in tags:
            what = "everything" if tag == ALL else f"tag {tag}"
            if tag in failed:
                reason = store.errors[-1] if store.errors else "memcached did not take it"
                print(f"pagecache: {what}: not purged, memcached could not be reached: {reason}", file=sys.stderr)
                status = UNREACHABLE
            else:
                print(("soft-purged " if args.soft else "purged ") + what)
    for url in args.urls:
        seen = len(store.errors)
        found = purger.purge(url, soft=args.soft)
        if len(store.errors) > seen:
            print(f"pagecache: {url}: not purged, memcached could not be reached: {store.errors[seen]}",
                  file=sys.stderr)
            status = UNREACHABLE
        elif found:
            print(("soft-purged " if args.soft else "purged ") + url)
        else:
            print(f"nothing cached for {url}")
    return status


def probe(host: str, port: int, timeout: float) -> Dict[str, str]:
    """Ask one memcached server its ``version`` and ``stats settings`` (text
    protocol); OSError if it does not answer within ``timeout``."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        found = {"version": _ask(conn, b"version").partition(" ")[2].strip()}
        for line in _ask(conn, b"stats settings", until=b"END\r\n").splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "STAT":
                found[words[1]] = words[2]
        return found


def _ask(conn: socket.socket, command: bytes, until: bytes = b"\r\n") -> str:
    conn.sendall(command + b"\r\n")
    data = b""
    while not data.endswith(until) and not data.endswith(b"ERROR\r\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("connection closed by the server")
        data += chunk
    return data.decode("ascii", "replace")


def check(args: argparse.Namespace) -> int:
    """``pagecache check``: the section is valid and each memcached server answers."""
    section = load_filter(args.config, args.name)
    settings = section.settings
    print(f"{section.path} [filter:{section.name}]: valid, {len(section.rules)} cached_urls rule(s), "
          f"key_prefix {settings['key_prefix']}")
    if settings["tag_header"]:
        print(f"tags: read from the {settings['tag_header']} response header (purge with --tag); a purge "
              f"reaches every process within tag_check_interval ({settings['tag_check_interval']:g}s)")
    else:
        print("tags: off (tag_header is empty); purge --all still works")
    for key in hidden_options(section):
        print(f"warning: {key} is set in [DEFAULT], so PasteDeploy passes neither that value nor "
              f"[filter:{section.name}]'s own {key} to the filter: add `get {key} = {key}` to the "
              f"section, or rename it in [DEFAULT]")
    if settings["bypass_cookies"]:
        print(f"cookies: requests with {', '.join(settings['bypass_cookies'])} bypass the cache; other cookies "
              "are ignored (the application never sees them when it renders a page for the cache)")
    else:
        print("cookies: any cookie sends a request past the cache (set bypass_cookies to name the ones that matter)")
    if settings["cookie_responses"] == "strip":
        print("warning: cookie_responses = strip: a response that sets cookies is stored without them, so every "
              "visitor gets the page rendered for the first one (a login form's CSRF token, say)")
    passes = [rule.pattern for rule in section.rules if rule.passes]
    if passes:
        print(f"never cached: {', '.join(passes)}")
    if settings["local_ttl"]:
        print(f"note: local_ttl = {settings['local_ttl']:g}s: after a purge, each process may serve "
              f"its in-memory copy for up to that long")
    if not settings["memcached_servers"]:
        print(f"embedded memory cache: {EMBEDDED}; `pagecache purge` cannot reach it (purge with an "
              "HTTP PURGE request, see purge_allowed, or middleware.purge())")
        return 0
    open_store(section)  # the client library can be loaded
    timeout = settings["memcached_timeout"]
    limit = settings["max_entry_size"]
    failed = 0
    for host, port in parse_servers(settings["memcached_servers"]):
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        started = time.perf_counter()
        try:
            found = probe(host, port, timeout)
        except OSError as error:
            failed += 1
            reason = f"no answer within memcached_timeout ({timeout:g}s)" \
                if isinstance(error, socket.timeout) else (error.strerror or str(error))
            print(f"{where}: UNREACHABLE: {reason}")
            continue
        took = (time.perf_counter() - started) * 1000
        item_max = int(found.get("item_size_max", 1 << 20))
        print(f"{where}: reachable, memcached {found['version'] or '(unknown version)'}, "
              f"{_mb(int(found.get('maxbytes', 0)))} of memory, items up to {_mb(item_max)} "
              f"(answered in {took:.1f} ms)")
        if limit + 4096 > item_max:
            print(f"warning: max_entry_size ({_mb(limit)}) leaves no room under {where}'s item size limit "
                  f"({_mb(item_max)}, memcached -I): pages near that size will not be stored")
    if failed:
        print(f"pagecache: {failed} of {len(settings['memcached_servers'])} memcached servers could not be reached",
              file=sys.stderr)
        return UNREACHABLE
    return 0


def _mb(size: int) -> str:
    return f"{size / (1 << 20):.4g} MB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagecache", description="Purge pages from pagecache and "
                                     "check its memcached servers, using the filter's INI file.")
    parser.add_argument("--version", action="version", version=f"pagecache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, run, text in (("purge", purge, "remove pages (or, with --soft, end their TTL) by URL"),
                            ("check", check, "validate the filter section and connect to each memcached server")):
        command = commands.add_parser(name, help=text, description=text)
        command.set_defaults(run=run)
        command.add_argument("-c", "--config", required=True, metavar="INI",
                             help="the paste.ini file of the application (production.ini)")
        command.add_argument("-n", "--name", metavar="NAME",
                             help="the [filter:NAME] section (default: the one pagecache filter)")
    purging = commands.choices["purge"]
    purging.add_argument("--soft", action="store_true",
                         help="only end the TTL: the stale copy is served while one request rebuilds it")
    purging.add_argument("--tag", dest="tags", action="append", metavar="TAG",
                         help="purge every page the application tagged TAG (repeat for more)")
    purging.add_argument("--all", action="store_true", help="purge every page of this filter (its key_prefix)")
    purging.add_argument("urls", nargs="*", metavar="URL", help="full URL, as http://example.com/news?page=2")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: the process's); the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Failure as failure:
        print(f"pagecache: {failure}", file=sys.stderr)
        return failure.status


if __name__ == "__main__":
    sys.exit(main())
