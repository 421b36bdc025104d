from __future__ import annotations

import pytest

from wsgi_proxy_listen import routing
from wsgi_proxy_listen.routing import APP, APP_SESSION, SESSION, Route


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/proxy/sessions/a", Route(SESSION, None, "a", 17), id="session-no-rest"),
        pytest.param("/proxy/sessions/a/", Route(SESSION, None, "a", 17), id="session-slash"),
        pytest.param(
            "/proxy/sessions/a/x/y", Route(SESSION, None, "a", 17), id="session-with-rest"
        ),
        pytest.param(
            "/proxy/sessions/A-b_9/x", Route(SESSION, None, "A-b_9", 21), id="session-charset"
        ),
        pytest.param(
            "/proxy/sessions/" + "a" * 128, Route(SESSION, None, "a" * 128, 144), id="id-128"
        ),
        pytest.param("/proxy/apps/s", Route(APP, "s", None, 13), id="app-no-rest"),
        pytest.param("/proxy/apps/s/x", Route(APP, "s", None, 13), id="app-with-rest"),
        pytest.param("/proxy/apps/s/sessions", Route(APP, "s", None, 13), id="app-sessions-bare"),
        pytest.param(
            "/proxy/apps/s/sessionsX/a", Route(APP, "s", None, 13), id="app-sessions-lookalike"
        ),
        pytest.param(
            "/proxy/apps/s/sessions/a", Route(APP_SESSION, "s", "a", 24), id="app-session"
        ),
        pytest.param(
            "/proxy/apps/s/sessions/a/x", Route(APP_SESSION, "s", "a", 24), id="app-session-rest"
        ),
        pytest.param("/proxy/sessions/", None, id="empty-session"),
        pytest.param("/proxy/sessions//a", None, id="double-slash-before-id"),
        pytest.param("/proxy/sessions/" + "a" * 129, None, id="id-129"),
        pytest.param("/proxy/sessions/" + "a" * 10_000 + "/x", None, id="id-10k"),
        pytest.param("/proxy/sessions/a;b/x", None, id="semicolon"),
        pytest.param("/proxy/sessions/a%2Fb/x", None, id="literal-percent"),
        pytest.param("/proxy/sessions/a b", None, id="space"),
        pytest.param("/proxy/sessions/\uff41", None, id="fullwidth"),
        pytest.param("/proxy/sessions/a\x00", None, id="nul"),
        pytest.param("/proxy/apps/", None, id="empty-app"),
        pytest.param("/proxy/apps//sessions/a", None, id="empty-slug"),
        pytest.param("/proxy/apps/s/sessions/", None, id="app-session-empty"),
        pytest.param("/proxy/apps/s/sessions//a", None, id="app-session-double-slash"),
        pytest.param("/proxy/apps/s!/x", None, id="bad-slug"),
        pytest.param("/proxy/sessions/" + "/" * 10_000, None, id="ten-thousand-slashes"),
    ],
)
def test_parse(path: str, expected: Route | None) -> None:
    """parse() splits a path into kind, ids and the SCRIPT_NAME/PATH_INFO cut, or rejects it."""
    assert routing.parse(path, "/proxy") == expected


def test_parse_split_keeps_the_original_string() -> None:
    """The two slices put back together are exactly the path that came in."""
    path = "/proxy/apps/s/sessions/a/%2F/x?y"
    route = routing.parse(path, "/proxy")
    assert route is not None
    assert path[: route.split] == "/proxy/apps/s/sessions/a"
    assert path[: route.split] + path[route.split :] == path


def test_parse_with_a_deep_prefix() -> None:
    assert routing.parse("/a/b/c/sessions/x/y", "/a/b/c") == Route(SESSION, None, "x", 17)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/proxy/sessions/a/./x", True, id="dot-middle"),
        pytest.param("/proxy/sessions/a/../x", True, id="dotdot-middle"),
        pytest.param("/proxy/sessions/a/.", True, id="dot-end"),
        pytest.param("/proxy/sessions/a/..", True, id="dotdot-end"),
        pytest.param("/proxy/sessions/../x", True, id="dotdot-as-id"),
        pytest.param("/proxy/sessions/a/.x", False, id="dotfile"),
        pytest.param("/proxy/sessions/a/...", False, id="three-dots"),
        pytest.param("/proxy/sessions/a/x..", False, id="trailing-dots"),
        pytest.param("/proxy/sessions/a/%2e%2e", False, id="encoded-is-not-decoded"),
    ],
)
def test_has_dot_segment(path: str, expected: bool) -> None:
    assert routing.has_dot_segment(path) is expected


