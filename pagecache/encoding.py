"""Content coding: which encoding each client gets, and the work of encoding.

pagecache compresses a compressible page once, when it stores it, and holds
its body gzip-compressed (and brotli-compressed too when the optional
``brotli`` package is installed). Each hit then sends the client the best
representation it accepts: the stored encoded bytes with ``Content-Encoding``
when its ``Accept-Encoding`` accepts that coding, the decompressed body
otherwise, as nginx's ``gunzip`` and Varnish's gzip support do. Everything
here is a pure function; what runs on every hit (:func:`accepted_memo`,
:func:`choose`) is a dict lookup and a few comparisons, and what depends only
on the stored page (:func:`representation_headers`) is meant to be memoised
per page and representation by the caller.

Decisions, and why:

* **No Accept-Encoding means identity.** RFC 9110 (12.5.3) lets a server send
  any coding to a request without the field, but it does not say the client
  can decode it, and servers and caches (Apache, nginx, Varnish) send identity
  then: ``curl`` without ``--compressed``, ``wget`` in some builds, monitoring
  probes and scripts send no field and would get binary bytes.
* **q-values decide acceptable or not, the server decides the order.** Among
  the codings a client accepts (q > 0), br is sent before gzip before
  identity, whatever their relative q-values, as nginx and Varnish do: br is
  smaller than gzip, both are better than identity, and reducing a header to
  what is acceptable is what lets :func:`normalised_accept_encoding` make one
  cache variant per encoding.
* **A refusal is never overridden.** A coding refused anywhere in the header
  (``gzip;q=0``, also as ``x-gzip;q=0``, or by ``*;q=0`` when it is not
  listed) is never sent. Classic VCL normalisation by substring (``~ "gzip"``)
  sends gzip to ``gzip;q=0``; this parser does not.
* **Malformed input is ignored, element by element.** An element whose coding
  is not a token, or whose ``q`` is not an RFC qvalue (``q=2``, ``q=x``,
  ``q=0.1234``), is dropped and the rest of the header still counts; nothing
  raises. Dropping is the conservative reading: at worst a client that wrote
  garbage gets identity.
* **Identity is what is sent when nothing acceptable can be.** A client that
  refuses identity and accepts nothing held (``identity;q=0`` alone) still
  gets identity, not a 406: RFC 9110 allows it and it is what servers do.
* **ETags of encoded representations get a suffix inside the quotes**
  (``"abc"`` -> ``"abc-gzip"``), keeping weakness; a malformed ETag is dropped
  from an encoded representation rather than invented around.
* **gzip output is deterministic** (mtime 0, no file name, OS byte 255,
  "unknown"), so one body and level give the same bytes on every host with the
  same zlib, whatever the Python version.
* **Decoding is bounded**: :func:`decompress` never holds much more than its
  ``limit`` and stops working once past it, so a stored zip bomb (or a
  corrupt value in a shared memcached) costs at most about ``limit``.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from .entry import Headers, header_value

try:  # optional: pip install 'pagecache[brotli]'
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None



def _bounded_brotli() -> bool:
    """Whether the installed brotli can decode with a bounded output buffer
    (``process(..., output_buffer_limit=)``, brotli 1.2 and later). An older
    one can't decode a stored value without risking a bomb, so it counts as
    absent."""
    if _brotli is None:
        return False
    try:
        _brotli.Decompressor().process(b"", output_buffer_limit=1)
    except Exception:  # TypeError for an older binding, AttributeError for another package
        return False
    return True


BROTLI: bool = _bounded_brotli()
"""Whether brotli can be used: the ``brotli`` package is importable and can
decode with a bounded output (brotli >= 1.2)."""


class CodingError(ValueError):
    """Raised for a coding pagecache can't apply, or bytes that are not
    exactly one valid stream of the coding within the size limit."""


class Codings(NamedTuple):
    """What a client accepts, reduced to what pagecache can serve."""

    gzip: bool
    br: bool
    identity: bool  # False only when the client said identity;q=0 (or *;q=0 without identity)


# The eight possible answers, made once: parsed headers share them.
_ALL_CODINGS = {(g, b, i): Codings(g, b, i) for g in (False, True) for b in (False, True)
                for i in (False, True)}
IDENTITY_ONLY = _ALL_CODINGS[False, False, True]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# RFC 9110 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")
_OWS = " \t"


def accepted(accept_encoding: Optional[str]) -> Codings:
    """What a client accepts, from its ``Accept-Encoding`` field value
    (RFC 9110, 12.5.3), reduced to gzip, br and identity.

    A coding is accepted when it is listed with a q-value above 0 (no q-value
    means 1), or not listed while ``*`` is, with a q-value above 0. ``x-gzip``
    is gzip. Identity is accepted unless it is listed with q=0, or ``*;q=0``
    is listed and identity is not. A coding listed more than once is refused
    if any listing refuses it. Codings and ``q`` are case-insensitive, spaces
    and tabs around elements, ``;`` and ``=`` are tolerated, parameters other
    than ``q`` are ignored, and a malformed element (a coding that is not a
    token, a ``q`` that is not a qvalue such as ``q=2``) is ignored: this
    never raises.

    An absent field (None) gives identity only: the RFC allows any coding
    then, but what such clients (curl without ``--compressed``, scripts,
    probes) can decode is identity, which is what servers send them. An empty
    field says the same explicitly."""
    if accept_encoding is None:
        return IDENTITY_ONLY
    listed: Dict[str, bool] = {}
    for element in accept_encoding.split(","):
        coding, _, params = element.partition(";")
        coding = coding.strip(_OWS).lower()
        if not coding or (coding != "*" and not _TOKEN.match(coding)):
            continue
        acceptable = True
        if params:
            malformed = False
            for param in params.split(";"):
                name, equals, value = param.partition("=")
                name = name.strip(_OWS).lower()
                if name != "q":
                    continue  # an empty parameter (gzip;) or another one: ignored
                value = value.strip(_OWS)
                if not equals or not _QVALUE.match(value):
                    malformed = True
                    break
                acceptable = acceptable and float(value) > 0
            if malformed:
                continue
        if coding == "x-gzip":
            coding = "gzip"
        listed[coding] = listed.get(coding, True) and acceptable
    star = listed.get("*")
    gzip = listed.get("gzip", star is True)
    br = listed.get("br", star is True)
    identity = listed.get("identity", star is not False)
    return _ALL_CODINGS[gzip, br, identity]


MEMO_SIZE = 512
"""How many distinct Accept-Encoding strings :func:`accepted_memo` keeps
(the memo is emptied when full). Real traffic has a few dozen."""
MEMO_KEY_LIMIT = 256
"""Longer strings are parsed every time and never kept, so that requests with
huge made-up headers can't make the memo hold megabytes."""
_memo: Dict[Optional[str], Codings] = {}


