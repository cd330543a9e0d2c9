"""The test side of the attack tests: deployments (an INI pipeline served by
waitress or gunicorn against a real memcached), raw HTTP requests, a
browser-like client with a cookie jar, crowds of concurrent clients, and the
readers of the apps' call log and memcached's keys.

Raw requests go through ``http.client`` with ``putrequest``/``putheader``,
so the test controls exactly what goes on the wire: the request target as
written (``/public/..%2faccount``), any ``Host`` header
(``victim.example/static``), repeated header lines, and a body on a GET
(with ``Content-Length`` or chunked).
"""

from __future__ import annotations

import functools
import http.client
import http.cookiejar
import itertools
import json
import os
import textwrap
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import pytest

from ..servers import AppServer, GunicornServer, MemcachedServer

HOST = "shop.example"       # the Host header of every ordinary visitor
SERVERS = ("waitress", "gunicorn")
SESSION_SECRET = "attack-tests-secret"
TIMEOUT = 60.0              # longest any request may take (reached only by a broken test or cache)

APPS = {
    "pyramid": "call:tests.apps.pyramid_site:main",
    "flask": "call:tests.apps.flask_site:main",
    "webob": "call:tests.apps.webob_site:main",
}

Headers = Sequence[Tuple[str, str]]


class Reply:
    """A response as the client got it: status, header lines (repeats kept), body."""

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> List[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def cache(self) -> Optional[str]:
        """The X-Cache label (None when pagecache did not touch the response)."""
        return self.header("X-Cache")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<Reply {self.status} X-Cache={self.cache} {self.body[:80]!r}>"


def send(port: int, path: str, method: str = "GET", headers: Headers = (), body: Optional[bytes] = None,
         chunked: bool = False, host: Optional[str] = HOST) -> Reply:
    """One request on a fresh connection, written exactly as given."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            connection.putheader("Host", host)
        for name, value in headers:
            connection.putheader(name, value)
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders(iter([body or b""]), encode_chunked=True)
        elif body is not None:
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
        else:
            connection.endheaders()
        response = connection.getresponse()
        data = response.read()
        return Reply(response.status, response.getheaders(), data)
    finally:
        connection.close()


class Served:
    """One server of a deployment: waitress (in a forked child) or gunicorn."""

    def __init__(self, kind: str, server: Any):
        self.kind = kind
        self.server = server

    @property
    def port(self) -> int:
        return self.server.port

    def get(self, path: str, headers: Headers = (), **kwargs: Any) -> Reply:
        return send(self.port, path, "GET", headers, **kwargs)

    def request(self, method: str, path: str, headers: Headers = (), **kwargs: Any) -> Reply:
        return send(self.port, path, method, headers, **kwargs)

    def pids(self) -> List[int]:
        """The processes that run the application."""
        if self.kind == "waitress":
            return [self.server.process.pid]
        return self.server.worker_pids()

    def stop(self) -> None:
        self.server.stop()

    def __repr__(self) -> str:
        return f"<{self.kind} on {self.port}>"


class CallLog:
    """What the application was called for (the lines :mod:`tests.apps` appends)."""

    def __init__(self, path: Path):
        self.path = path

    def entries(self) -> List[Dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text("utf-8").splitlines() if line]

    def mark(self) -> int:
        """A point in the log: :meth:`count` with ``since=`` counts calls after it."""
        return len(self.entries())

    def count(self, path: Optional[str] = None, method: Optional[str] = None, since: int = 0) -> int:
        return sum(1 for entry in self.entries()[since:]
                   if (path is None or entry["path"] == path) and (method is None or entry["method"] == method))


class Deployment:
    """A PasteDeploy INI (``[filter:pagecache] use = egg:pagecache#main``,
    the app, ``[pipeline:main]``) served by one or more real servers, all on
    one memcached and one ``key_prefix``, so they share pages."""

    def __init__(self, directory: Path, memcached: MemcachedServer, app: str, cache_options: str,
                 key_prefix: str, front_filters: Sequence[str] = (), extra_sections: str = ""):
        self.directory = directory
        self.memcached = memcached
        self.key_prefix = key_prefix
        self.control_dir = directory / "control"
        self.control_dir.mkdir()
        self.calls = CallLog(directory / "calls.jsonl")
        self.ini = directory / "site.ini"
        pipeline = " ".join([*front_filters, "pagecache", "site"])
        options = textwrap.dedent(cache_options).strip()
        self.ini.write_text(
            f"[app:site]\n"
            f"use = {APPS[app]}\n"
            f"calls_file = {self.calls.path}\n"
            f"control_dir = {self.control_dir}\n"
            f"session_secret = {SESSION_SECRET}\n"
            f"\n"
            f"[filter:pagecache]\n"
            f"use = egg:pagecache#main\n"
            f"memcached_servers = {memcached.address}\n"
            f"key_prefix = {key_prefix}\n"
            f"{options}\n"
            f"\n"
            f"{extra_sections}\n"
            f"[pipeline:main]\n"
            f"pipeline = {pipeline}\n", "utf-8")
        self.servers: List[Served] = []
        # Load the pipeline here first: a configuration pagecache refuses fails
        # the test with pagecache's own message, not as a server that won't start.
        from paste.deploy import loadapp
        loadapp(f"config:{self.ini}")

    def start(self, kind: str) -> Served:
        if kind == "waitress":
            server = AppServer(functools.partial(_load, str(self.ini)), threads=16).start()
        elif kind == "gunicorn":
            # 16 threads a worker: a gthread worker accepts connections greedily and queues
            # them for its threads, so one worker may get every request of a crowd
            server = GunicornServer(str(self.ini), workers=2, threads=16,
                                    log_path=str(self.directory / f"gunicorn-{len(self.servers)}.log")).start()
        else:
            raise ValueError(kind)
        served = Served(kind, server)
        self.servers.append(served)
        return served

    def stop(self) -> None:
        for served in self.servers:
            served.stop()
        self.servers = []

    # -- steering the app ---------------------------------------------------

    def raise_flag(self, name: str) -> None:
        (self.control_dir / name).write_text("1")

    def lower_flag(self, name: str) -> None:
        try:
            (self.control_dir / name).unlink()
        except FileNotFoundError:
            pass

    def flag_raised(self, name: str) -> bool:
        return (self.control_dir / name).exists()

    # -- what memcached holds -------------------------------------------------

    def page_keys(self) -> Set[str]:
        """Keys of pages, vary and pass markers of this deployment (``<prefix>:p:...``)."""
        return {key for key in self.memcached.keys() if key.startswith(self.key_prefix + ":p:")}

    def stored_pages(self) -> Set[str]:
        """Keys under which a page is stored (not a vary or pass marker)."""
        import memcache

        from pagecache.entry import Page, parse

        client = memcache.Client([self.memcached.address])
        try:
            return {key for key in self.page_keys() if type(parse(client.get(key))) is Page}
        finally:
            client.disconnect_all()

    def lock_keys(self) -> Set[str]:
        return {key for key in self.memcached.keys() if key.startswith(self.key_prefix + ":l:")}


def _load(ini: str) -> Any:
    from paste.deploy import loadapp
    return loadapp(f"config:{ini}")


def memcached_stat(server: MemcachedServer, name: str) -> int:
    """One counter of memcached's ``stats`` (``cmd_set`` counts sets and adds)."""
    for line in server.command("stats").decode("ascii").splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "STAT" and fields[1] == name:
            return int(fields[2])
    raise KeyError(name)


_prefixes = itertools.count()


@pytest.fixture
def deploy(tmp_path: Path, memcached: MemcachedServer) -> Iterable[Callable[..., Deployment]]:
    """``deploy(app, cache_options, servers=("waitress",), ...)``: a deployment
    started on the given servers; every server is stopped when the test ends."""
    made: List[Deployment] = []

    def make(app: str, cache_options: str, servers: Sequence[str] = ("waitress",),
             front_filters: Sequence[str] = (), extra_sections: str = "") -> Deployment:
        directory = tmp_path / f"deployment-{len(made)}"
        directory.mkdir()
        deployment = Deployment(directory, memcached, app, cache_options, f"attack{os.getpid()}-{next(_prefixes)}",
                                front_filters, extra_sections)
        made.append(deployment)
        for kind in servers:
            deployment.start(kind)
        return deployment

    try:
        yield make
    finally:
        for deployment in made:
            deployment.stop()


class Browser:
    """A browser-like client of one or more servers (all named ``HOST``):
    an ``http.cookiejar`` jar through ``urllib.request``; redirects are
    followed by hand, on the same server (their ``Location`` names ``HOST``,
    which is not a real address)."""

    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def request(self, server: Served, path: str, data: Optional[Dict[str, str]] = None,
                headers: Optional[Dict[str, str]] = None, follow: bool = True) -> Reply:
        body = urllib.parse.urlencode(data).encode("ascii") if data is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=body,
                                         headers={"Host": HOST, **(headers or {})})
        try:
            with self.opener.open(request, timeout=TIMEOUT) as response:
                reply = Reply(response.status, list(response.getheaders()), response.read())
        except urllib.error.HTTPError as error:
            reply = Reply(error.code, list(error.headers.items()), error.read())
            error.close()
        if follow and reply.status in (301, 302, 303) and reply.header("Location"):
            location = urllib.parse.urlsplit(reply.header("Location"))
            return self.request(server, location.path + (f"?{location.query}" if location.query else ""))
        return reply

    def get(self, server: Served, path: str, **kwargs: Any) -> Reply:
        return self.request(server, path, **kwargs)

    def post(self, server: Served, path: str, data: Dict[str, str], **kwargs: Any) -> Reply:
        return self.request(server, path, data=data, **kwargs)

    def cookie(self, name: str) -> Optional[str]:
        for cookie in self.jar:
            if cookie.name == name:
                return cookie.value
        return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def crowd(n: int, visit: Callable[[int], Any], timeout: float = TIMEOUT * 2) -> List[Any]:
    """Run ``visit(0)`` ... ``visit(n - 1)`` in ``n`` threads released together
    by a barrier; their results in order. An exception in a visit is raised here."""
    barrier = threading.Barrier(n)
    results: List[Any] = [None] * n
    errors: List[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout)
            results[i] = visit(i)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a client of the crowd never got its answer"
    if errors:
        raise errors[0]
    return results


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` (VmRSS in /proc/<pid>/status), in KB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")
