"""ProxyMiddleware passes host requests through untouched and dispatches to listeners with
a copy of the environ (SCRIPT_NAME + the routing prefix, PATH_INFO the rest); frameworks as
host and listener; threads and churn; the once-per-process warning of a multi-process
server."""

from __future__ import annotations

import logging
import sys
import threading
import typing as t
from collections.abc import Callable

import flask
import pytest
from werkzeug.test import Client, run_wsgi_app
from werkzeug.wrappers import Request

from wsgi_proxy_listen import ProxyMiddleware, Registry, default_registry

from .support.wsgi import (
    Host,
    MakeClient,
    Recorder,
    checked,
    environ_for,
    start_response_stub,
)

if t.TYPE_CHECKING:
    pass

# -- pass-through -----------------------------------------------------------------------------


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


# -- dispatch and the environ copy ------------------------------------------------------------


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


# -- frameworks -------------------------------------------------------------------------------


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
