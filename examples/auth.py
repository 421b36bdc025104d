"""A listener that only answers callers with the right bearer token.

Run it with ``REPORT_TOKEN=s3cret python -m examples.auth`` and try
``curl -H "Authorization: Bearer s3cret" http://127.0.0.1:8000/proxy/sessions/secret-report/``
"""

from __future__ import annotations

import os

from werkzeug.exceptions import NotFound
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request

from wsgi_proxy_listen import Listener, ProxyMiddleware, listen
from wsgi_proxy_listen.auth import require_bearer


def report(request: Request) -> dict[str, object]:
    return {"rows": [[1, 2], [3, 4]]}


def main() -> Listener:
    return listen(require_bearer(report, os.environ["REPORT_TOKEN"]), session="secret-report")


if __name__ == "__main__":
    main()
    run_simple("127.0.0.1", 8000, ProxyMiddleware(NotFound()))
