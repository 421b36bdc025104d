"""The directories in one process: two registries on one directory stand for two workers.
Each test runs on the embedded directory (a folder) and on Redis (a real redis-server)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
from collections.abc import Iterator

import pytest
from werkzeug.test import Client

from wsgi_proxy_listen import Listener, ProxyMiddleware, Registry
from wsgi_proxy_listen.cluster import EmbeddedDirectory, Owner, SharedDirectory, embedded, store
from wsgi_proxy_listen.cluster.variables import namespace_for

from .support.cluster import NAMESPACE, NO_REDIS, REDIS, SECRET, RedisServer, short_folder
from .support.wsgi import Host, at

pytestmark = pytest.mark.timeout(60)


class Workers:
    """Makes registries that share one directory, each serving through a middleware."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        self.made: list[t.Any] = []

    def directory(self, **options: t.Any) -> t.Any:
        directory: SharedDirectory
        if self.kind == "embedded":
            directory = EmbeddedDirectory(self.name, lease=3, **options)
        else:
            from wsgi_proxy_listen.cluster import RedisDirectory

            directory = RedisDirectory(self.name, secret=SECRET, lease=3, **options)
        self.made.append(directory)
        return directory

    def worker(
        self,
        authenticate: t.Any = None,
        middleware: dict[str, t.Any] | None = None,
        **options: t.Any,
    ) -> tuple[t.Any, Registry, Client]:
        directory = self.directory(**options)
        registry = Registry(directory=directory)
        wrapped = ProxyMiddleware(Host(), registry, authenticate=authenticate, **(middleware or {}))
        client = Client(wrapped)
        client.get("/", buffered=True)  # the first request starts the directory's threads
        return directory, registry, client

    @contextlib.contextmanager
    def table(self) -> Iterator[sqlite3.Connection]:
        """The embedded directory's table, written to as another process would (one
        transaction, committed on leaving)."""
        path = os.path.join(self.name, "directory.sqlite3")
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            yield db

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


