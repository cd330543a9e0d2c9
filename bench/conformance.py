"""Conformance run: pagecache through the HTTP cache test suite (cache-tests.fyi).

    python3 dev.py conformance                      # set up, run the suite, report
    python3 dev.py conformance -- --only ID [ID...] # single tests, with the suite's request/response dump
    python3 dev.py conformance -- --saved           # report again from the saved results, no run
    python bench/run.py conformance                 # the same from the bench runner (only when named)

The suite is the npm package ``http-cache-tests`` (0.4.5), installed once into
``.conformance/`` (git-ignored). Its origin server runs on a free loopback
port; ``bench/conformance.ini`` puts pagecache in front of ``bench/proxy.py``,
a transparent reverse proxy to that origin, and waitress serves it. The
suite's command-line client runs every test against pagecache, then against
the proxy alone: the baseline that shows which failures are the proxy's (or
waitress's, or WSGI's) rather than pagecache's.

The report counts the tests passed among the suite's three kinds: *required*
(conformance; tests without a kind count as required, as on cache-tests.fyi),
*optimal* (the cache could have done better) and *check* (behaviour surveys:
"yes" counts as passed). Each count is made twice: *own*, the test passed; and
*fyi*, as cache-tests.fyi shows it: a test passes only if every test it
``depends_on`` passes too (transitively), so a pass resting on a failed
premise does not count. The published results of the reverse proxies and
CDNs in the package (``results/*.json``, browsers left out) are counted on the
same test ids. Then the required tests pagecache fails, with the proxy alone's
result beside each.

Last come checks of our own that the suite cannot make. Its
``expected_response_headers_missing`` entries of the form ``[name, value]``
look the header up as a property of the fetch ``Headers`` object, which is
always undefined, so a stored header passes unseen; and headers a transparent
proxy must drop (``Connection`` and those it lists) never reach pagecache
through the suite at all. For every suite test with such an entry, the same
response headers come from a stand-in WSGI application straight behind the
filter of ``bench/conformance.ini``, in-process, and the header must be
absent from the copy served from the cache (``X-Cache: HIT``).

The raw per-test results (the suite's own format, as in its ``results/``) are
written to ``.conformance/results-pagecache.json`` and
``.conformance/results-proxy.json``; servers' logs to ``.conformance/*.log``.
A failing test is a result: the exit status is non-zero only when something
could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import wsgiref.util
from email.utils import formatdate
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.servers import free_port, wait_for_port  # noqa: E402  (needs ROOT on sys.path)

PACKAGE, VERSION = "http-cache-tests", "0.4.5"
WORK = os.path.join(ROOT, ".conformance")
SUITE = os.path.join(WORK, "node_modules", PACKAGE)
INI = os.path.join(HERE, "conformance.ini")
RUN_INI = os.path.join(WORK, "conformance.ini")
RESULTS = {"pagecache": os.path.join(WORK, "results-pagecache.json"),
           "proxy": os.path.join(WORK, "results-proxy.json")}
KINDS = ("required", "optimal", "check")
PASSED = ("pass", "yes")           # the site's outcomes that count as passed
CLI_TIMEOUT = 600                  # seconds one full run of the suite may take
STATUS_HEADER = "X-Cache"          # as bench/conformance.ini sets it
# The suite runs 100 tests at once; ident="": no Server header of waitress's own.
WAITRESS = dict(threads=32, connection_limit=1000, channel_timeout=120, ident="")

# Prints the suite's tests and the published results' index as JSON (run in the package).
EXPORT_JS = """
import tests from './tests/index.mjs'
import surrogate from './tests/surrogate-control.mjs'
import peers from './results/index.mjs'
tests.push(surrogate)  // as cli.mjs and the site do
const out = { tests: [], peers }
for (const suite of tests) {
  for (const test of suite.tests) {
    out.tests.push({ id: test.id, name: test.name, kind: test.kind || null,
      depends_on: test.depends_on || [], browser_only: test.browser_only === true,
      requests: test.requests })
  }
}
console.log(JSON.stringify(out))
"""


class SetupError(RuntimeError):
    """Something the run needs could not be had (Node.js, the suite, a server)."""


class CacheTest(NamedTuple):
    """One test of the suite, as its definition gives it."""
    id: str
    name: str
    kind: str             # required, optimal or check (unmarked tests: required)
    marked: bool          # whether the suite gave the kind
    depends_on: Tuple[str, ...]
    browser_only: bool
    requests: List[Dict[str, Any]]


class Peer(NamedTuple):
    label: str
    results: Dict[str, Any]


class Suite(NamedTuple):
    tests: Dict[str, CacheTest]    # in the suite's order
    peers: List[Peer]         # published results of reverse proxies and CDNs

    @property
    def ids(self) -> List[str]:
        """The tests the command-line client runs (browser-only ones are skipped)."""
        return [test.id for test in self.tests.values() if not test.browser_only]


# -- the suite -----------------------------------------------------------------

def ensure_suite() -> str:
    """The suite's package directory, installed with npm into .conformance/ unless there."""
    for program in ("node", "npm"):
        if shutil.which(program) is None:
            raise SetupError(f"{program} is not installed: the suite needs Node.js 14.8 or newer with npm")
    if installed_version() == VERSION:
        return SUITE
    os.makedirs(WORK, exist_ok=True)
    say(f"installing {PACKAGE} {VERSION} into {os.path.relpath(WORK, ROOT)}/ (once)")
    command = ["npm", "install", "--prefix", WORK, "--cache", os.path.join(WORK, "npm-cache"),
               "--no-audit", "--no-fund", "--no-update-notifier", "--no-save", "--ignore-scripts",
               "--loglevel=error", f"{PACKAGE}@{VERSION}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=WORK)
    if done.returncode != 0 or installed_version() != VERSION:
        raise SetupError(f"npm install {PACKAGE}@{VERSION} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    return SUITE


def installed_version() -> Optional[str]:
    """The version of the suite in .conformance/, if it is there with its dependencies."""
    try:
        with open(os.path.join(SUITE, "package.json")) as f:
            version = json.load(f).get("version")
    except (OSError, ValueError):
        return None
    dependency = os.path.join(WORK, "node_modules", "node-fetch", "package.json")
    return version if os.path.exists(dependency) else None


def load_suite() -> Suite:
    """The suite's tests and the published results of the non-browser peers."""
    done = subprocess.run(["node", "--no-warnings", "--input-type=module", "-e", EXPORT_JS],
                          capture_output=True, text=True, cwd=SUITE, timeout=60)
    if done.returncode != 0:
        raise SetupError(f"could not read the suite's tests:\n{done.stderr}")
    try:
        exported = json.loads(done.stdout)
    except ValueError:
        raise SetupError(f"the suite's tests did not read as JSON:\n{done.stdout[:2000]}") from None
    tests = {}
    for item in exported["tests"]:
        tests[item["id"]] = CacheTest(item["id"], item["name"], item["kind"] or "required",
                                      bool(item["kind"]), tuple(item["depends_on"]),
                                      item["browser_only"], item["requests"])
    peers = [Peer(f"{peer['name']} {peer.get('version', '')}".strip(),
                  read_json(os.path.join(SUITE, "results", peer["file"])))
             for peer in exported["peers"] if peer.get("type") != "browser"]
    return Suite(tests, peers)


def read_json(path: str) -> Dict[str, Any]:
    """A results file: test id -> true, or [kind of failure, message]."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cli_environment(base_url: str, test_id: str = "") -> Dict[str, str]:
    """The environment cli.mjs reads its options from (as ``npm run cli --base=...`` sets it).

    Both ``npm_config_id`` and ``npm_package_config_id`` are set: the client
    takes the first non-empty one, and with neither it looks for a test whose
    id is undefined."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("npm_config_", "npm_package_config_"))}
    env.update(npm_config_base=base_url, npm_package_config_base=base_url,
               npm_config_id=test_id, npm_package_config_id=test_id)
    return env


def run_suite(base_url: str) -> Dict[str, Any]:
    """Every test against the cache at ``base_url``: the client's results by test id."""
    done = subprocess.run(["node", "--no-warnings", "cli.mjs"], capture_output=True, text=True,
                          cwd=SUITE, env=cli_environment(base_url), timeout=CLI_TIMEOUT)
    try:
        results = json.loads(done.stdout)
    except ValueError:
        raise SetupError(f"the suite's client gave no results for {base_url} "
                         f"(status {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}") from None
    if not isinstance(results, dict) or not results:
        raise SetupError(f"the suite's client gave empty results for {base_url}")
    return results


def run_one(base_url: str, test_id: str) -> str:
    """One test against ``base_url`` in the client's dump mode: its printed exchange and result."""
    done = subprocess.run(["node", "--no-warnings", "cli.mjs"], capture_output=True, text=True,
                          cwd=SUITE, env=cli_environment(base_url, test_id), timeout=120)
    return done.stdout + done.stderr


# -- servers -------------------------------------------------------------------

@contextlib.contextmanager
def child(name: str, command: Sequence[str], port: int, cwd: str,
          env: Optional[Dict[str, str]] = None) -> Iterator[str]:
    """A server process listening on ``port`` for the block, its output in
    ``.conformance/<name>.log``; stopped (then killed if need be) at the end.
    Yields the log's path."""
    log_path = os.path.join(WORK, f"{name}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, timeout=20, process=process)
        except RuntimeError as error:
            raise SetupError(f"{name} did not start: {error}; see {log_path}") from None
        yield log_path
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """Stop a child we started: SIGTERM, then SIGKILL after five seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def origin(port: int) -> contextlib.AbstractContextManager:
    """The suite's origin server (server/server.mjs, as ``npm run server --port=PORT`` starts it)."""
    env = dict(os.environ, npm_config_port=str(port), npm_config_protocol="http",
               npm_config_pidfile=os.path.join(WORK, "origin.pid"))
    return child("origin", ["node", "--no-warnings", "server/server.mjs"], port, SUITE, env)


def wsgi_server(name: str, ini: str, app: str, port: int) -> contextlib.AbstractContextManager:
    """Waitress serving the application ``app`` of ``ini``, in a process of its own."""
    return child(name, [sys.executable, os.path.abspath(__file__), "serve", ini, app, str(port)], port, ROOT)


def serve(ini: str, app: str, port: int) -> None:
    """The body of a server process: ``app`` of ``ini`` with waitress on ``port``."""
    import waitress
    from paste.deploy import loadapp
    waitress.serve(loadapp(f"config:{os.path.abspath(ini)}", name=app),
                   host="127.0.0.1", port=port, **WAITRESS)


def write_run_ini(origin_port: int) -> str:
    """A copy of bench/conformance.ini whose proxy asks the origin on ``origin_port``."""
    with open(INI, encoding="utf-8") as f:
        text = f.read()
    text, count = re.subn(r"(?m)^origin\s*=.*$", f"origin = http://127.0.0.1:{origin_port}", text)
    if count != 1:
        raise SetupError(f"{INI} should have exactly one 'origin =' line, not {count}")
    with open(RUN_INI, "w", encoding="utf-8") as f:
        f.write(text)
    return RUN_INI


class Stack(NamedTuple):
    urls: Dict[str, str]   # base URL of "pagecache" (in front of the proxy) and of "proxy" (alone)
    origin_log: str        # what the origin server printed


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    """The origin, pagecache in front of the proxy, and the proxy alone, each
    on a free port, for the block."""
    origin_port, cache_port, proxy_port = free_port(), free_port(), free_port()
    ini = write_run_ini(origin_port)
    with contextlib.ExitStack() as servers:
        log = servers.enter_context(origin(origin_port))
        servers.enter_context(wsgi_server("pagecache", ini, "main", cache_port))
        servers.enter_context(wsgi_server("proxy", ini, "proxy", proxy_port))
        urls = {"pagecache": f"http://127.0.0.1:{cache_port}", "proxy": f"http://127.0.0.1:{proxy_port}"}
        yield Stack(urls, log)


# -- counting as cache-tests.fyi does ------------------------------------------

def outcome(suite: Suite, test_id: str, results: Dict[str, Any], honour_dependencies: bool = True) -> str:
    """The site's outcome of one test (lib/display.mjs determineTestResult):
    untested, dependency_fail, setup_fail, retry, pass, fail, optional_fail, yes or no."""
    result = results.get(test_id)
    test = suite.tests.get(test_id)
    if result is None or test is None:
        return "untested"
    if honour_dependencies:
        for dependency in test.depends_on:
            if outcome(suite, dependency, results) not in PASSED:
                return "dependency_fail"
    if isinstance(result, list) and result and result[0] == "Setup":
        return "retry" if result[1:2] == ["retry"] else "setup_fail"
    passed = result is True
    if test.kind == "optimal":
        return "pass" if passed else "optional_fail"
    if test.kind == "check":
        return "yes" if passed else "no"
    return "pass" if passed else "fail"


class Count(NamedTuple):
    own: int   # tests that passed
    fyi: int   # ... whose prerequisites passed too


def counts(suite: Suite, results: Dict[str, Any]) -> Dict[str, Count]:
    """Passed tests of each kind, counted on their own and as the site counts them."""
    totals = {}
    for kind in KINDS:
        ids = [i for i in suite.ids if suite.tests[i].kind == kind]
        totals[kind] = Count(sum(results.get(i) is True for i in ids),
                             sum(outcome(suite, i, results) in PASSED for i in ids))
    return totals


# -- our own checks of headers that must not be stored -------------------------

class HeaderCheck(NamedTuple):
    test: CacheTest
    headers: List[str]     # the headers that must not come from the cache
    verdict: str           # pass, "not stored" (nothing served from the cache), FAIL or ERROR
    detail: str


def header_checks(suite: Suite) -> List[HeaderCheck]:
    """For each suite test that says a header must be missing from a cached
    response: that test's origin headers from a stand-in application behind
    the filter of bench/conformance.ini, and the header looked for in the HIT."""
    try:
        from paste.deploy import loadfilter
        make_filter = loadfilter(f"config:{INI}", name="pagecache")
    except Exception as error:  # pagecache itself could not be loaded: nothing to check
        raise SetupError(f"could not load the pagecache filter of {INI}: {type(error).__name__}: {error}") \
            from error
    checks = []
    for test in suite.tests.values():
        step = next((r for r in test.requests if r.get("expected_response_headers_missing")), None)
        if step is None:
            continue
        missing = [(h, None) if isinstance(h, str) else (h[0], str(h[1]))
                   for h in step["expected_response_headers_missing"]]
        try:
            checks.append(check_headers(make_filter, test, missing))
        except Exception as error:  # pagecache raised: a result, like a failed test
            checks.append(HeaderCheck(test, [name for name, _ in missing], "ERROR",
                                      f"{type(error).__name__}: {error}"))
    return checks


def check_headers(make_filter: Callable, test: CacheTest,
                  missing: List[Tuple[str, Optional[str]]]) -> HeaderCheck:
    """One test's check: store the response of its first request, ask again,
    look for the ``missing`` headers (a name, and the value the origin gave it
    or None for any value) in the HIT."""
    sent = origin_headers(test.requests[0].get("response_headers", []))
    app = make_filter(stand_in(sent))
    path = f"/check/{test.id}"
    call(app, path)
    status, headers = call(app, path)
    names = [name for name, _ in missing]
    label = header(headers, STATUS_HEADER)
    if label != "HIT":
        return HeaderCheck(test, names, "not stored", f"second response: {status}, {STATUS_HEADER}: {label}")
    found = [f"{name}: {header(headers, name)}" for name, value in missing
             if header(headers, name) is not None and (value is None or value in header(headers, name))]
    if found:
        return HeaderCheck(test, names, "FAIL", "served from cache with " + "; ".join(found))
    return HeaderCheck(test, names, "pass", "absent from the HIT")


def origin_headers(spec: List[List[Any]]) -> List[Tuple[str, str]]:
    """A test's ``response_headers`` as the origin sends them (a number for a
    date header is seconds from now)."""
    headers = []
    for item in spec:
        name, value = item[0], item[1]
        if isinstance(value, (int, float)) and name.lower() in ("date", "expires", "last-modified"):
            value = formatdate(time.time() + value, usegmt=True)
        headers.append((name, str(value)))
    return headers


def stand_in(headers: List[Tuple[str, str]]) -> Callable:
    """A WSGI application answering every request with ``headers``, as the suite's origin would."""
    def app(environ: Dict, start_response: Callable) -> List[bytes]:
        body = b"stand-in origin"
        start_response("200 OK", [("Content-Type", "text/plain")] + list(headers))
        return [body]
    return app


def call(app: Callable, path: str) -> Tuple[str, List[Tuple[str, str]]]:
    """GET ``path`` from a WSGI application in-process: its status and headers."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "HTTP_HOST": "conformance.test"}
    wsgiref.util.setup_testing_defaults(environ)
    answer: List[Any] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
        answer[:] = [status, headers]
        return lambda data: None
    body = app(environ, start_response)
    try:
        for _ in body:
            pass
    finally:
        if hasattr(body, "close"):
            body.close()
    return answer[0], answer[1]


def header(headers: List[Tuple[str, str]], name: str) -> Optional[str]:
    """The value of header ``name`` (lines joined with ", "), or None."""
    values = [v for n, v in headers if n.lower() == name.lower()]
    return ", ".join(values) if values else None


# -- the report ----------------------------------------------------------------

def print_counts(suite: Suite, runs: Dict[str, Dict[str, Any]]) -> None:
    """One table: passed tests by kind, own and fyi, for pagecache, the proxy and each peer."""
    ids = suite.ids
    sizes = {kind: sum(suite.tests[i].kind == kind for i in ids) for kind in KINDS}
    rows = [(label, results) for label, results in runs.items()] + [(p.label, p.results) for p in suite.peers]
    print(f"\nPassed tests ({len(ids)} tests of {PACKAGE} {VERSION}; peers: its published results, "
          f"counted on the same ids)")
    print("  own: the test passed; fyi: it and every test it depends on passed (as cache-tests.fyi counts)")
    head = "".join(f"{kind + ' /' + str(sizes[kind]):>16}" for kind in KINDS)
    print(f"\n  {'':<30}{head}   tested")
    print(f"  {'':<30}" + f"{'own   fyi':>16}" * len(KINDS))
    for label, results in rows:
        table = counts(suite, results)
        cells = "".join(f"{table[k].own:>10}{table[k].fyi:>6}" for k in KINDS)
        tested = sum(i in results for i in ids)
        print(f"  {label:<30}{cells}   {tested:>3}/{len(ids)}")


def print_failures(suite: Suite, mine: Dict[str, Any], proxy: Dict[str, Any]) -> None:
    """The required tests pagecache fails: name, why, and how the proxy alone did."""
    failed = [i for i in suite.ids if suite.tests[i].kind == "required" and mine.get(i) is not True]
    both = sum(proxy.get(i) is not True for i in failed)
    print(f"\nRequired tests pagecache fails: {len(failed)}; the proxy alone fails {both} of them too")
    print("  kind '(required)': the suite gives none, which counts as required. A setup failure means a\n"
          "  premise of the test did not hold (for the proxy alone: usually that a response was stored).")
    for test_id in failed:
        test = suite.tests[test_id]
        print(f"  {test_id}  {'required' if test.marked else '(required)'}  {test.name}")
        print(f"      pagecache: {verdict(suite, test_id, mine)}")
        if proxy.get(test_id) is True:
            print("      proxy alone: passes")
        else:
            print(f"      proxy alone FAILS TOO: {verdict(suite, test_id, proxy)}")
    unseated = [i for i in suite.ids if suite.tests[i].kind == "required" and mine.get(i) is True
                and outcome(suite, i, mine) not in PASSED]
    if unseated:
        print(f"\n  Required tests pagecache passes that cache-tests.fyi would not count, "
              f"a prerequisite having failed ({len(unseated)}):")
        for test_id in unseated:
            print(f"    {test_id} (depends on {', '.join(suite.tests[test_id].depends_on)})")


def verdict(suite: Suite, test_id: str, results: Dict[str, Any]) -> str:
    """``fail: <the client's message>`` (or setup fail, retry, ...) for one test."""
    kind = outcome(suite, test_id, results, honour_dependencies=False).replace("_", " ")
    result = results.get(test_id)
    if isinstance(result, list) and result and result[0] not in ("Assertion", "Setup"):
        kind = f"harness error ({result[0]})"
    return f"{kind}: {reason(result)}"


def reason(result: Any) -> str:
    """The client's message for a failed test."""
    if result is None:
        return "not run"
    if isinstance(result, list):
        return str(result[-1]) if result else "?"
    return str(result)


def print_header_checks(checks: List[HeaderCheck], mine: Dict[str, Any]) -> None:
    """Our checks of headers that must not be served from the cache, beside
    what the suite said of the same test through the proxy."""
    print("\nOur checks: headers that must not be served from the cache (in-process: the filter of\n"
          "  bench/conformance.ini in front of a stand-in application sending each test's origin headers;\n"
          "  the suite cannot see these: its [name, value] form never looks at the header, and the proxy\n"
          "  drops hop-by-hop headers before pagecache sees them)")
    for check in checks:
        suite_said = "pass" if mine.get(check.test.id) is True else "fail"
        print(f"  {check.verdict:<10} {check.test.id}  [{check.test.kind}; suite: {suite_said}]  "
              f"{', '.join(check.headers)}: {check.detail}")
    failed = sum(check.verdict in ("FAIL", "ERROR") for check in checks)
    print(f"  {len(checks) - failed} of {len(checks)} pass ('not stored' passes: nothing is served "
          f"from the cache)" + (f"; {failed} FAIL" if failed else ""))


def print_preamble(suite: Suite, urls: Optional[Dict[str, str]]) -> None:
    """What was run: the suite, the rule under test, the code, the servers."""
    with open(INI, encoding="utf-8") as f:
        rule = re.search(r"(?m)^cached_urls\s*=.*(?:\n[ \t]+\S.*)*", f.read())
    print(f"pagecache conformance run: {PACKAGE} {VERSION}, {len(suite.tests)} tests "
          f"({len(suite.tests) - len(suite.ids)} browser-only ones skipped)")
    print(f"  rule under test (bench/conformance.ini): {rule.group(0) if rule else '?'}")
    print(f"  code: {code_state()}")
    if urls:
        print(f"  pagecache {urls['pagecache']} -> proxy -> origin; proxy alone {urls['proxy']}")


def code_state() -> str:
    """The commit and whether pagecache/ has changes not committed (the figures depend on them)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pagecache"], capture_output=True,
                               text=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{commit or '?'}" + (" with uncommitted changes in pagecache/" if dirty else "")


def report(suite: Suite, mine: Dict[str, Any], proxy: Dict[str, Any]) -> None:
    print_counts(suite, {"pagecache": mine, "proxy alone (no cache)": proxy})
    print_failures(suite, mine, proxy)
    print_header_checks(header_checks(suite), mine)


# -- the runs --------------------------------------------------------------------

def full_run(suite: Suite) -> int:
    """The whole suite against pagecache and the proxy alone, the results saved, the report."""
    with stack() as servers:
        urls = servers.urls
        print_preamble(suite, urls)
        runs = {}
        for name in ("pagecache", "proxy"):
            started = time.monotonic()
            say(f"running the suite against {name} ({urls[name]}) ...")
            runs[name] = run_suite(urls[name])
            say(f"{name}: {len(runs[name])} results in {time.monotonic() - started:.0f}s")
    for name, results in runs.items():
        with open(RESULTS[name], "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    report(suite, runs["pagecache"], runs["proxy"])
    print(f"\nresults: {os.path.relpath(RESULTS['pagecache'], ROOT)}, "
          f"{os.path.relpath(RESULTS['proxy'], ROOT)}; logs: .conformance/*.log")
    return 0


def saved_report(suite: Suite) -> int:
    """The report again from the results of the last run."""
    try:
        mine, proxy = read_json(RESULTS["pagecache"]), read_json(RESULTS["proxy"])
    except (OSError, ValueError) as error:
        raise SetupError(f"no saved results to report ({error}): run without --saved first") from None
    print_preamble(suite, None)
    print("  (saved results of the last run)")
    report(suite, mine, proxy)
    return 0


def only_run(suite: Suite, ids: List[str]) -> int:
    """Single tests in the client's dump mode, against pagecache then the proxy
    alone, each followed by what the origin saw."""
    unknown = [i for i in ids if i not in suite.tests]
    if unknown:
        print(f"unknown test id(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    with stack() as servers:
        for test_id in ids:
            for name, url in servers.urls.items():
                seen = os.path.getsize(servers.origin_log)
                print(f"\n######## {test_id} against {name} ({url})")
                print(run_one(url, test_id))
                time.sleep(0.2)  # let the origin's log catch up
                with open(servers.origin_log, encoding="utf-8", errors="replace") as f:
                    f.seek(seen)
                    print(f"-------- what the origin saw\n{f.read()}")
    return 0


def say(message: str) -> None:
    print(f"conformance: {message}", file=sys.stderr, flush=True)


def parse_args(args: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dev.py conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run just these tests, with their dump")
    parser.add_argument("--saved", action="store_true", help="report from the saved results, no run")
    return parser.parse_args(args)


def main(args: List[str]) -> int:
    """Run the conformance suite (see the module's docstring); 0 when it ran."""
    if args[:1] == ["--"]:
        args = args[1:]
    options = parse_args(args)
    started = time.monotonic()
    try:
        ensure_suite()
        suite = load_suite()
        if options.saved:
            return saved_report(suite)
        if options.only:
            return only_run(suite, options.only)
        status = full_run(suite)
    except (SetupError, subprocess.TimeoutExpired) as error:
        print(f"conformance: could not run: {error}", file=sys.stderr)
        return 1
    say(f"done in {time.monotonic() - started:.0f}s")
    return status


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(main(sys.argv[1:]))
