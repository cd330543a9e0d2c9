"""Where pages are kept: the embedded memory cache, and memcached clients built
from the ``memcached_*`` options.

:class:`MemoryCache` is a real backend, not a stand-in: one per process,
thread-safe, bounded in bytes, evicting the oldest writes first, with
memcached's expiry and ``add`` semantics. The memcached clients are built so
that a dead or hung server costs at most ``memcached_timeout`` and is then
left alone for ``memcached_retry``, and so that no value read back is ever
unpickled or decompressed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .config import ConfigError, server_address

THIRTY_DAYS = 30 * 24 * 3600
ITEM_OVERHEAD = 320  # bytes of Python objects per item (measured: about 280), counted against the limit


def expiry_time(seconds: float, now: Optional[float] = None) -> int:
    """memcached's ``time`` for an item that should live ``seconds``: at least 1
    (0 would mean forever), and an absolute Unix time beyond 30 days."""
    relative = max(1, int(-(-seconds // 1)))
    if relative > THIRTY_DAYS:
        return int(time.time() if now is None else now) + relative
    return relative


class MemoryCache:
    """An in-process cache with memcached's ``get``/``set``/``add``/``delete``."""

    def __init__(self, limit: int = 64 << 20, clock: Callable[[], float] = time.time):
        if limit < 1:
            raise ValueError("memory_limit must be at least 1 byte")
        self.limit = limit
        self.clock = clock
        self.size = 0
        self._items: "OrderedDict[str, Tuple[bytes, float, int]]" = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def _deadline(self, time_: float) -> float:
        if not time_:
            return float("inf")
        if time_ > THIRTY_DAYS:
            return float(time_)
        return self.clock() + time_

    def get(self, key: str) -> Optional[bytes]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[1] <= self.clock():
                self._remove(key)
                return None
            return item[0]

    def get_multi(self, keys: Sequence[str]) -> dict:
        """The values of those ``keys`` that are held, as memcached clients answer."""
        found = {}
        for key in keys:
            value = self.get(key)
            if value is not None:
                found[key] = value
        return found

    def set(self, key: str, value: bytes, time: float = 0) -> bool:
        return self._store(key, value, time, only_if_absent=False)

    def add(self, key: str, value: bytes, time: float = 0) -> bool:
        return self._store(key, value, time, only_if_absent=True)

    def _store(self, key: str, value: bytes, time: float, only_if_absent: bool) -> bool:
        if not isinstance(value, (bytes, str)):
            raise TypeError("MemoryCache stores bytes or str values")
        cost = len(key) + len(value) + ITEM_OVERHEAD
        with self._lock:
            if only_if_absent:
                item = self._items.get(key)
                if item is not None and item[1] > self.clock():
                    return False
            self._remove(key)
            if cost > self.limit:
                return False
            self._items[key] = (value, self._deadline(time), cost)
            self.size += cost
            while self.size > self.limit:
                self._remove(next(iter(self._items)))
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._remove(key)

    def _remove(self, key: str) -> bool:
        item = self._items.pop(key, None)
        if item is None:
            return False
        self.size -= item[2]
        return True


def parse_servers(servers: Sequence[str]) -> List[Tuple[str, int]]:
    """``host:port`` strings as (host, port); a ConfigError names a bad one."""
    try:
        return [server_address(server) for server in servers]
    except ValueError as error:
        raise ConfigError(f"option memcached_servers: {error}", "memcached_servers") from None


def memcached_client(servers: Sequence[str], client: str = "python-memcached",
                     timeout: float = 0.25, retry: float = 30.0,
                     on_error: Optional[Callable[[str], None]] = None) -> Any:
    """A client for ``servers`` with the given library, timeouts and retry delay.

    ``on_error`` is told of every failure the library would otherwise swallow.
    """
    addresses = parse_servers(servers)
    if not addresses:
        raise ConfigError("option memcached_servers: no server given")
    if client == "pymemcache":
        return _pymemcache_client(addresses, timeout, retry)
    if client == "python-memcached":
        return _python_memcached_client(addresses, timeout, retry, on_error)
    raise ConfigError(f"option memcached_client: {client!r} is not python-memcached or pymemcache")


def _refuse_unpickling(*args: Any, **kwargs: Any) -> Any:
    raise ValueError("pagecache never unpickles or decompresses cached values")


_PEER_CLOSED = "connection closed in readline()"  # python-memcached's reason when recv() gives b""


