"""A Django project, with its admin and whitenoise for its static files, as a
listener inside a Flask host.

The gotcha: Django computes its static URLs once, at start-up, before any request
under the listener arrives, so ``{% static %}`` gives ``/static/...`` at the host's
root (404) and the admin has no stylesheet. Give Django the listener's URL when it is
configured: ``FORCE_SCRIPT_NAME`` and ``STATIC_URL`` from ``url(session=...)``.
whitenoise serves the static files from the listener itself (the listener has no web
server of its own), under ``STATIC_URL``, without ``collectstatic``.

The admin's superuser is ``admin``, with the password in ``DJANGO_ADMIN_PASSWORD``
(``admin-password`` when it is not set: a recipe, not a deployment).
"""

from __future__ import annotations

import os
import tempfile
import typing as t

from flask import Flask

from wsgi_proxy_listen import listen, url

from ._host import host, serve

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

SESSION = "admin"


def django_listener(prefix: str, database: str) -> WSGIApplication:
    """Django, configured to be served under ``prefix``, with a superuser."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "recipe-only-secret"),
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF="examples.recipes.django_urls",
        # Where the listener is mounted, known before it listens.
        FORCE_SCRIPT_NAME=prefix.rstrip("/"),
        STATIC_URL=prefix + "static/",
        WHITENOISE_USE_FINDERS=True,  # the apps' static files, without collectstatic
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django.contrib.staticfiles",
        ],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "whitenoise.middleware.WhiteNoiseMiddleware",
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
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": database}},
        USE_TZ=True,
    )
    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    call_command("migrate", verbosity=0)
    password = os.environ.get("DJANGO_ADMIN_PASSWORD", "admin-password")
    User.objects.create_superuser("admin", "admin@example.com", password)
    return get_wsgi_application()


def create_app() -> Flask:
    app = host("Django admin", url(session=SESSION, path="/admin/"))
    database = os.path.join(tempfile.mkdtemp(prefix="recipe-django-"), "db.sqlite3")
    listen(django_listener(url(session=SESSION), database), session=SESSION)
    return app


if __name__ == "__main__":
    serve(create_app())
