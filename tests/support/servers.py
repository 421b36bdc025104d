"""Real WSGI servers for the tests, each a subprocess on 127.0.0.1 serving
tests/support/server_app.py: gunicorn (sync and gthread workers), waitress, werkzeug's
development server, and the start-up listeners example under gunicorn."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import typing as t
from collections.abc import Iterator
from pathlib import Path

from .wire import free_port, stop, wait_until_listening

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ["gunicorn-sync", "gunicorn-gthread", "waitress", "werkzeug"]
THREADED = ["gunicorn-gthread", "waitress", "werkzeug"]
# Which environ style of the bad-input table each server matches.
STYLE = {
    "gunicorn-sync": "gunicorn",
    "gunicorn-gthread": "gunicorn",
    "waitress": "waitress",
    "werkzeug": "gunicorn",
}


def command(server: str, port: int) -> list[str]:
    bind = f"127.0.0.1:{port}"
    app = "tests.support.server_app:application"
    # --limit-request-line 0 lets the long-path cases reach the app: gunicorn's default
    # refuses request lines over 4094 bytes with its own 414.
    gunicorn = [sys.executable, "-m", "gunicorn", "-w", "1", "-b", bind]
    gunicorn += ["--limit-request-line", "0"]
    if server == "gunicorn-sync":
        return [*gunicorn, "-k", "sync", app]
    if server == "gunicorn-gthread":
        return [*gunicorn, "-k", "gthread", "--threads", "8", app]
    if server == "gunicorn-startup-example":
        config = "examples/startup_listeners.py"
        return [*gunicorn[:3], "-w", "2", "-b", bind, "-c", config, config_app(config)]
    if server == "waitress":
        return [sys.executable, "-m", "waitress", f"--listen={bind}", "--threads=8", app]
    return [sys.executable, "-m", "tests.support.server_app", str(port)]


def config_app(config: str) -> str:
    return config.removesuffix(".py").replace("/", ".") + ":application"


class Server(t.NamedTuple):
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: t.IO[bytes]


@contextlib.contextmanager
def running(server: str, **env: str) -> Iterator[Server]:
    """Start ``server`` on a free port, wait until it accepts, stop it afterwards."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command(server, port),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_listening(process, port, log)
            yield Server(server, port, process, log)
        finally:
            stop(process)
