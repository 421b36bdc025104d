"""Apps through the middleware: the generic app path under churn, re-declaration during a
start, and the cap on requests waiting for an auto-start."""

from __future__ import annotations

import sys
import threading
import time
import typing as t
from collections import Counter
from collections.abc import Iterator

import pytest
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.wsgi import (
    BufferedClient,
    Host,
    MakeClient,
    Recorder,
    assert_plain_answer,
    checked,
    environ_for,
)


@pytest.fixture
def fine_switching() -> Iterator[None]:
    """Switch threads as often as possible, so that races show."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def answer(text: str) -> t.Callable[[t.Any], str]:
    return lambda request: text


def test_the_generic_path_finds_a_live_member_while_others_come_and_go(
    registry: Registry, fine_switching: None
) -> None:
    """One member stays while others join and leave as fast as they can: the generic path
    reads one consistent snapshot, so it never answers 404 and never starts the app."""
    starts: list[int] = []
    registry.register_app("board", start=lambda: starts.append(1))
    registry.listen(answer("stay"), session="stay", app="board")
    client = BufferedClient(ProxyMiddleware(Host(), registry))
    done = threading.Event()

    def churn(offset: int) -> None:
        number = 0
        while not done.is_set():
            number += 1
            handle = registry.listen(
                answer("churn"), session=f"m-{offset}-{number % 5}", app="board"
            )
            handle.close()

    churners = [threading.Thread(target=churn, args=(i,)) for i in range(2)]
    for thread in churners:
        thread.start()
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + 2
    try:
        while time.monotonic() < deadline:
            statuses[client.get("/proxy/apps/board/").status_code] += 1
    finally:
        done.set()
        for thread in churners:
            thread.join()
    assert statuses.keys() == {200}, statuses
    assert starts == []


def test_redeclaring_an_app_while_its_start_runs_starts_it_once(registry: Registry) -> None:
    release = threading.Event()
    starts: list[int] = []

    def start() -> None:
        starts.append(1)
        release.wait(10)
        registry.listen(answer("started"), session="s1", app="slow")

    registry.register_app("slow", start=start, start_timeout=10)
    client = BufferedClient(ProxyMiddleware(Host(), registry))
    first = threading.Thread(target=client.get, args=("/proxy/apps/slow/",))
    first.start()
    while not starts:
        time.sleep(0.01)
    registry.register_app("slow", start=start, start_timeout=10)  # the same code, again
    second: list[int] = []
    waiter = threading.Thread(
        target=lambda: second.append(client.get("/proxy/apps/slow/").status_code)
    )
    waiter.start()
    time.sleep(0.3)
    release.set()
    first.join()
    waiter.join()
    assert starts == [1]
    assert second == [200]


def test_requests_beyond_max_waiting_get_503_with_retry_after(registry: Registry) -> None:
    """Strangers can trigger a start: only max_waiting requests wait for it, each holding
    a server thread; the others are answered at once."""
    release = threading.Event()

    def start() -> None:
        release.wait(10)
        registry.listen(answer("started"), session="s1", app="hang")

    registry.register_app("hang", start=start, start_timeout=10, max_waiting=2)
    client = BufferedClient(ProxyMiddleware(Host(), registry))
    results: list[t.Any] = []
    lock = threading.Lock()

    def request() -> None:
        response = client.get("/proxy/apps/hang/")
        with lock:
            results.append(response)

    waiting = [threading.Thread(target=request) for _ in range(2)]
    for thread in waiting:
        thread.start()
    time.sleep(0.3)
    began = time.monotonic()
    extra = [client.get("/proxy/apps/hang/") for _ in range(3)]
    assert time.monotonic() - began < 5, "answered without waiting for the start"
    release.set()
    for thread in waiting:
        thread.join()
    assert [response.status_code for response in extra] == [503] * 3
    assert all(response.headers["Retry-After"] == "1" for response in extra)
    assert sorted(response.status_code for response in results) == [200, 200]


def test_max_waiting_defaults_to_a_small_number(registry: Registry) -> None:
    declaration = registry.register_app("app", start=lambda: None)
    assert 1 <= declaration.max_waiting <= 4
    assert f"max_waiting={declaration.max_waiting}" in repr(declaration)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(0, ValueError, id="zero"),
        pytest.param(-1, ValueError, id="negative"),
        pytest.param(1.5, TypeError, id="float"),
        pytest.param("2", TypeError, id="string"),
        pytest.param(True, TypeError, id="bool"),
    ],
)
def test_max_waiting_must_be_a_positive_int(
    registry: Registry, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="max_waiting"):
        registry.register_app("app", start=lambda: None, max_waiting=t.cast(int, value))


# -- apps through the middleware --------------------------------------------------------------


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
    """The app-session route is tried first, as in Livebook (docs/guides/handlers.md)."""
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
