"""Edge Side Includes: a page parsed once into parts, assembled on every delivery.

An application marks the personal corner of a page as a fragment::

    <p>Hello <esi:include src="/fragments/user" onerror="continue"/></p>

and pagecache stores the page with a hole where the include is, filling it per
request with a sub-request. This module holds the pure part of that: it does
no I/O and knows nothing about HTTP or the cache.

* :func:`parse` turns a body into :data:`Parts` (literal bytes and
  :class:`Include` holes, in order). It runs once, when a page is stored.
* :func:`to_bytes` / :func:`from_bytes` are the parts' stored form.
* :func:`assemble` joins the parts with the fragments that a ``fetch``
  callable returns. It runs on every delivery, so it never scans literal bytes:
  it only joins them.

The language: what :func:`parse` understands
---------------------------------------------

The subset of ESI 1.0 (https://www.w3.org/TR/esi-lang) that Varnish and
Symfony's HttpCache support. Names are matched exactly as Varnish matches
them: case-sensitive, lower-case (``<ESI:include>`` is not ESI, it is literal
text, as in Varnish and as XML namespaces are case-sensitive).

``<esi:include src="..." alt="..." onerror="continue"/>``
    A hole. Written as an empty element, or as ``<esi:include ...>`` followed
    (whitespace apart) by ``</esi:include>``. Attributes come in any order,
    quoted with ``"`` or ``'`` (an unquoted value is an error: Varnish accepts
    one, Symfony does not see it), separated by whitespace, newlines included,
    with optional whitespace around ``=``. In values, the entities ``&amp;``
    ``&lt;`` ``&gt;`` ``&quot;`` ``&apos;`` and numeric references (``&#38;``,
    ``&#x26;``) are decoded; any other ``&`` is kept as written (applications
    often forget to escape the ``&`` of a query string). Values are UTF-8 and
    may not contain ``<`` or ``>`` (as in Varnish: a missing quote is caught at
    the tag's end). ``src`` is required and not empty; ``alt=""`` is the
    same as no ``alt`` (as in Symfony); ``onerror`` may only be ``"continue"``;
    other attributes (``max-age``, ``timeout``, ...) are ignored.
``<esi:remove> ... </esi:remove>``
    Dropped whole, up to the first ``</esi:remove>``: its content is what a
    client sees when nobody processes ESI. Whatever it holds (includes too) is
    dropped unread. It does not nest: a second ``</esi:remove>`` is an error.
``<!--esi ... -->``
    The markers are dropped and what is between them is processed as ESI (it
    may hold includes, removes and comments). It ends at the first ``-->``, as
    every HTML comment does; an ``<!--esi`` inside it is an error, and a plain
    ``<!--`` inside it is literal text.
``<esi:comment text="..."/>``
    Dropped.
Anything else that starts ``<esi:`` or ``</esi:``
    An :class:`EsiError`. That covers the ESI 1.0 elements pagecache does not
    implement (``try``/``attempt``/``except``, ``choose``/``when``/``otherwise``,
    ``vars``, ``inline``), misspellings (``<esi:Include``, ``<esi:includ``),
    stray end tags and malformed tags. Symfony leaves unknown elements in the
    page as text; Varnish logs an error, drops the tag itself and keeps what it
    wraps (so both branches of an ``esi:choose`` reach the client). Either way
    the page is not the one the application meant, so pagecache refuses it at
    store time, and an application relying on them learns at once.
Ordinary ``<!-- ... -->`` comments and ``<![CDATA[ ... ]]>`` sections
    Literal, and ESI inside them is not processed (as in Varnish: commenting
    out an include disables it). One that is not closed runs to the end of the
    body, all literal.
Everything else
    Literal bytes, untouched, whatever their encoding: parsing works on bytes.

Errors say what is wrong and where (line, column and byte offset). Parsing is
linear in the size of the body: the only regular expressions are anchored
matches of a tag's parts and a search for the next ``<`` that could start a
construct, none of which can backtrack more than the run they are matching.

Assembly: fragments, failures and error parts
---------------------------------------------

:func:`assemble` resolves each include against the URL of the page (or of the
fragment) holding it with :func:`resolve`, calls ``fetch(url)`` and puts the
fragment's parts in the hole; a fragment's own includes are assembled the
same way, resolved against the fragment's URL.

An include *fails* when ``fetch`` answers ``ok=False``, or when assembling the
fragment's own includes raised :class:`FragmentFailed` (then nothing of that
fragment is kept, but the infos of what was fetched for it are). An include
that is not fetched at all is an *error part*: its URL is on another host
(:func:`resolve` gave ``None``), it is deeper than ``max_depth`` levels, or its
URL is already in the chain of includes being assembled (a loop). An error part
is handled exactly as a failed fetch, except that ``fetch`` is not called and
nothing is added to the infos. A failed include tries its ``alt`` (resolved and
checked the same way, so an ``alt`` that would loop or is too deep is an error
part too); if that fails as well, ``onerror="continue"`` makes the include
contribute nothing, and otherwise :class:`FragmentFailed` is raised. Because a
fragment whose own includes fail is a failed fragment, ``onerror="continue"``
on an include shields the page from everything that happens inside it.

The stored form
---------------

``to_bytes`` writes, with every integer an unsigned 32-bit big-endian number::

    b"ESI\\x01"  count                                   header and version 1
    b"L"  length  bytes                                 a literal (never empty)
    b"I"  flags  length  src  [length  alt]             an include

``flags`` is 1 for ``onerror="continue"`` plus 2 when ``alt`` follows; ``src``
and ``alt`` are UTF-8. The encoding is exact and canonical: :func:`from_bytes`
accepts exactly what :func:`to_bytes` writes and raises :class:`EsiError` for
any other bytes (a truncated value, trailing bytes, another version, unknown
flags, two literals in a row, invalid UTF-8). It is not self-delimiting as a
whole: the caller stores its length and passes :func:`from_bytes` the exact
slice.
"""

