"""The checks of a path under the prefix and their order (dot segments 400, routing segments
and ids 404, the raw URI 404, the lookup, the body limit 413), and the plain answers the
middleware gives itself (wsgi_proxy_listen.answers)."""

from __future__ import annotations

import typing as t

import pytest
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.wsgi import (
    Host,
    MakeClient,
    Recorder,
    assert_plain_answer,
    checked,
    environ_for,
)

if t.TYPE_CHECKING:
    pass

ANSWER_STATUSES = {400, 404, 413, 500, 503}


# -- ids, dots, raw URI, check order ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/proxy/sessions/nope/x", 404, id="unknown-session"),
        pytest.param("/proxy/sessions/A/x", 404, id="case-differs"),
        pytest.param("/proxy/sessions/\uff41/x", 404, id="fullwidth-lookalike"),
        pytest.param("/proxy/sessions/a;x/y", 404, id="params-in-id"),
        pytest.param("/proxy/sessions/", 404, id="empty-id"),
        pytest.param("/proxy/sessions//a", 404, id="empty-segment"),
        pytest.param("/proxy/sessions/a%2Fb/x", 404, id="encoded-slash-after-id"),
        pytest.param("/proxy/sessions/%61/x", 404, id="encoded-id"),
        pytest.param("/proxy%2Fsessions/a/x", 404, id="encoded-slash-in-prefix"),
        pytest.param("/proxy/session%73/a/x", 404, id="encoded-sessions"),
        pytest.param("/proxy/sessions/a%5Cb/x", 404, id="backslash"),
        pytest.param("/proxy/sessions/a%00/x", 404, id="nul"),
        pytest.param("/proxy/sessions/a%0d%0a/x", 404, id="crlf"),
        pytest.param("/proxy/sessions/" + "a" * 10_000, 404, id="10k-id"),
        pytest.param("/proxy/sessions/" + "/" * 10_000, 404, id="10k-slashes"),
        pytest.param("/proxy/sessions/a/../b", 400, id="dotdot"),
        pytest.param("/proxy/sessions/a/./b", 400, id="dot"),
        pytest.param("/proxy/sessions/a/..", 400, id="dotdot-end"),
        pytest.param("/proxy/sessions/a/%2e%2e/b", 400, id="encoded-dotdot"),
        pytest.param("/proxy/sessions/a/%2E/b", 400, id="encoded-dot"),
        pytest.param("/proxy/sessions/bad!/../x", 400, id="dots-before-ids"),
        pytest.param("/proxy/sessions/../a/x", 400, id="dotdot-as-id"),
        pytest.param("/proxy/apps/sales/sessions/other/x", 404, id="not-a-member"),
        pytest.param("/proxy/apps/nope/sessions/a/x", 404, id="wrong-app"),
        pytest.param("/proxy/apps/nope/x", 404, id="unknown-app"),
        pytest.param("/proxy/apps/sales/sessions/", 404, id="app-session-empty"),
        pytest.param("/proxy/apps/sal%65s/x", 404, id="encoded-slug"),
    ],
)
def test_rejected_requests(
    registry: Registry, make_client: MakeClient, host: Host, path: str, status: int
) -> None:
    """Malformed or unknown addresses get the plain answer; no listener or host runs."""
    listener = Recorder()
    registry.listen(listener, session="a")
    registry.listen(listener, session="other")
    member = Recorder()
    registry.listen(member, session="m", app="sales")
    response = make_client().get(path)
    assert_plain_answer(response, status, "sales", "nope", "other", "proxy", "sessions")
    assert listener.environs == []
    assert member.environs == []
    assert host.environs == []


