"""
The hop between processes
=========================

A process that receives a request for a listener owned by another process
forwards it over HTTP/1.1 to the owner's internal endpoint
(:mod:`.endpoint`) and streams the answer back. The hop is plain HTTP on a
kept-alive connection, over a Unix socket (the embedded directory) or TCP
(Redis): :mod:`http.client` sends it and :mod:`http.server` parses it.

Everything the owner needs to dispatch the request exactly as the receiving
process would have (the target session, the prefix the receiving process
routes with, ``SCRIPT_NAME``, ``PATH_INFO``, the
raw query and URI, the request headers as the server gave them,
``REMOTE_ADDR``, the URL scheme...) travels in one header as JSON, so the hop
request itself has four headers and nothing of the client's request is
re-quoted or re-parsed.

With a secret, each kept-alive connection is authenticated by its first
request, signed with HMAC-SHA256 over the target owner, the method, that
header, a timestamp and a nonce (the streamed body is not covered); the
endpoint refuses a bad signature, one made for another process, a timestamp
outside a 30 s window, or a nonce it has seen, and closes the connection.
Later requests on an authenticated connection carry no signature, as requests
on a TLS connection carry no client certificate: the hop pays for the HMAC
once per connection, not once per request.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import hmac
import http.client
import json
import secrets
import socket
import threading
import time
import typing as t
from collections.abc import Iterable, Iterator

from werkzeug.exceptions import RequestEntityTooLarge

from ..answers import Failure
from ..headers import is_hop_by_hop, is_hop_by_hop_key
from ..routing import validate_prefix

if t.TYPE_CHECKING:
    from email.message import Message

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "HOP_PATH",
    "MISS_HEADER",
    "Connection",
    "HopClient",
    "Verifier",
    "pack",
    "unpack",
]

HOP_PATH = "/wsgi-proxy-listen/hop"
#: Seconds a signed hop request stays valid.
WINDOW = 30.0
#: Bytes read or written at a time when a body streams through the hop.
CHUNK = 65536
ENVIRON_HEADER = "X-Wsgi-Proxy-Listen-Environ"
STAMP_HEADER = "X-Wsgi-Proxy-Listen-Stamp"
NONCE_HEADER = "X-Wsgi-Proxy-Listen-Nonce"
SIGNATURE_HEADER = "X-Wsgi-Proxy-Listen-Signature"
#: Marks the owner's answer "this process does not serve that session".
MISS_HEADER = "X-Wsgi-Proxy-Listen-Miss"
#: Pooled connections idle longer than this are dropped before the endpoint,
#: which closes them after a minute, can close them under a request.
IDLE = 30.0
#: Idle connections kept per owner.
MAX_IDLE = 16

# The environ keys forwarded besides the HTTP_* headers: everything the owner's
# dispatch reads (the streamed body comes as the hop's own body).
_FORWARDED = frozenset(
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
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "wsgi.url_scheme",
    }
)


def pack(environ: WSGIEnvironment, session: str, prefix: str) -> str:
    """The target session, the prefix it was found under and the forwarded environ,
    as one header value.

    JSON with ``ensure_ascii`` is printable ASCII whatever the strings hold (a
    decoded ``%0A`` in ``PATH_INFO`` becomes ``\\n``), so it is a valid header.
    Hop-by-hop request headers end at the receiving process.
    """
    forwarded = {
        key: value
        for key, value in environ.items()
        if (key in _FORWARDED or (key.startswith("HTTP_") and not is_hop_by_hop_key(key)))
        and isinstance(value, str)
    }
    return json.dumps([session, prefix, forwarded], separators=(",", ":"))


def unpack(value: str) -> tuple[str, str, dict[str, str]]:
    """The session, prefix and environ that :func:`pack` wrote.

    :raises ValueError: the value is not what :func:`pack` writes.
    """
    try:
        session, prefix, environ = json.loads(value)
    except TypeError:
        raise ValueError("not a forwarded environ") from None
    if not (isinstance(session, str) and isinstance(environ, dict)) or not (
        isinstance(prefix, str) and _valid_prefix(prefix)
    ):
        raise ValueError("not a forwarded environ")
    # The keys of a JSON object are strings: the values are what to check.
    if not all(type(value) is str for value in environ.values()):
        raise ValueError("not a forwarded environ")
    return session, prefix, environ


@functools.lru_cache(maxsize=16)
def _valid_prefix(prefix: str) -> bool:
    try:
        validate_prefix(prefix)
    except (TypeError, ValueError):
        return False
    return True


def _signature(secret: bytes, owner: str, method: str, meta: str, stamp: str, nonce: str) -> str:
    message = "\n".join((owner, method, HOP_PATH, meta, stamp, nonce))
    return hmac.new(secret, message.encode("latin-1"), hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, owner: str, method: str, meta: str) -> dict[str, str]:
    """The headers that sign a hop request to ``owner``."""
    stamp, nonce = f"{time.time():.3f}", secrets.token_hex(12)
    return {
        STAMP_HEADER: stamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: _signature(secret, owner, method, meta, stamp, nonce),
    }


class Verifier:
    """Checks the signature of hop requests made for ``owner``, refusing replays.

    A nonce is remembered for twice the window after it arrived (a request
    signed at the edge of the window may come back that late), then forgotten
    in arrival order: each check costs the same however many came before.
    """

    def __init__(self, secret: bytes, owner: str) -> None:
        self.secret = secret
        self.owner = owner
        self._nonces: set[str] = set()
        self._arrivals: collections.deque[tuple[float, str]] = collections.deque()
        self._lock = threading.Lock()

    def __call__(self, method: str, meta: str, headers: Message) -> bool:
        stamp = headers.get(STAMP_HEADER)
        nonce = headers.get(NONCE_HEADER)
        given = headers.get(SIGNATURE_HEADER)
        if stamp is None or nonce is None or given is None:
            return False
        try:
            sent = float(stamp)
        except ValueError:
            return False
        expected = _signature(self.secret, self.owner, method, meta, stamp, nonce)
        if not hmac.compare_digest(given.encode("latin-1"), expected.encode()):
            return False
        if abs(time.time() - sent) > WINDOW:
            return False
        arrived = time.monotonic()
        with self._lock:
            arrivals = self._arrivals
            while arrivals and arrived - arrivals[0][0] > 2 * WINDOW:
                self._nonces.discard(arrivals.popleft()[1])
            if nonce in self._nonces:
                return False
            self._nonces.add(nonce)
            arrivals.append((arrived, nonce))
        return True

    def remembered(self) -> int:
        """How many nonces are remembered now."""
        return len(self._nonces)


class Connection(http.client.HTTPConnection):
    """A hop connection over TCP (``host:port``) or a Unix socket (an absolute path),
    with a short connect timeout and a long read timeout."""

    def __init__(self, address: str, connect_timeout: float, read_timeout: float) -> None:
        self.unix_path = address if address.startswith("/") else None
        super().__init__("localhost" if self.unix_path else address, timeout=connect_timeout)
        self.read_timeout = read_timeout
        self.used = time.monotonic()
        self.authenticated = False  # its first request was signed

    def connect(self) -> None:
        if self.unix_path is None:
            super().connect()
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(self.unix_path)
            except BaseException:
                sock.close()
                raise
            self.sock = sock
        t.cast(socket.socket, self.sock).settimeout(self.read_timeout)


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

    :param secret: signs each request, or ``None`` (the embedded directory,
        where the folder's permissions keep others out).
    :param read_timeout: seconds to wait for the owner (then 504).
    """

    def __init__(
        self, secret: bytes | None, read_timeout: float, connect_timeout: float = 1.0
    ) -> None:
        self.secret = secret
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self._idle: dict[str, list[Connection]] = {}
        self._lock = threading.Lock()

    def _checkout(self, address: str) -> tuple[Connection, bool]:
        now = time.monotonic()
        with self._lock:
            idle = self._idle.get(address)
            while idle:
                connection = idle.pop()
                if now - connection.used < IDLE:
                    return connection, True
                connection.close()
        return Connection(address, self.connect_timeout, self.read_timeout), False

    def checkin(self, address: str, connection: Connection) -> None:
        """Put a connection whose answer was read to the end back in the pool."""
        connection.used = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(address, [])
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
        method: str = environ["REQUEST_METHOD"]
        meta = pack(environ, session, prefix)
        length = _body_length(environ)
        body = None if length == 0 else _Body(environ["wsgi.input"], length)
        # A pooled connection that the owner closed while it was idle fails on first use:
        # a request without a body goes once more, on a fresh connection.
        for attempt in range(2 if body is None else 1):
            connection, reused = self._checkout(address)
            if connection.sock is None:
                try:
                    connection.connect()
                except (ConnectionRefusedError, FileNotFoundError):
                    # Nobody listens at the address: the owner is gone.
                    connection.close()
                    return Failure.GONE
                except OSError:
                    # A timeout, or a full backlog (EAGAIN on a Unix socket): a paused or
                    # overwhelmed owner, which is no proof that it is gone.
                    connection.close()
                    return Failure.UNRESPONSIVE
            try:
                try:
                    # Only what the endpoint reads: each header line costs a parse there.
                    connection.putrequest(
                        method, HOP_PATH, skip_host=True, skip_accept_encoding=True
                    )
                    connection.putheader(ENVIRON_HEADER, meta)
                    if self.secret is not None and not connection.authenticated:
                        for name, value in signed_headers(self.secret, owner, method, meta).items():
                            connection.putheader(name, value)
                        connection.authenticated = True
                    if length is None:
                        connection.putheader("Transfer-Encoding", "chunked")
                    elif length:
                        connection.putheader("Content-Length", str(length))
                    connection.endheaders(
                        None if body is None else body.chunks(), encode_chunked=length is None
                    )
                except OSError:
                    if body is None or body.failure is not None:
                        raise
                    # The owner answered before it took the whole body (a 401, a 413) and
                    # closed its side: its answer may be waiting to be read.
                response = connection.getresponse()
            except Exception as error:
                connection.close()
                if body is not None and body.failure is not None:
                    return body.failure
                if isinstance(error, TimeoutError):
                    return Failure.TIMEOUT
                if reused and attempt == 0 and body is None:
                    continue
                if isinstance(error, (OSError, http.client.HTTPException)):
                    return Failure.BROKEN
                raise
            break
        else:
            return Failure.BROKEN
        if response.getheader(MISS_HEADER) is not None:
            response.read()
            response.close()
            if response.will_close:
                connection.close()
            else:
                self.checkin(address, connection)
            return Failure.MISS
        kept = [(name, value) for name, value in response.getheaders() if not is_hop_by_hop(name)]
        start_response(f"{response.status} {response.reason or 'Unknown'}", kept)
        return _Relay(self, address, connection, response)


class _Relay:
    """The owner's answer, streamed through as it arrives; the connection goes back to
    the pool only when the answer was read to the end."""

    def __init__(
        self,
        client: HopClient,
        address: str,
        connection: Connection,
        response: http.client.HTTPResponse,
    ) -> None:
        self.client = client
        self.address = address
        self.connection = connection
        self.response = response
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        response = self.response
        while chunk := response.read1(CHUNK):
            yield chunk
        if response.length:
            # read1() ends quietly when the connection closes before the declared length.
            raise http.client.IncompleteRead(b"", response.length)
        self.done = True

    def close(self) -> None:
        # http.client takes a new request on the connection only once this answer is
        # closed, which reading it to the end does not do.
        self.response.close()
        if self.done and not self.response.will_close:
            self.client.checkin(self.address, self.connection)
        else:
            self.connection.close()
