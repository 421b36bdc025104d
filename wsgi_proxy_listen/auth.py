"""
Bearer authentication
=====================

Listener endpoints are reachable without the host's login: a request under
the proxy prefix never reaches the host app or its authentication. A listener
that is not public must check its callers itself; :func:`require_bearer` does
that with a shared secret sent as ``Authorization: Bearer <token>``.

.. code-block:: python

    from wsgi_proxy_listen import listen
    from wsgi_proxy_listen.auth import require_bearer

    listen(require_bearer(report, os.environ["REPORT_TOKEN"]), session="report-1")

A missing, wrong or malformed header gets a plain 401 with
``WWW-Authenticate: Bearer``, and the listener does not run.
"""

from __future__ import annotations

import hmac
import logging
import re
import typing as t
from collections.abc import Callable

from werkzeug.datastructures import Authorization

from .answers import respond
from .handlers import to_wsgi

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["require_bearer"]

logger = logging.getLogger("wsgi_proxy_listen")

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def _token_bytes(token: object) -> bytes | None:
    """The token as bytes, or None if it is not a usable bearer token."""
    if isinstance(token, str):
        if not token.isascii():
            return None
        token = token.encode("ascii")
    if not isinstance(token, bytes) or _B64TOKEN.fullmatch(token.decode("latin-1")) is None:
        return None
    return token


def require_bearer(
    listener: object,
    token: str | bytes | Callable[[], str | bytes],
    *,
    kind: str | None = None,
) -> WSGIApplication:
    """Wrap ``listener`` so that it only answers requests with the right bearer token.

    :param listener: a request handler or a WSGI app, as ``listen()`` takes it.
    :param token: the secret, as ``str`` or ``bytes`` (the characters RFC 6750
        allows in a bearer token), or a callable returning it on each request
        (for rotating secrets; a callable that raises or returns an unusable
        token makes every request 401, and is logged).
    :param kind: forces how ``listener`` is called, as for ``listen()``.
    :returns: a WSGI app, which ``listen()`` accepts.
    :raises ValueError: ``token`` is empty, ``None`` or not a bearer token.
    """
    if callable(token):
        current = token
    else:
        fixed = _token_bytes(token)
        if fixed is None:
            raise ValueError(
                f"invalid bearer token {'<empty>' if not token else type(token).__name__!r}:"
                " use a non-empty str or bytes of letters, digits and '-._~+/' (RFC 6750),"
                " or a callable that returns one"
            )

        def current() -> bytes:
            return fixed

    inner = to_wsgi(listener, kind=kind)

    def bearer_protected(
        environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if _authorized(environ.get("HTTP_AUTHORIZATION"), current):
            return inner(environ, start_response)
        return respond(start_response, 401, extra=[("WWW-Authenticate", "Bearer")])

    name = getattr(listener, "__qualname__", type(listener).__qualname__)
    bearer_protected.__qualname__ = f"require_bearer({name})"
    return bearer_protected


def _authorized(header: str | None, current: Callable[[], str | bytes]) -> bool:
    if not header:
        return False
    authorization = Authorization.from_header(header)
    if authorization is None or authorization.type != "bearer" or not authorization.token:
        return False
    given = _token_bytes(authorization.token)
    if given is None:
        return False
    try:
        expected = _token_bytes(current())
    except Exception:
        logger.exception("the bearer token callable raised; denying the request")
        return False
    if expected is None:
        logger.error("the bearer token callable returned an unusable token; denying the request")
        return False
    return hmac.compare_digest(given, expected)
