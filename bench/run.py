"""The benchmark suite: wsgi_proxy_listen against its peers, in one process and one run.

    python -m bench.run            # the full run recorded in BENCHMARKS.md (a few minutes)
    python -m bench.run --quick    # a smoke run, well under a minute

Method: every case is a zero-argument callable that serves one request from a
prepared environ (copied per request, as a server builds a new one) with a
no-op ``start_response``, and iterates and closes the body. Cases are timed
with :mod:`timeit` in interleaved rounds (round 1 of every case, then round 2
of every case, ...) so that machine noise hits them all alike; each figure is
the median over the rounds of the best-of-loop time per request. Overheads are
the median minus the bare host app's median, ratios are taken between figures
of the same run. Timings are never asserted anywhere: this shared machine is
noisy, so the suite only checks that the runner works.

pyperf is the usual tool, but it spreads a benchmark over worker processes;
the budget compares cases side by side in one process, so this uses its
method (interleaving, medians) with :mod:`timeit`.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import timeit
import tracemalloc
import typing as t
from collections.abc import Callable, Iterable
from importlib.metadata import version

import flask
from paste.urlmap import URLMap  # type: ignore[import-untyped]
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Request, Response

import wsgi_proxy_listen
from wsgi_proxy_listen import ProxyMiddleware, Registry

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

SIZES = (1, 1_000, 100_000)
HEADERS = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "2")]


def host(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [b"ok"]


def wsgi_listener(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [b"ok"]


def request_handler(request: Request) -> Response:
    return Response("ok")


def start_response(
    status: str, headers: list[tuple[str, str]], exc_info: object = None
) -> Callable[[bytes], object]:
    return _write


def _write(data: bytes) -> None:
    pass


def server_environ(path: str) -> WSGIEnvironment:
    """An environ like gunicorn's for ``GET path``."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "RAW_URI": path,
        "REQUEST_URI": path,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_SOFTWARE": "gunicorn/22.0.0",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "54321",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench/1.0",
        "HTTP_ACCEPT": "*/*",
        "HTTP_ACCEPT_ENCODING": "gzip, deflate",
        "HTTP_CONNECTION": "keep-alive",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": _EmptyInput(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }


class _EmptyInput:
    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""