@pytest.mark.parametrize(
    ("raw_path", "expected"),
    [
        pytest.param("/proxy/sessions/a/%2e%2e/x", True, id="both-encoded"),
        pytest.param("/proxy/sessions/a/.%2E/x", True, id="half-encoded-upper"),
        pytest.param("/proxy/sessions/a/%2e", True, id="dot-encoded-end"),
        pytest.param("/proxy/sessions/a/%2e%2e%2e", False, id="three-encoded"),
        pytest.param("/proxy/sessions/a/%2ex", False, id="encoded-dotfile"),
        pytest.param("/proxy/sessions/a/x", False, id="no-percent"),
    ],
)
def test_has_encoded_dot_segment(raw_path: str, expected: bool) -> None:
    assert routing.has_encoded_dot_segment(raw_path) is expected


@pytest.mark.parametrize(
    ("raw_uri", "expected"),
    [
        pytest.param("/proxy/sessions/a/x?q=1", "/proxy/sessions/a/x", id="origin-form"),
        pytest.param("http://example.com/proxy/x?q", "/proxy/x", id="absolute-form"),
        pytest.param("https://h:8443/p", "/p", id="absolute-form-port"),
        pytest.param("/p?a=/b?c", "/p", id="query-with-slash"),
    ],
)
def test_raw_uri_path(raw_uri: str, expected: str) -> None:
    assert routing.raw_uri_path(raw_uri) == expected


@pytest.mark.parametrize(
    ("raw_path", "script_name", "expected"),
    [
        pytest.param("/proxy/sessions/a/x", "", True, id="plain"),
        pytest.param("/proxy/sessions/a", "", True, id="no-rest"),
        pytest.param("/proxy/sessions/a/x%2Fy", "", True, id="encoded-rest-is-fine"),
        pytest.param("/proxy/sessions/a%2Fb/x", "", False, id="encoded-slash-after-id"),
        pytest.param("/proxy/sessions/%61/x", "", False, id="encoded-id"),
        pytest.param("/proxy/session%73/a/x", "", False, id="encoded-sessions"),
        pytest.param("/proxy%2Fsessions/a/x", "", False, id="encoded-slash-in-prefix"),
        pytest.param("/%70roxy/sessions/a/x", "", False, id="encoded-prefix"),
        pytest.param("/proxy/sessions/ab/x", "", False, id="longer-id"),
        pytest.param("/host/proxy/sessions/a/x", "/host", True, id="with-script-name"),
        pytest.param("/proxy/sessions/a/x", "/host", True, id="without-script-name"),
        pytest.param("/my%20host/proxy/sessions/a/x", "/my host", True, id="escaped-script-name"),
        pytest.param("/other/proxy/sessions/a/x", "/host", False, id="wrong-script-name"),
        pytest.param("/host/proxy/sessions/a%2F/x", "/host", False, id="script-name-and-escape"),
    ],
)
def test_raw_path_spells(raw_path: str, script_name: str, expected: bool) -> None:
    """The raw URI must spell the routing part letter for letter, followed by '/' or the end."""
    assert routing.raw_path_spells(raw_path, script_name, "/proxy/sessions/a") is expected


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("/proxy", id="default"),
        pytest.param("/a/b", id="two-segments"),
        pytest.param("/_x-y.z~", id="unreserved"),
    ],
)
def test_validate_prefix_accepts(prefix: str) -> None:
    assert routing.validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("", id="empty"),
        pytest.param("/", id="root"),
        pytest.param("proxy", id="no-leading-slash"),
        pytest.param("/proxy/", id="trailing-slash"),
        pytest.param("/a//b", id="empty-segment"),
        pytest.param("/a b", id="space"),
        pytest.param("/a%2Fb", id="percent"),
        pytest.param("/a/../b", id="dotdot"),
        pytest.param("/.", id="dot"),
        pytest.param(b"/proxy", id="bytes"),
        pytest.param(None, id="none"),
    ],
)
def test_validate_prefix_rejects(prefix: object) -> None:
    with pytest.raises(ValueError, match="invalid prefix"):
        routing.validate_prefix(prefix)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a", True, id="one-char"),
        pytest.param("a" * 128, True, id="128"),
        pytest.param("a" * 129, False, id="129"),
        pytest.param("", False, id="empty"),
        pytest.param("a.b", False, id="dot"),
        pytest.param("a\n", False, id="trailing-newline"),
        pytest.param("\uff41", False, id="fullwidth"),
        pytest.param(1, False, id="int"),
    ],
)
def test_is_valid_id(value: object, expected: bool) -> None:
    assert routing.is_valid_id(value) is expected
