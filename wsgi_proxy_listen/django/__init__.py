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

Optionally, add ``"wsgi_proxy_listen.django"`` to ``INSTALLED_APPS``: then
``manage.py check`` reports a wrong ``WSGI_PROXY_LISTEN`` (an unknown key, a
value that means nothing) with an id, ``wsgi_proxy_listen.E001`` to ``E008``
(or the warning ``W001``), and a hint, rather than leaving it to the start of the server
(:mod:`wsgi_proxy_listen.django.checks`).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application as django_wsgi_application

from ..middleware import ProxyMiddleware
from ..registry import Registry
from ..settings import middleware_from_config

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
    )
