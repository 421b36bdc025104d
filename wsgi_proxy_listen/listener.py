"""
Listeners
=========

A :class:`Listener` is the handle that ``listen()`` returns: the session it
answers for, the handler as given and resolved, and what the middleware counts
of the requests it serves (its concurrency limit, the time of its latest
request). Closing the handle removes the listener from its registry.

Its *gate* (:meth:`Listener.admit`, :meth:`Listener.done`,
:meth:`Listener.stop_admitting_if`) is the one lock that a request and a
decision to close the listener both take, so that a request either came in
first or is refused: the rule itself, when a member of an app is idle, is
:mod:`wsgi_proxy_listen.apps`'.
"""

from __future__ import annotations

import html
import threading
import time
import typing as t

from .terms import Terms

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

    from .access import Access

__all__ = ["ENV_PUBLIC_URL", "Listener"]

#: The environment variable with the host's public base URL, for the links that a
#: listener shows of itself in a notebook.
ENV_PUBLIC_URL = "WSGI_PROXY_LISTEN_PUBLIC_URL"


class Holder(t.Protocol):
    """What a listener asks of the registry that holds it."""

    def get(self, session: str, /) -> Listener | None: ...

    def remove(self, listener: Listener) -> bool: ...

    def url(
        self,
        *,
        session: str | None = None,
        app: str | None = None,
        path: str = "/",
        environ: WSGIEnvironment | None = None,
    ) -> str: ...

    def public_url(
        self, *, session: str | None = None, app: str | None = None, path: str = "/"
    ) -> str: ...

    @property
    def local_only(self) -> bool: ...


class Listener:
    """The handle of a registered listener, returned by ``listen()``.

    Closing it removes the listener, unless a later ``listen()`` for the same
    session has replaced it already: then ``close()`` does nothing. It is
    also a context manager that closes it on exit.
    """

    __slots__ = (
        "_gate",
        "_holder",
        "access",
        "active",
        "app",
        "counted",
        "handler",
        "last_request",
        "listened",
        "max_concurrency",
        "plain",
        "retiring",
        "sandbox",
        "session",
        "wsgi_app",
    )

    session: str
    """The session id the listener answers for."""
    app: str | None
    """The slug of the app the session belongs to, or ``None``."""
    handler: object
    """The handler as it was given to ``listen()``."""
    wsgi_app: WSGIApplication
    """The handler resolved into one WSGI callable."""
    listened: float
    """:func:`time.monotonic` when it was registered."""
    last_request: float | None
    """:func:`time.monotonic` of the latest request dispatched to it, or of the end of
    the latest counted one (see :attr:`counted`), or ``None``."""
    max_concurrency: int | None
    """The most requests it serves at once, or ``None`` for the middleware's limit."""
    access: Access | None
    """Who may reach it (:mod:`wsgi_proxy_listen.access`): ``"public"``,
    ``"authenticated"``, a frozenset of user ids, or ``None`` for its app's access, else
    the middleware's ``default_access``."""
    sandbox: bool | None
    """Whether its answers are sandboxed (:mod:`wsgi_proxy_listen.terms`), or ``None``
    for its app's choice, else the middleware's ``sandbox``."""
    plain: bool
    """Whether it declares nothing that the middleware must apply: no app, no access,
    no sandbox (then a request to it takes the shortest path)."""
    counted: bool
    """Whether its requests are counted while they run (:attr:`active`): where a
    concurrency limit applies to it, and for a member of an app, whose app may
    have an ``idle_timeout``."""
    active: int
    """Requests it serves now, where they are counted."""
    retiring: bool
    """Whether it is being closed for being idle: it takes no new request."""

    def __init__(
        self,
        holder: Holder,
        session: str,
        app: str | None,
        handler: object,
        wsgi_app: WSGIApplication,
        max_concurrency: int | None = None,
        terms: Terms | None = None,
    ) -> None:
        self._holder = holder
        self.access, self.sandbox = (None, None) if terms is None else terms
        self.plain = app is None and self.access is None and self.sandbox is None
        self.session = session
        self.app = app
        self.handler = handler
        self.wsgi_app = wsgi_app
        self.listened = time.monotonic()
        self.last_request = None
        self.max_concurrency = max_concurrency
        self.counted = max_concurrency is not None or app is not None
        self.active = 0
        self.retiring = False
        self._gate = threading.Lock()

    def admit(self, limit: int | None) -> bool:
        """Count one more request in, unless ``limit`` requests are in already or it
        is being closed for being idle (:attr:`retiring`).

        The middleware calls it where requests are counted (:attr:`counted`),
        and :meth:`done` when the request ends (its answer closed).
        """
        with self._gate:
            if self.retiring or (limit is not None and self.active >= limit):
                return False
            self.active += 1
            return True

    def done(self) -> None:
        """Count one request out (see :meth:`admit`): its answer ended just now."""
        with self._gate:
            self.last_request = time.monotonic()
            self.active -= 1

    def stop_admitting_if(self, test: Callable[[Listener], bool]) -> bool:
        """Mark it :attr:`retiring`, and say so, if ``test(self)`` holds, decided under
        the lock that :meth:`admit` takes: from then on it admits no request."""
        with self._gate:
            if self.retiring or not test(self):
                return False
            self.retiring = True
            return True

    @property
    def idle_since(self) -> float:
        """:func:`time.monotonic` since when it has served nothing (while
        :attr:`active` is 0): its latest request, or its registration."""
        last = self.last_request
        return self.listened if last is None else last

    def after_fork(self) -> None:
        """In a forked child: a fresh gate, and none of the parent's requests."""
        self._gate = threading.Lock()
        self.retiring = False
        self.active = 0

    def close(self) -> None:
        """Remove this listener from its registry. Idempotent."""
        self._holder.remove(self)

    @property
    def closed(self) -> bool:
        """Whether this listener no longer answers requests (closed or replaced)."""
        return self._holder.get(self.session) is not self

    def url(self, path: str = "/", environ: WSGIEnvironment | None = None) -> str:
        """The public URL path of this listener, with ``path`` appended:
        :meth:`~wsgi_proxy_listen.Registry.url` for its session and app."""
        return self._holder.url(session=self.session, app=self.app, path=path, environ=environ)

    def public_url(self, path: str = "/") -> str:
        """The absolute URL of this listener, with ``path`` appended:
        :meth:`~wsgi_proxy_listen.Registry.public_url` for its session and app (on its
        own origin, with a listener domain)."""
        return self._holder.public_url(session=self.session, app=self.app, path=path)

    @property
    def terms(self) -> Terms:
        """Its :attr:`access` and :attr:`sandbox`, as declared."""
        return Terms(self.access, self.sandbox)

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        app = f" app={self.app!r}" if self.app is not None else ""
        state = " closed" if self.closed else ""
        return (
            f"<Listener session={self.session!r}{app} url={self.url()!r}"
            f" handler={self.handler!r}{state}>"
        )

    def _repr_html_(self) -> str:
        """A link to the listener, as Jupyter shows it: :meth:`public_url` (the path on
        the page's own origin when no public URL or listener domain is known), with a
        note where it is reachable only inside this process
        (:attr:`Registry.local_only <wsgi_proxy_listen.Registry.local_only>`)."""
        url = self.public_url()
        link = html.escape(url)
        shown = f'<a href="{link}" target="_blank">{link}</a>'
        if self._holder.local_only:
            shown += (
                " <small>(reachable only inside this process: no directory shares it;"
                " set WSGI_PROXY_LISTEN_DIRECTORY where this process starts)</small>"
            )
        return shown
