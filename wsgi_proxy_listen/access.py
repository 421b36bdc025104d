"""
Access
======

Who may reach a listener, decided by the host before any listener runs.

Each listener (``listen(..., access=...)``) and each app
(``register_app(..., access=...)``) says who may reach it:

- ``"public"``: anyone; the host's login is not even asked;
- ``"authenticated"``: any user logged in to the host;
- a collection of user ids (``{"alice", "bob"}``): those users only;
- ``None``: what the middleware's ``default_access`` says (``"public"`` unless set).

A member of an app without an access of its own has its app's. The host says
who is logged in with ``authenticate(environ) -> user id | None`` (the Flask and
Django integrations build it from Flask-Login and ``django.contrib.auth``), and
the :class:`Gate` gives the answer:

==============================================  =====================================
not logged in, a browser's navigation           302 to ``login_url``, ``next=`` the
(``GET``/``HEAD`` accepting ``text/html``)      path and query, when there is one
not logged in otherwise                         401 (without ``WWW-Authenticate``)
logged in, not one of the listener's users      403
``authenticate`` or ``login_url`` failed        500, logged with the traceback
==============================================  =====================================

The user who got in reaches the listener as ``REMOTE_USER``. With an
``authenticate``, a ``REMOTE_USER`` that the middleware did not set never
reaches a listener.
"""

from __future__ import annotations

import logging
import typing as t
from collections.abc import Callable, Collection, Mapping
from urllib.parse import urlencode

from werkzeug.utils import import_string

from .answers import respond
from .routing import request_path, url_path

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "AUTHENTICATED",
    "PUBLIC",
    "Access",
    "Authenticate",
    "Gate",
    "LoginUrl",
    "Refusal",
    "access_from_record",
    "access_to_record",
    "check_access",
    "check_authenticate",
    "check_login_url",
    "is_navigation",
]

logger = logging.getLogger("wsgi_proxy_listen")

PUBLIC = "public"
AUTHENTICATED = "authenticated"

#: ``"public"``, ``"authenticated"``, or the ids of the users who may reach it.
Access: t.TypeAlias = "str | frozenset[str]"
#: The host's login: the id of the user logged in for a request, or ``None``.
Authenticate: t.TypeAlias = "Callable[[WSGIEnvironment], str | None]"
#: Where a browser that is not logged in is sent: a URL, or one built for the request.
LoginUrl: t.TypeAlias = "str | Callable[[WSGIEnvironment], str]"


def check_access(access: object, *, name: str = "access") -> Access | None:
    """``access`` as the gate reads it (a collection becomes a frozenset), or ``None``.

    :raises ValueError: another string, or an empty collection (nobody could come in).
    :raises TypeError: anything else, or a user id that is not a non-empty string.
    """
    if access is None or access in (PUBLIC, AUTHENTICATED):
        return access
    if isinstance(access, str):
        raise ValueError(
            f"invalid {name} {access!r}: use 'public', 'authenticated' or a collection of"
            f" user ids, such as {{{access!r}}}"
        )
    if isinstance(access, (bytes, bytearray, Mapping)) or not isinstance(access, Collection):
        raise TypeError(
            f"{name} must be 'public', 'authenticated', a collection of user ids or None,"
            f" not {access!r}"
        )
    users = frozenset(access)
    for user in users:
        if not isinstance(user, str) or not user:
            raise TypeError(f"the user ids of {name} must be non-empty strings, not {user!r}")
    if not users:
        raise ValueError(f"invalid {name}: an empty collection lets nobody in")
    return users


def check_authenticate(authenticate: object) -> Authenticate | None:
    """``authenticate`` as a callable: given one, or imported from a dotted path
    (``"myhost.auth.current_user"``), or ``None``.

    :raises ValueError: a dotted path that cannot be imported.
    :raises TypeError: anything else.
    """
    if isinstance(authenticate, str):
        try:
            authenticate = import_string(authenticate)
        except ImportError as error:
            raise ValueError(f"authenticate {authenticate!r} cannot be imported: {error}") from None
    if authenticate is not None and not callable(authenticate):
        raise TypeError(
            f"authenticate must be a callable taking the environ, a dotted path to one, or"
            f" None, not {authenticate!r}"
        )
    return t.cast("Authenticate | None", authenticate)


def check_login_url(login_url: object) -> LoginUrl | None:
    """``login_url``: a path or an absolute ``http(s)`` URL, a callable that builds one
    from the environ, or ``None``.

    :raises ValueError: a string that is neither.
    :raises TypeError: anything else.
    """
    if login_url is None or callable(login_url):
        return t.cast("LoginUrl | None", login_url)
    if not isinstance(login_url, str):
        raise TypeError(f"login_url must be a str, a callable or None, not {login_url!r}")
    if not login_url.startswith(("/", "http://", "https://")) or login_url.startswith("//"):
        raise ValueError(
            f"invalid login_url {login_url!r}: use a path such as '/login' or an http(s) URL"
        )
    return login_url


