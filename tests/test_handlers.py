from __future__ import annotations

import functools
import typing as t
from collections.abc import Iterable, Iterator

import flask
import pytest
import webob
import webob.exc
from werkzeug.exceptions import Forbidden, NotFound
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen.handlers import to_wsgi

from .support.wsgi import BufferedClient, checked

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def call(app: WSGIApplication, path: str = "/", **kwargs: t.Any) -> Response:
    return t.cast(Response, BufferedClient(checked(app)).get(path, **kwargs))


def wsgi_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi"]


def request_handler(request: Request) -> str:
    return f"request {type(request).__name__} {request.path}"


def response_handler(request: Request) -> Response:
    return Response(request_handler(request))


class WebobRequest(webob.Request):
    pass


class MyRequest(Request):
    pass


# -- kind inference ----------------------------------------------------------


class CallableWSGI:
    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return wsgi_app(environ, start_response)


class CallableRequest:
    def __call__(self, request: Request) -> str:
        return "callable request"


class Configured:
    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting

    def __call__(self, request: Request) -> str:
        return self.greeting


class ConfiguredWSGI:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [self.body]


def with_optional(request: Request, extra: int = 1) -> str:
    return "optional"


flask_app = flask.Flask("listener")


@flask_app.route("/")
def flask_index() -> str:
    return "flask"


@pytest.mark.parametrize(
    ("handler", "options", "body"),
    [
        pytest.param(wsgi_app, None, b"wsgi", id="wsgi-function"),
        pytest.param(request_handler, None, b"request Request /", id="request-function"),
        pytest.param(lambda request: "lambda", None, b"lambda", id="lambda"),
        pytest.param(with_optional, None, b"optional", id="optional-params-ignored"),
        pytest.param(CallableWSGI(), None, b"wsgi", id="wsgi-instance"),
        pytest.param(CallableRequest(), None, b"callable request", id="request-instance"),
        pytest.param(Configured, None, b"hello", id="class-no-options"),
        pytest.param(Configured, {"greeting": "hi"}, b"hi", id="class-with-options"),
        pytest.param(ConfiguredWSGI, {"body": b"cw"}, b"cw", id="wsgi-class-with-options"),
        pytest.param(flask_app, None, b"flask", id="flask-app"),
        pytest.param(Response("a response"), None, b"a response", id="werkzeug-response"),
        pytest.param(webob.Response("webob response"), None, b"webob response", id="webob-resp"),
        pytest.param(functools.partial(with_optional, extra=2), None, b"optional", id="partial"),
    ],
)
def test_kind_is_inferred(handler: object, options: dict[str, t.Any] | None, body: bytes) -> None:
    """Functions, instances and classes become WSGI apps by their required positional params."""
    app = to_wsgi(handler, options=options)
    response = call(app)
    assert response.status_code == 200
    assert response.get_data() == body


def test_class_is_instantiated_once_at_resolution() -> None:
    created: list[object] = []

    class Counting:
        def __init__(self) -> None:
            created.append(self)

        def __call__(self, request: Request) -> str:
            return "counted"

    app = to_wsgi(Counting)
    assert len(created) == 1
    for _ in range(3):
        assert call(app).get_data() == b"counted"
    assert len(created) == 1


def varargs(*args: t.Any, **kwargs: t.Any) -> Iterable[bytes]:
    return wsgi_app(*args)


@pytest.mark.parametrize(
    ("handler", "kind", "body"),
    [
        pytest.param(varargs, "wsgi", b"wsgi", id="wrapper-as-wsgi"),
        pytest.param(
            Request.application(lambda request: Response("decorated")),
            "wsgi",
            b"decorated",
            id="request-application-decorated",
        ),
        pytest.param(lambda *args: "star", "request", b"star", id="wrapper-as-request"),
    ],
)
def test_kind_forces_the_choice(handler: object, kind: str, body: bytes) -> None:
    assert call(to_wsgi(handler, kind=kind)).get_data() == body


def test_request_class_forces_request_kind() -> None:
    app = to_wsgi(lambda *args: f"{type(args[0]).__name__}", request_class=MyRequest)
    assert call(app).get_data() == b"MyRequest"


def no_params() -> str:
    return "x"


def three_params(a: object, b: object, c: object) -> str:
    return "x"


