"""Tags: the application names what a page shows (``Surrogate-Key: article-42
front``), and purging a tag makes every page carrying it a miss (hard) or
stale while one request rebuilds it (soft), in every process and host sharing
memcached, within ``tag_check_interval``; purging ``*`` (everything) does the
same to every page of one ``key_prefix`` and nothing to another's.

Everything here is real: memcached servers, waitress and gunicorn processes,
the ``pagecache`` console script, a Pyramid site using ``request.pagecache``.
Nothing waits on wall-clock time: rebuilds are held in the application with
events, crowds are released by barriers, and the clock of the middlewares
(in this process, or in server processes through a shared
``multiprocessing.Value``) is stepped by the test, so "after the interval"
is a clock step, not a sleep.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import pytest
from paste.deploy import loadfilter
from webtest import TestApp

from pagecache import PageCacheMiddleware
from pagecache.cli import main as cli_main
from pagecache.entry import Page, Pass, VaryMarker
from pagecache.tags import MAX_TAGS

from .apps.harness import Browser, crowd, deploy, send  # noqa: F401 (deploy: fixture)
from .conftest import Clock, client, stored
from .servers import AppServer, MemcachedServer, free_port

HOST = "example.com"
URL = f"http://{HOST}"
SCRIPT = os.path.join(os.path.dirname(sys.executable), "pagecache")
HOLD = 10.0  # seconds a held call waits for the test (reached only by a broken test)


def noise(size: int) -> str:
    """``size`` characters that don't compress (a body too large to store stays so)."""
    return "".join(hashlib.sha256(b"%d" % n).hexdigest() for n in range(size // 64 + 1))[:size]


class TaggedApp:
    """Answers ``<path>[?query] #<n>`` (``n`` counts calls for that path and
    query), tagged with ``tags[path]`` in ``Surrogate-Key``; ``extra[path]``
    adds headers, ``padding[path]`` bytes to the body. While ``gate`` is
    closed, a call sets ``entered`` and waits for the gate, so a test can hold
    a rebuild and see what other requests get meanwhile."""

    def __init__(self, tags: Optional[Dict[str, str]] = None, extra: Optional[Dict[str, list]] = None,
                 vary: str = "", padding: Optional[Dict[str, int]] = None):
        self.tags = tags or {}
        self.extra = extra or {}
        self.padding = padding or {}
        self.vary = vary
        self.calls: Dict[str, int] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def total(self) -> int:
        return sum(self.calls.values())

    def __call__(self, environ: Dict, start_response: Callable) -> List[bytes]:
        path = environ["PATH_INFO"]
        target = path + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else "")
        with self._lock:
            number = self.calls[target] = self.calls.get(target, 0) + 1
        self.entered.set()
        assert self.gate.wait(HOLD), "the test never opened the gate"
        text = f"{target} #{number}" + noise(self.padding.get(path, 0))
        headers = [("Content-Type", "text/plain")]
        if self.vary:
            text = f"{environ.get('HTTP_' + self.vary.upper().replace('-', '_'), 'none')} {text}"
            headers.append(("Vary", self.vary))
        if path in self.tags:
            headers.append(("Surrogate-Key", self.tags[path]))
        headers += self.extra.get(path, [])
        body = text.encode("ascii")
        start_response("200 OK", headers + [("Content-Length", str(len(body)))])
        return [body]


def get(mw: PageCacheMiddleware, path: str, **kwargs):
    return client(mw).get(path, **kwargs)


def label(mw: PageCacheMiddleware, path: str, **kwargs) -> tuple:
    """(X-Cache, body) of a GET of ``path``."""
    response = get(mw, path, **kwargs)
    return response.headers["X-Cache"], response.text


def purge_request(mw: PageCacheMiddleware, address: str, path: str = "/", **headers: str):
    """An HTTP PURGE from ``address`` (lint off: WebTest warns about unknown methods)."""
    sent = {"Host": HOST, **{name.replace("_", "-"): value for name, value in headers.items()}}
    return TestApp(mw, extra_environ={"REMOTE_ADDR": address}, lint=False).request(
        path, method="PURGE", headers=sent, expect_errors=True)


def filled(mw: PageCacheMiddleware, paths: Iterable[str], clock: Optional[Clock] = None) -> None:
    """Store ``paths`` and check they are then HITs; the clock moves on a little
    (a purge is later than the pages it purges)."""
    for path in paths:
        assert get(mw, path).headers["X-Cache"] == "MISS", path
        assert get(mw, path).headers["X-Cache"] == "HIT", path
    if clock is not None:
        clock.advance(0.5)


# -- tags from the application --------------------------------------------------


def test_the_tags_are_stored_with_the_page_and_never_reach_clients(make):
    app = TaggedApp({"/articles/42": "article-42 front"})
    mw = make(app, "/ 30 120")
    miss = get(mw, "/articles/42")
    assert miss.headers["X-Cache"] == "MISS"
    assert "Surrogate-Key" not in miss.headers
    assert stored(mw, URL + "/articles/42").tags == ("article-42", "front")
    hit = get(mw, "/articles/42")
    assert (hit.headers["X-Cache"], hit.text) == ("HIT", "/articles/42 #1")
    assert "Surrogate-Key" not in hit.headers
    assert not any(name.lower() == "surrogate-key" for name, _ in stored(mw, URL + "/articles/42").headers)
    head = client(mw).head("/articles/42")
    assert head.headers["X-Cache"] == "HIT" and "Surrogate-Key" not in head.headers
    not_modified = client(mw).get("/articles/42", headers={"If-None-Match": hit.headers["ETag"]}, status=304)
    assert "Surrogate-Key" not in not_modified.headers


PRIVATE = [("Cache-Control", "private")]
NO_STORE = [("Cache-Control", "no-store")]
COOKIE = [("Set-Cookie", "seen=1; Path=/")]


@pytest.mark.parametrize("expose", [False, True])
def test_responses_that_are_not_stored_lose_the_tag_header_too_unless_exposed(make, expose):
    tags = {path: "article-42 secret-plan" for path in ("/private", "/no-store", "/cookie", "/open", "/big")}
    app = TaggedApp(tags, extra={"/private": PRIVATE, "/no-store": NO_STORE, "/cookie": COOKIE},
                    padding={"/big": 20000})
    mw = make(app, "/ 30 120", expose_tags=expose, max_entry_size="1KB")
    seen = []
    for path, kwargs, cache in [
        ("/private", {}, "MISS"),
        ("/no-store", {}, "MISS"),
        ("/cookie", {}, "MISS"),
        ("/big", {}, "MISS"),                                       # larger than max_entry_size: streamed
        ("/open", {"headers": {"Authorization": "Basic eDp5"}}, "BYPASS"),
        ("/open", {"headers": {"Cookie": "session=1"}}, "BYPASS"),
    ]:
        response = get(mw, path, **kwargs)
        assert response.headers["X-Cache"] == cache, path
        seen.append(response.headers.get("Surrogate-Key"))
    post = client(mw).post("/open", {"a": "1"})
    assert post.headers["X-Cache"] == "BYPASS"
    seen.append(post.headers.get("Surrogate-Key"))
    head_miss = client(mw).head("/open")
    assert head_miss.headers["X-Cache"] == "MISS"
    seen.append(head_miss.headers.get("Surrogate-Key"))
    assert seen == ["article-42 secret-plan" if expose else None] * len(seen)
    assert type(stored(mw, URL + "/private")) is Pass     # nothing of it was stored
    assert type(stored(mw, URL + "/big")) is Pass


def test_expose_tags_leaves_the_header_in_misses_and_hits(make):
    mw = make(TaggedApp({"/a": "article-42 front"}), "/ 30 120", expose_tags="true")
    for cache in ("MISS", "HIT"):
        response = get(mw, "/a")
        assert (response.headers["X-Cache"], response.headers.get("Surrogate-Key")) == (cache, "article-42 front")
    assert stored(mw, URL + "/a").tags == ("article-42", "front")


def test_another_tag_header_is_read_and_removed_and_surrogate_key_is_left_alone(make, clock):
    mw = make(TaggedApp({"/a": "not-a-tag-here"}, extra={"/a": [("Cache-Tag", "article-42")]}), "/ 30 120",
              tag_header="Cache-Tag")
    response = get(mw, "/a")
    assert "Cache-Tag" not in response.headers
    assert response.headers["Surrogate-Key"] == "not-a-tag-here"      # just another header now
    assert stored(mw, URL + "/a").tags == ("article-42",)
    clock.advance(1)
    mw.purge_tags(["not-a-tag-here"])
    assert get(mw, "/a").headers["X-Cache"] == "HIT"
    mw.purge_tags(["article-42"])
    assert get(mw, "/a").headers["X-Cache"] == "MISS"


def test_an_empty_tag_header_option_turns_tags_off(make, clock):
    mw = make(TaggedApp({"/a": "article-42"}), "/ 30 120", tag_header="")
    response = get(mw, "/a")
    assert response.headers["Surrogate-Key"] == "article-42"
    assert stored(mw, URL + "/a").tags == ()
    clock.advance(1)
    assert mw.purge_tags(["article-42"]) == []
    assert get(mw, "/a").headers["X-Cache"] == "HIT"
    assert mw.purge_all() is True                     # everything still works without tags
    assert get(mw, "/a").headers["X-Cache"] == "MISS"


def test_odd_tag_values_are_dropped(make):
    many = " ".join(f"t{number}" for number in range(MAX_TAGS + 10))
    long = "x" * 201
    app = TaggedApp({
        "/many": many,
        "/odd": f"ok caf\xe9 caf\xc3\xa9 * {long} ok also-ok   {'y' * 200}",
        "/star": "*",
        "/blank": "   ",
    }, extra={"/odd": [("Surrogate-Key", "second-line ok")]})
    mw = make(app, "/ 30 120")
    for path in ("/many", "/odd", "/star", "/blank"):
        response = get(mw, path)
        assert "Surrogate-Key" not in response.headers
    assert stored(mw, URL + "/many").tags == tuple(f"t{number}" for number in range(MAX_TAGS))
    assert stored(mw, URL + "/odd").tags == ("ok", "also-ok", "y" * 200, "second-line")
    assert stored(mw, URL + "/star").tags == ()
    assert stored(mw, URL + "/blank").tags == ()


# -- hard purge by tag ------------------------------------------------------------


def test_a_hard_purge_of_a_tag_makes_every_page_carrying_it_a_miss(make, clock):
    tags = {"/articles/42": "article-42 articles", "/articles/42/print": "article-42",
            "/front": "front article-42 article-7", "/articles/7": "article-7 articles",
            "/about": "about"}
    app = TaggedApp(tags)
    mw = make(app, "/ 30 120")
    paths = list(tags) + ["/untagged", "/articles/42?page=2"]   # the query's page has /articles/42's tags
    filled(mw, paths, clock)

    assert mw.purge_tags(["article-42"]) == []
    for path in ("/articles/42", "/articles/42/print", "/front", "/articles/42?page=2"):
        assert stored(mw, URL + path).body.endswith(b"#1")   # the old page is still there, judged on read
        assert label(mw, path) == ("MISS", f"{path} #2")
        assert label(mw, path) == ("HIT", f"{path} #2")
    for path in ("/articles/7", "/about", "/untagged"):
        assert label(mw, path) == ("HIT", f"{path} #1")


def test_a_hard_purge_of_a_tag_reaches_every_vary_variant(make, clock):
    app = TaggedApp({"/news": "news", "/weather": "weather"}, vary="Accept-Language")
    mw = make(app, "/ 30 120")
    for path in ("/news", "/weather"):
        for language in ("en", "fr", "de"):
            assert label(mw, path, headers={"Accept-Language": language})[0] == "MISS"
            assert label(mw, path, headers={"Accept-Language": language})[0] == "HIT"
        assert type(stored(mw, URL + path)) is VaryMarker
    clock.advance(1)

    mw.purge_tags(["news"])
    for number, language in enumerate(("en", "fr", "de"), start=4):
        assert label(mw, "/news", headers={"Accept-Language": language}) == ("MISS", f"{language} /news #{number}")
        assert label(mw, "/news", headers={"Accept-Language": language}) == ("HIT", f"{language} /news #{number}")
    for number, language in enumerate(("en", "fr", "de"), start=1):
        assert label(mw, "/weather", headers={"Accept-Language": language}) == (
            "HIT", f"{language} /weather #{number}")


def test_a_tag_purge_reaches_the_in_process_tier(make, clock):
    app = TaggedApp({"/a": "a", "/b": "b"})
    mw = make(app, "/ 30 120", local_ttl="10s")
    filled(mw, ["/a", "/b"], clock)
    assert label(mw, "/a")[0] == "HIT"
    hits = mw.stats["local_hits"]
    assert label(mw, "/b")[0] == "HIT"
    assert mw.stats["local_hits"] > hits                # /b is served from process memory
    mw.purge_tags(["a", "b"])
    assert [label(mw, path) for path in ("/a", "/b")] == [("MISS", "/a #2"), ("MISS", "/b #2")]


def test_purging_several_tags_at_once(make, clock):
    app = TaggedApp({"/a": "a", "/b": "b", "/c": "c", "/ab": "a b"})
    mw = make(app, "/ 30 120")
    filled(mw, ["/a", "/b", "/c", "/ab"], clock)
    assert mw.purge_tags(["a", "b"]) == []
    assert [label(mw, path)[0] for path in ("/a", "/b", "/ab", "/c")] == ["MISS", "MISS", "MISS", "HIT"]


def test_a_page_stored_after_the_purge_is_fresh(make, clock):
    app = TaggedApp({"/a": "a"})
    mw = make(app, "/ 30 120")
    filled(mw, ["/a"], clock)
    mw.purge_tags(["a"])
    clock.advance(0.001)
    assert label(mw, "/a") == ("MISS", "/a #2")
    clock.advance(5)
    assert label(mw, "/a") == ("HIT", "/a #2")
    clock.advance(30)   # its own TTL still counts
    assert label(mw, "/a")[0] == "MISS"


# -- soft purge by tag ------------------------------------------------------------


def rebuild_held(mw: PageCacheMiddleware, app: TaggedApp, path: str, clients: int = 12, **kwargs):
    """One request rebuilds ``path`` (held inside the app) while a crowd of
    ``clients`` asks for it; (the crowd's responses, the rebuilder's)."""
    app.gate.clear()
    app.entered.clear()
    rebuilding: Dict = {}
    thread = threading.Thread(target=lambda: rebuilding.update(response=get(mw, path, **kwargs)))
    thread.start()
    try:
        assert app.entered.wait(HOLD), "no request reached the application"
        during = crowd(clients, lambda i: get(mw, path, **kwargs))
    finally:
        app.gate.set()
        thread.join(HOLD)
    return during, rebuilding["response"]


def test_a_soft_purge_serves_each_page_stale_while_one_request_rebuilds_it(make, clock):
    tags = {"/articles/42": "article-42", "/front": "front article-42", "/articles/7": "article-7"}
    app = TaggedApp(tags)
    mw = make(app, "/ 30 120")
    filled(mw, tags, clock)

    assert mw.purge_tags(["article-42"], soft=True) == []
    for path in ("/articles/42", "/front"):
        page = stored(mw, URL + path)
        assert type(page) is Page and page.body.endswith(b"#1")
        calls = app.calls[path]
        during, rebuilding = rebuild_held(mw, app, path)
        assert {(r.headers["X-Cache"], r.text) for r in during} == {("STALE", f"{path} #1")}
        assert (rebuilding.headers["X-Cache"], rebuilding.text) == ("MISS", f"{path} #2")
        assert app.calls[path] == calls + 1
        assert label(mw, path) == ("HIT", f"{path} #2")
    assert label(mw, "/articles/7") == ("HIT", "/articles/7 #1")


def test_a_soft_purge_reaches_every_vary_variant(make, clock):
    app = TaggedApp({"/news": "news"}, vary="Accept-Language")
    mw = make(app, "/ 30 120")
    for language in ("en", "fr"):
        get(mw, "/news", headers={"Accept-Language": language})
    clock.advance(1)
    mw.purge_tags(["news"], soft=True)
    # the app counts calls per URL: en was #1, fr #2; their rebuilds are #3 and #4
    for language, old, new in (("en", 1, 3), ("fr", 2, 4)):
        headers = {"Accept-Language": language}
        during, rebuilding = rebuild_held(mw, app, "/news", clients=4, headers=headers)
        assert {(r.headers["X-Cache"], r.text) for r in during} == {("STALE", f"{language} /news #{old}")}
        assert (rebuilding.headers["X-Cache"], rebuilding.text) == ("MISS", f"{language} /news #{new}")
        assert label(mw, "/news", headers=headers) == ("HIT", f"{language} /news #{new}")


def test_a_soft_purge_then_a_hard_one_is_a_miss(make, clock):
    app = TaggedApp({"/a": "a"})
    mw = make(app, "/ 30 120")
    filled(mw, ["/a"], clock)
    mw.purge_tags(["a"], soft=True)
    clock.advance(0.1)
    mw.purge_tags(["a"])
    assert label(mw, "/a") == ("MISS", "/a #2")


# -- purge everything ----------------------------------------------------------------


def other_application(memcached: MemcachedServer, clock: Clock):
    app = TaggedApp({"/a": "a"})
    return app, PageCacheMiddleware(app, "/ 30 120", clock=clock, memcached_servers=memcached.address,
                                    key_prefix="someone-else")


@pytest.mark.parametrize("how", ["api", "http", "cli"])
@pytest.mark.parametrize("soft", [False, True])
def test_purge_everything_and_nothing_of_another_application(tmp_path, memcached, how, soft):
    clock = Clock(time.time() - 5)   # the command purges at the real time: the pages are older
    app = TaggedApp({"/a": "a", "/b": "b c"})
    ini = write_ini(tmp_path, f"memcached_servers = {memcached.address}\nkey_prefix = ours\n"
                              "cached_urls = / 30 120\n")
    mw = PageCacheMiddleware(app, "/ 30 120", clock=clock, memcached_servers=memcached.address,
                             key_prefix="ours", purge_allowed="127.0.0.1")
    their_app, theirs = other_application(memcached, clock)
    paths = ["/a", "/b", "/untagged", "/a?x=1"]
    filled(theirs, paths)
    filled(mw, paths, clock)
    their_keys = {key for key in memcached.keys() if key.startswith("someone-else:")}
    our_keys = {key for key in memcached.keys() if key.startswith("ours:p:")}
    assert len(their_keys) >= 4 and len(our_keys) == 4

    if how == "api":
        assert mw.purge_all(soft=soft) is True
    elif how == "http":
        response = purge_request(mw, "127.0.0.1", X_Purge_All="1", **({"X_Purge_Soft": "1"} if soft else {}))
        assert (response.status_int, response.text) == (200, ("soft-purged" if soft else "purged") + " everything\n")
    else:
        result = run_cli("purge", "-c", ini, "--all", *(["--soft"] if soft else []))
        assert (result.returncode, result.stdout, result.stderr) == (
            0, ("soft-purged" if soft else "purged") + " everything\n", "")
        clock.now = time.time() + 1  # after the command's purge, on the command's clock

    assert {key for key in memcached.keys() if key.startswith("someone-else:")} >= their_keys
    assert {key for key in memcached.keys() if key.startswith("ours:p:")} >= our_keys  # judged, not deleted
    for path in paths:
        if soft:
            during, rebuilding = rebuild_held(mw, app, path, clients=3)
            assert {r.headers["X-Cache"] for r in during} == {"STALE"}, path
            assert rebuilding.headers["X-Cache"] == "MISS", path
        else:
            assert get(mw, path).headers["X-Cache"] == "MISS", path
        assert get(mw, path).headers["X-Cache"] == "HIT", path
        assert label(theirs, path)[0] == "HIT", path
    assert their_app.total() == len(paths)


# -- HTTP PURGE with the tag header -------------------------------------------------------


@pytest.mark.parametrize("address, allowed", [("127.0.0.1", True), ("10.1.2.3", True), ("192.0.2.7", False),
                                              ("", False)])
def test_purge_over_http_by_tag_only_from_allowed_addresses(make, clock, address, allowed):
    app = TaggedApp({"/a": "article-42", "/b": "article-42 front", "/c": "other"})
    mw = make(app, "/ 30 120", purge_allowed="127.0.0.1 10.0.0.0/8")
    filled(mw, ["/a", "/b", "/c"], clock)

    response = purge_request(mw, address, "/anything", Surrogate_Key="article-42 front")
    assert response.headers["Cache-Control"] == "no-store"
    if allowed:
        assert (response.status_int, response.text) == (200, "purged tags article-42 front\n")
        assert [label(mw, path)[0] for path in ("/a", "/b", "/c")] == ["MISS", "MISS", "HIT"]
        assert mw.stats["tag_purges"] == 2
    else:
        assert response.status_int == 403 and response.text.startswith("PURGE not allowed")
        assert [label(mw, path)[0] for path in ("/a", "/b", "/c")] == ["HIT", "HIT", "HIT"]
        assert mw.stats["tag_purges"] == 0
        assert sum(app.calls.values()) == 3


def test_soft_purge_over_http_by_tag(make, clock):
    app = TaggedApp({"/a": "article-42"})
    mw = make(app, "/ 30 120", purge_allowed="127.0.0.1")
    filled(mw, ["/a"], clock)
    response = purge_request(mw, "127.0.0.1", Surrogate_Key="article-42", X_Purge_Soft="1")
    assert (response.status_int, response.text) == (200, "soft-purged tags article-42\n")
    during, rebuilding = rebuild_held(mw, app, "/a", clients=4)
    assert {(r.headers["X-Cache"], r.text) for r in during} == {("STALE", "/a #1")}
    assert (rebuilding.headers["X-Cache"], rebuilding.text) == ("MISS", "/a #2")


def test_purge_over_http_with_only_odd_tags_purges_the_url_instead(make, clock):
    app = TaggedApp({"/a": "article-42"})
    mw = make(app, "/ 30 120", purge_allowed="127.0.0.1")
    filled(mw, ["/a", "/b"], clock)
    response = purge_request(mw, "127.0.0.1", "/b", Surrogate_Key="*")
    assert (response.status_int, response.text) == (200, f"purged {URL}/b\n")
    assert [label(mw, path)[0] for path in ("/a", "/b")] == ["HIT", "MISS"]
    assert mw.stats["tag_purges"] == 0


def test_purge_over_http_by_tag_when_memcached_is_down(clock):
    server = MemcachedServer().start()
    mw = PageCacheMiddleware(TaggedApp({"/a": "a"}), "/ 30 120", clock=clock, memcached_servers=server.address,
                             purge_allowed="127.0.0.1", key_prefix="down")
    filled(mw, ["/a"], clock)
    server.stop()
    response = purge_request(mw, "127.0.0.1", Surrogate_Key="a b")
    assert (response.status_int, response.text) == (503, "not purged: a b\n")
    response = purge_request(mw, "127.0.0.1", X_Purge_All="1")
    assert response.status_int == 503
    assert mw.stats["tag_purges"] == 0


# -- eviction safety ------------------------------------------------------------------------


def evict(memcached: MemcachedServer, mw: PageCacheMiddleware, tag: str) -> None:
    """Delete a tag's keys from memcached behind pagecache's back, as an eviction would."""
    for key in mw.tags.keys(tag):
        assert memcached.command(f"delete {key}") == b"DELETED\r\n", key


def on_memcached(app: TaggedApp, memcached: MemcachedServer, clock: Clock, **options) -> PageCacheMiddleware:
    return PageCacheMiddleware(app, "/ 30 120", clock=clock, memcached_servers=memcached.address,
                               key_prefix="evictions", **options)


def test_a_page_whose_tag_keys_were_evicted_is_no_longer_fresh(memcached, clock):
    app = TaggedApp({"/a": "article-42", "/b": "article-42 front", "/c": "other"})
    mw = on_memcached(app, memcached, clock)
    filled(mw, ["/a", "/b", "/c"], clock)
    evict(memcached, mw, "article-42")
    clock.advance(1)   # this process's memo of the tag (tag_check_interval) is over
    assert [label(mw, path)[0] for path in ("/a", "/b", "/c")] == ["MISS", "MISS", "HIT"]
    assert [label(mw, path)[0] for path in ("/a", "/b", "/c")] == ["HIT", "HIT", "HIT"]


def test_a_purge_whose_keys_were_evicted_is_not_undone_by_a_new_page_with_the_tag(memcached, clock):
    """The purge is recorded in the tag's keys only; when they are lost (evicted,
    or the memcached server holding them restarted) before the purged pages are
    read, those pages must not become fresh again, whichever request comes first:
    here a new page carrying the tag is stored before an old one is read."""
    app = TaggedApp({"/old": "article-42", "/new": "article-42"})
    mw = on_memcached(app, memcached, clock)
    filled(mw, ["/old"], clock)
    mw.purge_tags(["article-42"])
    clock.advance(0.5)
    evict(memcached, mw, "article-42")
    assert label(mw, "/new") == ("MISS", "/new #1")
    assert label(mw, "/old") == ("MISS", "/old #2"), "the purged page is served as fresh again"


def test_a_purge_of_everything_whose_keys_were_evicted_is_not_undone_by_a_new_page(memcached, clock):
    app = TaggedApp()
    mw = on_memcached(app, memcached, clock)
    filled(mw, ["/old"], clock)
    assert mw.purge_all() is True
    clock.advance(0.5)
    evict(memcached, mw, "*")
    assert label(mw, "/new") == ("MISS", "/new #1")
    assert label(mw, "/old") == ("MISS", "/old #2"), "the purged page is served as fresh again"


# -- the interval, in one process with two middlewares on one memcached -------------------


def test_another_middleware_trusts_what_it_read_for_tag_check_interval(memcached, clock):
    """Two middlewares on one memcached stand for two processes: the purge
    reaches the other one exactly ``tag_check_interval`` after that one last
    read the tag's times, and at once with 0."""
    def build(app, interval):
        return PageCacheMiddleware(app, "/ 1h 1h", clock=clock, memcached_servers=memcached.address,
                                   key_prefix="interval", tag_check_interval=interval)
    app = TaggedApp({"/a": "article-42", "/b": "article-42"})
    purger, reader, eager = build(app, "2.5s"), build(app, "2.5s"), build(app, 0)
    assert label(purger, "/a")[0] == "MISS"
    assert label(purger, "/b")[0] == "MISS"
    clock.advance(3)                      # every memo is over
    read_at = clock.now
    assert label(reader, "/a")[0] == "HIT"    # reader reads the tag's times now, and trusts them 2.5 s
    assert label(eager, "/b")[0] == "HIT"

    purger.purge_tags(["article-42"])
    assert label(eager, "/b") == ("MISS", "/b #2")      # tag_check_interval = 0: at once
    assert label(reader, "/a") == ("HIT", "/a #1")      # within the interval: may still serve it
    clock.now = read_at + 2.499
    assert label(reader, "/a") == ("HIT", "/a #1")
    clock.now = read_at + 2.5                            # 2.5 s after reader's read
    assert label(reader, "/a") == ("MISS", "/a #2")
    assert label(purger, "/a") == ("HIT", "/a #2")


# -- the counters -------------------------------------------------------------------------------


def test_the_counters_of_tag_purges_and_pages_found_purged(make, clock):
    app = TaggedApp({"/a": "a", "/b": "a b", "/c": "c"})
    mw = make(app, "/ 30 120", purge_allowed="127.0.0.1")
    filled(mw, ["/a", "/b", "/c", "/untagged"], clock)
    assert (mw.stats["tag_purges"], mw.stats["tag_invalidated"]) == (0, 0)

    assert mw.purge_tags(["a", "b"]) == []
    assert mw.stats["tag_purges"] == 2
    assert mw.stats["tag_invalidated"] == 0                       # counted when a page is read
    for path in ("/a", "/b", "/c", "/untagged"):
        get(mw, path)
    assert mw.stats["tag_invalidated"] == 2                       # /a and /b
    for path in ("/a", "/b", "/c", "/untagged"):
        assert get(mw, path).headers["X-Cache"] == "HIT"
    assert mw.stats["tag_invalidated"] == 2

    clock.advance(0.5)
    assert purge_request(mw, "127.0.0.1", Surrogate_Key="c never-used").status_int == 200
    assert mw.stats["tag_purges"] == 4
    assert mw.purge_all(soft=True) is True
    assert mw.stats["tag_purges"] == 5
    for path in ("/a", "/b", "/c", "/untagged"):
        get(mw, path)                                             # each found purged, rebuilt at once
    assert mw.stats["tag_invalidated"] == 6
    snapshot = mw.stats.snapshot()
    assert snapshot["tag_purges"] == 5 and snapshot["tag_invalidated"] == 6


def test_a_purge_the_cache_did_not_take_is_not_counted(clock):
    mw = PageCacheMiddleware(TaggedApp(), "/ 30 120", clock=clock, memcached_servers=f"127.0.0.1:{free_port()}")
    assert mw.purge_tags(["a", "b"]) == ["a", "b"]
    assert mw.purge_all() is False
    assert mw.stats["tag_purges"] == 0
    assert mw.stats["memcached_errors"] >= 1   # then the dead server is left alone (memcached_retry)


# -- the command ------------------------------------------------------------------------------


def write_ini(directory, filter_options: str, name: str = "production.ini") -> str:
    """An INI file: the pagecache filter ``[filter:cache]`` in front of an
    application that cannot be imported (the command must never need it)."""
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write("[app:main]\nuse = call:no_such_module_anywhere:make_app\n\n"
                "[filter:cache]\nuse = egg:pagecache#main\n" + textwrap.dedent(filter_options)
                + "\n[pipeline:main]\npipeline = cache main\n")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed ``pagecache`` script, from a directory where nothing of the project is importable."""
    assert os.path.exists(SCRIPT), f"the console script is not installed at {SCRIPT}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60, cwd="/", env=env)


@pytest.fixture(params=["python-memcached", "pymemcache"])
def library(request):
    return request.param


def cli_site(tmp_path, memcached, library, **options):
    """An INI and the middleware it builds (real clock, tags checked on every hit)."""
    extra = "".join(f"{name} = {value}\n" for name, value in options.items())
    ini = write_ini(tmp_path, f"""\
        memcached_servers = {memcached.address}
        memcached_client = {library}
        key_prefix = cli-tags
        tag_check_interval = 0
        cached_urls = / 30 120
        """ + extra)
    app = TaggedApp({"/a": "article-42", "/b": "article-42 front", "/c": "front", "/d": "other"})
    return ini, app, loadfilter("config:" + ini, name="cache", global_conf={})(app)


def test_the_command_purges_tags(tmp_path, memcached, library):
    ini, app, mw = cli_site(tmp_path, memcached, library)
    filled(mw, ["/a", "/b", "/c", "/d"])
    result = run_cli("purge", "-c", ini, "--tag", "article-42", "--tag", "front")
    assert (result.returncode, result.stdout, result.stderr) == (0, "purged tag article-42\npurged tag front\n", "")
    assert [label(mw, path)[0] for path in ("/a", "/b", "/c", "/d")] == ["MISS", "MISS", "MISS", "HIT"]


def test_the_command_soft_purges_tags(tmp_path, memcached, library):
    ini, app, mw = cli_site(tmp_path, memcached, library)
    filled(mw, ["/a", "/d"])
    result = run_cli("purge", "--soft", "-c", ini, "--tag", "article-42")
    assert (result.returncode, result.stdout, result.stderr) == (0, "soft-purged tag article-42\n", "")
    during, rebuilding = rebuild_held(mw, app, "/a", clients=4)
    assert {(r.headers["X-Cache"], r.text) for r in during} == {("STALE", "/a #1")}
    assert (rebuilding.headers["X-Cache"], rebuilding.text) == ("MISS", "/a #2")
    assert label(mw, "/d") == ("HIT", "/d #1")


def test_the_command_purges_tags_and_urls_together(tmp_path, memcached, library):
    ini, app, mw = cli_site(tmp_path, memcached, library)
    filled(mw, ["/a", "/c", "/d"])
    result = run_cli("purge", "-c", ini, "--tag", "article-42", f"{URL}/d")
    assert (result.returncode, result.stdout) == (0, f"purged tag article-42\npurged {URL}/d\n")
    assert [label(mw, path)[0] for path in ("/a", "/c", "/d")] == ["MISS", "HIT", "MISS"]


@pytest.mark.parametrize("args, message", [
    ([], "pagecache: purge what? give URLs, --tag TAG or --all"),
    (["--tag", "a b"], "pagecache: --tag 'a b': a tag is printable ASCII without spaces, and not '*' (that is --all)"),
    (["--tag", "*"], "pagecache: --tag '*': a tag is printable ASCII without spaces, and not '*' (that is --all)"),
    (["--tag", "ok", "--tag", "caf\xe9"],
     "pagecache: --tag 'caf\xe9': a tag is printable ASCII without spaces, and not '*' (that is --all)"),
    (["--tag", ""], "pagecache: --tag '': a tag is printable ASCII without spaces, and not '*' (that is --all)"),
])
def test_the_command_refuses_to_purge_nothing_or_odd_tags(tmp_path, memcached, capsys, args, message):
    ini, app, mw = cli_site(tmp_path, memcached, "python-memcached")
    filled(mw, ["/a"])
    assert cli_main(["purge", "-c", ini, *args]) == 2
    assert capsys.readouterr().err.splitlines() == [message]
    assert label(mw, "/a")[0] == "HIT"


def test_the_command_says_when_memcached_cannot_be_reached(tmp_path, library):
    ini = write_ini(tmp_path, f"""\
        memcached_servers = 127.0.0.1:{free_port()}
        memcached_client = {library}
        cached_urls = / 30 120
        """)
    result = run_cli("purge", "-c", ini, "--tag", "a", "--tag", "b")
    assert (result.returncode, result.stdout) == (1, "")
    lines = result.stderr.splitlines()
    assert [line.split(": not purged")[0] for line in lines] == ["pagecache: tag a", "pagecache: tag b"]
    assert all(": not purged, memcached could not be reached: " in line for line in lines)
    result = run_cli("purge", "-c", ini, "--all")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("pagecache: everything: not purged, memcached could not be reached: ")


def test_the_command_refuses_the_embedded_cache_for_tags_too(tmp_path):
    ini = write_ini(tmp_path, "cached_urls = / 30 120\n")
    for args in (["--tag", "a"], ["--all"]):
        result = run_cli("purge", "-c", ini, *args)
        assert result.returncode == 2 and "cannot be purged from outside" in result.stderr


@pytest.mark.parametrize("options, line", [
    ("", "tags: read from the Surrogate-Key response header (purge with --tag); a purge reaches every "
         "process within tag_check_interval (1s)"),
    ("tag_header = Cache-Tag\ntag_check_interval = 250ms\n",
     "tags: read from the Cache-Tag response header (purge with --tag); a purge reaches every "
     "process within tag_check_interval (0.25s)"),
    ("tag_check_interval = 0\n", "tags: read from the Surrogate-Key response header (purge with --tag); a purge "
                                 "reaches every process within tag_check_interval (0s)"),
    ("tag_header =\n", "tags: off (tag_header is empty); purge --all still works"),
])
def test_check_prints_the_tag_line(tmp_path, memcached, options, line):
    ini = write_ini(tmp_path, f"memcached_servers = {memcached.address}\ncached_urls = / 30 120\n" + options)
    result = run_cli("check", "-c", ini)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[1] == line


# -- across processes and hosts: server processes on two memcached servers ------------------------

ctx = AppServer.context


class SharedSite:
    """The application of the server processes: ``<path> v<version>``, tagged as
    ``tags`` says; ``calls`` counts the calls of all processes; while ``gate``
    is clear, a call sets ``entered`` and waits (events shared with the
    processes, made before they start)."""

    def __init__(self, tags: Dict[str, str]):
        self.tags = tags
        self.version = ctx.Value("i", 1)
        self.calls = ctx.Value("i", 0)
        self.gate = ctx.Event()
        self.gate.set()
        self.entered = ctx.Event()

    def __call__(self, environ: Dict, start_response: Callable) -> List[bytes]:
        with self.calls.get_lock():
            self.calls.value += 1
        self.entered.set()
        if not self.gate.wait(HOLD):
            start_response("504 Gateway Timeout", [("Content-Type", "text/plain")])
            return [b"held too long"]
        path = environ["PATH_INFO"]
        body = f"{path} v{self.version.value}".encode("ascii")
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        if path in self.tags:
            headers.append(("Surrogate-Key", self.tags[path]))
        start_response("200 OK", headers)
        return [body]


class Processes:
    """``count`` waitress processes running the same middleware over the
    same memcached servers and ``key_prefix``; with ``clock``, a shared
    ``multiprocessing.Value`` every process's middleware reads as its time."""

    def __init__(self, site: SharedSite, servers: Sequence[MemcachedServer], count: int,
                 clock: Optional[object] = None, **options):
        settings = dict(memcached_servers=" ".join(server.address for server in servers),
                        key_prefix="processes", purge_allowed="127.0.0.1", **options)

        def make_app():
            now = (lambda: clock.value) if clock is not None else None
            return PageCacheMiddleware(site, "/ 1h 1h", clock=now, **settings)
        self.site = site
        self.settings = settings
        self.servers = [AppServer(make_app, threads=32) for _ in range(count)]
        for server in self.servers:
            server.start()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def get(self, number: int, path: str) -> tuple:
        reply = send(self.servers[number].port, path, host=HOST)
        assert reply.status == 200, reply
        assert reply.header("Surrogate-Key") is None
        return reply.cache, reply.text

    def purge(self, number: int, **headers: str):
        return send(self.servers[number].port, "/", "PURGE",
                    [(name.replace("_", "-"), value) for name, value in headers.items()], host=HOST)


@pytest.fixture
def processes(memcached_pair):
    started: List[Processes] = []

    def start(site: SharedSite, count: int = 3, clock=None, **options) -> Processes:
        group = Processes(site, memcached_pair, count, clock, **options)
        started.append(group)
        return group
    yield start
    for group in started:
        group.stop()


def own_paths(count: int) -> Dict[str, str]:
    """Per process ``i``: a page tagged with article-42 read only by process
    ``i``, one tagged front, one tagged other, one untagged (so that each
    process has to find the purge itself, not see another's rebuild)."""
    tags = {}
    for number in range(count):
        tags[f"/articles/42/{number}"] = "article-42 articles"
        tags[f"/front/{number}"] = "front article-7"
        tags[f"/other/{number}"] = "other"
    return tags


def fill_each(group: Processes, count: int) -> None:
    for number in range(count):
        for path in (f"/articles/42/{number}", f"/front/{number}", f"/other/{number}", f"/plain/{number}"):
            assert group.get((number + 1) % count, path) == ("MISS", f"{path} v1")   # stored by another one
            assert group.get(number, path) == ("HIT", f"{path} v1")


def test_the_keys_are_spread_over_both_servers(processes, memcached_pair):
    group = processes(SharedSite(own_paths(3)), tag_check_interval=0)
    fill_each(group, 3)
    for server in memcached_pair:
        keys = server.keys()
        assert any(key.startswith("processes:p:") for key in keys), server.address
        assert any(key.startswith("processes:t:") for key in keys), server.address


@pytest.mark.parametrize("how", ["http", "cli"])
def test_with_interval_0_a_tag_purge_in_one_place_reaches_every_process_at_once(
        processes, memcached_pair, tmp_path, how):
    site = SharedSite(own_paths(3))
    group = processes(site, tag_check_interval=0)
    fill_each(group, 3)
    calls = site.calls.value

    site.version.value = 2                       # article 42 changed
    if how == "http":
        reply = group.purge(1, Surrogate_Key="article-42")
        assert (reply.status, reply.text) == (200, "purged tags article-42\n")
    else:
        ini = write_ini(tmp_path, f"memcached_servers = {group.settings['memcached_servers']}\n"
                                  "key_prefix = processes\ncached_urls = / 1h 1h\n")
        result = run_cli("purge", "-c", ini, "--tag", "article-42")
        assert (result.returncode, result.stdout) == (0, "purged tag article-42\n"), result.stderr
    for number in range(3):
        path = f"/articles/42/{number}"
        assert group.get(number, path) == ("MISS", f"{path} v2")
        assert group.get((number + 2) % 3, path) == ("HIT", f"{path} v2")
        for other in (f"/front/{number}", f"/other/{number}", f"/plain/{number}"):
            assert group.get(number, other) == ("HIT", f"{other} v1")
    assert site.calls.value == calls + 3

    site.version.value = 3                       # everything changed
    if how == "http":
        reply = group.purge(2, X_Purge_All="1")
        assert (reply.status, reply.text) == (200, "purged everything\n")
    else:
        result = run_cli("purge", "-c", ini, "--all")
        assert (result.returncode, result.stdout) == (0, "purged everything\n"), result.stderr
    for number in range(3):
        for path in (f"/articles/42/{number}", f"/front/{number}", f"/other/{number}", f"/plain/{number}"):
            assert group.get(number, path) == ("MISS", f"{path} v3")
            assert group.get((number + 1) % 3, path) == ("HIT", f"{path} v3")


def test_with_interval_0_a_soft_purge_is_rebuilt_once_across_processes(processes, tmp_path):
    site = SharedSite(own_paths(3))
    group = processes(site, tag_check_interval=0)
    fill_each(group, 3)
    ini = write_ini(tmp_path, f"memcached_servers = {group.settings['memcached_servers']}\n"
                              "key_prefix = processes\ncached_urls = / 1h 1h\n")
    site.version.value = 2
    result = run_cli("purge", "--soft", "-c", ini, "--tag", "article-42")
    assert (result.returncode, result.stdout) == (0, "soft-purged tag article-42\n"), result.stderr

    for number in range(3):
        path = f"/articles/42/{number}"
        calls = site.calls.value
        site.gate.clear()
        site.entered.clear()
        rebuilding: Dict = {}
        thread = threading.Thread(target=lambda n=number, p=path: rebuilding.update(answer=group.get(n, p)))
        thread.start()
        try:
            assert site.entered.wait(HOLD), "no request reached the application"
            during = crowd(12, lambda i: group.get(i % 3, path))
        finally:
            site.gate.set()
            thread.join(HOLD)
        assert set(during) == {("STALE", f"{path} v1")}
        assert rebuilding["answer"] == ("MISS", f"{path} v2")
        assert site.calls.value == calls + 1
        assert {group.get(i, path) for i in range(3)} == {("HIT", f"{path} v2")}


def test_with_the_default_interval_a_purge_reaches_every_process_within_1s_of_clock(processes):
    """The middlewares of three processes read a clock the test steps (a shared
    Value). A process that read a tag's purge times at T trusts them until
    T + 1 s: so a purge at T may go unseen by it until T + 1 s, never later."""
    start = 1_800_000_000.0
    clock = ctx.Value("d", start)
    site = SharedSite(own_paths(3))
    group = processes(site, clock=clock)            # tag_check_interval: the default, 1 s
    fill_each(group, 3)
    clock.value = start + 1.0                        # every process's memo is over ...
    for number in range(3):                          # ... so each reads the tags' times again, at T
        assert group.get(number, f"/articles/42/{number}") == ("HIT", f"/articles/42/{number} v1")
        assert group.get(number, f"/plain/{number}") == ("HIT", f"/plain/{number} v1")
    purged_at = clock.value

    site.version.value = 2
    assert group.purge(0, Surrogate_Key="article-42").status == 200
    # the purging process knows at once; the others may still serve the page ...
    assert group.get(0, "/articles/42/0") == ("MISS", "/articles/42/0 v2")
    for number in (1, 2):
        assert group.get(number, f"/articles/42/{number}") == ("HIT", f"/articles/42/{number} v1")
    clock.value = purged_at + 0.999
    for number in (1, 2):
        assert group.get(number, f"/articles/42/{number}") == ("HIT", f"/articles/42/{number} v1")
    # ... until 1 s after they last read the tag's times (here: the purge's time)
    clock.value = purged_at + 1.0
    for number in (1, 2):
        assert group.get(number, f"/articles/42/{number}") == ("MISS", f"/articles/42/{number} v2")
        assert group.get(number, f"/front/{number}") == ("HIT", f"/front/{number} v1")

    # the same for everything, purged through process 2
    clock.value = purged_at + 2.0
    for number in range(3):
        assert group.get(number, f"/plain/{number}") == ("HIT", f"/plain/{number} v1")
    everything_at = clock.value
    site.version.value = 3
    assert group.purge(2, X_Purge_All="1").status == 200
    assert group.get(2, "/plain/2") == ("MISS", "/plain/2 v3")
    clock.value = everything_at + 0.999
    for number in (0, 1):
        assert group.get(number, f"/plain/{number}") == ("HIT", f"/plain/{number} v1")
    clock.value = everything_at + 1.0
    for number in (0, 1):
        for path in (f"/plain/{number}", f"/front/{number}", f"/other/{number}", f"/articles/42/{number}"):
            assert group.get(number, path) == ("MISS", f"{path} v3")


# -- a Pyramid site purging a tag from a POST, through the INI filter --------------------------------


@pytest.mark.parametrize("server, interval", [("waitress", None), ("gunicorn", "0")])
def test_a_pyramid_view_purges_the_tag_of_the_article_it_saved(deploy, server, interval):
    """/tagged/articles/2 and /tagged/print/2 show article 2 and say so with
    ``request.pagecache.tag("article-2")``, as does the front page; the POST
    that saves the article calls ``request.pagecache.purge_tags("article-2")``
    and redirects to the article. Then all three show the new text, while
    article 3's pages stay cached. With one waitress process, the purge is
    seen at once with the default tag_check_interval (the purging process
    forgets what it knew of the tag); gunicorn's two workers use 0."""
    options = "cached_urls =\n    / 60 5m\n" + (f"tag_check_interval = {interval}\n" if interval else "")
    site = deploy("pyramid", options, servers=[server])
    served = site.servers[0]
    browser = Browser()
    pages = ["/tagged/articles/2", "/tagged/print/2", "/tagged/", "/tagged/articles/3", "/tagged/print/3"]
    for path in pages:
        first = browser.get(served, path)
        assert (first.status, first.cache) == (200, "MISS"), first
        assert "first edition" in first.text
        for _ in range(4):                                   # both gunicorn workers, likely
            again = browser.get(served, path)
            assert (again.cache, again.text) == ("HIT", first.text)
            assert again.header("Surrogate-Key") is None
    assert [site.calls.count(path) for path in pages] == [1] * len(pages)

    mark = site.calls.mark()
    saved = browser.post(served, "/tagged/articles/2/edit", {"text": "Article 2, second edition"})
    assert saved.status == 200 and "second edition" in saved.text, saved
    for path in ("/tagged/articles/2", "/tagged/print/2", "/tagged/"):
        for _ in range(4):
            reply = browser.get(served, path)
            assert "Article 2, second edition" in reply.text, (path, reply.cache, reply.text)
            assert reply.header("Surrogate-Key") is None
    for path in ("/tagged/print/2", "/tagged/"):
        assert site.calls.count(path, since=mark) == 1       # rebuilt once, by the tag purge
    for path in ("/tagged/articles/3", "/tagged/print/3"):
        reply = browser.get(served, path)
        assert (reply.cache, "first edition" in reply.text) == ("HIT", True)
        assert site.calls.count(path, since=mark) == 0
