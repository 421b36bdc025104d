"""Runtimes: listeners in plain Python processes (a notebook kernel, a job worker, a script)
that the host's workers reach through the directory. Real processes: a host under
gunicorn -w 2 and runtime processes configured only through the environment, on the
embedded directory and on Redis."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import typing as t
from collections import Counter
from collections.abc import Iterator

import pytest
from werkzeug.test import Client

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.cluster import ROOT, SECRET, Shared, concurrently, gunicorn
from .support.wire import exchange, get

pytestmark = pytest.mark.timeout(180)


class Runtime(t.NamedTuple):
    process: subprocess.Popen[str]
    pid: int


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def runtime(shared: Shared, session: str, mode: str = "serve-forever") -> Iterator[Runtime]:
    """tests/support/runtime_app.py in a process of its own, configured by the environment only."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WSGI_PROXY_LISTEN_DIRECTORY": shared.name}
    env.pop("WSGI_PROXY_LISTEN_SECRET", None)
    if shared.kind == "redis":
        env["WSGI_PROXY_LISTEN_SECRET"] = SECRET
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.runtime_app", session, mode],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        # SIGINT stands for a terminal's Ctrl-C: a suite started in the background
        # (make test &) ignores it, and its children would inherit that.
        preexec_fn=_default_sigint,
    )
    try:
        line = t.cast(t.IO[str], process.stdout).readline()
        assert line, f"the runtime ended: {process.wait(10)}"
        yield Runtime(process, json.loads(line)["ready"])
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        t.cast(t.IO[str], process.stdout).close()


def upload(port: int, path: str, body: bytes) -> dict[str, t.Any]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    answer = exchange(port, head.encode() + body, timeout=60)
    assert answer.status == 200, answer.head
    return t.cast(dict[str, t.Any], json.loads(answer.body))


def test_every_worker_reaches_every_runtime(shared: Shared) -> None:
    with (
        gunicorn(shared.name, workers=2) as host,
        runtime(shared, "job-1") as first,
        runtime(shared, "job-2") as second,
    ):
        for session, owner in (("job-1", first.pid), ("job-2", second.pid)):
            answers = concurrently(
                40,
                8,
                functools.partial(get, host.port, f"/proxy/sessions/{session}/a/b?q=1&r=%20"),
            )
            assert Counter(answer.status for answer in answers) == Counter({200: 40})
            seen = {answer.body for answer in answers}
            assert len(seen) == 1
            echoed = json.loads(seen.pop())
            assert echoed == {
                "pid": owner,
                "script_name": f"/proxy/sessions/{session}",
                "path_info": "/a/b",
                "query": "q=1&r=%20",
                "remote_user": None,
                "size": 0,
                "sha256": hashlib.sha256(b"").hexdigest(),
            }
            body = os.urandom(1 << 20)
            for _ in range(4):  # whichever worker takes it
                echoed = upload(host.port, f"/proxy/sessions/{session}/upload", body)
                assert (echoed["size"], echoed["sha256"]) == (
                    len(body),
                    hashlib.sha256(body).hexdigest(),
                )


def test_a_runtime_listener_for_one_user_is_closed_to_others_in_every_worker(
    shared: Shared,
) -> None:
    """The access a runtime declares is published with its listener: every worker of the
    host asks its own login (here the X-User header) and answers the same, and the
    runtime sees the user that the worker let in."""
    with (
        gunicorn(shared.name, workers=2, app="tests.support.login_hosts:app") as host,
        runtime(shared, "private", "alice-only") as job,
    ):
        path = "/proxy/sessions/private/"
        for user, status in (("", 401), ("bob", 403), ("alice", 200)):
            answers = concurrently(
                20, 4, functools.partial(get, host.port, path, headers=f"X-User: {user}\r\n")
            )
            assert Counter(answer.status for answer in answers) == Counter({status: 20}), user
        echoed = json.loads(get(host.port, path, headers="X-User: alice\r\n").body)
        assert (echoed["pid"], echoed["remote_user"]) == (job.pid, "alice")
        assert len(set(host.worker_pids())) == 2


def until(port: int, path: str, wanted: int, seconds: float) -> tuple[list[int], float]:
    """Request ``path`` (from every worker, 8 at a time) until all answer ``wanted``."""
    began = time.monotonic()
    statuses: list[int] = []
    while time.monotonic() - began < seconds + 5:
        answers = concurrently(8, 8, lambda: get(port, path))
        statuses += [answer.status for answer in answers]
        if all(answer.status == wanted for answer in answers):
            break
    return statuses, time.monotonic() - began


