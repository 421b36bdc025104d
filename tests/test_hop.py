"""The hop between processes (cluster/frames.py, cluster/hop.py, cluster/endpoint.py,
cluster/exchange.py), in one process: a real endpoint on a Unix socket (no secret) or a TCP
port (with one), a real HopClient, and raw sockets for what a stranger can send."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import struct
import threading
import time
import typing as t
from collections.abc import Iterable, Iterator

import pytest

from wsgi_proxy_listen import Registry
from wsgi_proxy_listen.answers import Failure, close
from wsgi_proxy_listen.cluster import endpoint as endpoint_module
from wsgi_proxy_listen.cluster import frames
from wsgi_proxy_listen.cluster.endpoint import InternalEndpoint
from wsgi_proxy_listen.cluster.frames import FrameError, Keys
from wsgi_proxy_listen.cluster.hop import Connection, HopClient, pack, unpack

from .support.cluster import short_folder

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

SECRET = b"hop-secret"
OWNER = "owner-1"


# -- what a REQUEST frame carries ---------------------------------------------------------------


def test_pack_keeps_what_the_owner_dispatches_with() -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/proxy/sessions/a/x\né",
        "QUERY_STRING": "q={1}",
        "HTTP_X_TEST": "1",
        "HTTP_CONNECTION": "keep-alive",
        "HTTP_TE": "trailers",
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(),
        "REMOTE_USER": "alice",
        "SERVER_SOFTWARE": "dropped",
        "SOME_SERVER_KEY": "dropped",
    }
    session, prefix, forwarded, body = unpack(pack(environ, "a", "/tools"))
    assert (session, prefix, body) == ("a", "/tools", False)
    assert unpack(pack(environ, "a", "/tools", body=True)).body
    assert forwarded == {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/proxy/sessions/a/x\né",
        "QUERY_STRING": "q={1}",
        "HTTP_X_TEST": "1",
        "REMOTE_USER": "alice",  # the user the sending process let in
        "wsgi.url_scheme": "https",
    }


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("/proxy/sessions/a/\x00b", id="nul-in-path"),
        pytest.param("[not json", id="a-bracket"),
        pytest.param("é" * 3 + "\x00" * 3, id="non-ascii-and-nul"),
        pytest.param("x" * 1_000_000, id="one-megabyte"),
    ],
)
def test_any_string_a_server_gives_travels_whole(value: str) -> None:
    """Without a length limit of the hop's own, and with a NUL inside a string (a decoded
    %00), which the fields then travel as a JSON list for."""
    environ = {"PATH_INFO": value, "HTTP_COOKIE": value}
    assert unpack(pack(environ, "s", "/proxy")).environ == environ


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x00s", id="no-prefix"),
        pytest.param(b"x\x00s\x00/proxy", id="an-unknown-flag"),
        pytest.param(b"\x00s\x00/proxy\x00PATH_INFO", id="a-key-without-value"),
        pytest.param(b"\x00s\x00proxy/", id="a-bad-prefix"),
        pytest.param(b"\x00s\x00/a/../b", id="a-dot-prefix"),
        pytest.param(b"\x00s\x00/proxy\x00wsgi.input\x00x", id="a-wsgi-key"),
        pytest.param(b"\x00s\x00/proxy\x00SERVER_SOFTWARE\x00x", id="a-key-no-host-forwards"),
        pytest.param(b"\x00s\x00/proxy\x00HTTP_CONNECTION\x00close", id="a-hop-by-hop-header"),
        pytest.param(b'["", "s", "/proxy", 5, "x"]', id="json-not-strings"),
        pytest.param(b'["", "s", "/proxy"', id="json-malformed"),
        pytest.param(b"\xff\xfe", id="not-utf-8"),
    ],
)
def test_unpack_refuses_anything_else(payload: bytes) -> None:
    with pytest.raises(FrameError):
        unpack(payload)


# -- the handshake and the MAC of every frame -----------------------------------------------


def test_a_hello_proves_the_secret_and_names_the_owner() -> None:
    payload, nonce = frames.hello(SECRET, OWNER)
    assert frames.read_hello(payload, SECRET, OWNER).nonce == nonce
    for secret, owner in [(b"other", OWNER), (SECRET, "owner-2")]:
        with pytest.raises(FrameError):
            frames.read_hello(payload, secret, owner)
    unsigned, _ = frames.hello(None, OWNER)
    with pytest.raises(FrameError):
        frames.read_hello(unsigned, SECRET, OWNER)


def test_a_stale_hello_or_another_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now - frames.WINDOW - 1)
    old, _ = frames.hello(SECRET, OWNER)
    monkeypatch.setattr(time, "time", lambda: now)
    with pytest.raises(FrameError, match="window"):
        frames.read_hello(old, SECRET, OWNER)
    monkeypatch.setattr(frames, "VERSION", 99)
    newer, _ = frames.hello(None, OWNER)
    monkeypatch.setattr(frames, "VERSION", 1)
    with pytest.raises(FrameError, match="version 99"):
        frames.read_hello(newer, None, OWNER)


def test_a_welcome_proves_the_secret_too() -> None:
    _, nonce = frames.hello(SECRET, OWNER)
    answer, welcomed = frames.welcome(SECRET, OWNER, nonce)
    assert frames.read_welcome(answer, SECRET, OWNER, nonce) == welcomed
    with pytest.raises(FrameError):
        frames.read_welcome(answer, b"other", OWNER, nonce)
    forged, _ = frames.welcome(b"other", OWNER, nonce)
    with pytest.raises(FrameError):
        frames.read_welcome(forged, SECRET, OWNER, nonce)


def keys_pair() -> tuple[Keys, Keys]:
    hello_nonce, welcome_nonce = os.urandom(16), os.urandom(16)
    host = Keys(SECRET, OWNER, hello_nonce, welcome_nonce, host=True)
    owner = Keys(SECRET, OWNER, hello_nonce, welcome_nonce, host=False)
    return host, owner


def test_a_frame_cannot_be_changed_replayed_reordered_or_moved() -> None:
    host, owner = keys_pair()
    first = host.seal(frames.REQUEST, b"one")
    second = host.seal(frames.DATA, b"two")
    with pytest.raises(FrameError):
        owner.check(frames.REQUEST, b"on3", first)  # changed
    host, owner = keys_pair()
    first = host.seal(frames.REQUEST, b"one")
    second = host.seal(frames.DATA, b"two")
    with pytest.raises(FrameError):
        owner.check(frames.DATA, b"two", second)  # the first one dropped
    host, owner = keys_pair()
    first = host.seal(frames.REQUEST, b"one")
    owner.check(frames.REQUEST, b"one", first)
    with pytest.raises(FrameError):
        owner.check(frames.REQUEST, b"one", first)  # replayed
    _, other_owner = keys_pair()
    with pytest.raises(FrameError):
        other_owner.check(frames.REQUEST, b"one", first)  # from another connection
    host, owner = keys_pair()
    answer = owner.seal(frames.RESPONSE, b"200 OK")
    with pytest.raises(FrameError):
        owner.check(frames.RESPONSE, b"200 OK", answer)  # its own frame sent back


# -- an endpoint --------------------------------------------------------------------------------


class Owner:
    """What a registry's serve_forwarded does, reduced to a few listeners."""

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
        if path == "/early":
            start_response("401 Unauthorized", [("Content-Length", "2")])
            return [b"no"]
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return self._closing(iter([b"one ", b"two ", b"three"]))
        if path == "/broken":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return self._closing(self._breaks())
        if path == "/slow":
            time.sleep(1.0)
        if path == "/big":
            start_response("200 OK", [("X-Big", "b" * 200_000)])
            return [b"big"]
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
    secret = None if request.param == "unix" else SECRET
    started = InternalEndpoint(address, OWNER, owner, secret)
    started.start()
    try:
        yield started, owner
    finally:
        started.close()
        shutil.rmtree(folder)