def test_a_start_that_registers_nothing_anywhere_is_logged(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_proxy_listen")
    _, registry, client = workers.worker()
    registry.register_app("lazy", start=lambda: None, start_timeout=20)
    assert client.get("/proxy/apps/lazy/", buffered=True).status_code == 503
    assert "start of app 'lazy' registered no session, here or in another process" in caplog.text


def test_a_start_whose_session_another_worker_registers_answers_the_first_request(
    workers: Workers,
) -> None:
    """A start that has another process listen (a runtime it launched): the first request
    is answered from there, not with a 503."""
    _, a, a_client = workers.worker()
    _, b, _ = workers.worker()
    a.register_app(
        "elsewhere", start=lambda: b.listen(text("from b"), session="e1", app="elsewhere")
    )
    answer = a_client.get("/proxy/apps/elsewhere/", buffered=True)
    assert (answer.status_code, answer.data) == (200, b"from b")


def test_the_generic_path_starts_anew_while_the_owner_withdraws_a_closed_session(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner closed the app's session (an idle shutdown) and has not withdrawn it
    yet: another worker's request on the generic path gets "not here" from the owner,
    waits for the withdrawal, and starts a new session instead of answering 404."""
    a_dir, a, _ = workers.worker()
    _, b, b_client = workers.worker()
    b.register_app("board", start=lambda: b.listen(text("new"), session="n1", app="board"))
    old = a.listen(text("old"), session="o1", app="board")
    assert b_client.get("/proxy/apps/board/", buffered=True).data == b"old"
    removed = type(a_dir).removed

    def slow_withdrawal(directory: t.Any, listener: t.Any) -> None:
        time.sleep(0.3)
        removed(directory, listener)

    monkeypatch.setattr(type(a_dir), "removed", slow_withdrawal)
    closing = threading.Thread(target=old.close)
    closing.start()
    time.sleep(0.05)  # closed locally, not yet withdrawn
    answer = b_client.get("/proxy/apps/board/", buffered=True)
    closing.join()
    assert (answer.status_code, answer.data) == (200, b"new")


def test_another_worker_starts_a_new_session_while_an_idle_one_stops(workers: Workers) -> None:
    """The owner withdraws a member found idle before its stop() runs: the generic path
    of every worker starts a new session instead of answering 503 while it stops."""
    _, a, _ = workers.worker()
    _, b, b_client = workers.worker()
    release = threading.Event()
    a.register_app("board", idle_timeout=1, stop=lambda session: release.wait(10))
    b.register_app("board", start=lambda: b.listen(text("new"), session="n1", app="board"))
    old = a.listen(text("old"), session="o1", app="board")
    assert b_client.get("/proxy/apps/board/", buffered=True).data == b"old"
    # The owner counts the forwarded request until its endpoint closed the answer,
    # which may be a moment after b has read it.
    deadline = time.monotonic() + 5
    while old.active and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert a.close_idle(now=time.monotonic() + 5) == [old]
        assert not old.closed, "its stop() runs"
        answer = b_client.get("/proxy/apps/board/", buffered=True)
        assert (answer.status_code, answer.data) == (200, b"new")
        assert b_client.get("/proxy/sessions/o1/", buffered=True).status_code == 404
    finally:
        release.set()


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


def test_the_apps_path_goes_to_another_member_when_the_newest_cannot_be_reached(
    workers: Workers,
) -> None:
    """The newest member's process refuses the connection (its endpoint gone, its lease
    still renewed: a partition, for Redis): a request without a body on the app's
    generic path goes to the member before it instead of a 502; one with a body, or on
    the member's own path, gets the 502."""
    _, older, _ = workers.worker()
    newest_directory, newest, _ = workers.worker()
    _, _, client = workers.worker()
    older.listen(text("older member"), session="m1", app="dash")
    time.sleep(0.01)  # joined later: the newest
    newest.listen(text("newest member"), session="m2", app="dash")
    assert client.get("/proxy/apps/dash/", buffered=True).data == b"newest member"
    newest_directory._endpoint.close()  # unreachable from now on
    assert client.post("/proxy/apps/dash/", data=b"x").status_code == 502
    # No body, but a method that may have run already when a connection closes.
    assert client.delete("/proxy/apps/dash/").status_code == 502
    if workers.kind == "redis":  # the refused owner renews its lease: it stays listed
        assert client.get("/proxy/sessions/m2/").status_code == 502
    answer = client.get("/proxy/apps/dash/", buffered=True)
    assert (answer.status_code, answer.data) == (200, b"older member")


def test_another_member_on_other_terms_is_not_a_fallback(workers: Workers) -> None:
    """Who may reach the app was checked for the unreached member's terms: a member that
    declares others is not where the request goes (a 502 instead)."""
    _, older, _ = workers.worker()
    newest_directory, newest, _ = workers.worker()
    _, _, client = workers.worker()
    older.listen(text("only alice"), session="m1", app="dash", access=["alice"])
    time.sleep(0.01)
    newest.listen(text("newest member"), session="m2", app="dash")
    newest_directory._endpoint.close()
    assert client.get("/proxy/apps/dash/").status_code == 502


def test_the_access_a_listener_declares_holds_in_every_worker(workers: Workers) -> None:
    """The worker that receives a request decides who may reach a listener of another,
    from the access its owner published; the owner's listener gets the user it let in as
    REMOTE_USER, and never one that the receiving worker's server set."""
    users = {"a": "alice", "b": "bob"}

    def login(environ: dict[str, t.Any]) -> str | None:
        return users.get(environ.get("HTTP_X_USER", ""))

    _, a, _ = workers.worker(authenticate=login)
    _, _, b = workers.worker(authenticate=login)
    a.listen(lambda request: f"hello {request.remote_user}", session="s", access={"alice"})
    a.listen(lambda request: f"public {request.remote_user}", session="p")
    forged = {"REMOTE_USER": "admin"}

    def get(path: str, user: str) -> tuple[int, bytes]:
        response = b.get(path, headers={"X-User": user}, environ_overrides=forged, buffered=True)
        return response.status_code, response.data

    assert get("/proxy/sessions/s/", "")[0] == 401
    assert get("/proxy/sessions/s/", "b")[0] == 403
    assert get("/proxy/sessions/s/", "a") == (200, b"hello alice")
    assert get("/proxy/sessions/p/", "a") == (200, b"public None")


def test_an_app_access_holds_in_a_worker_that_has_no_member(workers: Workers) -> None:
    users = {"a": "alice", "b": "bob"}

    def login(environ: dict[str, t.Any]) -> str | None:
        return users.get(environ.get("HTTP_X_USER", ""))

    _, a, _ = workers.worker(authenticate=login)
    _, b, b_client = workers.worker(authenticate=login)
    for registry in (a, b):
        registry.register_app("dash", access={"alice"})
    a.listen(text("dashboard in a"), session="d1", app="dash")
    for path in ["/proxy/apps/dash/", "/proxy/apps/dash/sessions/d1/", "/proxy/sessions/d1/"]:
        for user, status in (("", 401), ("b", 403), ("a", 200)):
            response = b_client.get(path, headers={"X-User": user}, buffered=True)
            assert response.status_code == status, (path, user)


def test_the_sandbox_a_listener_declares_is_applied_by_the_receiving_worker(
    workers: Workers,
) -> None:
    """The receiving worker adds the sandbox's policy to the answer of a listener of
    another process: the owner may run code that would leave it out."""
    from wsgi_proxy_listen.terms import SANDBOX_POLICY

    _, a, _ = workers.worker()
    _, _, b = workers.worker()
    a.listen(text("boxed"), session="boxed", sandbox=True)
    a.listen(text("open"), session="open")
    boxed = b.get("/proxy/sessions/boxed/", buffered=True)
    assert boxed.data == b"boxed"
    assert boxed.headers.getlist("Content-Security-Policy") == [SANDBOX_POLICY]
    assert "Content-Security-Policy" not in b.get("/proxy/sessions/open/", buffered=True).headers


def test_a_token_is_good_once_across_workers_and_its_cookie_in_every_one(
    workers: Workers,
) -> None:
    """Per-session origins with a directory: a token taken by one worker is refused by
    another (the used ones are in the directory), and the login cookie it gave is good in
    every worker, for a listener of any process."""
    from wsgi_proxy_listen.origins import label

    def login(environ: dict[str, t.Any]) -> str | None:
        return environ.get("HTTP_X_USER") or None

    options = {
        "listener_domain": "listeners.test",
        "listener_secret": "listener-secret",
        "public_url": "http://host.test",
    }
    _, a, a_client = workers.worker(login, options)
    _, _, b_client = workers.worker(login, options)
    a.listen(lambda request: f"hello {request.remote_user}", session="s", access={"alice"})
    navigation = {"Accept": "text/html", "X-User": "alice"}
    there = at(b_client, "http://host.test/proxy/sessions/s/", headers=navigation)
    token_url = there.headers["Location"]
    assert token_url.startswith(f"http://{label('session', 's')}.listeners.test/")
    taken = at(a_client, token_url)
    assert taken.status_code == 302
    assert at(b_client, token_url).status_code == 403, "replayed in another worker"
    name, _, value = taken.headers["Set-Cookie"].split(";")[0].partition("=")
    b_client.set_cookie(name, value, domain=f"{label('session', 's')}.listeners.test")
    page = at(b_client, taken.headers["Location"])
    assert (page.status_code, page.get_data()) == (200, b"hello alice")
    # A process that took a token ends (a reload, max_requests): the token stays used.
    workers.made[0].leave()
    assert at(b_client, token_url).status_code == 403, "replayed once its taker left"


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


def test_nothing_starts_before_the_first_request() -> None:
    """A directory named at import in a gunicorn master with --preload opens no database,
    socket or thread until the process serves, even for a listener registered before the
    app is wrapped (a server's process is no runtime)."""
    folder = short_folder()
    try:
        code = (
            "import sys, threading, os\n"
            "import gunicorn.arbiter  # what a gunicorn master has loaded\n"
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


# -- found in review: a live owner is never taken for gone, answers are framed exactly ---------


def deny_without_reading(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
    start_response("401 Unauthorized", [("Content-Length", "6")])
    return [b"denied"]


def test_an_early_answer_to_a_big_upload_reaches_the_client(workers: Workers) -> None:
    """A listener that answers 401 without reading an 8 MB upload: its answer is relayed,
    and its owner, alive, keeps its socket and its other sessions."""
    a_dir, a, _ = workers.worker()
    _, _, b = workers.worker()
    a.listen(deny_without_reading, session="s1", kind="wsgi")
    a.listen(text("other"), session="s2")
    answer = b.post("/proxy/sessions/s1/", data=b"x" * (8 << 20), buffered=True)
    assert (answer.status_code, answer.data) == (401, b"denied")
    for _ in range(3):
        assert b.get("/proxy/sessions/s2/", buffered=True).data == b"other"
    if workers.kind == "embedded":
        assert os.path.exists(a_dir.address)


def test_a_body_longer_than_its_length_never_answers_another_request(workers: Workers) -> None:
    """The extra bytes of a listener that writes past its Content-Length are cut: they
    must not become the answer to the next request on the pooled hop connection."""
    _, a, _ = workers.worker()
    _, _, b = workers.worker()

    def overlong(environ: dict[str, t.Any], start_response: t.Any) -> t.Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "5")])
        yield b"hello"
        time.sleep(0.3)  # the receiving side has read its five bytes and pooled the connection
        yield b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nnot victim's!"

    a.listen(overlong, session="attacker", kind="wsgi")
    a.listen(text("victim's own page"), session="victim")
    assert b.get("/proxy/sessions/attacker/", buffered=True).data == b"hello"
    time.sleep(0.5)
    for _ in range(3):
        assert b.get("/proxy/sessions/victim/", buffered=True).data == b"victim's own page"


