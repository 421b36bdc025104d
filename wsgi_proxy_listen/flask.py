"""
Flask
=====

:class:`ProxyListen` plugs the middleware into a Flask app the way Flask
extensions plug in: at once or with an app factory.

.. code-block:: python

    from flask import Flask
    from wsgi_proxy_listen.flask import ProxyListen

    proxy = ProxyListen()

    def create_app():
        app = Flask(__name__)
        app.config["WSGI_PROXY_LISTEN"] = {"MAX_CONTENT_LENGTH": 10 * 1024 * 1024}
        proxy.init_app(app)
        return app

``init_app`` wraps ``app.wsgi_app``, so ``app.test_client()`` and every server
go through the middleware. ``app.config["WSGI_PROXY_LISTEN"]`` takes the keys
``PREFIX``, ``MAX_CONTENT_LENGTH``, ``FORWARD_COOKIES``, ``MAX_CONCURRENCY``,
``DIRECTORY``, ``SECRET``, ``AUTHENTICATE``, ``DEFAULT_ACCESS`` and
``LOGIN_URL``, the same as Django's ``settings.WSGI_PROXY_LISTEN``.

The host's login comes by itself from Flask-Login, when the app uses it (its
``LoginManager`` was set up before ``init_app``): who is logged in is read from
the app's own session (its ``session_interface``) with Flask-Login's loaders,
the user's ``get_id()`` is the id, and browsers are sent to
``login_manager.login_view``. Reading it pushes a request context, as a
request does, but runs no view and no ``before_request`` hook (the app's
teardown functions run when it is popped). ``AUTHENTICATE`` replaces it;
``False`` turns it off.

The package adds commands to Flask's command line, ``flask wsgi-proxy-listen
status`` and ``flask wsgi-proxy-listen check``: :func:`wsgi_proxy_listen.cli.status`
and :func:`wsgi_proxy_listen.cli.check` for the app's directory.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

import click
from flask import Flask
from flask.cli import with_appcontext

from .cli import UNREACHABLE, check, status
from .middleware import ProxyMiddleware
from .registry import Registry, default_registry
from .settings import Login, middleware_from_config, problems

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["ProxyListen", "cli"]

EXTENSION = "wsgi_proxy_listen"


class ProxyState(t.NamedTuple):
    """What ``init_app`` keeps in ``app.extensions["wsgi_proxy_listen"]``."""

    registry: Registry
    middleware: ProxyMiddleware


class ProxyListen:
    """The Flask extension. It keeps no reference to an app, so one instance
    serves several apps.

    :param app: an app to set up at once; or call :meth:`init_app` later.
    :type app: ~flask.Flask | None
    :param registry: where listeners live; ``None`` means
        :data:`~wsgi_proxy_listen.default_registry`.
    """

    def __init__(self, app: Flask | None = None, *, registry: Registry | None = None) -> None:
        if registry is not None and not isinstance(registry, Registry):
            raise TypeError(f"registry must be a Registry or None, not {registry!r}")
        self.registry = default_registry if registry is None else registry
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` in a :class:`~wsgi_proxy_listen.ProxyMiddleware`.

        :raises RuntimeError: the app was set up already.
        :raises ValueError: ``app.config["WSGI_PROXY_LISTEN"]`` is wrong.
        """
        if EXTENSION in app.extensions:
            raise RuntimeError(
                f"a ProxyListen instance is already registered on the app {app.name!r}:"
                " import and use that instance instead"
            )
        middleware = middleware_from_config(
            app.wsgi_app,
            self.registry,
            app.config.get("WSGI_PROXY_LISTEN"),
            'app.config["WSGI_PROXY_LISTEN"]',
            login=flask_login(app),
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION] = ProxyState(self.registry, middleware)

    def __repr__(self) -> str:
        return f"<ProxyListen registry={self.registry!r}>"


def flask_login(app: Flask) -> Login | None:
    """The host's login through Flask-Login, if ``app`` uses it (see the module)."""
    manager = getattr(app, "login_manager", None)
    if manager is None:
        return None
    import flask_login

    def authenticate(environ: WSGIEnvironment) -> str | None:
        with app.request_context(environ):
            user = flask_login.current_user
            if not user.is_authenticated:
                return None
            return str(user.get_id())

    def login_url(environ: WSGIEnvironment) -> str:
        with app.request_context(environ):
            return str(flask_login.login_url(manager.login_view))

    return Login(authenticate, login_url if manager.login_view else None)


@click.group("wsgi-proxy-listen")
def cli() -> None:
    """Look into the app's wsgi_proxy_listen directory: ``flask wsgi-proxy-listen status``
    and ``flask wsgi-proxy-listen check`` (see :mod:`wsgi_proxy_listen.cli`), with the
    app's ``DIRECTORY`` and ``SECRET`` settings before the environment's. Flask finds
    the group through the package's ``flask.commands`` entry point."""


def _with_app_settings(
    directory: str | None, secret: str | None, namespace: str | None
) -> dict[str, t.Any]:
    """The command line's directory, secret and namespace, each else the app's setting
    (exits with one line if the settings are no dict)."""
    from flask import current_app

    config = current_app.config.get("WSGI_PROXY_LISTEN") or {}
    if not isinstance(config, Mapping):
        click.echo(f'app.config["WSGI_PROXY_LISTEN"]: {problems(config)[0].message}', err=True)
        raise SystemExit(UNREACHABLE)
    return {
        "name": directory or config.get("DIRECTORY"),
        "secret": secret or config.get("SECRET"),
        "namespace": namespace or config.get("NAMESPACE"),
    }


_NAMESPACE_HELP = "A Redis deployment's namespace: read only it."


@cli.command("status")
@click.argument("directory", required=False)
@click.option("--secret", help="A Redis deployment's secret: read only its namespace.")
@click.option("--namespace", help=_NAMESPACE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@with_appcontext
def status_command(
    directory: str | None, secret: str | None, namespace: str | None, as_json: bool
) -> None:
    """List the live listeners of DIRECTORY: by default the app's DIRECTORY setting,
    else WSGI_PROXY_LISTEN_DIRECTORY."""
    raise SystemExit(status(**_with_app_settings(directory, secret, namespace), as_json=as_json))


@cli.command("check")
@click.argument("directory", required=False)
@click.option("--secret", help="A Redis deployment's secret: read only its namespace.")
@click.option("--namespace", help=_NAMESPACE_HELP)
@with_appcontext
def check_command(directory: str | None, secret: str | None, namespace: str | None) -> None:
    """Exit 0 if DIRECTORY (by default the app's) answers, 2 with one line if not."""
    raise SystemExit(check(**_with_app_settings(directory, secret, namespace)))
