"""
Handlers
========

:func:`to_wsgi` turns whatever was given to ``listen()`` into one WSGI
callable, once, when ``listen()`` is called. Three kinds are accepted:

1. a request handler ``fn(request) -> response``. The request is a werkzeug
   :class:`~werkzeug.wrappers.Request`, unless the parameter is annotated with a
   webob ``Request`` or another werkzeug ``Request`` subclass, or
   ``request_class=`` says otherwise;
2. any WSGI application ``app(environ, start_response)``: a plain function, a
   Flask app, Django's ``WSGIHandler``, a werkzeug or webob ``Response``;
3. a class, instantiated once as ``cls(**options)``; the instance is then
   handled as 1 or 2.

``kind="request"`` or ``kind="wsgi"`` forces the choice; otherwise it is
inferred from the number of required positional parameters (1 or 2).

What a request handler may return is turned into a response by werkzeug's and
webob's own machinery (:meth:`werkzeug.wrappers.Request.application`,
:meth:`werkzeug.wrappers.Response.force_type`, :class:`webob.dec.wsgify`):

=============================================  ==================================
return value                                   response
=============================================  ==================================
a werkzeug or webob ``Response``, a WSGI app   itself
``str``                                        200, ``text/plain; charset=utf-8``
``bytes``                                      200, ``application/octet-stream``
``dict`` or ``list``                           200, JSON
an iterator of ``str``/``bytes``               200, streamed
``(body, status)``, ``(body, headers)``,       ``body`` as above, with the status
``(body, status, headers)``                    and headers applied
=============================================  ==================================

A raised werkzeug or webob ``HTTPException`` becomes the response, except
:exc:`~werkzeug.exceptions.RequestEntityTooLarge` (the body was read past the
middleware's ``max_content_length``), which becomes the middleware's own
plain 413 answer.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing as t
from collections.abc import Iterator, Mapping

from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from .answers import answer_app

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

__all__ = ["KINDS", "make_response", "to_wsgi"]

#: The values accepted by ``listen(kind=...)``.
KINDS = ("request", "wsgi")

_ACCEPTED = (
    "a request handler fn(request) -> response, a WSGI app app(environ, start_response),"
    " or a class whose instances are one of those"
)


def to_wsgi(
    handler: object,
    *,
    kind: str | None = None,
    request_class: type | None = None,
    options: Mapping[str, t.Any] | None = None,
) -> WSGIApplication:
    """Resolve ``handler`` into one WSGI callable.

    Raises :exc:`TypeError` naming the object and the accepted forms when it
    cannot be resolved, and :exc:`ValueError` for an unknown ``kind``.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use 'request', 'wsgi' or None to infer it")
    if request_class is not None and kind == "wsgi":
        raise TypeError(
            f"request_class={request_class!r} was given with kind='wsgi': a WSGI app"
            " builds no request; drop one of them"
        )
    if request_class is not None and not isinstance(request_class, type):
        raise TypeError(
            f"request_class must be a class such as werkzeug.wrappers.Request"
            f" or webob.Request, not {request_class!r}"
        )
    target = handler
    if isinstance(handler, type):
        try:
            target = handler(**(options or {}))
        except TypeError as error:
            raise TypeError(
                f"could not instantiate {handler!r} with options {options!r}: {error}"
            ) from error
    elif options is not None:
        raise TypeError(
            f"options={options!r} were given with {handler!r}, which is not a class:"
            " options are passed to a class as cls(**options); drop them or pass a class"
        )
    if not callable(target):
        raise TypeError(f"{_describe(handler, target)} is not callable: pass {_ACCEPTED}")
    if kind is None:
        kind = "request" if request_class is not None else _infer_kind(handler, target)
    if kind == "wsgi":
        return t.cast("WSGIApplication", target)
    return _request_handler_app(target, request_class or _annotated_request_class(target))


def _describe(handler: object, target: object) -> str:
    if handler is target:
        return repr(handler)
    return f"{target!r} (an instance of {handler!r})"


def _plain_function(target: object) -> tuple[types.FunctionType, int] | None:
    """The Python function behind ``target`` and how many leading parameters it binds
    (1 for a method's self), or None when ``target`` is not one."""
    if isinstance(target, types.FunctionType):
        return target, 0
    if isinstance(target, types.MethodType) and isinstance(target.__func__, types.FunctionType):
        return target.__func__, 1
    call = getattr(type(target), "__call__", None)  # noqa: B004 - the function itself is wanted
    if isinstance(call, types.FunctionType):
        return call, 1
    return None


def _required_positional(target: object) -> int | None:
    """Required positional parameters read off the code object, which is what
    inspect.signature computes, at a fraction of its cost; None for anything that is
    not a plain function or method without ``*args``."""
    found = _plain_function(target)
    if found is None:
        return None
    function, bound = found
    code = function.__code__
    if code.co_flags & inspect.CO_VARARGS:
        return None
    return code.co_argcount - len(function.__defaults__ or ()) - bound


def _infer_kind(handler: object, target: t.Callable[..., object]) -> str:
    required = _required_positional(target)
    if required == 1:
        return "request"
    if required == 2:
        return "wsgi"
    problem = ""
    try:
        # follow_wrapped=False: a decorator's own (*args, **kwargs) is what
        # will be called, whatever the function it wraps looks like.
        parameters = inspect.signature(target, follow_wrapped=False).parameters.values()
    except (TypeError, ValueError):
        problem = "has no signature that can be inspected"
    else:
        if any(p.kind is p.VAR_POSITIONAL for p in parameters):
            problem = "takes *args, which makes its kind ambiguous"
        else:
            required = sum(
                1
                for p in parameters
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            )
            if required == 1:
                return "request"
            if required == 2:
                return "wsgi"
            problem = f"takes {required} required positional parameters, not 1 or 2"
    raise TypeError(
        f"cannot tell how to call {_describe(handler, target)}: it {problem}."
        f" Pass {_ACCEPTED}, or say which it is with kind='request' or kind='wsgi'"
    )


