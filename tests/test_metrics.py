"""The numbers operators scrape: :class:`pagecache.stats.Stats` (counters per
thread, per rule, histograms, history, recent decisions), :func:`aggregate`
and :func:`prometheus` of :mod:`pagecache.metrics`, and :class:`Shared`
across real processes: forked children, and a real gunicorn with two
workers (a worker that ends keeps counting, another server's files are not
added, a restarted server starts from zero).

Processes meet on barriers, events and sockets, never on sleeps; nothing is
asserted about how long anything took.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from typing import Any, Dict, List, Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pagecache import metrics
from pagecache.metrics import Shared, aggregate, alive, process_id, prometheus, server_group
from pagecache.stats import (BUCKETS, COUNTERS, HISTOGRAMS, HISTORY_COUNTERS, HISTORY_EVERY, HISTORY_LENGTH, RECENT,
                             Stats)

from .conftest import wait_until
from .servers import free_port, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORK = multiprocessing.get_context("fork")
TOP_LEVEL = set(COUNTERS) | {"uptime", "processes", "pid", "started", "time", "rules", "histograms", "history",
                             "recent"}


def nonzero(snapshot: Dict[str, Any]) -> Dict[str, int]:
    return {name: snapshot[name] for name in COUNTERS if snapshot[name]}


# -- Stats ----------------------------------------------------------------------------


def test_counts_from_many_threads_add_up_per_rule_and_ended_threads_are_folded():
    stats = Stats(["/news/", "/blog/", "/"])
    together = threading.Barrier(8)

    def work(number: int) -> None:
        together.wait(timeout=10)
        for _ in range(1000):
            stats.incr("hits", rule=number % 3)
        stats.incr("stale", 2, rule=0)
        stats.incr("memcached_errors")
        stats.observe("app_seconds", 0.02, rule=number % 3)
        stats.observe("wait_seconds", 20.0)
        stats.decision(float(number), "GET", f"http://example.com/{number}", "HIT", "", 0.5)

    for _ in range(5):
        threads = [threading.Thread(target=work, args=(number,)) for number in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert (stats["hits"], stats["stale"], stats["memcached_errors"]) == (40_000, 80, 40)
    snapshot = stats.snapshot()
    assert nonzero(snapshot) == {"hits": 40_000, "stale": 80, "memcached_errors": 40}
    # threads 0, 3, 6 count for /news/, 1, 4, 7 for /blog/, 2, 5 for /
    assert snapshot["rules"] == {"/news/": {"hits": 15_000, "stale": 80}, "/blog/": {"hits": 15_000, "stale": 0},
                                 "/": {"hits": 10_000, "stale": 0}}
    app = snapshot["histograms"]["app_seconds"]
    assert {rule: histogram["count"] for rule, histogram in app.items()} == {"/news/": 15, "/blog/": 15, "/": 10}
    assert app["/"]["counts"] == [0, 0, 10] + [10] * 9  # 0.02 s: in every bucket from le=0.025 on
    assert app["/"]["sum"] == pytest.approx(0.2)
    wait = snapshot["histograms"]["wait_seconds"][""]  # not tied to a rule
    assert wait["counts"] == [0] * 11 + [40] and wait["count"] == 40  # 20 s: +Inf only
    assert len(snapshot["recent"]) == 40
    # left: this thread's tables and at most the last round's; the others were folded
    assert len(stats._tables) <= 9


def test_unknown_counters_histograms_and_rules_raise():
    stats = Stats(["/a"])
    with pytest.raises(KeyError):
        stats.incr("hitz")
    with pytest.raises(KeyError):
        stats.observe("app_secs", 1.0)
    with pytest.raises(IndexError):
        stats.incr("hits", rule=1)
    with pytest.raises(IndexError):
        stats.observe("app_seconds", 1.0, rule=-1)
    with pytest.raises(KeyError):
        stats["hitz"]
    stats.incr("hits", rule=0)
    assert stats["hits"] == 1


def test_snapshot_schema_is_complete_and_json_serialisable():
    stats = Stats(["/news/", "~^/item/\\d+$", "/news/"])  # a name that repeats gets its position
    assert stats.rules == ("/news/", "~^/item/\\d+$", "/news/ #3")
    fresh = stats.snapshot()
    assert set(fresh) == TOP_LEVEL
    assert nonzero(fresh) == {} and fresh["processes"] == 1 and fresh["pid"] == os.getpid()
    assert fresh["rules"] == {"/news/": {}, "~^/item/\\d+$": {}, "/news/ #3": {}}
    assert fresh["histograms"] == {name: {} for name in HISTOGRAMS}
    assert (fresh["history"], fresh["recent"]) == ([], [])

    stats.incr("hits", rule=2)
    stats.incr("compressed_bytes_saved", 1500, rule=0)
    stats.incr("purges")
    stats.observe("app_seconds", 0.3, rule=1)
    stats.sample(1000.0)
    stats.decision(1001.0, "GET", "http://example.com/news/", "MISS", "stored", 12.34567)
    stats.decision(1002.0, "HEAD", "http://example.com/item/1", "HIT", "", 0.25)
    snapshot = json.loads(json.dumps(stats.snapshot()))
    assert set(snapshot) == TOP_LEVEL
    assert all(isinstance(snapshot[name], int) for name in COUNTERS)
    assert nonzero(snapshot) == {"hits": 1, "compressed_bytes_saved": 1500, "purges": 1}
    assert isinstance(snapshot["uptime"], float) and snapshot["uptime"] >= 0
    assert snapshot["started"] <= snapshot["time"]
    assert snapshot["rules"] == {"/news/": {"hits": 0, "compressed_bytes_saved": 1500},
                                 "~^/item/\\d+$": {"hits": 0, "compressed_bytes_saved": 0},
                                 "/news/ #3": {"hits": 1, "compressed_bytes_saved": 0}}
    histogram = snapshot["histograms"]["app_seconds"]["~^/item/\\d+$"]
    assert histogram == {"buckets": list(BUCKETS) + ["+Inf"], "counts": [0] * 5 + [0, 1, 1, 1, 1, 1, 1],
                         "sum": 0.3, "count": 1}
    assert snapshot["histograms"]["wait_seconds"] == {}
    assert snapshot["history"] == [{"time": 1000.0, "hits": 1, "stale": 0, "misses": 0, "bypasses": 0,
                                    "passes": 0}]
    assert snapshot["recent"] == [  # newest first
        {"time": 1002.0, "method": "HEAD", "url": "http://example.com/item/1", "outcome": "HIT", "reason": "",
         "ms": 0.25},
        {"time": 1001.0, "method": "GET", "url": "http://example.com/news/", "outcome": "MISS",
         "reason": "stored", "ms": 12.346},
    ]


def test_recent_decisions_are_bounded():
    stats = Stats()
    for number in range(RECENT + 30):
        stats.decision(float(number), "GET", f"/{number}", "HIT", "", 1.0)
    recent = stats.snapshot()["recent"]
    assert len(recent) == RECENT
    assert [entry["url"] for entry in recent[:2]] == [f"/{RECENT + 29}", f"/{RECENT + 28}"]


def test_history_keeps_ten_minutes_of_cumulative_totals_on_the_grid():
    stats = Stats(["/"])
    for step in range(HISTORY_LENGTH + 5):
        stats.incr("hits", 2, rule=0)
        stats.incr("misses", rule=0)
        stats.sample(1000.0 + HISTORY_EVERY * step)
    stats.incr("bypasses")
    stats.sample(1000.0 + HISTORY_EVERY * (HISTORY_LENGTH + 4))  # the same time again: replaces the last sample
    history = stats.snapshot()["history"]
    assert len(history) == HISTORY_LENGTH
    assert history[0] == {"time": 1050.0, "hits": 12, "stale": 0, "misses": 6, "bypasses": 0, "passes": 0}
    assert history[-1] == {"time": 1640.0, "hits": 130, "stale": 0, "misses": 65, "bypasses": 1, "passes": 0}
    assert set(history[-1]) == {"time", *HISTORY_COUNTERS}


def test_the_history_thread_runs_once_per_process_from_the_first_count():
    stats = Stats()
    stats.incr("hits")
    samplers = [thread for thread in threading.enumerate() if thread.name == "pagecache-stats-history"]
    assert len(samplers) == 1 and samplers[0].daemon
    Stats().incr("hits")
    assert len([thread for thread in threading.enumerate() if thread.name == "pagecache-stats-history"]) == 1


def _forked_child(stats: Stats, counted: Any, go: Any, results: Any) -> None:
    try:
        before = stats["hits"]
        stats.incr("hits", 2)
        stats.incr("misses", rule=0)
        counted.wait(10)
        go.wait(10)
        samplers = [thread.name for thread in threading.enumerate() if thread.name == "pagecache-stats-history"]
        results.put({"before": before, "snapshot": stats.snapshot(), "group": server_group(),
                     "samplers": samplers})
    except BaseException as error:  # pragma: no cover - shown by the parent
        results.put({"error": repr(error)})


def test_a_forked_process_starts_from_zero_in_its_parents_group():
    stats = Stats(["/"])
    stats.incr("hits", 5)
    stats.decision(1.0, "GET", "/", "HIT", "", 1.0)
    counted, go, results = FORK.Barrier(3), FORK.Event(), FORK.Queue()
    children = [FORK.Process(target=_forked_child, args=(stats, counted, go, results)) for _ in range(2)]
    for child in children:
        child.start()
    try:
        counted.wait(10)
        stats.incr("hits")  # the parent's counts are its own
        go.set()
        answers = [results.get(timeout=20) for _ in children]
    finally:
        for child in children:
            child.join(10)
    for answer in answers:
        assert "error" not in answer, answer["error"]
        assert answer["before"] == 0
        assert nonzero(answer["snapshot"]) == {"hits": 2, "misses": 1}
        assert answer["snapshot"]["recent"] == []
        assert answer["snapshot"]["pid"] != os.getpid()
        assert answer["group"] == process_id()  # a worker of this process
        assert answer["samplers"] == ["pagecache-stats-history"]  # its own history thread
    assert stats["hits"] == 6 and len(stats.snapshot()["recent"]) == 1


# -- aggregate ------------------------------------------------------------------------


def hand_made(pid: int, started: float, time: float, **counts: int) -> Dict[str, Any]:
    snapshot: Dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    snapshot.update(counts)
    snapshot.update(uptime=round(time - started, 3), processes=1, pid=pid, started=started, time=time,
                    rules={}, histograms={name: {} for name in HISTOGRAMS}, history=[], recent=[])
    return snapshot


def histogram(counts: List[int], total: float) -> Dict[str, Any]:
    return {"buckets": list(BUCKETS) + ["+Inf"], "counts": counts, "sum": total, "count": counts[-1]}


def test_aggregate_sums_counters_rules_and_histograms():
    one = hand_made(101, started=1000.0, time=1500.0, hits=10, misses=2, memcached_errors=1)
    one["rules"] = {"/news/": {"hits": 7, "misses": 2}, "/": {"hits": 3, "misses": 0}}
    one["histograms"]["app_seconds"] = {"/news/": histogram([1] * 12, 0.004)}
    two = hand_made(102, started=1100.0, time=1510.0, hits=5, stale=4)
    two["rules"] = {"/news/": {"hits": 5, "stale": 4}, "/": {"hits": 0, "stale": 0}}
    two["histograms"]["app_seconds"] = {"/news/": histogram([0] * 6 + [2] * 6, 0.8),
                                        "/": histogram([0] * 11 + [1], 12.0)}
    two["histograms"]["wait_seconds"] = {"": histogram([0] * 3 + [1] * 9, 0.03)}
    total = aggregate([one, two])
    assert set(total) == TOP_LEVEL
    assert nonzero(total) == {"hits": 15, "misses": 2, "stale": 4, "memcached_errors": 1}
    assert (total["processes"], total["pid"], total["started"], total["time"]) == (2, 101, 1000.0, 1510.0)
    assert total["uptime"] == 510.0  # from the oldest start to the newest snapshot
    assert total["rules"] == {"/news/": {"hits": 12, "stale": 4, "misses": 2}, "/": {"hits": 3, "stale": 0, "misses": 0}}
    app = total["histograms"]["app_seconds"]
    assert app["/news/"] == histogram([1] * 6 + [3] * 6, 0.804)
    assert app["/"] == histogram([0] * 11 + [1], 12.0)
    assert total["histograms"]["wait_seconds"] == {"": histogram([0] * 3 + [1] * 9, 0.03)}
    assert json.loads(json.dumps(total)) == total


def test_aggregate_leaves_out_histograms_with_other_buckets():
    one = hand_made(1, 0.0, 1.0)
    one["histograms"]["app_seconds"] = {"/": histogram([1] * 12, 0.001)}
    other = hand_made(2, 0.0, 1.0)
    other["histograms"]["app_seconds"] = {"/": {"buckets": [1, "+Inf"], "counts": [5, 5], "sum": 1.0, "count": 5}}
    assert aggregate([one, other])["histograms"]["app_seconds"] == {"/": histogram([1] * 12, 0.001)}


def test_aggregate_aligns_history_and_carries_a_finished_process_forward():
    def row(when: float, hits: int, misses: int = 0) -> Dict[str, Any]:
        return {"time": when, "hits": hits, "stale": 0, "misses": misses, "bypasses": 0, "passes": 0}

    ended = hand_made(1, 900.0, 1025.0)  # a worker that died after its sample of 1020
    ended["history"] = [row(1000.0, 1), row(1010.0, 4), row(1020.0, 6, misses=1)]
    living = hand_made(2, 900.0, 1045.0)
    living["history"] = [row(1000.0, 10), row(1010.0, 20), row(1020.0, 30), row(1030.0, 40), row(1040.0, 50)]
    late = hand_made(3, 1025.0, 1045.0)  # its replacement, started after 1020
    late["history"] = [row(1030.0, 100), row(1040.0, 200)]
    history = aggregate([ended, living, late])["history"]
    assert history == [row(1000.0, 11), row(1010.0, 24), row(1020.0, 36, 1), row(1030.0, 146, 1),
                       row(1040.0, 256, 1)]


def test_aggregate_keeps_the_last_ten_minutes_of_history():
    one = hand_made(1, 0.0, 1.0)
    one["history"] = [{"time": 10.0 * step, **dict.fromkeys(HISTORY_COUNTERS, step)} for step in range(100)]
    history = aggregate([one, hand_made(2, 0.0, 1.0)])["history"]
    assert len(history) == HISTORY_LENGTH and history[0]["time"] == 400.0 and history[-1]["hits"] == 99


def test_aggregate_merges_recent_decisions_newest_first_and_bounded():
    snapshots = []
    for pid in range(3):
        snapshot = hand_made(pid, 0.0, 100.0)
        snapshot["recent"] = [{"time": float(when), "method": "GET", "url": f"/{pid}/{when}", "outcome": "HIT",
                               "reason": "", "ms": 1.0} for when in range(pid + 60, pid, -3)]
        snapshots.append(snapshot)
    recent = aggregate(snapshots)["recent"]
    assert len(recent) == RECENT
    assert [entry["time"] for entry in recent] == sorted((entry["time"] for entry in recent), reverse=True)
    assert recent[0]["url"] == "/2/62" and recent[1]["url"] == "/1/61"


def test_aggregate_of_nothing_is_all_zero():
    total = aggregate([])
    assert set(total) == TOP_LEVEL
    assert nonzero(total) == {} and (total["processes"], total["uptime"]) == (0, 0.0)


# -- prometheus -------------------------------------------------------------------------


def families(body: bytes) -> Dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(body.decode("utf-8"))}


def samples(family: Any) -> Dict[Any, float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value for sample in family.samples}


def test_prometheus_counters_per_rule_and_unlabelled_histograms_and_gauges():
    stats = Stats(["/news/", "/"])
    stats.incr("hits", 7, rule=0)
    stats.incr("hits", 3, rule=1)
    stats.incr("misses", rule=0)
    stats.incr("misses")  # not tied to a rule
    stats.incr("memcached_errors", 2)
    stats.observe("app_seconds", 0.03, rule=0)
    stats.observe("app_seconds", 4.0, rule=0)
    stats.observe("wait_seconds", 0.2)
    content_type, body = prometheus(stats.snapshot())
    assert content_type.startswith("text/plain; version=") and "charset=utf-8" in content_type
    found = families(body)
    assert {f"pagecache_{name}" for name in COUNTERS} <= set(found)
    hits = found["pagecache_hits"]
    assert hits.type == "counter" and hits.documentation.startswith("served fresh")
    assert samples(hits) == {("pagecache_hits_total", (("rule", "/news/"),)): 7.0,
                             ("pagecache_hits_total", (("rule", "/"),)): 3.0,
                             ("pagecache_hits_total", ()): 0.0}
    assert samples(found["pagecache_misses"]) == {("pagecache_misses_total", (("rule", "/news/"),)): 1.0,
                                                  ("pagecache_misses_total", (("rule", "/"),)): 0.0,
                                                  ("pagecache_misses_total", ()): 1.0}
    assert samples(found["pagecache_memcached_errors"]) == {("pagecache_memcached_errors_total", ()): 2.0}
    assert samples(found["pagecache_stale"]) == {("pagecache_stale_total", ()): 0.0}

    app = found["pagecache_app_seconds"]
    assert app.type == "histogram"
    app_samples = samples(app)
    bucket = {sample.labels["le"]: sample.value for sample in app.samples if sample.name.endswith("_bucket")}
    assert bucket == {"0.005": 0, "0.01": 0, "0.025": 0, "0.05": 1, "0.1": 1, "0.25": 1, "0.5": 1, "1.0": 1,
                      "2.5": 1, "5.0": 2, "10.0": 2, "+Inf": 2}
    assert {sample.labels["rule"] for sample in app.samples} == {"/news/"}
    assert app_samples[("pagecache_app_seconds_count", (("rule", "/news/"),))] == 2
    assert app_samples[("pagecache_app_seconds_sum", (("rule", "/news/"),))] == pytest.approx(4.03)
    wait = samples(found["pagecache_wait_seconds"])
    assert wait[("pagecache_wait_seconds_bucket", (("le", "0.25"),))] == 1
    assert wait[("pagecache_wait_seconds_bucket", (("le", "0.1"),))] == 0
    assert wait[("pagecache_wait_seconds_count", ())] == 1

    assert samples(found["pagecache_processes"]) == {("pagecache_processes", ()): 1.0}
    uptime = found["pagecache_uptime_seconds"]
    assert uptime.type == "gauge" and uptime.samples[0].value >= 0


def test_prometheus_of_an_aggregate_and_label_values_that_need_escaping():
    one = hand_made(1, 0.0, 10.0, hits=4)
    one["rules"] = {'~^/a"b\\c$': {"hits": 4}}
    two = hand_made(2, 5.0, 12.0, hits=1)
    two["rules"] = {'~^/a"b\\c$': {"hits": 1}}
    found = families(prometheus(aggregate([one, two]))[1])
    assert samples(found["pagecache_hits"]) == {("pagecache_hits_total", (("rule", '~^/a"b\\c$'),)): 5.0,
                                                ("pagecache_hits_total", ()): 0.0}
    assert samples(found["pagecache_processes"]) == {("pagecache_processes", ()): 2.0}
    assert samples(found["pagecache_uptime_seconds"]) == {("pagecache_uptime_seconds", ()): 12.0}


def test_prometheus_without_prometheus_client_says_how_to_install_it(monkeypatch):
    for name in [name for name in sys.modules if name.split(".")[0] == "prometheus_client"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install prometheus_client"):
        prometheus(Stats().snapshot())


# -- Shared, in one process ---------------------------------------------------------------


def write_file(directory: str, name: str, snapshot: Dict[str, Any]) -> None:
    with open(os.path.join(directory, name), "w") as f:
        json.dump(snapshot, f)


def test_combined_adds_the_groups_files_and_no_other(tmp_path):
    stats = Stats()
    shared = Shared(stats, str(tmp_path))
    group = shared.group
    assert group == server_group() == process_id()  # pytest was started by exec: a server of its own
    stats.incr("hits", 3)
    shared.write()
    write_file(str(tmp_path), f"{group}-4194305.77.json", hand_made(4194305, 0.0, 1.0, hits=10))  # a dead worker
    write_file(str(tmp_path), f"{process_id(os.getppid())}-4194306.1.json",
               hand_made(4194306, 0.0, 1.0, hits=1000))  # another server's (its master lives)
    combined = shared.combined()
    assert (combined["hits"], combined["processes"], combined["pid"]) == (13, 2, os.getpid())
    stats.incr("hits")  # the answering process's own numbers are fresh, not its file's
    assert shared.combined()["hits"] == 14


def test_tidy_folds_dead_workers_and_removes_servers_that_are_gone(tmp_path):
    stats = Stats()
    shared = Shared(stats, str(tmp_path))
    group = shared.group
    stats.incr("misses", 2)
    shared.write()
    for pid in (4194305, 4194306):  # no such processes (beyond the kernel's largest pid)
        snapshot = hand_made(pid, 0.0, 1.0, hits=pid - 4194300)
        snapshot["recent"] = [{"time": 1.0, "method": "GET", "url": "/", "outcome": "HIT", "reason": "", "ms": 1.0}]
        write_file(str(tmp_path), f"{group}-{pid}.5.json", snapshot)
    gone = "4194307.12"  # a server whose master has gone
    write_file(str(tmp_path), f"{gone}-4194308.13.json", hand_made(4194308, 0.0, 1.0, hits=500))
    write_file(str(tmp_path), f"{gone}-retired.json", {"generation": 1, "folded": [], "snapshot": None})
    open(os.path.join(str(tmp_path), f"{gone}.lock"), "w").close()
    open(os.path.join(str(tmp_path), f".{group}-4194305.5.json.1234.tmp"), "w").close()  # died writing
    other = f"{process_id(os.getppid())}-4194309.1.json"
    write_file(str(tmp_path), other, hand_made(4194309, 0.0, 1.0, hits=1000))
    before = shared.combined()
    assert (before["hits"], before["misses"], before["processes"]) == (11, 2, 3)

    shared.tidy()
    assert sorted(os.listdir(str(tmp_path))) == sorted(
        [f"{group}-{process_id()}.json", f"{group}-retired.json", f"{group}.lock", other])
    after = shared.combined()
    assert (after["hits"], after["misses"], after["processes"]) == (11, 2, 3)
    assert after["recent"] == []  # the dead workers' last decisions are not the latest

    write_file(str(tmp_path), f"{group}-4194310.5.json", hand_made(4194310, 0.0, 1.0, hits=100))
    shared.tidy()  # a second death: added to the retired file
    assert shared.combined()["hits"] == 111
    assert not os.path.exists(os.path.join(str(tmp_path), f"{group}-4194310.5.json"))


def test_the_writer_starts_at_the_first_count_and_keeps_the_file_fresh(tmp_path):
    stats = Stats()
    shared = Shared(stats, str(tmp_path), every=0.01)
    shared.start()  # nothing counted yet (a master before it forks): no writer, no file
    assert shared._pid is None and os.listdir(str(tmp_path)) == []
    path = os.path.join(str(tmp_path), f"{shared.group}-{process_id()}.json")

    def written() -> int:
        try:
            with open(path) as f:
                return json.load(f)["hits"]
        except (OSError, ValueError):
            return -1

    stats.incr("hits")
    assert shared._pid == os.getpid()
    wait_until(lambda: written() == 1)
    stats.incr("hits", 2)
    wait_until(lambda: written() == 3)
    writers = [thread for thread in threading.enumerate() if thread.name == "pagecache-stats-writer"]
    shared.stop()
    for thread in writers:
        thread.join(10)
    assert not any(thread.is_alive() for thread in writers)
    assert [name for name in os.listdir(str(tmp_path)) if name.startswith(".")] == []  # no temporary file left


def test_a_directory_is_one_middlewares(tmp_path):
    first = Shared(Stats(), str(tmp_path))
    with pytest.raises(ValueError, match="already another middleware"):
        Shared(Stats(), str(tmp_path))
    assert Shared(first.stats, str(tmp_path)).group == first.group
    del first
    Shared(Stats(), str(tmp_path))  # free again once the first has gone


def test_processes_are_told_apart_from_a_later_one_with_their_pid():
    mine = process_id()
    assert alive(mine)
    pid, start = mine.split(".")
    assert not alive(f"{pid}.{int(start) + 1}")  # the same pid, started later: another process
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    assert not alive(f"{ended.stdout.strip()}.0")
    assert not alive("4194305.1") and not alive("junk")


# -- Shared, across the two workers of a real gunicorn -------------------------------------------


APP = '''
import json, os, signal, socket
from urllib.parse import parse_qs
from pagecache.stats import Stats
from pagecache.metrics import Shared, prometheus

stats = Stats(["/a", "/b"])
shared = Shared(stats, os.environ["STATS_DIR"], every=3600)  # written when asked, and at exit
shared.start()


def app(environ, start_response):
    path, query = environ["PATH_INFO"], parse_qs(environ.get("QUERY_STRING", ""))
    content_type = "application/json"
    if path == "/count":
        stats.incr("hits", int(query["n"][0]), rule=0)
        stats.incr("misses", rule=1)
        stats.incr("memcached_errors")
        stats.observe("app_seconds", 0.02, rule=1)
        shared.write()
        body = json.dumps({"pid": os.getpid(), "group": shared.group}).encode()
    elif path == "/combined":
        body = json.dumps(dict(shared.combined(), answered_by=os.getpid())).encode()
    elif path == "/metrics":
        content_type, body = prometheus(shared.combined())
    elif path == "/tidy":
        shared.tidy()
        body = b"{}"
    elif path == "/hold":  # busy until the test says so: the other worker takes the next requests
        with socket.create_connection(("127.0.0.1", int(query["port"][0])), timeout=30) as held:
            held.sendall(str(os.getpid()).encode() + b"\\n")
            held.recv(1)
        body = b"{}"
    elif path == "/exit":  # a graceful end after this answer, as gunicorn's max_requests does
        os.kill(os.getpid(), signal.SIGTERM)
        body = json.dumps({"pid": os.getpid()}).encode()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no"]
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
'''


class Gunicorn:
    """``gunicorn`` (sync workers) serving the APP module above, with a
    ``stats_dir``. :meth:`steer` makes sure the next requests go to one
    worker: every other worker is kept busy by a request that waits on a
    socket of the test."""

    def __init__(self, directory: str, stats_dir: str, workers: int = 2, preload: bool = False):
        self.directory = directory
        self.stats_dir = stats_dir
        self.workers = workers
        self.preload = preload
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None
        self.holds: Dict[int, Any] = {}  # worker pid -> (socket to release it, thread of its request)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(30)

    def start(self) -> "Gunicorn":
        with open(os.path.join(self.directory, "metrics_app.py"), "w") as f:
            f.write(APP)
        command = [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "--workers", str(self.workers),
                   "--bind", f"127.0.0.1:{self.port}", "--chdir", self.directory, "--timeout", "60",
                   "--graceful-timeout", "10", "--log-level", "warning"]
        command += ["--preload"] if self.preload else []
        env = dict(os.environ, STATS_DIR=self.stats_dir,
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        self.log = open(os.path.join(self.directory, "gunicorn.log"), "ab")
        self.process = subprocess.Popen(command + ["metrics_app:app"], stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env)
        wait_for_port(self.port, timeout=30, process=self.process)
        wait_until(lambda: len(self.worker_pids()) == self.workers, timeout=30)
        return self

    def stop(self) -> None:
        for pid in list(self.holds):
            self.release(pid)
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.process.kill()
                self.process.wait(10)
            self.process = None
            self.log.close()

    def worker_pids(self) -> List[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = metrics._stat(entry)
                if fields is not None and int(fields[1]) == self.process.pid and fields[0] not in "ZX":
                    pids.append(int(entry))
        return sorted(pids)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as response:
            body = response.read()
            return json.loads(body) if response.headers["Content-Type"] == "application/json" else body

    def hold(self) -> int:
        """Keep one free worker busy; its pid."""
        thread = threading.Thread(target=self.get, args=(f"/hold?port={self.listener.getsockname()[1]}",))
        thread.start()
        connection, _ = self.listener.accept()
        pid = int(connection.makefile().readline())
        self.holds[pid] = (connection, thread)
        return pid

    def release(self, pid: int) -> None:
        connection, thread = self.holds.pop(pid)
        connection.sendall(b"x")
        connection.close()
        thread.join(30)

    def steer(self, pid: int) -> None:
        """From now on, requests go to worker ``pid`` (all others are held)."""
        while len(self.holds) < self.workers:
            self.hold()
        assert set(self.holds) == set(self.worker_pids())
        self.release(pid)


@pytest.fixture
def gunicorn(tmp_path):
    servers: List[Gunicorn] = []

    def start(**kwargs: Any) -> Gunicorn:
        server = Gunicorn(str(tmp_path), str(tmp_path / "stats"), **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_gunicorn_workers_add_up_whoever_answers_and_an_ended_worker_keeps_counting(gunicorn):
    server = gunicorn(preload=True)  # the app is made in the master: the workers' Stats come from a fork
    first, second = server.worker_pids()
    group = process_id(server.process.pid)

    server.steer(first)
    assert server.get("/count?n=3") == {"pid": first, "group": group}
    assert server.get("/count?n=4")["pid"] == first
    server.steer(second)
    assert server.get("/count?n=10") == {"pid": second, "group": group}
    for answering in (second, first):
        server.steer(answering)
        combined = server.get("/combined")
        assert combined["answered_by"] == answering
        assert nonzero(combined) == {"hits": 17, "misses": 3, "memcached_errors": 3}
        assert combined["processes"] == 2
        assert combined["rules"] == {"/a": {"hits": 17, "misses": 0}, "/b": {"hits": 0, "misses": 3}}
        assert combined["histograms"]["app_seconds"]["/b"]["count"] == 3

    server.steer(first)
    found = families(server.get("/metrics"))
    assert samples(found["pagecache_hits"])[("pagecache_hits_total", (("rule", "/a"),))] == 17
    assert samples(found["pagecache_memcached_errors"]) == {("pagecache_memcached_errors_total", ()): 3}
    assert samples(found["pagecache_processes"]) == {("pagecache_processes", ()): 2}

    # the first worker ends (as with max_requests); gunicorn starts another
    server.steer(first)
    assert server.get("/exit") == {"pid": first}
    wait_until(lambda: first not in server.worker_pids() and len(server.worker_pids()) == 2, timeout=30)
    assert not alive(f"{first}.0")
    third = next(pid for pid in server.worker_pids() if pid != second)
    server.holds.pop(first, None)
    server.steer(third)
    assert server.get("/count?n=100") == {"pid": third, "group": group}
    for answering in (third, second):
        server.steer(answering)
        combined = server.get("/combined")
        assert (combined["hits"], combined["misses"], combined["processes"]) == (117, 4, 3)

    server.get("/tidy")  # folds the ended worker's file into the group's retired file
    names = os.listdir(server.stats_dir)
    assert f"{group}-retired.json" in names
    assert not [name for name in names if name.startswith(f"{group}-{first}.")]
    server.steer(second)
    combined = server.get("/combined")
    assert (combined["hits"], combined["misses"], combined["processes"]) == (117, 4, 3)


def test_another_servers_files_are_not_added_and_a_restarted_server_starts_from_zero(gunicorn, tmp_path):
    stats_dir = str(tmp_path / "stats")
    os.makedirs(stats_dir)
    # a server that still runs (this test's process) and one whose master has gone
    write_file(stats_dir, f"{process_id()}-4194305.1.json", hand_made(4194305, 0.0, 1.0, hits=1000))
    write_file(stats_dir, "4194306.7-4194307.8.json", hand_made(4194307, 0.0, 1.0, hits=5000))

    old = gunicorn()  # the app is made in each worker, after the fork
    old_group = process_id(old.process.pid)
    for worker in old.worker_pids():
        old.steer(worker)
        assert old.get("/count?n=5") == {"pid": worker, "group": old_group}
    combined = old.get("/combined")
    assert (combined["hits"], combined["processes"]) == (10, 2)
    old.get("/tidy")
    assert not os.path.exists(os.path.join(stats_dir, "4194306.7-4194307.8.json"))  # its master has gone
    assert os.path.exists(os.path.join(stats_dir, f"{process_id()}-4194305.1.json"))  # its master lives
    old.stop()

    new = gunicorn()
    new_group = process_id(new.process.pid)
    assert new_group != old_group
    new.steer(new.worker_pids()[0])
    assert new.get("/count?n=7")["group"] == new_group
    combined = new.get("/combined")
    assert (combined["hits"], combined["misses"], combined["processes"]) == (7, 1, 1)
    new.get("/tidy")
    assert not [name for name in os.listdir(stats_dir) if name.startswith(old_group)]
    assert os.path.exists(os.path.join(stats_dir, f"{process_id()}-4194305.1.json"))
