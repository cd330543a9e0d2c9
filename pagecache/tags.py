"""Tags: invalidating every page that shows something, on plain memcached.

An application names what a page shows in a response header (``tag_header``,
``Surrogate-Key`` by default: space-separated tags, as Fastly defines it).
pagecache stores the tags with the page and removes the header before the
client sees it. Purging a tag must then reach every page carrying it, in every
process and host, on a memcached that has no sets and no scans.

So a purge does not look for pages: as Varnish's bans and Drupal's cache tags
do, it records *when* the tag was purged, and a page is judged when it is
read. Each tag has two small keys, ``<prefix>:t:h:<digest>`` (the last hard
purge) and ``<prefix>:t:s:<digest>`` (the last soft purge), each holding a Unix
time; they are written with ``set`` and never read-modified-written, so two
purges can't undo each other. A page is fresh only if it was generated after
every hard and soft purge of each of its tags and of ``*``, the tag every page
implicitly carries (purge everything); generated before a hard purge, it is a
miss; before a soft purge, its TTL ended then, so its grace period applies:
one request rebuilds it while the others get it stale. A purge costs one
``set`` per tag, whatever the number of pages.

Reading a tag's times costs a round trip, so each process remembers them for
``tag_check_interval`` (1 s by default: the bound on how long a purge takes to
reach another process; 0 asks memcached on every hit), and reads all of a
page's tags in one ``get_multi``. A tag's keys are created when a page with
the tag is stored, as if purged just before that page was generated (those
of ``*`` when the middleware starts), and if they are missing when a page is
read (evicted, or a memcached server restarted), the tag counts as purged at
that moment: a lost purge never leaves an old page fresh.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

ALL = "*"            # the tag every page carries: purging it purges everything
MAX_TAGS = 64        # tags kept per page
MAX_MEMO = 10000     # tags remembered per process (the memo starts over beyond)
_TAG = re.compile(r"^[!-~]{1,200}$")
_TIME = re.compile(rb"^[0-9]+(?:\.[0-9]+)?$")


def parse_header(value: Optional[str]) -> Tuple[str, ...]:
    """The tags of a tag header: space-separated printable ASCII words, in
    order, each once, at most :data:`MAX_TAGS`; ``*`` and anything else are
    dropped."""
    if not value:
        return ()
    found: List[str] = []
    for tag in value.split():
        if tag != ALL and _TAG.match(tag) and tag not in found:
            found.append(tag)
            if len(found) == MAX_TAGS:
                break
    return tuple(found)


class TagTimes:
    """The purge times of tags, as the cache holds them, remembered for
    ``interval`` seconds per process."""

    def __init__(self, client: Any, prefix: str, interval: float, clock: Callable[[], float],
                 on_error: Callable[[str], None]):
        self.client = client
        self.interval = interval
        self.clock = clock
        self.on_error = on_error
        self._hard = prefix + ":t:h:"
        self._soft = prefix + ":t:s:"
        self._get_multi = getattr(client, "get_multi", None) or getattr(client, "get_many", None)
        # tag -> (hard purge time, soft purge time, known until)
        self._memo: Dict[str, Tuple[float, float, float]] = {}
        self._memo_lock = threading.Lock()
        self._lock = threading.Lock()         # start()'s
        self.everything = (0.0, 0.0, -1.0)   # ALL's entry, kept apart: every hit reads it
        self._started = 0                     # the process that made sure ALL's keys exist

    def keys(self, tag: str) -> Tuple[str, str]:
        digest = hashlib.blake2b(tag.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
        return self._hard + digest, self._soft + digest

    # -- judging a page ------------------------------------------------------

    def purged_since(self, tags: Sequence[str], stored: float, now: float) -> Tuple[float, float]:
        """The latest hard and soft purge times, among ``tags`` and ``*``, that
        are after ``stored`` (0.0 for none)."""
        memo = self._memo
        due = [tag for tag in tags if memo.get(tag, (0.0, 0.0, -1.0))[2] <= now]
        if self.everything[2] <= now:
            due.append(ALL)
        times = self._refresh(due, now) if due else {}  # one round trip for all that are due
        everything = times.get(ALL) or self.everything
        hard = everything[0] if everything[0] > stored else 0.0
        soft = everything[1] if everything[1] > stored else 0.0
        for tag in tags:
            found = times.get(tag) or self._memo.get(tag)
            if found is None:
                continue
            if found[0] > stored:
                hard = max(hard, found[0])
            if found[1] > stored:
                soft = max(soft, found[1])
        return hard, soft

    def _refresh(self, tags: Sequence[str], now: float, missing: Optional[float] = None
                 ) -> Dict[str, Tuple[float, float, float]]:
        """Read the times of ``tags`` in one round trip and remember them. A
        tag whose keys are missing gets them made, with the time ``missing``:
        by default ``now``, purged now, since its purges may have been lost."""
        missing = now if missing is None else missing
        keys = {tag: self.keys(tag) for tag in tags}
        wanted = [key for pair in keys.values() for key in pair]
        try:
            values = self._read(wanted)
        except Exception as error:
            self.on_error(f"get_multi of {len(wanted)} tag keys: {error!r}")
            values = None
        until = now + self.interval
        result: Dict[str, Tuple[float, float, float]] = {}
        lost: List[str] = []
        for tag, (hard_key, soft_key) in keys.items():
            if values is None:  # the cache did not answer: a purge may be unseen, so nothing is fresh
                result[tag] = (now, now, now)
                continue
            hard, soft = _time(values.get(hard_key)), _time(values.get(soft_key))
            if hard is None or soft is None:
                lost.append(tag)
                hard = soft = missing
            result[tag] = (hard, soft, until)
        if lost:
            self._create(lost, missing)
        self._remember(result)
        return result

    def _read(self, keys: List[str]) -> Dict[str, Any]:
        if self._get_multi is not None:
            return self._get_multi(keys) or {}
        return {key: value for key in keys for value in [self.client.get(key)] if value is not None}

    def _remember(self, times: Dict[str, Tuple[float, float, float]]) -> None:
        if ALL in times:
            self.everything = times[ALL]
        with self._memo_lock:
            if len(self._memo) >= MAX_MEMO:
                self._memo.clear()
            self._memo.update((tag, value) for tag, value in times.items() if tag != ALL)

    # -- storing a page ------------------------------------------------------

    def ensure(self, tags: Iterable[str], stored: float, now: float) -> None:
        """Make sure the keys of ``tags`` and of ``*`` exist: a page with those
        tags, generated at ``stored``, is being stored. Missing keys may be a
        tag never seen or one whose purges were lost (evicted), so they are
        made purged at ``stored``: the new page is fresh, older ones not. (Two
        processes storing the first pages of a new tag at the same moment may
        cost one of them a miss; ``*`` is made when the middleware starts, see
        :meth:`start`.)"""
        tags = [tag for tag in tags if tag not in self._memo]
        if self.everything[2] <= now:
            tags.append(ALL)
        if tags:
            self._refresh(tags, now, missing=stored)

    def start(self, now: float) -> None:
        """Make ``*``'s keys, if missing, before this process asks the
        application for its first page (once per process, any thread): the
        first process of a deployment makes them, with the time it read
        before making them, and a page any process asks for after that is
        later than it."""
        if self._started == os.getpid():
            return
        with self._lock:
            if self._started != os.getpid():
                self._refresh([ALL], now, missing=now)
                self._started = os.getpid()

    def _create(self, tags: Iterable[str], when: float) -> None:
        stamp = repr(when).encode("ascii")
        for tag in tags:
            for key in self.keys(tag):
                try:
                    self.client.add(key, stamp, 0)
                except Exception as error:
                    self.on_error(f"add {key}: {error!r}")
                    return

    # -- purging -------------------------------------------------------------

    def purge(self, tags: Iterable[str], soft: bool, now: float) -> List[str]:
        """Record a purge of ``tags`` at ``now`` (``*``: everything); the tags
        whose purge the cache could not take."""
        failed = []
        stamp = repr(now).encode("ascii")
        for tag in tags:
            key = self.keys(tag)[1 if soft else 0]
            try:
                stored = self.client.set(key, stamp, 0)
            except Exception as error:
                self.on_error(f"set {key}: {error!r}")
                stored = False
            if not stored:
                failed.append(tag)
            with self._memo_lock:
                self._memo.pop(tag, None)
            if tag == ALL:
                self.everything = (0.0, 0.0, -1.0)
        return failed


def _time(value: Any) -> Optional[float]:
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, (bytes, bytearray)) or not _TIME.match(bytes(value)):
        return None
    return float(value)
