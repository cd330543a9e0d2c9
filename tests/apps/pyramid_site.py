"""A small Pyramid 2 site: sessions, CSRF-protected forms, a login flow, URL
dispatch for most pages and traversal for the account page.

Who the visitor is comes from (first found): the session (``SignedCookieSessionFactory``,
cookie ``session_cookie``, default ``session``), ``REMOTE_USER`` (set by an SSO
filter in front, see :func:`tests.apps.webob_site.sso_filter_factory`), or an
``X-Api-Key: <name>-key`` header, as an API gateway would pass it. pagecache
sees the cookie and, once fixed, ``REMOTE_USER``; it cannot know what
``X-Api-Key`` means, which is what the tests use when they need a user the
cache can't see.

Routers, as Pyramid really resolves them (the tests depend on this):

* URL dispatch (``config.add_route``) matches the decoded ``PATH_INFO`` as a
  string: ``/public/../account`` matches no route, dot segments are not
  resolved.
* When no route matches, Pyramid traverses the resource tree from
  :class:`Root` with ``pyramid.traversal.split_path_info``, which drops ``.``
  and resolves ``..``: ``/public/../account`` becomes ``("account",)``, the
  account view, exactly like ``/account``. (Traversal also ignores the
  subpath when it finds a view name: ``/account/x.css`` is the account page.)
* Views with ``accept=`` predicates: a request whose ``Accept`` no view offers
  gets Pyramid's ``PredicateMismatch``, a 404.

PasteDeploy: ``use = call:tests.apps.pyramid_site:main`` with settings
``calls_file``, ``control_dir`` (see :mod:`tests.apps`), ``session_secret``
and optionally ``session_cookie``. Flags: ``backend-down`` makes the account
and article views raise, as when their database is unreachable.

The pages of :mod:`tests.test_listening` (``/http-cache/<n>``,
``/policy/<name>``, ``/validated/...``, ``/notes/<id>``, ``/items/<id>``) say
how long they may be kept, and keep their state in ``control_dir`` so that
every server process shares it: see "Pages that say how long they may be
kept" below.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound, HTTPSeeOther
from pyramid.response import Response
from pyramid.security import Allowed
from pyramid.session import SignedCookieSessionFactory

from . import Instruments, instrumented


class BackendDown(RuntimeError):
    """The database behind the site is unreachable (raised while ``backend-down`` is flagged)."""


class Root:
    """The traversal root: ``/public/`` is a folder; ``/account`` is a view name on the root."""

    def __init__(self, request: Any):
        self.request = request

    def __getitem__(self, name: str) -> Any:
        if name == "public":
            return PublicFolder()
        raise KeyError(name)


class PublicFolder:
    """``/public/...``: pages anybody may see."""

    def __getitem__(self, name: str) -> Any:
        raise KeyError(name)


class SecurityPolicy:
    """Identity from the session, else REMOTE_USER, else an X-Api-Key header."""

    def identity(self, request: Any) -> Optional[Dict[str, str]]:
        user = request.session.get("user")
        if user:
            return {"user": user, "via": "session"}
        remote = request.environ.get("REMOTE_USER")
        if remote:
            return {"user": remote, "via": "REMOTE_USER"}
        key = request.headers.get("X-Api-Key", "")
        if key.endswith("-key") and len(key) > 4:
            return {"user": key[:-4], "via": "api key"}
        return None

    def authenticated_userid(self, request: Any) -> Optional[str]:
        identity = request.identity
        return identity["user"] if identity else None

    def permits(self, request: Any, context: Any, permission: str) -> Any:
        return Allowed("everything is public here; views check the user themselves")

    def remember(self, request: Any, userid: str, **kw: Any) -> list:
        request.session["user"] = userid
        return []

    def forget(self, request: Any, **kw: Any) -> list:
        request.session.pop("user", None)
        return []


def page(title: str, body: str) -> Response:
    text = f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>{body}\n"
    return Response(text, content_type="text/html", charset="utf-8")


def csrf_field(request: Any) -> str:
    token = request.session.get_csrf_token()
    return f'<input type="hidden" name="csrf_token" value="{html.escape(token)}">'


def instruments(request: Any) -> Instruments:
    return request.registry.settings["instruments"]


def home(request: Any) -> Response:
    user = request.authenticated_userid
    who = f"Logged in as {user}" if user else "Anonymous"
    return page("Front page", f"<p id=who>{html.escape(who)}</p><a href=/articles/1>today's article</a>")


def came_from(request: Any) -> str:
    """Where to go after logging in: a local path (``?came_from=/account``), else the front page."""
    target = request.params.get("came_from", "/")
    return target if target.startswith("/") and not target.startswith("//") else "/"


def login_form(request: Any) -> Response:
    action = html.escape(f"/login?came_from={came_from(request)}")
    return page("Log in", f'<form method=post action="{action}">{csrf_field(request)}'
                          f'<input name=name><button>Log in</button></form>')


def login(request: Any) -> HTTPFound:
    # Pyramid has checked the CSRF token already (require_csrf=True): a wrong one is a 400
    name = request.POST.get("name", "").strip() or "nobody"
    request.session["user"] = name
    request.session.new_csrf_token()
    return HTTPFound(location=came_from(request))


def account(request: Any) -> Response:
    if instruments(request).flag("backend-down"):
        raise BackendDown("the accounts database is unreachable")
    identity = request.identity
    if not identity:
        return page("Account", "<p id=who>Not logged in. <a href=/login>Log in</a></p>")
    form = ""
    if identity["via"] == "session":  # API clients get no form (and no session)
        form = (f'<form method=post action=/account>{csrf_field(request)}'
                f'<input name=email><button>Save</button></form>')
    user = html.escape(identity["user"])
    return page("Account", f"<p id=who>Account of {user}</p><p>email: {user}@example.org</p>{form}")


def public_index(request: Any) -> Response:
    return page("Public documents", "<p>Nothing secret here.</p>")


ARTICLES: Dict[str, str] = {"1": "Caching considered helpful", "2": "Cookies considered harmful"}
WITHDRAWN = {"3"}  # articles taken down for good: 410 Gone


def article_html(request: Any) -> Response:
    if instruments(request).flag("backend-down"):
        raise BackendDown("the articles database is unreachable")
    number = request.matchdict["id"]
    if number in WITHDRAWN:
        return Response(body=b"this article was withdrawn\n", status=410, content_type="text/plain")
    if number not in ARTICLES:
        return Response(body=b"no such article\n", status=404, content_type="text/plain")
    form = ""
    if request.authenticated_userid and request.identity["via"] == "session":
        form = (f'<form method=post action=/articles/{number}>{csrf_field(request)}'
                f'<input name=title><button>Save</button></form>')
    return page(ARTICLES[number], f"<p id=article>{html.escape(ARTICLES[number])}</p>{form}")


def article_json(request: Any) -> Response:
    number = request.matchdict["id"]
    body = json.dumps({"id": number, "title": ARTICLES.get(number)}).encode("utf-8")
    return Response(body=body, content_type="application/json")


def article_update(request: Any) -> HTTPFound:
    number = request.matchdict["id"]
    ARTICLES[number] = request.POST.get("title", ARTICLES.get(number, ""))
    return HTTPFound(location=f"/articles/{number}")  # POST-redirect-GET


def app_js(request: Any) -> Response:
    return Response(body=b"console.log('/app.js: the application script');\n",
                    content_type="application/javascript")


def static_app_js(request: Any) -> Response:
    return Response(body=b"console.log('/static/app.js: the static script');\n",
                    content_type="application/javascript")


# -- Pages that say how long they may be kept (tests/test_listening.py) ------
#
# Their state lives in files of ``control_dir``, so that every server process
# (and the test) sees the same: a page's version (``version-<name>``), the
# counts of its renders (``renders-<name>``: one byte a render), a flag that
# holds renders (``hold-<name>``: while it is raised a render announces itself
# in ``entered-<name>`` and waits), and a flag that makes renders fail
# (``fail-<name>``: its text is ``raise`` or a status code).

HOLD_TIMEOUT = 30.0   # seconds a held render waits for the test (reached only by a broken test)

# /policy/<name>: Cache-Control of each page; rules give them no lifetime (``/ ttl=0``)
POLICIES = {
    "cold": "max-age=60",
    "swr": "max-age=1, stale-while-revalidate=60",
    "sie": "max-age=1, stale-if-error=600",
    "must-revalidate": "max-age=1, must-revalidate, stale-while-revalidate=60, stale-if-error=600",
    "aged": "max-age=60",   # with Age: 30, as when it comes through another cache
}
AGES = {"aged": "30"}


def _control(request: Any, name: str) -> str:
    return os.path.join(instruments(request).control_dir, "".join(c for c in name if c.isalnum() or c in "-_"))


def read_state(request: Any, name: str, default: str) -> str:
    try:
        with open(_control(request, name), encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return default


def write_state(request: Any, name: str, text: str) -> None:
    path = _control(request, name)
    with open(path + ".new", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".new", path)  # readers in other processes see the old text or the new, never half


def count(request: Any, name: str) -> int:
    """Add one to counter ``name`` (any process); its new value."""
    path = _control(request, name)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)
    return os.path.getsize(path)


def held(request: Any, name: str) -> None:
    """While flag ``hold-<name>`` is raised, announce this render and wait for the flag to be lowered."""
    flag = "hold-" + name
    if not instruments(request).flag(flag):
        return
    count(request, "entered-" + name)
    deadline = time.monotonic() + HOLD_TIMEOUT
    while instruments(request).flag(flag):
        if time.monotonic() > deadline:
            raise RuntimeError(f"render of {name} held for {HOLD_TIMEOUT}s: the test never lowered {flag}")
        time.sleep(0.002)


def failing(request: Any, name: str) -> Optional[Response]:
    """What a render does while flag ``fail-<name>`` is raised: raise, or answer its status."""
    how = read_state(request, "fail-" + name, "")
    if how == "raise":
        raise BackendDown(f"the database behind {name} is unreachable")
    if how:
        return Response(body=f"{name}: backend error {how}\n".encode(), status=int(how), content_type="text/plain")
    return None


def http_cached(request: Any) -> Response:
    """/http-cache/<seconds>: a view configured with ``http_cache=<seconds>``."""
    name = "http-cache-" + request.matched_route.name.rsplit("_", 1)[1]
    number = count(request, "renders-" + name)
    return page(f"{name}", f"<p id=render>render #{number}</p>")


def policy_page(request: Any) -> Response:
    """/policy/<name>: Cache-Control from :data:`POLICIES` (and Age from
    :data:`AGES`); held, then failed, versioned by the test."""
    name = request.matchdict["name"]
    held(request, name)
    failed = failing(request, name)
    if failed is not None:
        return failed
    number = count(request, "renders-" + name)
    version = read_state(request, "version-" + name, "1")
    response = page(name, f"<p id=body>{name} v{version} render #{number}</p>")
    response.headers["Cache-Control"] = POLICIES[name]
    if name in AGES:
        response.headers["Age"] = AGES[name]
    return response


class LazyBody:
    """The expensive part of a page, rendered (and counted) only when the
    server iterates it: a 304 from ``conditional_response`` never does."""

    def __init__(self, request: Any, name: str, version: str):
        self.request, self.name, self.version = request, name, version

    def __iter__(self):
        number = count(self.request, "renders-" + self.name)
        text = f"<!doctype html><title>{self.name}</title><p id=body>{self.name} v{self.version} render #{number}</p>\n"
        yield text.encode("utf-8")

    def close(self) -> None:
        pass


def validated_page(request: Any) -> Response:
    """/validated/etag/<name> and /validated/last-modified/<name>: ``http_cache=1``,
    a validator made from the page's version (cheap), and
    ``conditional_response``, so that WebOb answers a matching
    ``If-None-Match`` / ``If-Modified-Since`` with 304 without rendering."""
    kind, name = request.matchdict["kind"], request.matchdict["name"]
    version = read_state(request, "version-" + name, "1")
    response = Response(content_type="text/html", charset="utf-8", app_iter=LazyBody(request, name, version))
    if kind == "etag":
        response.etag = f"{name}-v{version}"
    else:
        response.last_modified = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc) \
            + datetime.timedelta(days=int(version))
    response.conditional_response = True
    return response


def note_html(request: Any) -> Response:
    """/notes/<id>: an article whose text all server processes share (a file),
    with an edit form (CSRF token) for logged-in users. (``ARTICLES`` above is
    a dict of each process's own: an edit through one process is never seen
    by another, cache or not.)"""
    number = request.matchdict["id"]
    text = read_state(request, "note-" + number, f"Note {number}: first draft")
    form = ""
    if request.authenticated_userid and request.identity["via"] == "session":
        form = (f'<form method=post action=/notes/{number}>{csrf_field(request)}'
                f'<input name=title><button>Save</button></form>')
    response = page(f"Note {number}", f"<p id=article>{html.escape(text)}</p>{form}")
    response.cache_expires(300)  # the whole site is cached for what the responses say (``/ ttl=0``)
    return response


def note_update(request: Any) -> HTTPFound:
    # CSRF-checked by Pyramid (require_csrf=True), like the article form
    number = request.matchdict["id"]
    write_state(request, "note-" + number, request.POST.get("title", ""))
    return HTTPFound(location=f"/notes/{number}")  # POST-redirect-GET


def item_get(request: Any) -> Response:
    """/items/<id>: a resource of a small JSON-less API, cached for 5 minutes."""
    number = request.matchdict["id"]
    text = read_state(request, "item-" + number, "original")
    render = count(request, "renders-item-" + number)
    response = Response(body=f"item {number}: {text} (render #{render})\n".encode(), content_type="text/plain")
    response.cache_expires(300)
    return response


def item_change(request: Any) -> Response:
    """PUT, DELETE or POST /items/<id> (an API: no CSRF token, no session).
    PUT stores the body, DELETE resets the item; POST changes it to its
    ``text`` field and answers, by its fields: ``status`` (say 500: the
    change failed), ``location`` (a 303 there) and ``content_location``."""
    number = request.matchdict["id"]
    if request.method == "POST" and request.POST.get("status", "200") != "200":
        return Response(body=b"could not save\n", status=int(request.POST["status"]), content_type="text/plain")
    if request.method == "PUT":
        write_state(request, "item-" + number, request.body.decode("utf-8"))
    elif request.method == "DELETE":
        write_state(request, "item-" + number, "deleted")
    else:
        write_state(request, "item-" + number, request.POST.get("text", ""))
    if request.method == "POST" and request.POST.get("location"):
        return HTTPSeeOther(location=request.POST["location"])
    response = Response(body=f"saved item {number}\n".encode(), content_type="text/plain")
    if request.method == "POST" and request.POST.get("content_location"):
        response.headers["Content-Location"] = request.POST["content_location"]
    return response


def add_page(config: Configurator, name: str, pattern: str, view: Callable, **predicates: Any) -> None:
    """The route ``name`` at ``pattern``, answered for GET and HEAD by ``view``."""
    config.add_route(name, pattern)
    config.add_view(view, route_name=name, request_method=("GET", "HEAD"), **predicates)


def add_listening_views(config: Configurator) -> None:
    for seconds in (5, 60):
        add_page(config, f"http_cache_{seconds}", f"/http-cache/{seconds}", http_cached, http_cache=seconds)
    add_page(config, "policy", "/policy/{name}", policy_page)
    add_page(config, "validated", "/validated/{kind:etag|last-modified}/{name}", validated_page, http_cache=1)
    add_page(config, "note", "/notes/{id}", note_html)
    config.add_view(note_update, route_name="note", request_method="POST")
    add_page(config, "item", "/items/{id}", item_get)
    config.add_view(item_change, route_name="item", request_method=("PUT", "DELETE", "POST"), require_csrf=False)


# -- tagged pages (tests/test_tags.py) ---------------------------------------
#
# An article shown at two URLs (its page and its print version) and on a
# front page, each tagged with request.pagecache.tag(); a POST that saves the
# article and purges its tag, then redirects to the article. The text lives
# in a file of control_dir, so that every server process (gunicorn workers)
# shows the same one.

TAGGED_IDS = ("1", "2", "3")


def tagged_text(request: Any, number: str) -> str:
    path = os.path.join(instruments(request).control_dir, f"tagged-article-{number}.txt")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return f"Article {number}, first edition"


def tagged_article(request: Any) -> Response:
    number = request.matchdict["id"]
    request.pagecache.tag(f"article-{number}", "articles")
    return page(f"Article {number}", f"<p id=article>{html.escape(tagged_text(request, number))}</p>")


def tagged_print(request: Any) -> Response:
    number = request.matchdict["id"]
    request.pagecache.tag(f"article-{number}")
    return page(f"Article {number} (print)", f"<pre id=article>{html.escape(tagged_text(request, number))}</pre>")


def tagged_front(request: Any) -> Response:
    request.pagecache.tag("front", *(f"article-{number}" for number in TAGGED_IDS))
    items = "".join(f"<li id=article-{number}>{html.escape(tagged_text(request, number))}</li>"
                    for number in TAGGED_IDS)
    return page("Tagged front page", f"<ul>{items}</ul>")


def tagged_save(request: Any) -> HTTPSeeOther:
    number = request.matchdict["id"]
    path = os.path.join(instruments(request).control_dir, f"tagged-article-{number}.txt")
    with open(path + ".new", "w", encoding="utf-8") as f:
        f.write(request.POST["text"])
    os.replace(path + ".new", path)
    not_purged = request.pagecache.purge_tags(f"article-{number}")
    response = HTTPSeeOther(location=f"/tagged/articles/{number}")  # POST-redirect-GET
    response.headers["X-Not-Purged"] = " ".join(not_purged) or "-"
    return response


# -- ESI pages and fragments (tests/test_esi_delivery.py) ----------------------
#
# Pages that say they hold Edge Side Includes (``Surrogate-Control:
# content="ESI/1.0"``), and the fragments they include. Renders are counted
# in files of ``control_dir`` (``renders-esi-<name>``, ``renders-fragment-<name>``,
# ``renders-greeting``), as for the listening pages above, so every server
# process counts into the same place.
#
# * ``/esi/page/<name>``: the page :data:`ESI_PAGES` names: its Cache-Control
#   (None: none) and its includes;
# * ``/esi/greeting``: a personal fragment: "Hello, <the session's user>" (or
#   "Hello, visitor"); it sets no cookie;
# * ``/esi/visits``: a personal fragment that sets one: "visit #<n>", and the
#   cookie ``visits=<n>``;
# * ``/esi/fragment/<name>``: a shared fragment, "fragment <name> v<version>"
#   (``version-fragment-<name>``), tagged ``fragment-<name>``; it raises or
#   answers a status while ``fail-fragment-<name>`` says so (:func:`failing`),
#   and, in-process, waits while the ``threading.Event`` that the setting
#   ``esi_gates`` (a dict) holds under ``<name>`` is not set; with ``?shared=1``
#   it says ESI and ``Cache-Control: public``, as a response that may be shared
#   with requests carrying cookies does;
# * ``/esi/nest/<n>``: ``[n`` + an include of ``/esi/nest/<n-1>`` + ``]``, down to
#   ``[0]``; with ``?onerror=continue`` the includes say so too (and pass the
#   query on);
# * ``/esi/plain``: a public page without ESI.

ESI_MARKER = ("Surrogate-Control", 'content="ESI/1.0"')
FAILING = "/esi/fragment/flaky"

ESI_PAGES: Dict[str, Tuple[Optional[str], str]] = {
    "greeting": ("public", '<p id=greeting><esi:include src="/esi/greeting"/></p>'),
    "unshared": (None, '<p id=greeting><esi:include src="/esi/greeting"/></p>'),
    "three": ("public", "".join(f'<div id={name}><esi:include src="/esi/fragment/{name}"/></div>'
                                for name in "abc")),
    "three-shared": ("public", "".join(f'<div id={name}><esi:include src="/esi/fragment/{name}?shared=1"/></div>'
                                       for name in "abc")),
    "mixed": ("public", '<p id=greeting><esi:include src="/esi/greeting"/></p>'
                        '<div id=a><esi:include src="/esi/fragment/a"/></div>'),
    "alt": ("public", f'<div id=flaky><esi:include src="{FAILING}" alt="/esi/fragment/spare"/></div>'),
    "continue": ("public", f'<div id=flaky><esi:include src="{FAILING}" onerror="continue"/></div>'),
    "strict": ("public", f'<div id=flaky><esi:include src="{FAILING}"/></div>'),
    "self": ("public", '<div id=self><esi:include src="/esi/page/self"/></div>'),
    "self-continue": ("public",
                      '<div id=self><esi:include src="/esi/page/self-continue" onerror="continue"/></div>'),
    "loop-a": ("public", '<div id=a><esi:include src="/esi/page/loop-b"/></div>'),
    "loop-b": ("public", '<div id=b><esi:include src="/esi/page/loop-a"/></div>'),
    "loop-a-continue": ("public",
                        '<div id=a><esi:include src="/esi/page/loop-b-continue" onerror="continue"/></div>'),
    "loop-b-continue": ("public",
                        '<div id=b><esi:include src="/esi/page/loop-a-continue" onerror="continue"/></div>'),
    "private": ("private", '<p id=greeting><esi:include src="/esi/greeting"/></p>'),
    "visits": ("public", '<p id=visits><esi:include src="/esi/visits"/></p>'),
    "dated": ("public", '<div id=a><esi:include src="/esi/fragment/a"/></div>'),
}
DATED = {"dated": "Mon, 01 Jan 2024 00:00:00 GMT"}  # pages with a Last-Modified of their own


def esi_page(request: Any) -> Response:
    name = request.matchdict["name"]
    if name not in ESI_PAGES:
        return Response(body=b"no such page\n", status=404, content_type="text/plain")
    control, includes = ESI_PAGES[name]
    number = count(request, "renders-esi-" + name)
    response = page(f"ESI page {name}", f"<p id=render>page render #{number}</p>{includes}")
    response.headerlist.append(ESI_MARKER)
    if control is not None:
        response.headers["Cache-Control"] = control
    if name in DATED:
        response.headers["Last-Modified"] = DATED[name]
    return response


def esi_greeting(request: Any) -> Response:
    count(request, "renders-greeting")
    user = request.authenticated_userid
    return Response(f"Hello, {html.escape(user) if user else 'visitor'}", content_type="text/html", charset="utf-8")


def esi_visits(request: Any) -> Response:
    """A personal fragment that sets a cookie: the visitor's count of visits."""
    try:
        seen = int(request.cookies.get("visits", "0"))
    except ValueError:
        seen = 0
    response = Response(f"visit #{seen + 1}", content_type="text/html", charset="utf-8")
    response.set_cookie("visits", str(seen + 1), path="/")
    return response


