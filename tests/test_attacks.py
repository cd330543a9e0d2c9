"""pagecache attacked the way web-cache researchers attack caches, with real
applications behind it (Pyramid, Flask, WebOb: :mod:`tests.apps`), served
from a PasteDeploy INI by real waitress and real gunicorn (two workers), over
a real memcached. Requests are written byte for byte with ``http.client``
(raw paths, raw ``Host`` headers, repeated header lines, bodies on GET).

Each test is named after an attack; its docstring says the attack and the
guarantee. A test first checks that the application really does what the
attack needs (the router resolves the path, the recipe reads the header,
the parser finds the cookie), then that nobody is served what the attacker's
request planted; the X-Cache labels and memcached's keys come after.

How the test process sees inside the servers: the apps append every call to
a log file, read flags from a directory (``backend-down``, ...), and hold
requests carrying ``X-Rendezvous`` until all of them are in the application
(see :mod:`tests.apps`); memcached is read with ``lru_crawler metadump``
(:meth:`Deployment.page_keys`) and ``stats``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import List

import pytest

from pagecache import PageCacheMiddleware
from pagecache.entry import Page

from .apps.harness import HOST, SERVERS, crowd, deploy, memcached_stat, rss_kb  # noqa: F401 (deploy: fixture)
from .apps.webob_site import BIG
from .conftest import wait_until

MINIMAL = """
cached_urls =
    / 60 5m
