"""Headless Chromium for the tests: Debian's ``chromium`` driven by Playwright.

Playwright's wheel carries its own driver, so nothing is downloaded: it starts
the system browser (``PAGECACHE_CHROMIUM``, else ``chromium`` on PATH, else
``/usr/bin/chromium``) with a fresh profile in the test's ``tmp_path`` and
flags for a machine without a network. A missing browser or a missing
``playwright`` package is an error, not a skip: ``python3 dev.py test``
installs both.

Use it from a test module by importing the fixtures::

    from .browser import chromium, open_page, playwright_driver  # noqa: F401  (pytest fixtures)

    def test_something(open_page):
        page = open_page("http://127.0.0.1:8080/")      # a playwright Page, loaded
        expect(page.locator("h1")).to_have_text("...")  # waits, with Playwright's own waiting

``chromium`` also gives :attr:`Chromium.errors`: every uncaught exception of a
page's scripts. A test fails at teardown if any happened (``chromium.errors.clear()``
in a test that expects them).
"""

from __future__ import annotations

import os
import shutil
from typing import Any, List, Optional

import pytest

#: The flags: a headless browser that talks to nobody but the test's servers.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--disable-extensions", "--no-default-browser-check"]

#: How long Playwright's waits (``expect``, clicks) wait, in milliseconds.
TIMEOUT_MS = 15_000


def chromium_binary() -> str:
    explicit = os.environ.get("PAGECACHE_CHROMIUM")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RuntimeError(f"PAGECACHE_CHROMIUM={explicit} is not an executable")
        return explicit
    for path in (shutil.which("chromium"), "/usr/bin/chromium"):
        if path and os.access(path, os.X_OK):
            return path
    raise RuntimeError("Chromium is not installed: run the tests with `python3 dev.py test`, which installs "
                       "Debian's chromium package, or set PAGECACHE_CHROMIUM to a Chromium binary")


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError("the playwright package is missing: `python3 dev.py test` installs the test "
                           "extra (pip install -e .[test])") from None
    return sync_playwright


class Chromium:
    """One headless Chromium with a fresh profile in ``profile``; :meth:`open` loads a URL in a new tab."""

    def __init__(self, playwright: Any, profile: str, **context_options: Any):
        options = {"viewport": {"width": 1280, "height": 900}, "locale": "en-US", **context_options}
        self.context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_binary(), headless=True, args=ARGS, **options)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.errors: List[str] = []
        self.console: List[str] = []

    def new_page(self) -> Any:
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        return page

    def open(self, url: str, page: Optional[Any] = None, **goto: Any) -> Any:
        """A tab (``page``, or a new one) that has loaded ``url``; the response must be a success
        unless ``expect_status`` says otherwise."""
        expected = goto.pop("expect_status", None)
        page = page or self.new_page()
        response = page.goto(url, **goto)
        status = response.status if response is not None else None
        if expected is None:
            assert status is not None and 200 <= status < 400, f"GET {url}: {status}"
        else:
            assert status == expected, f"GET {url}: {status}, expected {expected}"
        return page

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def playwright_driver():
    """Playwright's driver (one per test module that imports these fixtures: only one may run
    at a time, and each module's copy of the fixture is its own); it starts no browser by itself."""
    with _sync_playwright()() as playwright:
        yield playwright


@pytest.fixture
def chromium(playwright_driver, tmp_path):
    """A fresh headless Chromium for this test (its profile in ``tmp_path``)."""
    chromium_binary()
    browser = Chromium(playwright_driver, str(tmp_path / "chromium-profile"))
    try:
        yield browser
    finally:
        browser.close()
    assert not browser.errors, f"uncaught errors in the pages' scripts: {browser.errors}"


@pytest.fixture
def open_page(chromium):
    """``open_page(url) -> page``: a new tab of this test's Chromium that has loaded ``url``."""
    return chromium.open