CLIENTS: list[HopClient] = []


def client_for(endpoint: InternalEndpoint, read_timeout: float = 5.0) -> HopClient:
    client = HopClient(endpoint.secret, read_timeout=read_timeout)
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


def body_of(data: bytes) -> dict[str, t.Any]:
    """``wsgi.input``, which is no keyword argument, for :func:`forward`'s environ."""
    return {"wsgi.input": io.BytesIO(data)}


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
        close(answer)  # as a server does (a whole small answer is a plain list)


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
    data = os.urandom(3_000_000)
    started, body = forward(
        client,
        server,
        "/echo",
        REQUEST_METHOD="POST",
        CONTENT_LENGTH=str(len(data)),
        **body_of(data),
    )
    assert started.status == "201 Made It"
    assert body == data
    chunked, body = forward(
        client,
        server,
        "/echo",
        REQUEST_METHOD="PUT",
        HTTP_TRANSFER_ENCODING="chunked",
        **body_of(data),
    )
    assert (chunked.status, body) == ("201 Made It", data)


def test_headers_of_any_size_both_ways(endpoint: tuple[InternalEndpoint, Owner]) -> None:
    """No line limit of the hop's own: a 200 kB cookie goes, a 200 kB header comes back."""
    server, owner = endpoint
    client = client_for(server)
    cookie = "c=" + "é" * 100_000
    started, body = forward(client, server, "/big", HTTP_COOKIE=cookie)
    assert (started.status, body) == ("200 OK", b"big")
    assert owner.environs[-1]["HTTP_COOKIE"] == cookie
    assert ("X-Big", "b" * 200_000) in started.headers


