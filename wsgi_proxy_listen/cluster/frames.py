"""
The frames of the hop
=====================

What travels between two processes of a directory (:mod:`.hop` sends,
:mod:`.endpoint` answers) is the project's own, and kept to what the two ends
need: length-prefixed frames on a kept-alive connection (a Unix socket, or
TCP), no HTTP parser on either side.

A connection opens with a handshake. The host sends ``HELLO`` (the protocol
version, the owner it means, a timestamp and a random nonce), and the owner
answers ``WELCOME`` (its own nonce). With a secret, each side proves it knows
it (a keyed BLAKE2b over what it sent and received), and every later frame
carries a MAC under a key of this connection alone, made from the secret and
both nonces, over its direction, its sequence number, its type and its
payload: a frame cannot be changed, replayed, dropped or moved to another
connection, so every request on a connection and every byte of its body
belong to the host that authenticated it. Without a secret (the embedded
directory, where the folder's permissions keep others out) nothing is signed.

Then each request is: ``REQUEST`` (the target session, the prefix it was
routed with, the forwarded environ), ``DATA`` frames of its body, ``END``;
and its answer: ``RESPONSE`` (status and headers), ``DATA`` frames, ``END``;
or, for an answer known whole and small, one ``WHOLE`` frame (status,
headers and body: one read for the host); or ``MISS`` when the owner does
not serve the session; or ``ABORT`` after the owner's answer began and could
not be finished.

A frame is a 4-byte big-endian payload length, a 1-byte type, the payload,
and, with a key, a 16-byte MAC. A request's session, prefix and environ, and
an answer's status and headers, are strings joined by NUL (``"\\0"``), encoded
as UTF-8: a header of any size travels as it came, with no line limit of the
hop's own. Where a string holds a NUL itself (a decoded ``%00`` in a path),
the fields travel as a JSON list instead. A ``WHOLE`` payload is the size of
its status and headers (4 bytes, big-endian), them, then the body.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import socket
import struct
import time
import typing as t

__all__ = [
    "ABORT",
    "DATA",
    "END",
    "MISS",
    "REQUEST",
    "RESPONSE",
    "VERSION",
    "WHOLE",
    "Channel",
    "FrameError",
    "Keys",
    "decode_fields",
    "decode_whole",
    "encode_fields",
    "encode_whole",
]

#: The version of the frames; a process that meets another refuses the connection.
VERSION = 2

HELLO, WELCOME, REQUEST, DATA, END, RESPONSE, MISS, ABORT, WHOLE = range(1, 10)

HEADER = struct.Struct(">IB")
#: The longest payload a frame may carry; bodies travel in frames of at most CHUNK.
MAX_PAYLOAD = 1 << 26
#: Bytes of a body per DATA frame, at most.
CHUNK = 1 << 18
#: The reading buffer of a connection: a small answer comes in one read.
BUFFER = 1 << 18
MAC_SIZE = 16
NONCE_SIZE = 16
#: Seconds a HELLO's timestamp may be off.
WINDOW = 30.0
_HELLO = struct.Struct(">Bd16s")
_HEAD_SIZE = struct.Struct(">I")
_TO_OWNER, _TO_HOST = b">", b"<"


class FrameError(Exception):
    """What arrived is not a frame of this protocol, or does not check out."""


def encode_fields(fields: list[str]) -> bytes:
    """``fields`` as one payload: joined by NUL, or a JSON list where one holds a NUL."""
    joined = "\0".join(fields)
    if joined.count("\0") != len(fields) - 1:
        return json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return joined.encode("utf-8", "surrogatepass")


def decode_fields(payload: bytes) -> list[str]:
    """The strings :func:`encode_fields` wrote.

    :raises FrameError: the payload is not what it writes.
    """
    try:
        text = payload.decode("utf-8", "surrogatepass")
        if not text.startswith("["):
            return text.split("\0")
        fields = json.loads(text)
    except ValueError:
        raise FrameError("a malformed field list") from None
    if not isinstance(fields, list) or not all(type(field) is str for field in fields):
        raise FrameError("a malformed field list")
    return fields


def encode_whole(head: list[str], body: list[bytes]) -> bytes:
    """The payload of a ``WHOLE`` frame: ``head`` (status and headers, as fields), then
    ``body``."""
    fields = encode_fields(head)
    return b"".join([_HEAD_SIZE.pack(len(fields)), fields, *body])


def decode_whole(payload: bytes) -> tuple[list[str], bytes]:
    """The head (status and headers, as fields) and body of a ``WHOLE`` frame.

    :raises FrameError: the payload is not what :func:`encode_whole` writes.
    """
    if len(payload) < _HEAD_SIZE.size:
        raise FrameError("a WHOLE frame too short")
    end = _HEAD_SIZE.size + _HEAD_SIZE.unpack_from(payload)[0]
    if end > len(payload):
        raise FrameError("a WHOLE frame whose head runs past it")
    return decode_fields(payload[_HEAD_SIZE.size : end]), payload[end:]


def _secret_key(secret: bytes) -> bytes:
    # BLAKE2b takes a key of at most 64 bytes: a longer secret is hashed first.
    return secret if len(secret) <= 64 else hashlib.sha256(secret).digest()


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hashlib.blake2b(b"".join(parts), key=key, digest_size=MAC_SIZE).digest()


def hello(secret: bytes | None, owner: str) -> tuple[bytes, bytes]:
    """The payload of a HELLO for ``owner``, and its nonce."""
    nonce = os.urandom(NONCE_SIZE)
    body = _HELLO.pack(VERSION, time.time(), nonce) + owner.encode()
    if secret is None:
        return body, nonce
    return body + _mac(_secret_key(secret), b"hello", body), nonce


class Hello(t.NamedTuple):
    """A HELLO as the owner read it."""

    nonce: bytes
    sent: float


def read_hello(payload: bytes, secret: bytes | None, owner: str) -> Hello:
    """Check a HELLO meant for ``owner``.

    :raises FrameError: another version, another owner, a timestamp outside
        the window, or (with a secret) a MAC that does not check out.
    """
    size = _HELLO.size
    if secret is not None:
        body, given = payload[:-MAC_SIZE], payload[-MAC_SIZE:]
        if not hmac.compare_digest(given, _mac(_secret_key(secret), b"hello", body)):
            raise FrameError("a HELLO that is not signed with the secret")
    else:
        body = payload
    if len(body) < size:
        raise FrameError("a HELLO too short")
    version, sent, nonce = _HELLO.unpack_from(body)
    if version != VERSION:
        raise FrameError(f"a HELLO of version {version}, not {VERSION}: upgrade every process")
    if body[size:] != owner.encode():
        raise FrameError("a HELLO meant for another process")
    if secret is not None and abs(time.time() - sent) > WINDOW:
        raise FrameError("a HELLO whose timestamp is outside the window")
    return Hello(nonce, sent)


def welcome(secret: bytes | None, owner: str, hello_nonce: bytes) -> tuple[bytes, bytes]:
    """The payload of the owner's WELCOME, and its nonce."""
    nonce = os.urandom(NONCE_SIZE)
    if secret is None:
        return nonce, nonce
    return nonce + _mac(_secret_key(secret), b"welcome", hello_nonce, nonce, owner.encode()), nonce


