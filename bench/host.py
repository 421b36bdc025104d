"""The host that ``make bench-cluster`` measures: examples/cluster/app.py, plus the peers'
way of reaching a process of its own, a reverse proxy inside the host (urllib3, as
jupyter-server-proxy deployments do) to a backend server (waitress) that runs the same
listener: ``/peer/...`` goes to ``BENCH_BACKEND``; ``/floor/``, the least any hop
can cost in this host (one raw exchange with the process at ``BENCH_FLOOR``, which
answers at once), and ``/floor/download?mb=N``, the most a hop can stream (what
that process sends as fast as it can, passed on as each ``recv`` gives it); and
``bare-here``, a start-up listener that is a bare WSGI function, the twin of a
runtime's ``bare``, so that the hop is measured without the cost of a listener's
framework.

    BENCH_BACKEND=http://127.0.0.1:9000 gunicorn bench.host:app
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import typing as t
from collections.abc import Iterator

import urllib3
from flask import Response, request

from bench.bare import bare
from examples.cluster.app import app
from examples.cluster.listener import report
from wsgi_proxy_listen import listen
from wsgi_proxy_listen.handlers import to_wsgi
from wsgi_proxy_listen.headers import is_hop_by_hop

__all__ = ["app", "backend"]

_pool = urllib3.PoolManager(maxsize=16, retries=False)

#: The backend's WSGI app: the listener of examples/cluster/app.py, as a server runs it.
backend = to_wsgi(report("peer"))


@app.route("/peer/", defaults={"rest": ""}, methods=["GET", "POST"])
@app.route("/peer/<path:rest>", methods=["GET", "POST"])
def peer(rest: str) -> Response:
    upstream = _pool.request(
        request.method,
        f"{os.environ['BENCH_BACKEND']}/{rest}",
        body=request.stream if request.content_length else None,
        headers={k: v for k, v in request.headers.items() if not is_hop_by_hop(k)},
        preload_content=False,
    )

    def body() -> Iterator[bytes]:
        try:
            yield from upstream.stream(65536)
        finally:
            upstream.release_conn()

    headers = [(k, v) for k, v in upstream.headers.items() if not is_hop_by_hop(k)]
    return Response(body(), status=upstream.status, headers=headers)


listen(bare, session="bare-here", kind="wsgi")

_floor = threading.local()


def floor(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
    """The least a hop can do in this host: one length-prefixed exchange over a kept
    Unix socket with a process that answers at once (``BENCH_FLOOR``), no more."""
    connection = getattr(_floor, "connection", None)
    if connection is None:
        connection = _floor.connection = socket.socket(socket.AF_UNIX)
        connection.connect(os.environ["BENCH_FLOOR"])
        _floor.reader = connection.makefile("rb")
    connection.sendall(struct.pack(">I", 20) + b"x" * 20)
    body = _floor.reader.read(struct.unpack(">I", _floor.reader.read(4))[0])
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


_inner = app.wsgi_app


def floor_download(
    environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]
) -> Iterator[bytes]:
    """The most a hop can do for a download in this host: what each ``recv`` from a
    process that sends as fast as it can gives, passed on as it is."""
    megabytes = environ.get("QUERY_STRING", "").partition("mb=")[2] or "1"
    connection = socket.socket(socket.AF_UNIX)
    connection.connect(os.environ["BENCH_FLOOR"])
    asked = f"mb={int(megabytes)}".encode()
    connection.sendall(struct.pack(">I", len(asked)) + asked)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def body() -> Iterator[bytes]:
        with connection:
            while chunk := connection.recv(65536):
                yield chunk

    return body()


def _with_floor(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> t.Any:
    path = environ.get("PATH_INFO")
    if path == "/floor/":
        return floor(environ, start_response)
    if path == "/floor/download":
        return floor_download(environ, start_response)
    return _inner(environ, start_response)


app.wsgi_app = _with_floor  # type: ignore[method-assign]
