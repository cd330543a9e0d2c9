"""Options: converters, defaults, unknown names and bad values rejected at load."""

import ipaddress

import pytest

from pagecache import ConfigError, PageCacheMiddleware
from pagecache.config import OPTIONS, boolean, convert_options, duration, size, statuses, words


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("250ms", 0.25), ("5m", 300), ("2h", 7200), ("1d", 86400),
    (" 1.5s ", 1.5), ("0", 0), (30, 30), (0.5, 0.5),
])
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1", "1w", "m", True, -3])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        duration(text)


@pytest.mark.parametrize("text, number", [
    ("1024", 1024), ("512KB", 512 << 10), ("1MB", 1 << 20), ("64mb", 64 << 20), ("2G", 2 << 30), (10, 10),
])
def test_sizes(text, number):
    assert size(text) == number


@pytest.mark.parametrize("text", ["1.5MB", "lots", "-1", "1TB"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        size(text)


def test_booleans_words_statuses():
    assert boolean("yes") is True and boolean("Off") is False and boolean(True) is True
    with pytest.raises(ValueError):
        boolean("maybe")
    assert words("a, b\n  c") == ("a", "b", "c")
    assert words(["x", "y"]) == ("x", "y")
    assert words("sessionid   # the login cookie\n auth_tkt") == ("sessionid", "auth_tkt")
    assert statuses("200 404") == frozenset({200, 404})
    with pytest.raises(ValueError):
        statuses("200 OK")


def test_defaults_are_the_documented_ones():
    settings = convert_options({})
    assert settings["key_prefix"] == "pagecache"
    assert settings["charset"] == "utf-8"
    assert settings["status_header"] == "X-Cache"
    assert settings["memory_limit"] == 64 << 20
    assert settings["cache_statuses"] == frozenset({200, 203, 300, 301, 308})  # 404 and 410 only if listed
    assert settings["negative_ttl"] == 10
    assert settings["bypass_cookies"] == () and settings["cookie_responses"] == "pass"
    assert settings["local_memory_limit"] == 16 << 20
    assert settings["wait_timeout"] == 5 and settings["lock_timeout"] == 30
    assert settings["memcached_timeout"] == 0.25 and settings["memcached_retry"] == 30
    assert settings["background_refresh"] is False and settings["stale_if_error"] == 0
    assert settings["local_ttl"] == 0 and settings["local_size"] == 1000
    assert settings["purge_allowed"] == () and settings["stats_path"] == ""
    assert set(settings) == set(OPTIONS)


def test_strings_and_python_values_give_the_same_settings():
    from_ini = convert_options({"wait_timeout": "2s", "purge_allowed": "10.0.0.0/8 ::1",
                                "sort_query": "true", "max_entry_size": "512KB"})
    from_python = convert_options({"wait_timeout": 2, "purge_allowed": ["10.0.0.0/8", "::1"],
                                   "sort_query": True, "max_entry_size": 512 << 10})
    assert from_ini == from_python
    assert ipaddress.ip_address("10.1.2.3") in from_ini["purge_allowed"][0]


@pytest.mark.parametrize("options, words", [
    ({"wait_timout": "5s"}, "unknown option 'wait_timout'"),
    ({"wait_timeout": "soon"}, "option wait_timeout:"),
    ({"memory_limit": "lots"}, "option memory_limit:"),
    ({"key_prefix": "has space"}, "option key_prefix:"),
    ({"charset": "klingon-8"}, "option charset:"),
    ({"status_header": "X Cache"}, "option status_header:"),
    ({"purge_allowed": "10.0.0.300"}, "option purge_allowed:"),
    ({"memcached_client": "pylibmc"}, "option memcached_client:"),
    ({"memcached_servers": "localhost"}, "option memcached_servers:"),
    ({"memcached_servers": "127.0.0.1:99999"}, "option memcached_servers:"),
    ({"stats_path": "stats"}, "option stats_path:"),
    ({"local_size": "0"}, "option local_size:"),
])
def test_bad_options_fail_when_the_middleware_is_built(options, words):
    with pytest.raises(ConfigError) as error:
        PageCacheMiddleware(lambda e, s: [], "/ 1 1", **options)
    assert words in str(error.value)


def test_cache_object_and_memcached_servers_are_exclusive():
    from pagecache.backends import MemoryCache
    with pytest.raises(ConfigError, match="either a cache object or memcached_servers"):
        PageCacheMiddleware(lambda e, s: [], "/ 1 1", MemoryCache(), memcached_servers="127.0.0.1:11211")
