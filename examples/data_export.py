"""A CSV export from a session: the first example of Kino.Proxy's documentation.

Run it with ``python -m examples.data_export`` and open
http://127.0.0.1:8000/proxy/sessions/report-1/export/data
"""

from __future__ import annotations

from werkzeug.exceptions import NotFound
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import Listener, ProxyMiddleware, listen


def export(request: Request) -> Response | str:
    if request.path == "/export/data":
        return Response("a,b\n1,2\n", content_type="text/csv")
    return "use /export/data to get the report"


def main() -> Listener:
    return listen(export, session="report-1")


if __name__ == "__main__":
    main()
    run_simple("127.0.0.1", 8000, ProxyMiddleware(NotFound()))
