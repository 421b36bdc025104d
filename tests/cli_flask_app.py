"""A Flask app whose settings name the directory, for ``flask wsgi-proxy-listen status`` in
tests/test_cli.py (TEST_DIRECTORY, and TEST_SECRET for Redis)."""

from __future__ import annotations

import os

from flask import Flask

from wsgi_proxy_listen.flask import ProxyListen

app = Flask(__name__)
app.config["WSGI_PROXY_LISTEN"] = {
    "DIRECTORY": os.environ["TEST_DIRECTORY"],
    "SECRET": os.environ.get("TEST_SECRET") or None,
}
ProxyListen(app)
