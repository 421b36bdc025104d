"""
Dispatch
========

Calling one listener: a copy of the environ with the routing part of the path
moved into ``SCRIPT_NAME``, the body limit, withheld host cookies, the
concurrency limit, and the guard (the guard (``guard.py``)) around what it answers.

A :class:`Dispatcher` holds these options, and applies them also to a request
that leaves for a listener of another process (:meth:`Dispatcher.forward`).
The middleware has one; a request that another process forwards here is
dispatched with it too (:func:`serve_forwarded`), or with the defaults where
no middleware runs in this process (a notebook kernel, a job worker, a script).
"""

from __future__ import annotations

import threading
import typing as t
from collections.abc import Callable, Collection, Iterable, Mapping
from time import monotonic

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream, get_content_length

from . import metrics, routing
from .answers import Answer, close, respond
from .cookies import withhold
from .guard import Guard, failed
from .terms import SANDBOX_POLICY

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .seam import Destination

__all__ = [
    "Dispatchable",
    "Dispatcher",
    "check_content_length",
    "check_limit",
    "is_bodyless",
    "serve_forwarded",
    "withheld_cookies",
]

# The header a sandboxed listener's answers carry (see wsgi_proxy_listen.terms).
_SANDBOXED = (("Content-Security-Policy", SANDBOX_POLICY),)


class Dispatchable(t.Protocol):
    """A listener as the dispatch sees it."""

    session: str
    app: str | None
    wsgi_app: WSGIApplication
    max_concurrency: int | None
    counted: bool
    last_request: float | None

    def admit(self, limit: int | None) -> bool: ...

    def done(self) -> None: ...


def check_limit(name: str, value: object, *, optional: bool = True) -> None:
    """Raise unless ``value`` is a positive int (or ``None`` where that means no limit)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        allowed = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {allowed}, not {value!r}")
    if value < 1:
        raise ValueError(f"invalid {name} {value!r}: use a number of requests, at least 1")


def check_content_length(value: object) -> None:
    """Raise unless ``value`` is a number of bytes or ``None`` (a ``max_content_length``)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"max_content_length must be a number of bytes (an int) or None, not {value!r}"
        )
    if value < 0:
        raise ValueError(
            f"invalid max_content_length {value!r}:"
            " use a number of bytes (an int >= 0) or None for no limit"
        )


def withheld_cookies(forward_cookies: object) -> frozenset[str] | None:
    """The host cookies that ``forward_cookies`` withholds (empty: all of them), or
    ``None`` to forward all; raise for a value that means nothing."""
    if forward_cookies is True:
        return None
    if forward_cookies is False:
        return frozenset()
    # A mapping ({"session": False}) reads as a choice per cookie, which it is not.
    if isinstance(forward_cookies, (str, bytes, Mapping)) or not isinstance(
        forward_cookies, Iterable
    ):
        raise TypeError(
            "forward_cookies must be True, False, or a collection of cookie names to"
            f" withhold such as ['session'], not {forward_cookies!r}"
        )
    names = list(forward_cookies)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(
            f"invalid forward_cookies {forward_cookies!r}: name the cookies to withhold,"
            " each a non-empty str (or pass True or False)"
        )
    return frozenset(names)


