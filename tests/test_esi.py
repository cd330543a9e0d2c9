"""ESI: parsing once, the stored form, and assembly that never looks at literals."""

import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pagecache.esi import (EsiError, Failure, Fetched, FragmentFailed, Include, assemble,
                           from_bytes, includes, parse, resolve, to_bytes)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PAGE = "http://example.com/a/b/page"


# ---------------------------------------------------------------------------
# parse: each construct


def test_a_body_without_esi_is_one_literal_and_an_empty_body_no_parts():
    body = b"<html><!-- a comment --><p>caf\xe9 \xff\x00</p><![CDATA[ x ]]></html>"
    assert parse(body) == (body,)
    assert parse(b"") == ()


@pytest.mark.parametrize("tag", [
    b'<esi:include src="/frag"/>',
    b'<esi:include src="/frag" />',
    b"<esi:include src='/frag'/>",
    b'<esi:include src="/frag"></esi:include>',
    b'<esi:include src="/frag">\n  </esi:include  >',
    b'<esi:include\n\tsrc = "/frag"\r\n/>',
    b'<esi:include max-age="30" src="/frag" timeout="2" dca="none"/>',
])
def test_include_forms(tag):
    assert parse(b"<p>" + tag + b"</p>") == (b"<p>", Include("/frag"), b"</p>")


@pytest.mark.parametrize("tag", [
    b'<esi:include src="/f" alt="/g" onerror="continue"/>',
    b'<esi:include onerror="continue" alt="/g" src="/f"/>',
    b"<esi:include alt='/g'\n onerror='continue'\n src='/f'/>",
    b'<esi:include\n  onerror="continue"\n  src="/f"\n  alt="/g"\n></esi:include>',
])
def test_include_attributes_in_any_order_and_quoting(tag):
    assert parse(tag) == (Include("/f", "/g", True),)


def test_include_defaults_and_an_empty_alt_is_no_alt():
    assert parse(b'<esi:include src="/f"/>') == (Include("/f", None, False),)
    assert parse(b'<esi:include src="/f" alt=""/>') == (Include("/f", None, False),)


def test_entities_in_src_are_decoded_and_bare_ampersands_kept():
    tag = b'<esi:include src="/f?a=1&amp;b=&quot;2&quot;&amp;c=&lt;&gt;&apos;&#38;&#x26;&#X3D;" alt="/g?x=1&y=2&unknown;"/>'
    assert parse(tag) == (Include("/f?a=1&b=\"2\"&c=<>'&&=", "/g?x=1&y=2&unknown;"),)


def test_src_is_utf8_text():
    assert parse('<esi:include src="/café?q=&#233;"/>'.encode("utf-8")) == (Include("/café?q=é"),)


def test_remove_is_dropped_with_everything_inside_it_includes_too():
    body = (b"a<esi:remove><a href='/license'>license</a>"
            b"<esi:include src=\"/never\"/><!--esi <esi:include src=\"/nor\"/> --></esi:remove>b")
    assert parse(body) == (b"ab",)
    assert includes(parse(body)) == ()


def test_remove_end_tag_may_have_whitespace():
    assert parse(b"a<esi:remove>x</esi:remove\n>b") == (b"ab",)


def test_esi_comment_markers_are_dropped_and_its_content_processed():
    body = (b"<p>a</p><!--esi\n<p>The license:</p>\n<esi:include src=\"/license\" />\n-->"
            b"<esi:remove><a href=\"/license\">The license</a></esi:remove><p>z</p>")
    assert parse(body) == (b"<p>a</p>\n<p>The license:</p>\n", Include("/license"), b"\n<p>z</p>")


def test_esi_comment_may_hold_removes_comments_and_plain_comment_openers():
    body = b"<!--esi x<esi:remove>old</esi:remove>y<esi:comment text='c'/>z <!-- literal -->w"
    assert parse(body) == (b" xyz <!-- literal w",)


def test_esi_comment_element_is_dropped_in_both_forms():
    assert parse(b'a<esi:comment text="why"/>b<esi:comment text="x"></esi:comment>c') == (b"abc",)


