"""Automatic shutdown in one process: app members that served nothing for the app's
idle_timeout are closed (its stop() first) and the next request on the generic path
starts a new one. Decisions are tested with a given clock (Registry.close_idle(now)),
and once with a short real timeout and the registry's own thread."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
import typing as t

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import Listener, ProxyMiddleware, Registry, retiring
from wsgi_proxy_listen import apps as apps_module

from .support.wsgi import MakeClient, assert_plain_answer, checked

pytestmark = pytest.mark.timeout(60)


class Board:
    """An app whose start registers a numbered session and whose stop records it."""

    def __init__(self, registry: Registry, **options: t.Any) -> None:
        self.registry = registry
        self.numbers = itertools.count(1)
        self.stopped: list[str] = []
        self.stop_called = threading.Event()
        self.hold: threading.Event | None = None  # stop() returns once it is set
        self.app = registry.register_app(
            "board", start=self.start, stop=self.stop, start_timeout=5, **options
        )

    def start(self) -> None:
        session = f"board-{next(self.numbers)}"
        self.registry.listen(self.answer(session), session=session, app="board")

    @staticmethod
    def answer(session: str) -> t.Callable[[Request], Response | str]:
        def listener(request: Request) -> Response | str:
            if request.path == "/stream":
                return Response(iter([b"a", b"b"]))
            return session

        return listener

    def stop(self, session: str) -> None:
        self.stopped.append(session)
        self.stop_called.set()
        if self.hold is not None:
            self.hold.wait(10)

    def member(self) -> Listener:
        listener = self.registry.current_listener("board")
        assert listener is not None
        return listener


def closed_soon(listener: Listener) -> bool:
    """Whether ``listener`` is closed within a few seconds (its stop() runs first)."""
    deadline = time.monotonic() + 5
    while not listener.closed:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def board(registry: Registry) -> Board:
    return Board(registry, idle_timeout=60)


def test_an_idle_member_is_closed_and_the_next_request_starts_a_new_one(
    registry: Registry, make_client: MakeClient, board: Board
) -> None:
    client = make_client()
    assert client.get("/proxy/apps/board/").text == "board-1"
    member = board.member()
    served = t.cast(float, member.last_request)
    assert registry.close_idle(now=served + 59) == [], "not idle for long enough"
    assert registry.close_idle(now=served + 60) == [member]
    assert closed_soon(member)
    assert board.stopped == ["board-1"]
    assert client.get("/proxy/apps/board/").text == "board-2", "a fresh start"
    assert_plain_answer(client.get("/proxy/apps/board/sessions/board-1/"), 404)


def test_a_member_that_never_served_is_idle_from_its_registration(
    registry: Registry, board: Board
) -> None:
    board.start()
    member = board.member()
    assert member.last_request is None
    assert registry.close_idle(now=member.listened + 59) == []
    assert registry.close_idle(now=member.listened + 60) == [member]


def test_a_request_in_flight_keeps_its_session_alive(registry: Registry, board: Board) -> None:
    """A stream counts as activity until its answer is closed; then the clock starts."""
    client = Client(checked(ProxyMiddleware(lambda environ, start_response: [], registry)))
    board.start()
    member = board.member()
    stream = client.get("/proxy/apps/board/stream", buffered=False)
    assert member.active == 1
    assert registry.close_idle(now=time.monotonic() + 3600) == [], "in flight"
    assert b"".join(stream.iter_encoded()) == b"ab"
    stream.close()
    assert member.active == 0
    ended = t.cast(float, member.last_request)
    assert registry.close_idle(now=ended + 59) == []
    assert registry.close_idle(now=ended + 60) == [member]


def test_every_request_counts_as_activity(
    registry: Registry, make_client: MakeClient, board: Board
) -> None:
    client = make_client()
    client.get("/proxy/apps/board/")
    member = board.member()
    first = t.cast(float, member.last_request)
    time.sleep(0.01)
    client.get("/proxy/apps/board/sessions/board-1/")  # any route to it
    assert t.cast(float, member.last_request) > first
    assert registry.close_idle(now=first + 60) == []


def test_only_members_of_apps_with_an_idle_timeout_are_closed(registry: Registry) -> None:
    registry.register_app("kept")
    kept = registry.listen(lambda request: "", session="k", app="kept")
    alone = registry.listen(lambda request: "", session="alone")
    registry.register_app("brief", idle_timeout=1)
    brief = registry.listen(lambda request: "", session="b", app="brief")
    assert registry.close_idle(now=time.monotonic() + 3600) == [brief]
    assert not kept.closed
    assert not alone.closed
    assert kept.counted, "an app member's requests are counted: its app may get a timeout"
    assert not alone.counted, "nothing counts requests that no limit or app needs"


def test_no_idle_thread_is_woken_for_apps_without_a_timeout(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's listen() must not start a thread (it did, on every listen())."""
    wakes = []
    monkeypatch.setattr(retiring.Reaper, "wake", lambda reaper: wakes.append(reaper))
    registry.register_app("kept")
    registry.listen(lambda request: "", session="k", app="kept").close()
    registry.listen(lambda request: "", session="u", app="undeclared").close()
    assert wakes == []
    registry.register_app("brief", idle_timeout=1)
    registry.listen(lambda request: "", session="b", app="brief")
    assert len(wakes) == 2, "by the declaration, then by its member"


