from __future__ import annotations

import contextvars
import sys
import threading
import time
import typing as t

import pytest
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wrappers import Request

import wsgi_proxy_listen
from wsgi_proxy_listen import Listener, ProxyMiddleware, Registry, default_registry


def hello(request: Request) -> str:
    return "hello"


def other(request: Request) -> str:
    return "other"


# -- listen, replace, close ----------------------------------------------------


def test_listen_registers_and_close_removes(registry: Registry) -> None:
    listener = registry.listen(hello, session="s1")
    assert isinstance(listener, Listener)
    assert (listener.session, listener.app, listener.handler) == ("s1", None, hello)
    assert registry.get("s1") is listener
    assert "s1" in registry
    assert len(registry) == 1
    assert list(registry) == [listener]
    assert not listener.closed
    listener.close()
    assert registry.get("s1") is None
    assert "s1" not in registry
    assert len(registry) == 0
    assert listener.closed


def test_close_is_idempotent(registry: Registry) -> None:
    listener = registry.listen(hello, session="s1")
    listener.close()
    listener.close()
    assert len(registry) == 0


def test_listener_is_a_context_manager(registry: Registry) -> None:
    with registry.listen(hello, session="s1") as listener:
        assert registry.get("s1") is listener
    assert registry.get("s1") is None


def test_second_listen_replaces_and_old_close_keeps_new(registry: Registry) -> None:
    """One listener per session; closing a replaced handle does not remove its successor."""
    first = registry.listen(hello, session="s1")
    second = registry.listen(other, session="s1")
    assert registry.get("s1") is second
    assert len(registry) == 1
    assert first.closed
    first.close()
    assert registry.get("s1") is second


def test_close_session(registry: Registry) -> None:
    registry.listen(hello, session="s1", app="sales")
    assert registry.close_session("s1") is True
    assert registry.get("s1") is None
    assert registry.current_listener("sales") is None
    assert registry.close_session("s1") is False


