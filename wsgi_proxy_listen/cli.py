"""
Command line
============

What an operator asks of a directory: which listeners are live, in which
process, in which app, since when.

.. code-block:: text

    wsgi-proxy-listen status [DIRECTORY] [--json]
    python -m wsgi_proxy_listen status [DIRECTORY] [--json]
    flask wsgi-proxy-listen status [DIRECTORY] [--json]

``DIRECTORY`` is named as everywhere else: an absolute folder path (the
embedded directory) or a Redis URL; without it, ``WSGI_PROXY_LISTEN_DIRECTORY``
(and, through Flask, the app's ``DIRECTORY`` setting first). A Redis
directory's secret comes from ``--secret`` or ``WSGI_PROXY_LISTEN_SECRET``.

Exit status: 0 with the listeners (none is no error), 2 with one line on
standard error when the directory is not named, means nothing, or cannot be
read (with what the store said: refused, a wrong password, not a database...).
A Redis URL's password is never printed.
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
from .naming import ENV_DIRECTORY, ENV_SECRET, check_name, open_directory
from .routing import is_valid_id
from .seam import shown_name

if t.TYPE_CHECKING:
    from .seam import Entry

__all__ = ["main", "run", "status"]

#: The exit status when the directory is not named, means nothing, or cannot be read.
UNREACHABLE = 2


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
    status_parser.add_argument(
        "directory",
        nargs="?",
        help=f"an absolute folder path or a Redis URL (default: ${ENV_DIRECTORY})",
    )
    status_parser.add_argument(
        "--secret", help=f"the secret of a Redis directory (default: ${ENV_SECRET})"
    )
    status_parser.add_argument(
        "--json", action="store_true", help="print a JSON list, one object per listener"
    )
    options = parser.parse_args(argv)
    return status(options.directory, secret=options.secret, as_json=options.json)


def run() -> t.NoReturn:
    """The ``wsgi-proxy-listen`` console script."""
    sys.exit(main())


def status(
    name: str | None,
    *,
    secret: str | None = None,
    as_json: bool = False,
    out: t.TextIO | None = None,
    err: t.TextIO | None = None,
) -> int:
    """Print the live listeners of the directory ``name`` (or the environment's);
    the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    name = name or os.environ.get(ENV_DIRECTORY) or None
    if name is None:
        print(f"no directory: name one, or set {ENV_DIRECTORY}", file=err)
        return UNREACHABLE
    try:
        kind = check_name(name, secret=secret)
    except (TypeError, ValueError) as error:
        print(error, file=err)
        return UNREACHABLE
    shown = shown_name(name)
    if kind == "embedded":
        if not os.path.exists(name):
            print(f"no directory at {name}: the folder does not exist", file=err)
            return UNREACHABLE
        if not os.path.isdir(name):
            print(f"no directory at {name}: it is not a folder", file=err)
            return UNREACHABLE
        from .cluster.embedded import DATABASE

        if not os.path.exists(os.path.join(name, DATABASE)):
            # Nothing was ever published there: say so without writing the table.
            _show([], shown, as_json, out)
            return 0
    try:
        with _quiet.running():
            directory = open_directory(name, secret=secret)
            try:
                entries = directory.entries()
            finally:
                directory.close()
    except Exception as error:  # noqa: BLE001 - whatever the store says, in one line
        cause = error.__cause__ if isinstance(error, DirectoryUnavailable) else None
        said = str(cause or error) or type(cause or error).__name__
        print(f"cannot read the directory {shown}: {said}", file=err)
        return UNREACHABLE
    _show(entries, shown, as_json, out)
    return 0


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


def _show(entries: list[Entry], name: str, as_json: bool, out: t.TextIO) -> None:
    now = time.time()
    if as_json:
        json.dump([_as_dict(entry, now) for entry in entries], out, indent=2)
        out.write("\n")
    else:
        _table(entries, now, name, out)


def _as_dict(entry: Entry, now: float) -> dict[str, object]:
    return {
        "session": entry.session,
        "app": entry.app,
        "pid": entry.pid,
        "owner": entry.owner,
        "address": entry.address,
        "since": entry.since,
        "age_seconds": round(max(now - entry.since, 0.0), 3),
    }


def _table(entries: list[Entry], now: float, name: str, out: t.TextIO) -> None:
    if not entries:
        print(f"no live listeners in {_printable(name)}", file=out)
        return
    rows = [("SESSION", "APP", "PID", "OWNER", "ADDRESS", "AGE")] + [
        (
            _id(entry.session),
            "-" if entry.app is None else _id(entry.app),
            "-" if entry.pid is None else str(entry.pid),
            _printable(entry.owner),
            _printable(entry.address),
            _age(now - entry.since),
        )
        for entry in entries
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)
    processes = len({entry.owner for entry in entries})
    listeners = "listener" if len(entries) == 1 else "listeners"
    in_processes = "process" if processes == 1 else "processes"
    print(f"{len(entries)} {listeners} in {processes} {in_processes}", file=out)
    invalid = sum(
        not is_valid_id(entry.session) or (entry.app is not None and not is_valid_id(entry.app))
        for entry in entries
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
