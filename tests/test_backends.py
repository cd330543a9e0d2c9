"""The two backends: the embedded MemoryCache and memcached through both clients."""

import collections
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from pagecache import ConfigError
from pagecache.backends import (ITEM_OVERHEAD, THIRTY_DAYS, MemoryCache, expiry_time,
                                memcached_client, parse_servers)
from pagecache.stats import Stats
from pagecache import entry as entry_module
from pagecache import store as store_module
from pagecache.entry import Page
from pagecache.store import DOUBTFUL_MAX, UNAVAILABLE, Store

from .conftest import Clock


def test_expiry_times_follow_memcached_rules():
    assert expiry_time(0) == 1            # never 0, which memcached reads as "forever"
    assert expiry_time(0.2) == 1
    assert expiry_time(30) == 30
    assert expiry_time(30.1) == 31
    assert expiry_time(THIRTY_DAYS) == THIRTY_DAYS
    assert expiry_time(THIRTY_DAYS + 1, now=1_700_000_000) == 1_700_000_000 + THIRTY_DAYS + 1


def test_memory_cache_get_set_delete_and_expiry():
    clock = Clock()
    cache = MemoryCache(1 << 20, clock)
    assert cache.get("k") is None
    assert cache.set("k", b"v", time=10) is True
    assert cache.get("k") == b"v"
    clock.advance(9.9)
    assert cache.get("k") == b"v"
    clock.advance(0.1)
    assert cache.get("k") is None
    assert cache.set("k", b"v") and cache.delete("k") is True and cache.delete("k") is False
    cache.set("forever", b"v", time=0)
    clock.advance(10 * THIRTY_DAYS)
    assert cache.get("forever") == b"v"


def test_memory_cache_absolute_expiry_beyond_thirty_days():
    clock = Clock(1_700_000_000)
    cache = MemoryCache(1 << 20, clock)
    cache.set("k", b"v", time=int(clock.now) + 100)
    clock.advance(99)
    assert cache.get("k") == b"v"
    clock.advance(1)
    assert cache.get("k") is None


def test_memory_cache_add_only_when_absent_or_expired():
    clock = Clock()
    cache = MemoryCache(1 << 20, clock)
    assert cache.add("lock", b"a", time=5) is True
    assert cache.add("lock", b"b", time=5) is False
    assert cache.get("lock") == b"a"
    clock.advance(5)
    assert cache.add("lock", b"c", time=5) is True
    assert cache.get("lock") == b"c"


def test_memory_cache_evicts_oldest_writes_to_stay_within_its_limit():
    value = b"x" * 1000
    per_item = len("k00") + len(value) + ITEM_OVERHEAD
    cache = MemoryCache(per_item * 10)
    for number in range(25):
        assert cache.set(f"k{number:02d}", value)
        assert cache.size <= cache.limit
    assert len(cache) == 10
    assert cache.get("k14") is None and cache.get("k15") == value and cache.get("k24") == value


def test_memory_cache_refuses_a_value_larger_than_its_limit():
    cache = MemoryCache(1000)
    assert cache.set("big", b"x" * 1000) is False
    assert cache.get("big") is None and cache.size == 0


