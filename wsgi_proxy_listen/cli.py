"""
Command line
============

What an operator asks of a directory: which listeners are live, in which
process, in which app, since when; and, for a readiness probe, whether it
answers at all.

.. code-block:: text

    wsgi-proxy-listen status [DIRECTORY] [--secret S] [--namespace N] [--json]
    wsgi-proxy-listen check [DIRECTORY] [--secret S] [--namespace N]
    python -m wsgi_proxy_listen status ...
    flask wsgi-proxy-listen status ...

``DIRECTORY`` is named as everywhere else: an absolute folder path (the
embedded directory) or a Redis URL; without it, ``WSGI_PROXY_LISTEN_DIRECTORY``
(and, through Flask, the app's ``DIRECTORY`` setting first).

Reading a Redis directory needs no secret (the secret signs the hop between
processes, not what Redis holds). Without one, every deployment that has a
live process in that database is listed, each under its namespace; with
``--namespace`` (or ``WSGI_PROXY_LISTEN_NAMESPACE``), or a secret (``--secret``
or ``WSGI_PROXY_LISTEN_SECRET``: the namespace derived from it), only that one.

Exit status: 0 when the directory answers (``status`` lists its listeners, none
being no error; ``check`` prints one line), 2 with one line on standard error
when it is not named, means nothing, or cannot be read (with what the store
said: refused, a wrong password, not a database...). A Redis URL's password is
never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
import typing as t

from .exceptions import DirectoryUnavailable
from .naming import ENV_DIRECTORY, ENV_SECRET, check_name, kind_of, open_directory, resolve_secret
from .routing import is_valid_id
from .seam import shown_name

if t.TYPE_CHECKING:
    from .cluster.embedded import EmbeddedDirectory
    from .seam import Entry

__all__ = ["Found", "Unreadable", "check", "main", "read", "run", "status"]

#: The exit status when the directory is not named, means nothing, or cannot be read.
UNREACHABLE = 2
_ENV_NAMESPACE = "WSGI_PROXY_LISTEN_NAMESPACE"  # cluster.variables.ENV_NAMESPACE, unimported


def main(argv: list[str] | None = None, *, prog: str = "wsgi-proxy-listen") -> int:
    """Run the command line with ``argv`` (``sys.argv[1:]`` by default); the exit status."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Look into a wsgi_proxy_listen directory."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status_parser = commands.add_parser(
        "status",
        help="list the live listeners of a directory",
        description="List the live listeners of a directory: session, app, owning process,"
        " its address, and how long ago it was published.",
    )
    check_parser = commands.add_parser(
        "check",
        help="exit 0 if a directory answers, 2 with one line if not (a readiness probe)",
        description="Whether a directory answers: exit status 0 and one line saying what it"
        " holds, or 2 and one line saying why not.",
    )
    for command in (status_parser, check_parser):
        command.add_argument(
            "directory",
            nargs="?",
            help=f"an absolute folder path or a Redis URL (default: ${ENV_DIRECTORY})",
        )
        command.add_argument(
            "--secret",
            help=f"a Redis deployment's secret: read only its namespace (default: ${ENV_SECRET})",
        )
        command.add_argument(
            "--namespace",
            help=f"a Redis deployment's namespace, to read only it (default: ${_ENV_NAMESPACE})",
        )
    status_parser.add_argument(
        "--json", action="store_true", help="print a JSON list, one object per listener"
    )
    options = parser.parse_args(argv)
    if options.command == "check":
        return check(options.directory, secret=options.secret, namespace=options.namespace)
    return status(
        options.directory,
        secret=options.secret,
        namespace=options.namespace,
        as_json=options.json,
    )


def run() -> t.NoReturn:
    """The ``wsgi-proxy-listen`` console script."""
    sys.exit(main())


class Found(t.NamedTuple):
    """What a directory holds: a deployment's live entries."""

    namespace: str | None
    """The Redis deployment's namespace; ``None`` for the embedded directory."""
    entries: list[Entry]
    dead: frozenset[str] = frozenset()
    """The owners found gone: on one machine, a process whose socket refuses a
    connection is gone, though its lease has not run out yet (Redis lists only
    owners whose lease runs: a lapsed one is not listed)."""


