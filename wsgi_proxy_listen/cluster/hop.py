"""
The hop between processes
=========================

A process that receives a request for a listener owned by another process
forwards it to the owner's internal endpoint (:mod:`.endpoint`) and streams
the answer back, in the frames of :mod:`.frames`, over a kept-alive
connection from a pool per owner: a Unix socket (the embedded directory) or
TCP (Redis).

Everything the owner needs to dispatch the request exactly as this process
would have (the target session, the prefix this process routes with,
``SCRIPT_NAME``, ``PATH_INFO``, the raw query and URI, the request headers as
the server gave them, ``REMOTE_ADDR``, the URL scheme...) travels in the
``REQUEST`` frame; the body follows in ``DATA`` frames, as it is read.
Nothing of the client's request is re-quoted or re-parsed, and no header has
a size limit of the hop's own.

Why frames and not HTTP: measured on this project's machines over a Unix
socket, a length-prefixed exchange between two Python processes takes about
19 µs; a minimal request and answer in these frames 35 µs; the same over HTTP
parsed by httptools (llhttp, what uvicorn uses) 51 to 64 µs; the standard
library's ``http.client`` to ``http.server``, the hop before this one, 75 to 86 µs.
The hop is internal to the package, so it takes the cheapest form that keeps
what it must: streaming both ways, early answers, exact framing, and room for
a MAC on every frame and TLS on TCP.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time
import typing as t
from collections.abc import Iterable, Iterator

from werkzeug.exceptions import RequestEntityTooLarge

from .. import metrics
from ..answers import Failure
from ..events import say
from ..headers import is_hop_by_hop_key
from ..routing import validate_prefix
from .frames import (
    ABORT,
    CHUNK,
    DATA,
    END,
    HELLO,
    MISS,
    REQUEST,
    RESPONSE,
    WELCOME,
    WHOLE,
    Channel,
    FrameError,
    Keys,
    decode_fields,
    decode_whole,
    encode_fields,
    hello,
    read_welcome,
)

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["Connection", "HopClient", "Request", "pack", "unpack"]

logger = logging.getLogger("wsgi_proxy_listen")

#: Pooled connections idle longer than this are dropped before the endpoint,
#: which closes them after a minute, can close them under a request.
IDLE = 30.0
#: Idle connections kept per owner.
MAX_IDLE = 16

# The environ keys forwarded besides the HTTP_* headers: everything the owner's
# dispatch reads (the streamed body comes as the hop's own DATA frames).
FORWARDED = frozenset(
    {
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "REQUEST_URI",
        "RAW_URI",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "REMOTE_USER",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "wsgi.url_scheme",
    }
)


def _forwarded(key: str) -> bool:
    return key in FORWARDED or (key.startswith("HTTP_") and not is_hop_by_hop_key(key))


def pack(environ: WSGIEnvironment, session: str, prefix: str, *, body: bool = False) -> bytes:
    """The payload of a ``REQUEST`` frame: whether a body follows (in ``DATA`` frames,
    then ``END``), the target session, the prefix it was found under, and the
    forwarded environ. Hop-by-hop request headers end here."""
    fields = ["b" if body else "", session, prefix]
    for key, value in environ.items():
        if type(value) is str and _forwarded(key):
            fields.append(key)
            fields.append(value)
    return encode_fields(fields)


class Request(t.NamedTuple):
    """A forwarded request, as the owner reads it."""

    session: str
    prefix: str
    environ: dict[str, str]
    body: bool
    """Whether a body follows, in ``DATA`` frames until ``END``."""


def unpack(payload: bytes) -> Request:
    """What :func:`pack` wrote, checked as strictly as a request of this process: only
    the keys :func:`pack` forwards, a valid prefix.

    :raises FrameError: the payload is not what :func:`pack` writes.
    """
    fields = decode_fields(payload)
    count = len(fields)
    if count < 3 or not count % 2 or fields[0] not in ("", "b"):
        raise FrameError("not a forwarded request")
    prefix, keys = fields[2], fields[3::2]
    if prefix not in _VALID_PREFIXES:
        try:
            validate_prefix(prefix)
        except ValueError:
            raise FrameError("not a forwarded request") from None
        _remember(_VALID_PREFIXES, prefix)
    if not _VALID_KEYS.issuperset(keys):
        for key in keys:
            if not _forwarded(key):
                raise FrameError("a forwarded request with keys no host forwards")
            _remember(_VALID_KEYS, key)
    environ = dict(zip(keys, fields[4::2], strict=True))
    return Request(fields[1], prefix, environ, fields[0] == "b")


# Prefixes and environ keys found valid before, so that a usual request is checked with
# one set operation. Emptied when full: a sender that invents keys cannot grow them.
_VALID_PREFIXES: set[str] = set()
_VALID_KEYS: set[str] = set(FORWARDED)


def _remember(found: set[str], item: str) -> None:
    if len(found) >= 4096:
        found.clear()
        if found is _VALID_KEYS:
            found.update(FORWARDED)
    found.add(item)


class Connection:
    """A hop connection to ``address`` (an absolute path: a Unix socket; else
    ``host:port``), authenticated by its handshake with ``owner``."""

    def __init__(
        self,
        address: str,
        owner: str,
        secret: bytes | None,
        connect_timeout: float,
        read_timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self.used = time.monotonic()
        if address.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: t.Any = address
        else:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            target = (host, int(port))
        try:
            sock.settimeout(connect_timeout)
            sock.connect(target)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if tls is not None:
                    sock = tls.wrap_socket(sock)  # the handshake, within the connect timeout
        except BaseException:
            sock.close()
            raise
        self.channel = channel = Channel(sock)
        try:
            payload, nonce = hello(secret, owner)
            channel.send(channel.frame(HELLO, payload))
            kind, answer = channel.read()
            if kind != WELCOME:
                raise FrameError("no WELCOME")
            welcomed = read_welcome(answer, secret, owner, nonce)
            if secret is not None:
                channel.keys = Keys(secret, owner, nonce, welcomed, host=True)
            channel.set_timeout(read_timeout)
        except BaseException:
            channel.close()
            raise

    def close(self) -> None:
        self.channel.close()


class _Body:
    """The request body read from ``wsgi.input`` in chunks, remembering why reading it
    failed: the client went away, or the body ran past ``max_content_length``."""

    def __init__(self, stream: t.IO[bytes], length: int | None) -> None:
        self.stream = stream
        self.length = length
        self.failure: Failure | None = None

    def chunks(self) -> Iterator[bytes]:
        remaining = self.length
        while remaining is None or remaining > 0:
            try:
                chunk = self.stream.read(CHUNK if remaining is None else min(CHUNK, remaining))
            except RequestEntityTooLarge:
                self.failure = Failure.TOO_LARGE
                raise
            except Exception:
                self.failure = Failure.ABORTED
                raise
            if not chunk:
                if remaining:
                    # The declared length never came: the client went away mid-upload.
                    self.failure = Failure.ABORTED
                    raise ConnectionAbortedError("the request body ended early")
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def _body_length(environ: WSGIEnvironment) -> int | None:
    """The declared body length; ``None`` for a chunked body."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or "0"))
    except ValueError:
        return 0


