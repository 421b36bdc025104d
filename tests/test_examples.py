"""Each example in examples/ runs and answers as its docstring says."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.exceptions import NotFound

from examples import (
    app_autostart,
    auth,
    data_export,
    demo,
    flask_host,
    flask_listener,
    router,
    webob_handler,
)
from wsgi_proxy_listen import ProxyMiddleware, Registry, default_registry

from .support.wire import free_port, get, wait_until_listening
from .support.wsgi import BufferedClient, checked

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_default_registry() -> Iterator[None]:
    """The examples use the module-level functions: leave default_registry as found."""
    assert len(default_registry) == 0
    yield
    for listener in default_registry:
        listener.close()
    if default_registry.get_app("dashboard") is not None:
        default_registry.unregister_app("dashboard")


@pytest.fixture
def client() -> BufferedClient:
    return BufferedClient(checked(ProxyMiddleware(NotFound())))


def test_data_export(client: BufferedClient) -> None:
    handle = data_export.main()
    response = client.get("/proxy/sessions/report-1/export/data")
    assert (response.status_code, response.content_type) == (200, "text/csv")
    assert response.get_data() == b"a,b\n1,2\n"
    assert client.get("/proxy/sessions/report-1/").get_data() == (
        b"use /export/data to get the report"
    )
    handle.close()
    assert client.get("/proxy/sessions/report-1/export/data").status_code == 404


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        pytest.param("/hello", 200, b"hello from a router", id="hello"),
        pytest.param("/echo/quiet", 200, b"QUIET", id="echo"),
        pytest.param("/echo/a%20b", 200, b"A B", id="echo-escaped"),
        pytest.param("/nope", 404, None, id="other"),
        pytest.param("", 404, None, id="root"),
    ],
)
def test_router(client: BufferedClient, path: str, status: int, body: bytes | None) -> None:
    handle = router.main()
    assert isinstance(handle.handler, type)
    response = client.get(f"/proxy/sessions/router{path}")
    assert response.status_code == status
    if body is not None:
        assert response.get_data() == body


def test_auth(client: BufferedClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPORT_TOKEN", "example-token")
    auth.main()
    url = "/proxy/sessions/secret-report/"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.get(url, headers={"Authorization": "Bearer example-token"})
    assert response.json == {"rows": [[1, 2], [3, 4]]}


def test_webob_handler(client: BufferedClient) -> None:
    webob_handler.main()
    response = client.get("/proxy/sessions/greeter/?name=Ada")
    assert response.get_data() == b"hello Ada\n"
    assert response.content_type == "text/plain; charset=utf-8"


def test_flask_listener_links_are_under_the_prefix(client: BufferedClient) -> None:
    flask_listener.main()
    index = client.get("/proxy/sessions/flask-nb/")
    assert index.get_data() == b'<a href="/proxy/sessions/flask-nb/items/first">first item</a>'
    item = client.get("/proxy/sessions/flask-nb/items/first")
    assert item.json == {"item": "first", "self": "/proxy/sessions/flask-nb/items/first"}


def test_flask_host_starts_a_session() -> None:
    app = flask_host.create_app()
    client = app.test_client()
    created = client.post("/reports/r7")
    assert created.data == b"http://localhost/proxy/sessions/r7/data.csv\n"
    response = client.get("/proxy/sessions/r7/data.csv")
    assert response.data == b"report,r7\n"
    assert (
        client.post("/proxy/sessions/r7/data.csv", data=b"x" * (1024 * 1024 + 1)).status_code == 413
    )


def test_app_autostart(client: BufferedClient) -> None:
    app_autostart.main()
    first = client.get("/proxy/apps/dashboard/")
    assert first.status_code == 200
    session = first.get_data().decode().split()[4].rstrip(",")
    assert session.startswith("dashboard-")
    again = client.get("/proxy/apps/dashboard/charts")
    assert again.get_data().decode() == f"dashboard served by session {session}, path /charts\n"
    assert client.get(f"/proxy/apps/dashboard/sessions/{session}/x").status_code == 200


# -- the demo ----------------------------------------------------------------------


def fetch(port: int, method: str, path: str, body: str | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


@contextlib.contextmanager
def demo_process() -> Iterator[tuple[int, list[str]]]:
    """``make demo`` as it runs: the host on a free port, the notebook runtime beside it.
    Yields the port and the lines it printed (the curl lines among them)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.demo", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not (line := t.cast(t.IO[str], process.stdout).readline()).startswith("  curl"):
            assert line, "the demo ended"
            lines.append(line.strip())
        lines.append(line.strip())
        lines += [t.cast(t.IO[str], process.stdout).readline().strip() for _ in range(5)]
        wait_until_listening(t.cast("subprocess.Popen[bytes]", process), port)
        yield port, lines
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        t.cast(t.IO[str], process.stdout).close()