class Dispatcher:
    """Calls listeners with the options of a middleware (see
    :class:`~wsgi_proxy_listen.ProxyMiddleware` for each)."""

    def __init__(
        self,
        *,
        max_content_length: int | None = None,
        forward_cookies: bool | Iterable[str] = True,
        max_concurrency: int | None = None,
        users: bool = False,
    ) -> None:
        check_content_length(max_content_length)
        check_limit("max_concurrency", max_concurrency)
        self._withheld = withheld_cookies(forward_cookies)
        self.max_content_length = max_content_length
        # As given, but an iterator, read once above, is kept as the names it gave.
        self.forward_cookies: bool | Collection[str] = (
            forward_cookies
            if isinstance(forward_cookies, (bool, Collection))
            else t.cast(frozenset[str], self._withheld)
        )
        self.max_concurrency = max_concurrency
        # Whether the middleware says who the user is: then the REMOTE_USER a listener
        # gets is the one it gives, or none (never one the server set).
        self._users = users
        # Whether a request may need more than the plain dispatch (cookies, limits, user).
        self._options = self._withheld is not None or max_concurrency is not None or users
        # Requests on their way to a listener of another process, by session.
        self._forwarding: dict[str, int] = {}
        self._forwarding_lock = threading.Lock()

    def dispatch(
        self,
        listener: Dispatchable,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        split: int,
        user: str | None = None,
        sandbox: bool = False,
        count: str | None = None,
    ) -> Iterable[bytes]:
        """Call the listener with a copy of the environ, its start_response checked;
        ``user`` is its ``REMOTE_USER``, the one the middleware let in; with ``sandbox``
        its answer carries :data:`~wsgi_proxy_listen.terms.SANDBOX_POLICY`; with
        ``count`` (a route kind), the status sent is counted (:mod:`.metrics`)."""
        limit = self.max_content_length
        inner = environ.copy()
        if limit is not None and not _bound_body(inner, limit):
            return _counted_answer(start_response, 413, count)
        inner["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + path[:split]
        inner["PATH_INFO"] = path[split:]
        counted = False
        if self._options or listener.counted:
            if self._users:
                _set_user(inner, user)
            if self._withheld is not None:
                self._withhold(inner)
            concurrency = listener.max_concurrency or self.max_concurrency
            if concurrency is not None or listener.counted:
                if not listener.admit(concurrency):
                    return _counted_answer(start_response, 503, count)
                counted = True
        listener.last_request = monotonic()
        # The listener may change its environ: cookies are confined to what it was given.
        guard = Guard(start_response, inner["SCRIPT_NAME"], _SANDBOXED if sandbox else (), count)
        try:
            iterable = listener.wsgi_app(inner, guard)
        except BaseException as error:
            if counted:
                listener.done()
            if not isinstance(error, Exception):
                raise  # SystemExit, KeyboardInterrupt, a green thread's timeout
            return failed(listener.session, guard, start_response, None, error)
        done = listener.done if counted else None
        return _accepted(listener.session, guard, start_response, iterable, done)

    def forward(
        self,
        destination: Destination,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        split: int,
        user: str | None = None,
        sandbox: bool = False,
    ) -> Iterable[bytes] | None:
        """Hand a request to where the directory found its listener, in another process,
        within the body limit (checked here, so that a body too large never takes the
        hop), without the withheld cookies (the other process may not withhold them),
        and within ``max_concurrency``, counted per session in this process: a
        listener that hangs elsewhere cannot hold every thread of this one either.
        ``user`` travels as ``REMOTE_USER``: the other process does not ask again;
        ``sandbox`` is applied here.

        The answer passes the checks of a local listener's here again, against the
        ``SCRIPT_NAME`` that this process computed (``path[:split]`` under its own):
        the other process may run code that turned its own checks off.

        ``None``, with nothing sent, when the owner does not serve the session (any
        more): see :meth:`~wsgi_proxy_listen.seam.Destination.serve`."""
        # A request without a body takes none to the hop: it needs no bound.
        limit = None if is_bodyless(environ) else self.max_content_length
        if limit is not None or self._withheld is not None or self._users:
            environ = environ.copy()
            if limit is not None and not _bound_body(environ, limit):
                return respond(start_response, 413)
            if self._withheld is not None:
                self._withhold(environ)
            if self._users:
                _set_user(environ, user)
        guard = Guard(
            start_response,
            environ.get("SCRIPT_NAME", "") + path[:split],
            _SANDBOXED if sandbox else (),
        )
        concurrency = self.max_concurrency
        if concurrency is None:
            return _relay(destination, environ, start_response, guard, None)
        session = destination.session
        with self._forwarding_lock:
            running = self._forwarding.get(session, 0)
            if running >= concurrency:
                return respond(start_response, 503)
            self._forwarding[session] = running + 1
        done = _Release(self._forwarding, self._forwarding_lock, session)
        return _relay(destination, environ, start_response, guard, done)

    def _withhold(self, inner: WSGIEnvironment) -> None:
        """Remove the withheld host cookies (all of them, for ``forward_cookies=False``),
        and what an outer middleware parsed of them."""
        inner.pop("webob._parsed_cookies", None)
        cookie = inner.get("HTTP_COOKIE")
        if cookie is None:
            return
        kept = withhold(cookie, self._withheld) if self._withheld else ""
        if kept:
            inner["HTTP_COOKIE"] = kept
        else:
            del inner["HTTP_COOKIE"]


def _counted_answer(start_response: StartResponse, status: int, count: str | None) -> list[bytes]:
    if count is not None:
        metrics.count(count, "here", str(status))
    return respond(start_response, status)


def serve_forwarded(
    dispatcher: Dispatcher,
    prefix: str,
    lookup: Callable[[str], Dispatchable | None],
    environ: WSGIEnvironment,
    start_response: StartResponse,
    session: str,
) -> Iterable[bytes] | None:
    """Answer a request that another process forwarded here for ``session``.

    Only the proxy routes are served, with every check of a direct request,
    and only from the listener of ``session`` in this process: a host route
    gets 404, and ``None`` is returned (nothing sent) when this process does
    not serve ``session``. Who may reach the listener was decided by the process
    that received the request: its ``REMOTE_USER`` is the user it let in.
    """
    path: str = environ.get("PATH_INFO", "")
    if metrics.ENABLED:
        kind = "session" if path.startswith(prefix + "/sessions/") else "app"
        start_response = metrics.Probe(start_response, kind, "from_another")
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    plain = routing.plain_session_route(path, prefix + "/sessions/", raw_uri)
    if plain is not None and plain[0] == session:
        listener = lookup(session)
        if listener is None:
            return None
        return dispatcher.dispatch(
            listener, environ, start_response, path, plain[1], environ.get("REMOTE_USER")
        )
    if not path.startswith((prefix + "/sessions/", prefix + "/apps/")):
        return respond(start_response, 404)
    route = routing.route(path, prefix, environ.get("SCRIPT_NAME", ""), raw_uri)
    if isinstance(route, Answer):
        return respond(start_response, route.status)
    listener = lookup(session)
    if (
        listener is None
        or route.session not in (None, session)
        or (route.app is not None and listener.app != route.app)
    ):
        return None
    return dispatcher.dispatch(
        listener, environ, start_response, path, route.split, environ.get("REMOTE_USER")
    )


def _set_user(environ: WSGIEnvironment, user: str | None) -> None:
    """``REMOTE_USER`` is ``user``, the one the middleware let in, or none: never one
    that the server or a front proxy set."""
    environ.pop("REMOTE_USER", None)
    if user is not None:
        environ["REMOTE_USER"] = user


def _relay(
    destination: Destination,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    guard: Guard,
    done: Callable[[], None] | None,
) -> Iterable[bytes] | None:
    """The answer of ``destination``, checked by ``guard``; ``done`` when it ends."""
    try:
        iterable = destination.serve(environ, guard)
    except BaseException:
        if done is not None:
            done()
        raise
    if iterable is None:
        if done is not None:
            done()
        return None
    return _accepted(destination.session, guard, start_response, iterable, done)


def _accepted(
    session: str,
    guard: Guard,
    start_response: StartResponse,
    iterable: Iterable[bytes],
    done: Callable[[], None] | None,
) -> Iterable[bytes]:
    """``iterable``, released to the server if the guard accepts it, else the answer for
    what it refused; ``done`` when it ends."""
    try:
        accepted = guard.accept(iterable)
    except BaseException:
        # The server's start_response refused what the guard let through.
        if done is not None:
            done()
        close(iterable)
        raise
    if not accepted:
        if done is not None:
            done()
        return failed(session, guard, start_response, iterable, None)
    return iterable if done is None else _Counted(iterable, done)


def is_bodyless(environ: WSGIEnvironment) -> bool:
    """Whether a request declares no body: such a request may be sent twice."""
    return environ.get("CONTENT_LENGTH") in (None, "", "0") and not environ.get(
        "HTTP_TRANSFER_ENCODING"
    )


class _Counted:
    """A listener's answer, counted against its concurrency limit until it is closed."""

    __slots__ = ("done", "iterable")

    def __init__(self, iterable: Iterable[bytes], done: Callable[[], None]) -> None:
        self.iterable = iterable
        self.done: Callable[[], None] | None = done

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(self.iterable)

    def close(self) -> None:
        done, self.done = self.done, None
        try:
            close(self.iterable)
        finally:
            if done is not None:
                done()


class _Release:
    """Ends the count of one forwarded request."""

    __slots__ = ("counts", "lock", "session")

    def __init__(self, counts: dict[str, int], lock: threading.Lock, session: str) -> None:
        self.counts = counts
        self.lock = lock
        self.session = session

    def __call__(self) -> None:
        with self.lock:
            left = self.counts[self.session] - 1
            if left:
                self.counts[self.session] = left
            else:
                del self.counts[self.session]


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


def _bound_body(environ: WSGIEnvironment, limit: int) -> bool:
    """Bound the body of ``environ`` (a copy) to ``limit`` bytes; ``False``, and nothing
    changed, when it declares more (a 413).

    The body is bounded whatever the listener does: by the declared length (what
    follows on the connection is the next request), or, without one, by the limit.
    """
    declared = get_content_length(environ)
    if declared is not None and declared > limit:
        return False
    stream = environ["wsgi.input"]
    environ["wsgi.input"] = (
        _BodyLimit(stream, limit) if declared is None else LimitedStream(stream, declared)
    )
    return True
