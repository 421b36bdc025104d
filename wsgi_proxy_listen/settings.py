"""
Settings
========

Building a ProxyMiddleware from a framework's settings dict.

Shared by the Flask and Django integrations, so that
``app.config["WSGI_PROXY_LISTEN"]`` and ``settings.WSGI_PROXY_LISTEN`` take the
same keys and give the same errors; :func:`problems` finds them without
building anything, for Django's system checks.
"""

from __future__ import annotations

import os
import typing as t
from collections.abc import Mapping

from . import metrics
from .access import PUBLIC, check_access, check_authenticate, check_login_url
from .dispatch import check_content_length, check_limit, withheld_cookies
from .middleware import ProxyMiddleware
from .naming import ENV_DIRECTORY, check_name, open_directory, resolve_secret
from .origins import check_listener_domain, check_public_url
from .registry import Registry, default_registry
from .routing import validate_prefix
from .seam import shown_name

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from .access import Authenticate, LoginUrl

#: The keys of the settings dict, and the ProxyMiddleware option each sets.
KEYS = {
    "PREFIX": "prefix",
    "MAX_CONTENT_LENGTH": "max_content_length",
    "FORWARD_COOKIES": "forward_cookies",
    "MAX_CONCURRENCY": "max_concurrency",
    "DIRECTORY": "directory",
    "SECRET": "secret",
    "AUTHENTICATE": "authenticate",
    "DEFAULT_ACCESS": "default_access",
    "LOGIN_URL": "login_url",
    "SANDBOX": "sandbox",
    "LISTENER_DOMAIN": "listener_domain",
    "LISTENER_SECRET": "listener_secret",
    "PUBLIC_URL": "public_url",
    "METRICS": "metrics",
}
#: The keys that configure a Redis directory, and the RedisDirectory option each sets
#: (each before its ``WSGI_PROXY_LISTEN_...`` variable).
DIRECTORY_KEYS = {
    "ADVERTISE": "advertise_host",
    "BIND": "bind",
    "NAMESPACE": "namespace",
    "TLS_CERT": "tls_cert",
    "TLS_KEY": "tls_key",
    "TLS_CA": "tls_ca",
}


class Login(t.NamedTuple):
    """The host's login as a framework integration finds it (Flask-Login, Django's
    auth): what ``AUTHENTICATE`` and ``LOGIN_URL`` default to."""

    authenticate: Authenticate
    login_url: LoginUrl | None


class Problem(t.NamedTuple):
    """Something wrong with a settings dict."""

    id: str
    """``E001``...: which check found it (Django reports ``wsgi_proxy_listen.E001``);
    ``W001``, a warning, depends on what start-up finds (the environment, a
    registry connected already) and is left to it."""
    message: str
    hint: str


def problems(config: object) -> list[Problem]:
    """Everything wrong with a settings dict, found without building or opening
    anything: what :func:`middleware_from_config` would raise for, and what
    ``manage.py check`` reports (:mod:`wsgi_proxy_listen.django`)."""
    if config is None:
        return []
    if not isinstance(config, Mapping):
        return [
            Problem(
                "E001",
                f"must be a dict with the keys {sorted(KEYS)}, not {config!r}",
                "WSGI_PROXY_LISTEN = {'PREFIX': '/proxy'}, for example; every key is optional",
            )
        ]
    found = []
    # Keys of any type (None, 1...) are shown, never compared.
    unknown = sorted(map(repr, set(config) - set(KEYS) - set(DIRECTORY_KEYS)))
    if unknown:
        found.append(
            Problem(
                "E002",
                f"unknown key(s) [{', '.join(unknown)}]: the keys are"
                f" {sorted([*KEYS, *DIRECTORY_KEYS])}",
                "check the spelling: the keys are upper case",
            )
        )
    for key, (problem_id, check, hint) in _CHECKS.items():
        if key in config:
            try:
                check(config[key])
            except (TypeError, ValueError) as error:
                found.append(Problem(problem_id, f"{key}: {error}", hint))
    tls = {key: config.get(key) for key in ("TLS_CERT", "TLS_KEY", "TLS_CA")}
    if any(value is not None for value in tls.values()):
        try:
            _check_tls(*tls.values())
        except (TypeError, ValueError) as error:
            found.append(Problem("E019", f"TLS_CERT, TLS_KEY, TLS_CA: {error}", _TLS_HINT))
    directory, secret = config.get("DIRECTORY"), config.get("SECRET")
    if directory is not None:
        if any(problem.id == "E008" for problem in found):
            secret = "reported above"  # the name is checked as if the secret were right
        try:
            given = [key for key in DIRECTORY_KEYS if config.get(key) is not None]
            if check_name(directory, secret=secret) == "embedded" and given:
                raise ValueError(
                    f"{', '.join(given)} configure a Redis directory, and {directory!r} is a folder"
                )
        except (TypeError, ValueError) as error:
            found.append(Problem("E007", f"DIRECTORY: {error}", _DIRECTORY_HINT))
    elif secret is not None and not os.environ.get(ENV_DIRECTORY):
        # Start-up raises for it unless the registry has a directory already.
        found.append(Problem("W001", SECRET_WITHOUT_DIRECTORY, _SECRET_HINT))
    return found