def test_a_declaration_with_a_timeout_applies_to_members_already_there(
    registry: Registry,
) -> None:
    """Even to a stream that began before the app was declared: it keeps its session."""
    client = Client(checked(ProxyMiddleware(lambda environ, start_response: [], registry)))
    member = registry.listen(Board.answer("m"), session="m", app="late")
    stream = client.get("/proxy/sessions/m/stream", buffered=False)
    registry.register_app("late", idle_timeout=5)
    assert registry.close_idle(now=time.monotonic() + 3600) == [], "a stream in flight"
    stream.close()
    assert registry.close_idle(now=time.monotonic() + 3600) == [member]
    assert closed_soon(member)


def test_a_request_while_the_member_stops_is_refused_not_closed_under(
    registry: Registry, make_client: MakeClient
) -> None:
    """Once a member is found idle it takes no request: one that comes while its stop()
    runs gets 503 with Retry-After, and nothing is in flight when it is closed."""
    stopping = threading.Event()
    release = threading.Event()

    def stop(session: str) -> None:
        stopping.set()
        release.wait(10)

    registry.register_app("app", idle_timeout=1, stop=stop)
    member = registry.listen(lambda request: "answered", session="s", app="app")
    client = make_client()
    assert registry.close_idle(now=time.monotonic() + 5) == [member]
    assert stopping.wait(5)
    refused = client.get("/proxy/sessions/s/")
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "1")
    assert member.active == 0
    release.set()
    assert closed_soon(member)
    assert client.get("/proxy/sessions/s/").status_code == 404


def test_while_a_member_stops_the_generic_path_starts_a_new_session(
    registry: Registry, make_client: MakeClient
) -> None:
    """It leaves its app when it is found idle: the generic path does not wait for its
    stop() (up to start_timeout) with 503s."""
    board = Board(registry, idle_timeout=1)
    board.hold = release = threading.Event()
    client = make_client()
    assert client.get("/proxy/apps/board/").text == "board-1"
    first = board.member()
    assert registry.close_idle(now=time.monotonic() + 5) == [first]
    assert board.stop_called.wait(5)
    assert not first.closed, "its stop() runs"
    assert client.get("/proxy/apps/board/").text == "board-2"
    assert client.get("/proxy/apps/board/sessions/board-1/").status_code == 503
    release.set()
    assert closed_soon(first)
    assert client.get("/proxy/apps/board/").text == "board-2"
    assert [listener.session for listener in registry] == ["board-2"]


