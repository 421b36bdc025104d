"""What crosses between processes is checked as strictly as what stays in one.

A real host (tests/support/server_app.py under real servers) shares a directory with a
runtime (tests/support/boundary_runtime.py) whose code turned this package's checks off in
its own process. The host serves the same listeners itself (``*-local``), and each test
compares what a client gets from both, over raw sockets: the tests hold whatever carries
the hop, since they only see the host's wire, the runtime's log and its process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing as t
from collections.abc import Iterator

import pytest

from .support.boundary_runtime import HOSTILE
from .support.cluster import ROOT, SECRET, Shared, short_folder
from .support.servers import SERVERS, Server, running
from .support.wire import Answer, get

pytestmark = pytest.mark.timeout(180)


class Runtime(t.NamedTuple):
    pid: int
    log: t.IO[str]

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read()


def directory_env(shared: Shared, prefix: str) -> dict[str, str]:
    env = {f"{prefix}DIRECTORY": shared.name}
    if shared.kind == "redis":
        env[f"{prefix}SECRET"] = SECRET
    return env


@contextlib.contextmanager
def boundary_runtime(shared: Shared) -> Iterator[Runtime]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("WSGI_PROXY")}
    env.update(PYTHONPATH=str(ROOT), **directory_env(shared, "WSGI_PROXY_LISTEN_"))
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.boundary_runtime"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            line = t.cast(t.IO[str], process.stdout).readline()
            assert line, f"the runtime ended: {process.wait(10)}"
            yield Runtime(json.loads(line)["ready"], log)
        finally:
            process.terminate()
            process.wait(10)
            t.cast(t.IO[str], process.stdout).close()


@contextlib.contextmanager
def host(shared: Shared, server: str = "gunicorn-gthread") -> Iterator[Server]:
    with running(server, TEST_LOG_LEVEL="DEBUG", **directory_env(shared, "TEST_")) as started:
        yield started


def host_log(server: Server) -> str:
    server.log.seek(0)
    return server.log.read().decode(errors="replace")


def headers_of(answer: Answer) -> list[tuple[str, str]]:
    """The header fields of an answer, without those that differ between two answers."""
    lines = answer.head.decode("latin-1").split("\r\n")[1:]
    fields = [t.cast(tuple[str, str], tuple(line.split(": ", 1))) for line in lines]
    return [(name, value) for name, value in fields if name not in ("Date", "Server")]


# -- what the runtime sends --------------------------------------------------------------------


def test_the_host_checks_a_runtimes_answer_as_its_own_listeners(shared: Shared) -> None:
    """Found in review: the host relayed a runtime's answer with only hop-by-hop headers
    dropped, so a runtime that turned its own checks off could set the host's cookies,
    __Host- cookies and Clear-Site-Data. Each hostile answer now reaches the wire as the
    same listener's does in the host's process."""
    with boundary_runtime(shared), host(shared) as server:
        for path in HOSTILE:
            remote = get(server.port, f"/proxy/sessions/hostile{path}")
            local = get(server.port, f"/proxy/sessions/hostile-local{path}")
            assert remote.status == local.status, path
            assert remote.body == local.body, path
            assert headers_of(remote) == [
                (name, value.replace("/hostile-local", "/hostile"))
                for name, value in headers_of(local)
            ], path
            assert b"Injected" not in remote.head + remote.body
        cookies = get(server.port, "/proxy/sessions/hostile/cookies")
        assert [value for name, value in headers_of(cookies) if name == "Set-Cookie"] == [
            "host_session=forged; Path=/proxy/sessions/hostile",
            "own=1; HttpOnly; Path=/proxy/sessions/hostile",
        ]
        names = {name.lower() for name, _ in headers_of(cookies)}
        assert not names & {"clear-site-data", "x-secret", "keep-alive"}
        many = get(server.port, "/proxy/sessions/hostile/many-cookies")
        assert len([name for name, _ in headers_of(many) if name == "Set-Cookie"]) == 20
        for path in ("/crlf", "/status", "/two-lengths"):
            answer = get(server.port, f"/proxy/sessions/hostile{path}")
            assert answer.status == 500
            assert answer.body == b"500 Internal Server Error: The listener failed to answer.\n"
        log = host_log(server)
        assert "listener of session 'hostile' sent an invalid status line or header" in log
        assert "dropped a __Host- cookie of a listener" in log


# -- what the client sends ---------------------------------------------------------------------

# 12 KB of UTF-8, as the latin-1 text that get() sends byte for byte.
UTF8_COOKIES = "; ".join(f"c{index}=" + "é" * 60 for index in range(100)).encode().decode("latin-1")
LARGE_HEADERS = {
    "utf-8-cookies": f"Cookie: {UTF8_COOKIES}\r\n",
    "two-40-kb-headers": f"X-One: {'a' * 40000}\r\nX-Two: {'b' * 40000}\r\n",
    "200-headers": "".join(f"X-H{index}: {index}\r\n" for index in range(200)),
}


# Every server on the embedded directory, and one on Redis: the hop is the same.
ON_SERVERS = [pytest.param("embedded", name, id=f"embedded-{name}") for name in SERVERS]


@contextlib.contextmanager
def directory(kind: str, request: pytest.FixtureRequest) -> Iterator[Shared]:
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        yield Shared("redis", server.url, server)
        return
    folder = short_folder()
    try:
        yield Shared("embedded", folder, None)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    ("kind", "name"), [*ON_SERVERS, pytest.param("redis", "waitress", id="redis-waitress")]
)
def test_any_request_the_server_accepts_reaches_a_runtime_as_it_reaches_the_host(
    kind: str, name: str, request: pytest.FixtureRequest
) -> None:
    """Found in review: all request headers crossed as one line the endpoint refused over
    64 KiB, so about 12 KB of UTF-8 cookies or two 40 KB headers were 200 in the host and
    431 with an HTML page of the standard library when forwarded. Now a runtime's listener
    gets what the host's would (or both the server's own refusal)."""
    with (
        directory(kind, request) as shared,
        boundary_runtime(shared),
        host(shared, name) as server,
    ):
        accepted = 0
        for case, headers in LARGE_HEADERS.items():
            remote = get(server.port, "/proxy/sessions/headers/", headers)
            local = get(server.port, "/proxy/sessions/headers-local/", headers)
            assert (remote.status, remote.body) == (local.status, local.body), case
            if remote.status == 200:
                accepted += 1
                assert b"<html" not in remote.body.lower()
        # waitress takes all of them (up to 256 KB of headers): the test is never empty.
        assert accepted == len(LARGE_HEADERS) or name != "waitress"


# -- a client that goes away -------------------------------------------------------------------


def read_then_leave(port: int, path: str) -> None:
    """Start reading an endless stream, then close the connection without a word."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = 0
        while received < 1 << 20:
            received += len(client.recv(65536))


