"""
The SQLite store: the shared behaviour suite against C{:memory:} and a file,
then what only SQLite has: WAL for a second process, reservations freed at
start, and schema files applied one by one with a backup before an upgrade.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import pytest_twisted
from store_behaviour import HOST, NOW, SQLAudit, StoreBehaviour, account, invite, token
from synchronous import InlineThreadPool, ThreadlessClock, result

from invitesrv.store.interfaces import RosterItem, UsernameConfusable
from invitesrv.store.sqlite import SQLiteStore, openDatabase, schemaScripts


class TestMemoryDatabase(SQLAudit, StoreBehaviour):
    """The behaviour suite on C{:memory:}, as the unit tests use the store."""

    @pytest.fixture
    def store(self):
        store = SQLiteStore(":memory:")
        store.open()
        yield store
        store.close()


class TestInlineStore(SQLAudit, StoreBehaviour):
    """
    The behaviour suite with the statements run inline by an injected pool:
    every answer has fired when the call returns, with no thread or reactor.
    """

    @pytest.fixture
    def store(self):
        store = SQLiteStore(":memory:", ThreadlessClock(), threadpool=InlineThreadPool())
        store.open()
        yield store
        store.close()

    def test_answersAtOnce(self, store):
        """The injected pool is the one used: the answer is there without a reactor turn."""
        result(store.createAccount(account("alice")))
        assert result(store.accountExists(HOST, "alice"))


class TestFileStore(SQLAudit, StoreBehaviour):
    """The behaviour suite on a file in WAL mode, as the server uses the store."""

    @pytest.fixture
    def store(self, tmp_path):
        store = SQLiteStore(tmp_path / "sub" / "invitesrv.sqlite3")
        store.open()
        yield store
        store.close()


# -- a file shared by two processes -------------------------------------------------


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "data" / "invitesrv.sqlite3"


def test_fileSettings(path):
    """A new file is in WAL mode, with foreign keys on, at the latest schema version."""
    path.parent.mkdir()
    connection = openDatabase(str(path))
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert connection.execute("PRAGMA user_version").fetchone()[0] == schemaScripts()[-1][0]
    finally:
        connection.close()


@pytest_twisted.inlineCallbacks
def test_twoStoresOneFile(path):
    """What one store (the CLI) writes, another (the running server) reads at once."""
    server, cli = SQLiteStore(path), SQLiteStore(path)
    server.open()
    cli.open()
    try:
        yield cli.createAccount(account("alice"))
        assert (yield server.accountExists(HOST, "alice"))
        yield server.setRosterItem(HOST, "alice", RosterItem("bob@example.org"))
        assert (yield cli.getRoster(HOST, "alice")).version == 1
    finally:
        cli.close()
        server.close()


@pytest_twisted.inlineCallbacks
def test_readsAnsweredAtOnce(path):
    """
    On a file, a read with nothing before it in the worker's queue is
    answered at once in the reactor's thread, also while another process
    holds the write lock; a read asked right after a write waits behind it
    and sees it.
    """
    store = SQLiteStore(path)
    store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        yield store.createAccount(account("alice"))
        other.execute("BEGIN IMMEDIATE")
        now = store.getRoster(HOST, "alice")
        assert now.called and (yield now).items == ()
        other.execute("ROLLBACK")
        written = store.setRosterItem(HOST, "alice", RosterItem("bob@example.org"))
        after = store.getRoster(HOST, "alice")
        assert not after.called
        yield written
        assert [item.contact for item in (yield after).items] == ["bob@example.org"]
    finally:
        other.close()
        store.close()


@pytest_twisted.inlineCallbacks
def test_reservationsFreedAtStart(path):
    """A reservation left by a crash is freed when the store opens again."""
    store = SQLiteStore(path)
    store.open()
    yield store.createInvite(invite("i1"), token("i1"))
    assert (yield store.reserveInvite(token("i1"), HOST, NOW)) is not None
    assert (yield store.reserveInvite(token("i1"), HOST, NOW)) is None
    store.close()
    store = SQLiteStore(path)
    store.open()
    try:
        assert (yield store.reserveInvite(token("i1"), HOST, NOW)) is not None
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_uploadsFreedAtStart(path):
    """A PUT cut by a stop leaves its slot to be tried again once the server starts."""
    store = SQLiteStore(path)
    store.open()
    yield store.createUpload(StoreBehaviour.upload("u1"), 0, 0)
    assert (yield store.beginUpload("u1", NOW))
    store.close()
    store = SQLiteStore(path)
    store.open(serving=False)
    assert (yield store.getUpload("u1")).state == "uploading"  # invitesrvctl leaves it
    store.close()
    store = SQLiteStore(path)
    store.open()
    try:
        assert (yield store.beginUpload("u1", NOW))
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_skeletonsRefreshedAtStart(path):
    """
    Skeletons stored with older confusables data (here: a wrong one) are
    computed again when the server opens the store, so look-alikes are
    still found.
    """
    store = SQLiteStore(path)
    store.open()
    yield store.createAccount(account("alice"))
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE accounts SET skeleton = 'stale'")
    store = SQLiteStore(path)
    store.open()
    try:
        with pytest.raises(UsernameConfusable):
            yield store.createAccount(account("\u0430lice"))
    finally:
        store.close()


# -- schema versions ---------------------------------------------------------------------


def test_shippedScripts():
    """The package ships schema files numbered 1, 2, ... without gaps."""
    numbers = [number for number, _ in schemaScripts()]
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.fixture
def schemaFolder(tmp_path) -> Path:
    """A schema folder with the real first version and two later steps of our own."""
    folder = tmp_path / "schema"
    folder.mkdir()
    first = schemaScripts()[0][1]
    (folder / "001-initial.sql").write_text(first)
    (folder / "002-notes.sql").write_text(
        "CREATE TABLE notes (host TEXT, username TEXT, text TEXT);\n"
        "INSERT INTO notes SELECT host, username, 'welcome' FROM accounts;\n")
    (folder / "003-note-stamps.sql").write_text(
        "ALTER TABLE notes ADD COLUMN stamp REAL NOT NULL DEFAULT 0;\n"
        "UPDATE notes SET stamp = 1;\n")
    (folder / "README.txt").write_text("not a schema step")
    return folder


def version(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("PRAGMA user_version").fetchone()[0]


def upgrade(path: Path, scripts) -> None:
    openDatabase(str(path), scripts).close()


def test_upgradeStepByStep(path, schemaFolder):
    """
    Each newer step runs once, in order, on top of the data; before each
    upgrade the file is copied to <file>.v<old version>.bak.
    """
    scripts = schemaScripts(schemaFolder)
    assert [number for number, _ in scripts] == [1, 2, 3]
    path.parent.mkdir()
    upgrade(path, scripts[:1])
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO accounts (host, username, created) VALUES ('h', 'alice', 0)")
    assert version(path) == 1

    upgrade(path, scripts[:2])
    assert version(path) == 2
    backup = Path(f"{path}.v1.bak")
    assert backup.exists() and version(backup) == 1
    with sqlite3.connect(backup) as connection:
        assert connection.execute("SELECT username FROM accounts").fetchall() == [("alice",)]

    upgrade(path, scripts)
    assert version(path) == 3 and Path(f"{path}.v2.bak").exists()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT username, text, stamp FROM notes").fetchall() == [
            ("alice", "welcome", 1.0)]

    upgrade(path, scripts)  # nothing to do: no step runs twice, no new backup
    assert version(path) == 3
    assert sorted(p.name for p in path.parent.glob("*.bak")) == [
        "invitesrv.sqlite3.v1.bak", "invitesrv.sqlite3.v2.bak"]


def test_freshDatabaseRunsAllSteps(path, schemaFolder):
    """A new file gets every step at once and needs no backup."""
    path.parent.mkdir()
    upgrade(path, schemaScripts(schemaFolder))
    assert version(path) == 3
    assert list(path.parent.glob("*.bak")) == []


def test_failedStepChangesNothing(path, schemaFolder):
    """
    A step that fails leaves the database at the previous version, without
    half of the step, and not locked: the next start can open it.
    """
    (schemaFolder / "003-note-stamps.sql").write_text(
        "CREATE TABLE half (x);\nINSERT INTO no_such_table VALUES (1);\n")
    scripts = schemaScripts(schemaFolder)
    path.parent.mkdir()
    upgrade(path, scripts[:2])
    with pytest.raises(sqlite3.Error) as caught:
        upgrade(path, scripts)
    assert "no_such_table" in str(caught.value)
    assert version(path) == 2
    with sqlite3.connect(path, timeout=0.5) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert "half" not in tables and "notes" in tables
        connection.execute("INSERT INTO notes VALUES ('h', 'bob', 'x')")


def test_newerDatabaseRefused(path, schemaFolder):
    """A database from a newer invitesrv is not opened (nor damaged) by an older one."""
    scripts = schemaScripts(schemaFolder)
    path.parent.mkdir()
    upgrade(path, scripts)
    with pytest.raises(RuntimeError, match="schema version 3 is newer than this invitesrv"):
        upgrade(path, scripts[:1])
    assert version(path) == 3


@pytest_twisted.inlineCallbacks
def test_upgradeToAccountBoundInvites(path):
    """
    Schema 2 on a version-1 file with data: every account gets its skeleton
    (a look-alike is then refused), and the invites that outlived their
    account (a reset and a contact invite of deleted accounts, an invite
    whose creator is gone) are revoked; live, used and others' invites stay.
    """
    path.parent.mkdir()
    upgrade(path, schemaScripts()[:1])
    future, past = NOW + 10**9, NOW - 1
    with sqlite3.connect(path) as connection:
        connection.executemany("INSERT INTO accounts (host, username, created) VALUES (?, ?, 0)",
                               [(HOST, "alice"), (HOST, "bob")])
        connection.executemany(
            "INSERT INTO invites (id, host, token_hash, kind, username, inviter,"
            " allow_registration, uses_allowed, uses, created, expires, source)"
            " VALUES (?, ?, ?, ?, ?, ?, 1, 1, ?, 0, ?, ?)",
            [("goneReset", HOST, b"1", "reset", "frank", None, 0, future, "cli"),
             ("goneContact", HOST, b"2", "contact", None, "frank", 0, future, ""),
             ("goneMade", HOST, b"3", "account", None, None, 0, future, f"frank@{HOST}"),
             ("liveReset", HOST, b"4", "reset", "alice", None, 0, future, "cli"),
             ("liveContact", HOST, b"5", "contact", None, "bob", 0, future, f"bob@{HOST}"),
             ("used", HOST, b"6", "account", None, None, 1, future, f"frank@{HOST}"),
             ("expired", HOST, b"7", "reset", "frank", None, 0, past, "cli"),
             ("api", HOST, b"8", "account", None, None, 0, future, "api:k1")])
    upgrade(path, schemaScripts()[:2])
    assert version(path) == 2 and Path(f"{path}.v1.bak").exists()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT username, skeleton FROM accounts ORDER BY username"
                                  ).fetchall() == [("alice", "alice"), ("bob", "bob")]
        revoked = {row[0] for row in connection.execute(
            "SELECT id FROM invites WHERE revoked IS NOT NULL")}
    assert revoked == {"goneReset", "goneContact", "goneMade"}
    store = SQLiteStore(path)
    store.open()
    try:
        with pytest.raises(UsernameConfusable):
            yield store.createAccount(account("\u0430lice"))
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_upgradeAddsBlocklists(path):
    """Schema 3 on a version-2 file with an account: its blocklist starts empty, and works."""
    path.parent.mkdir()
    upgrade(path, schemaScripts()[:2])
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO accounts (host, username, created, skeleton)"
                           " VALUES (?, 'alice', 0, 'alice')", (HOST,))
    upgrade(path, schemaScripts()[:3])
    assert version(path) == 3 and Path(f"{path}.v2.bak").exists()
    store = SQLiteStore(path)
    store.open()
    try:
        assert (yield store.getBlocklist(HOST, "alice")) == []
        assert (yield store.block(HOST, "alice", ["eve@example.org"])) == ["eve@example.org"]
        assert (yield store.deleteAccount(HOST, "alice"))
        assert (yield store.getBlocklists(HOST)) == {}
    finally:
        store.close()
