"""Background refresh (``background_refresh = true``): pages in their grace
period are rebuilt by a small pool of worker threads while the request that
noticed is served the stale copy.

The pool is bounded twice: ``workers`` threads, and a queue of at most
:data:`QUEUE_SIZE` waiting rebuilds. When the queue is full the rebuild is not
queued; the caller releases its lock so a later request can try again.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Callable, List

log = logging.getLogger("pagecache")

QUEUE_SIZE = 256


class Refresher:
    """A bounded pool of daemon threads running rebuild jobs."""

    def __init__(self, workers: int):
        self.workers = workers
        self._queue: "queue.Queue[Callable[[], None]]" = queue.Queue(QUEUE_SIZE)
        self._threads: List[threading.Thread] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False if the queue is full."""
        self._start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _start(self) -> None:
        if len(self._threads) >= self.workers and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():  # forked (gunicorn --preload): threads stayed behind
                self._pid, self._threads = os.getpid(), []
                self._queue = queue.Queue(QUEUE_SIZE)
            while len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name="pagecache-refresh", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job()
            except Exception:
                log.exception("pagecache: background refresh failed")
            finally:
                self._queue.task_done()

    def join(self) -> None:
        """Wait until every queued rebuild has finished (for tests and shutdown)."""
        self._queue.join()
