"""Property-based tests (hypothesis): the rule parser, the entry parser and the
whole middleware against generated rules, bytes, URLs, headers, cache values
and application behaviours.

What is asserted, and why it is sound:

* rules: a generated table parses to exactly the rules it was made of (or,
  for arbitrary text, raises RuleError and nothing else); matching picks the
  first rule a reference implementation picks.
* entries: ``parse(e.to_bytes()) == e``; every proper prefix of
  ``e.to_bytes()`` is a miss (a truncated write never reads as an entry); and
  for any bytes at all (random, or a valid entry mutated) ``parse`` returns
  None or an entry that says exactly what the bytes say: serialising it again
  gives the same bytes but for the spelling of the numbers on the first line,
  which are equal as numbers. (``parse(mutated) is None`` would not be sound:
  changing one byte of a body gives another valid entry.)
* middleware: no exception escapes but the one the application itself causes
  without the cache; every key is a valid memcached key; a response served
  from the cache is a page exactly as some value in the cache says (planted
  or stored); every page stored is the whole response the application gives;
  a response not served from the cache is what the application gives
  without the cache.
"""

from __future__ import annotations

import gzip
import re
import string
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagecache import PageCacheMiddleware
from pagecache.backends import MemoryCache, memcached_client
from pagecache.config import ConfigError
from pagecache.entry import NEVER_STORED, Page, Pass, VaryMarker, parse
from pagecache.http import variant_of
from pagecache.rules import RuleError, parse_rules

from .conftest import Clock
from .test_hostile import (BEHAVIOURS, FAIL_BEFORE_SENDING, Behaviour, KeyChecking, Served, comparable,
                           environ_for, serve)

FAST = settings(max_examples=60, deadline=None)
THOROUGH = settings(max_examples=200, deadline=None)
MIDDLEWARE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- rules --------------------------------------------------------------------------

UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
PATH_CHARS = string.ascii_letters + string.digits + "-._~/%!$&'()*+,;=:@?"


@st.composite
def durations(draw) -> Tuple[str, float]:
    """A duration as written in a rule, and its seconds (computed independently)."""
    whole = draw(st.integers(0, 10_000))
    fraction = draw(st.one_of(st.just(""), st.just("."), st.integers(0, 999).map(lambda n: f".{n}")))
    unit = draw(st.sampled_from(sorted(UNITS)))
    text = f"{whole}{fraction}"
    case = draw(st.sampled_from([str.lower, str.upper]))
    return text + case(unit), float(text) * UNITS[unit]


SAFE_REGEXES = ["^/item/\\d+$", "\\.html$", "^/(a|b)/", "[?&]page=\\d", "^/$", "x{2,3}", "^/news/\\w+"]


# no line breaks of any kind (str.splitlines knows many): control and separator characters
comment_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)


@st.composite
def rule_tables(draw) -> Tuple[str, List[Tuple[str, float, float]]]:
    """A cached_urls text table with comments and blank lines, and its rules."""
    lines, expected = [], []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["prefix", "regex", "comment", "blank"]))
        if kind == "comment":
            lines.append(draw(st.sampled_from(["", "  ", "\t"])) + "#" + draw(comment_text))
            continue
        if kind == "blank":
            lines.append(draw(st.sampled_from(["", " ", "\t  "])))
            continue
        if kind == "prefix":
            pattern = "/" + draw(st.text(alphabet=PATH_CHARS, max_size=15))
        else:
            pattern = "~" + draw(st.sampled_from(SAFE_REGEXES))
        (ttl_text, ttl), (grace_text, grace) = draw(durations()), draw(durations())
        space = draw(st.sampled_from([" ", "   ", "\t"]))
        comment = draw(st.sampled_from(["", "  # a comment", " #"]))
        lines.append(f"{space}{pattern}{space}{ttl_text}{space}{grace_text}{comment}")
        expected.append((pattern, ttl, grace))
    return "\n".join(lines), expected


@FAST
@given(rule_tables())
def test_a_generated_rule_table_parses_to_exactly_its_rules(table):
    text, expected = table
    rules = parse_rules(text)
    assert [(r.pattern, r.ttl, r.grace) for r in rules] == expected


@FAST
@given(st.lists(st.tuples(st.text(alphabet=PATH_CHARS, max_size=10).map(lambda p: "/" + p),
                          st.floats(0, 1e6), st.integers(0, 10 ** 6)), max_size=5))
