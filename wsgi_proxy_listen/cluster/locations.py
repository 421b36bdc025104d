"""
Where other processes' sessions are
===================================

A request for a session of another process needs its owner's address. Each
process caches what the store said, so that a forwarded request costs no read
of the store, and drops a location when it may be stale: when the store says
something changed (Redis's notices channel; on the embedded directory, a look
at SQLite's ``PRAGMA data_version`` every fifth of a second), when the owner
answers that it no longer serves the session, when the owner cannot be
reached, and when the store went down or came back. A request that went to a
cached location that was stale (the owner answered "not here", or is gone)
asks the store once more and goes there; a take-over is seen within the
second the old owner takes to stop. A request with a body never relies on the
cache (it cannot be sent twice): it reads where the store says the session is
now.
"""

from __future__ import annotations

import threading
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from .health import Health
    from .store import Owner

__all__ = ["Locations"]

#: Locations cached at most; the cache starts afresh beyond.
MAX_CACHED = 4096


class Locations:
    """The cached locations of other processes' sessions.

    :param locate: the store's read of a session's live owner.
    """

    def __init__(self, health: Health, *, locate: Callable[[str], Owner | None]) -> None:
        self._health = health
        self._locate = locate
        self._owners: dict[str, Owner] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def locate(self, session: str, *, cached: bool) -> Owner | None:
        """The live owner of ``session``: from the cache where ``cached`` allows it,
        else from the store.

        :raises DirectoryUnavailable: the store cannot be reached.
        """
        if cached:
            owner = self._owners.get(session)
            if owner is not None:
                return owner
        generation = self._generation
        owner = self._health.call(self._locate, session)
        if owner is not None:
            with self._lock:
                # A change noticed during the lookup may be newer than what it read.
                if generation == self._generation:
                    if len(self._owners) >= MAX_CACHED:
                        self._owners.clear()
                    self._owners[session] = owner
        return owner

    def forget(self, session: str) -> None:
        """Drop the cached location of ``session``."""
        with self._lock:
            self._generation += 1
            self._owners.pop(session, None)

    def forget_all(self) -> None:
        """Drop every cached location."""
        with self._lock:
            self._generation += 1
            self._owners.clear()