from __future__ import annotations

import enum
import functools
import re
import struct
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

__all__ = [
    "EsiError", "Include", "Part", "Parts", "parse", "to_bytes", "from_bytes", "includes",
    "Fetched", "Failure", "FragmentFailed", "resolve", "assemble",
]


class EsiError(ValueError):
    """A body that says it holds ESI but can't be parsed (the message says where),
    or bytes that are not parts written by :func:`to_bytes`."""


class Include(NamedTuple):
    """An ``<esi:include>``: a hole filled per request with a fragment."""

    src: str                      # as written in the tag, entities decoded (&amp; -> &)
    alt: Optional[str] = None     # fetched when src fails
    onerror_continue: bool = False  # onerror="continue": when both fail, the hole stays empty


Part = Union[bytes, Include]
Parts = Tuple[Part, ...]  # literal bytes and includes, in order; adjacent literals merged, empty ones dropped


# ---------------------------------------------------------------------------
# parse

_SPACES = re.compile(rb"[ \t\r\n]*")
# The next "<" that may start something we act on. Everything between two hits is literal.
_MARKUP = re.compile(rb"<(?:/?esi:|!--|!\[CDATA\[)")
_NAME = re.compile(rb"[A-Za-z][-A-Za-z0-9_.]*")
# One attribute, whitespace before it required: name, '=', a quoted value without '<' or '>'.
_ATTRIBUTE = re.compile(rb"""[ \t\r\n]+([A-Za-z_:][-A-Za-z0-9_:.]*)[ \t\r\n]*=[ \t\r\n]*"""
                        rb"""(?:"([^"<>]*)"|'([^'<>]*)')""")
_TAG_CLOSE = re.compile(rb"[ \t\r\n]*(/?)>")
_END_TAG_CLOSE = re.compile(rb"[ \t\r\n]*>")
# What went wrong in a tag, for the message: a name, maybe '=', maybe a quote.
_BAD_ATTRIBUTE = re.compile(rb"""[ \t\r\n]*([A-Za-z_:][-A-Za-z0-9_:.]*)?([ \t\r\n]*=[ \t\r\n]*)?(["']?)""")
_ENTITY = re.compile(r"&(?:(amp|lt|gt|quot|apos)|#([0-9]{1,8})|#[xX]([0-9A-Fa-f]{1,8}));")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_UNSUPPORTED = ("attempt", "choose", "except", "inline", "otherwise", "try", "vars", "when")


