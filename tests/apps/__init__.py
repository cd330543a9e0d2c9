"""Real applications for the attack tests, served behind pagecache by real
servers (waitress, gunicorn) from a PasteDeploy INI file.

* :mod:`tests.apps.pyramid_site`: Pyramid 2, with sessions, CSRF, a login
  flow, URL dispatch and traversal (the account page).
* :mod:`tests.apps.flask_site`: Flask, with a fat-GET view, the
  "ReverseProxied" and method-override recipes, ProxyFix.
* :mod:`tests.apps.webob_site`: plain WebOb, whose query and cookie parsers
  split at more separators than ``&`` and ``;``; and an SSO filter that sets
  ``REMOTE_USER``.

Every site is wrapped in :func:`instrumented`, which lets the test process
(a different process from the server's, and from each gunicorn worker) see
and steer what the application does, through files named in the app's INI
section:

* ``calls_file``: one JSON line per call the application gets (method, path,
  query, pid), appended with a single ``write`` on an ``O_APPEND`` file so
  that lines from concurrent processes never mix;
* ``control_dir``: flags the test sets (files), which views read (``flag``)
  or consume once (``take_flag``: the first ``unlink`` wins);
* ``X-Rendezvous: <name>/<n>`` on a request: the application holds the call
  until ``n`` calls carrying that name are in the application at once (a
  barrier across processes, over a file of arrivals), and answers
  ``504 rendezvous timed out`` if they never are. A cache that makes one of
  those requests wait for another therefore shows as a 504, not as a slow test.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Iterable

RENDEZVOUS_TIMEOUT = 15.0   # seconds; only reached when requests were held back (the test then fails)
POLL = 0.002

WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Instruments:
    """The app-side ends of the call log, the flags and the rendezvous."""

    def __init__(self, settings: Dict[str, str]):
        self.calls_file = settings["calls_file"]
        self.control_dir = settings["control_dir"]

    def record(self, environ: Dict[str, Any]) -> None:
        line = json.dumps({"method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO", ""),
                           "query": environ.get("QUERY_STRING", ""), "pid": os.getpid()}) + "\n"
        fd = os.open(self.calls_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    def flag(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.control_dir, name))

    def take_flag(self, name: str) -> bool:
        """True for exactly one caller after the test raised flag ``name``."""
        try:
            os.unlink(os.path.join(self.control_dir, name))
        except FileNotFoundError:
            return False
        return True

    def rendezvous(self, spec: str) -> bool:
        """Wait until ``n`` calls named ``name`` (``spec`` = ``name/n``) have arrived."""
        name, _, count = spec.rpartition("/")
        wanted = int(count)
        path = os.path.join(self.control_dir, "rendezvous-" + "".join(c for c in name if c.isalnum()))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT
        while os.path.getsize(path) < wanted:
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)
        return True


def instrumented(app: WSGIApp, settings: Dict[str, str]) -> WSGIApp:
    """``app`` with its calls logged, and ``X-Rendezvous`` honoured."""
    instruments = Instruments(settings)

    def wrapper(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        instruments.record(environ)
        spec = environ.get("HTTP_X_RENDEZVOUS")
        if spec and not instruments.rendezvous(spec):
            body = b"rendezvous timed out: the requests were not let into the application together\n"
            start_response("504 Gateway Timeout", [("Content-Type", "text/plain"),
                                                   ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)
    wrapper.instruments = instruments  # type: ignore[attr-defined]
    return wrapper
