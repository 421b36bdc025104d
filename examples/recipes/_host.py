"""The Flask host every recipe runs in: a host page at ``/``, the middleware, and
``/favicon.ico`` answered (browsers ask for it at the root)."""

from __future__ import annotations

import sys

from flask import Flask
from werkzeug.serving import run_simple

from wsgi_proxy_listen import ProxyMiddleware


def host(title: str, listener_url: str) -> Flask:
    app = Flask(__name__)
    app.wsgi_app = ProxyMiddleware(app.wsgi_app)  # type: ignore[method-assign]

    @app.get("/")
    def index() -> str:
        return f'<!doctype html><title>{title}</title><a href="{listener_url}">{title}</a>'

    @app.get("/favicon.ico")
    def favicon() -> tuple[str, int]:
        return "", 204

    return app


def serve(app: Flask) -> None:
    """Serve ``app`` on 127.0.0.1 at the port given as the only argument (8000 without)."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    print(f"serving on http://127.0.0.1:{port}/", flush=True)
    run_simple("127.0.0.1", port, app, threaded=True)