@pytest.mark.parametrize(
    ("handler", "options", "kind", "error", "message"),
    [
        pytest.param(42, None, None, TypeError, "42 is not callable", id="not-callable"),
        pytest.param("app", None, None, TypeError, "'app' is not callable", id="string"),
        pytest.param(varargs, None, None, TypeError, "takes \\*args.*kind='request'", id="varargs"),
        pytest.param(
            Request.application(response_handler), None, None, TypeError, "kind=", id="decorated"
        ),
        pytest.param(no_params, None, None, TypeError, "takes 0 required", id="no-params"),
        pytest.param(three_params, None, None, TypeError, "takes 3 required", id="three-params"),
        pytest.param(print, None, None, TypeError, "kind=", id="builtin-ambiguous"),
        pytest.param(wsgi_app, {"a": 1}, None, TypeError, "not a class", id="options-no-class"),
        pytest.param(Configured, {"nope": 1}, None, TypeError, "could not instantiate", id="opts"),
        pytest.param(wsgi_app, None, "asgi", ValueError, "unknown kind 'asgi'", id="bad-kind"),
        pytest.param(
            type("NotCallable", (), {}), None, None, TypeError, "is not callable", id="instance"
        ),
    ],
)
def test_unresolvable_handlers_raise(
    handler: object,
    options: dict[str, t.Any] | None,
    kind: str | None,
    error: type[Exception],
    message: str,
) -> None:
    """A clear exception names the object, the accepted forms and kind= as the way out."""
    with pytest.raises(error, match=message):
        to_wsgi(handler, options=options, kind=kind)


def test_type_error_names_the_accepted_forms() -> None:
    with pytest.raises(TypeError) as info:
        to_wsgi(varargs)
    message = str(info.value)
    assert "varargs" in message
    assert "fn(request)" in message
    assert "app(environ, start_response)" in message
    assert "kind='wsgi'" in message


@pytest.mark.parametrize(
    ("request_class", "kind", "message"),
    [
        pytest.param(MyRequest, "wsgi", "kind='wsgi'", id="with-wsgi-kind"),
        pytest.param("Request", None, "must be a class", id="not-a-class"),
        pytest.param(dict, None, "neither a werkzeug Request", id="not-a-request-class"),
    ],
)
def test_bad_request_class_raises(request_class: t.Any, kind: str | None, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        to_wsgi(request_handler, request_class=request_class, kind=kind)


# -- request classes -----------------------------------------------------------


def webob_handler(request: webob.Request) -> webob.Response:
    return webob.Response(f"webob {type(request).__name__} {request.path_info}")


def webob_subclass_handler(request: WebobRequest) -> str:
    return f"sub {type(request).__name__}"


def werkzeug_subclass_handler(request: MyRequest) -> str:
    return f"sub {type(request).__name__}"


def unannotated(request):  # type: ignore[no-untyped-def]
    return f"plain {type(request).__name__}"


def unresolvable(request: DoesNotExist) -> str:  # type: ignore[name-defined]  # noqa: F821
    return f"unresolvable {type(request).__name__}"


@pytest.mark.parametrize(
    ("handler", "request_class", "body"),
    [
        pytest.param(webob_handler, None, b"webob Request /x", id="webob-annotation"),
        pytest.param(webob_subclass_handler, None, b"sub WebobRequest", id="webob-subclass"),
        pytest.param(werkzeug_subclass_handler, None, b"sub MyRequest", id="werkzeug-subclass"),
        pytest.param(unannotated, None, b"plain Request", id="unannotated"),
        pytest.param(unresolvable, None, b"unresolvable Request", id="unresolvable-annotation"),
        pytest.param(unannotated, webob.Request, b"plain Request", id="request-class-webob"),
        pytest.param(unannotated, MyRequest, b"plain MyRequest", id="request-class-werkzeug"),
    ],
)
def test_request_class(handler: object, request_class: type | None, body: bytes) -> None:
    """The request is werkzeug's unless the annotation or request_class= says otherwise."""
    response = call(to_wsgi(handler, request_class=request_class), "/x")
    assert response.get_data() == body


def test_webob_request_class_gives_a_webob_request() -> None:
    seen: list[object] = []

    def handler(request):  # type: ignore[no-untyped-def]
        seen.append(request)
        return "ok"

    call(to_wsgi(handler, request_class=webob.Request))
    assert isinstance(seen[0], webob.Request)


# -- return values -------------------------------------------------------------


def generate() -> Iterator[str | bytes]:
    yield "a"
    yield b"b"


@pytest.mark.parametrize(
    ("returned", "status", "content_type", "body"),
    [
        pytest.param("text", 200, "text/plain; charset=utf-8", b"text", id="str"),
        pytest.param("\u00e9", 200, "text/plain; charset=utf-8", b"\xc3\xa9", id="str-utf8"),
        pytest.param(b"\x00\xff", 200, "application/octet-stream", b"\x00\xff", id="bytes"),
        pytest.param({"a": [1]}, 200, "application/json", b'{"a": [1]}', id="dict"),
        pytest.param([1, "b"], 200, "application/json", b'[1, "b"]', id="list"),
        pytest.param(generate(), 200, "text/plain; charset=utf-8", b"ab", id="iterator"),
        pytest.param(Response("r", status=201), 201, "text/plain; charset=utf-8", b"r", id="resp"),
        pytest.param(
            webob.Response("w", status=202, content_type="text/x"),
            202,
            "text/x; charset=UTF-8",
            b"w",
            id="webob",
        ),
        pytest.param(wsgi_app, 200, "text/plain", b"wsgi", id="wsgi-app"),
        pytest.param(("made", 201), 201, "text/plain; charset=utf-8", b"made", id="body-status"),
        pytest.param(("s", "299 Custom"), 299, "text/plain; charset=utf-8", b"s", id="str-status"),
        pytest.param(({"a": 1}, 202), 202, "application/json", b'{"a": 1}', id="json-status"),
        pytest.param(
            ("h", {"Content-Type": "text/csv"}), 200, "text/csv", b"h", id="body-headers-dict"
        ),
        pytest.param(
            ("h", [("Content-Type", "text/csv")]), 200, "text/csv", b"h", id="body-headers-list"
        ),
        pytest.param(("h", 203, {"X-A": "1"}), 203, "text/plain; charset=utf-8", b"h", id="three"),
        pytest.param(
            (webob.Response("w"), 201), 201, "text/html; charset=UTF-8", b"w", id="webob-tuple"
        ),
        pytest.param((wsgi_app, 404), 404, "text/plain", b"wsgi", id="wsgi-app-tuple"),
    ],
)
def test_return_values(returned: object, status: int, content_type: str, body: bytes) -> None:
    """What a request handler returns is turned into a response as the handlers guide
    lists (docs/guides/handlers.md)."""
    response = call(to_wsgi(lambda request: returned))
    assert response.status_code == status
    assert response.content_type == content_type
    assert response.get_data() == body


def test_three_tuple_headers_are_applied() -> None:
    response = call(to_wsgi(lambda request: ("h", 203, {"X-A": "1"})))
    assert response.headers["X-A"] == "1"


def test_iterator_is_streamed_not_buffered() -> None:
    produced: list[int] = []

    def numbers() -> Iterator[str]:
        for i in range(3):
            produced.append(i)
            yield str(i)

    app = to_wsgi(lambda request: numbers())
    iterable = app(EnvironBuilder().get_environ(), lambda status, headers, exc_info=None: print)
    assert produced == []
    iterator = iter(iterable)
    assert next(iterator) == b"0"
    assert produced == [0]
    t.cast(t.Any, iterable).close()


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        pytest.param(None, "returned 'NoneType'", id="none"),
        pytest.param(42, "returned 'int'", id="int"),
        pytest.param(("a",), "tuple of 1 items", id="one-tuple"),
        pytest.param(("a", 200, {}, 1), "tuple of 4 items", id="four-tuple"),
        pytest.param((("a", 200), 200), "cannot itself be a tuple", id="nested-tuple"),
        pytest.param(("a", 1.5), "must be an int or a str", id="float-status"),
        pytest.param(("a", 200, 5), "headers of a returned tuple", id="bad-headers"),
        pytest.param(("a", True), "must be an int or a str", id="bool-status"),
    ],
)
def test_bad_return_values_raise_type_error(returned: object, message: str) -> None:
    """A handler that returns something that is not a response raises (the middleware: 500)."""
    app = to_wsgi(lambda request: returned)
    with pytest.raises(TypeError, match=message):
        call(app)