#: Why start-up fails where ``SECRET`` is set and no directory is named.
SECRET_WITHOUT_DIRECTORY = (
    f"SECRET is set without DIRECTORY, and {ENV_DIRECTORY} is not set: the secret signs"
    " the hop between processes, and start-up fails unless the environment names the"
    " directory"
)
_SECRET_HINT = (
    f"name the directory in DIRECTORY, or in {ENV_DIRECTORY} where the server starts"
    " (with WSGI_PROXY_LISTEN_SECRET or the SECRET setting for the secret)"
)


def _check_default_access(value: object) -> object:
    if check_access(value, name="DEFAULT_ACCESS") is None:
        raise TypeError("DEFAULT_ACCESS must not be None: leave it out for 'public'")
    return value


def _check_listener_secret(value: object) -> object:
    if value is not None and (not isinstance(value, (str, bytes)) or not value):
        raise TypeError(f"LISTENER_SECRET must be a non-empty str, not {type(value).__name__}")
    return value


def _check_sandbox(value: object) -> object:
    if not isinstance(value, bool):
        raise TypeError(f"SANDBOX must be True or False, not {value!r}")
    return value


def _check_advertise(value: object) -> object:
    from .cluster.addresses import parse_advertise

    return value is None or parse_advertise(_text(value, "ADVERTISE"))


def _check_bind(value: object) -> object:
    from .cluster.addresses import parse_bind

    return value is None or parse_bind(_text(value, "BIND"))


def _check_namespace(value: object) -> object:
    from .cluster.variables import check_namespace

    return value is None or check_namespace(value)


def _check_tls(cert: object, key: object, ca: object) -> object:
    from .cluster.tls import tls_files

    return tls_files(
        _text(cert, "TLS_CERT", None), _text(key, "TLS_KEY", None), _text(ca, "TLS_CA", None)
    )


_UNSET: t.Any = object()


def _text(value: object, name: str, default: t.Any = _UNSET) -> t.Any:
    if value is None and default is not _UNSET:
        return default
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


_TLS_HINT = (
    "the paths of this process's certificate, its key and the CA that signed every"
    " process's certificate, all three (or the WSGI_PROXY_LISTEN_TLS_... variables)"
)
_DIRECTORY_HINT = (
    "an absolute folder path for the processes of one machine, or a redis://, rediss://"
    " or unix:// URL with a SECRET for several machines"
)
_CHECKS: dict[str, tuple[str, t.Callable[[t.Any], object], str]] = {
    "PREFIX": ("E003", validate_prefix, "a path such as '/proxy'"),
    "MAX_CONTENT_LENGTH": (
        "E004",
        check_content_length,
        "a number of bytes, or None for no limit",
    ),
    "FORWARD_COOKIES": (
        "E005",
        withheld_cookies,
        "True, False, or the names of the host's cookies to withhold, such as ['sessionid']",
    ),
    "MAX_CONCURRENCY": (
        "E006",
        lambda value: check_limit("max_concurrency", value),
        "a number of requests, or None for no limit",
    ),
    "SECRET": (
        "E008",
        resolve_secret,
        "a str (or bytes), the same in every process; None to take WSGI_PROXY_LISTEN_SECRET",
    ),
    "AUTHENTICATE": (
        "E009",
        lambda value: value is False or check_authenticate(value),
        "a callable taking the environ and returning the user id or None, a dotted path to"
        " one, False to use none, or None for the framework's login",
    ),
    "DEFAULT_ACCESS": (
        "E010",
        _check_default_access,
        "'public', 'authenticated', or a collection of user ids such as ['alice']",
    ),
    "LOGIN_URL": (
        "E011",
        check_login_url,
        "a path such as '/login', an http(s) URL, a callable taking the environ, or None",
    ),
    "SANDBOX": (
        "E012",
        _check_sandbox,
        "True to sandbox the listeners that do not say otherwise, or False",
    ),
    "LISTENER_DOMAIN": (
        "E013",
        lambda value: check_listener_domain(value, name="LISTENER_DOMAIN"),
        "a domain whose every subdomain reaches this host, such as 'listeners.example.com'",
    ),
    "LISTENER_SECRET": (
        "E014",
        _check_listener_secret,
        "a str of its own (not SECRET), the same in every process; None to take"
        " WSGI_PROXY_LISTEN_LISTENER_SECRET",
    ),
    "METRICS": (
        "E020",
        lambda value: metrics.wanted(value, "METRICS"),
        "True to count requests (needs prometheus_client), False not to; None: when installed",
    ),
    "ADVERTISE": (
        "E016",
        _check_advertise,
        "host[:port] that other machines reach this process at, such as a pod's IP",
    ),
    "BIND": (
        "E017",
        _check_bind,
        "[host][:port] or [host]:first-last to listen on, such as '0.0.0.0:7000-7003'",
    ),
    "NAMESPACE": (
        "E018",
        _check_namespace,
        "a name without '}' for this deployment's keys; None for one derived from the secret",
    ),
    "PUBLIC_URL": (
        "E015",
        lambda value: value is None or check_public_url(value),
        "the host's own origin, such as 'https://notebooks.example.com'",
    ),
}


