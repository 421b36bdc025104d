"""
Publication, lease and take-over
================================

What this process tells the store about its own listeners:

- a listener registered while the process serves is *published*
  (``session -> owner, address, app``); closing or replacing it withdraws it
  (compare-and-delete: only the entry this process wrote);
- a heartbeat renews this process's lease every ``lease / 3`` seconds (one
  write, whatever the number of its entries, which live as long as it), writes
  again what an outage let expire, and publishes what was registered while the
  store was down or busy;
- ``listen()`` for a session that another process owns takes it over: the old
  owner hears of it (a notice, or its next renewal) and closes its listener;
- at exit every entry is withdrawn at once, and nothing is published after.
"""

from __future__ import annotations

import logging
import threading
import typing as t

from .. import metrics
from ..events import say
from ..exceptions import DirectoryUnavailable
from .health import reason
from .store import Owner

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from ..seam import Host, Registered
    from .health import Health
    from .locations import Locations

__all__ = ["Publication"]

logger = logging.getLogger("wsgi_proxy_listen")


class Publication:
    """The entries of this process (``owner``, reached at ``address``) in the store.

    The ``publish``, ``withdraw``, ``renew``, ``republish``, ``withdraw_all`` and
    ``locate`` arguments are the store's operations of those names
    (:class:`.store.Store`).

    :param lease: seconds an entry outlives a silent owner; renewed every third.
    :param wake: set to renew at once (the store is back).
    :param stop: set when the directory stops.
    """

    def __init__(
        self,
        host: Host,
        health: Health,
        locations: Locations,
        *,
        lease: float,
        publish: Callable[[str, Owner], None],
        withdraw: Callable[[str, Owner], None],
        renew: Callable[[], bool],
        republish: Callable[[dict[str, Owner]], list[str]],
        withdraw_all: Callable[[dict[str, Owner]], None],
        locate: Callable[[str], Owner | None],
        wake: threading.Event,
        stop: threading.Event,
    ) -> None:
        self._host = host
        self._health = health
        self._locations = locations
        self._lease = lease
        self._publish = publish
        self._withdraw_entry = withdraw
        self._renew = renew
        self._republish = republish
        self._withdraw_all = withdraw_all
        self._locate = locate
        self._wake = wake
        self._stop = stop
        self.owner = ""
        self.address = ""
        self._lock = threading.Lock()
        # Held while this process writes entries of its own (listened(), the heartbeat),
        # so that withdraw_all() knows that nothing is written after it.
        self._writing = threading.Lock()
        self._leaving = False
        self._published: dict[str, Registered] = {}
        self._pending: set[str] = set()  # registered while the store was down
        self._unpublished: dict[str, Owner] = {}  # closed while the store was down
        self._said: set[type[Exception]] = set()  # the errors logged already

    def begin(self, owner: str, address: str) -> None:
        """This process serves from now on, as ``owner`` at ``address``."""
        self.owner, self.address = owner, address
        self._leaving = False

    def published(self, session: str) -> Registered | None:
        """The listener of ``session`` that this process published, if any."""
        return self._published.get(session)

    def listened(self, listener: Registered) -> None:
        """Publish ``listener``, taking its session over from any other owner."""
        session = listener.session
        with self._writing:
            if self._leaving:
                return  # the process ends: nothing more is published
            # The store first: a take-over notice handled in between then finds this
            # owner's name there, or only the listener this one replaced.
            try:
                self._health.call(self._publish, session, self._entry(listener))
                published = True
            except DirectoryUnavailable:
                published = False
            except Exception as error:  # noqa: BLE001 - no outage (an ACL, a replica): said
                self._failed("publish", error)
                published = False
            if published:
                say("publish", "published session %r", session, session=session, owner=self.owner)
            with self._lock:
                current = self._host.get(session)
                if current is listener:
                    if self._published.get(session) is None and metrics.ENABLED:
                        metrics.published(1)
                    self._published[session] = listener
                    self._unpublished.pop(session, None)
                    if not published:
                        self._pending.add(session)
        # Replaced meanwhile by another listen() here: that one publishes itself (and the
        # heartbeat writes the entry again). Closed meanwhile: undo it.
        if current is None and published:
            self._withdraw(session, self._entry(listener))

    def removed(self, listener: Registered) -> None:
        """Withdraw ``listener``, if it is the one this process published."""
        session = listener.session
        with self._lock:
            if self._published.get(session) is not listener:
                return
            del self._published[session]
            if metrics.ENABLED:
                metrics.published(-1)
            self._pending.discard(session)
        self._withdraw(session, self._entry(listener))

    def withdraw_all(self, serving: bool) -> None:
        """Delete this process's entries, and publish nothing more (at exit). Another
        thread may be publishing: it is waited for."""
        with self._writing:
            with self._lock:
                self._leaving = True
                entries = {s: self._entry(item) for s, item in self._published.items()}
                if metrics.ENABLED:
                    metrics.published(-len(self._published))
                self._published.clear()
                self._pending.clear()
            if not serving or self._health.down:
                return
            try:
                self._withdraw_all(entries)
            except Exception as error:  # noqa: BLE001 - at exit: said, whatever it is
                logger.warning(
                    "could not withdraw this process's listeners (%s): %s",
                    self.owner,
                    reason(error),
                )

    def notice(self, session: str, owner: str | None) -> None:
        """The store announced that ``session`` now belongs to ``owner`` (``None``: it was
        withdrawn). Only a take-over that the store confirms makes this process give up
        its listener: an entry that another process deleted (it took this one for
        gone) is written again by the next renewal, and the listener lives on."""
        self._locations.forget(session)
        listener = self._published.get(session)
        if listener is not None and owner is not None and owner != self.owner:
            # The notice may be older than this process taking the session back: the
            # store decides.
            try:
                current = self._health.call(self._locate, session)
            except DirectoryUnavailable:
                return
            if current is not None and current.owner != self.owner:
                self._give_up(listener)

    def heartbeat(self) -> None:
        """Renew the lease every third of it, until the directory stops: runs in a
        thread of its own. A renewal is one write, whatever the number of entries, so
        it holds up no ``listen()`` for long."""
        while not self._stop.is_set():
            self._wake.wait(self._lease / 3)
            self._wake.clear()
            if self._stop.is_set() or self._health.down:
                continue
            republished = self._beat()
            if republished is None:
                continue
            published, taken = republished
            for session in taken:
                listener = published[session]
                if self._published.get(session) is listener:
                    self._give_up(listener)
            # Closed while they were written again: take them back out.
            for session in published.keys() - self._published.keys():
                if session not in taken:
                    self._withdraw(session, self._entry(published[session]))

    def _beat(self) -> tuple[dict[str, Registered], list[str]] | None:
        """One renewal; what was written again and which of it another owner holds, when
        the lease had run out."""
        with self._writing:
            if self._leaving:
                self._stop.set()
                return None
            with self._lock:
                pending, self._pending = self._pending, set()
                unpublished, self._unpublished = self._unpublished, {}
                waiting = {s: self._published[s] for s in pending if s in self._published}
            try:
                for session, listener in waiting.items():
                    # Registered while the store was down or busy: the newest, so it
                    # takes over.
                    self._health.call(self._publish, session, self._entry(listener))
                for session, entry in unpublished.items():
                    self._health.call(self._withdraw_entry, session, entry)
                if self._health.call(self._renew):
                    return None
                # The lease ran out (an outage, a pause): others may have cleaned up
                # after this process. What is missing is written again.
                with self._lock:
                    published = dict(self._published)
                entries = {session: self._entry(item) for session, item in published.items()}
                return published, self._health.call(self._republish, entries)
            except BaseException as error:
                # Down, or an error that is no outage (a read-only replica): what was to
                # be written waits for the next renewal, whatever the thread does next.
                with self._lock:
                    self._pending |= {s for s in pending if s in self._published}
                    for session, entry in unpublished.items():
                        self._unpublished.setdefault(session, entry)
                if isinstance(error, DirectoryUnavailable):
                    return None
                raise

    def _failed(self, what: str, error: Exception) -> None:
        """A write that failed for no outage: said once for each kind of error; what was
        to be written waits for the next renewal."""
        if type(error) not in self._said:
            self._said.add(type(error))
            logger.error(
                "could not %s a listener in the directory (%s): the heartbeat tries again",
                what,
                reason(error),
            )

    def _give_up(self, listener: Registered) -> None:
        with self._lock:
            if self._published.get(listener.session) is not listener:
                return
            del self._published[listener.session]
            if metrics.ENABLED:
                metrics.published(-1)
        listener.close()  # removed() finds it unpublished and leaves the store alone
        say(
            "take_over",
            "session %r was taken over by another process",
            listener.session,
            session=listener.session,
        )

    def _withdraw(self, session: str, entry: Owner) -> None:
        self._locations.forget(session)
        try:
            self._health.call(self._withdraw_entry, session, entry)
            say("withdraw", "withdrew session %r", session, session=session, owner=entry.owner)
        except Exception as error:  # noqa: BLE001 - kept for the heartbeat, and said
            if not isinstance(error, DirectoryUnavailable):
                self._failed("withdraw", error)
            with self._lock:
                if session not in self._published:
                    self._unpublished[session] = entry

    def _entry(self, listener: Registered) -> Owner:
        return Owner(self.owner, self.address, listener.app, self._host.terms_of(listener))
