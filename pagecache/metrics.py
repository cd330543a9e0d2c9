"""The numbers of one server, whichever of its worker processes is asked, as
JSON or in Prometheus' text format.

A pre-fork server (gunicorn, uWSGI) runs several worker processes, each with
its own :class:`~pagecache.stats.Stats`. With a ``stats_dir``, each process
that counts writes its snapshot to ``<stats_dir>/<group>-<process>.json`` at
most every second (a daemon thread; a temporary file and ``os.replace``, so a
reader never sees half a file), and the one that answers a scrape adds its
fresh snapshot to the files of the other processes of its group.

**The group** is the server a process belongs to, named
``<master pid>.<master start time>`` (the start time in clock ticks since
boot, from ``/proc``, so that a reused pid is another server). A process is
a worker of its parent when it was forked without exec (the kernel's
``PF_FORKNOEXEC`` flag, or, without ``/proc``, Python's fork hook having run)
and shares its parent's process group: gunicorn's and uWSGI's workers, the
children of ``multiprocessing``'s fork context. Anything else is a server of
its own (waitress, ``pserve``, a process a shell or systemd started, a
daemon that called ``setsid``). So a restarted server is a new group and
starts from zero; within a group, the files of workers that died (gunicorn
replaces them) keep counting, as counters are cumulative, until the server
itself goes; the files of groups whose master has gone are removed.

A dead worker's file is folded into ``<group>-retired.json`` (under an
``flock`` on ``<group>.lock``), so a server that recycles its workers
(``max_requests``) does not make every scrape read more files.

The snapshot (:meth:`Stats.snapshot`, :func:`aggregate`, :meth:`Shared.combined`)::

    {"<counter>": int, ...          every COUNTERS name: totals, every rule and none
     "uptime": float,               seconds since the oldest process counted started
     "processes": int,              processes whose counts are included (dead workers too)
     "pid": int,                    the process that made it (the first one aggregated)
     "started": float, "time": float,   unix times: the oldest process's start, the newest snapshot
     "rules": {"<rule>": {"<counter>": int, ...}, ...},
                                    per rule (repeated names get " #<position>"), the counters
                                    that were counted for some rule
     "histograms": {"app_seconds": {"<rule>" or "": {"buckets": [0.005, ..., 10, "+Inf"],
                    "counts": [cumulative], "sum": float, "count": int}}, "wait_seconds": {...}},
                                    "": observations not tied to a rule
     "history": [{"time": float, "hits": int, "stale": int, "misses": int, "bypasses": int,
                  "passes": int}, ...],   cumulative totals every 10 s, oldest first, ten minutes
     "recent": [{"time", "method", "url", "outcome", "reason", "ms"}, ...]}   newest first
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import weakref
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from . import stats as _stats
from .stats import (COUNTER_HELP, COUNTERS, HISTOGRAM_HELP, HISTORY_COUNTERS, HISTORY_LENGTH,
                    NO_RULE, RECENT, Stats)

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("pagecache")

PF_FORKNOEXEC = 0x40  # Linux: "forked but didn't exec" (include/linux/sched.h)
TIDY_EVERY = 10  # writes between two looks for dead workers and dead servers
PIP_HINT = "pip install prometheus_client  (or: pip install pagecache[prometheus])"


# -- adding snapshots up ------------------------------------------------------------


def aggregate(snapshots: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The snapshots of several processes as one: counters, rules and
    histograms summed, ``history`` aligned on its 10-second grid (a process
    without a sample at a time counts its last earlier one: a dead worker's
    counts don't vanish from the chart), ``recent`` merged newest first,
    ``uptime`` from the oldest start, ``processes`` summed (1 each)."""
    snapshots = [snapshot for snapshot in snapshots if snapshot]
    result: Dict[str, Any] = {name: sum(int(s.get(name, 0)) for s in snapshots) for name in COUNTERS}
    starts = [s["started"] for s in snapshots if "started" in s]
    times = [s["time"] for s in snapshots if "time" in s]
    if starts and times and len(starts) == len(times) == len(snapshots):
        uptime = max(times) - min(starts)
    else:
        uptime = max((float(s.get("uptime", 0)) for s in snapshots), default=0.0)
    result.update(
        uptime=round(max(uptime, 0.0), 3),
        processes=sum(int(s.get("processes", 1)) for s in snapshots),
        pid=snapshots[0].get("pid", 0) if snapshots else 0,
        started=min(starts) if starts else 0.0,
        time=max(times) if times else 0.0,
        rules=_sum_rules(s.get("rules", {}) for s in snapshots),
        histograms=_sum_histograms([s.get("histograms", {}) for s in snapshots]),
        history=_align_history([s.get("history", []) for s in snapshots]),
        recent=sorted((entry for s in snapshots for entry in s.get("recent", [])),
                      key=lambda entry: entry.get("time", 0), reverse=True)[:RECENT],
    )
    return result