def serve(app: WSGIApplication, environ: WSGIEnvironment) -> Callable[[], None]:
    """One request: a fresh environ, the call, the body iterated and closed."""

    def one() -> None:
        body = app(environ.copy(), start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return one


def registry_with(size: int, handler: object, **kwargs: t.Any) -> Registry:
    registry = Registry()
    for index in range(size - 1):
        registry.listen(wsgi_listener, session=f"s{index}", kind="wsgi")
    registry.listen(handler, session="target", **kwargs)
    return registry


def timing_cases(quick: bool) -> dict[str, Callable[[], None]]:
    host_env = server_environ("/app/page/1")
    hit_env = server_environ("/proxy/sessions/target/x")
    miss_env = server_environ("/proxy/sessions/nope/x")
    cases: dict[str, Callable[[], None]] = {"bare host app": serve(host, host_env)}
    for size in (SIZES[:1] + SIZES[-1:]) if quick else SIZES:
        # The guard's cases count nothing; metrics_cases() times what counting adds.
        wsgi = ProxyMiddleware(host, registry_with(size, wsgi_listener), metrics=False)
        handler = ProxyMiddleware(host, registry_with(size, request_handler), metrics=False)
        cases[f"ours: pass-through [{size}]"] = serve(wsgi, host_env)
        cases[f"ours: WSGI listener [{size}]"] = serve(wsgi, hit_env)
        cases[f"ours: request handler [{size}]"] = serve(handler, hit_env)
        cases[f"ours: 404 miss [{size}]"] = serve(wsgi, miss_env)
    cases.update(access_cases())
    cases.update(metrics_cases())
    dispatcher = DispatcherMiddleware(host, {"/proxy/sessions/target": wsgi_listener})
    cases["DispatcherMiddleware: pass-through"] = serve(dispatcher, host_env)
    cases["DispatcherMiddleware: hit"] = serve(dispatcher, hit_env)
    urlmap = URLMap()
    urlmap["/"] = host
    urlmap["/proxy/sessions/target"] = wsgi_listener
    cases["paste URLMap: hit"] = serve(urlmap, hit_env)
    flask_app = flask.Flask("bench")
    flask_app.add_url_rule("/proxy/sessions/target/x", "x", lambda: request_handler(flask.request))
    cases["Flask route: request handler"] = serve(flask_app, hit_env)
    return cases


def metrics_cases() -> dict[str, Callable[[], None]]:
    """A hit with Prometheus counting on, beside the same without, when it is installed."""
    from wsgi_proxy_listen import metrics

    if not metrics.ENABLED:
        return {}
    hit_env = server_environ("/proxy/sessions/target/x")
    registry = registry_with(1, wsgi_listener, kind="wsgi")
    return {
        "ours: WSGI listener, metrics off": serve(
            ProxyMiddleware(host, registry, metrics=False), hit_env
        ),
        "ours: WSGI listener, metrics on": serve(
            ProxyMiddleware(host, registry, metrics=True), hit_env
        ),
    }


def metrics_cost(rounds: int, budget: float) -> str:
    """What counting adds to a hit, in this process's mode, in ns."""
    results = measure(metrics_cases(), rounds, budget)
    if not results:
        return "metrics: prometheus_client is not installed"
    added = results["ours: WSGI listener, metrics on"] - results["ours: WSGI listener, metrics off"]
    return f"{added:.0f}"


def multiprocess_metrics_cost(quick: bool) -> float:
    """metrics_cost() in a process of its own, in prometheus_client's multiprocess mode
    (its values in files, as under gunicorn -w N)."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder}
        arguments = ["--metrics-only", *(["--quick"] if quick else [])]
        done = subprocess.run(
            [sys.executable, "-m", "bench.run", *arguments],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return float(done.stdout.strip())


def access_cases() -> dict[str, Callable[[], None]]:
    """What the host's login costs: a public listener behind a middleware with a login
    (nobody is asked), and a protected one, whose request reads the host's session once:
    through Flask-Login on Flask's signed cookie, as ``ProxyListen`` wires it."""
    import flask_login

    from wsgi_proxy_listen.flask import ProxyListen

    app = flask.Flask("bench-login")
    app.secret_key = "bench-secret"
    manager = flask_login.LoginManager(app)

    class User(flask_login.UserMixin):  # type: ignore[misc]
        def __init__(self, name: str) -> None:
            self.id = name

    manager.user_loader(User)

    @app.get("/login")
    def login() -> str:
        flask_login.login_user(User("alice"))
        return "in"

    registry = registry_with(1, wsgi_listener, access={"alice"})
    registry.listen(wsgi_listener, session="open", kind="wsgi")
    app.config["WSGI_PROXY_LISTEN"] = {"METRICS": False}  # as the guard's cases
    ProxyListen(app, registry=registry)
    client = app.test_client()
    client.get("/login")
    cookie = client.get_cookie("session")
    assert cookie is not None
    logged_in = server_environ("/proxy/sessions/target/x")
    logged_in["HTTP_COOKIE"] = f"session={cookie.value}"
    public = server_environ("/proxy/sessions/open/x")
    public["HTTP_COOKIE"] = logged_in["HTTP_COOKIE"]
    return {
        "ours: public listener, host with a login": serve(app.wsgi_app, public),
        "ours: alice's listener, Flask-Login": serve(app.wsgi_app, logged_in),
    }


def breakdown_cases() -> dict[str, Callable[[], None]]:
    """The pieces of a dispatch that the middleware promises (checks, the guard, cookies) and
    DispatcherMiddleware does not do."""
    from wsgi_proxy_listen.guard import Guard

    environ = server_environ("/proxy/sessions/target/x")

    class CallableClass:
        def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> None:
            return None

    def function(environ: WSGIEnvironment, start_response: StartResponse) -> None:
        return None

    instance = CallableClass()

    def copy() -> None:
        environ.copy()

    body = [b"ok"]

    def checked_start_response() -> None:
        guard = Guard(start_response, "/proxy/sessions/s0")
        guard("200 OK", HEADERS)
        guard.accept(body)

    return {
        "a plain function call": lambda: function(environ, start_response),
        "a call of an instance with __call__": lambda: instance(environ, start_response),
        "environ.copy() (the listener's copy)": copy,
        "checked start_response (create, call, accept)": checked_start_response,
    }


def measure(cases: dict[str, Callable[[], None]], rounds: int, budget: float) -> dict[str, float]:
    """Median over interleaved rounds of the best time per call, in ns."""
    loops = {}
    for name, case in cases.items():
        number, _ = timeit.Timer(case).autorange()
        seconds = timeit.Timer(case).timeit(number)
        loops[name] = max(1, int(number * budget / max(seconds, 1e-9) / 3))
    samples: dict[str, list[float]] = {name: [] for name in cases}
    gc.collect()
    for _ in range(rounds):
        for name, case in cases.items():
            best = min(timeit.Timer(case).repeat(repeat=3, number=loops[name]))
            samples[name].append(best / loops[name] * 1e9)
    return {name: statistics.median(values) for name, values in samples.items()}


def listen_close_ns(size: int, rounds: int) -> float:
    registry = registry_with(size, wsgi_listener)
    timer = timeit.Timer(lambda: registry.listen(wsgi_listener, session="bench").close())
    number = 20_000 if rounds > 3 else 2_000
    return statistics.median(min(timer.repeat(3, number)) / number * 1e9 for _ in range(rounds))


def newest_member_ns(size: int, rounds: int) -> float:
    """listen() and close() of an app's newest member, with ``size`` members before it:
    the close finds the next newest, which must not cost more with more members."""
    registry = Registry()
    for index in range(size):
        registry.listen(wsgi_listener, session=f"m{index}", app="big")
    timer = timeit.Timer(lambda: registry.listen(wsgi_listener, session="new", app="big").close())
    number = 20_000 if rounds > 3 else 2_000
    return statistics.median(min(timer.repeat(3, number)) / number * 1e9 for _ in range(rounds))


def memory_per_listener(size: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    registry = Registry()
    for index in range(size):
        registry.listen(wsgi_listener, session=f"s{index}")
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(registry) == size
    return grown / size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, under a minute")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the pieces a dispatch is made of"
    )
    parser.add_argument(
        "--metrics-only", action="store_true", help="print what counting adds to a hit, in ns"
    )
    options = parser.parse_args(argv)
    rounds, budget = (3, 0.01) if options.quick else (15, 0.1)
    if options.metrics_only:
        print(metrics_cost(rounds, budget))
        return
    print(f"machine: {platform.machine()}, {platform.processor() or platform.platform()}")
    print(
        f"python {platform.python_version()}, wsgi_proxy_listen {wsgi_proxy_listen.__version__},"
        f" werkzeug {version('werkzeug')}, flask {version('flask')}, paste {version('paste')}"
    )
    print(f"method: timeit, {rounds} interleaved rounds, median of best-of-3 per round\n")
    results = measure(timing_cases(options.quick), rounds, budget)
    bare = results["bare host app"]
    print(f"{'case':44} {'ns/request':>11} {'above bare':>11}")
    for name, value in results.items():
        print(f"{name:44} {value:11.0f} {value - bare:11.0f}")

    def above(name: str) -> float:
        return results[name] - bare

    sizes = (SIZES[:1] + SIZES[-1:]) if options.quick else SIZES
    largest = sizes[-1]
    rows = [
        (
            "pass-through overhead / DispatcherMiddleware's",
            above("ours: pass-through [1]") / above("DispatcherMiddleware: pass-through"),
            "<= 0.40 (guard)",
        ),
        (
            "WSGI listener dispatch / DispatcherMiddleware hit",
            results["ours: WSGI listener [1]"] / results["DispatcherMiddleware: hit"],
            "<= 4.0 (guard)",
        ),
        (
            f"WSGI listener dispatch, {largest:,} / 1 listeners",
            results[f"ours: WSGI listener [{largest}]"] / results["ours: WSGI listener [1]"],
            "<= 1.1",
        ),
        (
            "paste URLMap hit / our WSGI listener dispatch",
            results["paste URLMap: hit"] / results["ours: WSGI listener [1]"],
            "(peer)",
        ),
        (
            "request handler throughput / same handler as Flask route",
            results["Flask route: request handler"] / results["ours: request handler [1]"],
            ">= 2",
        ),
    ]
    rows.append(
        (
            "public listener dispatch, host with / without a login",
            results["ours: public listener, host with a login"]
            / results["ours: WSGI listener [1]"],
            "<= 1.1",
        )
    )
    if "ours: WSGI listener, metrics on" in results:
        one = (
            results["ours: WSGI listener, metrics on"] - results["ours: WSGI listener, metrics off"]
        )
        many = multiprocess_metrics_cost(options.quick)
        print(
            f"\nPrometheus counting adds {one / 1000:.2f} µs to a hit in one process"
            f" (budget +0.5 µs), {many / 1000:.2f} µs in prometheus_client's multiprocess"
            " mode (budget +1.5 µs)"
        )
    dispatch_us = above("ours: WSGI listener [1]") / 1000
    print(f"\na hit on a WSGI listener costs {dispatch_us:.2f} µs above the bare app (watched)")
    protected_us = above("ours: alice's listener, Flask-Login") / 1000
    print(f"a hit on alice's listener, Flask-Login asked, costs {protected_us:.2f} µs (watched)")
    small, large = listen_close_ns(1, rounds), listen_close_ns(largest, rounds)
    rows.append((f"listen()+close(), {largest:,} / 1 listeners", large / small, "<= 1.1"))
    members = 20_000 if options.quick else 200_000
    one_member = newest_member_ns(1, rounds)
    many_members = newest_member_ns(members, rounds)
    rows.append(
        (f"newest app member's close, {members:,} / 1 members", many_members / one_member, "<= 1.1")
    )
    print(
        f"\nlisten()+close(): {small:.0f} ns at 1 listener, {large:.0f} ns at {largest:,}"
        " (budget: < 5000 ns)"
    )
    print(
        f"an app member's listen()+close(): {one_member:.0f} ns at 1 member,"
        f" {many_members:.0f} ns at {members:,} (budget: < 5000 ns)"
    )
    per_listener = memory_per_listener(10_000 if options.quick else 100_000)
    print(f"registry memory per listener: {per_listener:.0f} bytes (budget: < 1024)\n")
    print(f"{'ratio':58} {'value':>7}  budget")
    for label, value, goal in rows:
        print(f"{label:58} {value:7.2f}  {goal}")
    if options.breakdown:
        print(f"\n{'piece':44} {'ns':>11}")
        for name, value in measure(breakdown_cases(), rounds, budget).items():
            print(f"{name:44} {value:11.0f}")


if __name__ == "__main__":
    main()
