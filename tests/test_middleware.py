from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
import typing as t
from collections.abc import Callable, Iterable, Iterator

import flask
import pytest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.test import Client, EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import ProxyMiddleware, Registry, default_registry

from .conftest import Host, Recorder, assert_plain_answer, checked, serve

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

MakeClient = Callable[..., Client]

ANSWER_STATUSES = {400, 404, 413, 500, 503}


def environ_for(path: str, **kwargs: t.Any) -> WSGIEnvironment:
    return EnvironBuilder(path, **kwargs).get_environ()


def start_response_stub(
    status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
) -> t.Any:
    return None


# -- §2 pass-through ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/", id="root"),
        pytest.param("/proxy", id="prefix"),
        pytest.param("/proxy/", id="prefix-slash"),
        pytest.param("/proxy/sessions", id="sessions-no-slash"),
        pytest.param("/proxy/apps", id="apps-no-slash"),
        pytest.param("/proxy/other/a", id="other-under-prefix"),
        pytest.param("/proxyx/sessions/a", id="prefix-lookalike"),
        pytest.param("/PROXY/sessions/a", id="case"),
        pytest.param("//proxy/sessions/a", id="leading-double-slash"),
        pytest.param("/x/proxy/sessions/a", id="not-at-start"),
    ],
)
def test_other_paths_reach_the_host_untouched(registry: Registry, host: Host, path: str) -> None:
    """Every other path goes to the host with the same environ; its iterable comes back as is."""
    registry.listen(Recorder(), session="a")
    middleware = ProxyMiddleware(host, registry)
    environ = environ_for(path)
    before = dict(environ)
    result = middleware(environ, start_response_stub)
    assert host.environs == [environ]
    assert host.environs[0] is environ
    assert result is host.iterables[0]
    assert environ == before


def test_missing_path_info_reaches_the_host(registry: Registry, host: Host) -> None:
    middleware = ProxyMiddleware(host, registry)
    environ = environ_for("/")
    environ["SCRIPT_NAME"] = "/proxy/sessions/a"
    del environ["PATH_INFO"]
    middleware(environ, start_response_stub)
    assert host.environs == [environ]


def test_host_routes_pass_through_checked_stack(
    registry: Registry, make_client: MakeClient
) -> None:
    registry.listen(Recorder(), session="a")
    response = make_client().get("/anything?x=1")
    assert response.get_data() == b"host"


# -- §2 dispatch and the environ copy ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "script_name", "path_info"),
    [
        pytest.param("/proxy/sessions/a", "/proxy/sessions/a", "", id="no-rest"),
        pytest.param("/proxy/sessions/a/", "/proxy/sessions/a", "/", id="slash"),
        pytest.param("/proxy/sessions/a/x/y", "/proxy/sessions/a", "/x/y", id="rest"),
        pytest.param("/proxy/sessions/a//x", "/proxy/sessions/a", "//x", id="double-slash-rest"),
        pytest.param("/proxy/sessions/a/x%2Fy", "/proxy/sessions/a", "/x/y", id="decoded-rest"),
        pytest.param("/proxy/sessions/a/%25", "/proxy/sessions/a", "/%", id="percent-rest"),
        pytest.param(
            "/proxy/apps/s/sessions/a/x", "/proxy/apps/s/sessions/a", "/x", id="app-session"
        ),
        pytest.param("/proxy/apps/s/x", "/proxy/apps/s", "/x", id="app"),
        pytest.param("/proxy/apps/s", "/proxy/apps/s", "", id="app-no-rest"),
    ],
)
def test_listener_gets_script_name_and_path_info(
    registry: Registry,
    make_client: MakeClient,
    path: str,
    script_name: str,
    path_info: str,
) -> None:
    """SCRIPT_NAME gets the routing prefix, PATH_INFO the rest; no trailing-slash redirect."""
    recorder = Recorder()
    registry.listen(recorder, session="a", app="s")
    response = make_client().get(path)
    assert response.status_code == 200
    assert response.get_data() == b"listener"
    (environ,) = recorder.environs
    assert environ["SCRIPT_NAME"] == script_name
    assert environ["PATH_INFO"] == path_info
    assert recorder.closed == 1


