"""What the Security guide (docs/guides/security.md) says about the order of middlewares: werkzeug's
ProxyFix belongs outside ProxyMiddleware, so that listeners build their links and redirects
with the forwarded host, scheme and prefix, as the host does."""

from __future__ import annotations

import flask
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.wsgi import BufferedClient

FORWARDED = {
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "example.com",
    "X-Forwarded-Prefix": "/public",
}


def listener_app() -> flask.Flask:
    listener = flask.Flask("listener")

    @listener.get("/link")
    def link() -> str:
        return flask.url_for("target", _external=True)

    @listener.get("/go")
    def go() -> Response:
        return flask.redirect(flask.url_for("target"))

    @listener.get("/target")
    def target() -> str:
        return "target"

    return listener


def host_app() -> flask.Flask:
    host = flask.Flask("host")

    @host.get("/link")
    def link() -> str:
        return flask.url_for("link", _external=True)

    return host


def test_proxy_fix_outside_reaches_host_and_listeners_alike() -> None:
    registry = Registry()
    registry.listen(listener_app(), session="s1")
    host = host_app()
    host.wsgi_app = ProxyFix(  # type: ignore[method-assign]
        ProxyMiddleware(host.wsgi_app, registry), x_for=1, x_proto=1, x_host=1, x_prefix=1
    )
    client = BufferedClient(host)
    assert client.get("/link", headers=FORWARDED).text == "https://example.com/public/link"
    assert (
        client.get("/proxy/sessions/s1/link", headers=FORWARDED).text
        == "https://example.com/public/proxy/sessions/s1/target"
    )
    redirect = client.get("/proxy/sessions/s1/go", headers=FORWARDED)
    assert redirect.headers["Location"] == "/public/proxy/sessions/s1/target"


def test_proxy_fix_inside_leaves_listeners_without_the_forwarded_url() -> None:
    """The order the Security guide warns against: the host sees the forwarded URL, listeners do
    not (their links point at the internal host, without the public prefix)."""
    registry = Registry()
    registry.listen(listener_app(), session="s1")
    host = host_app()
    host.wsgi_app = ProxyMiddleware(  # type: ignore[method-assign]
        ProxyFix(host.wsgi_app, x_for=1, x_proto=1, x_host=1, x_prefix=1), registry
    )
    client = BufferedClient(host)
    assert client.get("/link", headers=FORWARDED).text == "https://example.com/public/link"
    assert (
        client.get("/proxy/sessions/s1/link", headers=FORWARDED).text
        == "http://localhost/proxy/sessions/s1/target"
    )
