"""The bulkhead: at most max_concurrency requests per listener at once, the rest answered
503 with Retry-After at once, so that a hanging listener cannot take every server thread."""

from __future__ import annotations

import threading
import typing as t
from collections.abc import Iterator

import flask
import pytest

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.flask import ProxyListen

from .support.wsgi import (
    BufferedClient,
    assert_plain_answer,
    checked,
    environ_for,
    start_response_stub,
)


class Gate:
    """A listener whose requests wait until the gate opens; counts who got in."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.inside = 0
        self.lock = threading.Lock()
        self.entered = threading.Condition(self.lock)

    def __call__(self, environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        with self.lock:
            self.inside += 1
            self.entered.notify_all()
        self.open.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"through"]

    def wait_inside(self, count: int) -> None:
        with self.lock:
            assert self.entered.wait_for(lambda: self.inside >= count, 10)


def requests_in_threads(client: BufferedClient, path: str, count: int) -> list[t.Any]:
    answers: list[t.Any] = []
    threads = [
        threading.Thread(target=lambda: answers.append(client.get(path))) for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return [threads, answers]


def test_requests_beyond_the_limit_get_503_at_once(registry: Registry) -> None:
    gate = Gate()
    registry.listen(gate, session="slow", max_concurrency=2)
    client = BufferedClient(checked(ProxyMiddleware(lambda e, s: [], registry)))
    threads, answers = requests_in_threads(client, "/proxy/sessions/slow/", 2)
    gate.wait_inside(2)
    refused = client.get("/proxy/sessions/slow/")
    assert_plain_answer(refused, 503)
    assert refused.headers["Retry-After"] == "1"
    gate.open.set()
    for thread in threads:
        thread.join()
    assert [answer.data for answer in answers] == [b"through"] * 2
    assert client.get("/proxy/sessions/slow/").data == b"through", "the count went down"


def test_a_stream_counts_until_it_is_closed(registry: Registry) -> None:
    closed = threading.Event()

    def stream(environ: dict[str, t.Any], start_response: t.Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            yield b"part"
        finally:
            closed.set()

    listener = registry.listen(stream, session="s", max_concurrency=1)
    middleware = ProxyMiddleware(lambda e, s: [], registry)
    client = BufferedClient(checked(middleware))
    unbuffered = client.get("/proxy/sessions/s/", buffered=False)
    assert listener.active == 1
    assert client.get("/proxy/sessions/s/").status_code == 503
    unbuffered.close()
    assert closed.is_set()
    assert listener.active == 0
    assert client.get("/proxy/sessions/s/").data == b"part"


def test_the_middleware_limit_applies_unless_a_listener_has_its_own(registry: Registry) -> None:
    default, own = Gate(), Gate()
    registry.listen(default, session="default")
    registry.listen(own, session="own", max_concurrency=3)
    client = BufferedClient(checked(ProxyMiddleware(lambda e, s: [], registry, max_concurrency=1)))
    running = [
        requests_in_threads(client, "/proxy/sessions/default/", 1),
        requests_in_threads(client, "/proxy/sessions/own/", 3),
    ]
    default.wait_inside(1)
    own.wait_inside(3)
    assert client.get("/proxy/sessions/default/").status_code == 503
    assert client.get("/proxy/sessions/own/").status_code == 503
    default.open.set()
    own.open.set()
    for threads, _ in running:
        for thread in threads:
            thread.join()


@pytest.mark.parametrize("failure", ["raises", "returns-none", "bad-header", "text-body"])
def test_a_failing_listener_gives_its_place_back(
    registry: Registry, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(environ: dict[str, t.Any], start_response: t.Any) -> t.Any:
        if failure == "raises":
            raise RuntimeError("boom")
        if failure == "returns-none":
            return None
        if failure == "bad-header":
            start_response("200 OK", [("Bad Name", "x")])
            return [b"x"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["text"]

    listener = registry.listen(failing, session="f", max_concurrency=1)
    client = BufferedClient(checked(ProxyMiddleware(lambda e, s: [], registry)))
    for _ in range(3):
        assert client.get("/proxy/sessions/f/").status_code == 500
    assert listener.active == 0


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("4", TypeError), (True, TypeError)],
)
def test_limits_must_be_positive_ints(
    registry: Registry, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="max_concurrency"):
        registry.listen(lambda request: "x", session="s", max_concurrency=t.cast(int, value))
    with pytest.raises(error, match="max_concurrency"):
        ProxyMiddleware(lambda e, s: [], registry, max_concurrency=t.cast(int, value))


def test_the_flask_setting(registry: Registry) -> None:
    app = flask.Flask("host")
    app.config["WSGI_PROXY_LISTEN"] = {"MAX_CONCURRENCY": 4, "FORWARD_COOKIES": ["session"]}
    ProxyListen(app, registry=registry)
    middleware = app.extensions["wsgi_proxy_listen"].middleware
    assert middleware.max_concurrency == 4
    assert middleware.forward_cookies == ["session"]


def test_a_start_response_of_the_server_that_raises_gives_the_place_back(
    registry: Registry,
) -> None:
    """Found in review: a server that refuses a header the guard let through (waitress
    refused 'Trailers') left the request counted for good."""

    def answers(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    listener = registry.listen(answers, session="s", max_concurrency=1)
    middleware = ProxyMiddleware(lambda e, s: [], registry)

    def refusing(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
        raise AssertionError("the server refused a header")

    for _ in range(2):
        with pytest.raises(AssertionError, match="refused a header"):
            middleware(environ_for("/proxy/sessions/s/"), refusing)
    assert listener.active == 0


def test_a_base_exception_of_the_listener_gives_the_place_back(registry: Registry) -> None:
    """SystemExit, a green thread's timeout: not the listener's answer, but propagated,
    and the request no longer counts."""

    def exits(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        raise SystemExit(3)

    listener = registry.listen(exits, session="s", max_concurrency=1)
    middleware = ProxyMiddleware(lambda e, s: [], registry)
    for _ in range(2):
        with pytest.raises(SystemExit):
            middleware(environ_for("/proxy/sessions/s/"), start_response_stub)
    assert listener.active == 0
