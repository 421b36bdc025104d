"""
Guard
=====

What a listener sends is checked before the server sees it (PEP 3333). The
``start_response`` a listener gets is a :class:`Guard`: it checks the status
line and headers and holds them back, so that the server sees them only once
the listener has returned without error, or starts its body. A listener that
fails after calling ``start_response`` then gets a clean 500, never one merged
with its own headers, and :func:`failed` closes whatever it returned.

What reaches the server: a copy of the listener's headers (a listener that
changes its list afterwards changes nothing), without hop-by-hop headers and
without the headers that its ``Connection`` header names, with at most one
``Content-Length``, a non-negative integer, and with every ``Set-Cookie``
confined to the listener's path (:mod:`.cookies`).
"""

from __future__ import annotations

import logging
import re
import typing as t

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from . import metrics
from .answers import close, respond
from .cookies import MAX_PER_ANSWER, confine
from .events import say
from .exceptions import InvalidResponse
from .headers import is_hop_by_hop, is_origin_wide
from .routing import url_path

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse

__all__ = ["Guard", "failed"]

logger = logging.getLogger("wsgi_proxy_listen")

# Latin-1 without control characters: C0, DEL and C1 (\x80-\x9f) are refused.
_STATUS = re.compile(r"[2-5][0-9][0-9] [\x20-\x7e\xa0-\xff]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")
_LENGTH = re.compile(r"[0-9]+")

# Status lines and (name, value) pairs already found valid (hop-by-hop headers and
# Set-Cookie, whose values are per user, never enter), so that a usual response
# costs one set read for its status and one issuperset() for its headers. Emptied
# when full, so a listener that invents values cannot grow them without bound.
_VALID_STATUSES: set[str] = set()
_VALID_HEADERS: set[tuple[str, str]] = set()
# Whole header lists sent as they were given (nothing dropped, confined or refused),
# so that a listener that answers alike each time costs one set read for them all.
_VALID_LISTS: set[tuple[tuple[str, str], ...]] = set()
_CACHE_SIZE = 4096
# A body returned whole instead of as an iterable of bytes.
_BARE = (str, bytes, bytearray, memoryview)


def _remember(cache: set[t.Any], item: object) -> None:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    if _CACHE_SIZE:
        cache.add(item)


def _check_status(status: object) -> bool:
    if not isinstance(status, str) or _STATUS.fullmatch(status) is None:
        return False
    _remember(_VALID_STATUSES, status)
    return True


def _check_headers(
    headers: list[tuple[str, str]], script_name: str
) -> list[tuple[str, str]] | None:
    """The headers to send, or ``None`` when one is invalid."""
    named: set[str] = set()
    lengths = 0
    cookies = False
    kept: list[tuple[str, str]] = []
    for header in headers:
        name, value = header
        if not (isinstance(name, str) and isinstance(value, str)):
            return None
        if header not in _VALID_HEADERS and (
            _HEADER_NAME.fullmatch(name) is None or _HEADER_VALUE.fullmatch(value) is None
        ):
            return None
        lowered = name.lower()
        if lowered == "content-length":
            lengths += 1
            if _LENGTH.fullmatch(value.strip()) is None:
                return None
        elif lowered == "connection":
            named.update(token.strip().lower() for token in value.split(","))
        if is_hop_by_hop(name):
            continue
        if is_origin_wide(name):
            logger.warning("dropped a %s header of a listener: it acts on the whole origin", name)
            continue
        if lowered == "set-cookie":
            cookies = True  # per user: never cached
        else:
            _remember(_VALID_HEADERS, header)
        kept.append(header)
    if lengths > 1:
        return None  # two lengths, even equal ones, frame a response two ways
    if named:
        kept = [header for header in kept if header[0].lower() not in named]
    if cookies:
        kept = _confine_cookies(kept, script_name)
    return kept


def _confine_cookies(headers: list[tuple[str, str]], script_name: str) -> list[tuple[str, str]]:
    path = url_path(script_name)
    confined = []
    cookies = 0
    for name, value in headers:
        if name.lower() == "set-cookie":
            cookies += 1
            if cookies > MAX_PER_ANSWER:
                if cookies == MAX_PER_ANSWER + 1:
                    logger.warning(
                        "dropped the cookies of a listener beyond %d in one answer: they"
                        " would evict the host's from the browser",
                        MAX_PER_ANSWER,
                    )
                continue
            rewritten = confine(value, path)
            if rewritten is None:
                logger.warning(
                    "dropped a __Host- cookie of a listener (it would belong to the whole"
                    " origin) or one named as the login cookie of listener origins"
                )
                continue
            value = rewritten
        confined.append((name, value))
    return confined


def _refuse(data: bytes) -> object:
    raise InvalidResponse("the listener sent an invalid status line or header")


