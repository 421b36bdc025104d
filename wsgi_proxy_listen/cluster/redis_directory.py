"""
The Redis directory
===================

Shares listeners between processes on several machines through a Redis (or
Valkey) server; each process's internal endpoint is a TCP port on
``advertise_host``, and hop requests are signed with the shared secret.

.. code-block:: python

    from wsgi_proxy_listen import Registry

    registry = Registry(directory="redis://10.0.0.5:6379/0", secret=os.environ["SECRET"])

Needs the extra ``pip install wsgi-proxy-listen[redis]``. Redis keys
(``{namespace}`` defaults to ``wsgi-proxy-listen``):

====================================  =====================================================
``{namespace}:session:{id}``          ``"{owner id} {address} {app} {time}"``, the lease as TTL
``{namespace}:app:{slug}``            sorted set of member sessions, scored by join time
``{namespace}:start:{slug}``          the cluster-wide auto-start lock
``{namespace}:notices``               pub/sub channel: ``"{session} {new owner id or -}"``
====================================  =====================================================
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import typing as t

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..seam import Entry, shown_name
from .directory import SharedDirectory
from .health import PROBE_INTERVAL
from .store import Owner

__all__ = ["RedisDirectory"]

# Delete a session's entry only while it is this one: the same owner, address and app
# (ARGV[1] is what _identity() gives); then leave its app and tell every process.
_WITHDRAW = """
local v = redis.call('get', KEYS[1])
if not v or string.sub(v, 1, string.len(ARGV[1])) ~= ARGV[1] then return 0 end
redis.call('del', KEYS[1])
if ARGV[2] ~= '' then redis.call('zrem', KEYS[2], ARGV[3]) end
redis.call('publish', KEYS[3], ARGV[3] .. ' -')
return 1
"""
# Renew the lease of the entry (ARGV[4] is what _identity() gives), keeping when it was
# published; write it again where it is missing (an outage outlasted its lease) or this
# owner's entry says something else (2); -1 if another owner has it now (ARGV[3] is
# "{owner id} ").
_RENEW = """
local v = redis.call('get', KEYS[1])
if v then
    if string.sub(v, 1, string.len(ARGV[3])) ~= ARGV[3] then return -1 end
    if string.sub(v, 1, string.len(ARGV[4])) == ARGV[4] then
        redis.call('pexpire', KEYS[1], ARGV[2])
        return 1
    end
