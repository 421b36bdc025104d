"""A host whose listeners serve pages written by someone else, for the origin tests of
tests/test_browser.py, in a process of its own:

    python -m tests.support.origin_hosts same PORT      # listeners on the host's origin
    python -m tests.support.origin_hosts origins PORT   # each session on an origin of its
                                                        # own, under listeners.localhost:PORT

The host is Flask: ``/login?user=NAME`` logs NAME in (an HttpOnly cookie
``host_session``), ``/account`` shows the user's account with a CSRF token. The listener
``prying`` serves a page whose script tries what a stranger's page would: read
``document.cookie``, write a cookie for ``/account``, and read ``/account`` with the
user's cookies (``?target=URL`` reads another); it shows what it got as JSON in ``#out``.
``boxed`` serves the same page, sandboxed.

With origins, the host is at ``http://localhost:PORT`` (``/links`` links every listener by
its path), ``prying`` is for alice only and shows who it sees in ``#user``, ``other`` is
another session, ``tosser`` sets a cookie named as the host's login, and ``dj`` is the
Django admin (superuser ``admin``, password ``admin-password``). ``TEST_TOKEN_SECONDS``
shortens the tokens' life.
"""

from __future__ import annotations

import os
import sys
import typing as t

import flask
import markupsafe
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import ProxyMiddleware, Registry, origins
from wsgi_proxy_listen.flask import ProxyListen

from .browser_hosts import django_admin

NO_ICON = '<link rel="icon" href="data:,">'

PRYING = f"""<!doctype html><head>{NO_ICON}<title>prying</title></head>
<p id="out"></p>
<script>
const out = {{}};
try {{ out.read = document.cookie; }} catch (error) {{ out.read = "threw " + error.name; }}
const target = new URLSearchParams(location.search).get("target") || "/account";
fetch(new URL(target, location.href), {{credentials: "include"}})
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
    user = markupsafe.escape(request.remote_user or "nobody")
    cookies = markupsafe.escape(request.headers.get("Cookie", ""))
    return Response(
        f'{PRYING}<p id="user">{user}</p><p id="cookies">{cookies}</p>',
        content_type="text/html",
    )


def tosser(request: Request) -> Response:
    """A listener that sets a cookie named as the host's login, for the whole origin."""
    response = Response(
        f"<!doctype html><head>{NO_ICON}</head><p id='tossed'>tossed</p>", content_type="text/html"
    )
    response.set_cookie("host_session", "tossed-by-a-listener", path="/")
    return response


def host(registry: Registry) -> flask.Flask:
    app = flask.Flask("origin-host")
    app.secret_key = "origin-host-secret"
    app.config["SESSION_COOKIE_NAME"] = "host_session"

    @app.get("/login")
    def login() -> t.Any:
        there = flask.request.args.get("next", "")
        user = flask.request.args.get("user")
        if user is None:
            return (
                f"<!doctype html><head>{NO_ICON}</head><form>"
                f'<input type="hidden" name="next" value="{markupsafe.escape(there)}">'
                '<input name="user"><button>log in</button></form>'
            )
        flask.session["user"] = user
        flask.session["csrf"] = "csrf-of-" + user
        if there.startswith("/") and not there.startswith("//"):
            return flask.redirect(there)
        return f"<!doctype html><head>{NO_ICON}</head><p>logged in</p>"

    @app.get("/account")
    def account() -> str:
        user = flask.session.get("user")
        if user is None:
            return "nobody"
        return f"account of {user}, csrf={flask.session['csrf']}"

    @app.get("/links")
    def links() -> str:
        return f"<!doctype html><head>{NO_ICON}</head>" + "".join(
            f'<a id="{name}" href="/proxy/sessions/{name}/{page}">{name}</a>'
            for name, page in (
                ("prying", f"?target={flask.request.host_url}account"),
                ("tosser", ""),
                ("dj", "admin/"),
            )
        )

    @app.get("/favicon.ico")
    def favicon() -> tuple[str, int]:
        return "", 204

    return app


def with_origins(app: flask.Flask, registry: Registry, port: int) -> ProxyMiddleware:
    """The host's own origin is http://localhost:PORT, each listener's a subdomain of
    listeners.localhost:PORT; the host's login is its Flask session's user."""

    def user(environ: dict[str, t.Any]) -> str | None:
        with app.request_context(environ):
            return flask.session.get("user")

    return ProxyMiddleware(
        app.wsgi_app,
        registry,
        authenticate=user,
        login_url="/login",
        listener_domain=f"listeners.localhost:{port}",
        listener_secret="origin-host-listener-secret",
        public_url=f"http://localhost:{port}",
    )


def main(kind: str, port: int) -> None:
    registry = Registry()
    app = host(registry)
    if kind == "same":
        registry.listen(prying, session="prying")
        registry.listen(prying, session="boxed", sandbox=True)
        ProxyListen(app, registry=registry)
    else:
        if os.environ.get("TEST_TOKEN_SECONDS"):
            origins.TOKEN_SECONDS = int(os.environ["TEST_TOKEN_SECONDS"])
        registry.listen(prying, session="prying", access={"alice"})
        registry.listen(prying, session="other")
        registry.listen(tosser, session="tosser")
        registry.listen(django_admin(allowed=".localhost"), session="dj")
        app.wsgi_app = with_origins(app, registry, port)  # type: ignore[method-assign]
    print("ready", flush=True)
    run_simple("127.0.0.1", port, app, threaded=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