class HopClient:
    """Sends requests to internal endpoints over pooled, kept-alive connections.

    :param secret: authenticates each connection and signs every frame, or ``None``
        (the embedded directory, where the folder's permissions keep others out).
    :param read_timeout: seconds to wait for the owner (then 504).
    """

    def __init__(
        self,
        secret: bytes | None,
        read_timeout: float,
        connect_timeout: float = 1.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.secret = secret
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.tls = tls
        self._idle: dict[str, list[Connection]] = {}
        self._lock = threading.Lock()

    def _checkout(self, address: str) -> Connection | None:
        now = time.monotonic()
        with self._lock:
            idle = self._idle.get(address)
            while idle:
                connection = idle.pop()
                if now - connection.used < IDLE:
                    return connection
                connection.close()
        return None

    def checkin(self, connection: Connection) -> None:
        """Put a connection whose answer was read to the end back in the pool."""
        connection.used = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(connection.address, [])
            if len(idle) < MAX_IDLE:
                idle.append(connection)
                return
        connection.close()

    def clear(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            pools, self._idle = self._idle, {}
        for idle in pools.values():
            for connection in idle:
                connection.close()

    def forget(self) -> None:
        """In a forked child: close this process's copies of the pooled sockets (the
        parent's stay open) and start with an empty pool."""
        self._lock = threading.Lock()
        self.clear()

    def _connect(self, owner: str, address: str) -> Connection | Failure:
        if metrics.ENABLED:
            metrics.hop_connection()
        try:
            return Connection(
                address, owner, self.secret, self.connect_timeout, self.read_timeout, self.tls
            )
        except (ConnectionRefusedError, FileNotFoundError):
            return Failure.GONE  # nobody listens at the address: the owner is gone
        except ssl.SSLError as error:
            # The owner's certificate is not the deployment's (or it refused ours).
            logger.warning("TLS with the owner at %s failed: %s", address, error)
            return Failure.BROKEN
        except (TimeoutError, BlockingIOError):
            # A paused or overwhelmed owner (a full backlog is EAGAIN on a Unix socket),
            # which is no proof that it is gone.
            return Failure.UNRESPONSIVE
        except (OSError, EOFError, FrameError):
            return Failure.BROKEN

    def forward(
        self,
        owner: str,
        address: str,
        session: str,
        prefix: str,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes] | Failure:
        """Forward the request of ``environ`` for ``session``, found under ``prefix``,
        to ``owner`` at ``address``.

        Returns the owner's answer, already started, or the :class:`Failure`
        that kept it from answering (nothing was sent to ``start_response``).
        """
        length = _body_length(environ)
        body = None if length == 0 else _Body(environ["wsgi.input"], length)
        fields = pack(environ, session, prefix, body=body is not None)
        # A pooled connection that the owner closed while it was idle fails on first use:
        # a request without a body goes once more, on a fresh connection.
        for attempt in range(2 if body is None else 1):
            reused = self._checkout(address)
            connection = reused or self._connect(owner, address)
            if isinstance(connection, Failure):
                return connection
            try:
                sent = self._send(connection.channel, fields, body)
                kind, payload = connection.channel.read()
            except Exception as error:
                connection.close()
                if body is not None and body.failure is not None:
                    return body.failure
                if isinstance(error, TimeoutError):
                    return Failure.TIMEOUT
                if reused is not None and attempt == 0 and body is None:
                    continue
                if isinstance(error, (OSError, EOFError, FrameError)):
                    return Failure.BROKEN
                raise
            break
        else:
            return Failure.BROKEN
        if kind == MISS:
            self.release(connection, sent)
            return Failure.MISS
        head: list[str]
        whole: bytes | None = None  # the body of an answer that came in one frame
        try:
            if kind == WHOLE:
                head, whole = decode_whole(payload)
            elif kind == RESPONSE:
                head = decode_fields(payload)
            else:
                raise FrameError("an answer that is no RESPONSE")
            status, *pairs = head
            # As the owner sent them: the host checks them as a local listener's.
            headers = list(zip(pairs[::2], pairs[1::2], strict=True))
        except (FrameError, ValueError):
            connection.close()
            return Failure.BROKEN
        if whole is not None:
            self.release(connection, sent)  # the whole answer is here
            start_response(status, headers)
            return [whole] if whole else []
        start_response(status, headers)
        return _Relay(self, connection, session, reusable=sent)

    def release(self, connection: Connection, sent: bool) -> None:
        """An answer was read to its end: the connection goes back to the pool if the
        whole request went (else the owner closes its side)."""
        if sent:
            self.checkin(connection)
        else:
            connection.close()

    @staticmethod
    def _send(channel: Channel, fields: bytes, body: _Body | None) -> bool:
        """Send the request; whether all of it went (else the owner answered early and
        closes the connection after its answer)."""
        if body is None:
            channel.send(channel.frame(REQUEST, fields))
            return True
        channel.send(channel.frame(REQUEST, fields))
        try:
            for chunk in body.chunks():
                channel.send(channel.frame(DATA, chunk))
        except OSError:
            if body.failure is not None:
                raise
            # The owner answered before it took the whole body (a 401, a 413) and closed
            # its side: its answer may be waiting to be read.
            return False
        except Exception:
            # The client went away, or sent too much: the owner's listener hears of it.
            channel.send(channel.frame(ABORT))
            raise
        channel.send(channel.frame(END))
        return True


def _cut() -> ConnectionResetError:
    """What the server is told when an answer cannot be finished: the connection must
    close with the answer cut. A reset, which servers take as the end of a connection
    and log no traceback for (gunicorn and werkzeug log it at debug level at most)."""
    return ConnectionResetError(errno.ECONNRESET, "the answer of the listener's process was cut")


class _Relay:
    """The owner's answer, streamed through as it arrives; the connection goes back to
    the pool as soon as the answer was read to its end (when the request went whole),
    and is closed if the answer is closed before that."""

    def __init__(
        self, client: HopClient, connection: Connection, session: str, *, reusable: bool
    ) -> None:
        self.client = client
        self.connection = connection
        self.session = session
        self.reusable = reusable
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        read = self.connection.channel.read
        while True:
            try:
                kind, payload = read()
            except (EOFError, OSError, FrameError) as error:
                # The owner's process died, the link broke, or the owner went silent for
                # the read timeout, while its answer streamed.
                slow = isinstance(error, TimeoutError)
                say(
                    "answer_cut",
                    "the owner at %s %s in the middle of its answer for session %r: the"
                    " answer is cut",
                    self.connection.address,
                    "sent nothing within the read timeout" if slow else "ended the connection",
                    self.session,
                    session=self.session,
                    address=self.connection.address,
                    reason="timeout" if slow else str(error) or type(error).__name__,
                )
                raise _cut() from None
            if kind == DATA:
                yield payload
            elif kind == END:
                self.done = True
                self.client.release(self.connection, self.reusable)
                return
            else:
                # ABORT: the owner could not finish its answer (its listener failed, or
                # sent less than its Content-Length, which the owner logged); the client
                # must see it cut.
                raise _cut()

    def close(self) -> None:
        if not self.done:
            self.done = True
            self.connection.close()