def parse(body: bytes) -> Parts:
    """The parts of ``body``: literal bytes and :class:`Include` holes, in order.

    ``(body,)`` for a body without ESI (``()`` for an empty one). Raises
    :class:`EsiError`, saying where, for ESI that can't be processed: see the
    module's documentation for the language.
    """
    if type(body) is not bytes:
        body = bytes(body)
    if _MARKUP.search(body) is None:
        return (body,) if body else ()
    parser = _Parser(body)
    parser.scan(0, len(body), in_esi_comment=False)
    return parser.finish()


class _Parser:
    """One body's parse: a scan of a region appending to ``parts`` and ``pending``."""

    def __init__(self, body: bytes):
        self.body = body
        self.parts: List[Part] = []
        self.pending: List[bytes] = []  # literal pieces not yet joined into one part

    def literal(self, start: int, end: int) -> None:
        if start < end:
            self.pending.append(self.body[start:end])

    def include(self, include: Include) -> None:
        if self.pending:
            self.parts.append(b"".join(self.pending))
            self.pending = []
        self.parts.append(include)

    def finish(self) -> Parts:
        if self.pending:
            self.parts.append(b"".join(self.pending))
        return tuple(self.parts)

    def fail(self, what: str, at: int) -> EsiError:
        body = self.body
        line = body.count(b"\n", 0, at) + 1
        column = at - (body.rfind(b"\n", 0, at) + 1) + 1
        return EsiError(f"{what} at line {line}, column {column} (byte {at})")

    # -- the scan -----------------------------------------------------------

    def scan(self, start: int, end: int, in_esi_comment: bool) -> None:
        """Parse ``body[start:end]``: literal runs between the constructs."""
        body = self.body
        literal_from = start  # where the current literal run began
        at = start
        while True:
            hit = _MARKUP.search(body, at, end)
            if hit is None:
                break
            at = hit.start()
            if body.startswith(b"<!--", at):
                if body.startswith(b"esi", at + 4, end):
                    if in_esi_comment:
                        raise self.fail("<!--esi inside <!--esi ... --> (the first --> ends both)", at)
                    close = body.find(b"-->", at + 7, end)
                    if close < 0:
                        raise self.fail("<!--esi without its closing -->", at)
                    self.literal(literal_from, at)
                    self.scan(at + 7, close, in_esi_comment=True)
                    at = literal_from = close + 3
                elif in_esi_comment:
                    at += 4  # a plain "<!--" inside <!--esi: literal, it can't have its own end
                else:
                    close = body.find(b"-->", at + 4, end)
                    at = end if close < 0 else close + 3  # literal, ESI inside not processed
            elif body.startswith(b"<![CDATA[", at):
                close = body.find(b"]]>", at + 9, end)
                at = end if close < 0 else close + 3
            else:
                self.literal(literal_from, at)
                at = literal_from = self.element(at, end)
        self.literal(literal_from, end)

    def element(self, at: int, end: int) -> int:
        """Handle the ESI tag at ``at`` (``<esi:`` or ``</esi:``); return where it ends."""
        body = self.body
        is_end_tag = body[at + 1] == 0x2F  # "/"
        name_at = at + (6 if is_end_tag else 5)
        match = _NAME.match(body, name_at, end)
        if match is None:
            raise self.fail("'<esi:' without an element name", at)
        name = match.group().decode("ascii")
        known = name in ("include", "remove", "comment")
        if not known:
            if name in _UNSUPPORTED:
                raise self.fail(f"<esi:{name}> is not supported (pagecache supports esi:include, "
                                f"esi:remove, esi:comment and <!--esi -->)", at)
            hint = " (ESI names are lower-case)" if name.lower() in ("include", "remove", "comment") else ""
            raise self.fail(f"unknown ESI element <esi:{name}>{hint}", at)
        if is_end_tag:
            if name == "remove":
                raise self.fail("</esi:remove> without <esi:remove> (esi:remove does not nest)", at)
            raise self.fail(f"</esi:{name}> without <esi:{name}>", at)
        attributes, empty, after = self.tag(name, at, match.end(), end)
        if name == "remove":
            if empty:
                raise self.fail("<esi:remove/> is empty: write <esi:remove>...</esi:remove>", at)
            close = body.find(b"</esi:remove", after, end)
            if close < 0:
                raise self.fail("<esi:remove> without its </esi:remove>", at)
            return self.end_tag("remove", close, end)
        if not empty:
            after = self.closing(name, at, after, end)
        if name == "include":
            self.include(self.make_include(attributes, at))
        return after

    def tag(self, name: str, at: int, position: int, end: int) -> Tuple[Dict[str, bytes], bool, int]:
        """The attributes of the start tag at ``at``, whether it is empty (``/>``), its end."""
        body = self.body
        attributes: Dict[str, bytes] = {}
        while True:
            match = _ATTRIBUTE.match(body, position, end)
            if match is None:
                break
            key = match.group(1).decode("ascii")
            if key in attributes:
                raise self.fail(f"<esi:{name}> has two {key} attributes", match.start(1))
            value = match.group(2)
            attributes[key] = value if value is not None else match.group(3)
            position = match.end()
        match = _TAG_CLOSE.match(body, position, end)
        if match is None:
            raise self.fail(self.tag_problem(name, position, end), position)
        return attributes, bool(match.group(1)), match.end()

    def tag_problem(self, name: str, position: int, end: int) -> str:
        """What is wrong at ``position`` inside the tag ``<esi:name``."""
        body = self.body
        match = _BAD_ATTRIBUTE.match(body, position, end)
        key, equals, quote = match.groups()
        tail = match.end()
        if key and match.start(1) == position:
            return f"<esi:{name}>: attributes must be separated by whitespace"
        if key and equals and quote:
            return (f"<esi:{name}>: the value of {key.decode('ascii')} has no closing "
                    f"{quote.decode('ascii')} (values may not contain '<' or '>')")
        if key and equals:
            return f"<esi:{name}>: the value of {key.decode('ascii')} is not quoted"
        if key:
            return f"<esi:{name}>: attribute {key.decode('ascii')} has no value"
        if tail >= end:
            return f"<esi:{name}> is not closed with '>'"
        if body.startswith(b"/", tail, end):
            return f"<esi:{name}>: '/' not followed by '>'"
        return f"<esi:{name}>: unexpected {body[tail:tail + 1]!r}"

    def closing(self, name: str, at: int, after: int, end: int) -> int:
        """The end of ``</esi:name>`` that must follow the start tag ending at ``after``."""
        body = self.body
        position = _SPACES.match(body, after, end).end()
        if not body.startswith(b"</esi:" + name.encode("ascii"), position, end):
            raise self.fail(f"<esi:{name}> is not empty: write <esi:{name} .../> or follow it "
                            f"with </esi:{name}>", at)
        return self.end_tag(name, position, end)

    def end_tag(self, name: str, at: int, end: int) -> int:
        """The end of the end tag ``</esi:name`` found at ``at``."""
        match = _END_TAG_CLOSE.match(self.body, at + 6 + len(name), end)  # past "</esi:name"
        if match is None:
            raise self.fail(f"malformed </esi:{name}> (expected '>')", at)
        return match.end()

    def make_include(self, attributes: Dict[str, bytes], at: int) -> Include:
        if "src" not in attributes:
            raise self.fail("<esi:include> without src", at)
        src = self.text(attributes["src"], "src", at)
        if not src:
            raise self.fail("<esi:include> with an empty src", at)
        alt = self.text(attributes["alt"], "alt", at) if "alt" in attributes else None
        onerror = self.text(attributes["onerror"], "onerror", at) if "onerror" in attributes else None
        if onerror is not None and onerror != "continue":
            raise self.fail(f"<esi:include onerror={onerror!r}>: the only value is \"continue\"", at)
        return Include(src, alt or None, onerror is not None)

    def text(self, value: bytes, key: str, at: int) -> str:
        """An attribute value as text: UTF-8, entities decoded."""
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"<esi:include {key}=...> is not UTF-8", at) from None
        if "&" not in text:
            return text

        def entity(match: "re.Match[str]") -> str:
            named, decimal, hexadecimal = match.groups()
            if named:
                return _NAMED[named]
            code = int(decimal) if decimal else int(hexadecimal, 16)
            if code == 0 or 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                raise self.fail(f"<esi:include {key}=...>: {match.group()} is not a character", at)
            return chr(code)

        return _ENTITY.sub(entity, text)