def test_demo_curl_lines_work_over_a_real_server() -> None:
    """Every command the demo prints works against the running demo, in order; the last
    reaches the notebook runtime, a process of its own."""
    with demo_process() as (port, printed):
        base = f"http://127.0.0.1:{port}"
        lines = [line for line in printed if line.startswith("curl")]
        assert len(lines) == 6
        for line in lines:
            words = line.split()
            url = words[-1]
            assert url.startswith(base), line
            if "-X" in words:
                form = "&".join(words[i + 1] for i, word in enumerate(words) if word == "-d")
                response = fetch(port, "POST", url.removeprefix(base), form)
                assert response.status == 303, line
            else:
                assert fetch(port, "GET", url.removeprefix(base)).status == 200, line
        runtime_pid = int(printed[0].rsplit(" ", 1)[1])
        answer = get(port, "/proxy/sessions/notebook/from/the/runtime")
        assert json.loads(answer.body) == {
            "answered by": "the notebook runtime",
            "pid": runtime_pid,
            "path": "/from/the/runtime",
        }
        index = get(port, "/").body.decode()
        link = '<a href="/proxy/sessions/notebook/">notebook</a>'
        assert f'{link} <span class="pid">process {runtime_pid}</span>' in index
    with pytest.raises(ProcessLookupError):
        os.kill(runtime_pid, 0)  # the demo stopped its runtime


def test_demo_index_lists_listeners_and_the_form_starts_and_stops() -> None:
    registry = Registry()
    app, _ = demo.create_app(registry)
    assert registry.get("clock") is not None, "the demo uses the registry it is given"
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    assert 'href="/proxy/sessions/clock/"' in page
    assert 'href="/proxy/sessions/report-1/"' in page
    assert client.post("/sessions", data={"session": "nb1", "action": "start"}).status_code == 303
    assert 'href="/proxy/sessions/nb1/"' in client.get("/").get_data(as_text=True)
    assert client.get("/proxy/sessions/nb1").headers["Location"] == "/proxy/sessions/nb1/"
    assert client.get("/proxy/sessions/nb1/api/data").json == {"message": "hello from session nb1"}
    assert client.get("/proxy/sessions/nb1/static/style.css").content_type.startswith("text/css")
    assert client.get("/proxy/sessions/nb1/nope").status_code == 404
    assert client.post("/sessions", data={"session": "nb1", "action": "stop"}).status_code == 303
    assert "nb1" not in client.get("/").get_data(as_text=True)
    assert client.get("/proxy/sessions/nb1/").status_code == 404
    refused = client.post("/sessions", data={"session": "bad id", "action": "start"})
    assert refused.status_code == 400
    assert "A session id is 1 to 128 letters, digits, &#39;_&#39; or &#39;-&#39;." in refused.text
    assert 'href="/proxy/sessions/clock/"' in refused.text, "the index, with the error"


def test_demo_index_links_follow_script_name() -> None:
    app, _ = demo.create_app(Registry())
    page = app.test_client().get("/", environ_overrides={"SCRIPT_NAME": "/host"})
    assert 'href="/host/proxy/sessions/clock/"' in page.get_data(as_text=True)
