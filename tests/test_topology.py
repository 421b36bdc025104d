"""Several machines, for real: Redis, two hosts (gunicorn, two workers each) and a runtime,
each in a network namespace of its own with its own address, configured by the
environment only (no address anywhere: each process advertises the address it reaches
Redis with). A cut link between one host and the runtime costs that host only."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import typing as t
from collections.abc import Iterator

import pytest

from .support.cluster import REDIS, ROOT, SECRET
from .support.netns import Topology, run_in, topology, unavailable
from .support.wire import stop

WHY_NOT = unavailable() or (None if REDIS else "no redis-server binary")
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        WHY_NOT is not None,
        reason=f"CLUSTER TESTS SKIPPED: the multi-machine topology needs {WHY_NOT}",
    ),
]

MACHINES = {"redis": 10, "a": 11, "b": 12, "runtime": 13, "client": 20}
PORT = 8000


class Machines(t.NamedTuple):
    net: Topology
    runtime_pid: int

    def get(self, host: str, path: str, timeout: float = 5) -> tuple[int, bytes]:
        """GET ``path`` of ``host``, from the client machine."""
        address = self.net.addresses[host]

        def call() -> tuple[int, bytes]:
            connection = http.client.HTTPConnection(address, PORT, timeout=timeout)
            try:
                connection.request("GET", path, headers={"Connection": "close"})
                answer = connection.getresponse()
                return answer.status, answer.read()
            finally:
                connection.close()

        return t.cast("tuple[int, bytes]", run_in(self.net.namespace("client"), call))

    def statuses(self, host: str, seconds: float) -> list[int]:
        """The answers of ``host`` for the runtime's session, asked for ``seconds``."""
        seen, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            status, body = self.get(host, "/proxy/sessions/job-1/")
            if status == 200:
                assert json.loads(body)["pid"] == self.runtime_pid, "the wrong listener"
            seen.append(status)
            time.sleep(0.1)
        return seen


@contextlib.contextmanager
def started(net: Topology, machine: str, argv: list[str], env: dict[str, str]) -> Iterator[t.Any]:
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            net.command(machine, argv),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdin=subprocess.DEVNULL,
            stdout=log if machine != "runtime" else subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            yield process
        finally:
            stop(process)
            if process.stdout is not None:
                process.stdout.close()
            log.seek(0)
            tail = log.read()[-3000:]
            if tail:
                print(f"\n--- {machine} ---\n{tail.decode(errors='replace')}")


@pytest.fixture(scope="module")
def machines() -> Iterator[Machines]:
    with topology(MACHINES) as net, contextlib.ExitStack() as stack:
        redis_address = net.addresses["redis"]
        redis_server = [t.cast(str, REDIS), "--bind", redis_address, "--port", "6379"]
        redis_server += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        stack.enter_context(started(net, "redis", redis_server, {}))
        url = f"redis://{redis_address}:6379/0"
        env = {"WSGI_PROXY_LISTEN_DIRECTORY": url, "WSGI_PROXY_LISTEN_SECRET": SECRET}
        # The hosts wait 2 s for an answer (the lease is the default, 10 s), so that a hop
        # on a link that went silent ends within a test's patience.
        hosts = {**env, "TEST_DIRECTORY": url, "TEST_LEASE": "10", "TEST_READ_TIMEOUT": "2"}
        time.sleep(0.5)
        for host in ("a", "b"):
            gunicorn = [sys.executable, "-m", "gunicorn", "-c", "tests/support/cluster_gunicorn.py"]
            gunicorn += ["-b", f"{net.addresses[host]}:{PORT}", "-w", "2", "-k", "gthread"]
            stack.enter_context(started(net, host, [*gunicorn, "examples.cluster.app:app"], hosts))
        job = [sys.executable, "-m", "tests.support.runtime_app", "job-1", "serve-forever"]
        runtime = stack.enter_context(started(net, "runtime", job, env))
        ready = json.loads(runtime.stdout.readline())["ready"]
        made = Machines(net, ready)
        for host in ("a", "b"):
            deadline = time.monotonic() + 30
            while True:
                try:
                    if made.get(host, "/pid")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"host {host} did not start"
                time.sleep(0.2)
        yield made


def test_both_hosts_reach_the_runtime_on_its_own_machine(machines: Machines) -> None:
    for host in ("a", "b"):
        assert set(machines.statuses(host, 1.0)) == {200}, host


@pytest.mark.parametrize(
    ("cut", "answers"),
    [
        # Connections refused (as a firewall's reject): 502 at once.
        ("refuse", {502}),
        # Packets lost: a new hop connection is not accepted within a second (502); one
        # kept alive from before waits for its answer until the read timeout (504).
        ("drop", {502, 504}),
    ],
)
def test_a_cut_link_costs_only_the_host_that_has_it(
    machines: Machines, cut: str, answers: set[int]
) -> None:
    """Host a cannot reach the runtime: a answers 502 (or 504), b keeps serving the
    runtime for longer than a heartbeat (nothing was erased, the runtime closed nothing),
    and once the link is back a serves it again."""
    net = machines.net
    getattr(net, cut)("a", "runtime")
    try:
        cut_off = machines.statuses("a", 1.5)
        assert cut_off, "no answer"
        assert set(cut_off) <= answers, cut_off
        for _ in range(3):  # a heartbeat (10 / 3 s) and more, from both sides
            assert set(machines.statuses("b", 1.5)) == {200}
            assert set(machines.statuses("a", 0.5)) <= answers
    finally:
        net.heal("a", "runtime")
    deadline = time.monotonic() + 5
    while machines.get("a", "/proxy/sessions/job-1/")[0] != 200:
        assert time.monotonic() < deadline, "host a did not reach the runtime again"
        time.sleep(0.2)
    assert set(machines.statuses("a", 1.0)) == {200}
    assert set(machines.statuses("b", 1.0)) == {200}
