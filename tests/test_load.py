"""Load and churn: 32 concurrent clients make 20,000 requests through a real threaded server
(gunicorn's gthread worker) while threads inside the server listen, replace and close
listeners continuously. Loopback only, bounded in count and time."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter

import pytest

from .support.server_app import CHURNED, STABLE
from .support.servers import running

CLIENTS = 32
REQUESTS = 20_000


@pytest.mark.timeout(300)
def test_load_with_churn() -> None:
    counts: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    with running("gunicorn-gthread", WSGI_PROXY_LISTEN_CHURN="1") as server:

        def client(index: int) -> None:
            rng = random.Random(index)
            local: Counter[str] = Counter()
            mistakes: list[str] = []
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            for _ in range(REQUESTS // CLIENTS):
                session = rng.choice(STABLE + CHURNED)
                try:
                    connection.request("GET", f"/proxy/sessions/{session}/x")
                    response = connection.getresponse()
                    body = response.read().decode()
                except (OSError, http.client.HTTPException) as error:
                    local["connection errors"] += 1
                    mistakes.append(f"{session}: {error!r}")
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                    continue
                if response.status >= 500:
                    local["5xx"] += 1
                    mistakes.append(f"{session}: {response.status}")
                elif response.status == 200:
                    local["200"] += 1
                    if body.split(":")[0] != session:
                        local["wrong listener"] += 1
                        mistakes.append(f"{session} answered by {body!r}")
                elif response.status == 404 and session in CHURNED:
                    local["404 while closed"] += 1
                else:
                    local["lost"] += 1
                    mistakes.append(f"{session}: {response.status} {body[:60]!r}")
            connection.close()
            with lock:
                counts.update(local)
                problems.extend(mistakes)

        get_started = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        get_started.request("GET", "/host/pid")  # starts the churn threads in the worker
        get_started.getresponse().read()
        get_started.close()
        time.sleep(0.2)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - began
    total = sum(counts.values())
    print(
        f"\nload: {total} requests from {CLIENTS} clients in {elapsed:.1f} s"
        f" ({total / elapsed:.0f} requests/s) under churn: {dict(counts)}"
    )
    assert problems == []
    assert total == REQUESTS
    assert counts["5xx"] == counts["wrong listener"] == counts["lost"] == 0
    assert counts["404 while closed"] > 0, "the churn threads were running"