def test_a_body_shorter_than_its_length_is_cut_not_passed_as_whole(workers: Workers) -> None:
    _, a, _ = workers.worker()
    _, _, b = workers.worker()

    def short(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "100")])
        return [b"only ten b"]

    a.listen(short, session="short", kind="wsgi")
    a.listen(text("fine"), session="fine")
    with pytest.raises(ConnectionResetError):  # cut: the server closes quietly
        b.get("/proxy/sessions/short/", buffered=True)
    assert b.post("/proxy/sessions/fine/", data=b"x" * 1000, buffered=True).data == b"fine"
    with b.get("/proxy/sessions/short/") as response:  # unbuffered: the head comes whole
        assert response.status_code == 200, "its owner is still listed"


class _EndsEarly:
    """A request body whose client disconnects: reads return b"" before its length."""

    def __init__(self) -> None:
        self.sent = False

    def read(self, size: int = -1) -> bytes:
        if self.sent:
            return b""
        self.sent = True
        return b"x" * 1000


def test_an_upload_that_ends_early_is_the_clients_fault(workers: Workers) -> None:
    """The body ends before its declared length (gunicorn's reader does this when the
    client goes away): 400 at once, not a hop that waits for the rest until 504."""
    a_dir = workers.directory(read_timeout=5)
    a = Registry(directory=a_dir)
    Client(ProxyMiddleware(Host(), a)).get("/")
    b_registry = Registry(directory=workers.directory(read_timeout=5))
    b = Client(ProxyMiddleware(Host(), b_registry))
    b.get("/")
    a.listen(lambda request: str(len(request.get_data())), session="up")
    answer = b.post(
        "/proxy/sessions/up/",
        environ_overrides={"wsgi.input": _EndsEarly(), "CONTENT_LENGTH": "5000"},
        buffered=True,
    )
    assert answer.status_code == 400


