"""The middleware under real servers: gunicorn (sync and gthread workers), waitress and
werkzeug's dev server, each a subprocess on 127.0.0.1, spoken to over raw sockets so that
no client library normalises the path.

The servers disagree on what they hand the app (gunicorn keeps ``//``, waitress collapses
leading slashes, werkzeug's server turns ``%FF`` into U+FFFD); the answers below are the
same safe ones on each, and where a server's own behaviour makes them differ, the table says
which and why.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import typing as t
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from .support.corpus import HOST, REQUESTS
from .support.servers import SERVERS, STYLE, THREADED, Server, running
from .support.wire import (
    Answer,
    exchange,
    get,
    peak_rss_growth_mib,
    upload_arrives_whole,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with running(request.param) as started:
        yield started


def closed_count(server: Server, name: str) -> int:
    return int(json.loads(get(server.port, "/host/closed").body).get(name, 0))


# -- the corpus on the wire ------------------------------------------------------------------

WIRE_CASES = [case for case in REQUESTS if len(case[1]) < 4000]


def wire_expectation(case: t.Any, server: str) -> tuple[int, str | None] | None:
    _, raw, status, who = case
    style = STYLE[server]
    expected = status.get(style) if isinstance(status, dict) else (status, who)
    if server == "werkzeug" and raw.startswith("//"):
        # Python's http.server collapses leading slashes of the request line itself
        # (gh-87389), so werkzeug's server sees and reports "/proxy/sessions/a/x".
        return (200, "a")
    return expected


@pytest.mark.parametrize("case", WIRE_CASES, ids=[case[0] for case in WIRE_CASES])
def test_corpus_on_the_wire(server: Server, case: t.Any) -> None:
    expected = wire_expectation(case, server.name)
    assert expected is not None
    status, who = expected
    answer = get(server.port, case[1])
    assert answer.status == status, answer.head
    if who is None:
        assert b"text/plain; charset=utf-8" in answer.head
        assert answer.body.split(b":")[0] in {b"400 Bad Request", b"404 Not Found"}
    elif who == HOST:
        assert answer.body.startswith(b"host ")
    else:
        assert json.loads(answer.body)["listener"] == who


def test_long_paths_on_the_wire(server: Server) -> None:
    """A 10 KB id and 10,000 slashes reach the middleware and get its 404 at once."""
    for target in ["/proxy/sessions/" + "a" * 10_240 + "/x", "/proxy/sessions/" + "/" * 10_000]:
        answer = get(server.port, target)
        assert answer.status == 404, answer.head
        assert answer.body.startswith(b"404 Not Found:")


@pytest.mark.parametrize("kind", ["value", "name", "status"])
def test_crlf_from_a_listener_never_reaches_the_wire(server: Server, kind: str) -> None:
    answer = get(server.port, f"/proxy/sessions/crlf/{kind}")
    assert answer.status == 500
    assert b"X-Injected" not in answer.head + answer.body
    assert b"SECRET-BODY" not in answer.body
    assert b"Traceback" not in answer.body


# -- big bodies -------------------------------------------------------------------------------


def test_200_mb_streamed_response_with_bounded_memory(server: Server) -> None:
    pid = int(get(server.port, "/host/pid").body)
    received = 0
    with peak_rss_growth_mib([pid]) as growth:
        request = (
            b"GET /proxy/sessions/stream/?mb=200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as connection:
            connection.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(65536)
            head, _, rest = head.partition(b"\r\n\r\n")
            received = len(rest)
            while chunk := connection.recv(1 << 20):
                received += len(chunk)
    assert head.startswith(b"HTTP/1.1 200")
    assert received == 200 * 1024 * 1024
    print(f"{server.name}: 200 MB streamed, worker RSS growth {growth[pid]:.1f} MiB")
    assert growth[pid] < 50


def test_50_mb_upload_arrives_whole(server: Server) -> None:
    upload_arrives_whole(server.port, "/proxy/sessions/upload/", 50)


def test_client_disconnect_mid_stream_closes_the_iterable(server: Server) -> None:
    before = closed_count(server, "stream")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(b"GET /proxy/sessions/stream/?mb=500 HTTP/1.1\r\nHost: x\r\n\r\n")
        received = 0
        while received < 1024 * 1024:
            received += len(connection.recv(65536))
        connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
    deadline = time.monotonic() + 60
    while closed_count(server, "stream") == before:
        assert time.monotonic() < deadline, "close() was not called after the client left"
        time.sleep(0.1)
    assert closed_count(server, "stream") == before + 1


# -- every response path, as PEP 3333 wants it, on the wire -----------------------------------


def header_lines(answer: Answer) -> list[str]:
    return answer.head.decode("latin-1").split("\r\n")[1:]


def wait_closed(server: Server, name: str, expected: int) -> None:
    """A server closes the iterable just after the last byte went out."""
    deadline = time.monotonic() + 10
    while closed_count(server, name) < expected:
        assert time.monotonic() < deadline, f"{name} was closed {closed_count(server, name)} times"
        time.sleep(0.05)
    assert closed_count(server, name) == expected


def test_a_failure_after_start_response_is_a_clean_500(server: Server) -> None:
    """Finding 5: the listener's headers never reach the server, so the 500 is not
    merged with them (gunicorn appended ours to theirs: two lengths and its cookie)."""
    answer = get(server.port, "/proxy/sessions/raise-after-start/")
    lines = header_lines(answer)
    assert answer.status == 500
    assert sum(line.lower().startswith("content-length:") for line in lines) == 1
    assert not any(line.lower().startswith("set-cookie") for line in lines)
    assert answer.body.startswith(b"500 Internal Server Error")


@pytest.mark.parametrize(
    ("path", "name", "status", "body"),
    [
        pytest.param("/", "iterator", 200, b"one two", id="alone"),
        pytest.param("/tuple", "iterator-tuple", 201, b"made it", id="in-a-tuple"),
    ],
)
def test_an_iterator_that_is_not_a_generator_is_closed(
    server: Server, path: str, name: str, status: int, body: bytes
) -> None:
    """Finding 6: a request handler's iterator object is closed when the answer ends."""
    before = closed_count(server, name)
    # http.client undoes the chunked encoding of an answer that gave no length.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", f"/proxy/sessions/iterator{path}")
        response = connection.getresponse()
        assert (response.status, response.read()) == (status, body)
    finally:
        connection.close()
    wait_closed(server, name, before + 1)


