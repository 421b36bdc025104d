"""
wsgi_proxy_listen
=================

Let code running inside a WSGI host expose its own HTTP endpoints at run
time, the Python counterpart of Livebook's ``Kino.Proxy``.

.. code-block:: python

    from flask import Flask
    from werkzeug.wrappers import Response
    from wsgi_proxy_listen import ProxyMiddleware, listen

    app = Flask(__name__)
    app.wsgi_app = ProxyMiddleware(app.wsgi_app)

    def export(request):
        if request.path == "/export/data":
            return Response("a,b\\n1,2\\n", content_type="text/csv")
        return "use /export/data to get the report"

    handle = listen(export, session="report-1")   # served at /proxy/sessions/report-1/...
    handle.close()                                 # and gone again

The module-level functions work on :data:`default_registry`.
"""

from __future__ import annotations

import typing as t
from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager

from .exceptions import DirectoryUnavailable, InvalidResponse
from .middleware import ProxyMiddleware
from .registry import App, Listener, Registry, default_registry
from .runtime import connect, serve_forever

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "App",
    "DirectoryUnavailable",
    "InvalidResponse",
    "Listener",
    "ProxyMiddleware",
    "Registry",
    "close_session",
    "connect",
    "default_registry",
    "listen",
    "register_app",
    "serve_forever",
    "session",
    "unregister_app",
    "url",
]

__version__ = "0.1.0"


def listen(
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
    """:meth:`Registry.listen` on :data:`default_registry`."""
    return default_registry.listen(
        handler,
        session=session,
        app=app,
        kind=kind,
        request_class=request_class,
        options=options,
        max_concurrency=max_concurrency,
        access=access,
        sandbox=sandbox,
    )


def session(session: str, *, app: str | None = None) -> AbstractContextManager[None]:
    """:meth:`Registry.session` on :data:`default_registry`."""
    return default_registry.session(session, app=app)


def close_session(session: str) -> bool:
    """:meth:`Registry.close_session` on :data:`default_registry`."""
    return default_registry.close_session(session)


def register_app(
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
    """:meth:`Registry.register_app` on :data:`default_registry`."""
    return default_registry.register_app(
        slug,
        multi_session=multi_session,
        start=start,
        start_timeout=start_timeout,
        max_waiting=max_waiting,
        idle_timeout=idle_timeout,
        stop=stop,
        access=access,
        sandbox=sandbox,
    )


def unregister_app(slug: str) -> None:
    """:meth:`Registry.unregister_app` on :data:`default_registry`."""
    default_registry.unregister_app(slug)


def url(
    *,
    session: str | None = None,
    app: str | None = None,
    path: str = "/",
    environ: WSGIEnvironment | None = None,
) -> str:
    """:meth:`Registry.url` on :data:`default_registry`."""
    return default_registry.url(session=session, app=app, path=path, environ=environ)


# A platform that launches processes (notebook kernels, job workers, web workers) names
# the directory in their environment: the default registry connects to it when needed.
default_registry.connect_from_environment()
