"""Forwarded request vs local dispatch through the same ``gunicorn -w 4``.

    python -m bench.cluster     # needs redis-server; about a minute

Two gunicorn instances share one Redis: host A (one worker) owns a session
registered at run time; every request for it through host B (four workers)
takes the hop to A. The local case is a listener registered at start-up, which
every worker of B has. Both are requested through B, over keep-alive
connections: sequentially for latency (median and p99, interleaved), then from
8 client threads for throughput.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time

from tests.test_cluster import RedisServer, gunicorn, start_session

PATHS = {"local": "/proxy/sessions/everywhere/", "forwarded": "/proxy/sessions/remote/"}


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
            assert response.status == 200
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
            assert response.status == 200
            done[index] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - began)


def main() -> None:
    redis_server = RedisServer()
    redis_server.start()
    try:
        with (
            gunicorn(redis_server.url, workers=1) as host_a,
            gunicorn(redis_server.url, workers=4) as host_b,
        ):
            start_session(host_a, "remote")
            latencies(host_b.port, 200)  # warm the pools
            samples = latencies(host_b.port, 3000)
            rates = {name: throughput(host_b.port, path, 10.0) for name, path in PATHS.items()}
    finally:
        redis_server.stop()
    print("gunicorn -w 4 (host B), gthread, 4 threads; owner in host A; loopback\n")
    print(f"{'case':12} {'median µs':>10} {'p99 µs':>10} {'requests/s':>11}")
    for name in PATHS:
        values = sorted(samples[name])
        median = statistics.median(values) * 1e6
        p99 = values[int(len(values) * 0.99)] * 1e6
        print(f"{name:12} {median:10.0f} {p99:10.0f} {rates[name]:11.0f}")
    extra_median = statistics.median(samples["forwarded"]) - statistics.median(samples["local"])
    extra_p99 = (
        sorted(samples["forwarded"])[int(len(samples["forwarded"]) * 0.99)]
        - sorted(samples["local"])[int(len(samples["local"]) * 0.99)]
    )
    print(
        f"\nextra latency of the hop: median {extra_median * 1e6:.0f} µs,"
        f" p99 {extra_p99 * 1e6:.0f} µs (goal: median under 1000 µs)"
    )
    print(
        f"forwarded / local throughput: {rates['forwarded'] / rates['local']:.2f}"
        " (goal: at least 0.5)"
    )


if __name__ == "__main__":
    main()
