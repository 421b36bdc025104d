"""
Guard
=====

What a listener sends is checked before the server sees it (PEP 3333): the
``start_response`` a listener gets is a :class:`Guard`, and :func:`failed`
answers for a listener that raised, returned nothing or sent an invalid
status line or header.
"""

from __future__ import annotations

import logging
import re
import typing as t

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from .answers import respond
from .exceptions import InvalidResponse
from .headers import is_hop_by_hop

if t.TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse

__all__ = ["Guard", "failed"]

logger = logging.getLogger("wsgi_proxy_listen")

# Latin-1 without control characters: C0, DEL and C1 (\x80-\x9f) are refused.
_STATUS = re.compile(r"[2-5][0-9][0-9] [\x20-\x7e\xa0-\xff]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")

# Status lines and (name, value) pairs already found valid (hop-by-hop ones never
# enter), so that a usual response costs one set read for its status and one
# issuperset() for its headers. Emptied when full, so a listener that invents
# values cannot grow them without bound.
_VALID_STATUSES: set[str] = set()
_VALID_HEADERS: set[tuple[str, str]] = set()
_CACHE_SIZE = 4096


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


def _check_headers(headers: object) -> bool | None:
    """Whether valid headers include hop-by-hop ones; None if any header is invalid."""
    hop_by_hop = False
    for header in t.cast("list[tuple[str, str]]", headers):
        if header in _VALID_HEADERS:
            continue
        name, value = header
        if not (isinstance(name, str) and isinstance(value, str)):
            return None
        if _HEADER_NAME.fullmatch(name) is None or _HEADER_VALUE.fullmatch(value) is None:
            return None
        if is_hop_by_hop(name):
            hop_by_hop = True
        else:
            _remember(_VALID_HEADERS, header)
    return hop_by_hop


class Guard:
    """The ``start_response`` a listener gets: checks, filters, then forwards."""

    __slots__ = ("invalid", "start_response", "started")

    def __init__(self, start_response: StartResponse) -> None:
        self.start_response = start_response
        self.started = False
        self.invalid = False

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> t.Callable[[bytes], object]:
        if self.started and exc_info is None:
            self.invalid = True
            raise InvalidResponse(
                "start_response was called a second time without exc_info (PEP 3333)"
            )
        try:
            known = status in _VALID_STATUSES and _VALID_HEADERS.issuperset(headers)
            if not known:
                hop_by_hop = _check_headers(headers) if _check_status(status) else None
                if hop_by_hop is None:
                    self.invalid = True
                elif hop_by_hop:
                    headers = [header for header in headers if not is_hop_by_hop(header[0])]
        except (TypeError, ValueError):
            self.invalid = True
        if self.invalid:
            raise InvalidResponse("the listener sent an invalid status line or header")
        self.started = True
        if exc_info is None:
            return self.start_response(status, headers)
        return self.start_response(status, headers, exc_info)


def failed(
    session: str,
    guard: Guard,
    start_response: StartResponse,
    iterable: Iterable[bytes] | None,
    error: Exception | None,
) -> list[bytes]:
    """Answer for a listener that raised, returned nothing, or sent a bad response."""
    status = 500
    if isinstance(error, RequestEntityTooLarge):
        status = 413
    elif isinstance(error, ClientDisconnected):
        status = 400
    elif error is not None:
        logger.error("listener of session %r raised", session, exc_info=error)
    elif iterable is None:
        logger.error("listener of session %r returned None, not an iterable", session)
    else:
        logger.error("listener of session %r sent an invalid status line or header", session)
    close = getattr(iterable, "close", None)
    if close is not None:
        close()
    if not guard.started:
        return respond(start_response, status)
    # The server may have the listener's headers already: PEP 3333 says to
    # pass exc_info so that ours replace them, or the server raises if they
    # were sent.
    if error is None:
        try:
            raise InvalidResponse("the listener's response was replaced by a 500")
        except InvalidResponse as replaced:
            error = replaced
    return respond(
        start_response, status, (type(error), error, t.cast("TracebackType", error.__traceback__))
    )
