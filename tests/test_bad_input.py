"""The bad-input corpus: what strangers can send to /proxy/..., and what listeners can send back.

Request cases run three ways: through werkzeug's test client, and as environs
built the way gunicorn and waitress build them (a latin-1 ``PATH_INFO`` of
the percent-decoded bytes, the raw URI in ``REQUEST_URI``/``RAW_URI``;
gunicorn keeps ``//``, waitress collapses leading slashes). Each asserts the
exact status, that the body echoes nothing of the input, which listener (or
the host) ran, and that ``close()`` ran once.
"""

from __future__ import annotations

import io
import re
import typing as t
from collections.abc import Iterable, Iterator
from urllib.parse import unquote_to_bytes

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.corpus import HOST, REQUESTS
from .support.wsgi import BufferedClient, Host, assert_plain_answer, checked, serve

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

STYLES = ("client", "gunicorn", "waitress")


class Tracked:
    """A listener that records its calls and how often its iterable was closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.environs: list[WSGIEnvironment] = []
        self.closed = 0

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.environs.append(environ)
        body = f"listener {self.name}".encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        owner = self

        class Body(list[bytes]):
            def close(self) -> None:
                owner.closed += 1

        return Body([body])


class World:
    """A registry with look-alike sessions, apps, and a host, all tracked."""

    def __init__(self, **options: t.Any) -> None:
        self.registry = Registry()
        self.listeners = {name: Tracked(name) for name in ("a", "A", "other", "m", "x1", "x2")}
        for name in ("a", "A", "other"):
            self.registry.listen(self.listeners[name], session=name)
        self.registry.listen(self.listeners["m"], session="m", app="sales")
        self.registry.register_app("multi", multi_session=True)
        self.registry.listen(self.listeners["x1"], session="x1", app="multi")
        self.registry.listen(self.listeners["x2"], session="x2", app="multi")
        self.host = Host()
        self.middleware = ProxyMiddleware(self.host, self.registry, **options)

    def called(self) -> set[str]:
        called = {name for name, listener in self.listeners.items() if listener.environs}
        if self.host.environs:
            called.add("host")
        return called


def server_environ(raw: str, style: str, script_name: str = "") -> WSGIEnvironment:
    """An environ as gunicorn or waitress would build it for the request line ``raw``."""
    path, _, query = raw.partition("?")
    decoded = unquote_to_bytes(path).decode("latin-1")
    if style == "waitress":
        decoded = "/" + decoded.lstrip("/")
    assert decoded.startswith(script_name)
    environ = EnvironBuilder("/").get_environ()
    environ.update(
        SCRIPT_NAME=script_name,
        PATH_INFO=decoded[len(script_name) :],
        QUERY_STRING=query,
        REQUEST_URI=raw,
    )
    if style == "gunicorn":
        environ["RAW_URI"] = raw
    else:
        environ.pop("RAW_URI", None)
    return environ


def run(world: World, raw: str, style: str, **builder: t.Any) -> Response:
    app = checked(world.middleware)
    if style == "client":
        return t.cast(Response, BufferedClient(app).open(raw, **builder))
    environ = server_environ(raw, style)
    return Response.from_app(app, environ, buffered=True)


def echoes(body: bytes, raw: str) -> list[str]:
    """The parts of the request that the body repeats."""
    pieces = re.split(r"[/?;%.]+", unquote_to_bytes(raw).decode("latin-1"))
    return [piece for piece in pieces if len(piece) >= 3 and piece.encode("latin-1") in body]


def expectation(case: t.Any, style: str) -> tuple[int, str | None] | None:
    _, _, status, who = case
    if isinstance(status, dict):
        return status.get(style)
    return status, who


REQUEST_PARAMS = [
    pytest.param(case, style, id=f"{case[0]}-{style}")
    for case in REQUESTS
    for style in STYLES
    if expectation(case, style) is not None
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("case", "style"), REQUEST_PARAMS)
def test_request_corpus(case: t.Any, style: str) -> None:
    raw = case[1]
    expected = expectation(case, style)
    assert expected is not None
    status, who = expected
    world = World()
    response = run(world, raw, style)
    assert response.status_code == status
    assert world.called() == ({who} if who else set())
    body = response.get_data()
    if who is None:
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert echoes(body, raw) == []
    elif who != HOST:
        assert body == f"listener {who}".encode()
        assert world.listeners[who].closed == 1
        (environ,) = world.listeners[who].environs
        original = server_environ(raw, "gunicorn") if style == "gunicorn" else None
        if original is not None:
            assert environ["SCRIPT_NAME"] + environ["PATH_INFO"] == original["PATH_INFO"]


@pytest.mark.parametrize("style", ["gunicorn", "waitress"])
def test_script_name_is_kept_in_front(style: str) -> None:
    """A host mounted at /host: its SCRIPT_NAME stays in front and the raw URI includes it."""
    world = World()
    environ = server_environ("/host/proxy/sessions/a/x%2Fy", style, script_name="/host")
    response = Response.from_app(checked(world.middleware), environ, buffered=True)
    assert response.status_code == 200
    (seen,) = world.listeners["a"].environs
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("/host/proxy/sessions/a", "/x/y")


def test_script_name_without_path_info_reaches_the_host() -> None:
    world = World()
    environ = EnvironBuilder("/").get_environ()
    environ["SCRIPT_NAME"] = "/proxy/sessions/a"
    del environ["PATH_INFO"]
    # wsgiref's validator itself fails on a missing PATH_INFO, so this runs unwrapped.
    Response.from_app(world.middleware, environ, buffered=True)
    assert world.called() == {"host"}


@pytest.mark.parametrize("style", STYLES)
def test_host_and_forwarded_headers_are_ignored(style: str) -> None:
    """Routing reads PATH_INFO and the raw URI only, never Host or X-Forwarded-*."""
    world = World()
    headers = {
        "Host": "other.example",
        "X-Forwarded-Host": "other.example",
        "X-Forwarded-Prefix": "/proxy/sessions/other",
        "X-Forwarded-Uri": "/proxy/sessions/other/x",
        "X-Original-Url": "/proxy/sessions/other/x",
        "X-Rewrite-Url": "/proxy/sessions/other/x",
    }
    if style == "client":
        response = BufferedClient(checked(world.middleware)).get(
            "/proxy/sessions/a/x", headers=headers
        )
    else:
        environ = server_environ("/proxy/sessions/a/x", style)
        environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
        response = t.cast(
            t.Any, Response.from_app(checked(world.middleware), environ, buffered=True)
        )
    assert response.get_data() == b"listener a"
    assert world.called() == {"a"}
    spoofed = EnvironBuilder("/", headers=list(headers.items())).get_environ()
    assert world.registry.get("a").url("/x", spoofed) == "/proxy/sessions/a/x"  # type: ignore[union-attr]


# -- request bodies ---------------------------------------------------------------------


def body_reader(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Reads the whole input stream, past any declared length, 7 bytes at a time."""
    chunks = []
    while True:
        chunk = environ["wsgi.input"].read(7)
        if not chunk:
            break
        chunks.append(chunk)
    body = f"read {sum(map(len, chunks))}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def body_environ(body: bytes, declared: str | None, chunked: bool = False) -> WSGIEnvironment:
    environ = server_environ("/proxy/sessions/reader/", "gunicorn")
    environ["REQUEST_METHOD"] = "POST"
    environ["wsgi.input"] = io.BytesIO(body)
    environ.pop("CONTENT_LENGTH", None)
    if declared is not None:
        environ["CONTENT_LENGTH"] = declared
    if chunked:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True
    return environ


