"""A Flask host whose run-time listeners are reachable from every worker.

On one machine, name a folder (the embedded directory: nothing to install or run):

    WSGI_PROXY_LISTEN_DIRECTORY=$XDG_RUNTIME_DIR/myhost-proxy \\
        gunicorn -c examples/cluster/gunicorn_conf.py examples.cluster.app:app

On several machines, name a Redis server and give every host the same secret:

    WSGI_PROXY_LISTEN_DIRECTORY=redis://10.0.0.5:6379/0 WSGI_PROXY_LISTEN_SECRET=change-me \\
        gunicorn -c examples/cluster/gunicorn_conf.py examples.cluster.app:app

Then ``curl -X POST http://127.0.0.1:8000/sessions/r1`` registers a listener in
whichever worker takes that request, and
``curl http://127.0.0.1:8000/proxy/sessions/r1/`` reaches it from any worker.
"""

from __future__ import annotations

import itertools
import logging
import os

from flask import Flask, Response, request

from wsgi_proxy_listen import close_session, listen, register_app
from wsgi_proxy_listen.flask import ProxyListen
from wsgi_proxy_listen.metrics import exposition

from .listener import report

logger = logging.getLogger(__name__)
app = Flask(__name__)
# No DIRECTORY setting: the directory comes from WSGI_PROXY_LISTEN_DIRECTORY.
app.config["WSGI_PROXY_LISTEN"] = {"MAX_CONTENT_LENGTH": 64 * 1024 * 1024}
ProxyListen(app)


@app.post("/sessions/<session>")
def start_session(session: str) -> str:
    listen(report(session), session=session, app=request.args.get("app"))
    return str(os.getpid())


@app.delete("/sessions/<session>")
def stop_session(session: str) -> str:
    return str(close_session(session))


@app.get("/pid")
def pid() -> str:
    return str(os.getpid())


@app.get("/metrics")
def metrics_page() -> Response:
    """Prometheus metrics (the extra ``metrics``): every worker's, whichever answers, when
    gunicorn starts with PROMETHEUS_MULTIPROC_DIR set (see gunicorn_conf.py)."""
    body, content_type = exposition(request.headers.get("Accept"))
    return Response(body, content_type=content_type)


_numbers = itertools.count(1)


def start_dashboard() -> None:
    """Auto-start: runs once across every worker, in the one that got the first request."""
    session = f"dash-{os.getpid()}-{next(_numbers)}"
    listen(report(session), session=session, app="dashboard")


register_app("dashboard", start=start_dashboard, start_timeout=10)


def start_scratchpad() -> None:
    """An app with automatic shutdown: started by the first request, closed by the
    worker that owns it once it has served nothing for SCRATCHPAD_IDLE_TIMEOUT seconds
    (5 minutes by default); the next request starts a new one."""
    session = f"scratch-{os.getpid()}-{next(_numbers)}"
    listen(report(session), session=session, app="scratchpad")


def stop_scratchpad(session: str) -> None:
    logger.warning("scratchpad session %s stopped after being idle", session)


register_app(
    "scratchpad",
    start=start_scratchpad,
    start_timeout=10,
    idle_timeout=float(os.environ.get("SCRATCHPAD_IDLE_TIMEOUT", "300")),
    stop=stop_scratchpad,
)
# Registered at start-up, before the worker serves a request: every worker has it,
# it is served locally and never published.
listen(report("everywhere"), session="everywhere")
