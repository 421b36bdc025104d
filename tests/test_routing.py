from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    ],
)
def test_validate_prefix_rejects(prefix: object) -> None:
    with pytest.raises(ValueError, match="invalid prefix"):
        routing.validate_prefix(prefix)


@pytest.mark.parametrize("prefix", [b"/proxy", None, 5])
def test_validate_prefix_rejects_other_types(prefix: object) -> None:
    with pytest.raises(TypeError, match="the prefix must be a str"):
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


# -- the shortcut for plain session routes, against the full checks --------------------------

PLAIN_CASES = [
    # (PATH_INFO, raw URI or None, SCRIPT_NAME)
    ("/proxy/sessions/a", None, ""),
    ("/proxy/sessions/a/", None, ""),
    ("/proxy/sessions/a/x/y", None, ""),
    ("/proxy/sessions/a/x", "/proxy/sessions/a/x", ""),
    ("/proxy/sessions/a/x", "/proxy/sessions/a/x?q=1", ""),
    ("/proxy/sessions/a", "/proxy/sessions/a?q=%2F", ""),
    ("/proxy/sessions/a/b c", "/proxy/sessions/a/b%20c", ""),
    ("/proxy/sessions/a/b/c", "/proxy/sessions/a%2Fb/c", ""),
    ("/proxy/sessions/a/b", "/proxy/sessions/%61/b", ""),
    ("/proxy/sessions/a/x", "/host/proxy/sessions/a/x", "/host"),
    ("/proxy/sessions/a/x", "http://h/proxy/sessions/a/x", ""),
    ("/proxy/sessions/a/./x", None, ""),
    ("/proxy/sessions/a/../x", None, ""),
    ("/proxy/sessions/a/x", "/proxy/sessions/a/%2e%2e/x", ""),
    ("/proxy/sessions/a%2Fb", None, ""),
    ("/proxy/sessions/a b", None, ""),
    ("/proxy/sessions/", None, ""),
    ("/proxy/sessions//x", None, ""),
    ("/proxy/sessions/" + "a" * 129, None, ""),
    ("/proxy/sessions/ab", "/proxy/sessions/abc", ""),
    ("/proxy/sessions/a", "/proxy/sessions/a;x", ""),
    ("/proxy/sessions/a/%2G", "/proxy/sessions/a/%2G", ""),
    # Found in review: a PATH_INFO left undecoded equals its raw URI, %2e and all.
    ("/proxy/sessions/s1/%2e", "/proxy/sessions/s1/%2e", ""),
    ("/proxy/apps/x/sessions/a", None, ""),
]


@pytest.mark.parametrize(("path", "raw", "script_name"), PLAIN_CASES)
def test_the_plain_route_agrees_with_the_full_checks(
    path: str, raw: str | None, script_name: str
) -> None:
    """Whatever the shortcut accepts, the full checks route alike; where the id is valid,
    what the shortcut leaves to the full checks is never silently a different session."""
    plain = routing.plain_session_route(path, "/proxy/sessions/", raw)
    full = routing.route(path, "/proxy", script_name, raw)
    if plain is None:
        return
    session, split = plain
    if not routing.is_valid_id(session):
        return  # no listener has an invalid id: the lookup misses, the full checks run
    assert isinstance(full, routing.Route), (path, raw, full)
    assert (full.kind, full.session, full.split) == (routing.SESSION, session, split)


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/proxy/sessions/a/x", None),
        ("/proxy/sessions/a/x", "/proxy/sessions/a/x"),
        ("/proxy/sessions/a/x", "/proxy/sessions/a/x?q=1"),
        ("/proxy/sessions/a", "/proxy/sessions/a"),
    ],
)
def test_the_plain_route_is_taken_for_the_common_cases(path: str, raw: str | None) -> None:
    assert routing.plain_session_route(path, "/proxy/sessions/", raw) == ("a", 17)


@given(
    rest=st.text(alphabet="/.%2Fab?c;", max_size=12),
    session=st.sampled_from(["a", "b1", "x-y", "a b", ""]),
    raw_kind=st.sampled_from(["none", "same", "quoted", "prefixed"]),
)
def test_the_plain_route_never_disagrees(rest: str, session: str, raw_kind: str) -> None:
    path = f"/proxy/sessions/{session}{rest}"
    raw = {
        "none": None,
        "same": path,
        "quoted": quote(path, safe="/?"),
        "prefixed": "/host" + path,
    }[raw_kind]
    script_name = "/host" if raw_kind == "prefixed" else ""
    plain = routing.plain_session_route(path, "/proxy/sessions/", raw)
    if plain is None or not routing.is_valid_id(plain[0]):
        return
    full = routing.route(path, "/proxy", script_name, raw)
    assert isinstance(full, routing.Route), (path, raw, full)
    assert (full.session, full.split) == plain
