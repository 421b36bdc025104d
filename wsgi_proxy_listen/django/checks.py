"""
Django system checks
====================

``manage.py check`` reports a wrong ``settings.WSGI_PROXY_LISTEN`` once
``"wsgi_proxy_listen.django"`` is in ``INSTALLED_APPS``, each problem with an
id and a hint; the server's start still raises ``ImproperlyConfigured`` for
the first of them, as without the app.

The one warning depends on the environment, which a check in CI does not
share with the server: a ``SECRET`` without ``DIRECTORY`` is right where the
server's environment names the directory (``WSGI_PROXY_LISTEN_DIRECTORY``), so
a management command run without it is not stopped.

========================  ==========================================================
id                        problem
========================  ==========================================================
wsgi_proxy_listen.E001    ``WSGI_PROXY_LISTEN`` is not a dict
wsgi_proxy_listen.E002    an unknown key
wsgi_proxy_listen.E003    ``PREFIX`` is not a usable path
wsgi_proxy_listen.E004    ``MAX_CONTENT_LENGTH`` is not a number of bytes or ``None``
wsgi_proxy_listen.E005    ``FORWARD_COOKIES`` is not ``True``, ``False`` or cookie names
wsgi_proxy_listen.E006    ``MAX_CONCURRENCY`` is not a number of requests or ``None``
wsgi_proxy_listen.E007    ``DIRECTORY`` names no directory (or Redis without a secret)
wsgi_proxy_listen.E008    ``SECRET`` is not a string
wsgi_proxy_listen.E009    ``AUTHENTICATE`` is no callable, dotted path, ``False`` or ``None``
wsgi_proxy_listen.E010    ``DEFAULT_ACCESS`` is no access
wsgi_proxy_listen.E011    ``LOGIN_URL`` is no path, URL, callable or ``None``
wsgi_proxy_listen.E012    ``SANDBOX`` is not ``True`` or ``False``
wsgi_proxy_listen.E013    ``LISTENER_DOMAIN`` is no domain name
wsgi_proxy_listen.E014    ``LISTENER_SECRET`` is not a string
wsgi_proxy_listen.E015    ``PUBLIC_URL`` is no ``http(s)://`` origin
wsgi_proxy_listen.E016    ``ADVERTISE`` is no ``host[:port]`` to connect to
wsgi_proxy_listen.E017    ``BIND`` is no ``[host][:port]`` (or range) this machine can bind
wsgi_proxy_listen.E018    ``NAMESPACE`` is empty or has ``}``
wsgi_proxy_listen.E019    ``TLS_CERT``, ``TLS_KEY``, ``TLS_CA``: not all three, or unusable
wsgi_proxy_listen.E020    ``METRICS`` is not ``True``, ``False`` or ``None`` (or ``True``
                          without ``prometheus_client``)
wsgi_proxy_listen.W001    ``SECRET`` without a directory, here
========================  ==========================================================
"""

from __future__ import annotations

import typing as t

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from ..settings import problems

__all__ = ["check_settings"]


@register("wsgi_proxy_listen")
def check_settings(app_configs: t.Any = None, **kwargs: t.Any) -> list[CheckMessage]:
    """The problems of ``settings.WSGI_PROXY_LISTEN``, as Django's checks report them."""
    return [
        (Warning if problem.id.startswith("W") else Error)(
            problem.message,
            hint=problem.hint,
            obj="settings.WSGI_PROXY_LISTEN",
            id=f"wsgi_proxy_listen.{problem.id}",
        )
        for problem in problems(getattr(settings, "WSGI_PROXY_LISTEN", None))
    ]