def test_listen_resolves_the_handler_once(registry: Registry) -> None:
    """The WSGI callable is built at listen() time, not per request."""
    listener = registry.listen(hello, session="s1")
    assert listener.wsgi_app is listener.wsgi_app
    assert callable(listener.wsgi_app)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param({"session": "a b"}, ValueError, "invalid session id 'a b'", id="bad-session"),
        pytest.param({"session": ""}, ValueError, "invalid session id ''", id="empty-session"),
        pytest.param({"session": "a" * 129}, ValueError, "invalid session id", id="long-session"),
        pytest.param({"session": 5}, TypeError, "a session id must be a str", id="int-session"),
        pytest.param({"session": "s", "app": "x/y"}, ValueError, "invalid app slug", id="bad-app"),
        pytest.param({}, LookupError, "listen\\(\\) needs a session", id="no-session"),
        pytest.param({"session": "s", "kind": "x"}, ValueError, "unknown kind", id="bad-kind"),
    ],
)
def test_listen_rejects_wrong_calls(
    registry: Registry, kwargs: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        registry.listen(hello, **kwargs)
    assert len(registry) == 0


def test_failed_listen_keeps_the_previous_listener(registry: Registry) -> None:
    listener = registry.listen(hello, session="s1")
    with pytest.raises(TypeError):
        registry.listen(42, session="s1")
    assert registry.get("s1") is listener


def test_no_session_message_says_how_to_give_one(registry: Registry) -> None:
    with pytest.raises(LookupError) as info:
        registry.listen(hello)
    assert "session='...'" in str(info.value)
    assert "registry.session" in str(info.value)


# -- session binding -------------------------------------------------------------


def test_bound_session_is_used(registry: Registry) -> None:
    with registry.session("s1", app="sales"):
        listener = registry.listen(hello)
    assert (listener.session, listener.app) == ("s1", "sales")
    with pytest.raises(LookupError):
        registry.listen(hello)


def test_explicit_app_overrides_bound_app(registry: Registry) -> None:
    with registry.session("s1", app="sales"):
        listener = registry.listen(hello, app="other")
    assert listener.app == "other"


def test_explicit_session_ignores_bound_app(registry: Registry) -> None:
    with registry.session("s1", app="sales"):
        listener = registry.listen(hello, session="s2")
    assert (listener.session, listener.app) == ("s2", None)


def test_module_level_listen_uses_the_bound_session() -> None:
    """With registry.session(...): listen(handler) uses the bound session."""
    with wsgi_proxy_listen.session("module-s1"):
        listener = wsgi_proxy_listen.listen(hello)
    try:
        assert default_registry.get("module-s1") is listener
    finally:
        listener.close()
    assert "module-s1" not in default_registry


def test_binding_is_per_thread(registry: Registry) -> None:
    seen: list[BaseException] = []

    def elsewhere() -> None:
        try:
            registry.listen(hello)
        except LookupError as error:
            seen.append(error)

    with registry.session("s1"):
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    assert len(seen) == 1


def test_binding_follows_copied_context(registry: Registry) -> None:
    with registry.session("s1"):
        context = contextvars.copy_context()
    listener = context.run(registry.listen, hello)
    assert listener.session == "s1"


def test_session_rejects_bad_ids(registry: Registry) -> None:
    with pytest.raises(ValueError, match="invalid session id"), registry.session("a/b"):
        pass
    with pytest.raises(ValueError, match="invalid app slug"), registry.session("a", app="."):
        pass


# -- apps --------------------------------------------------------------------------


def test_app_membership_follows_the_current_listener(registry: Registry) -> None:
    first = registry.listen(hello, session="s1", app="sales")
    assert registry.current_listener("sales") is first
    moved = registry.listen(hello, session="s1", app="hr")
    assert registry.current_listener("sales") is None
    assert registry.current_listener("hr") is moved
    unaffiliated = registry.listen(hello, session="s1")
    assert registry.current_listener("hr") is None
    assert unaffiliated.app is None


def test_current_session_is_the_newest_member(registry: Registry) -> None:
    a = registry.listen(hello, session="a", app="sales")
    b = registry.listen(hello, session="b", app="sales")
    assert registry.current_listener("sales") is b
    b.close()
    assert registry.current_listener("sales") is a
    b2 = registry.listen(hello, session="b", app="sales")
    assert registry.current_listener("sales") is b2
    a2 = registry.listen(other, session="a", app="sales")
    assert registry.current_listener("sales") is a2, "replacing makes it the newest"
    a2.close()
    b2.close()
    assert registry.current_listener("sales") is None


def test_register_app_and_unregister(registry: Registry) -> None:
    def start() -> None:
        pass

    declaration = registry.register_app("sales", multi_session=True, start=start, start_timeout=2)
    assert registry.get_app("sales") is declaration
    assert (declaration.slug, declaration.multi_session, declaration.start) == (
        "sales",
        True,
        start,
    )
    assert declaration.start_timeout == 2.0
    assert "multi_session=True" in repr(declaration)
    replaced = registry.register_app("sales")
    assert registry.get_app("sales") is replaced
    registry.unregister_app("sales")
    assert registry.get_app("sales") is None


def test_unregister_keeps_members_as_undeclared_app(registry: Registry) -> None:
    registry.register_app("sales", multi_session=True)
    listener = registry.listen(hello, session="s1", app="sales")
    registry.unregister_app("sales")
    assert registry.current_listener("sales") is listener
    assert listener.app == "sales"


def test_unregister_unknown_app_raises(registry: Registry) -> None:
    with pytest.raises(LookupError, match="no app 'nope' is registered"):
        registry.unregister_app("nope")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param({"slug": "a b"}, ValueError, "invalid app slug", id="bad-slug"),
        pytest.param({"slug": "a", "multi_session": 1}, TypeError, "True or False", id="multi"),
        pytest.param({"slug": "a", "start": "go"}, TypeError, "start must be", id="start"),
        pytest.param({"slug": "a", "start_timeout": 0}, ValueError, "start_timeout", id="zero"),
        pytest.param({"slug": "a", "start_timeout": -1}, ValueError, "start_timeout", id="neg"),
        pytest.param(
            {"slug": "a", "start_timeout": float("inf")}, ValueError, "start_timeout", id="inf"
        ),
        pytest.param(
            {"slug": "a", "start_timeout": float("nan")}, ValueError, "start_timeout", id="nan"
        ),
        pytest.param({"slug": "a", "start_timeout": "5"}, TypeError, "start_timeout", id="str"),
        pytest.param({"slug": "a", "start_timeout": True}, TypeError, "start_timeout", id="bool"),
    ],
)
def test_register_app_rejects_wrong_calls(
    registry: Registry, kwargs: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    slug = kwargs.pop("slug")
    with pytest.raises(error, match=message):
        registry.register_app(slug, **kwargs)
    assert registry.get_app(slug) is None


def test_module_level_app_functions() -> None:
    declaration = wsgi_proxy_listen.register_app("module-app", multi_session=True)
    try:
        assert default_registry.get_app("module-app") is declaration
        listener = wsgi_proxy_listen.listen(hello, session="module-s2", app="module-app")
        assert wsgi_proxy_listen.close_session("module-s2") is True
        assert listener.closed
    finally:
        wsgi_proxy_listen.unregister_app("module-app")
    assert default_registry.get_app("module-app") is None


# -- url, last_request, repr -----------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "path", "environ", "expected"),
    [
        pytest.param(None, "", None, "/proxy/sessions/s1", id="bare"),
        pytest.param(None, "/", None, "/proxy/sessions/s1/", id="slash"),
        pytest.param(None, "/export/data", None, "/proxy/sessions/s1/export/data", id="path"),
        pytest.param("sales", "/x", None, "/proxy/apps/sales/sessions/s1/x", id="app-member"),
        pytest.param(None, "/a", {"SCRIPT_NAME": "/host"}, "/host/proxy/sessions/s1/a", id="sn"),
        pytest.param(None, "/a b", None, "/proxy/sessions/s1/a%20b", id="quoted"),
        pytest.param(None, "/a%20b", None, "/proxy/sessions/s1/a%20b", id="escapes-kept"),
        pytest.param(None, "/q?x=1", None, "/proxy/sessions/s1/q?x=1", id="query"),
        pytest.param(
            None,
            "",
            {"SCRIPT_NAME": "/h\u00c3\u00a9"},  # "/hé" as a WSGI (latin-1) string
            "/h%C3%A9/proxy/sessions/s1",
            id="wsgi-string-script-name",
        ),
    ],
)
def test_url(
    registry: Registry,
    app: str | None,
    path: str,
    environ: dict[str, str] | None,
    expected: str,
) -> None:
    listener = registry.listen(hello, session="s1", app=app)
    assert listener.url(path, environ) == expected


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param({"session": "s1"}, "/proxy/sessions/s1/", id="session"),
        pytest.param(
            {"session": "s1", "app": "sales"}, "/proxy/apps/sales/sessions/s1/", id="app-session"
        ),
        pytest.param({"app": "sales"}, "/proxy/apps/sales/", id="generic-app-path"),
        pytest.param({"session": "s1", "path": ""}, "/proxy/sessions/s1", id="no-slash-on-demand"),
        pytest.param({"app": "sales", "path": "/a b"}, "/proxy/apps/sales/a%20b", id="quoted"),
        pytest.param(
            {"app": "sales", "environ": {"SCRIPT_NAME": "/host"}},
            "/host/proxy/apps/sales/",
            id="script-name",
        ),
        pytest.param(
            {"app": "sales", "environ": {"SCRIPT_NAME": "/a?b#c d"}},
            "/a%3Fb%23c%20d/proxy/apps/sales/",
            id="script-name-with-what-a-url-means",
        ),
        pytest.param(
            {"app": "sales", "environ": {"SCRIPT_NAME": "/100%41"}},
            "/100%2541/proxy/apps/sales/",
            id="script-name-with-a-percent",
        ),
        pytest.param(
            {"app": "sales", "environ": {"SCRIPT_NAME": "/"}},
            "/proxy/apps/sales/",
            id="script-name-of-the-root",  # not //proxy/..., a link to a host named proxy
        ),
        pytest.param(
            {"app": "sales", "environ": {"SCRIPT_NAME": "/host/"}},
            "/host/proxy/apps/sales/",
            id="script-name-ending-with-a-slash",
        ),
        pytest.param(
            {"app": "sales", "environ": {"SCRIPT_NAME": "/h\u00e9\u20ac"}},
            "/h%C3%A9%E2%82%AC/proxy/apps/sales/",
            id="script-name-as-text",  # outside latin-1: not a WSGI string, taken as text
        ),
    ],
)
def test_url_before_listen(registry: Registry, arguments: dict[str, t.Any], expected: str) -> None:
    """What an app is given when it is built, before anything listens there."""
    assert registry.url(**arguments) == expected
    assert len(registry) == 0