def _sum_rules(all_rules: Iterable[Dict[str, Dict[str, int]]]) -> Dict[str, Dict[str, int]]:
    summed: Dict[str, Dict[str, int]] = {}
    names: List[str] = []
    for rules in all_rules:
        for rule, counts in rules.items():
            target = summed.setdefault(rule, {})
            for name, count in counts.items():
                target[name] = target.get(name, 0) + int(count)
                if name not in names:
                    names.append(name)
    order = [name for name in COUNTERS if name in names] + [name for name in names if name not in COUNTERS]
    return {rule: {name: counts.get(name, 0) for name in order} for rule, counts in summed.items()}


def _sum_histograms(all_histograms: List[Dict[str, Dict[str, Dict[str, Any]]]]) -> Dict[str, Any]:
    summed: Dict[str, Dict[str, Dict[str, Any]]] = {name: {} for name in HISTOGRAM_HELP}
    for histograms in all_histograms:
        for name, per_rule in histograms.items():
            target = summed.setdefault(name, {})
            for rule, histogram in per_rule.items():
                mine = target.get(rule)
                if mine is None:
                    target[rule] = {"buckets": list(histogram["buckets"]), "counts": list(histogram["counts"]),
                                    "sum": histogram["sum"], "count": histogram["count"]}
                elif mine["buckets"] == list(histogram["buckets"]):
                    mine["counts"] = [a + b for a, b in zip(mine["counts"], histogram["counts"])]
                    mine["sum"] += histogram["sum"]
                    mine["count"] += histogram["count"]
                # other buckets (another version of pagecache): left out rather than mixed up
    return summed