@pytest.mark.parametrize(
    ("body", "declared", "chunked", "status", "answer"),
    [
        pytest.param(b"x" * 100, "100", False, 200, b"read 100", id="declared-at-limit"),
        pytest.param(b"x" * 101, "101", False, 413, None, id="declared-over-limit"),
        pytest.param(b"x" * 10, "99999999999999999999", False, 413, None, id="huge-declared"),
        pytest.param(b"x" * 100, None, True, 200, b"read 100", id="chunked-at-limit"),
        pytest.param(b"x" * 101, None, True, 413, None, id="chunked-over-limit"),
        pytest.param(b"x" * 5000, None, True, 413, None, id="chunked-far-over"),
        pytest.param(
            b"x" * 10 + b"GET /next HTTP/1.1\r\n\r\n", "10", False, 200, b"read 10", id="past-cl"
        ),
        pytest.param(b"x" * 10, "50", False, 400, None, id="client-disconnected-early"),
    ],
)
def test_request_bodies_with_a_limit(
    body: bytes, declared: str | None, chunked: bool, status: int, answer: bytes | None
) -> None:
    """With max_content_length, a listener never reads more than the limit or than the declared
    length (what follows belongs to the next request on the connection)."""
    registry = Registry()
    registry.listen(body_reader, session="reader")
    host = Host()
    app = checked(ProxyMiddleware(host, registry, max_content_length=100))
    response = Response.from_app(app, body_environ(body, declared, chunked), buffered=True)
    assert response.status_code == status
    if answer is not None:
        assert response.get_data() == answer
    else:
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert b"x" not in response.get_data()
    assert host.environs == []


# -- listener output ----------------------------------------------------------------------

