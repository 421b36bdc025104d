"""
The embedded directory
======================

Shares listeners between the processes of one machine with nothing to install
or run: the shared table is a SQLite database (WAL mode) and each process's
internal endpoint a Unix socket, both in one folder that the operator names.

.. code-block:: python

    from wsgi_proxy_listen import Registry

    registry = Registry(directory="/run/myhost/proxy")

The folder is created ``0700`` and the sockets ``0600``: its permissions are
the access control (:mod:`.folder`), so only processes of the same user take part, and hop
requests need no secret (one given is used to sign them anyway). Several
server instances (two gunicorns, a gunicorn and a job worker) share listeners
by naming the same folder. Files in it:

==========================  ===========================================================
``directory.sqlite3``       the table: owners with their lease, sessions (each with its
                            record), app membership, take-over notices, start locks
``<pid>-<token>.sock``      the internal endpoint of one process, removed at its exit
==========================  ===========================================================

Writes are short, mostly one statement, one writer at a time across every
process. A writer that finds the table locked tries again at once, yielding
the processor, then after short, growing pauses (SQLite's own busy handler
sleeps up to 100 ms a try, which lets many writers starve each other); one
that waits past its budget is *busy*, which is no outage: a ``listen()`` is
published by the next renewal, and no lookup is held back (readers never wait
for writers, in WAL mode).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import secrets
import socket
import sqlite3
import stat
import threading
import time
import typing as t

from ..seam import Entry
from .directory import SharedDirectory
from .folder import UnsafeFolder, secure_folder
from .store import Owner, StoreMismatch, decode_record, session_record

__all__ = ["EmbeddedDirectory", "check_folder"]

logger = logging.getLogger("wsgi_proxy_listen")

DATABASE = "directory.sqlite3"
#: The version of the table's layout (``PRAGMA user_version``) this release writes.
SCHEMA = 3
#: Seconds between two looks at the take-over notices (take-over within a second).
WATCH_INTERVAL = 0.2
#: Seconds a write waits for its turn before it counts as busy (it is tried again).
BUSY_TIMEOUT = 2.0
#: The longest pause between two tries of a write that found the table locked.
_MAX_PAUSE = 0.002
#: Seconds a writer that found the table locked tries again at once (yielding).
_EAGER = 0.01
# sockaddr_un holds 108 bytes with the final NUL; a socket name is at most 21 bytes.
_SOCKET_PATH_MAX = 107
_LONGEST_NAME = len("4194304-0123456789.sock")
#: The owner ids that processes make (pid-token), the only ones whose socket is used.
_OWNER = re.compile(r"[0-9]{1,10}-[0-9a-f]{10}\Z")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY, pid INTEGER NOT NULL, address TEXT NOT NULL,
    expires REAL NOT NULL, started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY, owner TEXT NOT NULL, app TEXT, joined REAL NOT NULL, record TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions (owner);
CREATE INDEX IF NOT EXISTS sessions_by_app ON sessions (app, joined) WHERE app IS NOT NULL;
CREATE TABLE IF NOT EXISTS takeovers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL, old_owner TEXT NOT NULL,
    at REAL NOT NULL, new_owner TEXT);
CREATE INDEX IF NOT EXISTS takeovers_by_owner ON takeovers (old_owner, id);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
"""
# A session published by another owner than the one listed: a take-over, which the old
# owner hears of (the table does it, so that publishing is one statement).
_TAKEOVER = """
CREATE TRIGGER IF NOT EXISTS sessions_taken_over BEFORE INSERT ON sessions
WHEN EXISTS (SELECT 1 FROM sessions WHERE session = NEW.session AND owner <> NEW.owner)
BEGIN
    INSERT INTO takeovers (session, old_owner, at, new_owner)
    SELECT session, owner, NEW.joined, NEW.owner FROM sessions WHERE session = NEW.session;
END
"""
_PUBLISH = "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?)"
_LOCATE = (
    "SELECT s.owner, s.record FROM sessions s JOIN owners o ON o.owner = s.owner"
    " WHERE s.session = ? AND o.expires > ?"
)
_ENTRIES = (
    "SELECT s.session, o.pid, o.address, s.record FROM sessions s"
    " JOIN owners o ON o.owner = s.owner WHERE o.expires > ? ORDER BY s.joined, s.session"
)
_CURRENT = (
    "SELECT s.session, s.owner, s.record FROM sessions s JOIN owners o ON o.owner = s.owner"
    " WHERE s.app = ? AND o.expires > ? ORDER BY s.joined DESC LIMIT 16"
)


