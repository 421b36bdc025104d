"""
One exchange on a hop connection
================================

A forwarded request and its answer, on a connection that the internal
endpoint (:mod:`.endpoint`) authenticated, in the frames of :mod:`.frames`:

- **One request at a time**, dispatched in the connection's own thread: the
  request's body is read from its ``DATA`` frames as the listener reads
  ``wsgi.input``, and the answer is written as the listener produces it: a
  stream reaches the host chunk by chunk; a list body leaves at its end, in
  one ``WHOLE`` frame where it is small (status, headers and body), else with
  its head and its end in one write.
- **Exact framing.** An answer is ``RESPONSE``, ``DATA``..., ``END`` (or one
  ``WHOLE``); a listener that sends more than its ``Content-Length`` is cut
  there, one that sends less, or fails after its answer began, ends with
  ``ABORT``, which the host passes on as a cut answer. A listener that answers
  before reading its whole body: the rest is read and dropped, so the
  connection serves the next request.
- A forwarded request for a session this process does not serve (any more)
  is answered ``MISS``, so that the sender can look again.
"""

from __future__ import annotations

import io
import logging
import sys
import typing as t

from werkzeug.exceptions import ClientDisconnected

from ..answers import close, respond
from .frames import (
    ABORT,
    CHUNK,
    DATA,
    END,
    MISS,
    REQUEST,
    RESPONSE,
    WHOLE,
    Channel,
    FrameError,
    encode_fields,
    encode_whole,
)
from .hop import unpack

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIEnvironment

    from ..seam import ServeForwarded

__all__ = ["Exchange", "HostGone"]

logger = logging.getLogger("wsgi_proxy_listen")

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


class HostGone(Exception):
    """Writing to the host failed: it went away (its client did, or it closed)."""


class Exchange:
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
            close(iterable)

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
        except HostGone:
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
            raise HostGone() from error
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
