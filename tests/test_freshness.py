"""The freshness policy (:mod:`pagecache.freshness`) on its own: how
``Cache-Control`` and ``Surrogate-Control`` are parsed, and what
:meth:`Policy.decide` makes of a response: whether it is stored, when it was
generated, how long it is fresh, and how long it may be served stale.

Every assertion is on exact values. A decision is judged by what the stored
page will do with it: a page generated at ``stored`` is fresh while
``now - stored < ttl`` (:meth:`pagecache.entry.Page.state`), so ``stored`` is
when the response was generated (its age counts from then) and ``ttl`` its
whole freshness lifetime, and ``stored + ttl`` is when it stops being fresh.
"""

from __future__ import annotations

import string
from email.utils import formatdate
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagecache.entry import MUST_REVALIDATE, VALIDATORS, Page
from pagecache.freshness import (INVALID, KEEP_FOR_REVALIDATION, MAX_AGE, Decision, Policy, Rule, directives,
                                 seconds, surrogate_directives)

NOW = 1_700_000_000.0           # when the response was received (a whole second: HTTP dates have no fraction)
STATUSES = (200, 203, 300, 301, 308)
NEGATIVE_TTL = 10.0
SAYS_NOTHING = Rule(0.0, 0.0, 0.0)          # "/ ttl=0": only what the response says
DEFAULTS = Rule(30.0, 120.0, 0.0)           # "/ ttl=30 grace=2m"
ETAG = ("ETag", '"v1"')
HTML = ("Content-Type", "text/html")


def http_date(when: float) -> str:
    return formatdate(when, usegmt=True)


def decide(*headers: Tuple[str, str], code: int = 200, rule: Rule = SAYS_NOTHING, requested: float = NOW,
           policy: Optional[Policy] = None) -> Decision:
    policy = policy or Policy(STATUSES, NEGATIVE_TTL)
    return policy.decide(code, [HTML, *headers], rule, requested, NOW)


def cc(value: str) -> Tuple[str, str]:
    return ("Cache-Control", value)


def sc(value: str) -> Tuple[str, str]:
    return ("Surrogate-Control", value)


def lifetimes(decision: Decision) -> Tuple[float, float, float, float, float]:
    """(stored, ttl, grace, stale, keep) of a decision to store."""
    assert decision.reason is None, f"not stored: {decision.reason}"
    return (decision.stored, decision.ttl, decision.grace, decision.stale, decision.keep)


def states(decision: Decision, *offsets: float) -> List[str]:
    """The state of the page stored from ``decision`` at NOW + each offset."""
    page = Page("200 OK", [], b"", decision.stored, decision.ttl, decision.grace, decision.stale,
                keep=decision.keep, flags=decision.flags)
    return [page.state(NOW + offset) for offset in offsets]


# == parsing ===================================================================