def test_iterator_yielding_bad_item_raises() -> None:
    app = to_wsgi(lambda request: iter(["a", 1]))
    with pytest.raises(TypeError, match="yielded 'int'"):
        call(app)


# -- HTTP exceptions -------------------------------------------------------------


def raise_werkzeug(request: Request) -> str:
    raise Forbidden()


def raise_webob(request: Request) -> str:
    raise webob.exc.HTTPConflict()


def webob_raise_werkzeug(request: webob.Request) -> str:
    raise NotFound()


def webob_raise_webob(request: webob.Request) -> str:
    raise webob.exc.HTTPGone()


@pytest.mark.parametrize(
    ("handler", "status"),
    [
        pytest.param(raise_werkzeug, 403, id="werkzeug-request-werkzeug-exc"),
        pytest.param(raise_webob, 409, id="werkzeug-request-webob-exc"),
        pytest.param(webob_raise_werkzeug, 404, id="webob-request-werkzeug-exc"),
        pytest.param(webob_raise_webob, 410, id="webob-request-webob-exc"),
    ],
)
def test_http_exceptions_become_the_response(handler: object, status: int) -> None:
    assert call(to_wsgi(handler)).status_code == status


def test_other_exceptions_propagate() -> None:
    def boom(request: Request) -> str:
        raise KeyError("secret")

    with pytest.raises(KeyError):
        call(to_wsgi(boom))


def test_webob_str_return_is_plain_text() -> None:
    """A webob handler's str gets the same text/plain answer as a werkzeug one."""
    response = call(to_wsgi(lambda request: "x", request_class=webob.Request))
    assert response.content_type == "text/plain; charset=utf-8"
