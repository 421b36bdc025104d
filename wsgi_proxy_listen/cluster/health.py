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

from ..events import say
from ..exceptions import DirectoryUnavailable

if t.TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ACL_REFUSED_IN_SCRIPT", "PROBE_INTERVAL", "Health", "reason", "survive"]

logger = logging.getLogger("wsgi_proxy_listen")

P = t.ParamSpec("P")
R = t.TypeVar("R")

#: Seconds between two probes of a store that is down.
PROBE_INTERVAL = 0.25

_ACL = (
    "the user lacks a command, a key or a channel in its ACL (RedisDirectory.acl() gives"
    " every rule it needs)"
)
#: What a Redis server says, in a plain error, of a command its ACL refused in a script.
ACL_REFUSED_IN_SCRIPT = "The user executing the script can't"
# What an operator can do something about, by the exception that says it (anywhere in
# the chain of causes: a client library wraps what the socket said).
_REASONS = (
    ("MovedError", "the server is a node of a Redis Cluster: name it by a redis+cluster:// URL"),
    ("AuthenticationError", "the password or the user was refused"),
    ("AuthenticationWrongNumberOfArgsError", "the password or the user was refused"),
    ("NoPermissionError", _ACL),
    ("ReadOnlyError", "the server is a read-only replica (after a failover?)"),
    ("SSLError", "TLS failed (the certificate, its CA, or the server's TLS port)"),
    ("SSLCertVerificationError", "TLS failed (the certificate, its CA, or the server's TLS port)"),
    ("gaierror", "the server's name does not resolve (DNS)"),
    ("ConnectionRefusedError", "the connection was refused (nothing listens there)"),
    ("TimeoutError", "it did not answer in time"),
)


def reason(error: BaseException) -> str:
    """Why ``error`` happened, in the words an operator acts on, with the error itself."""
    seen: BaseException | None = error
    while seen is not None:
        if str(seen).startswith(ACL_REFUSED_IN_SCRIPT):
            return f"{_ACL}: {error}"
        names = {kind.__name__ for kind in type(seen).__mro__}
        for name, why in _REASONS:
            if name in names:
                return f"{why}: {error}"
        seen = seen.__cause__ or seen.__context__
    return f"{type(error).__name__}: {error}"


def survive(target: Callable[[], None], name: str, stop: threading.Event) -> Callable[[], None]:
    """``target`` for a background thread that never dies of an error: each kind of
    error is logged once with its reason, and ``target`` runs again a little later,
    until ``stop`` is set."""

    def run() -> None:
        logged: set[type[BaseException]] = set()
        while not stop.is_set():
            try:
                target()
                return
            except Exception as error:
                if type(error) not in logged:
                    logged.add(type(error))
                    logger.error(
                        "the %s thread of the directory failed (%s): it goes on",
                        name,
                        reason(error),
                        exc_info=True,
                    )
                stop.wait(1.0)

    return run


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
        why = reason(error)
        say(
            "directory_down",
            "%r cannot be reached (%s): listeners of this process keep working, requests"
            " for other processes' listeners get 503 until it is back",
            self._directory,
            why,
            reason=why,
        )
        threading.Thread(target=self._probe, name="wsgi_proxy_listen probe", daemon=True).start()

    def _probe(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL):
            try:
                self._probe_store()
            except Exception:  # noqa: BLE001 (whatever it is, the store does not answer yet)
                continue
            self._changed()  # changes announced meanwhile were missed
            self.down = False
            say("directory_up", "%r is reachable again", self._directory)
            self._back()
            return
