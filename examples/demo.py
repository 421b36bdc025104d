"""The demo host that ``make demo`` runs.

A Flask host on http://127.0.0.1:8000 wrapped in ProxyMiddleware, with two
listeners registered: the CSV export of SPEC §1 (a request handler) and a
small WSGI app.
"""

from __future__ import annotations

import argparse
import typing as t
from collections.abc import Iterable

from flask import Flask
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import Listener, ProxyMiddleware, Registry

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def export(request: Request) -> Response | str:
    """The data-export listener of SPEC §1."""
    if request.path == "/export/data":
        return Response("a,b\n1,2\n", content_type="text/csv")
    return "use /export/data to get the report"


def clock(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A plain WSGI listener that echoes the path it was given."""
    body = f"clock listener at {environ['SCRIPT_NAME']!r}, path {environ['PATH_INFO']!r}\n"
    data = body.encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


def create_app(registry: Registry | None = None) -> tuple[Flask, list[Listener]]:
    """The host app and the listeners registered on it."""
    registry = registry or Registry()
    app = Flask(__name__)

    @app.route("/")
    def index() -> str:
        return "demo host: try the /proxy/sessions/... links printed on the console\n"

    app.wsgi_app = ProxyMiddleware(app.wsgi_app, registry)  # type: ignore[method-assign]
    listeners = [
        registry.listen(export, session="report-1"),
        registry.listen(clock, session="clock"),
    ]
    return app, listeners


def curl_lines(base: str, listeners: list[Listener]) -> list[str]:
    """The commands printed on start-up, one per thing to try."""
    export_listener, clock_listener = listeners
    return [
        f"curl {base}/",
        f"curl {base}{export_listener.url('/export/data')}",
        f"curl {base}{clock_listener.url('/any/path')}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    options = parser.parse_args(argv)
    app, listeners = create_app()
    base = f"http://{options.host}:{options.port}"
    print("Try:")
    for line in curl_lines(base, listeners):
        print(f"  {line}")
    run_simple(options.host, options.port, app, threaded=True)


if __name__ == "__main__":
    main()
