"""gunicorn settings for the cluster example: four threaded workers behind one port.

With Prometheus metrics, set PROMETHEUS_MULTIPROC_DIR to an empty folder before
gunicorn starts: each worker writes its values there, /metrics adds them up, and
child_exit below drops the live gauges of a worker that ended."""

from __future__ import annotations

import os
import typing as t

bind = "127.0.0.1:8000"
workers = 4
worker_class = "gthread"
threads = 4


def child_exit(server: t.Any, worker: t.Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
