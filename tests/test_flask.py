"""The Flask extension (wsgi_proxy_listen.flask), with real Flask apps."""

from __future__ import annotations

import typing as t

import flask
import pytest

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.flask import ProxyListen, ProxyState


def make_app(name: str = "host") -> flask.Flask:
    app = flask.Flask(name)

    @app.route("/")
    def index() -> str:
        return f"{name} index"

    return app


def test_init_app_wraps_wsgi_app_and_test_client_uses_it(registry: Registry) -> None:
    app = make_app()
    original = app.wsgi_app
    extension = ProxyListen(app, registry=registry)
    state = app.extensions["wsgi_proxy_listen"]
    assert isinstance(state, ProxyState)
    assert state.registry is registry
    assert isinstance(app.wsgi_app, ProxyMiddleware)
    assert state.middleware is app.wsgi_app
    assert app.wsgi_app.app == original
    registry.listen(lambda request: f"listener {request.path}", session="a")
    client = app.test_client()
    assert client.get("/").data == b"host index"
    assert client.get("/proxy/sessions/a/x").data == b"listener /x"
    assert client.get("/proxy/sessions/b/x").status_code == 404
    assert not any(value is app for value in vars(extension).values())


def test_app_factory_and_several_apps(registry: Registry) -> None:
    """One extension instance, several apps, each with its own middleware and config."""
    extension = ProxyListen(registry=registry)
    first, second = make_app("first"), make_app("second")
    second.config["WSGI_PROXY_LISTEN"] = {"FORWARD_COOKIES": False, "MAX_CONTENT_LENGTH": 3}
    extension.init_app(first)
    extension.init_app(second)
    registry.listen(lambda request: request.headers.get("Cookie", "none"), session="a")
    for app, cookie, limited in [(first, b"c=1", 200), (second, b"none", 413)]:
        client = app.test_client()
        client.set_cookie("c", "1")
        assert client.get("/").data == f"{app.name} index".encode()
        assert client.get("/proxy/sessions/a/").data == cookie
        assert client.post("/proxy/sessions/a/", data=b"four").status_code == limited


def test_second_init_app_raises(registry: Registry) -> None:
    app = make_app()
    extension = ProxyListen(app, registry=registry)
    with pytest.raises(RuntimeError, match="import and use that instance instead"):
        extension.init_app(app)
    with pytest.raises(RuntimeError, match="already registered on the app 'host'"):
        ProxyListen(app, registry=registry)
    assert isinstance(app.wsgi_app, ProxyMiddleware)
    assert not isinstance(app.wsgi_app.app, ProxyMiddleware), "wrapped once only"


def test_prefix_from_config() -> None:
    registry = Registry()
    app = make_app()
    app.config["WSGI_PROXY_LISTEN"] = {"PREFIX": "/kino"}
    ProxyListen(app, registry=registry)
    assert registry.prefix == "/kino"
    registry.listen(lambda request: "kino", session="a")
    client = app.test_client()
    assert client.get("/kino/sessions/a/").data == b"kino"
    assert client.get("/proxy/sessions/a/").status_code == 404


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"PREFIXX": "/p"}, "unknown key\\(s\\) \\['PREFIXX'\\]", id="unknown-key"),
        pytest.param(["PREFIX"], "must be a dict", id="not-a-dict"),
        pytest.param({"PREFIX": "p/"}, "invalid prefix 'p/'", id="bad-prefix"),
        pytest.param({"MAX_CONTENT_LENGTH": -5}, "invalid max_content_length -5", id="bad-limit"),
        pytest.param({"FORWARD_COOKIES": "no"}, "forward_cookies must be", id="bad-cookies"),
    ],
)
def test_bad_config_raises_value_error(config: object, message: str) -> None:
    app = make_app()
    app.config["WSGI_PROXY_LISTEN"] = config
    with pytest.raises(ValueError, match=message) as info:
        ProxyListen(app, registry=Registry())
    assert 'app.config["WSGI_PROXY_LISTEN"]' in str(info.value)
    assert "wsgi_proxy_listen" not in app.extensions
    assert not isinstance(app.wsgi_app, ProxyMiddleware)


def test_prefix_cannot_change_once_a_middleware_uses_the_registry() -> None:
    registry = Registry()
    ProxyListen(make_app("first"), registry=registry)
    second = make_app("second")
    second.config["WSGI_PROXY_LISTEN"] = {"PREFIX": "/other"}
    with pytest.raises(ValueError, match="cannot change the prefix"):
        ProxyListen(second, registry=registry)
    assert registry.prefix == "/proxy"


def test_same_prefix_in_config_is_fine_after_use() -> None:
    registry = Registry()
    ProxyListen(make_app("first"), registry=registry)
    second = make_app("second")
    second.config["WSGI_PROXY_LISTEN"] = {"PREFIX": "/proxy"}
    ProxyListen(second, registry=registry)
    assert isinstance(second.wsgi_app, ProxyMiddleware)


