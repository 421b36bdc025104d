"""
Registry
========

A :class:`Registry` holds the listeners of one host: at most one per session,
each optionally a member of an *app*. Code that owns a session calls
:meth:`Registry.listen` and gets a :class:`Listener` handle back; closing the
handle removes the listener again. :class:`~wsgi_proxy_listen.ProxyMiddleware`
looks listeners up here for every request under the prefix.

.. code-block:: python

    from wsgi_proxy_listen import Registry

    registry = Registry(prefix="/proxy")
    with registry.listen(export, session="report-1") as listener:
        print(listener.url("/export/data"))    # /proxy/sessions/report-1/export/data

The module-level functions of :mod:`wsgi_proxy_listen` work on
:data:`default_registry`.
"""

from __future__ import annotations

import contextvars
import html
import logging
import os
import sys
import threading
import time
import typing as t
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import quote

from werkzeug.urls import iri_to_uri

from . import exits
from .dispatch import Dispatcher, check_limit, serve_forwarded
from .handlers import to_wsgi
from .lifecycle import Reaper, check_idle_timeout, period_for, retire
from .naming import ENV_DIRECTORY, from_environment, open_directory, resolve_secret
from .routing import is_valid_id, validate_prefix
from .seam import Directory

if t.TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["App", "Listener", "Registry", "default_registry"]

logger = logging.getLogger("wsgi_proxy_listen")

#: The environment variable with the host's public base URL, for the links that a
#: listener shows of itself in a notebook.
ENV_PUBLIC_URL = "WSGI_PROXY_LISTEN_PUBLIC_URL"

# Modules that only a running WSGI server loads: their process is a web worker (or a
# server's master process), not a runtime. werkzeug's development server is not among
# them (importing Flask loads it), nor needs to be: it serves from one process.
_SERVERS = (
    "gunicorn.arbiter",
    "waitress.server",
    "uwsgi",
    "mod_wsgi",
    "django.core.servers.basehttp",
    "cheroot.wsgi",
    "gevent.pywsgi",
    "bjoern",
    "meinheld",
    "uvicorn",
    "hypercorn",
    "granian",
    "twisted.web.wsgi",
)

# What a path segment may hold unquoted (RFC 3986's pchar), and "/".
_PATH_SAFE = "/!$&'()*+,;=:@-._~"

# The session the running code belongs to, bound by Registry.session(). It is
# a property of the code's context, like the owner of a Livebook process, so
# it is shared by every registry.
_bound_session: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "wsgi_proxy_listen_session", default=None
)


