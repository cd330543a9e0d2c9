"""The stored form: exact round trips, and anything else read as a miss."""

import pickle

import pytest

from pagecache.entry import ERROR_ONLY, EXPIRED, FRESH, GRACE, Page, Pass, VaryMarker, parse


def page(**changes):
    fields = dict(status="200 OK", headers=[("Content-Type", "text/html"), ("X-A", "b: c")],
                  body=b"<p>\x00\n\n binary \xff</p>", stored=1700000000.123456, ttl=30.0,
                  grace=120.0, stale=0.0)
    fields.update(changes)
    return Page(**fields)


@pytest.mark.parametrize("entry", [
    page(),
    page(body=b"", headers=[]),
    page(status="404 Not Found", ttl=0.25, grace=0.0, stale=3600.0),
    page(status="200 Ça va", headers=[("X-Latin", "caf\xe9")]),
    VaryMarker(("accept-encoding", "accept-language"), "0123abcd", 1700000000.5, 151.0, 1700000001.0),
    Pass(1700000000.0, "Cache-Control: private"),
])
def test_round_trip_is_exact(entry):
    assert parse(entry.to_bytes()) == entry


def test_states_follow_ttl_grace_and_stale_if_error():
    p = page(stored=1000.0, ttl=30, grace=120, stale=60)
    assert p.state(1000.0) is FRESH and p.state(1029.9) is FRESH
    assert p.state(1030.0) is GRACE and p.state(1149.9) is GRACE
    assert p.state(1150.0) is ERROR_ONLY and p.state(1209.9) is ERROR_ONLY
    assert p.state(1210.0) is EXPIRED


def test_age_header_is_whole_seconds_since_stored_whatever_order_requests_come_in():
    p = page(stored=1000.25)
    ages = [(now, p.age_header(now)[1]) for now in
            (1000.5, 1001.25, 1002.2, 1001.3, 1001.24, 999.0, 1000.25, 1003.0, 4600.3)]
    assert ages == [(1000.5, "0"), (1001.25, "1"), (1002.2, "1"), (1001.3, "1"), (1001.24, "0"),
                    (999.0, "0"), (1000.25, "0"), (1003.0, "2"), (4600.3, "3600")]
    assert p == page(stored=1000.25) and parse(p.to_bytes()) == p  # not part of the value


def test_soft_expiry_ends_the_ttl_and_keeps_the_grace():
    p = page(stored=1000.0, ttl=30, grace=120).expired_at(1010.0)
    assert p.state(1010.0) is GRACE and p.state(1129.9) is GRACE and p.state(1130.0) is EXPIRED


@pytest.mark.parametrize("value", [
    None, 0, 42, "text", b"", b"PC1", b"random bytes \x00\xff",
    pickle.dumps({"status": "200 OK"}),
    b"PC2 P 1 2 3 4 0 1 - - 5 0 6 5\n200 OKshort",        # lengths say 6 + 5, and that is what follows
    b"PC2 P 1 2 3 4 0 0 - - 5 0 6 99\n200 OKbody",        # truncated
    b"PC2 P nan 2 3 4 0 0 - - 4 0 6 4\n200 OKbody",       # not a number we accept
    b"PC2 P 1 2 3 4 0 0 - - 4 0 2 4\nOKbody",             # no status code
    b"PC2 P 1 2 3 4 0 0 - - 4 0 17 4\n200 OK\nBad Headerbody",  # header without ': '
    b"PC2 P 1 2 3 4 0 0 - - 4 0 12 4\n200 OK\nX\r: ybody",      # invalid header name
    b"PC2 P 1 2 3 4 0 0 x - 4 0 6 4\n200 OKbody",         # unknown flag
    b"PC2 P 1 2 3 4 0 0 - zip 4 0 6 4\n200 OKbody",       # unknown encoding
    b"PC2 P 1 2 3 4 0 0 - - 4 3 6 4\na\x00b200 OKbody",   # a tag that is not printable ASCII
    b"PC2 P 1 2 3 4 0 0 - - 4 0 25 4\n200 OK\nContent-Length: 9body",  # a length that is not the body's
    b"PC1 P 1 2 3 4 5\n200 OK\n\nshort",                # the format of 0.1
    b"PC2 Q 1\n",                                     # unknown kind
    b"PC0 P 1 2 3 4 4\n200 OK\n\nbody",               # another format version
    b"PC2 V 1 2 3 NOT-HEX\naccept",
    b"PC2 V 1 2 3 abcd\nbad:name",
])
def test_anything_else_is_a_miss(value):
    parsed = parse(value)
    if value == b"PC2 P 1 2 3 4 0 1 - - 5 0 6 5\n200 OKshort":
        assert parsed == Page("200 OK", [], b"short", 1.0, 2.0, 3.0, 4.0)
    else:
        assert parsed is None


def test_every_truncation_of_a_page_is_a_miss():
    data = page().to_bytes()
    for cut in range(len(data)):
        assert parse(data[:cut]) is None, cut


def test_bytearray_and_memoryview_are_read_like_bytes():
    data = page().to_bytes()
    assert parse(bytearray(data)) == page() == parse(memoryview(data))
