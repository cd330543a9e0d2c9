"""A small Flask site, with the recipes real Flask deployments copy from the
web, each of which lets a request header change what the application renders:

* ``ReverseProxied`` (the well-known snippet): ``X-Script-Name`` becomes
  ``SCRIPT_NAME`` (so every ``url_for`` link gets that prefix) and
  ``X-Scheme`` becomes ``wsgi.url_scheme``;
* werkzeug's ``ProxyFix(x_for=1, x_proto=1, x_host=1, x_prefix=1)``:
  ``X-Forwarded-For/-Proto/-Host/-Prefix``;
* the IIS / URL-rewrite recipe: ``X-Original-URL`` or ``X-Rewrite-URL``
  replaces ``PATH_INFO`` (what Symfony and ASP.NET front ends honour);
* Flask's ``HTTPMethodOverrideMiddleware`` recipe: ``X-HTTP-Method-Override``
  replaces ``REQUEST_METHOD`` (the documented recipe doesn't check that the
  request was a POST);
* a view reading ``request.get_json(silent=True)`` on GET (a "fat GET": the
  body changes the page).

Pages: ``/links`` (absolute links made with ``url_for(..., _external=True)``),
``/search`` (the fat GET), ``/notes/<id>`` (GET shows a note; POST likes it,
DELETE deletes it), ``/admin`` (what an attacker would like to plant
elsewhere), and ``/api/notes/<id>``, the state as JSON, which the tests leave
out of the cache rules to read the truth.

PasteDeploy: ``use = call:tests.apps.flask_site:main`` with ``calls_file`` and
``control_dir`` (see :mod:`tests.apps`).
"""

from __future__ import annotations

import html
import os
from typing import Any, Callable, Dict, Iterable, Optional

from flask import Flask, jsonify, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from . import instrumented

WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ReverseProxied:
    """Wrap the application in this middleware and configure the front-end
    server to add these headers, to let you quietly bind this to a URL other
    than / and to an HTTP scheme that is different than what is used locally
    (the recipe as it is found on the web)."""

    def __init__(self, app: WSGIApp):
        self.app = app

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        script_name = environ.get("HTTP_X_SCRIPT_NAME", "")
        if script_name:
            environ["SCRIPT_NAME"] = script_name
            path_info = environ["PATH_INFO"]
            if path_info.startswith(script_name):
                environ["PATH_INFO"] = path_info[len(script_name):]
        scheme = environ.get("HTTP_X_SCHEME", "")
        if scheme:
            environ["wsgi.url_scheme"] = scheme
        return self.app(environ, start_response)


class RewriteURL:
    """What a URL-rewriting front end (IIS, some PHP frameworks) is trusted for:
    the original URL in ``X-Original-URL`` or ``X-Rewrite-URL``."""

    def __init__(self, app: WSGIApp):
        self.app = app

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        original = environ.get("HTTP_X_ORIGINAL_URL") or environ.get("HTTP_X_REWRITE_URL")
        if original:
            path, _, query = original.partition("?")
            environ["PATH_INFO"] = path
            environ["QUERY_STRING"] = query
        return self.app(environ, start_response)


class HTTPMethodOverrideMiddleware:
    """Flask's method-override recipe."""

    allowed_methods = frozenset(["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"])
    bodyless_methods = frozenset(["GET", "HEAD", "OPTIONS", "DELETE"])

    def __init__(self, app: WSGIApp):
        self.app = app

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if method in self.allowed_methods:
            environ["REQUEST_METHOD"] = method
        if method in self.bodyless_methods:
            environ["CONTENT_LENGTH"] = "0"
        return self.app(environ, start_response)


class Notes:
    """The notes, kept in files of ``control_dir`` so that every process of
    the site (two gunicorn workers, say) sees one state: ``note-<id>`` holds
    the text, ``note-<id>-likes`` one byte per like."""

    def __init__(self, directory: str):
        self.directory = directory
        path = self._path("1")
        if not os.path.exists(path):
            with open(path, "w", encoding="utf-8") as f:
                f.write("Buy milk")

    def _path(self, number: str, suffix: str = "") -> str:
        return os.path.join(self.directory, "note-" + "".join(c for c in number if c.isalnum()) + suffix)

    def get(self, number: str) -> Optional[Dict[str, Any]]:
        try:
            with open(self._path(number), encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        likes = os.path.getsize(self._path(number, "-likes")) if os.path.exists(self._path(number, "-likes")) else 0
        return {"text": text, "likes": likes}

    def like(self, number: str) -> None:
        with open(self._path(number, "-likes"), "ab") as f:
            f.write(b"+")

    def delete(self, number: str) -> None:
        os.unlink(self._path(number))


def create_app(control_dir: str) -> Flask:
    app = Flask(__name__)
    notes = Notes(control_dir)

    @app.get("/links")
    def links() -> str:
        hrefs = [url_for(name, _external=True, **args) for name, args in
                 (("links", {}), ("search", {}), ("note", {"number": "1"}))]
        items = "".join(f'<li><a href="{html.escape(h)}">{html.escape(h)}</a></li>' for h in hrefs)
        return f"<!doctype html><title>Links</title><ul>{items}</ul>\n"

    @app.get("/search")
    def search() -> str:
        query = request.get_json(silent=True) or {}
        wanted = query.get("q") if isinstance(query, dict) else None
        if not wanted:
            return "<!doctype html><title>Search</title><p id=results>Type something to search.</p>\n"
        return f"<!doctype html><title>Search</title><p id=results>Results for {wanted}</p>\n"  # unescaped: XSS

    @app.route("/notes/<number>", methods=["GET", "POST", "DELETE"])
    def note(number: str) -> Any:
        found = notes.get(number)
        if not found:
            return "<p>no such note</p>\n", 404
        if request.method == "POST":
            notes.like(number)
            return f"<p>liked note {number}</p>\n"
        if request.method == "DELETE":
            notes.delete(number)
            return f"<p>deleted note {number}</p>\n"
        return f"<p id=note>{html.escape(found['text'])} ({found['likes']} likes)</p>\n"

    @app.get("/api/notes/<number>")
    def note_state(number: str) -> Any:
        return jsonify(notes.get(number))

    @app.get("/admin")
    def admin() -> str:
        return "<!doctype html><title>Admin</title><p>ADMIN CONSOLE: delete everything?</p>\n"

    # outermost first, as the recipes say: ProxyFix(ReverseProxied(...(flask)))
    app.wsgi_app = ProxyFix(ReverseProxied(RewriteURL(HTTPMethodOverrideMiddleware(app.wsgi_app))),
                            x_for=1, x_proto=1, x_host=1, x_prefix=1)
    return app


def main(global_config: Dict[str, str], **settings: str) -> WSGIApp:
    """The PasteDeploy app factory."""
    return instrumented(create_app(settings["control_dir"]), settings)