def access_to_record(access: Access | None) -> str | list[str] | None:
    """``access`` as a directory's record holds it (JSON)."""
    return sorted(access) if isinstance(access, frozenset) else access


def access_from_record(value: object) -> Access | None:
    """What :func:`access_to_record` wrote.

    :raises ValueError: anything else (the entry is not to be trusted).
    """
    try:
        return check_access(value)
    except TypeError as error:
        raise ValueError(str(error)) from None


def is_navigation(environ: WSGIEnvironment) -> bool:
    """Whether a request is a browser's navigation (``GET`` or ``HEAD`` that accepts
    ``text/html``), which a redirect to a login page can serve."""
    return environ.get("REQUEST_METHOD") in ("GET", "HEAD") and "text/html" in environ.get(
        "HTTP_ACCEPT", ""
    )


class Refusal(t.NamedTuple):
    """The answer for a request that may not reach its listener."""

    status: int
    location: str | None = None

    def answer(self, start_response: StartResponse) -> list[bytes]:
        if self.location is None:
            return respond(start_response, self.status)
        return respond(start_response, self.status, extra=[("Location", self.location)])


UNAUTHORIZED = Refusal(401)
FORBIDDEN = Refusal(403)
FAILED = Refusal(500)


class Gate:
    """The middleware's decision: who is calling, and whether they may come in.

    :param authenticate: the host's login (see the module), or ``None``: nobody is
        logged in, and only public listeners can be reached.
    :param default_access: the access of a listener that declares none.
    :param login_url: where a browser that is not logged in is sent, or ``None``.
    :param log_in: the answer for a request of nobody to a listener that is not
        public, instead of the one ``login_url`` gives.
    """

    __slots__ = ("_log_in", "authenticate", "default_access", "login_url", "public")

    def __init__(
        self,
        authenticate: object = None,
        default_access: object = PUBLIC,
        login_url: object = None,
        *,
        log_in: t.Callable[[WSGIEnvironment], Refusal] | None = None,
    ) -> None:
        self.authenticate = check_authenticate(authenticate)
        default = check_access(default_access, name="default_access")
        if default is None:
            raise TypeError("default_access must be 'public', 'authenticated' or user ids")
        self.default_access: Access = default
        self.login_url = check_login_url(login_url)
        self.public = default == PUBLIC
        """Whether a listener that declares no access is public."""
        self._log_in = self._to_login_url if log_in is None else log_in

    def verdict(
        self, access: Access | None, environ: WSGIEnvironment, known: str | None = None
    ) -> str | Refusal | None:
        """The id of the user who may come in, ``None`` for anyone (a public listener:
        nobody is asked), or the :class:`Refusal` to answer with. ``known``: the user
        that a verdict on the same request found already (asked once a request)."""
        if access is None:
            access = self.default_access
        if access == PUBLIC:
            return None
        user = self.user(environ) if known is None else known
        if isinstance(user, Refusal):
            return user
        if user is None:
            return self._log_in(environ)
        if access == AUTHENTICATED or user in access:
            return user
        return FORBIDDEN

    def user(self, environ: WSGIEnvironment) -> str | Refusal | None:
        """Who is logged in to the host for this request (``None``: nobody), or the
        500 for an ``authenticate`` that failed."""
        if self.authenticate is None:
            return None
        try:
            user = self.authenticate(environ)
        except Exception:
            logger.exception("authenticate raised: the request was refused with 500")
            return FAILED
        if user is not None and (not isinstance(user, str) or not user):
            logger.error(
                "authenticate returned %r, not a user id (a non-empty str) or None: the"
                " request was refused with 500",
                type(user).__name__,
            )
            return FAILED
        return user

    def _to_login_url(self, environ: WSGIEnvironment) -> Refusal:
        login_url = self.login_url
        if login_url is None or not is_navigation(environ):
            return UNAUTHORIZED
        if callable(login_url):
            try:
                login_url = login_url(environ)
            except Exception:
                logger.exception("login_url raised: the request was refused with 500")
                return FAILED
            if not isinstance(login_url, str):
                logger.error("login_url returned %r, not a str", type(login_url).__name__)
                return FAILED
        there = request_path(environ)
        query = environ.get("QUERY_STRING")
        there = there + "?" + url_path(query) if query else there
        # A path of this origin only: '//x' or '/\\x' would lead a browser to another.
        there = "/" + there.lstrip("/\\")
        joiner = "&" if "?" in login_url else "?"
        return Refusal(302, login_url + joiner + urlencode({"next": there}))