def lose_lease(workers: Workers, owner: str) -> None:
    """What another process does to an owner it found silent (its lease ran out): its
    lease and its entries go."""
    if workers.kind == "embedded":
        with workers.table() as db:
            db.execute("DELETE FROM sessions WHERE owner = ?", (owner,))
            db.execute("DELETE FROM owners WHERE owner = ?", (owner,))
    else:
        import redis

        from wsgi_proxy_listen.cluster import redis_scripts

        client = redis.Redis.from_url(workers.name)
        try:
            assert client.scard(f"{{{NAMESPACE}}}:owned:{owner}")
            forget = client.register_script(redis_scripts.FORGET)
            forget(keys=[f"{{{NAMESPACE}}}:"], args=[owner])
        finally:
            client.close()


def test_entries_lost_with_the_lease_are_written_again(workers: Workers) -> None:
    """An outage or a pause longer than the lease: other processes clean up after the
    owner; its next renewal finds its lease ran out and publishes its entries again."""
    directory, a, _ = workers.worker()
    _, _, b = workers.worker()
    a.listen(text("back"), session="kept")
    assert b.get("/proxy/sessions/kept/", buffered=True).data == b"back"
    lose_lease(workers, directory.owner)
    deadline = time.monotonic() + 5  # a renewal every second (lease 3 s)
    while "kept" not in [entry.session for entry in directory.entries()]:
        assert time.monotonic() < deadline, "never written again"
        time.sleep(0.05)
    assert b.get("/proxy/sessions/kept/", buffered=True).data == b"back"


def test_a_listener_closed_while_its_entries_are_written_again_is_taken_out(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() between the heartbeat's snapshot and its writing the entries again (the
    lease had run out): the entry written again must be taken back out."""
    directory: SharedDirectory = workers.directory()
    republish = type(directory)._store_republish
    closed = threading.Event()
    handles: list[Listener] = []

    def close_first(self: t.Any, entries: dict[str, t.Any]) -> list[str]:
        if self is directory and "s1" in entries and not closed.is_set():
            handles[0].close()  # as if another thread closed it just now
            closed.set()
        return republish(self, entries)

    # Before the registry attaches: the directory's parts take its store's methods then.
    monkeypatch.setattr(type(directory), "_store_republish", close_first)
    a = Registry(directory=directory)
    Client(ProxyMiddleware(Host(), a)).get("/")
    _, b, b_client = workers.worker()
    b.register_app("nb", start=lambda: b.listen(text("started in b"), session="fresh", app="nb"))
    handles.append(a.listen(text("old"), session="s1", app="nb"))
    lose_lease(workers, directory.owner)
    assert closed.wait(5)
    time.sleep(1.5)  # the heartbeat ended its round
    answer = b_client.get("/proxy/apps/nb/", buffered=True)
    assert answer.data == b"started in b", "the closed member was no longer listed"


def test_a_locked_table_costs_a_fresh_worker_nothing() -> None:
    """A writer stuck in its transaction (a paused process) when a worker serves its first
    request: the host app answers, and the listener is published once the lock is gone."""
    folder = short_folder()
    made = Workers("embedded", folder)
    try:
        _, _, observer = made.worker()  # creates the table
        stuck = sqlite3.connect(os.path.join(folder, "directory.sqlite3"), isolation_level=None)
        stuck.execute("BEGIN IMMEDIATE")
        directory = made.directory()
        registry = Registry(directory=directory)
        client = Client(ProxyMiddleware(Host(), registry))
        assert client.get("/", buffered=True).data == b"host"
        registry.listen(text("published later"), session="late")
        assert client.get("/", buffered=True).data == b"host"
        stuck.execute("ROLLBACK")
        stuck.close()
        deadline = time.monotonic() + 5
        answer = observer.get("/proxy/sessions/late/", buffered=True)
        while answer.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            answer = observer.get("/proxy/sessions/late/", buffered=True)
        assert answer.data == b"published later"
    finally:
        made.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_busy_table_is_not_down(caplog: pytest.LogCaptureFixture) -> None:
    """A writer that holds the table past the busy timeout (a paused process): other
    workers' lookups go on (readers never wait in WAL mode), nothing is declared
    unreachable, and a listen() meanwhile is published once the table is free."""
    caplog.set_level(logging.WARNING, logger="wsgi_proxy_listen")
    folder = short_folder()
    made = Workers("embedded", folder)
    try:
        _, owner, _ = made.worker()
        owner.listen(text("kept"), session="kept")
        _, writer, observer = made.worker()
        stuck = sqlite3.connect(os.path.join(folder, "directory.sqlite3"), isolation_level=None)
        stuck.execute("BEGIN IMMEDIATE")
        began = time.monotonic()
        writer.listen(text("published later"), session="late")
        waited = time.monotonic() - began
        for _ in range(3):
            assert observer.get("/proxy/sessions/kept/", buffered=True).data == b"kept"
        stuck.execute("ROLLBACK")
        stuck.close()
        deadline = time.monotonic() + 5
        while observer.get("/proxy/sessions/late/", buffered=True).status_code != 200:
            assert time.monotonic() < deadline, "never published"
            time.sleep(0.1)
        assert waited < embedded.BUSY_TIMEOUT + 1
        assert "cannot be reached" not in caplog.text
    finally:
        made.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_an_entry_of_another_version_is_skipped_and_said_once(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    """A later release wrote an entry this one cannot read: it is not misread, it is
    skipped as if it were not there, and one log line says why."""
    caplog.set_level(logging.ERROR, logger="wsgi_proxy_listen")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(store, "_warned_versions", set())
    try:
        directory, a, _ = workers.worker()
        _, _, b = workers.worker()
        a.listen(text("readable"), session="s1")
        future = json.dumps({"v": 99, "owner": directory.owner, "place": "elsewhere"})
        if workers.kind == "embedded":
            with workers.table() as db:
                db.execute("UPDATE sessions SET record = ? WHERE session = 's1'", (future,))
        else:
            import redis

            client = redis.Redis.from_url(workers.name)
            client.set(f"{{{NAMESPACE}}}:session:s1", future)
            client.close()
        for _ in range(2):
            assert b.get("/proxy/sessions/s1/", buffered=True).status_code == 404
        assert "s1" not in [entry.session for entry in directory.entries()]
        lines = [r for r in caplog.records if "version 99" in r.getMessage()]
        assert len(lines) == 1, caplog.text
    finally:
        monkeypatch.undo()


def test_a_table_laid_out_by_a_later_release_is_refused_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_proxy_listen")
    folder = short_folder()
    try:
        with contextlib.closing(sqlite3.connect(os.path.join(folder, "directory.sqlite3"))) as db:
            db.execute(f"PRAGMA user_version = {embedded.SCHEMA + 1}")
        made = Workers("embedded", folder)
        _, _, client = made.worker()
        assert client.get("/proxy/sessions/any/", buffered=True).status_code == 503
        assert f"has layout {embedded.SCHEMA + 1}" in caplog.text
        assert "run the same release in every process" in caplog.text
        made.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# The table as the releases before wrote it (layout 2; layout 1 had no records, no
# new owners and no version): sessions in a table of rowids.
_LAYOUT_2 = """
CREATE TABLE owners (
    owner TEXT PRIMARY KEY, pid INTEGER NOT NULL, address TEXT NOT NULL,
    expires REAL NOT NULL, started REAL NOT NULL);
