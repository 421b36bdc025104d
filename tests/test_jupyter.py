"""A listener in a real Jupyter kernel (jupyter_client and ipykernel), reached through a real
host: the way Livebook's notebooks listen, from their runtime."""

from __future__ import annotations

import os
import shutil
import time
import typing as t
from collections.abc import Iterator

import jupyter_client
import pytest

from .cluster_support import ROOT, get, gunicorn, short_folder

pytestmark = pytest.mark.timeout(180)

PUBLIC_URL = "https://notebooks.example.com"


class Kernel:
    def __init__(self, folder: str) -> None:
        self.manager = jupyter_client.KernelManager(kernel_name="python3")
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


@pytest.fixture
def folder() -> Iterator[str]:
    made = short_folder()
    yield made
    shutil.rmtree(made, ignore_errors=True)


def test_a_listener_in_a_jupyter_kernel(folder: str) -> None:
    with gunicorn(folder, workers=2) as host:
        kernel = Kernel(folder)
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
        deadline = time.monotonic() + 5
        while get(host.port, "/proxy/sessions/nb-1/").status != 404:
            assert time.monotonic() < deadline, "the kernel's listener outlived it"
            time.sleep(0.05)
        assert [get(host.port, "/proxy/sessions/nb-1/").status for _ in range(8)] == [404] * 8