def test_every_url_form_reaches_its_listener(registry: Registry) -> None:
    """The URLs given before listen() are the ones the middleware routes to it."""
    client = Client(ProxyMiddleware(lambda environ, start_response: [], registry))
    urls = [
        registry.url(session="s1"),
        registry.url(session="s2", app="sales"),
        registry.url(app="sales"),
        registry.register_app("sales").url(),
    ]
    registry.listen(echo_script_name, session="s1")
    registry.listen(echo_script_name, session="s2", app="sales")
    for url in urls:
        answer = client.get(url)
        assert (answer.status_code, answer.text) == (200, url), url


def echo_script_name(request: Request) -> str:
    return request.script_root + request.path


def test_url_of_the_bound_session_and_the_module_function() -> None:
    registry = Registry(prefix="/kino")
    with registry.session("s1", app="sales"):
        assert registry.url() == "/kino/apps/sales/sessions/s1/"
        assert registry.url(app="sales") == "/kino/apps/sales/", "an app alone: its generic path"
    with pytest.raises(LookupError, match="url\\(\\) needs a session or an app"):
        registry.url()
    assert wsgi_proxy_listen.url(session="s1", path="/x") == default_registry.url(
        session="s1", path="/x"
    )
    assert wsgi_proxy_listen.url(app="a") == "/proxy/apps/a/"


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"session": "a b"}, ValueError, "invalid session id"),
        ({"app": "a/b"}, ValueError, "invalid app slug"),
        ({"session": 5}, TypeError, "session id must be a str"),
        ({"app": "a", "path": "x"}, ValueError, "invalid path"),
        ({"app": "a", "path": b"/x"}, TypeError, "path must be a str"),
    ],
)
def test_url_refuses_what_names_no_route(
    registry: Registry, arguments: dict[str, t.Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        registry.url(**arguments)


def test_url_ignores_host_and_forwarded_headers() -> None:
    registry = Registry(prefix="/p")
    listener = registry.listen(hello, session="s1")
    environ = EnvironBuilder(
        "/",
        headers=[
            ("Host", "evil.example"),
            ("X-Forwarded-Host", "evil"),
            ("X-Forwarded-Prefix", "/e"),
        ],
    ).get_environ()
    assert listener.url("/x", environ) == "/p/sessions/s1/x"


@pytest.mark.parametrize(
    ("path", "error"), [("x", ValueError), ("../x", ValueError), (5, TypeError)]
)
def test_url_rejects_relative_path(registry: Registry, path: t.Any, error: type[Exception]) -> None:
    listener = registry.listen(hello, session="s1")
    with pytest.raises(error, match="path"):
        listener.url(path)


def test_reprs(registry: Registry) -> None:
    assert repr(registry) == "<Registry prefix='/proxy' listeners=0>"
    listener = registry.listen(hello, session="s1", app="sales")
    assert repr(registry) == "<Registry prefix='/proxy' listeners=1>"
    assert repr(listener).startswith(
        "<Listener session='s1' app='sales' url='/proxy/apps/sales/sessions/s1/'"
        " handler=<function hello"
    )
    listener.close()
    assert repr(listener).endswith(" closed>")


def test_registry_rejects_bad_prefix() -> None:
    with pytest.raises(ValueError, match="invalid prefix 'proxy'"):
        Registry(prefix="proxy")


def test_contains_with_non_string(registry: Registry) -> None:
    assert 5 not in registry


# -- threads -------------------------------------------------------------------------


def test_iteration_is_a_snapshot(registry: Registry) -> None:
    for i in range(5):
        registry.listen(hello, session=f"s{i}")
    seen = []
    for listener in registry:
        seen.append(listener.session)
        registry.close_session(listener.session)
    assert sorted(seen) == [f"s{i}" for i in range(5)]
    assert len(registry) == 0


def test_start_app_runs_once_for_concurrent_callers(registry: Registry) -> None:
    """Many first requests, one start: everyone gets the session it registered."""
    calls: list[int] = []
    started = threading.Event()

    def start() -> None:
        calls.append(1)
        started.set()
        time.sleep(0.2)
        registry.listen(hello, session="started", app="auto")

    registry.register_app("auto", start=start, start_timeout=10, max_waiting=16)
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.start_app("auto")))
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1]
    assert len(results) == 16
    assert all(result is registry.get("started") for result in results)


