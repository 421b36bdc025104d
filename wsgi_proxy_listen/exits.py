"""
Exits
=====

A process that published listeners withdraws them when it ends, so that the
hosts answer 404 for them at once rather than 503 until their lease runs out.

- A normal exit, ``sys.exit()``, an uncaught exception and ``KeyboardInterrupt``
  (SIGINT) run :mod:`atexit`, where each directory withdraws what it published.
- SIGTERM ends a Python process at once by default, without :mod:`atexit`.
  Where nothing handles SIGTERM yet (its handler is ``SIG_DFL``), :func:`watch`
  installs a handler, from the main thread, which is the only one that can.
  The handler raises nothing in the code it interrupts (a notebook kernel
  would catch a ``SystemExit`` raised in a running cell, and so would a job
  loop under ``except BaseException``): it puts ``SIG_DFL`` back, and a thread
  withdraws the listeners of every directory of the process, then ends the
  process with SIGTERM, as if no handler had been installed. Whatever the main
  thread holds when the signal arrives (a lock, a transaction) it releases
  meanwhile, and a second SIGTERM ends the process at once.
- A handler the application or the server installed is left alone: gunicorn's
  workers, for one, exit through :mod:`atexit` on SIGTERM.
- :func:`~wsgi_proxy_listen.serve_forever` waits here for SIGTERM or SIGINT
  (:func:`until_stopped`), and withdraws the same way before it returns.

Every path withdraws through :func:`withdraw`, one call per directory for all
its listeners.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import typing as t
import weakref

__all__ = ["Leaving", "install", "on_sigterm", "until_stopped", "watch", "withdraw"]

logger = logging.getLogger("wsgi_proxy_listen")


class Leaving(t.Protocol):
    """A directory, as far as the end of the process concerns it."""

    def leave(self) -> None:
        """Withdraw this process's listeners and refuse hops."""


_directories: weakref.WeakSet[Leaving] = weakref.WeakSet()


def watch(directory: Leaving) -> None:
    """Withdraw ``directory``'s listeners on SIGTERM (see :func:`install`)."""
    _directories.add(directory)
    install()


def install() -> None:
    """Handle SIGTERM as the module says, where this is the main thread and nothing
    handles SIGTERM yet; otherwise do nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_sigterm)


def on_sigterm(signum: int, frame: object) -> None:
    """The handler :func:`install` installs."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_withdraw_then_end, name="wsgi_proxy_listen exit").start()


def withdraw() -> None:
    """Withdraw the listeners of every directory of this process, and refuse hops: it
    ends."""
    for directory in list(_directories):
        try:
            directory.leave()
        except Exception:
            logger.exception("could not withdraw the listeners of %r", directory)


def _withdraw_then_end() -> None:
    withdraw()
    os.kill(os.getpid(), signal.SIGTERM)


def until_stopped() -> tuple[int, t.Any]:
    """Wait for SIGTERM or SIGINT, then :func:`withdraw`; return the signal and the
    handler that was installed for it before. Both handlers are put back first.

    :raises RuntimeError: not called in the main thread, the only one that can
        handle signals.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "serve_forever() waits for SIGTERM or SIGINT, which only the main thread"
            " can handle: call it there"
        )
    stop = threading.Event()
    received: list[int] = []

    def handle(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    previous: dict[int, t.Any] = {
        signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        withdraw()
    return received[0], previous[received[0]]