def lines_of_note(log: str) -> list[str]:
    """This package's lines above DEBUG, and tracebacks."""
    return [
        line
        for line in log.splitlines()
        if "Traceback" in line or (" wsgi_proxy_listen" in line and not line.startswith("DEBUG"))
    ]


@pytest.mark.parametrize(
    ("kind", "name"),
    [*ON_SERVERS, pytest.param("redis", "gunicorn-gthread", id="redis-gunicorn-gthread")],
)
def test_a_client_that_leaves_a_relayed_stream_is_no_error_on_either_side(
    kind: str, name: str, request: pytest.FixtureRequest
) -> None:
    """Found in review: a client that closed a forwarded stream made the owner log an ERROR
    with a traceback, about ten lines each time; the same in the host's process logged
    nothing. Now at most one DEBUG line on each side, and the runtime stops the stream."""
    with (
        directory(kind, request) as shared,
        boundary_runtime(shared) as runtime,
        host(shared, name) as server,
    ):
        for _ in range(3):
            read_then_leave(server.port, "/proxy/sessions/endless-local/")
            read_then_leave(server.port, "/proxy/sessions/endless/")
        deadline = time.monotonic() + 10
        while runtime.log_text().count("a hop connection ended") < 3:
            assert time.monotonic() < deadline, runtime.log_text()
            time.sleep(0.05)
        assert get(server.port, "/proxy/sessions/headers/").status == 200, "still serving"
        time.sleep(0.5)  # what either side would log late
        runtime_log, server_log = runtime.log_text(), host_log(server)
    assert lines_of_note(runtime_log) == []
    ours = [line for line in runtime_log.splitlines() if " wsgi_proxy_listen" in line]
    ended = [line for line in ours if "a hop connection ended" in line]
    assert ended == ["DEBUG wsgi_proxy_listen: a hop connection ended: HostGone()"] * 3
    assert [line for line in ours if not line.startswith("DEBUG ")] == []
    assert lines_of_note(server_log) == []


# -- connections without the secret --------------------------------------------------------------


def endpoint(shared: Shared, session: str) -> socket.socket:
    """A connection to the internal endpoint of the owner of ``session``, saying nothing."""
    address = shared.endpoint_of(session)
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(address)
        return sock
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no thread count for {pid}")


def test_silent_connections_hold_no_thread_and_keep_no_hop_out(shared: Shared) -> None:
    """Found in review: the internal endpoint gave each connection a slot and a thread before
    any authentication and waited 60 s for it: 530 silent connections from anyone made every
    forwarded request on a new hop connection 503. Now they hold no thread, are dropped
    within two seconds (the oldest first), and a host that connects meanwhile is served."""
    with boundary_runtime(shared) as runtime:
        before = threads_of(runtime.pid)
        silent = [endpoint(shared, "hostile") for _ in range(530)]
        try:
            assert threads_of(runtime.pid) <= before + 2
            with host(shared) as server:  # its hop connections are all new
                began = time.monotonic()
                statuses = [get(server.port, "/proxy/sessions/headers/").status for _ in range(20)]
                assert statuses == [200] * 20
                assert time.monotonic() - began < 5
            deadline = time.monotonic() + 5
            for sock in silent:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                assert sock.recv(1) == b"", "a silent connection was kept"
        finally:
            for sock in silent:
                sock.close()
