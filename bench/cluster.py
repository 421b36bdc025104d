"""The hop between processes, on both directories, through ``gunicorn -w 4``, to a web
worker and to a runtime.

    python -m bench.cluster            # needs redis-server for the Redis half; a few minutes
    python -m bench.cluster --quick    # a smoke run

Two gunicorn instances share one directory: host A (one worker) owns a
session registered at run time; every request for it through host B (four
gthread workers) takes the hop to A. The local case is a listener registered
at start-up, which every worker of B has. Both are requested through B over
keep-alive connections: sequentially for latency (median and p99,
interleaved), then from 8 client threads for throughput.

The breakdown times the pieces of one hop in this process (``timeit``, best
of several rounds), and the round trips between two processes: a bare
``http.client`` to ``http.server`` exchange (the floor of any HTTP hop), and
a whole hop to an owner process answering from a listener.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import timeit
import typing as t

from tests.support.cluster import (
    REDIS,
    SECRET,
    RedisServer,
    gunicorn,
    short_folder,
    start_session,
)

PATHS = {
    "local": "/proxy/sessions/everywhere/",
    "forwarded": "/proxy/sessions/remote/",
    "runtime": "/proxy/sessions/runtime/",
}
# A runtime: a plain Python process, connected by the environment, that only listens.
_RUNTIME = """
from wsgi_proxy_listen import listen, serve_forever
listen(lambda request: f"runtime path {request.path}", session="runtime")
print("ready", flush=True)
serve_forever()
"""


class Figures(t.NamedTuple):
    median_us: dict[str, float]
    p99_us: dict[str, float]
    rate: dict[str, float]


def latencies(port: int, count: int) -> dict[str, list[float]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples: dict[str, list[float]] = {name: [] for name in PATHS}
    for _ in range(count):
        for name, path in PATHS.items():
            began = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            samples[name].append(time.perf_counter() - began)
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}")
    connection.close()
    return samples


def throughput(port: int, path: str, seconds: float, clients: int = 8) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}")
            done[index] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - began)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.99)]


@contextlib.contextmanager
def runtime(directory: str) -> t.Iterator[None]:
    env = {**os.environ, "WSGI_PROXY_LISTEN_DIRECTORY": directory}
    env.pop("WSGI_PROXY_LISTEN_SECRET", None)
    if not directory.startswith("/"):
        env["WSGI_PROXY_LISTEN_SECRET"] = SECRET  # as tests.support.cluster.gunicorn does
    process = subprocess.Popen(
        [sys.executable, "-c", _RUNTIME], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        t.cast(t.IO[str], process.stdout).readline()
        yield
    finally:
        process.terminate()
        process.wait(10)
        t.cast(t.IO[str], process.stdout).close()


def measure(directory: str, count: int, seconds: float) -> Figures:
    with (
        gunicorn(directory, workers=1) as host_a,
        gunicorn(directory, workers=4) as host_b,
        runtime(directory),
    ):
        start_session(host_a, "remote")
        latencies(host_b.port, 200)  # warm the pools and caches
        samples = latencies(host_b.port, count)
        rates = {name: throughput(host_b.port, path, seconds) for name, path in PATHS.items()}
    return Figures(
        {name: statistics.median(values) * 1e6 for name, values in samples.items()},
        {name: p99(values) * 1e6 for name, values in samples.items()},
        rates,
    )


# -- the breakdown -----------------------------------------------------------------------------


def best_us(statement: t.Callable[[], object], number: int = 2000, rounds: int = 7) -> float:
    return min(timeit.repeat(statement, number=number, repeat=rounds)) / number * 1e6


def environ_of_a_request() -> dict[str, t.Any]:
    from werkzeug.test import EnvironBuilder

    environ: dict[str, t.Any] = EnvironBuilder(
        "/proxy/sessions/remote/",
        headers=[("User-Agent", "curl/8.0"), ("Accept", "*/*"), ("Cookie", "session=abc")],
    ).get_environ()
    environ["REQUEST_URI"] = "/proxy/sessions/remote/"
    return environ


def piece_timings() -> list[tuple[str, float]]:
    """The CPU pieces of one hop that need no other process, timed in this process."""
    from email.message import Message

    from wsgi_proxy_listen.cluster.hop import Verifier, pack, signed_headers, unpack

    environ = environ_of_a_request()
    meta = pack(environ, "remote", "/proxy")
    secret = b"bench-secret"
    verify = Verifier(secret, "owner-1")

    def sign_and_verify() -> None:
        message = Message()
        for name, value in signed_headers(secret, "owner-1", "GET", meta).items():
            message[name] = value
        verify("GET", meta, message)

    return [
        ("pack the environ (JSON)", best_us(lambda: pack(environ, "remote", "/proxy"))),
        ("unpack it in the owner", best_us(lambda: unpack(meta))),
        ("sign + verify, once per connection (Redis)", best_us(sign_and_verify)),
    ]


def lookup_timings(folder: str) -> list[tuple[str, float]]:
    """Finding a listener of another process in the embedded directory (the owner runs
    in a process of its own): from the cached location, and from the table."""
    from wsgi_proxy_listen import ProxyMiddleware, Registry

    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, folder], stdout=subprocess.PIPE, text=True
    )
    try:
        t.cast(t.IO[str], owner.stdout).readline()
        registry = Registry(directory=folder)
        ProxyMiddleware(lambda environ, start_response: [], registry)
        directory = registry.directory
        assert directory is not None
        bodiless = environ_of_a_request()
        with_body = {**bodiless, "CONTENT_LENGTH": "5"}  # always asks the table
        rows = [
            (
                "embedded: find it, cached location (data_version + dict)",
                best_us(lambda: directory.locate("remote", bodiless)),
            ),
            (
                "embedded: find it in the table (SELECT)",
                best_us(lambda: directory.locate("remote", with_body)),
            ),
        ]
        directory.close()
        return rows
    finally:
        owner.kill()
        owner.wait()


_OWNER = """
import sys, time
from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.naming import open_directory
directory = open_directory(sys.argv[1], secret=sys.argv[2] if len(sys.argv) > 2 else None)
registry = Registry(directory=directory)
middleware = ProxyMiddleware(lambda e, s: [], registry)
directory.start_serving()
registry.listen(lambda request: "hello", session="remote")
print(directory.address, directory.owner, flush=True)
time.sleep(600)
"""

_BARE = """
import socketserver, sys
from http.server import BaseHTTPRequestHandler
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_GET(self):
        self.send_response_only(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")
class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
server = Server(sys.argv[1], Handler)  # listening before it says so
print("ready", flush=True)
server.serve_forever()
"""


def ignore_start(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
    return None


def median_us(call: t.Callable[[], object], count: int) -> float:
    for _ in range(200):
        call()
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1e6


def round_trips(folder: str, redis_url: str | None, count: int) -> list[tuple[str, float]]:
    """Median round trips between this process and another: a bare HTTP exchange over a
    Unix socket, and whole hops to an owner on each directory."""
    from wsgi_proxy_listen.cluster.hop import Connection, HopClient

    bare_socket = os.path.join(folder, "bare.sock")
    bare = subprocess.Popen(
        [sys.executable, "-c", _BARE, bare_socket], stdout=subprocess.PIPE, text=True
    )
    owners = {"embedded": folder, "redis": redis_url}
    processes = [bare]
    try:
        t.cast(t.IO[str], bare.stdout).readline()
        connection = Connection(bare_socket, 1.0, 10.0)

        def bare_exchange() -> None:
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            response.close()

        rows = [("bare http.client -> http.server exchange", median_us(bare_exchange, count))]
        environ = environ_of_a_request()
        for kind, name in owners.items():
            if name is None:
                continue
            secret = ["bench-secret"] if kind == "redis" else []
            owner = subprocess.Popen(
                [sys.executable, "-c", _OWNER, name, *secret], stdout=subprocess.PIPE, text=True
            )
            processes.append(owner)
            address, owner_id = t.cast(t.IO[str], owner.stdout).readline().split()
            client = HopClient(b"bench-secret" if kind == "redis" else None, 10.0)

            def hop(client: HopClient = client, owner: str = owner_id, at: str = address) -> None:
                environ["wsgi.input"] = io.BytesIO()
                answer = client.forward(owner, at, "remote", "/proxy", environ, ignore_start)
                for _ in t.cast(t.Iterable[bytes], answer):
                    pass
                t.cast(t.Any, answer).close()

            where = "Unix socket" if kind == "embedded" else "TCP"
            rows.append((f"{kind}: whole hop to a listener ({where})", median_us(hop, count)))
            client.clear()
    finally:
        for process in processes:
            process.kill()
            process.wait()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    quick = parser.parse_args().quick
    count, seconds = (200, 1.0) if quick else (3000, 10.0)
    folder = short_folder()
    server = RedisServer() if REDIS is not None else None
    results: dict[str, Figures] = {}
    try:
        results["embedded"] = measure(folder, count, seconds)
        if server is not None:
            server.start()
            results["redis"] = measure(server.url, count, seconds)
        pieces = piece_timings() + lookup_timings(folder)
        trips = round_trips(folder, None if server is None else server.url, 300 if quick else 3000)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    print(
        "host B: gunicorn -w 4, gthread, 4 threads; owners: host A (forwarded),"
        " a runtime process (runtime); one machine"
    )
    print(f"{count} interleaved sequential requests per case; 8 clients for {seconds:.0f} s\n")
    print(f"{'directory':10} {'case':10} {'median µs':>10} {'p99 µs':>8} {'requests/s':>11}")
    for kind, figures in results.items():
        for name in PATHS:
            print(
                f"{kind:10} {name:10} {figures.median_us[name]:10.0f} {figures.p99_us[name]:8.0f}"
                f" {figures.rate[name]:11.0f}"
            )
    header = f"{'extra median µs':>16} {'extra p99 µs':>13} {'owner/local':>12}"
    print(f"\n{'directory, owner':20} {header}")
    for kind, figures in results.items():
        for owner in ("forwarded", "runtime"):
            extra = figures.median_us[owner] - figures.median_us["local"]
            extra_p99 = figures.p99_us[owner] - figures.p99_us["local"]
            ratio = figures.rate[owner] / figures.rate["local"]
            print(f"{kind + ' ' + owner:20} {extra:16.0f} {extra_p99:13.0f} {ratio:12.2f}")
    print("goals: extra median <= 300 µs, extra p99 <= 1000 µs, owner/local >= 0.4")
    print(f"\n{'breakdown of one hop':56} {'µs':>6}")
    for name, value in [*pieces, *trips]:
        print(f"{name:56} {value:6.1f}")
    if REDIS is None:
        print("\nno redis-server: the Redis half was not measured")


if __name__ == "__main__":
    main()
