"""wsgi_proxy_listen.django with the real project in examples/django_host.

Django's own test client bypasses WSGI middleware, so these drive the wrapped
handler with werkzeug's Client and over a real server.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import typing as t
from pathlib import Path

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished
from django.test import override_settings

from wsgi_proxy_listen import ProxyMiddleware, Registry, default_registry
from wsgi_proxy_listen.cluster import EmbeddedDirectory
from wsgi_proxy_listen.django import get_wsgi_application

from .support.cluster import short_folder
from .support.wsgi import BufferedClient, checked, running_server

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_host.settings")
django.setup()

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def application() -> ProxyMiddleware:
    return get_wsgi_application(registry=Registry())


def test_example_wsgi_module_wraps_django() -> None:
    from examples.django_host import wsgi

    assert isinstance(wsgi.application, ProxyMiddleware)
    assert wsgi.application.registry is default_registry
    assert wsgi.application.max_content_length == 1024 * 1024
    assert wsgi.application.forward_cookies == ["sessionid", "csrftoken"]


def test_host_requests_keep_request_finished(application: ProxyMiddleware) -> None:
    """Host responses pass through untouched, so Django's close() fires request_finished."""
    finished: list[object] = []

    def on_finished(**kwargs: t.Any) -> None:
        finished.append(kwargs)

    request_finished.connect(on_finished)
    try:
        response = BufferedClient(checked(application)).get("/")
    finally:
        request_finished.disconnect(on_finished)
    assert response.get_data() == b"django host\n"
    assert len(finished) == 1


def test_view_starts_a_session_that_serves_through_the_middleware() -> None:
    """The example's wsgi.py and its view share the default registry."""
    from examples.django_host.wsgi import application

    client = BufferedClient(checked(application))
    created = client.post("/reports/r1/")
    url = created.get_data().decode().strip()
    assert url == "/proxy/sessions/r1/data.csv"
    try:
        response = client.get(url)
        assert response.status_code == 200
        assert response.get_data() == b"report,r1\n"
        assert response.content_type == "text/csv"
    finally:
        default_registry.close_session("r1")
    assert client.get(url).status_code == 404


def test_settings_reach_the_middleware(application: ProxyMiddleware) -> None:
    assert application.max_content_length == 1024 * 1024
    assert application.forward_cookies == ["sessionid", "csrftoken"]
    assert application.max_concurrency == 4
    assert application.registry.prefix == "/proxy"


def test_custom_prefix_setting() -> None:
    registry = Registry()
    with override_settings(WSGI_PROXY_LISTEN={"PREFIX": "/kino"}):
        application = get_wsgi_application(registry=registry)
    registry.listen(lambda request: "kino", session="a")
    client = BufferedClient(checked(application))
    assert client.get("/kino/sessions/a/").get_data() == b"kino"
    assert client.get("/proxy/sessions/a/").status_code == 404


def test_missing_setting_means_defaults() -> None:
    with override_settings():
        from django.conf import settings

        del settings.WSGI_PROXY_LISTEN
        application = get_wsgi_application(registry=Registry())
    assert application.max_content_length is None
    assert application.forward_cookies is True


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"MAX_LENGTH": 1}, "unknown key\\(s\\) \\['MAX_LENGTH'\\]", id="unknown"),
        pytest.param("/proxy", "must be a dict", id="not-a-dict"),
        pytest.param({"PREFIX": "/a b"}, "invalid prefix", id="bad-prefix"),
        pytest.param({"MAX_CONTENT_LENGTH": "1mb"}, "max_content_length must be", id="bad-limit"),
        pytest.param({"FORWARD_COOKIES": 0}, "forward_cookies must be", id="bad-cookies"),
    ],
)
def test_bad_settings_raise_improperly_configured(config: object, message: str) -> None:
    with (
        override_settings(WSGI_PROXY_LISTEN=config),
        pytest.raises(ImproperlyConfigured, match=message) as info,
    ):
        get_wsgi_application(registry=Registry())
    assert "settings.WSGI_PROXY_LISTEN" in str(info.value)


def test_django_handler_as_a_listener(application: ProxyMiddleware) -> None:
    """A whole Django project can itself be a listener; it sees the prefix as SCRIPT_NAME."""
    from django.core.handlers.wsgi import WSGIHandler

    application.registry.listen(WSGIHandler(), session="dj")
    client = BufferedClient(checked(application))
    created = client.post("/proxy/sessions/dj/reports/inner/")
    try:
        assert created.get_data() == b"/proxy/sessions/dj/proxy/sessions/inner/data.csv\n"
    finally:
        default_registry.close_session("inner")
    assert client.get("/proxy/sessions/dj/").get_data() == b"django host\n"


