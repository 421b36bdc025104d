"""
The internal endpoint
=====================

Each process that publishes listeners runs an endpoint, on a Unix socket (the
embedded directory) or a TCP port (Redis), that takes the requests other
processes forward to it in the frames of :mod:`.frames` and answers them from
this process's listeners.

- **No resource before authentication.** One thread accepts connections and
  reads their ``HELLO`` without blocking; a connection gets a slot and a thread
  of its own only once its handshake checks out, and must complete it within
  :data:`HANDSHAKE_TIMEOUT` seconds. While more than :data:`MAX_PENDING`
  connections are in their handshake, the oldest is closed first. Connections
  that authenticated are served one thread each, at most
  :data:`MAX_CONNECTIONS` at once, each kept alive for
  :data:`IDLE_TIMEOUT` seconds between requests.
- **One request at a time per connection**, dispatched in the connection's own
  thread (no hand-off): the request's body is read from its ``DATA`` frames
  as the listener reads ``wsgi.input``, and the answer is written as the
  listener produces it: a stream reaches the host chunk by chunk, a list body
  leaves in one write with its head and its end.
- **Exact framing.** An answer is ``RESPONSE``, ``DATA``..., ``END``; a
  listener that sends more than its ``Content-Length`` is cut there, one that
  sends less, or fails after its answer began, ends with ``ABORT``, which the
  host passes on as a cut answer. A listener that answers before reading its
  whole body: the rest is read and dropped, so the connection serves the next
  request.
- A forwarded request for a session this process does not serve (any more)
  is answered ``MISS``, so that the sender can look again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import selectors
import socket
import ssl
import sys
import threading
import time
import typing as t

from werkzeug.exceptions import ClientDisconnected

from ..answers import respond
from ..events import say
from .addresses import Bind, listen_on
from .frames import (
    ABORT,
    CHUNK,
    DATA,
    END,
    HEADER,
    HELLO,
    MISS,
    REQUEST,
    RESPONSE,
    WELCOME,
    WHOLE,
    Channel,
    FrameError,
    Keys,
    encode_fields,
    encode_whole,
    read_hello,
    welcome,
)
from .hop import unpack

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIEnvironment

    from ..seam import ServeForwarded

__all__ = ["InternalEndpoint"]

logger = logging.getLogger("wsgi_proxy_listen")

#: Seconds a connection may take to authenticate (its handshake).
HANDSHAKE_TIMEOUT = 1.5
#: Connections in their handshake at once; beyond, the oldest is closed.
MAX_PENDING = 128
#: Seconds an authenticated connection may stay idle between requests.
IDLE_TIMEOUT = 60.0
#: Authenticated connections served at once; one more is closed at once.
MAX_CONNECTIONS = 512
#: The longest HELLO: a version, a time, a nonce, an owner id and a MAC.
_MAX_HELLO = 512
#: Bytes of a body that the endpoint reads and drops after an early answer, at most.
_MAX_DRAIN = 1 << 24
_NO_BODY_STATUSES = frozenset({204, 304})
_ENVIRON = {
    "wsgi.version": (1, 0),
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    # The body ends with its END frame, whatever CONTENT_LENGTH says.
    "wsgi.input_terminated": True,
}


class InternalEndpoint:
    """Serves hop requests for ``owner`` on ``address``.

    :param address: an absolute path for a Unix socket (created ``0600``), a host
        to bind a free TCP port on, or where to bind one and what to publish
        (:class:`~.addresses.Bind`).
    :param owner: this process's owner id: a ``HELLO`` must name it.
    :param serve: how a forwarded request reaches this process's listeners:
        :meth:`Registry.serve_forwarded <wsgi_proxy_listen.Registry.serve_forwarded>`.
    :param secret: authenticates connections and signs their frames, or ``None``
        (a Unix socket in a folder that only this user can open).
    :param tls: the TLS a TCP connection must speak (the host's certificate checked),
        or ``None``.
    """

    def __init__(
        self,
        address: str | Bind,
        owner: str,
        serve: ServeForwarded,
        secret: bytes | None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.owner = owner
        self.tls = tls
        self.serve = serve
        self.secret = secret
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stopped = threading.Event()
        if isinstance(address, str) and not address.startswith("/"):
            host = address.strip("[]")  # a host: any free port of it
            address = Bind(host, range(0, 1), host, None)
        if isinstance(address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)  # a socket file left by a process that was killed
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(address)
                os.chmod(address, 0o600)
            except BaseException:
                listener.close()
                raise
            self.address = address
        else:
            listener = listen_on(address)
            self.address = address.published(listener.getsockname()[1])
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._thread = threading.Thread(
            target=self._accept, name="wsgi_proxy_listen internal endpoint", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, close every connection, remove a Unix socket."""
        self._stopped.set()
        self._thread.join(5)
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self.address.startswith("/"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)

    def abandon(self) -> None:
        """In a forked child: close the parent's sockets here without touching the
        parent's Unix socket file, so that the child never answers for the parent."""
        self._listener.close()
        for connection in self._connections:
            connection.close()
        self._connections = set()

    # -- accepting and authenticating -------------------------------------------------------

    def _accept(self) -> None:
        pending: dict[socket.socket, _Handshake] = {}
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stopped.is_set():
                for key, _ in selector.select(0.2):
                    sock = t.cast(socket.socket, key.fileobj)
                    try:
                        if sock is self._listener:
                            self._take_new(selector, pending)
                        else:
                            self._read_hello(selector, pending, sock)
                    except Exception:
                        logger.exception("the internal endpoint failed on a connection: it goes on")
                        if sock in pending:
                            self._drop(selector, pending, sock)
                now = time.monotonic()
                for sock in [sock for sock, shake in pending.items() if shake.deadline < now]:
                    logger.debug("a hop connection did not authenticate in time: closed")
                    self._drop(selector, pending, sock)
            for sock in list(pending):
                self._drop(selector, pending, sock)

    def _take_new(
        self, selector: selectors.BaseSelector, pending: dict[socket.socket, _Handshake]
    ) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # closed, or out of file descriptors: the next round tries again
            sock.setblocking(False)
            if self.tls is not None and sock.family != socket.AF_UNIX:
                # The handshake runs in this loop as the bytes come, like the HELLO: a
                # silent connection holds no thread.
                try:
                    # Reset already (a port probe): Python's wrap_socket would raise
                    # and leave the socket it made open.
                    sock.getpeername()
                    sock = self.tls.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                except OSError as error:
                    logger.debug("a hop connection ended before its TLS began: %r", error)
                    sock.close()
                    continue
            if len(pending) >= MAX_PENDING:
                # The oldest unauthenticated connection goes first (dicts keep order).
                self._drop(selector, pending, next(iter(pending)))
            pending[sock] = _Handshake(time.monotonic() + HANDSHAKE_TIMEOUT)
            selector.register(sock, selectors.EVENT_READ)

    def _read_hello(
        self,
        selector: selectors.BaseSelector,
        pending: dict[socket.socket, _Handshake],
        sock: socket.socket,
    ) -> None:
        shake = pending[sock]
        try:
            if isinstance(sock, ssl.SSLSocket) and not shake.secured:
                sock.do_handshake()
                shake.secured = True
                selector.modify(sock, selectors.EVENT_READ)
            data = sock.recv(_MAX_HELLO + 5 - len(shake.received))
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            selector.modify(sock, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            # The handshake's answer did not fit: go on when the socket takes more.
            selector.modify(sock, selectors.EVENT_WRITE)
            return
        except ssl.SSLEOFError:
            data = b""  # closed before the handshake ended: a port probe, say
        except ssl.SSLError as error:
            say(
                "hop_refused",
                "refused a hop connection whose TLS failed: %s",
                error.reason,
                reason=f"tls: {error.reason}",
            )
            data = b""
        except OSError:
            data = b""
        if not data:
            self._drop(selector, pending, sock)
            return
        shake.received += data
        if len(shake.received) < 5:
            return
        size, kind = HEADER.unpack_from(shake.received)
        if kind != HELLO or size > _MAX_HELLO:
            say(
                "hop_refused",
                "refused a connection to the internal endpoint that was no hop",
                reason="no hop",
            )
            self._drop(selector, pending, sock)
            return
        if len(shake.received) < 5 + size:
            return
        selector.unregister(sock)
        del pending[sock]
        if len(shake.received) > 5 + size:
            sock.close()  # a HELLO is answered before anything else is sent
            return
        try:
            greeting = read_hello(shake.received[5:], self.secret, self.owner)
        except FrameError as error:
            say(
                "hop_refused",
                "refused a connection to the internal endpoint: %s",
                error,
                reason=str(error),
            )
            sock.close()
            return
        if not self._slots.acquire(blocking=False):
            say(
                "hop_refused",
                "the internal endpoint has %d connections: refused one",
                MAX_CONNECTIONS,
                reason="connection limit",
            )
            sock.close()
            return
        try:
            threading.Thread(
                target=self._serve_connection,
                args=(sock, greeting.nonce),
                name="wsgi_proxy_listen hop",
                daemon=True,
            ).start()
        except BaseException:
            self._slots.release()
            sock.close()
            raise

    @staticmethod
    def _drop(
        selector: selectors.BaseSelector,
        pending: dict[socket.socket, _Handshake],
        sock: socket.socket,
    ) -> None:
        selector.unregister(sock)
        del pending[sock]
        sock.close()

    # -- serving an authenticated connection --------------------------------------------------

    def _serve_connection(self, sock: socket.socket, hello_nonce: bytes) -> None:
        with self._lock:
            self._connections.add(sock)
        channel = Channel(sock)
        try:
            channel.set_timeout(IDLE_TIMEOUT)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            payload, nonce = welcome(self.secret, self.owner, hello_nonce)
            channel.send(channel.frame(WELCOME, payload))
            if self.secret is not None:
                channel.keys = Keys(self.secret, self.owner, hello_nonce, nonce, host=False)
            while not self._stopped.is_set() and _Exchange(channel, self.serve).run():
                pass
        except (OSError, EOFError, FrameError, _HostGone) as error:
            # The host went away or closed an idle connection: no error of this process.
            logger.debug("a hop connection ended: %r", error)
        finally:
            with self._lock:
                self._connections.discard(sock)
            channel.close()
            self._slots.release()


class _Handshake:
    __slots__ = ("deadline", "received", "secured")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.received = b""
        self.secured = False  # the TLS handshake is done (where there is TLS)


class _Body(io.RawIOBase):
    """A forwarded request's body: its ``DATA`` frames until ``END``."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.chunk = memoryview(b"")
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: t.Any) -> int:
        while not self.chunk:
            if self.ended:
                return 0
            try:
                kind, payload = self.channel.read()
            except (OSError, EOFError, FrameError) as error:
                self.ended = True
                raise ClientDisconnected() from error
            if kind == END:
                self.ended = True
                return 0
            if kind != DATA:
                # ABORT: the client went away mid-upload, or sent more than the host takes.
                self.ended = True
                raise ClientDisconnected()
            self.chunk = memoryview(payload)
        count = min(len(buffer), len(self.chunk))
        buffer[:count] = self.chunk[:count]
        self.chunk = self.chunk[count:]
        return count

    def drain(self) -> bool:
        """Read what the listener left of the body; whether it ended (within bounds)."""
        left = _MAX_DRAIN - len(self.chunk)
        self.chunk = memoryview(b"")
        while not self.ended and left > 0:
            try:
                kind, payload = self.channel.read()
            except (OSError, EOFError, FrameError):
                return False
            if kind != DATA:
                self.ended = True
                return kind == END
            left -= len(payload)
        return self.ended


def _read_to_end(body: _Body | None) -> bool:
    """Whether the request's body was (or is now) read to its end, so that the
    connection is in step for the next request."""
    return body is None or body.drain()


class _HostGone(Exception):
    """Writing to the host failed: it went away (its client did, or it closed)."""


class _Exchange:
    """One forwarded request and its answer on ``channel``.

    What the listener sends is queued (its head, then its body) and framed when it
    leaves: a stream chunk by chunk as the listener makes it, a list body at its end,
    in one ``WHOLE`` frame where it is small."""

    def __init__(self, channel: Channel, serve: ServeForwarded) -> None:
        self.channel = channel
        self.serve = serve
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent = False  # whether the head was queued
        self.bodiless = False
        self.remaining: int | None = None  # bytes still owed under a Content-Length
        self.head: list[str] | None = None  # status and headers, queued and not framed yet
        self.body: list[bytes] = []  # body bytes queued and not framed yet
        self.flushed = False  # whether any of the answer went out
        self.cut = False  # whether bytes past its Content-Length were dropped
        self.ended = False  # whether END went out (with the chunk that completed it)

    def run(self) -> bool:
        """Serve one request; whether the connection can take the next."""
        channel = self.channel
        try:
            kind, payload = channel.read()
        except EOFError:
            return False  # the host closed an idle connection
        if kind != REQUEST:
            raise FrameError("a frame that is no REQUEST")
        session, prefix, forwarded, has_body = unpack(payload)
        body = _Body(channel) if has_body else None
        environ: WSGIEnvironment = {**_ENVIRON, **forwarded}
        environ["wsgi.input"] = io.BytesIO() if body is None else io.BufferedReader(body)
        self.bodiless = forwarded.get("REQUEST_METHOD") == "HEAD"
        iterable: Iterable[bytes] | None = None
        try:
            iterable = self.serve(environ, self.start_response, session, prefix)
            if iterable is None:
                if not _read_to_end(body):
                    return False
                channel.send(channel.frame(MISS))
                return True
            return self._answer(session, iterable) and _read_to_end(body)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> Callable[[bytes], object]:
        if exc_info is not None and exc_info[1] is not None and self.sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status, self.headers = status, list(headers)
        return self.write

    def _answer(self, session: str, iterable: Iterable[bytes]) -> bool:
        """Send the answer; whether it ended as framed (else ``ABORT`` was sent)."""
        # A list body is known whole: it leaves at its end, with its head. Anything else
        # may be a stream: each chunk leaves as it comes, and the one that completes its
        # Content-Length takes the end along.
        whole = type(iterable) in (list, tuple)
        try:
            for chunk in iterable:
                if self.status is None:
                    raise AssertionError("a body before start_response()")
                self._add(chunk)
                if not whole and (self.body or self.head is not None):
                    if self.remaining == 0 and not self.ended:
                        self.ended = True
                        self._flush(END)
                    else:
                        self._flush()
            if self.status is None:
                raise AssertionError("no start_response()")
        except _HostGone:
            raise
        except Exception:  # noqa: BLE001 - whatever the listener raised: logged by _failed
            return self._failed(session)
        if self.ended:
            return True
        self._start()
        if self.remaining:
            logger.error(
                "a listener of session %r sent %d bytes fewer than its Content-Length",
                session,
                self.remaining,
            )
            self._flush(ABORT)
            return False
        if self.head is not None and sum(map(len, self.body)) <= CHUNK:
            # Nothing went yet and the body is small: one frame, one read for the host.
            self._send(self.channel.frame(WHOLE, encode_whole(self.head, self.body)))
            return True
        self._flush(END)
        return True

    def _failed(self, session: str) -> bool:
        """The listener's iterable raised: a plain 500 where nothing went out yet, else
        ``ABORT``. Whether the connection can take the next request."""
        if self.ended:
            logger.error(
                "a listener of session %r raised after its whole answer", session, exc_info=True
            )
            return True
        if not self.flushed:
            logger.exception("a forwarded request of session %r failed", session)
            self.status, self.headers, self.sent = None, [], False
            self.head, self.body, self.remaining = None, [], None
            for chunk in respond(self.start_response, 500):
                self._add(chunk)
            self._flush(END)
            return True
        logger.error(
            "a forwarded answer of session %r failed after it began", session, exc_info=True
        )
        self._flush(ABORT)
        return False

    def write(self, data: bytes) -> None:
        """The ``write`` callable of PEP 3333."""
        self._add(data)
        self._flush()

    def _send(self, pieces: list[bytes]) -> None:
        try:
            self.channel.send(pieces)
        except OSError as error:
            raise _HostGone() from error
        self.flushed = True

    def _flush(self, end: int | None = None) -> None:
        """Send what is queued, framed, then ``end`` (``END`` or ``ABORT``) if given."""
        frame = self.channel.frame
        pieces: list[bytes] = []
        if self.head is not None:
            pieces += frame(RESPONSE, encode_fields(self.head))
            self.head = None
        for data in self.body:
            for start in range(0, len(data), CHUNK):
                pieces += frame(DATA, data[start : start + CHUNK])
        self.body = []
        if end is not None:
            pieces += frame(end)
        if pieces:
            self._send(pieces)

    def _add(self, data: bytes) -> None:
        self._start()
        if not data or self.bodiless:
            return
        if self.remaining is not None:
            if len(data) > self.remaining:
                if not self.cut:
                    self.cut = True
                    logger.error("a listener sent more bytes than its Content-Length: cut")
                data = data[: self.remaining]
            self.remaining -= len(data)
            if not data:
                return
        self.body.append(data)

    def _start(self) -> None:
        """Queue the head, once: status and headers as the listener sent them."""
        if self.sent:
            return
        if self.status is None:
            raise AssertionError("write() before start_response()")
        self.sent = True
        status = int(self.status[:3])
        if status in _NO_BODY_STATUSES or status < 200:
            self.bodiless = True
        lengths = {
            value.strip() for name, value in self.headers if name.lower() == "content-length"
        }
        if not self.bodiless and len(lengths) == 1 and (length := next(iter(lengths))).isdigit():
            self.remaining = int(length)
        head = [self.status]
        for name, value in self.headers:
            head.append(name)
            head.append(value)
        self.head = head
