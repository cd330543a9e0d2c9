"""Real servers for the tests: memcached processes on free loopback ports, and a
WSGI app served by waitress in a child process.

Nothing here is a stand-in: each MemcachedServer is the ``memcached`` binary
(``PAGECACHE_MEMCACHED`` or the one on PATH). Its absence is an error, not a
skip: ``python3 dev.py test`` installs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import List, Optional


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memcached_binary() -> str:
    path = os.environ.get("PAGECACHE_MEMCACHED") or shutil.which("memcached")
    if not path:
        raise RuntimeError("memcached is not installed: run the tests with `python3 dev.py test`, "
                           "which installs it, or set PAGECACHE_MEMCACHED to its path")
    return path


def wait_for_port(port: int, timeout: float = 10.0, process: Optional[subprocess.Popen] = None) -> None:
    """Return once something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server on port {port} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout}s")
            time.sleep(0.01)


class MemcachedServer:
    """One memcached process; can be stopped, killed, paused and restarted on its port."""

    def __init__(self, port: Optional[int] = None, memory_mb: int = 64, lru_maintainer: bool = False):
        self.port = port or free_port()
        self.memory_mb = memory_mb
        self.lru_maintainer = lru_maintainer  # memcached's default: on; tests turn it off (see keys())
        self.process: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "MemcachedServer":
        command = [memcached_binary(), "-l", "127.0.0.1", "-p", str(self.port), "-U", "0",
                   "-m", str(self.memory_mb), "-t", "2", "-c", "1024"]
        if not self.lru_maintainer:
            # memcached 1.6's lru_crawler metadump (keys()) skips an item while the
            # LRU maintainer moves it after its second read
            command += ["-o", "no_lru_maintainer"]
        if os.geteuid() == 0:
            command += ["-u", "root"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port, process=self.process)
        return self

    def stop(self) -> None:
        """Stop the server (SIGKILL: memcached keeps nothing worth a clean shutdown,
        and it would only act on SIGTERM at its next one-second clock tick)."""
        self.kill()

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(10)
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is answered."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def restart(self) -> "MemcachedServer":
        self.stop()
        return self.start()

    def command(self, line: str) -> bytes:
        """Send one text-protocol command; the raw answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(line.encode("ascii") + b"\r\n")
            data = b""
            while not data.endswith((b"END\r\n", b"OK\r\n", b"STORED\r\n", b"DELETED\r\n",
                                     b"NOT_FOUND\r\n", b"ERROR\r\n", b"NOT_STORED\r\n")):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    def flush(self) -> None:
        self.command("flush_all")

    def raw_set(self, key: str, value: bytes, flags: int = 0, exptime: int = 0) -> None:
        """Store bytes under ``key`` as any other program could (any flags)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(f"set {key} {flags} {exptime} {len(value)}\r\n".encode("ascii") + value + b"\r\n")
            answer = s.recv(100)
            assert answer == b"STORED\r\n", answer

    def keys(self) -> List[str]:
        """Every key the server holds (lru_crawler metadump)."""
        from urllib.parse import unquote

        answer = self.command("lru_crawler metadump all").decode("ascii", "replace")
        return [unquote(line.split(" ", 1)[0][4:]) for line in answer.splitlines() if line.startswith("key=")]


def _serve(make_app, port: int, threads: int) -> None:
    import logging
    import waitress

    logging.getLogger("waitress").setLevel(logging.ERROR)
    waitress.serve(make_app(), host="127.0.0.1", port=port, threads=threads,
                   channel_timeout=30, connection_limit=512, backlog=512, _quiet=True)


class AppServer:
    """A WSGI application served by waitress in a child process of its own.

    ``make_app`` is called in the child (after fork), so cache clients and
    threads belong to that process, as in a real multi-process deployment.
    Objects made with the same ``multiprocessing`` context before
    :meth:`start` (Values, Events, Barriers) are shared with it.
    """

    context = __import__("multiprocessing").get_context("fork")

    def __init__(self, make_app, port: Optional[int] = None, threads: int = 16):
        self.make_app = make_app
        self.port = port or free_port()
        self.threads = threads
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "AppServer":
        self.process = self.context.Process(target=_serve, args=(self.make_app, self.port, self.threads),
                                            daemon=True)
        self.process.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as when a worker is OOM-killed mid-request."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.join(10)
            self.process = None


class GunicornServer:
    """A PasteDeploy pipeline served by real gunicorn: ``gunicorn --paste <ini>``
    with ``workers`` worker processes (``threads`` each: the gthread worker
    when more than one), started from the venv's gunicorn next to
    ``sys.executable``, the project root on ``PYTHONPATH`` so that
    ``call:tests.apps...`` loads. :meth:`stop` sends SIGTERM, then SIGKILL if
    gunicorn is still there after ``grace`` seconds. Its output goes to
    ``log_path`` (shown when it fails to start)."""

    def __init__(self, ini_path: str, port: Optional[int] = None, workers: int = 2, threads: int = 8,
                 log_path: Optional[str] = None, grace: float = 10.0):
        self.ini_path = ini_path
        self.port = port or free_port()
        self.workers = workers
        self.threads = threads
        self.log_path = log_path or ini_path + ".gunicorn.log"
        self.grace = grace
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def executable() -> str:
        import sys

        path = os.path.join(os.path.dirname(sys.executable), "gunicorn")
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"{path} is missing: the test extra installs gunicorn (python3 dev.py test)")
        return path

    def start(self) -> "GunicornServer":
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        command = [self.executable(), "--paste", self.ini_path, "--workers", str(self.workers),
                   "--threads", str(self.threads), "--bind", f"127.0.0.1:{self.port}",
                   "--chdir", root, "--graceful-timeout", str(int(self.grace)), "--timeout", "60",
                   "--log-level", "warning", "--backlog", "512"]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_port(self.port, timeout=30, process=self.process)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"{error}; gunicorn said:\n{self.log()[-3000:]}") from None
        return self

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def worker_pids(self) -> List[int]:
        """The pids of gunicorn's worker processes (children of the master)."""
        if self.process is None:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                pids.append(int(entry))
        return pids

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(self.grace + 5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.process = None
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
            self._log = None
