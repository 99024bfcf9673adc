"""
The embedded default store: one SQLite file, used from one dedicated thread.

All statements run on a single worker thread, one transaction per call, so the
reactor never waits on the disk and every multi-row change (an account with its
invite use and roster rows) is atomic. WAL mode lets C{invitesrvctl} work on the
same file while the server runs. The schema is a series of numbered SQL files
in C{schema/}; C{PRAGMA user_version} says how many have been applied, and an
upgrade copies the file aside first.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import sqlite3
from pathlib import Path

from twisted.internet import defer
from twisted.python.threadpool import ThreadPool

from invitesrv.logs import logger
from invitesrv.store.interfaces import StoreUnavailable
from invitesrv.store.sql import SQLStore
from invitesrv.usernames import skeleton

log = logger()

_TRANSIENT = ("locked", "busy", "full", "disk i/o", "readonly", "unable to open")


def schemaScripts(folder=None) -> list[tuple[int, str]]:
    """The numbered schema files in C{folder} (default: shipped with the package), in order."""
    if folder is None:
        folder = importlib.resources.files("invitesrv.store") / "schema"
    scripts = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d+)-[\w-]+\.sql", entry.name)
        if match:
            scripts.append((int(match.group(1)), entry.read_text("utf-8")))
    return sorted(scripts)


def openDatabase(path: str, scripts: list[tuple[int, str]] | None = None,
                 timeout: float = 5.0) -> sqlite3.Connection:
    """
    Open (creating or upgrading) the database at C{path}; C{":memory:"} works.
    Before an upgrade of an existing file it is copied to C{<file>.v<N>.bak}.
    C{timeout} is how long a statement waits for another process's lock.
    """
    scripts = schemaScripts() if scripts is None else scripts
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.create_function("username_skeleton", 1, skeleton, deterministic=True)  # schema 2
    conn.execute("PRAGMA foreign_keys = ON")
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    latest = scripts[-1][0] if scripts else 0
    if version > latest:
        conn.close()
        raise RuntimeError(f"{path}: schema version {version} is newer than this invitesrv ({latest})")
    if 0 < version < latest and path != ":memory:":
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        backup = f"{path}.v{version}.bak"
        shutil.copyfile(path, backup)
        log.info("Database {path} is at schema {old}; upgrading to {new} (copy kept in {backup})",
                 path=path, old=version, new=latest, backup=backup)
    try:
        for number, script in scripts:
            if number <= version:
                continue
            conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    except BaseException:
        # A failed step leaves the file at the previous version, and unlocked.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        raise
    return conn


class SQLiteStore(SQLStore):
    """
    L{IStore} over one SQLite file (or C{":memory:"}).

    A database that cannot be used (locked by another process beyond
    C{busyTimeout} seconds, disk full, read-only) fails calls with
    L{StoreUnavailable}; meanwhile calls wait only briefly for a lock.

    Statements run on C{threadpool}, by default a pool of the one thread the
    connection is used from (so write transactions run one at a time); a
    test may give one that runs them inline (with a C{reactor} whose
    C{callFromThread} calls at once).
    """

    def __init__(self, path: str | Path, reactor=None, busyTimeout: float = 5.0, threadpool=None):
        SQLStore.__init__(self, reactor, busyTimeout, threadpool if threadpool is not None
                          else ThreadPool(1, 1, name="invitesrv-db"))
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None  # see _read
        self._waiting = busyTimeout  # the busy timeout the connection has now

    # -- life cycle ---------------------------------------------------------

    def open(self, serving: bool = True) -> None:
        """
        Open the database (creating or upgrading it) and start the worker.
        C{serving} is False for a tool (C{invitesrvctl}) that may run beside
        the server, whose reservations it must leave alone.
        """
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = openDatabase(self.path, timeout=self.busyTimeout)
        self._waiting = self.busyTimeout
        if serving:
            # No registration can be in flight after a start: free leaked reservations.
            self._conn.execute("UPDATE invites SET reserved = 0 WHERE reserved != 0")
            # Nor an upload: a PUT cut by a stop may be tried again.
            self._conn.execute("UPDATE uploads SET state = 'slot' WHERE state = 'uploading'")
            # A newer ICU may have newer confusables data than the stored skeletons.
            self._conn.execute("UPDATE accounts SET skeleton = username_skeleton(username)"
                               " WHERE skeleton IS NOT username_skeleton(username)")
        if self.path != ":memory:":
            self._reader = sqlite3.connect(self.path, isolation_level=None, timeout=0)
            self._reader.create_function("username_skeleton", 1, skeleton, deterministic=True)
            self._reader.execute("PRAGMA query_only = ON")
        self._pool.start()

    def close(self) -> None:
        self._pool.stop()
        for conn in (self._conn, self._reader):
            if conn is not None:
                conn.close()
        self._conn = self._reader = None

    def _read(self, fn, *args):
        """
        A read with no call still before it in the worker's queue is answered
        at once, in the reactor's thread, from a read-only connection of its
        own: in WAL mode a reader waits for no writer, the few rows a login
        reads are in SQLite's cache, and the hand-off to the worker and back
        (its wake-up, the GIL) cost more than the read, about 0.2 ms a
        login. With a call pending, the read goes to the worker behind it, so
        it sees what was asked before it; so does a read the database would
        make wait (busy, or an error to report as the worker does). Logins go
        on while another process (C{invitesrvctl}) holds the write lock.
        """
        if self._pending or self._reader is None:
            return self._run(fn, *args)
        started = self._reactor.seconds()
        conn = self._reader
        try:
            conn.execute("BEGIN")
            try:
                result = fn(conn, *args)
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError:
            return self._run(fn, *args)
        except Exception:
            d = defer.fail()
        else:
            d = defer.succeed(result)
        # (A read that works says nothing of the writer: an episode of the
        # store refusing writes goes on.)
        if self.observeLatency is not None:
            d.addBoth(self._observed, started)
        return d

    def _transaction(self, fn, args):
        conn = self._conn
        waiting = min(self.busyTimeout, 0.05) if self._failFast else self.busyTimeout
        if waiting != self._waiting:
            conn.execute(f"PRAGMA busy_timeout = {int(waiting * 1000)}")
            self._waiting = waiting
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.OperationalError as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if any(word in str(e).lower() for word in _TRANSIENT):
                raise StoreUnavailable(str(e)) from e
            raise


def backupDatabase(path: str, target: str) -> None:
    """
    Copy the database at C{path} to C{target} (mode 0600) as one consistent
    snapshot, while the server may be writing: SQLite's online backup copies
    every page under one read transaction. C{target} appears only when whole.
    """
    partial = f"{target}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        destination = sqlite3.connect(partial)
        try:
            source.backup(destination)
            destination.execute("PRAGMA journal_mode = DELETE")
        finally:
            destination.close()
    except BaseException:
        os.unlink(partial)
        raise
    finally:
        source.close()
    os.replace(partial, target)


def checkBackup(path: str) -> int:
    """
    The schema version of the invitesrv database at C{path}, after checking
    it is one (readable, intact, of a schema this invitesrv knows).
    """
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            intact = conn.execute("PRAGMA integrity_check").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master"
                                                     " WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path} is not an SQLite database ({e})") from None
    latest = schemaScripts()[-1][0]
    if "accounts" not in tables or not 0 < version:
        raise ValueError(f"{path} is not an invitesrv database")
    if version > latest:
        raise ValueError(f"{path} is of schema {version}, newer than this invitesrv's ({latest})")
    if intact != "ok":
        raise ValueError(f"{path} is damaged: {intact}")
    return version


def restoreDatabase(backup: str, path: str) -> str | None:
    """
    Replace the database at C{path} (no server may be using it) with the
    checked copy C{backup}; the database it replaces is kept beside it.
    Return where, or None when there was none.
    """
    checkBackup(backup)
    kept = None
    if Path(path).exists():
        kept = f"{path}.before-restore"
        backupDatabase(path, kept)
    source = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        destination = sqlite3.connect(path)
        try:
            source.backup(destination)
        finally:
            destination.close()
    finally:
        source.close()
    os.chmod(path, 0o600)
    openDatabase(path).close()  # upgrade an older schema now, with the usual copy
    return kept