def test_memory_cache_add_is_atomic_across_threads():
    cache = MemoryCache(1 << 20)
    threads, winners, barrier = 32, [], threading.Barrier(32)

    def contend(number):
        barrier.wait()
        if cache.add("lock", str(number).encode(), time=30):
            winners.append(number)

    workers = [threading.Thread(target=contend, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(winners) == 1
    assert cache.get("lock") == str(winners[0]).encode()


def test_server_lists_are_checked():
    assert parse_servers(["127.0.0.1:11211", "[::1]:11212", "cache-1.internal:11211"]) == [
        ("127.0.0.1", 11211), ("::1", 11212), ("cache-1.internal", 11211)]
    for bad in ["127.0.0.1", "host:0", "host:port", "a b:1"]:
        with pytest.raises(ConfigError, match="memcached_servers"):
            parse_servers([bad])


@pytest.mark.parametrize("library", ["python-memcached", "pymemcache"])
def test_memcached_clients_speak_to_a_real_server(memcached, library):
    client = memcached_client([memcached.address], library, timeout=1, retry=1)
    assert client.get("pagecache:test") is None
    assert client.set("pagecache:test", b"\x00value\xff", 30)
    assert client.get("pagecache:test") == b"\x00value\xff"
    assert client.add("pagecache:test", b"other", 30) is False
    assert client.add("pagecache:lock", b"token", 30) is True
    assert client.delete("pagecache:lock")
    assert client.get("pagecache:lock") is None


@pytest.mark.parametrize("library", ["python-memcached", "pymemcache"])
def test_memcached_expiry_is_honoured_by_the_server(memcached, library):
    client = memcached_client([memcached.address], library, timeout=1, retry=1)
    client.set("pagecache:short", b"v", expiry_time(1))
    deadline = time.monotonic() + 5
    while client.get("pagecache:short") is not None:
        assert time.monotonic() < deadline, "memcached kept a 1-second item for 5 seconds"
        time.sleep(0.05)


@pytest.mark.parametrize("library", ["python-memcached", "pymemcache"])
def test_pickled_and_compressed_values_are_never_loaded(memcached, library):
    import pickle
    import zlib

    client = memcached_client([memcached.address], library, timeout=1, retry=1)
    memcached.raw_set("pagecache:pickled", pickle.dumps({"a": 1}), flags=1)
    memcached.raw_set("pagecache:compressed", zlib.compress(b"x" * 1000), flags=8)
    for key in ("pagecache:pickled", "pagecache:compressed"):
        try:
            value = client.get(key)
        except Exception:
            continue  # an exception is a miss to pagecache's Store
        assert value is None or isinstance(value, bytes)
        assert value != {"a": 1} and value != b"x" * 1000


class AddsWithoutAnswering:
    """A MemoryCache whose ``add`` is not answered while ``failing`` is set (as
    when the server hangs after reading it), but carried out: at once, or with
    ``late``, when the test calls :meth:`resume`."""

    def __init__(self, cache: MemoryCache, late: bool = False):
        self.cache = cache
        self.failing = True
        self.late = late
        self.unanswered = []

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def add(self, key, value, expire=0):
        if self.failing:
            if self.late:
                self.unanswered.append((key, value, expire))
            else:
                self.cache.add(key, value, expire)
            raise TimeoutError("timed out")
        return self.cache.add(key, value, expire)

    def resume(self):
        for key, value, expire in self.unanswered:
            self.cache.add(key, value, expire)


def test_locks_whose_add_got_no_answer_are_released_once_the_cache_answers():
    cache = AddsWithoutAnswering(MemoryCache())
    store = Store(cache, Stats())
    assert store.lock("l:a", 60) is UNAVAILABLE
    assert cache.get("l:a") is not None          # held by nobody
    cache.failing = False
    token = store.lock("l:b", 60)                # answered: l:a is released
    assert isinstance(token, bytes)
    assert cache.get("l:a") is None and cache.get("l:b") == token
    assert isinstance(store.lock("l:a", 60), bytes)


def test_every_unanswered_add_of_a_lock_is_remembered_not_only_the_last():
    """The first add is carried out, the second (another token) is not: the
    lock holds the first token, which must still be released."""
    cache = AddsWithoutAnswering(MemoryCache(), late=True)
    store = Store(cache, Stats())
    assert store.lock("l:a", 60) is UNAVAILABLE
    cache.resume()                               # the first add reaches the server
    cache.unanswered.clear()
    assert store.lock("l:a", 60) is UNAVAILABLE   # this one never does
    cache.failing = False
    assert isinstance(store.lock("l:b", 60), bytes)
    assert cache.get("l:a") is None
    assert isinstance(store.lock("l:a", 60), bytes)


def test_at_most_a_bounded_number_of_doubtful_locks_is_remembered():
    cache = AddsWithoutAnswering(MemoryCache())
    store = Store(cache, Stats())
    for number in range(DOUBTFUL_MAX + 8):
        assert store.lock(f"l:{number}", 60) is UNAVAILABLE
    cache.failing = False
    store.lock("l:answered", 60)
    held = [number for number in range(DOUBTFUL_MAX + 8) if cache.get(f"l:{number}") is not None]
    assert held == list(range(8))  # the oldest were forgotten; they expire on their own


def test_a_doubtful_lock_not_found_yet_is_looked_for_again(monkeypatch):
    monkeypatch.setattr(store_module, "RELEASE_EVERY", 0.0)
    cache = AddsWithoutAnswering(MemoryCache(), late=True)
    store = Store(cache, Stats())
    assert store.lock("l:a", 60) is UNAVAILABLE
    cache.failing = False
    assert isinstance(store.lock("l:b", 60), bytes)  # l:a not there (yet): kept in mind
    cache.resume()                                   # the server carries the add out now
    assert cache.get("l:a") is not None
    assert isinstance(store.lock("l:c", 60), bytes)
    assert cache.get("l:a") is None
    assert isinstance(store.lock("l:a", 60), bytes)


class GetsWithoutAnswering:
    """A MemoryCache whose ``get`` raises while ``failing`` is set."""

    def __init__(self, cache: MemoryCache):
        self.cache = cache
        self.failing = False

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def get(self, key):
        if self.failing:
            raise TimeoutError("timed out")
        return self.cache.get(key)


def test_a_lock_that_could_not_be_released_is_released_once_the_cache_answers():
    cache = GetsWithoutAnswering(MemoryCache())
    store = Store(cache, Stats())
    token = store.lock("l:a", 60)
    cache.failing = True
    assert store.unlock("l:a", token) is False
    assert cache.cache.get("l:a") == token          # still held, by a request that is done
    cache.failing = False
    assert isinstance(store.lock("l:b", 60), bytes)  # answered: l:a is looked for and released
    assert cache.get("l:a") is None
    assert store.unlock("l:b", cache.get("l:b")) is True


def test_a_held_lock_is_released_after_unanswered_adds_of_the_same_key():
    """A request took the lock and could not release it; later requests for
    the page got no answer to their adds (the server out of the client's ring):
    the lock it holds is still released once the cache answers, not left to
    lock_timeout while every request for the page waits."""
    failing = GetsWithoutAnswering(MemoryCache())
    cache = AddsWithoutAnswering(failing, late=True)
    cache.failing = False
    store = Store(cache, Stats())
    token = store.lock("l:a", 60)
    failing.failing = True
    assert store.unlock("l:a", token) is False
    failing.failing = False
    cache.failing = True
    for _ in range(DOUBTFUL_MAX + 8):
        assert store.lock("l:a", 60) is UNAVAILABLE   # never carried out
    cache.failing = False
    assert isinstance(store.lock("l:b", 60), bytes)
    assert failing.cache.get("l:a") is None
    assert isinstance(store.lock("l:a", 60), bytes)


@pytest.fixture
def parsed(monkeypatch):
    """The values parsed since the test began."""
    values = []
    real_parse = entry_module.parse
    monkeypatch.setattr(entry_module, "parse", lambda value: values.append(value) or real_parse(value))
    return values


def test_an_entry_read_again_is_not_parsed_again(parsed):
    cache = MemoryCache()
    store = Store(cache, Stats())
    first = Page("200 OK", [("Content-Type", "text/plain")], b"one", 1000.0, 30.0, 60.0)
    cache.set("p:a", first.to_bytes())
    assert store.load("p:a") == first and store.load("p:a") is store.load("p:a")
    assert len(parsed) == 1
    second = Page("200 OK", [("Content-Type", "text/plain")], b"two", 1001.0, 30.0, 60.0)
    cache.set("p:a", second.to_bytes())           # another page under the same key
    assert store.load("p:a") == second and len(parsed) == 2
    cache.set("p:a", b"PC1 garbage")
    assert store.load("p:a") is None and store.load("p:a") is None and len(parsed) == 4


class AnswersBytearray(MemoryCache):
    def get(self, key):
        value = super().get(key)
        return None if value is None else bytearray(value)


def test_values_that_are_not_bytes_are_parsed_each_time(parsed):
    cache = AnswersBytearray()
    store = Store(cache, Stats())
    page = Page("200 OK", [], b"one", 1000.0, 30.0, 60.0)
    cache.set("p:a", page.to_bytes())
    assert store.load("p:a") == page and store.load("p:a") == page and len(parsed) == 2


def test_entries_kept_parsed_are_bounded_in_number_and_bytes(monkeypatch):
    monkeypatch.setattr(store_module, "PARSED_MAX", 4)
    monkeypatch.setattr(store_module, "PARSED_BYTES", 8000)
    cache = MemoryCache()
    store = Store(cache, Stats())
    for number in range(6):
        cache.set(f"p:{number}", Page("200 OK", [], b"x" * 100, 1000.0, 30.0, 60.0).to_bytes())
        store.load(f"p:{number}")
    assert list(store._parsed) == ["p:2", "p:3", "p:4", "p:5"]
    cache.set("p:big", Page("200 OK", [], b"x" * 1000, 1000.0, 30.0, 60.0).to_bytes())
    store.load("p:big")                           # over an eighth of the bytes: not kept
    assert "p:big" not in store._parsed
    for number in range(4):
        cache.set(f"p:mid{number}", Page("200 OK", [], b"x" * 400, 1000.0, 30.0, 60.0).to_bytes())
        store.load(f"p:mid{number}")
    assert store._parsed_size <= 8000 and sum(size for _, _, size in store._parsed.values()) == store._parsed_size
    assert "p:mid3" in store._parsed and "p:2" not in store._parsed


def test_pymemcache_spreads_keys_over_its_servers_the_same_way_in_every_process():
    servers = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]  # never contacted: only the choice of server
    keys = [f"pagecache:p:{number:032x}" for number in range(600)]
    script = ("import json, sys; from pagecache.backends import memcached_client; "
              "client = memcached_client(json.loads(sys.argv[1]), 'pymemcache', 0.1, 1); "
              "print(json.dumps([client.hasher.get_node(k) for k in json.loads(sys.argv[2])]))")
    chosen = []
    for hash_seed in ("1", "2"):  # str hashes differ between these processes
        completed = subprocess.run([sys.executable, "-c", script, json.dumps(servers), json.dumps(keys)],
                                   capture_output=True, text=True, check=True,
                                   env={**os.environ, "PYTHONHASHSEED": hash_seed})
        chosen.append(json.loads(completed.stdout))
    assert chosen[0] == chosen[1]
    counts = collections.Counter(chosen[0])
    assert sorted(counts) == servers and min(counts.values()) > 150
    client = memcached_client(servers, "pymemcache", 0.1, 1)
    assert [client.hasher.get_node(key) for key in keys] == chosen[0]
    client.hasher.remove_node("127.0.0.1:2")  # a server leaves: only its keys move
    assert all(client.hasher.get_node(key) == node for key, node in zip(keys, chosen[0]) if node != "127.0.0.1:2")
