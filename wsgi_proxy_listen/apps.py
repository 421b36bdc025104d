"""
Apps
====

An *app* groups the sessions that serve one program, as Livebook's apps do.
Every rule about apps lives here, whatever the number of processes the host
runs:

- **Declaration** (:meth:`Apps.declare`, ``register_app``): whether the app
  has several sessions at once, how to start one, how long to wait for it, when
  an idle session is shut down and how to stop it.
- **Membership**: ``listen(..., app=slug)`` makes a session a member; the
  app's *current* session is its newest member that listens.
- **The generic path** ``{prefix}/apps/{slug}/...`` (:meth:`Apps.find`): a
  multi-session app answers 400; otherwise the current member answers, in this
  process or, through the directory, in another; with none, the app's
  ``start`` runs, once across every process (a lock in the directory), and
  every request waits for it up to ``start_timeout``, as many at a time as
  ``max_waiting`` allows, then 503. When the member it reached has just closed,
  a request without a body goes once more to the member after it, or starts a
  new one (:meth:`Apps.after_miss`).
- **Automatic shutdown** (:meth:`Apps.close_idle`): a member of an app with an
  ``idle_timeout`` that has served nothing for that long is closed by the
  process that owns it, ``stop(session)`` first. A thread of the registry
  looks every quarter of the timeout (at least every second); a request counts
  until its answer is closed, so a stream keeps its session alive. The
  decision is taken under the member's own lock, the one a request takes to
  come in: a request either came first or is refused with 503.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t
from collections import OrderedDict

from .access import Access, access_to_record
from .answers import BAD_REQUEST, NOT_FOUND, UNAVAILABLE, Answer
from .dispatch import check_limit
from .events import say
from .exceptions import DirectoryUnavailable
from .listener import Listener
from .retiring import MAX_PERIOD, Reaper, retire
from .terms import UNDECLARED, Terms

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from _typeshed.wsgi import WSGIEnvironment

    from .seam import Destination, Directory, Registered
    from .sharing import Sharing

__all__ = ["App", "Apps", "check_idle_timeout"]

logger = logging.getLogger("wsgi_proxy_listen")

#: Seconds between two looks at a start running in another process.
START_POLL = 0.05
#: Seconds a request on an app's generic path waits for the owner of a session it just
#: found closed to withdraw it, before the path starts a new one.
WITHDRAWAL_WAIT = 1.0

Found: t.TypeAlias = "Listener | Destination | Answer"


def check_idle_timeout(value: object) -> float | None:
    """``value`` as seconds, or ``None``; raise for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"idle_timeout must be a number of seconds or None, not {type(value).__name__!r}"
        )
    if not 0 < value < float("inf"):
        raise ValueError(f"invalid idle_timeout {value!r}: use a positive number of seconds")
    return float(value)


def _period_for(idle_timeout: float) -> float:
    """How often to look for members idle for ``idle_timeout``: a quarter of it, so
    that a member is closed within 1.25 times its timeout, but at least every
    :data:`MAX_PERIOD` seconds."""
    return min(idle_timeout / 4, MAX_PERIOD)


