"""One way to name a directory (wsgi_proxy_listen.naming): Registry(directory=...), the
DIRECTORY and SECRET settings of Flask and Django, and the environment variables."""

from __future__ import annotations

import shutil
import subprocess
import sys
import typing as t

import flask
import pytest

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.cluster import EmbeddedDirectory, RedisDirectory
from wsgi_proxy_listen.flask import ProxyListen
from wsgi_proxy_listen.naming import check_name, open_directory
from wsgi_proxy_listen.seam import shown_name

from .support.cluster import short_folder


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSGI_PROXY_LISTEN_DIRECTORY", raising=False)
    monkeypatch.delenv("WSGI_PROXY_LISTEN_SECRET", raising=False)


def test_a_folder_names_the_embedded_directory(folder: str) -> None:
    directory = open_directory(folder)
    assert isinstance(directory, EmbeddedDirectory)
    assert directory.folder == folder
    assert directory.secret is None


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache.internal:6380/1", "unix:///run/r.sock"]
)
def test_a_redis_url_names_redis(url: str) -> None:
    directory = open_directory(url, secret="s")
    assert isinstance(directory, RedisDirectory)
    assert directory.url == url
    assert directory.secret == b"s"


def test_the_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGI_PROXY_LISTEN_SECRET", "from-env")
    assert t.cast(RedisDirectory, open_directory("redis://h/0")).secret == b"from-env"


@pytest.mark.parametrize(
    ("name", "secret", "error", "message"),
    [
        pytest.param("relative/folder", None, ValueError, "unknown directory", id="relative"),
        pytest.param("http://h/", None, ValueError, "unknown directory", id="other-scheme"),
        pytest.param("", None, ValueError, "unknown directory", id="empty"),
        pytest.param("redis://h/0", None, ValueError, "needs a secret", id="redis-no-secret"),
        pytest.param("redis://h/0", "", ValueError, "needs a secret", id="redis-empty-secret"),
        pytest.param("redis://h:x/0", "s", ValueError, "invalid Redis URL", id="bad-url"),
        pytest.param(42, None, TypeError, "named by a string", id="not-a-string"),
        pytest.param("redis://h/0", 5, TypeError, "secret must be", id="bad-secret"),
    ],
)
def test_bad_names_raise_at_once(
    name: object, secret: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        open_directory(t.cast(str, name), secret=t.cast(t.Any, secret))


def test_registry_takes_a_name(folder: str) -> None:
    registry = Registry(directory=folder)
    assert isinstance(registry.directory, EmbeddedDirectory)
    with pytest.raises(ValueError, match="unknown directory"):
        Registry(directory="proxy-folder")


def test_registry_secret_without_directory_is_a_mistake() -> None:
    with pytest.raises(TypeError, match="secret= was given without a directory"):
        Registry(secret="s")


def test_connect_once_and_before_a_middleware(folder: str) -> None:
    registry = Registry()
    registry.connect(folder)
    directory = registry.directory
    registry.connect(folder)  # the same name and secret: nothing changes
    assert registry.directory is directory
    other = short_folder()
    try:
        with pytest.raises(RuntimeError, match="has one directory"):
            registry.connect(other)
    finally:
        shutil.rmtree(other)
    with pytest.raises(RuntimeError, match="the same name and secret"):
        registry.connect(folder, secret="another")
    used = Registry()
    ProxyMiddleware(lambda environ, start_response: [], used)
    with pytest.raises(RuntimeError, match="connect the registry before wrapping"):
        used.connect(folder)


def test_connect_refuses_a_secret_beside_a_directory_object(folder: str) -> None:
    with pytest.raises(TypeError, match="give the secret to the directory"):
        Registry().connect(EmbeddedDirectory(folder), secret="s")


# -- the settings of the integrations -------------------------------------------------------


def flask_app(config: dict[str, object] | None = None) -> flask.Flask:
    app = flask.Flask("host")
    if config is not None:
        app.config["WSGI_PROXY_LISTEN"] = config
    return app


def test_flask_directory_setting(folder: str) -> None:
    registry = Registry()
    ProxyListen(flask_app({"DIRECTORY": folder}), registry=registry)
    assert isinstance(registry.directory, EmbeddedDirectory)
    assert registry.directory.folder == folder


def test_flask_directory_and_secret_settings() -> None:
    registry = Registry()
    ProxyListen(
        flask_app({"DIRECTORY": "redis://127.0.0.1:1/0", "SECRET": "s3"}), registry=registry
    )
    assert isinstance(registry.directory, RedisDirectory)
    assert registry.directory.secret == b"s3"


def test_the_environment_names_the_directory_when_no_setting_does(
    folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSGI_PROXY_LISTEN_DIRECTORY", folder)
    registry = Registry()
    ProxyListen(flask_app(), registry=registry)
    assert isinstance(registry.directory, EmbeddedDirectory)
    other = short_folder()
    try:
        explicit = Registry()
        ProxyListen(flask_app({"DIRECTORY": other}), registry=explicit)
        assert t.cast(EmbeddedDirectory, explicit.directory).folder == other, "the setting wins"
    finally:
        shutil.rmtree(other)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"DIRECTORY": "proxy"}, "unknown directory", id="relative"),
        pytest.param({"DIRECTORY": "redis://h/0"}, "needs a secret", id="no-secret"),
        pytest.param({"SECRET": "s"}, "SECRET is set without DIRECTORY", id="secret-alone"),
        pytest.param({"DIRECTORY": 7}, "named by a string", id="not-a-string"),
    ],
)
def test_bad_directory_settings_raise_at_start_up(config: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message) as info:
        ProxyListen(flask_app(config), registry=Registry())
    assert 'app.config["WSGI_PROXY_LISTEN"]' in str(info.value)