def test_environ_is_a_copy_and_the_original_is_untouched(registry: Registry) -> None:
    recorder = Recorder()
    registry.listen(recorder, session="a")
    middleware = ProxyMiddleware(Host(), registry)
    environ = environ_for(
        "/proxy/sessions/a/x",
        method="POST",
        query_string="q=1&r=%2F",
        data=b"payload",
        headers={"X-Custom": "yes", "Cookie": "c=1"},
    )
    environ["SCRIPT_NAME"] = "/host"
    environ["REQUEST_URI"] = environ["RAW_URI"] = "/host/proxy/sessions/a/x?q=1&r=%2F"
    before = dict(environ)
    iterable = middleware(environ, start_response_stub)
    t.cast(t.Any, iterable).close()
    assert environ == before
    (inner,) = recorder.environs
    assert inner is not environ
    assert inner["SCRIPT_NAME"] == "/host/proxy/sessions/a"
    assert inner["PATH_INFO"] == "/x"
    assert (
        inner["SCRIPT_NAME"] + inner["PATH_INFO"] == environ["SCRIPT_NAME"] + environ["PATH_INFO"]
    )
    unchanged = {
        key: value for key, value in inner.items() if key not in ("SCRIPT_NAME", "PATH_INFO")
    }
    assert unchanged == {
        key: value for key, value in environ.items() if key not in ("SCRIPT_NAME", "PATH_INFO")
    }
    assert inner["wsgi.input"] is environ["wsgi.input"]
    assert inner["wsgi.input"].read() == b"payload"


def test_latin1_path_is_sliced_not_decoded(registry: Registry) -> None:
    """A PATH_INFO carrying raw bytes as latin-1 (gunicorn's %FF) is passed as is."""
    recorder = Recorder()
    registry.listen(recorder, session="a")
    middleware = ProxyMiddleware(Host(), registry)
    environ = environ_for("/")
    environ["PATH_INFO"] = "/proxy/sessions/a/\xff\xc3\xa9"
    environ["RAW_URI"] = environ["REQUEST_URI"] = "/proxy/sessions/a/%FF%C3%A9"
    t.cast(t.Any, middleware(environ, start_response_stub)).close()
    assert recorder.environs[0]["PATH_INFO"] == "/\xff\xc3\xa9"


def test_request_handler_sees_path_and_script_root(
    registry: Registry, make_client: MakeClient
) -> None:
    def handler(request: Request) -> dict[str, str]:
        return {"path": request.path, "root": request.root_path, "args": request.args["q"]}

    registry.listen(handler, session="a")
    response = make_client().get("/proxy/sessions/a/export/data?q=1")
    assert response.json == {"path": "/export/data", "root": "/proxy/sessions/a", "args": "1"}


def test_post_body_reaches_the_listener(registry: Registry, make_client: MakeClient) -> None:
    registry.listen(lambda request: request.get_data(), session="a")
    response = make_client().post("/proxy/sessions/a/upload", data=b"x" * 100_000)
    assert response.get_data() == b"x" * 100_000


def test_custom_prefix() -> None:
    registry = Registry(prefix="/kino/proxy")
    registry.listen(lambda request: request.path, session="a")
    client = Client(checked(ProxyMiddleware(Host(), registry)))
    assert client.get("/kino/proxy/sessions/a/x", buffered=True).get_data() == b"/x"
    assert client.get("/proxy/sessions/a/x", buffered=True).get_data() == b"host"


def test_default_registry_is_used_without_one() -> None:
    middleware = ProxyMiddleware(Host())
    assert middleware.registry is default_registry
    listener = default_registry.listen(lambda request: "default", session="mw-default")
    try:
        client = Client(checked(middleware))
        assert client.get("/proxy/sessions/mw-default", buffered=True).get_data() == b"default"
    finally:
        listener.close()


# -- §2 ids, dots, raw URI, check order ------------------------------------------------------


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


# -- §3 answers -------------------------------------------------------------------------------


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


# -- §4 apps through the middleware -----------------------------------------------------------