class App:
    """What :meth:`Registry.register_app <wsgi_proxy_listen.Registry.register_app>`
    declared about an app."""

    slug: str
    """The app's id, in ``{prefix}/apps/{slug}/``."""
    multi_session: bool
    """The app has several sessions at once, so its generic path
    ``{prefix}/apps/{slug}/...`` answers 400 and only
    ``{prefix}/apps/{slug}/sessions/{id}/...`` reaches a session."""
    start: t.Callable[[], object] | None
    """Called with no arguments, in a thread of its own, by the first request to the
    generic path when the app has no session; it should ``listen(..., app=slug)`` (or
    launch a runtime that does)."""
    start_timeout: float
    """Seconds a request waits for ``start`` before it gives up with 503."""
    max_waiting: int
    """The most requests that wait for one start (the one that launched it included),
    each holding a server thread; more get 503 with ``Retry-After`` at once.
    Strangers can trigger a start, so keep it well below the server's threads."""
    idle_timeout: float | None
    """Seconds after which a member of this process that served no request is closed
    (automatic shutdown); the next request on the generic path then starts a new one.
    A request counts until its answer is closed, so a stream keeps its session alive.
    Members are looked at every quarter of it (at least every second), so a member
    goes within 1.25 times the timeout. ``None`` keeps members until they are closed."""
    stop: t.Callable[[str], object] | None
    """Called as ``stop(session)`` for a member closed for being idle, in a thread of
    its own, before the listener is closed; the listener is closed when ``stop``
    returns or raises (logged), or after ``start_timeout`` seconds. From the moment a
    member is found idle it leaves the app (the generic path starts a new session)
    and takes no new request (503 with ``Retry-After`` on its session routes). Needs
    ``idle_timeout``."""
    access: Access | None
    """Who may reach the app's routes, and its members that declare no access of their
    own (:mod:`wsgi_proxy_listen.access`); ``None``: the middleware's
    ``default_access``."""
    sandbox: bool | None
    """Whether the answers of its members that do not say otherwise are sandboxed
    (:mod:`wsgi_proxy_listen.terms`); ``None``: the middleware's ``sandbox``."""

    __slots__ = (
        "_apps",
        "access",
        "idle_timeout",
        "max_waiting",
        "multi_session",
        "sandbox",
        "slug",
        "start",
        "start_timeout",
        "stop",
    )

    def __init__(
        self,
        apps: Apps,
        slug: str,
        *,
        multi_session: bool,
        start: t.Callable[[], object] | None,
        start_timeout: float,
        max_waiting: int,
        idle_timeout: float | None,
        stop: t.Callable[[str], object] | None,
        access: object = None,
        sandbox: object = None,
    ) -> None:
        self.access, self.sandbox = Terms.checked(access, sandbox)
        if not isinstance(multi_session, bool):
            raise TypeError(f"multi_session must be True or False, not {multi_session!r}")
        if start is not None and not callable(start):
            raise TypeError(f"start must be a callable taking no arguments or None, not {start!r}")
        if isinstance(start_timeout, bool) or not isinstance(start_timeout, (int, float)):
            raise TypeError(
                f"start_timeout must be a number of seconds, not {type(start_timeout).__name__!r}"
            )
        if not 0 < start_timeout < float("inf"):
            raise ValueError(
                f"invalid start_timeout {start_timeout!r}: use a positive number of seconds"
            )
        check_limit("max_waiting", max_waiting, optional=False)
        idle_timeout = check_idle_timeout(idle_timeout)
        if stop is not None and not callable(stop):
            raise TypeError(f"stop must be a callable taking the session id or None, not {stop!r}")
        if stop is not None and idle_timeout is None:
            raise ValueError(
                "stop= is called when a session is closed for being idle: give idle_timeout="
                " too, or close sessions yourself"
            )
        self._apps = apps
        self.slug = slug
        self.multi_session = multi_session
        self.start = start
        self.start_timeout = float(start_timeout)
        self.max_waiting = max_waiting
        self.idle_timeout = idle_timeout
        self.stop = stop

    @property
    def starting(self) -> bool:
        """Whether a start of this app is running (whichever declaration launched it)."""
        return self.slug in self._apps._starts

    def url(self, path: str = "/", environ: WSGIEnvironment | None = None) -> str:
        """The URL path of the app's generic path, ``{prefix}/apps/{slug}/``, with
        ``path`` appended: :meth:`Registry.url <wsgi_proxy_listen.Registry.url>` for
        the app."""
        return self._apps.url(app=self.slug, path=path, environ=environ)

    def __repr__(self) -> str:
        access = "" if self.access is None else f" access={access_to_record(self.access)!r}"
        sandbox = "" if self.sandbox is None else f" sandbox={self.sandbox!r}"
        return (
            f"<App {self.slug!r} multi_session={self.multi_session!r}"
            f" start={self.start!r} start_timeout={self.start_timeout!r}"
            f" max_waiting={self.max_waiting!r} idle_timeout={self.idle_timeout!r}"
            f" stop={self.stop!r}{access}{sandbox}>"
        )

    @property
    def terms(self) -> Terms:
        """Its :attr:`access` and :attr:`sandbox`, as declared."""
        return Terms(self.access, self.sandbox)


