"""
Origins
=======

An origin of its own for each session and each app: with a *listener domain*
(``listeners.example.com``), the listener of session ``s`` is served at
``https://<label>.listeners.example.com/proxy/sessions/s/`` instead of the host's
origin, so its pages' scripts share nothing with the host's: not its cookies,
not its storage, and the browser's same-origin policy keeps them from reading
the host's pages. The path stays the same, so ``SCRIPT_NAME``, ``url()`` and
every relative link work as before.

The label is derived from the id, so that any id gives a valid DNS label
(ids are case-sensitive and up to 128 characters; labels are neither):
``s`` for a session or ``a`` for an app, then the first 20 characters of the
base32 of the SHA-256 of ``session:<id>`` or ``app:<slug>``, in lower case
(100 bits: no two ids meet by chance). :func:`label` computes it.

On the host's origin, a navigation to a listener path is sent to the
listener's origin; any other request there is refused (403), and a listener is
never served there. On a listener's origin only that session's (or app's)
paths are served: the host app, other listeners and anything else answer 404.

The host's login crosses without sharing a cookie: for a logged-in user, the
redirect carries a one-time token (:data:`TOKEN_PARAMETER`) that names the user
and the origin's label, signed with the *listener secret* and good for
:data:`TOKEN_SECONDS` seconds. The listener's origin takes it once (a used
token is remembered in the directory, or in the process without one), sets an
HttpOnly cookie of its own (:data:`COOKIE`, ``__Host-`` on HTTPS, good for
:data:`COOKIE_SECONDS`), and sends the browser to the same URL without the
token. There, the user comes from that cookie only: the host's
``authenticate`` is never called, the host's cookies never reach it. Without
a valid cookie, a navigation goes back to the same path on the host's origin
(``public_url``), which runs the host's login and comes back with a new token;
anything else gets 401.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import typing as t
from collections.abc import Callable
from urllib.parse import urlsplit

from werkzeug.http import dump_cookie, parse_cookie

from .cookies import drop
from .routing import APP, Route, request_path

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "COOKIE",
    "COOKIE_SECONDS",
    "ENV_LISTENER_DOMAIN",
    "ENV_LISTENER_SECRET",
    "TOKEN_PARAMETER",
    "TOKEN_SECONDS",
    "Origins",
    "SeveralLogins",
    "check_listener_domain",
    "label",
]

#: The environment variable that names the listener domain (``Registry`` and the
#: middleware read it when they are given none).
ENV_LISTENER_DOMAIN = "WSGI_PROXY_LISTEN_LISTENER_DOMAIN"
#: The environment variable with the listener secret, which signs the tokens and
#: cookies of listener origins (not the directory's ``SECRET``).
ENV_LISTENER_SECRET = "WSGI_PROXY_LISTEN_LISTENER_SECRET"
#: The query parameter that carries a token from the host's origin to a listener's.
TOKEN_PARAMETER = "wpl-token"
#: The query parameter with which a listener's origin sends a browser back to the
#: host's to log in.
LOGIN_PARAMETER = "wpl-login"
#: Seconds a token is good for: it is used by the very next request.
TOKEN_SECONDS = 30
#: Seconds a listener origin's login cookie is good for; then a navigation fetches
#: a new one from the host's origin (where a logout has taken effect).
COOKIE_SECONDS = 3600
#: The name of a listener origin's login cookie (``__Host-wpl-user`` on HTTPS).
COOKIE = "wpl-user"

_DOMAIN = re.compile(
    r"(?=[^:]{1,253}(:|$))"
    r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    r"(:[1-9][0-9]{0,4})?"
)
_LABEL_LENGTH = 20


def check_listener_domain(value: object, *, name: str = "listener_domain") -> str | None:
    """``value`` as a listener domain (lower case), or ``None``.

    :raises ValueError: not a domain name of two labels or more, with an optional port.
    :raises TypeError: not a str or ``None``.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str such as 'listeners.example.com' or None")
    domain = value.lower()
    if _DOMAIN.fullmatch(domain) is None:
        raise ValueError(
            f"invalid {name} {value!r}: use a domain such as 'listeners.example.com'"
            " (optionally with ':port'), whose every subdomain reaches this host"
        )
    return domain


