"""
The directory seam
==================

A :class:`~wsgi_proxy_listen.Registry` on its own serves the listeners of one
process. Given a *directory*, it shares the listeners registered at run time
with the other processes of the host (and with other hosts), and requests for
a listener of another process are forwarded to it. This module is the whole
contract between the two sides, typed:

- :class:`Directory` is everything the registry, the middleware and the app
  rules call on a directory;
- :class:`Host` and :class:`Registered` are everything a directory may ask of
  the registry and its listeners;
- :class:`Destination` is what a directory finds for a request that no
  listener of this process serves.

Two directories implement it, in :mod:`wsgi_proxy_listen.cluster`: the
embedded one (a folder on one machine) and Redis (several machines).
"""

from __future__ import annotations

import re
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .answers import Answer
    from .terms import Terms

__all__ = [
    "Destination",
    "Directory",
    "Entry",
    "Host",
    "Registered",
    "ServeForwarded",
    "shown_name",
]

#: How a directory hands a request forwarded from another process to this
#: process's listeners (:meth:`Host.serve_forwarded`): ``serve(environ,
#: start_response, session, prefix)`` answers it from the local listener of
#: ``session``, routing with ``prefix`` (the one of the process that received the
#: request), or returns ``None`` when this process does not serve ``session`` (any
#: more) and nothing was sent.
ServeForwarded: t.TypeAlias = (
    "Callable[[WSGIEnvironment, StartResponse, str, str], Iterable[bytes] | None]"
)


def shown_name(name: str) -> str:
    """A directory's name as messages and logs show it: a URL's password hidden,
    in its user part or as a ``password`` (or ``sentinel_password``) parameter. Read
    as text, not parsed: a password holding ``/``, ``#``, ``?`` or ``[`` is hidden too,
    and it never raises.

    >>> shown_name("redis://:hunter2@cache:6379/0")
    'redis://:***@cache:6379/0'
    """
    scheme, found, rest = name.partition("://")
    if not found:
        return name  # a folder path
    if not rest.startswith("/"):  # an authority, which may hold user:password@
        userinfo, at, place = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        if at and colon:
            rest = f"{user}:***@{place}"
    return scheme + "://" + _PASSWORD_PARAMETER.sub(r"\1***", rest)


# ``password=`` and any ``..._password=`` (a Sentinel URL's ``sentinel_password=``).
_PASSWORD_PARAMETER = re.compile(r"([?&;](?:[a-z_]*_)?password=)[^&;#]*", re.IGNORECASE)


class Entry(t.NamedTuple):
    """A listener that a directory lists: published by some process, live."""

    session: str
    app: str | None
    owner: str
    """The owning process, unique to one run of it."""
    pid: int | None
    """Its process id, where the directory knows it."""
    address: str
    """Its internal endpoint: a Unix socket path, or ``host:port``."""
    since: float
    """When it was published, as :func:`time.time`."""


class Registered(t.Protocol):
    """A listener as a directory sees it."""

    @property
    def session(self) -> str: ...

    @property
    def app(self) -> str | None: ...

    @property
    def terms(self) -> Terms:
        """Who may reach it and whether it is sandboxed, as ``listen()`` declared it
        (see :mod:`wsgi_proxy_listen.terms`)."""

    def close(self) -> None:
        """Remove the listener from its registry (the directory calls it when another
        process took the session over)."""


class Host(t.Protocol):
    """What a directory may ask of the registry that uses it."""

    @property
    def prefix(self) -> str: ...

    def get(self, session: str, /) -> Registered | None: ...

    def terms_of(self, listener: Registered) -> Terms:
        """The terms of ``listener`` (its own, else its app's), as published: the
        host that receives a request applies them, what they leave open by its own."""

    def serve_forwarded(
        self, environ: WSGIEnvironment, start_response: StartResponse, session: str, prefix: str
    ) -> Iterable[bytes] | None:
        """Answer a request that another process forwarded here (see
        :data:`ServeForwarded`)."""


class Destination(t.Protocol):
    """A listener of another process that a directory found for a request."""

    @property
    def session(self) -> str:
        """The session whose listener it is."""

    @property
    def app(self) -> str | None:
        """The app the session belongs to, as the directory says."""

    @property
    def owner(self) -> str:
        """The process that owns it."""

    @property
    def terms(self) -> Terms:
        """Who may reach it and whether it is sandboxed, as its owner published them
        (see :mod:`wsgi_proxy_listen.terms`); what they leave open is the choice of the
        middleware that received the request."""

    def serve(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes] | None:
        """Forward the request and return the owner's answer, or answer for what went
        wrong; ``None``, with nothing sent, when the owner does not serve the session
        (any more) and the directory knows of no other owner."""


@t.runtime_checkable
class Directory(t.Protocol):
    """Everything the registry, the middleware and the apps call on a directory.

    The registry calls :meth:`attach` once, then :meth:`listened` and
    :meth:`removed` as listeners come and go. The middleware calls
    :meth:`start_serving` with the first request of the process (while
    :attr:`serving` is false) and :meth:`locate` when no listener of this
    process serves a session; the app rules (:mod:`wsgi_proxy_listen.apps`)
    call :meth:`current`, :meth:`lock_start` and :meth:`unlock_start`.
    """

    @property
    def serving(self) -> bool:
        """Whether this process publishes its run-time listeners and accepts forwarded
        requests (set by :meth:`start_serving`, false again after a fork)."""

    def attach(self, host: Host) -> None:
        """Called once by the registry that uses this directory."""

    def start_serving(self) -> None:
        """Start publishing and accepting forwarded requests; idempotent."""

    def listened(self, listener: Registered) -> None:
        """Called after ``listener`` was registered in this process."""

    def removed(self, listener: Registered) -> None:
        """Called after ``listener`` was closed or replaced in this process."""

    def locate(self, session: str, environ: WSGIEnvironment) -> Destination | Answer:
        """Where the listener of ``session`` is, when this process has none: a 404
        answer when no other process has it, a 503 while the directory cannot be
        reached. Never raises for an unreachable directory."""

    def current(self, slug: str) -> Destination | Answer | None:
        """The newest member of app ``slug`` in another process; ``None`` when there is
        none (a member of this process is not looked for here), a 503 answer while the
        directory cannot be reached."""

    def lock_start(self, slug: str, seconds: float) -> bool:
        """Take the lock that lets one process of all start app ``slug``, for at most
        ``seconds``; ``False`` while another process holds it.

        :raises DirectoryUnavailable: the directory cannot be reached.
        """

    def first_use(self, key: str, seconds: float) -> bool:
        """Whether ``key`` (a token's) is used for the first time in ``seconds``, across
        every process of the directory.

        :raises DirectoryUnavailable: the directory cannot be reached.
        """

    def unlock_start(self, slug: str) -> None:
        """Release the start lock of ``slug``, if this process holds it; an unreachable
        directory is no error (the lock expires by itself)."""

    def entries(self) -> list[Entry]:
        """Every live listener of every process, oldest first (those of the same moment by
        session id).

        :raises DirectoryUnavailable: the directory cannot be reached.
        """

    def close(self) -> None:
        """Withdraw this process's listeners and stop its threads and sockets."""
