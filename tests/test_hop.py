"""The hop between processes (cluster/hop.py) and the internal endpoint (cluster/endpoint.py),
in one process: a real endpoint on a Unix socket or a TCP port, a real HopClient."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import shutil
import socket
import threading
import time
import typing as t
from collections.abc import Iterable, Iterator
from email.message import Message

import pytest

from wsgi_proxy_listen import Registry
from wsgi_proxy_listen.answers import Failure
from wsgi_proxy_listen.cluster import hop
from wsgi_proxy_listen.cluster.endpoint import InternalEndpoint
from wsgi_proxy_listen.cluster.hop import (
    HOP_PATH,
    HopClient,
    Verifier,
    pack,
    signed_headers,
    unpack,
)

from .support.cluster import short_folder

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

SECRET = b"hop-secret"
OWNER = "owner-1"


def message(headers: dict[str, str]) -> Message:
    result = Message()
    for name, value in headers.items():
        result[name] = value
    return result


# -- the environ header -------------------------------------------------------------------------


def test_pack_keeps_what_the_owner_dispatches_with() -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/proxy/sessions/a/x\n\x00é",
        "QUERY_STRING": "q={1}",
        "HTTP_X_TEST": "1",
        "HTTP_CONNECTION": "keep-alive",
        "HTTP_TE": "trailers",
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(),
        "SOME_SERVER_KEY": "dropped",
    }
    packed = pack(environ, "a", "/tools")
    assert packed.isascii()
    assert packed.isprintable(), "a valid header value"
    session, prefix, forwarded = unpack(packed)
    assert (session, prefix) == ("a", "/tools")
    assert forwarded == {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/proxy/sessions/a/x\n\x00é",
        "QUERY_STRING": "q={1}",
        "HTTP_X_TEST": "1",
        "wsgi.url_scheme": "https",
    }


@pytest.mark.parametrize(
    "value",
    [
        '{"a": 1}',
        '["s", "/proxy", {"A": 1}]',
        '[1, "/proxy", {}]',
        '["s", "/proxy", []]',
        '["s", {}]',
        '["s", 5, {}]',
        '["s", ["/proxy"], {}]',
        '["s", "proxy/", {}]',
        '["s", "/a/../b", {}]',
        "not json",
        '["s"]',
        "5",
        "null",
    ],
)
def test_unpack_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json's own errors are ValueErrors too
        unpack(value)


# -- signatures ---------------------------------------------------------------------------------


def test_a_signature_is_accepted_once() -> None:
    verify = Verifier(SECRET, OWNER)
    headers = message(signed_headers(SECRET, OWNER, "GET", "meta"))
    assert verify("GET", "meta", headers)
    assert not verify("GET", "meta", headers), "a replay"


@pytest.mark.parametrize(
    ("secret", "owner", "method", "meta"),
    [
        pytest.param(b"other", OWNER, "GET", "meta", id="wrong-secret"),
        pytest.param(SECRET, "owner-2", "GET", "meta", id="another-owner"),
        pytest.param(SECRET, OWNER, "POST", "meta", id="another-method"),
        pytest.param(SECRET, OWNER, "GET", "other meta", id="another-environ"),
    ],
)
def test_a_signature_covers_secret_owner_method_and_environ(
    secret: bytes, owner: str, method: str, meta: str
) -> None:
    verify = Verifier(SECRET, OWNER)
    assert not verify("GET", "meta", message(signed_headers(secret, owner, method, meta)))


def test_stale_or_missing_signatures_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    verify = Verifier(SECRET, OWNER)
    headers = signed_headers(SECRET, OWNER, "GET", "meta")
    for missing in headers:
        assert not verify(
            "GET", "meta", message({k: v for k, v in headers.items() if k != missing})
        )
    now = time.time()
    monkeypatch.setattr(hop.time, "time", lambda: now - 31)
    old = signed_headers(SECRET, OWNER, "GET", "meta")
    monkeypatch.setattr(hop.time, "time", lambda: now)
    assert not verify("GET", "meta", message(old))
    assert not verify("GET", "meta", message({**headers, hop.STAMP_HEADER: "soon"}))


def test_nonces_are_forgotten_after_twice_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory of nonces is bounded by time, not by a count that is rebuilt on every
    request once it is passed (which made each check cost O(n) under load)."""
    verify = Verifier(SECRET, OWNER)
    clock = [1000.0]
    monkeypatch.setattr(hop.time, "monotonic", lambda: clock[0])
    for _ in range(50):
        assert verify("GET", "m", message(signed_headers(SECRET, OWNER, "GET", "m")))
    assert verify.remembered() == 50
    clock[0] += 2 * hop.WINDOW + 1
    assert verify("GET", "m", message(signed_headers(SECRET, OWNER, "GET", "m")))
    assert verify.remembered() == 1


