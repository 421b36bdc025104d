"""The listener of the cluster example (examples/cluster/app.py): it answers with its
session and process, streams a download and takes an upload. A module of its own, so that
a runtime or a benchmark can use it without building the host's app."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

from werkzeug.wrappers import Request, Response

__all__ = ["report"]


def report(session: str) -> object:
    """A listener: answers with its session and worker, streams and takes uploads."""
    owner = os.getpid()

    def listener(listener_request: Request) -> Response | str | dict[str, object]:
        if listener_request.path == "/download":
            megabytes = int(listener_request.args.get("mb", "1"))
            return Response(_chunks(megabytes), content_type="application/octet-stream")
        if listener_request.path == "/upload":
            digest, size = hashlib.sha256(), 0
            while chunk := listener_request.stream.read(65536):
                digest.update(chunk)
                size += len(chunk)
            return {"size": size, "sha256": digest.hexdigest()}
        return f"{session} from {owner} path {listener_request.path}"

    return listener


def _chunks(megabytes: int) -> Iterator[bytes]:
    block = b"x" * 65536
    for _ in range(megabytes * 16):
        yield block
