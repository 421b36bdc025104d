"""
Reaching Redis, and being reached
=================================

How a Redis directory connects to its server (a ``redis://``, ``rediss://`` or
``unix://`` URL, the sentinels of a ``redis+sentinel://`` one, or the nodes of a
Redis Cluster named by ``redis+cluster://``) and which
address its process advertises to the others: by default the one its machine
reaches Redis with.
"""

from __future__ import annotations

import logging
import socket
import typing as t
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..seam import shown_name

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEME",
    "Commands",
    "client",
    "cluster_nodes_of",
    "reset_after_fork",
    "route_to",
    "sentinels_of",
]

logger = logging.getLogger("wsgi_proxy_listen")


class Commands(t.Protocol):
    """What the directory uses of a redis-py client, typed as the directory reads it.

    redis-py's own annotations changed between releases (8.x typed what 5.x did not);
    checking against this instead keeps ``mypy --strict`` independent of the release.
    """

    connection_pool: t.Any  # a cluster's client has a pool per node instead

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
    def get_nodes(self) -> list[t.Any]: ...


SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def client(url: str, timeout: float, retry: Retry) -> Commands:
    # Every kind of client connects to its servers on the same terms.
    options: dict[str, t.Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": retry,
    }
    if url.lower().startswith(SENTINEL_SCHEME):
        return _sentinel_client(url, options)
    if url.lower().startswith(CLUSTER_SCHEMES):
        return _cluster_client(url, options)
    return t.cast(Commands, redis.Redis.from_url(url, **options))


def _hosts(url: str, default_port: int, what: str) -> list[tuple[str, int]]:
    """The ``host[:port]`` list of a URL's network location, after any ``user:password@``."""
    found = []
    for host in filter(None, urlsplit(url).netloc.rpartition("@")[2].split(",")):
        name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not colon:
            name, port = host, str(default_port)
        if not name or not port.isdigit():
            raise ValueError(f"the {what} {host!r} is no host[:port]")
        found.append((name.strip("[]"), int(port)))
    return found


def _credentials(url: str) -> tuple[str | None, str | None]:
    user, _, password = urlsplit(url).netloc.rpartition("@")[0].partition(":")
    return unquote(user) or None, unquote(password) or None


def sentinels_of(url: str) -> tuple[list[tuple[str, int]], str, int]:
    """The sentinels, the master's name and the database that a
    ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]`` URL
    names (a sentinel's port is 26379 unless given).

    :raises ValueError: a URL of another form.
    """
    parts = urlsplit(url)
    sentinels = _hosts(url, 26379, "sentinel")
    path = [piece for piece in parts.path.split("/") if piece]
    if not sentinels or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            "use redis+sentinel://host:26379,host2:26379/master-name/0 (the sentinels,"
            " the name of the master they watch, the database)"
        )
    return sentinels, path[0], int(path[1]) if len(path) == 2 else 0


def _sentinel_client(url: str, options: dict[str, t.Any]) -> Commands:
    """A client of the master that the sentinels of ``url`` name, found again after a
    failover (redis-py's :class:`~redis.sentinel.Sentinel`)."""
    sentinels, master, db = sentinels_of(url)
    user, password = _credentials(url)
    query = parse_qs(urlsplit(url).query)
    timeouts = {key: options[key] for key in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(
        sentinels,
        **timeouts,
        sentinel_kwargs={**timeouts, "password": query.get("sentinel_password", [None])[0]},
    )
    client = sentinel.master_for(master, db=db, username=user, password=password, **options)
    return t.cast(Commands, client)


def cluster_nodes_of(url: str) -> list[tuple[str, int]]:
    """The nodes that a ``redis+cluster://[[user]:password@]host[:port][,host[:port]...]``
    URL names to start from (port 6379 unless given; a cluster has database 0 only).

    :raises ValueError: a URL of another form.
    """
    nodes = _hosts(url, 6379, "cluster node")
    if not nodes or urlsplit(url).path.strip("/") not in ("", "0"):
        raise ValueError(
            "use redis+cluster://host:6379,host2:6379 (some of the cluster's nodes; a"
            " cluster has database 0 only), or rediss+cluster:// for TLS"
        )
    return nodes


_CLUSTER_TLS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _cluster_client(url: str, options: dict[str, t.Any]) -> Commands:
    """A client of a Redis Cluster that finds the node holding each key's slot, and
    finds it again when the slot moves (redis-py's :class:`~redis.cluster.RedisCluster`).
    ``rediss+cluster://`` speaks TLS, with ``?ssl_ca_certs=`` (``ssl_certfile``,
    ``ssl_keyfile``) as for ``rediss://``."""
    from redis.cluster import ClusterNode, RedisCluster

    user, password = _credentials(url)
    query = {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}
    tls: dict[str, t.Any] = {}
    if url.lower().startswith("rediss+"):
        tls = {"ssl": True, **{key: query[key] for key in _CLUSTER_TLS if key in query}}
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes_of(url)],
        username=user,
        password=password,
        **options,
        **tls,
    )
    return t.cast(Commands, client)


def reset_after_fork(client: Commands) -> None:
    """Drop the connections a forked child inherited (each node's, for a cluster)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.reset()
        return
    for node in client.get_nodes():
        if node.redis_connection is not None:
            node.redis_connection.connection_pool.reset()


def route_to(url: str) -> str:
    """The address this machine uses to reach the Redis server of ``url``: the one the
    routing table picks (a UDP socket's connect sends nothing)."""
    if url.lower().startswith(SENTINEL_SCHEME):
        host, port = sentinels_of(url)[0][0]  # the first sentinel: on the same network
    elif url.lower().startswith(CLUSTER_SCHEMES):
        host, port = cluster_nodes_of(url)[0]
    else:
        parts = urlsplit(url)
        if parts.scheme == "unix" or not parts.hostname:
            return "127.0.0.1"
        host, port = parts.hostname, parts.port or 6379
    try:
        family, _, _, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(where)
            return str(probe.getsockname()[0])
    except OSError:
        logger.warning(
            "cannot tell which address reaches the Redis server %s: advertising 127.0.0.1"
            " (set WSGI_PROXY_LISTEN_ADVERTISE)",
            shown_name(url),
        )
        return "127.0.0.1"