def test_an_early_answer_comes_back_and_the_connection_goes_on(
    endpoint: tuple[InternalEndpoint, Owner],
) -> None:
    """The owner answers 401 without reading a 5 MB upload: the client gets the 401, and
    the next request is answered on the pool as before."""
    server, _ = endpoint
    client = client_for(server)
    data = b"u" * 5_000_000
    started, body = forward(
        client,
        server,
        "/early",
        REQUEST_METHOD="POST",
        CONTENT_LENGTH=str(len(data)),
        **body_of(data),
    )
    assert (started.status, body) == ("401 Unauthorized", b"no")
    assert forward(client, server, "/")[1] == b"hello"


def test_a_stream_is_relayed(endpoint: tuple[InternalEndpoint, Owner]) -> None:
    server, owner = endpoint
    started, body = forward(client_for(server), server, "/stream")
    assert (started.status, body) == ("200 OK", b"one two three")
    wait_for(lambda: owner.closed == 1)


def answer_frames(server: InternalEndpoint, path: str) -> list[int]:
    """The kinds of the frames the owner answers a request for ``path`` with."""
    connection = Connection(server.address, OWNER, server.secret, 1.0, 5.0)
    channel = connection.channel
    try:
        request = pack({"REQUEST_METHOD": "GET", "PATH_INFO": path}, "s", "/proxy")
        channel.send(channel.frame(frames.REQUEST, request))
        kinds = [channel.read()[0]]
        while kinds[-1] in (frames.RESPONSE, frames.DATA):
            kinds.append(channel.read()[0])
        return kinds
    finally:
        connection.close()


def test_a_small_whole_answer_is_one_frame(endpoint: tuple[InternalEndpoint, Owner]) -> None:
    """A list body the owner knows whole comes in one WHOLE frame (one read for the host);
    a large one, and a stream, in RESPONSE, DATA... and END."""
    server, _ = endpoint
    assert answer_frames(server, "/early") == [frames.WHOLE]
    assert answer_frames(server, "/big") == [frames.WHOLE]  # a large head, a small body
    assert answer_frames(server, "/stream") == [frames.RESPONSE, *[frames.DATA] * 3, frames.END]
    data = os.urandom(frames.CHUNK + 1)

    def large(
        environ: WSGIEnvironment, start_response: StartResponse, session: str, prefix: str
    ) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [data]

    folder = short_folder()
    big = InternalEndpoint(os.path.join(folder, "e.sock"), OWNER, large, None)
    big.start()
    try:
        assert answer_frames(big, "/") == [frames.RESPONSE, frames.DATA, frames.DATA, frames.END]
        assert forward(client_for(big), big, "/")[1] == data
    finally:
        big.close()
        shutil.rmtree(folder)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00\x00", b"\x00\x00\x00\x09200 OK", b"\xff\xff\xff\xff200 OK\x00hi"],
)
def test_a_whole_frame_whose_head_runs_past_it_is_refused(payload: bytes) -> None:
    with pytest.raises(FrameError):
        frames.decode_whole(payload)
    head, body = frames.decode_whole(frames.encode_whole(["200 OK", "A", "1"], [b"x", b"y"]))
    assert (head, body) == (["200 OK", "A", "1"], b"xy")


