"""Cookies between a host and its listeners (cookies.py and forward_cookies): a listener's
cookies reach only its own path, and named host cookies can be withheld from listeners."""

from __future__ import annotations

import typing as t

import flask
import pytest

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.cookies import MAX_PER_ANSWER, confine, withhold

from .support.wsgi import BufferedClient, checked


def raw_client(middleware: ProxyMiddleware) -> BufferedClient:
    """A client that sends the Cookie header it is given (no cookie jar of its own)."""
    return BufferedClient(checked(middleware), use_cookies=False)


PATH = "/proxy/sessions/s1"


LONG = f"{PATH}/" + "a" * 1100


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param("a=1; Path=/", f"a=1; Path={PATH}", id="root"),
        pytest.param("a=1; path=/proxy", f"a=1; Path={PATH}", id="parent"),
        pytest.param("a=1; Path=/proxy/sessions", f"a=1; Path={PATH}", id="all-sessions"),
        pytest.param("a=1; Path=/proxy/sessions/s", f"a=1; Path={PATH}", id="look-alike"),
        pytest.param("a=1; Path=/proxy/sessions/s10", f"a=1; Path={PATH}", id="other"),
        pytest.param(f"a=1; Path={PATH}", f"a=1; Path={PATH}", id="own"),
        pytest.param(f"a=1; Path={PATH}/app", f"a=1; Path={PATH}/app", id="below"),
        # A browser's default path may be the parent of every session.
        pytest.param("a=1", f"a=1; Path={PATH}", id="none"),
        # A browser ignores a longer value, and falls back to its default path.
        pytest.param(f"a=1; Path={LONG}", f"a=1; Path={PATH}", id="too-long"),
        pytest.param("a=1; Domain=example.com; Path=/", f"a=1; Path={PATH}", id="domain"),
        pytest.param("a=1; Path=/x; Path=/", f"a=1; Path={PATH}", id="two-paths"),
        pytest.param(
            "sid=a=b; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly; SameSite=Lax; Path=/",
            f"sid=a=b; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly; SameSite=Lax; Path={PATH}",
            id="other-attributes-kept",
        ),
        pytest.param("__Secure-a=1; Secure; Path=/", f"__Secure-a=1; Secure; Path={PATH}"),
        pytest.param("__Host-a=1; Secure; Path=/", None, id="host-prefix"),
        pytest.param("__host-a=1; Secure; Path=/", None, id="host-prefix-any-case"),
    ],
)
def test_confine(given: str, expected: str | None) -> None:
    assert confine(given, PATH) == expected


@pytest.mark.parametrize(
    ("cookie", "names", "expected"),
    [
        ("session=host; own=1", {"session"}, "own=1"),
        ("own=1;session=host;  other=2", {"session"}, "own=1; other=2"),
        ("session=host", {"session"}, ""),
        ("csrftoken=x; sessionid=y; own=1", {"csrftoken", "sessionid"}, "own=1"),
        ("a=1; ; b=2", {"x"}, "a=1; b=2"),
        ("sessionx=1; xsession=2", {"session"}, "sessionx=1; xsession=2"),
        # A browser sends the listener's cookie of the same name first (its path is longer).
        ("session=listener; own=1; session=host", {"session"}, "session=listener; own=1"),
        (
            "session=l2; csrftoken=a; session=l1; session=host; csrftoken=b",
            {"session", "csrftoken"},
            "session=l2; csrftoken=a; session=l1",
        ),
        ("session=listener; session=host", set(), "session=listener; session=host"),
    ],
)
def test_withhold(cookie: str, names: set[str], expected: str) -> None:
    assert withhold(cookie, frozenset(names)) == expected


# -- through the middleware ---------------------------------------------------------------------


def flask_host() -> flask.Flask:
    host = flask.Flask("host")
    host.secret_key = "host-secret"

    @host.post("/login")
    def login() -> str:
        flask.session["user"] = "host-user"
        return "host login"

    @host.get("/whoami")
    def whoami() -> str:
        return str(flask.session.get("user"))

    return host


