"""A Flask host set up with the ``ProxyListen`` extension and an app factory.
``POST /reports/<id>`` starts a session that serves a CSV export.

Run it with ``python -m examples.flask_host``, then
``curl -X POST http://127.0.0.1:8000/reports/r1`` and open the link it prints.
"""

from __future__ import annotations

from flask import Flask, request
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import listen
from wsgi_proxy_listen.flask import ProxyListen

proxy = ProxyListen()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["WSGI_PROXY_LISTEN"] = {
        "MAX_CONTENT_LENGTH": 1024 * 1024,
        # Listeners get every cookie but the host's login; their own ones reach them.
        "FORWARD_COOKIES": [app.config["SESSION_COOKIE_NAME"]],
        "MAX_CONCURRENCY": 4,  # below the server's threads: a hanging listener holds 4
    }
    proxy.init_app(app)

    @app.post("/reports/<report_id>")
    def start_report(report_id: str) -> str:
        def export(listener_request: Request) -> Response:
            return Response(f"report,{report_id}\n", content_type="text/csv")

        handle = listen(export, session=report_id)
        return f"{request.host_url.rstrip('/')}{handle.url('/data.csv', request.environ)}\n"

    return app


if __name__ == "__main__":
    create_app().run("127.0.0.1", 8000)