def test_a_retirement_that_fails_is_tried_again_and_spares_the_others(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, errors: pytest.LogCaptureFixture
) -> None:
    registry.register_app("app", idle_timeout=1)
    first = registry.listen(lambda request: "", session="a", app="app")
    second = registry.listen(lambda request: "", session="b", app="app")
    real = retiring.retire
    failures = [first]

    def retire(listener: Listener, *arguments: t.Any) -> None:
        if listener in failures:
            failures.remove(listener)
            raise RuntimeError("no thread to be had")
        real(listener, *arguments)

    monkeypatch.setattr(apps_module, "retire", retire)
    assert registry.close_idle(now=time.monotonic() + 5) == [second]
    assert second.closed
    assert "could not close the idle session 'a'" in errors.text
    assert not first.closed
    assert not first.retiring, "it takes requests again, until the next look"
    assert registry.close_idle(now=time.monotonic() + 5) == [first]
    assert first.closed


def test_a_forked_child_closes_its_idle_members_and_never_inherits_a_held_lock(
    registry: Registry,
) -> None:
    """After a fork the parent's threads are gone: the child gets its own thread that
    closes idle members, and fresh locks (one the parent's thread held stays held)."""
    registry.register_app("app", idle_timeout=0.3)
    member = registry.listen(lambda request: "", session="s", app="app")
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with registry.apps._lock:  # as the parent's idle thread does while it looks
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            signal.alarm(10)
            registry.listen(lambda request: "", session="t", app="app")  # takes the lock
            if closed_soon(member):
                code = 0
        finally:
            os._exit(code)
    release.set()
    holder.join()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_forked_child_never_stops_its_parents_sessions(registry: Registry) -> None:
    """A child that inherited a member closes its copy without calling stop (the
    parent serves the session on), starts no thread inside the fork, and does not
    inherit the parent's requests in flight."""
    stops: list[str] = []
    registry.register_app("app", idle_timeout=0.3, stop=stops.append)
    member = registry.listen(lambda request: "", session="s", app="app", max_concurrency=1)
    assert member.admit(1)  # a request of the parent, in flight at the fork
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            signal.alarm(10)
            threads = threading.active_count()
            free = member.active == 0
            own = registry.listen(lambda request: "", session="t", app="app")
            if threads == 1 and free and closed_soon(member) and closed_soon(own):
                time.sleep(0.1)  # the child's own stop runs just before its close
                code = 0 if stops == ["t"] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not member.closed
    member.done()