def test_a_registry_with_a_directory_and_another_directory_setting_conflict(folder: str) -> None:
    other = short_folder()
    try:
        registry = Registry(directory=folder)
        with pytest.raises(ValueError, match="name the directory in one place"):
            ProxyListen(flask_app({"DIRECTORY": other}), registry=registry)
    finally:
        shutil.rmtree(other)


def test_a_secret_setting_completes_the_environments_directory_connected_already(
    folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listen() connected the registry from the environment before the app was made."""
    monkeypatch.setenv("WSGI_PROXY_LISTEN_DIRECTORY", folder)
    registry = Registry()
    registry.connect(folder, secret="s3")
    ProxyListen(flask_app({"SECRET": "s3"}), registry=registry)
    assert registry.directory_name == folder
    with pytest.raises(ValueError, match="same name and secret"):
        ProxyListen(flask_app({"SECRET": "other"}), registry=registry)
    # Connected in code, with no environment: the setting's secret goes with it too.
    monkeypatch.delenv("WSGI_PROXY_LISTEN_DIRECTORY")
    ProxyListen(flask_app({"SECRET": "s3"}), registry=registry)


def test_the_environment_and_a_setting_may_name_the_same_directory(folder: str) -> None:
    registry = Registry(directory=folder)
    ProxyListen(flask_app({"DIRECTORY": folder}), registry=registry)
    assert registry.directory_name == folder


# -- the environment, for the default registry ---------------------------------------------


def from_environment() -> Registry:
    """A registry that connects from the environment as the default registry does."""
    registry = Registry()
    registry.connect_from_environment()
    return registry


def test_the_environment_connects_when_first_needed(
    folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSGI_PROXY_LISTEN_DIRECTORY", folder)
    registry = from_environment()
    assert not registry.connected, "nothing is opened before it is needed"
    assert isinstance(registry.directory, EmbeddedDirectory)
    assert registry.connected
    assert registry.directory_name == folder


def test_a_setting_gives_the_secret_of_the_directory_the_environment_names(
    folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform names the directory, the host's settings hold the secret: the
    hop is signed with it (the environment is read when the settings are)."""
    monkeypatch.setenv("WSGI_PROXY_LISTEN_DIRECTORY", folder)
    registry = from_environment()
    ProxyListen(flask_app({"SECRET": "s3"}), registry=registry)
    assert t.cast(EmbeddedDirectory, registry.directory).secret == b"s3"
    redis_registry = Registry()
    monkeypatch.setenv("WSGI_PROXY_LISTEN_DIRECTORY", "redis://127.0.0.1:1/0")
    redis_registry.connect_from_environment()
    ProxyListen(flask_app({"SECRET": "s3"}), registry=redis_registry)
    assert t.cast(RedisDirectory, redis_registry.directory).secret == b"s3"


def test_a_setting_naming_the_environments_directory_gives_its_secret(
    folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSGI_PROXY_LISTEN_DIRECTORY", folder)
    registry = from_environment()
    ProxyListen(flask_app({"DIRECTORY": folder, "SECRET": "s3"}), registry=registry)
    assert t.cast(EmbeddedDirectory, registry.directory).secret == b"s3"


def test_connect_comes_before_the_environment(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that the platform started connected may still connect() in its code."""
    monkeypatch.setenv("WSGI_PROXY_LISTEN_DIRECTORY", folder)
    registry = from_environment()
    registry.connect(folder)
    assert registry.directory_name == folder
    other = short_folder()
    try:
        elsewhere = from_environment()
        elsewhere.connect(other)
        assert elsewhere.directory_name == other
    finally:
        shutil.rmtree(other)


def test_a_bad_environment_fails_where_the_directory_is_needed(
    folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSGI_PROXY_LISTEN_DIRECTORY", folder)
    monkeypatch.setenv("WSGI_PROXY_LISTEN_RUNTIME", "maybe")
    registry = from_environment()
    registry.runtime = True  # whatever servers the tests before imported
    with pytest.raises(ValueError, match="WSGI_PROXY_LISTEN_RUNTIME='maybe' means nothing"):
        registry.listen(lambda request: "x", session="s")
    assert "s" not in registry, "a listen() that raised registers nothing"
    with pytest.raises(ValueError, match="WSGI_PROXY_LISTEN_DIRECTORY: "):
        ProxyMiddleware(lambda environ, start_response: [], registry)
    monkeypatch.setenv("WSGI_PROXY_LISTEN_DIRECTORY", "relative/folder")
    monkeypatch.delenv("WSGI_PROXY_LISTEN_RUNTIME")
    relative = from_environment()
    relative.runtime = True
    with pytest.raises(ValueError, match="WSGI_PROXY_LISTEN_DIRECTORY: unknown directory"):
        relative.listen(lambda request: "x", session="s")


def test_importing_the_package_never_fails_for_the_environment() -> None:
    """A Redis URL whose secret the host's settings hold, or a value that means
    nothing: importing works, and the settings complete it."""
    code = (
        "import flask, wsgi_proxy_listen\n"
        "from wsgi_proxy_listen.flask import ProxyListen\n"
        "app = flask.Flask('host')\n"
        "app.config['WSGI_PROXY_LISTEN'] = {'SECRET': 's3'}\n"
        "ProxyListen(app)\n"
        "print(wsgi_proxy_listen.default_registry.directory.secret)\n"
    )
    env = {"WSGI_PROXY_LISTEN_DIRECTORY": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert (result.returncode, result.stdout) == (0, "b's3'\n"), result.stderr
    env["WSGI_PROXY_LISTEN_RUNTIME"] = "maybe"
    imported = subprocess.run(
        [sys.executable, "-c", "import wsgi_proxy_listen"], capture_output=True, env=env
    )
    assert imported.returncode == 0, imported.stderr


# -- what importing costs -------------------------------------------------------------------


def imported_after(code: str) -> list[str]:
    probe = (
        f"{code}; import sys; print(sorted(m for m in sys.modules if m.startswith(('redis',"
        " 'urllib3', 'waitress', 'sqlite3', 'wsgi_proxy_listen.cluster'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return t.cast(list[str], eval(result.stdout))


def test_importing_the_package_imports_no_directory() -> None:
    assert imported_after("import wsgi_proxy_listen") == []


def test_the_embedded_directory_imports_no_redis(folder: str) -> None:
    found = imported_after(
        f"import wsgi_proxy_listen; wsgi_proxy_listen.Registry(directory={folder!r})"
    )
    assert not [name for name in found if name.startswith(("redis", "urllib3", "waitress"))]
    assert "wsgi_proxy_listen.cluster.embedded" in found


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("/run/host/proxy", "/run/host/proxy"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://app:hunter2@cache/1", "rediss://app:***@cache/1"),
        ("redis://app@cache/1", "redis://app@cache/1"),
        (
            "unix:///run/redis.sock?db=2&password=hunter2",
            "unix:///run/redis.sock?db=2&password=***",
        ),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        # Passwords that a URL parser reads as the path, a fragment, a query or IPv6.
        ("redis://:hunter2/x+y=@cache/0", "redis://:***@cache/0"),
        ("redis://:hunter2#x@cache/0", "redis://:***@cache/0"),
        ("redis://app:hunter2?x@cache/0", "redis://app:***@cache/0"),
        ("redis://:[hunter2@cache/0", "redis://:***@cache/0"),
        ("redis://app:hunter2@x@cache/0", "redis://app:***@cache/0"),
        ("redis://cache/0?PASSWORD=hunter2;x=1&y=%20", "redis://cache/0?PASSWORD=***;x=1&y=%20"),
        ("/srv/a@b:c/proxy?password=x", "/srv/a@b:c/proxy?password=x"),
        (
            "redis+sentinel://app:pw@s1:26379,s2/main/0?sentinel_password=sentinel-pw",
            "redis+sentinel://app:***@s1:26379,s2/main/0?sentinel_password=***",
        ),
    ],
)
def test_a_password_in_a_directorys_name_is_never_shown(name: str, shown: str) -> None:
    assert shown_name(name) == shown
    if "://" in name:
        with pytest.raises(ValueError, match="needs a secret") as info:
            check_name(name)
        assert "hunter2" not in str(info.value)
        try:
            said = repr(RedisDirectory(name, secret=b"s"))
        except ValueError as error:  # the URL does not parse
            said = str(error)
        assert "hunter2" not in said
