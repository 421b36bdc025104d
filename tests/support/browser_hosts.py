"""Hosts that tests/test_browser.py drives in Chromium, each in a process of its own:

    python -m tests.support.browser_hosts shared PORT     # host cookies forwarded to listeners
    python -m tests.support.browser_hosts withheld PORT   # the host's session cookie withheld

Both are Flask hosts with a login (``session`` cookie, Path=/), and serve a Flask listener
whose own session cookie has the same name; the second also a Trac-like listener that
checks a form token against its cookie, and the Django admin, with a superuser ``admin``
(password ``admin-password``) in a fresh SQLite database.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import typing as t

import flask
import markupsafe
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import ProxyMiddleware, Registry

NO_ICON = '<link rel="icon" href="data:,">'


def host(registry: Registry, forward_cookies: t.Any) -> flask.Flask:
    app = flask.Flask("host")
    app.secret_key = "host-secret"

    @app.get("/login")
    def login_form() -> str:
        return (
            f"<!doctype html><head>{NO_ICON}<title>host</title></head>"
            '<form method="post"><input name="user"><button>log in</button></form>'
        )

    @app.post("/login")
    def login() -> Response:
        flask.session["user"] = flask.request.form["user"]
        return flask.redirect("/whoami")

    @app.get("/whoami")
    def whoami() -> str:
        user = flask.session.get("user", "nobody")
        return f'<!doctype html><head>{NO_ICON}</head><p id="user">{user}</p>'

    @app.get("/favicon.ico")
    def favicon() -> tuple[str, int]:
        return "", 204

    app.wsgi_app = ProxyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, registry, forward_cookies=forward_cookies
    )
    return app


def flask_listener() -> flask.Flask:
    """A Flask app as a listener: its session cookie is called ``session`` too."""
    app = flask.Flask("listener")
    app.secret_key = "listener-secret"

    @app.get("/login")
    def login_form() -> str:
        return (
            f"<!doctype html><head>{NO_ICON}</head>"
            '<form method="post"><input name="user"><button>log in</button></form>'
        )

    @app.post("/login")
    def login() -> Response:
        flask.session["user"] = flask.request.form["user"]
        return flask.redirect(flask.url_for("whoami"))

    @app.get("/whoami")
    def whoami() -> str:
        user = flask.session.get("user", "nobody")
        return f'<!doctype html><head>{NO_ICON}</head><p id="user">{user}</p>'

    @app.get("/cookies")
    def cookies() -> str:
        seen = markupsafe.escape(flask.request.headers.get("Cookie", ""))
        return f'<!doctype html><head>{NO_ICON}</head><p id="cookie">{seen}</p>'

    return app


def form_token(request: Request) -> Response:
    """What Trac does: a form token in a cookie and in each form, compared on POST."""
    token = request.cookies.get("trac_form_token")
    if request.method == "POST":
        if not token or request.form.get("__FORM_TOKEN") != token:
            return Response("Missing or invalid form token", status=400)
        return Response(
            f'<!doctype html><head>{NO_ICON}</head><p id="saved">saved</p>',
            200,
            content_type="text/html",
        )
    fresh = token is None
    token = token or secrets.token_hex(8)
    response = Response(
        f"<!doctype html><head>{NO_ICON}</head>"
        f'<form method="post"><input type="hidden" name="__FORM_TOKEN" value="{token}">'
        '<input name="text"><button>save</button></form>',
        content_type="text/html",
    )
    if fresh:
        response.set_cookie("trac_form_token", token, path="/", httponly=True)
    return response


def django_admin(allowed: str = "localhost") -> t.Any:
    """Django's admin, as a listener, with a superuser in a fresh database; ``allowed``:
    one more of ``ALLOWED_HOSTS`` (``.localhost`` for listener origins)."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-listener-secret",
        ALLOWED_HOSTS=["127.0.0.1", allowed],
        ROOT_URLCONF="tests.support.browser_django_urls",
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django.contrib.staticfiles",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.path.join(tempfile.mkdtemp(), "admin.sqlite3"),
            }
        },
        # Where the listener is mounted: Django's admin links its stylesheets here.
        STATIC_URL="/proxy/sessions/dj/static/",
        USE_TZ=True,
    )
    django.setup()
    from django.contrib.auth.models import User  # the user model: no AUTH_USER_MODEL
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    User.objects.create_superuser("admin", "admin@example.com", "admin-password")
    return WSGIHandler()


def main(kind: str, port: int) -> None:
    registry = Registry()
    if kind == "shared":
        app = host(registry, forward_cookies=True)
        registry.listen(flask_listener(), session="nb")
    else:
        app = host(registry, forward_cookies=["session"])
        registry.listen(flask_listener(), session="nb")
        registry.listen(form_token, session="trac")
        registry.listen(django_admin(), session="dj")
    print("ready", flush=True)
    run_simple("127.0.0.1", port, app, threaded=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
