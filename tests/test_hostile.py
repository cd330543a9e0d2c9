"""Hostile input: foreign values under pagecache's keys, requests no browser
sends, and applications that break the rules of WSGI.

Values are planted in a real memcached with any flags (as another program, an
older pagecache or a truncated write would leave them) and read through both
client libraries. Requests are made straight into the WSGI callable with
environs a lenient server could produce, so nothing in between cleans them
up. Every key the middleware uses is checked on its way to the cache.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import re
import socket
import sys
import zlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import pytest

from pagecache import PageCacheMiddleware
from pagecache.backends import MemoryCache, memcached_client
from pagecache.entry import Page, Pass, VaryMarker
from pagecache.http import variant_of

from .conftest import CountingApp, stored
from .servers import AppServer

HOST = "example.com"
_prefixes = itertools.count()
_VALID_KEY = re.compile(r"^[!-~]{1,250}$")  # memcached text protocol: no spaces or control characters


# -- a server's side of WSGI ------------------------------------------------------

class Served:
    """What a WSGI server made of one call: status, headers, the body chunks as
    the application (or the cache) produced them, and the exception, if any."""

    def __init__(self) -> None:
        self.status: Optional[str] = None
        self.headers: List[Tuple[str, str]] = []
        self.chunks: List[Any] = []
        self.error: Optional[BaseException] = None

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def label(self) -> Optional[str]:
        return dict(self.headers).get("X-Cache")


def environ_for(path: str = "/", method: str = "GET", query: str = "", **extra: Any) -> Dict:
    """An environ as a server builds it; ``extra`` overrides or adds keys
    (``None`` removes one)."""
    environ = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "example.com", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": HOST, "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in extra.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return environ


def serve(app: Callable, environ: Dict) -> Served:
    """Call ``app`` as a strict server does: start_response may be called again
    only with exc_info and only before any body was sent; chunks and write()
    data must be bytes, after start_response; the iterable is closed whatever
    happens. An exception ends the response (``Served.error``)."""
    served = Served()

    def write(data: Any) -> None:
        if type(data) is not bytes:
            raise TypeError(f"body chunk must be bytes, not {type(data).__name__}")
        if served.status is None:
            raise AssertionError("body before start_response")
        served.chunks.append(data)

    def start_response(status, headers, exc_info=None):
        if exc_info is not None:
            if served.chunks:
                raise exc_info[1].with_traceback(exc_info[2])
        elif served.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        served.status, served.headers = status, list(headers)
        return write

    try:
        result = app(environ, start_response)
    except Exception as error:
        served.error = error
        return served
    try:
        for chunk in result:
            write(chunk)
    except Exception as error:
        served.error = error
    finally:
        if hasattr(result, "close"):
            result.close()
    return served


class KeyChecking:
    """A cache client wrapper that fails the test on any invalid memcached key."""

    def __init__(self, client: Any):
        self.client = client
        self.keys: List[str] = []

    def _check(self, key: Any) -> None:
        assert isinstance(key, str) and _VALID_KEY.match(key), f"invalid memcached key {key!r}"
        self.keys.append(key)

    def get(self, key, *args, **kwargs):
        self._check(key)
        return self.client.get(key, *args, **kwargs)

    def set(self, key, *args, **kwargs):
        self._check(key)
        return self.client.set(key, *args, **kwargs)

    def add(self, key, *args, **kwargs):
        self._check(key)
        return self.client.add(key, *args, **kwargs)

    def delete(self, key, *args, **kwargs):
        self._check(key)
        return self.client.delete(key, *args, **kwargs)


def page_key(mw: PageCacheMiddleware, path: str) -> str:
    return mw.keys.page(mw.keys.digest_of_url(f"http://{HOST}{path}"))


# -- foreign values under a page's key ---------------------------------------------

class Detonator:
    """Pickles to a payload that, if ever loaded, creates the directory ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def a_page(body: bytes = b"stored body", **changes: Any) -> Page:
    fields = dict(status="200 OK", headers=[("Content-Type", "text/plain")], body=body,
                  stored=1_700_000_000.0, ttl=30.0, grace=120.0, stale=0.0)
    fields.update(changes)
    return Page(**fields)


