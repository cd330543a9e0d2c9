"""Packaging: ``python -m build`` makes an sdist holding everything the project
needs (MANIFEST.in) and a wheel; a fresh virtualenv that installs only the
wheel (its dependencies come from the package index) loads ``egg:pagecache#main``
from a paste.ini and serves a page from the cache; its ``pagecache`` command works.

The build runs with build isolation (the default): the build backend is
installed from the package index into a throw-away environment, which is what a
clean CI machine can do (``--no-isolation`` would need ``wheel`` in this venv).
This takes about a minute.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from typing import Dict, List

import pytest

import pagecache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_LEVEL = ("README.md", "CHANGES", "LICENSE", "development.ini", "dev.py", "setup.cfg", "setup.py",
             "MANIFEST.in")
TREES = ("pagecache/*.py", "tests/*.py", "tests/*.ini", "tests/apps/*.py", "bench/*.py", "bench/*.ini", "docs/*.png")


def _env() -> Dict[str, str]:
    """This process's environment, without anything pointing into the source tree."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(command: List[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(), **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Dict[str, str]:
    """The sdist and wheel ``python -m build`` makes of the source tree (the
    wheel is built from the sdist, so the sdist must be complete)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), ROOT])
    version = pagecache.__version__
    found = {"sdist": os.path.join(str(out), f"pagecache-{version}.tar.gz"),
             "wheel": os.path.join(str(out), f"pagecache-{version}-py3-none-any.whl")}
    assert sorted(os.listdir(str(out))) == sorted(os.path.basename(path) for path in found.values())
    return found


def test_sdist_holds_everything(dist):
    prefix = f"pagecache-{pagecache.__version__}/"
    with tarfile.open(dist["sdist"]) as sdist:
        names = {name[len(prefix):] for name in sdist.getnames() if name.startswith(prefix)}
    expected = set(TOP_LEVEL)
    for pattern in TREES:
        expected.update(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, pattern)))
    assert {"pagecache/cli.py", "tests/conftest.py", "bench/run.py"} <= expected
    missing = expected - names
    assert not missing, f"missing from the sdist: {sorted(missing)}"
    junk = [name for name in names if name.startswith((".venv", ".git", ".pytest_cache", "build/"))
            or "__pycache__" in name or name.endswith(".pyc")]
    assert not junk, f"should not be in the sdist: {junk}"


def test_wheel_holds_the_package_and_its_entry_points(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        info = f"pagecache-{pagecache.__version__}.dist-info/"
        entry_points = wheel.read(info + "entry_points.txt").decode()
        metadata = wheel.read(info + "METADATA").decode()
    modules = {os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "pagecache", "*.py"))}
    assert modules <= names
    assert not [name for name in names if name.startswith(("tests/", "bench/"))]
    for line in ("[paste.filter_factory]", "main = pagecache.paste:filter_factory",
                 "[paste.app_factory]", "demo = pagecache.paste:demo_app_factory",
                 "[console_scripts]", "pagecache = pagecache.cli:main"):
        assert line in entry_points.splitlines()
    assert "Requires-Dist: PasteDeploy" in metadata


APP_MODULE = '''
def app_factory(global_conf, **local_conf):
    calls = []

    def app(environ, start_response):
        calls.append(1)
        body = ("hello #%d" % len(calls)).encode("ascii")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return app
'''

PASTE_INI = '''
[app:hello]
use = call:hello_app:app_factory

[app:demo_app]
use = egg:pagecache#demo
delay = 0

[filter:pagecache]
use = egg:pagecache#main
cached_urls =
    /hello  30  120
    /       10  60

[pipeline:main]
pipeline = pagecache hello

[pipeline:demo]
pipeline = pagecache demo_app
'''

SERVE = '''
import json, os, sys
from wsgiref.util import setup_testing_defaults
from paste.deploy import loadapp
import pagecache

result = {"pagecache": pagecache.__file__}
for name, path in (("main", "/hello"), ("demo", "/news")):
    app = loadapp("config:" + os.path.abspath("paste.ini"), name=name)
    served = []
    for _ in range(2):
        environ = {"PATH_INFO": path}
        setup_testing_defaults(environ)
        answer = {}
        def start_response(status, headers, exc_info=None):
            answer.update(headers, status=status)
        body = b"".join(app(environ, start_response))
        served.append([answer["status"], answer.get("X-Cache"), body.decode()])
    result[name] = served
print(json.dumps(result))
'''


def test_a_fresh_virtualenv_with_only_the_wheel_loads_the_filter(dist, tmp_path):
    venv = str(tmp_path / "venv")
    _run([sys.executable, "-m", "venv", venv])
    python = os.path.join(venv, "bin", "python")
    _run([python, "-m", "pip", "install", "--quiet", dist["wheel"]])
    work = tmp_path / "site"
    work.mkdir()
    (work / "hello_app.py").write_text(textwrap.dedent(APP_MODULE))
    (work / "paste.ini").write_text(PASTE_INI)
    (work / "serve.py").write_text(SERVE)

    result = json.loads(_run([python, "serve.py"], timeout=120, cwd=str(work)).stdout)
    assert result["pagecache"].startswith(venv + os.sep), "pagecache must come from the wheel"
    assert result["main"] == [["200 OK", "MISS", "hello #1"], ["200 OK", "HIT", "hello #1"]]
    (status, label, body), again = result["demo"]
    assert (status, label, "pagecache demo" in body) == ("200 OK", "MISS", True)
    assert again == ["200 OK", "HIT", body]

    script = os.path.join(venv, "bin", "pagecache")
    assert _run([script, "--version"]).stdout.strip() == f"pagecache {pagecache.__version__}"
    check = _run([script, "check", "-c", str(work / "paste.ini")], cwd=str(work))
    assert "[filter:pagecache]: valid, 2 cached_urls rule(s)" in check.stdout
    assert "embedded memory cache" in check.stdout
