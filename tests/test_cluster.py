"""Listeners across worker processes and hosts (CLUSTER.md), with a real redis-server and real
``gunicorn -w 4`` serving examples/cluster/app.py. Loopback only, bounded in time and count."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_servers import (
    Answer,
    exchange,
    free_port,
    get,
    peak_rss_growth_mib,
    stop,
    upload_arrives_whole,
    wait_until_listening,
)

ROOT = Path(__file__).resolve().parent.parent
REDIS = shutil.which("redis-server")
SECRET = "tests-secret"

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        REDIS is None,
        reason="CLUSTER TESTS SKIPPED: no redis-server binary; install Debian's redis-server"
        " package (apt-get install redis-server), as .ci/run does",
    ),
]


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
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
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


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Cluster(t.NamedTuple):
    port: int
    process: subprocess.Popen[bytes]
    log: t.IO[bytes]

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@contextlib.contextmanager
def gunicorn(redis_url: str, workers: int = 4, **env: str) -> Iterator[Cluster]:
    port = free_port()
    with open(os.devnull, "rb") as stdin, tempfile_log() as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "examples/cluster/gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                str(workers),
                "examples.cluster.app:app",
            ],
            cwd=ROOT,
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "REDIS_URL": redis_url,
                "WSGI_PROXY_LISTEN_SECRET": SECRET,
                "WSGI_PROXY_LISTEN_LEASE": "3",
                **env,
            },
        )
        try:
            wait_until_listening(process, port, log)
            cluster = Cluster(port, process, log)
            warm_up(cluster, workers)
            yield cluster
        finally:
            stop(process)


@contextlib.contextmanager
def tempfile_log() -> Iterator[t.IO[bytes]]:
    import tempfile

    with tempfile.TemporaryFile() as log:
        yield log


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


def owner_in(body: bytes) -> int:
    return int(body.split(b" from ")[1].split()[0])


# -- reachability -------------------------------------------------------------------------------


def test_a_session_is_reachable_from_every_worker(redis_server: RedisServer) -> None:
    with gunicorn(redis_server.url) as cluster:
        owner = start_session(cluster, "s1")
        bodies = Counter(get(cluster.port, "/proxy/sessions/s1/x").body for _ in range(500))
        assert bodies == Counter({f"s1 from {owner} path /x".encode(): 500})


def test_app_session_and_generic_app_paths(redis_server: RedisServer) -> None:
    with gunicorn(redis_server.url) as cluster:
        owner = start_session(cluster, "m1", "?app=board")
        expected = f"m1 from {owner} path /y".encode()
        for path in ["/proxy/apps/board/sessions/m1/y", "/proxy/apps/board/y"]:
            answers = Counter(
                (a.status, a.body) for a in (get(cluster.port, path) for _ in range(200))
            )
            assert answers == Counter({(200, expected): 200}), path
        assert get(cluster.port, "/proxy/apps/other/sessions/m1/y").status == 404


def test_auto_start_runs_once_cluster_wide(redis_server: RedisServer) -> None:
    with gunicorn(redis_server.url) as cluster:
        results: list[Answer] = []

        def first() -> None:
            results.append(get(cluster.port, "/proxy/apps/dashboard/"))

        threads = [threading.Thread(target=first) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sessions = {answer.body.split(b" from ")[0] for answer in results}
        assert [answer.status for answer in results] == [200] * 12
        assert len(sessions) == 1, sessions
        assert (
            sum(
                key.startswith("wsgi-proxy-listen:session:dash-") for key in redis_server.keys_now()
            )
            == 1
        )


def test_big_bodies_through_the_hop(redis_server: RedisServer) -> None:
    """A 50 MB upload and a 100 MB download arrive whole through the hop, with every worker's
    memory growth under 50 MB."""
    with gunicorn(redis_server.url) as cluster:
        owner = start_session(cluster, "big")
        pids = [
            int(line.split()[-1])
            for line in cluster.log_text().splitlines()
            if "Booting worker" in line
        ]
        with peak_rss_growth_mib(pids) as growth:
            for _ in range(3):
                upload_arrives_whole(cluster.port, "/proxy/sessions/big/upload", 50)
            for _ in range(3):
                # http.client undoes the chunked encoding gunicorn applies to a stream.
                connection = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=120)
                connection.request("GET", "/proxy/sessions/big/download?mb=100")
                response = connection.getresponse()
                received = 0
                while chunk := response.read(1 << 20):
                    received += len(chunk)
                connection.close()
                assert response.status == 200
                assert received == 100 * 1024 * 1024
        print(f"\nowner {owner}; worker RSS growth in MiB: {growth}")
        assert max(growth.values()) < 50


def test_two_hosts_share_one_redis(redis_server: RedisServer) -> None:
    with (
        gunicorn(redis_server.url, workers=2) as first,
        gunicorn(redis_server.url, workers=2) as second,
    ):
        owner_a = start_session(first, "on-a")
        owner_b = start_session(second, "on-b")
        for cluster in (first, second):
            for session, owner in (("on-a", owner_a), ("on-b", owner_b)):
                for _ in range(20):
                    answer = get(cluster.port, f"/proxy/sessions/{session}/")
                    assert answer.body == f"{session} from {owner} path /".encode()


def test_take_over_within_one_second(redis_server: RedisServer) -> None:
    with gunicorn(redis_server.url) as cluster:
        first = start_session(cluster, "moving")
        second = first
        for _ in range(100):
            second = start_session(cluster, "moving")
            if second != first:
                break
        assert second != first, "no other worker took the POST"
        time.sleep(1.0)
        owners = Counter(
            owner_in(get(cluster.port, "/proxy/sessions/moving/").body) for _ in range(100)
        )
        assert owners == Counter({second: 100})


# -- faults ------------------------------------------------------------------------------------


def test_killed_owner_gives_503_fast_and_its_entries_go(redis_server: RedisServer) -> None:
    with gunicorn(redis_server.url) as cluster:
        owner = start_session(cluster, "doomed")
        os.kill(owner, signal.SIGKILL)
        statuses = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            began = time.monotonic()
            answer = get(cluster.port, "/proxy/sessions/doomed/")
            took = time.monotonic() - began
            assert took < 2.0, f"a request took {took:.1f} s"
            statuses.append(answer.status)
            if answer.status == 404:
                break
        print(f"\nafter SIGKILL of the owner: {Counter(statuses)}")
        assert set(statuses) <= {503, 404}
        assert statuses[-1] == 404, "the stale entry was removed"
        assert "wsgi-proxy-listen:session:doomed" not in redis_server.keys_now()


def test_graceful_exit_withdraws_the_entries(redis_server: RedisServer) -> None:
    with gunicorn(redis_server.url) as cluster:
        start_session(cluster, "leaving-1")
        start_session(cluster, "leaving-2", "?app=board")
        assert "wsgi-proxy-listen:session:leaving-1" in redis_server.keys_now()
        cluster.process.terminate()  # gunicorn stops its workers gracefully
        cluster.process.wait(15)
    assert redis_server.keys_now() == []


def test_redis_outage_and_return(redis_server: RedisServer) -> None:
    with gunicorn(redis_server.url) as cluster:
        owner = start_session(cluster, "steady")
        redis_server.stop()
        seen: Counter[int] = Counter()
        for _ in range(60):
            answer = get(cluster.port, "/proxy/sessions/steady/")
            seen[answer.status] += 1
            if answer.status == 200:
                assert owner_in(answer.body) == owner
        print(f"\nwith Redis down: {dict(seen)}")
        assert set(seen) <= {200, 503}
        assert seen[200] > 0, "the owner still serves its own listener"
        assert seen[503] > 0, "other workers cannot find it"
        outage_lines = cluster.log_text().count("cannot be reached")
        assert 1 <= outage_lines <= 4, "one line per worker and outage, not per request"
        redis_server.process = None
        redis_server.start()
        time.sleep(3 / 3 + 1.5)
        answers = Counter(get(cluster.port, "/proxy/sessions/steady/").status for _ in range(60))
        assert answers == Counter({200: 60})


def test_paused_owner_gives_504_at_the_read_timeout(redis_server: RedisServer) -> None:
    with gunicorn(redis_server.url, WSGI_PROXY_LISTEN_READ_TIMEOUT="1.5") as cluster:
        owner = start_session(cluster, "frozen")
        os.kill(owner, signal.SIGSTOP)
        try:
            statuses: list[int] = []
            for _ in range(8):
                began = time.monotonic()
                try:
                    answer = get(cluster.port, "/proxy/sessions/frozen/", timeout=6)
                except TimeoutError:
                    continue  # the paused worker itself had accepted the connection
                statuses.append(answer.status)
                assert time.monotonic() - began < 5
            print(f"\nwith the owner paused: {statuses}")
            # 504 at the read timeout while its lease lasts; then its entry expires (404).
            assert statuses[0] == 504
            assert set(statuses) <= {504, 404}
            first_404 = statuses.index(404) if 404 in statuses else len(statuses)
            assert 504 not in statuses[first_404:]
        finally:
            os.kill(owner, signal.SIGCONT)


def test_unsigned_or_replayed_hop_requests_get_403(redis_server: RedisServer) -> None:
    import redis

    with gunicorn(redis_server.url) as cluster:
        start_session(cluster, "guarded")
        client = redis.Redis.from_url(redis_server.url)
        value = t.cast(bytes, client.get("wsgi-proxy-listen:session:guarded")).decode()
        client.close()
        owner_id, address = value.split()[:2]
        port = address.rsplit(":", 1)[1]
        unsigned = exchange(
            int(port),
            b"GET /wsgi-proxy-listen/hop HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert unsigned.status == 403
        from wsgi_proxy_listen.cluster.hop import _signature

        meta = "e30="  # {}
        stamp = f"{time.time():.3f}"
        signature = _signature(SECRET.encode(), owner_id, "GET", meta, stamp, "n1")
        signed = (
            "GET /wsgi-proxy-listen/hop HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"X-Wsgi-Proxy-Listen-Environ: {meta}\r\nX-Wsgi-Proxy-Listen-Stamp: {stamp}\r\n"
            f"X-Wsgi-Proxy-Listen-Nonce: n1\r\nX-Wsgi-Proxy-Listen-Signature: {signature}\r\n\r\n"
        ).encode()
        first = exchange(int(port), signed)
        assert first.status != 403
        replayed = exchange(int(port), signed)
        assert replayed.status == 403
        forged = exchange(int(port), signed.replace(b"n1\r\n", b"n2\r\n"))
        assert forged.status == 403
        old = _signature(SECRET.encode(), owner_id, "GET", meta, "1000.000", "n3")
        stale = (
            signed.decode()
            .replace(stamp, "1000.000")
            .replace("n1\r\n", "n3\r\n")
            .replace(signature, old)
            .encode()
        )
        assert exchange(int(port), stale).status == 403


def test_load_with_take_overs_and_closes(redis_server: RedisServer) -> None:
    """32 clients, 10,000 requests over 20 sessions while sessions move and close."""
    with gunicorn(redis_server.url) as cluster:
        sessions = [f"load-{i}" for i in range(20)]
        for session in sessions:
            start_session(cluster, session)
        counts: Counter[str] = Counter()
        problems: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def churn() -> None:
            index = 0
            while not stop.is_set():
                session = sessions[index % 5]  # only the first five move and close
                if index % 4 == 3:
                    delete = f"DELETE /sessions/{session} HTTP/1.1\r\nHost: x\r\n"
                    exchange(cluster.port, f"{delete}Connection: close\r\n\r\n".encode())
                start_session(cluster, session)
                index += 1
                time.sleep(0.02)

        def client(offset: int) -> None:
            local: Counter[str] = Counter()
            mistakes = []
            for n in range(10_000 // 32):
                session = sessions[(offset + n) % 20]
                answer = get(cluster.port, f"/proxy/sessions/{session}/")
                if answer.status == 200:
                    local["200"] += 1
                    if not answer.body.startswith(f"{session} from ".encode()):
                        mistakes.append(f"{session}: {answer.body[:60]!r}")
                elif answer.status in (404, 503) and sessions.index(session) < 5:
                    local[str(answer.status)] += 1
                else:
                    mistakes.append(f"{session}: {answer.status}")
            with lock:
                counts.update(local)
                problems.extend(mistakes)

        churner = threading.Thread(target=churn)
        churner.start()
        began = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        churner.join()
        elapsed = time.monotonic() - began
        total = sum(counts.values()) + len(problems)
        print(
            f"\ncluster load: {total} requests in {elapsed:.1f} s"
            f" ({total / elapsed:.0f}/s): {dict(counts)}"
        )
        assert problems == []
        assert total == (10_000 // 32) * 32


def test_the_cluster_package_is_not_imported_by_default() -> None:
    code = (
        "import sys, wsgi_proxy_listen; print(sorted(m for m in sys.modules"
        " if m.startswith(('redis', 'urllib3', 'waitress', 'wsgi_proxy_listen.cluster'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_directory_rejects_wrong_settings() -> None:
    from wsgi_proxy_listen.cluster import RedisDirectory

    with pytest.raises(ValueError, match="non-empty secret"):
        RedisDirectory("redis://127.0.0.1:1/0", secret="")
    with pytest.raises(ValueError, match="invalid lease"):
        RedisDirectory("redis://127.0.0.1:1/0", secret="s", lease=0)


# -- in one process: two directories stand for two workers -------------------------------------


@contextlib.contextmanager
def worker(redis_url: str) -> Iterator[tuple[t.Any, t.Any, t.Any]]:
    """A registry with a RedisDirectory and a client through its middleware, serving."""
    from werkzeug.test import Client

    from wsgi_proxy_listen import ProxyMiddleware, Registry
    from wsgi_proxy_listen.cluster import RedisDirectory

    from .conftest import Host

    directory = RedisDirectory(redis_url, secret=SECRET, lease=3)
    registry = Registry(directory=directory)
    client = Client(ProxyMiddleware(Host(), registry))
    client.get("/", buffered=True)  # the first request starts the directory's threads
    try:
        yield directory, registry, client
    finally:
        directory.close()


def text(answer: str) -> t.Callable[[t.Any], str]:
    return lambda request: answer


def test_a_late_take_over_notice_does_not_drop_a_newer_listener(redis_server: RedisServer) -> None:
    """A owns s1, B takes it over, A takes it back at once: A's subscriber may hear B's
    notice after that, and must not drop its newer listener (Redis names A again)."""
    with worker(redis_server.url) as (a_dir, a_reg, _), worker(redis_server.url) as (_, b_reg, b):
        for round_ in range(5):
            a_reg.listen(text("a-old"), session="s1")
            b_reg.listen(text("b"), session="s1")
            newest = a_reg.listen(text(f"a-new-{round_}"), session="s1")
            time.sleep(1.2)
            assert a_reg.get("s1") is newest
            assert b_reg.get("s1") is None
            owner = redis_server_value(redis_server, "s1").split()[0]
            assert owner == a_dir.owner
            assert b.get("/proxy/sessions/s1/", buffered=True).data == f"a-new-{round_}".encode()


def redis_server_value(redis_server: RedisServer, session: str) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        return t.cast(bytes, client.get(f"wsgi-proxy-listen:session:{session}")).decode()
    finally:
        client.close()


def test_a_failed_cluster_auto_start_is_retried_by_the_next_request(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The cluster-wide start lock is released when a start ends, so the next request
    starts again instead of waiting for the lock to expire (SPEC §4)."""
    caplog.set_level(logging.ERROR, logger="wsgi_proxy_listen")
    with worker(redis_server.url) as (_, registry, client):
        attempts: list[int] = []

        def start() -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("the first start fails")
            registry.listen(text("started"), session="f1", app="flaky")

        registry.register_app("flaky", start=start, start_timeout=20)
        first = client.get("/proxy/apps/flaky/", buffered=True)
        assert first.status_code == 503
        second = client.get("/proxy/apps/flaky/", buffered=True)
        assert (second.status_code, second.data) == (200, b"started")
        assert attempts == [1, 1]
        assert "start of app 'flaky' raised" in caplog.text