def includes(parts: Parts) -> Tuple[Include, ...]:
    """The includes among ``parts``, in order (not those of the fragments they fetch)."""
    return tuple(part for part in parts if isinstance(part, Include))


# ---------------------------------------------------------------------------
# to_bytes / from_bytes

_MAGIC = b"ESI\x01"
_LITERAL, _INCLUDE = 0x4C, 0x49  # "L", "I"
_CONTINUE, _HAS_ALT = 1, 2
_U32 = struct.Struct(">I")
_MAX = 0xFFFFFFFF


def to_bytes(parts: Parts) -> bytes:
    """The stored form of ``parts`` (see the module's documentation).

    ``parts`` must be what :func:`parse` makes: literals are non-empty ``bytes``
    and never two in a row (``ValueError`` otherwise), includes are
    :class:`Include` with ``str`` fields and a ``bool`` flag (``TypeError``).
    """
    pack = _U32.pack
    if len(parts) > _MAX:
        raise ValueError("too many parts")
    out = [_MAGIC, pack(len(parts))]
    after_literal = False
    for part in parts:
        if type(part) is bytes:
            if not part:
                raise ValueError("an empty literal part")
            if after_literal:
                raise ValueError("two literal parts in a row (they should be merged)")
            if len(part) > _MAX:
                raise ValueError("a literal part over 4 GB")
            out += (b"L", pack(len(part)), part)
            after_literal = True
        elif type(part) is Include:
            src, alt, onerror_continue = part
            if type(src) is not str or (alt is not None and type(alt) is not str) \
                    or type(onerror_continue) is not bool:
                raise TypeError(f"malformed include {part!r}")
            flags = (_CONTINUE if onerror_continue else 0) | (_HAS_ALT if alt is not None else 0)
            out += (b"I", bytes((flags,)), *_text_field(src))
            if alt is not None:
                out += _text_field(alt)
            after_literal = False
        else:
            raise TypeError(f"a part that is neither bytes nor Include: {part!r}")
    return b"".join(out)