def accepted_memo(accept_encoding: Optional[str]) -> Codings:
    """:func:`accepted`, memoised: it runs on every cache hit, where only a
    dict lookup is affordable. At most :data:`MEMO_SIZE` strings of at most
    :data:`MEMO_KEY_LIMIT` characters are kept; the memo is emptied when full
    (a flood of distinct strings costs parsing, never memory). Safe across
    threads: a race at worst parses a string twice or empties the memo twice."""
    try:
        return _memo[accept_encoding]
    except KeyError:
        pass
    codings = accepted(accept_encoding)
    if accept_encoding is None or len(accept_encoding) <= MEMO_KEY_LIMIT:
        if len(_memo) >= MEMO_SIZE:
            _memo.clear()
        _memo[accept_encoding] = codings
    return codings


CODINGS = ("br", "gzip")
"""The content codings pagecache can store, in the order it prefers them."""


def choose(stored: str, codings: Codings, available: Tuple[str, ...]) -> str:
    """The coding to send (``"br"``, ``"gzip"``, or ``""`` for identity).

    ``stored`` is the coding of the page's stored body (``""``, ``"gzip"`` or
    ``"br"``) and ``available`` the codings the page is held in (e.g.
    ``("gzip",)`` or ``("br", "gzip")``; the stored coding counts as held
    either way). br is preferred, then gzip, then identity (decompressing),
    and a coding the client refused is never chosen. A client that accepts
    nothing held, not even identity (``identity;q=0`` alone), gets identity
    all the same (RFC 9110, 12.5.3, allows it; servers do it).

    Sending identity from a br-stored page needs brotli (:func:`decodable`):
    a host without it that reads such a page from a shared memcached should
    treat it as a miss for that client."""
    if codings.br and (stored == "br" or "br" in available):
        return "br"
    if codings.gzip and (stored == "gzip" or "gzip" in available):
        return "gzip"
    return ""