@pytest.mark.parametrize(
    ("raw_uri", "script_name", "status"),
    [
        pytest.param("/proxy/sessions/a/x", "", 200, id="plain"),
        pytest.param("/host/proxy/sessions/a/x", "/host", 200, id="raw-includes-script-name"),
        pytest.param("/proxy/sessions/a/x", "/host", 200, id="raw-excludes-script-name"),
        pytest.param("http://h.example/host/proxy/sessions/a/x?q", "/host", 200, id="absolute"),
        pytest.param("/host/proxy/sessions/a%2Fx", "/host", 404, id="encoded-slash"),
        pytest.param("/host/proxy/sessions/%61/x", "/host", 404, id="encoded-id"),
        pytest.param("http://h/proxy/sessions/a%2F/x", "", 404, id="absolute-encoded"),
        pytest.param("/proxy/sessions/a/%2e%2e/x", "", 400, id="raw-encoded-dots"),
        pytest.param("/somewhere/else", "", 404, id="unrelated-raw-uri"),
    ],
)
def test_raw_uri_as_servers_send_it(
    registry: Registry, host: Host, raw_uri: str, script_name: str, status: int
) -> None:
    """REQUEST_URI/RAW_URI as gunicorn and waitress set them, with and without SCRIPT_NAME."""
    recorder = Recorder()
    registry.listen(recorder, session="a")
    middleware = ProxyMiddleware(host, registry)
    for key in ("REQUEST_URI", "RAW_URI"):
        environ = environ_for("/")
        environ["SCRIPT_NAME"] = script_name
        environ["PATH_INFO"] = "/proxy/sessions/a/x"
        environ.pop("REQUEST_URI")
        environ.pop("RAW_URI")
        environ[key] = raw_uri
        response = Response.from_app(checked(middleware), environ, buffered=True)
        assert response.status_code == status, key
    assert len(recorder.environs) == (2 if status == 200 else 0)
    assert host.environs == []


def test_without_raw_uri_the_decoded_path_decides(registry: Registry) -> None:
    recorder = Recorder()
    registry.listen(recorder, session="a")
    environ = environ_for("/")
    environ["PATH_INFO"] = "/proxy/sessions/a/x"
    del environ["REQUEST_URI"], environ["RAW_URI"]
    response = Response.from_app(checked(ProxyMiddleware(Host(), registry)), environ, buffered=True)
    assert response.status_code == 200


def test_routing_ignores_host_and_forwarded_headers(
    registry: Registry, make_client: MakeClient
) -> None:
    registry.listen(lambda request: "a", session="a")
    response = make_client().get(
        "/proxy/sessions/a/x",
        headers={
            "Host": "evil.example",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Prefix": "/proxy/sessions/b",
            "X-Original-URL": "/proxy/sessions/b/x",
        },
    )
    assert response.get_data() == b"a"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/proxy/sessions/a/../x", 400, id="dots-before-size"),
        pytest.param("/proxy/sessions/nope/x", 404, id="lookup-before-size"),
        pytest.param("/proxy/apps/multi/x", 400, id="multi-session-before-size"),
        pytest.param("/proxy/sessions/a/x", 413, id="size-before-listener"),
    ],
)
def test_check_order_with_an_oversized_body(
    registry: Registry, make_client: MakeClient, path: str, status: int
) -> None:
    """Checks run in order: dots, ids, raw URI, lookup, declared size, then the listener."""
    recorder = Recorder()
    registry.listen(recorder, session="a")
    registry.register_app("multi", multi_session=True)
    response = make_client(max_content_length=10).post(path, data=b"x" * 11)
    assert_plain_answer(response, status)
    assert recorder.environs == []


# -- the plain answers ------------------------------------------------------------------------


def test_every_answer_is_plain_and_echoes_nothing(
    registry: Registry, make_client: MakeClient, errors: pytest.LogCaptureFixture
) -> None:
    registry.register_app("multi", multi_session=True)

    def broken_start() -> None:
        raise RuntimeError("start failed: secret-start")

    registry.register_app("broken", start=broken_start)

    def boom(request: Request) -> str:
        raise RuntimeError("secret-error-detail")

    registry.listen(boom, session="boom")
    registry.listen(lambda request: "ok", session="ok")
    client = make_client(max_content_length=4)
    cases = {
        400: client.get("/proxy/apps/multi/secret-path"),
        404: client.get("/proxy/sessions/secret-id/secret-path"),
        413: client.post("/proxy/sessions/ok/secret-path", data=b"12345"),
        500: client.get("/proxy/sessions/boom/secret-path"),
        503: client.get("/proxy/apps/broken/secret-path"),
    }
    assert set(cases) == ANSWER_STATUSES
    for status, response in cases.items():
        assert_plain_answer(
            response, status, "secret", "multi", "broken", "boom", "RuntimeError", "/proxy"
        )