# -- an endpoint --------------------------------------------------------------------------------


class Owner:
    """What a middleware's serve_forwarded does, reduced to a few listeners."""

    def __init__(self) -> None:
        self.environs: list[WSGIEnvironment] = []
        self.closed = 0

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse, session: str, prefix: str
    ) -> Iterable[bytes] | None:
        assert prefix == "/proxy"
        self.environs.append(environ)
        if session == "missing":
            return None
        path = environ["PATH_INFO"]
        if path == "/echo":
            body = environ["wsgi.input"].read()
            start_response("201 Made It", [("Content-Length", str(len(body))), ("X-A", "1")])
            return [body]
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return self._closing(iter([b"one ", b"two ", b"three"]))
        if path == "/broken":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return self._closing(self._breaks())
        start_response(
            "200 OK", [("Content-Length", "5"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
        )
        return self._closing(iter([b"hello"]))

    def _breaks(self) -> Iterator[bytes]:
        yield b"part"
        raise RuntimeError("the listener broke mid-stream")

    def _closing(self, chunks: Iterator[bytes]) -> Iterable[bytes]:
        owner = self

        class Closing:
            def __iter__(self) -> Iterator[bytes]:
                return chunks

            def close(self) -> None:
                owner.closed += 1

        return Closing()


@pytest.fixture(params=["unix", "tcp"])
def endpoint(request: pytest.FixtureRequest) -> Iterator[tuple[InternalEndpoint, Owner]]:
    owner = Owner()
    folder = short_folder()
    address = os.path.join(folder, "e.sock") if request.param == "unix" else "127.0.0.1"
    verify = None if request.param == "unix" else Verifier(SECRET, OWNER)
    started = InternalEndpoint(address, owner, verify)
    started.start()
    try:
        yield started, owner
    finally:
        started.close()
        shutil.rmtree(folder)


CLIENTS: list[HopClient] = []


def client_for(endpoint: InternalEndpoint) -> HopClient:
    client = HopClient(None if endpoint.verify is None else SECRET, read_timeout=5.0)
    CLIENTS.append(client)
    return client


@pytest.fixture(autouse=True)
def close_pooled_connections() -> Iterator[None]:
    yield
    while CLIENTS:
        CLIENTS.pop().clear()


def wait_for(condition: t.Callable[[], bool]) -> None:
    """The owner closes an answer's iterable just after its last byte went out."""
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Started:
    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Any:
        self.status, self.headers = status, headers


def forward(
    client: HopClient, endpoint: InternalEndpoint, path: str, session: str = "s", **environ: t.Any
) -> tuple[Started, bytes | Failure]:
    started = Started()
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.input": io.BytesIO()}
    environ = {**base, **environ}
    answer = client.forward(OWNER, endpoint.address, session, "/proxy", environ, started)
    if isinstance(answer, Failure):
        return started, answer
    try:
        return started, b"".join(answer)
    finally:
        t.cast(t.Any, answer).close()


def test_an_answer_comes_back_whole(endpoint: tuple[InternalEndpoint, Owner]) -> None:
    server, owner = endpoint
    client = client_for(server)
    started, body = forward(client, server, "/", HTTP_X_TEST="1", QUERY_STRING="q=1")
    assert (started.status, body) == ("200 OK", b"hello")
    assert ("Set-Cookie", "a=1") in started.headers
    assert ("Set-Cookie", "b=2") in started.headers
    assert owner.environs[-1]["HTTP_X_TEST"] == "1"
    assert owner.environs[-1]["QUERY_STRING"] == "q=1"
    wait_for(lambda: owner.closed == 1)


def test_bodies_and_statuses_as_sent(endpoint: tuple[InternalEndpoint, Owner]) -> None:
    server, _ = endpoint
    client = client_for(server)
    data = os.urandom(300_000)
    started, body = forward(
        client,
        server,
        "/echo",
        REQUEST_METHOD="POST",
        CONTENT_LENGTH=str(len(data)),
        **{"wsgi.input": io.BytesIO(data)},
    )
    assert started.status == "201 Made It"
    assert body == data
    chunked, body = forward(
        client,
        server,
        "/echo",
        REQUEST_METHOD="PUT",
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input": io.BytesIO(data)},
    )
    assert (chunked.status, body) == ("201 Made It", data)


def test_a_stream_is_relayed(endpoint: tuple[InternalEndpoint, Owner]) -> None:
    server, owner = endpoint
    started, body = forward(client_for(server), server, "/stream")
    assert (started.status, body) == ("200 OK", b"one two three")
    wait_for(lambda: owner.closed == 1)


def test_head_gets_headers_only(endpoint: tuple[InternalEndpoint, Owner]) -> None:
    server, _ = endpoint
    client = client_for(server)
    started, body = forward(client, server, "/", REQUEST_METHOD="HEAD")
    assert (started.status, body) == ("200 OK", b"")
    assert ("Content-Length", "5") in started.headers
    _, body = forward(client, server, "/")
    assert body == b"hello", "the connection is still in step"


def test_a_session_not_served_there_is_a_miss(endpoint: tuple[InternalEndpoint, Owner]) -> None:
    server, _ = endpoint
    client = client_for(server)
    started, answer = forward(client, server, "/", session="missing")
    assert answer is Failure.MISS
    assert started.status == "", "nothing was started"
    assert forward(client, server, "/")[1] == b"hello"


def test_a_listener_that_breaks_mid_stream_ends_the_answer_early(
    endpoint: tuple[InternalEndpoint, Owner],
) -> None:
    server, owner = endpoint
    client = client_for(server)
    started = Started()
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/broken", "wsgi.input": io.BytesIO()}
    answer = client.forward(OWNER, server.address, "s", "/proxy", base, started)
    assert started.status == "200 OK"
    chunks = iter(t.cast(Iterable[bytes], answer))
    assert next(chunks) == b"part"
    with pytest.raises(http.client.IncompleteRead):
        next(chunks)
    t.cast(t.Any, answer).close()
    wait_for(lambda: owner.closed == 1)
    assert forward(client, server, "/")[1] == b"hello", "a fresh connection serves the next"


def test_a_pooled_connection_closed_by_the_endpoint_is_replaced(
    endpoint: tuple[InternalEndpoint, Owner], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint closes connections left idle; the next bodiless request goes again on
    a fresh one, signed afresh (sending the first signature again would be a replay)."""
    from wsgi_proxy_listen.cluster import endpoint as endpoint_module

    monkeypatch.setattr(endpoint_module._Handler, "timeout", 0.2)
    server, _ = endpoint
    client = client_for(server)
    assert forward(client, server, "/")[1] == b"hello"
    time.sleep(0.5)  # the endpoint has closed the pooled connection
    assert forward(client, server, "/")[1] == b"hello"
    assert forward(client, server, "/")[1] == b"hello"


def test_an_owner_that_is_gone_is_told_apart_from_a_slow_one() -> None:
    folder = short_folder()
    try:
        client = HopClient(None, read_timeout=0.5)
        CLIENTS.append(client)
        gone = forward_to(client, os.path.join(folder, "nobody.sock"))
        assert gone is Failure.GONE
        listening = socket.socket(socket.AF_UNIX)
        path = os.path.join(folder, "slow.sock")
        listening.bind(path)
        listening.listen(8)
        try:
            assert forward_to(client, path) is Failure.TIMEOUT  # accepted, never answered
        finally:
            listening.close()
    finally:
        shutil.rmtree(folder)


def forward_to(client: HopClient, address: str, path: str = "/") -> Failure | bytes:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.input": io.BytesIO()}
    answer = client.forward(OWNER, address, "s", "/proxy", environ, Started())
    if isinstance(answer, Failure):
        return answer
    try:
        return b"".join(answer)
    finally:
        t.cast(t.Any, answer).close()


# -- who may use an endpoint --------------------------------------------------------------------


def raw(
    address: str, payload: bytes, connection: socket.socket | None = None
) -> tuple[bytes, socket.socket]:
    if connection is None:
        host, _, port = address.rpartition(":")
        connection = socket.create_connection((host, int(port)), timeout=5)
    connection.sendall(payload)
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:]).get(
            "Content-Length", "0"
        )
    )
    while len(rest) < length:
        rest += connection.recv(65536)
    return head + b"\r\n\r\n" + rest, connection


def hop_bytes(meta: str, extra: dict[str, str]) -> bytes:
    lines = "".join(
        f"{k}: {v}\r\n" for k, v in {"X-Wsgi-Proxy-Listen-Environ": meta, **extra}.items()
    )
    return f"GET {HOP_PATH} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()


def test_a_connection_is_trusted_after_its_signed_first_request() -> None:
    owner = Owner()
    server = InternalEndpoint("127.0.0.1", owner, Verifier(SECRET, OWNER))
    server.start()
    try:
        meta = pack({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, "s", "/proxy")
        unsigned = hop_bytes(meta, {})
        answer, fresh = raw(server.address, unsigned)
        assert answer.startswith(b"HTTP/1.1 403")
        assert b"Connection: close" in answer
        fresh.close()
        signed = hop_bytes(meta, signed_headers(SECRET, OWNER, "GET", meta))
        answer, connection = raw(server.address, signed)
        assert answer.startswith(b"HTTP/1.1 200")
        answer, connection = raw(server.address, unsigned, connection)
        assert answer.startswith(b"HTTP/1.1 200"), "the same connection needs no signature"
        connection.close()
        replayed, other = raw(server.address, signed)
        assert replayed.startswith(b"HTTP/1.1 403"), "a replay on a new connection"
        other.close()
        wrong_path = signed.replace(HOP_PATH.encode(), b"/elsewhere")
        answer, other = raw(server.address, wrong_path)
        assert answer.startswith(b"HTTP/1.1 403")
        other.close()
    finally:
        server.close()


def test_a_unix_socket_endpoint_is_private_and_removed_on_close() -> None:
    folder = short_folder()
    try:
        path = os.path.join(folder, "e.sock")
        server = InternalEndpoint(path, Registry().serve_forwarded, None)
        server.start()
        assert os.stat(path).st_mode & 0o777 == 0o600
        server.close()
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(folder)


def test_a_process_without_the_listener_answers_a_miss() -> None:
    """A process that serves nothing for the session (no listener, no middleware yet):
    a forwarded request is a miss, which the sender can look up again."""
    folder = short_folder()
    try:
        server = InternalEndpoint(os.path.join(folder, "e.sock"), Registry().serve_forwarded, None)
        server.start()
        try:
            client = HopClient(None, 2.0)
            CLIENTS.append(client)
            assert forward_to(client, server.address, "/proxy/sessions/s/") is Failure.MISS
        finally:
            server.close()
    finally:
        shutil.rmtree(folder)


def test_many_connections_at_once() -> None:
    folder = short_folder()
    owner = Owner()
    server = InternalEndpoint(os.path.join(folder, "e.sock"), owner, None)
    server.start()
    client = HopClient(None, read_timeout=10.0)
    CLIENTS.append(client)
    errors: list[object] = []

    def many() -> None:
        for _ in range(50):
            result = forward_to(client, server.address)
            if result != b"hello":
                errors.append(result)

    try:
        threads = [threading.Thread(target=many) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        wait_for(lambda: owner.closed == 800)
    finally:
        server.close()
        shutil.rmtree(folder)


# -- found in review ----------------------------------------------------------------------------


def test_an_endpoint_with_every_slot_taken_refuses_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One more connection than the endpoint serves is closed at once (the sender answers
    503), instead of waiting in the backlog until the sender's read timeout."""
    from wsgi_proxy_listen.cluster import endpoint as endpoint_module

    monkeypatch.setattr(endpoint_module, "MAX_CONNECTIONS", 1)
    folder = short_folder()
    owner = Owner()
    server = InternalEndpoint(os.path.join(folder, "e.sock"), owner, None)
    server.start()
    holder = socket.socket(socket.AF_UNIX)
    try:
        holder.connect(server.address)  # takes the only slot, idle
        time.sleep(0.2)
        client = HopClient(None, read_timeout=5.0)
        CLIENTS.append(client)
        assert forward_to(client, server.address) is Failure.BROKEN
    finally:
        holder.close()
        server.close()
        shutil.rmtree(folder)


def test_close_does_not_wait_for_idle_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsgi_proxy_listen.cluster import endpoint as endpoint_module

    monkeypatch.setattr(endpoint_module, "MAX_CONNECTIONS", 1)
    folder = short_folder()
    server = InternalEndpoint(os.path.join(folder, "e.sock"), lambda: Owner(), None)
    server.start()
    idle = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    try:
        for connection in idle:  # one holds the slot, one waits for it
            connection.connect(server.address)
        time.sleep(0.2)
        closing = threading.Thread(target=server.close)
        closing.start()
        closing.join(10)
        assert not closing.is_alive(), "close() waited for the idle connections"
    finally:
        for connection in idle:
            connection.close()
        shutil.rmtree(folder)


def test_a_full_backlog_is_an_unresponsive_owner_not_a_gone_one() -> None:
    """On a Unix socket whose backlog is full, connect() fails with EAGAIN: a paused or
    overwhelmed owner, whose entries must not be deleted as a dead one's are."""
    folder = short_folder()
    path = os.path.join(folder, "full.sock")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(path)
    listening.listen(0)
    waiting = []
    try:
        for _ in range(4):
            pending = socket.socket(socket.AF_UNIX)
            pending.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                pending.connect(path)
            waiting.append(pending)
        client = HopClient(None, read_timeout=2.0)
        CLIENTS.append(client)
        assert forward_to(client, path) is Failure.UNRESPONSIVE
    finally:
        for pending in waiting:
            pending.close()
        listening.close()
        shutil.rmtree(folder)
