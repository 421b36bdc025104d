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

from . import metrics as counting
from . import routing
from .access import (
    AUTHENTICATED,
    PUBLIC,
    UNAUTHORIZED,
    Authenticate,
    Gate,
    LoginUrl,
    Refusal,
    is_navigation,
)
from .answers import NOT_FOUND, Answer, respond
from .dispatch import Dispatcher, is_bodyless
from .exceptions import DirectoryUnavailable
from .listener import ENV_PUBLIC_URL
from .origins import (
    ENV_LISTENER_SECRET,
    LOGIN_PARAMETER,
    TOKEN_PARAMETER,
    Origins,
    SeveralLogins,
    check_listener_domain,
    label_of_route,
    take_parameter,
    with_parameter,
)
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
        is removed); or cookie names to withhold (any iterable), such as the
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
    :param listener_domain: serve each session and app from an origin of its own under
        this domain (``"listeners.example.com"``; see :mod:`wsgi_proxy_listen.origins`);
        ``None`` takes the registry's.
    :param listener_secret: signs the tokens and cookies of listener origins; ``None``
        takes ``WSGI_PROXY_LISTEN_LISTENER_SECRET``. Required with a listener domain.
    :param public_url: the host's own origin (``"https://notebooks.example.com"``),
        where a listener's origin sends a browser to log in; ``None`` takes
        ``WSGI_PROXY_LISTEN_PUBLIC_URL``. Required with a listener domain.
    :param metrics: whether to count requests to listener routes
        (:mod:`~wsgi_proxy_listen.metrics`); ``None``: when ``prometheus_client`` is
        installed (and ``WSGI_PROXY_LISTEN_METRICS`` is not ``0``).
    """

    def __init__(
        self,
        app: WSGIApplication,
        registry: Registry | None = None,
        *,
        max_content_length: int | None = None,
        forward_cookies: bool | Iterable[str] = True,
        max_concurrency: int | None = None,
        authenticate: Authenticate | str | None = None,
        default_access: str | Collection[str] = PUBLIC,
        login_url: LoginUrl | None = None,
        sandbox: bool = False,
        listener_domain: str | None = None,
        listener_secret: str | bytes | None = None,
        public_url: str | None = None,
        metrics: bool | None = None,
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
        domain = _listener_domain(registry, listener_domain)
        origins = None
        if domain is not None:
            secret = listener_secret or os.environ.get(ENV_LISTENER_SECRET)
            if not secret:
                raise ValueError(
                    "a listener domain needs a listener_secret (or"
                    f" {ENV_LISTENER_SECRET}), which signs the logins it carries: a secret"
                    " of its own, the same in every process of the host"
                )
            directory = registry.directory
            origins = Origins(
                domain,
                secret,
                public_url or os.environ.get(ENV_PUBLIC_URL, ""),
                # A used token is remembered where every process sees it.
                None if directory is None else directory.first_use,
            )
        dispatcher = Dispatcher(
            max_content_length=max_content_length,
            forward_cookies=forward_cookies,
            max_concurrency=max_concurrency,
            # Who the user is, the middleware says: the host's login, or a listener
            # origin's login cookie.
            users=gate.authenticate is not None or domain is not None,
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
        self._metrics = counting.wanted(metrics)
        self._count = "session" if self._metrics else None
        self._local = registry.get
        self._directory = registry.directory
        # The registry builds the listeners' public URLs with the same domain.
        registry.listener_domain = self.listener_domain = domain
        self._origins = origins
        if origins is not None:
            # On a listener's origin the user comes from its login cookie, given to
            # the gate as known; a request without one is nobody.
            self._origin_gate = Gate(_nobody, gate.default_access, log_in=self._back_to_host)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        directory = self._directory
        if directory is not None and not directory.serving:
            directory.start_serving()
        if self._origins is not None:
            return self._by_origin(self._origins, environ, start_response)
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
                    # Counted (with metrics) by the guard, where the status goes out.
                    return self._dispatch(
                        listener, environ, start_response, path, plain[1], count=self._count
                    )
                if self._metrics:
                    start_response = counting.Probe(start_response, "session")
                return self._serve(
                    listener, environ, start_response, path, plain[1], self._gate, None
                )
            if directory is not None and routing.is_valid_id(plain[0]):
                if self._metrics:
                    start_response = counting.Probe(start_response, "session")
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
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        gate: Gate | None = None,
        user: str | None = None,
    ) -> Iterable[bytes]:
        """Every check, in order: dot segments (400), routing segments and ids (404),
        the raw URI (404), the lookup (404, 400, 503), who may come in (302, 401,
        403), then the body limit (413). ``gate`` decides who may come in (the host's
        login by default), ``user`` is who came in already (a listener origin's)."""
        if self._metrics:
            start_response = counting.Probe(
                start_response, "session" if path.startswith(self._sessions) else "app"
            )
        route = self._route(environ, path)
        if isinstance(route, Answer):
            return respond(start_response, route.status)
        return self._routed(environ, start_response, path, route, gate or self._gate, user)

    def _routed(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        route: routing.Route,
        gate: Gate,
        user: str | None,
    ) -> Iterable[bytes]:
        if route.kind == routing.APP:
            # Who may reach the app is decided before its generic path finds (and so
            # maybe starts) a member: strangers start no app they may not reach.
            declaration = self.registry.apps.get(t.cast(str, route.app))
            if declaration is not None:
                verdict = gate.verdict(declaration.access, environ, user)
                if isinstance(verdict, Refusal):
                    return verdict.answer(start_response)
                if verdict is not None:  # a public app forgets nobody already let in
                    user = verdict
        found = self._find(route, environ)
        split = route.split
        if isinstance(found, Listener):
            return self._serve(found, environ, start_response, path, split, gate, user)
        if isinstance(found, Answer):
            if found is NOT_FOUND and self._directory is None and environ.get("wsgi.multiprocess"):
                _warn_once_per_process()
            return respond(start_response, found.status)
        answered = self._forward(found, environ, start_response, path, split, gate, user)
        if answered is None and route.kind == routing.APP and is_bodyless(environ):
            # The app's member was closed meanwhile (an idle one, say): once more, to the
            # member after it or a new one. A request with a body is never sent twice.
            again = self.registry.apps.after_miss(t.cast(str, route.app), found)
            if isinstance(again, Listener):
                return self._serve(again, environ, start_response, path, split, gate, user)
            if isinstance(again, Answer):
                return respond(start_response, again.status)
            answered = self._forward(again, environ, start_response, path, split, gate, user)
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
        answered = self._forward(found, environ, start_response, path, split, self._gate, None)
        return respond(start_response, 404) if answered is None else answered

    def _serve(
        self,
        listener: Listener,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
        split: int,
        gate: Gate,
        user: str | None,
    ) -> Iterable[bytes]:
        """A listener of this process, for whoever may reach it (``user``: who was let
        in already, on the way), on its terms."""
        terms = self._terms_of(listener).over(self._defaults)
        verdict = gate.verdict(terms.access, environ, user)
        if isinstance(verdict, Refusal):
            return verdict.answer(start_response)
        if self._metrics and type(start_response) is counting.Probe:
            start_response.where = "here"
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
        gate: Gate,
        user: str | None,
    ) -> Iterable[bytes] | None:
        """A listener of another process, on its terms, applied here: those its owner
        published, else its app's here, else this middleware's."""
        terms = self._published_terms(destination).over(self._defaults)
        verdict = gate.verdict(terms.access, environ, user)
        if isinstance(verdict, Refusal):
            return verdict.answer(start_response)
        if self._metrics and type(start_response) is counting.Probe:
            start_response.forwarded()
        return self._dispatcher.forward(
            destination, environ, start_response, path, split, verdict, bool(terms.sandbox)
        )

    def _published_terms(self, destination: Destination) -> Terms:
        return destination.terms.over(self.registry.apps.terms(destination.app))

    # -- origins of their own ---------------------------------------------------------------

    def _by_origin(
        self, origins: Origins, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """A request, with a listener domain: on the host's origin, listener paths are
        sent to their own origins; on a listener's origin, only its own paths are
        served, to the user its login cookie names (see :mod:`wsgi_proxy_listen.origins`)."""
        path: str = environ.get("PATH_INFO", "")
        origin = origins.label_of(environ)
        owned = path.startswith(self._owned)
        if owned and self._metrics:
            start_response = counting.Probe(
                start_response, "session" if path.startswith(self._sessions) else "app"
            )
        if origin is None:
            if not owned:
                return self.app(environ, start_response)
            return self._to_listener_origin(origins, environ, start_response, path)
        if not owned or not origin:
            if path == "/favicon.ico" and origin:
                # What a browser asks every origin for by itself: no error in the
                # console of every listener page (a page names its icon with <link>).
                return respond(start_response, 204)
            return respond(start_response, 404)
        route = self._route(environ, path)
        if isinstance(route, Answer):
            return respond(start_response, route.status)
        if label_of_route(route) != origin:
            return respond(start_response, 404)
        query, token = take_parameter(environ.get("QUERY_STRING", ""), TOKEN_PARAMETER)
        if token is not None:
            try:
                user = origins.redeem(token, origin)
            except DirectoryUnavailable:
                return respond(start_response, 503)
            if user is None:
                logger.info("a listener origin refused a forged, expired or used token")
                return respond(start_response, 403)
            back = origins.location(environ, origin, query=query)
            cookie = origins.set_cookie(user, origin)
            return respond(start_response, 302, extra=[("Location", back), ("Set-Cookie", cookie)])
        try:
            user = origins.user(environ, origin)
        except SeveralLogins:
            logger.warning(
                "a request to a listener origin carried several login cookies: another"
                " listener origin may have planted one (serve listener origins over"
                " HTTPS, where the cookie is __Host-); it was refused"
            )
            return respond(start_response, 403)
        inner = origins.without_cookie(environ)
        return self._routed(inner, start_response, path, route, self._origin_gate, user)

    def _to_listener_origin(
        self,
        origins: Origins,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        path: str,
    ) -> Iterable[bytes]:
        """A listener path on the host's origin: a navigation goes to the listener's
        origin, with a token for the user the host's login lets in; nothing else is
        served here."""
        route = self._route(environ, path)
        if isinstance(route, Answer):
            return respond(start_response, route.status)
        if not is_navigation(environ):
            return respond(start_response, 403)
        terms = self._declared_terms(route, environ)
        if isinstance(terms, Answer):
            return respond(start_response, terms.status)
        query, back = take_parameter(environ.get("QUERY_STRING", ""), LOGIN_PARAMETER)
        access = terms.over(self._defaults).access
        if back is not None and access == PUBLIC:
            # The listener's origin sent the browser back: who it is is needed there.
            access = AUTHENTICATED
        verdict = self._gate.verdict(access, environ)
        if isinstance(verdict, Refusal):
            return verdict.answer(start_response)
        origin = label_of_route(route)
        token = None if verdict is None else origins.token(verdict, origin)
        location = origins.location(environ, origin, query=query, token=token)
        return respond(start_response, 302, extra=[("Location", location)])

    def _declared_terms(self, route: routing.Route, environ: WSGIEnvironment) -> Terms | Answer:
        """The terms of the listener ``route`` leads to, without starting an app: an
        app's own, where it is declared here."""
        if route.kind == routing.APP:
            declaration = self.registry.apps.get(t.cast(str, route.app))
            if declaration is not None:
                return declaration.terms
        found = self._find(route, environ)
        if isinstance(found, Answer):
            return found
        if isinstance(found, Listener):
            return self._terms_of(found)
        return self._published_terms(found)

    def _back_to_host(self, environ: WSGIEnvironment) -> Refusal:
        """Nobody on a listener's origin: a navigation goes to the same path on the
        host's origin, to log in there; anything else gets 401."""
        if not is_navigation(environ):
            return UNAUTHORIZED
        query = with_parameter(environ.get("QUERY_STRING", ""), LOGIN_PARAMETER, "1")
        origins = t.cast(Origins, self._origins)
        return Refusal(302, origins.location(environ, "", query=query))

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


def _nobody(environ: WSGIEnvironment) -> None:
    """The login of a listener's origin for a request without a good login cookie."""
    return None


def _listener_domain(registry: Registry, given: str | None) -> str | None:
    """The middleware's listener domain: the one given, else the registry's. They must
    agree, so that the URLs listeners give match where they are served."""
    domain = check_listener_domain(given)
    if domain is None:
        return registry.listener_domain
    if registry.listener_domain not in (None, domain):
        raise ValueError(
            f"listener_domain {domain!r} differs from the registry's"
            f" {registry.listener_domain!r}: name it in one place"
        )
    return domain
