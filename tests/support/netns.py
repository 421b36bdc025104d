"""Machines for the multi-machine tests: Linux network namespaces, each with its own
address on one bridge, made by the test and removed after it.

Every namespace here is the test's own: the bridge lives in a namespace of its own too,
so nothing is added to the machine's network, and no traffic leaves the namespaces (the
addresses are in 10.231.0.0/24, on a bridge with no way out).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
import typing as t
from collections.abc import Iterator

SUBNET = "10.231.0"
_CLONE_NEWNET = 0x40000000


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or ``None``."""
    if shutil.which("ip") is None:
        return "no ip command (install Debian's iproute2)"
    if os.geteuid() != 0:
        return "namespaces need root"
    name = f"wpl-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], check=False)
    return None


def _ip(*arguments: str, namespace: str | None = None) -> None:
    command = ["ip", *arguments] if namespace is None else ["ip", "-n", namespace, *arguments]
    subprocess.run(command, check=True, capture_output=True)


class Topology:
    """Machines by name, each a namespace with one address on the shared bridge."""

    def __init__(self, machines: dict[str, int]) -> None:
        self.tag = f"w{os.getpid() % 10000}"
        self.switch = f"{self.tag}-sw"
        self.addresses = {name: f"{SUBNET}.{number}" for name, number in machines.items()}
        self.made: list[str] = []

    def namespace(self, machine: str) -> str:
        return f"{self.tag}-{machine}"

    def create(self) -> None:
        _ip("netns", "add", self.switch)
        self.made.append(self.switch)
        _ip("link", "add", "br0", "type", "bridge", namespace=self.switch)
        _ip("link", "set", "br0", "up", namespace=self.switch)
        for index, (machine, address) in enumerate(self.addresses.items()):
            namespace = self.namespace(machine)
            _ip("netns", "add", namespace)
            self.made.append(namespace)
            inside, outside = f"{self.tag}i{index}", f"{self.tag}o{index}"
            _ip("link", "add", inside, "netns", namespace, "type", "veth", "peer", "name", outside,
                "netns", self.switch)  # fmt: skip
            _ip("link", "set", outside, "master", "br0", namespace=self.switch)
            _ip("link", "set", outside, "up", namespace=self.switch)
            _ip("addr", "add", f"{address}/24", "dev", inside, namespace=namespace)
            _ip("link", "set", inside, "up", namespace=namespace)
            _ip("link", "set", "lo", "up", namespace=namespace)

    def remove(self) -> None:
        for namespace in reversed(self.made):
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
        self.made.clear()

    def command(self, machine: str, argv: list[str]) -> list[str]:
        """``argv`` run on ``machine``."""
        return ["ip", "netns", "exec", self.namespace(machine), *argv]

    # -- cutting links ---------------------------------------------------------------------

    def refuse(self, machine: str, other: str) -> None:
        """``machine``'s connections to ``other`` are refused: ``other``'s address is
        ``machine``'s own too, where nothing listens (as a firewall's reject)."""
        _ip("addr", "add", f"{self.addresses[other]}/32", "dev", "lo",
            namespace=self.namespace(machine))  # fmt: skip

    def drop(self, machine: str, other: str) -> None:
        """``machine``'s packets to ``other`` go nowhere: routed through a neighbour that
        does not exist (connections time out)."""
        _ip("route", "add", f"{self.addresses[other]}/32", "via", f"{SUBNET}.254",
            namespace=self.namespace(machine))  # fmt: skip

    def heal(self, machine: str, other: str) -> None:
        namespace = self.namespace(machine)
        address = self.addresses[other]
        for command in (["addr", "del", f"{address}/32", "dev", "lo"], ["route", "del", address]):
            subprocess.run(["ip", "-n", namespace, *command], check=False, capture_output=True)


def run_in(namespace: str, call: t.Callable[[], t.Any]) -> t.Any:
    """``call()`` in a thread that entered ``namespace`` (its sockets are made there)."""
    result: dict[str, t.Any] = {}

    def enter_and_call() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        descriptor = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(descriptor, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns failed")
        finally:
            os.close(descriptor)
        try:
            result["value"] = call()
        except BaseException as error:  # re-raised in the caller
            result["error"] = error

    thread = threading.Thread(target=enter_and_call)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


@contextlib.contextmanager
def topology(machines: dict[str, int]) -> Iterator[Topology]:
    made = Topology(machines)
    try:
        made.create()
        yield made
    finally:
        made.remove()
