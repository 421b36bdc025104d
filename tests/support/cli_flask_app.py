"""A Flask app whose settings name the directory, for ``flask wsgi-proxy-listen status`` in
tests/test_cli.py (TEST_DIRECTORY, and TEST_SECRET for Redis); or, with TEST_SETTING (a
Python literal), an app that holds that setting and no ProxyListen."""

from __future__ import annotations

import ast
import os

from flask import Flask

from wsgi_proxy_listen.flask import ProxyListen

app = Flask(__name__)
if "TEST_SETTING" in os.environ:
    app.config["WSGI_PROXY_LISTEN"] = ast.literal_eval(os.environ["TEST_SETTING"])
else:
    app.config["WSGI_PROXY_LISTEN"] = {
        "DIRECTORY": os.environ["TEST_DIRECTORY"],
        "SECRET": os.environ.get("TEST_SECRET") or None,
        "NAMESPACE": os.environ.get("TEST_NAMESPACE") or None,
    }
    ProxyListen(app)
