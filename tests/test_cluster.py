"""Listeners across worker processes and hosts, with real gunicorn serving
examples/cluster/app.py on both directories: the embedded one (a folder) and Redis (a real
redis-server). Loopback only, bounded in time and count."""

from __future__ import annotations

import http.client
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import typing as t
from collections import Counter

import pytest

from wsgi_proxy_listen.answers import Failure, close

from .support.cluster import (
    NO_REDIS,
    REDIS,
    SECRET,
    Cluster,
    RedisServer,
    Shared,
    answers_within,
    concurrently,
    gunicorn,
    owner_in,
    short_folder,
    start_session,
    stop_session,
)
from .support.wire import Answer, exchange, get, peak_rss_growth_mib, upload_arrives_whole

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_a_run_time_listener_answers_from_every_worker(worker_class: str) -> None:
    """gunicorn -w 3 on the embedded directory, configured by nothing but a folder path."""
    folder = short_folder()
    try:
        with gunicorn(folder, workers=3, worker_class=worker_class) as cluster:
            owner = start_session(cluster, "s1")
            answers = concurrently(300, 12, lambda: get(cluster.port, "/proxy/sessions/s1/x?q=1"))
            expected = (200, f"s1 from {owner} path /x".encode())
            assert Counter((a.status, a.body) for a in answers) == Counter({expected: 300})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_reachable_from_every_worker_and_gone_everywhere_after_close(shared: Shared) -> None:
    with gunicorn(shared.name, workers=3) as cluster:
        owner = start_session(cluster, "s1")
        answers = concurrently(300, 12, lambda: get(cluster.port, "/proxy/sessions/s1/x"))
        assert Counter(a.body for a in answers) == Counter(
            {f"s1 from {owner} path /x".encode(): 300}
        )
        stop_session_in(cluster, "s1", owner)
        statuses, took = answers_within(cluster, "/proxy/sessions/s1/x", 404, 2.0)
        # Every worker has cached the location: each must drop it.
        later = Counter(
            a.status
            for a in concurrently(60, 12, lambda: get(cluster.port, "/proxy/sessions/s1/x"))
        )
        print(f"\n{shared.kind}: after close {statuses} in {took:.2f} s, then {dict(later)}")
        assert took < 2.0
        assert later == Counter({404: 60})


def stop_session_in(cluster: Cluster, session: str, owner: int) -> None:
    """DELETE the session in its owner: the DELETE may land in any worker, so repeat it."""
    for _ in range(200):
        request = f"DELETE /sessions/{session} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        if exchange(cluster.port, request.encode()).body == b"True":
            return
    raise AssertionError(f"no DELETE reached the owner {owner}")


def test_app_session_and_generic_app_paths(shared: Shared) -> None:
    with gunicorn(shared.name, workers=3) as cluster:
        owner = start_session(cluster, "m1", "?app=board")
        expected = f"m1 from {owner} path /y".encode()
        for path in ["/proxy/apps/board/sessions/m1/y", "/proxy/apps/board/y"]:
            answers = Counter(
                (a.status, a.body) for a in (get(cluster.port, path) for _ in range(100))
            )
            assert answers == Counter({(200, expected): 100}), path
        assert get(cluster.port, "/proxy/apps/other/sessions/m1/y").status == 404


def test_auto_start_runs_once_across_workers(shared: Shared) -> None:
    """12 concurrent first requests on the generic path of an app with a starter, 3 workers:
    one start, every request answered by the session it registered."""
    with gunicorn(shared.name, workers=3) as cluster:
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
        started = [item for item in shared.leftovers() if "dash-" in item]
        assert len(started) == 1, started