def test_prefix_can_change_until_a_middleware_uses_it() -> None:
    from wsgi_proxy_listen import ProxyMiddleware

    registry = Registry()
    listener = registry.listen(hello, session="s1")
    registry.prefix = "/kino"
    assert listener.url() == "/kino/sessions/s1/"
    with pytest.raises(ValueError, match="invalid prefix 'kino'"):
        registry.prefix = "kino"
    ProxyMiddleware(lambda environ, start_response: [], registry)
    registry.prefix = "/kino"  # the same value is fine
    with pytest.raises(RuntimeError, match=r"cannot change the prefix .* to '/other'"):
        registry.prefix = "/other"
    assert registry.prefix == "/kino"


def test_relisten_in_the_same_app_never_hides_the_app(registry: Registry) -> None:
    """Lock-free readers of an app's current session never see it missing while its only
    member is replaced by a listener for the same app."""
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    registry.listen(hello, session="s1", app="A")
    stop = threading.Event()
    misses: list[int] = []

    def relisten() -> None:
        while not stop.is_set():
            registry.listen(hello, session="s1", app="A")

    writer = threading.Thread(target=relisten)
    writer.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if registry.current_listener("A") is None:
                misses.append(1)
    finally:
        stop.set()
        writer.join()
        sys.setswitchinterval(old_interval)
    assert misses == []