class _Start(threading.Event):
    """A running start of an app: set when it ends; counts the requests waiting for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0


class Apps:
    """The apps of one registry: declarations, members, starts and idle shutdown.

    Its lookups take no lock and read one dict; changes are serialised by the
    registry's lock (``lock``), so that a listener and its membership change at once.

    :param sharing: the registry's directory, for the rules across processes.
    :param url: the registry's :meth:`~wsgi_proxy_listen.Registry.url`.
    :param name: what the thread that closes idle members is called.
    """

    def __init__(
        self, sharing: Sharing, url: Callable[..., str], name: str, lock: threading.Lock
    ) -> None:
        self._sharing = sharing
        self.url = url
        self._declared: dict[str, App] = {}
        # Members of each app in the order they joined, newest last, and the newest one:
        # kept up to date under the lock so that lookups read it without iterating a
        # dict that another thread may change.
        self._members: dict[str, OrderedDict[str, Listener]] = {}
        self._current: dict[str, Listener] = {}
        self._reaper = Reaper(self._sweep, name)
        self._start_afresh(lock)
        # Members registered before this moment were inherited by a forked child.
        self._forked_at = float("-inf")

    def _start_afresh(self, lock: threading.Lock) -> None:
        self._lock = lock
        # Running starts, by slug, so that a new declaration of an app joins its start.
        self._starts: dict[str, _Start] = {}
        # Requests waiting for a start that runs in another process, by slug.
        self._waiting: dict[str, int] = {}

    def after_fork(self, lock: threading.Lock) -> None:
        """In a forked child, with the registry's fresh ``lock``: the parent's threads
        are not here, no start or wait runs. The thread that closes idle members starts
        again when the child registers one or declares an app (no thread starts inside
        a fork); the members it inherited are closed without their app's ``stop``,
        which is the parent's to call."""
        self._start_afresh(lock)
        self._forked_at = time.monotonic()
        self._reaper.after_fork()

    # -- declaration ----------------------------------------------------------------------

    def declare(self, declaration: App) -> App:
        """Declare an app (``register_app``), replacing any declaration of its slug."""
        with self._lock:
            self._declared[declaration.slug] = declaration
        if declaration.idle_timeout is not None:
            self._reaper.wake()
        return declaration

    def forget(self, slug: str) -> None:
        """See :meth:`wsgi_proxy_listen.Registry.unregister_app`."""
        with self._lock:
            if self._declared.pop(slug, None) is None:
                raise LookupError(f"no app {slug!r} is registered: nothing to unregister")

    def get(self, slug: str) -> App | None:
        """The declaration of ``slug``, or ``None``. Takes no lock."""
        return self._declared.get(slug)

    def terms(self, slug: str | None) -> Terms:
        """The terms that the declaration of ``slug`` gives (none declared: none)."""
        declaration = None if slug is None else self._declared.get(slug)
        return UNDECLARED if declaration is None else declaration.terms

    def terms_of(self, listener: Listener | Registered) -> Terms:
        """The terms of ``listener``, as declared: its own, else its app's; what both
        leave open is the middleware's choice."""
        terms = listener.terms
        if listener.app is None or (terms.access is not None and terms.sandbox is not None):
            return terms
        return terms.over(self.terms(listener.app))

    # -- membership -------------------------------------------------------------------------

    def current(self, slug: str) -> Listener | None:
        """See :meth:`wsgi_proxy_listen.Registry.current_listener`."""
        return self._current.get(slug)

    def join(self, listener: Listener) -> None:
        """``listener`` is its app's newest member (``listen(..., app=...)``). The
        caller holds the registry's lock."""
        app = t.cast(str, listener.app)
        members = self._members.get(app)
        if members is None:
            members = self._members[app] = OrderedDict()
        members.pop(listener.session, None)
        members[listener.session] = listener
        self._current[app] = listener
        declaration = self._declared.get(app)
        if declaration is not None and declaration.idle_timeout is not None:
            self._reaper.wake()  # declare() wakes it for members that joined before

    def leave(self, listener: Listener) -> None:
        """Take ``listener`` out of its app, if it is still a member (one found idle
        left it already). The caller holds the registry's lock."""
        app = listener.app
        members = None if app is None else self._members.get(app)
        if members is None or members.get(listener.session) is not listener:
            return
        app = t.cast(str, app)
        # OrderedDict: deleting a member and finding the newest one left are O(1),
        # however many members came and went.
        del members[listener.session]
        if members:
            self._current[app] = next(reversed(members.values()))
        else:
            del self._members[app]
            del self._current[app]

    # -- the generic path -------------------------------------------------------------------

    def find(self, slug: str) -> Listener | Destination | Answer:
        """What a request on the generic path of ``slug`` reaches: a listener of this
        process, one of another process, or the answer (400, 404, 503)."""
        declaration = self._declared.get(slug)
        if declaration is not None and declaration.multi_session:
            return BAD_REQUEST
        found = self._newest(slug)
        if found is not None:
            return found
        if declaration is None or declaration.start is None:
            return NOT_FOUND
        return self._start_once(declaration)

    def after_miss(self, slug: str, missed: Destination) -> Listener | Destination | Answer:
        """Where a request on the generic path of ``slug`` goes once ``missed`` turned
        out closed (an idle one, say): its owner withdraws it next, so wait for that a
        moment, then :meth:`find` the member after it or start a new one."""
        deadline = time.monotonic() + WITHDRAWAL_WAIT
        while True:
            found = self.find(slug)
            if isinstance(found, (Listener, Answer)) or (found.session, found.owner) != (
                missed.session,
                missed.owner,
            ):
                return found
            if time.monotonic() >= deadline:
                return NOT_FOUND
            time.sleep(START_POLL)

    def _newest(self, slug: str) -> Found | None:
        """The app's newest member: this process's, else another's that the directory
        lists (or 503 when it cannot be reached); ``None`` when there is none."""
        listener = self._current.get(slug)
        if listener is not None:
            return listener
        directory = self._sharing.directory
        if directory is None:
            return None
        found = directory.current(slug)
        if found is None:
            # A start that another thread of this process ran may have registered one.
            return self._current.get(slug)
        return found

    def start(self, slug: str) -> Listener | None:
        """See :meth:`wsgi_proxy_listen.Registry.start_app`."""
        with self._lock:
            declaration = self._declared.get(slug)
            if declaration is None or declaration.start is None:
                return None
            current = self._current.get(slug)
            if current is not None:
                return current  # a member joined since the caller looked
            starting = self._starts.get(slug)
            launch = starting is None
            if starting is None:
                starting = self._starts[slug] = _Start()
            elif starting.waiting >= declaration.max_waiting:
                return None
            starting.waiting += 1
        if launch:
            try:
                threading.Thread(
                    target=self._run_start,
                    args=(declaration, starting),
                    name=f"wsgi_proxy_listen start {slug}",
                    daemon=True,
                ).start()
            except BaseException:
                with self._lock:
                    del self._starts[slug]
                    starting.waiting -= 1
                starting.set()
                raise
        try:
            starting.wait(declaration.start_timeout)
        finally:
            with self._lock:
                starting.waiting -= 1
        return self._current.get(slug)

    def _run_start(self, declaration: App, starting: _Start) -> None:
        start = t.cast(t.Callable[[], object], declaration.start)
        began = time.monotonic()
        try:
            start()
        except Exception:
            logger.exception("start of app %r raised", declaration.slug)
        else:
            started = self._current.get(declaration.slug)
            if started is not None:
                say(
                    "start",
                    "start of app %r registered session %r",
                    declaration.slug,
                    started.session,
                    app=declaration.slug,
                    session=started.session,
                )
            # With a directory, the session may be another process's: _start_once looks.
            elif not self._sharing.connected:
                logger.error(
                    "start of app %r returned without registering a session:"
                    " it should call listen(..., app=%r)",
                    declaration.slug,
                    declaration.slug,
                )
            elapsed = time.monotonic() - began
            if elapsed > declaration.start_timeout:
                logger.warning(
                    "start of app %r took %.1f s, more than its start_timeout of %.1f s",
                    declaration.slug,
                    elapsed,
                    declaration.start_timeout,
                )
        finally:
            with self._lock:
                if self._starts.get(declaration.slug) is starting:
                    del self._starts[declaration.slug]
            starting.set()

    def _start_once(self, declaration: App) -> Found:
        """Start the app here, once across every process that shares the directory, or
        wait for the start that runs elsewhere."""
        slug = declaration.slug
        directory = self._sharing.directory
        if directory is None:
            return self.start(slug) or UNAVAILABLE
        try:
            if not directory.lock_start(slug, declaration.start_timeout):
                return self._wait_for_start_elsewhere(declaration, directory)
        except DirectoryUnavailable:
            return UNAVAILABLE
        try:
            # Another process may have started it between the lookup and the lock.
            found = self._newest(slug)
            if found is None:
                found = self.start(slug)
            if found is None:
                # A start may register the session in another process (it launched a
                # runtime that listens there): the directory lists it then.
                found = self._newest(slug)
                if found is None and not declaration.starting:
                    logger.error(
                        "start of app %r registered no session, here or in another process:"
                        " it should call listen(..., app=%r) or launch a runtime that does",
                        slug,
                        slug,
                    )
            return UNAVAILABLE if found is None else found
        finally:
            # A start still running past start_timeout keeps the lock, which expires by
            # itself; an ended one frees it for the next request.
            if not declaration.starting:
                directory.unlock_start(slug)

    def _wait_for_start_elsewhere(self, declaration: App, directory: Directory) -> Found:
        """The start runs in another process: wait for its session here, as many
        requests at a time as the app allows (each holds a server thread)."""
        slug = declaration.slug
        with self._lock:
            if self._waiting.get(slug, 0) >= declaration.max_waiting:
                return UNAVAILABLE
            self._waiting[slug] = self._waiting.get(slug, 0) + 1
        try:
            deadline = time.monotonic() + declaration.start_timeout
            while time.monotonic() < deadline:
                time.sleep(START_POLL)
                found = self._newest(slug)
                if found is not None:
                    return found
            return UNAVAILABLE
        finally:
            with self._lock:
                self._waiting[slug] -= 1

    # -- automatic shutdown -----------------------------------------------------------------

    def close_idle(self, now: float | None = None) -> list[Listener]:
        """See :meth:`wsgi_proxy_listen.Registry.close_idle`."""
        if now is None:
            now = time.monotonic()
        idle: list[tuple[Listener, App]] = []
        with self._lock:
            for slug, members in self._members.items():
                declaration = self._declared.get(slug)
                timeout = None if declaration is None else declaration.idle_timeout
                if timeout is None:
                    continue
                is_idle = _idle_at(now, timeout)
                for member in members.values():
                    # Decided under the member's own lock, which a request takes to come
                    # in: it either came first (and keeps the member alive) or is refused.
                    if member.stop_admitting_if(is_idle):
                        idle.append((member, t.cast(App, declaration)))
        retired = []
        for member, declaration in idle:
            say(
                "idle_shutdown",
                "session %r of app %r served nothing for %.1f s: it is closed",
                member.session,
                declaration.slug,
                declaration.idle_timeout,
                session=member.session,
                app=declaration.slug,
            )
            # A copy that a forked child inherited: the session is the parent's to stop.
            stop = declaration.stop if member.listened > self._forked_at else None
            try:
                retire(member, stop, declaration.start_timeout)
            except Exception:
                # Nothing was stopped: the next look tries again.
                logger.exception("could not close the idle session %r", member.session)
                member.retiring = False
                continue
            retired.append(member)
            # While stop() runs, the app's generic path goes to another member or starts
            # a new session, here and in every process.
            with self._lock:
                self.leave(member)
            self._sharing.removed(member)
        return retired

    def _sweep(self) -> float | None:
        """Close what is idle now; the seconds until the next look, or ``None`` while no
        member of an app with an ``idle_timeout`` is registered."""
        self.close_idle()
        with self._lock:
            timeouts = [
                declaration.idle_timeout
                for slug, declaration in self._declared.items()
                if declaration.idle_timeout is not None and slug in self._members
            ]
        return _period_for(min(timeouts)) if timeouts else None


def _idle_at(now: float, timeout: float) -> Callable[[Listener], bool]:
    """Whether a member is idle at ``now``: it serves nothing, and has served nothing
    for ``timeout`` seconds (compared as a sum, exact whatever the clock reads)."""
    return lambda member: not member.active and now >= member.idle_since + timeout
