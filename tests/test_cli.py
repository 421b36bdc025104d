"""The operator's command line against real directories: a host under gunicorn -w 2 whose
workers published listeners, read by `python -m wsgi_proxy_listen status`, the
`wsgi-proxy-listen` console script and `flask wsgi-proxy-listen status`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .support.cluster import (
    NAMESPACE,
    ROOT,
    SECRET,
    RedisServer,
    Shared,
    forge_rows,
    gunicorn,
    short_folder,
    start_session,
)

pytestmark = pytest.mark.timeout(120)

BIN = Path(sys.executable).parent


def run(*command: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("WSGI_PROXY")}
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT), **environment},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def secret_of(shared: Shared) -> dict[str, str]:
    return {"WSGI_PROXY_LISTEN_SECRET": SECRET} if shared.kind == "redis" else {}


def test_status_lists_the_listeners_of_a_running_host(shared: Shared) -> None:
    with gunicorn(shared.name, workers=2) as host:
        first = start_session(host, "s1")
        member = start_session(host, "m1", "?app=board")
        result = run(
            sys.executable, "-m", "wsgi_proxy_listen", "status", shared.name, **secret_of(shared)
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    if shared.kind == "redis":  # a first column: the deployment's namespace
        assert lines[0].split()[0] == "NAMESPACE"
        assert {line.split()[0] for line in lines[1:-1]} == {NAMESPACE}
        lines = [line.split(None, 1)[1] for line in lines[:-1]] + lines[-1:]
    assert lines[0].split() == ["SESSION", "APP", "PID", "OWNER", "ADDRESS", "AGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rows.keys() == {"s1", "m1"}
    assert rows["s1"][1:3] == ["-", str(first)]
    assert rows["m1"][1:3] == ["board", str(member)]
    assert rows["s1"][5].endswith("s"), "an age such as 0s"
    processes = len({first, member})
    assert lines[-1] == f"2 listeners in {processes} process{'es' if processes > 1 else ''}"


def test_status_as_json_from_the_environment(shared: Shared) -> None:
    with gunicorn(shared.name, workers=2) as host:
        owner = start_session(host, "s1")
        result = run(
            str(BIN / "wsgi-proxy-listen"),
            "status",
            "--json",
            WSGI_PROXY_LISTEN_DIRECTORY=shared.name,
            **secret_of(shared),
        )
    assert result.returncode == 0, result.stderr
    (listener,) = json.loads(result.stdout)
    keys = {"session", "app", "pid", "owner", "address", "since", "age_seconds", "live"}
    assert listener.keys() == keys | ({"namespace"} if shared.kind == "redis" else set())
    assert (listener["session"], listener["app"], listener["pid"]) == ("s1", None, owner)
    assert 0 <= listener["age_seconds"] < 60


def test_flask_status_reads_the_apps_directory(shared: Shared) -> None:
    with gunicorn(shared.name, workers=2) as host:
        owner = start_session(host, "s1")
        result = run(
            str(BIN / "flask"),
            "--app",
            "tests.support.cli_flask_app",
            "wsgi-proxy-listen",
            "status",
            "--json",
            TEST_DIRECTORY=shared.name,
            TEST_SECRET=SECRET if shared.kind == "redis" else "",
        )
    assert result.returncode == 0, result.stderr
    assert [(item["session"], item["pid"]) for item in json.loads(result.stdout)] == [("s1", owner)]


def test_an_empty_directory_has_no_listeners_and_stays_empty() -> None:
    folder = short_folder()
    try:
        result = run(sys.executable, "-m", "wsgi_proxy_listen", "status", folder)
        as_json = run(sys.executable, "-m", "wsgi_proxy_listen", "status", folder, "--json")
        assert os.listdir(folder) == [], "a look writes nothing"
    finally:
        shutil.rmtree(folder)
    assert (result.returncode, result.stdout) == (0, f"no live listeners in {folder}\n")
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])


def test_what_a_terminal_would_act_on_is_shown_escaped() -> None:
    """Found in review: status printed entries raw, so escape sequences in a forged session
    id or address reached the operator's terminal (clear screen, window title, OSC 52 to
    the clipboard). They are escaped as repr does, and invalid ids are marked."""
    from wsgi_proxy_listen.cluster import EmbeddedDirectory

    folder = short_folder()
    try:
        EmbeddedDirectory(folder).entries()  # the table, empty
        live = 4102444800.0  # 2100
        forge_rows(
            folder,
            ("9-0123456789", "/x\x1b]0;owned\x07.sock", live, "\x1b]52;c;ZXZpbA==\x07"),
            ("8-0123456789", "/y.sock", live, "clear\x1b[2J\u202eme"),
            ("7-0123456789", "/z.sock", live, "fine-id"),
        )
        result = run(sys.executable, "-m", "wsgi_proxy_listen", "status", folder)
    finally:
        shutil.rmtree(folder)
    assert result.returncode == 0
    assert not set(result.stdout) & {"\x1b", "\x07", "\u202e"}
    lines = result.stdout.splitlines()
    assert lines[1].split()[:5] == [
        "'\\x1b]52;c;ZXZpbA==\\x07'",
        "-",
        "1",
        "9-0123456789",
        "/x\\x1b]0;owned\\x07.sock",
    ]
    assert lines[2].split()[0] == "'clear\\x1b[2J\\u202eme'"
    assert lines[3].split()[0] == "fine-id"
    assert [line.split()[-1] for line in lines[1:4]] == ["gone"] * 3  # nobody listens
    assert lines[4:] == [
        "3 listeners in 3 processes",
        "3 of the processes are gone (the socket refuses): the next request for one of its"
        " sessions removes its entries",
        "2 of them with a session or app that is no valid id (shown quoted): written by"
        " something else than this package",
    ]


@pytest.mark.parametrize(
    ("arguments", "environment", "said"),
    [
        pytest.param(
            ["status"], {}, "no directory: name one, or set WSGI_PROXY_LISTEN_DIRECTORY", id="none"
        ),
        pytest.param(
            ["status", "/nonexistent/wpl"],
            {},
            "no directory at /nonexistent/wpl: the folder does not exist",
            id="no-folder",
        ),
        pytest.param(["status", "relative"], {}, "unknown directory 'relative'", id="relative"),
        pytest.param(
            ["status", "redis://127.0.0.1:1/0"],
            {},
            "cannot read the directory redis://127.0.0.1:1/0: Error 111 connecting",
            id="redis-no-secret",
        ),
        pytest.param(
            ["check", "redis://127.0.0.1:1/0"],
            {},
            "cannot read the directory redis://127.0.0.1:1/0: Error 111 connecting",
            id="check-redis-refused",
        ),
        pytest.param(
            ["check", "/nonexistent/wpl"],
            {},
            "no directory at /nonexistent/wpl: the folder does not exist",
            id="check-no-folder",
        ),
        pytest.param(["check"], {}, "no directory: name one", id="check-none"),
        pytest.param(
            ["status", "redis://127.0.0.1:1/0", "--secret", "s"],
            {},
            "cannot read the directory redis://127.0.0.1:1/0: Error 111 connecting",
            id="redis-refused",
        ),
        pytest.param(
            ["status", "/" + "a" * 100],
            {},
            "is too long for Unix sockets in it (at most 83 bytes)",
            id="too-long",
        ),
        pytest.param(
            ["status", sys.executable],
            {},
            f"no directory at {sys.executable}: it is not a folder",
            id="a-file",
        ),
    ],
)
def test_a_directory_that_cannot_be_read_is_exit_status_2_and_one_line(
    arguments: list[str], environment: dict[str, str], said: str
) -> None:
    result = run(sys.executable, "-m", "wsgi_proxy_listen", *arguments, **environment)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert said in result.stderr


def test_a_redis_server_that_stopped_is_exit_status_2(redis_server: RedisServer) -> None:
    redis_server.stop()
    result = run(
        *(sys.executable, "-m", "wsgi_proxy_listen", "status", redis_server.url),
        WSGI_PROXY_LISTEN_SECRET=SECRET,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"cannot read the directory {redis_server.url}: Error 111")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("password", ["hunter2", "hun/ter2=", "[hunter2"])
def test_a_password_in_a_redis_url_is_never_printed(password: str) -> None:
    url = f"redis://:{password}@127.0.0.1:1/0"
    for secret in ([], ["--secret", "s"]):
        result = run(sys.executable, "-m", "wsgi_proxy_listen", "status", url, *secret)
        assert (result.returncode, len(result.stderr.splitlines())) == (2, 1), result.stderr
        assert "redis://:***@127.0.0.1:1/0" in result.stderr
        assert "hunter2" not in result.stderr + result.stdout


def test_what_the_table_says_is_one_line(tmp_path: Path) -> None:
    """Not only an outage: a folder whose table is no database, say."""
    folder = tmp_path / "wpl"
    folder.mkdir(mode=0o700)
    (folder / "directory.sqlite3").write_bytes(b"not a database, at all\n" * 100)
    result = run(sys.executable, "-m", "wsgi_proxy_listen", "status", str(folder))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"cannot read the directory {folder}: file is not a database\n"


def test_status_leaves_the_packages_logging_as_it_was(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Flask command runs it inside the app's process: its logging must go on."""
    from wsgi_proxy_listen.cli import status

    logger = logging.getLogger("wsgi_proxy_listen")
    handlers, level = list(logger.handlers), logger.level
    with caplog.at_level(logging.INFO, logger="wsgi_proxy_listen"):
        assert status("redis://127.0.0.1:1/0", secret="s") == 2
        # Calls that overlap, in threads of one process.
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: status("redis://127.0.0.1:1/0", secret="s"), range(16)))
        assert codes == [2] * 16
        assert (logger.handlers, logger.filters, logger.propagate) == (handlers, [], True)
        logger.info("still heard")
    assert logger.level == level
    assert [record.getMessage() for record in caplog.records] == ["still heard"]
    assert capsys.readouterr().err.count("cannot read the directory") == 17