class Guard:
    """The ``start_response`` a listener gets: checks, holds, then forwards.

    :param script_name: the listener's ``SCRIPT_NAME``, taken before the listener runs
        (it may change its environ): its cookies reach that path only.
    :param extra: headers added to the listener's, once checked (the sandbox's policy).
    """

    __slots__ = (
        "count",
        "extra",
        "held",
        "invalid",
        "released",
        "script_name",
        "sent",
        "server_write",
        "start_response",
    )

    def __init__(
        self,
        start_response: StartResponse,
        script_name: str,
        extra: tuple[tuple[str, str], ...] = (),
        count: str | None = None,
    ) -> None:
        self.start_response = start_response
        self.script_name = script_name
        self.extra = extra
        self.count = count  # the route kind to count the status under, if metrics count
        self.held: tuple[str, list[tuple[str, str]], OptExcInfo | None] | None = None
        self.invalid = False
        self.released = False
        self.sent = False  # the server's start_response took a status of the listener's
        self.server_write: Callable[[bytes], object] | None = None

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> Callable[[bytes], object]:
        if self.held is not None and exc_info is None:
            self.invalid = True
            raise InvalidResponse(
                "start_response was called a second time without exc_info (PEP 3333)"
            )
        checked: list[tuple[str, str]] | None
        try:
            # A copy: an iterator is read once, and the listener's list stays its own.
            checked = list(headers)
            if status not in _VALID_STATUSES or tuple(checked) not in _VALID_LISTS:
                checked = self._check(status, checked)
        except (TypeError, ValueError):
            checked = None
        if checked is None:
            self.invalid = True
            if self.released:
                # Called from inside the iterable the server is iterating: raise there.
                raise InvalidResponse("the listener sent an invalid status line or header")
            return _refuse
        if self.extra:
            checked.extend(self.extra)
        self.held = (status, checked, exc_info)
        if self.released:
            self.server_write = None
            self.release()
        return self.write

    def _check(self, status: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
        if not _check_status(status):
            return None
        checked = _check_headers(headers, self.script_name)
        # Sent as given: the next identical list needs no check. Not with a cookie, whose
        # confinement depends on the listener's path.
        if checked == headers and not any(name.lower() == "set-cookie" for name, _ in headers):
            _remember(_VALID_LISTS, tuple(headers))
        return checked

    def accept(self, iterable: Iterable[bytes] | None) -> bool:
        """The listener returned ``iterable``: release the held status and headers, and
        say so; or say that the answer cannot be sent (invalid status or headers, no
        iterable, a list or tuple body with text in it, or a bare ``str`` or ``bytes``,
        whose items are characters or ints: each would reach the server mid-answer),
        for :func:`failed` to answer instead."""
        if self.invalid or iterable is None:
            return False
        kind = type(iterable)
        if kind is list or kind is tuple:
            for chunk in iterable:
                if type(chunk) is not bytes:
                    return False
        elif isinstance(iterable, _BARE):
            return False
        self.released = True
        held = self.held
        if held is not None and self.server_write is None:
            if self.count is not None:
                metrics.count(self.count, "here", held[0])
            self.server_write = (
                self.start_response(held[0], held[1])
                if held[2] is None
                else self.start_response(*held)
            )
            self.sent = True
        return True

    def release(self) -> None:
        """The server gets the held status and headers (or gets them when the listener
        calls ``start_response`` from its iterable)."""
        self.released = True
        held = self.held
        if held is not None and self.server_write is None:
            status, headers, exc_info = held
            if self.count is not None and not self.sent:
                metrics.count(self.count, "here", status)
            if exc_info is None:
                self.server_write = self.start_response(status, headers)
            else:
                self.server_write = self.start_response(status, headers, exc_info)
            self.sent = True

    def write(self, data: bytes) -> object:
        """The ``write`` callable of PEP 3333: it starts the body, so it releases."""
        if self.invalid:
            raise InvalidResponse("the listener sent an invalid status line or header")
        if self.server_write is None:
            self.release()
        return t.cast("Callable[[bytes], object]", self.server_write)(data)


def failed(
    session: str,
    guard: Guard,
    start_response: StartResponse,
    iterable: Iterable[bytes] | None,
    error: Exception | None,
) -> list[bytes]:
    """Answer for a listener that raised, returned nothing, or sent a bad response;
    close what it returned."""
    status = 500
    if isinstance(error, RequestEntityTooLarge):
        status = 413
    elif isinstance(error, ClientDisconnected):
        status = 400
        say("client_gone", "the client of session %r went away", session, session=session)
    elif error is not None:
        logger.error("listener of session %r raised", session, exc_info=error)
    elif iterable is None:
        logger.error("listener of session %r returned None, not an iterable", session)
    elif guard.invalid:
        logger.error("listener of session %r sent an invalid status line or header", session)
    elif isinstance(iterable, _BARE):
        logger.error(
            "listener of session %r returned a bare %s, not an iterable of bytes: return"
            " [body] instead",
            session,
            type(iterable).__name__,
        )
    else:
        logger.error("listener of session %r returned text, not bytes, in its body", session)
    close(iterable)
    if not guard.sent:
        # The server never saw a status of the listener's: ours is the first.
        if guard.count is not None:
            metrics.count(guard.count, "here", str(status))
        return respond(start_response, status)
    # The listener started its body (write()): PEP 3333 says to pass exc_info so that
    # ours replaces what is unsent, or the server raises if it was sent.
    if error is None:
        try:
            raise InvalidResponse("the listener's response was replaced by a 500")
        except InvalidResponse as replaced:
            error = replaced
    return respond(
        start_response, status, (type(error), error, t.cast("TracebackType", error.__traceback__))
    )
