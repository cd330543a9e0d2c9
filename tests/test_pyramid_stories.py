"""Two stories of a real Pyramid 2 site behind pagecache, configured as the
README's minimal configuration (``cached_urls`` only, plus
``memcached_servers`` and ``key_prefix``), served by real waitress and real
gunicorn over real memcached, visited by browser-like clients with cookie jars.

1. Anonymous visitors, one after another, open the login form and log in.
   Pyramid puts a CSRF token in the form and the session cookie it sets; a
   form stored without its cookie would carry the first visitor's token to
   everybody, whose logins would then fail with "400 Bad CSRF token".
2. Logged-in users browse the front page, their account and an article
   (whose edit form holds their CSRF token) while anonymous visitors browse
   the same URLs at the same time: nobody is ever served another person's page.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import List

import pytest

from .apps.harness import SERVERS, Browser, Served, crowd, deploy, send  # noqa: F401 (deploy: fixture)

MINIMAL = """
cached_urls =
    / 60 5m
"""

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(page: str) -> str:
    found = TOKEN.search(page)
    assert found, f"no CSRF token in the page: {page[:300]!r}"
    return found.group(1)


def log_in(browser: Browser, site: Served, name: str, came_from: str = "/") -> str:
    """Open the login form (from page ``came_from``), post it with its token;
    the page the redirect leads back to."""
    form = browser.get(site, f"/login?came_from={came_from}")
    assert form.status == 200, form
    answer = browser.post(site, f"/login?came_from={came_from}", {"name": name, "csrf_token": csrf_token(form.text)})
    assert answer.status == 200, f"{name} could not log in: {answer.status} {answer.text[:160]!r}"
    return answer.text


@pytest.mark.parametrize("server", SERVERS)
def test_anonymous_visitors_in_a_row_each_log_in_with_their_own_csrf_token(deploy, server):
    """Attack (accidental, by the cache itself): the login form, which sets the
    session cookie holding its CSRF token, is stored without the cookie and
    served to the next visitors, whose logins are then refused.
    Guarantee: responses that set cookies are not stored (by default), so every
    visitor gets a form of their own, and every login succeeds."""
    site = deploy("pyramid", MINIMAL, servers=[server]).servers[0]
    tokens: List[str] = []
    for number in range(5):
        visitor = Browser()                     # a fresh browser: no cookies
        form = visitor.get(site, "/login")
        assert form.status == 200, form
        token = csrf_token(form.text)
        reused = f"visitor {tokens.index(token)}'s" if token in tokens else "its own"
        tokens.append(token)
        answer = visitor.post(site, "/login", {"name": f"visitor{number}", "csrf_token": token})
        assert answer.status == 200 and reused == "its own", (
            f"visitor {number}'s login answered {answer.status} {answer.text[:60]!r}; the login form was "
            f"served {form.cache} with {reused} CSRF token and Set-Cookie {form.all('Set-Cookie')}")
        assert f"Logged in as visitor{number}" in answer.text, answer.text


@pytest.mark.parametrize("server", SERVERS)
def test_cookie_responses_strip_shares_the_login_form_and_the_next_login_fails(deploy, server):
    """The risk of the seed's behaviour, kept as ``cookie_responses = strip``:
    the login form is stored with its Set-Cookie removed, so a second visitor
    gets the first visitor's token without the session that goes with it, and
    Pyramid refuses the login with 400 Bad CSRF token."""
    site = deploy("pyramid", MINIMAL + "cookie_responses = strip\n", servers=[server]).servers[0]
    first, second = Browser(), Browser()
    first_form = first.get(site, "/login")
    second_form = second.get(site, "/login")
    assert second_form.cache == "HIT" and csrf_token(second_form.text) == csrf_token(first_form.text)
    assert second.cookie("session") is None
    refused = second.post(site, "/login", {"name": "second", "csrf_token": csrf_token(second_form.text)})
    assert refused.status == 400 and "Bad CSRF token" in refused.text


@pytest.mark.parametrize("servers", [("waitress",), ("gunicorn",), ("waitress", "gunicorn")],
                         ids=["waitress", "gunicorn", "waitress+gunicorn"])
def test_a_logged_in_users_pages_are_never_served_to_anyone_else(deploy, servers):
    """Attack: with no ``bypass_cookies`` configured, a logged-in user's
    request (session cookie) is answered from, and stored into, the shared
    cache: the next visitors get "Logged in as alice", her account page and
    her CSRF token. Guarantee: by default any cookie bypasses the cache (its
    responses are labelled BYPASS), so logged-in users get their own pages and
    anonymous visitors never see them, across waitress and gunicorn processes
    sharing one memcached, concurrently."""
    sites = deploy("pyramid", MINIMAL, servers=servers).servers
    users = [f"user{i}" for i in range(4)]
    browsers = {}
    # Each logs in from another page (another login URL), so that this story
    # does not lean on the first one: a shared login form would refuse them.
    for i, (name, page) in enumerate(zip(users, ["/", "/account", "/articles/1", "/articles/2"])):
        browser = Browser()
        log_in(browser, sites[i % len(sites)], name, came_from=page)
        browsers[name] = browser

    # Each user looks at the pages first (what a leaking cache would store).
    for i, name in enumerate(users):
        site = sites[i % len(sites)]
        for path in ("/", "/account", "/articles/1"):
            reply = browsers[name].get(site, path)
            assert reply.status == 200, (name, path, reply)

    rounds, anonymous = 5, 12
    expected = {"/": "Logged in as {}", "/account": "Account of {}"}

    def visit(i: int) -> List[str]:
        problems = []
        name = users[i] if i < len(users) else None
        for turn in range(rounds):
            site = sites[(i + turn) % len(sites)]
            for path in ("/", "/account", "/articles/1"):
                if name is not None:
                    reply = browsers[name].get(site, path)
                else:
                    reply = send(site.port, path)        # an anonymous visitor: no cookie at all
                text = reply.text
                others = [other for other in users if other != name and (
                    f"Logged in as {other}" in text or f"Account of {other}" in text)]
                if reply.status != 200:
                    problems.append(f"{name or 'anonymous'} got {reply.status} for {path} on {site}")
                elif others:
                    problems.append(f"{name or 'anonymous'} was served {others[0]}'s {path} "
                                    f"({reply.cache} on {site})")
                elif name is None and "csrf_token" in text:
                    problems.append(f"anonymous was served a logged-in user's CSRF form at {path} "
                                    f"({reply.cache} on {site})")
                elif name is not None and path in expected and expected[path].format(name) not in text:
                    problems.append(f"{name} did not get their own {path} ({reply.cache} on {site})")
                elif name is not None and reply.cache != "BYPASS":
                    problems.append(f"{name}'s request for {path} was not a BYPASS but {reply.cache}")
        return problems

    problems = Counter(problem for result in crowd(len(users) + anonymous, visit) for problem in result)
    summary = sorted(problems.items(), key=lambda item: ("was served" not in item[0], -item[1]))  # leaks first
    assert not problems, (f"{sum(problems.values())} of {(len(users) + anonymous) * rounds * 3} pages went wrong: "
                          + "; ".join(f"{problem} x{count}" for problem, count in summary[:6]))

    # And a logged-in user's form is their own: the edit (POST, then redirect to GET) goes through.
    article = browsers["user0"].get(sites[0], "/articles/1")
    edited = browsers["user0"].post(sites[0], "/articles/1", {"title": "Edited by user0",
                                                              "csrf_token": csrf_token(article.text)})
    assert edited.status == 200, (f"user0's edit: {edited.status} {edited.text[:60]!r}; "
                                  f"the article page with the form was served {article.cache}")
