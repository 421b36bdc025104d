"""
Runtimes
========

A *runtime* is a process that serves no web requests itself (a notebook
kernel, a job worker, a script the host started) whose listeners the host's
workers reach through a shared directory, as Livebook's web server reaches
the runtimes of its notebooks.

.. code-block:: python

    from wsgi_proxy_listen import connect, listen, serve_forever

    connect("/run/myhost/proxy")           # the host's directory: a folder or a Redis URL
    listen(report, session="job-1")        # reachable from every worker of the host
    serve_forever()                        # until SIGTERM or SIGINT; then withdrawn

A platform that launches runtimes sets ``WSGI_PROXY_LISTEN_DIRECTORY`` (and
``WSGI_PROXY_LISTEN_SECRET`` for Redis) in their environment: importing the
package then connects :data:`~wsgi_proxy_listen.default_registry` by itself,
and user code only calls ``listen()``. ``WSGI_PROXY_LISTEN_RUNTIME`` (``1`` or
``0``) says whether the process is a runtime where it cannot be told (see
:attr:`~wsgi_proxy_listen.Registry.runtime`).
"""

from __future__ import annotations

import os
import signal
import threading
import typing as t

from .naming import ENV_DIRECTORY
from .registry import Registry, default_registry

if t.TYPE_CHECKING:
    from .seam import Directory

__all__ = ["ENV_RUNTIME", "connect", "connect_from_environment", "serve_forever"]

#: The environment variable that says whether a process is a runtime.
ENV_RUNTIME = "WSGI_PROXY_LISTEN_RUNTIME"
_YES = ("1", "true", "yes", "on")
_NO = ("0", "false", "no", "off")


def connect(
    directory: Directory | str,
    *,
    secret: str | bytes | None = None,
    runtime: bool | None = None,
) -> Registry:
    """Make :data:`~wsgi_proxy_listen.default_registry` share its listeners through
    ``directory`` (an absolute folder path, a Redis URL or a directory object), as
    :meth:`~wsgi_proxy_listen.Registry.connect` does; returns the registry."""
    default_registry.connect(directory, secret=secret, runtime=runtime)
    return default_registry


def connect_from_environment(registry: Registry) -> bool:
    """Connect ``registry`` to the directory that ``WSGI_PROXY_LISTEN_DIRECTORY``
    names, if it names one; return whether it did. Run when the package is
    imported, for :data:`~wsgi_proxy_listen.default_registry`.

    :raises ValueError: a variable holds a value that means nothing.
    """
    name = os.environ.get(ENV_DIRECTORY)
    if not name:
        return False
    runtime: bool | None = None
    given = os.environ.get(ENV_RUNTIME, "").strip().lower()
    if given in _YES:
        runtime = True
    elif given in _NO:
        runtime = False
    elif given:
        raise ValueError(
            f"{ENV_RUNTIME}={given!r} means nothing: use 1 for a runtime, 0 for a web"
            " server's process, or leave it unset to let it be told"
        )
    try:
        registry.connect(name, runtime=runtime)
    except ValueError as error:
        raise ValueError(f"{ENV_DIRECTORY}: {error}") from None
    return True


def serve_forever(registry: Registry | None = None) -> None:
    """Keep this process serving its listeners until SIGTERM or SIGINT, then close
    the registry (its listeners are withdrawn from every other process) and return.

    The signal handlers it installs are put back when it returns.

    :raises RuntimeError: not called in the main thread, the only one that can
        handle signals.
    """
    registry = default_registry if registry is None else registry
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "serve_forever() waits for SIGTERM or SIGINT, which only the main thread"
            " can handle: call it there"
        )
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda received, frame: stop.set())
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        registry.close()