def foreign_values(bomb: bytes) -> List[Tuple[str, bytes, int]]:
    """(name, value, flags) of things another program could leave under our key."""
    valid = a_page().to_bytes()
    marker = VaryMarker(("accept-encoding", "user-agent"), "0123456789abcdef", 1_700_000_000.0,
                        200.0).to_bytes()
    passed = Pass(1_700_000_000.0, "Cache-Control: private").to_bytes()
    values = [
        ("pickle, flag 1", bomb, 1),
        ("compressed pickle, flags 1|8", zlib.compress(bomb), 1 | 8),
        ("pickle, no flags", bomb, 0),
        ("pickle, flag 8 only", zlib.compress(bomb), 8),
        ("compressed entry, flag 8", zlib.compress(valid), 8),
        ("older format: pickled tuple", pickle.dumps(("200 OK", [("Content-Type", "text/plain")],
                                                       b"old", 1_700_000_000.0), protocol=2), 1),
        ("older format: version 0", b"PC0 " + valid[4:], 0),
        ("newer format: version 2", b"PC2 " + valid[4:], 0),
        ("integer, flag 2", b"12345", 2),
        ("not an integer, flag 2", b"twelve", 2),
        ("long, flag 4", b"99999999999999999999", 4),
        ("text, flag 16", "caf\u00e9".encode("utf-8"), 16),
        ("invalid utf-8, flag 16", b"\xff\xfe\xfd", 16),
        ("unknown flag 32", b"value", 32),
        ("all flags", b"value", 0xFFFFFFFF),
        ("empty", b"", 0),
        ("random bytes", bytes(range(256)) * 4, 0),
        ("JSON from another app", b'{"status": "200 OK", "body": "x"}', 0),
        ("CRLF and END inside", b"PC1 \r\nEND\r\nVALUE x 0 1\r\n", 0),
    ]
    for cut in (1, 4, 10, len(valid) // 2, len(valid) - 1):
        values.append((f"page truncated to {cut} bytes", valid[:cut], 0))
    for cut in (len(marker) - 1, len(marker) - 3):
        values.append((f"vary marker truncated to {cut} bytes", marker[:cut], 0))
    values.append(("pass marker truncated", passed[:-4], 0))
    return values


def pickle_bomb(path: str) -> bytes:
    bomb = pickle.dumps(Detonator(path))
    # the payload is live: loading it anywhere would create the directory
    probe = path + ".probe"
    pickle.loads(pickle.dumps(Detonator(probe)))
    assert os.path.isdir(probe)
    return bomb


@pytest.mark.parametrize("library", ["python-memcached", "pymemcache"])
def test_foreign_values_are_misses_never_unpickled_and_overwritten(memcached, library, tmp_path):
    """Each value is planted under a page's key with its flags: the request is
    answered by the application (MISS) without an exception, the value is
    replaced by the page the application gave, the next request is a HIT, and
    no pickle was ever loaded."""
    target = str(tmp_path / "unpickled")
    values = foreign_values(pickle_bomb(target))
    app = CountingApp()
    cache = KeyChecking(memcached_client([memcached.address], library, timeout=1, retry=1))
    mw = PageCacheMiddleware(app, "/ 30 120", cache, key_prefix=f"h{next(_prefixes)}")
    for number, (name, value, flags) in enumerate(values):
        path = f"/foreign/{number}"
        memcached.raw_set(page_key(mw, path), value, flags=flags)
        first = serve(mw, environ_for(path))
        assert first.error is None, (name, first.error)
        assert (first.status, first.label) == ("200 OK", "MISS"), name
        assert first.body == b"page #%d" % app.calls, name
        entry = stored(mw, f"http://{HOST}{path}")
        assert type(entry) is Page and entry.body == first.body, name
        second = serve(mw, environ_for(path))
        assert (second.label, second.body) == ("HIT", first.body), name
    assert not os.path.exists(target), "a cached pickle was loaded"
    assert app.calls == len(values)


@pytest.mark.parametrize("library", ["python-memcached", "pymemcache"])
def test_a_foreign_value_under_a_variant_key_is_a_miss_too(memcached, library):
    """A valid vary marker pointing at a variant whose key holds garbage."""
    app = CountingApp(headers=[("Content-Type", "text/plain"), ("Vary", "Accept-Language")])
    mw = PageCacheMiddleware(app, "/ 30 120", memcached_servers=memcached.address,
                             memcached_client=library, key_prefix=f"h{next(_prefixes)}")
    assert serve(mw, environ_for("/v", HTTP_ACCEPT_LANGUAGE="fr")).label == "MISS"
    marker = stored(mw, f"http://{HOST}/v")
    assert type(marker) is VaryMarker
    primary = mw.keys.digest_of_url(f"http://{HOST}/v")
    variant = mw.keys.page(mw.keys.variant(primary, marker.generation,
                                           variant_of({"HTTP_ACCEPT_LANGUAGE": "fr"}, marker.names)))
    assert type(mw.store.load(variant)) is Page
    memcached.raw_set(variant, pickle.dumps(["not", "a", "page"]), flags=1)
    again = serve(mw, environ_for("/v", HTTP_ACCEPT_LANGUAGE="fr"))
    assert (again.error, again.status, again.label, again.body) == (None, "200 OK", "MISS", b"page #2")
    assert serve(mw, environ_for("/v", HTTP_ACCEPT_LANGUAGE="fr")).label == "HIT"


# -- hostile requests -----------------------------------------------------------------

LATIN1_BYTES = bytes(range(256)).decode("latin-1")
HOSTILE_ENVIRONS: List[Tuple[str, Dict]] = [
    ("invalid percent-encoding", dict(path="/%zz%", query="a=%G1&%")),
    ("lone percent", dict(path="/%", query="%")),
    ("percent-encoded NUL and slash", dict(path="/a%00b%2F..%2f", query="x=%00")),
    ("invalid UTF-8 in the path", dict(path="/\xff\xfe\xc3(")),
    ("every byte in the path", dict(path="/" + LATIN1_BYTES)),
    ("every byte in the query", dict(path="/q", query=LATIN1_BYTES)),
    ("NUL and control characters", dict(path="/\x00\x01\x1f\x7f\r\n\t ", query="\x00\r\n")),
    ("spaces", dict(path="/with space/ and more", query="a b=c d")),
    ("100 KB path", dict(path="/" + "a" * 100_000)),
    ("100 KB query", dict(path="/long", query="q=" + "%ff" * 34_000)),
    ("characters outside latin-1", dict(path="/\u2603\U0001f600", query="\u2603")),
    ("lone surrogates", dict(path="/\udcff\udc80", query="\udcff")),
    ("dot segments", dict(path="/../../etc/passwd")),
    ("empty path", dict(path="")),
    ("no leading slash", dict(path="relative")),
    ("unknown method", dict(method="FROBNICATE")),
    ("lower-case method", dict(method="get")),
    ("empty method", dict(method="")),
    ("method with NUL", dict(method="GET\x00")),
    ("PURGE of nothing cached", dict(method="PURGE")),
    ("no REQUEST_METHOD", dict(REQUEST_METHOD=None)),
    ("no HTTP_HOST", dict(HTTP_HOST=None)),
    ("no host at all", dict(HTTP_HOST=None, SERVER_NAME=None, SERVER_PORT=None)),
    ("empty host", dict(HTTP_HOST="")),
    ("host with CRLF and spaces", dict(HTTP_HOST="evil.com\r\nX-Injected: 1 ")),
    ("host with bytes", dict(HTTP_HOST="\xff\x00.example")),
    ("10 KB host", dict(HTTP_HOST="h" * 10_000)),
    ("host with user info and odd port", dict(HTTP_HOST="user@example.com:99999999")),
    ("IPv6 host", dict(HTTP_HOST="[::1]:80")),
    ("odd scheme", {"wsgi.url_scheme": "gopher\x00"}),
    ("no scheme", {"wsgi.url_scheme": None}),
    ("odd SCRIPT_NAME", dict(SCRIPT_NAME="/\xff mount")),
    ("repeated headers joined", dict(HTTP_ACCEPT_ENCODING="gzip, gzip,, , deflate", HTTP_ACCEPT="a,a,a")),
    ("huge header", dict(HTTP_ACCEPT_ENCODING="x" * 100_000)),
    ("header with control characters", dict(HTTP_ACCEPT_ENCODING="\x00\r\n\x7f", HTTP_USER_AGENT="\xff")),
    ("garbage cookie", dict(HTTP_COOKIE="=;;=;\x00=\xff; sess ion=; \xff")),
    ("bypass cookie among garbage", dict(HTTP_COOKIE="=;;=;\x00=\xff; session")),
    ("empty Authorization", dict(HTTP_AUTHORIZATION="")),
    ("garbage conditionals", dict(HTTP_IF_NONE_MATCH="\x00,,W/", HTTP_IF_MODIFIED_SINCE="Mon, 99 Foo 99999")),
    ("overflowing date", dict(HTTP_IF_MODIFIED_SINCE="Fri, 31 Dec 99999999999 23:59:59 GMT")),
    ("If-None-Match star", dict(HTTP_IF_NONE_MATCH="*")),
    ("garbage range", dict(HTTP_RANGE="bytes=9-1,-,x")),
    ("forwarding headers", dict(HTTP_X_FORWARDED_HOST="evil.com", HTTP_FORWARDED="for=\x00;host=\xff")),
    ("odd content type", dict(CONTENT_TYPE="\x00multipart/\xff", CONTENT_LENGTH="-1")),
    ("stats path with bad address", dict(path="/_stats", REMOTE_ADDR="not an address")),
    ("PURGE from a scoped address", dict(method="PURGE", REMOTE_ADDR="fe80::1%eth0")),
    ("PURGE from garbage address", dict(method="PURGE", REMOTE_ADDR="\x00")),
]


def hostile_environ(spec: Dict) -> Dict:
    spec = dict(spec)
    return environ_for(spec.pop("path", "/hostile"), spec.pop("method", "GET"), spec.pop("query", ""), **spec)


def echo_app(environ: Dict, start_response: Callable) -> List[bytes]:
    """A page that varies on a few request headers and says which URL it is."""
    body = repr((environ.get("PATH_INFO"), environ.get("QUERY_STRING"))).encode("utf-8", "backslashreplace")
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Vary", "Accept-Encoding, Cookie, Content-Type")])
    return [body]


@pytest.fixture(params=["memory", "python-memcached", "pymemcache"])
def hostile_cache(request):
    """A key-checking wrapper over each kind of cache."""
    if request.param == "memory":
        return KeyChecking(MemoryCache())
    server = request.getfixturevalue("memcached")
    return KeyChecking(memcached_client([server.address], request.param, timeout=1, retry=1))


# requests that never reach the cache: not GET/HEAD, Authorization, the stats
# path, or a path no rule matches
UNCACHED = {"unknown method", "lower-case method", "empty method", "method with NUL", "no REQUEST_METHOD",
            "empty Authorization", "bypass cookie among garbage", "stats path with bad address",
            "PURGE from a scoped address", "PURGE from garbage address", "empty path"}
# requests a rule matches that bypass the cache, each for its own reason: a
# path routers read differently (dot segments, control characters, escapes
# left after decoding, no leading slash), a Host that names no host, a scheme
# that is not http(s), a Content-Length that may announce a body
BYPASSED = {"percent-encoded NUL and slash", "every byte in the path", "NUL and control characters",
            "dot segments", "no leading slash", "no host at all", "host with CRLF and spaces",
            "host with bytes", "10 KB host", "host with user info and odd port", "odd scheme",
            "odd content type"}


@pytest.mark.parametrize("name,spec", HOSTILE_ENVIRONS, ids=[name for name, _ in HOSTILE_ENVIRONS])
def test_hostile_requests_raise_nothing_and_make_only_valid_keys(hostile_cache, name, spec):
    """Each request twice (a miss, then a hit where it may be cached), with
    prefix and regular-expression rules, PURGE and the stats path enabled."""
    mw = PageCacheMiddleware(echo_app, "~[\\x00-\\xff] 30 120\n/ 30 120", hostile_cache,
                             key_prefix=f"h{next(_prefixes)}", purge_allowed="127.0.0.1 fe80::/10",
                             stats_path="/_stats", bypass_cookies="session")
    served = [serve(mw, hostile_environ(spec)) for _ in range(2)]
    for one in served:
        assert one.error is None, f"{name}: {one.error!r}"
        assert one.status is not None and one.status[:3] in ("200", "304", "403", "404"), (name, one.status)
    if name in UNCACHED:
        assert served[1].label in (None, "BYPASS"), name
    elif name in BYPASSED:
        assert [one.label for one in served] == ["BYPASS", "BYPASS"], name
        assert not any(key.startswith(mw.keys.page("")) for key in hostile_cache.keys), name
    elif name == "PURGE of nothing cached":
        assert [one.status[:3] for one in served] == ["404", "404"] and hostile_cache.keys
    else:
        assert hostile_cache.keys, f"{name}: the cache was never asked"
        assert (served[0].label, served[1].label) == ("MISS", "HIT"), name


def test_hostile_urls_can_be_purged_and_make_only_valid_keys(memcached):
    cache = KeyChecking(memcached_client([memcached.address], "python-memcached", timeout=1, retry=1))
    mw = PageCacheMiddleware(echo_app, "/ 30 120", cache, key_prefix=f"h{next(_prefixes)}")
    for path in ["/%zz%", "/%ff%fe%00", "/" + "a" * 100_000, "/a b", "/\u2603", "/%E2%98%83"]:
        url = f"http://{HOST}{path}"
        assert not mw.purge(url)
        assert mw.purge(url, soft=True) is False
    for bad in ["", "not a url", "ftp://example.com/", "http://", "/relative", "\x00"]:
        with pytest.raises(ValueError):
            mw.purge(bad)


def test_a_percent_encoded_url_is_purged_by_its_raw_form(memcached):
    """The path a request carries is decoded (PATH_INFO); purging its URL with
    percent-encoding finds the same page."""
    mw = PageCacheMiddleware(echo_app, "/ 30 120", memcached_servers=memcached.address,
                             key_prefix=f"h{next(_prefixes)}")
    environ = environ_for("/caf\xc3\xa9 x")  # what a server makes of /caf%C3%A9%20x
    assert serve(mw, environ).label == "MISS"
    assert serve(mw, environ_for("/caf\xc3\xa9 x")).label == "HIT"
    assert mw.purge(f"http://{HOST}/caf%C3%A9%20x")
    assert serve(mw, environ_for("/caf\xc3\xa9 x")).label == "MISS"


RAW_REQUESTS = [
    b"GET /%ff%00%zz%?%ff%00q=%G1 HTTP/1.1\r\nHost: example.com\r\n",
    b"GET /raw-bytes/\xff\x00 HTTP/1.1\r\nHost: example.com\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: example.com\r\n",
    b"GET /?" + b"q=%ff" * 20_000 + b" HTTP/1.1\r\nHost: example.com\r\n",
    b"GET /caf%C3%A9/%ff%fe/%C3%28 HTTP/1.1\r\nHost: example.com\r\n",
    b"GET /two-hosts HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n",
    b"GET /odd HTTP/1.1\r\nHost: EXAMPLE.com:80\r\nAccept-Encoding: gzip\r\nAccept-Encoding: br\r\n"
    b"X-Latin: \xff\xfe caf\xe9\r\nCookie: =;;\r\nCookie: a=b\r\n",
    b"GET /bad-host HTTP/1.1\r\nHost: \xff\xfe\r\n",
    b"GET /no-host HTTP/1.0\r\n",
    b"FROBNICATE /x HTTP/1.1\r\nHost: example.com\r\n",
    b"get /x HTTP/1.1\r\nHost: example.com\r\n",
    # garbage validators: they match nothing, so the answer is the page (a valid one could get a 304)
    b"GET /cond HTTP/1.1\r\nHost: example.com\r\nIf-Modified-Since: \xff\r\nIf-None-Match: W/\"\xff\r\n",
    b"GET http://other.example/absolute?x HTTP/1.1\r\nHost: example.com\r\n",
    b"GET //double//slash/../x HTTP/1.1\r\nHost: example.com\r\n",
    b"GET /sp ace HTTP/1.1\r\nHost: example.com\r\n",
    b"GET /nul\x00 HTTP/1.1\r\nHost: example.com\r\n",
    b"GET /folded HTTP/1.1\r\nHost: example.com\r\nX-A: one\r\n  two\r\n",
    b"GET /range HTTP/1.1\r\nHost: example.com\r\nRange: bytes=5-1,x\r\n",
]


# the raw requests above that bypass the cache: escapes or a NUL left in the
# decoded path, two Host headers (joined into one that names no host), a
# Host that names no host, a cookie, an unknown method, a path with empty and
# dot segments
RAW_BYPASSED = {RAW_REQUESTS[i] for i in (0, 5, 6, 7, 9, 13, 15)}


def raw_exchange(port: int, head: bytes) -> Tuple[bytes, bytes, Optional[bytes]]:
    """Send one raw request (``Connection: close``); the status code, the body
    and the X-Cache header."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head + b"Connection: close\r\n\r\n")
        answer = b""
        while True:
            data = connection.recv(65536)
            if not data:
                break
            answer += data
    head_lines, _, body = answer.partition(b"\r\n\r\n")
    lines = head_lines.split(b"\r\n")
    labels = [line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"x-cache:")]
    return lines[0].split(b" ")[1], body, labels[0] if labels else None


def test_hostile_raw_http_requests_get_what_the_application_alone_gives(memcached):
    """Through a real waitress server: the same raw requests to the
    application alone and behind pagecache (each twice, so the second may be a
    hit) get the same status and body; whatever the server itself refuses, it
    refuses with or without the cache."""
    address = memcached.address
    alone = AppServer(lambda: echo_app, threads=4).start()
    cached = AppServer(lambda: PageCacheMiddleware(echo_app, "/ 30 120", memcached_servers=address,
                                                   key_prefix=f"h{next(_prefixes)}"), threads=4).start()
    try:
        for head in RAW_REQUESTS:
            expected = raw_exchange(alone.port, head)[:2]
            first, second = raw_exchange(cached.port, head), raw_exchange(cached.port, head)
            assert first[:2] == expected and second[:2] == expected, head[:80]
            if head in RAW_BYPASSED:
                assert (first[2], second[2]) == (b"BYPASS", b"BYPASS"), head[:80]
            elif head.startswith(b"GET ") and expected[0] == b"200":
                assert (first[2], second[2]) == (b"MISS", b"HIT"), head[:80]
    finally:
        alone.stop()
        cached.stop()


# -- hostile responses ------------------------------------------------------------------

class AppError(Exception):
    """Raised by the test applications below."""


class Closing:
    """An iterable over ``chunks`` that counts its close() calls; ``fail_at``
    makes iteration raise AppError at that index."""

    def __init__(self, chunks: Iterable[Any], fail_at: Optional[int] = None):
        self.chunks = list(chunks)
        self.fail_at = fail_at
        self.closed = 0

    def __iter__(self):
        for number, chunk in enumerate(self.chunks):
            if number == self.fail_at:
                raise AppError("failed midway")
            yield chunk

    def close(self) -> None:
        self.closed += 1


class Behaviour:
    """A WSGI application misbehaving one way; remembers the iterables it returned."""

    def __init__(self, name: str):
        self.name = name
        self.calls = 0
        self.returned: List[Closing] = []

    def __call__(self, environ: Dict, start_response: Callable) -> Any:
        self.calls += 1
        name = self.name
        headers = [("Content-Type", "text/plain")]
        if name == "raises before start_response":
            raise AppError("before")
        if name == "raises after start_response":
            start_response("200 OK", headers)
            raise AppError("after")
        if name == "start_response twice with exc_info":
            start_response("200 OK", headers)
            try:
                raise AppError("while rendering")
            except AppError:
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
            return self._closing([b"error page"])
        if name == "start_response twice without exc_info":
            start_response("200 OK", headers)
            start_response("200 OK", headers)  # a server raises here; so must the cache
            return self._closing([b"unreachable"])
        if name == "never calls start_response":
            return self._closing([b"no status"])
        if name == "returns str":
            start_response("200 OK", headers)
            return self._closing([b"bytes, then ", "text"])
        if name == "returns an int chunk":
            start_response("200 OK", headers)
            return self._closing([b"a", 42])
        if name == "generator raises midway":
            start_response("200 OK", headers)
            return self._closing([b"first ", b"second ", b"never"], fail_at=2)
        if name == "must be closed":
            start_response("200 OK", headers)
            return self._closing([b"closed ", b"exactly once"])
        if name == "never closes":
            start_response("200 OK", headers)
            return iter([b"no ", b"close method"])
        if name == "lazy start_response":
            def lazy():
                start_response("200 OK", headers)
                yield b"started late"
            return lazy()
        if name == "write() callable":
            write = start_response("200 OK", headers)
            write(b"written ")
            write(b"then ")
            return self._closing([b"returned"])
        if name == "write() of str":
            write = start_response("200 OK", headers)
            write("text")
            return self._closing([])
        if name == "write() past max_entry_size":
            write = start_response("200 OK", headers)
            for _ in range(8):
                write(b"w" * 1000)
            return self._closing([b"end"])
        if name == "streams past max_entry_size":
            start_response("200 OK", headers)
            return self._closing([b"s" * 1000] * 8)
        if name == "write() while iterating":
            write = start_response("200 OK", headers)

            def iterated():
                yield b"i" * 3000
                yield b"i" * 3000
                write(b" written in between ")
                yield b"last"
            return iterated()
        if name == "exc_info after streaming started":
            start_response("200 OK", headers)

            def body():
                yield b"s" * 3000
                yield b"s" * 3000
                try:
                    raise AppError("late")
                except AppError:
                    start_response("500 Internal Server Error", [], sys.exc_info())
                yield b"never"
            return body()
        raise AssertionError(name)

    def _closing(self, chunks: List[Any], fail_at: Optional[int] = None) -> Closing:
        self.returned.append(Closing(chunks, fail_at))
        return self.returned[-1]


BEHAVIOURS = [
    "raises before start_response", "raises after start_response", "start_response twice with exc_info",
    "start_response twice without exc_info", "never calls start_response", "returns str",
    "returns an int chunk", "generator raises midway", "must be closed", "never closes",
    "lazy start_response", "write() callable", "write() of str", "write() past max_entry_size",
    "streams past max_entry_size", "write() while iterating", "exc_info after streaming started",
]


def comparable(served: Served) -> Tuple:
    """What a client could tell of a response: status, headers (but those
    pagecache adds: X-Cache, Cache-Status, Age, a stored page's
    Content-Length and ETag, Accept-Encoding in its Vary), body and whether it ended in an exception (its type). When an
    exception came before any body, the server answers 500 of its own, so the
    status the application had set is not seen."""
    if served.error is not None and not served.chunks:
        return (None, [], b"", type(served.error))
    ours = {"x-cache", "cache-status", "content-length", "etag", "age"}
    headers = []
    for name, value in served.headers:
        if name.lower() == "vary":  # pagecache adds Accept-Encoding to a page it stored compressed
            value = ", ".join(v.strip() for v in value.split(",") if v.strip().lower() != "accept-encoding")
            if not value:
                continue
        if name.lower() not in ours:
            headers.append((name, value))
    return (served.status, headers, served.body, type(served.error))


# Applications that fail after some body, within max_entry_size: the cache
# holds the body until the response is complete, so the client gets the
# server's 500 rather than a truncated 200 (never worse than without it).
FAIL_BEFORE_SENDING = {"generator raises midway"}


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_a_misbehaving_application_is_seen_as_without_the_cache_and_nothing_partial_is_stored(
        make, behaviour):
    """The same application, called without pagecache and through it (twice):
    the server sees the same status, headers, body and exception; what is
    stored is either nothing (or a pass marker) or the whole page; every
    iterable the application returned is closed exactly once."""
    alone = Behaviour(behaviour)
    expected = comparable(serve(alone, environ_for("/misbehave")))
    app = Behaviour(behaviour)
    mw = make(app, "/ 30 120", max_entry_size=4096, compression="off")  # bodies as written, against the limit
    served = [serve(mw, environ_for("/misbehave")) for _ in range(2)]
    first = comparable(served[0])
    if behaviour in FAIL_BEFORE_SENDING:
        assert expected[2] and expected[3] is AppError
        assert first == (None, [], b"", AppError)
    else:
        assert first == expected
    entry = stored(mw, f"http://{HOST}/misbehave")
    if type(entry) is Page:
        assert expected[3] is type(None) and expected[0] == "200 OK"
        assert entry.body == expected[2]
        assert (served[1].label, served[1].body) == ("HIT", entry.body)
    else:
        assert entry is None or type(entry) is Pass
        assert comparable(served[1]) == first
    assert [iterable.closed for iterable in app.returned] == [1] * len(app.returned)
    assert [iterable.closed for iterable in alone.returned] == [1] * len(alone.returned)


def test_a_response_written_past_max_entry_size_is_labelled_miss(make):
    mw = make(Behaviour("write() past max_entry_size"), "/ 30 120", max_entry_size=4096, compression="off")
    served = [serve(mw, environ_for("/written")) for _ in range(2)]
    assert [(s.status, s.label) for s in served] == [("200 OK", "MISS")] * 2


def test_a_response_closed_early_by_the_server_closes_the_application_once(make):
    """A client that goes away mid-stream: the server stops iterating and closes."""
    app = Behaviour("streams past max_entry_size")
    mw = make(app, "/ 30 120", max_entry_size=4096, compression="off")
    seen: Dict = {}
    result = mw(environ_for("/gone"), lambda status, headers, exc_info=None: seen.setdefault("s", status))
    iterator = iter(result)
    next(iterator)
    result.close()
    assert app.returned[0].closed == 1
    assert stored(mw, f"http://{HOST}/gone") is None or type(stored(mw, f"http://{HOST}/gone")) is Pass


def test_head_and_bypassed_requests_close_the_application_once(make):
    app = Behaviour("must be closed")
    mw = make(app, "/ 30 120")
    for environ in (environ_for("/h", "HEAD"), environ_for("/h", "POST"),
                    environ_for("/h", HTTP_AUTHORIZATION="Basic x")):
        served = serve(mw, environ)
        assert served.error is None and served.status == "200 OK"
    assert [iterable.closed for iterable in app.returned] == [1, 1, 1]
