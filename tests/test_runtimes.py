"""Runtimes: listeners in plain Python processes (a notebook kernel, a job worker, a script)
that the host's workers reach through the directory. Real processes: a host under
gunicorn -w 2 and runtime processes configured only through the environment, on the
embedded directory and on Redis."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import typing as t
from collections import Counter
from collections.abc import Iterator

import pytest

from .cluster_support import ROOT, SECRET, Shared, concurrently, get, gunicorn
from .wire import exchange

pytestmark = pytest.mark.timeout(180)


class Runtime(t.NamedTuple):
    process: subprocess.Popen[str]
    pid: int


@contextlib.contextmanager
def runtime(shared: Shared, session: str, mode: str = "serve-forever") -> Iterator[Runtime]:
    """tests/runtime_app.py in a process of its own, configured by the environment only."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WSGI_PROXY_LISTEN_DIRECTORY": shared.name}
    env.pop("WSGI_PROXY_LISTEN_SECRET", None)
    if shared.kind == "redis":
        env["WSGI_PROXY_LISTEN_SECRET"] = SECRET
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.runtime_app", session, mode],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
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
                lambda session=session: get(host.port, f"/proxy/sessions/{session}/a/b?q=1&r=%20"),
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
    shared: Shared, mode: str, signum: int
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


def test_a_killed_runtime_is_503_then_404_and_a_new_one_is_reached(shared: Shared) -> None:
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
            assert set(statuses) <= {503, 404}
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
                    8, 4, lambda session=session: get(host.port, f"/proxy/sessions/{session}/")
                )
                assert {json.loads(answer.body)["pid"] for answer in answers} == {owner}
        finally:
            os.kill(child, signal.SIGKILL)
