"""Headless Chromium for the browser tests (tests/test_browser.py, tests/test_recipes.py):
the browser, pages watched for any problem, and hosts in processes of their own.

Every page a test opens is watched: a console error, a page error, a failed request or an
answer of 400 or more fails the test, whatever it asserts; with ``under=``, so does a
request outside that path.

Needs Debian's ``chromium`` package (``apt-get install chromium``), which ``.ci/run``
installs. Without it these tests are skipped, and the run's summary says so in capitals.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .wire import free_port, stop, wait_until_listening

ROOT = Path(__file__).resolve().parents[2]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

try:
    from playwright.sync_api import BrowserContext, Page, sync_playwright
except ImportError:  # pragma: no cover - playwright is a test dependency
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

__all__ = ["BrowserContext", "Page", "Watched", "browser", "served", "watched"]


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    if not HAVE_PLAYWRIGHT:
        pytest.skip("BROWSER TEST SKIPPED: playwright is not installed (pip install playwright)")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(
            f"BROWSER TEST SKIPPED: no Chromium at {CHROMIUM};"
            " install Debian's chromium package (apt-get install chromium)"
        )
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                # localhost and its subdomains (the listener origins of tests that give
                # each session an origin of its own) are 127.0.0.1, where the servers
                # listen; nothing else is mapped.
                "--host-resolver-rules=MAP localhost 127.0.0.1, MAP *.localhost 127.0.0.1",
            ],
        )
        try:
            yield context
        finally:
            context.close()


class Watched:
    """A page that records every console error, page error, failed request and answer of
    400 or more, each with the URL of the page it happened on, and every URL it requests;
    :meth:`check` fails the test on a problem, or on a request outside ``under``.

    ``expected``: the problems the test provokes on purpose (a 403 it asserts, the CORS
    error of a fetch that must fail), each a piece of text that the problem's line
    contains; each must show up at least once, and no other problem may."""

    def __init__(
        self, page: Page, under: str | None = None, expected: Collection[str] = ()
    ) -> None:
        self.page = page
        self.under = under
        self.expected = dict.fromkeys(expected, 0)
        self.problems: list[str] = []
        self.requested: list[str] = []
        page.on(
            "console",
            lambda message: (
                self.note(f"console {message.type}: {message.text}")
                if message.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda error: self.note(f"page error: {error}"))
        page.on("request", lambda request: self.requested.append(request.url))
        page.on(
            "requestfailed",
            lambda request: self.note(
                f"request failed ({request.failure}): {request.method} {request.url}"
            ),
        )
        page.on(
            "response",
            lambda response: (
                self.note(f"answer {response.status}: {response.request.method} {response.url}")
                if response.status >= 400
                else None
            ),
        )

    def note(self, problem: str) -> None:
        for piece in self.expected:
            if piece in problem:
                self.expected[piece] += 1
                return
        self.problems.append(f"{problem} (on page {self.page.url})")

    def outside(self) -> list[str]:
        """The requested URLs whose path is not under ``under`` (data: URLs aside)."""
        if self.under is None:
            return []
        return [
            url
            for url in self.requested
            if not url.startswith("data:") and not urlsplit(url).path.startswith(self.under)
        ]

    def check(self) -> None:
        problems = "\n  ".join(self.problems)
        assert not self.problems, (
            "expected no console error, page error, failed request or answer of 400 or more;"
            f" the browser saw {len(self.problems)}:\n  {problems}"
        )
        missing = [piece for piece, seen in self.expected.items() if not seen]
        assert not missing, f"expected these problems, which the browser never saw: {missing}"
        outside = "\n  ".join(self.outside())
        assert not outside, f"expected every request under {self.under}; outside:\n  {outside}"


@contextlib.contextmanager
def watched(
    browser: BrowserContext, under: str | None = None, expected: Collection[str] = ()
) -> Iterator[Page]:
    """A new page, checked as :class:`Watched` says when the block ends."""
    page = browser.new_page()
    watcher = Watched(page, under, expected)
    try:
        yield page
        watcher.check()
    finally:
        page.close()


@contextlib.contextmanager
def served(module: str, *arguments: str, **environment: str) -> Iterator[str]:
    """``python -m module *arguments PORT`` in a process of its own (``environment`` added
    to its variables), until it listens on 127.0.0.1:PORT; yields its base URL."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *arguments, str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **environment},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_listening(process, port, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)
