"""Property tests: for generated registries and request targets, the middleware never answers
5xx by itself, a request reaches a listener only if its routing segments spell exactly that
listener's id, and SCRIPT_NAME + PATH_INFO seen by the listener is the original path."""

from __future__ import annotations

import typing as t
from collections.abc import Iterable
from urllib.parse import quote, unquote_to_bytes

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response

from wsgi_proxy_listen import ProxyMiddleware, Registry

from .support.wsgi import Host

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

ids = st.from_regex(r"[A-Za-z0-9_-]{1,6}", fullmatch=True)
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Seen:
    def __init__(self, session: str) -> None:
        self.session = session
        self.environs: list[WSGIEnvironment] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.environs.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [self.session.encode()]


@st.composite
def registries(draw: st.DrawFn) -> tuple[Registry, dict[str, Seen]]:
    registry = Registry()
    seen: dict[str, Seen] = {}
    slugs = draw(st.lists(ids, max_size=3, unique=True))
    for slug in slugs:
        if draw(st.booleans()):
            registry.register_app(slug, multi_session=draw(st.booleans()))
    for session in draw(st.lists(ids, min_size=1, max_size=6, unique=True)):
        app = draw(st.sampled_from([None, *slugs]))
        seen[session] = Seen(session)
        registry.listen(seen[session], session=session, app=app)
    return registry, seen


def encode_some(draw: st.DrawFn, text: str) -> str:
    """Percent-encode some ASCII characters of ``text`` (or none)."""
    return "".join(
        f"%{ord(char):02X}" if ord(char) < 128 and draw(st.integers(0, 29)) == 0 else char
        for char in text
    )


@st.composite
def targets(draw: st.DrawFn, registry: Registry) -> str:
    """A raw request target: mostly a well-formed route to a known id, some of whose
    routing segments may be encoded, swapped or broken, then arbitrary rest segments."""
    sessions = [listener.session for listener in registry]
    slugs = sorted({listener.app for listener in registry if listener.app} | {"nope"})
    junk = st.sampled_from(
        [
            ".",
            "..",
            "",
            "%2F",
            "%2e%2e",
            "%2E",
            "a;b",
            "%00",
            "%FF",
            "x%2Fy",
            "\uff41",
            "%EF%BD%81",
            "sessions%2F",
            "proxy",
            "sessions",
            "apps",
        ]
    )
    session = st.one_of(st.sampled_from(sessions), ids)
    slug = st.one_of(st.sampled_from(slugs), ids)
    route = draw(
        st.one_of(
            st.tuples(st.just("proxy"), st.just("sessions"), session),
            st.tuples(st.just("proxy"), st.just("apps"), slug, st.just("sessions"), session),
            st.tuples(st.just("proxy"), st.just("apps"), slug),
            st.lists(st.one_of(junk, session, slug), max_size=4).map(tuple),
        )
    )
    rest = draw(st.lists(st.one_of(junk, session, st.text(max_size=4)), max_size=4))
    parts = [encode_some(draw, part) for part in [*route, *rest]]
    target = quote("/" + "/".join(parts), safe="/%;:@!$&'()*+,=-._~")
    if draw(st.integers(0, 9)) == 0:
        target = "/" + target
    if draw(st.booleans()):
        target += "?" + quote(draw(st.text(max_size=6)), safe="/=&")
    return target


def environ_for(target: str, style: str) -> WSGIEnvironment:
    path, _, query = target.partition("?")
    decoded = unquote_to_bytes(path).decode("latin-1")
    if style == "waitress":
        decoded = "/" + decoded.lstrip("/")
    environ = EnvironBuilder("/").get_environ()
    environ.update(PATH_INFO=decoded, QUERY_STRING=query)
    environ.pop("REQUEST_URI", None)
    environ.pop("RAW_URI", None)
    if style != "no-raw-uri":
        environ["REQUEST_URI"] = environ["RAW_URI"] = target
    return environ


def spells(segments: list[str], registry: Registry, session: str) -> bool:
    """Whether the path segments name ``session`` the way one of the three routes does."""
    listener = registry.get(session)
    assert listener is not None
    if segments[:3] == ["", "proxy", "sessions"] and len(segments) > 3:
        return segments[3] == session
    if segments[:3] != ["", "proxy", "apps"] or len(segments) < 4:
        return False
    slug = segments[3]
    if len(segments) > 5 and segments[4] == "sessions":
        return segments[5] == session and listener.app == slug
    declaration = registry.get_app(slug)
    current = registry.current_listener(slug)
    multi = declaration is not None and declaration.multi_session
    return not multi and current is listener


def check(registry: Registry, seen: dict[str, Seen], target: str, style: str) -> None:
    for listener in seen.values():
        listener.environs.clear()
    host = Host()
    environ = environ_for(target, style)
    original = environ["PATH_INFO"]
    response = Response.from_app(ProxyMiddleware(host, registry), environ, buffered=True)
    assert response.status_code < 500
    called = [session for session, listener in seen.items() if listener.environs]
    event(f"status {response.status_code}, listener called: {bool(called)}")
    assert len(called) + len(host.environs) <= 1
    if not called:
        return
    (session,) = called
    (inner,) = seen[session].environs
    assert inner["SCRIPT_NAME"] + inner["PATH_INFO"] == original
    if style == "no-raw-uri":
        # Without the raw URI, the decoded path is all anyone knows of the request.
        assert spells(original.split("/"), registry, session)
    else:
        raw_path = target.partition("?")[0]
        assert spells(raw_path.split("/"), registry, session)


@SETTINGS
@given(data=st.data(), world=registries())
def test_gunicorn_style(data: st.DataObject, world: tuple[Registry, dict[str, Seen]]) -> None:
    registry, seen = world
    check(registry, seen, data.draw(targets(registry)), "gunicorn")


@SETTINGS
@given(data=st.data(), world=registries())
def test_waitress_style(data: st.DataObject, world: tuple[Registry, dict[str, Seen]]) -> None:
    registry, seen = world
    check(registry, seen, data.draw(targets(registry)), "waitress")


@SETTINGS
@given(data=st.data(), world=registries())
def test_without_raw_uri(data: st.DataObject, world: tuple[Registry, dict[str, Seen]]) -> None:
    registry, seen = world
    check(registry, seen, data.draw(targets(registry)), "no-raw-uri")


@SETTINGS
@given(world=registries(), rest=st.text(alphabet="abc/%2F.;", max_size=12))
def test_registered_sessions_are_reached(
    world: tuple[Registry, dict[str, Seen]], rest: str
) -> None:
    """The other direction: a literal, dot-free path to a registered session reaches it."""
    registry, seen = world
    rest = "/" + "/".join(part for part in rest.split("/") if part not in (".", ".."))
    for session in seen:
        target = f"/proxy/sessions/{session}{quote(rest, safe='/%;')}"
        environ = environ_for(target, "gunicorn")
        response = Response.from_app(ProxyMiddleware(Host(), registry), environ, buffered=True)
        if response.status_code == 400:
            # The rest decoded into a dot segment ("%2E" is an encoded ".").
            assert "%" in rest
            continue
        assert response.get_data() == session.encode()
