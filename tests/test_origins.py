"""An origin of its own for each session and app (ProxyMiddleware(listener_domain=...)):
redirects from the host's origin, what each origin serves, the one-time tokens, the login
cookie of a listener origin, and every wrong setting. The browser side is in
tests/test_browser.py."""

from __future__ import annotations

import logging
import typing as t
from urllib.parse import parse_qs, urlsplit

import pytest
from werkzeug.test import Client

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen import origins as origins_module
from wsgi_proxy_listen.origins import TOKEN_PARAMETER, label

from .support.wsgi import BufferedClient, Host, Login, Recorder, assert_plain_answer, at, checked

# werkzeug's lint asks for an absolute Location and a "Content-Length: 0" on a 204; RFC 9110
# allows a relative Location and forbids Content-Length on a 204.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Absolute URLs required for location header:werkzeug.middleware.lint.HTTPWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:204 responses must have an empty content length"
        ":werkzeug.middleware.lint.HTTPWarning"
    ),
]

HOST = "http://host.test"
DOMAIN = "listeners.test"
BROWSER = {"Accept": "text/html"}


def origin(kind: str, id: str, scheme: str = "http") -> str:
    return f"{scheme}://{label(kind, id)}.{DOMAIN}"


class Setup(t.NamedTuple):
    registry: Registry
    login: Login
    host: Host
    client: Client


@pytest.fixture
def setup() -> Setup:
    registry = Registry()
    login, host = Login(), Host()
    middleware = ProxyMiddleware(
        host,
        registry,
        authenticate=login,
        login_url="/login",
        listener_domain=DOMAIN,
        listener_secret="listener-secret",
        public_url=HOST,
    )
    return Setup(registry, login, host, BufferedClient(checked(middleware)))


def get(client: Client, url: str, user: str = "", **headers: str) -> t.Any:
    return at(client, url, headers={"X-User": user, **headers})


def jarless(setup: Setup) -> Client:
    """A client that sends the Cookie header a test gives (werkzeug's jar replaces it)."""
    return BufferedClient(setup.client.application, use_cookies=False)


def token_in(location: str) -> str:
    return parse_qs(urlsplit(location).query)[TOKEN_PARAMETER][0]


def logged_in(setup: Setup, session: str, user: str, kind: str = "session") -> Client:
    """Follow the host's redirect for ``user`` and take the token on the listener's origin:
    the client then holds the listener origin's login cookie."""
    path = f"/proxy/sessions/{session}/"
    there = get(setup.client, HOST + path, user, **BROWSER).headers["Location"]
    taken = at(setup.client, there)
    assert taken.status_code == 302, taken.status
    return setup.client


# -- the host's origin -------------------------------------------------------------------------


def test_a_navigation_on_the_hosts_origin_goes_to_the_listeners_own(setup: Setup) -> None:
    listener = Recorder()
    setup.registry.listen(listener, session="s")
    answer = get(setup.client, f"{HOST}/proxy/sessions/s/report?year=2026", **BROWSER)
    assert_plain_answer(answer, 302)
    assert (
        answer.headers["Location"] == f"{origin('session', 's')}/proxy/sessions/s/report?year=2026"
    )
    assert listener.environs == []
    assert setup.login.calls == 0  # public: nobody is asked


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        pytest.param("GET", {"Accept": "application/json"}, id="a-fetch"),
        pytest.param("POST", BROWSER, id="a-form-post"),
        pytest.param("GET", {}, id="a-script-without-accept"),
    ],
)
def test_nothing_but_a_navigation_reaches_a_listener_path_on_the_hosts_origin(
    setup: Setup, method: str, headers: dict[str, str]
) -> None:
    listener = Recorder()
    setup.registry.listen(listener, session="s")
    answer = at(setup.client, f"{HOST}/proxy/sessions/s/", method, headers=headers)
    assert_plain_answer(answer, 403)
    assert listener.environs == []


def test_the_hosts_own_routes_stay_on_its_origin(setup: Setup) -> None:
    assert at(setup.client, f"{HOST}/").get_data() == b"host"
    assert at(setup.client, f"{HOST}/proxy/other").get_data() == b"host"
    assert get(setup.client, f"{HOST}/proxy/sessions/none/", **BROWSER).status_code == 404