def test_flask_status_with_a_setting_that_is_no_dict() -> None:
    result = run(
        *(
            str(BIN / "flask"),
            "--app",
            "tests.support.cli_flask_app",
            "wsgi-proxy-listen",
            "status",
        ),
        TEST_SETTING="['DIRECTORY', '/tmp/x']",
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith('app.config["WSGI_PROXY_LISTEN"]: must be a dict')
    assert len(result.stderr.splitlines()) == 1


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    from wsgi_proxy_listen.cli import main

    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def _two_deployments(url: str) -> list[t.Any]:
    """Two deployments on one database, each with a live process and a listener."""
    from wsgi_proxy_listen import Registry
    from wsgi_proxy_listen.cluster import RedisDirectory

    made = []
    for secret, session in (("first-secret", "in-first"), ("second-secret", "in-second")):
        directory = RedisDirectory(url, secret=secret)
        registry = Registry(directory=directory)
        directory.start_serving()
        registry.listen(lambda request: "x", session=session)
        made.append((directory, registry))
    return made


def test_status_without_a_secret_lists_every_deployment_by_its_namespace(
    redis_server: RedisServer,
) -> None:
    from wsgi_proxy_listen.cluster.variables import namespace_for

    made = _two_deployments(redis_server.url)
    try:
        first, second = namespace_for("first-secret"), namespace_for("second-secret")
        every = run(sys.executable, "-m", "wsgi_proxy_listen", "status", redis_server.url)
        assert every.returncode == 0, every.stderr
        lines = every.stdout.splitlines()
        assert lines[0].split()[:2] == ["NAMESPACE", "SESSION"]
        assert sorted(tuple(line.split()[:2]) for line in lines[1:-1]) == sorted(
            [(first, "in-first"), (second, "in-second")]
        )
        assert lines[-1] == "2 listeners in 2 processes of 2 deployments"
        # With a secret, or a namespace: that deployment alone.
        for only in (["--secret", "second-secret"], ["--namespace", second]):
            one = run(
                sys.executable,
                "-m",
                "wsgi_proxy_listen",
                "status",
                redis_server.url,
                "--json",
                *only,
            )
            assert one.returncode == 0, one.stderr
            assert [(row["namespace"], row["session"]) for row in json.loads(one.stdout)] == [
                (second, "in-second")
            ]
        checked = run(sys.executable, "-m", "wsgi_proxy_listen", "check", redis_server.url)
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout == (
            f"{redis_server.url} answers: namespace {min(first, second)}: 1 listener in 1"
            f" process; namespace {max(first, second)}: 1 listener in 1 process\n"
        )
    finally:
        for directory, registry in made:
            directory.close()
            registry.close()


def test_check_of_an_empty_redis_and_of_a_folder(redis_server: RedisServer, tmp_path: Path) -> None:
    checked = run(sys.executable, "-m", "wsgi_proxy_listen", "check", redis_server.url)
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout == f"{redis_server.url} answers: no deployment has a live process there\n"
    folder = tmp_path / "wpl"
    folder.mkdir(mode=0o700)
    checked = run(str(BIN / "wsgi-proxy-listen"), "check", WSGI_PROXY_LISTEN_DIRECTORY=str(folder))
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout == f"{folder} answers: 0 listeners in 0 processes\n"


def test_flask_check_reads_the_apps_directory(redis_server: RedisServer) -> None:
    result = run(
        str(BIN / "flask"),
        *("--app", "tests.support.cli_flask_app", "wsgi-proxy-listen", "check"),
        TEST_DIRECTORY=redis_server.url,
        TEST_SECRET=SECRET,
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout
        == f"{redis_server.url} answers: namespace {NAMESPACE}: 0 listeners in 0 processes\n"
    )
    redis_server.stop()
    result = run(
        str(BIN / "flask"),
        *("--app", "tests.support.cli_flask_app", "wsgi-proxy-listen", "check"),
        TEST_DIRECTORY=redis_server.url,
        TEST_SECRET=SECRET,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"cannot read the directory {redis_server.url}: Error 111")


def test_flask_status_reads_the_apps_namespace(redis_server: RedisServer) -> None:
    """Found in review: the Flask commands left the NAMESPACE setting out, and read the
    secret's namespace instead (nothing, exit status 0)."""
    from wsgi_proxy_listen import Registry
    from wsgi_proxy_listen.cluster import RedisDirectory

    directory = RedisDirectory(redis_server.url, secret=SECRET, namespace="named-in-settings")
    registry = Registry(directory=directory)
    directory.start_serving()
    registry.listen(lambda request: "x", session="in-named")
    try:
        result = run(
            str(BIN / "flask"),
            *("--app", "tests.support.cli_flask_app", "wsgi-proxy-listen", "status", "--json"),
            TEST_DIRECTORY=redis_server.url,
            TEST_SECRET=SECRET,
            TEST_NAMESPACE="named-in-settings",
        )
        assert result.returncode == 0, result.stderr
        assert [row["session"] for row in json.loads(result.stdout)] == ["in-named"]
    finally:
        directory.close()
        registry.close()
