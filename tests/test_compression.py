"""Compressed storage through the INI filter: each client gets a correct body
for its Accept-Encoding, from one stored entry.

Every test loads an INI written in ``tmp_path`` (``use = egg:pagecache#main``,
the ``memcached`` fixture's server) with ``paste.deploy.loadapp``. The answers
are checked as bytes: on the wire through real waitress (raw sockets read to
the end, so ``Content-Length`` is compared with what was actually sent), or
in-process through ``wsgiref.validate`` (WebTest is not used here: it
decodes gzip bodies and rewrites ``Content-Encoding`` and ``Content-Length``
before a test can see them). What is stored is read back from memcached:
the page keys it holds, and the entry under the URL's key.
"""

from __future__ import annotations

import gzip
import io
import random
import socket
import sys
import textwrap
import zlib
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple
from wsgiref.validate import validator

import brotli
import pytest
from paste.deploy import loadapp

from pagecache import ConfigError, encoding, http
from pagecache.entry import Page, Pass, VaryMarker

from .content import html_page, json_document
from .servers import AppServer

URL = "http://example.com/page"
ABSENT = object()  # no Accept-Encoding header at all


# -- realistic content -------------------------------------------------------------------

def exactly(size: int, seed: int = 1) -> bytes:
    return html_page(size, seed)[:size]


PAGE = html_page(20 * 1024)
INCOMPRESSIBLE = random.Random(7).randbytes(2 << 20)


# -- the clients ---------------------------------------------------------------------------

class Client(NamedTuple):
    who: str
    accept_encoding: Optional[str]  # None: no header
    gzip: str  # the coding it gets from a page stored gzip ("" for identity)
    br: str    # ... and from one stored br


CLIENTS = [
    Client("Chrome, Edge, Firefox", "gzip, deflate, br, zstd", "gzip", "br"),
    Client("Safari, Googlebot", "gzip, deflate, br", "gzip", "br"),
    Client("curl --compressed", "deflate, gzip, br, zstd", "gzip", "br"),
    Client("curl (no --compressed)", None, "", ""),
    Client("python-requests", "gzip, deflate", "gzip", ""),
    Client("Go net/http", "gzip", "gzip", ""),
    Client("wget", "identity", "", ""),
    Client("anything", "*", "gzip", "br"),
    Client("refuses gzip", "gzip;q=0", "", ""),
    Client("refuses identity", "identity;q=0", "", ""),
]
assert len({client.accept_encoding for client in CLIENTS}) == 10  # ten distinct header values


def headers_for(client: Client, **more: str) -> Dict[str, str]:
    headers = {} if client.accept_encoding is None else {"Accept-Encoding": client.accept_encoding}
    headers.update({name.replace("_", "-"): value for name, value in more.items()})
    return headers


# -- the application and the filter --------------------------------------------------------

APPS: Dict[str, "App"] = {}


class App:
    """Answers ``status``, ``headers`` and ``body`` (or what ``respond(environ)``
    returns), counting its calls in shared memory (it may run in a waitress child)."""

    def __init__(self, body: bytes = PAGE, headers: Optional[List[Tuple[str, str]]] = None,
                 status: str = "200 OK",
                 respond: Optional[Callable[[Dict], Tuple[List[Tuple[str, str]], bytes]]] = None,
                 chunk: int = 0):
        self.body, self.status, self.respond, self.chunk = body, status, respond, chunk
        self.produced = 0  # bytes of body handed out so far (chunked output, in-process)
        self.headers = headers if headers is not None else [("Content-Type", "text/html; charset=utf-8")]
        self._calls = AppServer.context.Value("i", 0)
        self.environs: List[Dict] = []  # what the application was asked (seen in-process only)

    @property
    def calls(self) -> int:
        return self._calls.value

    @property
    def accept_encodings(self) -> List[Optional[str]]:
        """The Accept-Encoding of each call (a fill's: what pagecache asked for)."""
        return [environ.get("HTTP_ACCEPT_ENCODING") for environ in self.environs]

    def __call__(self, environ: Dict, start_response: Callable) -> List[bytes]:
        with self._calls.get_lock():
            self._calls.value += 1
        self.environs.append(dict(environ))
        headers, body = self.respond(environ) if self.respond else (self.headers, self.body)
        start_response(self.status, list(headers))
        if self.chunk:
            return self._chunks(body)
        return [body]

    def _chunks(self, body: bytes):
        for start in range(0, len(body), self.chunk):
            self.produced += len(body[start:start + self.chunk])
            yield body[start:start + self.chunk]


