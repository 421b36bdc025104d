"""
Retiring idle members
=====================

How automatic shutdown is carried out, once :mod:`wsgi_proxy_listen.apps`
has decided that a member of an app is idle: :func:`retire` runs the app's
``stop(session)`` in a thread of its own and closes the listener when it
returns, raises or overruns; :class:`Reaper` is the thread that looks for
idle members, which runs only while there is something to look at.
"""

from __future__ import annotations

import logging
import threading
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from .listener import Listener

__all__ = ["MAX_PERIOD", "Reaper", "retire"]

logger = logging.getLogger("wsgi_proxy_listen")

#: The longest wait between two looks for idle members, in seconds.
MAX_PERIOD = 1.0


def retire(listener: Listener, stop: Callable[[str], object] | None, timeout: float) -> None:
    """Close an idle ``listener``: ``stop(session)`` first, in a thread of its own,
    then the listener, when ``stop`` returns or raises (logged), or after
    ``timeout`` seconds if it does not."""
    if stop is None:
        listener.close()
        return
    stopper = threading.Thread(
        target=_stop,
        args=(stop, listener),
        name=f"wsgi_proxy_listen stop {listener.session}",
        daemon=True,
    )

    def close_after_stop() -> None:
        try:
            stopper.start()
            stopper.join(timeout)
            if stopper.is_alive():
                logger.warning(
                    "stop of session %r of app %r still runs after %.1f s: the session is"
                    " closed all the same",
                    listener.session,
                    listener.app,
                    timeout,
                )
        except Exception:  # no thread for stop (the process has too many, say)
            logger.exception(
                "stop of session %r of app %r could not run: the session is closed all the same",
                listener.session,
                listener.app,
            )
        finally:
            listener.close()

    threading.Thread(
        target=close_after_stop, name=f"wsgi_proxy_listen retire {listener.session}", daemon=True
    ).start()


def _stop(stop: Callable[[str], object], listener: Listener) -> None:
    try:
        stop(listener.session)
    except Exception:
        logger.exception("stop of session %r of app %r raised", listener.session, listener.app)


class Reaper:
    """Calls ``sweep`` from a thread of its own, which sweep keeps alive: it closes
    what is idle and returns the seconds until it should run again, or ``None``
    when nothing needs watching (the thread ends; :meth:`wake` starts it again).
    ``name`` names the thread."""

    def __init__(self, sweep: Callable[[], float | None], name: str) -> None:
        self._sweep = sweep
        self.name = name
        self.after_fork()

    def after_fork(self) -> None:
        """Start afresh (in a forked child, where the parent's thread is not)."""
        self._lock = threading.Lock()
        self._woken = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Sweep now, and keep sweeping while something needs watching."""
        with self._lock:
            self._woken.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._woken.clear()
            try:
                period = self._sweep()
            except Exception:
                logger.exception("looking for idle app sessions failed")
                period = MAX_PERIOD
            if period is None:
                with self._lock:
                    if not self._woken.is_set():
                        self._thread = None
                        return
                continue
            self._woken.wait(period)