def test_over_a_real_server(application: ProxyMiddleware) -> None:
    application.registry.listen(lambda request: f"listener {request.path}", session="a")
    with running_server(application) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for path, status, body in [
                ("/", 200, b"django host\n"),
                ("/proxy/sessions/a/x", 200, b"listener /x"),
                ("/proxy/sessions/a%2Fx", 404, b"404 Not Found"),
                ("/nope/", 404, b""),
            ]:
                connection.request("GET", path)
                response = connection.getresponse()
                data = response.read()
                assert response.status == status, path
                assert data.startswith(body), path
        finally:
            connection.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"DIRECTORY": "proxy"}, "unknown directory", id="relative"),
        pytest.param({"DIRECTORY": "rediss://h/0"}, "needs a secret", id="no-secret"),
    ],
)
def test_bad_django_directory_settings_raise_improperly_configured(
    config: dict[str, object], message: str
) -> None:
    with (
        override_settings(WSGI_PROXY_LISTEN=config),
        pytest.raises(ImproperlyConfigured, match=message),
    ):
        get_wsgi_application(registry=Registry())


def test_django_directory_setting() -> None:
    folder = short_folder()
    registry = Registry()
    with override_settings(WSGI_PROXY_LISTEN={"DIRECTORY": folder}):
        get_wsgi_application(registry=registry)
    assert t.cast(EmbeddedDirectory, registry.directory).folder == folder
    shutil.rmtree(folder)


# -- system checks ----------------------------------------------------------------------------


