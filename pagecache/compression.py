"""Compressed storage, and each client served the encoding it accepts.

At store time, once: a response that is not encoded, whose type is
compressible (``compress_types``) and whose body is at least
``compress_min_size``, is stored gzip-compressed (or brotli, with
``compression = br`` and the ``brotli`` package); a response the application
encoded itself (gzip, or br with brotli) is stored as it is, its bytes checked
to decode; one in a coding pagecache can't decode is stored only when it does
not vary on ``Accept-Encoding`` (the same bytes for everybody, as the
application says), and served as it is. ``max_entry_size`` applies to what
is stored: a page several times that size fits once compressed (up to
``compress_max_size`` is buffered to try).

At delivery: a client that accepts the stored encoding gets the stored bytes
with ``Content-Encoding``; any other client gets the decoded body, decoded
once per page and process and remembered with the parsed entry. Each
representation has its own headers (``Content-Length``, ``Vary:
Accept-Encoding``, and an ``ETag`` that an encoded representation never
shares with the identity one), worked out once per page. Since every client
is served from one entry, ``Accept-Encoding`` is taken out of a page's
variants: a page is rendered and stored once, whatever the browsers send
(the fill asks the application for the stored encoding). With ``compression
= off``, pages are stored as the application sends them and a page that
varies on ``Accept-Encoding`` is stored once per encoding pagecache knows
(br, gzip, identity), not once per distinct header.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

from . import encoding
from .entry import GENERATED_ETAG, Headers, Page, header_value
from .http import make_etag

Representation = Tuple[Headers, bytes]
REPS = 64  # distinct Accept-Encoding values whose representation a page remembers


class Compression:
    """The compression policy of one middleware."""

    def __init__(self, mode: str, min_size: int, types: Sequence[str], max_size: int):
        self.coding = "" if mode == "off" else mode
        self.min_size = min_size
        self.types = tuple(types)
        self.max_size = max_size
        self.fill_accept_encoding = self.coding or None  # what a fill asks the application for

    @property
    def on(self) -> bool:
        return bool(self.coding)

    def buffer_limit(self, max_entry_size: int, headers: Headers) -> int:
        """How much of a response to buffer: more than ``max_entry_size`` for
        one that will be stored compressed."""
        if self.coding and self._compressible(headers) and _content_encoding(headers) in ("", "identity"):
            return max(max_entry_size, self.max_size)
        return max_entry_size

    def _compressible(self, headers: Headers) -> bool:
        return encoding.compressible(header_value(headers, "content-type"), self.types)

    def prepare(self, status: str, headers: Headers, kept: Headers, body: bytes, flags: str
                ) -> Union[str, Tuple[Headers, bytes, str, int, str]]:
        """How a response is stored: (headers, body, its encoding, the
        identity length, flags), or why it can't be. ``headers`` are the
        application's, ``kept`` those chosen to be stored (identity
        Content-Length and ETag included)."""
        given = _content_encoding(headers)
        if not self.coding:
            return kept, body, "", len(body), flags
        if given in ("", "identity"):
            if len(body) < self.min_size or not encoding.worth_compressing(
                    status, headers, len(body), self.types, self.min_size):
                return kept, body, "", len(body), flags
            packed = encoding.compress(body, self.coding)
            if not encoding.worth_keeping(len(body), len(packed)):
                return kept, body, "", len(body), flags
            return _without(kept, "content-length"), packed, self.coding, len(body), flags
        if not encoding.decodable(given):
            if _varies_on_accept_encoding(headers):
                return f"Content-Encoding {given}, which pagecache can't decode for clients that don't accept it"
            return kept, body, "", len(body), flags  # the same bytes for every client, as the application says
        try:
            identity = encoding.decompress(body, given, self.max_size)
        except encoding.CodingError as error:
            return f"Content-Encoding {given} that does not decode: {error}"
        stored = _without(kept, "content-length", "content-encoding")
        etag = header_value(stored, "etag")
        plain = encoding.identity_etag(etag, given) if etag is not None else None
        if plain is None:  # the application's ETag names its encoded bytes: make one for the identity body
            stored = _without(stored, "etag") + [("ETag", make_etag(identity))]
            flags += GENERATED_ETAG if GENERATED_ETAG not in flags else ""
        else:
            stored = [(name, plain if name.lower() == "etag" else value) for name, value in stored]
        return stored, body, given, len(identity), flags

    @staticmethod
    def representation(page: Page, accept_encoding: Optional[str]) -> Optional[Representation]:
        """The headers and body for a client sending ``accept_encoding``, or
        None when the stored bytes don't decode (the entry is garbage). Worked
        out once per page and header value (up to :data:`REPS` values)."""
        found = page.reps.get(accept_encoding)
        if found is not None:
            return found
        coding = encoding.choose(page.encoding, encoding.accepted_memo(accept_encoding), (page.encoding,))
        memo = page.memo()
        found = memo.get(("representation", coding))
        if found is None:
            try:
                body = page.body if coding == page.encoding else \
                    encoding.decompress(page.body, page.encoding, page.identity_length)
            except encoding.CodingError:
                return None
            found = memo[("representation", coding)] = (
                encoding.representation_headers(page.headers, coding, len(body)), body)
        if len(page.reps) < REPS:
            page.reps[accept_encoding] = found
        return found


def _content_encoding(headers: Headers) -> str:
    return ",".join(value for name, value in headers if name.lower() == "content-encoding").strip().lower()


def _varies_on_accept_encoding(headers: Headers) -> bool:
    return any(name.lower() == "vary" and any(part.strip().lower() in ("accept-encoding", "*")
                                              for part in value.split(","))
               for name, value in headers)


def _without(headers: Headers, *names: str) -> Headers:
    return [(name, value) for name, value in headers if name.lower() not in names]
