"""Dash as a listener.

The gotcha: Dash writes the URLs of its scripts and of its callbacks into the page
when the app is built, from ``requests_pathname_prefix``. Without it the page loads
its scripts from the host's root and stays on "Loading...". The listener's URL is
known before it listens: give it ``url(session=...)``, and keep Dash's own routes at
``/`` (the middleware moves the prefix into ``SCRIPT_NAME``).
"""

from __future__ import annotations

from dash import Dash, Input, Output, dcc, html
from flask import Flask

from wsgi_proxy_listen import listen, url

from ._host import host, serve

SESSION = "dash"


def dashboard(prefix: str) -> Dash:
    """A small Dash app with a callback, served under ``prefix``."""
    app = Dash(__name__, requests_pathname_prefix=prefix, routes_pathname_prefix="/")
    app.title = "Dash through the proxy"
    app.layout = html.Div(
        [
            html.H1("Dash through the proxy"),
            dcc.Input(id="name", value="proxy", type="text"),
            html.P(id="greeting"),
        ]
    )

    @app.callback(Output("greeting", "children"), Input("name", "value"))
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    return app


def create_app() -> Flask:
    app = host("Dash", url(session=SESSION))
    listen(dashboard(url(session=SESSION)).server, session=SESSION)
    return app


if __name__ == "__main__":
    serve(create_app())
