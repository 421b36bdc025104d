"""Where a process of a Redis directory listens and what it advertises, without code:
the settings ADVERTISE, BIND, NAMESPACE, TLS_CERT/KEY/CA and their variables; a fixed
port (or a range, one port a process), and a NAT's port between the two."""

from __future__ import annotations

import logging
import socket
import typing as t

import flask
import pytest

from wsgi_proxy_listen import Registry
from wsgi_proxy_listen.cluster.addresses import Bind, bind_for, parse_advertise, parse_bind
from wsgi_proxy_listen.flask import ProxyListen
from wsgi_proxy_listen.settings import problems

from .support.certs import authority, issued
from .support.cluster import SECRET, redis_workers
from .support.relay import Relay

pytestmark = [pytest.mark.timeout(60)]

# TEST-NET addresses (RFC 5737, RFC 3849): never a machine's own.
ELSEWHERE_V4, ELSEWHERE_V6 = "192.0.2.1", "2001:db8::1"


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 (bound and let go)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        held = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports")


def hello(request: t.Any) -> str:
    return "hello"


# -- the forms -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.5", ("10.0.0.5", None)),
        ("10.0.0.5:7000", ("10.0.0.5", 7000)),
        ("[2001:db8::5]:7000", ("2001:db8::5", 7000)),
        ("2001:db8::5", ("2001:db8::5", None)),
        ("pod-3.runtimes.svc", ("pod-3.runtimes.svc", None)),
    ],
)
def test_an_advertised_address_is_host_and_maybe_port(
    value: str, expected: tuple[str, int | None]
) -> None:
    assert parse_advertise(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.0.0.0", "other processes cannot connect to it"),
        ("[::]:7000", "other processes cannot connect to it"),
        (":7000", "names no host"),
        ("10.0.0.5:0", "the port must be a number from 1 to 65535"),
        ("10.0.0.5:http", "the port must be a number from 1 to 65535"),
        ("[2001:db8::5", "is not [address][:port]"),
        ("", "must be host[:port]"),
    ],
)
def test_a_wrong_advertised_address_is_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        parse_advertise(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", None)),
        ("0.0.0.0:7000", ("0.0.0.0", range(7000, 7001))),
        (":7000-7003", (None, range(7000, 7004))),
        ("[::1]:7000", ("::1", range(7000, 7001))),
    ],
)
def test_a_bind_is_host_and_maybe_ports(value: str, expected: tuple[t.Any, t.Any]) -> None:
    if "::1" in value and not _has_ipv6():
        pytest.skip("no IPv6 loopback on this machine")
    assert parse_bind(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"{ELSEWHERE_V4}:7000", "this machine has no address '192.0.2.1' to listen on"),
        (":7003-7000", "the range of ports runs backwards"),
        (":70000", "the port must be a number from 1 to 65535"),
        ("no-such-host.invalid", "this machine has no address"),
    ],
)
def test_a_bind_that_cannot_be_bound_is_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bind(value)


def test_bind_defaults_to_the_advertised_host_or_every_interface() -> None:
    assert bind_for("127.0.0.1", None, None, None) == Bind(
        "127.0.0.1", range(0, 1), "127.0.0.1", None
    )
    # Not this machine's (a NAT's, a load balancer's): every interface, the same port.
    assert bind_for(ELSEWHERE_V4, 17000, None, None) == Bind(
        "0.0.0.0", range(17000, 17001), ELSEWHERE_V4, 17000
    )
    assert bind_for(ELSEWHERE_V6, None, None, None).host == "::"
    # BIND's port, ADVERTISE's: behind a NAT that maps 17000 to 7000.
    nat = bind_for(ELSEWHERE_V4, 17000, None, range(7000, 7001))
    assert nat.ports == range(7000, 7001)
    assert nat.published(7000) == f"{ELSEWHERE_V4}:17000"
    assert Bind("::1", range(0, 1), "::1", None).published(5000) == "[::1]:5000"
    with pytest.raises(ValueError, match="every process would publish that one port"):
        bind_for(ELSEWHERE_V4, 17000, None, range(7000, 7004))


