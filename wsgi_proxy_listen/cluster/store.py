"""
What a store supplies
=====================

A directory keeps its shared table in a *store*: SQLite in a folder (the
embedded directory) or Redis. :class:`Store` is everything the rest of the
directory asks of it, as ``_store_*`` methods that a directory class
implements; nothing else in :mod:`wsgi_proxy_listen.cluster` knows how the
table is kept.

The table holds, for each published session, an :class:`Owner`: the process
that serves it, that process's internal endpoint, and the session's app. An
owner's entries live as long as its lease, which it renews.
"""

from __future__ import annotations

import abc
import typing as t

if t.TYPE_CHECKING:
    from ..seam import Entry

__all__ = ["Owner", "Store"]


class Owner(t.NamedTuple):
    """Who serves a session, as the shared table says."""

    owner: str
    """The owning process: unique to one run of one process."""
    address: str
    """Its internal endpoint: a Unix socket path, or ``host:port``."""
    app: str | None
    """The app the session belongs to, or ``None``."""


class Store(abc.ABC):
    """The shared table of a directory, and the transport its processes listen on."""

    #: Exceptions of the store that mean it cannot be reached.
    unreachable: tuple[type[BaseException], ...] = ()

    #: This process's owner id while it serves, ``""`` before.
    owner: str = ""

    # -- this process -------------------------------------------------------------------

    @abc.abstractmethod
    def _new_owner(self) -> str:
        """A fresh owner id for this process."""

    @abc.abstractmethod
    def _endpoint_address(self, owner: str) -> str:
        """Where this process's internal endpoint binds: an absolute Unix socket path,
        or a host to bind a free TCP port on."""

    # -- writes ---------------------------------------------------------------------------

    @abc.abstractmethod
    def _store_publish(self, session: str, entry: Owner) -> None:
        """Write ``session``'s entry, taking it over from another owner (whom it tells)."""

    @abc.abstractmethod
    def _store_withdraw(self, session: str, entry: Owner) -> None:
        """Delete ``session``'s entry if it is ``entry`` (compare-and-delete)."""

    @abc.abstractmethod
    def _store_renew(self, entries: dict[str, Owner]) -> list[str]:
        """Renew this owner's entries, write missing ones again, and return the sessions
        that another owner holds now."""

    @abc.abstractmethod
    def _store_forget(self, session: str, entry: Owner) -> None:
        """``entry``'s owner cannot be reached: delete what names it (compare-and-delete)."""

    @abc.abstractmethod
    def _store_withdraw_all(self, entries: dict[str, Owner]) -> None:
        """Delete every entry of this owner (at exit)."""

    @abc.abstractmethod
    def _store_lock(self, slug: str, seconds: float) -> bool:
        """Take the cluster-wide start lock of ``slug`` for ``seconds``."""

    @abc.abstractmethod
    def _store_unlock(self, slug: str) -> None:
        """Release the start lock of ``slug`` if this owner holds it."""

    # -- reads ----------------------------------------------------------------------------

    @abc.abstractmethod
    def _store_locate(self, session: str) -> Owner | None:
        """The live owner of ``session``."""

    @abc.abstractmethod
    def _store_changed(self) -> bool:
        """Whether cached locations may be stale (a change since the last call)."""

    @abc.abstractmethod
    def _store_entries(self) -> list[Entry]:
        """Every live entry, oldest first."""

    @abc.abstractmethod
    def _store_current(self, slug: str) -> tuple[str, Owner] | None:
        """The newest member of app ``slug`` that has a live owner."""

    @abc.abstractmethod
    def _store_probe(self) -> None:
        """Raise one of :attr:`unreachable` unless the store answers, quickly."""

    @abc.abstractmethod
    def _store_watch(self) -> None:
        """Until the directory stops, tell it of each change the store announces
        (take-overs, withdrawals): runs in a thread of its own."""

    # -- connections ----------------------------------------------------------------------

    @abc.abstractmethod
    def _store_close(self) -> None:
        """Close this process's connections to the store."""

    @abc.abstractmethod
    def _store_before_fork(self) -> None:
        """Before a fork: leave nothing of the store's connections for the child."""

    @abc.abstractmethod
    def _store_after_fork_in_parent(self) -> None:
        """After a fork, in the parent: go on after :meth:`_store_before_fork`."""

    @abc.abstractmethod
    def _store_after_fork(self) -> None:
        """After a fork, in the child: start afresh with the store."""