def test_a_malformed_whole_answer_is_a_broken_owner() -> None:
    """An owner (or anything at its address) whose WHOLE frame does not check out: the host
    answers 502 (BROKEN), and the connection is not pooled."""
    folder = short_folder()
    path = os.path.join(folder, "rogue.sock")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(path)
    listening.listen(1)

    def rogue() -> None:
        sock, _ = listening.accept()
        with sock:
            channel = frames.Channel(sock)
            channel.read()  # HELLO
            channel.send(channel.frame(frames.WELCOME, os.urandom(frames.NONCE_SIZE)))
            channel.read()  # REQUEST
            channel.send(channel.frame(frames.WHOLE, b"\x00\x00\x10\x00200 OK"))
            with contextlib.suppress(EOFError, OSError):
                channel.read()

    thread = threading.Thread(target=rogue, daemon=True)
    thread.start()
    try:
        client = HopClient(None, read_timeout=2.0)
        CLIENTS.append(client)
        assert forward_to(client, path) is Failure.BROKEN
        thread.join(5)
        assert not thread.is_alive(), "the host closed the connection"
    finally:
        listening.close()
        shutil.rmtree(folder)


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
    with pytest.raises(ConnectionResetError):  # cut: the server closes quietly
        next(chunks)
    t.cast(t.Any, answer).close()
    wait_for(lambda: owner.closed == 1)
    assert forward(client, server, "/")[1] == b"hello", "a fresh connection serves the next"


def test_a_slow_owner_is_a_timeout(endpoint: tuple[InternalEndpoint, Owner]) -> None:
    server, _ = endpoint
    assert forward(client_for(server, read_timeout=0.3), server, "/slow")[1] is Failure.TIMEOUT


