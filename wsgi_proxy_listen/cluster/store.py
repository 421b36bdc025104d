"""
What a store supplies
=====================

A directory keeps its shared table in a *store*: SQLite in a folder (the
embedded directory) or Redis. :class:`Store` is everything the rest of the
directory asks of it, as ``_store_*`` methods that a directory class
implements; nothing else in :mod:`wsgi_proxy_listen.cluster` knows how the
table is kept.

The table holds, for each process that publishes, its lease (one per process,
however many sessions it has), and for each published session a *record*: the
process that serves it, the session's app, when it was published. Records are
versioned JSON objects (``{"v": 1, ...}``), so that later releases add fields
without a new encoding; a record of a version this release does not know is
skipped as if it were not there, and said so in one log line. A session is
live while its owner's lease is: one renewal per process keeps all of them.

:class:`Owner` is where a session is found: the owning process, its internal
endpoint, the session's app.
"""

from __future__ import annotations

import abc
import json
import logging
import time
import typing as t

from ..terms import UNDECLARED, Terms

if t.TYPE_CHECKING:
    from ..seam import Entry
    from .addresses import Bind

__all__ = [
    "RECORD_VERSION",
    "Owner",
    "Store",
    "StoreMismatch",
    "decode_record",
    "encode_record",
    "session_record",
]

logger = logging.getLogger("wsgi_proxy_listen")

#: The version of the records this release writes and reads.
RECORD_VERSION = 1
_warned_versions: set[object] = set()


class StoreMismatch(Exception):
    """The store was set up by another release, in a way this one cannot read."""


def encode_record(**fields: object) -> str:
    """A record of this release's version with ``fields``."""
    return json.dumps({"v": RECORD_VERSION, **fields}, separators=(",", ":"))


def decode_record(text: str | bytes | None) -> dict[str, t.Any] | None:
    """The fields of a record; ``None`` for none, and for one of a version this release
    does not know or that does not parse (said once per process and version)."""
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("v") != RECORD_VERSION:
        version = record.get("v") if isinstance(record, dict) else "unreadable"
        if version not in _warned_versions:
            _warned_versions.add(version)
            logger.error(
                "the directory holds an entry of version %r; this wsgi-proxy-listen reads"
                " version %d: it is skipped. Run the same release in every process.",
                version,
                RECORD_VERSION,
            )
        return None
    try:
        record["terms"] = Terms.from_record(record)
    except ValueError:
        if "terms" not in _warned_versions:
            _warned_versions.add("terms")
            logger.error(
                "the directory holds an entry whose access or sandbox this"
                " wsgi-proxy-listen cannot read: it is skipped (and so is any other such"
                " entry)"
            )
        return None
    return record


def session_record(entry: Owner, since: float | None = None) -> str:
    """The record of a session that ``entry`` publishes."""
    return encode_record(
        owner=entry.owner,
        app=entry.app,
        **entry.terms.to_record(),
        since=time.time() if since is None else since,
    )


class Owner(t.NamedTuple):
    """Who serves a session, as the shared table says."""

    owner: str
    """The owning process: unique to one run of one process."""
    address: str
    """Its internal endpoint: a Unix socket path, or ``host:port``."""
    app: str | None
    """The app the session belongs to, or ``None``."""
    terms: Terms = UNDECLARED
    """Who may reach the listener and whether it is sandboxed, as its registry declared
    them (see :mod:`wsgi_proxy_listen.terms`); what they leave open is the receiving
    host's choice."""


class Store(abc.ABC):
    """The shared table of a directory, and the transport its processes listen on."""

    #: Exceptions of the store that mean it cannot be reached.
    unreachable: tuple[type[BaseException], ...] = ()

    def _store_busy(self, error: BaseException) -> bool:
        """Whether ``error`` (one of :attr:`unreachable`) only means that the store is
        busy: others write, this write waited its turn too long. Busy is not down:
        the write is tried again later, and nothing else is held back."""
        return False

    #: This process's owner id while it serves, ``""`` before.
    owner: str = ""

    # -- this process -------------------------------------------------------------------

    @abc.abstractmethod
    def _new_owner(self) -> str:
        """A fresh owner id for this process."""

    @abc.abstractmethod
    def _endpoint_address(self, owner: str) -> str | Bind:
        """Where this process's internal endpoint binds: an absolute Unix socket path,
        or a TCP address and what to publish."""

    # -- writes ---------------------------------------------------------------------------

    @abc.abstractmethod
    def _store_publish(self, session: str, entry: Owner) -> None:
        """Write ``session``'s entry, taking it over from another owner (whom it tells)."""

    @abc.abstractmethod
    def _store_withdraw(self, session: str, entry: Owner) -> None:
        """Delete ``session``'s entry if it is ``entry`` (compare-and-delete)."""

    @abc.abstractmethod
    def _store_renew(self) -> bool:
        """Renew this owner's lease (one write, however many entries it has), and clean
        up after owners whose lease ran out; ``False`` when the lease had run out
        already (its entries may be gone: :meth:`_store_republish` them)."""

    @abc.abstractmethod
    def _store_republish(self, entries: dict[str, Owner]) -> list[str]:
        """Write this owner's entries again where they are missing (after its lease ran
        out), and return the sessions that another owner holds now."""

    @abc.abstractmethod
    def _store_forget(self, session: str, entry: Owner) -> bool:
        """``entry``'s owner refused a connection: delete what names it
        (compare-and-delete) where that proves it gone, and say whether it did."""

    @abc.abstractmethod
    def _store_withdraw_all(self, entries: dict[str, Owner]) -> None:
        """Delete every entry of this owner (at exit)."""

    @abc.abstractmethod
    def _store_lock(self, slug: str, seconds: float) -> bool:
        """Take the cluster-wide start lock of ``slug`` for ``seconds``."""

    @abc.abstractmethod
    def _store_unlock(self, slug: str) -> None:
        """Release the start lock of ``slug`` if this owner holds it."""

    @abc.abstractmethod
    def _store_first_use(self, key: str, seconds: float) -> bool:
        """Note ``key`` as used for ``seconds``, whoever the owner and whenever it ends;
        whether it was not noted already."""

    # -- reads ----------------------------------------------------------------------------

    @abc.abstractmethod
    def _store_locate(self, session: str) -> Owner | None:
        """The live owner of ``session``."""

    @abc.abstractmethod
    def _store_entries(self) -> list[Entry]:
        """Every live entry, oldest first."""

    @abc.abstractmethod
    def _store_current(self, slug: str, skip: str = "") -> tuple[str, Owner] | None:
        """The newest member of app ``slug`` that has a live owner (other than ``skip``,
        one that could not be reached)."""

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
