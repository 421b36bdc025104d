"""The directories in one process: two registries on one directory stand for two workers.
Each test runs on the embedded directory (a folder) and on Redis (a real redis-server)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import typing as t
from collections.abc import Iterator

import pytest
from werkzeug.test import Client

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.cluster import EmbeddedDirectory

from .conftest import Host
from .test_cluster import NO_REDIS, REDIS, SECRET, RedisServer, short_folder

pytestmark = pytest.mark.timeout(60)


class Workers:
    """Makes registries that share one directory, each serving through a middleware."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        self.made: list[t.Any] = []

    def directory(self, **options: t.Any) -> t.Any:
        if self.kind == "embedded":
            directory = EmbeddedDirectory(self.name, lease=3, **options)
        else:
            from wsgi_proxy_listen.cluster import RedisDirectory

            directory = RedisDirectory(self.name, secret=SECRET, lease=3, **options)
        self.made.append(directory)
        return directory

    def worker(self, **options: t.Any) -> tuple[t.Any, Registry, Client]:
        directory = self.directory(**options)
        registry = Registry(directory=directory)
        client = Client(ProxyMiddleware(Host(), registry))
        client.get("/", buffered=True)  # the first request starts the directory's threads
        return directory, registry, client

    def close(self) -> None:
        for directory in self.made:
            directory.close()


@pytest.fixture(params=["embedded", "redis"])
def workers(request: pytest.FixtureRequest) -> Iterator[Workers]:
    if request.param == "redis":
        if REDIS is None:
            pytest.skip(NO_REDIS)
        server = RedisServer()
        server.start()
        made = Workers("redis", server.url)
        try:
            yield made
        finally:
            made.close()
            server.stop()
        return
    folder = short_folder()
    made = Workers("embedded", folder)
    try:
        yield made
    finally:
        made.close()
        shutil.rmtree(folder, ignore_errors=True)


def text(answer: str) -> t.Callable[[t.Any], str]:
    return lambda request: answer


def test_reachable_and_withdrawn(workers: Workers) -> None:
    _, a, _ = workers.worker()
    _, _, b = workers.worker()
    handle = a.listen(text("from a"), session="s1")
    assert b.get("/proxy/sessions/s1/", buffered=True).data == b"from a"
    handle.close()
    assert b.get("/proxy/sessions/s1/", buffered=True).status_code == 404


def test_a_late_take_over_notice_does_not_drop_a_newer_listener(workers: Workers) -> None:
    """A owns s1, B takes it over, A takes it back at once: A may hear of B's take-over
    after that, and must not drop its newer listener (the table names A again)."""
    _, a, _ = workers.worker()
    _, b_reg, b = workers.worker()
    for round_ in range(5):
        a.listen(text("a-old"), session="s1")
        b_reg.listen(text("b"), session="s1")
        newest = a.listen(text(f"a-new-{round_}"), session="s1")
        time.sleep(1.2)
        assert a.get("s1") is newest
        assert b_reg.get("s1") is None
        assert b.get("/proxy/sessions/s1/", buffered=True).data == f"a-new-{round_}".encode()