def _text_field(text: str) -> Tuple[bytes, bytes]:
    data = text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates
    if len(data) > _MAX:
        raise ValueError("an include URL over 4 GB")
    return _U32.pack(len(data)), data


def from_bytes(data: bytes) -> Parts:
    """The parts that :func:`to_bytes` wrote as exactly ``data`` (the caller passes the
    exact slice); :class:`EsiError` for any other bytes."""
    if type(data) is not bytes:
        data = bytes(data)
    size = len(data)
    if size < 8 or not data.startswith(_MAGIC):
        raise EsiError("not ESI parts written by this version of pagecache")
    unpack = _U32.unpack_from
    (count,) = unpack(data, 4)
    if count > (size - 8) // 6:  # every part takes at least 6 bytes
        raise EsiError(f"ESI parts truncated: {count} parts announced in {size} bytes")
    parts: List[Part] = []
    position = 8
    after_literal = False
    for _ in range(count):
        if position + 5 > size:
            raise EsiError(f"ESI parts truncated at byte {position}")
        kind = data[position]
        if kind == _LITERAL:
            (length,) = unpack(data, position + 1)
            start = position + 5
            position = start + length
            if length == 0 or after_literal:
                raise EsiError(f"ESI parts: an empty or second literal at byte {start - 5}")
            if position > size:
                raise EsiError(f"ESI parts truncated in a literal at byte {start - 5}")
            parts.append(data[start:position])
            after_literal = True
        elif kind == _INCLUDE:
            flags = data[position + 1]
            if flags & ~(_CONTINUE | _HAS_ALT):
                raise EsiError(f"ESI parts: unknown include flags {flags} at byte {position}")
            src, position = _read_text(data, position + 2, size)
            alt = None
            if flags & _HAS_ALT:
                alt, position = _read_text(data, position, size)
            parts.append(Include(src, alt, bool(flags & _CONTINUE)))
            after_literal = False
        else:
            raise EsiError(f"ESI parts: unknown part kind {kind} at byte {position}")
    if position != size:
        raise EsiError(f"ESI parts: {size - position} bytes after the last part")
    return tuple(parts)


