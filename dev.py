#!/usr/bin/env python3
"""Set up and run pagecache's development tasks on a fresh machine.

    python3 dev.py serve          # serve development.ini (embedded cache) on http://127.0.0.1:6543
    python3 dev.py test [ARGS]    # the whole test suite against real memcached servers
    python3 dev.py bench [NAMES]  # the benchmarks in bench/
    python3 dev.py conformance    # pagecache through the HTTP cache test suite (needs Node.js)

Each task creates ./.venv and installs what it needs into it (again only when
setup.cfg changes). Tests and benchmarks need the memcached binary, and the
tests Chromium: if one is missing, it is installed with apt-get when that is
possible (root, or sudo), otherwise the task stops and says what to install.
"""

import os
import shutil
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
BIN = os.path.join(VENV, "bin")
PYTHON = os.path.join(BIN, "python")


def say(message):
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def run(*command, **kwargs):
    say(" ".join(command))
    subprocess.run(command, check=True, **kwargs)


def ensure_venv(extras):
    """A virtualenv with pagecache installed in editable mode with ``extras``."""
    if sys.version_info < (3, 9):
        sys.exit("dev.py: pagecache needs Python 3.9 or newer")
    if not os.path.exists(PYTHON):
        say(f"creating {VENV}")
        venv.create(VENV, with_pip=True)
    stamp = os.path.join(VENV, f".installed-{extras.replace(',', '-')}")
    config = max(os.path.getmtime(os.path.join(ROOT, name)) for name in ("setup.cfg", "setup.py"))
    if not os.path.exists(stamp) or os.path.getmtime(stamp) < config:
        run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        run(PYTHON, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[{extras}]")
        with open(stamp, "w"):
            pass


def ensure_program(name, package, required=True, variable=None):
    """The path of ``name``, installing Debian's ``package`` if we can;
    ``variable``: the environment variable that may point at it instead."""
    explicit = os.environ.get(variable) if variable else None
    if explicit:
        if not os.access(explicit, os.X_OK):
            sys.exit(f"dev.py: {variable}={explicit} is not an executable")
        return explicit
    found = shutil.which(name)
    if found:
        return found
    apt = shutil.which("apt-get")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if apt and sudo is not None:
        say(f"{name} is not installed; installing the {package} package")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = sudo + [apt, "install", "-y", "--no-install-recommends", package]
        if subprocess.run(install, env=env).returncode != 0:
            subprocess.run(sudo + [apt, "update"], env=env)
            subprocess.run(install, env=env)
        found = shutil.which(name)
        if found:
            return found
    if required:
        elsewhere = f",\nor point {variable} at the binary" if variable else ""
        sys.exit(f"dev.py: {name} is needed but not installed, and could not be installed here.\n"
                 f"Install it (Debian/Ubuntu: apt-get install {package}; macOS: brew install {package}){elsewhere},\n"
                 f"then run this again.")
    say(f"{name} is not installed; the parts that use it fall back or are left out")
    return None


def ensure_memcached():
    return ensure_program("memcached", "memcached", variable="PAGECACHE_MEMCACHED")


def serve(args):
    ensure_venv("serve")
    os.chdir(ROOT)
    say("serving development.ini on http://127.0.0.1:6543 (Ctrl-C stops)")
    os.execv(os.path.join(BIN, "pserve"), ["pserve", "development.ini", *args])


def ensure_chromium():
    """Debian's chromium, which the browser tests drive (tests/browser.py)."""
    return ensure_program("chromium", "chromium", variable="PAGECACHE_CHROMIUM")


def test(args):
    ensure_venv("test")
    os.environ["PAGECACHE_MEMCACHED"] = ensure_memcached()
    os.environ["PAGECACHE_CHROMIUM"] = ensure_chromium()
    os.chdir(ROOT)
    os.execv(PYTHON, [PYTHON, "-m", "pytest", *args])


def bench(args):
    ensure_venv("test,serve")
    os.environ["PAGECACHE_MEMCACHED"] = ensure_memcached()
    wrk = ensure_program("wrk", "wrk", required=False)
    if wrk:
        os.environ["PAGECACHE_WRK"] = wrk
    os.chdir(ROOT)
    os.execv(PYTHON, [PYTHON, os.path.join("bench", "run.py"), *args])


def conformance(args):
    """The HTTP cache test suite against pagecache (bench/conformance.py); it
    installs the suite with npm into .conformance/ the first time."""
    ensure_venv("test,serve")
    os.chdir(ROOT)
    os.execv(PYTHON, [PYTHON, os.path.join("bench", "conformance.py"), *args])


TASKS = {"serve": serve, "test": test, "bench": bench, "conformance": conformance}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        sys.exit(__doc__)
    TASKS[sys.argv[1]](sys.argv[2:])
