"""Real browsers: headless Chromium, driven by Playwright, against real servers. Every page a
test opens is watched: a console error, a page error, a failed request or an answer of 400 or
more fails the test, whatever it asserts.

Needs Debian's ``chromium`` package (``apt-get install chromium``), which
``.ci/run`` installs. Without it this test is skipped, and the run's summary
says so in capitals.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples import demo
from wsgi_proxy_listen import Registry

from .conftest import running_server
from .wire import free_port, stop, wait_until_listening

ROOT = Path(__file__).resolve().parent.parent

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - playwright is a test dependency
    sync_playwright = None

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
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
            ],
        )
        try:
            yield context  # type: ignore[misc]
        finally:
            context.close()


class Watched:
    """A page that records every console error, page error, failed request and answer of
    400 or more; :meth:`check` fails the test on any."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on(
            "console",
            lambda message: (
                self.problems.append(f"console {message.type}: {message.text}")
                if message.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on(
            "requestfailed",
            lambda request: self.problems.append(f"failed: {request.method} {request.url}"),
        )
        page.on(
            "response",
            lambda response: (
                self.problems.append(f"{response.status}: {response.url}")
                if response.status >= 400
                else None
            ),
        )

    def check(self) -> None:
        assert self.problems == []


@contextlib.contextmanager
def watched(browser: Browser) -> Iterator[Page]:
    page = browser.new_page()
    watcher = Watched(page)
    try:
        yield page
        watcher.check()
    finally:
        page.close()


def test_demo_page_in_chromium(browser: Browser) -> None:
    """Start a session from the index form, open its page: the relative stylesheet
    applies, the relative fetch() renders, the relative link stays under the prefix."""
    app, _ = demo.create_app(Registry())
    with running_server(app) as port, watched(browser) as page:
        base = f"http://127.0.0.1:{port}"
        page.goto(f"{base}/")
        page.fill("input[name=session]", "browser-1")
        page.click("button[value=start]")
        page.wait_for_url(f"{base}/")
        page.click("#listeners a:text('browser-1')")
        page.wait_for_url(f"{base}/proxy/sessions/browser-1/")

        result = page.locator("#result")
        result.filter(has_text="hello from session browser-1").wait_for(timeout=10_000)
        assert result.text_content() == "hello from session browser-1"
        assert result.evaluate("e => getComputedStyle(e).color") == "rgb(0, 128, 0)"
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(240, 248, 255)"

        page.click("#details")
        page.wait_for_url(f"{base}/proxy/sessions/browser-1/details")
        assert page.locator("#title").text_content() == "Details of session browser-1"
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == background

        page.goto(f"{base}/proxy/sessions/browser-1")
        page.wait_for_url(f"{base}/proxy/sessions/browser-1/")
        if os.environ.get("SCREENSHOT"):
            page.screenshot(path=os.environ["SCREENSHOT"])


@contextlib.contextmanager
def browser_host(kind: str) -> Iterator[str]:
    """tests/browser_hosts.py in a process of its own; yields its base URL."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.browser_hosts", kind, str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_listening(process, port, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)


def log_in(page: Page, url: str, user: str) -> None:
    page.goto(url)
    page.fill("input[name=user]", user)
    page.click("button")


def user_on(page: Page, url: str) -> str | None:
    page.goto(url)
    return page.locator("#user").text_content()


def test_a_listener_login_and_the_host_login_live_side_by_side(browser: Browser) -> None:
    """Finding 1, in a browser: the host and a Flask listener both use a cookie called
    ``session`` at Path=/; the listener's is confined to its path, so logging into the
    listener leaves the host's login alone, and each reads its own."""
    with browser_host("shared") as base, watched(browser) as page:
        log_in(page, f"{base}/login", "host-user")
        page.wait_for_url(f"{base}/whoami")
        log_in(page, f"{base}/proxy/sessions/nb/login", "listener-user")
        page.wait_for_url(f"{base}/proxy/sessions/nb/whoami")
        assert page.locator("#user").text_content() == "listener-user"
        assert user_on(page, f"{base}/whoami") == "host-user"
        assert user_on(page, f"{base}/proxy/sessions/nb/whoami") == "listener-user"
        cookies = {(cookie["name"], cookie["path"]) for cookie in page.context.cookies()}
        assert {("session", "/"), ("session", "/proxy/sessions/nb")} <= cookies


def test_listener_cookies_work_with_the_host_session_withheld(browser: Browser) -> None:
    """Finding 2, in a browser: with the host's session cookie withheld (not every cookie,
    as forward_cookies=False did), Trac-like form tokens and the Django admin's CSRF and
    session cookies reach their listeners, and the admin login works."""
    with browser_host("withheld") as base, watched(browser) as page:
        log_in(page, f"{base}/login", "host-user")
        page.goto(f"{base}/proxy/sessions/trac/")
        page.fill("input[name=text]", "hello")
        page.click("button")
        assert page.locator("#saved").text_content() == "saved"

        page.goto(f"{base}/proxy/sessions/dj/admin/")
        page.wait_for_url(f"{base}/proxy/sessions/dj/admin/login/?next=/proxy/sessions/dj/admin/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", "admin-password")
        page.click("input[type=submit]")
        page.wait_for_url(f"{base}/proxy/sessions/dj/admin/")
        assert "Site administration" in t.cast(str, page.text_content("h1"))
        assert page.evaluate("getComputedStyle(document.body).fontFamily") != "", "styled"
        assert user_on(page, f"{base}/whoami") == "host-user"
