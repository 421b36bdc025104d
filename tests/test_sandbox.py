"""Sandboxed listeners: their answers carry the sandbox's Content-Security-Policy, on
their own say, their app's or the middleware's, for listeners of this process and of
others; nothing else changes."""

from __future__ import annotations

import typing as t

import pytest
from werkzeug.wrappers import Response

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.terms import SANDBOX_POLICY

from .support.wsgi import BufferedClient, Host, checked


def page(request: t.Any) -> Response:
    return Response("<p>page</p>", content_type="text/html")


def policies(client: BufferedClient, path: str) -> list[str]:
    response = client.get(path)
    assert response.status_code == 200, path
    return response.headers.getlist("Content-Security-Policy")


def client_for(registry: Registry, **options: t.Any) -> BufferedClient:
    return BufferedClient(checked(ProxyMiddleware(Host(), registry, **options)))


@pytest.mark.parametrize(
    ("listener", "app", "middleware", "sandboxed"),
    [
        pytest.param(None, None, False, False, id="nobody-says"),
        pytest.param(True, None, False, True, id="the-listener"),
        pytest.param(None, True, False, True, id="its-app"),
        pytest.param(None, None, True, True, id="the-middleware"),
        pytest.param(False, True, True, False, id="the-listener-says-no"),
        pytest.param(None, False, True, False, id="the-app-says-no"),
    ],
)
def test_who_decides_whether_a_listener_is_sandboxed(
    registry: Registry, listener: bool | None, app: bool | None, middleware: bool, sandboxed: bool
) -> None:
    registry.register_app("board", sandbox=app)
    registry.listen(page, session="s", app="board", sandbox=listener)
    client = client_for(registry, sandbox=middleware)
    expected = [SANDBOX_POLICY] if sandboxed else []
    for path in ["/proxy/sessions/s/", "/proxy/apps/board/", "/proxy/apps/board/sessions/s/"]:
        assert policies(client, path) == expected, path


def test_the_sandbox_narrows_the_listeners_own_policy(registry: Registry) -> None:
    def strict(request: t.Any) -> Response:
        response = page(request)
        response.headers["Content-Security-Policy"] = "default-src 'self'"
        return response

    registry.listen(strict, session="s", sandbox=True)
    assert policies(client_for(registry), "/proxy/sessions/s/") == [
        "default-src 'self'",
        SANDBOX_POLICY,
    ]


def test_the_middlewares_own_answers_and_the_host_are_left_alone(registry: Registry) -> None:
    registry.listen(page, session="s", sandbox=True)
    client = client_for(registry, sandbox=True)
    assert "Content-Security-Policy" not in client.get("/proxy/sessions/nope/").headers
    assert "Content-Security-Policy" not in client.get("/").headers
    assert "Content-Security-Policy" not in client.get("/proxy/sessions/s/..").headers


def test_an_error_of_a_sandboxed_listener_is_the_plain_500(registry: Registry) -> None:
    def broken(request: t.Any) -> Response:
        raise RuntimeError("boom")

    registry.listen(broken, session="s", sandbox=True)
    response = client_for(registry).get("/proxy/sessions/s/")
    assert response.status_code == 500
    assert b"boom" not in response.get_data()


def test_the_sandbox_is_shown_on_the_handle_and_the_app(registry: Registry) -> None:
    assert registry.listen(page, session="s", sandbox=True).sandbox is True
    assert registry.listen(page, session="t").sandbox is None
    app = registry.register_app("board", sandbox=False)
    assert "sandbox=False" in repr(app)
    assert ProxyMiddleware(Host(), registry, sandbox=True).sandbox is True


@pytest.mark.parametrize("value", ["yes", 1, 0, [True]])
def test_a_sandbox_that_is_no_bool_is_refused(registry: Registry, value: object) -> None:
    with pytest.raises(TypeError, match="sandbox must be True, False or None"):
        registry.listen(page, session="s", sandbox=value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sandbox must be True, False or None"):
        registry.register_app("board", sandbox=value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sandbox must be True or False"):
        ProxyMiddleware(Host(), registry, sandbox=value)  # type: ignore[arg-type]
    assert registry.get("s") is None