def test_esi_inside_plain_comments_and_cdata_is_literal_as_in_varnish():
    body = (b'<!-- <esi:include src="/off"/> --><script>//<![CDATA[\n'
            b'var t = "<esi:include src=\'/js\'/>";\n//]]></script><esi:include src="/on"/>')
    assert parse(body) == (body[:body.index(b'<esi:include src="/on"')], Include("/on"))


def test_an_unclosed_plain_comment_or_cdata_is_literal_to_the_end():
    assert parse(b'a<!-- <esi:include src="/x"/>') == (b'a<!-- <esi:include src="/x"/>',)
    assert parse(b'a<![CDATA[ <esi:include src="/x"/>') == (b'a<![CDATA[ <esi:include src="/x"/>',)


def test_non_utf8_bytes_around_are_untouched():
    body = b'\xff\xfe\x00<p>\xe9t\xe9</p><esi:include src="/f"/>\x80\x81<!--esi \xc3\x28 -->\xf0'
    assert parse(body) == (b"\xff\xfe\x00<p>\xe9t\xe9</p>", Include("/f"), b"\x80\x81 \xc3\x28 \xf0")


def test_upper_case_esi_prefix_is_not_esi_as_in_varnish():
    body = b'<ESI:include src="/f"/><Esi:remove>x</Esi:remove>'
    assert parse(body) == (body,)


def test_adjacent_literals_are_merged_and_empty_ones_dropped():
    parts = parse(b'<esi:include src="/a"/><esi:include src="/b"/>x<esi:comment text=""/>'
                  b'<esi:remove>r</esi:remove>y<!--esi-->z<esi:include src="/c"/>')
    assert parts == (Include("/a"), Include("/b"), b"xyz", Include("/c"))


def test_includes_lists_the_includes_in_order():
    parts = parse(b'a<esi:include src="/1"/>b<esi:include src="/2" alt="/3"/>')
    assert includes(parts) == (Include("/1"), Include("/2", "/3"))


@pytest.mark.parametrize("body, message", [
    (b'<esi:include/>', "without src"),
    (b'<esi:include alt="/x"/>', "without src"),
    (b'<esi:include src=""/>', "empty src"),
    (b'<esi:include src=/x />', "not quoted"),
    (b'<esi:include src="/x/>', "no closing"),
    (b'<esi:include src="/x', "no closing"),
    (b'<esi:include src="/x"', "not closed"),
    (b'<esi:include src="/x"alt="/y"/>', "separated by whitespace"),
    (b'<esi:include src="/x" defer/>', "has no value"),
    (b'<esi:include src="/x" / >', "'/' not followed by '>'"),
    (b'<esi:include src="/x" src="/y"/>', "two src"),
    (b'<esi:include src="/x" onerror="abort"/>', "continue"),
    (b'<esi:include src="/x">fallback</esi:include>', "not empty"),
    (b'<esi:include src="/x">', "not empty"),
    (b'<esi:include src="/x"></esi:includes>', "malformed </esi:include>"),
    (b'<esi:include src="/\xff"/>', "not UTF-8"),
    (b'<esi:include src="/&#0;"/>', "not a character"),
    (b'<esi:include src="/&#xD800;"/>', "not a character"),
    (b'</esi:include>', "without <esi:include>"),
    (b'<esi:remove>never closed', "without its </esi:remove>"),
    (b'<esi:remove/>', "<esi:remove/>"),
    (b'<esi:remove>a<esi:remove>b</esi:remove>c</esi:remove>', "does not nest"),
    (b'</esi:remove>', "without <esi:remove>"),
    (b'<esi:remove>a</esi:remove x>', "malformed </esi:remove>"),
    (b'<!--esi <esi:include src="/x"/>', "without its closing -->"),
    (b'<!--esi a <!--esi b --> -->', "inside <!--esi"),
    (b'<!--esi <esi:remove> a --> </esi:remove>', "without its </esi:remove>"),
    (b'<!--esi <esi:include src="/x" -->', "not closed"),
    (b'<esi:comment text="x">', "not empty"),
    (b'<esi:', "without an element name"),
    (b'<esi: include src="/x"/>', "without an element name"),
    (b'<esi:Include src="/x"/>', "lower-case"),
    (b'<esi:includ src="/x"/>', "unknown ESI element <esi:includ>"),
    (b'<esi:bogus/>', "unknown ESI element"),
])
def test_malformed_esi_is_an_error_saying_what_and_where(body, message):
    with pytest.raises(EsiError, match="at line 1, column") as raised:
        parse(body)
    assert message in str(raised.value)


