"""Who may reach a listener: the host's login in front of listeners (public, authenticated,
named users), the answers for those who may not (302 to the login page, 401, 403, 500), the
REMOTE_USER a listener gets, apps that strangers cannot start, and every wrong value."""

from __future__ import annotations

import logging
import typing as t
from urllib.parse import parse_qs, urlsplit

import pytest
from werkzeug.test import Client

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.wsgi import (
    USERS,
    BufferedClient,
    Host,
    Login,
    Recorder,
    assert_plain_answer,
    checked,
)

# werkzeug's lint still asks for the absolute Location of RFC 2616; RFC 9110 allows a
# relative one, which is what Flask and Django send too.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Absolute URLs required for location header:werkzeug.middleware.lint.HTTPWarning"
)

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def user_is(login: str) -> dict[str, str]:
    return {"X-User": login}


@pytest.fixture
def login() -> Login:
    return Login()


def gated(registry: Registry, login: t.Any, **options: t.Any) -> Client:
    return BufferedClient(checked(ProxyMiddleware(Host(), registry, authenticate=login, **options)))


# -- the three accesses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("access", "nobody", "alice", "bob"),
    [
        pytest.param("public", 200, 200, 200, id="public"),
        pytest.param(None, 200, 200, 200, id="undeclared-is-public"),
        pytest.param("authenticated", 401, 200, 200, id="authenticated"),
        pytest.param({"alice"}, 401, 200, 403, id="alice-only"),
        pytest.param(["alice", "bob"], 401, 200, 200, id="a-list-of-users"),
    ],
)
def test_who_may_reach_a_listener(
    registry: Registry, login: Login, access: t.Any, nobody: int, alice: int, bob: int
) -> None:
    listener = Recorder()
    registry.listen(listener, session="s", access=access)
    client = gated(registry, login)
    for who, status in (("", nobody), ("a", alice), ("b", bob)):
        response = client.get("/proxy/sessions/s/x", headers=user_is(who))
        assert response.status_code == status, who
        if status != 200:
            assert_plain_answer(response, status, "alice", "bob")
            assert "WWW-Authenticate" not in response.headers
    assert len(listener.environs) == [nobody, alice, bob].count(200)


def test_a_public_listener_never_asks_who_is_calling(registry: Registry, login: Login) -> None:
    registry.listen(Recorder(), session="s")
    registry.listen(Recorder(), session="p", access="public")
    client = gated(registry, login)
    assert client.get("/proxy/sessions/s/", headers=user_is("a")).status_code == 200
    assert client.get("/proxy/sessions/p/", headers=user_is("a")).status_code == 200
    assert login.calls == 0


def test_default_access_covers_the_listeners_that_declare_none(
    registry: Registry, login: Login
) -> None:
    registry.listen(Recorder(), session="undeclared")
    registry.listen(Recorder(), session="open", access="public")
    client = gated(registry, login, default_access="authenticated")
    assert client.get("/proxy/sessions/undeclared/").status_code == 401
    assert client.get("/proxy/sessions/undeclared/", headers=user_is("b")).status_code == 200
    assert client.get("/proxy/sessions/open/").status_code == 200
    only_bob = gated(registry, login, default_access=["bob"])
    assert only_bob.get("/proxy/sessions/undeclared/", headers=user_is("a")).status_code == 403


def test_without_authenticate_nobody_is_logged_in(registry: Registry) -> None:
    """A host that says nothing of its login: listeners that need a user are closed."""
    registry.listen(Recorder(), session="s", access="authenticated")
    registry.listen(Recorder(), session="p")
    client = BufferedClient(checked(ProxyMiddleware(Host(), registry, login_url="/login")))
    response = client.get("/proxy/sessions/s/", headers=BROWSER)
    assert response.status_code == 302
    assert client.get("/proxy/sessions/p/").status_code == 200


def test_a_host_route_never_asks_who_is_calling(registry: Registry, login: Login) -> None:
    client = gated(registry, login, default_access="authenticated")
    assert client.get("/proxy/other").status_code == 200
    assert client.get("/").status_code == 200
    assert login.calls == 0


# -- the login page ----------------------------------------------------------------------------


def location(response: t.Any) -> tuple[str, str]:
    where = urlsplit(response.headers["Location"])
    return where.path, parse_qs(where.query)["next"][0]