BAD_STATUSES = [
    pytest.param("200", id="no-reason"),
    pytest.param("200 ", id="empty-reason"),
    pytest.param("200OK", id="no-space"),
    pytest.param("2000 OK", id="four-digits"),
    pytest.param("199 Info", id="1xx"),
    pytest.param("600 Beyond", id="600"),
    pytest.param("099 Low", id="099"),
    pytest.param("abc OK", id="letters"),
    pytest.param(" 200 OK", id="leading-space"),
    pytest.param("200 OK\r\nX-Injected: 1", id="crlf"),
    pytest.param("200 OK\nX-Injected: 1", id="lf"),
    pytest.param("200 O\x00K", id="nul"),
    pytest.param("200 O\tK", id="tab"),
    pytest.param("200 O\x7fK", id="del"),
    pytest.param("200 \u20ac", id="non-latin1"),
    pytest.param("200 O\x85K", id="c1-control"),
    pytest.param(200, id="int"),
    pytest.param(b"200 OK", id="bytes"),
    pytest.param(None, id="none"),
]

BAD_HEADERS = [
    pytest.param([("X-A", "a\r\nX-Injected: 1")], id="crlf-value"),
    pytest.param([("X-A", "a\nX-Injected: 1")], id="lf-value"),
    pytest.param([("X-A", "a\rb")], id="cr-value"),
    pytest.param([("X-A", "a\x00b")], id="nul-value"),
    pytest.param([("X-A", "a\x7fb")], id="del-value"),
    pytest.param([("X-A", "a\x01b")], id="control-value"),
    pytest.param([("X-A", "a\x1bb")], id="escape-value"),
    pytest.param([("X-A", "\u20ac")], id="non-latin1-value"),
    pytest.param([("X-A", "a\x85b")], id="c1-next-line-value"),
    pytest.param([("X-A", "\x9b")], id="c1-csi-value"),
    pytest.param([("X-A", "\ud800")], id="surrogate-value"),
    pytest.param([("X A", "a")], id="space-name"),
    pytest.param([("X:A", "a")], id="colon-name"),
    pytest.param([("", "a")], id="empty-name"),
    pytest.param([("X-A\r\nX-Injected", "a")], id="crlf-name"),
    pytest.param([("X-\u00e9", "a")], id="non-token-name"),
    pytest.param([("X-(A)", "a")], id="separator-name"),
    pytest.param([(b"X-A", "a")], id="bytes-name"),
    pytest.param([("X-A", b"a")], id="bytes-value"),
    pytest.param([("X-A", 1)], id="int-value"),
    pytest.param([("X-A",)], id="one-tuple"),
    pytest.param([("X-A", "a", "b")], id="three-tuple"),
    pytest.param(None, id="none-headers"),
    pytest.param([("Content-Type", "text/plain"), ("X-B", "ok"), ("X-C", "\n")], id="third-bad"),
]


class BadListener:
    """Calls start_response with what it was given; swallows the guard's error if told to."""

    def __init__(
        self,
        status: t.Any = "200 OK",
        headers: t.Any = (("Content-Type", "text/plain"),),
        swallow: bool = False,
    ) -> None:
        self.status = status
        self.headers = list(headers) if isinstance(headers, tuple) else headers
        self.swallow = swallow
        self.closed = 0
        self.raised: list[BaseException] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            start_response(self.status, self.headers)
        except Exception as error:
            self.raised.append(error)
            if not self.swallow:
                raise
        owner = self

        class Body(list[bytes]):
            def close(self) -> None:
                owner.closed += 1

        return Body([b"SECRET-BODY"])


def assert_clean_500(served: t.Any) -> None:
    assert served.status == 500
    assert b"SECRET-BODY" not in served.wire
    assert b"X-Injected" not in served.wire
    assert b"Traceback" not in served.wire
    assert served.wire.count(b"\r\n\r\n") == 1, "one header block, nothing injected"