"""

API_USER = "X-Api-Key"      # identifies a user to the Pyramid site; pagecache can't know what it means


def api_key(name: str) -> tuple:
    return (API_USER, f"{name}-key")


# -- 1. pass means pass ---------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("rule", ["/account pass", "/account 0 0"])
def test_pass_rule_sends_every_request_straight_to_the_app(deploy, server, rule):
    """Attack: a rule meant to keep /account out of the cache (``0 0``) still
    stores each response (as an expired page kept for ``stale_if_error``),
    serialises requests on its lock, and when the application fails serves
    the last user's account page, stale, to whoever asks.
    Guarantee: ``/account pass`` (or ``/account 0 0``) sends every matching
    request straight to the application, labelled BYPASS: no lock, no waiting
    for another request (12 concurrent requests are in the app at once),
    nothing stored, and no stale copy ever, even with ``stale_if_error = 1h``."""
    deployment = deploy("pyramid", f"""
        cached_urls =
            {rule}
            / 60 5m
        stale_if_error = 1h
        """, servers=[server])
    site = deployment.servers[0]
    keys, sets, mark = deployment.page_keys(), memcached_stat(deployment.memcached, "cmd_set"), \
        deployment.calls.mark()
    n = 12
    replies = crowd(n, lambda i: site.get("/account", [api_key(f"user{i}"), ("X-Rendezvous", f"account/{n}")]))
    for i, reply in enumerate(replies):
        assert reply.status == 200 and f"Account of user{i}<" in reply.text, (i, reply)

    deployment.raise_flag("backend-down")
    failed = site.get("/account", [api_key("mallory")])
    assert "Account of" not in failed.text, f"mallory was served a stale account page: {failed} {failed.text}"
    assert failed.status == 500, failed                      # the server's answer to the exception

    assert Counter(reply.cache for reply in replies) == {"BYPASS": n}
    assert deployment.calls.count("/account", since=mark) == n + 1
    assert deployment.page_keys() == keys, "something was stored for /account"
    assert memcached_stat(deployment.memcached, "cmd_set") == sets, "a lock was taken or a page stored for /account"


# -- 3. cookies -------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_any_cookie_bypasses_by_default(deploy, server):
    """Attack: with the README's minimal configuration (no ``bypass_cookies``),
    a response rendered for a cookie ("Hello, alice") is stored and served to
    everybody. Guarantee: by default a request with any cookie bypasses the
    cache; concurrent cookie holders and anonymous visitors each get their own page."""
    site = deploy("webob", MINIMAL, servers=[server]).servers[0]
    names = ["alice", "bob", "carol", "dave"]
    for name in names:                      # what a leaking cache would store first
        site.get("/hello", [("Cookie", f"session={name}")])

    def visit(i: int) -> List[str]:
        problems = []
        name = names[i] if i < len(names) else None
        for _ in range(5):
            reply = site.get("/hello", [("Cookie", f"session={name}")] if name else [])
            wanted = f"Hello, {name}" if name else "Hello, stranger"
            if wanted not in reply.text:
                problems.append(f"{name or 'anonymous'} got {reply.text.strip()!r} ({reply.cache})")
            elif name and reply.cache != "BYPASS":
                problems.append(f"{name}'s request was {reply.cache}, not BYPASS")
        return problems

    problems = sorted({p for result in crowd(len(names) + 8, visit) for p in result}, key=lambda p: "got" not in p)
    assert not problems, problems[:6]


COOKIE_LINES = {
    # how the cookie header reaches the application: as written by a client, or two
    # Cookie lines joined by the server (waitress: ", "; gunicorn: ","; HTTP/2 proxies: "; ")
    "comma-space": [("Cookie", "_ga=1, session=alice")],
    "comma": [("Cookie", "_ga=1,session=alice")],
    "space": [("Cookie", "_ga=1 session=alice")],
    "two-lines": [("Cookie", "_ga=1"), ("Cookie", "session=alice")],
}


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("form", list(COOKIE_LINES))
def test_named_bypass_cookie_is_found_where_the_framework_finds_it(deploy, server, form):
    """Attack: ``bypass_cookies = session`` is checked by splitting the Cookie
    header at ``;`` only, while WebOb (Pyramid's request) splits at ``;``,
    ``,`` and spaces: ``Cookie: _ga=1, session=alice`` (or two Cookie lines,
    which waitress joins with ", " and gunicorn with ",") logs alice in, is
    not seen as a session, and her page is stored for everybody.
    Guarantee: cookie names are found the way frameworks find them, so every
    such request bypasses; a request with only an analytics cookie (``_ga``)
    is served from the cache."""
    site = deploy("webob", MINIMAL + "bypass_cookies = session\n", servers=[server]).servers[0]
    alice = site.get("/hello", COOKIE_LINES[form])
    assert "Hello, alice" in alice.text, alice   # the application did find her cookie
    anonymous = site.get("/hello")
    assert "alice" not in anonymous.text, f"an anonymous visitor was served alice's page ({anonymous.cache})"
    assert alice.cache == "BYPASS", alice
    analytics = site.get("/hello", [("Cookie", "_ga=1")])
    assert analytics.cache == "HIT" and "Hello, stranger" in analytics.text, analytics


# -- 4. REMOTE_USER -----------------------------------------------------------------

SSO = """
[filter:sso]
use = call:tests.apps.webob_site:sso_filter_factory
"""


@pytest.mark.parametrize("server", SERVERS)
def test_remote_user_bypasses_like_authorization(deploy, server):
    """Attack: an SSO filter in front of pagecache (as mod_auth_mellon with
    mod_wsgi, or an SSO middleware) authenticates the user and sets
    ``REMOTE_USER``; no cookie or Authorization header reaches pagecache, so
    alice's front page ("Logged in as alice") is stored for everybody.
    Guarantee: a request with ``REMOTE_USER`` bypasses, like one with
    ``Authorization``; concurrently, each SSO user gets their own page and
    anonymous visitors never get theirs."""
    site = deploy("pyramid", MINIMAL, servers=[server], front_filters=["sso"], extra_sections=SSO).servers[0]
    names = ["alice", "bob", "carol"]
    for name in names:                      # what a leaking cache would store first
        for path in ("/", "/account"):
            site.get(path, [("X-Sso-Ticket", f"ticket-{name}")])

    def visit(i: int) -> List[str]:
        problems = []
        name = names[i] if i < len(names) else None
        for _ in range(4):
            for path, own in (("/", "Logged in as {}"), ("/account", "Account of {}")):
                reply = site.get(path, [("X-Sso-Ticket", f"ticket-{name}")] if name else [])
                leaked = [other for other in names if other != name and own.format(other) in reply.text]
                if leaked:
                    problems.append(f"{name or 'anonymous'} was served {leaked[0]}'s {path} ({reply.cache})")
                elif name and (own.format(name) not in reply.text or reply.cache != "BYPASS"):
                    problems.append(f"{name}'s {path} was {reply.cache}: {reply.text[:80]!r}")
        return problems

    problems = sorted({p for result in crowd(len(names) + 6, visit) for p in result},
                      key=lambda p: "was served" not in p)
    assert not problems, problems[:6]


# -- 5. Host header injection ----------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_host_header_injection_cannot_plant_a_page_under_another_path(deploy, server):
    """Attack: ``GET /app.js`` with ``Host: victim.example/static``: a key made
    of host and path concatenated is the key of ``/static/app.js`` on
    ``victim.example``, so the attacker's response (the wrong script) is what
    the victim's browser loads for /static/app.js.
    Guarantee: a Host that is not a host name or IP literal with an optional
    port makes the request bypass the cache (nothing stored), and the victim
    gets the real /static/app.js."""
    deployment = deploy("pyramid", MINIMAL, servers=[server])
    site = deployment.servers[0]
    keys = deployment.page_keys()
    attack = site.get("/app.js", host="victim.example/static")
    assert b"/app.js: the application script" in attack.body, attack
    stored = deployment.page_keys() - keys
    victim = site.get("/static/app.js", host="victim.example")
    assert victim.body == b"console.log('/static/app.js: the static script');\n", \
        f"the victim was served {victim.body!r} ({victim.cache}) for /static/app.js"
    assert attack.cache == "BYPASS", attack
    assert not stored, f"the attacker's request stored {stored}"


INVALID_HOSTS = ["victim.example/static", "victim.example:80/static", "victim.example?x=1", "victim.example#x",
                 "user@victim.example", "victim.example:http", "victim example", "victim.example\\static"]
VALID_HOSTS = ["victim.example", "VICTIM.example:8080", "127.0.0.1", "127.0.0.1:6543", "[::1]:8080"]


@pytest.mark.parametrize("host", INVALID_HOSTS + VALID_HOSTS)
def test_host_header_that_is_not_a_host_bypasses(deploy, host):
    """Attack: any Host value (waitress and gunicorn pass them all to the
    application as ``HTTP_HOST``, even ``victim example`` or
    ``victim.example#x``) becomes part of a stored page's key and of the
    links the application renders. Guarantee: an invalid Host bypasses
    (nothing stored); a host name or IP literal, with or without a port, is
    cached as usual."""
    deployment = deploy("pyramid", MINIMAL, servers=["waitress"])
    site = deployment.servers[0]
    keys = deployment.page_keys()
    first = site.get("/app.js", host=host)
    second = site.get("/app.js", host=host)
    assert first.status == second.status == 200
    if host in INVALID_HOSTS:
        assert (first.cache, second.cache) == ("BYPASS", "BYPASS"), (first, second)
        assert deployment.page_keys() == keys, f"a page was stored for Host: {host}"
    else:
        assert (first.cache, second.cache) == ("MISS", "HIT"), (first, second)


# -- 6. fat GET --------------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_fat_get_cannot_plant_a_body_influenced_page(deploy, server, framing):
    """Attack: a GET with a JSON body (Flask's ``request.get_json()`` reads it
    on GET) renders a page with the attacker's script in it, which a cache
    keyed on the URL stores for ``GET /search``.
    Guarantee: a GET with a body (``Content-Length`` > 0, or
    ``Transfer-Encoding: chunked``) bypasses; nothing is stored, and the next
    plain visitor gets the normal page. (waitress de-chunks and sets
    CONTENT_LENGTH; gunicorn passes HTTP_TRANSFER_ENCODING=chunked with no
    CONTENT_LENGTH.)"""
    deployment = deploy("flask", MINIMAL, servers=[server])
    site = deployment.servers[0]
    keys = deployment.page_keys()
    body = json.dumps({"q": "<script>steal(document.cookie)</script>"}).encode()
    attack = site.get("/search", [("Content-Type", "application/json")], body=body, chunked=framing == "chunked")
    assert "Results for <script>" in attack.text, attack   # the application did read the body
    stored = deployment.page_keys() - keys
    victim = site.get("/search")
    assert "<script>" not in victim.text, f"the victim was served the attacker's page ({victim.cache})"
    assert attack.cache == "BYPASS", attack
    assert not stored, f"the fat GET stored {stored}"


# -- 7. web cache deception ---------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("account_rule", ["pass", "0 0"])
def test_web_cache_deception_with_dot_segments(deploy, server, account_rule):
    """Attack (web cache deception): the victim follows a link to
    ``/public/..%2faccount``. Both waitress and gunicorn decode ``%2f`` and
    give PATH_INFO ``/public/../account``; the rule ``/public/`` matches it as
    a prefix, while Pyramid's traversal resolves the ``..`` and renders the
    victim's account page, which is stored and then served to the attacker
    asking for the same URL. (URL dispatch would not resolve it: Pyramid's
    routes match the string; traversal's ``split_path_info`` drops ``.`` and
    resolves ``..``.)
    Guarantee: a path whose decoded form has dot segments is never cached
    (BYPASS), so rules ``/account pass`` and ``/public/ 60 60`` keep the
    account page out of the cache however the path is spelt."""
    deployment = deploy("pyramid", f"""
        cached_urls =
            /account  {account_rule}
            /public/  60 60
        """, servers=[server])
    site = deployment.servers[0]
    keys = deployment.page_keys()
    victim = site.get("/public/..%2faccount", [api_key("alice")])
    assert "Account of alice" in victim.text, victim       # the router resolved it to the account page
    stored = deployment.page_keys() - keys
    attacker = site.get("/public/..%2faccount")
    assert "alice" not in attacker.text, f"the attacker was served alice's account page ({attacker.cache})"
    assert (victim.cache, attacker.cache) == ("BYPASS", "BYPASS"), (victim, attacker)
    assert not stored, f"the victim's request stored {stored}"
    public = [site.get("/public/"), site.get("/public/")]
    assert [reply.cache for reply in public] == ["MISS", "HIT"]


@pytest.mark.parametrize("server", SERVERS)
def test_web_cache_deception_with_a_query_that_looks_like_a_stylesheet(deploy, server):
    """Attack (web cache deception): the rule ``~\\.css$ 1h 1h`` is meant for
    stylesheets, but a regex searched in ``path?query`` matches
    ``/account?x.css``, which the application answers with the account page
    of whoever asks (here a user identified by an API key, which the cache
    can't see): the victim's page is stored for an hour and served to the
    attacker. Guarantee: regexes see only the path (unless the rule adds the
    word ``query``), so ``/account?x.css`` matches no rule and nothing is stored."""
    deployment = deploy("pyramid", """
        cached_urls =
            ~\\.css$  1h  1h
        """, servers=[server])
    site = deployment.servers[0]
    keys = deployment.page_keys()
    victim = site.get("/account?x.css", [api_key("alice")])
    assert "Account of alice" in victim.text, victim
    stored = deployment.page_keys() - keys
    attacker = site.get("/account?x.css")
    assert "alice" not in attacker.text, f"the attacker was served alice's account page ({attacker.cache})"
    assert victim.cache is None, f"a rule matched /account?x.css: {victim}"
    assert not stored, f"the victim's request stored {stored}"


@pytest.mark.parametrize("server", SERVERS)
def test_web_cache_deception_with_a_path_that_looks_like_a_stylesheet(deploy, server):
    """Attack (web cache deception): Pyramid's traversal renders the account
    page for any subpath of it, so ``/account/x.css`` is the victim's account
    page (the victim is identified by an API key the cache can't see), and
    the rule meant for stylesheets matches it. Guarantee: a URL that looks
    like a static file (by its extension) stores only a response of that
    type: the account page (text/html) is given to the victim and not stored,
    while a real stylesheet is."""
    deployment = deploy("pyramid", """
        cached_urls =
            ~\\.(css|js)$  1h  1h
        """, servers=[server])
    site = deployment.servers[0]
    victim = site.get("/account/x.css", [api_key("alice")])
    assert "Account of alice" in victim.text and victim.cache == "MISS", victim
    assert deployment.stored_pages() == set(), "the account page was stored under /account/x.css"
    attacker = site.get("/account/x.css")
    assert "alice" not in attacker.text, f"the attacker was served alice's account page ({attacker.cache})"
    script = [site.get("/static/app.js"), site.get("/static/app.js")]
    assert [reply.cache for reply in script] == ["MISS", "HIT"], script


# -- 8. parameter cloaking ----------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_parameter_cloaking_behind_an_ignored_parameter(deploy, server):
    """Attack (parameter cloaking): with ``ignore_query = utm_source``,
    ``/?utm_source=x;page=evil`` is one ``&``-separated part named
    ``utm_source`` to a cache, so it is left out of the key, which becomes
    the key of ``/``; WebOb splits queries at ``;`` too and renders
    ``page=evil``: the evil page is stored as the front page.
    Guarantee: parts containing ``;`` stay in the key, so a following
    ``GET /`` gets the normal page; ``?utm_source=newsletter`` is still
    ignored (the front page, from the cache)."""
    deployment = deploy("webob", MINIMAL + "ignore_query = utm_source\n", servers=[server])
    site = deployment.servers[0]
    attack = site.get("/?utm_source=x;page=evil")
    assert "Page: evil" in attack.text, attack               # what WebOb made of it
    victim = site.get("/")
    assert "Page: home" in victim.text, f"the front page was {victim.text.strip()!r} ({victim.cache})"
    campaign = site.get("/?utm_source=newsletter")
    assert campaign.cache == "HIT" and "Page: home" in campaign.text, campaign
    again = site.get("/?utm_source=x;page=evil")
    assert again.cache == "HIT" and "Page: evil" in again.text, again  # under a key of its own


# -- 9. a pass marker never destroys a stale copy ----------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("uncacheable", ["set-cookie", "private"])
def test_one_uncacheable_answer_does_not_destroy_the_stale_copy(deploy, server, uncacheable):
    """Attack (cache-busting stampede): once a page's TTL has run out, an
    attacker only needs the application to answer one rebuild with something
    that can't be stored (a Set-Cookie, ``Cache-Control: private``): the
    "uncacheable lately" marker then replaces the stale copy, and every
    request of the crowd that follows goes to the application.
    Guarantee: the marker never overwrites a page: the stale copy stays, one
    request of the crowd rebuilds it while the others get STALE (the
    application is called at most twice for 32 concurrent requests)."""
    deployment = deploy("webob", """
        cached_urls =
            /news  1  1m
        """, servers=[server])
    site = deployment.servers[0]
    assert site.get("/news").cache == "MISS"
    deployment.raise_flag(f"news-{uncacheable}")
    # The TTL (1s) runs out in real time: the first answer that is not a HIT
    # is the rebuild, and the application answers it uncacheable.
    replies = []
    wait_until(lambda: replies.append(site.get("/news")) or replies[-1].cache != "HIT", timeout=30)
    assert not deployment.flag_raised(f"news-{uncacheable}"), replies[-1]
    rebuild = replies[-1]
    assert rebuild.status == 200 and rebuild.cache == "MISS", rebuild

    mark = deployment.calls.mark()
    answers = crowd(32, lambda i: site.get("/news"))
    calls = deployment.calls.count("/news", since=mark)
    labels = Counter(answer.cache for answer in answers)
    assert calls <= 2, f"{calls} of the crowd's 32 requests reached the application ({dict(labels)})"
    assert all(answer.status == 200 and "Daily news" in answer.text for answer in answers)
    assert labels["MISS"] <= 2 and set(labels) <= {"STALE", "HIT", "MISS"}, dict(labels)


# -- 10. URL-changing headers on a fill ------------------------------------------------------------

# what waitress removes from every request when no trusted_proxy is set (waitress/proxy_headers.py)
WAITRESS_CLEARS = {"X_FORWARDED_FOR", "X_FORWARDED_HOST", "X_FORWARDED_PROTO", "X_FORWARDED_PORT",
                   "X_FORWARDED_BY", "FORWARDED"}

URL_HEADERS = [
    # header, attacker's value, what it leaves in the page the app renders
    ("X-Script-Name", "/attacker", "/attacker/"),        # the ReverseProxied recipe: SCRIPT_NAME
    ("X-Scheme", "https", "https://"),                    # the ReverseProxied recipe: wsgi.url_scheme
    ("X-Forwarded-Prefix", "/attacker", "/attacker/"),   # ProxyFix(x_prefix=1)
    ("X-Forwarded-Host", "attacker.example", "attacker.example"),  # ProxyFix(x_host=1)
    ("X-Original-URL", "/admin", "ADMIN CONSOLE"),       # URL-rewrite front end recipe
    ("X-Rewrite-URL", "/admin", "ADMIN CONSOLE"),
]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("header,value,trace", URL_HEADERS, ids=[h for h, _, _ in URL_HEADERS])
def test_url_changing_headers_never_reach_the_app_on_a_fill(deploy, server, header, value, trace):
    """Attack (unkeyed header poisoning): the attacker's request fills the
    cache for ``/links`` with a header that a recipe in the Flask app trusts
    (``X-Script-Name``, ``X-Scheme``, ``X-Forwarded-Prefix``/``-Host``,
    ``X-Original-URL``, ``X-Rewrite-URL``): the stored page links to the
    attacker's prefix, scheme or host, or is another page altogether.
    Guarantee: these headers never reach the application when it renders a
    page for the cache: the next plain visitor gets (as a HIT) the page with
    the site's own links."""
    deployment = deploy("flask", """
        cached_urls =
            /links   60 60
        """, servers=[server])
    site = deployment.servers[0]
    site.get("/links", [(header, value)])
    visitor = site.get("/links")
    assert trace not in visitor.text, f"the visitor got the attacker's page ({visitor.cache}): {visitor.text}"
    assert visitor.cache == "HIT" and f'href="http://{HOST}/search"' in visitor.text, visitor
    # The recipe is real: a request that bypasses the cache reaches the app with the header,
    # except those waitress itself removes (clear_untrusted_proxy_headers, on by default).
    honoured = site.get("/links", [(header, value), ("Authorization", "Basic YWxpY2U6c2VjcmV0")])
    cleared_by_server = server == "waitress" and header.upper().replace("-", "_") in WAITRESS_CLEARS
    assert honoured.cache == "BYPASS" and (trace in honoured.text) is not cleared_by_server, honoured


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_method_override_never_changes_state_through_a_cacheable_get(deploy, server, method):
    """Attack: Flask's method-override recipe turns ``GET /notes/1`` with
    ``X-HTTP-Method-Override: DELETE`` (or ``POST``) into a DELETE (a like):
    a cacheable GET that changes state, whose answer ("deleted note 1") is
    then stored as the note's page.
    Guarantee: the header never reaches the application on a request that
    fills the cache: the note is unchanged, and the next visitor gets the
    note (a HIT)."""
    deployment = deploy("flask", """
        cached_urls =
            /notes/  60 60
        """, servers=[server])
    site = deployment.servers[0]
    site.get("/notes/1", [("X-HTTP-Method-Override", method)])
    state = json.loads(site.get("/api/notes/1").body)       # /api/ is under no rule: the truth
    assert state == {"text": "Buy milk", "likes": 0}, f"a GET with X-HTTP-Method-Override: {method} changed {state}"
    visitor = site.get("/notes/1")
    assert visitor.cache == "HIT" and "Buy milk (0 likes)" in visitor.text, visitor


# -- 11. negative answers --------------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_a_negotiation_404_does_not_take_the_page_down(deploy, server):
    """Attack (cache-poisoned denial of service): ``GET /articles/1`` with
    ``Accept: image/x-odd`` matches none of Pyramid's ``accept=`` view
    predicates, so Pyramid answers 404 (PredicateMismatch); stored, that 404
    is the article for everybody until it expires.
    Guarantee: 404 and 410 are not stored by default: the next normal request
    gets the article (200), and a 410 is asked of the application again."""
    deployment = deploy("pyramid", MINIMAL, servers=[server])
    site = deployment.servers[0]
    odd = site.get("/articles/1", [("Accept", "image/x-odd")])
    assert odd.status == 404, odd
    normal = site.get("/articles/1", [("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")])
    assert normal.status == 200, f"a normal visitor got a {normal.status} ({normal.cache}) for the article"
    assert site.get("/articles/1").status == 200
    gone = [site.get("/articles/3"), site.get("/articles/3")]
    assert [reply.status for reply in gone] == [410, 410] and gone[1].cache != "HIT", gone


# -- 12. Vary robustness ----------------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_vary_with_a_latin1_header_name_is_not_a_500(deploy, server):
    """Attack: an application (or a header an attacker reflects into it)
    answers ``Vary: Accept-Lánguage``, a name with a latin-1 letter; storing
    the vary marker fails to encode it and the visitor gets a 500.
    Guarantee: the response is given to the client and not stored."""
    deployment = deploy("webob", MINIMAL, servers=[server])
    site = deployment.servers[0]
    replies = [site.get("/vary-latin1"), site.get("/vary-latin1")]
    assert [reply.status for reply in replies] == [200, 200], replies
    assert "latin-1 letter" in replies[1].text and replies[1].cache != "HIT", replies


@pytest.mark.parametrize("server", SERVERS)
def test_vary_with_a_space_in_a_header_name_is_uncacheable(deploy, server):
    """Attack: ``Vary: Accept Language`` (a space, not a comma): stored as one
    name and read back as two, so every request finds a marker that does not
    match its response and stores a new one and a new variant: memcached
    fills with copies of one page while every request calls the application.
    Guarantee: such a response is uncacheable: given to its client, not
    stored, not a new variant per request."""
    deployment = deploy("webob", MINIMAL, servers=[server])
    site = deployment.servers[0]
    keys = deployment.page_keys()
    replies = [site.get("/vary-space") for _ in range(6)]
    assert all(reply.status == 200 for reply in replies)
    grown = deployment.page_keys() - keys
    assert len(grown) <= 1, f"{len(grown)} entries stored for one page that varies on an invalid name"
    assert "HIT" not in [reply.cache for reply in replies], replies


@pytest.mark.parametrize("server", SERVERS)
def test_variants_differ_on_a_non_breaking_space(deploy, server):
    """Attack: variant values are normalised by collapsing whitespace, and
    Python's ``str.split()`` counts U+00A0 (a non-breaking space, one latin-1
    byte on the wire, passed through by waitress and gunicorn) as
    whitespace: ``Accept-Language: fr,\\xa0en`` is the variant of ``fr, en``.
    WebOb's parser takes only ASCII space and tab as whitespace, so to the
    application ``fr,\\xa0en`` is an invalid header and it answers in the
    default language, English: the attacker plants the English page as the
    variant French visitors get.
    Guarantee: values are normalised only on ASCII space and tab; a value
    with U+00A0 is another variant, and French visitors get French."""
    deployment = deploy("webob", MINIMAL, servers=[server])
    site = deployment.servers[0]
    attack = site.get("/greeting", [("Accept-Language", "fr,\xa0en")])
    assert "Hello" in attack.text, attack                    # WebOb found no valid language in it
    victim = site.get("/greeting", [("Accept-Language", "fr, en")])
    assert "Bonjour" in victim.text, f"a French visitor was served {victim.text.strip()!r} ({victim.cache})"
    tab = site.get("/greeting", [("Accept-Language", "fr,\ten")])   # ASCII whitespace: the same variant
    assert tab.cache == "HIT" and "Bonjour" in tab.text, tab


# -- 13. the local tier is bounded in bytes ------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_local_tier_is_bounded_in_bytes(deploy, server):
    """Attack (memory exhaustion): with ``local_ttl = 60`` every page read or
    stored is also kept in process memory, bounded only by a count
    (``local_size = 1000``): 600 requests for a 512 KB page under distinct
    query strings hold about 300 MB in the server (over both gunicorn workers).
    Guarantee: the local tier is bounded in bytes (``local_memory_limit``,
    16MB by default): the resident memory of the processes serving the
    application (VmRSS, summed over gunicorn's workers) grows well under 100 MB."""
    deployment = deploy("webob", """
        cached_urls =
            /big  60 60
        local_ttl = 60
        """, servers=[server])
    site = deployment.servers[0]
    for i in range(10):                                       # warm up: threads, connections, buffers
        assert len(site.get(f"/big?warm={i}").body) == BIG
    pids = site.pids()
    before = sum(rss_kb(pid) for pid in pids)

    def fetch(i: int) -> int:
        total = 0
        for n in range(i, 600, 4):
            reply = site.get(f"/big?page={n}")
            assert reply.status == 200 and len(reply.body) == BIG, reply
            total += 1
        return total

    assert sum(crowd(4, fetch)) == 600
    assert sorted(site.pids()) == sorted(pids), "a server process was replaced during the test"
    growth_mb = (sum(rss_kb(pid) for pid in pids) - before) / 1024
    assert growth_mb < 100, f"600 pages of 512 KB grew the server's resident memory by {growth_mb:.0f} MB"


# -- 14. entries are re-filtered on read -----------------------------------------------------------------

FORGED_HEADERS = {
    "set-cookie": [("Set-Cookie", "stolen=1; Path=/")],
    "connection-close": [("Connection", "close")],
    "transfer-encoding": [("Transfer-Encoding", "chunked")],
    "connection-names-a-header": [("Connection", "X-Hop"), ("X-Hop", "secret")],
    "keep-alive": [("Keep-Alive", "timeout=600")],
}


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("forged", list(FORGED_HEADERS))
def test_entries_are_filtered_again_when_read(deploy, server, forged):
    """Attack: somebody with access to memcached (another application on the
    same servers, a compromised host) writes a page entry, in pagecache's
    own format, holding a ``Set-Cookie`` (session fixation for every visitor)
    or hop-by-hop headers (which waitress refuses with a 500, and gunicorn
    drops except the headers ``Connection`` names).
    Guarantee: what is read back is filtered again before it is sent: no
    Set-Cookie, no hop-by-hop header, no header named by Connection (the
    page is served, or the entry refused and the page rendered again)."""
    deployment = deploy("webob", MINIMAL, servers=[server])
    site = deployment.servers[0]
    forger = PageCacheMiddleware(lambda environ, start_response: [], "/ 1 1", key_prefix=deployment.key_prefix,
                                 memcached_servers=deployment.memcached.address)  # for its keys and client
    key = forger.keys.page(forger.keys.digest_of_url(f"http://{HOST}/plain"))
    assert site.get("/plain").cache == "MISS" and key in deployment.page_keys(), "the page's key is not " + key
    body = b"the page as somebody else stored it\n"
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))] + FORGED_HEADERS[forged]
    entry = Page("200 OK", headers, body, time.time(), 3600.0, 60.0)
    assert forger.cache.set(key, entry.to_bytes(), 3600)
    reply = site.get("/plain")
    assert reply.status == 200, f"the forged entry made the server answer {reply.status}: {reply.text[:100]!r}"
    # served from the entry, filtered (or refused as a whole, and the page rendered again)
    assert reply.body in (body, b"the real page\n"), reply
    sent = {name.lower(): value for name, value in reply.headers}
    for name, value in FORGED_HEADERS[forged]:
        if name.lower() == "connection" and value == "close":
            continue  # a server may close a connection of its own accord
        assert (name.lower(), value) not in sent.items(), f"{name}: {value} was sent from the entry ({reply.cache})"