CREATE TABLE sessions (
    session TEXT PRIMARY KEY, owner TEXT NOT NULL, app TEXT, joined REAL NOT NULL, record TEXT);
CREATE INDEX sessions_by_owner ON sessions (owner);
CREATE INDEX sessions_by_app ON sessions (app, joined);
CREATE TABLE takeovers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL, old_owner TEXT NOT NULL,
    at REAL NOT NULL, new_owner TEXT);
CREATE INDEX takeovers_by_owner ON takeovers (old_owner, id);
CREATE TABLE locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
CREATE TRIGGER sessions_taken_over BEFORE INSERT ON sessions
WHEN EXISTS (SELECT 1 FROM sessions WHERE session = NEW.session AND owner <> NEW.owner)
BEGIN
    INSERT INTO takeovers (session, old_owner, at, new_owner)
    SELECT session, owner, NEW.joined, NEW.owner FROM sessions WHERE session = NEW.session;
END;
PRAGMA user_version = 2;
"""


@pytest.mark.parametrize("layout", [1, 2])
def test_a_table_of_an_earlier_layout_is_brought_to_this_one_with_its_rows(layout: int) -> None:
    """A table that an earlier release laid out (sessions in a table of rowids, an index
    of every app) is laid out anew, sessions kept by their id, when a process of this
    release opens it: its rows are kept, and a take-over is still noticed."""
    folder = short_folder()
    made = Workers("embedded", folder)
    try:
        path = os.path.join(folder, "directory.sqlite3")
        old = "1-aaaaaaaaaa"
        rows: list[tuple[t.Any, ...]] = [
            ("kept", old, None, 5.0, json.dumps({"v": 1, "owner": old})),
            ("member", old, "board", 6.0, json.dumps({"v": 1, "owner": old, "app": "board"})),
        ]
        script = _LAYOUT_2
        if layout == 1:  # no record, no new owner, no trigger, no version
            script = script.replace(", record TEXT", "").replace(", new_owner TEXT", "")
            script = script[: script.index("CREATE TRIGGER")]
            rows = [row[:4] for row in rows]
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.executescript(script)
            db.execute("INSERT INTO owners VALUES (?, 1, ?, 1e12, 0)", (old, "/nowhere.sock"))
            db.executemany(f"INSERT INTO sessions VALUES ({', '.join('?' * len(rows[0]))})", rows)
        directory, registry, _ = made.worker()
        registry.listen(text("new"), session="taken")
        with made.table() as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == embedded.SCHEMA == 3
            laid_out = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
            kept = db.execute(
                "SELECT * FROM sessions WHERE owner = ? ORDER BY session", (old,)
            ).fetchall()
        assert laid_out["sessions"].endswith("WITHOUT ROWID")
        assert laid_out["sessions_by_app"].endswith("WHERE app IS NOT NULL")
        assert "sessions_by_owner" in laid_out
        assert "sessions_before_3" not in laid_out
        assert "sessions_taken_over" in laid_out
        assert kept == [row + (None,) * (5 - len(row)) for row in sorted(rows)]
        if layout == 2:  # an app's member is found through the new index
            found = directory.current("board")
            assert (found.session, found.owner) == ("member", old)
        # The trigger came back with the table: a session published by another owner is a
        # take-over, which its old owner hears of.
        registry.listen(text("mine now"), session="kept")
        with made.table() as db:
            notices = db.execute("SELECT session, old_owner FROM takeovers").fetchall()
        assert notices == [("kept", old)]
    finally:
        made.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_after_using_the_table_takes_its_own_file_locks() -> None:
    """SQLite connections must not cross a fork: the child would believe it holds the
    parent's file locks and take none. A fresh process and a forked child hold the same."""
    folder = short_folder()
    made = Workers("embedded", folder)
    try:
        directory, registry, _ = made.worker()
        registry.listen(text("x"), session="x")
        probe = {"CONTENT_LENGTH": "1"}  # a lookup in the table itself
        directory.locate("y", probe)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            directory.locate("y", probe)
            os.write(write, str(len(_file_locks(os.getpid()))).encode())
            os._exit(0)
        os.waitpid(child, 0)
        in_child = int(os.read(read, 100))
        os.close(read)
        os.close(write)
        code = (
            "import os, sys; from wsgi_proxy_listen import Registry, ProxyMiddleware\n"
            f"r = Registry(directory={folder!r}); ProxyMiddleware(lambda e, s: [], r)\n"
            "r.directory.locate('y', {'CONTENT_LENGTH': '1'})\n"
            "print(sum(l.split()[4] == str(os.getpid()) for l in open('/proc/locks')))\n"
        )
        fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert in_child >= 1
        assert in_child == int(fresh.stdout)
    finally:
        made.close()
        shutil.rmtree(folder, ignore_errors=True)