def _read_text(data: bytes, position: int, size: int) -> Tuple[str, int]:
    if position + 4 > size:
        raise EsiError(f"ESI parts truncated at byte {position}")
    (length,) = _U32.unpack_from(data, position)
    start = position + 4
    stop = start + length
    if stop > size:
        raise EsiError(f"ESI parts truncated in an include at byte {position}")
    try:
        return data[start:stop].decode("utf-8"), stop
    except UnicodeDecodeError:
        raise EsiError(f"ESI parts: an include URL that is not UTF-8 at byte {position}") from None


# ---------------------------------------------------------------------------
# resolve / assemble

class Fetched(NamedTuple):
    """What ``fetch`` answers for one fragment."""

    ok: bool        # False: the fragment failed (raised, timed out, 5xx...): try alt, then onerror
    parts: Parts    # the fragment's body as parts (a fragment can itself hold ESI) or (body,) for plain
    info: object = None  # whatever the caller wants back for this fragment (headers, cache status...)


class Failure(enum.Enum):
    """Why one URL of an include gave no fragment."""

    FETCH = "the fetch failed"
    FRAGMENT = "an include inside the fragment failed"
    OTHER_HOST = "not on the page's scheme, host and port"
    TOO_DEEP = "deeper than max_depth"
    LOOP = "already in the chain of includes being assembled"


class FragmentFailed(Exception):
    """A fragment failed with neither alt nor onerror="continue": the page can't be assembled.

    ``include`` is the include that failed (at whatever depth), ``failures`` the
    ``(url, Failure)`` of its src and, when it has one, its alt (``url`` is the
    src or alt as written when it did not resolve), and ``infos`` the infos of
    every fragment fetched before the failure, in order. When an include inside a
    fragment failed first, that :class:`FragmentFailed` is the ``__cause__``.
    """

    def __init__(self, include: Include, failures: Tuple[Tuple[str, Failure], ...]):
        self.include = include
        self.failures = failures
        self.infos: List[object] = []
        tried = "; ".join(f"{url}: {failure.value}" for url, failure in failures)
        super().__init__(f"<esi:include src={include.src!r}> failed ({tried}) "
                         f"and has no onerror=\"continue\"")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: SplitResult) -> Optional[Tuple[str, str, Optional[int]]]:
    """Scheme, host and port (the scheme's default when absent), ``None`` without a host."""
    scheme = url.scheme.lower()
    host = url.hostname  # lower-cased
    if not host:
        return None
    port = url.port  # ValueError when not a number or out of range
    return scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme)


@functools.lru_cache(maxsize=4096)
def _resolve(page_url: str, src: str) -> Optional[str]:
    try:
        page = urlsplit(page_url)
        target = urlsplit(urljoin(page_url, src))
        origin = _origin(page)
        if origin is None or _origin(target) != origin:
            return None
    except ValueError:
        return None
    # Spelled with the page's own scheme and host, without the fragment (#...) that is
    # never sent: one URL has one spelling, so a loop is seen whatever way it is written.
    return urlunsplit((page.scheme, page.netloc, target.path or "/", target.query, ""))