def test_a_browser_that_is_not_logged_in_goes_to_the_login_page_and_back(
    registry: Registry, login: Login
) -> None:
    registry.listen(Recorder(), session="s", access="authenticated")
    client = gated(registry, login, login_url="/login")
    response = client.get("/proxy/sessions/s/report?year=2026&q=a%20b", headers=BROWSER)
    assert_plain_answer(response, 302)
    assert location(response) == ("/login", "/proxy/sessions/s/report?year=2026&q=a%20b")
    head = client.head("/proxy/sessions/s/", headers=BROWSER)
    assert head.status_code == 302
    mounted = client.get("/proxy/sessions/s/", headers=BROWSER, base_url="http://x/tools/")
    assert location(mounted) == ("/login", "/tools/proxy/sessions/s/")


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        pytest.param("GET", {"Accept": "application/json"}, id="a-script"),
        pytest.param("GET", {}, id="no-accept"),
        pytest.param("POST", BROWSER, id="a-form-post"),
        pytest.param("DELETE", BROWSER, id="a-delete"),
    ],
)
def test_what_is_not_a_navigation_gets_401(
    registry: Registry, login: Login, method: str, headers: dict[str, str]
) -> None:
    """A redirect would answer a script's fetch with a login page it cannot use, and a
    POST sent on to the login page would lose its body."""
    registry.listen(Recorder(), session="s", access="authenticated")
    response = gated(registry, login, login_url="/login").open(
        "/proxy/sessions/s/", method=method, headers=headers
    )
    assert_plain_answer(response, 401)
    assert "Location" not in response.headers


def test_a_logged_in_user_who_may_not_come_in_is_not_sent_to_log_in(
    registry: Registry, login: Login
) -> None:
    registry.listen(Recorder(), session="s", access={"alice"})
    response = gated(registry, login, login_url="/login").get(
        "/proxy/sessions/s/", headers={**BROWSER, **user_is("b")}
    )
    assert_plain_answer(response, 403)
    assert "Location" not in response.headers


@pytest.mark.parametrize(
    "script_name",
    [
        pytest.param("//evil.example", id="two-slashes"),
        pytest.param("/\\evil.example", id="a-backslash"),
        pytest.param("/\\\\evil.example", id="two-backslashes"),
    ],
)
def test_next_never_leads_to_another_origin(
    registry: Registry, login: Login, script_name: str
) -> None:
    """A SCRIPT_NAME that a front proxy took from a header: ``next`` stays a path of
    this origin whatever it says."""
    registry.listen(Recorder(), session="s", access="authenticated")
    client = gated(registry, login, login_url="/login")
    response = client.get(
        "/proxy/sessions/s/", headers=BROWSER, environ_overrides={"SCRIPT_NAME": script_name}
    )
    there = location(response)[1]
    assert there.startswith("/")
    assert not there.startswith(("//", "/\\"))
    assert urlsplit(there).netloc == ""
    assert there.endswith("evil.example/proxy/sessions/s/")


def test_a_login_url_with_a_query_or_built_per_request(registry: Registry, login: Login) -> None:
    registry.listen(Recorder(), session="s", access="authenticated")
    response = gated(registry, login, login_url="https://sso.example/in?app=hub").get(
        "/proxy/sessions/s/", headers=BROWSER
    )
    assert response.headers["Location"] == (
        "https://sso.example/in?app=hub&next=%2Fproxy%2Fsessions%2Fs%2F"
    )
    built = gated(registry, login, login_url=lambda environ: "/" + environ["SERVER_NAME"])
    assert location(built.get("/proxy/sessions/s/", headers=BROWSER))[0] == "/localhost"


def test_non_ascii_paths_are_sent_as_a_url(registry: Registry, login: Login) -> None:
    registry.listen(Recorder(), session="s", access="authenticated")
    response = gated(registry, login, login_url="/login").get(
        "/proxy/sessions/s/caf%C3%A9", headers=BROWSER
    )
    assert location(response)[1] == "/proxy/sessions/s/caf%C3%A9"
    response.headers["Location"].encode("ascii")


# -- a login that fails ------------------------------------------------------------------------


def raises(environ: t.Any) -> str:
    raise RuntimeError("the session store is down: password=hunter2")


