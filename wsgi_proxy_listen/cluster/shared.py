"""
What both directories share
===========================

:class:`SharedDirectory` is the machinery of a directory; a subclass supplies
the shared table (SQLite in a folder, or Redis) and the transport (a Unix
socket or TCP) by implementing the ``_store_*`` methods.

- Listeners registered before a process serves its first request are
  *start-up* listeners: every worker has them, they are never published.
  Listeners registered while it serves are *owned* by it and published as
  ``session -> owner, address, app``, kept alive by a heartbeat every
  ``lease / 3`` seconds.
- A request that no listener of this process serves is looked up in the table
  (:meth:`SharedDirectory.find`) and forwarded to the owner (:mod:`.hop`).
  Owner locations are cached per process and dropped when the table says they
  changed, when the owner answers that it no longer serves the session, or
  when it cannot be reached.
- ``listen()`` for a session owned elsewhere takes it over: the old owner
  hears of it within a second and stops serving it.
- An owner that cannot be reached answers 503 at once and its entry is
  removed, only if it still names that owner (compare-and-delete).
- While the table cannot be reached, lookups answer 503 at once: the first
  failure of an outage marks it down (one timeout, one log line per process),
  a background probe finds it back within a second, and what this process
  registered meanwhile is published then.
- Threads and sockets start with the first request a process serves, never in
  a server's master process, and again in a forked child.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import logging
import os
import threading
import time
import typing as t
from collections.abc import Callable, Iterable

from .. import exits
from ..answers import NOT_FOUND, UNAVAILABLE, Answer, respond
from ..exceptions import DirectoryUnavailable
from ..routing import APP
from .endpoint import InternalEndpoint
from .hop import Failure, HopClient, Verifier

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..routing import Route
    from ..seam import Declared, Destination, Entry, Host, Registered, ServeForwarded

__all__ = ["Owner", "SharedDirectory"]

logger = logging.getLogger("wsgi_proxy_listen")

P = t.ParamSpec("P")
R = t.TypeVar("R")

#: Seconds between two probes of a directory that is down.
PROBE_INTERVAL = 0.25
#: Seconds between two polls of an auto-start running in another process.
START_POLL = 0.05
#: Seconds a request on an app's generic path waits for the owner of a session it just
#: closed to withdraw it, before the path starts a new one.
WITHDRAWAL_WAIT = 1.0
_FAILURE_STATUS = {
    Failure.GONE: 503,
    Failure.UNRESPONSIVE: 503,
    Failure.BROKEN: 503,
    Failure.TIMEOUT: 504,
    Failure.ABORTED: 400,
    Failure.TOO_LARGE: 413,
}


class Owner(t.NamedTuple):
    """Who serves a session, as the shared table says."""

    owner: str
    """The owning process: unique to one run of one process."""
    address: str
    """Its internal endpoint: a Unix socket path, or ``host:port``."""
    app: str | None
    """The app the session belongs to, or ``None``."""


class SharedDirectory(abc.ABC):
    """The machinery common to the embedded and the Redis directory.

    :param lease: seconds a published listener outlives a silent owner.
    :param read_timeout: seconds a hop waits for the owner's answer (then 504).
    :param secret: signs hop requests when given.
    """

    #: Exceptions of the shared table that mean it cannot be reached.
    unreachable: tuple[type[BaseException], ...] = ()

    def __init__(self, *, lease: float, read_timeout: float, secret: bytes | None) -> None:
        for name, value in (("lease", lease), ("read_timeout", read_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"invalid {name} {value!r}: use a positive number of seconds")
        self.lease = float(lease)
        self.read_timeout = float(read_timeout)
        self.secret = secret
        self.serving = False
        self.owner = ""
        self.address = ""
        self._registry: Host | None = None
        self._serve: ServeForwarded | None = None
        self._client = HopClient(secret, self.read_timeout)
        self._endpoint: InternalEndpoint | None = None
        self._init_process_state()
        os.register_at_fork(
            before=self._store_before_fork,
            after_in_parent=self._store_after_fork_in_parent,
            after_in_child=self._after_fork,
        )
        atexit.register(self.leave)
        exits.watch(self)

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        # Held while this process writes entries of its own (listened(), the heartbeat),
        # so that withdraw_all() knows that nothing is written after it.
        self._writing = threading.Lock()
        self._leaving = False
        self._published: dict[str, Registered] = {}
        self._pending: set[str] = set()  # registered while the table was down
        self._unpublished: dict[str, Owner] = {}  # closed while the table was down
        self._owners: dict[str, Owner] = {}  # cached locations of other processes' sessions
        self._generation = 0
        self._down = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failed_to_start = False
        self._cache_lock = threading.Lock()
        self._waiting: dict[str, int] = {}  # requests waiting for a start elsewhere, by app

    # -- what a subclass supplies ------------------------------------------------------

    @abc.abstractmethod
    def _new_owner(self) -> str:
        """A fresh owner id for this process."""

    @abc.abstractmethod
    def _endpoint_address(self, owner: str) -> str:
        """Where this process's internal endpoint binds (see :class:`InternalEndpoint`)."""

    @abc.abstractmethod
    def _store_publish(self, session: str, entry: Owner) -> None:
        """Write ``session``'s entry, taking it over from another owner (whom it tells)."""

    @abc.abstractmethod
    def _store_withdraw(self, session: str, entry: Owner) -> None:
        """Delete ``session``'s entry if it is ``entry`` (compare-and-delete)."""

    @abc.abstractmethod
    def _store_renew(self, entries: dict[str, Owner]) -> list[str]:
        """Renew this owner's entries, write missing ones again, and return the sessions
        that another owner holds now."""

    @abc.abstractmethod
    def _store_locate(self, session: str) -> Owner | None:
        """The live owner of ``session``."""

    @abc.abstractmethod
    def _store_changed(self) -> bool:
        """Whether cached locations may be stale (a change since the last call)."""

    @abc.abstractmethod
    def _store_entries(self) -> list[Entry]:
        """Every live entry, oldest first."""

    @abc.abstractmethod
    def _store_current(self, slug: str) -> tuple[str, Owner] | None:
        """The newest member of app ``slug`` that has a live owner."""

    @abc.abstractmethod
    def _store_lock(self, slug: str, seconds: float) -> bool:
        """Take the cluster-wide start lock of ``slug`` for ``seconds``."""

    @abc.abstractmethod
    def _store_unlock(self, slug: str) -> None:
        """Release the start lock of ``slug`` if this owner holds it."""

    @abc.abstractmethod
    def _store_forget(self, session: str, entry: Owner) -> None:
        """``entry``'s owner cannot be reached: delete what names it (compare-and-delete)."""

    @abc.abstractmethod
    def _store_withdraw_all(self, entries: dict[str, Owner]) -> None:
        """Delete every entry of this owner (at exit)."""

    @abc.abstractmethod
    def _watch(self) -> None:
        """Until :attr:`_stop` is set, call :meth:`_notice` for each change the table
        announces (take-overs, withdrawals)."""

    @abc.abstractmethod
    def _store_probe(self) -> None:
        """Raise one of :attr:`unreachable` unless the table answers, quickly."""

    @abc.abstractmethod
    def _store_close(self) -> None:
        """Close this process's connections to the table."""

    # -- the Directory seam ---------------------------------------------------------------

    def attach(self, registry: Host) -> None:
        if self._registry is not None and self._registry is not registry:
            raise RuntimeError(f"{self!r} is already used by {self._registry!r}")
        self._registry = registry

    def serve_with(self, serve: ServeForwarded) -> None:
        self._serve = serve  # the registry's own first, then its middleware's

    def start_serving(self) -> None:
        """Start the internal endpoint, the heartbeat and the watcher of changes.

        Touches no table (an unreachable one costs nothing here) and never raises:
        it runs with a request of the host, which must not fail for it.
        """
        with self._lock:
            if self.serving:
                return
            owner = self._new_owner()
            verify = None if self.secret is None else Verifier(self.secret, owner)
            try:
                endpoint = InternalEndpoint(
                    self._endpoint_address(owner), lambda: self._serve, verify
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
            self._stop = threading.Event()
            self._leaving = False
            self._threads = [
                threading.Thread(target=target, name=f"wsgi_proxy_listen {name}", daemon=True)
                for target, name in ((self._heartbeat, "heartbeat"), (self._watch, "watcher"))
            ]
            self._endpoint.start()
            for thread in self._threads:
                thread.start()
            self.serving = True
        exits.install()  # where the directory was opened in another thread

    def listened(self, listener: Registered) -> None:
        session = listener.session
        if not self.serving:
            # A start-up listener: local in every worker. It replaces nothing published.
            return
        with self._writing:
            if self._leaving:
                return  # the process ends: nothing more is published
            # The table first: a take-over notice handled in between then finds this
            # owner's name there, or only the listener this one replaced.
            try:
                self._using_store(self._store_publish, session, self._entry(listener))
                published = True
            except DirectoryUnavailable:
                published = False
            registry = t.cast("Host", self._registry)
            with self._lock:
                current = registry.get(session)
                if current is listener:
                    self._published[session] = listener
                    self._unpublished.pop(session, None)
                    if not published:
                        self._pending.add(session)
        # Replaced meanwhile by another listen() here: that one publishes itself (and the
        # heartbeat writes the entry again). Closed meanwhile: undo it.
        if current is None and published:
            self._withdraw(session, self._entry(listener))

    def removed(self, listener: Registered) -> None:
        session = listener.session
        with self._lock:
            if self._published.get(session) is not listener:
                return
            del self._published[session]
            self._pending.discard(session)
        self._withdraw(session, self._entry(listener))

    def find(self, route: Route, environ: WSGIEnvironment) -> Destination | Answer:
        try:
            if route.kind == APP:
                return self._find_app(t.cast(str, route.app))
            session = t.cast(str, route.session)
            # A request without a body can go again if a cached location is stale;
            # one with a body is sent once, to where the table says now.
            cached = _bodyless(environ)
            owner = self._locate(session, cached=cached)
            if owner is None or owner.owner == self.owner:
                return NOT_FOUND
            if route.app is not None and owner.app != route.app:
                return NOT_FOUND
            return _Forward(self, session, owner, cached)
        except DirectoryUnavailable:
            return UNAVAILABLE

    def entries(self) -> list[Entry]:
        return self._using_store(self._store_entries)

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
        :meth:`close`). Another thread may be publishing: it is waited for."""
        self._stop.set()
        self._wake.set()
        with self._writing:
            with self._lock:
                self._leaving = True
                entries = {s: self._entry(item) for s, item in self._published.items()}
                self._published.clear()
                self._pending.clear()
            if not self.serving or self._down:
                return
            try:
                self._store_withdraw_all(entries)
            except self.unreachable:
                logger.warning("could not withdraw this process's listeners from %r", self)

    # -- remote dispatch -----------------------------------------------------------------

    def forward(
        self,
        session: str,
        owner: Owner,
        cached: bool,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        app: str | None = None,
    ) -> Iterable[bytes]:
        """Forward a request for ``session`` to ``owner``, answering for what went wrong.

        ``app`` is the slug when the generic path of that app led here.
        """
        prefix = t.cast("Host", self._registry).prefix
        result = self._client.forward(
            owner.owner, owner.address, session, prefix, environ, start_response
        )
        if result is Failure.MISS:
            self._forget_location(session)
            if app is not None and _bodyless(environ):
                # The app's session was closed meanwhile (an idle one, say): its generic
                # path goes to the current session now, or starts a new one; once.
                return self._again_for_app(app, session, owner, environ, start_response)
            if not cached:
                return respond(start_response, 404)
            # The cached location was stale: ask the table, and go once more.
            try:
                fresh = self._locate(session, cached=False)
            except DirectoryUnavailable:
                return respond(start_response, 503)
            if fresh is None or fresh.owner == self.owner or fresh == owner:
                return respond(start_response, 404)
            return self.forward(session, fresh, False, environ, start_response)
        if not isinstance(result, Failure):
            return result
        # Look again next time: an owner that fails may have lost the session by now
        # (its lease expired), and the table says nothing when a lease expires.
        self._forget_location(session)
        if result is Failure.GONE:
            # Only a refused connection proves that nobody listens there any more: a
            # broken or slow one may be a live owner's, whose lease decides.
            logger.warning("the owner of session %r at %s is gone", session, owner.address)
            with contextlib.suppress(DirectoryUnavailable):
                self._using_store(self._store_forget, session, owner)
        elif result in (Failure.TIMEOUT, Failure.UNRESPONSIVE):
            logger.warning("the owner at %s did not answer in time", owner.address)
        elif result is Failure.BROKEN:
            logger.warning("the owner at %s ended the connection without an answer", owner.address)
        return respond(start_response, _FAILURE_STATUS[result])

    def _again_for_app(
        self,
        slug: str,
        session: str,
        owner: Owner,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        # The owner closed the session and withdraws its entry next: give it a moment.
        deadline = time.monotonic() + WITHDRAWAL_WAIT
        while True:
            try:
                found = self._find_app(slug)
            except DirectoryUnavailable:
                return respond(start_response, 503)
            if not (
                isinstance(found, _Forward) and (found.session, found.owner) == (session, owner)
            ):
                break
            if time.monotonic() >= deadline:
                return respond(start_response, 404)
            time.sleep(START_POLL)
        if isinstance(found, Answer):
            return respond(start_response, found.status)
        if isinstance(found, _Forward):
            return self.forward(found.session, found.owner, False, environ, start_response)
        return found.serve(environ, start_response)

    def serve_here(
        self, session: str, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Dispatch to this process's listener of ``session`` (after an auto-start here)."""
        prefix = t.cast("Host", self._registry).prefix
        served = (
            None if self._serve is None else self._serve(environ, start_response, session, prefix)
        )
        return respond(start_response, 503) if served is None else served

    def _find_app(self, slug: str) -> Destination | Answer:
        found = self._current(slug)
        if found is not None:
            return found
        declaration = t.cast("Host", self._registry).get_app(slug)
        if declaration is None or declaration.start is None:
            return NOT_FOUND
        return self._start_once(declaration)

    def _current(self, slug: str) -> Destination | None:
        """Where the app's current session is, in the table."""
        found = self._using_store(self._store_current, slug)
        if found is None:
            return None
        session, owner = found
        if owner.owner != self.owner:
            return _Forward(self, session, owner, cached=False, app=slug)
        # This process's own: registered by a start that another thread of this process
        # ran since this request looked here, or closed since.
        if t.cast("Host", self._registry).get(session) is None:
            return None
        return _Here(self, session)

    def _start_once(self, declaration: Declared) -> Destination | Answer:
        """Start the app here, once across every process, or wait for the start that
        runs elsewhere (SPEC §4's auto-start, cluster-wide)."""
        slug = declaration.slug
        if self._using_store(self._store_lock, slug, declaration.start_timeout):
            # Another process may have started it between the lookup and the lock.
            found = self._current(slug)
            if found is not None:
                self._unlock(slug)
                return found
            try:
                listener = t.cast("Host", self._registry).start_app(slug)
            finally:
                # A start still running past start_timeout keeps the lock, which
                # expires by itself; an ended one frees it for the next request.
                if not declaration.starting:
                    self._unlock(slug)
            if listener is not None:
                return _Here(self, listener.session)
            # A start may register the session in another process (it launched a
            # runtime that listens there): the table has it then.
            found = self._current(slug)
            if found is None and not declaration.starting:
                logger.error(
                    "start of app %r registered no session, here or in another process:"
                    " it should call listen(..., app=%r) or launch a runtime that does",
                    slug,
                    slug,
                )
            return UNAVAILABLE if found is None else found
        # The start runs in another process: wait for it here, as many requests at a
        # time as the app allows (each holds a server thread).
        with self._lock:
            if self._waiting.get(slug, 0) >= declaration.max_waiting:
                return UNAVAILABLE
            self._waiting[slug] = self._waiting.get(slug, 0) + 1
        try:
            deadline = time.monotonic() + declaration.start_timeout
            while time.monotonic() < deadline:
                time.sleep(START_POLL)
                found = self._current(slug)
                if found is not None:
                    return found
            return UNAVAILABLE
        finally:
            with self._lock:
                self._waiting[slug] -= 1

    def _unlock(self, slug: str) -> None:
        with contextlib.suppress(DirectoryUnavailable):  # the lock expires by itself
            self._using_store(self._store_unlock, slug)

    # -- the location cache ---------------------------------------------------------------

    def _locate(self, session: str, *, cached: bool) -> Owner | None:
        if cached:
            if self._using_store(self._store_changed):
                self._forget_locations()
            owner = self._owners.get(session)
            if owner is not None:
                return owner
        generation = self._generation
        owner = self._using_store(self._store_locate, session)
        if owner is not None:
            with self._cache_lock:
                # A change noticed during the lookup may be newer than what it read.
                if generation == self._generation:
                    if len(self._owners) >= 4096:
                        self._owners.clear()
                    self._owners[session] = owner
        return owner

    def _forget_location(self, session: str) -> None:
        with self._cache_lock:
            self._generation += 1
            self._owners.pop(session, None)

    def _forget_locations(self) -> None:
        with self._cache_lock:
            self._generation += 1
            self._owners.clear()

    def _notice(self, session: str, owner: str | None) -> None:
        """The table announced that ``session`` now belongs to ``owner`` (or nobody)."""
        self._forget_location(session)
        listener = self._published.get(session)
        if listener is not None and owner != self.owner:
            # The notice may be older than this process taking the session back: the
            # table decides.
            try:
                current = self._using_store(self._store_locate, session)
            except DirectoryUnavailable:
                return
            if current is None or current.owner != self.owner:
                self._give_up(listener)

    # -- the table's health ----------------------------------------------------------------

    def _using_store(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the table, or raise :exc:`DirectoryUnavailable` at once while it is down."""
        if self._down:
            raise DirectoryUnavailable(f"{self!r} cannot be reached")
        try:
            return call(*args, **kwargs)
        except self.unreachable as error:
            self._went_down()
            raise DirectoryUnavailable(f"{self!r} cannot be reached") from error

    def _went_down(self) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        self._forget_locations()
        logger.error(
            "%r cannot be reached: listeners of this process keep working, requests for"
            " other processes' listeners get 503 until it is back",
            self,
        )
        threading.Thread(target=self._probe, name="wsgi_proxy_listen probe", daemon=True).start()

    def _probe(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL):
            try:
                self._store_probe()
            except self.unreachable:
                continue
            self._forget_locations()  # changes announced meanwhile were missed
            self._down = False
            logger.warning("%r is reachable again", self)
            self._wake.set()  # publish what was registered meanwhile, now
            return

    # -- the heartbeat ---------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.lease / 3)
            self._wake.clear()
            if self._stop.is_set() or self._down:
                continue
            with self._writing:
                if self._leaving:
                    return
                with self._lock:
                    published = dict(self._published)
                    pending, self._pending = self._pending, set()
                    unpublished, self._unpublished = self._unpublished, {}
                try:
                    for session in pending & set(published):
                        # Registered while the table was down: the newest, so it takes over.
                        entry = self._entry(published[session])
                        self._using_store(self._store_publish, session, entry)
                    for session, entry in unpublished.items():
                        self._using_store(self._store_withdraw, session, entry)
                    entries = {session: self._entry(item) for session, item in published.items()}
                    taken = self._using_store(self._store_renew, entries)
                except DirectoryUnavailable:
                    with self._lock:
                        self._pending |= {s for s in pending if s in self._published}
                        for session, entry in unpublished.items():
                            self._unpublished.setdefault(session, entry)
                    continue
            for session in taken:
                listener = published[session]
                if self._published.get(session) is listener:
                    self._give_up(listener)
            # Closed while the heartbeat ran: the renewal may have written it again.
            for session in published.keys() - self._published.keys():
                if session not in taken:
                    self._withdraw(session, entries[session])

    def _give_up(self, listener: Registered) -> None:
        with self._lock:
            if self._published.get(listener.session) is not listener:
                return
            del self._published[listener.session]
        listener.close()  # removed() finds it unpublished and leaves the table alone
        logger.info("session %r was taken over by another process", listener.session)

    def _withdraw(self, session: str, entry: Owner) -> None:
        self._forget_location(session)
        try:
            self._using_store(self._store_withdraw, session, entry)
        except DirectoryUnavailable:
            with self._lock:
                if session not in self._published:
                    self._unpublished[session] = entry

    def _entry(self, listener: Registered) -> Owner:
        return Owner(self.owner, self.address, listener.app)

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
        self._init_process_state()
        self._store_after_fork()

    @abc.abstractmethod
    def _store_before_fork(self) -> None:
        """Before a fork: leave nothing of the table's connections for the child."""

    @abc.abstractmethod
    def _store_after_fork_in_parent(self) -> None:
        """After a fork, in the parent: go on after :meth:`_store_before_fork`."""

    @abc.abstractmethod
    def _store_after_fork(self) -> None:
        """After a fork, in the child: start afresh with the table."""


def _bodyless(environ: WSGIEnvironment) -> bool:
    return environ.get("CONTENT_LENGTH") in (None, "", "0") and not environ.get(
        "HTTP_TRANSFER_ENCODING"
    )


class _Forward:
    """A listener of another process, found in the table (through the generic path of
    ``app``, when it is given)."""

    __slots__ = ("app", "cached", "directory", "owner", "session")

    def __init__(
        self,
        directory: SharedDirectory,
        session: str,
        owner: Owner,
        cached: bool,
        app: str | None = None,
    ) -> None:
        self.directory = directory
        self.session = session
        self.owner = owner
        self.cached = cached
        self.app = app

    def serve(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.directory.forward(
            self.session, self.owner, self.cached, environ, start_response, self.app
        )


class _Here:
    """A listener of this process, which an auto-start just registered."""

    __slots__ = ("directory", "session")

    def __init__(self, directory: SharedDirectory, session: str) -> None:
        self.directory = directory
        self.session = session

    def serve(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.directory.serve_here(self.session, environ, start_response)
