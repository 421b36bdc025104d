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
import os
import threading
import typing as t
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import urlsplit

from . import metrics
from .apps import App, Apps
from .dispatch import check_limit
from .events import say
from .handlers import to_wsgi
from .listener import ENV_PUBLIC_URL, Listener
from .origins import ENV_LISTENER_DOMAIN, check_listener_domain, label
from .routing import check_id, public_path, validate_prefix
from .sharing import Sharing
from .terms import Terms

if t.TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .dispatch import Dispatcher
    from .seam import Directory, Registered

__all__ = ["App", "Listener", "Registry", "default_registry"]

# The session the running code belongs to, bound by Registry.session(). It is
# a property of the code's context, like the owner of a Livebook process, so
# it is shared by every registry.
_bound_session: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "wsgi_proxy_listen_session", default=None
)


def _bound(needed: str) -> tuple[str, str | None]:
    """The session (and app) bound by :meth:`Registry.session`; raise ``needed`` without."""
    bound = _bound_session.get()
    if bound is None:
        raise LookupError(f"{needed}, or call it inside 'with registry.session(...):'")
    return bound


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

    apps: Apps
    """The apps of this registry: declarations, members, starts, idle shutdown."""

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
        listener_domain: str | None = None,
    ) -> None:
        self._prefix = validate_prefix(prefix)
        if listener_domain is None:
            listener_domain = os.environ.get(ENV_LISTENER_DOMAIN) or None
        self.listener_domain = check_listener_domain(listener_domain)
        """The domain under which each session and app has an origin of its own, or
        ``None`` (see :mod:`wsgi_proxy_listen.origins`): ``listener_domain``, else
        ``WSGI_PROXY_LISTEN_LISTENER_DOMAIN``. :meth:`public_url` builds with it."""
        self._lock = threading.Lock()
        self._listeners: dict[str, Listener] = {}
        self.get = self._listeners.get
        self._sharing = Sharing(self, self._listeners.get, runtime)
        self.apps = Apps(
            self._sharing, self.url, f"wsgi_proxy_listen idle sessions {id(self):#x}", self._lock
        )
        _registries.add(self)
        self._sharing.join(directory, secret)

    @property
    def prefix(self) -> str:
        """The path under which listeners are reachable, such as ``/proxy``. It can be
        changed (the framework integrations set it from their configuration) until a
        :class:`~wsgi_proxy_listen.ProxyMiddleware` uses this registry; after that,
        changing it raises :exc:`RuntimeError`."""
        return self._prefix

    @prefix.setter
    def prefix(self, prefix: str) -> None:
        prefix = validate_prefix(prefix)
        with self._lock:
            if self._sharing.routed and prefix != self._prefix:
                raise RuntimeError(
                    f"cannot change the prefix of {self!r} to {prefix!r}: a ProxyMiddleware"
                    " already routes with it; set the prefix before wrapping the app, or use"
                    " a Registry(prefix=...) of its own"
                )
            self._prefix = prefix

    def use_prefix(self, dispatcher: Dispatcher | None = None) -> str:
        """Freeze the prefix and return it: a :class:`~wsgi_proxy_listen.ProxyMiddleware`
        routes with it from now on, and requests that other processes forward here get
        ``dispatcher``'s options (the middleware's). Called by the middleware."""
        with self._lock:
            self._sharing.route_with(dispatcher)
            return self._prefix

    @property
    def runtime(self) -> bool:
        """Whether this process is a *runtime* (a notebook kernel, a job worker, a
        script: it serves no web requests, and the host's workers reach its listeners
        through the directory), where ``listen()`` publishes at once; in a web worker,
        listeners registered before it serves are start-up listeners, local in every
        worker. Unless set (``True`` or ``False``, also by :meth:`connect` or
        ``WSGI_PROXY_LISTEN_RUNTIME``), a process is a runtime while no middleware
        routes with this registry and no WSGI server it knows runs the process: see
        the runtimes guide for when to say which."""
        return self._sharing.runtime

    @runtime.setter
    def runtime(self, runtime: bool | None) -> None:
        self._sharing.runtime = runtime

    def terms_of(self, listener: Registered) -> Terms:
        """The terms of ``listener``, as declared: its own, else its app's (see
        :mod:`wsgi_proxy_listen.terms`)."""
        return self.apps.terms_of(listener)

    def serve_forwarded(
        self, environ: WSGIEnvironment, start_response: StartResponse, session: str, prefix: str
    ) -> Iterable[bytes] | None:
        """Answer a request that another process, routing with ``prefix``, forwarded
        here for ``session``, with the options of the middleware that routes with this
        registry (the defaults where none does): see
        :func:`~wsgi_proxy_listen.dispatch.serve_forwarded`. The directory's internal
        endpoint calls it."""
        return self._sharing.serve_forwarded(environ, start_response, session, prefix)

    @property
    def directory(self) -> Directory | None:
        """The directory that shares this registry's listeners, or ``None``; reading it
        connects the one the environment names (:meth:`connect_from_environment`)."""
        return self._sharing.directory

    @property
    def directory_name(self) -> str | None:
        """The name the directory was given by (a folder path or a URL), if any."""
        return self._sharing.directory_name

    @property
    def local_only(self) -> bool:
        """Whether this registry's listeners can be reached only from inside this
        process: no directory shares them (nor does the environment name one), and no
        middleware routes with it here. A notebook kernel started without
        ``WSGI_PROXY_LISTEN_DIRECTORY`` is such a process: its ``listen()`` says so in a
        warning, and a listener's link in the notebook says so too."""
        return self._sharing.local_only

    @property
    def connected(self) -> bool:
        """Whether the registry has a directory already (reading it connects nothing)."""
        return self._sharing.connected

    def connect(
        self,
        directory: Directory | str,
        *,
        secret: str | bytes | None = None,
        runtime: bool | None = None,
    ) -> None:
        """Share this registry's run-time listeners through ``directory``, named as for
        :class:`Registry` (listeners registered before stay local to this process);
        ``runtime`` sets :attr:`runtime` unless ``None``. It comes before the
        environment's directory (:meth:`connect_from_environment`); connecting again
        to the same name with the same secret changes nothing.

        :raises RuntimeError: the registry has another directory already, or a
            middleware routes with it.
        :raises ValueError: ``directory`` names no directory (see
            :func:`~wsgi_proxy_listen.naming.open_directory`).
        """
        self._sharing.connect(directory, secret=secret, runtime=runtime)

    def connect_from_environment(self) -> None:
        """Connect this registry to the directory that ``WSGI_PROXY_LISTEN_DIRECTORY``
        names (with ``WSGI_PROXY_LISTEN_SECRET`` and ``WSGI_PROXY_LISTEN_RUNTIME``)
        when its directory is first needed (by a middleware, a ``listen()`` in a
        runtime, or reading :attr:`directory`), so that a :meth:`connect` or a
        framework's settings may still come first. The package calls it for
        :data:`default_registry` on import; a wrong value raises :exc:`ValueError`
        naming the variable when the directory is needed.
        """
        self._sharing.connect_from_environment()

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
        access: str | Collection[str] | None = None,
        sandbox: bool | None = None,
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
        :param access: who may reach it: ``"public"``, ``"authenticated"`` (any user
            logged in to the host) or a collection of user ids; ``None`` takes its
            app's, else the middleware's ``default_access`` (see
            :mod:`wsgi_proxy_listen.access`).
        :param sandbox: whether its answers carry a ``Content-Security-Policy``
            that gives its pages an origin of their own (see
            :mod:`wsgi_proxy_listen.terms`); ``None`` takes its app's, else the
            middleware's ``sandbox``.
        :raises LookupError: no session was given or bound.
        :raises ValueError: an invalid session id, app slug, limit or access.
        :raises TypeError: a handler that cannot be resolved (see
            :func:`~wsgi_proxy_listen.handlers.to_wsgi`), or an argument of the
            wrong type.
        """
        if session is None:
            session, bound_app = _bound("listen() needs a session: pass session='...'")
            if app is None:
                app = bound_app
        check_id("session id", session)
        if app is not None:
            check_id("app slug", app)
        check_limit("max_concurrency", max_concurrency)
        terms = Terms.checked(access, sandbox)
        wsgi_app = to_wsgi(handler, kind=kind, request_class=request_class, options=options)
        sharing = self._sharing
        if sharing.active:
            sharing.before_listen()  # before the listener shows: it may raise
        listener = Listener(self, session, app, handler, wsgi_app, max_concurrency, terms)
        with self._lock:
            replaced = self._listeners.get(session)
            # Lookups take no lock, so every intermediate state must be one they can
            # read: leave an app the session quits before the new listener shows,
            # and stay in an app it keeps (its current member never goes missing).
            if replaced is not None and replaced.app != app:
                self.apps.leave(replaced)
            self._listeners[session] = listener
            if app is not None:
                self.apps.join(listener)
        if replaced is None and metrics.ENABLED:
            metrics.listeners(1)
        say("listen", "listener of session %r registered", session, session=session, app=app)
        if sharing.active:
            sharing.listened(listener)
        else:
            sharing.listened_alone()
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
            session, app = _bound(
                "url() needs a session or an app: pass session='...' or app='...'"
            )
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__!r}")
        if path and not path.startswith("/"):
            raise ValueError(f"invalid path {path!r}: use '' or a path that starts with '/'")
        route = ""
        if app is not None:
            route = f"/apps/{check_id('app slug', app)}"
        if session is not None:
            route += f"/sessions/{check_id('session id', session)}"
        script_name = "" if environ is None else environ.get("SCRIPT_NAME", "")
        return public_path(script_name, self._prefix + route + path)

    def public_url(
        self, *, session: str | None = None, app: str | None = None, path: str = "/"
    ) -> str:
        """The absolute URL of a route (see :meth:`url` for the arguments), for a
        notebook or a message to show: on the route's own origin with a
        :attr:`listener_domain` (its scheme that of ``WSGI_PROXY_LISTEN_PUBLIC_URL``,
        else ``https``), else under ``WSGI_PROXY_LISTEN_PUBLIC_URL``; without either,
        the path alone."""
        url = self.url(session=session, app=app, path=path)
        public = os.environ.get(ENV_PUBLIC_URL, "").rstrip("/")
        if self.listener_domain is None:
            return public + url
        if session is None and app is None:
            session, app = _bound("public_url() needs a session or an app")
        kind, id = ("app", app) if app is not None else ("session", session)
        scheme = urlsplit(public).scheme or "https"
        return f"{scheme}://{label(kind, t.cast(str, id))}.{self.listener_domain}{url}"

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
            if listener.app is not None:
                self.apps.leave(listener)
        if metrics.ENABLED:
            metrics.listeners(-1)
        say(
            "close",
            "listener of session %r removed",
            listener.session,
            session=listener.session,
            app=listener.app,
        )
        if self._sharing.active:
            self._sharing.removed(listener)
        return True

    @contextmanager
    def session(self, session: str, *, app: str | None = None) -> Iterator[None]:
        """Bind ``session`` (and ``app``) for ``listen()`` calls in this context.

        The binding lives in a :class:`contextvars.ContextVar`: it follows the
        thread or asyncio task that entered the block and is shared by every
        registry, so the module-level :func:`~wsgi_proxy_listen.listen` sees it.
        """
        check_id("session id", session)
        if app is not None:
            check_id("app slug", app)
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
        access: str | Collection[str] | None = None,
        sandbox: bool | None = None,
    ) -> App:
        """Declare the app ``slug``; a later call replaces the declaration (and a start
        that runs goes on: requests wait for it, never launch a second one). Each option
        is described with the attribute of that name of the :class:`App` it returns.

        :raises ValueError: an invalid slug, timeout, limit or access, or ``stop``
            without ``idle_timeout``.
        :raises TypeError: an option of the wrong type.
        """
        return self.apps.declare(
            App(
                self.apps,
                check_id("app slug", slug),
                multi_session=multi_session,
                start=start,
                start_timeout=start_timeout,
                max_waiting=max_waiting,
                idle_timeout=idle_timeout,
                stop=stop,
                access=access,
                sandbox=sandbox,
            )
        )

    def unregister_app(self, slug: str) -> None:
        """Forget the declaration of ``slug``.

        Sessions still listening with that slug keep it as an undeclared app.

        :raises LookupError: the app was never registered.
        """
        self.apps.forget(slug)

    def get_app(self, slug: str) -> App | None:
        """The declaration of ``slug``, or ``None``. Takes no lock."""
        return self.apps.get(slug)

    def current_listener(self, app: str) -> Listener | None:
        """The listener of the newest member of ``app`` in this process, or ``None``.

        Takes no lock and reads one dict: while members come and go, a request
        sees a listener that is, or just was, the app's newest, never ``None``
        while another member is live.
        """
        return self.apps.current(app)

    def start_app(self, slug: str) -> Listener | None:
        """Run the app's ``start`` callable, or join the start already running (one at a
        time per app in this process; across processes, see :mod:`wsgi_proxy_listen.apps`).
        The caller waits up to the app's ``start_timeout`` and gets the app's current
        listener, or ``None`` when the start failed, timed out or registered nothing
        (the next call tries again), or ``max_waiting`` requests wait for it already."""
        return self.apps.start(slug)

    def close_idle(self, now: float | None = None) -> list[Listener]:
        """Close the members of apps with an ``idle_timeout`` that served no request for
        that long at ``now`` (:func:`time.monotonic`, by default the present), as a
        thread of the registry does by itself; returns them. Their app's ``stop`` runs
        first, so a listener may be closed a moment after this returns."""
        return self.apps.close_idle(now)

    def close(self) -> None:
        """Close every listener, and the directory if there is one: this process's
        listeners are withdrawn from the others, the directory's threads and sockets
        stop. What :func:`~wsgi_proxy_listen.serve_forever` does when it returns."""
        for listener in list(self):
            listener.close()
        self._sharing.close()

    def _after_fork(self) -> None:
        """In a forked child: the parent's threads are not here, and a lock one of them
        held would stay held; the child serves none of the parent's requests."""
        self._lock = threading.Lock()
        self._sharing.after_fork()
        self.apps.after_fork(self._lock)
        for listener in self._listeners.values():
            listener.after_fork()

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
