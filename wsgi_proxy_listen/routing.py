"""
Routing
=======

Pure functions that turn a request path into a :class:`Route`, or into the
status the middleware answers with when the path is malformed. Nothing here
decodes, re-quotes or normalises: the slices handed to a listener are raw
slices of the strings the server gave.

Paths under the prefix are matched most specific first::

    {prefix}/sessions/{session}{rest}
    {prefix}/apps/{slug}/sessions/{session}{rest}
    {prefix}/apps/{slug}{rest}

``rest`` is ``""`` or starts with ``/``. Ids match ``[A-Za-z0-9_-]{1,128}``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote, unquote, urlsplit

from werkzeug.urls import iri_to_uri

from .answers import BAD_REQUEST, NOT_FOUND, Answer

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "ID_PATTERN",
    "Route",
    "check_id",
    "has_dot_segment",
    "has_encoded_dot_segment",
    "is_valid_id",
    "parse",
    "plain_session_route",
    "public_path",
    "raw_path_spells",
    "raw_uri_path",
    "route",
    "url_path",
    "validate_prefix",
]

#: What a session id or an app slug must look like.
ID_PATTERN = "[A-Za-z0-9_-]{1,128}"
_ID = re.compile(ID_PATTERN)
# A prefix is made of unreserved characters only, so that its raw spelling in
# the request URI is the same as its decoded spelling in ``PATH_INFO``.
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")
_DOT_SEGMENTS = frozenset({".", ".."})
# What a path segment may hold unquoted (RFC 3986's pchar), and "/".
_PATH_SAFE = "/!$&'()*+,;=:@-._~"

SESSION = "session"
APP_SESSION = "app_session"
APP = "app"


class Route(NamedTuple):
    """A path under the prefix, split into its routing part and the rest.

    ``path[:split]`` is what moves into ``SCRIPT_NAME`` and ``path[split:]``
    becomes the listener's ``PATH_INFO``.
    """

    kind: str
    """:data:`SESSION`, :data:`APP_SESSION` or :data:`APP`."""
    app: str | None
    session: str | None
    split: int


def is_valid_id(value: object) -> bool:
    """Whether ``value`` is a string usable as a session id or app slug."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a usable routing prefix, else raise."""
    if not isinstance(prefix, str):
        raise TypeError(f"the prefix must be a str such as '/proxy', not {prefix!r}")
    if _PREFIX.fullmatch(prefix) is None:
        raise ValueError(
            f"invalid prefix {prefix!r}: use a path such as '/proxy' that starts"
            " with '/', does not end with '/', and has only letters, digits and"
            " '-._~' in its segments"
        )
    if any(segment in _DOT_SEGMENTS for segment in prefix.split("/")):
        raise ValueError(f"invalid prefix {prefix!r}: '.' and '..' segments are not allowed")
    return prefix


def has_dot_segment(path: str) -> bool:
    """Whether the decoded ``path`` has a ``.`` or ``..`` segment after its first ``/``."""
    return "/./" in path or "/../" in path or path.endswith(("/.", "/.."))


def raw_uri_path(raw_uri: str) -> str:
    """The path of a raw request URI (``REQUEST_URI``/``RAW_URI``), still encoded.

    Accepts origin form (``/a/b?q``) and absolute form (``http://host/a/b?q``).
    """
    raw_path = raw_uri.partition("?")[0]
    if raw_path.startswith("/"):
        return raw_path
    return urlsplit(raw_path).path


def has_encoded_dot_segment(raw_path: str) -> bool:
    """Whether the still-encoded ``raw_path`` has a segment that decodes to ``.`` or ``..``."""
    if "%" not in raw_path:
        return False
    return any(
        "%" in segment and unquote(segment) in _DOT_SEGMENTS for segment in raw_path.split("/")
    )


def parse(path: str, prefix: str) -> Route | None:
    """Split ``path`` (a ``PATH_INFO`` under ``prefix``) into a :class:`Route`.

    Returns ``None`` when a routing segment is malformed (an empty or invalid
    id). ``path`` must start with ``prefix + "/sessions/"`` or
    ``prefix + "/apps/"``.
    """
    start = len(prefix) + 1
    if path.startswith("sessions/", start):
        start += len("sessions/")
        session, rest = _take_id(path, start)
        if session is None:
            return None
        return Route(SESSION, None, session, len(path) - len(rest))
    start += len("apps/")
    app, rest = _take_id(path, start)
    if app is None:
        return None
    if not rest.startswith("/sessions/"):
        return Route(APP, app, None, len(path) - len(rest))
    session, rest = _take_id(rest, len("/sessions/"))
    if session is None:
        return None
    return Route(APP_SESSION, app, session, len(path) - len(rest))


def _take_id(path: str, start: int) -> tuple[str | None, str]:
    # One bounded search for the end of the id: a 10 KB segment or a path of
    # thousands of slashes costs one scan, never a regex backtrack.
    end = path.find("/", start)
    if end == -1:
        end = len(path)
    candidate = path[start:end]
    if len(candidate) > 128 or _ID.fullmatch(candidate) is None:
        return None, ""
    return candidate, path[end:]


