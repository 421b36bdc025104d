"""Hosts with a real login in front of their listeners, for tests/test_browser.py and
tests/test_runtimes.py, each in a process of its own:

    python -m tests.support.login_hosts flask PORT    # Flask-Login, found by ProxyListen
    python -m tests.support.login_hosts django PORT   # django.contrib.auth, found by
                                                      # wsgi_proxy_listen.django

Both know the users ``alice`` and ``bob`` (password: the name, then ``-password``), log
in through a form at the framework's usual place (``/login``, ``/accounts/login/``) that
goes back to ``next``, and serve three listeners that show who they see (``REMOTE_USER``):
``alices`` (``access={"alice"}``), ``members`` (``"authenticated"``) and ``open`` (public).

``app`` is a third host for gunicorn (``tests.support.login_hosts:app``): Flask, its login
the ``X-User`` header (:func:`header_user`, named by the ``AUTHENTICATE`` setting), its
listeners in runtimes elsewhere.
"""

from __future__ import annotations

import os
import sys
import tempfile
import typing as t

import flask
import markupsafe
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request

from wsgi_proxy_listen import Registry
from wsgi_proxy_listen.flask import ProxyListen

NO_ICON = '<link rel="icon" href="data:,">'
USERS = ("alice", "bob")
FORM = (
    f"<!doctype html><head>{NO_ICON}<title>log in</title></head>"
    '<form method="post"><input name="username"><input name="password" type="password">'
    "{token}<button>log in</button></form>"
)


def who(request: Request) -> flask.Response:
    """A listener's page: who reached it, and where."""
    user = markupsafe.escape(request.remote_user or "nobody")
    return flask.Response(
        f'<!doctype html><head>{NO_ICON}</head><p id="user">{user}</p>'
        f'<p id="path">{markupsafe.escape(request.full_path)}</p>',
        content_type="text/html",
    )


def listeners(registry: Registry) -> None:
    registry.listen(who, session="alices", access={"alice"})
    registry.listen(who, session="members", access="authenticated")
    registry.listen(who, session="open")


def safe_next(target: str | None) -> str:
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


def flask_host(registry: Registry) -> flask.Flask:
    import flask_login

    app = flask.Flask("login-host")
    app.secret_key = "login-host-secret"
    manager = flask_login.LoginManager(app)
    manager.login_view = "login"

    class User(flask_login.UserMixin):  # type: ignore[misc]  # Flask-Login ships no types
        def __init__(self, name: str) -> None:
            self.id = name

    def load(name: str) -> User | None:
        return User(name) if name in USERS else None

    manager.user_loader(load)  # not as a decorator: Flask-Login's is untyped

    @app.route("/login", methods=["GET", "POST"])
    def login() -> t.Any:
        form = flask.request.form
        if flask.request.method == "POST" and form["password"] == f"{form['username']}-password":
            flask_login.login_user(User(form["username"]))
            return flask.redirect(safe_next(flask.request.args.get("next")))
        return FORM.format(token="")

    @app.get("/")
    def index() -> str:
        return f"<!doctype html><head>{NO_ICON}</head><p>host</p>"

    @app.get("/favicon.ico")  # asked for by a page of the middleware's (plain text)
    def favicon() -> tuple[str, int]:
        return "", 204

    ProxyListen(app, registry=registry)
    return app


def django_host(registry: Registry) -> t.Any:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-login-host-secret",
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.path.join(tempfile.mkdtemp(), "login.sqlite3"),
            }
        },
        USE_TZ=True,
    )
    django.setup()
    from django.contrib.auth.models import User  # the user model: no AUTH_USER_MODEL
    from django.core.management import call_command

    from wsgi_proxy_listen.django import get_wsgi_application

    call_command("migrate", verbosity=0)
    for name in USERS:
        User.objects.create_user(name, password=f"{name}-password")
    return get_wsgi_application(registry=registry)


def django_login_view(request: t.Any) -> t.Any:
    from django.contrib.auth import authenticate, login
    from django.http import HttpResponse, HttpResponseRedirect
    from django.middleware.csrf import get_token

    if request.method == "POST":
        user = authenticate(
            request, username=request.POST["username"], password=request.POST["password"]
        )
        if user is not None:
            login(request, user)
            return HttpResponseRedirect(safe_next(request.GET.get("next")))
    token = f'<input type="hidden" name="csrfmiddlewaretoken" value="{get_token(request)}">'
    return HttpResponse(FORM.format(token=token))


def __getattr__(name: str) -> t.Any:
    """Django's URLconf (``ROOT_URLCONF`` is this module), built once Django is set up."""
    if name == "urlpatterns":
        from django.http import HttpResponse
        from django.urls import path

        index = HttpResponse(f"<!doctype html><head>{NO_ICON}</head><p>host</p>")
        return [
            path("", lambda request: index),
            path("favicon.ico", lambda request: HttpResponse(status=204)),
            path("accounts/login/", django_login_view),
        ]
    raise AttributeError(name)


def header_user(environ: dict[str, t.Any]) -> str | None:
    """The login of the gunicorn host: whoever the X-User header names."""
    return environ.get("HTTP_X_USER") or None


app = flask.Flask("header-login-host")
app.config["WSGI_PROXY_LISTEN"] = {"AUTHENTICATE": f"{__name__}.header_user"}


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())


if os.environ.get("WSGI_PROXY_LISTEN_DIRECTORY"):  # under gunicorn, as the cluster tests run it
    ProxyListen(app)


def main(kind: str, port: int) -> None:
    registry = Registry()
    listeners(registry)
    host = flask_host(registry) if kind == "flask" else django_host(registry)
    print("ready", flush=True)
    run_simple("127.0.0.1", port, host, threaded=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