def test_registry_must_be_a_registry() -> None:
    with pytest.raises(TypeError, match="registry must be a Registry"):
        ProxyListen(registry=t.cast(t.Any, "default"))


def test_default_registry_when_none_given() -> None:
    from wsgi_proxy_listen import default_registry

    assert ProxyListen().registry is default_registry
    assert repr(ProxyListen()) == f"<ProxyListen registry={default_registry!r}>"


def login_app(login_view: str | None = "login") -> flask.Flask:
    """A host with Flask-Login: ``/login?user=NAME`` logs NAME in."""
    import flask_login

    app = make_app()
    app.secret_key = "test-secret"
    manager = flask_login.LoginManager(app)
    manager.login_view = login_view
    torn_down: list[str] = []
    app.extensions["torn_down"] = torn_down

    class User(flask_login.UserMixin):  # type: ignore[misc]  # Flask-Login ships no types
        def __init__(self, name: str) -> None:
            self.id = name

    manager.user_loader(User)

    @app.get("/login")
    def login() -> str:
        flask_login.login_user(User(flask.request.args["user"]))
        return "in"

    app.before_request(lambda: torn_down.append("before_request"))
    app.teardown_request(lambda error: torn_down.append("torn down"))
    return app


def test_flask_login_is_the_hosts_login_by_itself(registry: Registry) -> None:
    app = login_app()
    ProxyListen(app, registry=registry)
    registry.listen(lambda request: f"hi {request.remote_user}", session="s", access={"alice"})
    client = app.test_client()
    refused = client.get("/proxy/sessions/s/x?y=1", headers={"Accept": "text/html"})
    assert refused.status_code == 302
    assert refused.headers["Location"] == "/login?next=%2Fproxy%2Fsessions%2Fs%2Fx%3Fy%3D1"
    assert client.get("/proxy/sessions/s/").status_code == 401
    client.get("/login?user=bob")
    assert client.get("/proxy/sessions/s/").status_code == 403
    client.get("/login?user=alice")
    torn_down = app.extensions["torn_down"]
    torn_down.clear()
    assert client.get("/proxy/sessions/s/").data == b"hi alice"
    assert torn_down == ["torn down"], "no hook ran; the context pushed to read the user was popped"


def test_flask_login_without_a_login_view_answers_401(registry: Registry) -> None:
    app = login_app(login_view=None)
    ProxyListen(app, registry=registry)
    registry.listen(lambda request: "hi", session="s", access="authenticated")
    answer = app.test_client().get("/proxy/sessions/s/", headers={"Accept": "text/html"})
    assert answer.status_code == 401


def test_authenticate_false_turns_the_login_off(registry: Registry) -> None:
    app = login_app()
    app.config["WSGI_PROXY_LISTEN"] = {"AUTHENTICATE": False, "LOGIN_URL": "/elsewhere"}
    ProxyListen(app, registry=registry)
    registry.listen(lambda request: "hi", session="s", access="authenticated")
    client = app.test_client()
    client.get("/login?user=alice")
    assert client.get("/proxy/sessions/s/").status_code == 401
    answer = client.get("/proxy/sessions/s/", headers={"Accept": "text/html"})
    assert answer.headers["Location"] == "/elsewhere?next=%2Fproxy%2Fsessions%2Fs%2F"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"AUTHENTICATE": 5}, "authenticate must be", id="authenticate"),
        pytest.param({"DEFAULT_ACCESS": "all"}, "invalid DEFAULT_ACCESS 'all'", id="access"),
        pytest.param({"LOGIN_URL": "in"}, "invalid login_url 'in'", id="login-url"),
        pytest.param({"SANDBOX": 1}, "SANDBOX must be True or False", id="sandbox"),
        pytest.param(
            {"LISTENER_DOMAIN": "x.test"}, "needs a listener_secret", id="domain-without-secret"
        ),
        pytest.param(
            {"LISTENER_DOMAIN": "x.test", "LISTENER_SECRET": "s"},
            "invalid public_url",
            id="domain-without-public-url",
        ),
    ],
)
def test_bad_login_config_raises_value_error(config: object, message: str) -> None:
    app = make_app()
    app.config["WSGI_PROXY_LISTEN"] = config
    with pytest.raises(ValueError, match=message):
        ProxyListen(app, registry=Registry())


def test_listener_origins_from_config(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSGI_PROXY_LISTEN_PUBLIC_URL", raising=False)
    app = make_app()
    app.config["WSGI_PROXY_LISTEN"] = {
        "LISTENER_DOMAIN": "Listeners.Example.com",
        "LISTENER_SECRET": "listener-secret",
        "PUBLIC_URL": "https://notebooks.example.com",
    }
    ProxyListen(app, registry=registry)
    assert registry.listener_domain == "listeners.example.com"
    handle = registry.listen(lambda request: "hi", session="s")
    answer = app.test_client().get(
        "/proxy/sessions/s/",
        headers={"Accept": "text/html"},
        base_url="https://notebooks.example.com",
    )
    assert answer.headers["Location"] == handle.public_url()