def test_an_idle_app_session_is_shut_down_and_started_afresh(shared: Shared) -> None:
    """gunicorn -w 3, an app with idle_timeout=1: requests through every worker keep its
    session alive (the owner counts the forwarded ones); a second without any closes it
    (its stop() runs in the owner), and the next request starts a new one."""
    with gunicorn(shared.name, workers=3, SCRATCHPAD_IDLE_TIMEOUT="1") as cluster:

        def session_of(answer: Answer) -> bytes:
            assert answer.status == 200, answer
            return answer.body.split(b" from ")[0]

        first = session_of(get(cluster.port, "/proxy/apps/scratchpad/"))
        began = time.monotonic()
        while time.monotonic() - began < 2.5:  # 2.5 s of requests, never 1 s apart
            answers = concurrently(6, 3, lambda: get(cluster.port, "/proxy/apps/scratchpad/"))
            assert {session_of(answer) for answer in answers} == {first}
            time.sleep(0.3)
        assert first.decode() not in cluster.log_text()
        deadline = time.monotonic() + 10
        while f"scratchpad session {first.decode()} stopped" not in cluster.log_text():
            assert time.monotonic() < deadline, "the idle session was never stopped"
            time.sleep(0.1)
        # Once its stop() has returned, the listener is closed and withdrawn.
        while (second := session_of(get(cluster.port, "/proxy/apps/scratchpad/"))) == first:
            assert time.monotonic() < deadline, "the stopped session still answers"
            time.sleep(0.05)
        answers = concurrently(6, 3, lambda: get(cluster.port, "/proxy/apps/scratchpad/"))
        assert {session_of(answer) for answer in answers} == {second}, "one new session"
        stale = get(cluster.port, f"/proxy/apps/scratchpad/sessions/{first.decode()}/")
        assert stale.status == 404


def test_two_server_instances_share_one_directory(shared: Shared) -> None:
    with gunicorn(shared.name, workers=2) as first, gunicorn(shared.name, workers=2) as second:
        owner_a = start_session(first, "on-a")
        owner_b = start_session(second, "on-b")
        for cluster in (first, second):
            for session, owner in (("on-a", owner_a), ("on-b", owner_b)):
                for _ in range(20):
                    answer = get(cluster.port, f"/proxy/sessions/{session}/")
                    assert answer.body == f"{session} from {owner} path /".encode()


def test_take_over_within_one_second(shared: Shared) -> None:
    with gunicorn(shared.name) as cluster:
        first = start_session(cluster, "moving")
        for _ in range(20):  # every worker caches where "moving" is
            get(cluster.port, "/proxy/sessions/moving/")
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


def test_bodies_stream_whole_through_the_hop(shared: Shared) -> None:
    """A 1 MB upload and a 5 MB stream arrive whole, whichever worker takes them."""
    with gunicorn(shared.name) as cluster:
        start_session(cluster, "bodies")
        for _ in range(4):
            upload_arrives_whole(cluster.port, "/proxy/sessions/bodies/upload", 1)
            assert download(cluster.port, "/proxy/sessions/bodies/download?mb=5") == 5 << 20


def download(port: int, path: str) -> int:
    # http.client undoes the chunked encoding gunicorn applies to a stream.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        received = 0
        while chunk := response.read(1 << 20):
            received += len(chunk)
        return received
    finally:
        connection.close()


def test_big_bodies_with_bounded_memory() -> None:
    """50 MB uploads and 100 MB downloads through the hop, every worker growing < 50 MB."""
    folder = short_folder()
    try:
        with gunicorn(folder) as cluster:
            owner = start_session(cluster, "big")
            with peak_rss_growth_mib(cluster.worker_pids()) as growth:
                for _ in range(3):
                    upload_arrives_whole(cluster.port, "/proxy/sessions/big/upload", 50)
                for _ in range(3):
                    assert (
                        download(cluster.port, "/proxy/sessions/big/download?mb=100") == 100 << 20
                    )
            print(f"\nowner {owner}; worker RSS growth in MiB: {growth}")
            assert max(growth.values()) < 50
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the internal endpoint ----------------------------------------------------------------------


def hop_to_owner(shared: Shared, session: str, path: str) -> tuple[int, bytes]:
    """A request to the owner of ``session``, sent as a peer sends it: a handshake (signed
    on Redis), then the frames of one request."""
    from wsgi_proxy_listen.cluster.hop import HopClient

    owner, address = t.cast(str, shared.owner_of(session)), shared.endpoint_of(session)
    client = HopClient(SECRET.encode() if shared.kind == "redis" else None, read_timeout=10)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.input": io.BytesIO()}
    started: list[str] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Any:
        started.append(status)

    try:
        answer = client.forward(owner, address, session, "/proxy", environ, start_response)
        assert not isinstance(answer, Failure), answer
        body = b"".join(answer)
        close(answer)  # as a server does (a whole small answer is a plain list)
        return int(started[0][:3]), body
    finally:
        client.clear()


def test_the_hop_serves_proxy_routes_only(shared: Shared) -> None:
    """A valid hop request whose path is a host route gets 404; the host app never runs."""
    with gunicorn(shared.name, workers=2) as cluster:
        start_session(cluster, "guarded")
        status, body = hop_to_owner(shared, "guarded", "/proxy/sessions/guarded/a")
        assert status == 200
        assert body.startswith(b"guarded from ")
        assert body.endswith(b" path /a")
        for path in ["/pid", "/sessions/evil", "/", "/proxy/other/x"]:
            status, body = hop_to_owner(shared, "guarded", path)
            assert status == 404, path
            assert not body.strip().isdigit(), "the host's /pid view ran"


