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