@pytest.mark.parametrize("tag", [
    b"<esi:try>", b"<esi:attempt>", b"<esi:except>", b"</esi:try>", b"<esi:choose>",
    b'<esi:when test="$(HTTP_COOKIE{group})==\'Advanced\'">', b"<esi:otherwise>",
    b"<esi:vars>", b'<esi:inline name="/x" fetchable="yes">',
])
def test_unsupported_esi_elements_are_errors_not_text(tag):
    with pytest.raises(EsiError, match="is not supported"):
        parse(b"<p>ok</p>\n" + tag)


def test_error_position_counts_lines_and_columns():
    with pytest.raises(EsiError, match=r"at line 3, column 5 \(byte 16\)"):
        parse(b"line1\nline2\nabc <esi:include/>")


def _elapsed(body):
    start = time.perf_counter()
    try:
        parse(body)
    except EsiError:
        pass
    return time.perf_counter() - start


@pytest.mark.parametrize("body", [
    b"<" * 1_000_000,
    b"<!--" * 250_000,
    b"<!---->" * 150_000,
    b"<![CDATA[" * 110_000,
    b"<esi:comment/>" * 70_000,
    b'<esi:include src="/x"/>' * 40_000,
    b"<!--esi " + b"<!--" * 250_000 + b"-->",
    b"<!--esi " + b"-" * 1_000_000,
    b'<esi:include src="' + b"a" * 1_000_000,
    b'<esi:include src="a"' + b" " * 1_000_000,
    b"<esi:include" + b"".join(b' a%d="1"' % i for i in range(100_000)) + b' src="/x"/>',
    b"<esi:include" + b' src="a"' * 100_000,
    b'<esi:remove>' + b"</esi:remov" * 90_000,
    b'<esi:include src="/x">' + b" " * 1_000_000 + b"</esi:include>",
], ids=lambda body: repr(body[:24]))
def test_parse_is_linear_on_a_megabyte_of_the_worst_input(body):
    assert _elapsed(body) < 5.0  # about 0.5 s at worst; anything quadratic takes minutes here


# ---------------------------------------------------------------------------
# parse: properties

MARKERS = (b"<esi:", b"</esi:", b"<!--esi")


@FAST
@given(st.binary(max_size=400))
def test_parse_of_a_body_without_esi_markers_is_the_body(body):
    assume(not any(marker in body for marker in MARKERS))
    assert parse(body) == ((body,) if body else ())


TOKENS = [b"<esi:", b"</esi:", b"include", b"remove", b"comment", b"try", b" src=", b" alt=",
          b" onerror=", b'"', b"'", b"/x", b"/>", b">", b"<", b"<!--", b"esi", b"-->",
          b"<![CDATA[", b"]]>", b"&amp;", b"&#", b";", b"\xff", b" ", b"\n", b"=", b"continue"]


def _well_formed(parts):
    previous = None
    for part in parts:
        assert type(part) in (bytes, Include)
        if type(part) is bytes:
            assert part and type(previous) is not bytes
        else:
            assert type(part.src) is str and part.src
            assert part.alt is None or (type(part.alt) is str and part.alt)
            assert type(part.onerror_continue) is bool
        previous = part


@THOROUGH
@given(st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=4)), max_size=40))
def test_parse_raises_only_esi_errors_and_returns_well_formed_parts(pieces):
    body = b"".join(pieces)
    try:
        parts = parse(body)
    except EsiError:
        return
    _well_formed(parts)
    assert sum(len(part) for part in parts if type(part) is bytes) <= len(body)
    assert from_bytes(to_bytes(parts)) == parts


# Documents built from known pieces, rendered in random spellings: parse gives them back.

WHITESPACE = st.sampled_from([" ", "\n", "\t", "  ", "\r\n  "])
TEXT = st.binary(max_size=20).map(lambda b: b.replace(b"<", b"").replace(b">", b""))
HTML = st.sampled_from([b"<p>", b"</div>", b"< ", b"<br/>", b"<esi >", b"<!DOCTYPE html>", b"<a href='x'>"])
URL = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)