def _align_history(histories: List[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    grid = sorted({row["time"] for history in histories for row in history})[-HISTORY_LENGTH:]
    rows = [{"time": when, **dict.fromkeys(HISTORY_COUNTERS, 0)} for when in grid]
    for history in histories:
        history = sorted(history, key=lambda row: row["time"])
        position, last = 0, None
        for row in rows:
            while position < len(history) and history[position]["time"] <= row["time"]:
                last = history[position]
                position += 1
            if last is not None:
                for name in HISTORY_COUNTERS:
                    row[name] += int(last.get(name, 0))
    return rows


# -- Prometheus ---------------------------------------------------------------------


def prometheus(snapshot: Dict[str, Any]) -> Tuple[str, bytes]:
    """The content type and body of the Prometheus text exposition of
    ``snapshot``: ``pagecache_<counter>_total`` per rule (``rule="..."``) for
    the counters counted for rules, and without a ``rule`` label for what was
    counted for none; ``pagecache_app_seconds`` and ``pagecache_wait_seconds``
    histograms the same way; the gauges ``pagecache_processes`` and
    ``pagecache_uptime_seconds``. Needs ``prometheus_client`` (ImportError
    saying how to install it otherwise)."""
    try:
        from prometheus_client import CollectorRegistry
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
        from prometheus_client.utils import floatToGoString
    except ImportError as error:
        raise ImportError(f"the Prometheus format needs the prometheus_client package: {PIP_HINT}") from error

    class Collector:
        def collect(self) -> Iterable[Any]:
            rules = snapshot.get("rules", {})
            for name in COUNTERS:
                family = CounterMetricFamily(f"pagecache_{name}", COUNTER_HELP[name], labels=["rule"])
                tied = 0
                for rule, counts in rules.items():
                    if name in counts:
                        family.add_metric([rule], counts[name])
                        tied += counts[name]
                # what was counted for no rule: the series without the label
                family.add_sample(f"pagecache_{name}_total", {}, max(int(snapshot.get(name, 0)) - tied, 0))
                yield family
            for name, help_text in HISTOGRAM_HELP.items():
                family = HistogramMetricFamily(f"pagecache_{name}", help_text, labels=["rule"])
                for rule, histogram in snapshot.get("histograms", {}).get(name, {}).items():
                    buckets = [(bound if bound == "+Inf" else floatToGoString(bound), count)
                               for bound, count in zip(histogram["buckets"], histogram["counts"])]
                    if rule == NO_RULE:
                        unlabelled = HistogramMetricFamily(family.name, help_text, labels=[])
                        unlabelled.add_metric([], buckets, histogram["sum"])
                        family.samples.extend(unlabelled.samples)
                    else:
                        family.add_metric([rule], buckets, histogram["sum"])
                yield family
            yield GaugeMetricFamily("pagecache_processes", "worker processes whose counts are included "
                                    "(those that ended included)", value=snapshot.get("processes", 1))
            yield GaugeMetricFamily("pagecache_uptime_seconds", "seconds since the oldest of them started",
                                    value=snapshot.get("uptime", 0))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return CONTENT_TYPE_LATEST, generate_latest(registry)


# -- processes and servers ----------------------------------------------------------


def _stat(pid: Any) -> Optional[List[str]]:
    """The fields of ``/proc/<pid>/stat`` after the command name (the first is
    the state, field 3), or None where there is no such file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data.rsplit(b")", 1)[-1].decode("ascii", "replace").split()


def process_start(pid: Any = "self") -> str:
    """When a process started, in clock ticks since boot ("0": unknown)."""
    fields = _stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else "0"


def process_id(pid: Optional[int] = None) -> str:
    """``<pid>.<start>``: a process, told apart from a later one with its pid."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}.{process_start(pid if pid != os.getpid() else 'self')}"


def alive(identity: str) -> bool:
    """Whether the process ``<pid>.<start>`` (from :func:`process_id`) still runs."""
    pid_text, _, start = identity.partition(".")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    fields = _stat(pid)
    if fields is not None:
        if fields[0] in ("Z", "X"):  # ended, not yet reaped
            return False
        return start in ("", "0") or len(fields) <= 19 or fields[19] == start
    try:  # no /proc (or hidden from this user): ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _forked_without_exec() -> bool:
    fields = _stat("self")
    if fields is not None and len(fields) > 6:
        return bool(int(fields[6]) & PF_FORKNOEXEC)
    return _stats.forked_from is not None and _stats.forked_from == os.getppid()


def server_group() -> str:
    """The group of this process: its parent's identity if it is a worker the
    parent forked (without exec, in the parent's process group), else its own."""
    parent = os.getppid()
    if parent > 1 and _forked_without_exec():
        try:
            same_group = os.getpgid(parent) == os.getpgrp()
        except OSError:
            same_group = False
        if same_group:
            return process_id(parent)
    return process_id()


# -- the shared directory -------------------------------------------------------------


class Shared:
    """This process's :class:`Stats` written to ``directory`` every ``every``
    seconds, and read back with those of the other processes of its server.

    :meth:`start` may be called in a master before it forks (gunicorn
    ``--preload``): the writer runs in each process that counts, from its
    first count (or from its first :meth:`combined`). ``group`` overrides
    :func:`server_group` (for servers it does not recognise)."""

    def __init__(self, stats: Stats, directory: str, every: float = 1.0, *, group: Optional[str] = None):
        if group is not None and ("-" in group or os.sep in group or group.startswith(".")):
            raise ValueError(f"a stats group may not hold '-' or '{os.sep}' or start with '.': {group!r}")
        self.stats = stats
        self.directory = os.path.abspath(directory)
        self.every = every
        self._group = group
        self._started = False
        self._pid: Optional[int] = None  # the process the writer runs in
        self._identity: Tuple[int, str, str] = (0, "", "")  # pid, group, process id of this process
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        other = _DIRECTORIES.get(self.directory)
        if other is not None and other.stats is not stats:
            raise ValueError(f"the stats directory {self.directory} is already another middleware's "
                             "in this process: give each its own")
        os.makedirs(self.directory, exist_ok=True)
        _DIRECTORIES[self.directory] = self
        _SHARED.add(self)

    # -- this process -------------------------------------------------------

    def _names(self) -> Tuple[str, str]:
        """This process's group and file name (worked out once per process)."""
        pid = os.getpid()
        if self._identity[0] != pid:
            group = self._group or server_group()
            self._identity = (pid, group, f"{group}-{process_id()}.json")
        return self._identity[1], self._identity[2]

    @property
    def group(self) -> str:
        return self._names()[0]

    def start(self) -> None:
        """Write this process's numbers from now on (in each process that counts)."""
        if not self._started:
            self._started = True
            ref = weakref.ref(self)
            self.stats.on_first_count(lambda: _call(ref, "_ensure"))
            atexit.register(_call, ref, "_at_exit")
        if self.stats._tables:  # this process counts already
            self._ensure()

    def stop(self) -> None:
        """Stop this process's writer (it writes once more first)."""
        self._stop.set()

    def _ensure(self) -> None:
        pid = os.getpid()
        if self._pid == pid or not self._started:
            return
        with self._lock:
            if self._pid == pid:
                return
            self._stop = threading.Event()
            thread = threading.Thread(target=_writer, args=(weakref.ref(self), pid, self._stop, self.every),
                                      daemon=True, name="pagecache-stats-writer")
            thread.start()
            self._pid = pid

    def _at_exit(self) -> None:
        if self._pid == os.getpid():
            try:
                self.write()
            except OSError:
                pass

    def write(self) -> None:
        """Write this process's snapshot now (a later call never writes an older one)."""
        _, name = self._names()
        with self._write_lock:
            _write_json(os.path.join(self.directory, name), self.stats.snapshot())

    # -- the server ------------------------------------------------------------

    def combined(self) -> Dict[str, Any]:
        """This process's fresh snapshot and those of the other processes of
        its group (the living as last written, the dead as they ended), summed."""
        if self._started:
            self._ensure()
        own = self.stats.snapshot()
        return aggregate([own] + self._others())

    def _others(self) -> List[Dict[str, Any]]:
        group, own = self._names()
        retired_path = os.path.join(self.directory, f"{group}-retired.json")
        snapshots: List[Dict[str, Any]] = []
        for _ in range(5):  # again if a dead worker was folded into the retired file meanwhile
            before = _read_bytes(retired_path)
            retired = _parse(before)
            folded = set(retired.get("folded", ())) if retired else set()
            snapshots = [retired["snapshot"]] if retired and retired.get("snapshot") else []
            for name in _group_files(self.directory, group):
                if name != own and name not in folded:
                    snapshot = _parse(_read_bytes(os.path.join(self.directory, name)))
                    if snapshot:
                        snapshots.append(snapshot)
            if _read_bytes(retired_path) == before:
                break
        return snapshots

    def tidy(self) -> None:
        """Fold the files of this group's dead processes into its retired
        file, and remove the files of groups whose master has gone."""
        group, own = self._names()
        names = _listdir(self.directory)
        dead_groups = set()
        for name in names:
            other = _group_of(name)
            if other is None or other == group or other in dead_groups:
                continue
            if not alive(other):
                dead_groups.add(other)
        for name in names:
            if _group_of(name) in dead_groups:
                _unlink(os.path.join(self.directory, name))
        prefix = f".{group}-"
        for name in names:  # a process that died while writing leaves its temporary file
            if name.startswith(prefix) and name.endswith(".tmp") and ".json." in name:
                process = name[len(prefix):name.index(".json.")]
                if process != "retired" and not alive(process):
                    _unlink(os.path.join(self.directory, name))
        dead = [name for name in _group_files(self.directory, group)
                if name != own and not alive(name[len(group) + 1:-len(".json")])]
        if dead:
            self._fold(group, dead)

    def _fold(self, group: str, dead: List[str]) -> None:
        if fcntl is None:  # pragma: no cover - without flock the dead files are simply read each time
            return
        retired_path = os.path.join(self.directory, f"{group}-retired.json")
        with open(os.path.join(self.directory, f"{group}.lock"), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                retired = _parse(_read_bytes(retired_path)) or {"generation": 0, "folded": [], "snapshot": None}
                folded = list(retired.get("folded", []))
                present = set(_group_files(self.directory, group))
                new = [name for name in dead if name in present and name not in folded]
                if new:
                    snapshots = [retired["snapshot"]] if retired.get("snapshot") else []
                    snapshots += [s for s in (_parse(_read_bytes(os.path.join(self.directory, name)))
                                              for name in new) if s]
                    combined = aggregate(snapshots)
                    combined["recent"] = []  # a dead process's last decisions are history
                    # names no longer on disk need no remembering: no reader lists them any more
                    folded = [name for name in folded if name in present] + new
                    _write_json(retired_path, {"generation": retired.get("generation", 0) + 1,
                                               "folded": folded, "snapshot": combined})
                for name in folded:
                    _unlink(os.path.join(self.directory, name))
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


_SHARED: "weakref.WeakSet[Shared]" = weakref.WeakSet()
_DIRECTORIES: "weakref.WeakValueDictionary[str, Shared]" = weakref.WeakValueDictionary()


def _call(ref: "weakref.ref[Shared]", method: str) -> None:
    shared = ref()
    if shared is not None:
        getattr(shared, method)()


def _writer(ref: "weakref.ref[Shared]", pid: int, stop: threading.Event, every: float) -> None:
    """The writer thread of one Shared in one process; it ends with its Shared."""
    writes = 0
    while os.getpid() == pid:
        shared = ref()
        if shared is None:
            return
        try:
            shared.write()
            if writes % TIDY_EVERY == 0:
                shared.tidy()
        except Exception:  # never let the writer die: the next round may work
            if writes % 60 == 0:
                log.warning("could not write the stats to %s", shared.directory, exc_info=True)
        writes += 1
        del shared
        if stop.wait(every):
            _call(ref, "_at_exit")
            return


def _after_fork_in_child() -> None:
    for shared in list(_SHARED):
        shared._lock = threading.Lock()
        shared._write_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _group_of(name: str) -> Optional[str]:
    """The group of a file of the directory (``<group>-....json``, ``<group>.lock``), or None."""
    if name.startswith("."):
        name = name[1:]
    if name.endswith(".lock"):
        return name[:-len(".lock")]
    group, dash, _ = name.partition("-")
    return group if dash and group[:1].isdigit() else None


def _group_files(directory: str, group: str) -> List[str]:
    """The snapshot files of the processes of ``group`` (not the retired file)."""
    prefix = group + "-"
    return [name for name in _listdir(directory)
            if name.startswith(prefix) and name.endswith(".json") and name != f"{group}-retired.json"]


def _listdir(directory: str) -> List[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def _read_bytes(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _parse(data: Optional[bytes]) -> Optional[Dict[str, Any]]:
    if not data:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: str, value: Any) -> None:
    """Replace ``path`` by ``value`` as JSON, so that no reader sees half of it."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{threading.get_ident()}.tmp")
    data = json.dumps(value, separators=(",", ":")).encode("ascii")
    try:
        f = open(temporary, "wb")
    except FileNotFoundError:  # the directory was removed: make it again
        os.makedirs(directory, exist_ok=True)
        f = open(temporary, "wb")
    with f:
        f.write(data)
    os.replace(temporary, path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