def raw_path_spells(raw_path: str, script_name: str, routing: str) -> bool:
    """Whether the still-encoded ``raw_path`` spells ``routing`` literally.

    ``routing`` is the part of ``PATH_INFO`` that names the listener, such as
    ``/proxy/sessions/a``. It is made of unreserved characters only, so a raw
    URI that reaches the same listener must spell it letter for letter,
    followed by the end of the path or a ``/``: ``/proxy/sessions/a%2Fb/x``
    decodes to a path under session ``a`` but does not spell it. Servers differ
    on whether the raw URI includes ``SCRIPT_NAME`` (gunicorn and werkzeug's
    server do, werkzeug's test client does not): each is accepted.
    """
    if script_name and raw_path.startswith(script_name + routing):
        end = len(script_name) + len(routing)
    elif raw_path.startswith(routing):
        end = len(routing)
    else:
        # A SCRIPT_NAME with characters that the client had to escape.
        start = raw_path.find(routing)
        if start <= 0 or unquote(raw_path[:start], encoding="latin-1") != script_name:
            return False
        end = start + len(routing)
    return end == len(raw_path) or raw_path[end] == "/"


def plain_session_route(path: str, sessions: str, raw_uri: str | None) -> tuple[str, int] | None:
    """The session id and split of the common case, a plain session route, or ``None``
    for anything that the full checks (:func:`parse` and the rest) must decide.

    ``sessions`` is ``prefix + "/sessions/"``. A plain route has no ``/.`` in its
    path, and a raw URI that spells its routing part letter for letter with no
    ``%2`` escape anywhere. The id is not checked here: ids are checked when
    listeners register, so an invalid one finds no listener.
    """
    if not path.startswith(sessions) or "/." in path:
        return None
    start = len(sessions)
    end = path.find("/", start)
    if end == -1:
        end = len(path)
    if (
        raw_uri is not None
        and (
            "%2" in raw_uri
            # The usual raw URI is the path itself: nothing was escaped.
            or (
                raw_uri != path
                and (
                    not raw_uri.startswith(path[:end])
                    or (len(raw_uri) != end and raw_uri[end] not in "/?")
                )
            )
        )
    ):
        return None
    return path[start:end], end


def check_id(what: str, value: object) -> str:
    """``value``, a session id or an app slug (``what``); raise for anything else."""
    if not isinstance(value, str):
        raise TypeError(f"a {what} must be a str, not {type(value).__name__!r}")
    if not is_valid_id(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1 to 128 characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    return value


def public_path(script_name: str, path: str) -> str:
    """The URL path of ``path`` (the prefix, a route and more) under a host's
    ``script_name``, percent-encoded where a URL needs it.

    ``script_name`` is a WSGI string (bytes decoded as latin-1, PEP 3333, or text
    as a framework has it): every character that means something in a URL is
    quoted. A server's ``/`` for the root does not make it ``//proxy`` (another
    host). In ``path``, existing ``%`` escapes are kept.
    """
    script_name = script_name.rstrip("/")
    try:
        raw = script_name.encode("latin-1")
    except UnicodeEncodeError:  # not a WSGI string: text, as a framework has it
        raw = script_name.encode("utf-8")
    return quote(raw, safe=_PATH_SAFE) + iri_to_uri(path)


def url_path(script_name: str) -> str:
    """A WSGI ``SCRIPT_NAME`` (or path) as it appears in a URL.

    WSGI strings are bytes decoded as latin-1 (PEP 3333): read them as UTF-8 and
    percent-encode what a URL cannot hold; existing ``%`` escapes are kept.
    """
    return iri_to_uri(script_name.encode("latin-1").decode("utf-8", "replace"))


def request_path(environ: WSGIEnvironment) -> str:
    """The URL path of the request, for a redirect to the same path elsewhere:
    ``SCRIPT_NAME + PATH_INFO`` with every character that means something in a URL
    quoted (a ``%``, ``?`` or ``#`` that the client sent encoded stays encoded), so
    that the server there decodes the same ``PATH_INFO``."""
    path: str = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return quote(path.encode("latin-1", "replace"), safe=_PATH_SAFE)


def route(path: str, prefix: str, script_name: str, raw_uri: str | None) -> Route | Answer:
    """Every check of a path under the prefix, in the middleware's order: the
    :class:`Route`, or the answer for a malformed path (dot segments 400, routing
    segments and ids 404, a raw URI that does not spell the routing part 404).

    ``path`` must start with ``prefix + "/sessions/"`` or ``prefix + "/apps/"``.
    :func:`plain_session_route` is the shortcut for the common case: whatever it
    accepts, this accepts alike.
    """
    raw_path = raw_uri_path(raw_uri) if raw_uri else None
    if has_dot_segment(path) or (raw_path is not None and has_encoded_dot_segment(raw_path)):
        return BAD_REQUEST
    found = parse(path, prefix)
    if found is None:
        return NOT_FOUND
    if raw_path is not None and not raw_path_spells(raw_path, script_name, path[: found.split]):
        return NOT_FOUND
    return found