def esi_fragment(request: Any) -> Response:
    name = request.matchdict["name"]
    gate = request.registry.settings.get("esi_gates", {}).get(name)
    if gate is not None and not gate.wait(HOLD_TIMEOUT):
        raise RuntimeError(f"fragment {name} held for {HOLD_TIMEOUT}s: the test never set its gate")
    failed = failing(request, "fragment-" + name)
    if failed is not None:
        return failed
    count(request, "renders-fragment-" + name)
    request.pagecache.tag("fragment-" + name)
    version = read_state(request, "version-fragment-" + name, "1")
    response = Response(f"fragment {html.escape(name)} v{html.escape(version)}", content_type="text/html",
                        charset="utf-8")
    if request.params.get("shared") == "1":  # may be shared with requests that carry cookies
        response.headerlist.append(ESI_MARKER)
        response.headers["Cache-Control"] = "public"
    return response


def esi_nest(request: Any) -> Response:
    level = int(request.matchdict["n"])
    count(request, f"renders-nest-{level}")
    inner = ""
    if level > 0:
        query = f"?{request.query_string}" if request.query_string else ""
        onerror = ' onerror="continue"' if request.params.get("onerror") == "continue" else ""
        inner = f'<esi:include src="/esi/nest/{level - 1}{html.escape(query)}"{onerror}/>'
    response = Response(f"[{level}{inner}]", content_type="text/html", charset="utf-8")
    response.headerlist.append(ESI_MARKER)
    response.headers["Cache-Control"] = "public"
    return response


