"""
Answers
=======

The short plain-text answers that the middleware gives itself: 400 for a
malformed path, 404 where no listener answers, 302 (to the host's login), 401
and 403 for a caller that may not reach a listener (:mod:`.access`), 413 for a
body too large, 500 for a listener that failed, 503 while a listener is not
available, 504 for one that did not answer in time. Each is ``text/plain; charset=utf-8`` with
``X-Content-Type-Options: nosniff`` and a ``Content-Length``, and its body
never echoes the path, an id or a registered name, so nothing a stranger sends
is reflected back.

:data:`FAILURE_STATUS` is the one table from why a forwarded request got no
answer of its listener's (:class:`Failure`) to the status it gets instead.
:func:`close` ends a listener's answer as a server would.
"""

from __future__ import annotations

import enum
import typing as t
from http import HTTPStatus

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "BAD_REQUEST",
    "FAILURE_STATUS",
    "NOT_FOUND",
    "UNAVAILABLE",
    "Answer",
    "Failure",
    "answer_app",
    "close",
    "respond",
]

_MESSAGES = {
    302: "Go on at the address in the Location header.",
    401: "Authentication is required.",
    403: "This request is not allowed.",
    400: "This address is not valid for a listener.",
    404: "No listener answers at this address.",
    413: "The request body is too large.",
    500: "The listener failed to answer.",
    502: "The process of the listener could not be reached.",
    503: "The listener is not available yet. Try again later.",
    504: "The listener did not answer in time.",
}


def _answer(status: int) -> tuple[str, list[tuple[str, str]], bytes]:
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}: {_MESSAGES[status]}\n".encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("X-Content-Type-Options", "nosniff"),
    ]
    if status == 503:
        # Every 503 of the middleware is passing (a start, a limit, an outage).
        headers.append(("Retry-After", "1"))
    return f"{status} {phrase}", headers, body


_ANSWERS = {status: _answer(status) for status in _MESSAGES}
# Nothing to say, nothing to sniff: a favicon a listener origin does not have.
_ANSWERS[204] = ("204 No Content", [], b"")


class Answer(t.NamedTuple):
    """A lookup's outcome when no listener serves the request: the status to answer."""

    status: int


NOT_FOUND = Answer(404)
BAD_REQUEST = Answer(400)
UNAVAILABLE = Answer(503)


class Failure(enum.Enum):
    """Why a request forwarded to the process that owns its listener got no answer of
    the listener's."""

    MISS = "the owner does not serve the session"
    GONE = "the owner's endpoint refused the connection"
    UNRESPONSIVE = "the owner did not accept the connection in time, or cannot be reached"
    BROKEN = "the owner closed the connection without an answer"
    TIMEOUT = "the owner did not answer in time"
    ABORTED = "the client went away while sending its body"
    TOO_LARGE = "the body was longer than max_content_length"


#: The status each :class:`Failure` is answered with: the owner's process gone or
#: unreachable, 502; no answer within the read timeout, 504. A miss is a 404 unless
#: the directory finds the session elsewhere, or the app's generic path another
#: member; on that path, a GET or HEAD whose member's process cannot be reached goes
#: once to another live member on the same terms instead of the 502.
#: (503, with ``Retry-After``, is for what passes: a start, a limit, the directory down.)
FAILURE_STATUS: dict[Failure, int] = {
    Failure.MISS: 404,
    Failure.GONE: 502,
    Failure.UNRESPONSIVE: 502,
    Failure.BROKEN: 502,
    Failure.TIMEOUT: 504,
    Failure.ABORTED: 400,
    Failure.TOO_LARGE: 413,
}


def close(iterable: object) -> None:
    """Call the ``close()`` of an answer's iterable, if it has one (PEP 3333: a server
    does, whether the answer ended or not)."""
    close = getattr(iterable, "close", None)
    if close is not None:
        close()


def respond(
    start_response: StartResponse,
    status: int,
    exc_info: OptExcInfo | None = None,
    *,
    extra: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    """The plain answer for ``status``, with ``extra`` headers (a challenge, a
    ``Location``)."""
    status_line, headers, body = _ANSWERS[status]
    if exc_info is None:
        start_response(status_line, [*headers, *extra])
    else:
        start_response(status_line, [*headers, *extra], exc_info)
    return [body]


def answer_app(status: int) -> t.Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
    """A WSGI app that gives the plain answer for ``status``."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return respond(start_response, status)

    return app
