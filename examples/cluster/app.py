"""A Flask host whose listeners are reachable from every worker and every host.

    redis-server --port 6379 --save '' &
    export WSGI_PROXY_LISTEN_SECRET=change-me REDIS_URL=redis://127.0.0.1:6379/0
    gunicorn -c examples/cluster/gunicorn.conf.py examples.cluster.app:app

Then ``curl -X POST http://127.0.0.1:8000/sessions/r1`` registers a listener in
whichever worker takes that request, and
``curl http://127.0.0.1:8000/proxy/sessions/r1/`` reaches it from any worker.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator

from flask import Flask, request
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import Registry
from wsgi_proxy_listen.cluster import RedisDirectory
from wsgi_proxy_listen.flask import ProxyListen

registry = Registry(
    directory=RedisDirectory(
        url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        secret=os.environ["WSGI_PROXY_LISTEN_SECRET"],
        advertise_host=os.environ.get("ADVERTISE_HOST", "127.0.0.1"),
        lease=float(os.environ.get("WSGI_PROXY_LISTEN_LEASE", "10")),
        read_timeout=float(os.environ.get("WSGI_PROXY_LISTEN_READ_TIMEOUT", "60")),
    )
)
app = Flask(__name__)
ProxyListen(app, registry=registry)


def report(session: str) -> object:
    """A listener: answers with its session and worker, streams and takes uploads."""
    owner = os.getpid()

    def listener(listener_request: Request) -> Response | str | dict[str, object]:
        if listener_request.path == "/download":
            megabytes = int(listener_request.args.get("mb", "1"))
            return Response(_chunks(megabytes), content_type="application/octet-stream")
        if listener_request.path == "/upload":
            digest, size = hashlib.sha256(), 0
            while chunk := listener_request.stream.read(65536):
                digest.update(chunk)
                size += len(chunk)
            return {"size": size, "sha256": digest.hexdigest()}
        return f"{session} from {owner} path {listener_request.path}"

    return listener


def _chunks(megabytes: int) -> Iterator[bytes]:
    block = b"x" * 65536
    for _ in range(megabytes * 16):
        yield block


@app.post("/sessions/<session>")
def start_session(session: str) -> str:
    registry.listen(report(session), session=session, app=request.args.get("app"))
    return str(os.getpid())


@app.delete("/sessions/<session>")
def stop_session(session: str) -> str:
    return str(registry.close_session(session))


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())


_numbers = itertools.count(1)


def start_dashboard() -> None:
    """Auto-start: runs once cluster-wide, in the worker that got the first request."""
    session = f"dash-{os.getpid()}-{next(_numbers)}"
    registry.listen(report(session), session=session, app="dashboard")


registry.register_app("dashboard", start=start_dashboard, start_timeout=10)
# Registered at start-up, before the worker serves a request: every worker has it,
# it is served locally and never published.
registry.listen(report("everywhere"), session="everywhere")