def esi_plain(request: Any) -> Response:
    number = count(request, "renders-esi-plain")
    response = page("A public page without ESI", f"<p id=render>page render #{number}</p>")
    response.headers["Cache-Control"] = "public"
    return response


def add_esi_views(config: Configurator) -> None:
    add_page(config, "esi_page", "/esi/page/{name}", esi_page)
    add_page(config, "esi_greeting", "/esi/greeting", esi_greeting)
    add_page(config, "esi_visits", "/esi/visits", esi_visits)
    add_page(config, "esi_fragment", "/esi/fragment/{name}", esi_fragment)
    add_page(config, "esi_nest", r"/esi/nest/{n:\d+}", esi_nest)
    add_page(config, "esi_plain", "/esi/plain", esi_plain)


def main(global_config: Dict[str, str], **settings: str) -> Any:
    """The PasteDeploy app factory."""
    settings = dict(settings)
    settings["instruments"] = Instruments(settings)
    config = Configurator(settings=settings, root_factory=Root)
    config.set_session_factory(SignedCookieSessionFactory(
        settings["session_secret"], cookie_name=settings.get("session_cookie", "session"),
        httponly=True, timeout=None, reissue_time=None))
    config.set_security_policy(SecurityPolicy())
    config.set_default_csrf_options(require_csrf=True)

    add_page(config, "home", "/", home)
    add_page(config, "login", "/login", login_form)
    config.add_view(login, route_name="login", request_method="POST")
    add_page(config, "article", "/articles/{id}", article_html, accept="text/html")
    config.add_view(article_json, route_name="article", request_method=("GET", "HEAD"),
                    accept="application/json")
    config.add_view(article_update, route_name="article", request_method="POST")
    config.add_route("app_js", "/app.js")
    config.add_view(app_js, route_name="app_js")
    config.add_route("static_app_js", "/static/app.js")
    config.add_view(static_app_js, route_name="static_app_js")
    # traversal (no route matched): /account, /public/, and /public/../account
    config.add_view(account, context=Root, name="account", request_method=("GET", "HEAD"))
    config.add_view(public_index, context=PublicFolder, name="", request_method=("GET", "HEAD"))
    # tagged pages (request.pagecache, from config.include("pagecache"))
    config.include("pagecache")
    add_page(config, "tagged_front", "/tagged/", tagged_front)
    add_page(config, "tagged_article", "/tagged/articles/{id}", tagged_article)
    add_page(config, "tagged_print", "/tagged/print/{id}", tagged_print)
    config.add_route("tagged_save", "/tagged/articles/{id}/edit")
    config.add_view(tagged_save, route_name="tagged_save", request_method="POST", require_csrf=False)
    add_listening_views(config)
    add_esi_views(config)
    return instrumented(config.make_wsgi_app(), settings)