def test_app_session_route(registry: Registry, make_client: MakeClient) -> None:
    registry.listen(lambda request: "member", session="m", app="sales")
    registry.listen(lambda request: "loner", session="l")
    client = make_client()
    assert client.get("/proxy/apps/sales/sessions/m/x").get_data() == b"member"
    assert client.get("/proxy/sessions/m/x").get_data() == b"member"
    assert client.get("/proxy/apps/sales/sessions/l/x").status_code == 404


def test_generic_app_path_goes_to_the_newest_member(
    registry: Registry, make_client: MakeClient
) -> None:
    client = make_client()
    first = registry.listen(lambda request: "first", session="one", app="sales")
    assert client.get("/proxy/apps/sales/x").get_data() == b"first"
    second = registry.listen(lambda request: "second", session="two", app="sales")
    assert client.get("/proxy/apps/sales/x").get_data() == b"second"
    second.close()
    assert client.get("/proxy/apps/sales/x").get_data() == b"first"
    first.close()
    assert client.get("/proxy/apps/sales/x").status_code == 404


def test_multi_session_app(registry: Registry, make_client: MakeClient) -> None:
    registry.register_app("multi", multi_session=True)
    registry.listen(lambda request: "a", session="a", app="multi")
    registry.listen(lambda request: "b", session="b", app="multi")
    client = make_client()
    assert_plain_answer(client.get("/proxy/apps/multi/x"), 400, "multi")
    assert client.get("/proxy/apps/multi/sessions/a/x").get_data() == b"a"
    assert client.get("/proxy/apps/multi/sessions/b/x").get_data() == b"b"


def test_declared_app_without_sessions_or_starter(
    registry: Registry, make_client: MakeClient
) -> None:
    registry.register_app("idle")
    assert_plain_answer(make_client().get("/proxy/apps/idle/"), 404, "idle")


def test_single_session_app_cannot_serve_its_own_sessions_subpath(
    registry: Registry, make_client: MakeClient
) -> None:
    """The app-session route is tried first, as in Livebook (documented in README)."""
    recorder = Recorder()
    registry.listen(recorder, session="only", app="single")
    client = make_client()
    assert client.get("/proxy/apps/single/sessions/list").status_code == 404
    assert client.get("/proxy/apps/single/sessions").status_code == 200
    assert recorder.environs[0]["PATH_INFO"] == "/sessions"


def test_auto_start_dispatches_to_the_started_session(
    registry: Registry, make_client: MakeClient
) -> None:
    starts: list[int] = []

    def start() -> None:
        starts.append(1)
        registry.listen(lambda request: f"started {request.path}", session="s1", app="auto")

    registry.register_app("auto", start=start, start_timeout=5)
    client = make_client()
    assert client.get("/proxy/apps/auto/hello").get_data() == b"started /hello"
    assert client.get("/proxy/apps/auto/again").get_data() == b"started /again"
    assert starts == [1]