def test_rules_given_as_tuples_keep_their_numbers(items):
    assert [(r.pattern, r.ttl, r.grace) for r in parse_rules(items)] == [(p, float(t), float(g))
                                                                          for p, t, g in items]


@THOROUGH
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.sampled_from(["/", "~", "~(", "~[", "~\\", "/a", "30", "1.5m", "-1", "5x",
                                           "nan", "1e3", "#", "\t", " ", "\n", "\x00", "ms", "d", "~.*"]),
                          max_size=30).map("".join)))
def test_any_text_parses_or_raises_a_rule_error(text):
    try:
        rules = parse_rules(text)
    except RuleError as error:
        assert isinstance(error, ConfigError) and "cached_urls" in str(error)
        return
    for rule in rules:
        assert rule.pattern.startswith(("/", "~")) and rule.ttl >= 0 and rule.grace >= 0


@THOROUGH
@given(st.lists(st.one_of(st.text(alphabet="/abc", min_size=1, max_size=4).map(lambda p: "/" + p),
                          st.sampled_from(SAFE_REGEXES).map(lambda r: "~" + r)), max_size=6),
       st.text(max_size=12).map(lambda p: "/" + p), st.text(max_size=8))
def test_the_first_matching_rule_wins(patterns, path, query):
    rules = parse_rules([(pattern, 10, 20) for pattern in patterns])

    def matches(pattern: str) -> bool:
        if pattern.startswith("~"):
            return re.search(pattern[1:], path) is not None  # without the query word: the path only
        return path.startswith(pattern)
    expected = next((number for number, pattern in enumerate(patterns) if matches(pattern)), None)
    found = rules.match(path, query)
    assert (None if found is None else list(rules).index(found)) == expected


# -- entries --------------------------------------------------------------------------

TOKEN = string.ascii_letters + string.digits + "!#$%&'*+.^_`|~-"
times = st.floats(min_value=0.0, max_value=4e9, allow_nan=False, allow_infinity=False)
spans = st.one_of(st.sampled_from([0.0, 1.0, 30.0, 120.0, 0.25]),
                  st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False))
latin1_line = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255,
                                             blacklist_characters="\r\n"), max_size=30)
statuses = st.builds(lambda code, reason: f"{code}{reason}", st.integers(100, 599),
                     st.one_of(st.just(""), latin1_line.map(lambda r: " " + r)))
any_headers = st.lists(st.tuples(st.text(alphabet=TOKEN, min_size=1, max_size=12), latin1_line), max_size=6)
# what a page may hold: none of the headers never stored (they are dropped when read)
headers = any_headers.filter(lambda found: not any(
    name.lower() in NEVER_STORED or name.lower() in ("content-length", "connection") for name, _ in found))
pages = st.builds(Page, statuses, headers, st.binary(max_size=300), times, spans, spans, spans)
markers = st.builds(VaryMarker,
                    st.lists(st.text(alphabet=TOKEN, min_size=1, max_size=15), min_size=1, max_size=4)
                    .map(tuple),
                    st.text(alphabet="0123456789abcdef", min_size=1, max_size=32), times, spans, times)
passes = st.builds(Pass, times, st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                        max_size=200))
entries = st.one_of(pages, markers, passes)


def says_exactly(value: bytes, entry: Any) -> None:
    """Assert ``entry`` is exactly what ``value`` holds: the same bytes once
    serialised again, but for how the first line spells its numbers."""
    again = entry.to_bytes()
    head, _, rest = value.partition(b"\n")
    head_again, _, rest_again = again.partition(b"\n")
    assert rest == rest_again
    fields, fields_again = head.split(b" "), head_again.split(b" ")
    assert len(fields) == len(fields_again) and fields[:2] == fields_again[:2]
    numeric = {b"P": range(2, 8), b"V": range(2, 5), b"U": range(2, 3)}[fields[1]]
    for number, (field, field_again) in enumerate(zip(fields, fields_again)):
        if number in numeric:
            assert float(field) == float(field_again)
        else:
            assert field == field_again


@THOROUGH
@given(entries)
def test_an_entry_reads_back_exactly(entry):
    assert parse(entry.to_bytes()) == entry
    assert parse(bytearray(entry.to_bytes())) == entry


