"""Real browsers: headless Chromium, driven by Playwright, against real servers. Every page a
test opens is watched (tests/support/browser.py): a console error, a page error, a failed
request or an answer of 400 or more fails the test, whatever it asserts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import typing as t
from urllib.parse import parse_qs, urlsplit

import pytest

from examples import demo
from wsgi_proxy_listen import Registry
from wsgi_proxy_listen.origins import label

from .support.browser import BrowserContext, Page, browser, served, watched
from .support.wsgi import running_server

__all__ = ["browser"]  # the fixture, imported for the tests here

pytestmark = pytest.mark.browser


def test_demo_page_in_chromium(browser: BrowserContext) -> None:
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


def browser_host(kind: str) -> t.ContextManager[str]:
    """tests/support/browser_hosts.py in a process of its own; yields its base URL."""
    return served("tests.support.browser_hosts", kind)


def log_in(page: Page, url: str, user: str) -> None:
    """Log in through the form at ``url``, and wait for the page the login leads to: a
    test that goes on at once would abort the login's POST (slow under load) and test
    without the login."""
    page.goto(url)
    page.fill("input[name=user]", user)
    with page.expect_navigation():
        page.click("button")


def user_on(page: Page, url: str) -> str | None:
    page.goto(url)
    return page.locator("#user").text_content()


def test_a_listener_login_and_the_host_login_live_side_by_side(browser: BrowserContext) -> None:
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


def test_a_listener_cookie_named_as_the_withheld_host_cookie_reaches_it(
    browser: BrowserContext,
) -> None:
    """The host withholds its ``session`` cookie, and a Flask listener's cookie has the same
    name (as Flask-Admin's has): the browser sends the listener's first (its path is
    longer), only the host's is withheld, and both logins hold."""
    with browser_host("withheld") as base, watched(browser) as page:
        log_in(page, f"{base}/login", "host-user")
        log_in(page, f"{base}/proxy/sessions/nb/login", "listener-user")
        assert user_on(page, f"{base}/proxy/sessions/nb/whoami") == "listener-user"
        assert user_on(page, f"{base}/whoami") == "host-user"
        jar = {cookie["path"]: cookie["value"] for cookie in page.context.cookies()}
        page.goto(f"{base}/proxy/sessions/nb/cookies")
        seen = t.cast(str, page.locator("#cookie").text_content())
        assert seen == f"session={jar['/proxy/sessions/nb']}", "the host's login was sent"


def test_listener_cookies_work_with_the_host_session_withheld(browser: BrowserContext) -> None:
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


@pytest.mark.parametrize(
    ("kind", "login_path"), [("flask", "/login"), ("django", "/accounts/login/")]
)
def test_the_hosts_login_stands_in_front_of_its_listeners(
    browser: BrowserContext, kind: str, login_path: str
) -> None:
    """A Flask-Login host and a Django auth host, found by the integrations without a line
    of configuration: a listener for alice sends a browser that is not logged in to the
    host's login page and back to where it was going; it shows alice as REMOTE_USER; bob,
    logged in, gets 403; a public listener asks nobody."""
    with served("tests.support.login_hosts", kind) as base:
        browser.clear_cookies()
        alices = f"{base}/proxy/sessions/alices/report?year=2026"
        expected = [f"answer 403: GET {alices}", "the server responded with a status of 403"]
        with watched(browser, expected=expected) as page:
            assert user_on(page, f"{base}/proxy/sessions/open/") == "nobody"
            page.goto(alices)
            assert urlsplit(page.url).path == login_path
            assert parse_qs(urlsplit(page.url).query)["next"] == [
                "/proxy/sessions/alices/report?year=2026"
            ]
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", "alice-password")
            with page.expect_navigation(url=alices):
                page.click("button")
            assert page.locator("#user").text_content() == "alice"
            assert page.locator("#path").text_content() == "/report?year=2026"
            assert user_on(page, f"{base}/proxy/sessions/members/") == "alice"
            assert user_on(page, f"{base}/proxy/sessions/open/") == "nobody"

            browser.clear_cookies()
            page.goto(f"{base}{login_path}")
            page.fill("input[name=username]", "bob")
            page.fill("input[name=password]", "bob-password")
            with page.expect_navigation():
                page.click("button")
            assert user_on(page, f"{base}/proxy/sessions/members/") == "bob"
            answer = page.goto(alices)
            assert answer is not None
            assert answer.status == 403
            assert t.cast(str, page.text_content("body")).startswith("403 ")


def pried(page: Page, url: str) -> dict[str, str]:
    """What the prying page of tests/support/origin_hosts.py got."""
    page.goto(url)
    out = page.locator("#out")
    out.filter(has_text="account").wait_for(timeout=10_000)
    return t.cast(dict[str, str], json.loads(t.cast(str, out.text_content())))


def host_login(page: Page) -> dict[str, str]:
    return {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}


def test_a_listener_page_on_the_hosts_origin_acts_as_the_hosts_user(
    browser: BrowserContext,
) -> None:
    """What the docs say a listener's page can do on the host's origin, shown: it reads
    the user's account, CSRF token included, and tosses a cookie that the browser then
    sends to the host's /account before the host's own."""
    with served("tests.support.origin_hosts", "same") as base, watched(browser) as page:
        browser.clear_cookies()
        page.goto(f"{base}/login?user=alice")
        got = pried(page, f"{base}/proxy/sessions/prying/")
        assert got["account"] == "account of alice, csrf=csrf-of-alice"
        assert got["read"] == ""  # the host's cookie is HttpOnly: that much holds
        assert got["wrote"] == "done"
        tossed = [c for c in page.context.cookies() if c["value"] == "tossed"]
        assert [(c["name"], c["path"]) for c in tossed] == [("host_session", "/account")]
        page.goto(f"{base}/account")
        assert page.text_content("body") == "nobody", "the tossed cookie shadows the login"


def test_a_sandboxed_listener_page_cannot_act_as_the_hosts_user(browser: BrowserContext) -> None:
    """sandbox=True: the page's origin is opaque; its script cannot read the host's
    account, nor read or write cookies, and the host's login is unchanged."""
    expected = ["blocked by CORS policy", "net::ERR_FAILED"]
    with (
        served("tests.support.origin_hosts", "same") as base,
        watched(browser, expected=expected) as page,
    ):
        browser.clear_cookies()
        page.goto(f"{base}/login?user=alice")
        before = host_login(page)
        got = pried(page, f"{base}/proxy/sessions/boxed/")
        assert got == {
            "read": "threw SecurityError",
            "wrote": "threw SecurityError",
            "account": "failed TypeError",
        }
        assert host_login(page) == before
        page.goto(f"{base}/account")
        assert page.text_content("body") == "account of alice, csrf=csrf-of-alice"


class Origins(t.NamedTuple):
    host: str
    port: int

    def of(self, session: str) -> str:
        return f"http://{label('session', session)}.listeners.localhost:{self.port}"


@contextlib.contextmanager
def origins_host(**environment: str) -> t.Iterator[Origins]:
    with served("tests.support.origin_hosts", "origins", **environment) as base:
        port = t.cast(int, urlsplit(base).port)
        yield Origins(f"http://localhost:{port}", port)


def test_each_session_has_an_origin_of_its_own(browser: BrowserContext) -> None:
    """A user not logged in follows a link to alice's listener on the host's page: the
    host's login page, then the listener's own origin, its page rendered. Its script
    cannot read the host's /account nor another session's page (CORS), sees no cookie,
    and its server no host cookie; the token it came with is good once; a listener that
    sets a cookie named as the host's login changes nothing of the host's."""
    with origins_host() as site:
        browser.clear_cookies()
        prying = site.of("prying")
        tokens: list[str] = []
        expected = [
            "blocked by CORS policy",
            "net::ERR_FAILED",
            f"answer 403: GET {prying}",
            "the server responded with a status of 403",
        ]
        with watched(browser, expected=expected) as page:
            page.on("request", lambda r: tokens.append(r.url) if "wpl-token=" in r.url else None)
            page.goto(f"{site.host}/links")
            page.click("#prying")
            page.wait_for_url(re.compile(r".*/login\?next=.*"))
            page.fill("input[name=user]", "alice")
            landing = f"{prying}/proxy/sessions/prying/?target={site.host}/account"
            with page.expect_navigation(url=landing):
                page.click("button")
            assert page.locator("#user").text_content() == "alice"
            assert page.locator("#cookies").text_content() == ""

            out = page.locator("#out")
            out.filter(has_text="account").wait_for(timeout=10_000)
            got = json.loads(t.cast(str, out.text_content()))
            assert got == {"read": "", "account": "failed TypeError", "wrote": "done"}
            other = f"{site.of('other')}/proxy/sessions/other/"
            got = pried(page, f"{prying}/proxy/sessions/prying/?target={other}")
            assert got["account"] == "failed TypeError"

            assert len(tokens) == 1
            assert page.goto(tokens[0]).status == 403  # type: ignore[union-attr]

            page.goto(f"{site.host}/proxy/sessions/tosser/")
            assert page.url == f"{site.of('tosser')}/proxy/sessions/tosser/"
            page.goto(f"{site.host}/account")
            assert page.text_content("body") == "account of alice, csrf=csrf-of-alice"
            host_cookies = [c for c in page.context.cookies() if c["domain"] == "localhost"]
            assert [c["name"] for c in host_cookies] == ["host_session"]
            assert all(c["value"] != "tossed-by-a-listener" for c in host_cookies)


def test_a_token_that_waited_too_long_is_refused(browser: BrowserContext) -> None:
    with origins_host(TEST_TOKEN_SECONDS="1") as site:
        browser.clear_cookies()
        prying = site.of("prying")
        expected = [f"answer 403: GET {prying}", "the server responded with a status of 403"]
        with watched(browser, expected=expected) as page:
            page.goto(f"{site.host}/login?user=alice")
            answer = page.request.get(
                f"{site.host}/proxy/sessions/prying/",
                headers={"Accept": "text/html"},
                max_redirects=0,
            )
            token_url = answer.headers["location"]
            assert "wpl-token=" in token_url
            time.sleep(1.5)
            assert page.goto(token_url).status == 403  # type: ignore[union-attr]


def test_the_django_admin_recipe_on_an_origin_of_its_own(browser: BrowserContext) -> None:
    with origins_host() as site:
        browser.clear_cookies()
        admin = site.of("dj")
        with watched(browser) as page:
            page.goto(f"{site.host}/links")
            page.click("#dj")
            page.wait_for_url(
                f"{admin}/proxy/sessions/dj/admin/login/?next=/proxy/sessions/dj/admin/"
            )
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", "admin-password")
            page.click("input[type=submit]")
            page.wait_for_url(f"{admin}/proxy/sessions/dj/admin/")
            assert "Site administration" in t.cast(str, page.text_content("h1"))
            assert page.evaluate("getComputedStyle(document.body).fontFamily") != "", "styled"
