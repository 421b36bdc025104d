"""Every change of state is one log record with a stable event name and its fields in
``extra`` (wsgi_proxy_listen.events), at its level; a client that goes away logs
nothing above debug."""

from __future__ import annotations

import logging
import socket
import time
import typing as t

import pytest
from werkzeug.test import Client
from werkzeug.wsgi import LimitedStream

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.cluster import EmbeddedDirectory
from wsgi_proxy_listen.events import EVENTS

from .support.cluster import NO_REDIS, REDIS, SECRET, RedisServer
from .support.wsgi import Host

pytestmark = [pytest.mark.timeout(60)]


class Worker(t.NamedTuple):
    directory: t.Any
    registry: Registry
    client: Client


def worker(directory: t.Any) -> Worker:
    registry = Registry(directory=directory)
    client = Client(ProxyMiddleware(Host(), registry))
    client.get("/", buffered=True)
    return Worker(directory, registry, client)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def fields(record: logging.LogRecord, *names: str) -> dict[str, object]:
    return {name: getattr(record, name, None) for name in names}


def hello(request: t.Any) -> str:
    return "hello"


def test_listen_close_publish_withdraw_and_take_over(
    folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgi_proxy_listen")
    a, b = worker(EmbeddedDirectory(folder, lease=3)), worker(EmbeddedDirectory(folder, lease=3))
    try:
        handle = a.registry.listen(hello, session="s1", app="dash")
        (listened,) = events(caplog, "listen")
        assert listened.levelno == logging.DEBUG
        assert fields(listened, "session", "app", "pid") == {
            "session": "s1",
            "app": "dash",
            "pid": __import__("os").getpid(),
        }
        (published,) = events(caplog, "publish")
        assert (published.levelno, published.session, published.owner) == (  # type: ignore[attr-defined]
            logging.DEBUG,
            "s1",
            a.directory.owner,
        )
        b.registry.listen(hello, session="s1")  # b takes it over
        deadline = time.monotonic() + 3
        while not events(caplog, "take_over"):
            assert time.monotonic() < deadline, "a never heard of the take-over"
            time.sleep(0.05)
        assert events(caplog, "take_over")[0].session == "s1"  # type: ignore[attr-defined]
        closed = [record.session for record in events(caplog, "close")]  # type: ignore[attr-defined]
        assert closed == ["s1"], "a's listener closed when taken over"
        handle.close()  # replaced already: nothing more
        b.registry.close_session("s1")
        withdrawn = events(caplog, "withdraw")
        assert [(record.session, record.owner) for record in withdrawn][-1] == (  # type: ignore[attr-defined]
            "s1",
            b.directory.owner,
        )
    finally:
        for made in (a, b):
            made.directory.close()
            made.registry.close()


def test_an_owner_gone_and_a_hop_refused(folder: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgi_proxy_listen")
    a, b = worker(EmbeddedDirectory(folder, lease=3)), worker(EmbeddedDirectory(folder, lease=3))
    try:
        a.registry.listen(hello, session="s1")
        address = a.directory.address
        with socket.socket(socket.AF_UNIX) as stranger:  # no hop: refused, and said
            stranger.connect(address)
            stranger.sendall(b"GET / HTTP/1.1\r\n\r\n")
            stranger.settimeout(5)
            assert stranger.recv(10) == b""
        (refused,) = events(caplog, "hop_refused")
        assert (refused.levelno, refused.reason) == (logging.WARNING, "no hop")  # type: ignore[attr-defined]
        a.directory._endpoint.close()  # its process as good as gone
        assert b.client.get("/proxy/sessions/s1/").status_code == 502
        (gone,) = events(caplog, "owner_gone")
        assert fields(gone, "session", "address", "reason") == {
            "session": "s1",
            "address": address,
            "reason": "refused",
        }
    finally:
        for made in (a, b):
            made.directory.close()
            made.registry.close()


def test_the_directory_down_and_up_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    if REDIS is None:
        pytest.skip(NO_REDIS)
    from wsgi_proxy_listen.cluster import RedisDirectory

    server = RedisServer()
    server.start()
    made = worker(RedisDirectory(server.url, secret=SECRET, lease=3))
    try:
        caplog.set_level(logging.WARNING, logger="wsgi_proxy_listen")
        server.stop()
        assert made.client.get("/proxy/sessions/elsewhere/").status_code == 503
        (down,) = events(caplog, "directory_down")
        assert down.levelno == logging.ERROR
        assert str(down.reason).startswith("the connection was refused")  # type: ignore[attr-defined]
        server.start()
        deadline = time.monotonic() + 5
        while not events(caplog, "directory_up"):
            assert time.monotonic() < deadline, "never back"
            time.sleep(0.05)
    finally:
        made.directory.close()
        made.registry.close()
        server.stop()


def test_an_apps_start_and_idle_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wsgi_proxy_listen")
    registry = Registry()
    client = Client(ProxyMiddleware(Host(), registry))
    registry.register_app(
        "dash",
        start=lambda: registry.listen(hello, session="d1", app="dash"),
        idle_timeout=60,
    )
    try:
        assert client.get("/proxy/apps/dash/", buffered=True).status_code == 200
        (started,) = events(caplog, "start")
        assert fields(started, "app", "session") == {"app": "dash", "session": "d1"}
        registry.close_idle(time.monotonic() + 120)
        (idle,) = events(caplog, "idle_shutdown")
        assert fields(idle, "app", "session") == {"app": "dash", "session": "d1"}
    finally:
        registry.close()


def test_a_client_that_goes_away_logs_nothing_above_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgi_proxy_listen")
    registry = Registry()
    client = Client(ProxyMiddleware(Host(), registry))

    def read_all(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        # What werkzeug's request does with a body that ends before its length.
        LimitedStream(environ["wsgi.input"], int(environ["CONTENT_LENGTH"])).read()
        start_response("200 OK", [])
        return [b"read"]

    registry.listen(read_all, session="up", kind="wsgi")
    caplog.clear()  # the listen event

    class GoesAway:
        def read(self, size: int = -1) -> bytes:
            return b""  # the client is gone: the body ends early

    answer = client.post(
        "/proxy/sessions/up/",
        environ_overrides={"wsgi.input": GoesAway(), "CONTENT_LENGTH": "1000"},
        buffered=True,
    )
    assert answer.status_code == 400
    assert [record.levelno for record in caplog.records if record.levelno > logging.DEBUG] == []
    assert [record.session for record in events(caplog, "client_gone")] == ["up"]  # type: ignore[attr-defined]


def test_every_event_has_a_level_and_a_line_in_the_docs() -> None:
    from pathlib import Path

    import wsgi_proxy_listen.events as module

    doc = module.__doc__
    for name, level in EVENTS.items():
        line = next(line for line in doc.splitlines() if line.startswith(f"``{name}``"))
        assert logging.getLevelName(level) in line, name
    guide = (
        Path(__file__).resolve().parent.parent / "docs" / "guides" / "operations.md"
    ).read_text()
    assert all(f"`{name}`" in guide for name in EVENTS)


def test_an_answer_cut_says_whether_its_owner_ended_or_went_silent(
    folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: a read timeout in the middle of an answer was said to be the
    owner ending the connection."""
    caplog.set_level(logging.WARNING, logger="wsgi_proxy_listen")
    a = worker(EmbeddedDirectory(folder, lease=3, read_timeout=0.5))
    b = worker(EmbeddedDirectory(folder, lease=3, read_timeout=0.5))

    def stalls(environ: dict[str, t.Any], start_response: t.Any) -> t.Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        time.sleep(2)  # silent for longer than the read timeout
        yield b"late"

    try:
        a.registry.listen(stalls, session="slow", kind="wsgi")
        with b.client.get("/proxy/sessions/slow/") as answer:
            chunks = iter(answer.response)
            assert next(chunks) == b"first"
            with pytest.raises(ConnectionResetError):
                next(chunks)
        (cut,) = events(caplog, "answer_cut")
        assert cut.reason == "timeout"  # type: ignore[attr-defined]
        assert "sent nothing within the read timeout" in cut.getMessage()
    finally:
        for made in (a, b):
            made.directory.close()
            made.registry.close()