def app_factory(global_conf: Dict, name: str) -> App:
    return APPS[name]


class Filter(NamedTuple):
    middleware: object
    app: App
    ini: str
    prefix: str


@pytest.fixture
def load(tmp_path, memcached):
    """load(app, options) -> Filter: the INI-configured filter in front of ``app``."""
    def load_filter(app: App, options: str = "") -> Filter:
        name = f"compression{len(APPS)}"
        APPS[name] = app
        path = tmp_path / f"{name}.ini"
        path.write_text(textwrap.dedent(f"""\
            [app:page]
            use = call:tests.test_compression:app_factory
            name = {name}

            [filter:pagecache]
            use = egg:pagecache#main
            memcached_servers = {memcached.address}
            key_prefix = {name}
            cached_urls = / 1h 1h
            """) + textwrap.dedent(options) + textwrap.dedent("""
            [pipeline:main]
            pipeline = pagecache page
            """))
        return Filter(loadapp(f"config:{path}"), app, str(path), name)
    return load_filter


def page_keys(memcached, filter_: "Filter", url: str = URL) -> List[str]:
    """The page keys (pages, vary markers, variants) memcached holds under the
    filter's prefix: those ``lru_crawler metadump`` lists, and those of ``url``
    that a ``get`` finds (the URL's key and, under a vary marker, each client's
    variant). Both, because metadump misses an item while memcached's LRU
    maintainer relinks it after it was read a few times (memcached 1.6's
    asynchronous bumps): a page just served as hits can be missing from it."""
    middleware = filter_.middleware
    found = {key for key in memcached.keys() if key.startswith(filter_.prefix + ":p:")}
    digest = middleware.keys.digest_of_url(url)
    entry = middleware.store.load(middleware.keys.page(digest))
    if entry is not None:
        found.add(middleware.keys.page(digest))
    if type(entry) is VaryMarker:
        for client in CLIENTS:
            environ = {} if client.accept_encoding is None else {"HTTP_ACCEPT_ENCODING": client.accept_encoding}
            key = middleware.keys.page(middleware.keys.variant(digest, entry.generation,
                                                               http.variant_of(environ, entry.names)))
            if middleware.store.load(key) is not None:
                found.add(key)
    return sorted(found)


def stored(filter_: Filter, url: str = URL):
    middleware = filter_.middleware
    return middleware.store.load(middleware.keys.page(middleware.keys.digest_of_url(url)))


# -- answers, as bytes ---------------------------------------------------------------------

class Answer(NamedTuple):
    status: int
    headers: List[Tuple[str, str]]
    body: bytes

    def all(self, name: str) -> List[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def get(self, name: str) -> Optional[str]:
        values = self.all(name)
        assert len(values) <= 1, (name, values)
        return values[0] if values else None

    def vary(self) -> set:
        return {part.strip().lower() for value in self.all("Vary") for part in value.split(",")}


def call(middleware, method: str = "GET", path: str = "/page", headers: Optional[Dict[str, str]] = None) -> Answer:
    """One request straight into the WSGI callable, checked by wsgiref.validate; the body as sent."""
    environ = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "example.com", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "example.com", "REMOTE_ADDR": "127.0.0.1", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    got: Dict[str, object] = {}

    def start_response(status, response_headers, exc_info=None):
        got["status"], got["headers"] = status, list(response_headers)
        return lambda data: pytest.fail("write() used")

    iterable = validator(middleware)(environ, start_response)
    try:
        body = b"".join(iterable)
    finally:
        iterable.close()
    return Answer(int(got["status"][:3]), got["headers"], body)


def wire(port: int, method: str = "GET", path: str = "/page", headers: Optional[Dict[str, str]] = None) -> Answer:
    """One HTTP/1.1 request on a fresh connection (``Connection: close``); the
    answer read to the end of the connection: every byte the server sent."""
    lines = [f"{method} {path} HTTP/1.1", "Host: example.com", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    head, separator, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert separator, head[:200]
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines]
    assert not any(name.lower() == "transfer-encoding" for name, _ in pairs), pairs  # Content-Length framing only
    return Answer(int(status_line.split()[1]), pairs, body)


def decoded(answer: Answer) -> bytes:
    coding = answer.get("Content-Encoding")
    if coding is None:
        return answer.body
    if coding == "gzip":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)  # exactly one gzip member, nothing after it
        body = decoder.decompress(answer.body) + decoder.flush()
        assert decoder.eof and not decoder.unused_data
        return body
    if coding == "br":
        return brotli.decompress(answer.body)
    raise AssertionError(f"unexpected Content-Encoding {coding!r}")


