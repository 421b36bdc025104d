"""Settings of the small Django host project (``examples/django_host``)."""

from __future__ import annotations

import os

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "examples.django_host.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
USE_TZ = True

WSGI_PROXY_LISTEN = {
    "PREFIX": "/proxy",
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    "FORWARD_COOKIES": False,
}