class TestDirectives:
    def test_names_are_lower_cased_values_kept_as_written(self):
        assert directives(["MAX-AGE=60, No-Store, Private=\"X-Foo\""]) == {
            "max-age": "60", "no-store": None, "private": "X-Foo"}

    def test_several_field_lines_are_one_list(self):
        assert directives(["public", "max-age=60", "s-maxage=30"]) == {
            "public": None, "max-age": "60", "s-maxage": "30"}

    def test_commas_inside_quoted_strings_do_not_split(self):
        assert directives(['no-cache="Set-Cookie, X-Token", max-age=60, private="a,b,c"']) == {
            "no-cache": "Set-Cookie, X-Token", "max-age": "60", "private": "a,b,c"}

    def test_quoted_pairs_are_unescaped(self):
        assert directives([r'private="a\"b\\c", max-age=5']) == {"private": 'a"b\\c', "max-age": "5"}

    def test_quoted_delta_seconds_are_accepted(self):
        found = directives(['max-age="60"'])
        assert found == {"max-age": "60"} and seconds(found["max-age"]) == 60.0

    def test_a_directive_repeated_with_one_value_is_that_value(self):
        assert directives(["max-age=60, max-age=60", "no-store, NO-STORE"]) == {"max-age": "60", "no-store": None}

    @pytest.mark.parametrize("values", [["max-age=60, max-age=30"], ["max-age=60", "max-age=30"],
                                        ["max-age=60, max-age"], ["no-cache, no-cache=\"X\""]])
    def test_a_directive_given_two_different_values_is_invalid(self, values):
        name = values[0].split("=")[0].split(",")[0]
        assert directives(values)[name] is INVALID

    @pytest.mark.parametrize("value", ["'3600'", "-1", "3600a", "+60", "60.0", "0x10", "1e3", ""])
    def test_values_that_are_not_delta_seconds(self, value):
        assert seconds(value) is None

    def test_invalid_max_age_values_parse_as_written(self):
        assert directives(["max-age='3600'"]) == {"max-age": "'3600'"}
        assert directives(["max-age=-1"]) == {"max-age": "-1"}
        assert directives(["max-age=3600a"]) == {"max-age": "3600a"}

    @pytest.mark.parametrize("text", ["max-age = 3600", "max-age =3600", "max-age= 3600"])
    def test_spaces_around_the_equals_sign_make_the_element_unreadable(self, text):
        assert directives([text]) == {}
        assert directives([text + ", public"]) == {"public": None}
        assert directives(["public, " + text]) == {"public": None}

    def test_an_unreadable_element_does_not_take_its_neighbours_along(self):
        assert directives(['foo=="bar", max-age=60, =x, no-store']) == {"max-age": "60", "no-store": None}

    def test_an_unterminated_quote_swallows_the_rest(self):
        # everything after an opening quote that never closes is inside it: nothing there counts
        assert directives(['public, private="X, max-age=60']) == {"public": None}

    def test_leading_zeros(self):
        assert seconds(directives(["max-age=003600"])["max-age"]) == 3600.0

    def test_values_over_two_to_the_31_are_capped(self):
        assert MAX_AGE == 2 ** 31
        assert seconds("99999999999999999999") == float(2 ** 31)
        assert seconds(str(2 ** 31 - 1)) == float(2 ** 31 - 1)
        assert lifetimes(decide(cc("max-age=99999999999999999999")))[1] == float(2 ** 31)


class TestSurrogateDirectives:
    def test_untargeted_directives_apply(self):
        assert surrogate_directives(["max-age=60, no-store"], "pagecache") == {"max-age": "60", "no-store": None}

    def test_directives_targeted_at_pagecache_apply(self):
        assert surrogate_directives(["max-age=60;pagecache"], "pagecache") == {"max-age": "60"}
        assert surrogate_directives(["max-age=60 ; PageCache"], "pagecache") == {"max-age": "60"}

    def test_directives_targeted_at_another_device_do_not(self):
        assert surrogate_directives(["max-age=60;other"], "pagecache") == {}
        assert surrogate_directives(["no-store;cdn, max-age=5"], "pagecache") == {"max-age": "5"}

    @pytest.mark.parametrize("values", [["max-age=30, max-age=60;pagecache"], ["max-age=60;pagecache, max-age=30"],
                                        ["max-age=60;pagecache", "max-age=30"]])
    def test_the_targeted_directive_wins_over_the_untargeted_one(self, values):
        assert surrogate_directives(values, "pagecache") == {"max-age": "60"}

    def test_the_target_is_the_policys_name(self):
        policy = Policy(STATUSES, NEGATIVE_TTL, target="Edge")
        decision = policy.decide(200, [sc("max-age=60;edge, max-age=5"), cc("max-age=1")], SAYS_NOTHING, NOW, NOW)
        assert lifetimes(decision)[:2] == (NOW, 60.0)

    def test_two_different_targeted_values_are_invalid(self):
        assert surrogate_directives(["max-age=60;pagecache, max-age=30;pagecache, max-age=10"],
                                    "pagecache")["max-age"] is INVALID


# -- properties ----------------------------------------------------------------

TCHAR = "!#$%&'*+.^_`|~" + string.digits + string.ascii_letters + "-"
tokens = st.text(alphabet=TCHAR, min_size=1, max_size=12)
names = st.text(alphabet="!#$%&'*+.^_`|~" + string.digits + string.ascii_lowercase + "-", min_size=1, max_size=12)
quoted_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
value_forms = st.one_of(
    st.just((None, None)),                                           # a bare name
    tokens.map(lambda token: (token, token)),                        # name=token
    quoted_text.map(lambda text: (text, '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')),
)
separators = st.sampled_from([",", ", ", " ,", " , ", ",\t", ",,", ", ,"])