@pytest.mark.parametrize(
    ("authenticate", "logged"),
    [
        pytest.param(raises, "authenticate raised", id="raises"),
        pytest.param(lambda environ: 42, "authenticate returned 'int'", id="an-int"),
        pytest.param(lambda environ: "", "authenticate returned 'str'", id="an-empty-id"),
        pytest.param(lambda environ: b"alice", "authenticate returned 'bytes'", id="bytes"),
    ],
)
def test_a_login_that_fails_is_a_logged_500_and_the_listener_never_runs(
    registry: Registry, errors: pytest.LogCaptureFixture, authenticate: t.Any, logged: str
) -> None:
    listener = Recorder()
    registry.listen(listener, session="s", access="authenticated")
    response = gated(registry, authenticate).get("/proxy/sessions/s/")
    assert_plain_answer(response, 500, "hunter2", "RuntimeError")
    assert listener.environs == []
    assert [record.getMessage().split(",")[0].split(":")[0] for record in errors.records] == [
        logged
    ]


def test_a_login_url_that_fails_is_a_logged_500(
    registry: Registry, login: Login, errors: pytest.LogCaptureFixture
) -> None:
    registry.listen(Recorder(), session="s", access="authenticated")
    response = gated(registry, login, login_url=raises).get("/proxy/sessions/s/", headers=BROWSER)
    assert_plain_answer(response, 500, "hunter2")
    assert "login_url raised" in errors.text
    returns_bytes = gated(registry, login, login_url=lambda environ: b"/login")
    assert returns_bytes.get("/proxy/sessions/s/", headers=BROWSER).status_code == 500
    assert "login_url returned 'bytes'" in errors.text


# -- REMOTE_USER -------------------------------------------------------------------------------


def test_the_user_who_got_in_is_remote_user_and_no_other_reaches_a_listener(
    registry: Registry, login: Login
) -> None:
    """With a login, REMOTE_USER is the middleware's word: one that the server or a front
    proxy set (perhaps from a header a client sent) never reaches a listener."""
    protected, public = Recorder(), Recorder()
    registry.listen(protected, session="s", access="authenticated")
    registry.listen(public, session="p")
    client = gated(registry, login)
    forged = {"REMOTE_USER": "admin"}
    client.get("/proxy/sessions/s/", headers=user_is("a"), environ_overrides=forged)
    client.get("/proxy/sessions/p/", headers=user_is("a"), environ_overrides=forged)
    client.get("/proxy/sessions/p/", environ_overrides=forged)
    assert protected.environs[0]["REMOTE_USER"] == "alice"
    assert ["REMOTE_USER" in environ for environ in public.environs] == [False, False]


def test_without_a_login_the_servers_remote_user_passes_as_before(registry: Registry) -> None:
    listener = Recorder()
    registry.listen(listener, session="s")
    client = BufferedClient(checked(ProxyMiddleware(Host(), registry)))
    client.get("/proxy/sessions/s/", environ_overrides={"REMOTE_USER": "from-the-server"})
    assert listener.environs[0]["REMOTE_USER"] == "from-the-server"


def test_a_function_handler_sees_the_user(registry: Registry, login: Login) -> None:
    registry.listen(lambda request: f"hello {request.remote_user}", session="s", access={"bob"})
    response = gated(registry, login).get("/proxy/sessions/s/", headers=user_is("b"))
    assert response.get_data() == b"hello bob"


# -- apps --------------------------------------------------------------------------------------


def test_strangers_cannot_start_an_app(registry: Registry, login: Login) -> None:
    starts: list[str] = []

    def start() -> None:
        starts.append("started")
        registry.listen(Recorder(b"board"), session="board-1", app="board")

    registry.register_app("board", start=start, access={"alice"})
    client = gated(registry, login, login_url="/login")
    assert client.get("/proxy/apps/board/").status_code == 401
    assert client.get("/proxy/apps/board/", headers=user_is("b")).status_code == 403
    assert starts == []
    assert client.get("/proxy/apps/board/", headers=user_is("a")).get_data() == b"board"
    assert starts == ["started"]
    # the member has its app's access on every path to it
    for path in ["/proxy/apps/board/", "/proxy/apps/board/sessions/board-1/"]:
        assert client.get(path, headers=user_is("b")).status_code == 403, path
    assert client.get("/proxy/sessions/board-1/", headers=user_is("b")).status_code == 403


def test_a_member_with_an_access_of_its_own_keeps_it(registry: Registry, login: Login) -> None:
    registry.register_app("board", access="authenticated")
    registry.listen(Recorder(), session="mine", app="board", access={"alice"})
    client = gated(registry, login)
    assert client.get("/proxy/apps/board/sessions/mine/", headers=user_is("b")).status_code == 403
    assert client.get("/proxy/apps/board/sessions/mine/", headers=user_is("a")).status_code == 200
    assert login.calls == 2  # once a request, though two accesses were checked