def check_representation(answer: Answer, coding: str, body: bytes, vary: bool = True) -> None:
    """A full answer: ``body`` in ``coding`` ("" for identity), exactly framed."""
    assert answer.status == 200, answer
    assert answer.get("Content-Encoding") == (coding or None), answer.headers
    assert answer.get("Content-Length") == str(len(answer.body)), answer.headers
    assert decoded(answer) == body
    if coding:
        assert answer.body != body
    if vary:
        assert "accept-encoding" in answer.vary(), answer.headers


def check_no_body(answer: Answer, status: int) -> None:
    assert answer.status == status, answer
    assert answer.body == b""


NOT_REPRESENTATION = {"age", "cache-status", "x-cache", "date", "server"}  # said per response


def representation_headers(answer: Answer) -> List[Tuple[str, str]]:
    return sorted((name.lower(), value) for name, value in answer.headers if name.lower() not in NOT_REPRESENTATION)


# -- each client, its representation, one stored entry -------------------------------------

@pytest.mark.parametrize("app_vary", [False, True], ids=["app-sends-no-vary", "app-sends-vary-accept-encoding"])
@pytest.mark.parametrize("app_etag", [None, '"v1"', 'W/"v1"'], ids=["no-etag", "strong-etag", "weak-etag"])
def test_every_client_gets_its_encoding_on_the_wire_from_one_entry(load, memcached, app_vary, app_etag):
    headers = [("Content-Type", "text/html; charset=utf-8")]
    headers += [("Vary", "Accept-Encoding")] if app_vary else []
    headers += [("ETag", app_etag)] if app_etag else []
    app = App(PAGE, headers)
    filter_ = load(app)
    server = AppServer(lambda: loadapp(f"config:{filter_.ini}"), threads=4).start()
    try:
        port = server.port
        etags: Dict[str, str] = {}
        full: Dict[str, Answer] = {}
        for number, client in enumerate(CLIENTS):
            answer = wire(port, headers=headers_for(client))
            check_representation(answer, client.gzip, PAGE)
            assert answer.get("X-Cache") == ("MISS" if number == 0 else "HIT"), client
            etag = answer.get("ETag")
            assert etag is not None, client
            assert etags.setdefault(client.gzip, etag) == etag, client  # one ETag per representation
            full[client.gzip] = answer
        assert set(etags) == {"gzip", ""}
        assert etags["gzip"] != etags[""]  # the gzip bytes never share the identity ETag
        if app_etag:
            assert etags[""] == app_etag  # the application's validator describes its identity body
            assert etags["gzip"].startswith("W/") == app_etag.startswith("W/")

        for client in CLIENTS:
            mine, other = client.gzip, ("" if client.gzip else "gzip")
            revalidated = wire(port, headers=headers_for(client, If_None_Match=etags[mine]))
            check_no_body(revalidated, 304)
            assert revalidated.get("ETag") == etags[mine], client
            assert "accept-encoding" in revalidated.vary(), client  # as the 200 would say (RFC 9110 15.4.5)
            changed = wire(port, headers=headers_for(client, If_None_Match=etags[other]))
            check_representation(changed, mine, PAGE)
            head = wire(port, "HEAD", headers=headers_for(client))
            check_no_body(head, 200)
            assert representation_headers(head) == representation_headers(full[mine]), client
    finally:
        server.stop()
    assert app.calls == 1
    assert len(page_keys(memcached, filter_)) == 1
    page = stored(filter_)
    assert type(page) is Page and page.encoding == "gzip"
    assert gzip.decompress(page.body) == PAGE and page.identity_length == len(PAGE)


