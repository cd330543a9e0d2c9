"""The clients of a concurrency test: threads released together by a barrier."""

from __future__ import annotations

import threading
from typing import Any, Callable, List

HOLD = 30.0  # longest a crowd waits for anything (reached only when something is wrong)


class Crowd:
    """``n`` threads released together by a barrier, thread ``i`` calling
    ``visit(i)``. :attr:`arrived` counts the threads that are done,
    :meth:`so_far` gives the answers got so far in their order of arrival, and
    :meth:`finish` waits for every thread and gives the answers by ``i`` (or
    raises the first error a thread met)."""

    def __init__(self, n: int, visit: Callable[[int], Any], hold: float = HOLD):
        self.results: List[Any] = [None] * n
        self.errors: List[BaseException] = []
        self.hold = hold
        self._visit = visit
        self._barrier = threading.Barrier(n)
        self._lock = threading.Lock()
        self._arrivals: List[Any] = []
        self._done = 0
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> "Crowd":
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, i: int) -> None:
        try:
            self._barrier.wait(self.hold)
            result = self._visit(i)
        except BaseException as error:  # reported by finish()
            with self._lock:
                self.errors.append(error)
                self._done += 1
            return
        with self._lock:
            self.results[i] = result
            self._arrivals.append(result)
            self._done += 1

    @property
    def arrived(self) -> int:
        with self._lock:
            return self._done

    def so_far(self) -> List[Any]:
        with self._lock:
            return list(self._arrivals)

    def finish(self, timeout: float = HOLD) -> List[Any]:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a client of the crowd never got its answer"
        if self.errors:
            raise self.errors[0]
        return list(self.results)
