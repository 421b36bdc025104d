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
===============================================  ==========================================

The secret comes from the ``secret`` argument, else from the environment
variable ``WSGI_PROXY_LISTEN_SECRET``. The implementations are imported only
when a directory is opened, so ``import wsgi_proxy_listen`` stays light.
"""

from __future__ import annotations

import os
import typing as t

if t.TYPE_CHECKING:
    from .seam import Directory

__all__ = ["ENV_DIRECTORY", "ENV_SECRET", "open_directory"]

#: The environment variable that names a directory when no setting does.
ENV_DIRECTORY = "WSGI_PROXY_LISTEN_DIRECTORY"
#: The environment variable that holds the secret when no setting does.
ENV_SECRET = "WSGI_PROXY_LISTEN_SECRET"

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_directory(name: str, *, secret: str | bytes | None = None) -> Directory:
    """The directory that ``name`` names (see the table above).

    Opening one starts nothing: its threads and sockets start with the first
    request the process serves.

    :raises ValueError: ``name`` is neither an absolute path nor a Redis URL,
        or a Redis URL comes without a secret.
    :raises TypeError: ``name`` or ``secret`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"a directory is named by a string (a folder path or a Redis URL), not {name!r}"
        )
    if secret is not None and not isinstance(secret, (str, bytes)):
        raise TypeError(f"secret must be a str, bytes or None, not {type(secret).__name__!r}")
    if secret is None:
        secret = os.environ.get(ENV_SECRET) or None
    if name.lower().startswith(_REDIS_SCHEMES):
        if not secret:
            raise ValueError(
                f"the Redis directory {name!r} needs a secret, the same in every process:"
                f" pass secret=..., set the SECRET setting, or set {ENV_SECRET}"
            )
        from .cluster.redis_directory import RedisDirectory

        return RedisDirectory(name, secret=secret)
    if "://" not in name and os.path.isabs(name):
        from .cluster.embedded import EmbeddedDirectory

        return EmbeddedDirectory(name, secret=secret)
    raise ValueError(
        f"unknown directory {name!r}: name a folder by its absolute path (such as"
        " '/run/myhost/proxy') for processes on one machine, or a Redis server by its URL"
        " (redis://, rediss:// or unix://) for several machines"
    )