def test_a_pooled_connection_closed_by_the_endpoint_is_replaced(
    endpoint: tuple[InternalEndpoint, Owner], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint closes connections left idle; the next bodiless request goes again on
    a fresh one, with a handshake of its own."""
    monkeypatch.setattr(endpoint_module, "IDLE_TIMEOUT", 0.2)
    server, _ = endpoint
    client = client_for(server)
    assert forward(client, server, "/")[1] == b"hello"
    time.sleep(0.5)  # the endpoint has closed the pooled connection
    assert forward(client, server, "/")[1] == b"hello"
    assert forward(client, server, "/")[1] == b"hello"


def forward_to(client: HopClient, address: str, path: str = "/") -> Failure | bytes:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.input": io.BytesIO()}
    answer = client.forward(OWNER, address, "s", "/proxy", environ, Started())
    if isinstance(answer, Failure):
        return answer
    try:
        return b"".join(answer)
    finally:
        close(answer)  # as a server does (a whole small answer is a plain list)


def test_an_owner_that_is_gone_is_told_apart_from_a_paused_one() -> None:
    folder = short_folder()
    try:
        client = HopClient(None, read_timeout=0.5, connect_timeout=0.3)
        CLIENTS.append(client)
        assert forward_to(client, os.path.join(folder, "nobody.sock")) is Failure.GONE
        listening = socket.socket(socket.AF_UNIX)
        path = os.path.join(folder, "paused.sock")
        listening.bind(path)
        listening.listen(8)
        try:
            # Accepted by the kernel, never welcomed: a paused owner.
            assert forward_to(client, path) is Failure.UNRESPONSIVE
        finally:
            listening.close()
    finally:
        shutil.rmtree(folder)


def test_a_unix_socket_endpoint_is_private_and_removed_on_close() -> None:
    folder = short_folder()
    try:
        path = os.path.join(folder, "e.sock")
        server = InternalEndpoint(path, OWNER, Registry().serve_forwarded, None)
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
        path = os.path.join(folder, "e.sock")
        server = InternalEndpoint(path, OWNER, Registry().serve_forwarded, None)
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
    server = InternalEndpoint(os.path.join(folder, "e.sock"), OWNER, owner, None)
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


# -- who may use an endpoint: from the attacker's side ------------------------------------------


@pytest.fixture
def tcp_endpoint() -> Iterator[tuple[InternalEndpoint, Owner]]:
    owner = Owner()
    server = InternalEndpoint("127.0.0.1", OWNER, owner, SECRET)
    server.start()
    try:
        yield server, owner
    finally:
        server.close()


def raw_connection(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload), kind) + payload


def closed_by_peer(connection: socket.socket) -> bool:
    try:
        return connection.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_a_hello_without_the_secret_is_refused(
    tcp_endpoint: tuple[InternalEndpoint, Owner],
) -> None:
    server, owner = tcp_endpoint
    connection = raw_connection(server.address)
    unsigned, _ = frames.hello(None, OWNER)
    connection.sendall(frame(frames.HELLO, unsigned))
    assert closed_by_peer(connection)
    connection.close()
    assert owner.environs == []


def test_anything_but_a_hello_is_refused(tcp_endpoint: tuple[InternalEndpoint, Owner]) -> None:
    server, owner = tcp_endpoint
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", frame(frames.REQUEST, b"s\x00/proxy")):
        connection = raw_connection(server.address)
        connection.sendall(garbage)
        assert closed_by_peer(connection)
        connection.close()
    assert owner.environs == []


def test_a_replayed_hello_gets_nothing_served(
    tcp_endpoint: tuple[InternalEndpoint, Owner],
) -> None:
    """A HELLO seen on the wire, sent again: the endpoint welcomes it, but the frames after
    need the connection's key, which only the secret gives."""
    server, owner = tcp_endpoint
    captured, _ = frames.hello(SECRET, OWNER)
    connection = raw_connection(server.address)
    connection.sendall(frame(frames.HELLO, captured))
    connection.recv(65536)  # the WELCOME
    request = pack({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, "s", "/proxy")
    connection.sendall(frame(frames.REQUEST, request) + b"\x00" * 16)
    assert closed_by_peer(connection)
    connection.close()
    assert owner.environs == []


def test_a_connection_that_does_not_authenticate_is_closed(
    tcp_endpoint: tuple[InternalEndpoint, Owner], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = tcp_endpoint
    connection = raw_connection(server.address)
    began = time.monotonic()
    assert closed_by_peer(connection)
    assert time.monotonic() - began < endpoint_module.HANDSHAKE_TIMEOUT + 1
    connection.close()


def test_a_hello_for_another_owner_is_refused(
    tcp_endpoint: tuple[InternalEndpoint, Owner],
) -> None:
    server, _ = tcp_endpoint
    client = HopClient(SECRET, read_timeout=2.0)
    CLIENTS.append(client)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": io.BytesIO()}
    answer = client.forward("owner-2", server.address, "s", "/proxy", environ, Started())
    assert answer is Failure.BROKEN


def test_an_endpoint_with_every_slot_taken_refuses_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One more authenticated connection than the endpoint serves is closed at once (the
    sender answers 503), instead of waiting until the sender's read timeout."""
    monkeypatch.setattr(endpoint_module, "MAX_CONNECTIONS", 1)
    folder = short_folder()
    server = InternalEndpoint(os.path.join(folder, "e.sock"), OWNER, Owner(), None)
    server.start()
    holder = Connection(server.address, OWNER, None, 1.0, 5.0)  # the only slot, idle
    try:
        client = HopClient(None, read_timeout=5.0)
        CLIENTS.append(client)
        assert forward_to(client, server.address) is Failure.BROKEN
    finally:
        holder.close()
        server.close()
        shutil.rmtree(folder)


def test_close_does_not_wait_for_idle_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint_module, "MAX_CONNECTIONS", 1)
    folder = short_folder()
    server = InternalEndpoint(os.path.join(folder, "e.sock"), OWNER, Owner(), None)
    server.start()
    idle = Connection(server.address, OWNER, None, 1.0, 5.0)
    silent = socket.socket(socket.AF_UNIX)
    try:
        silent.connect(server.address)  # in its handshake, never finishing it
        closing = threading.Thread(target=server.close)
        closing.start()
        closing.join(10)
        assert not closing.is_alive(), "close() waited for the idle connections"
    finally:
        idle.close()
        silent.close()
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