@st.composite
def attribute_value(draw, text):
    """``text`` spelled as an attribute value: quoted, escaped, sometimes as character references."""
    quote = draw(st.sampled_from(['"', "'"]))
    spelled = []
    for char in text:
        if char == "&":
            spelled.append(draw(st.sampled_from(["&amp;", "&#38;", "&#x26;"])))
        elif char in "<>" or char == quote:
            spelled.append({"<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}[char])
        elif draw(st.integers(0, 9)) == 0:
            spelled.append(f"&#{ord(char)};")
        else:
            spelled.append(char)
    return (quote + "".join(spelled) + quote).encode("utf-8")


@st.composite
def include_node(draw):
    include = Include(draw(URL), draw(st.none() | URL), draw(st.booleans()))
    attributes = [b"src=" + draw(attribute_value(include.src))]
    if include.alt is not None:
        attributes.append(b"alt=" + draw(attribute_value(include.alt)))
    if include.onerror_continue:
        attributes.append(b"onerror=" + draw(attribute_value("continue")))
    attributes += draw(st.lists(st.sampled_from([b'max-age="30"', b"timeout='1'", b'x:y="z"']),
                                max_size=2, unique=True))
    attributes = draw(st.permutations(attributes))
    tag = b"<esi:include"
    for attribute in attributes:
        name, value = attribute.split(b"=", 1)
        around = draw(st.sampled_from([b"", b" ", b"\n"]))
        tag += draw(WHITESPACE).encode() + name + around + b"=" + around + value
    tag += draw(st.sampled_from([b"/>", b" />", b"\n/>", b"></esi:include>", b">\n</esi:include >"]))
    return tag, [include]


@st.composite
def dropped_node(draw):
    """Something parse drops: an esi:comment, or an esi:remove with anything inside."""
    if draw(st.booleans()):
        return b"<esi:comment text=" + draw(attribute_value(draw(st.text(max_size=8)))) + b"/>", []
    inside = draw(st.lists(st.one_of(TEXT, HTML, include_node().map(lambda node: node[0])), max_size=4))
    return b"<esi:remove>" + b"".join(inside) + b"</esi:remove>", []


def text_node():
    return st.one_of(TEXT, HTML).map(lambda text: (text, [text]))


@st.composite
def esi_comment_node(draw):
    space = draw(WHITESPACE).encode()  # content, like everything between the markers
    nodes = draw(st.lists(st.one_of(text_node(), include_node(), dropped_node()), max_size=5))
    return (b"<!--esi" + space + b"".join(n[0] for n in nodes) + b"-->",
            [space] + [part for node in nodes for part in node[1]])


@st.composite
def literal_node(draw):
    """A plain comment or CDATA section: literal, ESI inside it included."""
    inside = b"".join(draw(st.lists(st.one_of(TEXT, include_node().map(lambda node: node[0])), max_size=3)))
    if draw(st.booleans()):
        markup = b"<!-- " + inside + b" -->"
    else:
        markup = b"<![CDATA[" + inside + b"]]>"
    return markup, [markup]


def normal(parts):
    out = []
    for part in parts:
        if type(part) is bytes:
            if not part:
                continue
            if out and type(out[-1]) is bytes:
                out[-1] += part
                continue
        out.append(part)
    return tuple(out)


@THOROUGH
@given(st.lists(st.one_of(text_node(), include_node(), dropped_node(), esi_comment_node(),
                          literal_node()), max_size=8))
def test_parse_gives_back_the_includes_and_literals_a_document_was_built_from(nodes):
    body = b"".join(node[0] for node in nodes)
    assert parse(body) == normal([part for node in nodes for part in node[1]])


# ---------------------------------------------------------------------------
# to_bytes / from_bytes

literals = st.binary(min_size=1, max_size=30)
include_parts = st.builds(Include, st.text(max_size=20), st.none() | st.text(max_size=20), st.booleans())
parts_strategy = st.lists(st.one_of(literals, include_parts), max_size=10).map(normal)


def test_stored_form_is_small_and_versioned():
    data = to_bytes((b"<p>", Include("/f", "/g", True), b"</p>"))
    assert data.startswith(b"ESI\x01")
    assert data == (b"ESI\x01\x00\x00\x00\x03" + b"L\x00\x00\x00\x03<p>"
                    + b"I\x03\x00\x00\x00\x02/f\x00\x00\x00\x02/g" + b"L\x00\x00\x00\x04</p>")
    assert from_bytes(to_bytes(())) == ()


@THOROUGH
@given(parts_strategy)
def test_round_trip_is_exact(parts):
    data = to_bytes(parts)
    decoded = from_bytes(data)
    assert decoded == parts
    assert all(type(a) is type(b) for a, b in zip(decoded, parts))
    assert from_bytes(memoryview(b"xx" + data + b"yy")[2:-2]) == parts  # the caller's exact slice


@FAST
@given(parts_strategy)
def test_every_truncation_and_every_extension_is_an_error(parts):
    data = to_bytes(parts)
    for length in range(len(data)):
        with pytest.raises(EsiError):
            from_bytes(data[:length])
    for extra in (b"\x00", b"L", b"L\x00\x00\x00\x01x", data):
        with pytest.raises(EsiError):
            from_bytes(data + extra)


@THOROUGH
@given(parts_strategy, st.data())
def test_a_changed_byte_is_an_error_or_exactly_what_to_bytes_writes(parts, data):
    encoded = bytearray(to_bytes(parts))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255).filter(lambda b: b != encoded[position]))
    mutated = bytes(encoded)
    try:
        decoded = from_bytes(mutated)
    except EsiError:
        return
    assert to_bytes(decoded) == mutated