end
redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
return 2
"""
_DELETE_IF = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class _Commands(t.Protocol):
    """What the directory uses of a redis-py client, typed as the directory reads it.

    redis-py's own annotations changed between releases (8.x typed what 5.x did not);
    checking against this instead keeps ``mypy --strict`` independent of the release.
    """

    connection_pool: t.Any

    def get(self, name: str) -> bytes | None: ...
    def set(self, name: str, value: str, **options: t.Any) -> t.Any: ...
    def mget(self, keys: t.Sequence[str | bytes]) -> list[bytes | None]: ...
    def zadd(self, name: str, mapping: dict[str, float]) -> t.Any: ...
    def zrem(self, name: str, *values: str) -> t.Any: ...
    def zrevrange(self, name: str, start: int, end: int) -> list[bytes]: ...
    def publish(self, channel: str, message: str) -> t.Any: ...
    def ping(self) -> t.Any: ...
    def eval(self, script: str, numkeys: int, *keys_and_args: str) -> t.Any: ...
    def scan_iter(self, match: str, count: int) -> t.Iterator[bytes]: ...
    def pipeline(self, transaction: bool) -> t.Any: ...
    def pubsub(self, ignore_subscribe_messages: bool) -> t.Any: ...
    def register_script(self, script: str) -> t.Callable[..., t.Any]: ...
    def close(self) -> None: ...


def _client(url: str, timeout: float, retry: Retry) -> _Commands:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=retry
    )
    return t.cast(_Commands, client)


def _identity(entry: Owner) -> str:
    """What tells one entry from another: all of its value but the time."""
    return f"{entry.owner} {entry.address} {entry.app or ''} "


def _encode(entry: Owner) -> str:
    return f"{_identity(entry)}{time.time():.3f}"


def _fields(value: bytes | str) -> list[str]:
    text = value.decode() if isinstance(value, bytes) else value
    return [*text.split(" "), "", "", ""][:4]


def _decode(value: bytes | str | None) -> Owner | None:
    if value is None:
        return None
    owner, address, app, _ = _fields(value)
    return Owner(owner, address, app or None)


def _pid(owner: str) -> int | None:
    """The process id in an owner id, ``{host name}-{pid}-{token}``."""
    parts = owner.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


class RedisDirectory(SharedDirectory):
    """A directory in Redis, for processes on several machines.

    :param url: the Redis server: ``redis://``, ``rediss://`` or ``unix://``.
    :param secret: signs the hop between processes; required, non-empty, the
        same in every process and host.
    :param advertise_host: the address other processes reach this one at (a
        LAN address across hosts); the internal endpoint binds to it.
    :param lease: seconds a registration outlives a silent owner.
    :param read_timeout: seconds a hop waits for the owner's answer (then 504).
    :param namespace: prefix of the Redis keys, to share one Redis between hosts.
    """

    unreachable = (redis.ConnectionError, redis.TimeoutError)

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
        if not isinstance(secret, (str, bytes)) or not secret:
            raise ValueError(
                "RedisDirectory needs a non-empty secret, the same in every process:"
                " it signs the requests between processes"
            )
        super().__init__(
            lease=lease,
            read_timeout=read_timeout,
            secret=secret.encode() if isinstance(secret, str) else secret,
        )
        self.url = url
        self.advertise_host = advertise_host
        self.namespace = namespace
        # One timeout per outage (the directory then answers 503 at once): no retry on a
        # timeout; one on a broken connection, the pool's socket to a Redis that restarted.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        try:
            self._redis = _client(url, 1.0, retry)
            self._probe_client = _client(url, 0.5, Retry(NoBackoff(), 0))
        except ValueError as error:
            shown = shown_name(url)
            # What the parser says of a URL with a password may quote a piece of it.
            why = (
                str(error)
                if shown == url
                else "it does not parse (percent-encode any / # ? @ [ in the password)"
            )
            raise ValueError(f"invalid Redis URL {shown!r}: {why}") from None
        self._withdraw_script = self._redis.register_script(_WITHDRAW)
        self._renew_script = self._redis.register_script(_RENEW)

    def __repr__(self) -> str:
        return f"<RedisDirectory url={shown_name(self.url)!r} owner={self.owner!r}>"

    def _key(self, session: str) -> str:
        return f"{self.namespace}:session:{session}"

    def _app_key(self, slug: str) -> str:
        return f"{self.namespace}:app:{slug}"

    @property
    def _channel(self) -> str:
        return f"{self.namespace}:notices"

    # -- process ---------------------------------------------------------------------------

    def _new_owner(self) -> str:
        return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"

    def _endpoint_address(self, owner: str) -> str:
        return self.advertise_host

    def _store_close(self) -> None:
        self._redis.close()
        self._probe_client.close()

    def _store_before_fork(self) -> None:
        pass  # redis-py's pools notice a fork themselves

    def _store_after_fork_in_parent(self) -> None:
        pass

    def _store_after_fork(self) -> None:
        self._redis.connection_pool.reset()
        self._probe_client.connection_pool.reset()

    # -- writes ----------------------------------------------------------------------------

    def _store_publish(self, session: str, entry: Owner) -> None:
        key = self._key(session)
        previous = _decode(self._redis.set(key, _encode(entry), px=self._lease_ms, get=True))
        if entry.app is not None:
            self._redis.zadd(self._app_key(entry.app), {session: time.time()})
        if previous is not None and previous.app not in (None, entry.app):
            self._redis.zrem(self._app_key(previous.app), session)
        if previous is not None and previous.owner != entry.owner:
            self._redis.publish(self._channel, f"{session} {entry.owner}")

    def _withdraw_args(self, session: str, entry: Owner) -> dict[str, t.Any]:
        return {
            "keys": [self._key(session), self._app_key(entry.app or ""), self._channel],
            "args": [_identity(entry), entry.app or "", session],
        }

    def _store_withdraw(self, session: str, entry: Owner) -> None:
        self._withdraw_script(**self._withdraw_args(session, entry))

    def _store_forget(self, session: str, entry: Owner) -> None:
        self._withdraw_script(**self._withdraw_args(session, entry))

    def _store_withdraw_all(self, entries: dict[str, Owner]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for session, entry in entries.items():
            self._withdraw_script(**self._withdraw_args(session, entry), client=pipe)
        pipe.execute()

    def _store_renew(self, entries: dict[str, Owner]) -> list[str]:
        if not entries:
            self._redis.ping()
            return []
        pipe = self._redis.pipeline(transaction=False)
        sessions = list(entries)
        for session in sessions:
            self._renew_script(
                keys=[self._key(session)],
                args=[
                    _encode(entries[session]),
                    self._lease_ms,
                    f"{self.owner} ",
                    _identity(entries[session]),
                ],
                client=pipe,
            )
        taken = []
        for session, renewed in zip(sessions, pipe.execute(), strict=True):
            app = entries[session].app
            if renewed == -1:
                taken.append(session)
            elif renewed == 2 and app is not None:
                # Written again (expired during an outage): rejoin the app.
                self._redis.zadd(self._app_key(app), {session: time.time()})
        return taken

    @property
    def _lease_ms(self) -> int:
        return int(self.lease * 1000)

    def _store_lock(self, slug: str, seconds: float) -> bool:
        key = f"{self.namespace}:start:{slug}"
        return bool(self._redis.set(key, self.owner, nx=True, px=int(seconds * 1000)))

    def _store_unlock(self, slug: str) -> None:
        self._redis.eval(_DELETE_IF, 1, f"{self.namespace}:start:{slug}", self.owner)

    # -- reads -----------------------------------------------------------------------------

    def _store_locate(self, session: str) -> Owner | None:
        return _decode(self._redis.get(self._key(session)))

    def _store_changed(self) -> bool:
        return False  # every change is announced on the channel (see _watch)

    def _store_entries(self) -> list[Entry]:
        prefix = self._key("")
        keys = list(self._redis.scan_iter(match=f"{prefix}*", count=1000))
        entries = []
        for key, value in zip(keys, self._redis.mget(keys) if keys else [], strict=True):
            if value is None:
                continue  # expired between the scan and the read
            owner, address, app, since = _fields(value)
            session = key.decode()[len(prefix) :]
            entries.append(
                Entry(session, app or None, owner, _pid(owner), address, float(since or 0))
            )
        return sorted(entries, key=lambda entry: entry.since)

    def _store_current(self, slug: str) -> tuple[str, Owner] | None:
        key = self._app_key(slug)
        members = [member.decode() for member in self._redis.zrevrange(key, 0, 15)]
        if not members:
            return None
        values = self._redis.mget([self._key(member) for member in members])
        stale: list[str] = []
        found = None
        for member, value in zip(members, values, strict=True):
            entry = _decode(value)
            if entry is not None and entry.app == slug:
                found = member, entry
                break
            stale.append(member)
        if stale:
            self._redis.zrem(key, *stale)
        return found

    def _store_probe(self) -> None:
        self._probe_client.ping()

    def _store_watch(self) -> None:
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
            except self.unreachable:
                # The subscription is how an idle process learns of an outage: probe now,
                # so that its listeners are published again as soon as Redis is back.
                self._went_down()
                self._stop.wait(PROBE_INTERVAL)
            finally:
                pubsub.close()
