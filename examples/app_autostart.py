"""An app whose first request starts its session, as Livebook starts an app.

Run it with ``python -m examples.app_autostart`` and open
http://127.0.0.1:8000/proxy/apps/dashboard/ : the first request starts a
session, the next ones reach the same one.
"""

from __future__ import annotations

import itertools

from werkzeug.exceptions import NotFound
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request

from wsgi_proxy_listen import App, ProxyMiddleware, listen, register_app

_numbers = itertools.count(1)


def start_dashboard() -> None:
    """Called with no arguments, in a thread of its own, by the app's first request."""
    session = f"dashboard-{next(_numbers)}"

    def dashboard(request: Request) -> str:
        return f"dashboard served by session {session}, path {request.path}\n"

    listen(dashboard, session=session, app="dashboard")


def main() -> App:
    return register_app("dashboard", start=start_dashboard, start_timeout=10)


if __name__ == "__main__":
    main()
    run_simple("127.0.0.1", 8000, ProxyMiddleware(NotFound()), threaded=True)