def _file_locks(pid: int) -> list[str]:
    with open("/proc/locks") as table:
        return [line for line in table if line.split()[4] == str(pid)]


def test_entries_list_every_live_listener_with_its_process(workers: Workers) -> None:
    a_dir, a, _ = workers.worker()
    b_dir, b, _ = workers.worker()
    before = time.time()
    a.listen(text("a"), session="in-a", app="board")
    b.listen(text("b"), session="in-b")
    entries = {entry.session: entry for entry in a_dir.entries()}
    assert entries.keys() == {"in-a", "in-b"}
    assert entries["in-a"].app == "board"
    assert entries["in-a"].owner == a_dir.owner
    assert entries["in-b"].owner == b_dir.owner
    assert entries["in-a"].pid == entries["in-b"].pid == os.getpid()
    assert entries["in-a"].address == a_dir.address
    assert before - 1 <= entries["in-a"].since <= time.time()
    time.sleep(1.5)  # a heartbeat (lease 3 s / 3) renews, and keeps the time of publication
    assert b_dir.entries()[0].since == entries["in-a"].since
    b.close_session("in-b")
    assert [entry.session for entry in a_dir.entries()] == ["in-a"]


def test_withdrawing_an_entry_leaves_a_newer_one_of_the_same_owner(workers: Workers) -> None:
    """A withdrawal that comes late (the listener was replaced meanwhile, by one of the
    same process in another app) removes the entry it names only, at the table."""
    directory, registry, _ = workers.worker()
    registry.listen(text("a"), session="s", app="first")
    registry.listen(text("b"), session="s", app="second")
    stale = Owner(directory.owner, directory.address, "first")
    directory._store_withdraw("s", stale)  # what a late withdrawal does
    assert [(entry.session, entry.app) for entry in directory.entries()] == [("s", "second")]
    assert directory._store_current("second") is not None