def test_in_process_answers_and_what_the_fill_asks_for(load, memcached):
    app = App(PAGE, [("Content-Type", "text/html"), ("Content-Length", str(len(PAGE))),
                     ("Vary", "Accept-Encoding"), ("Accept-Ranges", "bytes")])
    filter_ = load(app)
    first = call(filter_.middleware)  # curl without --compressed: the first request, a MISS
    check_representation(first, "", PAGE)
    assert first.get("X-Cache") == "MISS"
    assert app.accept_encodings == ["gzip"]  # the fill asks for the stored encoding, whoever asked
    for client in CLIENTS:
        answer = call(filter_.middleware, headers=headers_for(client))
        check_representation(answer, client.gzip, PAGE)
        assert answer.get("X-Cache") == "HIT"
        # byte ranges would be of the gzip bytes: an encoded representation doesn't offer them
        assert answer.get("Accept-Ranges") == (None if client.gzip else "bytes")
        head = call(filter_.middleware, "HEAD", headers=headers_for(client))
        check_no_body(head, 200)
        assert representation_headers(head) == representation_headers(answer)
    assert app.calls == 1
    assert len(page_keys(memcached, filter_)) == 1


def test_identity_clients_get_a_body_decoded_once_per_page(load, monkeypatch):
    filter_ = load(App(PAGE))
    check_representation(call(filter_.middleware, headers={"Accept-Encoding": "gzip"}), "gzip", PAGE)
    check_representation(call(filter_.middleware), "", PAGE)  # the first hit of the page read back decodes it
    decoded_sizes: List[int] = []
    real = encoding.decompress
    monkeypatch.setattr(encoding, "decompress", lambda data, *args: decoded_sizes.append(len(data)) or real(data, *args))
    for _ in range(10):
        for client in CLIENTS:
            check_representation(call(filter_.middleware, headers=headers_for(client)), client.gzip, PAGE)
            check_no_body(call(filter_.middleware, "HEAD", headers=headers_for(client)), 200)
    assert decoded_sizes == []
    assert filter_.app.calls == 1


def test_the_first_request_conditional_on_either_representation(load):
    """A miss fills the cache with an unconditional request and answers the
    client's condition against the representation it asked for."""
    app = App(PAGE, [("Content-Type", "text/html"), ("ETag", '"v9"')])
    filter_ = load(app)
    answer = call(filter_.middleware, headers={"Accept-Encoding": "gzip", "If-None-Match": '"v9"'})
    check_representation(answer, "gzip", PAGE)  # "v9" is the identity body's tag, not the gzip bytes'
    answer = call(filter_.middleware, headers={"Accept-Encoding": "gzip", "If-None-Match": '"v9-gzip"'})
    check_no_body(answer, 304)
    answer = call(filter_.middleware, headers={"If-None-Match": '"v9"'})
    check_no_body(answer, 304)
    assert app.calls == 1 and "HTTP_IF_NONE_MATCH" not in app.environs[0]


# -- what the application encoded itself ----------------------------------------------------

def test_a_response_the_application_gzipped_is_stored_as_is(load, memcached):
    packed = gzip.compress(PAGE, compresslevel=9, mtime=1_700_000_000)
    app = App(packed, [("Content-Type", "text/html"), ("Content-Encoding", "gzip"),
                       ("Content-Length", str(len(packed))), ("Vary", "Accept-Encoding")])
    filter_ = load(app)
    saved_before = filter_.middleware.stats["compressed_bytes_saved"]
    answer = call(filter_.middleware, headers={"Accept-Encoding": "gzip, deflate, br"})
    check_representation(answer, "gzip", PAGE)
    assert answer.body == packed
    page = stored(filter_)
    assert type(page) is Page and page.encoding == "gzip" and page.body == packed
    assert page.identity_length == len(PAGE)
    for client in CLIENTS:
        answer = call(filter_.middleware, headers=headers_for(client))
        check_representation(answer, client.gzip, PAGE)
        if client.gzip:
            assert answer.body == packed  # the application's own bytes
    etags = {coding: call(filter_.middleware, headers={"Accept-Encoding": coding or "identity"}).get("ETag")
             for coding in ("gzip", "")}
    assert None not in etags.values() and etags["gzip"] != etags[""]
    check_no_body(call(filter_.middleware, headers={"If-None-Match": etags[""]}), 304)
    check_representation(call(filter_.middleware, headers={"If-None-Match": etags["gzip"]}), "", PAGE)
    check_no_body(call(filter_.middleware, headers={"Accept-Encoding": "gzip", "If-None-Match": etags["gzip"]}), 304)
    assert app.calls == 1 and len(page_keys(memcached, filter_)) == 1
    assert filter_.middleware.stats["compressed_bytes_saved"] - saved_before == len(PAGE) - len(packed)


