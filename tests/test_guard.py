"""WSGI correctness of what listeners send (SPEC §6, PEP 3333): the iterable as is, streaming,
the write callable, exc_info, the checked start_response, close() on every path."""

from __future__ import annotations

import contextlib
import io
import sys
import typing as t
from collections.abc import Iterable, Iterator

import pytest
from werkzeug.test import Client, run_wsgi_app
from werkzeug.wrappers import Request

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.wsgi import (
    Host,
    MakeClient,
    Recorder,
    assert_plain_answer,
    checked,
    environ_for,
    serve,
    start_response_stub,
)

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# -- WSGI correctness (PEP 3333) --------------------------------------------------------------


def test_listener_iterable_is_returned_as_is(registry: Registry) -> None:
    returned = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        iterable = iter([b"a", b"b"])
        returned.append(iterable)
        return iterable

    registry.listen(app, session="a")
    result = ProxyMiddleware(Host(), registry)(
        environ_for("/proxy/sessions/a"), start_response_stub
    )
    assert result is returned[0]


def test_streaming_is_not_buffered(registry: Registry) -> None:
    produced: list[int] = []

    def stream(request: Request) -> Iterator[str]:
        for i in range(3):
            produced.append(i)
            yield f"{i}\n"

    registry.listen(stream, session="a")
    app_iter, status, _headers = run_wsgi_app(
        checked(ProxyMiddleware(Host(), registry)), environ_for("/proxy/sessions/a")
    )
    assert status == "200 OK"
    iterator = iter(app_iter)
    assert produced == [0]  # run_wsgi_app pulls the first chunk to see start_response
    assert next(iterator) == b"0\n"
    assert next(iterator) == b"1\n"
    assert produced == [0, 1]
    t.cast(t.Any, app_iter).close()