def test_processes_that_open_a_fresh_table_together_all_get_it() -> None:
    """Found when workers started together: setting a fresh table up (WAL, the schema)
    met a lock that SQLite reports at once, and the directory counted as down (503s)."""
    folder = short_folder()
    try:
        code = (
            "import sys, time\n"
            "from wsgi_proxy_listen.cluster import EmbeddedDirectory\n"
            "directory = EmbeddedDirectory(sys.argv[1])\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "print(len(directory.entries()))\n"
        )
        start = f"{time.time() + 1.5:.3f}"
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", code, folder, start],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(8)
        ]
        outputs = [process.communicate(timeout=30) for process in processes]
        assert [out.strip() for out, _ in outputs] == ["0"] * 8, [err for _, err in outputs]
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]"])
def test_an_address_of_every_interface_is_not_an_advertised_one(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsgi_proxy_listen.cluster import RedisDirectory

    with pytest.raises(ValueError, match="other processes cannot connect to it"):
        RedisDirectory("redis://127.0.0.1:1/0", secret=SECRET, advertise_host=host)
    monkeypatch.setenv("WSGI_PROXY_LISTEN_ADVERTISE", host)
    with pytest.raises(ValueError, match="other processes cannot connect to it"):
        RedisDirectory("redis://127.0.0.1:1/0", secret=SECRET)


def test_the_advertised_address_is_the_one_that_reaches_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing configured, a process advertises the address it reaches Redis with
    (tests/test_topology.py shows it across namespaces); the variable overrides it."""
    from wsgi_proxy_listen.cluster import RedisDirectory

    monkeypatch.delenv("WSGI_PROXY_LISTEN_ADVERTISE", raising=False)
    for url in ["redis://127.0.0.1:6379/0", "unix:///run/redis.sock"]:
        directory = RedisDirectory(url, secret=SECRET)
        assert directory._endpoint_address("owner").advertise == "127.0.0.1", url
    monkeypatch.setenv("WSGI_PROXY_LISTEN_ADVERTISE", "10.1.2.3")
    assert RedisDirectory("redis://127.0.0.1/0", secret=SECRET).advertise_host == "10.1.2.3"


def test_a_background_thread_survives_any_error_and_says_why(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat meets an error that is no outage (a replica's ReadOnlyError, an ACL
    refusal, a bug): it is logged once with its reason, and the heartbeat goes on."""
    caplog.set_level(logging.ERROR, logger="wsgi_proxy_listen")
    directory = workers.directory()
    renew = directory._store_renew
    calls: list[float] = []

    def fails_twice() -> t.Any:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise RuntimeError("You can't write against a read only replica.")
        return renew()

    directory._store_renew = fails_twice  # before the registry attaches it
    registry = Registry(directory=directory)
    Client(ProxyMiddleware(Host(), registry)).get("/", buffered=True)  # starts its threads
    registry.listen(text("kept"), session="kept")
    deadline = time.monotonic() + 10
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(calls) >= 4, "the heartbeat died"
    failed = [r for r in caplog.records if "heartbeat thread" in r.getMessage()]
    assert len(failed) == 1, "said once"
    assert "RuntimeError: You can't write against a read only replica." in failed[0].getMessage()


def test_an_outage_says_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    """A Redis that refuses the password is down with that reason, not just 'cannot be
    reached'."""
    if REDIS is None:
        pytest.skip(NO_REDIS)
    from wsgi_proxy_listen.cluster import RedisDirectory

    server = RedisServer()
    server.start()
    try:
        url = server.url.replace("redis://", "redis://:wrong-password@")
        # requirepass, set at run time on the server the fixture started
        import redis

        admin = redis.Redis.from_url(server.url)
        admin.config_set("requirepass", "right-password")
        admin.close()
        caplog.set_level(logging.ERROR, logger="wsgi_proxy_listen")
        directory = RedisDirectory(url, secret=SECRET)
        registry = Registry(directory=directory)
        Client(ProxyMiddleware(Host(), registry)).get("/proxy/sessions/any/", buffered=True)
        directory.close()
        assert "the password or the user was refused" in caplog.text
    finally:
        server.stop()


def test_two_deployments_on_one_database_never_meet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Different secrets, one Redis database: each deployment's keys are under a namespace
    derived from its secret, so a session name in one is nothing to the other."""
    if REDIS is None:
        pytest.skip(NO_REDIS)
    from wsgi_proxy_listen.cluster import RedisDirectory

    monkeypatch.delenv("WSGI_PROXY_LISTEN_NAMESPACE", raising=False)
    server = RedisServer()
    server.start()
    made = []
    try:
        clients = {}
        for secret in ("first-secret", "second-secret"):
            directory = RedisDirectory(server.url, secret=secret, lease=3)
            made.append(directory)
            registry = Registry(directory=directory)
            clients[secret] = Client(ProxyMiddleware(Host(), registry))
            clients[secret].get("/", buffered=True)
            registry.listen(text(f"of {secret}"), session="s1")
        for secret, client in clients.items():
            assert client.get("/proxy/sessions/s1/", buffered=True).data == f"of {secret}".encode()
        namespaces = {key.split("}")[0] for key in server.keys_now()}
        assert namespaces == {"{" + namespace_for(s) for s in clients}
        monkeypatch.setenv("WSGI_PROXY_LISTEN_NAMESPACE", "kept-from-before")
        assert RedisDirectory(server.url, secret="x").namespace == "kept-from-before"
    finally:
        for directory in made:
            directory.close()
        server.stop()


def acl_user(url: str, user: str, rules: str) -> str:
    """Give ``user`` exactly ``rules`` on the Redis server of ``url``; the URL it logs in
    with."""
    import redis

    admin = redis.Redis.from_url(url)
    try:
        admin.execute_command("ACL", "SETUSER", user, "on", f">{user}-password", *rules.split())
    finally:
        admin.close()
    return url.replace("redis://", f"redis://{user}:{user}-password@")


def test_a_redis_user_with_the_documented_acl_and_no_more_is_enough(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ACL user with exactly RedisDirectory.acl(): listen, forward, withdraw, status all
    work. Without its channel, the watcher is refused and says so once, and goes on."""
    if REDIS is None:
        pytest.skip(NO_REDIS)

    from wsgi_proxy_listen.cluster import RedisDirectory

    server = RedisServer()
    server.start()
    made: list[t.Any] = []
    try:
        rules = RedisDirectory(server.url, secret=SECRET).acl()
        url = acl_user(server.url, "app", rules)
        deaf_url = acl_user(server.url, "deaf", rules.replace(f"&{{{NAMESPACE}}}:notices", ""))
        clients = []
        for _ in range(2):
            directory = RedisDirectory(url, secret=SECRET, lease=3)
            made.append(directory)
            registry = Registry(directory=directory)
            clients.append((registry, Client(ProxyMiddleware(Host(), registry))))
            clients[-1][1].get("/", buffered=True)
        (a, _), (_, b) = clients
        handle = a.listen(text("with the acl"), session="s1")
        assert b.get("/proxy/sessions/s1/", buffered=True).data == b"with the acl"
        assert [entry.session for entry in made[1].entries()] == ["s1"]
        handle.close()
        assert b.get("/proxy/sessions/s1/", buffered=True).status_code == 404
        caplog.set_level(logging.ERROR, logger="wsgi_proxy_listen")
        deaf = RedisDirectory(deaf_url, secret=SECRET, lease=3)
        made.append(deaf)
        Client(ProxyMiddleware(Host(), Registry(directory=deaf))).get("/", buffered=True)
        deadline = time.monotonic() + 5
        while "ACL" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "the user lacks a command, a key or a channel in its ACL" in caplog.text
    finally:
        for directory in made:
            directory.close()
        server.stop()


def test_a_redis_user_without_a_rule_is_told_at_start_which_it_needs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Checked when the process starts serving, before any listener: one error line with
    every rule the user needs; the process goes on serving its own pages."""
    if REDIS is None:
        pytest.skip(NO_REDIS)

    from wsgi_proxy_listen.cluster import RedisDirectory

    server = RedisServer()
    server.start()
    directory = None
    try:
        rules = RedisDirectory(server.url, secret=SECRET).acl()
        url = acl_user(server.url, "app", rules + " -zadd")
        caplog.set_level(logging.ERROR, logger="wsgi_proxy_listen")
        directory = RedisDirectory(url, secret=SECRET)
        client = Client(ProxyMiddleware(Host(), Registry(directory=directory)))
        assert client.get("/", buffered=True).status_code == 200
        deadline = time.monotonic() + 5
        while "ACL SETUSER" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        (said,) = [record for record in caplog.records if "ACL SETUSER" in record.getMessage()]
        assert "can't run this command" in said.getMessage()  # Redis names no command
        assert said.getMessage().endswith(f"ACL SETUSER <user> on ><password> {rules}")
    finally:
        if directory is not None:
            directory.close()
        server.stop()


def test_an_owner_is_judged_by_its_own_lease() -> None:
    """A host with a longer lease than the owner's: a refused connection to an owner
    that renews on its own schedule erases nothing."""
    if REDIS is None:
        pytest.skip(NO_REDIS)
    from wsgi_proxy_listen.cluster import RedisDirectory

    server = RedisServer()
    server.start()
    made = []
    try:
        owner = RedisDirectory(server.url, secret=SECRET, lease=3)
        caller = RedisDirectory(server.url, secret=SECRET, lease=30)
        made += [owner, caller]
        registry = Registry(directory=owner)
        Client(ProxyMiddleware(Host(), registry)).get("/", buffered=True)
        registry.listen(text("alive"), session="s1")
        entry = Owner(owner.owner, owner.address, None)
        forgotten = []
        for _ in range(5):  # while the owner renews every second
            time.sleep(0.8)
            forgotten.append(caller._store_forget("s1", entry))
        assert forgotten == [False] * 5
        assert owner._store_locate("s1") is not None
    finally:
        for directory in made:
            directory.close()
        server.stop()


def test_the_acl_covers_a_database_other_than_0() -> None:
    if REDIS is None:
        pytest.skip(NO_REDIS)

    from wsgi_proxy_listen.cluster import RedisDirectory

    server = RedisServer()
    server.start()
    directory = None
    try:
        url = server.url.replace("/0", "/1")
        user_url = acl_user(url, "app", RedisDirectory(url, secret=SECRET).acl())
        directory = RedisDirectory(user_url, secret=SECRET)
        registry = Registry(directory=directory)
        Client(ProxyMiddleware(Host(), registry)).get("/", buffered=True)
        registry.listen(text("in db 1"), session="s1")
        assert directory._store_locate("s1") is not None
    finally:
        if directory is not None:
            directory.close()
        server.stop()


def test_what_waits_to_be_published_survives_an_error_that_is_no_outage(
    workers: Workers,
) -> None:
    """A listener registered while the store could not take it waits for the heartbeat;
    if that write then fails with an error that is no outage (a read-only replica), it
    still waits, and the next renewal publishes it."""
    from wsgi_proxy_listen import DirectoryUnavailable

    directory = workers.directory()
    publish = directory._store_publish
    calls: list[str] = []

    def flaky(session: str, entry: t.Any) -> None:
        calls.append(session)
        if len(calls) == 1:
            raise DirectoryUnavailable("busy")
        if len(calls) == 2:
            raise RuntimeError("You can't write against a read only replica.")
        publish(session, entry)

    directory._store_publish = flaky  # before the registry attaches it
    registry = Registry(directory=directory)
    Client(ProxyMiddleware(Host(), registry)).get("/", buffered=True)
    registry.listen(text("published at last"), session="late")
    _, _, other = workers.worker()
    deadline = time.monotonic() + 8
    while other.get("/proxy/sessions/late/", buffered=True).status_code != 200:
        assert time.monotonic() < deadline, f"never published: {calls}"
        time.sleep(0.2)
    assert len(calls) >= 3