def read_welcome(payload: bytes, secret: bytes | None, owner: str, hello_nonce: bytes) -> bytes:
    """Check the owner's WELCOME; its nonce.

    :raises FrameError: it does not prove the secret.
    """
    nonce, given = payload[:NONCE_SIZE], payload[NONCE_SIZE:]
    if len(nonce) != NONCE_SIZE:
        raise FrameError("a WELCOME too short")
    if secret is not None:
        expected = _mac(_secret_key(secret), b"welcome", hello_nonce, nonce, owner.encode())
        if not hmac.compare_digest(given, expected):
            raise FrameError("a WELCOME that is not signed with the secret")
    return nonce


class Keys:
    """The MACs of one connection's frames after the handshake, each way, numbered.

    :param outgoing: the direction this end sends: to the owner, or to the host.
    """

    def __init__(
        self, secret: bytes, owner: str, hello_nonce: bytes, welcome_nonce: bytes, *, host: bool
    ) -> None:
        self.key = hashlib.blake2b(
            b"connection" + hello_nonce + welcome_nonce + owner.encode(),
            key=_secret_key(secret),
            digest_size=32,
        ).digest()
        self.out_direction, self.in_direction = (
            (_TO_OWNER, _TO_HOST) if host else (_TO_HOST, _TO_OWNER)
        )
        self.sent = 0
        self.received = 0

    def seal(self, kind: int, payload: bytes) -> bytes:
        """The MAC of the next frame sent."""
        self.sent += 1
        return _mac(
            self.key, self.out_direction, self.sent.to_bytes(8, "big"), bytes((kind,)), payload
        )

    def check(self, kind: int, payload: bytes, given: bytes) -> None:
        """Check the MAC of the next frame received.

        :raises FrameError: it does not check out.
        """
        self.received += 1
        expected = _mac(
            self.key, self.in_direction, self.received.to_bytes(8, "big"), bytes((kind,)), payload
        )
        if not hmac.compare_digest(given, expected):
            raise FrameError("a frame whose MAC does not check out")


