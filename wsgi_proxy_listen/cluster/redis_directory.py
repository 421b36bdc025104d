"""
The Redis directory
===================

Shares listeners between processes on several machines through a Redis (or
Valkey) server; each process's internal endpoint is a TCP port on
``advertise_host``, and the hop between processes is authenticated with the
shared secret.

.. code-block:: python

    from wsgi_proxy_listen import Registry

    registry = Registry(directory="redis://10.0.0.5:6379/0", secret=os.environ["SECRET"])

Needs the extra ``pip install wsgi-proxy-listen[redis]``. Every key carries
the namespace as a hash tag, ``{namespace}`` (by default derived from the
secret), so that a Redis Cluster (``redis+cluster://``) keeps all of a
deployment's keys in one slot, and every script (sent with the prefix
``{namespace}:`` as its key) runs on the node that holds it:

==================================  =======================================================
``{ns}:owner:{owner}``              the owner's record (pid, host, endpoint address), with
                                    its lease as TTL: one per process, renewed every third
``{ns}:owners``                     sorted set of owners by the end of their lease, to
                                    clean up after those that ended without a word
``{ns}:session:{id}``               the session's record (owner, app, since); live while
                                    its owner's lease is
``{ns}:owned:{owner}``              set of the sessions an owner published
``{ns}:app:{slug}``                 sorted set of member sessions, scored by join time
``{ns}:start:{slug}``               the cluster-wide auto-start lock
``{ns}:used:{key}``                 a token used on a listener origin, while it could be
``{ns}:notices``                    pub/sub channel: ``"{session} {new owner id or -}"``
==================================  =======================================================

Records are JSON objects with a version (``{"v": 1, ...}``): see :mod:`.store`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..seam import Entry, shown_name
from . import redis_scripts as scripts
from .addresses import Bind, bind_for, is_loopback, parse_advertise, parse_bind
from .directory import SharedDirectory
from .health import ACL_REFUSED_IN_SCRIPT, PROBE_INTERVAL
from .redis_connection import Commands, client, reset_after_fork, route_to
from .store import Owner, decode_record, encode_record, session_record
from .tls import tls_files
from .variables import ENV_ADVERTISE, ENV_BIND, ENV_NAMESPACE, check_namespace, namespace_for

__all__ = ["RedisDirectory", "entries_in", "namespaces_in", "read_deployments"]

logger = logging.getLogger("wsgi_proxy_listen")

# Sessions written again by one script: a short stop for Redis, few round trips.
_REPUBLISH_BATCH = 500

#: Every command the directory sends, its scripts' included (see :meth:`RedisDirectory.acl`).
ACL_COMMANDS = (
    "ping", "select", "time", "get", "set", "del", "exists", "mget", "scan",
    "sadd", "srem", "smembers", "zadd", "zrem", "zscore", "zrangebyscore", "zrevrange",
    "publish", "subscribe", "unsubscribe", "eval", "evalsha", "script|load",
)  # fmt: skip


def _location(session_value: bytes, owner_value: bytes) -> Owner | None:
    session, owner = decode_record(session_value), decode_record(owner_value)
    if session is None or owner is None:
        return None
    return Owner(session["owner"], owner["address"], session["app"], session["terms"])


def _client_of(url: str, timeout: float, retry: Retry) -> Commands:
    try:
        return client(url, timeout, retry)
    except ValueError as error:
        shown = shown_name(url)
        # What the parser says of a URL with a password may quote a piece of it.
        why = (
            str(error)
            if shown == url
            else "it does not parse (percent-encode any / # ? @ [ in the password)"
        )
        raise ValueError(f"invalid Redis URL {shown!r}: {why}") from None


def read_deployments(url: str, namespace: str | None) -> list[tuple[str, list[Entry]]]:
    """The deployments in the Redis of ``url`` with their live entries: the one of
    ``namespace``, or (``None``) every one that has a live process. No secret needed.

    :raises ValueError: a URL that does not parse.
    :raises redis.RedisError: the server cannot be read (after a second at most).
    """
    reader = _client_of(url, 1.0, Retry(NoBackoff(), 0))
    try:
        names = [namespace] if namespace else namespaces_in(reader)
        return [(name, entries_in(reader, name)) for name in names]
    finally:
        reader.close()


def namespaces_in(client: Commands) -> list[str]:
    """The namespaces of every deployment with a live process in the database of
    ``client``: reading needs no secret (the secret signs the hop, not Redis reads)."""
    found = set()
    for key in client.scan_iter(match="{*}:owners", count=1000):
        name = key.decode(errors="replace")
        found.add(name[1 : -len("}:owners")])
    return sorted(found)


def entries_in(client: Commands, namespace: str) -> list[Entry]:
    """The live entries of the deployment ``namespace``, oldest first (those of the same
    moment by session id)."""
    prefix = "{" + namespace + "}:"
    keys = list(client.scan_iter(match=f"{prefix}session:*", count=1000))
    sessions = [decode_record(value) for value in client.mget(keys)] if keys else []
    owners = sorted({record["owner"] for record in sessions if record is not None})
    owner_keys = [f"{prefix}owner:{owner}" for owner in owners]
    values = client.mget(owner_keys) if owner_keys else []
    live = {
        owner: record
        for owner, record in zip(owners, map(decode_record, values), strict=True)
        if record is not None
    }
    entries = []
    session_start = len(f"{prefix}session:")
    for key, record in zip(keys, sessions, strict=True):
        if record is None or record["owner"] not in live:
            continue  # expired, withdrawn or of its owner's dead process
        owner = live[record["owner"]]
        entries.append(
            Entry(
                key.decode()[session_start:],
                record["app"],
                record["owner"],
                owner["pid"],
                owner["address"],
                record["since"],
            )
        )
    return sorted(entries, key=lambda entry: (entry.since, entry.session))


class RedisDirectory(SharedDirectory):
    """A directory in Redis, for processes on several machines.

    :param url: the Redis server: ``redis://``, ``rediss://`` or ``unix://``.
    :param secret: signs the hop between processes; required, non-empty, the
        same in every process and host.
    :param advertise_host: ``host[:port]``, the address other processes reach this one
        at. ``None`` takes ``WSGI_PROXY_LISTEN_ADVERTISE``, else the address this machine
        uses to reach the Redis server (so two machines find each other with nothing
        configured; ``127.0.0.1`` for a local Redis). ``0.0.0.0`` and ``::`` are
        refused: nobody can connect to them.
    :param bind: ``[host][:port]`` or ``[host]:first-last``, where the internal endpoint
        listens (see :mod:`~wsgi_proxy_listen.cluster.addresses`). ``None`` takes
        ``WSGI_PROXY_LISTEN_BIND``, else the advertised host (every interface when it is
        not this machine's) on the advertised port, or a free one.
    :param lease: seconds a registration outlives a silent owner.
    :param read_timeout: seconds a hop waits for the owner's answer (then 504).
    :param namespace: the prefix of the Redis keys (``{namespace}:...``). ``None`` takes
        ``WSGI_PROXY_LISTEN_NAMESPACE``, else one derived from the secret
        (:func:`~wsgi_proxy_listen.cluster.variables.namespace_for`): deployments that share a
        database with different secrets never see each other's entries.
    :param tls_cert: with ``tls_key`` and ``tls_ca``, TLS on the hop between processes,
        both ways verified (:mod:`~wsgi_proxy_listen.cluster.tls`); ``None`` takes
        ``WSGI_PROXY_LISTEN_TLS_CERT`` (``_TLS_KEY``, ``_TLS_CA``).
    """

    unreachable = (redis.ConnectionError, redis.TimeoutError)

    def __init__(
        self,
        url: str,
        *,
        secret: str | bytes,
        advertise_host: str | None = None,
        bind: str | None = None,
        lease: float = 10.0,
        read_timeout: float = 60.0,
        namespace: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        if not isinstance(secret, (str, bytes)) or not secret:
            raise ValueError(
                "RedisDirectory needs a non-empty secret, the same in every process:"
                " it signs the requests between processes"
            )
        super().__init__(
            lease=lease,
            read_timeout=read_timeout,
            secret=secret.encode() if isinstance(secret, str) else secret,
            tls=tls_files(tls_cert, tls_key, tls_ca),
        )
        self.url = url
        if namespace is None:
            namespace = os.environ.get(ENV_NAMESPACE) or namespace_for(secret)
        check_namespace(namespace)
        if advertise_host is None:
            advertise_host = os.environ.get(ENV_ADVERTISE) or None
        self.advertise_host: str | None = None
        self._advertise_port: int | None = None
        if advertise_host is not None:
            self.advertise_host, self._advertise_port = parse_advertise(advertise_host)
        if bind is None:
            bind = os.environ.get(ENV_BIND) or None
        self._bind = (None, None) if bind is None else parse_bind(bind)
        if self.advertise_host is not None:
            self._bind_for(self.advertise_host)  # a contradiction is said now
        self.namespace = namespace
        # One timeout per outage (the directory then answers 503 at once): no retry on a
        # timeout; one on a broken connection, the pool's socket to a Redis that restarted.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        self._redis = _client_of(url, 1.0, retry)
        self._probe_client = _client_of(url, 0.5, Retry(NoBackoff(), 0))
        self._prefix = "{" + namespace + "}:"
        self._keys = [self._prefix]  # the one key of every script: where a cluster runs it
        self._started = 0.0
        script = self._redis.register_script
        self._publish_script = script(scripts.PUBLISH)
        self._withdraw_script = script(scripts.WITHDRAW)
        self._forget_script = script(scripts.FORGET)
        self._renew_script = script(scripts.RENEW)
        self._republish_script = script(scripts.REPUBLISH)
        self._locate_script = script(scripts.LOCATE)
        self._current_script = script(scripts.CURRENT)

    def acl(self) -> str:
        """The Redis ACL rules a user of this deployment needs, and no more: its
        namespace's keys and channel, and the commands the directory sends (its Lua
        scripts' included), for ``ACL SETUSER <user> on ><password> <rules>``."""
        return " ".join(
            [
                "resetkeys",
                f"~{self._prefix}*",
                "resetchannels",
                f"&{self._channel}",
                "-@all",
                *(f"+{command}" for command in ACL_COMMANDS),
            ]
        )

    def __repr__(self) -> str:
        return f"<RedisDirectory url={shown_name(self.url)!r} owner={self.owner!r}>"

    @property
    def _channel(self) -> str:
        return f"{self._prefix}notices"

    # -- process ---------------------------------------------------------------------------

    def _new_owner(self) -> str:
        self._started = time.time()
        return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"

    def _bind_for(self, host: str) -> Bind:
        return bind_for(host, self._advertise_port, *self._bind)

    def _endpoint_address(self, owner: str) -> Bind:
        if self.advertise_host is None:
            self.advertise_host = route_to(self.url)
        if self.tls is None and not is_loopback(self.advertise_host):
            logger.warning(
                "the hop between processes at %s is clear text: the users' cookies and"
                " headers cross the network as they are; set the settings TLS_CERT, TLS_KEY"
                " and TLS_CA, the variables WSGI_PROXY_LISTEN_TLS_CERT, _TLS_KEY and"
                " _TLS_CA, or RedisDirectory(tls_cert=, tls_key=, tls_ca=)",
                self.advertise_host,
            )
        return self._bind_for(self.advertise_host)

    def _store_close(self) -> None:
        self._redis.close()
        self._probe_client.close()

    def _store_before_fork(self) -> None:
        pass  # redis-py's pools notice a fork themselves

    def _store_after_fork_in_parent(self) -> None:
        pass

    def _store_after_fork(self) -> None:
        reset_after_fork(self._redis)
        reset_after_fork(self._probe_client)

    # -- writes ----------------------------------------------------------------------------

    def _store_publish(self, session: str, entry: Owner) -> None:
        now = time.time()
        record = session_record(entry, now)
        self._publish_script(
            keys=self._keys,
            args=[
                session,
                entry.owner,
                entry.app or "",
                record,
                now,
                self._owner_record(),
                self._lease_ms,
            ],
        )

    def _store_withdraw(self, session: str, entry: Owner) -> None:
        self._withdraw_script(keys=self._keys, args=[session, entry.owner, entry.app or ""])

    def _store_forget(self, session: str, entry: Owner) -> bool:
        # An owner's lease runs ``lease`` from its last renewal, renewed every lease / 3:
        # one that has not renewed for a heartbeat (and half a second) missed one. The
        # owner's own lease is in its record; this one's is for a record without it.
        silent_after = self.lease - self.lease / 3 - 0.5
        forgotten = self._forget_script(
            keys=self._keys, args=[entry.owner, max(0, int(silent_after * 1000))]
        )
        return bool(forgotten)

    def _store_withdraw_all(self, entries: dict[str, Owner]) -> None:
        self._forget_script(keys=self._keys, args=[self.owner])

    def _owner_record(self) -> str:
        return encode_record(
            owner=self.owner,
            pid=os.getpid(),
            host=socket.gethostname(),
            address=self.address,
            started=self._started,
            lease=int(self.lease * 1000),  # in ms: how others judge this owner's silence
        )

    def _store_renew(self) -> bool:
        record = self._owner_record()
        return bool(self._renew_script(keys=self._keys, args=[self.owner, record, self._lease_ms]))

    def _store_republish(self, entries: dict[str, Owner]) -> list[str]:
        now = time.time()
        sessions = list(entries)
        taken: list[str] = []
        for start in range(0, len(sessions), _REPUBLISH_BATCH):
            args: list[object] = [self.owner, now]
            for session in sessions[start : start + _REPUBLISH_BATCH]:
                entry = entries[session]
                args += [session, entry.app or "", session_record(entry, now)]
            taken += (
                found.decode() for found in self._republish_script(keys=self._keys, args=args)
            )
        return taken

    @property
    def _lease_ms(self) -> int:
        return int(self.lease * 1000)

    def _store_lock(self, slug: str, seconds: float) -> bool:
        key = f"{self._prefix}start:{slug}"
        return bool(self._redis.set(key, self.owner, nx=True, px=int(seconds * 1000)))

    def _store_unlock(self, slug: str) -> None:
        self._redis.eval(scripts.DELETE_IF, 1, f"{self._prefix}start:{slug}", self.owner)

    def _store_first_use(self, key: str, seconds: float) -> bool:
        key = f"{self._prefix}used:{key}"
        return bool(self._redis.set(key, "1", nx=True, px=int(seconds * 1000)))

    # -- reads -----------------------------------------------------------------------------

    def _store_locate(self, session: str) -> Owner | None:
        found = self._locate_script(keys=self._keys, args=[session])
        if not isinstance(found, list):
            if found is not None:
                decode_record(found)  # a record of another version: said, and skipped
            return None
        return _location(found[0], found[1])

    def _store_entries(self) -> list[Entry]:
        return entries_in(self._redis, self.namespace)

    def _store_current(self, slug: str, skip: str = "") -> tuple[str, Owner] | None:
        found = self._current_script(keys=self._keys, args=[slug, skip])
        if not isinstance(found, list):
            return None
        location = _location(found[1], found[2])
        return None if location is None else (found[0].decode(), location)

    def _store_probe(self) -> None:
        self._probe_client.ping()

    def _check_access(self) -> None:
        """At start (the watcher's first act): whether the Redis user may do what the
        directory does, by writing this process's lease early; if not, one error line
        with the rules it needs. An outage is said by whoever meets it."""
        try:
            self._store_renew()
        except redis.RedisError as error:
            refused = isinstance(error, redis.exceptions.NoPermissionError) or str(
                error
            ).startswith(ACL_REFUSED_IN_SCRIPT)
            if not refused:
                return  # an outage: said by whoever meets it
            logger.error(
                "the Redis user of %r may not do what the directory does (%s): give it these"
                " rules, and no more: ACL SETUSER <user> on ><password> %s",
                self,
                error,
                self.acl(),
            )

    def _store_watch(self) -> None:
        self._check_access()
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                # Changes announced before the subscription were missed.
                self._forget_locations()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        session, _, owner = message["data"].decode().partition(" ")
                        self._notice(session, None if owner == "-" else owner)
            except self.unreachable as error:
                # The subscription is how an idle process learns of an outage: probe now,
                # so that its listeners are published again as soon as Redis is back.
                self._went_down(error)
                self._stop.wait(PROBE_INTERVAL)
            finally:
                pubsub.close()
