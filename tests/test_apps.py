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

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .conftest import BufferedClient, Host


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
