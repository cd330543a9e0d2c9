"""The counters of a gunicorn server's two workers, added up: in the JSON
view and in Prometheus' text format, whichever worker answers."""

from __future__ import annotations

import json
import threading

from prometheus_client.parser import text_string_to_metric_families

from .apps.harness import Served, deploy  # noqa: F401  (fixture)
from .conftest import wait_until
from .servers import GunicornServer


def families(text: str) -> dict:
    """Prometheus samples as {(name, labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_two_gunicorn_workers_are_summed_in_json_and_prometheus(deploy, tmp_path):
    stats_dir = tmp_path / "stats"
    deployment = deploy("webob", f"""
        cached_urls =
            /news   60  5m
            /       60  5m
        stats_path = /_pagecache/stats
        metrics_path = /_pagecache/metrics
        purge_allowed = 127.0.0.1
        stats_dir = {stats_dir}
        """, servers=())
    # sync workers: one request at a time each, so two requests held together are in both workers
    server = Served("gunicorn", GunicornServer(str(deployment.ini), workers=2, threads=1,
                                                log_path=str(tmp_path / "gunicorn.log")).start())
    deployment.servers.append(server)

    held = {}

    def together(path: str) -> None:
        held[path] = server.get(path, [("X-Rendezvous", "both/2")])

    threads = [threading.Thread(target=together, args=(path,)) for path in ("/news", "/hello")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [held[path].status for path in ("/news", "/hello")] == [200, 200], held  # one in each worker
    assert {held[path].cache for path in held} == {"MISS"}
    served = [server.get(path) for path in ("/news", "/hello", "/news", "/hello", "/news")]
    assert [reply.cache for reply in served] == ["HIT"] * 5, [(r.cache, r.header("Cache-Status")) for r in
                                                              list(held.values()) + served]

    # Each worker writes its counters at most every second, and answers with its own counts and the
    # others' last written: the sums arrive by themselves. Every check is of one answer.
    answers = []

    def summed() -> bool:
        answers.append(json.loads(server.get("/_pagecache/stats", [("Accept", "application/json")]).text))
        last = answers[-1]
        return (last["processes"], last["misses"], last["hits"]) == (2, 2, 5) and \
            last["histograms"]["app_seconds"].get("/news", {}).get("count") == 1

    wait_until(summed, timeout=20)
    snapshot = answers[-1]
    assert snapshot["rules"]["/news"]["hits"] == 3 and snapshot["rules"]["/"]["hits"] == 2
    assert snapshot["rules"]["/news"]["misses"] == 1 and snapshot["rules"]["/"]["misses"] == 1

    expected = {("pagecache_hits_total", (("rule", "/news"),)): 3, ("pagecache_hits_total", (("rule", "/"),)): 2,
                ("pagecache_misses_total", (("rule", "/news"),)): 1, ("pagecache_misses_total", (("rule", "/"),)): 1,
                ("pagecache_processes", ()): 2, ("pagecache_app_seconds_count", (("rule", "/news"),)): 1}
    scrapes = []

    def scraped() -> bool:
        reply = server.get("/_pagecache/metrics")
        assert reply.status == 200 and reply.header("Content-Type").startswith("text/plain")
        scrapes.append(families(reply.text))
        return all(scrapes[-1].get(key) == value for key, value in expected.items())

    wait_until(scraped, timeout=20)
    assert len(list(stats_dir.iterdir())) >= 2  # a file per worker


def test_metrics_need_prometheus_client(monkeypatch):
    """Without prometheus_client, metrics_path fails when the filter loads, with the pip command."""
    import builtins

    import pytest

    from pagecache import ConfigError, PageCacheMiddleware

    real_import = builtins.__import__

    def without_prometheus(name, *args, **kwargs):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            raise ImportError("No module named 'prometheus_client'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_prometheus)
    with pytest.raises(ConfigError, match=r"option metrics_path: prometheus_client is not installed "
                                          r"\(pip install prometheus_client"):
        PageCacheMiddleware(lambda e, s: [], "/ 30 60", metrics_path="/metrics")
