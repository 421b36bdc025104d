"""The examples run and answer as their docs say."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator

import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from examples import demo
from wsgi_proxy_listen import Registry


@pytest.fixture
def demo_server() -> Iterator[BaseWSGIServer]:
    app, _ = demo.create_app(Registry())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def get(server: BaseWSGIServer, path: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("path", "status", "content_type", "body"),
    [
        pytest.param("/", 200, "text/html; charset=utf-8", b"demo host", id="host"),
        pytest.param(
            "/proxy/sessions/report-1/export/data", 200, "text/csv", b"a,b\n1,2\n", id="csv"
        ),
        pytest.param(
            "/proxy/sessions/report-1/", 200, "text/plain; charset=utf-8", b"use /export", id="hint"
        ),
        pytest.param(
            "/proxy/sessions/clock/a/b",
            200,
            "text/plain; charset=utf-8",
            b"clock listener at '/proxy/sessions/clock', path '/a/b'",
            id="wsgi",
        ),
        pytest.param("/proxy/sessions/none/", 404, "text/plain; charset=utf-8", b"404", id="404"),
    ],
)
def test_demo_over_a_real_server(
    demo_server: BaseWSGIServer, path: str, status: int, content_type: str, body: bytes
) -> None:
    got_status, got_type, got_body = get(demo_server, path)
    assert (got_status, got_type) == (status, content_type)
    assert got_body.startswith(body)


def test_demo_curl_lines_answer_200(demo_server: BaseWSGIServer) -> None:
    """Every command the demo prints works against the running demo."""
    _, listeners = demo.create_app(Registry())
    base = f"http://127.0.0.1:{demo_server.port}"
    lines = demo.curl_lines(base, listeners)
    assert len(lines) == 3
    for line in lines:
        url = line.removeprefix("curl ")
        assert url.startswith(base)
        status, _, _ = get(demo_server, url.removeprefix(base))
        assert status == 200, line
