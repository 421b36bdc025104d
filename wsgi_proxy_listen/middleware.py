"""
Proxy Middleware
================

:class:`ProxyMiddleware` wraps a host's WSGI app once. Requests whose path
starts with ``{prefix}/sessions/`` or ``{prefix}/apps/`` go to the listener
registered for them; every other request goes to the host app untouched.

.. code-block:: python

    from flask import Flask
    from wsgi_proxy_listen import ProxyMiddleware

    app = Flask(__name__)
    app.wsgi_app = ProxyMiddleware(app.wsgi_app)

The listener gets a copy of the environ whose ``SCRIPT_NAME`` ends with the
routing part of the path and whose ``PATH_INFO`` is the rest, both raw slices
of the original. What the listener sends is checked before it reaches the
server: an invalid status line or header becomes a plain 500, hop-by-hop
headers are dropped. The middleware's own answers are short plain-text bodies
that never echo the path, an id or a registered name.
"""

from __future__ import annotations

import logging
import os
import re
import time
import typing as t

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream, get_content_length

from . import routing
from .answers import respond
from .exceptions import InvalidResponse
from .registry import Listener, Registry, default_registry

if t.TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ProxyMiddleware"]

logger = logging.getLogger("wsgi_proxy_listen")

_STATUS = re.compile(r"[2-5][0-9][0-9] [\x20-\x7e\x80-\xff]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)


class _BodyLimit(LimitedStream):
    """A body without a declared length, cut off past ``maximum`` bytes.

    werkzeug's ``LimitedStream(is_max=True)`` stops quietly at the limit on
    ``read()``, so a body one byte too long would arrive truncated. Reading
    one byte beyond tells a body of exactly ``maximum`` bytes from a longer one.
    """

    def __init__(self, stream: t.IO[bytes], maximum: int) -> None:
        super().__init__(stream, maximum + 1, is_max=True)

    def readinto(self, buffer: bytearray) -> int | None:  # type: ignore[override]
        count = super().readinto(buffer)
        if self.is_exhausted:
            raise RequestEntityTooLarge()
        return count


class ProxyMiddleware:
    """Dispatch requests under the registry's prefix to listeners.

    :param app: the host's WSGI app, which gets every other request.
    :param registry: where listeners are looked up; ``None`` means
        :data:`~wsgi_proxy_listen.default_registry`. The prefix comes from it.
    :param max_content_length: the largest request body, in bytes, that a
        listener may receive: a larger declared ``Content-Length`` gets 413
        before the listener runs, and a body without one (chunked) raises
        :exc:`~werkzeug.exceptions.RequestEntityTooLarge` when read past it,
        which becomes 413. With a limit, a listener's ``wsgi.input`` also
        ends at the declared ``Content-Length``.
    :param forward_cookies: when false, the host's ``Cookie`` header is
        removed from the environ a listener sees.
    """

    def __init__(
        self,
        app: WSGIApplication,
        registry: Registry | None = None,
        *,
        max_content_length: int | None = None,
        forward_cookies: bool = True,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI application, not {app!r}")
        if registry is None:
            registry = default_registry
        elif not isinstance(registry, Registry):
            raise TypeError(f"registry must be a Registry or None, not {registry!r}")
        if max_content_length is not None and (
            isinstance(max_content_length, bool)
            or not isinstance(max_content_length, int)
            or max_content_length < 0
        ):
            raise ValueError(
                f"invalid max_content_length {max_content_length!r}:"
                " use a number of bytes (an int >= 0) or None for no limit"
            )
        if not isinstance(forward_cookies, bool):
            raise TypeError(f"forward_cookies must be True or False, not {forward_cookies!r}")
        self.app = app
        self.registry = registry
        self.max_content_length = max_content_length
        self.forward_cookies = forward_cookies
        self._prefix = prefix = registry._use()
        self._owned = (prefix + "/sessions/", prefix + "/apps/")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith(self._owned):
            return self.app(environ, start_response)
        return self._proxy(environ, start_response, path)

    def _proxy(
        self, environ: WSGIEnvironment, start_response: StartResponse, path: str
    ) -> Iterable[bytes]:
        raw_uri: str | None = environ.get("REQUEST_URI") or environ.get("RAW_URI")
        raw_path = routing.raw_uri_path(raw_uri) if raw_uri else None
        if routing.has_dot_segment(path) or (
            raw_path is not None and routing.has_encoded_dot_segment(raw_path)
        ):
            return respond(start_response, 400)
        route = routing.parse(path, self._prefix)
        if route is None:
            return respond(start_response, 404)
        script_name: str = environ.get("SCRIPT_NAME", "")
        if raw_path is not None and not routing.raw_path_spells(
            raw_path, script_name, path[: route.split]
        ):
            return respond(start_response, 404)
        listener = self._find(route)
        if not isinstance(listener, Listener):
            if listener == 404 and environ.get("wsgi.multiprocess"):
                _warn_once_per_process()
            return respond(start_response, listener)
        limit = self.max_content_length
        declared = get_content_length(environ) if limit is not None else None
        if declared is not None and declared > t.cast(int, limit):
            return respond(start_response, 413)

        inner = environ.copy()
        inner["SCRIPT_NAME"] = script_name + path[: route.split]
        inner["PATH_INFO"] = path[route.split :]
        if not self.forward_cookies:
            inner.pop("HTTP_COOKIE", None)
        if limit is not None:
            # With a limit, the body is bounded whatever the listener does: by the
            # declared length (what follows on the connection is the next request),
            # or, without one, by the limit itself.
            stream = inner["wsgi.input"]
            if declared is None:
                inner["wsgi.input"] = _BodyLimit(stream, limit)
            else:
                inner["wsgi.input"] = LimitedStream(stream, declared)
        listener.last_request = time.monotonic()
        return _call(listener, inner, start_response)

    def _find(self, route: routing.Route) -> Listener | int:
        registry = self.registry
        if route.kind != routing.APP:
            listener = registry.get(t.cast(str, route.session))
            if listener is None or (route.app is not None and listener.app != route.app):
                return 404
            return listener
        slug = t.cast(str, route.app)
        declaration = registry.get_app(slug)
        if declaration is not None and declaration.multi_session:
            return 400
        listener = registry.current_listener(slug)
        if listener is not None:
            return listener
        if declaration is None or declaration.start is None:
            return 404
        return registry.start_app(slug) or 503

    def __repr__(self) -> str:
        return f"<ProxyMiddleware app={self.app!r} registry={self.registry!r}>"


_warned_in: int | None = None


def _warn_once_per_process() -> None:
    global _warned_in
    pid = os.getpid()
    if _warned_in == pid:
        return
    _warned_in = pid
    logger.warning(
        "a request under the proxy prefix found no listener in worker process %d."
        " The server runs several worker processes, and listeners registered at run time"
        " live only in the process that registered them. Register listeners at start-up"
        " in every worker (an app factory, or gunicorn's post_fork hook), or route each"
        " session to one worker. This warning is logged once per process.",
        pid,
    )


class _Guard:
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
            valid = _STATUS.fullmatch(status) is not None
            kept = []
            for name, value in headers:
                if _HEADER_NAME.fullmatch(name) is None or _HEADER_VALUE.fullmatch(value) is None:
                    valid = False
                    break
                lowered = name.lower()
                if lowered not in _HOP_BY_HOP and not lowered.startswith("proxy-"):
                    kept.append((name, value))
        except (TypeError, ValueError):
            valid = False
        if not valid:
            self.invalid = True
            raise InvalidResponse("the listener sent an invalid status line or header")
        self.started = True
        if exc_info is None:
            return self.start_response(status, kept)
        return self.start_response(status, kept, exc_info)


def _call(
    listener: Listener, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    guard = _Guard(start_response)
    try:
        iterable = listener.wsgi_app(environ, guard)
    except Exception as error:  # noqa: BLE001 - any failure of a listener becomes a 500
        return _failed(listener, guard, start_response, None, error)
    if guard.invalid or iterable is None:
        return _failed(listener, guard, start_response, iterable, None)
    return iterable


def _failed(
    listener: Listener,
    guard: _Guard,
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
        logger.error("listener of session %r raised", listener.session, exc_info=error)
    elif iterable is None:
        logger.error("listener of session %r returned None, not an iterable", listener.session)
    else:
        logger.error(
            "listener of session %r sent an invalid status line or header", listener.session
        )
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
