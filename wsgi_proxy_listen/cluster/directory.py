"""
A directory over a store
========================

:class:`SharedDirectory` is a :class:`~wsgi_proxy_listen.seam.Directory`
built on a store (:mod:`.store`): a subclass supplies the shared table and
the transport (SQLite and Unix sockets in a folder, or Redis and TCP) by
implementing the ``_store_*`` methods; this class puts together the parts that
do the work, each in a module of its own, and the life of the process:

- :mod:`.publication`: this process's entries, their lease, take-overs;
- :mod:`.locations`: the cached locations of other processes' sessions;
- :mod:`.health`: 503 at once while the store is down, and a probe;
- :mod:`.forwarding`: requests to other processes' listeners;
- :mod:`.endpoint`: requests from other processes, for this one's listeners.

Listeners registered before a process serves its first request are
*start-up* listeners: every worker has them, they are never published. The
internal endpoint and the threads start with the first request the process
serves, never in a server's master process, and again in a forked child; at
exit, and on SIGTERM (:mod:`wsgi_proxy_listen.exits`), the process withdraws
its entries.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import typing as t

from .. import exits, metrics
from ..answers import NOT_FOUND, UNAVAILABLE, Answer
from ..exceptions import DirectoryUnavailable
from .endpoint import InternalEndpoint
from .forwarding import Forwarder, Remote
from .health import Health, survive
from .hop import HopClient
from .locations import Locations
from .publication import Publication
from .store import Store

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from ..seam import Entry, Host, Registered
    from .tls import TLS

__all__ = ["SharedDirectory"]

logger = logging.getLogger("wsgi_proxy_listen")


class _Attached(t.NamedTuple):
    """The parts that work for the registry a directory is attached to."""

    host: Host
    publication: Publication
    forwarder: Forwarder


class SharedDirectory(Store):
    """The machinery common to the embedded and the Redis directory.

    :param lease: seconds a published listener outlives a silent owner.
    :param read_timeout: seconds a hop waits for the owner's answer (then 504).
    :param secret: signs hop requests when given.
    :param tls: TLS on the TCP hop, both ways verified (see :mod:`.tls`), or ``None``.
    """

    def __init__(
        self,
        *,
        lease: float,
        read_timeout: float,
        secret: bytes | None,
        tls: TLS | None = None,
    ) -> None:
        for name, value in (("lease", lease), ("read_timeout", read_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"invalid {name} {value!r}: use a positive number of seconds")
        self.lease = float(lease)
        self.read_timeout = float(read_timeout)
        self.secret = secret
        self.serving = False
        self.owner = ""
        self.address = ""
        self._host: Host | None = None
        self.tls = tls
        self._client = HopClient(
            secret, self.read_timeout, tls=None if tls is None else tls.client()
        )
        self._endpoint: InternalEndpoint | None = None
        self._start_afresh()
        os.register_at_fork(
            before=self._store_before_fork,
            after_in_parent=self._store_after_fork_in_parent,
            after_in_child=self._after_fork,
        )
        atexit.register(self.leave)
        exits.watch(self)

    def _start_afresh(self) -> None:
        """The state of one process: at first, and in a forked child."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failed_to_start = False
        self._health = Health(
            self,
            unreachable=self.unreachable,
            probe=self._store_probe,
            busy=self._store_busy,
            changed=self._forget_locations,
            back=self._wake.set,  # publish what was registered meanwhile, now
            stop=self._stop,
        )
        self._locations = Locations(self._health, locate=self._store_locate)
        self._attached: _Attached | None = None
        if self._host is not None:
            self._attached = self._attach_parts(self._host)

    def _attach_parts(self, host: Host) -> _Attached:
        publication = Publication(
            host,
            self._health,
            self._locations,
            lease=self.lease,
            publish=self._store_publish,
            withdraw=self._store_withdraw,
            renew=self._store_renew,
            republish=self._store_republish,
            withdraw_all=self._store_withdraw_all,
            locate=self._store_locate,
            wake=self._wake,
            stop=self._stop,
        )
        forwarder = Forwarder(
            host,
            self._client,
            self._health,
            self._locations,
            forget=self._store_forget,
            current=self._store_current,
        )
        return _Attached(host, publication, forwarder)

    @property
    def _down(self) -> bool:
        """Whether the store is known to be down (see :mod:`.health`)."""
        return self._health.down

    # -- the Directory seam ---------------------------------------------------------------

    def attach(self, host: Host) -> None:
        if self._host is not None and self._host is not host:
            raise RuntimeError(f"{self!r} is already used by {self._host!r}")
        self._host = host
        self._attached = self._attach_parts(host)

    def start_serving(self) -> None:
        """Start the internal endpoint, the heartbeat and the watcher of changes.

        Touches no store (an unreachable one costs nothing here) and never raises:
        it runs with a request of the host, which must not fail for it.
        """
        with self._lock:
            attached = self._attached
            if self.serving or attached is None:
                return
            host, publication, forwarder = attached
            owner = self._new_owner()
            try:
                endpoint = InternalEndpoint(
                    self._endpoint_address(owner),
                    owner,
                    host.serve_forwarded,
                    self.secret,
                    None if self.tls is None else self.tls.server(),
                )
            except OSError:
                if not self._failed_to_start:
                    self._failed_to_start = True
                    logger.exception(
                        "%r cannot start its internal endpoint: the listeners of this process"
                        " stay local until it can",
                        self,
                    )
                return
            self.owner, self._endpoint, self.address = owner, endpoint, endpoint.address
            if metrics.ENABLED:
                metrics.directory_up(not self._health.down)
            publication.begin(owner, endpoint.address)
            forwarder.owner = owner
            self._stop.clear()
            self._threads = [
                threading.Thread(
                    target=survive(target, name, self._stop),
                    name=f"wsgi_proxy_listen {name}",
                    daemon=True,
                )
                for target, name in (
                    (publication.heartbeat, "heartbeat"),
                    (self._store_watch, "watcher"),
                )
            ]
            endpoint.start()
            for thread in self._threads:
                thread.start()
            self.serving = True
        exits.install()  # where the directory was opened in another thread

    def listened(self, listener: Registered) -> None:
        attached = self._attached
        if self.serving and attached is not None:
            attached.publication.listened(listener)
        # Not serving yet: a start-up listener, local in every worker.

    def removed(self, listener: Registered) -> None:
        if self._attached is not None:
            self._attached.publication.removed(listener)

    def locate(self, session: str, environ: WSGIEnvironment) -> Remote | Answer:
        if self._attached is None:
            return NOT_FOUND
        try:
            return self._attached.forwarder.find(session, environ) or NOT_FOUND
        except DirectoryUnavailable:
            return UNAVAILABLE

    def current(self, slug: str) -> Remote | Answer | None:
        attached = self._attached
        if attached is None:
            return None
        try:
            found = self._health.call(self._store_current, slug)
        except DirectoryUnavailable:
            return UNAVAILABLE
        if found is None or found[1].owner == self.owner:
            return None  # this process's own members are the app's to look at
        session, location = found
        return Remote(attached.forwarder, session, location, cached=False, app_path=True)

    def lock_start(self, slug: str, seconds: float) -> bool:
        return self._health.call(self._store_lock, slug, seconds)

    def first_use(self, key: str, seconds: float) -> bool:
        return self._health.call(self._store_first_use, key, seconds)

    def unlock_start(self, slug: str) -> None:
        with contextlib.suppress(DirectoryUnavailable):  # the lock expires by itself
            self._health.call(self._store_unlock, slug)

    def entries(self) -> list[Entry]:
        return self._health.call(self._store_entries)

    def close(self) -> None:
        """Withdraw this process's listeners, stop the internal endpoint and threads."""
        self.withdraw_all()
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        for thread in self._threads:
            thread.join(5)
        self.serving = False
        self._client.clear()
        self._store_close()

    def leave(self) -> None:
        """Withdraw this process's listeners and refuse hops: the process ends."""
        self.withdraw_all()
        if self._endpoint is not None:
            self._endpoint.close()  # no more hops, and a Unix socket leaves with its process

    def withdraw_all(self) -> None:
        """Delete this process's entries, and publish nothing more (at exit, and by
        :meth:`close`)."""
        self._stop.set()
        self._wake.set()
        if self._attached is not None:
            self._attached.publication.withdraw_all(self.serving)

    # -- what the store's watcher calls -------------------------------------------------------

    def _notice(self, session: str, owner: str | None) -> None:
        """The store announced that ``session`` now belongs to ``owner`` (or nobody)."""
        if self._attached is not None:
            self._attached.publication.notice(session, owner)

    def _forget_location(self, session: str) -> None:
        self._locations.forget(session)

    def _forget_locations(self) -> None:
        self._locations.forget_all()

    def _went_down(self, error: BaseException) -> None:
        self._health.went_down(error)

    # -- process life ---------------------------------------------------------------------

    def _after_fork(self) -> None:
        # The parent's threads do not exist here and its sockets are the parent's:
        # start afresh with the child's first request. What the parent published stays
        # the parent's.
        if self._endpoint is not None:
            self._endpoint.abandon()
            self._endpoint = None
        self.serving = False
        self.owner = self.address = ""
        self._client.forget()
        self._start_afresh()
        self._store_after_fork()