def test_a_response_the_application_brotli_encoded_is_stored_as_is(load):
    assert encoding.BROTLI  # the test extra installs brotli
    packed = brotli.compress(PAGE)
    app = App(packed, [("Content-Type", "text/html"), ("Content-Encoding", "br")])
    filter_ = load(app)
    check_representation(call(filter_.middleware, headers={"Accept-Encoding": "br"}), "br", PAGE)
    page = stored(filter_)
    assert type(page) is Page and page.encoding == "br" and page.body == packed
    for client in CLIENTS:
        check_representation(call(filter_.middleware, headers=headers_for(client)), client.br, PAGE)
    assert app.calls == 1


_GOOD_GZIP = gzip.compress(PAGE, mtime=0)
GARBAGE = {
    "not gzip at all": PAGE,
    "truncated": _GOOD_GZIP[:-100],
    "no trailer": _GOOD_GZIP[:-8],
    "wrong CRC": _GOOD_GZIP[:-8] + bytes(4) + _GOOD_GZIP[-4:],
    "trailing bytes": _GOOD_GZIP + b"<html>",
    "empty": b"",
}


@pytest.mark.parametrize("body", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_claiming_gzip_is_not_stored(load, body):
    app = App(body, [("Content-Type", "text/html"), ("Content-Encoding", "gzip")])
    filter_ = load(app)
    for client in (CLIENTS[0], CLIENTS[3]):  # a gzip client and an identity one
        answer = call(filter_.middleware, headers=headers_for(client))
        assert answer.status == 200 and answer.get("X-Cache") == "MISS"
        assert answer.get("Content-Encoding") == "gzip" and answer.body == body  # the application's response
    assert type(stored(filter_)) is Pass
    assert app.calls == 2


@pytest.mark.parametrize("coding", ["compress", "deflate", "zstd", "gzip, gzip", "x-custom"])
def test_an_encoding_pagecache_cannot_decode_is_stored_as_it_is_when_it_does_not_vary(load, coding):
    """Without Vary: Accept-Encoding, the application says every client may
    have these bytes (it sends them whatever a client accepts): they are
    stored and served as they are, as any HTTP cache does."""
    body = zlib.compress(PAGE)
    app = App(body, [("Content-Type", "text/html"), ("Content-Encoding", coding)])
    filter_ = load(app)
    labels = []
    for client in (CLIENTS[0], CLIENTS[3], CLIENTS[0]):
        answer = call(filter_.middleware, headers=headers_for(client))
        assert answer.status == 200 and answer.get("Content-Encoding") == coding and answer.body == body
        labels.append(answer.get("X-Cache"))
    assert labels == ["MISS", "HIT", "HIT"]
    page = stored(filter_)
    assert type(page) is Page and page.encoding == "" and page.body == body
    assert app.calls == 1


@pytest.mark.parametrize("coding", ["compress", "deflate", "zstd", "gzip, gzip", "x-custom"])
def test_an_encoding_pagecache_cannot_decode_is_not_stored_when_it_varies(load, coding):
    body = zlib.compress(PAGE)  # whatever it is, pagecache can't turn it back into identity
    app = App(body, [("Content-Type", "text/html"), ("Content-Encoding", coding), ("Vary", "Accept-Encoding")])
    filter_ = load(app)
    for client in (CLIENTS[0], CLIENTS[3]):
        answer = call(filter_.middleware, headers=headers_for(client))
        assert answer.status == 200 and answer.get("X-Cache") == "MISS"
        assert answer.get("Content-Encoding") == coding and answer.body == body
    assert type(stored(filter_)) is Pass
    assert app.calls == 2


# -- what is compressed ---------------------------------------------------------------------------

COMPRESSED_TYPES = ["text/html; charset=utf-8", "application/json", "application/javascript",
                    "text/javascript", "image/svg+xml", "text/css", "application/ld+json"]
STORED_AS_IS = ["image/png", "application/octet-stream", "font/woff2"]


@pytest.mark.parametrize("content_type", COMPRESSED_TYPES + STORED_AS_IS)
def test_compressible_types(load, content_type):
    compressed = content_type in COMPRESSED_TYPES
    app = App(PAGE, [("Content-Type", content_type), ("Vary", "Accept-Encoding")])
    filter_ = load(app)
    for client in CLIENTS:
        answer = call(filter_.middleware, headers=headers_for(client))
        check_representation(answer, client.gzip if compressed else "", PAGE, vary=compressed)
    page = stored(filter_)
    assert type(page) is Page
    if compressed:
        assert page.encoding == "gzip" and gzip.decompress(page.body) == PAGE
    else:
        assert page.encoding == "" and page.body == PAGE
    assert app.calls == 1


def test_a_body_below_compress_min_size_is_stored_as_is(load):
    small, enough = exactly(1023), exactly(1024)  # compress_min_size is 1KB
    filter_ = load(App(respond=lambda environ: ([("Content-Type", "text/html")],
                                                 small if environ["PATH_INFO"] == "/small" else enough)))
    check_representation(call(filter_.middleware, path="/small", headers={"Accept-Encoding": "gzip"}),
                         "", small, vary=False)
    check_representation(call(filter_.middleware, path="/enough", headers={"Accept-Encoding": "gzip"}),
                         "gzip", enough)
    assert stored(filter_, "http://example.com/small").encoding == ""
    assert stored(filter_, "http://example.com/enough").encoding == "gzip"


def test_compress_min_size_is_an_option(load):
    filter_ = load(App(exactly(3000)), "compress_min_size = 4KB\n")
    check_representation(call(filter_.middleware, headers={"Accept-Encoding": "gzip"}), "", exactly(3000), vary=False)
    assert stored(filter_).encoding == ""


def test_no_transform_is_stored_as_is(load):
    filter_ = load(App(PAGE, [("Content-Type", "text/html"), ("Cache-Control", "public, no-transform")]))
    for client in CLIENTS:
        check_representation(call(filter_.middleware, headers=headers_for(client)), "", PAGE, vary=False)
    page = stored(filter_)
    assert page.encoding == "" and page.body == PAGE


def test_compress_types_is_an_option(load):
    filter_ = load(App(PAGE, [("Content-Type", "application/wasm")]), "compress_types = application/wasm\n")
    check_representation(call(filter_.middleware, headers={"Accept-Encoding": "gzip"}), "gzip", PAGE)
    filter_ = load(App(PAGE, [("Content-Type", "text/html")]), "compress_types = application/wasm\n")
    check_representation(call(filter_.middleware, headers={"Accept-Encoding": "gzip"}), "", PAGE, vary=False)


def test_compression_off_stores_what_the_application_wrote(load, memcached):
    filter_ = load(App(PAGE, [("Content-Type", "text/html")]), "compression = off\n")
    for client in CLIENTS:
        check_representation(call(filter_.middleware, headers=headers_for(client)), "", PAGE, vary=False)
    page = stored(filter_)
    assert type(page) is Page and page.encoding == "" and page.body == PAGE
    assert filter_.app.calls == 1 and len(page_keys(memcached, filter_)) == 1


def encoding_app(environ: Dict) -> Tuple[List[Tuple[str, str]], bytes]:
    """An application that encodes as the request asks (br first, as browsers get it)."""
    wanted = environ.get("HTTP_ACCEPT_ENCODING") or ""
    headers = [("Content-Type", "text/html"), ("Vary", "Accept-Encoding")]
    if "br" in wanted:
        return headers + [("Content-Encoding", "br")], brotli.compress(PAGE)
    if "gzip" in wanted:
        return headers + [("Content-Encoding", "gzip")], gzip.compress(PAGE, mtime=0)
    return headers, PAGE


def test_compression_off_keeps_one_variant_per_encoding_not_per_header(load, memcached):
    app = App(respond=encoding_app)
    filter_ = load(app, "compression = off\n")
    for client in CLIENTS:  # the best coding it accepts among those the application knows
        check_representation(call(filter_.middleware, headers=headers_for(client)), client.br or client.gzip, PAGE)
    for client in CLIENTS:  # and now all from the cache
        answer = call(filter_.middleware, headers=headers_for(client))
        check_representation(answer, client.br or client.gzip, PAGE)
        assert answer.get("X-Cache") == "HIT"
    assert type(stored(filter_)) is VaryMarker
    assert sorted(app.accept_encodings) == ["br", "gzip", "identity"]  # the fills ask for the encoding alone
    assert app.calls == 3
    assert len(page_keys(memcached, filter_)) == 1 + 3  # the vary marker and three variants


# -- sizes ----------------------------------------------------------------------------------------

def test_a_2mb_html_page_is_stored_compressed_under_max_entry_size(load, memcached):
    big = html_page(2 << 20)
    app = App(big, [("Content-Type", "text/html; charset=utf-8")])
    filter_ = load(app)
    check_representation(call(filter_.middleware, headers={"Accept-Encoding": "gzip"}), "gzip", big)
    page = stored(filter_)
    assert type(page) is Page and page.encoding == "gzip"
    assert len(page.body) <= 1000 * 1024 < len(big)
    for client in CLIENTS:
        answer = call(filter_.middleware, headers=headers_for(client))
        check_representation(answer, client.gzip, big)
        assert answer.get("X-Cache") == "HIT"
    assert app.calls == 1 and len(page_keys(memcached, filter_)) == 1


@pytest.mark.parametrize("body, content_type, options", [
    (INCOMPRESSIBLE, "text/html", ""),                        # incompressible, 2 MB
    (INCOMPRESSIBLE, "application/octet-stream", ""),
    (html_page(2 << 20), "text/html", "compress_max_size = 1MB\n"),  # over compress_max_size
], ids=["incompressible-html", "incompressible-binary", "over-compress_max_size"])
def test_a_2mb_body_that_does_not_fit_is_not_stored(load, body, content_type, options):
    app = App(body, [("Content-Type", content_type)])
    filter_ = load(app, options)
    for client in (CLIENTS[0], CLIENTS[3]):
        answer = call(filter_.middleware, headers=headers_for(client))
        assert answer.status == 200 and answer.get("X-Cache") == "MISS"
        assert answer.get("Content-Encoding") is None and answer.body == body
    assert type(stored(filter_)) is Pass
    assert app.calls == 2


def test_a_body_that_is_not_compressed_is_streamed_past_max_entry_size(load):
    """Past max_entry_size, a body that won't be compressed goes to the client
    as the application writes it: when the client gets its iterable, the
    application has not written everything."""
    app = App(INCOMPRESSIBLE, [("Content-Type", "application/octet-stream")], chunk=64 * 1024)
    filter_ = load(app)
    received: List[Tuple[int, int]] = []  # (bytes the app had written, bytes received) at each chunk

    def start_response(status, headers, exc_info=None):
        return None

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/page", "QUERY_STRING": "", "HTTP_HOST": "example.com",
               "SERVER_NAME": "example.com", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr}
    iterable = filter_.middleware(environ, start_response)
    written_when_returned = app.produced
    total = 0
    for chunk in iterable:
        total += len(chunk)
        received.append((app.produced, total))
    iterable.close()
    assert total == len(INCOMPRESSIBLE)
    assert 1000 * 1024 <= written_when_returned < len(INCOMPRESSIBLE)
    assert type(stored(filter_)) is Pass