@given(st.builds(Page, statuses, any_headers, st.binary(max_size=300), times, spans, spans, spans))
def test_a_page_read_back_never_holds_a_header_that_is_never_stored(page):
    """Whoever wrote an entry, Set-Cookie, hop-by-hop headers, Age and the headers
    Connection names are not read back, and a Content-Length that is not the
    body's makes the entry a miss."""
    found = parse(page.to_bytes())
    lengths = [value for name, value in page.headers if name.lower() == "content-length"]
    if lengths and (len(lengths) > 1 or lengths[0].strip() != str(len(page.body))):
        assert found is None
        return
    named = {token.strip(" \t").lower() for name, value in page.headers if name.lower() == "connection"
             for token in value.split(",")}
    assert found.headers == [(name, value) for name, value in page.headers
                             if name.lower() not in NEVER_STORED and name.lower() not in named]


@THOROUGH
@given(entries, st.data())
def test_a_truncated_entry_is_a_miss(entry, data):
    value = entry.to_bytes()
    for cut in {0, 1, len(value) - 1, data.draw(st.integers(0, len(value) - 1))}:
        assert parse(value[:cut]) is None, cut


@st.composite
def mutated(draw) -> bytes:
    """A valid entry with a few bytes replaced, inserted or deleted."""
    value = bytearray(draw(entries).to_bytes())
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(value)))
        operation = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.one_of(st.sampled_from(b" \n\r:0.-e_+PVU"), st.integers(0, 255)))
        if operation == "insert" or where == len(value):
            value.insert(where, byte)
        elif operation == "replace":
            value[where] = byte
        else:
            del value[where]
    return bytes(value)


anything = st.one_of(
    st.binary(max_size=400),
    st.binary(max_size=200).map(lambda b: b"PC1 " + b),
    st.sampled_from([b"P", b"V", b"U", b"Q"]).flatmap(
        lambda kind: st.lists(st.sampled_from([b"1", b"1.5", b"-1", b"nan", b"inf", b"1e400", b"1_0", b"",
                                               b"+1", b"0x1", b" ", b"abc", b"99"]), max_size=7)
        .map(lambda fields: b"PC1 " + kind + b" " + b" ".join(fields) + b"\n"))
    .flatmap(lambda head: st.binary(max_size=60).map(lambda rest: head + rest)),
    mutated(),
)


@THOROUGH
@given(anything)
def test_any_bytes_read_as_a_miss_or_as_exactly_what_they_say(value):
    entry = parse(value)
    if entry is not None:
        assert type(entry) in (Page, VaryMarker, Pass)
        says_exactly(value, entry)
        assert parse(entry.to_bytes()) == entry


@FAST
@given(st.one_of(st.none(), st.integers(), st.text(), st.floats(), st.lists(st.binary()),
                 st.binary().map(memoryview), st.binary().map(bytearray)))
def test_values_that_are_not_bytes_never_raise(value):
    entry = parse(value)
    assert entry is None or isinstance(value, (bytearray, memoryview))


# -- the whole middleware -----------------------------------------------------------------

NOW = 1_700_000_000.0
HEADER_NAMES = ["HTTP_ACCEPT_ENCODING", "HTTP_COOKIE", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE",
                "HTTP_RANGE", "HTTP_X_FORWARDED_HOST", "HTTP_USER_AGENT", "CONTENT_TYPE",
                "HTTP_CACHE_CONTROL", "HTTP_PRAGMA"]
any_latin1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
header_values = st.one_of(any_latin1, st.sampled_from(["*", "gzip", '"pc-x"', "no-cache", "session=1",
                                                       "Mon, 01 Jan 2024 00:00:00 GMT", "bytes=0-1"]))


class Recording(KeyChecking):
    """Checks keys, and remembers every value read from or written to the cache."""

    def __init__(self, client: Any):
        super().__init__(client)
        self.values: List[bytes] = []     # read or written: where a served page may come from
        self.written: List[bytes] = []

    def get(self, key, *args, **kwargs):
        value = super().get(key, *args, **kwargs)
        if isinstance(value, bytes):
            self.values.append(value)
        return value

    def set(self, key, value, *args, **kwargs):
        self.values.append(value)
        self.written.append(value)
        return super().set(key, value, *args, **kwargs)