def test_auto_start_failure_gives_503_and_the_next_request_retries(
    registry: Registry, make_client: MakeClient, errors: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def start() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first start fails")
        registry.listen(lambda request: "second try", session="s1", app="flaky")

    registry.register_app("flaky", start=start, start_timeout=5)
    client = make_client()
    assert_plain_answer(client.get("/proxy/apps/flaky/"), 503, "first start fails")
    assert "start of app 'flaky' raised" in errors.text
    assert client.get("/proxy/apps/flaky/").get_data() == b"second try"
    assert attempts == [1, 1]


def test_auto_start_that_registers_nothing_gives_503(
    registry: Registry, make_client: MakeClient, errors: pytest.LogCaptureFixture
) -> None:
    registry.register_app("lazy", start=lambda: None, start_timeout=5)
    assert_plain_answer(make_client().get("/proxy/apps/lazy/"), 503)
    assert "without registering a session" in errors.text


def test_auto_start_timeout_gives_503_and_start_runs_once(
    registry: Registry, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    starts: list[int] = []

    def slow_start() -> None:
        starts.append(1)
        release.wait(10)
        registry.listen(lambda request: "late", session="s1", app="slow")

    registry.register_app("slow", start=slow_start, start_timeout=0.2)
    client = make_client()
    assert_plain_answer(client.get("/proxy/apps/slow/"), 503)
    assert_plain_answer(client.get("/proxy/apps/slow/"), 503)
    assert starts == [1], "a second request joins the running start"
    release.set()
    declaration = registry.get_app("slow")
    assert declaration is not None
    for _ in range(100):
        if registry.current_listener("slow") is not None and not declaration.starting:
            break
        threading.Event().wait(0.05)
    assert client.get("/proxy/apps/slow/").get_data() == b"late"
    assert starts == [1]


def test_auto_start_concurrent_first_requests_start_once(registry: Registry) -> None:
    """Many first requests through the middleware, one start, every request answered."""
    starts: list[int] = []
    gate = threading.Event()

    def start() -> None:
        starts.append(1)
        gate.wait(5)
        registry.listen(lambda request: "up", session="s1", app="busy")

    registry.register_app("busy", start=start, start_timeout=10, max_waiting=20)
    middleware = checked(ProxyMiddleware(Host(), registry))
    bodies: list[bytes] = []

    def request() -> None:
        response = Response.from_app(middleware, environ_for("/proxy/apps/busy/"), buffered=True)
        bodies.append(response.get_data())

    threads = [threading.Thread(target=request) for _ in range(20)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    assert starts == [1]
    assert bodies == [b"up"] * 20


def test_last_request_is_set_on_dispatch(registry: Registry, make_client: MakeClient) -> None:
    listener = registry.listen(lambda request: "x", session="a")
    assert listener.last_request is None
    make_client().get("/proxy/sessions/a/")
    first = listener.last_request
    assert first is not None
    make_client().get("/proxy/sessions/nope/")
    make_client().get("/proxy/sessions/a/")
    assert listener.last_request is not None
    assert listener.last_request >= first


def test_replaced_listener_finishes_running_requests(registry: Registry) -> None:
    """A request already running on the old listener finishes normally after a replace."""
    entered, release = threading.Event(), threading.Event()

    def old(request: Request) -> str:
        entered.set()
        release.wait(5)
        return "old"

    registry.listen(old, session="a")
    middleware = checked(ProxyMiddleware(Host(), registry))
    results: list[bytes] = []
    thread = threading.Thread(
        target=lambda: results.append(
            Response.from_app(middleware, environ_for("/proxy/sessions/a/"), buffered=True).data
        )
    )
    thread.start()
    assert entered.wait(5)
    registry.listen(lambda request: "new", session="a")
    new = Response.from_app(middleware, environ_for("/proxy/sessions/a/"), buffered=True)
    release.set()
    thread.join()
    assert results == [b"old"]
    assert new.data == b"new"


# -- §6 WSGI correctness ------------------------------------------------------------------------


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


# -- §7 options --------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        pytest.param((None,), {}, TypeError, "app must be a WSGI application", id="no-app"),
        pytest.param((Host(), "reg"), {}, TypeError, "registry must be a Registry", id="registry"),
        pytest.param((Host(),), {"max_content_length": -1}, ValueError, "-1", id="negative"),
        pytest.param((Host(),), {"max_content_length": 1.5}, TypeError, "1.5", id="float"),
        pytest.param((Host(),), {"max_content_length": True}, TypeError, "True", id="bool"),
        pytest.param((Host(),), {"forward_cookies": "no"}, TypeError, "'no'", id="cookies"),
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


# -- frameworks ---------------------------------------------------------------------------------


def test_flask_host_and_flask_listener(registry: Registry) -> None:
    host = flask.Flask("host")

    @host.route("/")
    def index() -> str:
        return "host index"

    host.wsgi_app = ProxyMiddleware(host.wsgi_app, registry)  # type: ignore[method-assign]

    listener_app = flask.Flask("listener")

    @listener_app.route("/")
    def listener_index() -> str:
        return flask.url_for("page", name="x")

    @listener_app.route("/page/<name>")
    def page(name: str) -> str:
        return f"page {name}"

    registry.listen(listener_app, session="nb1")
    client = host.test_client()
    assert client.get("/").data == b"host index"
    assert client.get("/proxy/sessions/nb1/").data == b"/proxy/sessions/nb1/page/x"
    assert client.get("/proxy/sessions/nb1/page/y").data == b"page y"
    assert client.get("/proxy/sessions/nb1/missing").status_code == 404


def test_thread_safety_under_churn(registry: Registry) -> None:
    """Writers listen/replace/close while readers dispatch: no error, never the wrong listener."""
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    sessions = [f"s{i}" for i in range(8)]
    middleware = ProxyMiddleware(Host(), registry)
    stop = threading.Event()
    failures: list[str] = []
    counts = {"ok": 0, "missing": 0}

    def handler_for(session: str, generation: int) -> Callable[[Request], str]:
        return lambda request: f"{session}:{generation}"

    def writer(index: int) -> None:
        generation = 0
        try:
            while not stop.is_set():
                for session in sessions[index::2]:
                    generation += 1
                    listener = registry.listen(
                        handler_for(session, generation), session=session, app=f"app{index}"
                    )
                    if generation % 3 == 0:
                        listener.close()
                    elif generation % 5 == 0:
                        registry.close_session(session)
        except Exception as error:
            failures.append(f"writer: {error!r}")

    def reader() -> None:
        try:
            for n in range(400):
                session = sessions[n % len(sessions)]
                app_iter, status, _headers = run_wsgi_app(
                    middleware, environ_for(f"/proxy/sessions/{session}/x"), buffered=True
                )
                body = b"".join(app_iter).decode()
                if status.startswith("200"):
                    counts["ok"] += 1
                    if not body.startswith(f"{session}:"):
                        failures.append(f"{session} answered by {body}")
                elif status.startswith("404"):
                    counts["missing"] += 1
                else:
                    failures.append(f"{session}: {status}")
        except Exception as error:
            failures.append(f"reader: {error!r}")

    writers = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    readers = [threading.Thread(target=reader) for _ in range(4)]
    try:
        for thread in writers + readers:
            thread.start()
        for thread in readers:
            thread.join()
    finally:
        stop.set()
        for thread in writers:
            thread.join()
        sys.setswitchinterval(old_interval)
    assert failures == []
    assert counts["ok"] + counts["missing"] == 1600
    assert counts["ok"] > 0


def test_logging_uses_the_package_logger() -> None:
    assert logging.getLogger("wsgi_proxy_listen").name == "wsgi_proxy_listen"


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


@pytest.fixture
def warnings_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    """Warnings of the package, with the once-per-process warning not yet given."""
    from wsgi_proxy_listen import middleware

    monkeypatch.setattr(middleware, "_warned_in", None)
    caplog.set_level(logging.WARNING, logger="wsgi_proxy_listen")
    return caplog


def test_multiprocess_miss_warns_once_per_process(
    registry: Registry,
    make_client: MakeClient,
    warnings_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under several worker processes a miss explains where run-time listeners live, once."""
    from wsgi_proxy_listen import middleware

    caplog = warnings_log
    client = make_client()
    multiprocess = {"wsgi.multiprocess": True}
    registry.listen(lambda request: "x", session="here")
    assert client.get("/proxy/sessions/here/", environ_overrides=multiprocess).status_code == 200
    assert caplog.records == []
    for path in ["/proxy/sessions/gone/", "/proxy/apps/none/", "/proxy/sessions/other/"]:
        assert client.get(path, environ_overrides=multiprocess).status_code == 404
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "post_fork" in warnings[0].getMessage()
    assert "gone" not in warnings[0].getMessage()
    monkeypatch.setattr(middleware, "_warned_in", -1)  # as after a fork: another pid
    client.get("/proxy/sessions/gone/", environ_overrides=multiprocess)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_single_process_miss_does_not_warn(
    make_client: MakeClient, warnings_log: pytest.LogCaptureFixture
) -> None:
    make_client().get("/proxy/sessions/gone/", environ_overrides={"wsgi.multiprocess": False})
    assert warnings_log.records == []
