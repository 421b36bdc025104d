"""
The hop between workers
=======================

A worker that receives a request for a listener owned by another worker
forwards it over HTTP to the owner's *internal endpoint* and streams the answer
back. The forwarded request carries the original request's ``SCRIPT_NAME``,
``PATH_INFO``, raw URI, ``REMOTE_ADDR``, URL scheme and ``Host`` in a signed
header, so that the owner dispatches it exactly as the receiving worker would
have. Every hop request is signed with HMAC-SHA256 over the target worker's
owner id, the method, path, query, that header, a timestamp and a nonce (the
streamed body is not covered); the endpoint refuses (403) a bad signature, one
made for another worker, a timestamp outside a 30 s window, or a nonce it has
seen.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import typing as t
from collections.abc import Iterable, Iterator

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util import SKIP_HEADER

from ..answers import respond
from ..middleware import HOP_MARK, is_hop_by_hop

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .directory import Owner

logger = logging.getLogger("wsgi_proxy_listen")

HOP_PATH = "/wsgi-proxy-listen/hop"
WINDOW = 30.0
_CHUNK = 65536
# Forwarded from the original request: everything the owner's dispatch reads.
_ENVIRON_KEYS = (
    "SCRIPT_NAME",
    "PATH_INFO",
    # The query travels here, signed, rather than in the hop's URL, which urllib3
    # would re-quote.
    "QUERY_STRING",
    "REQUEST_URI",
    "RAW_URI",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "wsgi.url_scheme",
    "HTTP_HOST",
)
# Added by the owner's internal server (waitress), not by the listener.
_SERVER_HEADERS = frozenset({"server", "date", "via"})


def _signature(secret: bytes, owner: str, method: str, meta: str, stamp: str, nonce: str) -> str:
    """HMAC-SHA256 over the target owner, the method, the forwarded environ (path and
    query included), a timestamp and a nonce. The body is streamed and not covered."""
    message = "\n".join((owner, method, HOP_PATH, meta, stamp, nonce))
    return hmac.new(secret, message.encode("latin-1"), hashlib.sha256).hexdigest()


def _not_forwarded(name: str) -> bool:
    # Host travels in the signed environ; hop-by-hop headers end at each hop.
    return name.lower() == "host" or is_hop_by_hop(name)


class Forwarder:
    """Sends a request to its owner's internal endpoint over pooled connections."""

    def __init__(self, secret: bytes, read_timeout: float) -> None:
        self.secret = secret
        self.pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=16,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=1.0, read=read_timeout),
        )

    def forward(
        self,
        owner: Owner,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        owner_gone: t.Callable[[], None],
    ) -> Iterable[bytes]:
        """Forward the request of ``environ`` to ``owner``; 503 if it cannot be reached
        (after calling ``owner_gone``), 504 if it does not answer in time."""
        address = owner.address
        method: str = environ["REQUEST_METHOD"]
        meta = base64.b64encode(
            json.dumps({key: environ[key] for key in _ENVIRON_KEYS if key in environ}).encode()
        ).decode()
        stamp, nonce = f"{time.time():.3f}", secrets.token_hex(16)
        # SKIP_HEADER: urllib3 and http.client add no User-Agent or Accept-Encoding
        # that the client did not send.
        headers = {"User-Agent": SKIP_HEADER, "Accept-Encoding": SKIP_HEADER}
        headers.update(
            (_header_name(key), value)
            for key, value in environ.items()
            if key.startswith("HTTP_") and not _not_forwarded(_header_name(key))
        )
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers["X-Wsgi-Proxy-Listen-Environ"] = meta
        headers["X-Wsgi-Proxy-Listen-Stamp"] = stamp
        headers["X-Wsgi-Proxy-Listen-Nonce"] = nonce
        headers["X-Wsgi-Proxy-Listen-Signature"] = _signature(
            self.secret, owner.owner, method, meta, stamp, nonce
        )
        length = _content_length(environ)
        if length is not None:
            headers["Content-Length"] = str(length)
        body = _Body(environ["wsgi.input"], length)
        url = f"http://{address}{HOP_PATH}"
        # A pooled connection the owner closed while idle fails on its first use; a
        # request without a body can go again on a fresh one.
        attempts = 2 if length == 0 else 1
        while True:
            attempts -= 1
            try:
                response = self.pool.urlopen(
                    method,
                    url,
                    body=body.chunks() if length != 0 else b"",
                    headers=headers,
                    chunked=length is None,
                    preload_content=False,
                    redirect=False,
                    assert_same_host=False,
                )
                break
            except (NewConnectionError, ConnectTimeoutError, ConnectionRefusedError):
                owner_gone()
                return respond(start_response, 503)
            except ReadTimeoutError:
                logger.warning("the owner at %s did not answer in time", address)
                return respond(start_response, 504)
            except (ProtocolError, OSError) as error:
                if body.failed:
                    # The client went away while sending its body: not the owner's fault.
                    return respond(start_response, 400)
                if _timed_out(error):
                    logger.warning("the owner at %s did not take the body in time", address)
                    return respond(start_response, 504)
                if attempts:
                    continue
                # The owner closed the connection without an answer: it is going away.
                owner_gone()
                return respond(start_response, 503)
            except Exception:
                if body.failed:  # werkzeug's ClientDisconnected, for one
                    return respond(start_response, 400)
                raise
        kept = [
            (name, value)
            for name, value in response.headers.items()
            if not _not_forwarded(name) and name.lower() not in _SERVER_HEADERS
        ]
        start_response(f"{response.status} {response.reason or 'Unknown'}", kept)
        return _Relay(response)


