"""The options of ProxyMiddleware (docs/guides/middleware.md): the body limit (413),
forwarded cookies, wrong options, repr."""

from __future__ import annotations

import io
import typing as t
from collections.abc import Iterable

import pytest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.test import Client
from werkzeug.wrappers import Response

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.wsgi import (
    Host,
    MakeClient,
    Recorder,
    assert_plain_answer,
    checked,
    environ_for,
    start_response_stub,
)

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# -- options ----------------------------------------------------------------------------------


def test_declared_length_above_the_limit_gives_413(
    registry: Registry, make_client: MakeClient
) -> None:
    recorder = Recorder()
    registry.listen(recorder, session="a")
    client = make_client(max_content_length=10)
    assert_plain_answer(client.post("/proxy/sessions/a", data=b"x" * 11), 413)
    assert recorder.environs == []
    assert client.post("/proxy/sessions/a", data=b"x" * 10).status_code == 200
    assert client.post("/", data=b"x" * 11).get_data() == b"host", "host requests are not limited"


def chunked_environ(path: str, body: bytes) -> WSGIEnvironment:
    environ = environ_for(path, method="POST", input_stream=io.BytesIO(body))
    environ.pop("CONTENT_LENGTH", None)
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input_terminated"] = True
    return environ


@pytest.mark.parametrize(
    ("size", "status", "body"),
    [
        pytest.param(10, 200, b"10", id="at-limit"),
        pytest.param(11, 413, None, id="over-limit"),
    ],
)
def test_chunked_body_read_past_the_limit_gives_413(
    registry: Registry, size: int, status: int, body: bytes | None
) -> None:
    registry.listen(lambda request: str(len(request.get_data())), session="a")
    middleware = checked(ProxyMiddleware(Host(), registry, max_content_length=10))
    response = Response.from_app(
        middleware, chunked_environ("/proxy/sessions/a", b"x" * size), buffered=True
    )
    if body is None:
        assert_plain_answer(response, status)
    else:
        assert (response.status_code, response.data) == (status, body)


def test_wsgi_listener_reading_past_the_limit_gives_413(registry: Registry) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        while environ["wsgi.input"].read(4):
            pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read all"]

    registry.listen(app, session="a")
    middleware = checked(ProxyMiddleware(Host(), registry, max_content_length=10))
    response = Response.from_app(
        middleware, chunked_environ("/proxy/sessions/a", b"x" * 50), buffered=True
    )
    assert_plain_answer(response, 413)


def test_without_a_limit_the_stream_is_untouched(registry: Registry) -> None:
    streams: list[object] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        streams.append(environ["wsgi.input"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    registry.listen(app, session="a")
    environ = chunked_environ("/proxy/sessions/a", b"x" * 50)
    ProxyMiddleware(Host(), registry)(environ, start_response_stub)
    assert streams == [environ["wsgi.input"]]


def test_forward_cookies(registry: Registry, make_client: MakeClient, host: Host) -> None:
    recorder = Recorder()
    registry.listen(recorder, session="a")

    def with_cookie(**options: t.Any) -> Client:
        client = make_client(**options)
        client.set_cookie("session", "host-secret")
        return client

    with_cookie().get("/proxy/sessions/a")
    assert recorder.environs[0]["HTTP_COOKIE"] == "session=host-secret"
    with_cookie(forward_cookies=False).get("/proxy/sessions/a")
    assert "HTTP_COOKIE" not in recorder.environs[1]
    with_cookie(forward_cookies=False).get("/")
    assert host.environs[0]["HTTP_COOKIE"] == "session=host-secret"


def test_cookie_names_given_as_an_iterator_are_kept(registry: Registry) -> None:
    names = iter(["session", "csrf"])
    middleware = ProxyMiddleware(Host(), registry, forward_cookies=names)
    assert middleware.forward_cookies == frozenset({"session", "csrf"})
    assert ProxyMiddleware(Host(), registry, forward_cookies=False).forward_cookies is False


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        pytest.param((None,), {}, TypeError, "app must be a WSGI application", id="no-app"),
        pytest.param((Host(), "reg"), {}, TypeError, "registry must be a Registry", id="registry"),
        pytest.param((Host(),), {"max_content_length": -1}, ValueError, "-1", id="negative"),
        pytest.param((Host(),), {"max_content_length": 1.5}, TypeError, "1.5", id="float"),
        pytest.param((Host(),), {"max_content_length": True}, TypeError, "True", id="bool"),
        pytest.param((Host(),), {"forward_cookies": "no"}, TypeError, "'no'", id="cookies"),
        pytest.param(
            (Host(),),
            {"forward_cookies": {"session": False}},
            TypeError,
            "not {'session': False}",
            id="cookies-as-a-dict",
        ),
        pytest.param(
            (Host(),),
            {"forward_cookies": [["session"]]},
            ValueError,
            "each a non-empty str",
            id="cookie-names-in-a-list",
        ),
    ],
)
def test_middleware_rejects_wrong_options(
    args: tuple[t.Any, ...], kwargs: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ProxyMiddleware(*args, **kwargs)


def test_repr(registry: Registry) -> None:
    assert "registry=<Registry prefix='/proxy' listeners=0>" in repr(
        ProxyMiddleware(Host(), registry)
    )


def test_request_entity_too_large_from_a_wsgi_listener(
    registry: Registry, make_client: MakeClient
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        raise RequestEntityTooLarge()

    registry.listen(app, session="a")
    assert_plain_answer(make_client().get("/proxy/sessions/a"), 413)


def test_chunked_transfer_encoding_wins_over_a_content_length(registry: Registry) -> None:
    """With Transfer-Encoding: chunked the declared length means nothing: the read is limited."""
    registry.listen(lambda request: str(len(request.get_data())), session="a")
    environ = chunked_environ("/proxy/sessions/a", b"x" * 50)
    environ["CONTENT_LENGTH"] = "5"
    middleware = checked(ProxyMiddleware(Host(), registry, max_content_length=10))
    assert_plain_answer(Response.from_app(middleware, environ, buffered=True), 413)
