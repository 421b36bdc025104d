"""Settings of the small Django host project (``examples/django_host``)."""

from __future__ import annotations

import os

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "examples.django_host.urls"
# Optional: manage.py check then reports a wrong WSGI_PROXY_LISTEN (wsgi_proxy_listen.E001...).
INSTALLED_APPS = ["wsgi_proxy_listen.django"]
MIDDLEWARE: list[str] = []
USE_TZ = True

WSGI_PROXY_LISTEN = {
    "PREFIX": "/proxy",
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    # Listeners get every cookie but the host's session and CSRF ones (Django's names
    # unless SESSION_COOKIE_NAME or CSRF_COOKIE_NAME say otherwise).
    "FORWARD_COOKIES": ["sessionid", "csrftoken"],
    "MAX_CONCURRENCY": 4,
}
