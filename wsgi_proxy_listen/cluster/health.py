"""
The store's health
==================

While the store of a directory cannot be reached, every call that needs it
fails at once with :exc:`~wsgi_proxy_listen.DirectoryUnavailable` (a 503 on
the request path) instead of waiting for a timeout each time: the first
failure of an outage marks the store down (one timeout, one log line per
process), and a background probe finds it back within a second. Listeners of
this process keep answering meanwhile.

A store that is only *busy* (others write, and a write waited its turn too
long) is not down: that call fails, and nothing else.
"""

from __future__ import annotations

import logging
import threading
import typing as t

from ..exceptions import DirectoryUnavailable

if t.TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["PROBE_INTERVAL", "Health"]

logger = logging.getLogger("wsgi_proxy_listen")

P = t.ParamSpec("P")
R = t.TypeVar("R")

#: Seconds between two probes of a store that is down.
PROBE_INTERVAL = 0.25


class Health:
    """Whether a store answers, and the calls that depend on it.

    :param directory: the directory, as messages and logs show it.
    :param unreachable: the store's exceptions that mean it cannot be reached.
    :param probe: raises one of them unless the store answers, quickly.
    :param busy: whether one of them only means the store is busy.
    :param changed: called when the store went down or came back: whatever was
        learnt of it meanwhile may be stale.
    :param back: called once the store answers again.
    :param stop: set when the directory stops (the probe ends with it).
    """

    def __init__(
        self,
        directory: object,
        *,
        unreachable: tuple[type[BaseException], ...],
        probe: Callable[[], None],
        busy: Callable[[BaseException], bool],
        changed: Callable[[], None],
        back: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self._directory = directory
        self.unreachable = unreachable
        self._probe_store = probe
        self._busy = busy
        self._changed = changed
        self._back = back
        self._stop = stop
        self._lock = threading.Lock()
        self.down = False

    def call(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the store, or raise :exc:`DirectoryUnavailable` at once while it is down."""
        if self.down:
            raise DirectoryUnavailable(f"{self._directory!r} cannot be reached")
        try:
            return call(*args, **kwargs)
        except self.unreachable as error:
            if self._busy(error):
                raise DirectoryUnavailable(f"{self._directory!r} is busy") from error
            self.went_down(error)
            raise DirectoryUnavailable(f"{self._directory!r} cannot be reached") from error

    def went_down(self, error: BaseException) -> None:
        """The store failed with ``error``: mark it down, once per outage, and probe until
        it is back."""
        with self._lock:
            if self.down:
                return
            self.down = True
        self._changed()
        logger.error(
            "%r cannot be reached (%s): listeners of this process keep working, requests"
            " for other processes' listeners get 503 until it is back",
            self._directory,
            error,
        )
        threading.Thread(target=self._probe, name="wsgi_proxy_listen probe", daemon=True).start()

    def _probe(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL):
            try:
                self._probe_store()
            except self.unreachable:
                continue
            self._changed()  # changes announced meanwhile were missed
            self.down = False
            logger.warning("%r is reachable again", self._directory)
            self._back()
            return