def resolve(page_url: str, src: str) -> Optional[str]:
    """The absolute URL of an include relative to the page's URL (urljoin semantics), or None
    when it points at another scheme+host:port than the page (only same-host fragments are fetched).

    The URL is spelled with the page's scheme and host (``http://H:80/x`` on
    ``http://h/`` gives ``http://h/x``), dot segments resolved, ``#fragment``
    dropped; ``None`` too when either URL is malformed (a port that is not a
    number) or the page's URL has no host. Memoised: it runs per delivery.
    """
    return _resolve(page_url, src)


def assemble(parts: Parts, page_url: str, fetch: Callable[[str], Fetched],
             max_depth: int = 3) -> Tuple[bytes, List[object]]:
    """The page's body with every include replaced by its fragment, fetched with fetch(absolute_url).

    Fragments' own includes are assembled too, resolved against the fragment's URL, up to
    ``max_depth`` levels (the page's includes are level 1; ``max_depth=0`` fetches nothing).
    An include deeper than that, one whose URL is already in the chain of includes being
    assembled (a page including itself, a->b->a), or one on another host is an *error part*:
    no fetch, handled as a failed include. A failed include tries ``alt`` (fetched and
    checked the same way), then, with onerror="continue", contributes nothing; otherwise
    :class:`FragmentFailed` is raised. A fragment whose own includes fail that way is a
    failed include in its turn (its partial output is dropped).

    Returns the body and the ``info`` of every fragment fetched, in the order of the fetches
    (failed ones included). Exceptions raised by ``fetch`` are not caught: ``fetch`` reports
    failures with ``ok=False``. Literal bytes are joined, never looked at.
    """
    if max_depth < 0:
        raise ValueError(f"max_depth must be 0 or more, not {max_depth}")
    out: List[bytes] = []
    infos: List[object] = []
    page = resolve(page_url, "") or page_url
    try:
        _assemble(parts, page_url, (page,), fetch, max_depth, out, infos)
    except FragmentFailed as failed:
        failed.infos = infos
        raise
    return b"".join(out), infos


def _assemble(parts: Parts, base: str, chain: Tuple[str, ...], fetch: Callable[[str], Fetched],
              levels: int, out: List[bytes], infos: List[object]) -> None:
    """Append ``parts`` to ``out``, includes filled; ``levels``: how many more may be fetched."""
    for part in parts:
        if not isinstance(part, Include):
            out.append(part)
            continue
        src_url, failure, cause = _fragment(part.src, base, chain, fetch, levels, out, infos)
        if failure is None:
            continue
        failures = ((src_url, failure),)
        if part.alt is not None:
            alt_url, alt_failure, alt_cause = _fragment(part.alt, base, chain, fetch, levels, out, infos)
            if alt_failure is None:
                continue
            failures += ((alt_url, alt_failure),)
            cause = alt_cause or cause
        if not part.onerror_continue:
            raise FragmentFailed(part, failures) from cause


def _fragment(src: str, base: str, chain: Tuple[str, ...], fetch: Callable[[str], Fetched],
              levels: int, out: List[bytes], infos: List[object]
              ) -> Tuple[str, Optional[Failure], Optional[FragmentFailed]]:
    """Fetch ``src`` into ``out``: its URL and ``None``, or the URL (or src), why not
    and, when an include inside the fragment failed, that failure."""
    url = _resolve(base, src)
    if url is None:
        return src, Failure.OTHER_HOST, None
    if url in chain:
        return url, Failure.LOOP, None
    if levels <= 0:
        return url, Failure.TOO_DEEP, None
    fetched = fetch(url)
    infos.append(fetched.info)
    if not fetched.ok:
        return url, Failure.FETCH, None
    mark = len(out)
    try:
        _assemble(fetched.parts, url, chain + (url,), fetch, levels - 1, out, infos)
    except FragmentFailed as inner:
        del out[mark:]
        return url, Failure.FRAGMENT, inner
    return url, None, None
