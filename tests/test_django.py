"""Django's WSGIHandler as a host and as a listener (SPEC §5.2), through real Django."""

from __future__ import annotations

import typing as t

import django
import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .conftest import BufferedClient, checked


@pytest.fixture(scope="module")
def django_handler() -> WSGIHandler:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="tests-only",
            ROOT_URLCONF="tests.django_urls",
            ALLOWED_HOSTS=["localhost"],
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    return WSGIHandler()


def test_django_host_keeps_request_finished(
    django_handler: WSGIHandler, registry: Registry
) -> None:
    """Host requests pass through untouched, so Django's close() still fires request_finished."""
    finished: list[object] = []

    def on_finished(**kwargs: t.Any) -> None:
        finished.append(kwargs)

    request_finished.connect(on_finished)
    try:
        client = BufferedClient(checked(ProxyMiddleware(django_handler, registry)))
        response = client.get("/page/")
    finally:
        request_finished.disconnect(on_finished)
    assert response.get_data() == b"django /page/ /page/"
    assert len(finished) == 1


def test_django_handler_as_listener(django_handler: WSGIHandler, registry: Registry) -> None:
    """Django sees the prefix as its script name, so its request.path includes it."""
    registry.listen(django_handler, session="dj")
    client = BufferedClient(checked(ProxyMiddleware(django_handler, registry)))
    response = client.get("/proxy/sessions/dj/page/")
    assert response.status_code == 200
    assert response.get_data() == b"django /page/ /proxy/sessions/dj/page/"
    assert client.get("/proxy/sessions/dj/missing/").status_code == 404
