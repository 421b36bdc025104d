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
import typing as t
from time import monotonic, sleep

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream, get_content_length

from . import routing
from .answers import respond
from .exceptions import InvalidResponse
from .registry import App, Directory, Listener, Registry, default_registry

if t.TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ProxyMiddleware"]

logger = logging.getLogger("wsgi_proxy_listen")

#: Marks an environ that came over the hop between workers (CLUSTER.md): a miss
#: there is a 404, never another hop.
HOP_MARK = "wsgi_proxy_listen.hop"

# Latin-1 without control characters: C0, DEL and C1 (\x80-\x9f) are refused.
_STATUS = re.compile(r"[2-5][0-9][0-9] [\x20-\x7e\xa0-\xff]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")
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

    With a registry that has a directory (CLUSTER.md), a request for a listener
    of another worker process or host is forwarded to it; the class is then
    ``ClusterProxyMiddleware``, which also starts the directory's threads with
    the first request the process serves.

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

    def __new__(
        cls, app: WSGIApplication, registry: Registry | None = None, **options: t.Any
    ) -> t.Any:
        if cls is ProxyMiddleware and isinstance(registry, Registry) and registry.directory:
            cls = ClusterProxyMiddleware
        return super().__new__(cls)

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
        self._base = prefix + "/"
        self._sessions = prefix + "/sessions/"
        self._sessions_length = len(self._sessions)
        self._owned = (self._sessions, prefix + "/apps/")
        self._local = registry._listeners.get
        if registry.directory is not None:
            registry.directory.use_middleware(self)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith(self._base):
            return self.app(environ, start_response)
        # The common case, a session route to a listener of this process, costs a few
        # string operations and one dict read; anything else takes the checked path.
        if path.startswith(self._sessions) and "/." not in path:
            start = self._sessions_length
            end = path.find("/", start)
            if end == -1:
                end = len(path)
            listener = self._local(path[start:end])
            if listener is not None:
                raw: str | None = environ.get("REQUEST_URI") or environ.get("RAW_URI")
                if raw is None or (
                    raw.startswith(path[:end])
                    and (len(raw) == end or raw[end] in "/?")
                    and "%2" not in raw
                ):
                    return self._dispatch(listener, environ, start_response, path, end)
        if not path.startswith(self._owned):
            return self.app(environ, start_response)
        return self._checked(environ, start_response, path)

    def _checked(
        self, environ: WSGIEnvironment, start_response: StartResponse, path: str
    ) -> Iterable[bytes]:
        """Every check, in the order SPEC §2 gives, with the answer for each failure."""
        raw_uri: str | None = environ.get("REQUEST_URI") or environ.get("RAW_URI")
        raw_path = routing.raw_uri_path(raw_uri) if raw_uri else None
        if routing.has_dot_segment(path) or (
            raw_path is not None and routing.has_encoded_dot_segment(raw_path)
        ):
            return respond(start_response, 400)
        route = routing.parse(path, self._prefix)
        if route is None:
            return respond(start_response, 404)
        if raw_path is not None and not routing.raw_path_spells(
            raw_path, environ.get("SCRIPT_NAME", ""), path[: route.split]
        ):
            return respond(start_response, 404)
        listener = self._find(route)
        if not isinstance(listener, Listener):
            if listener == 404 and self.registry.directory is not None:
                return self._elsewhere(route, environ, start_response)
            if listener == 404 and environ.get("wsgi.multiprocess"):
                _warn_once_per_process()
            return respond(start_response, listener)
        return self._dispatch(listener, environ, start_response, path, route.split)

    def _elsewhere(
        self, route: routing.Route, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Overridden by ClusterProxyMiddleware: not found in this process is not found."""
        return respond(start_response, 404)

    def _dispatch(
        self,
        listener: Listener,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        split: int,
    ) -> Iterable[bytes]:
        """Call the listener with a copy of the environ, its start_response checked."""
        limit = self.max_content_length
        inner = environ.copy()
        if limit is not None:
            declared = get_content_length(environ)
            if declared is not None and declared > limit:
                return respond(start_response, 413)
            inner["wsgi.input"] = _bounded_input(environ["wsgi.input"], declared, limit)
        inner["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + path[:split]
        inner["PATH_INFO"] = path[split:]
        if not self.forward_cookies:
            inner.pop("HTTP_COOKIE", None)
        listener.last_request = monotonic()
        guard = _Guard(start_response)
        try:
            iterable = listener.wsgi_app(inner, guard)
        except Exception as error:  # noqa: BLE001 - any failure of a listener becomes a 500
            return _failed(listener, guard, start_response, None, error)
        if guard.invalid or iterable is None:
            return _failed(listener, guard, start_response, iterable, None)
        return iterable

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
        if declaration is None or declaration.start is None or registry.directory is not None:
            # With a directory, the app may have a session elsewhere: look there first.
            return 404
        return registry.start_app(slug) or 503

    def __repr__(self) -> str:
        return f"<ProxyMiddleware app={self.app!r} registry={self.registry!r}>"


def _bounded_input(stream: t.IO[bytes], declared: int | None, limit: int) -> t.IO[bytes]:
    # With a limit, the body is bounded whatever the listener does: by the declared
    # length (what follows on the connection is the next request), or, without one,
    # by the limit itself.
    if declared is None:
        return t.cast(t.IO[bytes], _BodyLimit(stream, limit))
    return t.cast(t.IO[bytes], LimitedStream(stream, declared))


class ClusterProxyMiddleware(ProxyMiddleware):
    """A :class:`ProxyMiddleware` whose registry has a directory (CLUSTER.md)."""

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        directory = t.cast("Directory", self.registry.directory)
        if not directory.serving:
            directory.start_serving()
        return super().__call__(environ, start_response)

    def _elsewhere(
        self, route: routing.Route, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        from .cluster.directory import DirectoryUnavailable

        if environ.get(HOP_MARK):
            return respond(start_response, 404)  # a hop never hops again
        directory = t.cast("t.Any", self.registry.directory)
        try:
            if route.kind == routing.APP:
                return self._app_elsewhere(route, environ, start_response)
            session = t.cast(str, route.session)
            owner = directory.locate(session)
            if owner is None or (route.app is not None and owner.app != route.app):
                return respond(start_response, 404)
            return t.cast(
                "Iterable[bytes]", directory.forward(owner, session, environ, start_response)
            )
        except DirectoryUnavailable:
            return respond(start_response, 503)

    def _app_elsewhere(
        self, route: routing.Route, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        slug = t.cast(str, route.app)
        directory = t.cast("t.Any", self.registry.directory)
        found = directory.current_session(slug)
        declaration = self.registry.get_app(slug)
        if found is None and declaration is not None and declaration.start is not None:
            if directory.start_lock(slug, declaration.start_timeout):
                # Another worker may have started it between the lookup and the lock.
                found = directory.current_session(slug)
                if found is None:
                    return self._start_here(route, declaration, environ, start_response)
                directory.start_unlock(slug)
            else:
                deadline = monotonic() + declaration.start_timeout
                while found is None and monotonic() < deadline:
                    sleep(0.05)
                    found = directory.current_session(slug)
                if found is None:
                    return respond(start_response, 503)
        if found is None:
            return respond(start_response, 404)
        session, owner = found
        return t.cast("Iterable[bytes]", directory.forward(owner, session, environ, start_response))

    def _start_here(
        self,
        route: routing.Route,
        declaration: App,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Start the app in this worker, holding the cluster-wide start lock."""
        directory = t.cast("t.Any", self.registry.directory)
        try:
            listener = self.registry.start_app(declaration.slug)
        finally:
            # A start still running past start_timeout keeps the lock, which expires
            # by itself; an ended one frees it for the next request (SPEC §4).
            if not declaration.starting:
                directory.start_unlock(declaration.slug)
        if listener is None:
            return respond(start_response, 503)
        return self._dispatch(listener, environ, start_response, environ["PATH_INFO"], route.split)


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


def is_hop_by_hop(name: str) -> bool:
    """Whether a header ends at the hop it travels (RFC 9110 §7.6.1, and Proxy-*)."""
    lowered = name.lower()
    return lowered in _HOP_BY_HOP or lowered.startswith("proxy-")


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