def test_concurrent_listens_in_one_worker_stay_published(redis_server: RedisServer) -> None:
    """Two threads of one worker listen() for the same session at once, many times: the
    session stays in Redis under this worker and reachable from the other."""
    with worker(redis_server.url) as (a_dir, a_reg, _), worker(redis_server.url) as (_, _, b):
        for round_ in range(30):
            session = f"race-{round_}"
            threads = [
                threading.Thread(
                    target=a_reg.listen, args=(text(f"{session} {n}"),), kwargs={"session": session}
                )
                for n in range(2)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        time.sleep(1.5)  # one heartbeat (lease 3 s / 3) rewrites any entry a loser wrote
        for round_ in range(30):
            session = f"race-{round_}"
            assert redis_server_value(redis_server, session).split()[0] == a_dir.owner
            answer = b.get(f"/proxy/sessions/{session}/", buffered=True)
            assert answer.status_code == 200
            assert answer.data == a_reg.get(session).handler(None).encode()


def test_the_hop_keeps_query_host_and_headers_as_sent(redis_server: RedisServer) -> None:
    """What the owner's listener sees is what the receiving worker got: the raw query
    (urllib3 would re-quote a URL), the client's Host or none, no added User-Agent."""
    seen: list[dict[str, t.Any]] = []

    def record(request: t.Any) -> str:
        seen.append(dict(request.environ))
        return "ok"

    with worker(redis_server.url) as (_, a_reg, _), worker(redis_server.url) as (_, _, b):
        a_reg.listen(record, session="echo")
        query = 'x={1}&y="q"&z=a|b&ids[]=1&w=%C3%A9&v=`t`^'
        answer = b.get(f"/proxy/sessions/echo/p?{query}", buffered=True, headers={"X-Test": "1"})
        assert answer.status_code == 200
        environ = seen[-1]
        assert environ["QUERY_STRING"] == query
        assert environ["HTTP_HOST"] == "localhost"
        assert environ["SERVER_NAME"] == "localhost"
        assert environ["HTTP_X_TEST"] == "1"
        assert "HTTP_USER_AGENT" not in environ
        assert "HTTP_ACCEPT_ENCODING" not in environ
        assert "via" not in {name.lower() for name, _ in answer.headers}


class _Aborting:
    """A request body whose client goes away after the first chunk."""

    def __init__(self) -> None:
        self.sent = False

    def read(self, size: int = -1) -> bytes:
        if self.sent:
            raise OSError("the client went away")
        self.sent = True
        return b"x" * 1000


def test_a_client_that_aborts_its_upload_is_not_the_owners_fault(redis_server: RedisServer) -> None:
    with worker(redis_server.url) as (a_dir, a_reg, _), worker(redis_server.url) as (_, _, b):
        a_reg.listen(lambda request: str(len(request.get_data())), session="up")
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
        assert redis_server_value(redis_server, "up").split()[0] == a_dir.owner


def test_an_ipv6_advertise_host(redis_server: RedisServer) -> None:
    from werkzeug.test import Client

    from wsgi_proxy_listen import ProxyMiddleware, Registry
    from wsgi_proxy_listen.cluster import RedisDirectory

    from .conftest import Host

    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    directory = RedisDirectory(redis_server.url, secret=SECRET, lease=3, advertise_host="::1")
    registry = Registry(directory=directory)
    Client(ProxyMiddleware(Host(), registry)).get("/", buffered=True)
    try:
        assert directory.address.startswith("[::1]:")
        registry.listen(text("over ipv6"), session="v6")
        with worker(redis_server.url) as (_, _, b):
            assert b.get("/proxy/sessions/v6/", buffered=True).data == b"over ipv6"
    finally:
        directory.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_does_not_keep_the_endpoint_socket(redis_server: RedisServer) -> None:
    """After a fork the child closes its copy of the parent's listening socket: otherwise,
    once the parent died, the port would still accept hop requests nobody answers."""
    with worker(redis_server.url) as (a_dir, _, _):
        listening = os.fstat(a_dir._server.socket.fileno()).st_ino
        child = os.fork()
        if child == 0:
            time.sleep(5)
            os._exit(0)
        try:
            deadline = time.monotonic() + 5
            inherited = True
            while inherited and time.monotonic() < deadline:
                links = []
                for fd in os.listdir(f"/proc/{child}/fd"):
                    with contextlib.suppress(OSError):
                        links.append(os.readlink(f"/proc/{child}/fd/{fd}"))
                inherited = f"socket:[{listening}]" in links
                time.sleep(0.05)
            assert not inherited
        finally:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