def test_the_hosts_login_decides_before_the_redirect(setup: Setup) -> None:
    setup.registry.listen(Recorder(), session="s", access={"alice"})
    path = "/proxy/sessions/s/page?x=1"
    nobody = get(setup.client, HOST + path, **BROWSER)
    assert nobody.headers["Location"] == "/login?next=%2Fproxy%2Fsessions%2Fs%2Fpage%3Fx%3D1"
    assert get(setup.client, HOST + path, "b", **BROWSER).status_code == 403
    alice = get(setup.client, HOST + path, "a", **BROWSER).headers["Location"]
    assert alice.startswith(
        f"{origin('session', 's')}/proxy/sessions/s/page?x=1&{TOKEN_PARAMETER}="
    )


# -- a listener's origin -----------------------------------------------------------------------


def test_a_token_becomes_the_listener_origins_own_login_cookie(setup: Setup) -> None:
    listener = Recorder()
    setup.registry.listen(listener, session="s", access={"alice"})
    there = get(setup.client, f"{HOST}/proxy/sessions/s/p?x=1", "a", **BROWSER).headers["Location"]
    taken = at(setup.client, there)
    assert_plain_answer(taken, 302)
    assert taken.headers["Location"] == f"{origin('session', 's')}/proxy/sessions/s/p?x=1"
    cookie = taken.headers["Set-Cookie"]
    assert cookie.startswith("wpl-user=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/" in cookie
    assert "Domain" not in cookie
    assert listener.environs == []
    calls = setup.login.calls
    setup.client.set_cookie("theirs", "1", domain=f"{label('session', 's')}.{DOMAIN}")
    page = at(setup.client, taken.headers["Location"])
    assert page.status_code == 200
    environ = listener.environs[0]
    assert environ["REMOTE_USER"] == "alice"
    assert environ["SCRIPT_NAME"] == "/proxy/sessions/s"
    assert environ["QUERY_STRING"] == "x=1"
    assert "wpl-user" not in environ.get("HTTP_COOKIE", "")
    assert "theirs=1" in environ["HTTP_COOKIE"]
    assert setup.login.calls == calls, "the host's login is never asked on a listener origin"


def test_a_token_is_good_once(setup: Setup) -> None:
    setup.registry.listen(Recorder(), session="s", access="authenticated")
    there = get(setup.client, f"{HOST}/proxy/sessions/s/", "a", **BROWSER).headers["Location"]
    assert at(setup.client, there).status_code == 302
    again = at(setup.client, there)
    assert_plain_answer(again, 403)
    assert "Set-Cookie" not in again.headers


def test_a_token_expires(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.registry.listen(Recorder(), session="s", access="authenticated")
    monkeypatch.setattr(origins_module, "TOKEN_SECONDS", -1)
    there = get(setup.client, f"{HOST}/proxy/sessions/s/", "a", **BROWSER).headers["Location"]
    assert at(setup.client, there).status_code == 403


def test_a_token_for_another_origin_or_forged_is_refused(setup: Setup) -> None:
    setup.registry.listen(Recorder(), session="s", access="authenticated")
    setup.registry.listen(Recorder(), session="t", access="authenticated")
    there = get(setup.client, f"{HOST}/proxy/sessions/s/", "a", **BROWSER).headers["Location"]
    token = token_in(there)
    elsewhere = f"{origin('session', 't')}/proxy/sessions/t/?{TOKEN_PARAMETER}={token}"
    assert at(setup.client, elsewhere).status_code == 403
    body, _, mac = token.partition(".")
    forged = f"{body[:-2]}xx.{mac}"
    forged_url = f"{origin('session', 's')}/proxy/sessions/s/?{TOKEN_PARAMETER}={forged}"
    assert at(setup.client, forged_url).status_code == 403
    other_key = ProxyMiddleware(
        Host(),
        Registry(),
        listener_domain=DOMAIN,
        listener_secret="another-secret",
        public_url=HOST,
        authenticate=Login(),
    )
    minted = get(Client(other_key), f"{HOST}/proxy/sessions/s/", "a", **BROWSER)
    assert minted.status_code == 404  # that host has no such listener: nothing minted
    assert at(setup.client, there).status_code == 302, "the real one still works once"


def test_without_a_login_cookie_a_navigation_goes_back_to_the_host(setup: Setup) -> None:
    setup.registry.listen(Recorder(), session="s", access={"alice"})
    url = f"{origin('session', 's')}/proxy/sessions/s/page?x=1"
    back = at(setup.client, url, headers=BROWSER)
    assert_plain_answer(back, 302)
    assert back.headers["Location"] == f"{HOST}/proxy/sessions/s/page?x=1&wpl-login=1"
    assert_plain_answer(at(setup.client, url), 401)
    # the host, asked to log the browser in, strips what it added on the way back
    again = get(setup.client, back.headers["Location"], "a", **BROWSER).headers["Location"]
    assert again.startswith(f"{url}&{TOKEN_PARAMETER}=")


def test_a_public_app_with_a_member_for_alice_sends_nobody_in_circles(setup: Setup) -> None:
    """The app's generic path is public, its member is for alice: the listener origin sends
    the browser back, and the host then asks for a login instead of redirecting again."""
    setup.registry.register_app("board", access="public")
    setup.registry.listen(Recorder(), session="m", app="board", access={"alice"})
    first = get(setup.client, f"{HOST}/proxy/apps/board/", **BROWSER).headers["Location"]
    assert first == f"{origin('app', 'board')}/proxy/apps/board/"
    back = at(setup.client, first, headers=BROWSER).headers["Location"]
    assert back == f"{HOST}/proxy/apps/board/?wpl-login=1"
    assert get(setup.client, back, **BROWSER).headers["Location"].startswith("/login?next=")


def test_a_listener_origin_serves_its_own_paths_only(setup: Setup) -> None:
    setup.registry.listen(Recorder(), session="s")
    setup.registry.listen(Recorder(), session="t")
    setup.registry.register_app("board", start=lambda: None)
    mine = origin("session", "s")
    assert at(setup.client, f"{mine}/proxy/sessions/s/").status_code == 200
    for path in ["/", "/login", "/proxy/sessions/t/", "/proxy/apps/board/", "/proxy/", "/x"]:
        answer = at(setup.client, mine + path)
        assert_plain_answer(answer, 404)
    for host in [f"nolabel.{DOMAIN}", DOMAIN, f"a.b.{DOMAIN}"]:
        assert at(setup.client, f"http://{host}/proxy/sessions/s/").status_code == 404
    icon = at(setup.client, f"{mine}/favicon.ico")
    assert (icon.status_code, icon.get_data()) == (204, b"")
    assert setup.host.environs == [], "the host app is never reached on a listener domain"


def test_a_login_cookie_is_good_on_its_own_origin_only(setup: Setup) -> None:
    setup.registry.listen(Recorder(), session="s", access="authenticated")
    setup.registry.listen(Recorder(), session="t", access="authenticated")
    client = logged_in(setup, "s", "a")
    assert client._cookies is not None
    cookie = next(c for c in client._cookies.values() if c.key == "wpl-user")
    moved = {"Cookie": f"wpl-user={cookie.value}"}
    raw = jarless(setup)
    assert at(raw, f"{origin('session', 's')}/proxy/sessions/s/", headers=moved).status_code == 200
    assert at(raw, f"{origin('session', 't')}/proxy/sessions/t/", headers=moved).status_code == 401


def test_a_listener_cannot_set_the_login_cookie(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    def setter(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        cookies = [("Set-Cookie", "wpl-user=mine; Path=/"), ("Set-Cookie", "own=1")]
        start_response("200 OK", [("Content-Type", "text/plain"), *cookies])
        return [b"set"]

    caplog.set_level(logging.WARNING, logger="wsgi_proxy_listen")
    setup.registry.listen(setter, session="s")
    answer = at(setup.client, f"{origin('session', 's')}/proxy/sessions/s/")
    assert answer.headers.getlist("Set-Cookie") == ["own=1; Path=/proxy/sessions/s"]
    assert "named as the login cookie of listener origins" in caplog.text


def test_the_public_url_of_a_listener_is_on_its_own_origin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = Registry(listener_domain="Listeners.Example.com")
    assert registry.listener_domain == "listeners.example.com"
    handle = registry.listen(Recorder(), session="s")
    assert handle.url() == "/proxy/sessions/s/"
    assert handle.public_url("/x") == (
        f"https://{label('session', 's')}.listeners.example.com/proxy/sessions/s/x"
    )
    member = registry.listen(Recorder(), session="m", app="board")
    assert member.public_url().startswith(f"https://{label('app', 'board')}.")
    monkeypatch.setenv("WSGI_PROXY_LISTEN_PUBLIC_URL", "http://localhost:8000")
    assert handle.public_url().startswith("http://s")
    assert f'href="{handle.public_url()}"' in handle._repr_html_()
    monkeypatch.setenv("WSGI_PROXY_LISTEN_LISTENER_DOMAIN", "from.environment.test")
    assert Registry().listener_domain == "from.environment.test"
    plain = Registry(listener_domain=None)
    monkeypatch.delenv("WSGI_PROXY_LISTEN_LISTENER_DOMAIN")
    assert Registry().listen(Recorder(), session="s").public_url() == (
        "http://localhost:8000/proxy/sessions/s/"
    )
    assert plain.listener_domain == "from.environment.test"


def test_labels_are_dns_labels_for_every_id() -> None:
    ids = ["a", "A", "x" * 128, "a_b-C", "0"]
    labels = {label("session", id) for id in ids} | {label("app", id) for id in ids}
    assert len(labels) == 2 * len(ids)
    for made in labels:
        assert len(made) == 21
        assert made.isascii()
        assert made == made.lower()
        assert made.replace("-", "").isalnum()


# -- wrong settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        pytest.param(
            {"listener_secret": None}, ValueError, "needs a listener_secret", id="no-secret"
        ),
        pytest.param({"public_url": None}, ValueError, "invalid public_url ''", id="no-public-url"),
        pytest.param(
            {"public_url": "https://host.test/tools"}, ValueError, "invalid public_url", id="a-path"
        ),
        pytest.param(
            {"listener_domain": "localhost"}, ValueError, "invalid listener_domain", id="one-label"
        ),
        pytest.param(
            {"listener_domain": "*.x.test"}, ValueError, "invalid listener_domain", id="a-wildcard"
        ),
        pytest.param({"listener_domain": 5}, TypeError, "listener_domain must be a str", id="int"),
    ],
)
def test_wrong_origin_settings_are_refused(
    options: dict[str, t.Any],
    error: type[Exception],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WSGI_PROXY_LISTEN_LISTENER_SECRET", raising=False)
    monkeypatch.delenv("WSGI_PROXY_LISTEN_PUBLIC_URL", raising=False)
    given = {
        "listener_domain": DOMAIN,
        "listener_secret": "s3",
        "public_url": HOST,
        **options,
    }
    with pytest.raises(error, match=message):
        ProxyMiddleware(Host(), Registry(), **given)


def test_the_middleware_and_the_registry_name_one_domain() -> None:
    registry = Registry(listener_domain="a.test")
    with pytest.raises(ValueError, match="differs from the registry's"):
        ProxyMiddleware(
            Host(), registry, listener_domain="b.test", listener_secret="s", public_url=HOST
        )
    taken = ProxyMiddleware(Host(), registry, listener_secret="s", public_url=HOST)
    assert taken.listener_domain == "a.test"


def test_a_refused_token_is_logged_below_warning(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgi_proxy_listen")
    setup.registry.listen(Recorder(), session="s", access="authenticated")
    caplog.clear()  # the listen event
    at(setup.client, f"{origin('session', 's')}/proxy/sessions/s/?{TOKEN_PARAMETER}=x.y")
    assert [r.levelname for r in caplog.records] == ["INFO"]


def test_on_a_listener_origin_no_remote_user_but_the_cookies_reaches_a_listener() -> None:
    """Even where this process asks no login of its own: a REMOTE_USER that the server or
    a front proxy set never reaches a listener on a listener origin."""
    registry = Registry()
    listener = Recorder()
    registry.listen(listener, session="s")
    middleware = ProxyMiddleware(
        Host(), registry, listener_domain=DOMAIN, listener_secret="s3", public_url=HOST
    )
    forged = {"REMOTE_USER": "admin"}
    at(Client(middleware), f"{origin('session', 's')}/proxy/sessions/s/", environ_overrides=forged)
    assert "REMOTE_USER" not in listener.environs[0]


def test_a_middleware_refused_for_its_settings_leaves_the_registry_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WSGI_PROXY_LISTEN_LISTENER_SECRET", raising=False)
    registry = Registry()
    with pytest.raises(ValueError, match="needs a listener_secret"):
        ProxyMiddleware(Host(), registry, listener_domain=DOMAIN, public_url=HOST)
    assert registry.listener_domain is None
    registry.prefix = "/tools"  # not frozen by a middleware that was never made


def test_a_logged_in_user_reaches_a_member_for_them_through_a_public_app(setup: Setup) -> None:
    """The app's generic path is public and its member is alice's: alice, logged in on the
    listener's origin, is served there (the public app's verdict does not forget her)."""
    setup.registry.register_app("board", access="public")
    listener = Recorder()
    setup.registry.listen(listener, session="m", app="board", access={"alice"})
    board = f"{origin('app', 'board')}/proxy/apps/board/"
    back = at(setup.client, board, headers=BROWSER).headers["Location"]
    there = get(setup.client, back, "a", **BROWSER).headers["Location"]
    clean = at(setup.client, there).headers["Location"]
    assert clean == board
    assert at(setup.client, clean, headers=BROWSER).status_code == 200
    assert listener.environs[0]["REMOTE_USER"] == "alice"


@pytest.mark.parametrize("name", ["a%3Fb", "a%23b", "caf%C3%A9%20x"])
def test_a_path_that_encodes_url_delimiters_keeps_them_encoded(setup: Setup, name: str) -> None:
    """A '?' or '#' sent encoded in the path stays encoded in every redirect: the token
    stays in the query, the listener gets the path that was asked for."""
    listener = Recorder()
    setup.registry.listen(listener, session="s", access="authenticated")
    path = f"/proxy/sessions/s/{name}"
    there = get(setup.client, f"{HOST}{path}?q=1", "a", **BROWSER).headers["Location"]
    assert there.startswith(f"{origin('session', 's')}{path}?q=1&{TOKEN_PARAMETER}=")
    clean = at(setup.client, there).headers["Location"]
    assert clean == f"{origin('session', 's')}{path}?q=1"
    assert at(setup.client, clean).status_code == 200
    assert listener.environs[0]["QUERY_STRING"] == "q=1"
    back = at(setup.client, f"{origin('session', 't')}/proxy/sessions/t/{name}", headers=BROWSER)
    assert back.status_code == 404  # another session's path: not this origin's


@pytest.mark.parametrize("suffix", [".", "..", ":80."])
def test_a_host_name_with_a_trailing_dot_is_the_listener_origin_it_names(
    setup: Setup, suffix: str
) -> None:
    setup.registry.listen(Recorder(), session="s")
    host = f"{label('session', 's')}.{DOMAIN}{suffix}"
    answer = setup.client.get("/", headers=BROWSER, environ_overrides={"HTTP_HOST": host})
    assert answer.status_code == 404
    assert setup.host.environs == [], "the host app is never reached on a listener domain"
    assert setup.login.calls == 0


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param('wpl-user="x.\\351"', id="escaped-non-ascii"),
        pytest.param("wpl-user=x.\xe9", id="latin-1"),
        pytest.param("wpl-user=\xff\xfe.\xff", id="not-utf-8"),
    ],
)
def test_a_login_cookie_that_is_no_text_is_nobody(setup: Setup, cookie: str) -> None:
    setup.registry.listen(Recorder(), session="s", access="authenticated")
    answer = at(
        jarless(setup),
        f"{origin('session', 's')}/proxy/sessions/s/",
        environ_overrides={"HTTP_COOKIE": cookie.encode().decode("unicode_escape")},
    )
    assert_plain_answer(answer, 401)


def test_a_token_that_is_no_text_is_refused(setup: Setup) -> None:
    setup.registry.listen(Recorder(), session="s", access="authenticated")
    answer = at(
        setup.client,
        f"{origin('session', 's')}/proxy/sessions/s/",
        environ_overrides={"QUERY_STRING": f"{TOKEN_PARAMETER}=x.\xe9"},
    )
    assert_plain_answer(answer, 403)


def test_two_login_cookies_are_refused_not_chosen_between(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Over HTTP another listener origin can plant a login cookie for this one (with a
    Domain of the listener domain): with two, the middleware serves neither user."""
    setup.registry.listen(Recorder(), session="s", access="authenticated")
    mine = logged_in(setup, "s", "a")
    bobs = BufferedClient(setup.client.application)
    planted_by_bob = logged_in(Setup(*setup[:3], bobs), "s", "b")
    cookies = []
    for client in (planted_by_bob, mine):
        assert client._cookies is not None
        cookies += [f"{c.key}={c.value}" for c in client._cookies.values() if c.key == "wpl-user"]
    answer = at(
        jarless(setup),
        f"{origin('session', 's')}/proxy/sessions/s/",
        headers={**BROWSER, "Cookie": "; ".join(cookies)},
    )
    assert_plain_answer(answer, 403)
    assert "several login cookies" in caplog.text


def test_listener_origins_take_the_scheme_of_the_public_url() -> None:
    """Behind a proxy that ends TLS without telling the app, the redirects and the login
    cookie still say https: the public URL's scheme is the deployment's."""
    registry = Registry()
    registry.listen(Recorder(), session="s", access="authenticated")
    middleware = ProxyMiddleware(
        Host(),
        registry,
        authenticate=Login(),
        listener_domain=DOMAIN,
        listener_secret="s3",
        public_url="https://host.test",
    )
    client = BufferedClient(middleware)
    there = get(client, "http://host.test/proxy/sessions/s/", "a", **BROWSER).headers["Location"]
    assert there.startswith(origin("session", "s", "https"))
    taken = at(client, there.replace("https://", "http://"))
    assert taken.headers["Set-Cookie"].startswith("__Host-wpl-user=")
    assert "Secure" in taken.headers["Set-Cookie"]
