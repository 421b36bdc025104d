"""What the tests of listeners across processes share: a real redis-server, a directory as
the processes name it (a folder or a Redis URL), the example host under real gunicorn, and
clients that talk to them over raw sockets.

The ``redis_server`` and ``shared`` fixtures (tests/conftest.py) are built on it, and so is
bench/cluster.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from collections.abc import Iterator
from pathlib import Path

from werkzeug.test import Client

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.cluster.variables import namespace_for

from .wire import Answer, exchange, free_port, get, stop, wait_until_listening
from .wsgi import Host

ROOT = Path(__file__).resolve().parents[2]
REDIS = shutil.which("redis-server")
SECRET = "tests-secret"
#: The Redis keys' namespace of the tests' deployments (derived from their secret).
NAMESPACE = namespace_for(SECRET)
NO_REDIS = (
    "CLUSTER TESTS SKIPPED: no redis-server binary; install Debian's redis-server"
    " package (apt-get install redis-server), as .ci/run does"
)


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                t.cast(str, REDIS),
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_listening(self.process, self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def keys_now(self) -> list[str]:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            return sorted(key.decode() for key in t.cast("list[bytes]", client.keys("*")))
        finally:
            client.close()

    def record(self, key: str) -> dict[str, t.Any] | None:
        """The record at ``{namespace}:<key>`` (``session:s1``, ``owner:<id>``)."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            value = t.cast("bytes | None", client.get(f"{{{NAMESPACE}}}:{key}"))
            return None if value is None else t.cast("dict[str, t.Any]", json.loads(value))
        finally:
            client.close()


def forge_rows(folder: str, *rows: tuple[str, str, float, str | None]) -> None:
    """Owner rows (owner, address, expires, a session it holds) written into the embedded
    table of ``folder`` directly, as anything that can write the table could."""
    with contextlib.closing(sqlite3.connect(os.path.join(folder, "directory.sqlite3"))) as db, db:
        for owner, address, expires, session in rows:
            db.execute("INSERT INTO owners VALUES (?, ?, ?, ?, ?)", (owner, 1, address, expires, 0))
            if session is not None:
                record = json.dumps({"v": 1, "owner": owner, "app": None, "since": 0})
                db.execute(
                    "INSERT INTO sessions VALUES (?, ?, NULL, 0, ?)", (session, owner, record)
                )


def short_folder() -> str:
    """A fresh folder with a path short enough for Unix sockets (pytest's tmp_path is not)."""
    return tempfile.mkdtemp(prefix="wpl-", dir="/tmp")


class Shared:
    """A directory as the processes name it, and how to look into it."""

    def __init__(self, kind: str, name: str, redis_server: RedisServer | None) -> None:
        self.kind = kind
        self.name = name
        self.redis_server = redis_server

    def owner_of(self, session: str) -> str | None:
        """The owner id that the shared table names for ``session``."""
        if self.redis_server is not None:
            record = self.redis_server.record(f"session:{session}")
            return None if record is None else str(record["owner"])
        with contextlib.closing(sqlite3.connect(f"{self.name}/directory.sqlite3")) as db:
            row = db.execute("SELECT owner FROM sessions WHERE session = ?", (session,)).fetchone()
        return None if row is None else str(row[0])

    def leftovers(self) -> list[str]:
        """What the processes left behind: Redis keys, or rows and sockets in the folder."""
        if self.redis_server is not None:
            return self.redis_server.keys_now()
        found = [name for name in os.listdir(self.name) if name.endswith(".sock")]
        with contextlib.closing(sqlite3.connect(f"{self.name}/directory.sqlite3")) as db:
            for table in ("owners", "sessions", "locks"):
                found += [f"{table}:{row}" for row in db.execute(f"SELECT * FROM {table}")]
        return found

    def endpoint_of(self, session: str) -> str:
        """The internal endpoint address of the owner of ``session``."""
        if self.redis_server is not None:
            owner = self.redis_server.record(f"owner:{self.owner_of(session)}")
            return str(t.cast("dict[str, t.Any]", owner)["address"])
        with contextlib.closing(sqlite3.connect(f"{self.name}/directory.sqlite3")) as db:
            row = db.execute(
                "SELECT o.address FROM sessions s JOIN owners o ON o.owner = s.owner"
                " WHERE s.session = ?",
                (session,),
            ).fetchone()
        return str(row[0])


class Cluster(t.NamedTuple):
    port: int
    process: subprocess.Popen[bytes]
    log: t.IO[bytes]

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def worker_pids(self) -> list[int]:
        return [
            int(line.split()[-1])
            for line in self.log_text().splitlines()
            if "Booting worker" in line
        ]


