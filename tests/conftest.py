"""The fixtures every test may ask for; the helpers they use are in tests/support/."""

from __future__ import annotations

import logging
import shutil
import typing as t
from collections.abc import Callable, Iterator

import pytest
from werkzeug.test import Client

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.cluster import NO_REDIS, REDIS, RedisServer, Shared, short_folder
from .support.wsgi import BufferedClient, Host, checked

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture
def make_client(registry: Registry, host: Host) -> Callable[..., Client]:
    def make(app: WSGIApplication | None = None, **options: t.Any) -> Client:
        middleware = ProxyMiddleware(app or host, registry, **options)
        return BufferedClient(checked(middleware))

    return make


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    return make_client()


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="wsgi_proxy_listen")
    return caplog


def pytest_terminal_summary(terminalreporter: t.Any) -> None:
    """Say it loudly when the browser or cluster tests could not run."""
    for marker in ("BROWSER TEST SKIPPED", "CLUSTER TESTS SKIPPED"):
        for report in terminalreporter.stats.get("skipped", []):
            if marker in str(report.longrepr):
                terminalreporter.write_sep(
                    "!", marker.replace("TEST", "THE TEST"), red=True, bold=True
                )
                terminalreporter.write_line(str(report.longrepr[-1]), red=True)
                break


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if REDIS is None:
        pytest.skip(NO_REDIS)
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The URL of a Redis server that the test module shares (started once for it)."""
    if REDIS is None:
        pytest.skip(NO_REDIS)
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def folder() -> Iterator[str]:
    """A folder of the test's own, short enough for Unix sockets in it; removed after."""
    made = short_folder()
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(params=["embedded", "redis"])
def shared(request: pytest.FixtureRequest) -> Iterator[Shared]:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        yield Shared("redis", server.url, server)
        return
    folder = short_folder()
    try:
        yield Shared("embedded", folder, None)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
