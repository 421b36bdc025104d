"""
Listeners across processes and machines
=======================================

Two directories share the listeners that processes register at run time, so
that every worker of a host, and every host, can reach them:

- :class:`EmbeddedDirectory`, for the processes of one machine:
  SQLite and Unix sockets in a folder, nothing to install or run;
- :class:`RedisDirectory`, for several machines, through a
  Redis server (extra ``wsgi-proxy-listen[redis]``).

Name one with a string wherever a directory is accepted
(:func:`wsgi_proxy_listen.naming.open_directory`): an absolute folder path or
a Redis URL. ``import wsgi_proxy_listen`` never imports this package, and
importing it never imports redis-py until :class:`RedisDirectory` is used.
"""

from __future__ import annotations

import typing as t

from .directory import SharedDirectory
from .embedded import EmbeddedDirectory
from .store import Owner

if t.TYPE_CHECKING:
    from .redis_directory import RedisDirectory

__all__ = ["EmbeddedDirectory", "Owner", "RedisDirectory", "SharedDirectory"]


def __getattr__(name: str) -> t.Any:
    if name == "RedisDirectory":
        from .redis_directory import RedisDirectory

        return RedisDirectory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
