"""The demo in a real browser: headless Chromium, driven by Playwright, against a real server.

Needs Debian's ``chromium`` package (``apt-get install chromium``), which
``.ci/run`` installs. Without it this test is skipped, and the run's summary
says so in capitals.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from examples import demo
from wsgi_proxy_listen import Registry

from .conftest import running_server

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

try:
    from playwright.sync_api import Browser, sync_playwright
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


def test_demo_page_in_chromium(browser: Browser) -> None:
    """Start a session from the index form, open its page: the relative stylesheet
    applies, the relative fetch() renders, the relative link stays under the prefix."""
    app, _ = demo.create_app(Registry())
    with running_server(app) as port:
        base = f"http://127.0.0.1:{port}"
        page = browser.new_page()
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
        page.close()
