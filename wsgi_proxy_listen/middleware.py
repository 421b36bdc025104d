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
import typing as t
from time import monotonic

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream, get_content_length

from . import routing
from .answers import BAD_REQUEST, NOT_FOUND, UNAVAILABLE, Answer, respond
from .guard import Guard, failed
from .registry import Listener, Registry, default_registry

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .seam import Destination

__all__ = ["ProxyMiddleware"]

logger = logging.getLogger("wsgi_proxy_listen")


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

    With a registry that has a directory, a request that no listener of this
    process serves is looked up in the directory and forwarded to the process
    that owns the listener; the first request this process serves starts the
    directory's threads and sockets (never a server's master process).

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
        self._prefix = prefix = registry.use_prefix()
        self._base = prefix + "/"
        self._sessions = prefix + "/sessions/"
        self._sessions_length = len(self._sessions)
        self._owned = (self._sessions, prefix + "/apps/")
        self._local = registry.get
        self._directory = registry.directory
        if self._directory is not None:
            self._directory.serve_with(self.serve_forwarded)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        directory = self._directory
        if directory is not None and not directory.serving:
            directory.start_serving()
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

    def serve_forwarded(
        self, environ: WSGIEnvironment, start_response: StartResponse, session: str
    ) -> Iterable[bytes] | None:
        """Answer a request that another process forwarded here for ``session``.

        Only the proxy routes are served, with every check of a direct request,
        and only from the listener of ``session`` in this process: a host route
        gets 404, and ``None`` is returned (nothing sent) when this process does
        not serve ``session``. The directory's internal endpoint calls it.
        """
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith(self._owned):
            return respond(start_response, 404)
        route = self._route(environ, path)
        if isinstance(route, Answer):
            return respond(start_response, route.status)
        listener = self._local(session)
        if (
            listener is None
            or route.session not in (None, session)
            or (route.app is not None and listener.app != route.app)
        ):
            return None
        return self._dispatch(listener, environ, start_response, path, route.split)

    def _checked(
        self, environ: WSGIEnvironment, start_response: StartResponse, path: str
    ) -> Iterable[bytes]:
        """Every check, in the order SPEC §2 gives, with the answer for each failure."""
        route = self._route(environ, path)
        if isinstance(route, Answer):
            return respond(start_response, route.status)
        found = self._find(route, environ)
        if isinstance(found, Listener):
            return self._dispatch(found, environ, start_response, path, route.split)
        if isinstance(found, Answer):
            if found is NOT_FOUND and self._directory is None and environ.get("wsgi.multiprocess"):
                _warn_once_per_process()
            return respond(start_response, found.status)
        return self._forward(found, environ, start_response)

    def _route(self, environ: WSGIEnvironment, path: str) -> routing.Route | Answer:
        """The route of a path under the prefix, or the answer for a malformed one."""
        raw_uri: str | None = environ.get("REQUEST_URI") or environ.get("RAW_URI")
        raw_path = routing.raw_uri_path(raw_uri) if raw_uri else None
        if routing.has_dot_segment(path) or (
            raw_path is not None and routing.has_encoded_dot_segment(raw_path)
        ):
            return BAD_REQUEST
        route = routing.parse(path, self._prefix)
        if route is None:
            return NOT_FOUND
        if raw_path is not None and not routing.raw_path_spells(
            raw_path, environ.get("SCRIPT_NAME", ""), path[: route.split]
        ):
            return NOT_FOUND
        return route

    def _find(
        self, route: routing.Route, environ: WSGIEnvironment
    ) -> Listener | Answer | Destination:
        """The listener of this process for ``route``, where the directory found
        one, or the answer."""
        registry = self.registry
        if route.kind != routing.APP:
            listener = registry.get(t.cast(str, route.session))
            if listener is not None:
                # A session has one owner: a listener here is the one, in the app or not.
                return listener if route.app in (None, listener.app) else NOT_FOUND
        else:
            slug = t.cast(str, route.app)
            declaration = registry.get_app(slug)
            if declaration is not None and declaration.multi_session:
                return BAD_REQUEST
            listener = registry.current_listener(slug)
            if listener is not None:
                return listener
            if self._directory is None:
                if declaration is None or declaration.start is None:
                    return NOT_FOUND
                return registry.start_app(slug) or UNAVAILABLE
        if self._directory is None:
            return NOT_FOUND
        return self._directory.find(route, environ)

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
        guard = Guard(start_response)
        try:
            iterable = listener.wsgi_app(inner, guard)
        except Exception as error:  # noqa: BLE001 - any failure of a listener becomes a 500
            return failed(listener.session, guard, start_response, None, error)
        if guard.invalid or iterable is None:
            return failed(listener.session, guard, start_response, iterable, None)
        return iterable

    def _forward(
        self, destination: Destination, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Hand the request to where the directory found its listener, within the body
        limit, which is checked here so that a body too large never takes the hop."""
        limit = self.max_content_length
        if limit is not None:
            declared = get_content_length(environ)
            if declared is not None and declared > limit:
                return respond(start_response, 413)
            environ = environ.copy()
            environ["wsgi.input"] = _bounded_input(environ["wsgi.input"], declared, limit)
        return destination.serve(environ, start_response)

    def __repr__(self) -> str:
        return f"<ProxyMiddleware app={self.app!r} registry={self.registry!r}>"


def _bounded_input(stream: t.IO[bytes], declared: int | None, limit: int) -> t.IO[bytes]:
    # With a limit, the body is bounded whatever the listener does: by the declared
    # length (what follows on the connection is the next request), or, without one,
    # by the limit itself.
    if declared is None:
        return t.cast(t.IO[bytes], _BodyLimit(stream, limit))
    return t.cast(t.IO[bytes], LimitedStream(stream, declared))


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