def flask_listener() -> flask.Flask:
    """A whole Flask app as a listener: its session cookie has the host's name and path."""
    listener = flask.Flask("listener")
    listener.secret_key = "listener-secret"

    @listener.post("/login")
    def login() -> str:
        flask.session["user"] = "listener-user"
        return "listener login"

    @listener.get("/whoami")
    def whoami() -> str:
        return str(flask.session.get("user"))

    return listener


def test_a_listener_can_no_longer_log_the_user_out_of_the_host(registry: Registry) -> None:
    """Finding 1: a Flask listener's session=...; Path=/ replaced the host's login."""
    host = flask_host()
    host.wsgi_app = ProxyMiddleware(host.wsgi_app, registry)  # type: ignore[method-assign]
    registry.listen(flask_listener(), session="s1")
    client = host.test_client()
    client.post("/login")
    assert client.get("/whoami").text == "host-user"
    answer = client.post("/proxy/sessions/s1/login")
    assert f"Path={PATH}" in answer.headers["Set-Cookie"]
    assert client.get("/whoami").text == "host-user", "the host's login survives"
    # That the listener then reads its own login is for a browser to show
    # (tests/test_browser.py): a browser sends the cookie of the longer path first,
    # werkzeug's test client does not.


def test_a_listener_cookie_without_a_path_stays_in_its_session(registry: Registry) -> None:
    def sets(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "k=v")])
        return [b"ok"]

    registry.listen(sets, session="s1")
    client = raw_client(ProxyMiddleware(lambda e, s: [], registry))
    assert client.get("/proxy/sessions/s1").headers["Set-Cookie"] == f"k=v; Path={PATH}"
    assert client.get("/proxy/sessions/s1/page").headers["Set-Cookie"] == f"k=v; Path={PATH}"


def test_a_host_cookie_cookie_of_a_listener_is_dropped_and_logged(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    def sets(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Set-Cookie", "__Host-id=1; Secure; Path=/"),
                ("Set-Cookie", "kept=1"),
            ],
        )
        return [b"ok"]

    registry.listen(sets, session="s1")
    client = raw_client(ProxyMiddleware(lambda e, s: [], registry))
    answer = client.get("/proxy/sessions/s1/")
    assert answer.headers.getlist("Set-Cookie") == [f"kept=1; Path={PATH}"]
    assert "dropped a __Host- cookie" in caplog.text


def test_a_script_name_of_the_host_is_part_of_the_path(registry: Registry) -> None:
    def sets(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "k=v; Path=/")])
        return [b"ok"]

    registry.listen(sets, session="s1")
    client = raw_client(ProxyMiddleware(lambda e, s: [], registry))
    answer = client.get("/proxy/sessions/s1/", environ_overrides={"SCRIPT_NAME": "/h\xc3\xa9"})
    assert answer.headers["Set-Cookie"] == "k=v; Path=/h%C3%A9/proxy/sessions/s1"


def test_withheld_host_cookies_never_reach_listeners_that_keep_their_own(
    registry: Registry,
) -> None:
    """Finding 2: forward_cookies=False removed the listener's own cookies too, so a Flask
    listener's session never stuck; a collection withholds only the named ones."""
    seen: list[str | None] = []

    def record(request: t.Any) -> str:
        seen.append(request.headers.get("Cookie"))
        return "ok"

    registry.listen(record, session="s1")
    middleware = ProxyMiddleware(lambda e, s: [], registry, forward_cookies=["session"])
    raw_client(middleware).get(
        "/proxy/sessions/s1/",
        headers={"Cookie": "session=host-login; own=listener-value; csrftoken=c"},
    )
    assert seen == ["own=listener-value; csrftoken=c"]


def test_a_listener_with_cookies_works_with_the_host_session_withheld(registry: Registry) -> None:
    host = flask_host()
    host.wsgi_app = ProxyMiddleware(  # type: ignore[method-assign]
        host.wsgi_app, registry, forward_cookies=["host_session"]
    )
    host.config["SESSION_COOKIE_NAME"] = "host_session"
    registry.listen(flask_listener(), session="s1")
    client = host.test_client()
    client.post("/login")
    client.post("/proxy/sessions/s1/login")
    assert client.get("/proxy/sessions/s1/whoami").text == "listener-user"
    assert client.get("/whoami").text == "host-user"