@pytest.mark.parametrize("mode", ["serve-forever", "sleep"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_runtime_that_is_stopped_withdraws_its_listeners(
    shared: Shared, mode: str, signum: signal.Signals
) -> None:
    """SIGTERM or SIGINT: the runtime withdraws its listeners and ends; every worker
    answers 404 within a second, and the directory holds nothing of it."""
    with gunicorn(shared.name, workers=2) as host, runtime(shared, "job-1", mode) as job:
        assert get(host.port, "/proxy/sessions/job-1/").status == 200
        job.process.send_signal(signum)
        assert job.process.wait(10) is not None
        statuses, took = until(host.port, "/proxy/sessions/job-1/", 404, 1.0)
        print(f"\n{shared.kind} {mode}: after {signum.name}: 404 everywhere after {took:.2f} s")
        assert took < 1.0
        assert set(statuses) == {404}, statuses
        assert [
            item for item in shared.leftovers() if "job-1" in item or str(job.pid) in item
        ] == []


def test_a_killed_runtime_is_502_then_404_and_a_new_one_is_reached(shared: Shared) -> None:
    with gunicorn(shared.name, workers=2) as host:
        with runtime(shared, "job-1") as job:
            assert get(host.port, "/proxy/sessions/job-1/").status == 200
            job.process.kill()
            job.process.wait(10)
            statuses: list[int] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                began = time.monotonic()
                statuses.append(get(host.port, "/proxy/sessions/job-1/").status)
                assert time.monotonic() - began < 3.0
                if statuses[-4:] == [404] * 4:
                    break
            print(f"\n{shared.kind}: after SIGKILL of the runtime: {statuses}")
            assert set(statuses) <= {502, 404}
            assert statuses[-4:] == [404] * 4
        with runtime(shared, "job-1") as again:
            answers = concurrently(16, 8, lambda: get(host.port, "/proxy/sessions/job-1/"))
            assert {json.loads(answer.body)["pid"] for answer in answers} == {again.pid}


def test_a_forked_child_publishes_only_what_it_registers(shared: Shared) -> None:
    """A runtime forks (a prefork pool): the child's listener is its own, the parent's
    stays the parent's."""
    with gunicorn(shared.name, workers=2) as host, runtime(shared, "pool", "fork") as parent:
        line = t.cast(t.IO[str], parent.process.stdout).readline()
        child = json.loads(line)["child"]
        try:
            for session, owner in (("pool", parent.pid), ("pool-child", child)):
                answers = concurrently(
                    8, 4, functools.partial(get, host.port, f"/proxy/sessions/{session}/")
                )
                assert {json.loads(answer.body)["pid"] for answer in answers} == {owner}
        finally:
            os.kill(child, signal.SIGKILL)


def ended_by_sigterm(shared: Shared, job: Runtime, session: str) -> None:
    """The runtime ended, left nothing of ``session`` in the directory, and SIGTERM ended
    it as SIGTERM ends a process that does not handle it."""
    returncode = job.process.wait(10)
    assert [item for item in shared.leftovers() if session in item] == []
    assert returncode == -signal.SIGTERM


def test_sigterm_while_the_runtime_changes_its_listeners(shared: Shared) -> None:
    """SIGTERM arrives at any moment of a runtime that listens and closes in a loop
    (inside a lock or a transaction of the directory): it ends, and nothing is left."""
    for attempt in range(10):
        with runtime(shared, "busy", "churn") as job:
            time.sleep(0.02 + attempt * 0.03)
            job.process.send_signal(signal.SIGTERM)
            ended_by_sigterm(shared, job, "busy")


@pytest.mark.parametrize("mode", ["stubborn", "thread"])
def test_sigterm_ends_and_withdraws_whatever_the_runtime_does(shared: Shared, mode: str) -> None:
    """A loop that catches every exception (as a notebook kernel catches SystemExit in
    a cell) still ends on SIGTERM; so does a runtime whose first listen() ran in
    another thread, where no signal handler can be installed."""
    with runtime(shared, "job-1", mode) as job:
        job.process.send_signal(signal.SIGTERM)
        ended_by_sigterm(shared, job, "job-1")


def test_serve_forever_calls_the_applications_sigterm_handler(shared: Shared) -> None:
    with runtime(shared, "job-1", "app-handler") as job:
        job.process.send_signal(signal.SIGTERM)
        assert job.process.wait(10) == 0
        said = [json.loads(line) for line in t.cast(t.IO[str], job.process.stdout)]
        assert said == [{"handled": signal.SIGTERM}, {"returned": True}]
        assert [item for item in shared.leftovers() if "job-1" in item] == []


def in_process_host(shared: Shared, **options: t.Any) -> tuple[Client, Registry]:
    secret = SECRET if shared.kind == "redis" else None
    registry = Registry(prefix="/tools", directory=shared.name, secret=secret)
    client = Client(ProxyMiddleware(lambda environ, start_response: [], registry, **options))
    return client, registry


def test_a_host_with_another_prefix_reaches_a_runtime(shared: Shared) -> None:
    """The runtime routes a forwarded request with the prefix of the host that got it."""
    client, registry = in_process_host(shared)
    try:
        with runtime(shared, "job-1") as job:
            answer = client.get("/tools/sessions/job-1/a?q=1", buffered=True)
            assert answer.status_code == 200, answer.data
            assert answer.json == {
                "pid": job.pid,
                "script_name": "/tools/sessions/job-1",
                "path_info": "/a",
                "query": "q=1",
                "remote_user": None,
                "size": 0,
                "sha256": hashlib.sha256(b"").hexdigest(),
            }
    finally:
        registry.close()


def test_the_hosts_max_concurrency_bounds_what_it_forwards(shared: Shared) -> None:
    """A listener in a runtime that hangs holds at most max_concurrency of the host's
    threads: more requests for it get 503 at once."""
    client, registry = in_process_host(shared, max_concurrency=2)
    try:
        with runtime(shared, "job-1"):
            assert client.get("/tools/sessions/job-1/", buffered=True).status_code == 200
            statuses: list[int] = []
            lock = threading.Lock()

            def slow() -> None:
                status = client.get("/tools/sessions/job-1/?sleep=1", buffered=True)
                with lock:
                    statuses.append(status.status_code)

            threads = [threading.Thread(target=slow) for _ in range(5)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert sorted(statuses) == [200, 200, 503, 503, 503]
            again = client.get("/tools/sessions/job-1/", buffered=True)
            assert again.status_code == 200, "every count was released"
    finally:
        registry.close()


def test_an_app_session_in_a_runtime_is_shut_down_when_idle(shared: Shared) -> None:
    """The host's start launches a runtime that listens as a member of the app (as
    Livebook starts an app session's runtime); the runtime closes it when idle and ends;
    the next request launches a new one."""
    launched: list[subprocess.Popen[str]] = []
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WSGI_PROXY_LISTEN_DIRECTORY": shared.name,
        "TEST_IDLE_TIMEOUT": "0.5",
    }
    if shared.kind == "redis":
        env["WSGI_PROXY_LISTEN_SECRET"] = SECRET

    def launch() -> None:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.runtime_app",
                f"nb-{len(launched)}",
                "app-member",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        launched.append(process)
        assert t.cast(t.IO[str], process.stdout).readline(), "the runtime ended"

    client, registry = in_process_host(shared)
    registry.register_app("notebook-app", start=launch, start_timeout=20)
    try:

        def owner() -> int:
            answer = client.get("/tools/apps/notebook-app/", buffered=True)
            assert answer.status_code == 200, answer.data
            return t.cast(int, answer.json["pid"])  # type: ignore[index]

        first = owner()
        assert first == launched[0].pid, "the first request reaches what the start launched"
        for _ in range(8):  # 1.6 s, never idle for 0.5 s
            time.sleep(0.2)
            assert owner() == first
        assert launched[0].wait(10) == 0, "stopped for being idle, it ended"
        assert owner() == launched[1].pid != first
    finally:
        registry.close()
        for process in launched:
            process.kill()
            process.wait(10)
            t.cast(t.IO[str], process.stdout).close()


_ALONE = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
{imports}
from wsgi_proxy_listen import listen
first = listen(lambda request: "x", session="s1")
listen(lambda request: "y", session="s2")
print(first._repr_html_())
"""


@pytest.mark.parametrize(
    ("imports", "environment", "warned"),
    [
        pytest.param("", {"WSGI_PROXY_LISTEN_RUNTIME": "1"}, True, id="said-a-runtime"),
        pytest.param("import ipykernel", {}, True, id="a-kernel"),
        pytest.param("import ipykernel", {"WSGI_PROXY_LISTEN_RUNTIME": "0"}, False, id="said-not"),
        pytest.param("", {}, False, id="a-script"),
    ],
)
def test_a_runtime_without_a_directory_says_its_listeners_stay_inside(
    imports: str, environment: dict[str, str], warned: bool
) -> None:
    """A kernel started without the directory's environment: the link is only a path
    that the host answers 404 for. One warning says which variable to set, and the
    link itself says it is reachable only inside this process."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith("WSGI_PROXY_LISTEN_")
    }
    result = subprocess.run(
        [sys.executable, "-c", _ALONE.format(imports=imports)],
        env={**env, **environment},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    said = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    if warned:
        assert len(said) == 1, result.stderr
        assert "set WSGI_PROXY_LISTEN_DIRECTORY" in said[0]
    else:
        assert said == [], result.stderr
    # Whether said or not, the link tells the truth: nothing outside reaches it.
    assert "reachable only inside this process" in result.stdout
    assert result.stdout.startswith('<a href="/proxy/sessions/s1/"')


def test_a_link_in_a_routed_or_connected_process_has_no_note(tmp_path: t.Any) -> None:
    routed = Registry()
    ProxyMiddleware(lambda environ, start_response: [], routed)
    assert "only inside" not in routed.listen(lambda request: "x", session="s1")._repr_html_()
    folder = str(tmp_path / "wpl")
    connected = Registry(directory=folder)
    try:
        listener = connected.listen(lambda request: "x", session="s1")
        assert not connected.local_only
        assert "only inside" not in listener._repr_html_()
    finally:
        connected.close()


def test_a_runtime_that_dies_mid_stream_ends_the_answer_without_a_traceback(
    shared: Shared,
) -> None:
    """The runtime is killed while its answer streams: the host ends the response (the
    client sees it cut, not a complete one), logs one line, and the server logs no
    traceback; the next request gets the 502 of a gone owner."""
    import socket

    with gunicorn(shared.name, workers=2) as host, runtime(shared, "flow", "stream") as job:
        with socket.create_connection(("127.0.0.1", host.port), timeout=10) as client:
            client.sendall(b"GET /proxy/sessions/flow/ HTTP/1.1\r\nHost: x\r\n\r\n")
            received = client.recv(65536)
            assert received.startswith(b"HTTP/1.1 200"), received
            job.process.kill()
            deadline = time.monotonic() + 10
            while True:  # the host ends the response: the connection closes
                assert time.monotonic() < deadline, "the response never ended"
                data = client.recv(65536)
                if not data:
                    break
                received += data
        assert not received.endswith(b"0\r\n\r\n"), "a cut answer must not look complete"
        time.sleep(0.5)
        log = host.log_text()
        assert "Traceback" not in log, log
        said = [
            line for line in log.splitlines() if "flow" in line or "ended the connection" in line
        ]
        assert len(said) == 1, log
        assert get(host.port, "/proxy/sessions/flow/").status in (502, 404)


def test_status_marks_a_killed_runtime_gone_at_once_and_a_request_clears_it() -> None:
    """On one machine a socket that refuses proves its process gone: status says so at
    once (not ~10 s later, when the lease runs out), the next request gets the 502 of a
    gone owner and removes its entries and its socket file."""
    import shutil

    from .support.cluster import short_folder

    folder = short_folder()
    shared = Shared("embedded", folder, None)
    try:
        with gunicorn(folder, workers=2) as host, runtime(shared, "doomed") as job:
            assert get(host.port, "/proxy/sessions/doomed/").status == 200
            sockets = [name for name in os.listdir(folder) if name.endswith(".sock")]
            job.process.kill()
            job.process.wait(10)
            status = subprocess.run(
                [sys.executable, "-m", "wsgi_proxy_listen", "status", folder, "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            rows = {row["session"]: row for row in json.loads(status.stdout)}
            assert rows["doomed"]["live"] is False
            table = subprocess.run(
                [sys.executable, "-m", "wsgi_proxy_listen", "status", folder],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout.splitlines()
            assert table[0].split()[-1] == "STATE"
            assert next(line for line in table if line.startswith("doomed")).endswith("gone")
            assert table[-1].startswith("1 of the processes is gone (the socket refuses)")
            assert get(host.port, "/proxy/sessions/doomed/").status == 502
            assert get(host.port, "/proxy/sessions/doomed/").status == 404
            left = [name for name in os.listdir(folder) if name.endswith(".sock")]
            assert len(left) == len(sockets) - 1, "the runtime's socket file was removed"
            assert "Traceback" not in host.log_text()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