def label(kind: str, id: str) -> str:
    """The DNS label of the origin of session (``kind="session"``) or app
    (``kind="app"``) ``id``."""
    digest = hashlib.sha256(f"{kind}:{id}".encode()).digest()
    return kind[0] + base64.b32encode(digest).decode("ascii")[:_LABEL_LENGTH].lower()


def label_of_route(route: Route) -> str:
    """The label of the origin that serves ``route``: its app's for the app's paths,
    else its session's."""
    if route.kind == APP or route.app is not None:
        return label("app", t.cast(str, route.app))
    return label("session", t.cast(str, route.session))


class _Signer:
    """Signed, expiring JSON for one purpose, under a key of its own."""

    def __init__(self, secret: bytes, purpose: str) -> None:
        self._key = hmac.new(secret, purpose.encode(), hashlib.sha256).digest()

    def sign(self, fields: dict[str, object], seconds: float) -> str:
        payload = json.dumps({**fields, "e": time.time() + seconds}, separators=(",", ":"))
        body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        return f"{body}.{self._mac(body)}"

    def unsign(self, text: str) -> dict[str, t.Any] | None:
        """The fields, if ``text`` is signed by this key and not expired."""
        body, _, mac = text.partition(".")
        if not mac or not text.isascii() or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(fields, dict) or not isinstance(fields.get("e"), (int, float)):
            return None
        return fields if fields["e"] > time.time() else None

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class SeveralLogins(Exception):
    """A request with more than one login cookie of a listener origin: over HTTP,
    another listener origin under the same domain may have planted one (with a
    ``Domain``); which one is the user's cannot be told, so neither is taken."""


