"""
The internal endpoint
=====================

Each process that publishes listeners runs a small HTTP/1.1 server, on a Unix
socket (the embedded directory) or a TCP port (Redis), that takes the requests
other processes forward to it (:mod:`.hop`). It is the standard library's
:mod:`http.server` with one thread per kept-alive connection, so a hop costs
no hand-off between threads; the request body comes through werkzeug's
:class:`~werkzeug.wsgi.LimitedStream` or :class:`~werkzeug.serving.DechunkedInput`.

It serves one path, :data:`~.hop.HOP_PATH`, and only requests that carry a
forwarded environ (and, with a secret, a valid signature): anything else gets
403. The forwarded request is answered by the middleware from this process's
listener of the target session; when there is none, the answer is an empty
404 marked with :data:`~.hop.MISS_HEADER`, so that the sender can look again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import sys
import threading
import typing as t
from http.server import BaseHTTPRequestHandler

from werkzeug.serving import DechunkedInput
from werkzeug.wsgi import LimitedStream

from .hop import ENVIRON_HEADER, HOP_PATH, MISS_HEADER, unpack

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from email.message import Message

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIEnvironment

    from ..seam import ServeForwarded

__all__ = ["InternalEndpoint"]

logger = logging.getLogger("wsgi_proxy_listen")

#: Seconds a kept-alive connection may stay idle (the hop's pool drops its
#: connections sooner).
IDLE_TIMEOUT = 60.0
#: Connections served at once; one more is closed at once (its sender answers 503).
MAX_CONNECTIONS = 512
_NO_BODY_STATUSES = frozenset({204, 304})


class InternalEndpoint:
    """A threaded HTTP server for hop requests, bound to ``address``.

    :param address: an absolute path for a Unix socket (created ``0600``), or
        a host to bind a free TCP port on.
    :param serve: how a forwarded request reaches this process's listeners:
        :meth:`Registry.serve_forwarded <wsgi_proxy_listen.Registry.serve_forwarded>`.
    :param verify: ``verify(method, environ header, headers)`` says whether the
        first request of a connection may be served (the connection is then
        trusted until it closes), or ``None`` to serve every request that
        reaches the socket.
    """

    def __init__(
        self,
        address: str,
        serve: ServeForwarded,
        verify: Callable[[str, str, Message], bool] | None,
    ) -> None:
        self.serve = serve
        self.verify = verify
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        server: _UnixServer | _TCPServer
        if address.startswith("/"):
            server = _UnixServer(address, self)
            self.address = address
        else:
            server = _TCPServer(address, self)
            host, port = t.cast("tuple[str, int]", server.server_address[:2])
            self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="wsgi_proxy_listen internal endpoint",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Close the kept-alive connections, stop accepting, remove a Unix socket."""
        with self._lock:
            connections, self._connections = self._connections, set()
        # The connections first: their threads end and free their slots, so that the
        # accept loop is not left waiting for one when it is asked to stop.
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server.shutdown()
        self._server.server_close()
        if self.address.startswith("/"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)

    def abandon(self) -> None:
        """In a forked child: close the parent's sockets here without touching the
        parent's Unix socket file, so that the child never answers for the parent."""
        self._server.socket.close()
        for connection in self._connections:
            connection.close()
        self._connections = set()

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