def _annotated_request_class(target: t.Callable[..., object]) -> type | None:
    found = _plain_function(target)
    if found is not None and not set(found[0].__annotations__) - {"return"}:
        return None
    try:
        hints = t.get_type_hints(target if inspect.isroutine(target) else type(target).__call__)
    except Exception:  # noqa: BLE001 - unresolvable annotations simply mean "no hint"
        return None
    for name, hint in hints.items():
        if (
            name != "return"
            and isinstance(hint, type)
            and (issubclass(hint, Request) or _is_webob_request(hint))
        ):
            return hint
    return None


def _is_webob_request(cls: type) -> bool:
    webob_request = sys.modules.get("webob.request")
    return webob_request is not None and issubclass(cls, webob_request.BaseRequest)


def _request_handler_app(
    handler: t.Callable[[t.Any], object], request_class: type | None
) -> WSGIApplication:
    if request_class is not None and _is_webob_request(request_class):
        return _webob_app(handler, request_class)
    if request_class is None:
        request_class = Request
    elif not issubclass(request_class, Request):
        raise TypeError(
            f"request_class={request_class!r} is neither a werkzeug Request subclass"
            " nor a webob Request subclass"
        )

    def respond(request: Request) -> WSGIApplication:
        try:
            returned = handler(request)
        except RequestEntityTooLarge:
            return answer_app(413)
        except Exception as error:
            if not _is_webob_http_exception(error):
                raise
            returned = error
        return make_response(returned, request.environ)

    return request_class.application(respond)


def _webob_app(handler: t.Callable[[t.Any], object], request_class: type) -> WSGIApplication:
    from webob.dec import wsgify

    def respond(request: t.Any) -> WSGIApplication:
        try:
            returned = handler(request)
        except RequestEntityTooLarge:
            return answer_app(413)
        except HTTPException as error:
            returned = error.get_response(request.environ)
        return make_response(returned, request.environ)

    return t.cast("WSGIApplication", wsgify(respond, RequestClass=request_class))


def _is_webob_http_exception(error: Exception) -> bool:
    # A handler that raised a webob exception has imported webob.exc itself,
    # so looking in sys.modules keeps webob optional.
    webob_exc = sys.modules.get("webob.exc")
    return webob_exc is not None and isinstance(error, webob_exc.HTTPException)


def make_response(returned: object, environ: WSGIEnvironment) -> WSGIApplication:
    """Turn what a request handler returned into a WSGI callable.

    Raises :exc:`TypeError` for anything that is not a response.
    """
    if isinstance(returned, tuple):
        return _tuple_response(returned, environ)
    if isinstance(returned, str):
        return Response(returned, content_type="text/plain; charset=utf-8")
    if isinstance(returned, bytes):
        return Response(returned, content_type="application/octet-stream")
    if isinstance(returned, (dict, list)):
        return Response(json.dumps(returned), content_type="application/json")
    if callable(returned):
        return t.cast("WSGIApplication", returned)
    if isinstance(returned, Iterator):
        return Response(_Chunks(returned), content_type="text/plain; charset=utf-8")
    raise TypeError(
        f"a request handler returned {type(returned).__name__!r}, which is not a response:"
        " return a werkzeug or webob Response, a WSGI app, str, bytes, dict, list,"
        " an iterator of str or bytes, or a (body, status, headers) tuple"
    )


class _Chunks:
    """What a request handler's iterator yields, as bytes. Closing it closes that
    iterator, whatever it is: a generator around it would not, unless started."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: Iterator[object]) -> None:
        self.chunks = chunks

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        chunk = next(self.chunks)
        if isinstance(chunk, bytes):
            return chunk
        if isinstance(chunk, str):
            return chunk.encode()
        raise TypeError(f"a streamed response yielded {type(chunk).__name__!r}: yield str or bytes")

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()


def _tuple_response(returned: tuple[object, ...], environ: WSGIEnvironment) -> WSGIApplication:
    status: object = None
    headers: object = None
    if len(returned) == 3:
        body, status, headers = returned
    elif len(returned) == 2:
        body, extra = returned
        if isinstance(extra, (Headers, Mapping, list)):
            headers = extra
        else:
            status = extra
    else:
        raise TypeError(
            f"a request handler returned a tuple of {len(returned)} items: return"
            " (body, status), (body, headers) or (body, status, headers)"
        )
    if isinstance(body, tuple):
        raise TypeError("the body of a returned tuple cannot itself be a tuple")
    response = Response.force_type(t.cast(Response, make_response(body, environ)), environ)
    if status is not None:
        if not isinstance(status, (int, str)) or isinstance(status, bool):
            raise TypeError(
                f"the status of a returned tuple must be an int or a str, not {status!r}"
            )
        response.status = status
    if headers is not None:
        if not isinstance(headers, (Headers, Mapping, list)):
            raise TypeError(
                f"the headers of a returned tuple must be a dict, a list of pairs"
                f" or Headers, not {type(headers).__name__!r}"
            )
        response.headers.update(headers)
    return response
