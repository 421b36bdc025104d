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
from collections.abc import Collection, Iterable

from . import routing
from .access import PUBLIC, Authenticate, Gate, LoginUrl, Refusal
from .answers import NOT_FOUND, Answer, respond
from .dispatch import Dispatcher, is_bodyless
from .registry import Listener, Registry, default_registry
from .routing import plain_session_route
from .terms import Terms

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .seam import Destination, Directory

__all__ = ["ProxyMiddleware"]

logger = logging.getLogger("wsgi_proxy_listen")


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
    :param forward_cookies: which of the browser's cookies a listener
        receives: ``True``, all of them; ``False``, none (the ``Cookie`` header
        is removed); or a collection of cookie names to withhold, such as the
        host's session and CSRF cookies, so that listeners still get their
        own. It keeps host cookies out of listener code that logs, echoes or
        forwards what it receives; it is no barrier to code that runs in the
        host's process (see the Security guide). Whatever it is,
        a cookie a listener sets reaches only the listener's own path.
    :param max_concurrency: the most requests one listener serves at once,
        unless it has a limit of its own (``listen(..., max_concurrency=N)``);
        more get 503 with ``Retry-After`` at once, so that a hanging listener
        cannot take every thread of the server. With a directory, it also
        bounds the requests forwarded at once to a listener of another process.
        ``None``, the default, sets no limit; with one, the listener's iterable
        is wrapped to count it until it is closed.
    :param authenticate: the host's login, ``authenticate(environ)``: the id of the
        user logged in to the host for this request, or ``None``. It decides who
        reaches listeners that are not public, and the user who got in reaches the
        listener as ``REMOTE_USER`` (then no ``REMOTE_USER`` of the server's does).
        ``None``: nobody is logged in. See :mod:`wsgi_proxy_listen.access`.
    :param default_access: the access of a listener (and app) that declares none:
        ``"public"`` (the default), ``"authenticated"`` or a collection of user ids.
    :param login_url: where a browser that is not logged in is sent (302, with
        ``next=`` the path it asked for): a path, a URL, or a callable that builds
        one from the environ; ``None`` answers 401.
    :param sandbox: whether the answers of a listener (and app) that does not say
        otherwise carry a ``Content-Security-Policy`` that gives its pages an origin
        of their own, which cannot act as the host's user (see
        :mod:`wsgi_proxy_listen.terms`).
    """

    def __init__(
        self,
        app: WSGIApplication,
        registry: Registry | None = None,
        *,
        max_content_length: int | None = None,
        forward_cookies: bool | Collection[str] = True,
        max_concurrency: int | None = None,
        authenticate: Authenticate | str | None = None,
        default_access: str | Collection[str] = PUBLIC,
        login_url: LoginUrl | None = None,
        sandbox: bool = False,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI application, not {app!r}")
        if registry is None:
            registry = default_registry
        elif not isinstance(registry, Registry):
            raise TypeError(f"registry must be a Registry or None, not {registry!r}")
        gate = Gate(authenticate, default_access, login_url)
        if not isinstance(sandbox, bool):
            raise TypeError(f"sandbox must be True or False, not {sandbox!r}")
        dispatcher = Dispatcher(
            max_content_length=max_content_length,
            forward_cookies=forward_cookies,
            max_concurrency=max_concurrency,
            users=gate.authenticate is not None,
        )
        self.app = app
        self.registry = registry
        self.max_content_length = max_content_length
        self.forward_cookies = dispatcher.forward_cookies
        self.max_concurrency = max_concurrency
        self.authenticate = gate.authenticate
        self.default_access = gate.default_access
        self.login_url = gate.login_url
        self.sandbox = sandbox
        self._gate = gate
        # What a listener that declares nothing gets.
        self._defaults = Terms(gate.default_access, sandbox)
        # Whether such a listener is public and not sandboxed: then a listener that
        # declares nothing takes the plain dispatch, and nobody is asked who they are.
        self._plain = gate.public and not sandbox
        self._terms_of = registry.terms_of
        self._dispatcher = dispatcher
        self._dispatch = dispatcher.dispatch
        self._prefix = prefix = registry.use_prefix(dispatcher)
        self._base = prefix + "/"
        self._sessions = prefix + "/sessions/"
        self._owned = (self._sessions, prefix + "/apps/")
        self._local = registry.get
        self._directory = registry.directory

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        directory = self._directory
        if directory is not None and not directory.serving:
            directory.start_serving()
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith(self._base):
            return self.app(environ, start_response)
        # The common case, a plain session route to a listener of this process, costs a
        # few string operations and one dict read; anything else takes the checked path.
        plain = plain_session_route(
            path, self._sessions, environ.get("RAW_URI") or environ.get("REQUEST_URI")
        )
        if plain is not None:
            listener = self._local(plain[0])
            if listener is not None:
                if self._plain and listener.plain:
                    return self._dispatch(listener, environ, start_response, path, plain[1])
                return self._serve(listener, environ, start_response, path, plain[1], None)
            if directory is not None and routing.is_valid_id(plain[0]):
                return self._remote(directory, plain[0], environ, start_response, path, plain[1])
        if not path.startswith(self._owned):
            return self.app(environ, start_response)
        return self._checked(environ, start_response, path)

    def serve_forwarded(
        self, environ: WSGIEnvironment, start_response: StartResponse, session: str, prefix: str
    ) -> Iterable[bytes] | None:
        """Answer a request that another process, routing with ``prefix``, forwarded
        here for ``session``: :meth:`Registry.serve_forwarded
        <wsgi_proxy_listen.Registry.serve_forwarded>`, which uses this middleware's
        options."""
        return self.registry.serve_forwarded(environ, start_response, session, prefix)

    def _checked(
        self, environ: WSGIEnvironment, start_response: StartResponse, path: str
    ) -> Iterable[bytes]:
        """Every check, in order: dot segments (400), routing segments and ids (404),
        the raw URI (404), the lookup (404, 400, 503), who may come in (302, 401,
        403), then the body limit (413)."""
        route = self._route(environ, path)
        if isinstance(route, Answer):
            return respond(start_response, route.status)
        user = None
        if route.kind == routing.APP:
            # Who may reach the app is decided before its generic path finds (and so
            # maybe starts) a member: strangers start no app they may not reach.
            declaration = self.registry.apps.get(t.cast(str, route.app))
            if declaration is not None:
                verdict = self._gate.verdict(declaration.access, environ)
                if isinstance(verdict, Refusal):
                    return verdict.answer(start_response)
                user = verdict
        found = self._find(route, environ)
        if isinstance(found, Listener):
            return self._serve(found, environ, start_response, path, route.split, user)
        if isinstance(found, Answer):
            if found is NOT_FOUND and self._directory is None and environ.get("wsgi.multiprocess"):
                _warn_once_per_process()
            return respond(start_response, found.status)
        answered = self._forward(found, environ, start_response, path, route.split, user)
        if answered is None and route.kind == routing.APP and is_bodyless(environ):
            # The app's member was closed meanwhile (an idle one, say): once more, to the
            # member after it or a new one. A request with a body is never sent twice.
            again = self.registry.apps.after_miss(t.cast(str, route.app), found)
            if isinstance(again, Listener):
                return self._serve(again, environ, start_response, path, route.split, user)
            if isinstance(again, Answer):
                return respond(start_response, again.status)
            answered = self._forward(again, environ, start_response, path, route.split, user)
        return respond(start_response, 404) if answered is None else answered

    def _remote(
        self,
        directory: Directory,
        session: str,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        split: int,
    ) -> Iterable[bytes]:
        """A plain session route to a listener that this process does not have."""
        found = directory.locate(session, environ)
        if isinstance(found, Answer):
            return respond(start_response, found.status)
        answered = self._forward(found, environ, start_response, path, split, None)
        return respond(start_response, 404) if answered is None else answered

    def _serve(
        self,
        listener: Listener,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        split: int,
        user: str | None,
    ) -> Iterable[bytes]:
        """A listener of this process, for whoever may reach it (``user``: who was let
        in already, on the way), on its terms."""
        terms = self._terms_of(listener).over(self._defaults)
        verdict = self._gate.verdict(terms.access, environ, user)
        if isinstance(verdict, Refusal):
            return verdict.answer(start_response)
        return self._dispatch(
            listener, environ, start_response, path, split, verdict, bool(terms.sandbox)
        )

    def _forward(
        self,
        destination: Destination,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        split: int,
        user: str | None,
    ) -> Iterable[bytes] | None:
        """A listener of another process, on its terms, applied here: those its owner
        published, else its app's here, else this middleware's."""
        terms = destination.terms.over(self.registry.apps.terms(destination.app))
        terms = terms.over(self._defaults)
        verdict = self._gate.verdict(terms.access, environ, user)
        if isinstance(verdict, Refusal):
            return verdict.answer(start_response)
        return self._dispatcher.forward(
            destination, environ, start_response, path, split, verdict, bool(terms.sandbox)
        )

    def _route(self, environ: WSGIEnvironment, path: str) -> routing.Route | Answer:
        """The route of a path under the prefix, or the answer for a malformed one."""
        return routing.route(
            path,
            self._prefix,
            environ.get("SCRIPT_NAME", ""),
            environ.get("RAW_URI") or environ.get("REQUEST_URI"),
        )

    def _find(
        self, route: routing.Route, environ: WSGIEnvironment
    ) -> Listener | Answer | Destination:
        """The listener for ``route``, in this process or another, or the answer."""
        if route.kind == routing.APP:
            return self.registry.apps.find(t.cast(str, route.app))
        session = t.cast(str, route.session)
        found: Listener | Destination | None = self._local(session)
        if found is None:
            if self._directory is None:
                return NOT_FOUND
            located = self._directory.locate(session, environ)
            if isinstance(located, Answer):
                return located
            found = located
        # A session has one owner: its listener, here or elsewhere, is the one, in the
        # app or not.
        return found if route.app in (None, found.app) else NOT_FOUND

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
