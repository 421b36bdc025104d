"""Redis Cluster, as operators run it: three masters on 127.0.0.1, named by one
``redis+cluster://`` URL. Every key of a deployment carries its namespace as a hash tag,
so one node holds the whole directory and every script runs there, whichever master
that is: each test runs once for a namespace on each master."""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
import typing as t
from collections.abc import Iterator

import pytest
from werkzeug.test import Client

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.naming import ENV_SECRET

from .support.cluster import NO_REDIS, REDIS, SECRET
from .support.wire import free_port, stop, wait_until_listening
from .support.wsgi import Host

pytestmark = [pytest.mark.timeout(60)]

SLOTS = 16384


class Cluster(t.NamedTuple):
    ports: list[int]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])

    def master_of(self, namespace: str) -> int:
        """The port of the master whose slots hold ``namespace``'s keys."""
        from redis.crc import key_slot

        slot = key_slot(f"{{{namespace}}}:".encode())
        return self.ports[slot * len(self.ports) // SLOTS]

    def keys_by_node(self) -> dict[int, list[str]]:
        import redis

        found = {}
        for port in self.ports:
            client = redis.Redis(port=port)
            try:
                found[port] = sorted(key.decode() for key in t.cast("list[bytes]", client.keys()))
            finally:
                client.close()
        return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if REDIS is None:
        pytest.skip(NO_REDIS)
    import redis

    ports = [free_port() for _ in range(3)]
    buses = [free_port() for _ in range(3)]
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as folder:
        try:
            for port, bus in zip(ports, buses, strict=True):
                process = subprocess.Popen(
                    [
                        REDIS,
                        *("--port", str(port), "--bind", "127.0.0.1"),
                        *("--cluster-enabled", "yes", "--cluster-port", str(bus)),
                        *("--cluster-config-file", f"nodes-{port}.conf"),
                        *("--cluster-node-timeout", "1000"),
                        *("--save", "", "--appendonly", "no"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=folder,
                )
                processes.append(process)
                wait_until_listening(process, port)
            # Each master its third of the slots, in order; then they meet.
            for index, port in enumerate(ports):
                client = redis.Redis(port=port)
                try:
                    first, last = index * SLOTS // 3, (index + 1) * SLOTS // 3 - 1
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                    if index:
                        client.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0], buses[0])
                finally:
                    client.close()
            deadline = time.monotonic() + 20
            for port in ports:
                client = redis.Redis(port=port)
                try:
                    while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        assert time.monotonic() < deadline, "the cluster never came up"
                        time.sleep(0.1)
                finally:
                    client.close()
            yield Cluster(ports)
        finally:
            for process in processes:
                stop(process)


def namespace_on(cluster: Cluster, index: int) -> str:
    """A namespace whose keys the ``index``-th master holds."""
    for number in range(1000):
        name = f"deployment-{number}"
        if cluster.master_of(name) == cluster.ports[index]:
            return name
    raise AssertionError("no namespace on that master")


class Worker(t.NamedTuple):
    directory: t.Any
    registry: Registry
    client: Client


def worker(url: str, namespace: str) -> Worker:
    from wsgi_proxy_listen.cluster import RedisDirectory

    directory = RedisDirectory(url, secret=SECRET, lease=3, namespace=namespace)
    registry = Registry(directory=directory)
    client = Client(ProxyMiddleware(Host(), registry))
    client.get("/", buffered=True)  # starts the endpoint and the threads
    return Worker(directory, registry, client)


@pytest.mark.parametrize("master", [0, 1, 2])
def test_a_deployment_works_whichever_master_holds_its_slot(
    cluster: Cluster, master: int, caplog: pytest.LogCaptureFixture
) -> None:
    namespace = namespace_on(cluster, master)
    a, b = worker(cluster.url, namespace), worker(cluster.url, namespace)
    with caplog.at_level(logging.WARNING, "wsgi_proxy_listen"):
        try:
            listener = a.registry.listen(lambda request: "from a", session="s1")
            a.registry.listen(lambda request: "member", session="m1", app="dash")
            assert b.client.get("/proxy/sessions/s1/").get_data() == b"from a"
            assert b.client.get("/proxy/apps/dash/").get_data() == b"member"
            listed = {(entry.session, entry.app) for entry in b.directory.entries()}
            assert listed == {("s1", None), ("m1", "dash")}
            # Every key of the deployment is on the master that holds its slot.
            held = cluster.keys_by_node()
            home = cluster.master_of(namespace)
            assert held[home]
            assert all(key.startswith(f"{{{namespace}}}:") for key in held[home])
            assert not any(
                key.startswith(f"{{{namespace}}}:")
                for port, keys in held.items()
                if port != home
                for key in keys
            )
            listener.close()
            deadline = time.monotonic() + 3
            while b.client.get("/proxy/sessions/s1/").status_code != 404:
                assert time.monotonic() < deadline, "s1 was never withdrawn"
                time.sleep(0.05)
            # Taken over by b: a hears of it on the channel, and stops serving it.
            b.registry.listen(lambda request: "from b", session="m1", app="dash")
            deadline = time.monotonic() + 3
            while a.client.get("/proxy/sessions/m1/").get_data() != b"from b":
                assert time.monotonic() < deadline, "a never heard of the take-over"
                time.sleep(0.05)
        finally:
            a.directory.close()
            b.directory.close()
            a.registry.close()
            b.registry.close()
    # Leaving withdraws every entry (one script: no CROSSSLOT), and nothing said a word.
    left = [key for keys in cluster.keys_by_node().values() for key in keys if namespace in key]
    assert not [key for key in left if ":session:" in key or ":owner:" in key], left
    assert [record.getMessage() for record in caplog.records] == []


def test_entries_written_again_after_the_lease_ran_out(cluster: Cluster) -> None:
    """The republishing script runs for many sessions at once, in the deployment's slot."""
    import redis

    namespace = namespace_on(cluster, 1)
    a, b = worker(cluster.url, namespace), worker(cluster.url, namespace)
    try:
        for number in range(600):  # more than one batch
            a.registry.listen(lambda request: "back", session=f"s{number}")
        client = redis.Redis(port=cluster.master_of(namespace))
        try:
            client.delete(*client.keys(f"{{{namespace}}}:*"))  # as if it had lost its lease
        finally:
            client.close()
        deadline = time.monotonic() + 5  # a renewal every second (lease 3 s)
        while len(b.directory.entries()) < 600:
            assert time.monotonic() < deadline, "never written again"
            time.sleep(0.1)
        assert b.client.get("/proxy/sessions/s599/").get_data() == b"back"
    finally:
        a.directory.close()
        b.directory.close()
        a.registry.close()
        b.registry.close()


def test_a_cluster_named_by_a_plain_url_says_what_to_name_it_by(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A node of a cluster named by ``redis://`` answers MOVED for the slots it does not
    hold: the log says to name the cluster by ``redis+cluster://``."""
    namespace = namespace_on(cluster, 2)
    elsewhere = cluster.ports[0]  # not the master of that namespace
    with caplog.at_level(logging.ERROR, "wsgi_proxy_listen"):
        a = worker(f"redis://127.0.0.1:{elsewhere}/0", namespace)
        try:
            a.registry.listen(lambda request: "x", session="s1")
            deadline = time.monotonic() + 5
            while "redis+cluster://" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
        finally:
            a.directory.close()
            a.registry.close()
    assert "a node of a Redis Cluster" in caplog.text


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "use redis\\+cluster://host:6379"),
        ("redis+cluster://127.0.0.1:7000/3", "a cluster has database 0 only"),
        ("redis+cluster://127.0.0.1:x", "is no host\\[:port\\]"),
    ],
)
def test_a_wrong_cluster_url_is_refused(url: str, message: str) -> None:
    from wsgi_proxy_listen.cluster import RedisDirectory

    with pytest.raises(ValueError, match=message):
        RedisDirectory(url, secret=SECRET)


def test_status_reads_a_cluster_without_the_secret(cluster: Cluster) -> None:
    """The operator's status and check find a deployment's entries on whichever master
    holds its slot, without its secret (every namespace with a live process)."""
    import json
    import subprocess
    import sys

    namespace = namespace_on(cluster, 2)
    a = worker(cluster.url, namespace)
    try:
        a.registry.listen(lambda request: "x", session="listed")
        command = [sys.executable, "-m", "wsgi_proxy_listen"]
        env = {key: value for key, value in os.environ.items() if key != ENV_SECRET}
        found = subprocess.run(
            [*command, "status", cluster.url, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=env,
        )
        rows = [(row["namespace"], row["session"]) for row in json.loads(found.stdout)]
        assert (namespace, "listed") in rows
        checked = subprocess.run(
            [*command, "check", cluster.url, "--namespace", namespace],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=env,
        )
        assert checked.stdout.endswith(f"namespace {namespace}: 1 listener in 1 process\n")
    finally:
        a.directory.close()
        a.registry.close()