class _Reader(io.RawIOBase):
    """A socket read by a :class:`io.BufferedReader`, with its timeout kept by the
    operating system (``SO_RCVTIMEO``): a read that waited too long raises
    :exc:`TimeoutError`. (A Python timeout would poll the socket before every read.)"""

    def __init__(self, sock: socket.socket) -> None:
        self.recv_into = sock.recv_into

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: t.Any) -> int:
        try:
            return self.recv_into(buffer)
        except BlockingIOError:
            raise TimeoutError("the peer did not send in time") from None


class Channel:
    """Frames on one socket: read one at a time through a buffer, sent in batches.

    The socket blocks, with its timeouts kept by the operating system
    (:meth:`set_timeout`), where it is a plain one; an SSL socket keeps Python's.

    :param keys: the connection's MACs after the handshake, or ``None``.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # sendmsg() writes the pieces of a large frame without joining them first, and
        # the timeouts can be the system's; an SSL socket has neither.
        self._plain = type(sock) is socket.socket
        # The send buffer stays the system's (TCP tunes its own): a stream that runs
        # megabytes ahead of its reader is read back from memory the cache has left
        # (measured through a host: 1.3 GB/s with a 4 MB buffer, 2.2 GB/s without, as
        # fast as a bare socket relay in the same host).
        raw: io.RawIOBase = _Reader(sock) if self._plain else socket.SocketIO(sock, "rb")
        self.rfile = io.BufferedReader(raw, BUFFER)
        self.keys: Keys | None = None

    def set_timeout(self, seconds: float) -> None:
        """Reads and writes that wait longer than ``seconds`` raise :exc:`TimeoutError`."""
        if not self._plain:
            self.sock.settimeout(seconds)
            return
        self.sock.settimeout(None)
        whole = int(seconds)
        interval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            self.sock.setsockopt(socket.SOL_SOCKET, option, interval)

    def read(self) -> tuple[int, bytes]:
        """The next frame's type and payload.

        :raises EOFError: the connection ended (between frames or in one).
        :raises FrameError: a frame too long, or a MAC that does not check out.
        :raises TimeoutError: the peer sent nothing within the timeout.
        :raises OSError: the socket failed.
        """
        header = self.rfile.read(5)
        if len(header) < 5:
            raise EOFError("the connection ended")
        size, kind = HEADER.unpack(header)
        if size > MAX_PAYLOAD:
            raise FrameError(f"a frame of {size} bytes")
        keys = self.keys
        if keys is None:
            payload = self.rfile.read(size) if size else b""
            if len(payload) < size:
                raise EOFError("the connection ended in a frame")
            return kind, payload
        sealed = self.rfile.read(size + MAC_SIZE)
        if len(sealed) < size + MAC_SIZE:
            raise EOFError("the connection ended in a frame")
        payload = sealed[:size]
        keys.check(kind, payload, sealed[size:])
        return kind, payload

    def frame(self, kind: int, payload: bytes = b"") -> list[bytes]:
        """The pieces of one frame, to :meth:`send` (with others, in one write)."""
        head = HEADER.pack(len(payload), kind)
        if self.keys is None:
            return [head, payload] if payload else [head]
        return [head, payload, self.keys.seal(kind, payload)]

    def send(self, pieces: list[bytes]) -> None:
        """Write ``pieces`` (frames from :meth:`frame`) in one go.

        :raises TimeoutError: the peer took nothing within the timeout.
        """
        try:
            if not self._plain or sum(map(len, pieces)) < 65536:
                self.sock.sendall(b"".join(pieces))
                return
            views = [memoryview(piece) for piece in pieces if piece]
            while views:
                sent = self.sock.sendmsg(views)
                while sent:
                    if sent >= len(views[0]):
                        sent -= len(views.pop(0))
                    else:
                        views[0] = views[0][sent:]
                        sent = 0
        except BlockingIOError:
            raise TimeoutError("the peer took nothing in time") from None

    def close(self) -> None:
        """Close the socket (and its reader)."""
        self.rfile.close()
        self.sock.close()
