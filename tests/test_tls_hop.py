"""TLS on the hop between machines: both ways verified against the deployment's CA, so a
process with another CA's certificate is refused, and a relay that an entry of the
directory routes hops through sees no byte of the users' requests in clear."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import time
import typing as t
from collections.abc import Iterator

import pytest

from .support.certs import authority, issued
from .support.cluster import NAMESPACE, SECRET, RedisWorker, redis_workers
from .support.relay import Relay

pytestmark = [pytest.mark.timeout(60)]

COOKIE = "session=a-users-login-cookie-value"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, t.Any]:
    folder = str(tmp_path_factory.mktemp("certs"))
    ours, theirs = authority(folder, "deployment-ca"), authority(folder, "another-ca")
    return {
        "a": issued(folder, "process-a", ours),
        "b": issued(folder, "process-b", ours),
        "stranger": issued(folder, "stranger", theirs),
    }


@contextlib.contextmanager
def workers(url: str, *files: t.Any) -> Iterator[list[RedisWorker]]:
    """Workers with the TLS files given for each (``None``: without TLS), and no cookie
    jar: a test's Cookie header is sent as given."""
    names = ("tls_cert", "tls_key", "tls_ca")
    options = [{} if given is None else dict(zip(names, given, strict=True)) for given in files]
    with redis_workers(url, *options, use_cookies=False) as made:
        yield made


def echo(request: t.Any) -> str:
    return f"{request.headers.get('Cookie')} {request.get_data(as_text=True)}"


def through_a_relay(url: str, owner: RedisWorker) -> Relay:
    """Rewrite the owner's entry so that hops go through a relay (what anyone who can
    write to the directory could do)."""
    import redis

    host, _, port = owner.directory.address.rpartition(":")
    relay = Relay((host, int(port)))
    client = redis.Redis.from_url(url)
    try:
        key = f"{{{NAMESPACE}}}:owner:{owner.directory.owner}"
        record = json.loads(t.cast(bytes, client.get(key)))
        record["address"] = f"127.0.0.1:{relay.port}"
        client.set(key, json.dumps(record), keepttl=True)
    finally:
        client.close()
    return relay


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "clear-text"])
def test_a_relay_sees_no_request_in_clear(
    redis_url: str, certs: dict[str, t.Any], tls: bool
) -> None:
    files = (certs["a"], certs["b"]) if tls else (None, None)
    with workers(redis_url, *files) as (a, b):
        a.registry.listen(echo, session="private")
        relay = through_a_relay(redis_url, a)
        try:
            answer = b.client.post(
                "/proxy/sessions/private/", data="the body", headers={"Cookie": COOKIE}
            )
            assert answer.get_data() == f"{COOKIE} the body".encode()
            assert relay.seen, "the hop went through the relay"
            in_clear = COOKIE.encode() in relay.seen or b"the body" in relay.seen
            assert in_clear is not tls
        finally:
            relay.close()


def test_a_process_with_another_cas_certificate_is_refused(
    redis_url: str, certs: dict[str, t.Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsgi_proxy_listen")
    with workers(redis_url, certs["a"], certs["stranger"]) as (a, stranger):
        a.registry.listen(echo, session="guarded")
        answer = stranger.client.get("/proxy/sessions/guarded/", buffered=True)
        assert answer.status_code == 502
        # Both ways: the stranger does not trust the owner's certificate, the owner does
        # not trust the stranger's (its endpoint says so in its own thread).
        assert "TLS with the owner" in caplog.text
        deadline = time.monotonic() + 3
        while "refused a hop connection whose TLS failed" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)


def test_tls_files_come_as_three_or_not_at_all(
    certs: dict[str, t.Any], monkeypatch: pytest.MonkeyPatch, tmp_path: t.Any
) -> None:
    from wsgi_proxy_listen.cluster.tls import tls_files

    cert, key, ca = certs["a"]
    assert tls_files() is None
    with pytest.raises(ValueError, match=r"together: \['TLS_CA'\] missing"):
        tls_files(cert, key)
    with pytest.raises(ValueError, match="cannot be used"):
        tls_files(cert, certs["b"].key, ca)  # a key that is not the certificate's
    missing = str(tmp_path / "nowhere.pem")
    with pytest.raises(ValueError, match=f"TLS_CA '{missing}' is no file this process can read"):
        tls_files(cert, key, missing)
    monkeypatch.setenv("WSGI_PROXY_LISTEN_TLS_CERT", cert)
    monkeypatch.setenv("WSGI_PROXY_LISTEN_TLS_KEY", key)
    monkeypatch.setenv("WSGI_PROXY_LISTEN_TLS_CA", ca)
    assert tls_files() == (cert, key, ca)


def test_a_clear_text_hop_off_the_machine_is_said(caplog: pytest.LogCaptureFixture) -> None:
    from wsgi_proxy_listen.cluster import RedisDirectory

    caplog.set_level(logging.WARNING, logger="wsgi_proxy_listen")
    directory = RedisDirectory("redis://127.0.0.1:1/0", secret=SECRET, advertise_host="10.1.2.3")
    directory._endpoint_address("owner")
    assert "is clear text" in caplog.text
    assert "WSGI_PROXY_LISTEN_TLS_CERT" in caplog.text
    caplog.clear()
    RedisDirectory("redis://127.0.0.1:1/0", secret=SECRET)._endpoint_address("owner")
    assert "clear text" not in caplog.text  # loopback: nothing crosses a network


# When a peer resets in the instant between the endpoint's check and Python's own in
# ssl.wrap_socket, Python raises without closing the SSLSocket it made: the collector
# closes its descriptor later, with a ResourceWarning (CPython 3.11's ssl.py).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_connections_reset_before_their_tls_leave_the_endpoint_serving(
    redis_url: str, certs: dict[str, t.Any]
) -> None:
    """A port scanner or a load balancer's check resets connections (with or without a
    byte first): the endpoint's accept loop goes on, and hops are served after."""
    with workers(redis_url, certs["a"], certs["b"]) as (a, b):
        a.registry.listen(echo, session="s1")
        host, _, port = a.directory.address.rpartition(":")
        for number in range(60):
            probe = socket.create_connection((host, int(port)))
            if number % 2:
                probe.sendall(b"x")  # data before any handshake
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            probe.close()
        time.sleep(0.3)
        answer = b.client.get("/proxy/sessions/s1/", headers={"Cookie": "c=1"})
        assert answer.get_data() == b"c=1 "


def test_a_port_probe_is_no_warning(
    redis_url: str, certs: dict[str, t.Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsgi_proxy_listen")
    with workers(redis_url, certs["a"]) as (a,):
        host, _, port = a.directory.address.rpartition(":")
        for _ in range(3):
            socket.create_connection((host, int(port))).close()
        time.sleep(0.5)
        assert "TLS failed" not in caplog.text