def test_a_body_too_big_even_compressed_is_not_compressed_again_on_every_request(load, monkeypatch):
    """The first response shows that the URL's page doesn't fit max_entry_size
    even compressed; the requests that follow while the URL is remembered as
    uncacheable (uncacheable_ttl) should not buffer and gzip 2 MB again, only
    to throw it away (about 80 ms of CPU each here, and nothing sent meanwhile)."""
    sizes: List[int] = []
    real = encoding.compress
    monkeypatch.setattr(encoding, "compress", lambda body, *args: sizes.append(len(body)) or real(body, *args))
    app = App(INCOMPRESSIBLE, [("Content-Type", "text/html")])
    filter_ = load(app)
    for _ in range(3):
        answer = call(filter_.middleware, headers={"Accept-Encoding": "gzip"})
        assert answer.body == INCOMPRESSIBLE and answer.get("X-Cache") == "MISS"
    assert type(stored(filter_)) is Pass and app.calls == 3
    assert len(sizes) <= 1, f"compressed {len(sizes)} times: {sizes}"


def test_a_big_page_on_the_wire(load):
    """The 2 MB page through waitress: both representations exactly framed."""
    big = html_page(2 << 20)
    filter_ = load(App(big, [("Content-Type", "text/html")]))
    server = AppServer(lambda: loadapp(f"config:{filter_.ini}"), threads=2).start()
    try:
        for number, client in enumerate(CLIENTS[:4]):
            answer = wire(server.port, headers=headers_for(client))
            check_representation(answer, client.gzip, big)
            assert answer.get("X-Cache") == ("MISS" if number == 0 else "HIT")
    finally:
        server.stop()
    assert filter_.app.calls == 1