def _header_name(key: str) -> str:
    return key[5:].replace("_", "-").title()


def _content_length(environ: WSGIEnvironment) -> int | None:
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or "0"))
    except ValueError:
        return 0


class _Body:
    """The request body read from ``wsgi.input`` in chunks, remembering whether reading
    it failed (the client went away), which is no fault of the owner."""

    def __init__(self, stream: t.IO[bytes], length: int | None) -> None:
        self.stream = stream
        self.length = length
        self.failed = False

    def chunks(self) -> Iterator[bytes]:
        remaining = self.length
        while remaining is None or remaining > 0:
            try:
                chunk = self.stream.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
            except Exception:
                self.failed = True
                raise
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def _timed_out(error: BaseException) -> bool:
    """Whether a failed send was the owner not reading in time (urllib3 wraps it)."""
    return any(isinstance(cause, TimeoutError) for cause in (error, *error.args))


class _Relay:
    """The owner's answer, streamed through; the connection goes back to the pool
    only when it was read to the end."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self.response = response
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.response.stream(_CHUNK, decode_content=False)
        self.done = True

    def close(self) -> None:
        if self.done:
            self.response.release_conn()
        else:
            self.response.close()


class InternalEndpoint:
    """The WSGI app of the internal endpoint: verifies, rebuilds the environ, dispatches."""

    def __init__(
        self, secret: bytes, owner: str, dispatch: t.Callable[[], WSGIApplication | None]
    ) -> None:
        self.secret = secret
        self.owner = owner
        self.dispatch = dispatch
        self._nonces: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != HOP_PATH or not self._verified(environ):
            logger.warning("refused an unsigned or replayed request to the internal endpoint")
            return respond(start_response, 403)
        meta = json.loads(base64.b64decode(environ["HTTP_X_WSGI_PROXY_LISTEN_ENVIRON"]))
        inner = {
            key: value
            for key, value in environ.items()
            if not key.startswith("HTTP_X_WSGI_PROXY_LISTEN_")
        }
        for key in ("REQUEST_URI", "RAW_URI", "HTTP_HOST", "REMOTE_PORT"):
            inner.pop(key, None)  # the internal request's own values, not the client's
        inner.update(meta)
        inner[HOP_MARK] = True
        app = self.dispatch()
        if app is None:
            return respond(start_response, 503)
        return app(inner, start_response)

    def _verified(self, environ: WSGIEnvironment) -> bool:
        try:
            meta = environ["HTTP_X_WSGI_PROXY_LISTEN_ENVIRON"]
            stamp = environ["HTTP_X_WSGI_PROXY_LISTEN_STAMP"]
            nonce = environ["HTTP_X_WSGI_PROXY_LISTEN_NONCE"]
            given = environ["HTTP_X_WSGI_PROXY_LISTEN_SIGNATURE"]
            sent = float(stamp)
        except (KeyError, ValueError):
            return False
        expected = _signature(
            self.secret, self.owner, environ["REQUEST_METHOD"], meta, stamp, nonce
        )
        now = time.time()
        if not hmac.compare_digest(given.encode("latin-1"), expected.encode()):
            return False
        if abs(now - sent) > WINDOW:
            return False
        with self._lock:
            if nonce in self._nonces:
                return False
            if len(self._nonces) > 10_000:
                self._nonces = {n: s for n, s in self._nonces.items() if now - s <= WINDOW}
            self._nonces[nonce] = sent
        return True
