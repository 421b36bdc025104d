"""
RedisDirectory
==============

Shares run-time listeners across worker processes and hosts through Redis, as
``../shared/CLUSTER.md`` describes:

- listeners registered before a process serves its first request exist in every
  worker (each runs the same start-up code) and are never published;
- listeners registered while it serves are *owned* by that worker and published
  as ``session -> owner id, address, app`` with a lease, renewed by a heartbeat
  every ``lease / 3`` seconds;
- a request for a session this worker does not have is looked up in Redis and
  forwarded to the owner's internal endpoint (:mod:`.hop`);
- ``listen()`` for a session owned elsewhere takes it over; the old owner hears
  it on a pub/sub channel and stops serving it;
- threads and sockets start with the first request a process serves, never in a
  server's master process, and again after a fork.

Redis keys (``{namespace}`` defaults to ``wsgi-proxy-listen``):

====================================  =====================================================
``{namespace}:session:{id}``          ``"{owner id} {address} {app}"``, with the lease as TTL
``{namespace}:app:{slug}``            sorted set of member sessions, scored by join time
``{namespace}:start:{slug}``          the cluster-wide auto-start lock
``{namespace}:takeover``              pub/sub channel: ``"{session} {new owner id}"``
====================================  =====================================================
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import typing as t
import uuid

import redis
from waitress.server import create_server

from .hop import Forwarder, InternalEndpoint

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from ..registry import Listener, Registry

__all__ = ["Owner", "RedisDirectory"]

logger = logging.getLogger("wsgi_proxy_listen")

# Delete or renew a key only while it still names this owner.
_DELETE_IF = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
# Renew a key that names this owner (ARGV[3] is "{owner id} "), whatever app an older
# listener of the same session wrote; recreate a missing one; -1 if another owner has it.
_RENEW_IF = (
    "local v = redis.call('get', KEYS[1]) "
    "if v and string.sub(v, 1, string.len(ARGV[3])) ~= ARGV[3] then return -1 end "
    "redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2]) "
    "if v then return 1 end return 2"
)


class Owner(t.NamedTuple):
    """Who serves a session, as Redis says."""

    owner: str
    address: str
    app: str | None

    @classmethod
    def parse(cls, value: bytes | str | None) -> Owner | None:
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else value
        owner, address, app = [*text.split(" "), "", ""][:3]
        return cls(owner, address, app or None)

    def encode(self) -> str:
        return f"{self.owner} {self.address} {self.app or ''}"


class DirectoryUnavailable(ConnectionError):
    """Redis cannot be reached: lookups for other workers' listeners answer 503."""