class App:
    """A well-behaved page (several kinds) or one of the misbehaviours of
    test_hostile; the same answer every call, so a run without the cache
    says what the client must see."""

    PAGES = {
        "page": ("200 OK", [("Content-Type", "text/html")]),
        "vary": ("200 OK", [("Content-Type", "text/html"), ("Vary", "Accept-Encoding, User-Agent")]),
        "cookie": ("200 OK", [("Content-Type", "text/html"), ("Set-Cookie", "s=1; Path=/")]),
        "private": ("200 OK", [("Cache-Control", "private")]),
        "not found": ("404 Not Found", [("Content-Type", "text/plain")]),
        "error": ("500 Internal Server Error", [("Content-Type", "text/plain")]),
        "vary star": ("200 OK", [("Vary", "*")]),
    }

    def __init__(self, kind: str):
        self.kind = kind
        self.misbehaviour = Behaviour(kind) if kind in BEHAVIOURS else None
        self.calls = 0

    def __call__(self, environ: Dict, start_response: Any) -> Any:
        self.calls += 1
        if self.misbehaviour is not None:
            return self.misbehaviour(environ, start_response)
        status, headers = self.PAGES[self.kind]
        start_response(status, list(headers))
        return [b"<p>", self.kind.encode("ascii"), b"</p>"]


@st.composite
def planted_values(draw) -> Optional[bytes]:
    """What sits under the request's key before it arrives."""
    choice = draw(st.sampled_from(["nothing", "garbage", "page", "marker", "pass", "mutated"]))
    if choice == "nothing":
        return None
    if choice == "garbage":
        return draw(st.binary(max_size=100))
    if choice == "mutated":
        return draw(mutated())
    stored = NOW - draw(st.sampled_from([0.0, 5.0, 31.0, 100.0, 149.0, 151.0, 1000.0]))
    if choice == "page":
        return Page(draw(statuses), draw(headers), draw(st.binary(max_size=50)), stored,
                    30.0, 120.0, draw(st.sampled_from([0.0, 600.0]))).to_bytes()
    if choice == "marker":
        names = tuple(sorted(draw(st.sets(st.sampled_from(["accept-encoding", "user-agent", "cookie"]),
                                          min_size=1))))
        return VaryMarker(names, "0123abcd", stored, 400.0, draw(st.sampled_from([0.0, NOW - 1]))).to_bytes()
    return Pass(stored, "planted").to_bytes()


@st.composite
def scenarios(draw) -> Dict:
    path = draw(st.one_of(st.just("/p"), st.binary(max_size=30).map(lambda b: "/" + b.decode("latin-1")),
                          st.sampled_from(["/%zz", "/" + "a" * 3000, "/\x00", "/\u2603", "/\udcff", ""])))
    method = draw(st.sampled_from(["GET"] * 12 + ["HEAD", "HEAD", "POST", "PURGE", "FOO"]))
    environ = environ_for(path, method,
                          draw(st.one_of(st.just(""), any_latin1)))
    environ.update(draw(st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=3)))
    if draw(st.sampled_from([False] * 9 + [True])):
        environ["HTTP_AUTHORIZATION"] = draw(header_values)
    host = draw(st.one_of(st.just("example.com"), any_latin1, st.none()))
    if host is None:
        environ.pop("HTTP_HOST")
    else:
        environ["HTTP_HOST"] = host
    return dict(
        environ=environ,
        app=draw(st.one_of(st.sampled_from(sorted(App.PAGES)), st.sampled_from(BEHAVIOURS))),
        planted=draw(planted_values()),
        variant=draw(st.one_of(st.none(), st.binary(max_size=60), pages.map(lambda p: p.to_bytes()))),
        advance=draw(st.sampled_from([0.0, 0.0, 40.0, 200.0])),
        options=dict(
            local_ttl=draw(st.sampled_from([0, 10])),
            stale_if_error=draw(st.sampled_from([0, 600])),
            max_entry_size=draw(st.sampled_from([64, 4096, 1 << 20])),
            compression=draw(st.sampled_from(["gzip", "off"])),
            sort_query=draw(st.booleans()),
            bypass_cookies=draw(st.sampled_from(["", "session"])),
        ),
    )


def fresh_environ(environ: Dict) -> Dict:
    copy = dict(environ)
    copy["wsgi.input"] = type(environ["wsgi.input"])(b"")
    return copy


def same_response(served: Served, alone: Served) -> bool:
    """Whether a client could tell the two apart (header order aside)."""
    mine, theirs = comparable(served), comparable(alone)
    return (mine[0], sorted(mine[1]), mine[2:]) == (theirs[0], sorted(theirs[1]), theirs[2:])