@THOROUGH
@given(st.one_of(st.binary(max_size=60), st.binary(max_size=60).map(lambda b: b"ESI\x01" + b)))
def test_garbage_is_an_error_or_exactly_what_to_bytes_writes(garbage):
    try:
        decoded = from_bytes(garbage)
    except EsiError:
        return
    assert to_bytes(decoded) == garbage


@pytest.mark.parametrize("garbage", [
    b"", b"ESI", b"ESI\x02\x00\x00\x00\x00", b"PC1 page", b"ESI\x01\xff\xff\xff\xff",
    b"ESI\x01\x00\x00\x00\x01L\x00\x00\x00\x00",                   # an empty literal
    b"ESI\x01\x00\x00\x00\x02L\x00\x00\x00\x01aL\x00\x00\x00\x01b",  # two literals in a row
    b"ESI\x01\x00\x00\x00\x01I\x04\x00\x00\x00\x01a",               # unknown flag
    b"ESI\x01\x00\x00\x00\x01I\x00\x00\x00\x00\x01\xff",            # src not UTF-8
    b"ESI\x01\x00\x00\x00\x01I\x02\x00\x00\x00\x01a",               # alt announced, missing
    b"ESI\x01\x00\x00\x00\x01X\x00\x00\x00\x01a",                   # unknown kind
])
def test_known_garbage_is_an_error(garbage):
    with pytest.raises(EsiError):
        from_bytes(garbage)


@pytest.mark.parametrize("parts, error", [
    ((b"",), ValueError),
    ((b"a", b"b"), ValueError),
    (("text",), TypeError),
    ((Include(b"/x"),), TypeError),
    ((Include("/x", onerror_continue=1),), TypeError),
    ((Include("\udc80"),), ValueError),
])
def test_to_bytes_refuses_what_parse_never_makes(parts, error):
    with pytest.raises(error):
        to_bytes(parts)


# ---------------------------------------------------------------------------
# resolve


@pytest.mark.parametrize("src, url", [
    ("frag", "http://example.com/a/b/frag"),
    ("/frag", "http://example.com/frag"),
    ("../frag?x=1", "http://example.com/a/frag?x=1"),
    ("../../../../frag", "http://example.com/frag"),
    ("/a/./b/../c", "http://example.com/a/c"),
    ("?q=1", "http://example.com/a/b/page?q=1"),
    ("/frag#part", "http://example.com/frag"),
    ("http://example.com/x", "http://example.com/x"),
    ("HTTP://EXAMPLE.com:80/x", "http://example.com/x"),
    ("//example.com/x", "http://example.com/x"),
    ("//other.host/x", None),
    ("http://other.host/x", None),
    ("https://example.com/x", None),
    ("http://example.com:8080/x", None),
    ("http://example.com:nope/x", None),
    ("mailto:someone@example.com", None),
    ("javascript:alert(1)", None),
])
def test_resolve_against_the_page_and_refuse_other_hosts(src, url):
    assert resolve(PAGE, src) == url


