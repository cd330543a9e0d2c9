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
"""

from __future__ import annotations

import html
import json
from typing import Any, Dict, Optional

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound
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

    config.add_route("home", "/")
    config.add_view(home, route_name="home", request_method=("GET", "HEAD"))
    config.add_route("login", "/login")
    config.add_view(login_form, route_name="login", request_method=("GET", "HEAD"))
    config.add_view(login, route_name="login", request_method="POST")
    config.add_route("article", "/articles/{id}")
    config.add_view(article_html, route_name="article", request_method=("GET", "HEAD"), accept="text/html")
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
    return instrumented(config.make_wsgi_app(), settings)