def decodable(coding: str) -> bool:
    """Whether :func:`decompress` can decode ``coding`` here (br needs :data:`BROTLI`)."""
    return coding in ("", "gzip") or (coding == "br" and BROTLI)


def normalised_accept_encoding(accept_encoding: Optional[str],
                               serve: Tuple[str, ...] = CODINGS) -> str:
    """The one token standing for a client's ``Accept-Encoding`` among the
    codings ``serve`` (in preference order): the first it accepts, else
    ``"identity"`` (also for a client refusing identity: it is what it gets).
    For variant keys of ``Vary: Accept-Encoding``: ten browsers' different
    strings make at most one variant per coding served, where Varnish's
    classic normalisation makes "gzip" or nothing."""
    codings = accepted_memo(accept_encoding)
    for coding in serve:
        if coding == "br":
            if codings.br:
                return "br"
        elif coding == "gzip":
            if codings.gzip:
                return "gzip"
        else:
            raise ValueError(f"pagecache can't serve the {coding!r} coding")
    return "identity"


DEFAULT_TYPES: Tuple[str, ...] = (
    "text/*",
    "application/javascript", "application/x-javascript", "application/ecmascript",
    "application/json", "application/*+json",
    "application/xml", "application/*+xml",
    "image/svg+xml",
)
"""The media types compressed by default: text (HTML, CSS, plain, CSV, XML,
JavaScript as text/javascript), JavaScript under its application/ names,
JSON and XML with their ``+json``/``+xml`` kinds (JSON-LD, problem+json,
manifests, Atom, RSS, XHTML) and SVG. These are what an application renders
and what shrinks by 60-90%. Deliberately not in the list: images, audio,
video, archives, PDF and woff/woff2 fonts (already compressed: gzip would
only cost CPU), and ``application/wasm``, ttf/otf fonts and icons, which do
compress but are static files, usually served precompressed by the static
file layer or a CDN rather than rendered by the application; add them to
the list to have pagecache compress them."""


def _media_type(content_type: Optional[str]) -> Optional[Tuple[str, str]]:
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip(_OWS).lower()
    kind, slash, subtype = media.partition("/")
    if not slash or not _TOKEN.match(kind) or not _TOKEN.match(subtype):
        return None
    return kind, subtype


def compressible(content_type: Optional[str], types: Sequence[str] = DEFAULT_TYPES) -> bool:
    """Whether a response of this ``Content-Type`` is worth compressing, by
    patterns such as those of :data:`DEFAULT_TYPES`: ``type/subtype`` exactly,
    ``type/*`` (any subtype), ``type/*+suffix`` (a structured-syntax suffix
    after a non-empty name) or ``*/*``. Parameters (``charset``) are ignored
    and matching is case-insensitive; a missing or malformed type is not
    compressible (it may be anything)."""
    media = _media_type(content_type)
    if media is None:
        return False
    kind, subtype = media
    for pattern in types:
        pattern_kind, _, pattern_subtype = pattern.strip(_OWS).lower().partition("/")
        if pattern_kind != "*" and pattern_kind != kind:
            continue
        if pattern_subtype == "*" or pattern_subtype == subtype:
            return True
        if pattern_subtype.startswith("*+"):
            suffix = pattern_subtype[1:]
            if len(subtype) > len(suffix) and subtype.endswith(suffix):
                return True
    return False


