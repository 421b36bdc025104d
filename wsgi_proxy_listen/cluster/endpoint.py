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
- **One request at a time per connection**, served in the connection's own
  thread (no hand-off) by :class:`~.exchange.Exchange`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import ssl
import threading
import time
import typing as t

from ..events import say
from .addresses import Bind, listen_on
from .exchange import Exchange, HostGone
from .frames import (
    HEADER,
    HELLO,
    WELCOME,
    Channel,
    FrameError,
    Keys,
    read_hello,
    welcome,
)

if t.TYPE_CHECKING:
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
            while not self._stopped.is_set() and Exchange(channel, self.serve).run():
                pass
        except (OSError, EOFError, FrameError, HostGone) as error:
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