def test_resolve_keeps_the_pages_port_and_scheme():
    assert resolve("https://example.com:8443/p", "/x") == "https://example.com:8443/x"
    assert resolve("https://example.com/p", "https://example.com:443/x") == "https://example.com/x"
    assert resolve("https://example.com/p", "http://example.com/x") is None
    assert resolve("/no/host", "/x") is None


# ---------------------------------------------------------------------------
# assemble


class Fragments:
    """A fetch stub: URL -> Fetched (plain bytes, parsed ESI, or a failure), calls recorded."""

    def __init__(self, **pages):
        self.pages = {}
        self.calls = []
        for path, body in pages.items():
            self.add("/" + path.replace("_", "/"), body)

    def add(self, path, body, ok=True):
        url = "http://example.com" + path
        parts = parse(body) if b"<esi:" in body else (body,)
        self.pages[url] = Fetched(ok, parts, info=path)
        return self

    def __call__(self, url):
        self.calls.append(url)
        return self.pages.get(url, Fetched(False, (b"404 page that must never show",), info="missing " + url))


def page(body):
    return parse(body)


def test_each_include_is_replaced_by_its_fragment_and_infos_come_in_order():
    fetch = Fragments().add("/a/b/frag", b"[frag]").add("/top", b"[top]").add("/a/up?x=1", b"[up]")
    body, infos = assemble(page(b'<p><esi:include src="frag"/>|<esi:include src="/top"/>|'
                                b'<esi:include src="../up?x=1"/></p>'), PAGE, fetch)
    assert body == b"<p>[frag]|[top]|[up]</p>"
    assert fetch.calls == ["http://example.com/a/b/frag", "http://example.com/top", "http://example.com/a/up?x=1"]
    assert infos == ["/a/b/frag", "/top", "/a/up?x=1"]


@pytest.mark.parametrize("src", ["//other.host/x", "http://other.host/x", "https://example.com/x"])
def test_another_host_is_never_fetched_and_fails_the_include(src):
    fetch = Fragments()
    tag = f'<esi:include src="{src}"/>'.encode()
    with pytest.raises(FragmentFailed) as raised:
        assemble(page(b"a" + tag + b"b"), PAGE, fetch)
    assert raised.value.failures == ((src, Failure.OTHER_HOST),)
    assert fetch.calls == []
    tag = f'<esi:include src="{src}" onerror="continue"/>'.encode()
    assert assemble(page(b"a" + tag + b"b"), PAGE, fetch) == (b"ab", [])
    assert fetch.calls == []


def test_alt_is_fetched_when_src_fails():
    fetch = Fragments().add("/broken", b"oops", ok=False).add("/fallback", b"[alt]")
    body, infos = assemble(page(b'a<esi:include src="/broken" alt="/fallback"/>b'), PAGE, fetch)
    assert body == b"a[alt]b"
    assert fetch.calls == ["http://example.com/broken", "http://example.com/fallback"]
    assert infos == ["/broken", "/fallback"]


def test_alt_is_fetched_when_src_is_on_another_host():
    fetch = Fragments().add("/fallback", b"[alt]")
    assert assemble(page(b'<esi:include src="http://cdn.example.net/x" alt="/fallback"/>'),
                    PAGE, fetch) == (b"[alt]", ["/fallback"])


def test_onerror_continue_contributes_nothing_when_src_and_alt_fail():
    fetch = Fragments().add("/broken", b"oops", ok=False)
    body, infos = assemble(page(b'a<esi:include src="/broken" alt="/missing" onerror="continue"/>b'),
                           PAGE, fetch)
    assert body == b"ab"
    assert infos == ["/broken", "missing http://example.com/missing"]


