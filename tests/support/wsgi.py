"""WSGI helpers of the tests: a host and a listener that record what reaches them,
environs, clients that buffer, servers in a thread or under wsgiref's handler, and what
every plain answer of the middleware must look like."""

from __future__ import annotations

import contextlib
import io
import threading
import typing as t
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit
from wsgiref.handlers import SimpleHandler
from wsgiref.validate import validator

from werkzeug.middleware.lint import LintMiddleware
from werkzeug.serving import make_server
from werkzeug.test import Client, EnvironBuilder

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


MakeClient = Callable[..., Client]


def environ_for(path: str, **kwargs: t.Any) -> WSGIEnvironment:
    return EnvironBuilder(path, **kwargs).get_environ()


def start_response_stub(
    status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
) -> t.Any:
    return None


def at(client: Client, url: str, method: str = "GET", **options: t.Any) -> t.Any:
    """``method url`` with the URL's host as the Host header (werkzeug's client takes a
    full URL's path only)."""
    parts = urlsplit(url)
    return client.open(
        parts.path,
        method=method,
        base_url=f"{parts.scheme}://{parts.netloc}",
        query_string=parts.query,
        **options,
    )


#: The users of the X-User header: ``a`` is alice, ``b`` is bob.
USERS = {"a": "alice", "b": "bob"}


class Login:
    """A host's login for the tests: the user the X-User header names, counting the
    calls (a listener that is public never asks)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ: WSGIEnvironment) -> str | None:
        self.calls += 1
        return USERS.get(environ.get("HTTP_X_USER", ""))


class Host:
    """A host WSGI app that records what reaches it."""

    def __init__(self) -> None:
        self.environs: list[WSGIEnvironment] = []
        self.iterables: list[Iterable[bytes]] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.environs.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        iterable = [b"host"]
        self.iterables.append(iterable)
        return iterable


class Recorder:
    """A WSGI listener that records its environs and how often close() ran."""

    def __init__(self, body: bytes = b"listener") -> None:
        self.body = body
        self.environs: list[WSGIEnvironment] = []
        self.closed = 0

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.environs.append(environ)
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(self.body)))]
        )
        return ClosingList([self.body], self)


class ClosingList(list[bytes]):
    def __init__(self, items: list[bytes], owner: Recorder) -> None:
        super().__init__(items)
        self.owner = owner

    def close(self) -> None:
        self.owner.closed += 1


class BufferedClient(Client):
    """werkzeug's Client, buffering each response so that close() runs at once."""

    def open(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


def checked(app: WSGIApplication) -> WSGIApplication:
    """Wrap a stack in wsgiref's validator and werkzeug's LintMiddleware."""
    return validator(LintMiddleware(app))


class Served(t.NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    wire: bytes
    errors: str


def serve(app: WSGIApplication, path: str = "/", **builder: t.Any) -> Served:
    """Run ``app`` once under wsgiref's server handler and return what went on the wire.

    wsgiref's handler is a real PEP 3333 server: it honours exc_info the way
    servers do (replace unsent headers, re-raise sent ones), which werkzeug's
    test client does not.
    """
    builder.setdefault("environ_base", {})
    environ = EnvironBuilder(path, **builder).get_environ()
    body = environ["wsgi.input"].read()
    for key in [key for key in environ if key.startswith("wsgi.")]:
        del environ[key]
    stdout, stderr = io.BytesIO(), io.StringIO()
    handler = SimpleHandler(io.BytesIO(body), stdout, stderr, environ, multithread=True)
    handler.os_environ = {}
    handler.run(app)
    wire = stdout.getvalue()
    head, _, payload = wire.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in header_lines]
    return Served(
        int(status_line.split()[1]),
        t.cast(list[tuple[str, str]], headers),
        payload,
        wire,
        stderr.getvalue(),
    )


@contextlib.contextmanager
def running_server(app: WSGIApplication) -> t.Iterator[int]:
    """Serve ``app`` with werkzeug's threaded server on 127.0.0.1; yield the port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def assert_plain_answer(response: t.Any, status: int, *secrets: str) -> None:
    """A middleware answer (wsgi_proxy_listen.answers): plain text, nosniff, a length,
    nothing echoed."""
    assert response.status_code == status
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    body = response.get_data()
    assert response.headers["Content-Length"] == str(len(body))
    assert body.startswith(f"{status} ".encode())
    for secret in secrets:
        assert secret.encode() not in body
    assert b"Traceback" not in body