class Unreadable(Exception):
    """The directory is not named, means nothing, or cannot be read: the one line why."""


def read(
    name: str | None, *, secret: str | None = None, namespace: str | None = None
) -> tuple[str, list[Found]]:
    """The directory ``name`` (or the environment's) as it shows itself, and what it holds.

    :raises Unreadable: it is not named, means nothing, or cannot be read.
    """
    name = name or os.environ.get(ENV_DIRECTORY) or None
    if name is None:
        raise Unreadable(f"no directory: name one, or set {ENV_DIRECTORY}")
    try:
        kind = kind_of(name)
        if kind == "embedded":
            check_name(name)
        resolved = resolve_secret(secret)
    except (TypeError, ValueError) as error:
        raise Unreadable(str(error)) from None
    shown = shown_name(name)
    if kind == "embedded":
        if not os.path.exists(name):
            raise Unreadable(f"no directory at {name}: the folder does not exist")
        if not os.path.isdir(name):
            raise Unreadable(f"no directory at {name}: it is not a folder")
        from .cluster.embedded import DATABASE

        if not os.path.exists(os.path.join(name, DATABASE)):
            # Nothing was ever published there: say so without writing the table.
            return shown, [Found(None, [])]
    try:
        with _quiet.running():
            if kind == "redis":
                from .cluster.redis_directory import read_deployments
                from .cluster.variables import namespace_for

                namespace = namespace or os.environ.get(_ENV_NAMESPACE) or None
                if namespace is None and resolved:
                    namespace = namespace_for(resolved)
                return shown, [Found(*found) for found in read_deployments(name, namespace)]
            directory = t.cast("EmbeddedDirectory", open_directory(name, secret=secret))
            try:
                entries = directory.entries()
                owners = {entry.owner for entry in entries}
                dead = frozenset(owner for owner in owners if not directory.owner_answers(owner))
                return shown, [Found(None, entries, dead)]
            finally:
                directory.close()
    except Exception as error:  # noqa: BLE001 - whatever the store says, in one line
        cause = error.__cause__ if isinstance(error, DirectoryUnavailable) else None
        said = str(cause or error) or type(cause or error).__name__
        raise Unreadable(f"cannot read the directory {shown}: {said}") from None


def _read_or_say(
    name: str | None, secret: str | None, namespace: str | None, err: t.TextIO | None
) -> tuple[str, list[Found]] | None:
    """:func:`read`, or ``None`` once the reason it cannot is printed to ``err``."""
    try:
        return read(name, secret=secret, namespace=namespace)
    except Unreadable as error:
        print(error, file=sys.stderr if err is None else err)
        return None


def status(
    name: str | None,
    *,
    secret: str | None = None,
    namespace: str | None = None,
    as_json: bool = False,
    out: t.TextIO | None = None,
    err: t.TextIO | None = None,
) -> int:
    """Print the live listeners of the directory ``name`` (or the environment's);
    the exit status."""
    got = _read_or_say(name, secret, namespace, err)
    if got is None:
        return UNREACHABLE
    shown, found = got
    out = sys.stdout if out is None else out
    _show(found, shown, as_json, out)
    return 0


def check(
    name: str | None,
    *,
    secret: str | None = None,
    namespace: str | None = None,
    out: t.TextIO | None = None,
    err: t.TextIO | None = None,
) -> int:
    """Say in one line whether the directory ``name`` (or the environment's) answers,
    and what it holds; the exit status (0, or 2 when it cannot be read)."""
    got = _read_or_say(name, secret, namespace, err)
    if got is None:
        return UNREACHABLE
    shown, found = got
    out = sys.stdout if out is None else out
    if not found:
        held = "no deployment has a live process there"
    else:
        held = "; ".join(
            _counted(deployment.entries, f"namespace {_printable(deployment.namespace)}: ")
            if deployment.namespace is not None
            else _counted(deployment.entries)
            for deployment in found
        )
    print(f"{_printable(shown)} answers: {held}", file=out)
    return 0


