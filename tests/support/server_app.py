"""The app that tests/test_servers.py and tests/test_load.py serve with real servers.

Run in a subprocess by gunicorn (``tests.support.server_app:application``), waitress, or
werkzeug's dev server (``python -m tests.support.server_app PORT``). The host app
answers ``/host/...`` with facts the tests need (its pid, what was closed);
the listeners cover the cases of the tests. With ``WSGI_PROXY_LISTEN_CHURN=1``
the first request starts threads that listen, replace and close the
``churn-*`` sessions for as long as the server runs (at most ten minutes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
import typing as t
from collections.abc import Iterable, Iterator

from werkzeug.wrappers import Request

from wsgi_proxy_listen import ProxyMiddleware, Registry

from . import boundary_runtime

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# TEST_DIRECTORY (and TEST_SECRET for Redis) share the listeners with runtimes, such as
# tests/support/boundary_runtime.py; TEST_LOG_LEVEL logs this package's lines on stderr.
registry = Registry(
    directory=os.environ.get("TEST_DIRECTORY") or None,
    secret=os.environ.get("TEST_SECRET") or None,
)
if os.environ.get("TEST_LOG_LEVEL"):
    logging.basicConfig(
        level=os.environ["TEST_LOG_LEVEL"],
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
closed: dict[str, int] = {}
_lock = threading.Lock()
CHUNK = b"x" * 65536


def count_close(name: str) -> None:
    with _lock:
        closed[name] = closed.get(name, 0) + 1


def host(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/host/pid":
        body = str(os.getpid()).encode()
    elif path == "/host/closed":
        with _lock:
            body = json.dumps(closed).encode()
    elif path == "/host/release":
        released.set()
        body = b"released"
    else:
        body = f"host {path}".encode("latin-1", "replace")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def named(name: str) -> t.Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
    def listener(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = json.dumps(
            {
                "listener": name,
                "script_name": environ["SCRIPT_NAME"],
                "path_info": environ["PATH_INFO"],
            }
        ).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return listener


class Stream:
    """``megabytes`` MB in 64 KB chunks, generated as they are sent; counts close()."""

    def __init__(self, megabytes: int) -> None:
        self.chunks = megabytes * 16

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            yield CHUNK

    def close(self) -> None:
        count_close("stream")


def stream(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    megabytes = int(Request(environ).args.get("mb", "1"))
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(megabytes * 16 * len(CHUNK))),
        ],
    )
    return Stream(megabytes)


def upload(request: Request) -> dict[str, object]:
    digest = hashlib.sha256()
    size = 0
    stream = request.stream
    while chunk := stream.read(65536):
        digest.update(chunk)
        size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def sleep(request: Request) -> str:
    time.sleep(float(request.args.get("seconds", "1")))
    return "slept"


def crlf(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    kind = environ["PATH_INFO"]
    if kind == "/status":
        start_response("200 OK\r\nX-Injected: status", [("Content-Type", "text/plain")])
    elif kind == "/name":
        start_response("200 OK", [("X-Injected: name\r\nX-A", "1")])
    else:
        start_response("200 OK", [("X-A", "1\r\nX-Injected: value")])
    return [b"SECRET-BODY"]


class CountedIterator:
    """An iterator that is not a generator, counting its close() (a request handler may
    return one, alone or in a tuple)."""

    def __init__(self, name: str, chunks: list[bytes]) -> None:
        self.name = name
        self.chunks = iter(chunks)

    def __iter__(self) -> CountedIterator:
        return self

    def __next__(self) -> bytes:
        return next(self.chunks)

    def close(self) -> None:
        count_close(self.name)


def raise_after_start(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Length", "5"), ("Set-Cookie", "leak=1; Path=/")])
    raise RuntimeError("the listener failed after start_response")


def iterator_handler(request: Request) -> object:
    if request.path == "/tuple":
        return CountedIterator("iterator-tuple", [b"made ", b"it"]), 201
    return CountedIterator("iterator", [b"one ", b"two"])


def invalid_header(request: Request) -> object:
    from werkzeug.wrappers import Response

    response = Response(CountedIterator("invalid-header", [b"SECRET-BODY"]))
    response.headers["Bad Name"] = "x"  # werkzeug lets a space into a name
    return response


def invalid_header_webob(
    environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    import webob

    app_iter = CountedIterator("invalid-header-webob", [b"SECRET-BODY"])
    response = webob.Response(app_iter=app_iter, headerlist=[("Bad Name", "x")])
    return response(environ, start_response)


def iterator_headers(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    # Not a list, as PEP 3333 wants: the middleware must cope with an app that breaks it.
    headers = iter([("X-From-Iterator", "1"), ("Content-Length", "2")])
    start_response("200 OK", headers)  # type: ignore[arg-type]
    return [b"ok"]


def appends_after(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    headers = [("Content-Type", "text/plain")]
    start_response("200 OK", headers)
    headers.append(("X-Injected", "after the check"))  # werkzeug's server sends the list later
    return [b"ok"]


def lengths(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    given = {
        "/two": [("Content-Length", "2"), ("Content-Length", "2")],
        "/conflict": [("Content-Length", "2"), ("content-length", "5")],
        "/negative": [("Content-Length", "-1")],
        "/named": [("Connection", "X-Secret"), ("X-Secret", "internal"), ("Content-Length", "2")],
    }[environ["PATH_INFO"]]
    start_response("200 OK", given)
    return [b"ok"]


def text_chunk(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return t.cast("Iterable[bytes]", ["text, not bytes"])


def bare(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A str or bytes returned as the iterable: iterating gives characters or ints."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    if environ["PATH_INFO"] == "/text":
        return t.cast("Iterable[bytes]", "a whole body as str")
    if environ["PATH_INFO"] == "/bytearray":
        return t.cast("Iterable[bytes]", bytearray(b"a whole body as bytearray"))
    return t.cast("Iterable[bytes]", b"a whole body as bytes")


for name in ("a", "A", "other", "m"):
    registry.listen(named(name), session=name, app="sales" if name == "m" else None)
registry.register_app("multi", multi_session=True)
registry.listen(named("x2"), session="x2", app="multi")
registry.listen(stream, session="stream")
registry.listen(upload, session="upload")
registry.listen(sleep, session="sleep")
registry.listen(crlf, session="crlf")
# A start that hangs and a listener that hangs, until /host/release: with the default
# max_waiting (4) and max_concurrency=3, they hold at most 7 of a server's 8 threads.
released = threading.Event()


def hanging_start() -> None:
    released.wait(60)
    registry.listen(lambda request: "started at last", session="hang-1", app="hang")


def stall(request: Request) -> str:
    released.wait(60)
    return "stalled"


registry.register_app("hang", start=hanging_start, start_timeout=60)
registry.listen(stall, session="stall", max_concurrency=3)
registry.listen(raise_after_start, session="raise-after-start")
registry.listen(iterator_handler, session="iterator", kind="request")
registry.listen(invalid_header, session="invalid-header", kind="request")
registry.listen(invalid_header_webob, session="invalid-header-webob")
registry.listen(iterator_headers, session="iterator-headers")
registry.listen(appends_after, session="appends-after")
registry.listen(lengths, session="lengths")
registry.listen(text_chunk, session="text-chunk")
registry.listen(bare, session="bare")
registry.listen(boundary_runtime.hostile, session="hostile-local")
registry.listen(boundary_runtime.headers, session="headers-local")
registry.listen(boundary_runtime.stream, session="endless-local")

STABLE = [f"stable-{i}" for i in range(8)]
CHURNED = [f"churn-{i}" for i in range(8)]


def generation_listener(session: str, generation: int) -> t.Callable[[Request], str]:
    def listener(request: Request) -> str:
        return f"{session}:{generation}"

    return listener


for session in STABLE:
    registry.listen(generation_listener(session, 0), session=session)

_churn_started = False


def churn(offset: int) -> None:
    """Listen, replace and close the churn-* sessions until the server stops."""
    generation = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for session in CHURNED[offset::2]:
            generation += 1
            handle = registry.listen(generation_listener(session, generation), session=session)
            if generation % 3 == 0:
                handle.close()
            elif generation % 7 == 0:
                registry.close_session(session)
        time.sleep(0.001)


def start_churn_once() -> None:
    global _churn_started
    with _lock:
        if _churn_started:
            return
        _churn_started = True
    for offset in range(2):
        threading.Thread(target=churn, args=(offset,), daemon=True).start()


proxy = ProxyMiddleware(host, registry, max_content_length=64 * 1024 * 1024)


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if os.environ.get("WSGI_PROXY_LISTEN_CHURN") == "1" and not _churn_started:
        start_churn_once()
    return proxy(environ, start_response)


if __name__ == "__main__":
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", int(sys.argv[1]), application, threaded=True)
