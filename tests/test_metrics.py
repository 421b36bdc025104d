"""Prometheus metrics: a known mix of requests gives exactly those counts, in one process
and scraped from a gunicorn -w 2 host in prometheus_client's multiprocess mode (every
worker's counts, whichever worker answers the scrape)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import typing as t
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client

from wsgi_proxy_listen import ProxyMiddleware, Registry, metrics
from wsgi_proxy_listen.cluster import EmbeddedDirectory
from wsgi_proxy_listen.settings import problems

from .support.cluster import (
    NO_REDIS,
    REDIS,
    SECRET,
    RedisServer,
    concurrently,
    gunicorn,
    short_folder,
)
from .support.wire import exchange, get
from .support.wsgi import Host

pytestmark = [pytest.mark.timeout(120)]

Key = tuple[str, str, str]


def requests_in(text: str) -> Counter[Key]:
    """``wsgi_proxy_listen_requests_total`` by (route, where, status)."""
    found: Counter[Key] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "wsgi_proxy_listen_requests_total":
                labels = sample.labels
                found[(labels["route"], labels["where"], labels["status"])] += int(sample.value)
    return found


def value_of(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"no {name} in the metrics")


def scrape() -> str:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return body.decode()


def boom(request: t.Any) -> str:
    raise RuntimeError("the listener broke")


def test_a_mix_of_requests_gives_exactly_those_counts(tmp_path: t.Any) -> None:
    assert metrics.ENABLED, "the test extra installs prometheus_client"
    folder = short_folder()
    made: list[t.Any] = []
    try:
        a_directory, b_directory = EmbeddedDirectory(folder), EmbeddedDirectory(folder)
        made += [a_directory, b_directory]
        a, b = Registry(directory=a_directory), Registry(directory=b_directory)
        a_client = Client(ProxyMiddleware(Host(), a, max_content_length=10))
        b_client = Client(
            ProxyMiddleware(Host(), b, authenticate=lambda environ: None, max_content_length=10)
        )
        for client in (a_client, b_client):
            client.get("/", buffered=True)  # starts the directories
        before = requests_in(scrape())
        listeners_before = value_of(scrape(), "wsgi_proxy_listen_listeners")
        published_before = value_of(scrape(), "wsgi_proxy_listen_published")
        a.listen(lambda request: "hello", session="s1")
        a.listen(lambda request: "member", session="m1", app="dash")
        a.listen(boom, session="boom")
        b.listen(lambda request: "private", session="mine", access="authenticated")
        assert value_of(scrape(), "wsgi_proxy_listen_listeners") == listeners_before + 4
        assert value_of(scrape(), "wsgi_proxy_listen_published") == published_before + 4
        statuses = [
            a_client.get("/proxy/sessions/s1/", buffered=True).status_code,  # here 200
            a_client.get("/proxy/apps/dash/", buffered=True).status_code,  # app, here 200
            a_client.get("/proxy/sessions/boom/", buffered=True).status_code,  # here 500
            a_client.get("/proxy/sessions/nope/", buffered=True).status_code,  # none 404
            b_client.get("/proxy/sessions/s1/", buffered=True).status_code,  # forwarded 200
            b_client.get("/proxy/sessions/mine/", buffered=True).status_code,  # none 401
            b_client.post("/proxy/sessions/s1/", data=b"x" * 100).status_code,  # forwarded 413
            a_client.get("/", buffered=True).status_code,  # the host's: not counted
        ]
        assert statuses == [200, 200, 500, 404, 200, 401, 413, 200]
        assert a_directory._endpoint is not None  # started by the requests above
        a_directory._endpoint.close()  # a's process as good as gone for b
        assert b_client.get("/proxy/sessions/s1/", buffered=True).status_code == 502
        after = requests_in(scrape())
        assert after - before == Counter(
            {
                ("session", "here", "200"): 1,
                ("app", "here", "200"): 1,
                ("session", "here", "500"): 1,
                ("session", "none", "404"): 1,
                ("session", "forwarded", "200"): 1,
                ("session", "from_another", "200"): 1,  # what a served for b
                ("session", "none", "401"): 1,
                ("session", "forwarded", "413"): 1,  # handed to the hop, bounded there
                ("session", "forwarded", "502"): 1,
            }
        )
        text = scrape()
        assert "wsgi_proxy_listen_forward_seconds_bucket" in text
        assert value_of(text, "wsgi_proxy_listen_directory_up") == 1
    finally:
        for directory in made:
            directory.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_directory_down_is_a_503_and_a_gauge() -> None:
    if REDIS is None:
        pytest.skip(NO_REDIS)
    from wsgi_proxy_listen.cluster import RedisDirectory

    server = RedisServer()
    server.start()
    directory = RedisDirectory(server.url, secret=SECRET, lease=3)
    try:
        client = Client(ProxyMiddleware(Host(), Registry(directory=directory)))
        client.get("/", buffered=True)
        before = requests_in(scrape())
        server.stop()
        assert client.get("/proxy/sessions/elsewhere/", buffered=True).status_code == 503
        assert requests_in(scrape()) - before == Counter({("session", "none", "503"): 1})
        assert value_of(scrape(), "wsgi_proxy_listen_directory_up") == 0
    finally:
        directory.close()
        server.stop()


def test_the_endpoint_is_a_wsgi_app_that_the_host_mounts() -> None:
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app = DispatcherMiddleware(Host(), {"/metrics": metrics.wsgi_app()})
    answer = Client(app).get("/metrics", buffered=True)
    assert answer.status_code == 200
    assert "wsgi_proxy_listen_requests_total" in answer.get_data(as_text=True)


class Held:
    """A request to the metrics host's /hold: the sync worker that takes it serves nothing
    else until ``release()``, so every other request goes to the other worker."""

    def __init__(self, port: int, mark: Path) -> None:
        self.mark = mark
        self.thread = threading.Thread(target=get, args=(port, f"/hold?mark={mark}"))
        self.thread.start()
        deadline = time.monotonic() + 20
        while not mark.exists():
            assert time.monotonic() < deadline, "no worker took the hold"
            time.sleep(0.01)
        self.pid = int(mark.read_text())

    def release(self) -> None:
        self.mark.unlink()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def test_a_gunicorn_host_counts_every_workers_requests() -> None:
    """gunicorn -w 2 in prometheus_client's multiprocess mode, after a known mix: served
    here and forwarded, 404, 413, 401, 500 and 503; four scrapes, whichever worker
    answers, give the same, exact counts. Sync workers, so that a held worker steers the
    requests: the sessions start in one and are requested through the other (the kernel
    alone once gave every request to one worker, and nothing was forwarded)."""
    folder = short_folder()
    counters = tempfile.mkdtemp(prefix="wpl-prom-")
    app = "tests.support.metrics_host:app"
    try:
        with gunicorn(
            folder, workers=2, worker_class="sync", app=app, PROMETHEUS_MULTIPROC_DIR=counters
        ) as host:

            def start(kind: str, session: str) -> int:
                request = f"POST /sessions/{kind}/{session} HTTP/1.0\r\n\r\n"
                answer = exchange(host.port, request.encode())
                assert answer.status == 200
                return int(answer.body)

            first = Held(host.port, Path(folder, "first"))
            owners = {start(kind, kind) for kind in ("hello", "broken", "private", "slow")}
            second = Held(host.port, Path(folder, "second"))
            assert owners == {second.pid} != {first.pid}, "the sessions are the second's"
            first.release()  # from here on, the first worker takes every request
            served = [get(host.port, "/proxy/sessions/hello/").status for _ in range(20)]
            statuses = [
                get(host.port, "/proxy/sessions/nope/").status,
                exchange(
                    host.port,
                    b"POST /proxy/sessions/hello/ HTTP/1.0\r\nContent-Length: 100000\r\n\r\n",
                ).status,
                get(host.port, "/proxy/sessions/private/").status,
                get(host.port, "/proxy/sessions/broken/").status,
            ]
            second.release()
            slow = concurrently(2, 2, lambda: get(host.port, "/proxy/sessions/slow/"))
            assert set(served) == {200}
            assert statuses == [404, 413, 401, 500]
            assert sorted(answer.status for answer in slow) == [200, 503]
            time.sleep(metrics.FLUSH_INTERVAL + 0.5)  # each worker writes its counts
            scraped = [requests_in(get(host.port, "/metrics").body.decode()) for _ in range(4)]
        assert all(counts == scraped[0] for counts in scraped), "the same whichever worker"
        counts = scraped[0]

        def received(status: str) -> int:
            """Requests the host's workers received with ``status`` (not those the owner
            served for the other worker, which are counted as from_another)."""
            return sum(
                value
                for (route, where, code), value in counts.items()
                if code == status and where != "from_another"
            )

        assert (received("200"), received("404"), received("413")) == (20 + 1, 1, 1)
        assert (received("401"), received("500"), received("503")) == (1, 1, 1)
        assert counts[("session", "none", "404")] == counts[("session", "none", "401")] == 1
        assert counts[("session", "forwarded", "200")] >= 20, "every hello went through"
        assert counts[("session", "forwarded", "500")] == 1
        forwarded = sum(v for (_, where, _), v in counts.items() if where == "forwarded")
        from_another = sum(v for (_, where, _), v in counts.items() if where == "from_another")
        assert from_another == forwarded - counts[("session", "forwarded", "413")]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(counters, ignore_errors=True)


def test_without_the_extra_nothing_is_counted() -> None:
    """With the variable off (as without prometheus_client), the middleware counts
    nothing, and the endpoint says what to install."""
    import subprocess
    import sys

    code = (
        "from wsgi_proxy_listen import metrics, ProxyMiddleware, Registry\n"
        "assert not metrics.ENABLED\n"
        "assert ProxyMiddleware(lambda e, s: [], Registry())._metrics is False\n"
    )
    env = {**os.environ, "WSGI_PROXY_LISTEN_METRICS": "0"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def test_requests_on_listener_origins_are_counted() -> None:
    """Found in review: with a listener domain the middleware took a path that counted
    nothing (and once raised on a request that had no probe)."""
    from wsgi_proxy_listen.origins import label

    from .support.wsgi import at

    registry = Registry()
    client = Client(
        ProxyMiddleware(
            Host(),
            registry,
            listener_domain="listeners.example.test",
            listener_secret="listener-secret",
            public_url="http://host.example.test",
        )
    )
    registry.listen(lambda request: "on its origin", session="s1")
    before = requests_in(scrape())
    own = f"http://{label('session', 's1')}.listeners.example.test/proxy/sessions/s1/"
    assert at(client, own, buffered=True).status_code == 200
    host = "http://host.example.test/proxy/sessions/s1/"
    assert at(client, host, buffered=True).status_code == 403  # no navigation: refused
    assert requests_in(scrape()) - before == Counter(
        {("session", "here", "200"): 1, ("session", "none", "403"): 1}
    )


def test_threads_that_ended_keep_their_counts_and_let_go_of_their_dicts() -> None:
    """Found in review: every thread ever started kept a dict, so a server that starts
    a thread per request grew without bound (and so did each scrape's work)."""
    import gc
    import threading

    before = requests_in(scrape())
    threads = [
        threading.Thread(target=metrics.count, args=("session", "here", "200 OK"))
        for _ in range(200)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    del threads
    gc.collect()
    assert requests_in(scrape()) - before == Counter({("session", "here", "200"): 200})
    alive = threading.active_count()
    assert len(metrics._threads_counts) <= alive + 1, "the ended threads' dicts were let go"


_FORKED = """
import os, sys
from wsgi_proxy_listen import metrics
for _ in range(5):
    metrics.count("session", "here", "200")
metrics._write()
child = os.fork()
if child == 0:
    for _ in range(8):
        metrics.count("session", "here", "200")
    sys.exit(0)  # its exit writes what it counted, and only that
os.waitpid(child, 0)
metrics._write()
print(metrics.exposition()[0].decode())
"""


def test_a_forked_child_writes_only_its_own_counts() -> None:
    """Found in review: a child inherited its parent's exit handler and wrote the
    parent's counts again (13 requests exported as 16)."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder}
        done = subprocess.run(
            [sys.executable, "-c", _FORKED],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    assert requests_in(done.stdout) == Counter({("session", "here", "200"): 13})


def test_a_wrong_metrics_option_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="metrics must be True, False or None, not 'yes'"):
        ProxyMiddleware(Host(), Registry(), metrics=t.cast(t.Any, "yes"))
    assert [problem.id for problem in problems({"METRICS": "yes"})] == ["E020"]


def test_metrics_on_without_prometheus_client_is_a_clear_error() -> None:
    """With counting off for the process (as without the extra), asking for it says what
    to install, from the middleware and from the settings."""
    import subprocess
    import sys

    code = (
        "from wsgi_proxy_listen import ProxyMiddleware, Registry\n"
        "from wsgi_proxy_listen.settings import problems\n"
        "try:\n"
        "    ProxyMiddleware(lambda e, s: [], Registry(), metrics=True)\n"
        "except ValueError as error:\n"
        "    print(error)\n"
        "print(problems({'METRICS': True})[0].message)\n"
    )
    env = {**os.environ, "WSGI_PROXY_LISTEN_METRICS": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("metrics=True needs prometheus_client: pip install")
    assert lines[1].startswith("METRICS: METRICS=True needs prometheus_client")
