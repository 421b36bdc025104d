"""require_bearer (wsgi_proxy_listen.auth) through the middleware and the checked stack."""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Iterable

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from wsgi_proxy_listen import Registry
from wsgi_proxy_listen.auth import require_bearer

from .support.wsgi import assert_plain_answer

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

MakeClient = Callable[..., Client]
SECRET = "s3cret-Token_1.2~+/="


def report(request: Request) -> dict[str, str]:
    return {"report": "ok"}


def wsgi_report(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi ok"]


@pytest.mark.parametrize(
    ("listener", "body"),
    [
        pytest.param(report, b'{"report": "ok"}', id="request-handler"),
        pytest.param(wsgi_report, b"wsgi ok", id="wsgi-app"),
    ],
)
@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"Bearer {SECRET}", id="exact"),
        pytest.param(f"bearer {SECRET}", id="lower-scheme"),
        pytest.param(f"BEARER {SECRET}", id="upper-scheme"),
    ],
)
def test_right_token_reaches_the_listener(
    registry: Registry, make_client: MakeClient, listener: object, body: bytes, header: str
) -> None:
    registry.listen(require_bearer(listener, SECRET), session="a")
    response = make_client().get("/proxy/sessions/a/", headers={"Authorization": header})
    assert response.status_code == 200
    assert response.get_data() == body


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("Bearer", id="scheme-only"),
        pytest.param("Bearer ", id="scheme-space"),
        pytest.param("Bearer wrong", id="wrong"),
        pytest.param(f"Bearer {SECRET}x", id="longer"),
        pytest.param(f"Bearer {SECRET[:-1]}", id="shorter"),
        pytest.param(f"Basic {SECRET}", id="basic-scheme"),
        pytest.param(f"Token {SECRET}", id="other-scheme"),
        pytest.param(f"Bearer {SECRET} extra", id="two-words"),
        pytest.param("Bearer s3cr\u00e9t", id="latin1-token"),
        pytest.param("Bearer \u00c3\u00a9", id="utf8-bytes-as-latin1"),
        pytest.param("Bearer a\tb", id="tab"),
        pytest.param("Bearer ===", id="only-padding"),
        pytest.param(SECRET, id="no-scheme"),
        pytest.param("Bearer=" + SECRET, id="equals"),
    ],
)
def test_missing_wrong_or_malformed_header_gives_401(
    registry: Registry, make_client: MakeClient, header: str | None
) -> None:
    called: list[int] = []

    def listener(request: Request) -> str:
        called.append(1)
        return "secret data"

    registry.listen(require_bearer(listener, SECRET), session="a")
    headers = {} if header is None else {"Authorization": header}
    response = make_client().get("/proxy/sessions/a/", headers=headers)
    assert_plain_answer(response, 401, SECRET, "secret data")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert called == []


def test_bytes_token(registry: Registry, make_client: MakeClient) -> None:
    registry.listen(require_bearer(report, SECRET.encode()), session="a")
    client = make_client()
    assert (
        client.get("/proxy/sessions/a/", headers={"Authorization": f"Bearer {SECRET}"}).status_code
        == 200
    )


def test_callable_token_rotates(registry: Registry, make_client: MakeClient) -> None:
    current = {"token": "first"}
    registry.listen(require_bearer(report, lambda: current["token"]), session="a")
    client = make_client()

    def status(token: str) -> int:
        return client.get(
            "/proxy/sessions/a/", headers={"Authorization": f"Bearer {token}"}
        ).status_code

    assert (status("first"), status("second")) == (200, 401)
    current["token"] = "second"
    assert (status("first"), status("second")) == (401, 200)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(lambda: "", id="empty"),
        pytest.param(lambda: None, id="none"),
        pytest.param(lambda: "caf\u00e9", id="non-ascii"),
        pytest.param(lambda: 1 / 0, id="raises"),
    ],
)
def test_unusable_callable_token_denies_and_logs(
    registry: Registry,
    make_client: MakeClient,
    errors: pytest.LogCaptureFixture,
    source: Callable[[], t.Any],
) -> None:
    registry.listen(require_bearer(report, source), session="a")
    response = make_client().get("/proxy/sessions/a/", headers={"Authorization": "Bearer x"})
    assert_plain_answer(response, 401)
    assert "bearer token callable" in errors.text


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty-str"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param(None, id="none"),
        pytest.param("two words", id="space"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param(12345, id="int"),
    ],
)
def test_unusable_token_raises_when_the_wrapper_is_made(token: t.Any) -> None:
    with pytest.raises(ValueError, match="invalid bearer token") as info:
        require_bearer(report, token)
    if token:
        assert str(token) not in str(info.value), "the secret is never echoed"


def test_wrapper_rejects_unresolvable_listener() -> None:
    with pytest.raises(TypeError, match="kind="):
        require_bearer(lambda *args: None, SECRET)


def test_wrapper_is_accepted_by_listen_and_named(registry: Registry) -> None:
    listener = registry.listen(require_bearer(report, SECRET), session="a")
    assert "require_bearer(report)" in repr(listener)
    assert SECRET not in repr(listener)
