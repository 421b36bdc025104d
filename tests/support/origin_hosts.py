"""A host whose listeners serve pages written by someone else, for the origin tests of
tests/test_browser.py, in a process of its own:

    python -m tests.support.origin_hosts same PORT      # listeners on the host's origin

The host is Flask: ``/login?user=NAME`` logs NAME in (an HttpOnly cookie
``host_session``), ``/account`` shows the user's account with a CSRF token. The listener
``prying`` serves a page whose script tries what a stranger's page would: read
``document.cookie``, write a cookie for ``/account``, and read ``/account`` with the
user's cookies; it shows what it got as JSON in ``#out``. ``boxed`` serves the same page,
sandboxed.
"""

from __future__ import annotations

import sys

import flask
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import Registry
from wsgi_proxy_listen.flask import ProxyListen

NO_ICON = '<link rel="icon" href="data:,">'

PRYING = f"""<!doctype html><head>{NO_ICON}<title>prying</title></head>
<p id="out"></p>
<script>
const out = {{}};
try {{ out.read = document.cookie; }} catch (error) {{ out.read = "threw " + error.name; }}
fetch(new URL("/account", location.href), {{credentials: "include"}})
  .then(answer => answer.text())
  .then(text => {{ out.account = text; }}, error => {{ out.account = "failed " + error.name; }})
  .finally(() => {{
    try {{
      document.cookie = "host_session=tossed; path=/account";
      out.wrote = "done";
    }} catch (error) {{ out.wrote = "threw " + error.name; }}
    document.getElementById("out").textContent = JSON.stringify(out);
  }});
</script>"""


def prying(request: Request) -> Response:
    return Response(PRYING, content_type="text/html")


def host(registry: Registry) -> flask.Flask:
    app = flask.Flask("origin-host")
    app.secret_key = "origin-host-secret"
    app.config["SESSION_COOKIE_NAME"] = "host_session"

    @app.get("/login")
    def login() -> str:
        flask.session["user"] = flask.request.args["user"]
        flask.session["csrf"] = "csrf-of-" + flask.request.args["user"]
        return f"<!doctype html><head>{NO_ICON}</head><p>logged in</p>"

    @app.get("/account")
    def account() -> str:
        user = flask.session.get("user")
        if user is None:
            return "nobody"
        return f"account of {user}, csrf={flask.session['csrf']}"

    @app.get("/favicon.ico")
    def favicon() -> tuple[str, int]:
        return "", 204

    ProxyListen(app, registry=registry)
    return app


def main(kind: str, port: int) -> None:
    registry = Registry()
    registry.listen(prying, session="prying")
    registry.listen(prying, session="boxed", sandbox=True)
    app = host(registry)
    print("ready", flush=True)
    run_simple("127.0.0.1", port, app, threaded=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
