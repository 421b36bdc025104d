"""The Django app that ``"wsgi_proxy_listen.django"`` in ``INSTALLED_APPS`` installs: it
registers the system checks of :mod:`wsgi_proxy_listen.django.checks`, and nothing else
(no models, no URLs, no templates)."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["WsgiProxyListenConfig"]


class WsgiProxyListenConfig(AppConfig):
    name = "wsgi_proxy_listen.django"
    label = "wsgi_proxy_listen"
    verbose_name = "wsgi_proxy_listen"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the checks