@st.composite
def directive_lists(draw) -> Tuple[Dict[str, Optional[str]], List[str]]:
    """Distinct well-formed directives, and their text split over one or more field lines."""
    chosen = draw(st.dictionaries(names, value_forms, min_size=1, max_size=8))
    elements = [name if written is None else f"{name}={written}" for name, (_, written) in chosen.items()]
    lines: List[str] = []
    for element in elements:
        if lines and draw(st.booleans()):
            lines[-1] += draw(separators) + element
        else:
            lines.append(element)
    return {name: value for name, (value, _) in chosen.items()}, lines


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=3), st.text(max_size=12))
def test_parsing_any_text_never_raises(values, target):
    for parsed in (directives(values), surrogate_directives(values, target.lower())):
        for name, value in parsed.items():
            assert name == name.lower() and name
            assert value is None or value is INVALID or isinstance(value, str)
            seconds(value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=TCHAR + ' ",;=\\\t', max_size=60), max_size=3))
def test_parsing_header_like_text_never_raises(values):
    policy = Policy(STATUSES, NEGATIVE_TTL)
    directives(values)
    surrogate_directives(values, "pagecache")
    headers = [("Cache-Control", value) for value in values] + [("Surrogate-Control", value) for value in values]
    policy.decide(200, headers, DEFAULTS, NOW, NOW)


@settings(max_examples=300, deadline=None)
@given(directive_lists())
def test_well_formed_directives_parse_back_to_exactly_themselves(case):
    expected, lines = case
    assert directives(lines) == expected


@settings(max_examples=200, deadline=None)
@given(directive_lists())
def test_well_formed_targeted_directives_parse_back_to_exactly_themselves(case):
    expected, _ = case
    elements = [(name if value is None else f"{name}={_written(value)}") + ";pagecache"
                for name, value in expected.items()]
    assert surrogate_directives([", ".join(elements)], "pagecache") == expected
    assert surrogate_directives([", ".join(elements)], "other") == {}


