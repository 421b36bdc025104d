"""
Django
======

Serve listeners from a Django project: in ``wsgi.py``, use this module's
:func:`get_wsgi_application` instead of Django's.

.. code-block:: python

    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

    from wsgi_proxy_listen.django import get_wsgi_application

    application = get_wsgi_application()

Configure it in ``settings.py`` (every key is optional)::

    WSGI_PROXY_LISTEN = {
        "PREFIX": "/proxy",
        "MAX_CONTENT_LENGTH": 10 * 1024 * 1024,
        "FORWARD_COOKIES": False,
    }

Host requests reach Django with the same environ and Django's response comes
back untouched, so its ``close()`` and the ``request_finished`` signal run as
before.

With ``django.contrib.sessions`` and ``django.contrib.auth`` installed, the
host's login comes by itself: who is logged in is read through the session
engine and ``django.contrib.auth.get_user`` (the configured backends), the
user's ``get_username()`` is the id, and browsers are sent to
``settings.LOGIN_URL``. No view and no middleware of the project runs for it.
The keys ``AUTHENTICATE`` (``False`` turns it off), ``DEFAULT_ACCESS`` and
``LOGIN_URL`` change it.

Optionally, add ``"wsgi_proxy_listen.django"`` to ``INSTALLED_APPS``: then
``manage.py check`` reports a wrong ``WSGI_PROXY_LISTEN`` (an unknown key, a
value that means nothing) with an id, ``wsgi_proxy_listen.E001`` to ``E020``
(or the warning ``W001``), and a hint, rather than leaving it to the start of the server
(:mod:`wsgi_proxy_listen.django.checks`).
"""

from __future__ import annotations

import typing as t
from importlib import import_module

from django.apps import apps as django_apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application as django_wsgi_application

from ..middleware import ProxyMiddleware
from ..registry import Registry
from ..settings import Login, middleware_from_config

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["get_wsgi_application"]


def get_wsgi_application(*, registry: Registry | None = None) -> ProxyMiddleware:
    """Django's WSGI handler wrapped in a :class:`~wsgi_proxy_listen.ProxyMiddleware`.

    Sets Django up (as :func:`django.core.wsgi.get_wsgi_application` does) and
    reads ``settings.WSGI_PROXY_LISTEN``.

    :param registry: where listeners live; ``None`` means
        :data:`~wsgi_proxy_listen.default_registry`.
    :raises django.core.exceptions.ImproperlyConfigured: ``settings.WSGI_PROXY_LISTEN``
        is wrong.
    """
    handler = django_wsgi_application()
    return middleware_from_config(
        handler,
        registry,
        getattr(settings, "WSGI_PROXY_LISTEN", None),
        "settings.WSGI_PROXY_LISTEN",
        ImproperlyConfigured,
        login=django_login(),
    )


def django_login() -> Login | None:
    """The host's login through ``django.contrib.auth``, where it and
    ``django.contrib.sessions`` are installed (see the module)."""
    if not (
        django_apps.is_installed("django.contrib.sessions")
        and django_apps.is_installed("django.contrib.auth")
    ):
        return None
    from django.contrib.auth import get_user
    from django.core.handlers.wsgi import WSGIRequest
    from django.db import close_old_connections
    from django.shortcuts import resolve_url

    engine = import_module(settings.SESSION_ENGINE)

    def authenticate(environ: WSGIEnvironment) -> str | None:
        request = WSGIRequest(environ)
        request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
        try:
            user = get_user(request)
            return user.get_username() if user.is_authenticated else None
        finally:
            close_old_connections()  # as Django does at the end of a request

    def login_url(environ: WSGIEnvironment) -> str:
        return str(resolve_url(settings.LOGIN_URL))

    return Login(authenticate, login_url)