@contextlib.contextmanager
def gunicorn(
    directory: str,
    workers: int = 4,
    worker_class: str = "gthread",
    lease: float | None = None,
    read_timeout: float | None = None,
    app: str = "examples.cluster.app:app",
    **environment: str,
) -> Iterator[Cluster]:
    """examples/cluster/app.py (or ``app``) under gunicorn, connected through the
    environment as its docstring says; with ``lease`` or ``read_timeout``, through the
    test config instead. ``environment`` adds variables (``SCRATCHPAD_IDLE_TIMEOUT="1"``).
    A sync worker gets one thread: with the example's ``threads = 4``, gunicorn would quietly
    run gthread instead."""
    port = free_port()
    threads = ("--threads", "1") if worker_class == "sync" else ()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **environment}
    env.pop("WSGI_PROXY_LISTEN_SECRET", None)
    if not directory.startswith("/"):
        env["WSGI_PROXY_LISTEN_SECRET"] = SECRET  # the embedded directory needs none
    if lease is None and read_timeout is None:
        env["WSGI_PROXY_LISTEN_DIRECTORY"] = directory
    else:
        env["TEST_DIRECTORY"] = directory
        env["TEST_LEASE"] = str(lease or 10)
        env["TEST_READ_TIMEOUT"] = str(read_timeout or 60)
    with open(os.devnull, "rb") as stdin, tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "-c", "tests/support/cluster_gunicorn.py"),
                *("-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", worker_class, *threads),
                app,
            ],
            cwd=ROOT,
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_until_listening(process, port, log)
            cluster = Cluster(port, process, log)
            assert f"Using worker: {worker_class}" in cluster.log_text()
            warm_up(cluster, workers)
            yield cluster
        finally:
            stop(process)


def warm_up(cluster: Cluster, workers: int) -> None:
    """Make every worker serve a request, so that each has started its directory threads."""
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while len(seen) < workers and time.monotonic() < deadline:
        seen.add(int(get(cluster.port, "/pid").body))
    assert len(seen) == workers, f"only workers {seen} answered"


def start_session(cluster: Cluster, session: str, query: str = "") -> int:
    request = f"POST /sessions/{session}{query} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    answer = exchange(cluster.port, f"{request}Connection: close\r\n\r\n".encode())
    assert answer.status == 200, answer
    return int(answer.body)


def stop_session(cluster: Cluster, session: str) -> None:
    request = f"DELETE /sessions/{session} HTTP/1.1\r\nHost: x\r\n"
    assert exchange(cluster.port, f"{request}Connection: close\r\n\r\n".encode()).status == 200


def owner_in(body: bytes) -> int:
    return int(body.split(b" from ")[1].split()[0])


def answers_within(
    cluster: Cluster, path: str, wanted: int, seconds: float
) -> tuple[list[int], float]:
    """Request ``path`` until it answers ``wanted``; the statuses seen and the time it took.
    No single request may take a second."""
    began = time.monotonic()
    statuses: list[int] = []
    while time.monotonic() - began < seconds + 5:
        sent = time.monotonic()
        statuses.append(get(cluster.port, path).status)
        assert time.monotonic() - sent < 1.0, f"a request took {time.monotonic() - sent:.1f} s"
        if statuses[-1] == wanted:
            break
    return statuses, time.monotonic() - began


# -- reachability -------------------------------------------------------------------------------


def concurrently(count: int, clients: int, call: t.Callable[[], Answer]) -> list[Answer]:
    """``count`` calls from ``clients`` threads, so that every worker takes some."""
    answers: list[Answer] = []
    lock = threading.Lock()

    def client() -> None:
        mine = [call() for _ in range(count // clients)]
        with lock:
            answers.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


class RedisWorker(t.NamedTuple):
    directory: t.Any
    registry: Registry
    client: Client


@contextlib.contextmanager
def redis_workers(
    url: str, *options: dict[str, t.Any], use_cookies: bool = True
) -> Iterator[list[RedisWorker]]:
    """Workers of a host on the Redis directory at ``url``, in this process: one for each
    of ``options`` (a RedisDirectory's keyword arguments), each with its directory, its
    registry and a test client of a host that routes with it, its endpoint started."""
    from wsgi_proxy_listen.cluster import RedisDirectory

    made: list[RedisWorker] = []
    try:
        for given in options:
            directory = RedisDirectory(url, secret=SECRET, lease=30, **given)
            registry = Registry(directory=directory)
            client = Client(ProxyMiddleware(Host(), registry), use_cookies=use_cookies)
            client.get("/", buffered=True)  # the first request starts the endpoint
            made.append(RedisWorker(directory, registry, client))
        yield made
    finally:
        for worker in made:
            worker.directory.close()
            worker.registry.close()
