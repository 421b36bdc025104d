"""The demo host that ``make demo`` runs (``make demo PORT=8001`` for another port).

A Flask host on http://127.0.0.1:8000 set up with the ``ProxyListen``
extension. Its index page lists the live listeners, with the process that
owns each, and has a form to start and stop sessions; each session serves a
small HTML page whose stylesheet, link and ``fetch()`` are all relative, so
they stay under the session's prefix. Two more listeners are registered at
start-up: the CSV export of the docs (a request handler) and a plain WSGI app.

Beside the host runs a notebook runtime (``examples/notebook_runtime.py``), a
process of its own, as a notebook's code runs in Livebook or Jupyter: both
share an embedded directory in a temporary folder, so the host answers the
runtime's listener too.

The start/stop form has no CSRF protection: the demo listens on 127.0.0.1
only. A real host protects such a form like any other.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import typing as t
from collections.abc import Iterable

from flask import Flask, redirect, render_template_string, request
from werkzeug.routing import Map, Rule
from werkzeug.serving import run_simple
from werkzeug.utils import redirect as redirect_to
from werkzeug.wrappers import Request, Response

from examples.data_export import export
from wsgi_proxy_listen import Listener, Registry
from wsgi_proxy_listen.flask import ProxyListen

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Session {session}</title>
<link rel="stylesheet" href="static/style.css"></head>
<body><h1>Session {session}</h1>
<p><a id="details" href="details">Details</a></p>
<p id="result">loading…</p>
<script>
fetch("api/data").then((r) => r.json()).then((data) => {{
  document.getElementById("result").textContent = data.message;
}});
</script></body></html>
"""

DETAILS = """<!doctype html>
<html><head><meta charset="utf-8"><title>Details</title>
<link rel="stylesheet" href="static/style.css"></head>
<body><h1 id="title">Details of session {session}</h1><p><a href="./">back</a></p></body></html>
"""

STYLE = "body { background-color: rgb(240, 248, 255); }\n#result { color: rgb(0, 128, 0); }\n"

INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsgi_proxy_listen demo</title></head>
<body><h1>wsgi_proxy_listen demo</h1>
{% if error %}<p id="error">{{ error }}</p>{% endif %}
<ul id="listeners">
{% for session, url, pid in listeners %}
  <li><a href="{{ url }}">{{ session }}</a> <span class="pid">process {{ pid }}</span></li>
{% endfor %}
</ul>
<form method="post" action="{{ url_for('sessions') }}">
  <input name="session" placeholder="session id" required pattern="[A-Za-z0-9_\\-]{1,128}">
  <button name="action" value="start">Start</button>
  <button name="action" value="stop">Stop</button>
</form></body></html>
"""


class SessionPage:
    """The listener a started session registers: a page and what it loads."""

    def __init__(self, session: str) -> None:
        self.session = session
        self.url_map = Map(
            [
                Rule("/", endpoint="page"),
                Rule("/details", endpoint="details"),
                Rule("/static/style.css", endpoint="style"),
                Rule("/api/data", endpoint="data"),
            ]
        )

    def __call__(self, request: Request) -> Response | dict[str, str]:
        if request.environ["PATH_INFO"] == "":
            # Relative links need the trailing slash; the middleware never redirects.
            return redirect_to(request.script_root + "/")
        endpoint, _ = self.url_map.bind_to_environ(request.environ).match()
        if endpoint == "page":
            return Response(PAGE.format(session=self.session), content_type="text/html")
        if endpoint == "details":
            return Response(DETAILS.format(session=self.session), content_type="text/html")
        if endpoint == "style":
            return Response(STYLE, content_type="text/css")
        return {"message": f"hello from session {self.session}"}


def clock(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A plain WSGI listener that echoes the path it was given."""
    body = f"clock listener at {environ['SCRIPT_NAME']!r}, path {environ['PATH_INFO']!r}\n"
    data = body.encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


def create_app(registry: Registry | None = None) -> tuple[Flask, list[Listener]]:
    """The host app and the listeners registered at start-up."""
    registry = Registry() if registry is None else registry  # an empty one is falsy
    app = Flask(__name__)
    ProxyListen(app, registry=registry)

    @app.get("/")
    def index() -> str:
        return render_template_string(INDEX, listeners=live_listeners(registry, request.environ))

    def refuse(error: str) -> tuple[str, int]:
        listeners = live_listeners(registry, request.environ)
        return render_template_string(INDEX, listeners=listeners, error=error), 400

    @app.get("/favicon.ico")
    def favicon() -> tuple[str, int]:
        return "", 204  # browsers ask every origin for one

    @app.post("/sessions")
    def sessions() -> Response | tuple[str, int]:
        session = request.form.get("session", "")
        if request.form.get("action") == "stop":
            registry.close_session(session)
        else:
            try:
                registry.listen(SessionPage, session=session, options={"session": session})
            except ValueError:
                # What the form's pattern says, for a browser that did not check it.
                return refuse("A session id is 1 to 128 letters, digits, '_' or '-'.")
        return redirect(request.script_root + "/", code=303)

    listeners = [
        registry.listen(export, session="report-1"),
        registry.listen(clock, session="clock"),
    ]
    return app, listeners


def live_listeners(registry: Registry, environ: WSGIEnvironment) -> list[tuple[str, str, int]]:
    """Every live listener: its session, its URL path and the process that owns it."""
    found = {listener.session: (listener.url("/", environ), os.getpid()) for listener in registry}
    if registry.directory is not None:
        base = environ.get("SCRIPT_NAME", "") + registry.prefix
        for entry in registry.directory.entries():
            if entry.session not in found and entry.pid is not None:
                found[entry.session] = (f"{base}/sessions/{entry.session}/", entry.pid)
    return sorted((session, url, pid) for session, (url, pid) in found.items())


def start_runtime(folder: str) -> subprocess.Popen[str]:
    """The notebook runtime, in a process of its own that shares the host's directory."""
    runtime = subprocess.Popen(
        [sys.executable, "-m", "examples.notebook_runtime"],
        env={**os.environ, "WSGI_PROXY_LISTEN_DIRECTORY": folder},
        stdout=subprocess.PIPE,
        text=True,
    )
    print(f"  the notebook runtime: {t.cast(t.IO[str], runtime.stdout).readline().strip()}")
    return runtime


def curl_lines(base: str, listeners: list[Listener]) -> list[str]:
    """The commands printed on start-up, one per thing to try."""
    export_listener, clock_listener = listeners
    return [
        f"curl {base}/",
        f"curl {base}{export_listener.url('/export/data')}",
        f"curl {base}{clock_listener.url('/any/path')}",
        f"curl -X POST -d session=nb1 -d action=start {base}/sessions",
        f"curl {base}/proxy/sessions/nb1/api/data",
        f"curl {base}/proxy/sessions/notebook/from/the/runtime",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    options = parser.parse_args(argv)
    # SIGTERM ends the demo as Ctrl-C does, through the clean-up below.
    signal.signal(signal.SIGTERM, lambda received, frame: sys.exit(0))
    folder = tempfile.mkdtemp(prefix="wpl-demo-", dir="/tmp")
    registry = Registry(directory=folder)
    app, listeners = create_app(registry)
    runtime = start_runtime(folder)
    try:
        base = f"http://{options.host}:{options.port}"
        print(f"Open {base}/ in a browser, or try:")
        for line in curl_lines(base, listeners):
            print(f"  {line}", flush=True)
        run_simple(options.host, options.port, app, threaded=True)
    finally:
        runtime.terminate()
        runtime.wait(10)
        t.cast(t.IO[str], runtime.stdout).close()
        registry.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
