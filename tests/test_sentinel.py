"""Redis with Sentinel, as operators run it: one master, one replica, three sentinels, all
on 127.0.0.1, named by one ``redis+sentinel://`` URL. A failover under traffic costs a few
seconds of 503 at most, loses no entry, kills no thread, and listeners registered after it
are reached from every worker."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
import typing as t
from collections import Counter
from collections.abc import Iterator

import pytest
from werkzeug.test import Client

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.cluster import NO_REDIS, REDIS, SECRET
from .support.wire import free_port, stop, wait_until_listening
from .support.wsgi import Host

pytestmark = [pytest.mark.timeout(120)]


class Sentinels(t.NamedTuple):
    url: str
    sentinel_ports: list[int]
    data_ports: list[int]

    def master_port(self) -> int:
        import redis

        client = redis.Redis(port=self.sentinel_ports[0])
        try:
            # A plain client (not redis.Sentinel) gets the (host, port) pair back.
            address = client.sentinel_get_master_addr_by_name("main")
            assert isinstance(address, tuple), address
            _, port = address
            return int(port)
        finally:
            client.close()

    def fail_over(self) -> None:
        import redis

        client = redis.Redis(port=self.sentinel_ports[0])
        try:
            client.execute_command("SENTINEL", "FAILOVER", "main")
        finally:
            client.close()


@pytest.fixture(scope="module")
def sentinels() -> Iterator[Sentinels]:
    if REDIS is None:
        pytest.skip(NO_REDIS)
    server = REDIS
    master, replica = free_port(), free_port()
    watchers = [free_port() for _ in range(3)]
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as folder:

        def start(port: int, *arguments: str) -> None:
            process = subprocess.Popen(
                [server, *arguments],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=folder,
            )
            processes.append(process)
            wait_until_listening(process, port)

        try:
            common = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
            start(master, "--port", str(master), *common)
            start(replica, "--port", str(replica), *common, "--replicaof", "127.0.0.1", str(master))
            for port in watchers:
                config = os.path.join(folder, f"sentinel-{port}.conf")
                with open(config, "w") as written:
                    written.write(
                        f"port {port}\nbind 127.0.0.1\n"
                        f"sentinel monitor main 127.0.0.1 {master} 2\n"
                        "sentinel down-after-milliseconds main 1000\n"
                        "sentinel failover-timeout main 4000\n"
                        "sentinel parallel-syncs main 1\n"
                    )
                start(port, config, "--sentinel")
            hosts = ",".join(f"127.0.0.1:{port}" for port in watchers)
            made = Sentinels(f"redis+sentinel://{hosts}/main/0", watchers, [master, replica])
            deadline = time.monotonic() + 20  # the sentinels find the replica and each other
            while time.monotonic() < deadline:
                import redis

                client = redis.Redis(port=watchers[0])
                try:
                    info = client.sentinel_master("main")
                finally:
                    client.close()
                assert isinstance(info, dict), info  # a plain client gets the master's state
                if int(info.get("num-other-sentinels", 0)) >= 2 and int(info.get("num-slaves", 0)):
                    break
                time.sleep(0.2)
            yield made
        finally:
            for process in reversed(processes):
                stop(process)


def worker(url: str) -> tuple[t.Any, Registry, Client]:
    from wsgi_proxy_listen.cluster import RedisDirectory

    directory = RedisDirectory(url, secret=SECRET, lease=3)
    registry = Registry(directory=directory)
    client = Client(ProxyMiddleware(Host(), registry))
    client.get("/", buffered=True)
    return directory, registry, client


def test_a_failover_under_traffic_loses_nothing(sentinels: Sentinels) -> None:
    made = [worker(sentinels.url) for _ in range(2)]
    (a_directory, a, _), (b_directory, _, b) = made
    try:
        a.listen(lambda request: "before", session="before")
        assert b.get("/proxy/sessions/before/", buffered=True).data == b"before"
        first_master = sentinels.master_port()
        seen: Counter[int] = Counter()
        done = threading.Event()

        def traffic() -> None:
            while not done.is_set():
                seen[b.get("/proxy/sessions/before/", buffered=True).status_code] += 1
                time.sleep(0.02)

        load = threading.Thread(target=traffic)
        load.start()
        began = time.monotonic()
        sentinels.fail_over()
        try:
            while sentinels.master_port() == first_master:
                assert time.monotonic() - began < 20, "no failover"
                time.sleep(0.1)
            switched = time.monotonic() - began
            # Every process writes to the new master again: a listener registered now is
            # reached from the other worker.
            deadline = time.monotonic() + 15
            while True:
                try:
                    a.listen(lambda request: "after", session="after")
                    answer = b.get("/proxy/sessions/after/", buffered=True)
                    if answer.status_code == 200:
                        break
                except Exception:
                    pass
                assert time.monotonic() < deadline, "nothing reached after the failover"
                time.sleep(0.2)
            healed = time.monotonic() - began
            time.sleep(1.0)
        finally:
            done.set()
            load.join()
        print(
            f"\nfailover: master moved after {switched:.1f} s, a new listener reached after"
            f" {healed:.1f} s; answers meanwhile: {dict(seen)}"
        )
        assert set(seen) <= {200, 503}, seen
        assert b.get("/proxy/sessions/before/", buffered=True).data == b"before", "lost"
        # Once the old master is a replica for sure (and a lease has gone by), both
        # processes still write and renew on the new one.
        time.sleep(3.5)
        a.listen(lambda request: "later", session="later")
        assert b.get("/proxy/sessions/later/", buffered=True).data == b"later"
        assert b.get("/proxy/sessions/before/", buffered=True).data == b"before"
        for directory in (a_directory, b_directory):
            assert all(thread.is_alive() for thread in directory._threads), "a thread died"
    finally:
        for directory, _, _ in made:
            directory.close()


def test_a_sentinel_url_of_another_form_is_refused() -> None:
    from wsgi_proxy_listen.cluster import RedisDirectory

    for url in [
        "redis+sentinel://127.0.0.1:26379",
        "redis+sentinel:///main",
        "redis+sentinel://h:x/m",
    ]:
        with pytest.raises(ValueError, match="invalid Redis URL"):
            RedisDirectory(url, secret=SECRET)
