"""
Answers
=======

The short plain-text answers that the middleware gives itself (SPEC §3).
They never echo the path, an id or a registered name, so nothing a stranger
sends is reflected back.
"""

from __future__ import annotations

import typing as t
from http import HTTPStatus

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "BAD_REQUEST",
    "NOT_FOUND",
    "UNAVAILABLE",
    "Answer",
    "answer_app",
    "respond",
]

_MESSAGES = {
    401: "Authentication is required.",
    403: "This request is not allowed.",
    400: "This address is not valid for a listener.",
    404: "No listener answers at this address.",
    413: "The request body is too large.",
    500: "The listener failed to answer.",
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
    if status == 401:
        headers.append(("WWW-Authenticate", "Bearer"))
    elif status == 503:
        # Every 503 of the middleware is passing (a start, a limit, an outage).
        headers.append(("Retry-After", "1"))
    return f"{status} {phrase}", headers, body


_ANSWERS = {status: _answer(status) for status in _MESSAGES}


class Answer(t.NamedTuple):
    """A lookup's outcome when no listener serves the request: the status to answer."""

    status: int


NOT_FOUND = Answer(404)
BAD_REQUEST = Answer(400)
UNAVAILABLE = Answer(503)


def respond(
    start_response: StartResponse, status: int, exc_info: OptExcInfo | None = None
) -> list[bytes]:
    status_line, headers, body = _ANSWERS[status]
    if exc_info is None:
        start_response(status_line, list(headers))
    else:
        start_response(status_line, list(headers), exc_info)
    return [body]


def answer_app(status: int) -> t.Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
    """A WSGI app that gives the plain answer for ``status``."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return respond(start_response, status)

    return app
