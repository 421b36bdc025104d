"""
Sharing listeners with other processes
======================================

A registry on its own serves the listeners of one process. :class:`Sharing`
is how it takes part in a *directory* that shares them with the other
processes of the host, and with other hosts:

- which directory: joined by name (a folder path or a Redis URL), as an
  object, or as the environment names it (``WSGI_PROXY_LISTEN_DIRECTORY``),
  when it is first needed;
- this process's role in it (:attr:`Sharing.runtime`): a web worker, whose
  listeners registered before it serves are its own and later ones are
  published, or a *runtime* (a notebook kernel, a job worker), which serves no
  web requests and publishes every listener at once;
- how requests that other processes forward here reach this process's
  listeners (:meth:`Sharing.serve_forwarded`): with the options of the
  middleware that routes with the registry, or the defaults where none does.

Without a directory every call here does nothing, and costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import typing as t

from . import exits
from .dispatch import Dispatcher, serve_forwarded
from .naming import (
    ENV_DIRECTORY,
    from_environment,
    open_directory,
    resolve_secret,
    runtime_from_environment,
)
from .seam import Directory

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .dispatch import Dispatchable
    from .seam import Host, Registered

__all__ = ["Sharing"]

logger = logging.getLogger("wsgi_proxy_listen")

# Modules that only a running WSGI server loads: their process is a web worker (or a
# server's master process), not a runtime. werkzeug's development server is not among
# them (importing Flask loads it), nor needs to be: it serves from one process.
_SERVERS = (
    "gunicorn.arbiter",
    "waitress.server",
    "uwsgi",
    "mod_wsgi",
    "django.core.servers.basehttp",
    "cheroot.wsgi",
    "gevent.pywsgi",
    "bjoern",
    "meinheld",
    "uvicorn",
    "hypercorn",
    "granian",
    "twisted.web.wsgi",
)


class Sharing:
    """The directory of one registry (``host``), and this process's role in it.

    :param lookup: the registry's lookup of a listener by session.
    :param runtime: whether this process is a runtime; ``None`` tells it by itself.
    """

    directory_name: str | None
    """The name the directory was given by (a folder path or a URL), if any."""
    routed: bool
    """Whether a :class:`~wsgi_proxy_listen.ProxyMiddleware` routes with the registry."""
    active: bool
    """Whether there is a directory, or the environment may name one: without, every
    listener stays in this process and the registry need not call here (an attribute,
    read on every ``listen()`` and ``close()``)."""

    def __init__(
        self, host: Host, lookup: Callable[[str], Dispatchable | None], runtime: bool | None
    ) -> None:
        self._host = host
        self._lookup = lookup
        self._directory: Directory | None = None
        self.directory_name = None
        self._secret: bytes | None = None  # what a directory named by a string was opened with
        self._from_environment = False
        self.active = False
        self._connecting = threading.RLock()
        self.routed = False
        self._looked_alone = False
        self.runtime = runtime
        # Answers what other processes forward here: a middleware's options where one
        # routes with the registry, the defaults in a runtime.
        self._dispatcher = Dispatcher()

    # -- the process's role -----------------------------------------------------------------

    @property
    def runtime(self) -> bool:
        """See :attr:`wsgi_proxy_listen.Registry.runtime`."""
        if self._runtime is not None:
            return self._runtime
        return not self.routed and not any(name in sys.modules for name in _SERVERS)

    @runtime.setter
    def runtime(self, runtime: bool | None) -> None:
        if runtime is not None and not isinstance(runtime, bool):
            raise TypeError(f"runtime must be True, False or None, not {runtime!r}")
        self._runtime = runtime

    def route_with(self, dispatcher: Dispatcher | None) -> None:
        """A middleware routes with the registry from now on: forwarded requests get
        its options (``dispatcher``), where it gives them."""
        self.routed = True
        if dispatcher is not None:
            self._dispatcher = dispatcher

    def serve_forwarded(
        self, environ: WSGIEnvironment, start_response: StartResponse, session: str, prefix: str
    ) -> Iterable[bytes] | None:
        """Answer a request that another process forwarded here for ``session``: see
        :func:`wsgi_proxy_listen.dispatch.serve_forwarded`."""
        return serve_forwarded(
            self._dispatcher, prefix, self._lookup, environ, start_response, session
        )

    # -- the directory ------------------------------------------------------------------------

    @property
    def directory(self) -> Directory | None:
        """The directory, connecting the one the environment names where
        :meth:`connect_from_environment` asked for that."""
        if self._from_environment:
            self._connect_environment()
        return self._directory

    @property
    def connected(self) -> bool:
        """Whether there is a directory already (reading it connects nothing)."""
        return self._directory is not None

    def connect(
        self,
        directory: Directory | str,
        *,
        secret: str | bytes | None = None,
        runtime: bool | None = None,
    ) -> None:
        """See :meth:`wsgi_proxy_listen.Registry.connect`."""
        with self._connecting:
            self._from_environment = False
            current = self._directory
            if current is not None:
                if not (
                    isinstance(directory, str)
                    and directory == self.directory_name
                    and resolve_secret(secret) == self._secret
                ):
                    raise RuntimeError(
                        f"{self._host!r} is connected to {current!r} already: a registry has"
                        " one directory (connecting again takes the same name and secret);"
                        " make another Registry for another one"
                    )
                if runtime is not None:
                    self.runtime = runtime
                return
            if self.routed:
                raise RuntimeError(
                    f"cannot connect {self._host!r} to a directory: a ProxyMiddleware already"
                    " routes with it; connect the registry before wrapping the app"
                )
            self._open(directory, secret, runtime)

    def join(self, directory: Directory | str | None, secret: str | bytes | None) -> None:
        """What ``Registry(directory=..., secret=...)`` asks for."""
        if directory is not None:
            self.connect(directory, secret=secret)
        elif secret is not None:
            raise TypeError(
                "secret= was given without a directory: it signs the requests between"
                " processes; give directory= too, or drop secret="
            )

    def connect_from_environment(self) -> None:
        """See :meth:`wsgi_proxy_listen.Registry.connect_from_environment`."""
        with self._connecting:
            if self._directory is None:
                self._from_environment = self.active = True
        if os.environ.get(ENV_DIRECTORY):
            exits.install()  # from the main thread, where the package is imported

    def _connect_environment(self) -> None:
        with self._connecting:
            if not self._from_environment:
                return
            try:
                found = from_environment()
                if found is not None:
                    self._open(found.directory, None, found.runtime)
            except ValueError as error:
                raise ValueError(f"{ENV_DIRECTORY}: {error}") from None
            self._from_environment = False
            self.active = self._directory is not None

    def _open(
        self, directory: Directory | str, secret: str | bytes | None, runtime: bool | None
    ) -> None:
        name = directory if isinstance(directory, str) else None
        if isinstance(directory, str):
            directory = open_directory(directory, secret=secret)
            self._secret = resolve_secret(secret)
        elif not isinstance(directory, Directory):
            raise TypeError(
                "a directory is named by a string (an absolute folder path or a Redis URL)"
                f" or given as a directory object (see wsgi_proxy_listen.seam), not {directory!r}"
            )
        elif secret is not None:
            raise TypeError(
                "secret= was given with a directory object: give the secret to the directory"
            )
        if runtime is not None:
            self.runtime = runtime
        directory.attach(self._host)
        self.directory_name = name
        self._directory = directory
        self.active = True

    # -- listeners come and go ----------------------------------------------------------------

    @property
    def local_only(self) -> bool:
        """Whether listeners can be reached only from inside this process: no directory
        (nor one the environment names) shares them, and no middleware routes here."""
        return not self.active and not self.routed

    def listened_alone(self) -> None:
        """A ``listen()`` with no directory. In a process that is said (or seen) to be
        a runtime, a notebook kernel, and that no middleware routes, it cannot be what
        was meant: said once, with the variable to set."""
        if self._looked_alone or self.routed:
            return
        self._looked_alone = True  # looked at once: a kernel is one from its start
        with contextlib.suppress(ValueError):  # a wrong value is said where it is used
            said = runtime_from_environment()
            if said or (said is None and self._runtime is not False and _in_a_kernel()):
                logger.warning(
                    "listen() in a runtime without a directory: its listeners are reachable"
                    " only inside this process (no server routes here); set %s (and"
                    " WSGI_PROXY_LISTEN_SECRET for Redis) in the environment that starts it,"
                    " or call connect()",
                    ENV_DIRECTORY,
                )

    def before_listen(self) -> None:
        """In a runtime, connect the environment's directory before a listener shows:
        a wrong name raises there, for the ``listen()`` that needs it. Only while
        :attr:`active`, as are :meth:`listened` and :meth:`removed`."""
        if self._from_environment and self.runtime:
            self._connect_environment()

    def listened(self, listener: Registered) -> None:
        """Publish ``listener`` where it is to be; a runtime starts serving first."""
        directory = self._directory
        if directory is not None:
            if not directory.serving and self.runtime:
                directory.start_serving()  # a runtime publishes at once
            directory.listened(listener)

    def removed(self, listener: Registered) -> None:
        """Withdraw ``listener`` where it was published."""
        if self._directory is not None:
            self._directory.removed(listener)

    def close(self) -> None:
        """Close the directory: this process's listeners are withdrawn, its threads and
        sockets stop."""
        if self._directory is not None:
            self._directory.close()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (one the parent's thread held stays held)."""
        self._connecting = threading.RLock()


def _in_a_kernel() -> bool:
    """Whether this process is a Jupyter kernel (one that ipykernel runs)."""
    return "ipykernel" in sys.modules
