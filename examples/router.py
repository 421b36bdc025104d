"""A class listener with options that routes several endpoints with werkzeug's routing,
the counterpart of a ``Plug.Router`` listener in Kino.Proxy.

Run it with ``python -m examples.router`` and open
http://127.0.0.1:8000/proxy/sessions/router/echo/hi
"""

from __future__ import annotations

from werkzeug.exceptions import NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request

from wsgi_proxy_listen import Listener, ProxyMiddleware, listen


class Router:
    """Instantiated once by ``listen()`` as ``Router(**options)``."""

    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting
        self.url_map = Map(
            [Rule("/hello", endpoint="hello"), Rule("/echo/<message>", endpoint="echo")]
        )

    def __call__(self, request: Request) -> str:
        # match() raises NotFound for any other path, which becomes the 404 response.
        endpoint, arguments = self.url_map.bind_to_environ(request.environ).match()
        if endpoint == "hello":
            return self.greeting
        return str(arguments["message"]).upper()


def main() -> Listener:
    return listen(Router, session="router", options={"greeting": "hello from a router"})


if __name__ == "__main__":
    main()
    run_simple("127.0.0.1", 8000, ProxyMiddleware(NotFound()))