def from_the_cache(served: Served, values: List[bytes], head: bool) -> None:
    """A response labelled HIT or STALE is a page exactly as one of ``values`` says."""
    for value in values:
        page = parse(value)
        if type(page) is not Page:
            continue
        if served.status == "304 Not Modified" and page.status.startswith("200"):
            own = {"age", "x-cache", "cache-status"}  # what pagecache adds to a page it serves
            if served.body == b"" and all(h in page.headers for h in served.headers if h[0].lower() not in own):
                return
        body = gzip.decompress(page.body) if page.encoding == "gzip" else page.body
        if served.status == page.status and served.body == (b"" if head else body) and (
                page.encoding or served.headers[:len(page.headers)] == page.headers):
            return
    raise AssertionError(f"served {served.status!r} {served.body!r} from no value in the cache")


# An application that calls start_response with exc_info after yielding some
# body: without the cache the body is already sent (the server raises); when
# the cache still holds the body (within max_entry_size), the error page
# replaces it, as WSGI allows before anything is sent.
ERROR_PAGE_WHEN_BUFFERED = {"exc_info after streaming started"}


def run_scenario(scenario: Dict, cache: Recording, prefix: str) -> None:
    clock = Clock(NOW)
    environ = scenario["environ"]
    app = App(scenario["app"])
    alone = serve(App(scenario["app"]), fresh_environ(environ))
    mw = PageCacheMiddleware(app, "/p 30 120\n~^/[\\x00-\\xff] 30 120\n/ 30 120", cache, clock=clock,
                             key_prefix=prefix, **scenario["options"])
    digest = mw.keys.digest(environ)
    if scenario["planted"] is not None:
        cache.client.set(mw.keys.page(digest), scenario["planted"], 3600)
        marker = parse(scenario["planted"])
        if type(marker) is VaryMarker and scenario["variant"] is not None:
            variant = mw.keys.variant(digest, marker.generation, variant_of(environ, marker.names))
            cache.client.set(mw.keys.page(variant), scenario["variant"], 3600)
            cache.values.append(scenario["variant"])
        cache.values.append(scenario["planted"])
    allowed_bodies = set()
    if alone.error is None and alone.status is not None and alone.status[:3] in ("200", "404"):
        allowed_bodies.add(alone.body)
    head = environ.get("REQUEST_METHOD") == "HEAD"
    for number in range(2):
        if number:
            clock.advance(scenario["advance"])
        served = serve(mw, fresh_environ(environ))
        # no exception but the one the application causes without the cache
        assert served.error is None or type(served.error) is type(alone.error), (served.error, alone.error)
        if served.label in ("HIT", "STALE") or (served.status or "").startswith("304"):
            # from the cache (a 304 too: pagecache answers conditionals from the page it has)
            from_the_cache(served, cache.values, head)
        elif not same_response(served, alone):
            # the cache buffers a response until it is complete (within max_entry_size), so an
            # application failing midway fails before anything is sent, and one that replaces
            # its status with exc_info after some body may still do so
            if scenario["app"] in FAIL_BEFORE_SENDING:
                assert comparable(served) == (None, [], b"", type(alone.error))
            else:
                assert scenario["app"] in ERROR_PAGE_WHEN_BUFFERED, (comparable(served), comparable(alone))
                assert (served.status, served.body, served.error) == (
                    "500 Internal Server Error", alone.body + b"never", None)
    for value in cache.written:
        entry = parse(value)
        assert entry is not None, value
        if type(entry) is Page:
            body = gzip.decompress(entry.body) if entry.encoding == "gzip" else entry.body
            assert body in allowed_bodies, (entry, alone.status)
            assert not any(name.lower() == "set-cookie" for name, _ in entry.headers)


@MIDDLEWARE
@given(scenarios())
def test_the_middleware_on_generated_requests_values_and_applications(scenario):
    run_scenario(scenario, Recording(MemoryCache()), "prop")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), library=st.sampled_from(["python-memcached", "pymemcache"]))
def test_the_middleware_on_real_memcached(memcached_server, scenario, library):
    if memcached_server.process is None or memcached_server.process.poll() is not None:
        memcached_server.start()
    client = memcached_client([memcached_server.address], library, timeout=2, retry=1)
    memcached_server.flush()
    run_scenario(scenario, Recording(client), "propmc")