def _check_id(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a {what} must be a str, not {type(value).__name__!r}")
    if not is_valid_id(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1 to 128 characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    return value


class Listener:
    """The handle of a registered listener, returned by ``listen()``.

    Closing it removes the listener, unless a later ``listen()`` for the same
    session has replaced it already: then ``close()`` does nothing. It is
    also a context manager that closes it on exit.
    """

    __slots__ = (
        "_gate",
        "_registry",
        "active",
        "app",
        "counted",
        "handler",
        "last_request",
        "listened",
        "max_concurrency",
        "retiring",
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
        registry: Registry,
        session: str,
        app: str | None,
        handler: object,
        wsgi_app: WSGIApplication,
        max_concurrency: int | None = None,
    ) -> None:
        self._registry = registry
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

    def retire_if_idle(self, now: float, timeout: float) -> bool:
        """Mark it :attr:`retiring`, and say so, if it serves nothing and has served
        nothing for ``timeout`` seconds at ``now``: from then on it admits no request."""
        with self._gate:
            if self.retiring or self.active or now < self.idle_since + timeout:
                return False
            self.retiring = True
            return True

    @property
    def idle_since(self) -> float:
        """:func:`time.monotonic` since when it has served nothing (while
        :attr:`active` is 0): its latest request, or its registration."""
        last = self.last_request
        return self.listened if last is None else last

    def close(self) -> None:
        """Remove this listener from its registry. Idempotent."""
        self._registry.remove(self)

    @property
    def closed(self) -> bool:
        """Whether this listener no longer answers requests (closed or replaced)."""
        return self._registry.get(self.session) is not self

    def url(self, path: str = "/", environ: WSGIEnvironment | None = None) -> str:
        """The public URL path of this listener, with ``path`` appended:
        :meth:`Registry.url` for its session and app."""
        return self._registry.url(session=self.session, app=self.app, path=path, environ=environ)

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
        """A link to the listener, as Jupyter shows it: to the host's public URL when
        ``WSGI_PROXY_LISTEN_PUBLIC_URL`` gives it (``https://notebooks.example.com``),
        else to the path on the page's own origin."""
        url = os.environ.get(ENV_PUBLIC_URL, "").rstrip("/") + self.url()
        link = html.escape(url)
        return f'<a href="{link}" target="_blank">{link}</a>'


class App:
    """What :meth:`Registry.register_app` declared about an app."""

    __slots__ = (
        "_registry",
        "idle_timeout",
        "max_waiting",
        "multi_session",
        "slug",
        "start",
        "start_timeout",
        "stop",
    )

    def __init__(
        self,
        registry: Registry,
        slug: str,
        *,
        multi_session: bool,
        start: t.Callable[[], object] | None,
        start_timeout: float,
        max_waiting: int,
        idle_timeout: float | None,
        stop: t.Callable[[str], object] | None,
    ) -> None:
        self._registry = registry
        self.slug = slug
        self.multi_session = multi_session
        self.start = start
        self.start_timeout = start_timeout
        self.max_waiting = max_waiting
        self.idle_timeout = idle_timeout
        self.stop = stop

    @property
    def starting(self) -> bool:
        """Whether a start of this app is running (whichever declaration launched it)."""
        return self.slug in self._registry._starts

    def url(self, path: str = "/", environ: WSGIEnvironment | None = None) -> str:
        """The URL path of the app's generic path, ``{prefix}/apps/{slug}/``, with
        ``path`` appended: :meth:`Registry.url` for the app."""
        return self._registry.url(app=self.slug, path=path, environ=environ)

    def __repr__(self) -> str:
        return (
            f"<App {self.slug!r} multi_session={self.multi_session!r}"
            f" start={self.start!r} start_timeout={self.start_timeout!r}"
            f" max_waiting={self.max_waiting!r} idle_timeout={self.idle_timeout!r}"
            f" stop={self.stop!r}>"
        )


class _Start(threading.Event):
    """A running start of an app: set when it ends; counts the requests waiting for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0


class Registry:
    """The listeners of a host, by session, and the apps they belong to.

    Thread safety: lookups take no lock and read one dict, so a request sees
    either the old or the new listener of a session, never an error, while
    other threads listen, replace and close. Changes are serialised by one
    lock and cost O(1) whatever the number of listeners.

    :param prefix: the path under which listeners are reachable.
    :param directory: where listeners of other worker processes and hosts are
        found: an absolute folder path (the embedded directory, one machine),
        a Redis URL (several machines), or a directory object (see
        :mod:`wsgi_proxy_listen.seam`); ``None`` keeps the registry local to
        this process. See :meth:`connect`.
    :param secret: signs the requests between processes; required for Redis,
        optional for the embedded directory. ``None`` reads the environment
        variable ``WSGI_PROXY_LISTEN_SECRET``.
    :param runtime: whether this process is a *runtime* (see :attr:`runtime`);
        ``None`` tells it by itself.
    """

    directory_name: str | None
    """The name the directory was given by (a folder path or a URL), if any."""

    get: t.Callable[[str], Listener | None]
    """``get(session)``: the listener of ``session``, or ``None``. Takes no lock: it is
    the ``get`` of the dict that holds the listeners, so that a lookup on every
    request costs one dict read and nothing more."""

    def __init__(
        self,
        prefix: str = "/proxy",
        *,
        directory: Directory | str | None = None,
        secret: str | bytes | None = None,
        runtime: bool | None = None,
    ) -> None:
        self._prefix = validate_prefix(prefix)
        self._directory: Directory | None = None
        self.directory_name = None
        self._secret: bytes | None = None  # what a directory named by a string was opened with
        self._from_environment = False
        self._connecting = threading.RLock()
        self._in_use = False
        self.runtime = runtime
        # Answers what other processes forward here while no middleware runs here.
        self._dispatcher = Dispatcher()
        self._lock = threading.Lock()
        self._listeners: dict[str, Listener] = {}
        self.get = self._listeners.get
        self._apps: dict[str, App] = {}
        # Members of each app in the order they joined, newest last, and the
        # newest one: kept up to date under the lock so that lookups read it
        # without iterating a dict that another thread may change.
        self._members: dict[str, OrderedDict[str, Listener]] = {}
        self._current: dict[str, Listener] = {}
        # Running starts, by slug, so that a new declaration of an app joins its start.
        self._starts: dict[str, _Start] = {}
        self._reaper = Reaper(self._sweep, f"wsgi_proxy_listen idle sessions {id(self):#x}")
        # When this process was forked from the one that made the registry (see _after_fork).
        self._forked_at = float("-inf")
        _registries.add(self)
        if directory is not None:
            self.connect(directory, secret=secret)
        elif secret is not None:
            raise TypeError(
                "secret= was given without a directory: it signs the requests between"
                " processes; give directory= too, or drop secret="
            )

    @property
    def prefix(self) -> str:
        """The path under which listeners are reachable, such as ``/proxy``.

        It can be changed until a :class:`~wsgi_proxy_listen.ProxyMiddleware`
        uses this registry (the framework integrations set it from their
        configuration); after that, changing it raises :exc:`RuntimeError`.
        """
        return self._prefix

    @prefix.setter
    def prefix(self, prefix: str) -> None:
        prefix = validate_prefix(prefix)
        with self._lock:
            if self._in_use and prefix != self._prefix:
                raise RuntimeError(
                    f"cannot change the prefix of {self!r} to {prefix!r}: a ProxyMiddleware"
                    " already routes with it; set the prefix before wrapping the app, or use"
                    " a Registry(prefix=...) of its own"
                )
            self._prefix = prefix

    def use_prefix(self) -> str:
        """Freeze the prefix and return it: a middleware routes with it from now on.

        Called by :class:`~wsgi_proxy_listen.ProxyMiddleware` when it is created.
        """
        with self._lock:
            self._in_use = True
            return self._prefix

    @property
    def runtime(self) -> bool:
        """Whether this process is a *runtime*: a process that serves no web requests
        itself (a notebook kernel, a job worker, a script) but whose listeners the
        host's workers reach through the directory.

        In a runtime, ``listen()`` publishes at once, and the first such call starts
        the process's internal endpoint. In a web worker, listeners registered before
        the worker serves its first request are start-up listeners (every worker has
        them: they stay local) and later ones are published.

        Unless set (``True`` or ``False``, also by :meth:`connect` or the environment
        variable ``WSGI_PROXY_LISTEN_RUNTIME``), a process is a runtime as long as no
        :class:`~wsgi_proxy_listen.ProxyMiddleware` routes with this registry and no
        WSGI server that it knows runs the process (gunicorn, waitress, uWSGI,
        mod_wsgi, Django's ``runserver``). Say ``runtime=True`` for a process that
        builds the host's app without serving it (a Celery worker that imports the
        Flask app), ``runtime=False`` for a host that registers its start-up
        listeners before it wraps its app.
        """
        if self._runtime is not None:
            return self._runtime
        return not self._in_use and not any(name in sys.modules for name in _SERVERS)

    @runtime.setter
    def runtime(self, runtime: bool | None) -> None:
        if runtime is not None and not isinstance(runtime, bool):
            raise TypeError(f"runtime must be True, False or None, not {runtime!r}")
        self._runtime = runtime

    def serve_forwarded(
        self, environ: WSGIEnvironment, start_response: StartResponse, session: str, prefix: str
    ) -> Iterable[bytes] | None:
        """Answer a request forwarded to this process for ``session``, with the
        middleware's default options, while no middleware runs in this process (in a
        runtime): see :meth:`~wsgi_proxy_listen.ProxyMiddleware.serve_forwarded`."""
        return serve_forwarded(self._dispatcher, prefix, self.get, environ, start_response, session)

    @property
    def directory(self) -> Directory | None:
        """The directory that shares this registry's listeners, or ``None``.

        Reading it connects the registry to the directory that the environment
        names, where :meth:`connect_from_environment` asked for that.
        """
        if self._from_environment:
            self._connect_environment()
        return self._directory

    @property
    def connected(self) -> bool:
        """Whether the registry has a directory already (reading it connects nothing)."""
        return self._directory is not None

    def connect(
        self,
        directory: Directory | str,
        *,
        secret: str | bytes | None = None,
        runtime: bool | None = None,
    ) -> None:
        """Share this registry's run-time listeners through ``directory``.

        ``directory`` is named as for :class:`Registry`: an absolute folder
        path, a Redis URL, or a directory object. Listeners registered before
        are start-up listeners: they stay local to this process. ``runtime``
        sets :attr:`runtime` (``None`` leaves it as it is). It comes before
        the directory the environment names (:meth:`connect_from_environment`),
        and connecting again to the same name with the same secret changes
        nothing.

        :raises RuntimeError: the registry has another directory already, or a
            middleware routes with it.
        :raises ValueError: ``directory`` names no directory (see
            :func:`~wsgi_proxy_listen.naming.open_directory`).
        """
        with self._connecting:
            self._from_environment = False
            current = self._directory
            if current is not None:
                if not (
                    isinstance(directory, str)
                    and directory == self.directory_name
                    and resolve_secret(secret) == self._secret
                ):
                    raise RuntimeError(
                        f"{self!r} is connected to {current!r} already: a registry has one"
                        " directory (connecting again takes the same name and secret);"
                        " make another Registry for another one"
                    )
                if runtime is not None:
                    self.runtime = runtime
                return
            if self._in_use:
                raise RuntimeError(
                    f"cannot connect {self!r} to a directory: a ProxyMiddleware already routes"
                    " with it; connect the registry before wrapping the app"
                )
            self._open(directory, secret, runtime)

    def connect_from_environment(self) -> None:
        """Connect this registry to the directory that ``WSGI_PROXY_LISTEN_DIRECTORY``
        names (with ``WSGI_PROXY_LISTEN_SECRET`` and ``WSGI_PROXY_LISTEN_RUNTIME``)
        when its directory is first needed: by a middleware that routes with it, by
        a ``listen()`` in a runtime, or by reading :attr:`directory`. Not now, so
        that a :meth:`connect` or the settings of a framework integration, which
        come first, may still name the directory or give its secret.

        The package calls it for :data:`default_registry` when it is imported.
        A wrong value in the environment raises :exc:`ValueError` when the
        directory is needed, naming the variable.
        """
        with self._connecting:
            if self._directory is None:
                self._from_environment = True
        if os.environ.get(ENV_DIRECTORY):
            exits.install()  # from the main thread, where the package is imported

    def _connect_environment(self) -> None:
        with self._connecting:
            if not self._from_environment:
                return
            try:
                found = from_environment()
                if found is not None:
                    self._open(found.directory, None, found.runtime)
            except ValueError as error:
                raise ValueError(f"{ENV_DIRECTORY}: {error}") from None
            self._from_environment = False

    def _open(
        self, directory: Directory | str, secret: str | bytes | None, runtime: bool | None
    ) -> None:
        name = directory if isinstance(directory, str) else None
        if isinstance(directory, str):
            directory = open_directory(directory, secret=secret)
            self._secret = resolve_secret(secret)
        elif not isinstance(directory, Directory):
            raise TypeError(
                "a directory is named by a string (an absolute folder path or a Redis URL)"
                f" or given as a directory object (see wsgi_proxy_listen.seam), not {directory!r}"
            )
        elif secret is not None:
            raise TypeError(
                "secret= was given with a directory object: give the secret to the directory"
            )
        if runtime is not None:
            self.runtime = runtime
        directory.attach(self)
        directory.serve_with(self.serve_forwarded)  # a middleware brings its own options
        self.directory_name = name
        self._directory = directory

    # -- listeners ---------------------------------------------------------

    def listen(
        self,
        handler: object,
        *,
        session: str | None = None,
        app: str | None = None,
        kind: str | None = None,
        request_class: type | None = None,
        options: Mapping[str, t.Any] | None = None,
        max_concurrency: int | None = None,
    ) -> Listener:
        """Register ``handler`` as the listener of ``session``.

        Without ``session=``, the session bound by :meth:`session` is used
        (and its app, unless ``app=`` is given). A listener already registered
        for the session is replaced; requests running on it finish normally.
        With ``app=``, the session becomes a member of that app.

        :param max_concurrency: the most requests this listener serves at once
            (a stream counts until it is closed); more get 503 with
            ``Retry-After`` at once. ``None`` takes the middleware's
            ``max_concurrency``.
        :raises LookupError: no session was given or bound.
        :raises ValueError: an invalid session id, app slug or limit.
        :raises TypeError: a handler that cannot be resolved (see
            :func:`~wsgi_proxy_listen.handlers.to_wsgi`), or an argument of the
            wrong type.
        """
        if session is None:
            bound = _bound_session.get()
            if bound is None:
                raise LookupError(
                    "listen() needs a session: pass session='...', or call it inside"
                    " 'with registry.session(...):'"
                )
            session, bound_app = bound
            if app is None:
                app = bound_app
        _check_id("session id", session)
        if app is not None:
            _check_id("app slug", app)
        check_limit("max_concurrency", max_concurrency)
        wsgi_app = to_wsgi(handler, kind=kind, request_class=request_class, options=options)
        if self._from_environment and self.runtime:
            self._connect_environment()  # before the listener shows: it may raise
        listener = Listener(self, session, app, handler, wsgi_app, max_concurrency)
        with self._lock:
            replaced = self._listeners.get(session)
            # Lookups take no lock, so every intermediate state must be one they can
            # read: leave an app the session quits before the new listener shows,
            # and stay in an app it keeps (its _current entry never goes missing).
            if replaced is not None and replaced.app != app:
                self._leave(replaced)
            self._listeners[session] = listener
            if app is not None:
                self._join(app, listener)
        if app is not None:
            declaration = self._apps.get(app)
            if declaration is not None and declaration.idle_timeout is not None:
                self._reaper.wake()  # register_app() wakes it for members before it
        directory = self._directory
        if directory is not None:
            if not directory.serving and self.runtime:
                directory.start_serving()  # a runtime publishes at once
            directory.listened(listener)
        return listener

    def url(
        self,
        *,
        session: str | None = None,
        app: str | None = None,
        path: str = "/",
        environ: WSGIEnvironment | None = None,
    ) -> str:
        """The public URL path of a route, with ``path`` appended. Nothing needs to
        listen there yet: an app can be given its URL when it is built.

        - ``session=``: ``{prefix}/sessions/{session}/``;
        - ``session=`` and ``app=``: ``{prefix}/apps/{app}/sessions/{session}/``;
        - ``app=`` alone: the app's generic path, ``{prefix}/apps/{app}/``;
        - neither: the session (and app) bound by :meth:`session`.

        With the default ``path``, every form ends with ``/``, which a listener
        needs for its relative links; ``""`` gives the form without it.
        ``environ`` is the host's environ of the current request: its
        ``SCRIPT_NAME`` goes in front. The ``Host`` header and
        ``X-Forwarded-*`` headers are never looked at. Characters that are not
        allowed in a URL are percent-encoded; existing ``%`` escapes are kept.

        :raises LookupError: neither ``session`` nor ``app`` was given, and no
            session is bound.
        :raises ValueError: an invalid session id, app slug or path.
        """
        if session is None and app is None:
            bound = _bound_session.get()
            if bound is None:
                raise LookupError(
                    "url() needs a session or an app: pass session='...' or app='...', or call"
                    " it inside 'with registry.session(...):'"
                )
            session, app = bound
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__!r}")
        if path and not path.startswith("/"):
            raise ValueError(f"invalid path {path!r}: use '' or a path that starts with '/'")
        route = ""
        if app is not None:
            route = f"/apps/{_check_id('app slug', app)}"
        if session is not None:
            route += f"/sessions/{_check_id('session id', session)}"
        script_name = ""
        if environ is not None:
            # WSGI strings are bytes decoded as latin-1 (PEP 3333), and SCRIPT_NAME is
            # decoded: every character that means something in a URL is quoted. A
            # server's "/" for the root must not make the URL "//proxy" (another host).
            script_name = environ.get("SCRIPT_NAME", "").rstrip("/")
            try:
                raw = script_name.encode("latin-1")
            except UnicodeEncodeError:  # not a WSGI string: text, as a framework has it
                raw = script_name.encode("utf-8")
            script_name = quote(raw, safe=_PATH_SAFE)
        return script_name + iri_to_uri(self._prefix + route + path)

    def close_session(self, session: str) -> bool:
        """Remove the listener of ``session`` and its app membership.

        Returns whether there was one.
        """
        while (listener := self._listeners.get(session)) is not None:
            if self.remove(listener):
                return True
        return False

    def remove(self, listener: Listener) -> bool:
        """Remove ``listener`` if it is still the listener of its session.

        What :meth:`Listener.close` does. Returns whether it was removed: a
        listener that was closed or replaced already is left alone.
        """
        if not isinstance(listener, Listener):
            raise TypeError(f"remove() takes a Listener, not {listener!r}")
        with self._lock:
            if self._listeners.get(listener.session) is not listener:
                return False
            del self._listeners[listener.session]
            self._leave(listener)
        if self._directory is not None:
            self._directory.removed(listener)
        return True

    @contextmanager
    def session(self, session: str, *, app: str | None = None) -> Iterator[None]:
        """Bind ``session`` (and ``app``) for ``listen()`` calls in this context.

        The binding lives in a :class:`contextvars.ContextVar`: it follows the
        thread or asyncio task that entered the block and is shared by every
        registry, so the module-level :func:`~wsgi_proxy_listen.listen` sees it.
        """
        _check_id("session id", session)
        if app is not None:
            _check_id("app slug", app)
        token = _bound_session.set((session, app))
        try:
            yield
        finally:
            _bound_session.reset(token)

    # -- apps ----------------------------------------------------------------

    def register_app(
        self,
        slug: str,
        *,
        multi_session: bool = False,
        start: t.Callable[[], object] | None = None,
        start_timeout: float = 30.0,
        max_waiting: int = 4,
        idle_timeout: float | None = None,
        stop: t.Callable[[str], object] | None = None,
    ) -> App:
        """Declare the app ``slug``; a later call replaces the declaration (and a start
        that runs goes on: requests wait for it, never launch a second one).

        :param multi_session: the app has several sessions at once, so its
            generic path ``{prefix}/apps/{slug}/...`` answers 400 and only
            ``{prefix}/apps/{slug}/sessions/{id}/...`` reaches a session.
        :param start: called with no arguments, in a thread of its own, by
            the first request to the generic path when the app has no
            session; it should ``listen(..., app=slug)``.
        :param start_timeout: seconds a request waits for ``start`` before
            it gives up with 503.
        :param max_waiting: the most requests that wait for one start (the one
            that launched it included), each holding a server thread; more get
            503 with ``Retry-After`` at once. Strangers can trigger a start, so
            keep it well below the server's threads.
        :param idle_timeout: seconds after which a member of this process that
            served no request is closed (automatic shutdown); the next request
            on the generic path then starts a new one. A request counts until
            its answer is closed, so a stream keeps its session alive. Members
            are looked at every quarter of it (at least every second), so a
            member goes within 1.25 times the timeout. ``None`` keeps members
            until they are closed.
        :param stop: called as ``stop(session)`` for a member closed for being
            idle, in a thread of its own, before the listener is closed; the
            listener is closed when ``stop`` returns or raises (logged), or after
            ``start_timeout`` seconds. From the moment a member is found idle it
            leaves the app (the generic path starts a new session) and takes no
            new request (503 with ``Retry-After`` on its session routes). Needs
            ``idle_timeout``.
        """
        _check_id("app slug", slug)
        if not isinstance(multi_session, bool):
            raise TypeError(f"multi_session must be True or False, not {multi_session!r}")
        if start is not None and not callable(start):
            raise TypeError(f"start must be a callable taking no arguments or None, not {start!r}")
        if isinstance(start_timeout, bool) or not isinstance(start_timeout, (int, float)):
            raise TypeError(
                f"start_timeout must be a number of seconds, not {type(start_timeout).__name__!r}"
            )
        if not 0 < start_timeout < float("inf"):
            raise ValueError(
                f"invalid start_timeout {start_timeout!r}: use a positive number of seconds"
            )
        check_limit("max_waiting", max_waiting, optional=False)
        idle_timeout = check_idle_timeout(idle_timeout)
        if stop is not None and not callable(stop):
            raise TypeError(f"stop must be a callable taking the session id or None, not {stop!r}")
        if stop is not None and idle_timeout is None:
            raise ValueError(
                "stop= is called when a session is closed for being idle: give idle_timeout="
                " too, or close sessions yourself"
            )
        declaration = App(
            self,
            slug,
            multi_session=multi_session,
            start=start,
            start_timeout=float(start_timeout),
            max_waiting=max_waiting,
            idle_timeout=idle_timeout,
            stop=stop,
        )
        with self._lock:
            self._apps[slug] = declaration
        if idle_timeout is not None:
            self._reaper.wake()
        return declaration

    def unregister_app(self, slug: str) -> None:
        """Forget the declaration of ``slug``.

        Sessions still listening with that slug keep it as an undeclared app.

        :raises LookupError: the app was never registered.
        """
        with self._lock:
            if self._apps.pop(slug, None) is None:
                raise LookupError(f"no app {slug!r} is registered: nothing to unregister")

    def get_app(self, slug: str) -> App | None:
        """The declaration of ``slug``, or ``None``. Takes no lock."""
        return self._apps.get(slug)

    def current_listener(self, app: str) -> Listener | None:
        """The listener of the newest member of ``app``, or ``None``.

        Takes no lock and reads one dict: while members come and go, a request
        sees a listener that is, or just was, the app's newest, never ``None``
        while another member is live.
        """
        return self._current.get(app)

    def start_app(self, slug: str) -> Listener | None:
        """Run the app's ``start`` callable, or join the start already running.

        One start runs at a time per app. The caller waits up to the app's
        ``start_timeout`` and gets the app's current listener, or ``None`` when
        the start failed, timed out or registered nothing (the next call then
        tries again), or when ``max_waiting`` requests wait for it already.
        """
        with self._lock:
            declaration = self._apps.get(slug)
            if declaration is None or declaration.start is None:
                return None
            current = self._current.get(slug)
            if current is not None:
                return current  # a member joined since the caller looked
            starting = self._starts.get(slug)
            launch = starting is None
            if starting is None:
                starting = self._starts[slug] = _Start()
            elif starting.waiting >= declaration.max_waiting:
                return None
            starting.waiting += 1
        if launch:
            try:
                threading.Thread(
                    target=self._run_start,
                    args=(declaration, starting),
                    name=f"wsgi_proxy_listen start {slug}",
                    daemon=True,
                ).start()
            except BaseException:
                with self._lock:
                    del self._starts[slug]
                    starting.waiting -= 1
                starting.set()
                raise
        try:
            starting.wait(declaration.start_timeout)
        finally:
            with self._lock:
                starting.waiting -= 1
        return self.current_listener(slug)

    def _run_start(self, declaration: App, starting: _Start) -> None:
        start = t.cast(t.Callable[[], object], declaration.start)
        began = time.monotonic()
        try:
            start()
        except Exception:
            logger.exception("start of app %r raised", declaration.slug)
        else:
            # With a directory, the session may be another process's: the directory
            # looks for it there.
            if self._directory is None and self.current_listener(declaration.slug) is None:
                logger.error(
                    "start of app %r returned without registering a session:"
                    " it should call listen(..., app=%r)",
                    declaration.slug,
                    declaration.slug,
                )
            elapsed = time.monotonic() - began
            if elapsed > declaration.start_timeout:
                logger.warning(
                    "start of app %r took %.1f s, more than its start_timeout of %.1f s",
                    declaration.slug,
                    elapsed,
                    declaration.start_timeout,
                )
        finally:
            with self._lock:
                if self._starts.get(declaration.slug) is starting:
                    del self._starts[declaration.slug]
            starting.set()

    def _join(self, app: str, listener: Listener) -> None:
        members = self._members.get(app)
        if members is None:
            members = self._members[app] = OrderedDict()
        members.pop(listener.session, None)
        members[listener.session] = listener
        self._current[app] = listener

    # -- automatic shutdown ------------------------------------------------

    def close_idle(self, now: float | None = None) -> list[Listener]:
        """Close the members of apps with an ``idle_timeout`` that have served no
        request for that long at ``now`` (:func:`time.monotonic`, by default the
        present), as a thread of the registry does by itself; returns them. Their
        app's ``stop`` runs first (see :meth:`register_app`), so a listener may be
        closed a moment after this returns."""
        if now is None:
            now = time.monotonic()
        idle: list[tuple[Listener, App]] = []
        with self._lock:
            for slug, members in self._members.items():
                declaration = self._apps.get(slug)
                if declaration is None or declaration.idle_timeout is None:
                    continue
                for member in members.values():
                    # Decided with the member's own lock, which admit() takes: a request
                    # either came in first (and keeps it alive) or is refused.
                    if member.retire_if_idle(now, declaration.idle_timeout):
                        idle.append((member, declaration))
        retired = []
        for member, declaration in idle:
            logger.info(
                "session %r of app %r served nothing for %.1f s: it is closed",
                member.session,
                declaration.slug,
                declaration.idle_timeout,
            )
            # A copy that a forked child inherited: the session is the parent's to stop.
            stop = declaration.stop if member.listened > self._forked_at else None
            try:
                retire(member, stop, declaration.start_timeout)
            except Exception:
                # Nothing was stopped: the next look tries again.
                logger.exception("could not close the idle session %r", member.session)
                member.retiring = False
                continue
            retired.append(member)
            # While stop() runs, the app's generic path goes to another member or starts
            # a new session, here and in every process.
            with self._lock:
                self._leave(member)
            if self._directory is not None:
                self._directory.removed(member)
        return retired

    def _sweep(self) -> float | None:
        """Close what is idle now; the seconds until the next look, or ``None`` while no
        member of an app with an ``idle_timeout`` is registered."""
        self.close_idle()
        with self._lock:
            timeouts = [
                declaration.idle_timeout
                for slug, declaration in self._apps.items()
                if declaration.idle_timeout is not None and slug in self._members
            ]
        return period_for(min(timeouts)) if timeouts else None

    def _leave(self, listener: Listener) -> None:
        """Take ``listener`` out of its app, if it is still a member (one found idle
        left it already)."""
        app = listener.app
        members = None if app is None else self._members.get(app)
        if members is None or members.get(listener.session) is not listener:
            return
        app = t.cast(str, app)
        # OrderedDict: deleting a member and finding the newest one left are O(1),
        # however many members came and went.
        del members[listener.session]
        if members:
            self._current[app] = next(reversed(members.values()))
        else:
            del self._members[app]
            del self._current[app]

    def close(self) -> None:
        """Close every listener, and the directory if there is one: this process's
        listeners are withdrawn from the others, the directory's threads and sockets
        stop. What :func:`~wsgi_proxy_listen.serve_forever` does when it returns."""
        for listener in list(self):
            listener.close()
        if self._directory is not None:
            self._directory.close()

    def _after_fork(self) -> None:
        """In a forked child: the parent's threads are not here, and a lock one of them
        held would stay held. Fresh locks; no start, retirement or request running.
        The thread that closes idle members starts again when the child registers one
        or declares an app (no thread starts inside a fork); the copies it inherited
        are closed without their app's ``stop``, which is the parent's to call."""
        self._lock = threading.Lock()
        self._connecting = threading.RLock()
        self._starts.clear()
        self._forked_at = time.monotonic()
        for listener in self._listeners.values():
            listener._gate = threading.Lock()
            listener.retiring = False
            listener.active = 0
        self._reaper.after_fork()

    # -- container protocol ------------------------------------------------

    def __contains__(self, session: object) -> bool:
        return session in self._listeners

    def __len__(self) -> int:
        return len(self._listeners)

    def __iter__(self) -> Iterator[Listener]:
        with self._lock:
            listeners = list(self._listeners.values())
        return iter(listeners)

    def __repr__(self) -> str:
        return f"<Registry prefix={self._prefix!r} listeners={len(self._listeners)}>"


# Every registry, for what a forked child must set right (see Registry._after_fork).
_registries: weakref.WeakSet[Registry] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for registry in list(_registries):
        registry._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

#: The registry used by the module-level functions and by a
#: :class:`~wsgi_proxy_listen.ProxyMiddleware` created without one.
default_registry = Registry()