def test_withholding_drops_what_an_outer_middleware_parsed(registry: Registry) -> None:
    seen: list[t.Any] = []

    def record(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        seen.append(environ.get("webob._parsed_cookies"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    registry.listen(record, session="s1")
    for forward_cookies in (False, ["session"]):
        client = raw_client(
            ProxyMiddleware(lambda e, s: [], registry, forward_cookies=forward_cookies)
        )
        client.get(
            "/proxy/sessions/s1/",
            environ_overrides={"webob._parsed_cookies": ({"session": "x"}, "session=x")},
        )
    assert seen == [None, None]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        pytest.param("session", TypeError, "collection of cookie names", id="a-string"),
        pytest.param(5, TypeError, "collection of cookie names", id="an-int"),
        pytest.param(None, TypeError, "collection of cookie names", id="none"),
        pytest.param([], ValueError, "name the cookies to withhold", id="empty"),
        pytest.param([""], ValueError, "non-empty str", id="empty-name"),
        pytest.param([b"session"], ValueError, "non-empty str", id="bytes-name"),
    ],
)
def test_forward_cookies_refuses_what_it_cannot_mean(
    registry: Registry, value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ProxyMiddleware(lambda e, s: [], registry, forward_cookies=t.cast(t.Any, value))


def test_a_listener_that_changes_its_environ_cannot_widen_its_cookies(registry: Registry) -> None:
    """Found in review: the path came from the environ, which the listener holds (ProxyFix
    inside a listener rewrites SCRIPT_NAME, so would code that means harm)."""

    def widens(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        environ["SCRIPT_NAME"] = ""
        environ["PATH_INFO"] = "/"
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "session=evil; Path=/")]
        )
        return [b"ok"]

    registry.listen(widens, session="s1")
    client = raw_client(ProxyMiddleware(lambda e, s: [], registry))
    assert client.get("/proxy/sessions/s1/").headers["Set-Cookie"] == f"session=evil; Path={PATH}"


def test_a_flask_listener_behind_its_own_proxy_fix_keeps_its_cookies_in(
    registry: Registry,
) -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    listener = flask_listener()
    listener.wsgi_app = ProxyFix(listener.wsgi_app, x_prefix=1)  # type: ignore[method-assign]
    registry.listen(listener, session="s1")
    client = raw_client(ProxyMiddleware(lambda e, s: [], registry))
    answer = client.post("/proxy/sessions/s1/login", headers={"X-Forwarded-Prefix": "/"})
    assert answer.headers["Set-Cookie"].endswith(f"Path={PATH}")


@pytest.mark.parametrize(
    "header",
    [
        ("Clear-Site-Data", '"cookies", "storage"'),
        ("Service-Worker-Allowed", "/"),
        ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
        ("Alt-Svc", 'h3=":443"'),
    ],
)
def test_headers_that_act_on_the_whole_origin_are_dropped(
    registry: Registry, header: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: Clear-Site-Data from a listener logged the user out of the host."""

    def sends(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), header])
        return [b"ok"]

    registry.listen(sends, session="s1")
    client = raw_client(ProxyMiddleware(lambda e, s: [], registry))
    for _ in range(2):  # the second answer would come from a cache of checked headers
        answer = client.get("/proxy/sessions/s1/")
        assert answer.status_code == 200
        assert header[0] not in answer.headers
    assert "acts on the whole origin" in caplog.text


def test_one_answer_sets_at_most_twenty_cookies(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: a listener could set cookies until the browser evicted the host's
    login (Chromium keeps about 180 a site)."""

    def floods(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        cookies = [("Set-Cookie", f"c{index}=1") for index in range(200)]
        start_response("200 OK", [("Content-Type", "text/plain"), *cookies])
        return [b"ok"]

    registry.listen(floods, session="s1")
    answer = raw_client(ProxyMiddleware(lambda e, s: [], registry)).get(f"{PATH}/")
    assert answer.status_code == 200
    assert answer.headers.getlist("Set-Cookie") == [
        f"c{index}=1; Path={PATH}" for index in range(MAX_PER_ANSWER)
    ]
    assert MAX_PER_ANSWER == 20
    assert [record.getMessage() for record in caplog.records] == [
        "dropped the cookies of a listener beyond 20 in one answer: they would evict the"
        " host's from the browser"
    ]
