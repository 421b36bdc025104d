"""A Flask host for tests/test_metrics.py under gunicorn: its routes register listeners
that answer 200, raise (500), need a login nobody has (401), or take a second with one
request at a time (the second at once: 503); /metrics serves the counts; /hold keeps the
worker that takes it busy until the test lets go, so that the next requests go to the other."""

from __future__ import annotations

import os
import time
import typing as t
from pathlib import Path

from flask import Flask, Response, request

from wsgi_proxy_listen import listen
from wsgi_proxy_listen.flask import ProxyListen
from wsgi_proxy_listen.metrics import exposition

app = Flask(__name__)
app.config["WSGI_PROXY_LISTEN"] = {
    "MAX_CONTENT_LENGTH": 1024,
    "AUTHENTICATE": lambda environ: None,  # nobody is logged in
}
ProxyListen(app)


def hello(request: object) -> str:
    return "hello"


def broken(request: object) -> str:
    raise RuntimeError("this listener is broken")


def slow(request: object) -> str:
    time.sleep(1.0)
    return "slow"


class Handler(t.TypedDict):
    handler: t.Callable[[object], str]


class Kind(Handler, total=False):
    """The arguments of :func:`listen` that make a listener of one kind."""

    access: str
    max_concurrency: int


KINDS: dict[str, Kind] = {
    "hello": {"handler": hello},
    "broken": {"handler": broken},
    "private": {"handler": hello, "access": "authenticated"},
    "slow": {"handler": slow, "max_concurrency": 1},
}


@app.post("/sessions/<kind>/<session>")
def start(kind: str, session: str) -> str:
    listen(session=session, **KINDS[kind])
    return str(os.getpid())


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())


@app.get("/hold")
def hold() -> str:
    """Write this worker's pid to the file ``mark`` names, then wait until the test deletes it."""
    mark = Path(request.args["mark"])
    written = mark.with_suffix(".part")
    written.write_text(str(os.getpid()))
    written.replace(mark)
    deadline = time.monotonic() + 30
    while mark.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return str(os.getpid())


@app.get("/metrics")
def metrics_page() -> Response:
    body, content_type = exposition(request.headers.get("Accept"))
    return Response(body, content_type=content_type)