def manage_check(setting: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` of the example project with ``WSGI_PROXY_LISTEN = setting``."""
    return subprocess.run(
        [sys.executable, "-m", "examples.django_host.manage", "check"],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "tests.support.django_bad_settings",
            "TEST_WSGI_PROXY_LISTEN": setting,
            **environment,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("setting", "found"),
    [
        ('"/proxy"', "wsgi_proxy_listen.E001"),
        ('{"PREFX": "/proxy"}', "wsgi_proxy_listen.E002"),
        ('{"PREFIX": "proxy/"}', "wsgi_proxy_listen.E003"),
        ('{"MAX_CONTENT_LENGTH": -1}', "wsgi_proxy_listen.E004"),
        ('{"FORWARD_COOKIES": "sessionid"}', "wsgi_proxy_listen.E005"),
        ('{"MAX_CONCURRENCY": 0}', "wsgi_proxy_listen.E006"),
        ('{"DIRECTORY": "relative/folder"}', "wsgi_proxy_listen.E007"),
        ('{"DIRECTORY": "redis://127.0.0.1:6379/0"}', "wsgi_proxy_listen.E007"),
        (repr({"DIRECTORY": "/" + "a" * 100}), "wsgi_proxy_listen.E007"),
        ('{"SECRET": 5, "DIRECTORY": "/tmp/x"}', "wsgi_proxy_listen.E008"),
        ('{"SECRET": ["s3"]}', "wsgi_proxy_listen.E008"),
        ('{None: 1, "PREFX": "/p", 2: 3}', "wsgi_proxy_listen.E002"),
        ('{"AUTHENTICATE": 5}', "wsgi_proxy_listen.E009"),
        ('{"AUTHENTICATE": "no_such_module.user"}', "wsgi_proxy_listen.E009"),
        ('{"DEFAULT_ACCESS": "everyone"}', "wsgi_proxy_listen.E010"),
        ('{"DEFAULT_ACCESS": None}', "wsgi_proxy_listen.E010"),
        ('{"DEFAULT_ACCESS": []}', "wsgi_proxy_listen.E010"),
        ('{"LOGIN_URL": "accounts/login"}', "wsgi_proxy_listen.E011"),
        ('{"SANDBOX": None}', "wsgi_proxy_listen.E012"),
        ('{"LISTENER_DOMAIN": "localhost"}', "wsgi_proxy_listen.E013"),
        ('{"LISTENER_SECRET": 5}', "wsgi_proxy_listen.E014"),
        ('{"PUBLIC_URL": "host.example.com"}', "wsgi_proxy_listen.E015"),
        ('{"METRICS": "yes"}', "wsgi_proxy_listen.E020"),
    ],
)
def test_manage_check_reports_a_wrong_setting_with_its_id(setting: str, found: str) -> None:
    result = manage_check(setting)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"settings.WSGI_PROXY_LISTEN: ({found})" in result.stderr
    assert "HINT: " in result.stderr


def test_a_secret_without_a_directory_is_a_warning_that_stops_no_command() -> None:
    """Right where the server's environment names the directory, which CI may not set."""
    result = manage_check('{"SECRET": "s3"}')
    assert result.returncode == 0, result.stderr
    assert "WARNINGS:" in result.stderr
    assert "settings.WSGI_PROXY_LISTEN: (wsgi_proxy_listen.W001)" in result.stderr
    with (
        override_settings(WSGI_PROXY_LISTEN={"SECRET": "s3"}),
        pytest.raises(ImproperlyConfigured, match="SECRET is set without DIRECTORY"),
    ):
        get_wsgi_application(registry=Registry())


@pytest.mark.parametrize(
    ("config", "found"),
    [
        ({"SECRET": 5}, "wsgi_proxy_listen.E008"),
        ({"DIRECTORY": "/" + "a" * 100}, "wsgi_proxy_listen.E007"),
    ],
)
def test_every_wrong_setting_that_start_up_raises_for_is_found_by_the_checks(
    config: dict[str, object], found: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks found nothing where start-up then raised, for these."""
    from wsgi_proxy_listen.django.checks import check_settings

    monkeypatch.setenv("WSGI_PROXY_LISTEN_DIRECTORY", "/tmp/wpl-never-made")
    with override_settings(WSGI_PROXY_LISTEN=config):
        with pytest.raises(ImproperlyConfigured):
            get_wsgi_application(registry=Registry())
        assert [error.id for error in check_settings()] == [found]


def test_a_secret_of_the_wrong_type_hides_no_problem_of_the_directory() -> None:
    from wsgi_proxy_listen.django.checks import check_settings

    with override_settings(WSGI_PROXY_LISTEN={"DIRECTORY": "relative/dir", "SECRET": 12}):
        assert [error.id for error in check_settings()] == [
            "wsgi_proxy_listen.E008",
            "wsgi_proxy_listen.E007",
        ]


def test_manage_check_reports_every_problem_at_once() -> None:
    result = manage_check('{"PREFX": 1, "MAX_CONCURRENCY": "4"}')
    assert result.returncode == 1
    assert "wsgi_proxy_listen.E002" in result.stderr
    assert "wsgi_proxy_listen.E006" in result.stderr
    assert "2 issues" in result.stderr


def test_manage_check_passes_good_settings() -> None:
    good = (
        '{"PREFIX": "/tools", "DIRECTORY": "/tmp/x", "FORWARD_COOKIES": ["sessionid"],'
        ' "AUTHENTICATE": False, "DEFAULT_ACCESS": "authenticated", "LOGIN_URL": "/in/",'
        ' "SANDBOX": True}'
    )
    result = manage_check(good)
    assert (result.returncode, result.stdout.strip()) == (
        0,
        "System check identified no issues (0 silenced).",
    ), result.stderr
    secret_from_environment = manage_check('{"SECRET": "s3"}', WSGI_PROXY_LISTEN_DIRECTORY="/tmp/x")
    assert secret_from_environment.returncode == 0, secret_from_environment.stderr


def test_every_check_id_is_what_start_up_raises_for() -> None:
    """The checks and the start-up error come from one list of problems."""
    with override_settings(WSGI_PROXY_LISTEN={"MAX_CONCURRENCY": 0}):
        from wsgi_proxy_listen.django.checks import check_settings

        (error,) = check_settings()
        assert error.id == "wsgi_proxy_listen.E006"
        with pytest.raises(ImproperlyConfigured, match="MAX_CONCURRENCY: invalid max_concurrency"):
            get_wsgi_application(registry=Registry())


def header_user(environ: dict[str, object]) -> str | None:
    return t.cast("str | None", environ.get("HTTP_X_USER"))


def test_the_login_settings_reach_the_middleware() -> None:
    """The example project has no django.contrib.auth: its login is the one named."""
    registry = Registry()
    registry.listen(lambda request: f"hi {request.remote_user}", session="s", access={"ann"})
    config = {
        "AUTHENTICATE": f"{__name__}.header_user",
        "DEFAULT_ACCESS": ["ann"],
        "LOGIN_URL": "/in/",
    }
    with override_settings(WSGI_PROXY_LISTEN=config):
        application = get_wsgi_application(registry=registry)
    assert application.authenticate is header_user
    assert (application.default_access, application.login_url) == (frozenset({"ann"}), "/in/")
    client = BufferedClient(application)
    assert client.get("/proxy/sessions/s/", headers={"X-User": "ann"}).data == b"hi ann"
    refused = client.get("/proxy/sessions/s/", headers={"Accept": "text/html"})
    assert refused.headers["Location"] == "/in/?next=%2Fproxy%2Fsessions%2Fs%2F"
    with override_settings(WSGI_PROXY_LISTEN={}):
        assert get_wsgi_application(registry=registry).authenticate is None  # no auth app