class _Servers(socketserver.ThreadingMixIn):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64
    endpoint: InternalEndpoint

    def process_request(self, request: t.Any, client_address: t.Any) -> None:
        # One thread per connection, at most MAX_CONNECTIONS at once. Beyond, the
        # connection is closed at once: waiting in the backlog, it would hold its
        # sender until the read timeout.
        if not self.endpoint._slots.acquire(blocking=False):
            logger.warning("the internal endpoint has %d connections: refused one", MAX_CONNECTIONS)
            t.cast("socketserver.BaseServer", self).shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.endpoint._slots.release()
            raise

    def process_request_thread(self, request: t.Any, client_address: t.Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.endpoint._slots.release()

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        # A sender that went away mid-request: socketserver would print a traceback.
        logger.debug("a hop connection ended with an error", exc_info=True)


class _UnixServer(_Servers, socketserver.UnixStreamServer):
    def __init__(self, path: str, endpoint: InternalEndpoint) -> None:
        self.endpoint = endpoint
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket file left by a process that was killed
        super().__init__(path, _Handler)

    def server_bind(self) -> None:
        super().server_bind()
        os.chmod(self.server_address, 0o600)  # type: ignore[arg-type]


class _TCPServer(_Servers, socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, host: str, endpoint: InternalEndpoint) -> None:
        self.endpoint = endpoint
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    """One kept-alive connection: hop requests, one after the other."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    # Headers and the first chunk leave in one write; each chunk is flushed.
    wbufsize = 65536
    server: _Servers  # type: ignore[assignment]

    def setup(self) -> None:
        super().setup()
        self.trusted = self.server.endpoint.verify is None
        if self.connection.family != socket.AF_UNIX:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.endpoint.track(self.connection, True)

    def finish(self) -> None:
        self.server.endpoint.track(self.connection, False)
        # StreamRequestHandler.finish() stops at a write that fails (the sender went
        # away) and leaves rfile open, which keeps the socket open.
        with contextlib.suppress(OSError):
            self.wfile.close()
        self.rfile.close()

    def log_message(self, format: str, *args: t.Any) -> None:
        pass  # one line per hop would double the host's access log

    def __getattr__(self, name: str) -> t.Any:
        # http.server dispatches on do_<METHOD>: every method is a hop.
        if name.startswith("do_"):
            return self._hop
        raise AttributeError(name)

    def _hop(self) -> None:
        endpoint = self.server.endpoint
        meta = self.headers.get(ENVIRON_HEADER)
        if not self.trusted and meta is not None and self.path == HOP_PATH:
            verify = t.cast("Callable[[str, str, Message], bool]", endpoint.verify)
            self.trusted = verify(self.command, meta, self.headers)
        if self.path != HOP_PATH or meta is None or not self.trusted:
            logger.warning("refused a request to the internal endpoint that was not a valid hop")
            self._plain(403)
            return
        try:
            session, prefix, forwarded = unpack(meta)
        except ValueError:
            self._plain(400)
            return
        environ: WSGIEnvironment = dict(forwarded)
        stream: t.IO[bytes]
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            stream = t.cast(t.IO[bytes], DechunkedInput(t.cast(t.IO[bytes], self.rfile)))
            environ["wsgi.input_terminated"] = True
            # Whether a chunked body was read to its end is not known: start afresh.
            body_pending: Callable[[], bool] = lambda: True  # noqa: E731
        else:
            length = int(self.headers.get("Content-Length") or 0)
            limited = LimitedStream(t.cast(t.IO[bytes], self.rfile), length)
            stream = t.cast(t.IO[bytes], limited)
            body_pending = lambda: not limited.is_exhausted  # noqa: E731
        environ.update(
            {
                "wsgi.version": (1, 0),
                "wsgi.input": stream,
                "wsgi.errors": sys.stderr,
                "wsgi.multithread": True,
                "wsgi.multiprocess": True,
                "wsgi.run_once": False,
            }
        )
        _Response(self, environ["REQUEST_METHOD"] == "HEAD", body_pending).run(
            endpoint.serve, environ, session, prefix
        )

    def _plain(self, status: int, *headers: tuple[str, str], close: bool = True) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        if close:
            # The rest of the request may still be on the wire: this connection ends here.
            self.send_header("Connection", "close")
        self.end_headers()


class _Response:
    """Writes one WSGI answer on the hop connection: chunked unless it has a length,
    flushed chunk by chunk so that a stream reaches the client as it is made.

    The connection is kept alive only when the answer is framed exactly: a body
    longer than its ``Content-Length`` is cut there and a shorter one ends the
    connection, so that no byte of one answer is ever read as part of the next.
    """

    def __init__(self, handler: _Handler, head: bool, body_pending: Callable[[], bool]) -> None:
        self.handler = handler
        self.head = head
        self.body_pending = body_pending
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent = False
        self.chunked = False
        self.bodiless = head
        self.remaining: int | None = None  # bytes still owed under a Content-Length

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

    def run(
        self, serve: ServeForwarded, environ: WSGIEnvironment, session: str, prefix: str
    ) -> None:
        handler = self.handler
        iterable: Iterable[bytes] | None = None
        try:
            iterable = serve(environ, self.start_response, session, prefix)
            if iterable is None:
                handler._plain(404, (MISS_HEADER, "1"), close=self.body_pending())
                return
            for chunk in iterable:
                self.write(chunk)
            if not self.sent:
                self.write(b"")
            if self.chunked:
                handler.wfile.write(b"0\r\n\r\n")
            elif self.remaining:
                logger.error(
                    "a listener of session %r sent %d bytes fewer than its Content-Length",
                    session,
                    self.remaining,
                )
                handler.close_connection = True
            handler.wfile.flush()
        except Exception:
            # The answer cannot be finished: the sender sees the connection end before
            # the body does and aborts its own response.
            handler.close_connection = True
            if not self.sent:
                logger.exception("a forwarded request failed before its answer started")
                with contextlib.suppress(OSError):
                    handler._plain(500)
            else:
                logger.error("a forwarded answer failed after it started", exc_info=True)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    def write(self, data: bytes) -> None:
        handler = self.handler
        if not self.sent:
            if self.status is None:
                raise AssertionError("write() before start_response()")
            self._send_head()
        if not data or self.bodiless:
            return
        if self.remaining is not None:
            if len(data) > self.remaining:
                if not handler.close_connection:
                    logger.error("a listener sent more bytes than its Content-Length: cut")
                handler.close_connection = True
                data = data[: self.remaining]
            self.remaining -= len(data)
            if not data:
                return
        if self.chunked:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            handler.wfile.write(data)
        handler.wfile.flush()

    def _send_head(self) -> None:
        handler = self.handler
        code, _, reason = t.cast(str, self.status).partition(" ")
        status = int(code)
        headers = self.headers
        lengths = {value.strip() for name, value in headers if name.lower() == "content-length"}
        if status in _NO_BODY_STATUSES or status < 200:
            self.bodiless = True
        elif len(lengths) == 1 and (length := next(iter(lengths))).isdigit():
            if not self.head:
                self.remaining = int(length)
        elif not self.head:
            # No length, or none that frames the body (the owner's guard refuses those):
            # chunked, without the lengths.
            self.chunked = True
            headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
            headers.append(("Transfer-Encoding", "chunked"))
        handler.send_response_only(status, reason)
        for name, value in headers:
            handler.send_header(name, value)
        if self.body_pending():
            # Answered before the body was read: the rest of it is still on the wire.
            handler.send_header("Connection", "close")
        handler.end_headers()
        self.sent = True