def _counted(entries: list[Entry], before: str = "") -> str:
    processes = len({entry.owner for entry in entries})
    listeners = "listener" if len(entries) == 1 else "listeners"
    in_processes = "process" if processes == 1 else "processes"
    return f"{before}{len(entries)} {listeners} in {processes} {in_processes}"


class _Quiet(logging.Filter):
    """Drops the package's records while a :func:`status` runs: it logs an outage for
    servers, and the one line of :func:`status` says it here. Calls may overlap (in
    threads of a Flask app): the filter is on the logger while any of them runs."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._running = 0

    @contextlib.contextmanager
    def running(self) -> t.Iterator[None]:
        logger = logging.getLogger("wsgi_proxy_listen")
        with self._lock:
            self._running += 1
            if self._running == 1:
                logger.addFilter(self)
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    logger.removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        return False


_quiet = _Quiet()


def _show(found: list[Found], name: str, as_json: bool, out: t.TextIO) -> None:
    now = time.time()
    if as_json:
        rows = [
            _as_dict(entry, now, deployment.namespace, entry.owner not in deployment.dead)
            for deployment in found
            for entry in deployment.entries
        ]
        json.dump(rows, out, indent=2)
        out.write("\n")
    else:
        _table(found, now, name, out)


def _as_dict(entry: Entry, now: float, namespace: str | None, live: bool) -> dict[str, object]:
    shown: dict[str, object] = {} if namespace is None else {"namespace": namespace}
    return shown | {
        "session": entry.session,
        "app": entry.app,
        "pid": entry.pid,
        "owner": entry.owner,
        "address": entry.address,
        "since": entry.since,
        "age_seconds": round(max(now - entry.since, 0.0), 3),
        "live": live,
    }


def _table(found: list[Found], now: float, name: str, out: t.TextIO) -> None:
    entries = [
        (deployment.namespace, entry) for deployment in found for entry in deployment.entries
    ]
    dead = frozenset().union(*(deployment.dead for deployment in found))
    if not entries:
        where = _printable(name)
        if not found:
            print(f"no deployment has a live process in {where}", file=out)
        else:
            print(f"no live listeners in {where}", file=out)
        return
    namespaced = any(deployment.namespace is not None for deployment in found)
    head = ("SESSION", "APP", "PID", "OWNER", "ADDRESS", "AGE") + (("STATE",) if dead else ())
    rows = [(("NAMESPACE",) if namespaced else ()) + head] + [
        ((_printable(namespace or ""),) if namespaced else ())
        + (
            _id(entry.session),
            "-" if entry.app is None else _id(entry.app),
            "-" if entry.pid is None else str(entry.pid),
            _printable(entry.owner),
            _printable(entry.address),
            _age(now - entry.since),
        )
        + (("gone" if entry.owner in dead else "live",) if dead else ())
        for namespace, entry in entries
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)
    every = [entry for _, entry in entries]
    in_deployments = f" of {len(found)} deployments" if len(found) > 1 else ""
    print(_counted(every) + in_deployments, file=out)
    if dead:
        gone = len(dead)
        print(
            f"{gone} of the processes {'is' if gone == 1 else 'are'} gone (the socket refuses):"
            " the next request for one of its sessions removes its entries",
            file=out,
        )
    invalid = sum(
        not is_valid_id(entry.session) or (entry.app is not None and not is_valid_id(entry.app))
        for entry in every
    )
    if invalid:
        print(
            f"{invalid} of them with a session or app that is no valid id (shown quoted):"
            " written by something else than this package",
            file=out,
        )


def _printable(text: str) -> str:
    """``text`` as it is if it is printable, else with what a terminal would act on
    (escape sequences, other control characters) escaped, as ``repr`` does."""
    return text if text.isprintable() else repr(text)[1:-1]


def _id(text: str) -> str:
    """A session id or app slug as it is, or quoted and escaped if it is no valid id."""
    return text if is_valid_id(text) else repr(text)


def _age(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