def test_a_failure_without_alt_or_onerror_raises_fragment_failed_with_what_was_tried():
    fetch = Fragments().add("/ok", b"[ok]").add("/broken", b"oops", ok=False)
    with pytest.raises(FragmentFailed) as raised:
        assemble(page(b'<esi:include src="/ok"/><esi:include src="/broken" alt="/missing"/>'), PAGE, fetch)
    failed = raised.value
    assert failed.include == Include("/broken", "/missing")
    assert failed.failures == (("http://example.com/broken", Failure.FETCH),
                               ("http://example.com/missing", Failure.FETCH))
    assert failed.infos == ["/ok", "/broken", "missing http://example.com/missing"]
    assert "/broken" in str(failed) and "onerror" in str(failed)


def test_nested_includes_are_assembled_relative_to_the_fragment():
    fetch = (Fragments()
             .add("/frags/outer", b'(outer <esi:include src="inner"/> <esi:include src="/abs"/>)')
             .add("/frags/inner", b'(inner <esi:include src="../leaf?x=1"/>)')
             .add("/leaf?x=1", b"leaf").add("/abs", b"abs"))
    body, infos = assemble(page(b'[<esi:include src="/frags/outer"/>]'), PAGE, fetch)
    assert body == b"[(outer (inner leaf) abs)]"
    assert infos == ["/frags/outer", "/frags/inner", "/leaf?x=1", "/abs"]  # depth first, in order


def chain_of(levels, onerror=b""):
    """/l1 includes /l2 ... includes /l<levels>, which is plain."""
    fetch = Fragments()
    for level in range(1, levels):
        fetch.add(f"/l{level}", b"%d(<esi:include src=\"/l%d\"%s/>)" % (level, level + 1, onerror))
    fetch.add(f"/l{levels}", b"%d" % levels)
    return fetch


def test_depth_limit_stops_fetching_past_max_depth():
    fetch = chain_of(6, onerror=b' onerror="continue"')
    body, infos = assemble(page(b'<esi:include src="/l1"/>'), PAGE, fetch, max_depth=3)
    assert body == b"1(2(3()))"  # /l4, a fourth level, is an error part: onerror="continue" drops it
    assert fetch.calls == ["http://example.com/l1", "http://example.com/l2", "http://example.com/l3"]
    assert infos == ["/l1", "/l2", "/l3"]
    assert assemble(page(b'<esi:include src="/l1"/>'), PAGE, chain_of(3), max_depth=3)[0] == b"1(2(3))"


def test_too_deep_without_onerror_fails_each_enclosing_include_up_to_the_page():
    fetch = chain_of(5)
    with pytest.raises(FragmentFailed) as raised:
        assemble(page(b'<esi:include src="/l1"/>'), PAGE, fetch, max_depth=2)
    assert raised.value.failures == (("http://example.com/l1", Failure.FRAGMENT),)
    assert raised.value.__cause__.failures == (("http://example.com/l2", Failure.FRAGMENT),)
    assert raised.value.__cause__.__cause__.failures == (("http://example.com/l3", Failure.TOO_DEEP),)
    assert fetch.calls == ["http://example.com/l1", "http://example.com/l2"]


def test_onerror_on_an_outer_include_shields_the_page_and_drops_the_partial_fragment():
    fetch = chain_of(5)
    body, infos = assemble(page(b'a<esi:include src="/l1" onerror="continue"/>b'), PAGE, fetch, max_depth=2)
    assert body == b"ab"  # nothing of /l1 or /l2 was kept
    assert infos == ["/l1", "/l2"]


def test_max_depth_zero_fetches_nothing():
    fetch = chain_of(2)
    assert assemble(page(b'a<esi:include src="/l1" onerror="continue"/>b'), PAGE, fetch, max_depth=0) \
        == (b"ab", [])
    assert fetch.calls == []
    with pytest.raises(ValueError):
        assemble((), PAGE, fetch, max_depth=-1)


