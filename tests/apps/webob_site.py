"""A plain WebOb site (``webob.Request`` / ``webob.Response``, no framework),
and an SSO filter that sets ``REMOTE_USER``.

What WebOb really does with what a cache might normalise differently:

* ``request.GET`` splits the query at ``&`` *and* ``;``:
  ``?utm_source=x;page=evil`` gives ``page=evil`` (werkzeug and
  ``urllib.parse.parse_qsl`` give ``utm_source="x;page=evil"``).
* ``request.cookies`` splits the ``Cookie`` header at ``;``, ``,`` and
  whitespace: ``_ga=1, session=x``, ``_ga=1,session=x`` (two ``Cookie``
  lines joined by gunicorn), ``_ga=1 session=x`` all give ``session=x``.
* ``request.accept_language`` takes only ASCII space and tab as whitespace:
  ``fr\\xa0`` (a non-breaking space) is an invalid header, so the default
  language is chosen, whereas ``fr`` gives French.

Pages: ``/`` (``Page: <page>``, from ``request.GET``), ``/hello`` (the
``session`` cookie's value), ``/news`` (a page that the test can make answer
one uncacheable response: flags ``news-set-cookie`` and ``news-private``),
``/greeting`` (``Vary: Accept-Language``, negotiated), ``/vary-latin1``
(``Vary: Accept-Lánguage``), ``/vary-space`` (``Vary: Accept Language``),
``/big`` (512 KB), ``/plain``.

PasteDeploy: ``use = call:tests.apps.webob_site:main`` with ``calls_file`` and
``control_dir`` (see :mod:`tests.apps`); the filter is
``use = call:tests.apps.webob_site:sso_filter_factory``.
"""

from __future__ import annotations

import html
import os
from typing import Any, Callable, Dict, Iterable

from webob import Request, Response

from . import Instruments, instrumented

WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], Iterable[bytes]]

BIG = 512 * 1024
GREETINGS = {"en": "Hello", "fr": "Bonjour"}


def html_page(text: str) -> Response:
    return Response(body=f"<!doctype html><p id=content>{html.escape(text)}</p>\n".encode("utf-8"),
                    content_type="text/html", charset="utf-8")


class Site:
    def __init__(self, instruments: Instruments):
        self.instruments = instruments

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        return self.respond(request)(environ, start_response)

    def respond(self, request: Request) -> Response:
        path = request.path_info
        if path == "/":
            return html_page("Page: " + request.GET.get("page", "home"))
        if path == "/hello":
            user = request.cookies.get("session")
            return html_page(f"Hello, {user}" if user else "Hello, stranger")
        if path == "/news":
            response = html_page("Daily news")
            if self.instruments.take_flag("news-set-cookie"):
                response.set_cookie("visitor", "v-" + os.urandom(4).hex())
            elif self.instruments.take_flag("news-private"):
                response.cache_control.private = True
            return response
        if path == "/greeting":
            language = request.accept_language.lookup(list(GREETINGS), default="en")
            response = html_page(GREETINGS[language])
            response.vary = ("Accept-Language",)
            return response
        if path == "/vary-latin1":
            response = html_page("varies on a header name with a latin-1 letter")
            response.headers["Vary"] = "Accept-L\xe1nguage"
            return response
        if path == "/vary-space":
            response = html_page("varies on a header name with a space")
            response.headers["Vary"] = "Accept Language"
            return response
        if path == "/big":
            return Response(body=b"x" * BIG, content_type="application/octet-stream")
        if path == "/plain":
            return Response(body=b"the real page\n", content_type="text/plain")
        return Response(body=b"not found\n", status=404, content_type="text/plain")


def main(global_config: Dict[str, str], **settings: str) -> WSGIApp:
    """The PasteDeploy app factory."""
    instruments = Instruments(settings)
    return instrumented(Site(instruments), settings)


def sso_filter_factory(global_config: Dict[str, str], **settings: str) -> Callable[[WSGIApp], WSGIApp]:
    """A single-sign-on filter, as mod_auth_mellon + mod_wsgi or an SSO
    middleware provide: it checks a ticket (here ``X-Sso-Ticket: ticket-<name>``,
    removed from the request once checked) and sets ``REMOTE_USER``. The
    application behind it trusts ``REMOTE_USER``."""

    def make_filter(app: WSGIApp) -> WSGIApp:
        def sso(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            ticket = environ.pop("HTTP_X_SSO_TICKET", "")
            if ticket.startswith("ticket-") and len(ticket) > 7:
                environ["REMOTE_USER"] = ticket[7:]
            return app(environ, start_response)
        return sso
    return make_filter