def closed_by_peer(connection: socket.socket) -> bool:
    try:
        return connection.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_unauthenticated_hop_connections_are_refused() -> None:
    """On Redis the endpoint is a TCP port: a HELLO unsigned, signed with another secret,
    or for another process is refused, and a captured HELLO sent again gets nothing
    served (the embedded directory's socket is kept closed by the folder's permissions)."""
    if REDIS is None:
        pytest.skip(NO_REDIS)
    from wsgi_proxy_listen.cluster import frames
    from wsgi_proxy_listen.cluster.hop import pack

    server = RedisServer()
    server.start()
    try:
        shared = Shared("redis", server.url, server)
        with gunicorn(server.url, workers=2) as cluster:
            start_session(cluster, "guarded")
            address = shared.endpoint_of("guarded")
            owner = t.cast(str, shared.owner_of("guarded"))
            host, _, port = address.rpartition(":")

            def sent(payload: bytes) -> socket.socket:
                connection = socket.create_connection((host, int(port)), timeout=10)
                connection.sendall(struct.pack(">IB", len(payload), frames.HELLO) + payload)
                return connection

            for secret, target in ((None, owner), (b"wrong", owner), (SECRET.encode(), "x")):
                with sent(frames.hello(secret, target)[0]) as connection:
                    assert closed_by_peer(connection)
            captured = frames.hello(SECRET.encode(), owner)[0]
            with sent(captured) as connection:
                connection.recv(65536)  # welcomed: but without the secret, no key
                request = pack({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, "guarded", "/proxy")
                connection.sendall(struct.pack(">IB", len(request), frames.REQUEST) + request)
                connection.sendall(b"\x00" * 16)
                assert closed_by_peer(connection)
            assert hop_to_owner(shared, "guarded", "/proxy/sessions/guarded/")[0] == 200
    finally:
        server.stop()


def test_the_folder_and_sockets_are_closed_to_others() -> None:
    folder = os.path.join(short_folder(), "made")
    try:
        with gunicorn(folder, workers=2) as cluster:
            start_session(cluster, "private")
            assert os.stat(folder).st_mode & 0o777 == 0o700
            sockets = [name for name in os.listdir(folder) if name.endswith(".sock")]
            assert sockets
            for name in sockets:
                assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(os.path.dirname(folder), ignore_errors=True)


# -- faults ------------------------------------------------------------------------------------


def test_killed_owner_gives_502_then_404(shared: Shared) -> None:
    with gunicorn(shared.name) as cluster:
        owner = start_session(cluster, "doomed")
        for _ in range(20):
            get(cluster.port, "/proxy/sessions/doomed/")  # cached where it is
        os.kill(owner, signal.SIGKILL)
        # On one machine a refused connection to the owner's socket proves it gone; across
        # machines (Redis) the owner's lease decides: gone once it missed a renewal, a
        # heartbeat (lease / 3) and half a second after its last one.
        within = 3.0 if shared.kind == "embedded" else 10 / 3 + 0.5 + 2.0
        statuses, took = answers_within(cluster, "/proxy/sessions/doomed/", 404, within)
        print(f"\n{shared.kind}: after SIGKILL of the owner: {statuses} in {took:.2f} s")
        assert set(statuses) <= {502, 404, 200}, statuses
        assert statuses[-1] == 404, "the stale entry was removed"
        assert took < within
        if 502 in statuses:
            first_404 = statuses.index(404)
            assert 502 not in statuses[first_404:]
        assert shared.owner_of("doomed") is None


def test_graceful_exit_withdraws_everything(shared: Shared) -> None:
    with gunicorn(shared.name) as cluster:
        start_session(cluster, "leaving-1")
        start_session(cluster, "leaving-2", "?app=board")
        assert shared.owner_of("leaving-1") is not None
        cluster.process.terminate()  # gunicorn stops its workers gracefully
        cluster.process.wait(15)
    assert shared.leftovers() == []


def test_paused_owner_gives_504_at_the_read_timeout_then_404(shared: Shared) -> None:
    with gunicorn(shared.name, lease=3, read_timeout=1.5) as cluster:
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
            print(f"\n{shared.kind}: with the owner paused: {statuses}")
            # While its lease lasts: 504 at the read timeout on a connection it accepted
            # before, 502 where a new connection's handshake times out; then its entry
            # expires (404).
            assert statuses[0] in (502, 504)
            assert set(statuses) <= {502, 504, 404}
            assert 404 in statuses
            assert not {502, 504} & set(statuses[statuses.index(404) :])
        finally:
            os.kill(owner, signal.SIGCONT)


def test_load_with_take_overs_and_closes(shared: Shared) -> None:
    """32 clients, 6,400 requests over 20 sessions while five of them move and close:
    never a wrong listener, never a 5xx for a session that stays."""
    with gunicorn(shared.name) as cluster:
        sessions = [f"load-{i}" for i in range(20)]
        for session in sessions:
            start_session(cluster, session)
        counts: Counter[str] = Counter()
        problems: list[str] = []
        lock = threading.Lock()
        done = threading.Event()

        def churn() -> None:
            index = 0
            while not done.is_set():
                session = sessions[index % 5]  # only the first five move and close
                if index % 4 == 3:
                    stop_session(cluster, session)
                start_session(cluster, session)
                index += 1
                time.sleep(0.02)

        def client(offset: int) -> None:
            local: Counter[str] = Counter()
            mistakes = []
            for n in range(200):
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
        done.set()
        churner.join()
        elapsed = time.monotonic() - began
        total = sum(counts.values()) + len(problems)
        print(
            f"\n{shared.kind} load: {total} requests in {elapsed:.1f} s"
            f" ({total / elapsed:.0f}/s): {dict(counts)}"
        )
        assert problems == []
        assert total == 200 * 32


def test_redis_outage_and_return() -> None:
    """Redis stopped: the owner keeps serving its listener, others answer 503 with one log
    line per process; back within a second of Redis returning, sessions published again."""
    if REDIS is None:
        pytest.skip(NO_REDIS)
    server = RedisServer()
    server.start()
    try:
        with gunicorn(server.url) as cluster:
            owner = start_session(cluster, "steady")
            server.stop()
            seen: Counter[int] = Counter()
            # Several at once, until the owner took some: the kernel hands sequential
            # connections to the workers unevenly, sometimes 28 of 30 to one of four.
            deadline = time.monotonic() + 10
            while not seen[200] and time.monotonic() < deadline:
                for answer in concurrently(
                    24, 8, lambda: get(cluster.port, "/proxy/sessions/steady/")
                ):
                    seen[answer.status] += 1
                    if answer.status == 200:
                        assert owner_in(answer.body) == owner
            print(f"\nwith Redis down: {dict(seen)}")
            assert set(seen) <= {200, 503}
            assert seen[200] > 0, "the owner still serves its own listener"
            assert seen[503] > 0, "other workers cannot find it"
            outage_lines = cluster.log_text().count("cannot be reached")
            assert 1 <= outage_lines <= 4, "one line per worker and outage, not per request"
            server.start()
            time.sleep(1.0)  # every worker recovers within a second, its listeners published
            answers = Counter(
                a.status
                for a in concurrently(60, 6, lambda: get(cluster.port, "/proxy/sessions/steady/"))
            )
            assert answers == Counter({200: 60})
    finally:
        server.stop()


def test_paused_redis_costs_one_timeout_per_process_not_per_request() -> None:
    """SIGSTOP on Redis: a request for another worker's listener waits for Redis once per
    worker, then gets 503 at once; after SIGCONT, requests are answered again within 1 s."""
    if REDIS is None:
        pytest.skip(NO_REDIS)
    server = RedisServer()
    server.start()
    process = t.cast("subprocess.Popen[bytes]", server.process)
    try:
        with gunicorn(server.url) as cluster:
            start_session(cluster, "remote")
            os.kill(process.pid, signal.SIGSTOP)
            try:
                slow = 0
                statuses: Counter[int] = Counter()
                for _ in range(40):
                    began = time.monotonic()
                    answer = get(cluster.port, "/proxy/sessions/remote/", timeout=10)
                    statuses[answer.status] += 1
                    slow += time.monotonic() - began > 0.5
                print(f"\nwith Redis paused: {dict(statuses)}, {slow} slow requests")
                assert set(statuses) <= {200, 503}
                assert slow <= 4, "one timeout per worker and outage"
            finally:
                os.kill(process.pid, signal.SIGCONT)
            time.sleep(1.0)  # every worker recovers within a second
            answers = Counter(
                a.status
                for a in concurrently(60, 6, lambda: get(cluster.port, "/proxy/sessions/remote/"))
            )
            assert answers == Counter({200: 60})
    finally:
        server.stop()