def middleware_from_config(
    app: WSGIApplication,
    registry: Registry | None,
    config: object,
    where: str,
    error: type[Exception] = ValueError,
    login: Login | None = None,
) -> ProxyMiddleware:
    """Wrap ``app`` as ``config`` says; raise ``error`` naming ``where`` if it is wrong.
    ``login``: the framework's login, for ``AUTHENTICATE`` and ``LOGIN_URL`` left out
    (``AUTHENTICATE: False`` turns it off)."""
    found = [problem for problem in problems(config) if not problem.id.startswith("W")]
    if found:
        raise error(f"{where}: {found[0].message}")
    config = t.cast("Mapping[str, t.Any]", config or {})
    registry = default_registry if registry is None else registry
    if not isinstance(registry, Registry):
        raise TypeError(f"registry must be a Registry or None, not {registry!r}")
    try:
        if "PREFIX" in config:
            registry.prefix = config["PREFIX"]
        _connect(registry, config)
        authenticate = config.get("AUTHENTICATE")
        login_url = config.get("LOGIN_URL")
        if authenticate is False:
            authenticate = None
        elif authenticate is None and login is not None:
            authenticate = login.authenticate
            if login_url is None:
                login_url = login.login_url
        return ProxyMiddleware(
            app,
            registry,
            max_content_length=config.get("MAX_CONTENT_LENGTH"),
            forward_cookies=config.get("FORWARD_COOKIES", True),
            max_concurrency=config.get("MAX_CONCURRENCY"),
            authenticate=authenticate,
            default_access=config.get("DEFAULT_ACCESS", PUBLIC),
            login_url=login_url,
            sandbox=config.get("SANDBOX", False),
            listener_domain=config.get("LISTENER_DOMAIN"),
            listener_secret=config.get("LISTENER_SECRET"),
            public_url=config.get("PUBLIC_URL"),
            metrics=config.get("METRICS"),
        )
    except (TypeError, ValueError, RuntimeError) as problem:
        raise error(f"{where}: {problem}") from problem


def _connect(registry: Registry, config: Mapping[str, t.Any]) -> None:
    """Connect the registry to the directory that the settings name, or else the
    environment (each setting before its variable); a registry that has a
    directory keeps it."""
    directory = config.get("DIRECTORY")
    secret = config.get("SECRET")
    options = {
        option: config[key] for key, option in DIRECTORY_KEYS.items() if config.get(key) is not None
    }
    if directory is None and secret is None and not options:
        if not registry.connected:
            registry.connect_from_environment()  # the middleware needs it at once
        return
    if directory is None:
        # The environment's directory, which a listen() may have connected already.
        directory = os.environ.get(ENV_DIRECTORY) or registry.directory_name
    if directory is None:
        if secret is None:
            raise ValueError(
                f"{', '.join(key for key in DIRECTORY_KEYS if key in config)} configure a"
                f" Redis directory, and none is named: set DIRECTORY (or {ENV_DIRECTORY})"
            )
        raise ValueError(f"{SECRET_WITHOUT_DIRECTORY}: {_SECRET_HINT}")
    if registry.connected and directory != registry.directory_name:
        raise ValueError(
            f"DIRECTORY is {shown_name(directory)!r}, but {registry!r} has the directory"
            f" {registry.directory!r} already: name the directory in one place"
        )
    if options:
        if registry.connected:
            raise ValueError(
                f"{registry!r} has its directory already (a listen() before the app was"
                " made connected it from the environment), so the settings' ADVERTISE,"
                " BIND, NAMESPACE and TLS_... come too late: set them as variables, or"
                " listen after the app is made"
            )
        registry.connect(open_directory(directory, secret=secret, **options))
        return
    # The same name again (the environment's, connected by a listen()) must come with
    # the same secret: connect() raises otherwise.
    registry.connect(directory, secret=secret)