def check_folder(folder: object) -> str:
    """``folder`` as the embedded directory uses it (normalised), without touching it.

    :raises ValueError: a relative path, or one too long for Unix sockets in it.
    """
    if not isinstance(folder, str) or not os.path.isabs(folder):
        raise ValueError(f"invalid folder {folder!r}: use an absolute path")
    folder = os.path.normpath(folder)
    if len(os.fsencode(folder)) + 1 + _LONGEST_NAME > _SOCKET_PATH_MAX:
        raise ValueError(
            f"the folder {folder!r} is too long for Unix sockets in it (at most"
            f" {_SOCKET_PATH_MAX - 1 - _LONGEST_NAME} bytes): choose a shorter path"
        )
    return folder


class EmbeddedDirectory(SharedDirectory):
    """A directory for the processes of one machine, in ``folder``.

    :param folder: an absolute path; created ``0700`` if missing. No other user may
        be able to reach or replace it (:mod:`~wsgi_proxy_listen.cluster.folder` says
        what is checked).
    :param secret: signs hop requests; not needed (the folder keeps others out).
    :param lease: seconds the listeners of a silent (paused) owner stay listed.
    :param read_timeout: seconds a hop waits for the owner's answer (then 504).
    :raises ValueError: a relative or too long path, or a folder others can reach or
        replace (:exc:`~wsgi_proxy_listen.cluster.folder.UnsafeFolder`, with what
        to do).
    """

    unreachable = (sqlite3.OperationalError, sqlite3.DatabaseError, StoreMismatch, UnsafeFolder)

    def __init__(
        self,
        folder: str,
        *,
        secret: str | bytes | None = None,
        lease: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        # The path its links lead to, checked: used from now on (see .folder).
        folder = check_folder(secure_folder(check_folder(folder), create=True))
        if isinstance(secret, str):
            secret = secret.encode()
        super().__init__(lease=lease, read_timeout=read_timeout, secret=secret or None)
        self.folder = folder
        self.database = os.path.join(folder, DATABASE)
        self._connections: tuple[sqlite3.Connection, sqlite3.Connection] | None = None
        self._owned = False  # whether this owner's row was written (then renewals keep it)
        self._open_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._seen_takeover = 0
        self._data_version = -1

    def __repr__(self) -> str:
        return f"<EmbeddedDirectory {self.folder!r} owner={self.owner!r}>"

    # -- connections -------------------------------------------------------------------------

    def _store_open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        with self._open_lock:
            if self._connections is None:
                # Processes that start together open a fresh table together: setting it up
                # (WAL, the schema) can meet a lock that SQLite reports at once, without
                # its busy wait. Try again for as long as a write would wait.
                deadline = time.monotonic() + BUSY_TIMEOUT
                while True:
                    try:
                        self._connections = self._connect()
                        break
                    except sqlite3.OperationalError as error:
                        if not _locked(error) or time.monotonic() > deadline:
                            raise
                        time.sleep(0.01)
            return self._connections

    def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        secure_folder(self.folder, create=False)  # still this user's alone?
        reader = sqlite3.connect(
            self.database, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        # The writer waits for its turn in _transaction, in short pauses of its own.
        writer = sqlite3.connect(
            self.database, timeout=0, isolation_level=None, check_same_thread=False
        )
        try:
            if writer.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                writer.execute("PRAGMA journal_mode=WAL")
            # The table is state of running processes: it need not survive a crash of
            # the machine, so commits skip fsync.
            for connection in (reader, writer):
                connection.execute("PRAGMA synchronous=OFF")
            # A table at this release's layout needs no write: a process that starts
            # while another writes (or holds the table, paused) reads at once.
            if writer.execute("PRAGMA user_version").fetchone()[0] != SCHEMA:
                with self._transaction(writer):
                    _set_up(writer, self.database)
        except BaseException:
            reader.close()
            writer.close()
            raise
        return reader, writer

    def _reader(self) -> sqlite3.Connection:
        return (self._connections or self._store_open())[0]

    def _writer(self) -> sqlite3.Connection:
        return (self._connections or self._store_open())[1]

    @contextlib.contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> t.Iterator[sqlite3.Connection]:
        with self._write_lock:
            _retry(connection.execute, "BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _write(self, sql: str, parameters: tuple[object, ...]) -> None:
        """One statement, its own transaction."""
        writer = self._writer()
        with self._write_lock:
            _retry(writer.execute, sql, parameters)

    def _store_busy(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.OperationalError) and _locked(error)

    def _store_close(self) -> None:
        with self._open_lock, self._read_lock, self._write_lock:
            if self._connections is not None:
                for connection in self._connections:
                    connection.close()
                self._connections = None

    # SQLite's connections must not cross a fork: the child would inherit the parent's
    # view of the file locks it holds, and take none itself. They are closed before a
    # fork (when no thread uses them) and opened again on first use, on both sides.

    def _store_before_fork(self) -> None:
        self._open_lock.acquire()
        self._read_lock.acquire()
        self._write_lock.acquire()
        if self._connections is not None:
            for connection in self._connections:
                connection.close()
            self._connections = None

    def _store_after_fork_in_parent(self) -> None:
        self._write_lock.release()
        self._read_lock.release()
        self._open_lock.release()

    def _store_after_fork(self) -> None:
        self._owned = False
        self._open_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._seen_takeover = 0
        self._data_version = -1

    # -- owners ----------------------------------------------------------------------------

    def _new_owner(self) -> str:
        return f"{os.getpid()}-{secrets.token_hex(5)}"

    def _socket(self, owner: str) -> str | None:
        """The socket of ``owner``: computed from its id, inside the folder, never taken
        from the table; ``None`` for an id that no process makes."""
        return os.path.join(self.folder, f"{owner}.sock") if _OWNER.match(owner) else None

    def _endpoint_address(self, owner: str) -> str:
        try:
            secure_folder(self.folder, create=False)  # still this user's alone?
        except UnsafeFolder as error:
            raise PermissionError(str(error)) from None
        return os.path.join(self.folder, f"{owner}.sock")

    def _own_row(self, writer: sqlite3.Connection, now: float) -> bool:
        """Write this owner's row and its lease; whether the lease was still running (a
        process that found it silent may have deleted the row, and its sessions)."""
        row = writer.execute(
            "UPDATE owners SET expires = ? WHERE owner = ? RETURNING expires",
            (now + self.lease, self.owner),
        ).fetchone()
        self._owned = True
        if row is not None:
            return True
        writer.execute(
            "INSERT INTO owners VALUES (?, ?, ?, ?, ?)",
            (self.owner, os.getpid(), self.address, now + self.lease, now),
        )
        return False

    # -- writes ----------------------------------------------------------------------------

    def _store_publish(self, session: str, entry: Owner) -> None:
        now = time.time()
        row = (session, entry.owner, entry.app, now, session_record(entry, now))
        if self._owned:
            self._write(_PUBLISH, row)  # the owner's row is there: its renewals keep it
            return
        with self._transaction(self._writer()) as writer:
            self._own_row(writer, now)
            writer.execute(_PUBLISH, row)

    def _store_withdraw(self, session: str, entry: Owner) -> None:
        # This entry only: the same owner may have published the session anew, in
        # another app, since.
        self._write(
            "DELETE FROM sessions WHERE session = ? AND owner = ? AND app IS ?",
            (session, entry.owner, entry.app),
        )

    def _store_renew(self) -> bool:
        now = time.time()
        with self._transaction(self._writer()) as writer:
            running = self._own_row(writer, now)
            # Clean up after owners that ended without a word (SIGKILL, a crash).
            dead = [
                owner
                for (owner,) in writer.execute(
                    "DELETE FROM owners WHERE expires < ? RETURNING owner", (now,)
                )
            ]
            for owner in dead:
                writer.execute("DELETE FROM sessions WHERE owner = ?", (owner,))
            writer.execute("DELETE FROM takeovers WHERE at < ?", (now - 60,))
            writer.execute("DELETE FROM locks WHERE expires < ?", (now,))
        for owner in dead:
            self._remove_socket(owner)
        return running

    def _store_republish(self, entries: dict[str, Owner]) -> list[str]:
        now = time.time()
        taken: list[str] = []
        with self._transaction(self._writer()) as writer:
            self._own_row(writer, now)
            for session, entry in entries.items():
                row = writer.execute(
                    "SELECT owner FROM sessions WHERE session = ?", (session,)
                ).fetchone()
                if row is None:
                    writer.execute(
                        "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                        (
                            session,
                            entry.owner,
                            entry.app,
                            now,
                            session_record(entry, now),
                        ),
                    )
                elif row[0] != self.owner:
                    taken.append(session)
        return taken

    def _store_forget(self, session: str, entry: Owner) -> bool:
        # Its socket in the folder refused the connection: on one machine that is proof
        # that no process listens there any more, so every entry of that owner goes
        # (compare-and-delete on the owner id).
        with self._transaction(self._writer()) as writer:
            writer.execute("DELETE FROM sessions WHERE owner = ?", (entry.owner,))
            writer.execute("DELETE FROM owners WHERE owner = ?", (entry.owner,))
        self._remove_socket(entry.owner)
        return True

    def owner_answers(self, owner: str) -> bool:
        """Whether a process listens on ``owner``'s socket in the folder (the path is
        computed from its id): a connection is made and closed at once, which its
        endpoint takes for nothing. On one machine, a refusal proves it gone."""
        path = self._socket(owner)
        if path is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                return False
            except OSError:
                return True  # busy or slow is not gone
        return True

    def _remove_socket(self, owner: str) -> None:
        """Remove the socket file a dead owner left: the path is computed from its id,
        never taken from a row, and only a socket is removed."""
        path = self._socket(owner)
        if path is None:
            return
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)

    def _store_withdraw_all(self, entries: dict[str, Owner]) -> None:
        with self._transaction(self._writer()) as writer:
            writer.execute("DELETE FROM sessions WHERE owner = ?", (self.owner,))
            writer.execute("DELETE FROM owners WHERE owner = ?", (self.owner,))
            writer.execute("DELETE FROM locks WHERE owner = ?", (self.owner,))

    def _store_lock(self, slug: str, seconds: float) -> bool:
        now = time.time()
        with self._transaction(self._writer()) as writer:
            row = writer.execute("SELECT expires FROM locks WHERE name = ?", (slug,)).fetchone()
            if row is not None and row[0] > now:
                return False
            writer.execute(
                "INSERT OR REPLACE INTO locks VALUES (?, ?, ?)", (slug, self.owner, now + seconds)
            )
            return True

    def _store_unlock(self, slug: str) -> None:
        with self._transaction(self._writer()) as writer:
            writer.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (slug, self.owner))

    def _store_first_use(self, key: str, seconds: float) -> bool:
        # A row of the locks' table that belongs to no owner, so that it outlives the
        # process that noted it; renewals delete it once it ran out. Its name cannot be
        # an app's (a slug has no ':').
        now, name = time.time(), f"used:{key}"
        with self._transaction(self._writer()) as writer:
            row = writer.execute("SELECT expires FROM locks WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] > now:
                return False
            writer.execute("INSERT OR REPLACE INTO locks VALUES (?, '', ?)", (name, now + seconds))
            return True

    # -- reads -----------------------------------------------------------------------------

    def _store_locate(self, session: str) -> Owner | None:
        with self._read_lock:
            row = self._reader().execute(_LOCATE, (session, time.time())).fetchone()
        if row is None:
            return None
        owner, text = row
        record, address = decode_record(text), self._socket(owner)
        if record is None or address is None:
            return None
        return Owner(owner, address, record["app"], record["terms"])

    def _store_changed(self) -> bool:
        # PRAGMA data_version changes when another connection commits: one cheap read
        # keeps every cached location exact.
        with self._read_lock:
            version = self._reader().execute("PRAGMA data_version").fetchone()[0]
            changed = version != self._data_version
            self._data_version = version
        return bool(changed)

    def _store_entries(self) -> list[Entry]:
        with self._read_lock:
            rows = self._reader().execute(_ENTRIES, (time.time(),)).fetchall()
        entries = []
        for session, pid, address, text in rows:
            record = decode_record(text)
            if record is not None:
                owner = record["owner"]
                entries.append(Entry(session, record["app"], owner, pid, address, record["since"]))
        return entries

    def _store_current(self, slug: str, skip: str = "") -> tuple[str, Owner] | None:
        with self._read_lock:
            rows = self._reader().execute(_CURRENT, (slug, time.time())).fetchall()
        for session, owner, text in rows:
            record, address = decode_record(text), self._socket(owner)
            if record is not None and address is not None and owner != skip:
                return session, Owner(owner, address, slug, record["terms"])
        return None

    def _store_probe(self) -> None:
        # Down means the table cannot be read or written at all (a busy one is not down).
        with self._read_lock:
            self._reader().execute("SELECT 1 FROM owners LIMIT 1").fetchall()

    def _store_watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            if self._down:
                continue
            try:
                if self._store_changed():
                    self._forget_locations()
                with self._read_lock:
                    rows = (
                        self._reader()
                        .execute(
                            "SELECT id, session, new_owner FROM takeovers"
                            " WHERE old_owner = ? AND id > ?",
                            (self.owner, self._seen_takeover),
                        )
                        .fetchall()
                    )
            except self.unreachable:
                continue
            for row_id, session, new_owner in rows:
                self._seen_takeover = max(self._seen_takeover, row_id)
                self._notice(session, new_owner)


def _locked(error: BaseException) -> bool:
    text = str(error)
    return "locked" in text or "busy" in text


def _retry(execute: t.Callable[..., object], *arguments: object) -> None:
    """``execute(*arguments)``, tried again while another process writes, until
    :data:`BUSY_TIMEOUT`: then the table is busy (the error says so).

    A write holds the table for microseconds: for the first :data:`_EAGER` seconds a
    writer only yields the processor between tries (to the writer it waits for, on a
    busy machine), then it pauses a little longer each time (the other may be paused)."""
    began = time.monotonic()
    pause = 0.0001
    while True:
        try:
            execute(*arguments)
            return
        except sqlite3.OperationalError as error:
            waited = time.monotonic() - began
            if not _locked(error) or waited > BUSY_TIMEOUT:
                raise
        if waited < _EAGER:
            os.sched_yield()
        else:
            time.sleep(random.uniform(0, pause))
            pause = min(pause * 2, _MAX_PAUSE)


def _set_up(writer: sqlite3.Connection, database: str) -> None:
    """Create the table at this release's layout, or bring one of an earlier release to
    it; refuse one that a later release laid out."""
    version = writer.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA:
        raise StoreMismatch(
            f"the directory table {database} has layout {version}; this wsgi-proxy-listen"
            f" knows layouts up to {SCHEMA}: run the same release in every process"
        )
    moved = version < 3 and bool(_columns(writer, "sessions"))
    if moved:
        # Layouts 1 and 2 kept the sessions in a table of rowids, with an index of their
        # ids, one of their owners and one of every app (none included): four trees for
        # each write, where layout 3 has two (the sessions by id, and by owner), and a
        # third for an app's member.
        writer.execute("DROP TABLE IF EXISTS sessions_before_3")  # made by hand, say
        writer.execute("ALTER TABLE sessions RENAME TO sessions_before_3")
        for kind, name in (
            ("INDEX", "sessions_by_owner"),
            ("INDEX", "sessions_by_app"),
            ("TRIGGER", "sessions_taken_over"),
        ):
            writer.execute(f"DROP {kind} IF EXISTS {name}")
    for statement in filter(str.strip, _SCHEMA.split(";")):
        writer.execute(statement)
    if moved:
        record = "record" if "record" in _columns(writer, "sessions_before_3") else "NULL"
        writer.execute(
            f"INSERT INTO sessions SELECT session, owner, app, joined, {record}"
            " FROM sessions_before_3 WHERE session IS NOT NULL"  # a key now, never NULL
        )
        writer.execute("DROP TABLE sessions_before_3")
    writer.execute(_TAKEOVER)
    if "new_owner" not in _columns(writer, "takeovers"):
        writer.execute("ALTER TABLE takeovers ADD COLUMN new_owner TEXT")
    if version < SCHEMA:
        writer.execute(f"PRAGMA user_version = {SCHEMA}")


def _columns(writer: sqlite3.Connection, table: str) -> set[str]:
    """The columns of ``table`` (none: there is no such table)."""
    return {row[1] for row in writer.execute(f"PRAGMA table_info({table})")}
