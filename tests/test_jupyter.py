"""A listener in a real Jupyter kernel (jupyter_client and ipykernel), reached through a real
host: the way Livebook's notebooks listen, from their runtime."""

from __future__ import annotations

import os
import signal
import time
import typing as t

import pytest
from jupyter_client.manager import KernelManager

from .support.cluster import ROOT, Shared, gunicorn
from .support.wire import get

pytestmark = pytest.mark.timeout(180)

PUBLIC_URL = "https://notebooks.example.com"


class Kernel:
    def __init__(self, folder: str) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "WSGI_PROXY_LISTEN_DIRECTORY": folder,
                "WSGI_PROXY_LISTEN_PUBLIC_URL": PUBLIC_URL,
            }
        )
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return int(self.manager.provisioner.pid)  # type: ignore[union-attr]

    def execute(self, code: str) -> dict[str, t.Any]:
        """Run ``code`` in the kernel; the data of its result (its rich forms, by type)."""
        message_id = self.client.execute(code)
        data: dict[str, t.Any] = {}
        while True:
            message = self.client.get_iopub_msg(timeout=30)
            if message["parent_header"].get("msg_id") != message_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "execute_result":
                data = content["data"]
            elif kind == "error":
                raise AssertionError("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return data

    def shut_down(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


def left_by(folder: str, pid: int) -> list[str]:
    """What the kernel ``pid`` left in the folder: its socket, its rows."""
    return [
        item
        for item in Shared("embedded", folder, None).leftovers()
        if "nb-1" in item or item.startswith(f"{pid}-") or f"'{pid}-" in item
    ]


def test_a_listener_in_a_jupyter_kernel(folder: str) -> None:
    with gunicorn(folder, workers=2) as host:
        kernel = Kernel(folder)
        pid = kernel.pid
        try:
            data = kernel.execute(
                "from wsgi_proxy_listen import listen\n"
                "handle = listen(lambda request: f'hello from the kernel, {request.path}',"
                " session='nb-1')\n"
                "handle\n"
            )
            url = f"{PUBLIC_URL}/proxy/sessions/nb-1/"
            assert f'<a href="{url}" target="_blank">{url}</a>' == data["text/html"]
            assert "url='/proxy/sessions/nb-1/'" in data["text/plain"]
            for _ in range(8):  # every worker of the host
                answer = get(host.port, "/proxy/sessions/nb-1/data")
                assert (answer.status, answer.body) == (200, b"hello from the kernel, /data")
        finally:
            kernel.shut_down()
        # Withdrawn as the kernel ended: 404 at once, not the 502 of an owner that is gone.
        assert [get(host.port, "/proxy/sessions/nb-1/").status for _ in range(8)] == [404] * 8
        assert left_by(folder, pid) == []


def test_sigterm_ends_a_busy_kernel_and_withdraws_its_listener(folder: str) -> None:
    """IPython catches what a running cell raises, SystemExit included: SIGTERM still
    ends the kernel, and its listener is withdrawn."""
    with gunicorn(folder, workers=2) as host:
        kernel = Kernel(folder)
        try:
            kernel.execute(
                "from wsgi_proxy_listen import listen\n"
                "handle = listen(lambda request: 'hello', session='nb-1')\n"
            )
            assert get(host.port, "/proxy/sessions/nb-1/").status == 200
            kernel.client.execute("import time\ntime.sleep(60)\n")
            time.sleep(1)  # the cell runs
            os.kill(kernel.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while kernel.manager.is_alive():
                assert time.monotonic() < deadline, "the kernel outlived SIGTERM"
                time.sleep(0.05)
            assert [get(host.port, "/proxy/sessions/nb-1/").status for _ in range(8)] == [404] * 8
            assert left_by(folder, kernel.pid) == []
        finally:
            kernel.client.stop_channels()
            kernel.manager.shutdown_kernel(now=True)