def test_an_app_declared_public_lets_anyone_start_it(registry: Registry, login: Login) -> None:
    registry.register_app(
        "open",
        start=lambda: registry.listen(Recorder(), session="o-1", app="open"),
        access="public",
    )
    client = gated(registry, login, default_access="authenticated")
    assert client.get("/proxy/apps/open/").status_code == 200
    assert login.calls == 0


def test_the_access_is_part_of_what_the_registry_shows(registry: Registry) -> None:
    declared = registry.register_app("board", access=["bob", "alice"])
    assert declared.access == frozenset({"alice", "bob"})
    assert "access=" in repr(declared)
    assert "access=" not in repr(registry.register_app("other"))
    handle = registry.listen(Recorder(), session="s", access="authenticated")
    assert handle.access == "authenticated"


# -- wrong values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("access", "error", "message"),
    [
        pytest.param("everyone", ValueError, "use 'public', 'authenticated'", id="another-word"),
        pytest.param("alice", ValueError, r"such as \{'alice'\}", id="one-user-as-a-str"),
        pytest.param(set(), ValueError, "lets nobody in", id="empty"),
        pytest.param([1], TypeError, "non-empty strings", id="not-a-str"),
        pytest.param([""], TypeError, "non-empty strings", id="an-empty-id"),
        pytest.param(b"alice", TypeError, "a collection of user ids", id="bytes"),
        pytest.param({"alice": 1}, TypeError, "a collection of user ids", id="a-mapping"),
        pytest.param(5, TypeError, "a collection of user ids", id="an-int"),
    ],
)
def test_a_wrong_access_is_refused_where_it_is_given(
    registry: Registry, access: t.Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        registry.listen(Recorder(), session="s", access=access)
    with pytest.raises(error, match=message):
        registry.register_app("board", access=access)
    with pytest.raises(error, match=message.replace("access", "default_access")):
        ProxyMiddleware(Host(), registry, default_access=access)
    assert registry.get("s") is None
    assert registry.apps.get("board") is None


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        pytest.param({"authenticate": 5}, TypeError, "authenticate must be", id="not-callable"),
        pytest.param(
            {"authenticate": "no_such_module.user"}, ValueError, "cannot be imported", id="path"
        ),
        pytest.param({"login_url": "login"}, ValueError, "invalid login_url", id="relative"),
        pytest.param({"login_url": "//evil.example/"}, ValueError, "invalid login_url", id="//"),
        pytest.param({"login_url": "javascript:x"}, ValueError, "invalid login_url", id="js"),
        pytest.param({"login_url": 5}, TypeError, "login_url must be", id="an-int"),
        pytest.param({"default_access": None}, TypeError, "default_access must", id="none"),
    ],
)
def test_wrong_middleware_options_are_refused(
    registry: Registry, options: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ProxyMiddleware(Host(), registry, **options)


def current_user(environ: t.Any) -> str | None:
    return USERS.get(environ.get("HTTP_X_USER", ""))


def test_authenticate_may_be_a_dotted_path(registry: Registry) -> None:
    registry.listen(Recorder(), session="s", access="authenticated")
    middleware = ProxyMiddleware(Host(), registry, authenticate=f"{__name__}.current_user")
    assert middleware.authenticate is current_user
    client = BufferedClient(checked(middleware))
    assert client.get("/proxy/sessions/s/", headers=user_is("a")).status_code == 200


def test_the_options_are_readable(registry: Registry, login: Login) -> None:
    middleware = ProxyMiddleware(
        Host(), registry, authenticate=login, default_access=["bob"], login_url="/in"
    )
    assert (middleware.authenticate, middleware.default_access, middleware.login_url) == (
        login,
        frozenset({"bob"}),
        "/in",
    )


def test_a_refusal_is_logged_at_no_level_above_info(
    registry: Registry, login: Login, caplog: pytest.LogCaptureFixture
) -> None:
    """Strangers knocking are no error of the host's: nothing at WARNING or above."""
    caplog.set_level(logging.DEBUG, logger="wsgi_proxy_listen")
    registry.listen(Recorder(), session="s", access={"alice"})
    client = gated(registry, login)
    client.get("/proxy/sessions/s/")
    client.get("/proxy/sessions/s/", headers=user_is("b"))
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