MIN_LENGTH = 256
"""Bodies shorter than this are not compressed: gzip's 18 bytes of framing
and the work of decoding outweigh what a tiny body could save."""


def worth_compressing(status: str, headers: Headers, length: int,
                      types: Sequence[str] = DEFAULT_TYPES, min_length: int = MIN_LENGTH) -> bool:
    """Whether pagecache should store a compressed copy of a response: a
    complete body (not 1xx, 204, 206 or 304, no ``Content-Range``) of at least
    ``min_length`` bytes, of a :func:`compressible` type, not already encoded
    by the application (``Content-Encoding`` absent or ``identity``), and not
    marked ``Cache-Control: no-transform`` (RFC 9110 7.7: an intermediary must
    not change the content of such a response; changing its coding is
    changing it)."""
    code = status[:3]
    if not code.isdigit() or code[0] == "1" or code in ("204", "206", "304"):
        return False
    if length < min_length:
        return False
    encoding = header_value(headers, "content-encoding")
    if encoding is not None and encoding.strip(_OWS).lower() not in ("", "identity"):
        return False
    if header_value(headers, "content-range") is not None:
        return False
    for key, value in headers:
        if key.lower() == "cache-control" and any(
                part.strip(_OWS).lower() == "no-transform" for part in value.split(",")):
            return False
    return compressible(header_value(headers, "content-type"), types)


def worth_keeping(identity_length: int, encoded_length: int) -> bool:
    """Whether an encoded copy saves enough to be stored and sent: at least
    5% of the body (below that the client's decoding work buys little)."""
    return encoded_length <= identity_length * 0.95


def _gzip(body: bytes, level: int) -> bytes:
    if not 0 <= level <= 9:
        raise CodingError(f"gzip level {level!r} is not 0 to 9")
    # RFC 1952 header: magic, deflate, no flags (no name, comment or extra),
    # mtime 0, XFL (2: slowest, 4: fastest), OS 255 (unknown).
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes((xfl, 255))
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(body) + compressor.flush()
    trailer = struct.pack("<II", zlib.crc32(body) & 0xFFFFFFFF, len(body) & 0xFFFFFFFF)
    return header + deflated + trailer


def compress(body: bytes, coding: str = "gzip", level: int = 6) -> bytes:
    """``body`` encoded with ``coding``, once, at store time.

    gzip (``level`` 0 to 9) is deterministic: no mtime, no file name, the OS
    byte "unknown", so a body always gives the same bytes with the same zlib.
    br (``level`` is brotli's quality, 0 to 11; 11 is very slow) needs
    :data:`BROTLI`. Raises :class:`CodingError` for another coding, a level
    out of range, or br without brotli."""
    if coding == "gzip":
        return _gzip(body, level)
    if coding == "br":
        if not BROTLI:
            raise CodingError("the br coding needs the brotli package, version 1.2 or later")
        if not 0 <= level <= 11:
            raise CodingError(f"brotli quality {level!r} is not 0 to 11")
        return _brotli.compress(bytes(body), quality=level)
    raise CodingError(f"pagecache can't encode {coding!r}")


_IN_CHUNK = 64 * 1024    # compressed bytes fed to the decoder at a time
_OUT_CHUNK = 256 * 1024  # decoded bytes asked of it at a time