def test_a_stop_that_cannot_get_a_thread_still_closes_the_member(
    registry: Registry, errors: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else the member stayed registered, refusing every request, for good."""
    registry.register_app("app", idle_timeout=1, stop=lambda session: None)
    member = registry.listen(lambda request: "", session="s", app="app")
    start = threading.Thread.start

    def no_thread_for_stop(thread: threading.Thread) -> None:
        if thread.name.startswith("wsgi_proxy_listen stop"):
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", no_thread_for_stop)
    assert registry.close_idle(now=time.monotonic() + 60) == [member]
    assert closed_soon(member)
    assert "could not run" in errors.text


def test_a_stop_that_raises_is_logged_and_the_member_closed_all_the_same(
    registry: Registry, errors: pytest.LogCaptureFixture
) -> None:
    def stop(session: str) -> None:
        raise RuntimeError(f"cannot stop {session}")

    registry.register_app("app", idle_timeout=1, stop=stop)
    member = registry.listen(lambda request: "", session="s", app="app")
    registry.close_idle(now=time.monotonic() + 5)
    assert closed_soon(member)
    assert "stop of session 's' of app 'app' raised" in errors.text
    assert "cannot stop s" in errors.text


def test_stop_runs_first_while_the_listener_still_answers(registry: Registry) -> None:
    seen: list[bool] = []
    member: list[Listener] = []

    def stop(session: str) -> None:
        seen.append(member[0].closed)

    registry.register_app("app", idle_timeout=1, stop=stop)
    member.append(registry.listen(lambda request: "", session="s", app="app"))
    registry.close_idle(now=time.monotonic() + 5)
    assert closed_soon(member[0])
    assert seen == [False]


def test_a_stop_that_hangs_lets_the_member_close_after_start_timeout(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsgi_proxy_listen")
    release = threading.Event()
    registry.register_app(
        "app", idle_timeout=1, stop=lambda session: release.wait(30), start_timeout=0.2
    )
    member = registry.listen(lambda request: "", session="s", app="app")
    try:
        assert registry.close_idle(now=time.monotonic() + 5) == [member]
        assert registry.close_idle(now=time.monotonic() + 5) == [], "retired once"
        assert closed_soon(member)
        assert "still runs after 0.2 s" in caplog.text
    finally:
        release.set()


def test_a_short_real_timeout(registry: Registry, make_client: MakeClient) -> None:
    """The registry's own thread closes the member; requests in between keep it."""
    board = Board(registry, idle_timeout=0.4)
    client = make_client()
    assert client.get("/proxy/apps/board/").text == "board-1"
    for _ in range(6):  # 0.6 s of requests 0.1 s apart: never idle for 0.4 s
        time.sleep(0.1)
        assert client.get("/proxy/apps/board/").text == "board-1"
    member = board.member()
    assert board.stop_called.wait(5)
    assert closed_soon(member)
    assert client.get("/proxy/apps/board/").text == "board-2"
    assert board.stopped == ["board-1"]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"idle_timeout": 0}, ValueError, "invalid idle_timeout 0"),
        ({"idle_timeout": -1.5}, ValueError, "invalid idle_timeout"),
        ({"idle_timeout": float("inf")}, ValueError, "invalid idle_timeout"),
        ({"idle_timeout": "60"}, TypeError, "idle_timeout must be a number of seconds"),
        ({"idle_timeout": True}, TypeError, "idle_timeout must be a number of seconds"),
        ({"idle_timeout": 5, "stop": "x"}, TypeError, "stop must be a callable"),
        ({"stop": lambda session: None}, ValueError, "give idle_timeout= too"),
    ],
)
def test_wrong_shutdown_options_raise(
    registry: Registry, options: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        registry.register_app("app", **options)
    assert registry.get_app("app") is None


def test_repr_shows_the_shutdown_options(registry: Registry) -> None:
    def stop(session: str) -> None:
        pass

    app = registry.register_app("app", idle_timeout=30, stop=stop)
    assert f"idle_timeout=30.0 stop={stop!r}>" in repr(app)
    assert "idle_timeout=None stop=None>" in repr(registry.register_app("other"))


def test_the_registrys_thread_ends_when_nothing_is_watched(registry: Registry) -> None:
    registry.register_app("app", idle_timeout=0.2)
    member = registry.listen(lambda request: "", session="s", app="app")
    name = f"wsgi_proxy_listen idle sessions {id(registry):#x}"
    assert name in [thread.name for thread in threading.enumerate()]
    assert closed_soon(member)
    deadline = time.monotonic() + 5
    while name in [thread.name for thread in threading.enumerate()]:
        assert time.monotonic() < deadline, "the thread outlived the last member"
        time.sleep(0.05)
    again = registry.listen(lambda request: "", session="t", app="app")
    assert closed_soon(again), "a new member wakes it again"


def test_a_member_is_idle_at_exactly_its_timeout_whatever_the_clock_reads(
    registry: Registry, board: Board
) -> None:
    """The boundary holds for any reading of the clock: at some readings ``(a + 60) - a``
    is a little less than 60 in floating point, which kept a member idle for exactly its
    timeout open (this test's reading is one of them)."""
    board.start()
    member = board.member()
    member.last_request = served = 65488.198063366035
    assert (served + 60) - served < 60
    assert registry.close_idle(now=served + 60) == [member]
