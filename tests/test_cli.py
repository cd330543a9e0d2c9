"""The ``pagecache`` command against real memcached servers: purge and soft purge
of pages stored by a middleware built from the same INI file, ``check`` of
reachable and unreachable servers, and one-line errors for bad INI files.

Most runs go through the console script installed in the virtualenv (as a user
runs it); the error messages are checked through ``main()``. The INI files name
an application module that does not exist: the command must never need it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import List

import pytest
from paste.deploy import loadfilter

from pagecache.cli import main
from pagecache.entry import GRACE, Page

from .conftest import CountingApp, client, stored
from .servers import MemcachedServer, free_port

SCRIPT = os.path.join(os.path.dirname(sys.executable), "pagecache")
URL = "http://example.com/news"


def write_ini(directory, filter_options: str, extra: str = "", name: str = "production.ini") -> str:
    """An INI file whose pipeline is the pagecache filter in front of an
    application that cannot be imported."""
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write(textwrap.dedent("""\
            [app:main]
            use = call:no_such_module_anywhere:make_app

            [filter:cache]
            use = egg:pagecache#main
            """) + textwrap.dedent(filter_options) + "\n[pipeline:main]\npipeline = cache main\n"
            + textwrap.dedent(extra))
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    """The installed ``pagecache`` script, run with ``args`` from a directory
    where nothing of the project is importable."""
    assert os.path.exists(SCRIPT), f"the console script is not installed at {SCRIPT}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60, cwd="/", env=env)


def middleware_from(path: str, app=None):
    """The filter of ``path`` (as PasteDeploy builds it) around a CountingApp."""
    return loadfilter("config:" + path, name="cache")(app or CountingApp())


def errors_of(capsys) -> List[str]:
    return capsys.readouterr().err.splitlines()


@pytest.fixture(params=["python-memcached", "pymemcache"])
def library(request):
    return request.param


# -- purge ----------------------------------------------------------------------


def test_purge_removes_a_page_the_filter_stored(tmp_path, memcached, library):
    path = write_ini(tmp_path, f"""\
        memcached_servers = {memcached.address}
        memcached_client = {library}
        key_prefix = clitest
        cached_urls = /news 30 120
        """)
    mw = middleware_from(path)
    client(mw).get("/news")
    assert client(mw).get("/news").headers["X-Cache"] == "HIT"

    result = run("purge", "-c", path, URL)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"purged {URL}\n", "")
    assert stored(mw, URL) is None
    response = client(mw).get("/news")
    assert (response.headers["X-Cache"], response.body) == ("MISS", b"page #2")

    result = run("purge", "-c", path, URL, "http://example.com/never-cached")
    assert (result.returncode, result.stdout) == (0, f"purged {URL}\nnothing cached for "
                                                     "http://example.com/never-cached\n")


def test_soft_purge_ends_the_ttl_and_keeps_the_stale_copy(tmp_path, memcached, library):
    path = write_ini(tmp_path, f"""\
        memcached_servers = {memcached.address}
        memcached_client = {library}
        cached_urls = /news 30 120
        """)
    mw = middleware_from(path)
    client(mw).get("/news")

    result = run("purge", "--soft", "-c", path, URL)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"soft-purged {URL}\n", "")
    page = stored(mw, URL)
    assert type(page) is Page and page.body == b"page #1"
    assert page.state(mw.clock()) == GRACE
    response = client(mw).get("/news")
    assert (response.headers["X-Cache"], response.body) == ("MISS", b"page #2")
    assert client(mw).get("/news").headers["X-Cache"] == "HIT"


def test_purge_uses_the_servers_and_key_prefix_of_the_named_filter(tmp_path, memcached_pair):
    servers = " ".join(server.address for server in memcached_pair)
    options = """\
        memcached_servers = {servers}
        key_prefix = {prefix}
        cached_urls = / 30 120
        """
    ours = write_ini(tmp_path, options.format(servers=servers, prefix="ours"))
    theirs = write_ini(tmp_path, options.format(servers=servers, prefix="theirs"), name="theirs.ini")
    mine, other = middleware_from(ours), middleware_from(theirs)
    urls = [f"http://example.com/page/{number}" for number in range(12)]
    for url in urls:
        client(mine).get(url)
        client(other).get(url)
    assert all(server.keys() for server in memcached_pair), "the pages should be spread over both servers"

    result = run("purge", "-c", ours, *urls)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"purged {url}" for url in urls]
    assert [stored(mine, url) for url in urls] == [None] * len(urls)
    assert all(type(stored(other, url)) is Page for url in urls)


def test_purge_fails_when_memcached_cannot_be_reached(tmp_path, library):
    path = write_ini(tmp_path, f"""\
        memcached_servers = 127.0.0.1:{free_port()}
        memcached_client = {library}
        cached_urls = / 30 120
        """)
    result = run("purge", "-c", path, URL, URL + "?page=2")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    for line, url in zip(lines, (URL, URL + "?page=2")):
        assert line.startswith(f"pagecache: {url}: not purged, memcached could not be reached: ")


def test_purge_refuses_the_embedded_cache(tmp_path):
    path = write_ini(tmp_path, "cached_urls = / 30 120\n")
    result = run("purge", "-c", path, URL)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "cannot be purged from outside" in result.stderr and "PURGE" in result.stderr


def test_purge_refuses_a_url_that_is_not_absolute(tmp_path, memcached, capsys):
    path = write_ini(tmp_path, f"memcached_servers = {memcached.address}\ncached_urls = / 30 120\n")
    assert main(["purge", "-c", path, URL, "/news"]) == 2
    assert errors_of(capsys) == ["pagecache: not an absolute http(s) URL: '/news' "
                                 "(give the full URL, as http://example.com/page)"]


# -- check ------------------------------------------------------------------------


def test_check_reports_each_reachable_server(tmp_path, memcached_pair, library):
    servers = " ".join(server.address for server in memcached_pair)
    path = write_ini(tmp_path, f"""\
        memcached_servers = {servers}
        memcached_client = {library}
        key_prefix = shop
        cached_urls =
            /news 30 120
            / 10 60
        """)
    result = run("check", "-c", path)
    assert (result.returncode, result.stderr) == (0, "")
    stats = memcached_pair[0].command("stats").decode().split("\r\n")
    version = next(line.split()[2] for line in stats if line.startswith("STAT version "))
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path} [filter:cache]: valid, 2 cached_urls rule(s), key_prefix shop"
    assert lines[1:3] == [
        "tags: read from the Surrogate-Key response header (purge with --tag); a purge reaches every "
        "process within tag_check_interval (1s)",
        "cookies: any cookie sends a request past the cache (set bypass_cookies to name the ones that matter)"]
    assert len(lines) == 5
    for line, server in zip(lines[3:], memcached_pair):
        assert line.startswith(f"{server.address}: reachable, memcached {version}, 64 MB of memory, "
                               "items up to 1 MB (answered in "), line


def test_check_says_which_cookies_bypass_and_what_is_never_cached(tmp_path, memcached):
    path = write_ini(tmp_path, f"""\
        memcached_servers = {memcached.address}
        bypass_cookies = session auth_tkt
        cookie_responses = strip
        cached_urls =
            /account pass
            /login 0 0
            / 10 60
        """)
    lines = run("check", "-c", path).stdout.splitlines()
    assert lines[2] == ("cookies: requests with session, auth_tkt bypass the cache; other cookies are ignored "
                        "(the application never sees them when it renders a page for the cache)")
    assert lines[3].startswith("warning: cookie_responses = strip: a response that sets cookies is stored")
    assert lines[4] == "never cached: /account, /login"


def test_check_fails_for_an_unreachable_server(tmp_path, memcached):
    dead = f"127.0.0.1:{free_port()}"
    path = write_ini(tmp_path, f"memcached_servers = {memcached.address} {dead}\ncached_urls = / 30 120\n")
    result = run("check", "-c", path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[3].startswith(f"{memcached.address}: reachable")   # after the tags and cookies lines
    assert lines[4] == f"{dead}: UNREACHABLE: Connection refused"
    assert result.stderr == "pagecache: 1 of 2 memcached servers could not be reached\n"


def test_check_fails_for_a_server_that_does_not_answer(tmp_path):
    server = MemcachedServer().start()
    try:
        server.pause()
        path = write_ini(tmp_path, f"memcached_servers = {server.address}\nmemcached_timeout = 0.2\n"
                                   "cached_urls = / 30 120\n")
        result = run("check", "-c", path)
    finally:
        server.stop()
    assert result.returncode == 1
    assert f"{server.address}: UNREACHABLE: no answer within memcached_timeout (0.2s)" in result.stdout


def test_check_explains_the_embedded_cache(tmp_path):
    path = write_ini(tmp_path, "cached_urls = / 30 120\n")
    result = run("check", "-c", path)
    assert (result.returncode, result.stderr) == (0, "")
    assert "embedded memory cache" in result.stdout
    assert "`pagecache purge` cannot reach it" in result.stdout


def test_check_warns_when_max_entry_size_does_not_fit_memcached(tmp_path, memcached):
    path = write_ini(tmp_path, f"memcached_servers = {memcached.address}\nmax_entry_size = 1MB\n"
                               "cached_urls = / 30 120\n")
    result = run("check", "-c", path)
    assert result.returncode == 0
    assert f"warning: max_entry_size (1 MB) leaves no room under {memcached.address}'s item size limit" \
        in result.stdout


def test_check_warns_about_options_hidden_by_default(tmp_path, memcached):
    """PasteDeploy gives a filter only its own section's keys, and drops those
    that [DEFAULT] also sets: the check says so, and the filter really does
    not get the value (neither with ``set``); ``get`` brings it in."""
    default = "[DEFAULT]\nkey_prefix = shared\n\n"
    hidden = write_ini(tmp_path, f"memcached_servers = {memcached.address}\nkey_prefix = mine\n"
                                 "cached_urls = / 30 120\n", name="hidden.ini")
    with_set = write_ini(tmp_path, f"memcached_servers = {memcached.address}\nset key_prefix = mine\n"
                                   "cached_urls = / 30 120\n", name="set.ini")
    with_get = write_ini(tmp_path, f"memcached_servers = {memcached.address}\nget key_prefix = key_prefix\n"
                                   "cached_urls = / 30 120\n", name="get.ini")
    for path in (hidden, with_set, with_get):
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(default + text)

    assert middleware_from(hidden).keys.prefix == "pagecache"
    assert middleware_from(with_set).keys.prefix == "pagecache"
    assert middleware_from(with_get).keys.prefix == "shared"
    for path in (hidden, with_set):
        result = run("check", "-c", path)
        assert result.returncode == 0
        assert "warning: key_prefix is set in [DEFAULT], so PasteDeploy passes neither that value nor " \
               "[filter:cache]'s own key_prefix to the filter" in result.stdout
    assert "warning" not in run("check", "-c", with_get).stdout


def test_percent_signs_written_twice_reach_the_rules(tmp_path, memcached):
    path = write_ini(tmp_path, f"""\
        memcached_servers = {memcached.address}
        cached_urls =
            ~^/100%%-off/ 30 120
        """)
    assert run("check", "-c", path).returncode == 0
    mw = middleware_from(path)
    assert client(mw).get("/100%25-off/menu").headers["X-Cache"] == "MISS"
    assert "X-Cache" not in client(mw).get("/other").headers


# -- errors: one line, no traceback ------------------------------------------------


def test_missing_file(tmp_path, capsys):
    path = str(tmp_path / "nowhere.ini")
    assert main(["check", "-c", path]) == 2
    assert errors_of(capsys) == [f"pagecache: {path}: cannot read it: No such file or directory"]


@pytest.mark.parametrize("option, line, message", [
    ("wait_timeout = soon", 6, "option wait_timeout: 'soon' is not a duration such as 30, 90s, 5m, 2h or 1d"),
    ("wait_timout = 5", 6, "unknown option 'wait_timout'"),
    ("memcached_servers = 127.0.0.1:11211 localhost", 6,
     "option memcached_servers: 'localhost' is not host:port"),
    ("cached_urls =\n    /news 30 120\n    /blog 5m", 8, "'/blog 5m': expected '<pattern> <ttl> <grace>'"),
    ("cached_urls =\n    ~caf%C3 30 120", 6,
     "option cached_urls: '%' must be followed by '%' or '(', found: '%C3 30 120' "
     "(write %% for a literal % sign)"),
])
def test_bad_option_names_the_option_and_line(tmp_path, capsys, option, line, message):
    options = option if option.startswith("cached_urls") else option + "\ncached_urls = / 30 120"
    path = write_ini(tmp_path, options + "\n")
    for command in (["check", "-c", path], ["purge", "-c", path, URL]):
        assert main(command) == 2
        errors = errors_of(capsys)
        assert len(errors) == 1
        assert errors[0].startswith(f"pagecache: {path} line {line}: "), errors
        assert message in errors[0]


def test_missing_section(tmp_path, capsys):
    path = write_ini(tmp_path, "cached_urls = / 30 120\n")
    assert main(["purge", "-c", path, "-n", "pagecahce", URL]) == 2
    assert errors_of(capsys) == [f"pagecache: {path}: no [filter:pagecahce] section (sections: "
                                 "[app:main], [filter:cache], [pipeline:main])"]


def test_section_that_is_not_pagecache(tmp_path, capsys):
    path = write_ini(tmp_path, "cached_urls = / 30 120\n",
                     extra="\n[filter:gzip]\npaste.filter_factory = gzip:open\n")
    assert main(["check", "-c", path, "-n", "gzip"]) == 2
    assert errors_of(capsys) == [f"pagecache: {path}: [filter:gzip] is not a pagecache filter "
                                 "(use = egg:pagecache#main)"]
    assert main(["check", "-c", path]) == 0  # found by itself: the one pagecache filter


def test_no_pagecache_filter_or_several(tmp_path, capsys):
    path = os.path.join(str(tmp_path), "plain.ini")
    with open(path, "w") as f:
        f.write("[app:main]\nuse = call:no_such_module_anywhere:make_app\n")
    assert main(["check", "-c", path]) == 2
    assert errors_of(capsys) == [f"pagecache: {path}: no [filter:NAME] section with "
                                 "use = egg:pagecache#main; name one with -n"]

    path = write_ini(tmp_path, "cached_urls = / 30 120\n",
                     extra="\n[filter:cache2]\nuse = egg:pagecache#main\ncached_urls = / 1 1\n")
    assert main(["check", "-c", path]) == 2
    assert errors_of(capsys) == [f"pagecache: {path}: several pagecache filters (cache, cache2): "
                                 "choose one with -n"]
    assert main(["check", "-c", path, "-n", "cache2"]) == 0


def test_not_an_ini_file(tmp_path, capsys):
    path = os.path.join(str(tmp_path), "broken.ini")
    with open(path, "w") as f:
        f.write("memcached_servers = 127.0.0.1:11211\n")
    assert main(["check", "-c", path]) == 2
    errors = errors_of(capsys)
    assert len(errors) == 1 and errors[0].startswith(f"pagecache: {path}: not an INI file: ")


def test_errors_through_the_script_are_one_line_without_traceback(tmp_path):
    path = write_ini(tmp_path, "cached_urls = / 30 120\nwait_timeout = soon\n")
    result = run("check", "-c", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"pagecache: {path} line 7: option wait_timeout: ")