@pytest.mark.parametrize("session", ["invalid-header", "invalid-header-webob"])
def test_an_invalid_header_from_a_response_object_is_a_500_and_its_body_is_closed(
    server: Server, session: str
) -> None:
    """Finding 7: the guard no longer raises inside the listener, which returns its body,
    which is closed."""
    before = closed_count(server, session)
    answer = get(server.port, f"/proxy/sessions/{session}/")
    assert answer.status == 500
    assert b"SECRET-BODY" not in answer.body
    assert b"Bad Name" not in answer.head
    wait_closed(server, session, before + 1)


def test_headers_given_as_an_iterator_reach_the_wire(server: Server) -> None:
    """Finding 8: the check no longer consumes them."""
    answer = get(server.port, "/proxy/sessions/iterator-headers/")
    assert (answer.status, answer.body) == (200, b"ok")
    assert "X-From-Iterator: 1" in header_lines(answer)


def test_a_header_added_after_start_response_never_reaches_the_wire(server: Server) -> None:
    """Finding 9: the server gets a copy of the checked headers, not the listener's list."""
    answer = get(server.port, "/proxy/sessions/appends-after/")
    assert answer.status == 200
    assert b"X-Injected" not in answer.head


@pytest.mark.parametrize("case", ["/two", "/conflict", "/negative"])
def test_a_content_length_must_be_one_non_negative_integer(server: Server, case: str) -> None:
    """Finding 10: two lengths, conflicting ones or -1 are a 500."""
    answer = get(server.port, f"/proxy/sessions/lengths{case}")
    assert answer.status == 500
    assert sum(line.lower().startswith("content-length:") for line in header_lines(answer)) == 1


def test_headers_named_in_connection_are_dropped(server: Server) -> None:
    answer = get(server.port, "/proxy/sessions/lengths/named")
    assert (answer.status, answer.body) == (200, b"ok")
    assert b"X-Secret" not in answer.head
    assert b"internal" not in answer.head


def test_text_in_a_list_body_is_a_500_before_the_first_byte(server: Server) -> None:
    """Finding 11: a str in a list body reached the server, which cut the answer."""
    answer = get(server.port, "/proxy/sessions/text-chunk/")
    assert answer.status == 500
    assert b"text, not bytes" not in answer.body


