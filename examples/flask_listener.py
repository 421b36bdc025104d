"""A whole Flask app registered as a listener: its ``url_for`` links carry the prefix,
because the middleware moves it into ``SCRIPT_NAME``.

Run it with ``python -m examples.flask_listener`` and open
http://127.0.0.1:8000/proxy/sessions/flask-nb/
"""

from __future__ import annotations

from flask import Flask, url_for
from werkzeug.exceptions import NotFound
from werkzeug.serving import run_simple

from wsgi_proxy_listen import Listener, ProxyMiddleware, listen

notebook = Flask(__name__)


@notebook.route("/")
def index() -> str:
    return f'<a href="{url_for("item", name="first")}">first item</a>'


@notebook.route("/items/<name>")
def item(name: str) -> dict[str, str]:
    return {"item": name, "self": url_for("item", name=name)}


def main() -> Listener:
    return listen(notebook, session="flask-nb")


if __name__ == "__main__":
    main()
    run_simple("127.0.0.1", 8000, ProxyMiddleware(NotFound()))
