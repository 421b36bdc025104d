"""A request handler written with webob: the annotation picks webob's Request.

Run it with ``python -m examples.webob_handler`` and open
http://127.0.0.1:8000/proxy/sessions/greeter/?name=Ada
"""

from __future__ import annotations

import webob
from werkzeug.exceptions import NotFound
from werkzeug.serving import run_simple

from wsgi_proxy_listen import Listener, ProxyMiddleware, listen


def greet(request: webob.Request) -> webob.Response:
    name = request.GET.get("name", "world")
    return webob.Response(f"hello {name}\n", content_type="text/plain", charset="utf-8")


def main() -> Listener:
    return listen(greet, session="greeter")


if __name__ == "__main__":
    main()
    run_simple("127.0.0.1", 8000, ProxyMiddleware(NotFound()))