def _python_memcached_client(addresses, timeout, retry, on_error):
    import memcache

    class Host(memcache._Host):
        def mark_dead(self, reason):
            if reason == _PEER_CLOSED:
                # The server closed a connection this thread held (it was
                # restarted, or dropped an idle client). python-memcached
                # reconnects once right after this, and calls mark_dead again
                # if that fails too: only the socket goes, not the server for
                # dead_retry seconds.
                self.close_socket()
                return
            super().mark_dead(reason)
            if on_error is not None:
                on_error(f"memcached {self.ip}:{self.port}: {reason}")

    class Client(memcache.Client):
        def set_servers(self, servers):
            self.servers = [Host(s, self.debug, dead_retry=self.dead_retry,
                                 socket_timeout=self.socket_timeout,
                                 flush_on_reconnect=self.flush_on_reconnect)
                            for s in servers]
            self._init_buckets()

    specs = [f"inet6:[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in addresses]
    return Client(specs, socket_timeout=timeout, dead_retry=retry, check_keys=False,
                  unpickler=_refuse_unpickling, decompressor=_refuse_unpickling)


def _score(text: str, seed: int = 0) -> int:
    """A node's rendezvous score for a key: blake2b (in C) where pymemcache
    uses murmur3 in pure Python, which costs some 10 µs for a 50-byte key."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8,
                                          salt=seed.to_bytes(8, "big")).digest(), "big")


def _pymemcache_client(addresses, timeout, retry):
    from pymemcache.client.hash import HashClient
    from pymemcache.client.rendezvous import RendezvousHash

    class Hasher(RendezvousHash):
        def __init__(self, nodes=None, seed=0):
            super().__init__(nodes, seed, hash_function=_score)

    class Client(HashClient):
        """HashClient that brings each dead server back ``retry`` seconds after
        it failed (HashClient itself checks all of them once per period), and
        whose dead-server bookkeeping, shared by the threads of a process, is
        changed under a lock (HashClient's raises ValueError or KeyError when
        two threads see a server fail at once)."""

        def __init__(self, *args, **kwargs):
            self._state = threading.RLock()
            super().__init__(*args, **kwargs)

        def _retry_dead(self):
            now = time.time()
            with self._state:
                for server, dead_since in list(self._dead_clients.items()):
                    if now - dead_since > self.dead_timeout:
                        del self._dead_clients[server]
                        self.add_server(server)

        def _mark_failed_server(self, server):
            with self._state:
                if self._make_client_key(server) in self.hasher.nodes:  # else: already taken out
                    super()._mark_failed_server(server)

        def remove_server(self, server, port=None):
            with self._state:
                if self._make_client_key(server if port is None else (server, port)) in self.hasher.nodes:
                    super().remove_server(server, port)
                else:
                    self._failed_clients.pop(server, None)

    return Client(addresses, hasher=Hasher, connect_timeout=timeout, timeout=timeout, dead_timeout=retry,
                  retry_attempts=0, use_pooling=True, ignore_exc=False, default_noreply=False)


def cache_from_options(settings: dict, clock: Callable[[], float] = time.time,
                       on_error: Optional[Callable[[str], None]] = None) -> Any:
    """The cache the options describe: memcached if ``memcached_servers`` lists
    any, else an embedded :class:`MemoryCache` of ``memory_limit`` bytes."""
    if settings["memcached_servers"]:
        return memcached_client(settings["memcached_servers"], settings["memcached_client"],
                                settings["memcached_timeout"], settings["memcached_retry"], on_error)
    return MemoryCache(settings["memory_limit"], clock)


def server_states(cache: Any) -> List[dict]:
    """The servers behind ``cache`` and their state as its client sees them
    (``up``, ``down`` while it leaves a failed one alone), for the dashboard;
    the embedded cache is one ``embedded`` entry."""
    if isinstance(cache, MemoryCache):
        return [{"address": "embedded cache (in each process)", "state": "embedded", "error": None}]
    now = time.time()
    found = []
    for host in getattr(cache, "servers", None) or ():  # python-memcached
        if hasattr(host, "deaduntil"):
            down = host.deaduntil > now
            found.append({"address": f"{host.ip}:{host.port}", "state": "down" if down else "up",
                          "error": f"left alone for {host.deaduntil - now:.0f}s more" if down else None})
    clients = getattr(cache, "clients", None)
    if isinstance(clients, dict):  # pymemcache's HashClient
        dead = getattr(cache, "_dead_clients", {}) or {}
        for key in sorted(set(clients) | {getattr(c, "server", c) for c in dead}, key=str):
            address = ":".join(str(part) for part in key) if isinstance(key, tuple) else str(key)
            found.append({"address": address, "state": "down" if key in dead else "up", "error": None})
    return found