def test_an_advertised_port_with_a_range_is_refused_when_the_directory_is_made() -> None:
    from wsgi_proxy_listen.cluster import RedisDirectory

    with pytest.raises(ValueError, match="leave the port out of ADVERTISE"):
        RedisDirectory(
            "redis://127.0.0.1:1/0",
            secret=SECRET,
            advertise_host="127.0.0.1:7000",
            bind=":7000-7001",
        )
    with pytest.raises(ValueError, match="to listen on"):
        RedisDirectory("redis://127.0.0.1:1/0", secret=SECRET, bind=f"{ELSEWHERE_V4}:7000")


# -- on real sockets -----------------------------------------------------------------------


def test_a_fixed_port_is_bound_and_published(redis_url: str) -> None:
    port = free_ports(1)
    with redis_workers(redis_url, {"bind": f"127.0.0.1:{port}"}, {}) as (a, b):
        assert a.directory.address == f"127.0.0.1:{port}"
        a.registry.listen(hello, session="fixed")
        assert b.client.get("/proxy/sessions/fixed/").get_data() == b"hello"


def test_a_taken_port_is_said_and_the_listeners_stay_local(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes of one machine cannot both have one port: the second says so,
    naming the setting that gives each its own."""
    port = free_ports(1)
    bind = {"bind": f"127.0.0.1:{port}"}
    logging_errors = caplog.at_level(logging.ERROR, "wsgi_proxy_listen")
    with logging_errors, redis_workers(redis_url, bind, bind, {}) as (a, second, b):
        assert a.directory.address == f"127.0.0.1:{port}"
        assert not second.directory.serving
        second.registry.listen(hello, session="stays-local")
        assert second.client.get("/proxy/sessions/stays-local/").status_code == 200
        assert b.client.get("/proxy/sessions/stays-local/").status_code == 404
    said = [
        record
        for record in caplog.records
        if "cannot start its internal endpoint" in record.getMessage()
    ]
    assert len(said) == 1
    exc_info = said[0].exc_info
    assert exc_info is not None
    assert "is taken" in str(exc_info[1])
    assert "WSGI_PROXY_LISTEN_BIND" in str(exc_info[1])


def test_a_range_gives_each_process_of_a_machine_its_own_port(redis_url: str) -> None:
    first = free_ports(2)
    bind = {"bind": f"127.0.0.1:{first}-{first + 1}"}
    with redis_workers(redis_url, bind, bind, {}) as (a, b, c):
        assert {a.directory.address, b.directory.address} == {
            f"127.0.0.1:{first}",
            f"127.0.0.1:{first + 1}",
        }
        a.registry.listen(hello, session="in-a")
        b.registry.listen(hello, session="in-b")
        for session in ("in-a", "in-b"):
            assert c.client.get(f"/proxy/sessions/{session}/").get_data() == b"hello"


def test_behind_a_nat_the_advertised_port_is_published(redis_url: str) -> None:
    """A container binds 7000 and is reached at the port its machine publishes: here a
    relay forwards a port of its own to the bound one, as Docker's ``-p`` would."""
    bound = free_ports(1)
    relay = Relay(("127.0.0.1", bound))
    try:
        nat = {"advertise_host": f"127.0.0.1:{relay.port}", "bind": f"127.0.0.1:{bound}"}
        with redis_workers(redis_url, nat, {}) as (a, b):
            assert a.directory.address == f"127.0.0.1:{relay.port}"
            a.registry.listen(hello, session="behind-nat")
            assert b.client.get("/proxy/sessions/behind-nat/").get_data() == b"hello"
            assert relay.seen, "the hop went through the NAT's port"
    finally:
        relay.close()


def test_the_bind_variable(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_ports(1)
    monkeypatch.setenv("WSGI_PROXY_LISTEN_BIND", f"127.0.0.1:{port}")
    with redis_workers(redis_url, {}) as (a,):
        assert a.directory.address == f"127.0.0.1:{port}"
    monkeypatch.setenv("WSGI_PROXY_LISTEN_BIND", f"{ELSEWHERE_V4}:1")
    with pytest.raises(ValueError, match="to listen on"), redis_workers(redis_url, {}):
        pass


# -- the settings --------------------------------------------------------------------------


def flask_host(config: dict[str, t.Any], registry: Registry) -> flask.Flask:
    app = flask.Flask("addresses")
    app.config["WSGI_PROXY_LISTEN"] = config
    ProxyListen(app, registry=registry)
    return app


def test_the_settings_configure_the_redis_directory(redis_url: str, tmp_path: t.Any) -> None:
    folder = str(tmp_path)
    ca = authority(folder, "ca")
    cert, key, ca_file = issued(folder, "process", ca)
    port = free_ports(1)
    registry = Registry()
    app = flask_host(
        {
            "DIRECTORY": redis_url,
            "SECRET": SECRET,
            "ADVERTISE": "127.0.0.1",
            "BIND": f"127.0.0.1:{port}",
            "NAMESPACE": "from-settings",
            "TLS_CERT": cert,
            "TLS_KEY": key,
            "TLS_CA": ca_file,
        },
        registry,
    )
    try:
        from wsgi_proxy_listen.cluster.redis_directory import RedisDirectory

        directory = registry.directory
        assert isinstance(directory, RedisDirectory), directory
        assert directory.namespace == "from-settings"
        assert directory.tls is not None
        assert directory.tls.cert == cert
        app.test_client().get("/")  # the first request starts the endpoint
        assert directory.address == f"127.0.0.1:{port}"
        registry.listen(hello, session="configured")
        with redis_workers(
            redis_url,
            {"namespace": "from-settings", "tls_cert": cert, "tls_key": key, "tls_ca": ca_file},
        ) as (b,):
            assert b.client.get("/proxy/sessions/configured/").get_data() == b"hello"
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("config", "found"),
    [
        ({"ADVERTISE": "0.0.0.0"}, "E016"),
        ({"ADVERTISE": 7000}, "E016"),
        ({"BIND": f"{ELSEWHERE_V4}:7000"}, "E017"),
        ({"BIND": ":9-1"}, "E017"),
        ({"NAMESPACE": "a}b"}, "E018"),
        ({"NAMESPACE": ""}, "E018"),
        ({"TLS_CERT": "/no/such/cert.pem"}, "E019"),
        ({"TLS_CERT": "/no/such/cert.pem", "TLS_KEY": "/k", "TLS_CA": "/c"}, "E019"),
        ({"TLS_CA": 5}, "E019"),
    ],
)
def test_a_wrong_directory_setting_is_a_problem_with_its_id(
    config: dict[str, t.Any], found: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CERT", "KEY", "CA"):
        monkeypatch.delenv(f"WSGI_PROXY_LISTEN_TLS_{name}", raising=False)
    assert [problem.id for problem in problems(config)] == [found]
    with pytest.raises(ValueError, match=next(iter(config))):
        flask_host(config, Registry())


def test_directory_settings_need_a_redis_directory(
    tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WSGI_PROXY_LISTEN_DIRECTORY", raising=False)
    with pytest.raises(ValueError, match="configure a Redis directory, and none is named"):
        flask_host({"NAMESPACE": "ns"}, Registry())
    with pytest.raises(ValueError, match="BIND configure a Redis directory, and"):
        flask_host({"DIRECTORY": str(tmp_path), "BIND": "127.0.0.1:7000"}, Registry())
    from wsgi_proxy_listen.naming import open_directory

    with pytest.raises(ValueError, match="only a Redis directory takes them"):
        open_directory(str(tmp_path), bind="127.0.0.1:7000")


def test_directory_settings_after_the_registry_connected_are_refused(redis_url: str) -> None:
    registry = Registry(directory=redis_url, secret=SECRET)
    try:
        with pytest.raises(ValueError, match="come too late"):
            flask_host({"DIRECTORY": redis_url, "SECRET": SECRET, "NAMESPACE": "late"}, registry)
    finally:
        registry.close()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_directory_settings_with_a_folder_are_a_problem_before_start_up(tmp_path: t.Any) -> None:
    """Found in review: Django's check found nothing, and start-up refused them."""
    found = problems({"DIRECTORY": str(tmp_path), "BIND": "127.0.0.1:7000", "NAMESPACE": None})
    assert [problem.id for problem in found] == ["E007"]
    assert problems({"DIRECTORY": str(tmp_path), "NAMESPACE": None}) == []  # None: not given
    assert "BIND configure a Redis directory" in found[0].message


def test_a_password_in_a_directory_setting_is_never_shown(tmp_path: t.Any) -> None:
    registry = Registry(directory=str(tmp_path / "wpl"))
    try:
        with pytest.raises(ValueError, match="has the directory") as raised:
            flask_host({"DIRECTORY": "redis://:hunter2@127.0.0.1:1/0", "SECRET": SECRET}, registry)
        assert "hunter2" not in str(raised.value)
        assert "redis://:***@127.0.0.1:1/0" in str(raised.value)
    finally:
        registry.close()