class _UsedHere:
    """The tokens used in this process, while they could still be used."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._limit = 1024
        self._lock = threading.Lock()

    def first_use(self, nonce: str, seconds: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if len(self._until) > self._limit:
                self._until = {key: end for key, end in self._until.items() if end > now}
                self._limit = max(1024, 2 * len(self._until))
            if self._until.get(nonce, 0) > now:
                return False
            self._until[nonce] = now + seconds
            return True


class Origins:
    """What a middleware with a listener domain needs: which origin a request is on,
    the URLs of the other one, the tokens and the login cookie.

    :param domain: the listener domain (see :func:`check_listener_domain`).
    :param secret: the listener secret.
    :param public_url: the host's own origin (``https://notebooks.example.com``),
        where a listener's origin sends a browser back to log in.
    :param first_use: ``first_use(nonce, seconds)``: whether a token is used for the
        first time; ``None`` remembers the used tokens in this process.
    """

    def __init__(
        self,
        domain: str,
        secret: str | bytes,
        public_url: str,
        first_use: Callable[[str, float], bool] | None = None,
    ) -> None:
        self.domain = domain
        self.hostname, _, port = domain.partition(":")
        self.port = port or None
        key = secret.encode() if isinstance(secret, str) else secret
        self._tokens = _Signer(key, "wsgi-proxy-listen token")
        self._cookies = _Signer(key, "wsgi-proxy-listen cookie")
        self.public_url = check_public_url(public_url)
        # The deployment's scheme, which a proxy that ends TLS may hide from the app.
        self.scheme = urlsplit(self.public_url).scheme
        self._secure = self.scheme == "https"
        self._first_use = first_use or _UsedHere().first_use

    def label_of(self, environ: WSGIEnvironment) -> str | None:
        """The label of the listener origin that ``environ`` was sent to; ``""`` for
        another name under the listener domain (which serves nothing); ``None`` for
        any other (the host's)."""
        host: str = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        hostname, _, port = host.lower().partition(":")
        hostname = hostname.rstrip(".")  # the same name, fully qualified
        if hostname != self.hostname and not hostname.endswith("." + self.hostname):
            return None
        name, _, rest = hostname.partition(".")
        if rest != self.hostname or (self.port is not None and port != self.port):
            return ""
        return name

    def location(
        self, environ: WSGIEnvironment, origin: str, *, query: str, token: str | None = None
    ) -> str:
        """The URL of the requested path on ``origin`` (a listener's label, or ``""``
        for the host's), with ``query`` and a token."""
        if token is not None:
            query = with_parameter(query, TOKEN_PARAMETER, token)
        base = f"{self.scheme}://{origin}.{self.domain}" if origin else self.public_url
        path = request_path(environ)
        return f"{base}{path}?{query}" if query else f"{base}{path}"

    def token(self, user: str, origin: str) -> str:
        """A token that lets ``user`` in on ``origin``, once, for :data:`TOKEN_SECONDS`."""
        return self._tokens.sign(
            {"u": user, "l": origin, "n": secrets.token_urlsafe(16)}, TOKEN_SECONDS
        )

    def redeem(self, token: str, origin: str) -> str | None:
        """The user a token names, if it is good on ``origin`` and used for the first
        time; ``None`` for a forged, expired, used or misdirected one."""
        fields = self._tokens.unsign(token)
        if fields is None or fields.get("l") != origin:
            return None
        user, nonce = fields.get("u"), fields.get("n")
        if not isinstance(user, str) or not user or not isinstance(nonce, str):
            return None
        return user if self._first_use(nonce, TOKEN_SECONDS * 2) else None

    @property
    def cookie_name(self) -> str:
        """The login cookie's name: ``__Host-`` on HTTPS, where no other origin can set
        a cookie of that name."""
        return "__Host-" + COOKIE if self._secure else COOKIE

    def set_cookie(self, user: str, origin: str) -> str:
        """The ``Set-Cookie`` value of the login cookie of ``user`` on ``origin``."""
        return dump_cookie(
            self.cookie_name,
            self._cookies.sign({"u": user, "l": origin}, COOKIE_SECONDS),
            path="/",
            secure=self._secure,
            httponly=True,
            samesite="Lax",
        )

    def user(self, environ: WSGIEnvironment, origin: str) -> str | None:
        """The user that the login cookie of ``origin`` names, if it is good.

        :raises ~wsgi_proxy_listen.origins.SeveralLogins: the request carries more than one
            login cookie.
        """
        try:
            values = parse_cookie(environ).getlist(self.cookie_name)
        except ValueError:  # not text: no cookie of ours
            return None
        if len(values) > 1:
            raise SeveralLogins
        fields = self._cookies.unsign(values[0]) if values else None
        if fields is None or fields.get("l") != origin:
            return None
        user = fields.get("u")
        return user if isinstance(user, str) and user else None

    def without_cookie(self, environ: WSGIEnvironment) -> WSGIEnvironment:
        """A copy of ``environ`` without the login cookie (a listener never sees it)."""
        inner = environ.copy()
        inner.pop("werkzeug.request", None)
        cookie = inner.get("HTTP_COOKIE")
        if cookie is not None:
            kept = drop(cookie, {COOKIE, "__Host-" + COOKIE})
            if kept:
                inner["HTTP_COOKIE"] = kept
            else:
                del inner["HTTP_COOKIE"]
        return inner


def with_parameter(query: str, name: str, value: str) -> str:
    """``query`` with ``name=value`` added (``value`` needs no quoting)."""
    return f"{query}&{name}={value}" if query else f"{name}={value}"


def take_parameter(query: str, name: str) -> tuple[str, str | None]:
    """``query`` without the parameter ``name`` (the others as sent, byte for byte), and
    its last value (``None`` when it is not there)."""
    kept, value = [], None
    for part in query.split("&"):
        key, equals, rest = part.partition("=")
        if key == name:
            value = rest if equals else ""
        elif part:
            kept.append(part)
    return "&".join(kept), value


def check_public_url(value: object) -> str:
    """``value`` as the host's origin, ``http(s)://host[:port]``.

    :raises ValueError: anything else.
    """
    if isinstance(value, str):
        parts = urlsplit(value)
        if (
            parts.scheme in ("http", "https")
            and parts.hostname
            and parts.path in ("", "/")
            and not (parts.query or parts.fragment or parts.username)
        ):
            return f"{parts.scheme}://{parts.netloc}"
    raise ValueError(
        f"invalid public_url {value!r}: with a listener domain, give the host's own origin,"
        " such as 'https://notebooks.example.com' (or set WSGI_PROXY_LISTEN_PUBLIC_URL)"
    )