def _gunzip(data: bytes, limit: int) -> bytes:
    """One or more gzip members, back to back and nothing else."""
    view = memoryview(data)
    size, position = len(view), 0
    pieces: List[bytes] = []
    total = 0
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing only, CRC and length checked
    try:
        while True:
            if decoder.eof:
                rest = decoder.unused_data
                if not rest and position >= size:
                    break
                decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next member
                if not rest:
                    rest = view[position:position + _IN_CHUNK]
                    position += len(rest)
                chunk = rest
            elif decoder.unconsumed_tail:
                chunk = decoder.unconsumed_tail
            elif position < size:
                chunk = view[position:position + _IN_CHUNK]
                position += len(chunk)
            else:
                # No input left and the member is not finished: its trailer (CRC, length),
                # which zlib reads only after giving all the output, is missing.
                raise CodingError("truncated gzip data" if size else "empty gzip data")
            want = min(_OUT_CHUNK, limit - total + 1)
            piece = decoder.decompress(chunk, want)
            if piece:
                total += len(piece)
                if total > limit:
                    raise CodingError(f"gzip data decodes to more than {limit} bytes")
                pieces.append(piece)
    except zlib.error as error:
        raise CodingError(f"invalid gzip data: {error}") from None
    return b"".join(pieces)  # one piece (most pages) is returned as it is, not copied


def _unbrotli(data: bytes, limit: int) -> bytes:
    """Exactly one brotli stream."""
    if not BROTLI:
        raise CodingError("the br coding needs the brotli package, version 1.2 or later")
    decoder = _brotli.Decompressor()
    pieces: List[bytes] = []
    total = 0
    try:
        # brotli's limit is where its buffer stops growing, not an exact size:
        # asking for small steps keeps what it holds near ``limit``.
        piece = decoder.process(bytes(data), output_buffer_limit=min(_OUT_CHUNK, limit + 1))
        while True:
            total += len(piece)
            if total > limit:
                raise CodingError(f"br data decodes to more than {limit} bytes")
            pieces.append(piece)
            if decoder.is_finished():
                break
            piece = decoder.process(b"", output_buffer_limit=min(_OUT_CHUNK, limit - total + 1))
            if not piece:
                raise CodingError("truncated br data" if data else "empty br data")
    except _brotli.error as error:
        raise CodingError(f"invalid br data: {error}") from None
    return b"".join(pieces)


def decompress(data: bytes, coding: str, limit: int) -> bytes:
    """``data`` decoded from ``coding``: gzip (one member or several
    concatenated, as RFC 1952 allows), br (needs :data:`BROTLI`), or ``""``
    (identity: ``data`` itself).

    Raises :class:`CodingError` unless ``data`` is exactly that: valid members
    or one valid stream, checksums included, nothing truncated, nothing after
    (trailing garbage, even zeros), and at most ``limit`` bytes once decoded.
    Decoding is incremental with bounded output per step, so a zip bomb costs
    about ``limit`` bytes of memory and the CPU of decoding ``limit`` bytes
    before it is refused."""
    if limit < 0:
        raise ValueError(f"limit {limit!r} is negative")
    if coding == "gzip":
        return _gunzip(data, limit)
    if coding == "br":
        return _unbrotli(data, limit)
    if coding == "":
        if len(data) > limit:
            raise CodingError(f"data is longer than {limit} bytes")
        return bytes(data)
    raise CodingError(f"pagecache can't decode {coding!r}")


# RFC 9110 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, etagc = %x21 / %x23-7E / obs-text
_ETAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\Z')


def _suffix(coding: str) -> str:
    if coding not in CODINGS:
        raise CodingError(f"pagecache has no {coding!r} representation")
    return "-" + coding


def representation_etag(etag: Optional[str], coding: str) -> Optional[str]:
    """The ETag of the ``coding`` representation of a resource whose identity
    representation has ``etag``.

    Two representations must never share a strong ETag (RFC 9110, 8.8.3), so
    the coding is added inside the quotes: ``"abc"`` -> ``"abc-gzip"``. A weak
    ETag stays weak and gets the suffix too (``W/"abc"`` -> ``W/"abc-gzip"``):
    weak tags may be shared, but distinct ones make a 304 answer for the
    representation the client actually holds. Identity (``""``) returns
    ``etag`` unchanged and None stays None. A malformed ETag (not a quoted
    string) gives None, to be dropped from the encoded representation: any
    made-up value would be a validator the application never issued, and
    without one conditional requests fall back to Last-Modified or a 200."""
    if etag is None or coding == "":
        return etag
    parts = _etag_parts(etag)
    return None if parts is None else f'{parts[0]}"{parts[1]}{_suffix(coding)}"'


