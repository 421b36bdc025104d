"""The recipes of examples/recipes/, each served by its own process on a real server: pages
in headless Chromium, where every request the page makes must stay under the listener's
prefix and answer below 400 with no console error (tests/support/browser.py); pip
installing through pypiserver."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from .support.browser import BrowserContext, browser, served, watched

__all__ = ["browser"]  # the fixture, imported for the tests here

pytestmark = pytest.mark.timeout(180)


@pytest.mark.browser
def test_dash_loads_and_runs_its_callbacks_under_the_prefix(browser: BrowserContext) -> None:
    prefix = "/proxy/sessions/dash/"
    with served("examples.recipes.dash_app") as base, watched(browser, under=prefix) as page:
        page.goto(base + prefix)
        greeting = page.locator("#greeting")
        greeting.filter(has_text="Hello, proxy!").wait_for(timeout=30_000)
        page.fill("#name", "listener")
        greeting.filter(has_text="Hello, listener!").wait_for(timeout=30_000)
        assert page.title() == "Dash through the proxy"


@pytest.mark.browser
def test_the_django_admin_logs_in_with_its_static_files_under_the_prefix(
    browser: BrowserContext,
) -> None:
    prefix = "/proxy/sessions/admin/"
    with served("examples.recipes.django_admin") as base, watched(browser, under=prefix) as page:
        page.goto(base + prefix + "admin/")
        page.wait_for_url(base + prefix + "admin/login/?next=" + prefix + "admin/")
        # whitenoise served the admin's stylesheet: the login box is styled.
        assert page.evaluate("getComputedStyle(document.body).fontFamily") != "Times New Roman"
        styled = page.locator("#header").evaluate("e => getComputedStyle(e).backgroundColor")
        assert styled not in ("rgba(0, 0, 0, 0)", "transparent"), "no stylesheet"
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin-password")
        page.click("input[type=submit]")
        page.wait_for_url(base + prefix + "admin/")
        assert "Site administration" in page.content()
        page.click("a[href$='/admin/auth/user/']")
        page.wait_for_url(base + prefix + "admin/auth/user/")
        assert page.locator("#result_list").is_visible()


@pytest.mark.browser
def test_a_bottle_app_links_posts_and_redirects_under_the_prefix(browser: BrowserContext) -> None:
    prefix = "/proxy/sessions/notes/"
    with served("examples.recipes.bottle_app") as base, watched(browser, under=prefix) as page:
        page.goto(base + prefix)
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == (
            "rgb(255, 250, 240)"
        )
        page.fill("input[name=note]", "through the proxy")
        page.click("button")
        page.wait_for_url(base + prefix)
        assert page.locator("#notes li").all_text_contents() == ["through the proxy"]
        page.click("#about")
        page.wait_for_url(base + prefix + "about")
        assert page.locator("#root").text_content() == "mounted at " + prefix
        page.click("#back")
        page.wait_for_url(base + prefix)


def wheel(folder: Path, name: str, version: str, code: str) -> Path:
    """A pure-Python wheel with one module, written by hand (no build backend needed)."""
    tag = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": code.encode(),
        f"{tag}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ).encode(),
        f"{tag}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = io.StringIO()
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write(f"{path},sha256={digest},{len(data)}\n")
    record.write(f"{tag}.dist-info/RECORD,,\n")
    made = folder / f"{tag}-py3-none-any.whl"
    with zipfile.ZipFile(made, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{tag}.dist-info/RECORD", record.getvalue())
    return made


def test_pip_installs_from_pypiserver_through_the_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packages = tmp_path / "packages"
    packages.mkdir()
    wheel(packages, "hello_proxy", "0.1", "GREETING = 'installed through the proxy'\n")
    monkeypatch.setenv("PYPI_PACKAGES", str(packages))
    target = tmp_path / "target"
    with served("examples.recipes.pypi_index") as base, tempfile.TemporaryDirectory() as cache:
        result = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "install", "--no-deps", "--no-input"),
                *("--disable-pip-version-check", "--cache-dir", cache),
                *("--index-url", f"{base}/proxy/sessions/pypi/simple/"),
                *("--target", str(target), "hello-proxy==0.1"),
            ],
            capture_output=True,
            text=True,
            # Only this index: none of the machine's pip settings (find-links, mirrors).
            env={
                **{
                    name: value for name, value in os.environ.items() if not name.startswith("PIP_")
                },
                "PIP_CONFIG_FILE": os.devnull,
            },
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    # The index through the proxy was the only place pip looked.
    assert f"Looking in indexes: {base}/proxy/sessions/pypi/simple/\n" in result.stdout
    assert "Looking in links" not in result.stdout
    assert "Successfully installed hello-proxy-0.1" in result.stdout
    imported = subprocess.run(
        [sys.executable, "-c", "import hello_proxy; print(hello_proxy.GREETING)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
        check=True,
    )
    assert imported.stdout == "installed through the proxy\n"