# -- runtime or web worker --------------------------------------------------------------------

SERVER_MODULES = [
    "gunicorn.arbiter",
    "waitress.server",
    "uwsgi",
    "mod_wsgi",
    "django.core.servers.basehttp",
    "cheroot.wsgi",
    "gevent.pywsgi",
    "bjoern",
    "meinheld",
    "uvicorn",
    "hypercorn",
    "granian",
    "twisted.web.wsgi",
]


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process that no WSGI server runs, whatever the tests before loaded."""
    for name in SERVER_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return monkeypatch


def test_a_process_that_no_server_runs_is_a_runtime(no_server: pytest.MonkeyPatch) -> None:
    assert Registry().runtime is True


@pytest.mark.parametrize("module", SERVER_MODULES)
def test_a_process_that_a_server_runs_is_no_runtime(
    no_server: pytest.MonkeyPatch, module: str
) -> None:
    no_server.setitem(sys.modules, module, type(sys)(module))
    assert Registry().runtime is False


def test_a_registry_that_a_middleware_routes_with_is_no_runtime(
    no_server: pytest.MonkeyPatch,
) -> None:
    registry = Registry()
    wsgi_proxy_listen.ProxyMiddleware(lambda environ, start_response: [], registry)
    assert registry.runtime is False
    registry.runtime = True  # said, where the guess is wrong
    assert registry.runtime is True


def test_runtime_is_said_with_a_bool(no_server: pytest.MonkeyPatch) -> None:
    assert Registry(runtime=False).runtime is False
    registry = Registry(runtime=True)
    registry.runtime = None  # told again
    assert registry.runtime is True
    with pytest.raises(TypeError, match="runtime must be True, False or None, not 'yes'"):
        Registry(runtime="yes")  # type: ignore[arg-type]
