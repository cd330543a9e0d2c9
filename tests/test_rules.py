"""cached_urls: the seed's tuples, the text table, durations, errors naming the line."""

import pytest

from pagecache.rules import RuleError, parse_rules


def test_seed_tuples_are_prefix_rules_in_seconds():
    rules = parse_rules((("/foo", 30, 120), ("/bar", 3600, 60)))
    assert [(r.pattern, r.ttl, r.grace) for r in rules] == [("/foo", 30, 120), ("/bar", 3600, 60)]
    assert rules.match("/foo/x", "").pattern == "/foo"
    assert rules.match("/bar", "a=1").pattern == "/bar"
    assert rules.match("/baz", "") is None


def test_text_table_with_units_comments_and_blank_lines():
    rules = parse_rules("""
        # news pages change often
        /news/        30   2m

        ~^/item/\\d+$  5m   1h   # trailing comment
        /             1d   90s
    """)
    assert [(r.pattern, r.ttl, r.grace) for r in rules] == [
        ("/news/", 30, 120), (r"~^/item/\d+$", 300, 3600), ("/", 86400, 90)]


@pytest.mark.parametrize("path, query, expected", [
    ("/news/today", "", "/news/"),
    ("/item/42", "", r"~^/item/\d+$"),
    ("/item/42x", "", "/"),
    ("/item/42", "page=2", r"~^/item/\d+$"),  # the regex is searched in the path only
    ("/anything", "", "/"),
])
def test_first_match_wins(path, query, expected):
    rules = parse_rules("/news/ 30 60\n~^/item/\\d+$ 30 60\n/ 10 10")
    assert rules.match(path, query).pattern == expected


def test_regex_sees_the_query_string_only_when_the_rule_says_so():
    rules = parse_rules("~[?&]page=\\d+ 30 60 query")
    assert rules.match("/list", "page=3") is not None
    assert rules.match("/list", "") is None
    path_only = parse_rules("~\\.css$ 1h 1h")
    assert path_only.match("/site.css", "") is not None
    assert path_only.match("/account", "x.css") is None   # web cache deception: /account?x.css


def test_duration_units_and_fractions():
    rules = parse_rules("/a 250ms 1.5s\n/b 2h 1d\n/c 0 0")
    assert [(r.ttl, r.grace) for r in rules] == [(0.25, 1.5), (7200, 86400), (0, 0)]


@pytest.mark.parametrize("table, line, words", [
    ("/a 30 60\n/b 30", 2, "expected '<pattern> <ttl> <grace>'"),
    ("/a 30 60\n\n/b thirty 60", 3, "'thirty' is not a duration"),
    ("foo 30 60", 1, "pattern must be a path"),
    ("/a 30 60\n~([ 30 60", 2, "bad regular expression"),
    ("/a -5 60", 1, "is not a duration"),
    ("/a 30 60 extra", 1, "expected '<pattern> <ttl> <grace>'"),
])
def test_malformed_line_is_an_error_naming_the_line(table, line, words):
    with pytest.raises(RuleError) as error:
        parse_rules(table)
    assert f"cached_urls line {line}:" in str(error.value)
    assert words in str(error.value)


def test_malformed_tuple_is_an_error_naming_the_rule():
    with pytest.raises(RuleError, match="cached_urls rule 2"):
        parse_rules([("/a", 1, 2), ("/b", 1)])
    with pytest.raises(RuleError, match="cached_urls rule 1.*not a duration"):
        parse_rules([("/a", "soon", 2)])


def test_empty_table_matches_nothing():
    assert parse_rules("\n  # nothing\n").match("/", "") is None
