"""The benchmark runner works (`make bench QUICK=1`). Timings are printed, never asserted:
this machine is shared and noisy; BENCHMARKS.md records the figures of a full run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_quick_benchmark_runs_and_prints_the_table() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "bench", "QUICK=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout
    print(output)
    for line in [
        "bare host app",
        "ours: pass-through [1]",
        "ours: WSGI listener [100000]",
        "ours: request handler [1]",
        "ours: 404 miss [1]",
        "DispatcherMiddleware: hit",
        "paste URLMap: hit",
        "Flask route: request handler",
        "listen()+close():",
        "registry memory per listener:",
        "WSGI listener dispatch / DispatcherMiddleware hit",
    ]:
        assert line in output, line


@pytest.mark.timeout(240)
def test_quick_cluster_benchmark_runs_and_prints_both_directories() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.cluster", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout
    print(output)
    assert "refused" not in result.stderr, "a hop of the breakdown was refused"
    for line in [
        "floor: a length-prefixed exchange over a persistent Unix socket",
        "peer: a kept-alive round trip to waitress alone",
        "embedded   local",
        "embedded   runtime",
        "embedded   peer",
        "embedded   bare",
        "embedded   floor",
        "where it goes: hop extra with bare listeners, µs",
        "where it goes: a bare socket relay's download / in-process",
        "where it goes: CPU per MB down, the hop, µs",
        "where it goes: CPU per MB down, bare relay, µs",
        "hop extra latency / floor exchange (median)",
        "CPU per forwarded request / local (host + owner)",
        "streaming download, runtime / in-process",
        "streaming upload, runtime / in-process",
        "embedded: listen() p99 at 500 sessions, ms",
        "embedded churn, 16 writers: pairs/s / one writer's",
    ]:
        assert line in output, line
    if shutil.which("redis-server"):
        assert "redis      runtime" in output
        assert "redis: idle renewal CPU at 500, % of a core" in output