def test_a_failed_auto_start_is_retried_by_the_next_request(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    """The cluster-wide start lock is released when a start ends, so the next request
    starts again instead of waiting for the lock to expire."""
    caplog.set_level(logging.ERROR, logger="wsgi_proxy_listen")
    _, registry, client = workers.worker()
    attempts: list[int] = []

    def start() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("the first start fails")
        registry.listen(text("started"), session="f1", app="flaky")

    registry.register_app("flaky", start=start, start_timeout=20)
    assert client.get("/proxy/apps/flaky/", buffered=True).status_code == 503
    second = client.get("/proxy/apps/flaky/", buffered=True)
    assert (second.status_code, second.data) == (200, b"started")
    assert attempts == [1, 1]
    assert "start of app 'flaky' raised" in caplog.text


def test_an_app_started_in_one_worker_answers_in_another(workers: Workers) -> None:
    _, a, a_client = workers.worker()
    _, b, b_client = workers.worker()

    def start() -> None:
        a.listen(text("dashboard in a"), session="d1", app="dash")

    a.register_app("dash", start=start)
    b.register_app("dash", start=lambda: None)
    assert a_client.get("/proxy/apps/dash/", buffered=True).data == b"dashboard in a"
    for path in ["/proxy/apps/dash/", "/proxy/apps/dash/sessions/d1/", "/proxy/sessions/d1/"]:
        assert b_client.get(path, buffered=True).data == b"dashboard in a", path
    assert b_client.get("/proxy/apps/other/sessions/d1/", buffered=True).status_code == 404


def test_concurrent_listens_in_one_worker_stay_published(workers: Workers) -> None:
    """Two threads of one worker listen() for the same session at once, many times: the
    session stays reachable from the other worker, by the listener that won."""
    _, a, _ = workers.worker()
    _, _, b = workers.worker()
    for round_ in range(30):
        session = f"race-{round_}"
        threads = [
            threading.Thread(
                target=a.listen, args=(text(f"{session} {n}"),), kwargs={"session": session}
            )
            for n in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    time.sleep(1.5)  # one heartbeat (lease 3 s / 3) writes again any entry a loser wrote
    for round_ in range(30):
        session = f"race-{round_}"
        answer = b.get(f"/proxy/sessions/{session}/", buffered=True)
        assert answer.status_code == 200
        assert answer.data == t.cast(t.Any, a.get(session)).handler(None).encode()


def test_the_hop_keeps_the_request_as_sent(workers: Workers) -> None:
    """What the owner's listener sees is what the receiving worker got: the raw query, the
    client's Host, its headers and nothing added, the same SCRIPT_NAME and PATH_INFO."""
    seen: list[dict[str, t.Any]] = []

    def record(request: t.Any) -> str:
        seen.append(dict(request.environ))
        return "ok"

    _, a, _ = workers.worker()
    _, _, b = workers.worker()
    a.listen(record, session="echo")
    query = 'x={1}&y="q"&z=a|b&ids[]=1&w=%C3%A9&v=`t`^'
    answer = b.get(
        f"/proxy/sessions/echo/p%20q?{query}",
        buffered=True,
        headers={"X-Test": "1", "Cookie": "a=b"},
        environ_overrides={
            "SCRIPT_NAME": "/host",
            "REQUEST_URI": "/host/proxy/sessions/echo/p%20q",
            "REMOTE_ADDR": "10.1.2.3",
            "wsgi.url_scheme": "https",
        },
    )
    assert answer.status_code == 200
    environ = seen[-1]
    assert environ["QUERY_STRING"] == query
    assert environ["SCRIPT_NAME"] == "/host/proxy/sessions/echo"
    assert environ["PATH_INFO"] == "/p q"
    assert environ["HTTP_HOST"] == "localhost"
    assert environ["HTTP_X_TEST"] == "1"
    assert environ["REMOTE_ADDR"] == "10.1.2.3"
    assert environ["wsgi.url_scheme"] == "https"
    assert "HTTP_USER_AGENT" not in environ
    assert "HTTP_ACCEPT_ENCODING" not in environ
    assert not {name.lower() for name, _ in answer.headers} & {"via", "server", "date"}


class _Aborting:
    """A request body whose client goes away after the first chunk."""

    def __init__(self) -> None:
        self.sent = False

    def read(self, size: int = -1) -> bytes:
        if self.sent:
            raise OSError("the client went away")
        self.sent = True
        return b"x" * 1000


def test_a_client_that_aborts_its_upload_is_not_the_owners_fault(workers: Workers) -> None:
    _, a, _ = workers.worker()
    _, _, b = workers.worker()
    a.listen(lambda request: str(len(request.get_data())), session="up")
    answer = b.post(
        "/proxy/sessions/up/",
        environ_overrides={
            "wsgi.input": _Aborting(),
            "HTTP_TRANSFER_ENCODING": "chunked",
            "wsgi.input_terminated": True,
        },
        buffered=True,
    )
    assert answer.status_code == 400
    assert b.get("/proxy/sessions/up/", buffered=True).status_code == 200, "still listed"


def test_chunked_uploads_and_the_body_limit_through_the_hop(workers: Workers) -> None:
    directory = workers.directory()
    a = Registry(directory=directory)
    Client(ProxyMiddleware(Host(), a, max_content_length=10_000)).get("/")
    b_registry = Registry(directory=workers.directory())
    b = Client(ProxyMiddleware(Host(), b_registry, max_content_length=10_000))
    b.get("/")
    a.listen(lambda request: str(len(request.get_data())), session="up")
    chunked = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    small = b.post("/proxy/sessions/up/", data=b"y" * 9000, environ_overrides=chunked)
    assert (small.status_code, small.data) == (200, b"9000")
    large = b.post("/proxy/sessions/up/", data=b"y" * 20_000, environ_overrides=chunked)
    assert large.status_code == 413
    declared = b.post("/proxy/sessions/up/", data=b"y" * 20_000)
    assert declared.status_code == 413


def test_a_stale_cached_location_is_looked_up_again(workers: Workers) -> None:
    """B caches where s1 is; s1 closes in A and reopens in C without a take-over: B's next
    request finds A without it and goes to C."""
    _, a, _ = workers.worker()
    _, _, b = workers.worker()
    _, c, _ = workers.worker()
    a.listen(text("in a"), session="s1")
    assert b.get("/proxy/sessions/s1/", buffered=True).data == b"in a"
    a.close_session("s1")
    c.listen(text("in c"), session="s1")
    assert b.get("/proxy/sessions/s1/", buffered=True).data == b"in c"


def test_an_ipv6_advertise_host() -> None:
    if REDIS is None:
        pytest.skip(NO_REDIS)
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server = RedisServer()
    server.start()
    made = Workers("redis", server.url)
    try:
        directory, a, _ = made.worker(advertise_host="::1")
        assert directory.address.startswith("[::1]:")
        a.listen(text("over ipv6"), session="v6")
        _, _, b = made.worker()
        assert b.get("/proxy/sessions/v6/", buffered=True).data == b"over ipv6"
    finally:
        made.close()
        server.stop()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_does_not_keep_the_endpoint_socket(workers: Workers) -> None:
    """After a fork the child closes its copy of the parent's listening socket: otherwise,
    once the parent died, hop requests would still be accepted and never answered."""
    directory, a, _ = workers.worker()
    a.listen(text("parent"), session="p")
    assert _holds_listening_socket(os.getpid(), directory.address)
    child = os.fork()
    if child == 0:
        time.sleep(5)
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        inherited = True
        while inherited and time.monotonic() < deadline:
            inherited = _holds_listening_socket(child, directory.address)
            time.sleep(0.05)
        assert not inherited
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def _holds_listening_socket(pid: int, address: str) -> bool:
    """Whether ``pid`` has a listening socket bound to ``address`` (from /proc/net)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    if address.startswith("/"):
        with open("/proc/net/unix") as table:
            rows = [line.split() for line in table.read().splitlines()[1:]]
        # Columns: Num RefCount Protocol Flags Type St Inode Path; flag 00010000 = listening.
        return any(len(row) == 8 and row[7] == address and row[6] in inodes for row in rows)
    port = int(address.rpartition(":")[2])
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as table:
            for line in table.read().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rpartition(":")[2], 16) == port and fields[9] in inodes:
                    return True
    return False


# -- the embedded directory on its own ----------------------------------------------------------


def test_the_folder_is_created_closed_to_others() -> None:
    parent = short_folder()
    try:
        folder = os.path.join(parent, "new")
        EmbeddedDirectory(folder)
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    finally:
        shutil.rmtree(parent)


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        pytest.param("relative/path", "use an absolute path", id="relative"),
        pytest.param("/tmp/" + "x" * 120, "too long for Unix sockets", id="too-long"),
    ],
)
def test_unusable_folders_are_refused(folder: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddedDirectory(folder)


def test_a_folder_open_to_others_is_refused() -> None:
    folder = short_folder()
    try:
        os.chmod(folder, 0o755)
        with pytest.raises(ValueError, match="chmod 700"):
            EmbeddedDirectory(folder)
    finally:
        shutil.rmtree(folder)


def test_a_file_is_not_a_folder() -> None:
    folder = short_folder()
    try:
        path = os.path.join(folder, "file")
        open(path, "w").close()
        with pytest.raises(ValueError, match="cannot create the directory folder"):
            EmbeddedDirectory(path)
    finally:
        shutil.rmtree(folder)


def test_nothing_starts_before_the_first_request() -> None:
    """A directory named at import (as in a gunicorn master with --preload) opens no
    database, socket or thread until the process serves."""
    folder = short_folder()
    try:
        code = (
            "import sys, threading, os\n"
            "from wsgi_proxy_listen import Registry, ProxyMiddleware\n"
            f"registry = Registry(directory={folder!r})\n"
            "registry.listen(lambda request: 'x', session='boot')\n"
            "ProxyMiddleware(lambda e, s: [], registry)\n"
            "print(threading.active_count(), sorted(os.listdir(sys.argv[1])))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, folder], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "1 []"
    finally:
        shutil.rmtree(folder)