# -- the counter --------------------------------------------------------------------------------

def test_compressed_bytes_saved_grows_by_identity_minus_stored(load):
    pages = {"/a": html_page(30 * 1024, seed=3), "/b": json_document(50 * 1024),
             "/png": PAGE, "/small": exactly(500)}
    types = {"/png": "image/png", "/b": "application/json"}
    filter_ = load(App(respond=lambda environ: ([("Content-Type", types.get(environ["PATH_INFO"], "text/html"))],
                                                pages[environ["PATH_INFO"]])))
    stats = filter_.middleware.stats
    before = stats["compressed_bytes_saved"]
    expected = 0
    for path, body in pages.items():
        call(filter_.middleware, path=path)
        page = stored(filter_, "http://example.com" + path)
        assert type(page) is Page and page.identity_length == len(body)
        if path in ("/a", "/b"):
            assert page.encoding == "gzip" and len(page.body) < len(body)
        else:
            assert page.encoding == "" and page.body == body
        expected += page.identity_length - len(page.body)
        assert stats["compressed_bytes_saved"] - before == expected, path
    for path in pages:  # hits don't add to it: what is saved is counted once, when stored
        call(filter_.middleware, path=path, headers={"Accept-Encoding": "gzip"})
    assert stats["compressed_bytes_saved"] - before == expected > 0


