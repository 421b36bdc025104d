"""gunicorn settings for the cluster tests: the example's settings, plus, when a test asks for
short timeouts, a directory connected in each worker before the app is imported."""

from __future__ import annotations

import os
import typing as t

from examples.cluster.gunicorn_conf import (  # noqa: F401
    bind,
    child_exit,
    threads,
    worker_class,
    workers,
)


def post_fork(server: t.Any, worker: t.Any) -> None:
    name = os.environ.get("TEST_DIRECTORY")
    if not name:
        return  # the example connects from WSGI_PROXY_LISTEN_DIRECTORY itself
    from wsgi_proxy_listen import default_registry
    from wsgi_proxy_listen.cluster import EmbeddedDirectory, RedisDirectory

    lease = float(os.environ["TEST_LEASE"])
    read_timeout = float(os.environ["TEST_READ_TIMEOUT"])
    if name.startswith("/"):
        default_registry.connect(EmbeddedDirectory(name, lease=lease, read_timeout=read_timeout))
    else:
        secret = os.environ["WSGI_PROXY_LISTEN_SECRET"]
        default_registry.connect(
            RedisDirectory(name, secret=secret, lease=lease, read_timeout=read_timeout)
        )