def _written(value: str) -> str:
    if value and all(char in TCHAR for char in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# == decisions =================================================================

class TestWhereTheLifetimeComesFrom:
    """Surrogate-Control max-age, then s-maxage, then max-age, then Expires - Date."""

    EVERY_SOURCE = (sc("max-age=100"), cc("s-maxage=50, max-age=20"),
                    ("Date", http_date(NOW)), ("Expires", http_date(NOW + 10)))

    def test_surrogate_control_first(self):
        assert lifetimes(decide(*self.EVERY_SOURCE))[:2] == (NOW, 100.0)

    def test_then_s_maxage(self):
        assert lifetimes(decide(*self.EVERY_SOURCE[1:]))[:2] == (NOW, 50.0)

    def test_then_max_age(self):
        assert lifetimes(decide(cc("max-age=20"), *self.EVERY_SOURCE[2:]))[:2] == (NOW, 20.0)

    def test_then_expires_minus_date(self):
        assert lifetimes(decide(*self.EVERY_SOURCE[2:]))[:2] == (NOW, 10.0)

    def test_expires_without_date_counts_from_arrival(self):
        assert lifetimes(decide(("Expires", http_date(NOW + 90))))[:2] == (NOW, 90.0)

    def test_expires_counts_from_date_not_from_arrival(self):
        # Generated 30 s ago to live 100 s: 70 s left.
        decision = decide(("Date", http_date(NOW - 30)), ("Expires", http_date(NOW + 70)))
        assert lifetimes(decision)[:2] == (NOW - 30, 100.0)
        assert states(decision, 69.9, 70) == ["fresh", "expired"]

    def test_surrogate_control_grace(self):
        assert lifetimes(decide(sc("max-age=60+30"), cc("stale-while-revalidate=5"))) == (NOW, 60.0, 30.0, 0.0, 0.0)

    def test_the_response_gave_its_own_lifetime(self):
        assert decide(cc("max-age=60")).explicit is True
        assert decide(rule=DEFAULTS).explicit is False

    @pytest.mark.parametrize("value", ["max-age=abc", "max-age=1.5", "max-age=60, max-age=61"])
    def test_an_unreadable_surrogate_max_age_is_stale_on_arrival(self, value):
        assert decide(sc(value), cc("max-age=600")).reason is not None
        decision = decide(sc(value), cc("max-age=600"), ETAG)
        assert lifetimes(decision) == (NOW, 0.0, 0.0, 0.0, KEEP_FOR_REVALIDATION)

    @pytest.mark.parametrize("value", ["max-age='3600'", "max-age=-1", "max-age=3600a", "max-age=60, max-age=30",
                                       "s-maxage=x, max-age=600"])
    def test_an_invalid_max_age_is_stale_on_arrival_never_fresher(self, value):
        assert decide(cc(value)).reason is not None
        assert lifetimes(decide(cc(value), ETAG, rule=DEFAULTS))[:2] == (NOW, 0.0)
        # the rule's grace still lets it be served stale while it is revalidated (not after s-maxage)
        if value.startswith("s-maxage"):
            assert decide(cc(value), rule=DEFAULTS).reason is not None
        else:
            assert lifetimes(decide(cc(value), rule=DEFAULTS)) == (NOW, 0.0, DEFAULTS.grace, 0.0, 0.0)

    def test_a_quoted_max_age(self):
        assert lifetimes(decide(cc('max-age="60"')))[:2] == (NOW, 60.0)

    def test_max_age_with_leading_zeros(self):
        assert lifetimes(decide(cc("max-age=003600")))[:2] == (NOW, 3600.0)


class TestAge:
    """The response's age on arrival counts against its lifetime (RFC 9111 4.2.3)."""

    def test_age_30_of_max_age_60_is_fresh_for_30_more_seconds(self):
        decision = decide(cc("max-age=60"), ("Age", "30"))
        assert states(decision, 0, 29.9, 30) == ["fresh", "fresh", "expired"]
        assert lifetimes(decision) == (NOW - 30, 60.0, 0.0, 0.0, 0.0)

    def test_a_date_20_seconds_ago_leaves_40_of_60(self):
        decision = decide(cc("max-age=60"), ("Date", http_date(NOW - 20)))
        assert states(decision, 39.9, 40) == ["fresh", "expired"]
        assert lifetimes(decision)[:2] == (NOW - 20, 60.0)

    def test_the_larger_of_age_and_date_counts(self):
        decision = decide(cc("max-age=60"), ("Date", http_date(NOW - 10)), ("Age", "30"))
        assert lifetimes(decision)[:2] == (NOW - 30, 60.0)
        decision = decide(cc("max-age=60"), ("Date", http_date(NOW - 40)), ("Age", "30"))
        assert lifetimes(decision)[:2] == (NOW - 40, 60.0)

    def test_the_response_delay_is_added_to_age(self):
        # asked 5 s before it arrived, 30 s old when it left the server: 35 s old
        decision = decide(cc("max-age=60"), ("Age", "30"), requested=NOW - 5)
        assert lifetimes(decision)[:2] == (NOW - 35, 60.0)
        assert states(decision, 24.9, 25) == ["fresh", "expired"]

    def test_without_age_the_response_counts_as_generated_when_asked_for(self):
        decision = decide(cc("max-age=60"), requested=NOW - 5)
        assert lifetimes(decision)[:2] == (NOW - 5, 60.0)

    def test_a_date_in_the_future_does_not_make_it_younger(self):
        assert lifetimes(decide(cc("max-age=60"), ("Date", http_date(NOW + 300))))[:2] == (NOW, 60.0)

    def test_an_age_beyond_the_lifetime_is_stale_on_arrival(self):
        assert decide(cc("max-age=60"), ("Age", "90")).reason is not None

    @pytest.mark.parametrize("ages", [["abc"], ["-1"], ["30, 40"], ["30", "40"], ["30", "30"], ["1.5"], [""]])
    def test_an_age_that_is_not_one_number_is_stale_on_arrival(self, ages):
        headers = [cc("max-age=60")] + [("Age", age) for age in ages]
        assert decide(*headers).reason is not None
        decision = decide(*headers, ETAG)
        assert lifetimes(decision) == (NOW, 0.0, 0.0, 0.0, KEEP_FOR_REVALIDATION)
        # stale, so only the grace the response allows is left
        decision = decide(*headers[:1], cc("stale-while-revalidate=60"), *headers[1:])
        assert lifetimes(decision) == (NOW, 0.0, 60.0, 0.0, 0.0)
        assert states(decision, 0) == ["grace"]

    def test_age_with_spaces_around_the_number_is_read(self):
        assert lifetimes(decide(cc("max-age=60"), ("Age", " 30 ")))[:2] == (NOW - 30, 60.0)


class TestExpires:
    def test_expires_in_the_past_is_stale(self):
        headers = (("Date", http_date(NOW)), ("Expires", http_date(NOW - 100)))
        assert decide(*headers).reason is not None
        assert lifetimes(decide(*headers, ETAG))[:2] == (NOW, 0.0)
        assert lifetimes(decide(*headers, rule=DEFAULTS)) == (NOW, 0.0, DEFAULTS.grace, 0.0, 0.0)

    @pytest.mark.parametrize("value", ["0", "-1", "soon", "", "Thu, 99 Foo 2024 00:00:00 GMT"])
    def test_an_invalid_expires_is_in_the_past(self, value):
        assert decide(("Expires", value)).reason is not None
        assert lifetimes(decide(("Expires", value), ETAG, rule=DEFAULTS))[:2] == (NOW, 0.0)
        assert lifetimes(decide(("Expires", value), rule=DEFAULTS)) == (NOW, 0.0, DEFAULTS.grace, 0.0, 0.0)

    def test_max_age_wins_over_an_invalid_expires(self):
        assert lifetimes(decide(cc("max-age=60"), ("Expires", "0")))[:2] == (NOW, 60.0)


class TestRuleDefaults:
    def test_no_lifetime_and_a_rule_ttl_of_0_is_not_stored(self):
        decision = decide(rule=SAYS_NOTHING)
        assert decision.reason == "no lifetime: the response gives none and the rule gives none"

    def test_a_response_that_says_nothing_gets_the_rules_lifetimes(self):
        decision = decide(rule=Rule(30.0, 120.0, 600.0))
        assert lifetimes(decision) == (NOW, 30.0, 120.0, 600.0, 0.0)
        assert decision.explicit is False

    def test_a_response_with_only_stale_directives_gets_the_rules_ttl_and_its_own_windows(self):
        decision = decide(cc("stale-while-revalidate=5, stale-if-error=7"), rule=Rule(30.0, 120.0, 600.0))
        assert lifetimes(decision) == (NOW, 30.0, 5.0, 7.0, 0.0)

    def test_a_response_that_says_nothing_gets_the_rules_lifetimes_with_validators_kept_longer(self):
        assert lifetimes(decide(ETAG, rule=DEFAULTS)) == (NOW, 30.0, 120.0, 0.0, KEEP_FOR_REVALIDATION)
        assert decide(ETAG, rule=DEFAULTS).flags == VALIDATORS

    def test_the_rules_grace_and_error_window_complete_a_response_lifetime(self):
        assert lifetimes(decide(cc("max-age=5"), rule=Rule(30.0, 120.0, 600.0))) == (NOW, 5.0, 120.0, 600.0, 0.0)


class TestForce:
    RESPONSE = (cc("max-age=5, stale-while-revalidate=1000, stale-if-error=1000, must-revalidate"),
                ("Age", "3"))

    def test_force_gives_the_rules_lifetimes(self):
        decision = decide(*self.RESPONSE, rule=Rule(30.0, 120.0, 60.0, force=True))
        assert lifetimes(decision) == (NOW, 30.0, 120.0, 60.0, 0.0)
        assert MUST_REVALIDATE not in decision.flags

    def test_honour_false_gives_the_rules_lifetimes(self):
        decision = decide(*self.RESPONSE, rule=Rule(30.0, 120.0, 60.0), policy=Policy(STATUSES, 10.0, honour=False))
        assert lifetimes(decision) == (NOW, 30.0, 120.0, 60.0, 0.0)

    def test_force_still_never_stores_private_no_store_or_no_cache(self):
        for value in ("private, max-age=60", "no-store", "no-cache"):
            assert decide(cc(value), rule=Rule(30.0, 120.0, 0.0, force=True)).reason is not None, value

    def test_force_caps_an_error_status_too(self):
        policy = Policy({200, 404}, NEGATIVE_TTL, honour=False)
        assert lifetimes(decide(code=404, rule=Rule(30.0, 120.0, 60.0), policy=policy)) == (NOW, 10.0, 0.0, 0.0, 0.0)

    def test_force_with_a_rule_ttl_of_0(self):
        assert decide(cc("max-age=60"), rule=Rule(0.0, 0.0, 0.0, force=True)).reason == "the rule gives no lifetime"


class TestStaleWindows:
    def test_stale_while_revalidate_and_stale_if_error(self):
        decision = decide(cc("max-age=10, stale-while-revalidate=30, stale-if-error=600"), rule=Rule(0, 5, 5))
        assert lifetimes(decision) == (NOW, 10.0, 30.0, 600.0, 0.0)
        assert decision.flags == ""
        assert states(decision, 9.9, 10, 39.9, 40, 639.9, 640) == [
            "fresh", "grace", "grace", "error-only", "error-only", "expired"]

    def test_invalid_stale_directives_leave_the_rules_windows(self):
        decision = decide(cc("max-age=10, stale-while-revalidate=x, stale-if-error=-1"), rule=Rule(0, 5, 7))
        assert lifetimes(decision) == (NOW, 10.0, 5.0, 7.0, 0.0)

    def test_stale_on_arrival_with_stale_while_revalidate_is_kept_for_its_grace(self):
        decision = decide(cc("max-age=0, stale-while-revalidate=30"))
        assert lifetimes(decision) == (NOW, 0.0, 30.0, 0.0, 0.0)

    @pytest.mark.parametrize("value", ["must-revalidate", "proxy-revalidate", "s-maxage=10", "no-cache"])
    def test_directives_that_forbid_serving_stale(self, value):
        decision = decide(cc(f"max-age=10, {value}, stale-while-revalidate=30, stale-if-error=600"), ETAG,
                          rule=Rule(0, 100, 100))
        stored, ttl, grace, stale, keep = lifetimes(decision)
        assert (stored, grace, stale, keep) == (NOW, 0.0, 0.0, KEEP_FOR_REVALIDATION)
        assert ttl == (0.0 if value == "no-cache" else 10.0)
        assert sorted(decision.flags) == sorted(MUST_REVALIDATE + VALIDATORS)
        assert states(decision, 10, 700) == ["expired", "expired"]

    @pytest.mark.parametrize("value", ["must-revalidate", "proxy-revalidate", "s-maxage=10"])
    def test_forbidden_stale_without_a_validator_stores_only_the_fresh_page(self, value):
        decision = decide(cc(f"max-age=10, {value}, stale-while-revalidate=30"), rule=Rule(0, 100, 100))
        assert lifetimes(decision) == (NOW, 10.0, 0.0, 0.0, 0.0)
        assert decision.flags == MUST_REVALIDATE


class TestRevalidateOnEveryUse:
    def test_no_cache_with_an_etag_is_stored_to_be_revalidated(self):
        decision = decide(cc("no-cache"), ETAG, rule=DEFAULTS)
        assert lifetimes(decision) == (NOW, 0.0, 0.0, 0.0, KEEP_FOR_REVALIDATION)
        assert sorted(decision.flags) == sorted(MUST_REVALIDATE + VALIDATORS)

    def test_no_cache_with_last_modified_is_stored_to_be_revalidated(self):
        decision = decide(cc("no-cache, max-age=60"), ("Last-Modified", http_date(NOW - 3600)))
        assert lifetimes(decision) == (NOW, 0.0, 0.0, 0.0, KEEP_FOR_REVALIDATION)

    def test_max_age_0_with_an_etag_is_stored_to_be_revalidated(self):
        decision = decide(cc("max-age=0"), ETAG)
        assert lifetimes(decision) == (NOW, 0.0, 0.0, 0.0, KEEP_FOR_REVALIDATION)
        assert decision.flags == VALIDATORS

    @pytest.mark.parametrize("value", ["no-cache", "no-cache, max-age=60", "public, NO-CACHE"])
    def test_without_a_validator_no_cache_is_not_stored(self, value):
        assert decide(cc(value), rule=DEFAULTS).reason is not None

    def test_without_a_validator_max_age_0_is_stored_only_for_a_grace_period(self):
        assert decide(cc("max-age=0")).reason is not None
        assert lifetimes(decide(cc("max-age=0"), rule=DEFAULTS)) == (NOW, 0.0, DEFAULTS.grace, 0.0, 0.0)


class TestNeverStored:
    @pytest.mark.parametrize("value", ["private", "PRIVATE, max-age=60", "no-store", "max-age=60, no-store",
                                       "private, private=\"X\"", "s-maxage=60, no-store"])
    def test_private_and_no_store(self, value):
        assert decide(cc(value), ETAG, rule=Rule(30, 120, 600)).reason is not None

    def test_surrogate_control_no_store(self):
        assert decide(sc("no-store"), cc("public, max-age=60"), rule=DEFAULTS).reason == \
            "Surrogate-Control: no-store"
        assert decide(sc("no-store;pagecache"), cc("max-age=60")).reason == "Surrogate-Control: no-store"
        assert lifetimes(decide(sc("no-store;other"), cc("max-age=60")))[:2] == (NOW, 60.0)

    def test_surrogate_control_max_age_overrides_cache_control_no_store(self):
        assert lifetimes(decide(sc("max-age=60"), cc("no-store"))) == (NOW, 60.0, 0.0, 0.0, 0.0)
        assert lifetimes(decide(sc("max-age=60;pagecache"), cc("no-store")))[:2] == (NOW, 60.0)
        assert decide(sc("max-age=60;other"), cc("no-store")).reason == "Cache-Control: no-store"

    def test_surrogate_control_never_overrides_private(self):
        assert decide(sc("max-age=60"), cc("private")).reason == "Cache-Control: private"
        assert decide(sc("max-age=60;pagecache"), cc("private, max-age=60")).reason == "Cache-Control: private"

    def test_qualified_private_and_no_cache_store_the_page_without_those_headers(self):
        decision = decide(cc('private="X-Secret", max-age=60'), ("X-Secret", "alice"))
        assert lifetimes(decision)[:2] == (NOW, 60.0)
        assert decision.dropped == frozenset({"x-secret"})
        decision = decide(cc('no-cache="Set-Cookie, X-Token", max-age=60, stale-while-revalidate=9'))
        assert lifetimes(decision) == (NOW, 60.0, 9.0, 0.0, 0.0)
        assert decision.dropped == frozenset({"set-cookie", "x-token"})
        assert decision.flags == ""  # a qualified no-cache does not forbid serving it stale

    def test_a_private_given_two_values_is_not_stored(self):
        assert decide(cc('private="A", private="B", max-age=60')).reason == "Cache-Control: private"


class TestStatuses:
    def test_200_without_a_lifetime_not_in_cache_statuses(self):
        policy = Policy({203, 404}, NEGATIVE_TTL)
        assert decide(rule=DEFAULTS, policy=policy).reason == "status 200 without a lifetime of its own"
        assert lifetimes(decide(cc("max-age=60"), rule=DEFAULTS, policy=policy))[:2] == (NOW, 60.0)

    def test_302_with_max_age_is_stored(self):
        decision = decide(cc("max-age=60, stale-while-revalidate=30"), ("Location", "/x"), code=302)
        assert lifetimes(decision) == (NOW, 60.0, 30.0, 0.0, 0.0)

    def test_302_without_a_lifetime_is_not(self):
        assert decide(("Location", "/x"), code=302, rule=DEFAULTS).reason == \
            "status 302 without a lifetime of its own"

    @pytest.mark.parametrize("code", [404, 410, 500, 503])
    def test_errors_with_their_own_max_age_are_capped_at_negative_ttl(self, code):
        decision = decide(cc("max-age=600, stale-while-revalidate=60, stale-if-error=60"), code=code,
                          rule=Rule(0, 30, 30))
        assert lifetimes(decision) == (NOW, NEGATIVE_TTL, 0.0, 0.0, 0.0)
        assert lifetimes(decide(cc("max-age=5"), code=code))[:2] == (NOW, 5.0)

    def test_a_listed_error_status_that_says_nothing_gets_at_most_negative_ttl(self):
        policy = Policy({200, 404}, NEGATIVE_TTL)
        assert lifetimes(decide(code=404, rule=Rule(60, 60, 60), policy=policy)) == (NOW, NEGATIVE_TTL, 0.0, 0.0, 0.0)

    @pytest.mark.parametrize("code", [206, 304])
    def test_206_and_304_never(self, code):
        policy = Policy({200, 206, 304}, NEGATIVE_TTL)
        assert decide(cc("max-age=60"), ETAG, code=code, rule=DEFAULTS, policy=policy).reason == f"status {code}"
        assert decide(cc("max-age=60"), code=code, rule=Rule(60, 60, 0, force=True), policy=policy).reason \
            == f"status {code}"

    def test_must_understand_with_an_unknown_status_is_not_stored(self):
        assert decide(cc("must-understand, no-store, max-age=60"), code=599).reason == \
            "Cache-Control: must-understand, and status 599 is not understood"
        assert decide(cc("must-understand, max-age=60"), code=599).reason is not None

    def test_must_understand_with_a_known_status_overrides_no_store(self):
        assert lifetimes(decide(cc("must-understand, no-store, max-age=60"))) == (NOW, 60.0, 0.0, 0.0, 0.0)

    def test_no_store_alone_with_a_known_status(self):
        assert decide(cc("no-store, max-age=60")).reason == "Cache-Control: no-store"
