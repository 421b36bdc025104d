"""
Naming a directory
==================

One way to name a directory, the same for ``Registry(directory=...)``, the
``DIRECTORY`` setting of the Flask and Django integrations, and the
environment variable ``WSGI_PROXY_LISTEN_DIRECTORY``:

===============================================  ==========================================
name                                             directory
===============================================  ==========================================
an absolute folder path, ``/run/myhost/proxy``   the embedded directory: one machine, no
                                                 server to run (SQLite and Unix sockets in
                                                 that folder)
``redis://``, ``rediss://`` or ``unix://`` URL   Redis: several machines; needs a secret
``redis+sentinel://host:26379,host2/main/0``     Redis behind Sentinel: the sentinels, the
                                                 master's name, the database
``redis+cluster://host:6379,host2:6379``         Redis Cluster: some of its nodes
===============================================  ==========================================

The secret comes from the ``secret`` argument, else from the environment
variable ``WSGI_PROXY_LISTEN_SECRET``. The implementations are imported only
when a directory is opened, so ``import wsgi_proxy_listen`` stays light.

:func:`from_environment` reads what a platform that launches processes says
in their environment: the directory, and whether the process is a runtime.
"""

from __future__ import annotations

import os
import typing as t

from .seam import shown_name

if t.TYPE_CHECKING:
    from .seam import Directory

__all__ = [
    "ENV_DIRECTORY",
    "ENV_RUNTIME",
    "ENV_SECRET",
    "Environment",
    "check_name",
    "from_environment",
    "kind_of",
    "open_directory",
    "resolve_secret",
    "runtime_from_environment",
]

#: The environment variable that names a directory when no setting does.
ENV_DIRECTORY = "WSGI_PROXY_LISTEN_DIRECTORY"
#: The environment variable that holds the secret when no setting does.
ENV_SECRET = "WSGI_PROXY_LISTEN_SECRET"
#: The environment variable that says whether a process is a runtime.
ENV_RUNTIME = "WSGI_PROXY_LISTEN_RUNTIME"
_YES = ("1", "true", "yes", "on")
_NO = ("0", "false", "no", "off")

_REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)


def open_directory(name: str, *, secret: str | bytes | None = None, **options: t.Any) -> Directory:
    """The directory that ``name`` names (see the table above).

    Opening one starts nothing: its threads and sockets start with the first
    request the process serves.

    :param options: for a Redis directory, what
        :class:`~wsgi_proxy_listen.cluster.RedisDirectory` takes besides the secret
        (``advertise_host``, ``bind``, ``namespace``, ``tls_cert``...).
    :raises ValueError: ``name`` is neither an absolute path nor a Redis URL,
        a Redis URL comes without a secret, or ``options`` come with a folder.
    :raises TypeError: ``name`` or ``secret`` is not a string.
    """
    kind = check_name(name, secret=secret)
    if kind == "redis":
        from .cluster.redis_directory import RedisDirectory

        return RedisDirectory(name, secret=t.cast(bytes, resolve_secret(secret)), **options)
    if options:
        raise ValueError(
            f"{', '.join(sorted(options))}: only a Redis directory takes them (the embedded"
            f" directory {name!r} serves one machine through Unix sockets)"
        )
    from .cluster.embedded import EmbeddedDirectory

    return EmbeddedDirectory(name, secret=resolve_secret(secret))


def check_name(name: object, *, secret: str | bytes | None = None) -> str:
    """What :func:`open_directory` checks, without opening anything: ``"embedded"`` or
    ``"redis"``, the kind of directory ``name`` names.

    :raises ValueError: ``name`` is neither an absolute path nor a Redis URL, a
        path is too long for the sockets in it, or a Redis URL comes without a
        secret.
    :raises TypeError: ``name`` or ``secret`` is not a string.
    """
    kind = kind_of(name)
    name = t.cast(str, name)
    resolved = resolve_secret(secret)
    if kind == "redis":
        if not resolved:
            raise ValueError(
                f"the Redis directory {shown_name(name)!r} needs a secret, the same in every"
                f" process: pass secret=..., set the SECRET setting, or set {ENV_SECRET}"
                " (--secret on the command line)"
            )
        return "redis"
    from .cluster.embedded import check_folder

    check_folder(name)
    return "embedded"


def kind_of(name: object) -> str:
    """``"embedded"`` or ``"redis"``: the kind of directory ``name`` names, by its form
    alone (no secret is asked for: reading a Redis directory needs none).

    :raises ValueError: ``name`` is neither an absolute path nor a Redis URL.
    :raises TypeError: ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"a directory is named by a string (a folder path or a Redis URL), not {name!r}"
        )
    if name.lower().startswith(_REDIS_SCHEMES):
        return "redis"
    if "://" not in name and os.path.isabs(name):
        return "embedded"
    raise ValueError(
        f"unknown directory {shown_name(name)!r}: name a folder by its absolute path (such as"
        " '/run/myhost/proxy') for processes on one machine, or a Redis server by its URL"
        " (redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://) for several"
        " machines"
    )


def resolve_secret(secret: str | bytes | None) -> bytes | None:
    """The secret a directory opened with ``secret`` uses: ``secret``, else the
    environment's, as bytes; ``None`` for none.

    :raises TypeError: ``secret`` is not a string.
    """
    if secret is not None and not isinstance(secret, (str, bytes)):
        raise TypeError(f"secret must be a str, bytes or None, not {type(secret).__name__!r}")
    if secret is None:
        secret = os.environ.get(ENV_SECRET) or None
    if isinstance(secret, str):
        secret = secret.encode()
    return secret or None


class Environment(t.NamedTuple):
    """What the environment says of this process."""

    directory: str
    """The directory's name, from ``WSGI_PROXY_LISTEN_DIRECTORY``."""
    runtime: bool | None
    """``WSGI_PROXY_LISTEN_RUNTIME``: whether the process is a runtime, or ``None``
    when it does not say."""


def runtime_from_environment() -> bool | None:
    """What ``WSGI_PROXY_LISTEN_RUNTIME`` says: ``True`` (a runtime), ``False`` (a web
    server's process), or ``None`` when it says nothing.

    :raises ValueError: a value that means nothing.
    """
    given = os.environ.get(ENV_RUNTIME, "").strip().lower()
    if given and given not in _YES + _NO:
        raise ValueError(
            f"{ENV_RUNTIME}={given!r} means nothing: use 1 for a runtime, 0 for a web"
            " server's process, or leave it unset to let it be told"
        )
    return given in _YES if given else None


def from_environment() -> Environment | None:
    """What the environment says, or ``None`` when it names no directory.

    :raises ValueError: ``WSGI_PROXY_LISTEN_RUNTIME`` holds a value that means nothing.
    """
    name = os.environ.get(ENV_DIRECTORY)
    if not name:
        return None
    return Environment(name, runtime_from_environment())
