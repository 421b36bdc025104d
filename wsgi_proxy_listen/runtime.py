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
``WSGI_PROXY_LISTEN_SECRET`` for Redis) in their environment:
:data:`~wsgi_proxy_listen.default_registry` then connects to that directory by
itself with the first ``listen()``, and user code only calls ``listen()``.
``WSGI_PROXY_LISTEN_RUNTIME`` (``1`` or ``0``) says whether the process is a
runtime where it cannot be told (see :attr:`~wsgi_proxy_listen.Registry.runtime`).
"""

from __future__ import annotations

import signal
import typing as t

from . import exits
from .registry import Registry, default_registry

if t.TYPE_CHECKING:
    from .seam import Directory

__all__ = ["connect", "serve_forever"]


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


def serve_forever(registry: Registry | None = None) -> None:
    """Keep this process serving its listeners until SIGTERM or SIGINT, then withdraw
    this process's listeners from every other process (as SIGTERM does without it:
    :mod:`wsgi_proxy_listen.exits`), close the registry, and return.

    The signal handlers it installs are put back when it returns; a handler that
    the application had installed for the signal received is then called.

    :raises RuntimeError: not called in the main thread, the only one that can
        handle signals.
    """
    registry = default_registry if registry is None else registry
    signum, handler = exits.until_stopped()
    registry.close()
    # The application's own handler still hears of the signal; Python's default ones
    # (KeyboardInterrupt, and ending the process) and this package's are not called.
    if callable(handler) and handler not in (signal.default_int_handler, exits.on_sigterm):
        handler(signum, None)
