"""Talking to real servers over raw sockets: free ports, starting and stopping processes,
exchanges that no client library normalises, and the memory of processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import typing as t
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(process: subprocess.Popen[str] | subprocess.Popen[bytes], grace: float = 15) -> None:
    """Ask the server to stop; kill it if it has not stopped after ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def wait_until_listening(
    process: subprocess.Popen[bytes], port: int, log: t.IO[bytes] | None = None
) -> None:
    """Wait until ``port`` accepts; raise with the end of ``log`` if the server died."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = ""
                if log is not None:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"the server did not start: {output}") from None
            time.sleep(0.05)


class Answer(t.NamedTuple):
    status: int
    head: bytes
    body: bytes


def exchange(port: int, request: bytes, timeout: float = 30) -> Answer:
    """Send raw bytes, read the whole answer (the request asks to close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return Answer(status, head, body)


def get(port: int, target: str, headers: str = "", timeout: float = 30) -> Answer:
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n"
    return exchange(port, request.encode("latin-1"), timeout)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def peak_rss_growth_mib(pids: list[int]) -> Iterator[dict[int, float]]:
    """Sample the RSS of ``pids`` while the block runs; fill in each one's peak growth."""
    before = {pid: rss_kib(pid) for pid in pids}
    peak = dict(before)
    growth: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in pids:
                with contextlib.suppress(FileNotFoundError):
                    peak[pid] = max(peak[pid], rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield growth
    finally:
        stop.set()
        sampler.join()
        growth.update({pid: (peak[pid] - before[pid]) / 1024 for pid in pids})


def upload_arrives_whole(port: int, path: str, megabytes: int) -> None:
    """POST ``megabytes`` of random bytes; the listener answers their size and sha256."""
    payload = os.urandom(1024 * 1024) * megabytes
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    answer = exchange(port, head.encode() + payload, timeout=120)
    assert answer.status == 200, answer.head
    assert json.loads(answer.body) == {
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