@pytest.mark.parametrize("kind", ["text", "bytes", "bytearray"])
def test_a_bare_str_or_bytes_iterable_is_a_500_before_the_first_byte(
    server: Server, kind: str
) -> None:
    """Found in review: a str or bytes returned whole as the iterable was a 200 with a cut
    body on every server (iterating it gives characters, or ints)."""
    answer = get(server.port, f"/proxy/sessions/bare/{kind}")
    assert answer.status == 500
    assert b"a whole body" not in answer.body
    assert answer.body == b"500 Internal Server Error: The listener failed to answer.\n"


@pytest.mark.parametrize("name", ["gunicorn-gthread", "waitress"])
def test_a_hanging_start_and_a_hanging_listener_leave_the_host_answering(name: str) -> None:
    """Finding 4: 8 clients wait on an auto-start that hangs and 8 on a listener that
    hangs, on a server of 8 threads: the caps (4 waiting, 3 running) leave a thread for the
    host, which keeps answering within 100 ms; the requests beyond them get 503 at once."""
    with running(name) as server:
        answers: list[int] = []
        lock = threading.Lock()

        def client(path: str) -> None:
            status = get(server.port, path, timeout=90).status
            with lock:
                answers.append(status)

        clients = [
            threading.Thread(target=client, args=(path,))
            for path in ["/proxy/apps/hang/", "/proxy/sessions/stall/"]
            for _ in range(8)
        ]
        for thread in clients:
            thread.start()
        try:
            deadline = time.monotonic() + 10
            while sum(status == 503 for status in answers) < 9:  # 4 + 5 refused at once
                assert time.monotonic() < deadline, f"not refused at once: {answers}"
                time.sleep(0.05)
            took = []
            for _ in range(20):
                began = time.monotonic()
                assert get(server.port, "/host/pid").status == 200
                took.append(time.monotonic() - began)
            print(f"\n{name}: host answered in at most {max(took) * 1000:.0f} ms")
            assert max(took) < 0.1
        finally:
            get(server.port, "/host/release")
            for thread in clients:
                thread.join()
        assert sorted(answers) == [200] * 7 + [503] * 9


@pytest.mark.parametrize("name", THREADED)
def test_a_sleeping_listener_blocks_nothing_else(name: str) -> None:
    """Under a threaded server, while one listener sleeps, the host and other listeners answer."""
    with running(name) as started:
        sleeper_done = threading.Event()

        def sleeper() -> None:
            assert get(started.port, "/proxy/sessions/sleep/?seconds=5").body == b"slept"
            sleeper_done.set()

        thread = threading.Thread(target=sleeper)
        thread.start()
        time.sleep(0.3)
        try:
            assert get(started.port, "/").body == b"host /"
            assert json.loads(get(started.port, "/proxy/sessions/a/").body)["listener"] == "a"
            assert not sleeper_done.is_set(), "the fast requests finished while the listener slept"
        finally:
            thread.join(30)
        assert sleeper_done.is_set()


def test_startup_listeners_exist_in_every_worker() -> None:
    """The documented start-up recipe (examples/startup_listeners.py) under gunicorn -w 2: listeners
    registered in post_fork answer in every worker; a run-time listener answers only in its
    own worker, and each other worker that misses it logs the warning once."""
    with running("gunicorn-startup-example") as started:
        for _ in range(20):
            answer = get(started.port, "/proxy/sessions/status/")
            assert answer.status == 200
            assert answer.body.startswith(b"status from worker ")
        created = exchange(
            started.port,
            b"POST /start/rt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        assert created.status == 200
        # Eight at a time, so that both workers take some: one after the other, the
        # kernel may give every connection to the same worker.
        statuses: Counter[int] = Counter()
        deadline = time.monotonic() + 20
        with ThreadPoolExecutor(8) as pool:
            while statuses[200] == 0 or statuses.total() < 40:
                assert time.monotonic() < deadline, f"never the owner: {dict(statuses)}"
                batch = pool.map(lambda _: get(started.port, "/proxy/sessions/rt/"), range(8))
                statuses.update(answer.status for answer in batch)
        assert set(statuses) <= {200, 404}
        started.process.terminate()
        started.process.wait(10)
        started.log.seek(0)
        log = started.log.read().decode(errors="replace")
    warnings = log.count("found no listener in worker process")
    print(f"run-time listener under 2 workers: {dict(statuses)}, {warnings} warning(s) logged")
    assert warnings == (1 if statuses[404] else 0)
