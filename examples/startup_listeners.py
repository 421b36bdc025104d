"""Listeners registered at start-up, in every worker process.

Listeners registered while a server runs live in the worker process that
registered them. Registered at start-up instead, they exist in every worker.
This file is both the gunicorn configuration and the app:

    gunicorn -w 4 -c examples/startup_listeners.py examples.startup_listeners:application

``post_fork`` runs in each worker after gunicorn forks it. ``POST /start/<id>``
shows the other case: a listener registered at run time answers only in the
worker that registered it, and the other workers log a warning on their first miss.
"""

from __future__ import annotations

import os
import typing as t

from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import ProxyMiddleware, listen


def status(request: Request) -> str:
    return f"status from worker {os.getpid()}"


def register_all() -> None:
    listen(status, session="status")


def post_fork(server: t.Any, worker: t.Any) -> None:
    register_all()


host_routes = Map([Rule("/start/<session>", endpoint="start", methods=["POST"])])


@Request.application
def host(request: Request) -> Response:
    _, arguments = host_routes.bind_to_environ(request.environ).match()
    listen(lambda listener_request: "run-time listener", session=arguments["session"])
    return Response(f"started in worker {os.getpid()}")


application = ProxyMiddleware(host)