def identity_etag(etag: Optional[str], coding: str) -> Optional[str]:
    """The inverse of :func:`representation_etag`: the identity ETag that the
    ``coding`` representation's ``etag`` was made from (weakness kept), or
    None when ``etag`` is not a well-formed ETag carrying that coding's suffix.
    For conditional requests passed on to the application, which knows only
    its own (identity) ETags. Identity (``""``) returns ``etag`` unchanged."""
    if etag is None or coding == "":
        return etag
    parts, suffix = _etag_parts(etag), _suffix(coding)
    if parts is None or not parts[1].endswith(suffix):
        return None
    return f'{parts[0]}"{parts[1][:-len(suffix)]}"'


def _etag_parts(etag: str) -> Optional[Tuple[str, str]]:
    """An ETag's weakness prefix (``W/`` or empty) and opaque tag, or None when malformed."""
    match = _ETAG.match(etag.strip(_OWS))
    return None if match is None else (match.group(1) or "", match.group(2))


def vary_with_accept_encoding(headers: Headers) -> Headers:
    """``headers`` with ``Accept-Encoding`` among the names of ``Vary``
    (added to the first ``Vary`` header, or as a new one), unless it is there
    already (any case, in any ``Vary`` header) or ``Vary`` is ``*``. Every
    representation of a page held encoded must say it, or a cache downstream
    would give one client's encoding to all. Returns a new list."""
    first = None
    for index, (name, value) in enumerate(headers):
        if name.lower() != "vary":
            continue
        names = [part.strip(_OWS).lower() for part in value.split(",")]
        if "*" in names or "accept-encoding" in names:
            return list(headers)
        if first is None:
            first = index
    result = list(headers)
    if first is None:
        result.append(("Vary", "Accept-Encoding"))
    else:
        name, value = result[first]
        value = value.strip(_OWS)
        result[first] = (name, f"{value}, Accept-Encoding" if value else "Accept-Encoding")
    return result


# Headers that describe the identity bytes only: not sent with an encoded
# representation (byte ranges and digests of the identity body would be wrong).
_IDENTITY_ONLY_HEADERS = frozenset({"accept-ranges", "content-md5", "digest", "repr-digest",
                                    "content-digest"})


def representation_headers(headers: Headers, coding: str, length: int) -> Headers:
    """The headers of a page's ``coding`` representation (``""`` for identity)
    of ``length`` bytes, from the headers of its identity representation (as
    the application sent them, as stored).

    ``Content-Encoding`` is set to ``coding`` (removed for identity),
    ``Content-Length`` is ``length``, ``Vary`` names ``Accept-Encoding``
    (:func:`vary_with_accept_encoding`), and the ETag is
    :func:`representation_etag` (removed when that is None). An encoded
    representation also loses the headers that describe identity bytes only:
    ``Accept-Ranges`` (ranges would be of the encoded bytes; nginx's gzip
    drops it too), ``Content-MD5``, ``Digest``, ``Repr-Digest`` and
    ``Content-Digest``. Other headers keep their order.

    It depends only on the stored page and the representation, never on the
    request: compute it once per page and coding and memoise it (it is pure,
    and returns a new list)."""
    if coding:
        _suffix(coding)
    dropped = {"content-encoding", "content-length"}
    if coding:
        dropped |= _IDENTITY_ONLY_HEADERS
    result: Headers = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in dropped:
            continue
        if lowered == "etag":
            value = representation_etag(value, coding)
            if value is None:
                continue
        result.append((name, value))
    if coding:
        result.append(("Content-Encoding", coding))
    result.append(("Content-Length", str(length)))
    return vary_with_accept_encoding(result)