def test_a_page_including_itself_is_an_error_part_not_a_fetch():
    fetch = Fragments()
    for src in ("page", "/a/b/page", "http://example.com/a/b/page", "/a/b/page#top"):
        tag = b'<esi:include src="%s"/>' % src.encode()
        with pytest.raises(FragmentFailed) as raised:
            assemble(page(b"x" + tag), PAGE, fetch)
        assert raised.value.failures == ((PAGE, Failure.LOOP),)
        tag = b'<esi:include src="%s" onerror="continue"/>' % src.encode()
        assert assemble(page(b"x" + tag + b"y"), PAGE, fetch) == (b"xy", [])
    assert fetch.calls == []


def test_a_loop_uses_alt_when_there_is_one():
    fetch = Fragments().add("/other", b"[other]")
    assert assemble(page(b'<esi:include src="page" alt="/other"/>'), PAGE, fetch) == (b"[other]", ["/other"])


def test_a_b_a_loop_ends_with_an_error_part():
    page_a = "http://example.com/a"
    fetch = Fragments().add("/b", b'(b <esi:include src="/a" onerror="continue"/>)')
    parts_a = page(b'[a <esi:include src="/b"/>]')
    assert assemble(parts_a, page_a, fetch) == (b"[a (b )]", ["/b"])
    assert fetch.calls == ["http://example.com/b"]

    fetch = Fragments().add("/b", b'(b <esi:include src="/a"/>)')
    with pytest.raises(FragmentFailed) as raised:
        assemble(parts_a, page_a, fetch)
    assert raised.value.__cause__.failures == (("http://example.com/a", Failure.LOOP),)
    assert fetch.calls == ["http://example.com/b"]


def test_b_c_b_loop_below_the_page_ends_too():
    fetch = (Fragments().add("/b", b'(b <esi:include src="/c"/>)')
             .add("/c", b'(c <esi:include src="/b" onerror="continue"/>)'))
    assert assemble(page(b'<esi:include src="/b"/>'), PAGE, fetch, max_depth=10)[0] == b"(b (c ))"
    assert fetch.calls == ["http://example.com/b", "http://example.com/c"]


def test_one_fragment_twice_side_by_side_is_not_a_loop():
    fetch = Fragments().add("/f", b"f")
    assert assemble(page(b'<esi:include src="/f"/><esi:include src="/f"/>'), PAGE, fetch)[0] == b"ff"


def test_assemble_never_interprets_literals_only_parse_does():
    tag = b'<esi:include src="/x"/>'
    fetch = Fragments()
    fetch.pages["http://example.com/plain"] = Fetched(True, (tag + b"<!--esi -->",), "plain")
    body, infos = assemble((b"<p>", Include("/plain"), b"</p>"), PAGE, fetch)
    assert body == b"<p>" + tag + b"<!--esi --></p>"
    assert fetch.calls == ["http://example.com/plain"]
    # Nor literals of the page itself (a plain comment kept its ESI as text).
    parts = from_bytes(to_bytes(parse(b"<!-- " + tag + b" -->")))
    assert assemble(parts, PAGE, fetch)[0] == b"<!-- " + tag + b" -->"
    assert fetch.calls == ["http://example.com/plain"]


def test_a_failed_fragments_body_is_never_shown():
    fetch = Fragments().add("/broken", b"stack trace", ok=False)
    assert assemble(page(b'a<esi:include src="/broken" onerror="continue"/>b'), PAGE, fetch)[0] == b"ab"


def test_exceptions_from_fetch_are_not_swallowed():
    def fetch(url):
        raise RuntimeError("a bug in the caller")

    with pytest.raises(RuntimeError):
        assemble(page(b'<esi:include src="/x" onerror="continue"/>'), PAGE, fetch)


def test_a_page_without_includes_is_joined_without_fetching():
    def fetch(url):
        raise AssertionError("no fetch")

    assert assemble((b"just text",), PAGE, fetch) == (b"just text", [])
    assert assemble((), PAGE, fetch) == (b"", [])


def test_stored_then_assembled_end_to_end():
    stored = to_bytes(parse(b'<html><esi:remove>no ESI here</esi:remove><!--esi <esi:include '
                            b'src="/user" alt="/guest" onerror="continue"/> --></html>'))
    fetch = Fragments().add("/user", b"", ok=False).add("/guest", b"Hello, guest")
    assert assemble(from_bytes(stored), PAGE, fetch) == (b"<html> Hello, guest </html>", ["/user", "/guest"])
