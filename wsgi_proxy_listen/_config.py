"""Building a ProxyMiddleware from a framework's settings dict.

Shared by the Flask and Django integrations, so that
``app.config["WSGI_PROXY_LISTEN"]`` and ``settings.WSGI_PROXY_LISTEN`` take the
same keys and give the same errors.
"""

from __future__ import annotations

import os
import typing as t
from collections.abc import Mapping

from .middleware import ProxyMiddleware
from .naming import ENV_DIRECTORY
from .registry import Registry, default_registry

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

#: The keys of the settings dict, and the ProxyMiddleware option each sets.
KEYS = {
    "PREFIX": "prefix",
    "MAX_CONTENT_LENGTH": "max_content_length",
    "FORWARD_COOKIES": "forward_cookies",
    "MAX_CONCURRENCY": "max_concurrency",
    "DIRECTORY": "directory",
    "SECRET": "secret",
}


def middleware_from_config(
    app: WSGIApplication,
    registry: Registry | None,
    config: object,
    where: str,
    error: type[Exception] = ValueError,
) -> ProxyMiddleware:
    """Wrap ``app`` as ``config`` says; raise ``error`` naming ``where`` if it is wrong."""
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise error(f"{where} must be a dict with the keys {sorted(KEYS)}, not {config!r}")
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise error(f"unknown key(s) {unknown} in {where}: the keys are {sorted(KEYS)}")
    registry = default_registry if registry is None else registry
    if not isinstance(registry, Registry):
        raise TypeError(f"registry must be a Registry or None, not {registry!r}")
    try:
        if "PREFIX" in config:
            registry.prefix = config["PREFIX"]
        _connect(registry, config)
        return ProxyMiddleware(
            app,
            registry,
            max_content_length=config.get("MAX_CONTENT_LENGTH"),
            forward_cookies=config.get("FORWARD_COOKIES", True),
            max_concurrency=config.get("MAX_CONCURRENCY"),
        )
    except (TypeError, ValueError, RuntimeError) as problem:
        raise error(f"{where}: {problem}") from problem


def _connect(registry: Registry, config: Mapping[str, t.Any]) -> None:
    """Connect the registry to the directory that the settings name, or else the
    environment (each setting before its variable); a registry that has a
    directory keeps it."""
    directory = config.get("DIRECTORY")
    secret = config.get("SECRET")
    if directory is None and secret is None:
        if not registry.connected:
            registry.connect_from_environment()  # the middleware needs it at once
        return
    if directory is None and not registry.connected:
        directory = os.environ.get(ENV_DIRECTORY) or None
    if directory is None:
        raise ValueError(
            "SECRET is set without DIRECTORY: it signs the hop between processes;"
            f" name the directory in DIRECTORY (or give both as {ENV_DIRECTORY} and"
            " WSGI_PROXY_LISTEN_SECRET)"
        )
    if registry.connected and directory != registry.directory_name:
        raise ValueError(
            f"DIRECTORY is {directory!r}, but {registry!r} has the directory"
            f" {registry.directory!r} already: name the directory in one place"
        )
    # The same name again (the environment's, connected by a listen()) must come with
    # the same secret: connect() raises otherwise.
    registry.connect(directory, secret=secret)
