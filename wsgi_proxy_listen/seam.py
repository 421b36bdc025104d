"""
The directory seam
==================

A :class:`~wsgi_proxy_listen.Registry` on its own serves the listeners of one
process. Given a *directory*, it shares the listeners registered at run time
with the other processes of the host (and with other hosts), and requests for
a listener of another process are forwarded to it. This module is the whole
contract between the two sides, typed:

- :class:`Directory` is everything the registry and the middleware call on a
  directory;
- :class:`Host`, :class:`Registered` and :class:`Declared` are everything a
  directory may ask of the registry, its listeners and its app declarations;
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
    from .routing import Route

__all__ = [
    "Declared",
    "Destination",
    "Directory",
    "Entry",
    "Host",
    "Registered",
    "ServeForwarded",
    "shown_name",
]

#: How a directory hands a request forwarded from another process to this
#: process's middleware: ``serve(environ, start_response, session, prefix)``
#: answers it from the local listener of ``session``, routing with ``prefix`` (the
#: one of the process that received the request), or returns ``None`` when this
#: process does not serve ``session`` (any more) and nothing was sent.
ServeForwarded: t.TypeAlias = (
    "Callable[[WSGIEnvironment, StartResponse, str, str], Iterable[bytes] | None]"
)


def shown_name(name: str) -> str:
    """A directory's name as messages and logs show it: a URL's password hidden,
    in its user part or as a ``password`` parameter. Read as text, not parsed: a
    password holding ``/``, ``#``, ``?`` or ``[`` is hidden too, and it never raises.

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


_PASSWORD_PARAMETER = re.compile(r"([?&;]password=)[^&;#]*", re.IGNORECASE)


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
    """A listener as a directory sees it (and the lifecycle, which closes idle ones)."""

    @property
    def session(self) -> str: ...

    @property
    def app(self) -> str | None: ...

    def close(self) -> None:
        """Remove the listener from its registry (the directory calls it when another
        process took the session over)."""


class Declared(t.Protocol):
    """An app declaration as a directory sees it."""

    @property
    def slug(self) -> str: ...

    @property
    def start(self) -> Callable[[], object] | None: ...

    @property
    def start_timeout(self) -> float: ...

    @property
    def max_waiting(self) -> int: ...

    @property
    def starting(self) -> bool: ...


class Host(t.Protocol):
    """What a directory may ask of the registry that uses it."""

    @property
    def prefix(self) -> str: ...

    def get(self, session: str, /) -> Registered | None: ...

    def get_app(self, slug: str) -> Declared | None: ...

    def start_app(self, slug: str) -> Registered | None: ...


class Destination(t.Protocol):
    """Where a directory found the listener for a request: another process, or this
    one after an auto-start. Serving it forwards or dispatches the request."""

    @property
    def session(self) -> str:
        """The session whose listener it is."""

    def serve(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]: ...


@t.runtime_checkable
class Directory(t.Protocol):
    """Everything the registry and the middleware call on a directory.

    The registry calls :meth:`attach` once, then :meth:`listened` and
    :meth:`removed` as listeners come and go. Each middleware calls
    :meth:`serve_with` once, :meth:`start_serving` with the first request of
    the process (while :attr:`serving` is false), and :meth:`find` when no
    listener of this process serves a request.
    """

    @property
    def serving(self) -> bool:
        """Whether this process publishes its run-time listeners and accepts forwarded
        requests (set by :meth:`start_serving`, false again after a fork)."""

    def attach(self, registry: Host) -> None:
        """Called once by the registry that uses this directory."""

    def serve_with(self, serve: ServeForwarded) -> None:
        """How requests forwarded to this process reach its listeners: called by the
        registry when it connects, then by each middleware that routes with it (the
        latest call wins, so that a middleware's options apply)."""

    def start_serving(self) -> None:
        """Start publishing and accepting forwarded requests; idempotent."""

    def listened(self, listener: Registered) -> None:
        """Called after ``listener`` was registered in this process."""

    def removed(self, listener: Registered) -> None:
        """Called after ``listener`` was closed or replaced in this process."""

    def find(self, route: Route, environ: WSGIEnvironment) -> Destination | Answer:
        """Where the listener for ``route`` is, when this process has none.

        Never raises for an unreachable directory: that is a 503 answer.
        """

    def entries(self) -> list[Entry]:
        """Every live listener of every process, oldest first.

        :raises DirectoryUnavailable: the directory cannot be reached.
        """

    def close(self) -> None:
        """Withdraw this process's listeners and stop its threads and sockets."""