def test_file_wrapper_passes_through(registry: Registry) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return t.cast(Iterable[bytes], environ["wsgi.file_wrapper"](io.BytesIO(b"file body")))

    registry.listen(app, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert served.status == 200
    assert served.body == b"file body"


def test_write_callable_passes_through(registry: Registry) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]

    registry.listen(app, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert served.body == b"written returned"


def test_exc_info_passes_through(registry: Registry) -> None:
    """A listener may replace its own unsent headers with start_response(..., exc_info)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("listener-internal")
        except ValueError:
            start_response(
                "503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"own error page"]

    registry.listen(app, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert served.status == 503
    assert served.body == b"own error page"


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        pytest.param([("X-A", "a\tb")], [("X-A", "a\tb")], id="tab-allowed"),
        pytest.param([("X-A", "")], [("X-A", "")], id="empty-value"),
        pytest.param([("X-A", "caf\u00e9")], [("X-A", "caf\u00e9")], id="latin1-value"),
        pytest.param([("X~!#$%&'*+.^_`|-A", "1")], [("X~!#$%&'*+.^_`|-A", "1")], id="token-name"),
        pytest.param(
            [
                ("Connection", "close"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("TE", "trailers"),
                ("Trailer", "X-Sum"),
                ("Upgrade", "websocket"),
                ("Proxy-Authenticate", "Basic"),
                ("proxy-connection", "keep-alive"),
                ("X-Kept", "yes"),
            ],
            [("X-Kept", "yes")],
            id="hop-by-hop-dropped",
        ),
    ],
)
def test_headers_kept_and_dropped(
    registry: Registry, headers: list[tuple[str, str]], kept: list[tuple[str, str]]
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), *headers])
        return [b"ok"]

    registry.listen(app, session="a")
    seen: list[list[tuple[str, str]]] = []

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Any:
        seen.append(response_headers)

    ProxyMiddleware(Host(), registry)(environ_for("/proxy/sessions/a"), start_response)
    assert seen == [[("Content-Type", "text/plain"), *kept]]


def test_exception_before_start_response_gives_500(
    registry: Registry, make_client: MakeClient, errors: pytest.LogCaptureFixture
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        raise RuntimeError("SECRET-DETAIL")

    registry.listen(app, session="a")
    response = make_client().get("/proxy/sessions/a")
    assert_plain_answer(response, 500, "SECRET-DETAIL", "RuntimeError")
    (record,) = errors.records
    assert record.name == "wsgi_proxy_listen"
    assert record.exc_info is not None
    assert "SECRET-DETAIL" in errors.text
    assert "listener of session 'a' raised" in record.getMessage()


def test_exception_after_start_response_goes_through_exc_info(
    registry: Registry, errors: pytest.LogCaptureFixture
) -> None:
    """PEP 3333: the middleware passes exc_info, so the unsent 200 is replaced by a 500."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/html"), ("X-Listener", "1")])
        raise RuntimeError("SECRET-DETAIL")

    registry.listen(app, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert served.status == 500
    assert ("Content-Type", "text/plain; charset=utf-8") in served.headers
    assert b"X-Listener" not in served.wire
    assert b"SECRET-DETAIL" not in served.wire
    assert "SECRET-DETAIL" in errors.text


def test_exception_after_headers_were_sent_reaches_the_server(
    registry: Registry, errors: pytest.LogCaptureFixture
) -> None:
    """Once write() sent the headers, exc_info makes the server raise and abort (PEP 3333)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        raise RuntimeError("SECRET-DETAIL")

    registry.listen(app, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert served.status == 200
    assert b"SECRET-DETAIL" not in served.wire
    assert "RuntimeError" in served.errors, "the server logged and aborted the response"


def test_start_response_twice_without_exc_info_gives_500(
    registry: Registry, errors: pytest.LogCaptureFixture
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"SECRET-BODY"]

    registry.listen(app, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert served.status == 500
    assert b"SECRET-BODY" not in served.wire
    assert "second time without exc_info" in errors.text


def test_swallowed_second_start_response_still_gives_500(
    registry: Registry, errors: pytest.LogCaptureFixture
) -> None:
    closed: list[int] = []

    class Body(list[bytes]):
        def close(self) -> None:
            closed.append(1)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        with contextlib.suppress(ValueError):
            start_response("201 Created", [("Content-Type", "text/plain")])
        return Body([b"SECRET-BODY"])

    registry.listen(app, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert served.status == 500
    assert b"SECRET-BODY" not in served.wire
    assert closed == [1]


@pytest.mark.parametrize(
    "returned",
    [
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
        pytest.param(object(), id="object"),
    ],
)
def test_request_handler_returning_a_non_response_gives_500(
    registry: Registry, make_client: MakeClient, returned: object, errors: pytest.LogCaptureFixture
) -> None:
    registry.listen(lambda request: returned, session="a")
    assert_plain_answer(make_client().get("/proxy/sessions/a"), 500)
    assert "is not a response" in errors.text


def test_wsgi_listener_returning_none_gives_500(
    registry: Registry, make_client: MakeClient, errors: pytest.LogCaptureFixture
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> None:
        return None

    registry.listen(app, session="a", kind="wsgi")
    assert_plain_answer(make_client().get("/proxy/sessions/a"), 500)
    assert "returned None" in errors.text


def test_close_runs_once_on_success(registry: Registry, make_client: MakeClient) -> None:
    recorder = Recorder()
    registry.listen(recorder, session="a")
    make_client().get("/proxy/sessions/a")
    assert recorder.closed == 1


def test_host_close_propagates(registry: Registry) -> None:
    closed: list[int] = []

    class Body(list[bytes]):
        def close(self) -> None:
            closed.append(1)

    def host(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body([b"host"])

    client = Client(checked(ProxyMiddleware(host, registry)))
    client.get("/", buffered=True)
    assert closed == [1]


# -- the held start_response ------------------------------------------------------------------


def test_a_start_response_from_inside_the_generator_is_forwarded_then(registry: Registry) -> None:
    def lazy(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("201 Created", [("Content-Type", "text/plain")])
        yield b"made"

    registry.listen(lazy, session="lazy")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/lazy/")
    assert (served.status, served.body) == (201, b"made")


def test_an_invalid_start_response_from_inside_the_generator_raises_there(
    registry: Registry,
) -> None:
    def lazy(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Bad Name", "x")])
        yield b"SECRET-BODY"

    registry.listen(lazy, session="lazy")
    served = serve(ProxyMiddleware(Host(), registry), "/proxy/sessions/lazy/")
    assert served.status == 500  # the server's own answer to an exception before any byte
    assert b"SECRET-BODY" not in served.wire
    assert "InvalidResponse" in served.errors


def test_write_releases_the_held_status(registry: Registry) -> None:
    def writes(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]

    registry.listen(writes, session="w")
    served = serve(ProxyMiddleware(Host(), registry), "/proxy/sessions/w/")
    assert (served.status, served.body) == (200, b"written returned")


def test_a_listener_that_corrects_itself_before_returning_sends_one_status(
    registry: Registry,
) -> None:
    """start_response(200), then start_response(500, exc_info) before returning: the
    server sees the 500 only, never the 200 (it held nothing back before)."""
    calls: list[str] = []

    def corrects(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1")])
        try:
            raise ValueError("found a problem")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"sorry"]

    def recording(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        def spy(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
            calls.append(status)
            return start_response(status, headers, exc_info)

        return ProxyMiddleware(Host(), registry)(environ, spy)

    registry.listen(corrects, session="c")
    served = serve(recording, "/proxy/sessions/c/")
    assert (served.status, served.body) == (500, b"sorry")
    assert calls == ["500 Oops"]
    assert b"Set-Cookie" not in served.wire


def test_an_error_after_write_and_exc_info_is_not_masked(registry: Registry) -> None:
    """Found in review: write(), then start_response(..., exc_info), which the server
    refuses (headers sent): the answer for the failure must pass exc_info too, else the
    server raises 'headers already set' and the listener's own error is lost."""

    def fails_late(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        try:
            raise ValueError("the listener's own error")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"never"]

    registry.listen(fails_late, session="late")
    served = serve(ProxyMiddleware(Host(), registry), "/proxy/sessions/late/")
    assert served.status == 200  # sent before the failure: the server cuts the answer
    assert "the listener's own error" in served.errors
    assert "Headers already set" not in served.errors