# -- brotli ----------------------------------------------------------------------------------------

def test_compression_br(load, memcached):
    assert encoding.BROTLI, "the test extra installs brotli (>= 1.2)"
    app = App(PAGE, [("Content-Type", "text/html"), ("Vary", "Accept-Encoding"), ("ETag", '"b1"')])
    filter_ = load(app, "compression = br\n")
    etags: Dict[str, str] = {}
    for client in CLIENTS:
        answer = call(filter_.middleware, headers=headers_for(client))
        check_representation(answer, client.br, PAGE)
        assert etags.setdefault(client.br, answer.get("ETag")) == answer.get("ETag")
        check_no_body(call(filter_.middleware, "HEAD", headers=headers_for(client)), 200)
    assert etags == {"br": '"b1-br"', "": '"b1"'}
    for client in CLIENTS:
        mine, other = client.br, "" if client.br else "br"
        check_no_body(call(filter_.middleware, headers=headers_for(client, If_None_Match=etags[mine])), 304)
        check_representation(call(filter_.middleware, headers=headers_for(client, If_None_Match=etags[other])),
                             mine, PAGE)
    assert app.accept_encodings == ["br"]
    page = stored(filter_)
    assert type(page) is Page and page.encoding == "br" and brotli.decompress(page.body) == PAGE
    assert app.calls == 1 and len(page_keys(memcached, filter_)) == 1


def test_compression_br_without_brotli_refuses_to_load(load, monkeypatch):
    monkeypatch.setattr(encoding, "BROTLI", False)
    with pytest.raises(ConfigError) as raised:
        load(App(), "compression = br\n")
    assert raised.value.option == "compression"
    assert "compression" in str(raised.value) and "brotli" in str(raised.value)
