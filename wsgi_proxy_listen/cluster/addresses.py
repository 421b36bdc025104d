"""
Where a process is reached, and where it listens
================================================

A process of a Redis directory *advertises* an address (what the others
connect to: ``host[:port]``) and *binds* its internal endpoint to one
(``host[:port]`` or ``host:first-last``). They differ behind a NAT: a
container binds ``0.0.0.0:7000`` and advertises the machine's
``10.0.0.5:17000`` that Docker publishes it at.

======================  ==================================================================
ADVERTISE               BIND (when it is not given)
======================  ==================================================================
a host of this machine  that host, on the advertised port or else a free one
a host that is not      every interface (``0.0.0.0``, ``::`` for an IPv6 address), on the
(a NAT's, a name)       advertised port or else a free one
======================  ==================================================================

With a range of ports (``0.0.0.0:7000-7003``, one for each process of a
machine: ``gunicorn -w 4``), each process takes the first one free. An
address of every interface is no address to advertise, and an address this
machine does not have is none to bind: both are a :exc:`ValueError` when the
directory is made, not a listener that silently stays local.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import typing as t

__all__ = [
    "Bind",
    "bind_for",
    "check_advertise",
    "is_loopback",
    "listen_on",
    "parse_advertise",
    "parse_bind",
]


class Bind(t.NamedTuple):
    """Where an endpoint listens, and what it publishes."""

    host: str
    """The address to bind (``0.0.0.0`` for every interface)."""
    ports: range
    """The ports to try, in order; ``range(0, 1)`` for any free one."""
    advertise: str
    """The host that other processes connect to."""
    advertise_port: int | None
    """The port they connect to, when it is not the bound one (a NAT's)."""

    def published(self, bound_port: int) -> str:
        """The address other processes connect to, once ``bound_port`` is bound."""
        port = self.advertise_port or bound_port
        return f"[{self.advertise}]:{port}" if ":" in self.advertise else f"{self.advertise}:{port}"


def _split(value: str, name: str) -> tuple[str, str]:
    """``host`` and ``port`` (``''`` when absent) of ``host[:port]``, ``[v6][:port]``."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be host[:port], not {value!r}")
    value = value.strip()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{name} {value!r} is not [address][:port]")
        return host, rest[1:]
    if value.count(":") > 1:
        return value, ""  # a bare IPv6 address
    host, _, port = value.partition(":")
    return host, port


def _port(text: str, value: str, name: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{name} {value!r}: the port must be a number from 1 to 65535")
    return int(text)


def check_advertise(host: str) -> str:
    """``host`` as an address that other processes can connect to.

    :raises ValueError: an address of every interface (``0.0.0.0``, ``::``), which
        says where to listen, not where to connect.
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host  # a name: resolved where it is used
    if address.is_unspecified:
        raise ValueError(
            f"invalid advertised address {host!r}: other processes cannot connect to it;"
            " give this machine's address that they reach (a pod's IP, a LAN address)"
        )
    return host


def parse_advertise(value: str, name: str = "ADVERTISE") -> tuple[str, int | None]:
    """The host and port (``None``: the bound one) of ``host[:port]``.

    :raises ValueError: no host, a port out of range, or an address of every interface.
    """
    host, port = _split(value, name)
    if not host:
        raise ValueError(f"{name} {value!r} names no host")
    return check_advertise(host), _port(port, value, name) if port else None


def parse_bind(value: str, name: str = "BIND") -> tuple[str | None, range | None]:
    """The host (``None``: the default) and ports (``None``: the default) of
    ``[host][:port]`` or ``[host]:first-last``.

    :raises ValueError: a port out of range, a backwards range, or a host this
        machine cannot bind.
    """
    host, ports = _split(value, name)
    found: range | None = None
    if ports:
        first, dash, last = ports.partition("-")
        low = _port(first, value, name)
        high = _port(last, value, name) if dash else low
        if high < low:
            raise ValueError(f"{name} {value!r}: the range of ports runs backwards")
        found = range(low, high + 1)
    if host:
        if not can_bind(host):
            raise ValueError(
                f"{name} {value!r}: this machine has no address {host!r} to listen on"
                " (0.0.0.0 listens on every interface)"
            )
        return host, found
    return None, found


def can_bind(host: str) -> bool:
    """Whether this machine can listen on ``host`` (on some free port)."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except OSError:
        return False
    family, kind, _, _, where = infos[0]
    with socket.socket(family, kind) as probe:
        try:
            probe.bind(where)  # port 0: never in use
        except OSError:
            return False
    return True


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def bind_for(
    advertise: str, advertise_port: int | None, host: str | None, ports: range | None
) -> Bind:
    """Where to bind, from the advertised address and what BIND gave (see the table).

    :raises ValueError: a port in ADVERTISE with a range to bind (every process of the
        machine would publish that one port).
    """
    if host is None:
        if can_bind(advertise):
            host = advertise.strip("[]")
        else:
            host = "::" if ":" in advertise else "0.0.0.0"
    if ports is None:
        ports = range(advertise_port or 0, (advertise_port or 0) + 1)
    elif advertise_port is not None and len(ports) > 1:
        raise ValueError(
            f"ADVERTISE names the port {advertise_port}, and BIND the range"
            f" {ports.start}-{ports.stop - 1}: every process would publish that one port;"
            " leave the port out of ADVERTISE"
        )
    return Bind(host, ports, advertise.strip("[]"), advertise_port)


def listen_on(bind: Bind) -> socket.socket:
    """A TCP socket listening on the first free port of ``bind.ports``.

    :raises OSError: every port is taken (``EADDRINUSE``, naming them), or the
        address cannot be bound.
    """
    family = socket.getaddrinfo(bind.host, 0, type=socket.SOCK_STREAM)[0][0]
    for port in bind.ports:
        listener = socket.socket(family)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((bind.host, port))
            # Listening at once: until a socket listens, another may bind the same port
            # with SO_REUSEADDR, and only one of the two could listen on it then.
            listener.listen(64)
            return listener
        except OSError as error:
            listener.close()
            if error.errno != errno.EADDRINUSE:
                raise
    ports = f"{bind.ports.start}-{bind.ports.stop - 1}" if len(bind.ports) > 1 else bind.ports.start
    raise OSError(
        errno.EADDRINUSE,
        f"every port to bind on {bind.host} ({ports}) is taken, by other processes of this"
        " machine? Give BIND (WSGI_PROXY_LISTEN_BIND) a range with a port for each process",
    )
