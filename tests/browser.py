"""
A real Chromium for the console's browser tests: Debian's C{/usr/bin/chromium} (which
C{.ci/run} installs), driven by Playwright's sync API from a thread of its own (the API
keeps to the thread that started it) while the reactor serves the router under test.

Never skipped: without Chromium or Playwright the tests fail, saying what to install.
When a test fails, L{screenshots_on_failure} saves the page as it was and each console
page under the test's temporary directory.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

CHROMIUM = os.environ.get("LINKROUTER_TEST_CHROMIUM", "/usr/bin/chromium")
#: As the machine's own check runs it: no network of its own, no sandbox (root), no GPU.
CHROMIUM_ARGS = [
    "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
PAGES = ("tokens", "usage", "accounts", "audit")
#: How long an expectation waits for the page (ms).
WAIT_MS = 10_000

T = TypeVar("T")


class Browser:
    """One headless Chromium with one page, for one test."""

    def __init__(self, case: TestCase, base: str) -> None:
        self.base = base
        self.shots = Path(case.mktemp())
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="chromium")
        self._playwright: Any = None
        self._browser: Any = None
        self.page: Any = None

    def run(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run C{work(page, *args)} in the browser's thread."""
        return deferToThreadPool(reactor, self._pool, work, self.page, *args)

    def _launch(self) -> None:
        if not Path(CHROMIUM).exists():
            raise AssertionError(
                f"No Chromium at {CHROMIUM}: the console's browser tests need Debian's "
                "chromium package (apt-get install chromium; .ci/run installs it).")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            raise AssertionError("The browser tests need Playwright: pip install "
                                 "'.[test]'") from None
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = self._browser.new_context(
            viewport={"width": 1280, "height": 900},
            permissions=["clipboard-read", "clipboard-write"])
        context.set_default_timeout(WAIT_MS)
        self.page = context.new_page()

    async def start(self, case: TestCase) -> None:
        self._pool.start()
        case.addCleanup(self._stop)
        await deferToThreadPool(reactor, self._pool, self._launch)

    def _close(self) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._playwright is not None:
            self._playwright.stop()

    async def _stop(self) -> None:
        try:
            await deferToThreadPool(reactor, self._pool, self._close)
        finally:
            self._pool.stop()

    def _screenshots(self) -> list[str]:
        self.shots.mkdir(parents=True, exist_ok=True)
        saved = []
        if self.page is None:
            return saved
        path = self.shots / "failure-current.png"
        self.page.screenshot(path=str(path), full_page=True)
        saved.append(str(path))
        for name in PAGES:
            try:
                self.page.goto(f"{self.base}/console/#{name}")
                self.page.wait_for_load_state("networkidle", timeout=3000)
                path = self.shots / f"failure-{name}.png"
                self.page.screenshot(path=str(path), full_page=True)
                saved.append(str(path))
            except Exception as e:  # a screenshot is a help, not the test
                print(f"screenshot of {name} failed: {e}", file=sys.stderr)
        return saved

    async def screenshots(self) -> list[str]:
        """Save the page as it is and each console page; their paths."""
        return await deferToThreadPool(reactor, self._pool, self._screenshots)


async def open_browser(case: TestCase, base: str) -> Browser:
    """A started Chromium for C{case} (closed by its cleanup), at the router C{base}."""
    browser = Browser(case, base)
    await browser.start(case)
    case.browser = browser  # type: ignore[attr-defined]
    return browser


def screenshots_on_failure(test: Callable[[Any], Awaitable[None]]
                           ) -> Callable[[Any], Awaitable[None]]:
    """On a failure of C{test}, save screenshots of its browser (L{Browser.screenshots})."""

    @functools.wraps(test)
    async def run(case: Any) -> None:
        try:
            await test(case)
        except BaseException:
            browser = getattr(case, "browser", None)
            if browser is not None:
                try:
                    saved = await browser.screenshots()
                    print("screenshots: " + ", ".join(saved), file=sys.stderr)
                except Exception as e:
                    print(f"screenshots failed: {e}", file=sys.stderr)
            raise

    return run


def sign_in(page: Any, base: str, key: str) -> None:
    """Open the console at C{base} and sign in with C{key}; wait for the tokens page."""
    from playwright.sync_api import expect

    page.goto(f"{base}/console/")
    page.fill("#sign-in-key", key)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#nav")).to_be_visible()
    expect(page.locator(".page[data-page=tokens] table.tokens")).to_be_visible()