@pytest.mark.parametrize("status", BAD_STATUSES)
def test_bad_status_lines(status: t.Any, errors: pytest.LogCaptureFixture) -> None:
    """The guard does not raise in the listener: it returns its body, which is closed."""
    registry = Registry()
    listener = BadListener(status=status)
    registry.listen(listener, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert_clean_500(served)
    assert listener.raised == []
    assert listener.closed == 1
    assert "invalid status line or header" in errors.text


@pytest.mark.parametrize("status", BAD_STATUSES[:4])
def test_bad_status_through_werkzeug_client(
    status: t.Any, errors: pytest.LogCaptureFixture
) -> None:
    """The same answer through werkzeug's test client: the middleware's plain 500."""
    registry = Registry()
    listener = BadListener(status=status, swallow=True)
    registry.listen(listener, session="a")
    response = BufferedClient(checked(ProxyMiddleware(Host(), registry))).get("/proxy/sessions/a")
    assert_plain_answer(response, 500, "SECRET-BODY")
    assert listener.closed == 1


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_bad_headers(headers: t.Any, errors: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    listener = BadListener(headers=headers)
    registry.listen(listener, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert_clean_500(served)
    assert listener.closed == 1


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authenticate",
        "Proxy-Connection",
        "connection",
        "PROXY-X",
    ],
)
def test_hop_by_hop_headers_never_reach_the_wire(name: str) -> None:
    registry = Registry()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), (name, "hop-value")])
        return [b"ok"]

    registry.listen(app, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert served.status == 200
    assert b"hop-value" not in served.wire
    assert served.body == b"ok"


class Body:
    """An iterable body that yields given items (or raises) and counts close()."""

    def __init__(self, items: list[t.Any]) -> None:
        self.items = items
        self.closed = 0

    def __iter__(self) -> Iterator[t.Any]:
        for item in self.items:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize(
    ("items", "status", "sent"),
    [
        pytest.param(["text"], 500, b"", id="str-first"),
        pytest.param([None], 500, b"", id="none-first"),
        pytest.param([RuntimeError("SECRET-DETAIL")], 500, b"", id="raises-first"),
        pytest.param([b"partial", "text"], 200, b"partial", id="str-after-bytes"),
        pytest.param(
            [b"partial", RuntimeError("SECRET-DETAIL")], 200, b"partial", id="raises-later"
        ),
    ],
)
def test_faults_while_the_body_is_iterated(items: list[t.Any], status: int, sent: bytes) -> None:
    """The listener's iterable is returned as is (PEP 3333: streaming and close() keep
    working), so a fault during iteration is the
    server's to answer: a 500 before the first byte, a cut response after it. Either way close()
    runs once and nothing of the fault reaches the client."""
    registry = Registry()
    body = Body(items)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return t.cast(Iterable[bytes], body)

    registry.listen(app, session="a")
    served = serve(ProxyMiddleware(Host(), registry), "/proxy/sessions/a")
    assert served.status == status
    assert served.body.startswith(sent)
    assert b"SECRET-DETAIL" not in served.wire
    assert b"Traceback" not in served.wire
    assert body.closed == 1


@pytest.mark.parametrize(
    "when",
    ["before-start-response", "after-start-response", "after-write", "in-second-start-response"],
)
def test_exceptions_around_start_response(when: str, errors: pytest.LogCaptureFixture) -> None:
    registry = Registry()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if when == "before-start-response":
            raise RuntimeError("SECRET-DETAIL")
        write = start_response("200 OK", [("Content-Type", "text/plain"), ("X-Listener", "1")])
        if when == "after-write":
            write(b"partial")
        if when == "in-second-start-response":
            start_response("201 Created", [])
        raise RuntimeError("SECRET-DETAIL")

    registry.listen(app, session="a")
    served = serve(checked(ProxyMiddleware(Host(), registry)), "/proxy/sessions/a")
    assert b"SECRET-DETAIL" not in served.wire
    assert b"Traceback" not in served.wire
    if when == "after-write":
        # Headers are on the wire: PEP 3333 lets the server abort the response.
        assert (served.status, served.body) == (200, b"partial")
    else:
        assert served.status == 500
        assert b"X-Listener" not in served.wire
        assert served.body.startswith(b"500 Internal Server Error")


@pytest.mark.parametrize("cache_size", [0, 1024], ids=["cache-full", "cache-room"])
def test_checks_hold_whatever_the_cache_holds(
    cache_size: int, monkeypatch: pytest.MonkeyPatch, errors: pytest.LogCaptureFixture
) -> None:
    """The caches of valid status lines and names only speed things up: with no room left
    in them, hop-by-hop headers are still dropped and bad ones still refused."""
    from wsgi_proxy_listen import guard

    monkeypatch.setattr(guard, "_CACHE_SIZE", cache_size)
    monkeypatch.setattr(guard, "_VALID_HEADERS", set())
    monkeypatch.setattr(guard, "_VALID_STATUSES", set())
    registry = Registry()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("X-Kept", "1"),
                ("Connection", "hop"),
                ("Proxy-X", "hop"),
            ],
        )
        return [b"ok"]

    registry.listen(app, session="a")
    registry.listen(BadListener(headers=[("X-A", "a\r\nX-Injected: 1")]), session="bad")
    proxy = checked(ProxyMiddleware(Host(), registry))
    for _ in range(2):
        served = serve(proxy, "/proxy/sessions/a")
        assert served.status == 200
        assert b"hop" not in served.wire
        assert b"X-Kept: 1" in served.wire
        assert_clean_500(serve(proxy, "/proxy/sessions/bad"))
    assert len(guard._VALID_HEADERS) == (0 if cache_size == 0 else 2)
