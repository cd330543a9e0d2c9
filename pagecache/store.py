"""pagecache's access to the cache: entries in and out, locks, and every failure
turned into a miss.

Whatever the cache object does (raise, time out, answer ``0`` or ``None``,
hold another program's bytes), the methods here return an answer the request
flow can act on: ``load`` gives an entry or None, ``save`` says whether it was
stored, ``lock`` says won, lost or unavailable. Failures are counted in the
stats and logged as warnings, at most one every :data:`WARN_EVERY` seconds.
A lock whose ``add`` got no answer may have been taken all the same (a server
that hung after reading it), and one this process took may not be found when
it is released (its server out of the client's ring for a while): while the
cache answers locks again, such a lock is looked for once a second and
released, until it would have expired anyway.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

from . import entry as entries
from .backends import expiry_time
from .stats import Stats

log = logging.getLogger("pagecache")

WARN_EVERY = 10.0
DOUBTFUL_MAX = 128           # locks to release when the cache answers again
DOUBTFUL_TOKENS = 8          # of the unanswered adds of one lock, the first ones
RELEASE_EVERY = 1.0          # seconds between looks for them
PARSED_MAX = 512             # entries kept parsed, by key
PARSED_BYTES = 4 << 20       # bytes they take, as read and as parsed
HELD_MAX = 1024              # locks taken and not yet released, before expired ones are forgotten


class LockState(enum.Enum):
    """A lock request that was not won (a won one is its token, bytes)."""

    LOST = "lost"                # another request holds the lock
    UNAVAILABLE = "unavailable"  # the cache did not answer: nobody can hold the lock


LOST, UNAVAILABLE = LockState.LOST, LockState.UNAVAILABLE
BACKOFF = b"backoff:"        # what a lock held after a failed rebuild holds before its token


class Store:
    """A memcached-like client, seen as pagecache needs it.

    Expiry times are passed as the third positional argument of ``set`` and
    ``add``, which python-memcached calls ``time``, pymemcache ``expire``."""

    def __init__(self, client: Any, stats: Stats, never_sent: Iterable[str] = ()):
        self.client = client
        self.stats = stats
        self.never_sent = frozenset(name.lower() for name in never_sent)  # dropped from pages read
        self._get_multi = getattr(client, "get_multi", None) or getattr(client, "get_many", None)
        self._refused = threading.local()
        self._warn_lock = threading.Lock()
        self._quiet_until = 0.0
        self._suppressed = 0
        # lock key -> {token: expiry}: an add that timed out may still have been
        # carried out when the server came back, holding the lock for nobody;
        # any of the adds of one key may be the one (the first sent, most often)
        self._doubtful: Dict[str, Dict[bytes, float]] = {}
        self._held: Dict[bytes, float] = {}  # tokens of the locks taken, -> when they expire
        self._doubtful_lock = threading.Lock()
        self._next_release = 0.0
        # key -> (bytes, entry, size) of the entries read lately: every hit reads
        # the same bytes again, and entries are immutable, so the entry parsed
        # last time is the answer, without parsing again or copying the body
        self._parsed: Dict[str, Tuple[bytes, entries.Entry, int]] = {}
        self._parsed_size = 0
        self._parsed_lock = threading.Lock()

    def failed(self, what: str) -> None:
        """Count a failed cache operation and log it, rate-limited."""
        self.stats.incr("memcached_errors")
        now = time.monotonic()
        with self._warn_lock:
            if now < self._quiet_until:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._quiet_until = now + WARN_EVERY
        more = f" ({suppressed} more cache errors since the last warning)" if suppressed else ""
        log.warning("cache error, served without the cache: %s%s", what, more)

    def load(self, key: str) -> Optional[entries.Entry]:
        """The entry under ``key``, or None (missing, unreadable, or cache down)."""
        try:
            value = self.client.get(key)
        except Exception as error:
            self.failed(f"get {key}: {error!r}")
            return None
        if value is None:
            return None
        known = self._parsed.get(key)
        if known is not None and known[0] == value:
            return known[1]
        return self._parse(key, value)

    def load_many(self, keys: Sequence[str]) -> Dict[str, Optional[entries.Entry]]:
        """The entries under ``keys`` in one round trip (``get_multi``, or
        ``get_many``; one ``get`` each for a cache that has neither)."""
        get_multi = self._get_multi
        try:
            if get_multi is None:
                values = {key: self.client.get(key) for key in keys}
            else:
                values = get_multi(list(keys)) or {}
        except Exception as error:
            self.failed(f"get_multi of {len(keys)} keys: {error!r}")
            return {}
        found: Dict[str, Optional[entries.Entry]] = {}
        for key in keys:
            value = values.get(key)
            if value is None:
                continue
            known = self._parsed.get(key)
            found[key] = known[1] if known is not None and known[0] == value else self._parse(key, value)
        return found

    def _parse(self, key: str, value: Any) -> Optional[entries.Entry]:
        """Parse ``value`` and keep what it gave for the next :meth:`load`,
        the oldest dropped beyond :data:`PARSED_MAX` or :data:`PARSED_BYTES`."""
        entry = entries.parse(value)
        if self.never_sent and type(entry) is entries.Page:
            entry.headers = [(name, text) for name, text in entry.headers if name.lower() not in self.never_sent]
        if entry is None or type(value) is not bytes:
            return entry
        size = len(value) + len(getattr(entry, "body", b"")) + (
            entry.identity_length if type(entry) is entries.Page and entry.encoding else 0)  # its decoded copy
        if size > PARSED_BYTES // 8:
            return entry
        with self._parsed_lock:
            old = self._parsed.pop(key, None)
            if old is not None:
                self._parsed_size -= old[2]
            while self._parsed and (len(self._parsed) >= PARSED_MAX
                                    or self._parsed_size + size > PARSED_BYTES):
                self._parsed_size -= self._parsed.pop(next(iter(self._parsed)))[2]
            self._parsed[key] = (value, entry, size)
            self._parsed_size += size
        return entry

    def save(self, key: str, item: entries.Entry, seconds: float) -> bool:
        """Store ``item`` for ``seconds``; False if the cache did not take it."""
        return self._set(key, item.to_bytes(), seconds)

    def _set(self, key: str, value: bytes, seconds: float) -> bool:
        try:
            stored = self.client.set(key, value, expiry_time(seconds))
        except Exception as error:
            self._refused.why = f"the cache failed: {error!r}"
            self.failed(f"set {key}: {error!r}")
            return False
        if not stored:
            self._refused.why = f"the cache refused it ({len(value)} bytes)"
            self.failed(f"set {key}: not stored ({len(value)} bytes)")
            return False
        return True

    def refused(self) -> str:
        """Why this thread's last save failed (for the log)."""
        return getattr(self._refused, "why", "the cache refused it")

    def delete(self, key: str) -> bool:
        """Remove ``key``; False if it was not there or the cache did not answer."""
        try:
            return bool(self.client.delete(key))
        except Exception as error:
            self.failed(f"delete {key}: {error!r}")
            return False

    def lock(self, key: str, seconds: float) -> Union[LockState, bytes]:
        """Take the lock ``key`` for at most ``seconds``: a token (bytes) if won,
        else LOST, or UNAVAILABLE if the cache could not say."""
        token = os.urandom(12).hex().encode("ascii")
        try:
            won = self.client.add(key, token, expiry_time(seconds))
        except Exception as error:
            self.failed(f"add {key}: {error!r}")
            self._doubt(key, token, seconds)
            return UNAVAILABLE
        if won is False or won:
            if self._doubtful and time.monotonic() >= self._next_release:
                self._release_doubtful()
            if not won:
                return LOST
            now = time.monotonic()
            if len(self._held) >= HELD_MAX:  # tokens of rebuilds that never ended
                self._held = {held: expires for held, expires in self._held.items() if expires > now}
            self._held[token] = now + seconds
            return token
        # python-memcached answers 0 (not False) when no server could be asked,
        # a timeout included.
        self.failed(f"add {key}: no answer")
        self._doubt(key, token, seconds)
        return UNAVAILABLE

    def hold(self, key: str, token: bytes, seconds: float) -> bool:
        """Keep the lock ``key`` that ``token`` holds for ``seconds`` from now,
        marked as a back-off (and forget it: it ends by itself); whether the
        cache took it."""
        if not self._set(key, BACKOFF + token, seconds):
            return False
        self._held.pop(token, None)
        return True

    def backing_off(self, key: str) -> bool:
        """Whether the lock ``key`` is held for a back-off (see :meth:`hold`)."""
        held = self._lock_value(key)
        return held is not None and held.startswith(BACKOFF)

    def unlock(self, key: str, token: Union[LockState, bytes]) -> bool:
        """Release the lock ``key`` if ``token`` holds it; whether it did. One
        this process took and could not find (its server out of the client's
        ring for a while, say) is looked for again later, as a doubtful one."""
        if not isinstance(token, bytes):
            return False
        released = self._release(key, token)
        expires = self._held.pop(token, None)
        if not released and expires is not None:
            self._doubt(key, token, expires - time.monotonic(), held=True)
        return released

    def _release(self, key: str, token: bytes) -> bool:
        return self._lock_value(key) == token and self.delete(key)

    def _lock_value(self, key: str) -> Optional[bytes]:
        """What the lock ``key`` holds (None: nothing, or no answer)."""
        try:
            held = self.client.get(key)
        except Exception as error:
            self.failed(f"get {key}: {error!r}")
            return None
        if isinstance(held, str):
            held = held.encode("ascii", "replace")
        return held if isinstance(held, bytes) else None

    def _doubt(self, key: str, token: bytes, seconds: float, held: bool = False) -> None:
        """Remember a lock ``token`` may hold, to release later: one whose add
        got no answer, or (``held``) one this process took and could not
        release. Of a key's unanswered adds the first ones are kept (sent
        first, they are the likeliest to have been carried out); a held one
        is always kept."""
        with self._doubtful_lock:
            tokens = self._doubtful.get(key)
            if tokens is None:
                if len(self._doubtful) >= DOUBTFUL_MAX:
                    del self._doubtful[next(iter(self._doubtful))]
                tokens = self._doubtful[key] = {}
            if len(tokens) < DOUBTFUL_TOKENS or (held and len(tokens) < 2 * DOUBTFUL_TOKENS):
                tokens[token] = time.monotonic() + seconds

    def _release_doubtful(self) -> None:
        """Release the locks whose add got no answer, if they were taken after
        all. One not found is looked for again later: its server may still be
        out of the client's ring, or the add not yet carried out."""
        now = time.monotonic()
        with self._doubtful_lock:
            if now < self._next_release:
                return  # another thread is at it
            self._next_release = now + RELEASE_EVERY
            doubtful = [(key, dict(tokens)) for key, tokens in self._doubtful.items()]
        for key, tokens in doubtful:
            held = self._lock_value(key)
            done = [token for token, expires in tokens.items()
                    if expires <= now or (token == held and self.delete(key))]
            with self._doubtful_lock:
                left = self._doubtful.get(key)
                if left is not None:
                    for token in done:
                        left.pop(token, None)
                    if not left:
                        del self._doubtful[key]