class RedisDirectory:
    """A shared directory of listeners in Redis, with HTTP hops between workers.

    :param url: the Redis (or Valkey) server, such as ``redis://127.0.0.1:6379/0``.
    :param secret: signs the hop between workers; required, non-empty, the same
        in every worker and host.
    :param advertise_host: the address other workers reach this one at (a LAN
        address across hosts); the internal endpoint binds to it.
    :param lease: seconds a registration outlives a silent owner.
    :param read_timeout: seconds a hop waits for the owner's answer (then 504).
    :param namespace: prefix of the Redis keys, to share one Redis between clusters.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: str | bytes,
        advertise_host: str = "127.0.0.1",
        lease: float = 10.0,
        read_timeout: float = 60.0,
        namespace: str = "wsgi-proxy-listen",
    ) -> None:
        if not secret:
            raise ValueError(
                "RedisDirectory needs a non-empty secret, the same in every worker:"
                " it signs the requests between workers"
            )
        if not lease > 0:
            raise ValueError(f"invalid lease {lease!r}: use a positive number of seconds")
        if not read_timeout > 0:
            raise ValueError(f"invalid read_timeout {read_timeout!r}: use a positive number")
        self.url = url
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.advertise_host = advertise_host
        self.lease = float(lease)
        self.read_timeout = float(read_timeout)
        self.namespace = namespace
        self.serving = False
        self.address = ""
        self.owner = ""
        self._registry: Registry | None = None
        self._dispatch: WSGIApplication | None = None
        self._published: dict[str, Listener] = {}
        self._pending: set[str] = set()  # published locally, not yet in Redis
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._outage = False
        self._stop = threading.Event()
        self._redis = redis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=10
        )
        self._forwarder = Forwarder(self.secret, self.read_timeout)
        os.register_at_fork(after_in_child=self._after_fork)
        atexit.register(self.withdraw_all)

    def __repr__(self) -> str:
        return f"<RedisDirectory url={self.url!r} owner={self.owner!r} address={self.address!r}>"

    # -- keys --------------------------------------------------------------------

    def _session_key(self, session: str) -> str:
        return f"{self.namespace}:session:{session}"

    def _app_key(self, slug: str) -> str:
        return f"{self.namespace}:app:{slug}"

    @property
    def _channel(self) -> str:
        return f"{self.namespace}:takeover"

    # -- the Directory seam --------------------------------------------------------

    def attach(self, registry: Registry) -> None:
        if self._registry is not None and self._registry is not registry:
            raise RuntimeError(f"{self!r} is already used by {self._registry!r}")
        self._registry = registry

    def use_middleware(self, app: WSGIApplication) -> None:
        """The middleware that the internal endpoint hands forwarded requests to."""
        if self._dispatch is None:
            self._dispatch = app

    def listened(self, listener: Listener) -> None:
        if not self.serving:
            with self._lock:
                self._published.pop(listener.session, None)
            return
        # Redis first: a take-over notice handled in between then reads this worker's
        # name in Redis, or finds only the listener this one replaced.
        published = self._publish(listener, announce=True)
        with self._lock:
            registry = self._registry
            current = listener if registry is None else registry.get(listener.session)
            if current is listener:
                self._published[listener.session] = listener
                if not published:
                    self._pending.add(listener.session)
        # Replaced meanwhile by another listen() in this worker: that one publishes
        # itself (and the heartbeat rewrites the entry). Closed meanwhile: undo it.
        if current is None:
            self._delete(listener)

    def removed(self, listener: Listener) -> None:
        with self._lock:
            if self._published.get(listener.session) is not listener:
                return
            del self._published[listener.session]
            self._pending.discard(listener.session)
        self._delete(listener)

    def _delete(self, listener: Listener) -> None:
        value = Owner(self.owner, self.address, listener.app).encode()
        try:
            self._redis.eval(_DELETE_IF, 1, self._session_key(listener.session), value)
            if listener.app is not None:
                self._redis.zrem(self._app_key(listener.app), listener.session)
        except redis.RedisError:
            self._lost()

    # -- serving -------------------------------------------------------------------

    def start_serving(self) -> None:
        """Start the internal endpoint, the heartbeat and the take-over listener.

        Called by the middleware with the first request this process serves.
        """
        with self._lock:
            if self.serving:
                return
            self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            # waitress keeps hop connections alive, which the pool needs (werkzeug's
            # server closes every connection). Small output buffers: with waitress's
            # defaults a kept-alive connection holds up to 16 MB after a big stream.
            endpoint = InternalEndpoint(self.secret, self.owner, lambda: self._dispatch)
            server = create_server(
                endpoint,
                host=self.advertise_host,
                port=0,
                threads=8,
                outbuf_overflow=65536,
                outbuf_high_watermark=262144,
                # The receiving worker's middleware applies max_content_length.
                max_request_body_size=2**62,
                ident="wsgi-proxy-listen",
            )
            host = f"[{self.advertise_host}]" if ":" in self.advertise_host else self.advertise_host
            self.address = f"{host}:{server.effective_port}"  # type: ignore[union-attr]
            self._stop = threading.Event()
            self._server = server
            self._threads = [
                threading.Thread(target=target, name=f"wsgi_proxy_listen {name}", daemon=True)
                for target, name in (
                    (server.run, "internal endpoint"),
                    (self._heartbeat, "heartbeat"),
                    (self._listen_for_takeovers, "take-over listener"),
                )
            ]
            for thread in self._threads:
                thread.start()
            self.serving = True

    def _after_fork(self) -> None:
        # The threads and sockets of the parent do not exist in the child: start again
        # with the child's first request. Listeners published by the parent stay its own.
        if self.serving:
            # The parent's listening socket: kept open here, it would accept hop
            # requests for the parent after the parent died, and nobody would answer.
            listening = getattr(self._server, "socket", None)
            if listening is not None:
                listening.close()
        self.serving = False
        self._threads = []
        self._published = {}
        self._pending = set()
        self._lock = threading.Lock()
        self._redis.connection_pool.reset()
        self._forwarder = Forwarder(self.secret, self.read_timeout)

    def close(self) -> None:
        """Withdraw this worker's entries and stop the internal endpoint and threads."""
        self.withdraw_all()
        if self.serving:
            self._server.close()
            for thread in self._threads[1:]:  # the heartbeat and take-over listener
                thread.join(5)
        self.serving = False
        self._forwarder.pool.clear()
        self._redis.close()

    def withdraw_all(self) -> None:
        """Delete this worker's entries and app memberships (at exit)."""
        self._stop.set()
        with self._lock:
            published = list(self._published.values())
            self._published.clear()
        try:
            for listener in published:
                value = Owner(self.owner, self.address, listener.app).encode()
                self._redis.eval(_DELETE_IF, 1, self._session_key(listener.session), value)
                if listener.app is not None:
                    self._redis.zrem(self._app_key(listener.app), listener.session)
        except redis.RedisError:
            return

    # -- Redis writes ------------------------------------------------------------------

    def _publish(self, listener: Listener, *, announce: bool) -> bool:
        """Write the session's entry, taking it over; False if Redis cannot be reached."""
        value = Owner(self.owner, self.address, listener.app).encode()
        key = self._session_key(listener.session)
        try:
            previous = Owner.parse(
                t.cast("bytes | None", self._redis.set(key, value, px=self._lease_ms, get=True))
            )
            if listener.app is not None:
                self._redis.zadd(self._app_key(listener.app), {listener.session: time.time()})
            if previous is not None and previous.app not in (None, listener.app):
                self._redis.zrem(self._app_key(previous.app), listener.session)
            if announce and previous is not None and previous.owner != self.owner:
                self._redis.publish(self._channel, f"{listener.session} {self.owner}")
        except redis.RedisError:
            self._lost()  # kept in _published: the heartbeat publishes it when Redis is back
            return False
        return True

    @property
    def _lease_ms(self) -> int:
        return int(self.lease * 1000)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            with self._lock:
                published = list(self._published.values())
                pending, self._pending = self._pending, set()
            try:
                for listener in published:
                    if listener.session in pending:
                        # listen() ran while Redis was away: it is the newest, take over.
                        if not self._publish(listener, announce=True):
                            raise redis.ConnectionError("still unreachable")
                    else:
                        self._renew(listener)
                self._redis.ping()
            except redis.RedisError:
                with self._lock:
                    self._pending |= {s for s in pending if s in self._published}
                self._lost()
            else:
                self._back()

    def _renew(self, listener: Listener) -> None:
        """Renew the lease of ``listener``, publish it again if it expired (a Redis
        outage), or give it up if another owner holds the session now."""
        value = Owner(self.owner, self.address, listener.app).encode()
        key = self._session_key(listener.session)
        renewed = self._redis.eval(_RENEW_IF, 1, key, value, self._lease_ms, f"{self.owner} ")
        if self._published.get(listener.session) is not listener:
            # Replaced or closed while we renewed: undo a key we may have just recreated.
            if renewed == 2:
                self._redis.eval(_DELETE_IF, 1, key, value)
            return
        if renewed == -1:
            self._give_up(listener)
        elif renewed == 2 and listener.app is not None:
            self._redis.zadd(self._app_key(listener.app), {listener.session: time.time()})

    def _listen_for_takeovers(self) -> None:
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    session, _, owner = message["data"].decode().partition(" ")
                    if owner != self.owner:
                        self._taken_over(session)
            except redis.RedisError:
                self._lost()
                self._stop.wait(1.0)
            finally:
                pubsub.close()

    def _taken_over(self, session: str) -> None:
        """A take-over notice: give the session up if Redis no longer names this worker.

        The notice may arrive after this worker took the session back; Redis decides.
        """
        listener = self._published.get(session)
        if listener is None:
            return
        owner = Owner.parse(t.cast("bytes | None", self._redis.get(self._session_key(session))))
        if owner is None or owner.owner != self.owner:
            self._give_up(listener)

    def _give_up(self, listener: Listener) -> None:
        with self._lock:
            if self._published.get(listener.session) is not listener:
                return
            del self._published[listener.session]
        if self._registry is not None:
            self._registry._remove(listener, tell_directory=False)
            logger.info("session %r was taken over by another worker", listener.session)

    def _lost(self) -> None:
        if not self._outage:
            self._outage = True
            logger.error(
                "Redis at %s cannot be reached: listeners of this worker keep working,"
                " requests for other workers' listeners get 503 until it is back",
                self.url,
            )

    def _back(self) -> None:
        if self._outage:
            self._outage = False
            logger.warning("Redis at %s is reachable again", self.url)

    # -- lookups ---------------------------------------------------------------------

    def locate(self, session: str) -> Owner | None:
        """The owner of ``session`` in Redis, or None.

        :raises DirectoryUnavailable: Redis cannot be reached.
        """
        try:
            return Owner.parse(self._redis.get(self._session_key(session)))
        except redis.RedisError:
            self._lost()
            raise DirectoryUnavailable(self.url) from None

    def current_session(self, slug: str) -> tuple[str, Owner] | None:
        """The newest member of app ``slug`` that still has an owner.

        :raises DirectoryUnavailable: Redis cannot be reached.
        """
        key = self._app_key(slug)
        try:
            found = t.cast("list[bytes]", self._redis.zrevrange(key, 0, 15))
            members = [member.decode() for member in found]
            if not members:
                return None
            owners = self._redis.mget([self._session_key(m) for m in members])
            stale: list[str] = []
            for member, value in zip(members, owners, strict=True):
                owner = Owner.parse(value)
                if owner is not None and owner.app == slug:
                    if stale:
                        self._redis.zrem(key, *stale)
                    return member, owner
                stale.append(member)
            self._redis.zrem(key, *stale)
            return None
        except redis.RedisError:
            self._lost()
            raise DirectoryUnavailable(self.url) from None

    def start_lock(self, slug: str, timeout: float) -> bool:
        """Take the cluster-wide auto-start lock of ``slug`` for ``timeout`` seconds.

        :raises DirectoryUnavailable: Redis cannot be reached.
        """
        try:
            key = f"{self.namespace}:start:{slug}"
            return bool(self._redis.set(key, self.owner, nx=True, px=int(timeout * 1000)))
        except redis.RedisError:
            self._lost()
            raise DirectoryUnavailable(self.url) from None

    def start_unlock(self, slug: str) -> None:
        """Release the auto-start lock of ``slug`` if this worker holds it, so that the
        next request tries again (SPEC §4) after a start that failed."""
        try:
            self._redis.eval(_DELETE_IF, 1, f"{self.namespace}:start:{slug}", self.owner)
        except redis.RedisError:
            self._lost()

    def forward(
        self,
        owner: Owner,
        session: str,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Forward the request to ``owner``; drop its entry if it is gone."""

        def owner_gone() -> None:
            logger.warning("the owner of session %r at %s is gone", session, owner.address)
            try:
                self._redis.eval(_DELETE_IF, 1, self._session_key(session), owner.encode())
            except redis.RedisError:
                self._lost()

        return self._forwarder.forward(owner, environ, start_response, owner_gone)
