"""
C{invitesrvctl migrate-store --to-dsn DSN}: an SQLite installation with a
row in every table is copied whole into an empty PostgreSQL database, which
the PostgreSQL store then serves; a database that is not empty is refused
with nothing written.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytest_twisted
from store_behaviour import HOST, NOW, account, invite, token
from synchronous import InlineThreadPool, ThreadlessClock, result

from invitesrv.ctl_migrate import sqliteTables
from invitesrv.store.interfaces import (
    ArchivedMessage,
    ArchivedRoomMessage,
    ArchivePrefs,
    Circle,
    Device,
    FastToken,
    InviteUse,
    OfflineMessage,
    PushRegistration,
    RosterItem,
    StoredRoom,
    Upload,
)
from invitesrv.store.sqlite import SQLiteStore, openDatabase

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[postgresql]')")

from invitesrv.store.postgresql import PostgreSQLStore  # noqa: E402 (psycopg first)


def populate(path) -> None:
    """An SQLite installation with at least one row in every table, through the store."""
    store = SQLiteStore(path, ThreadlessClock(), threadpool=InlineThreadPool())
    store.open()
    try:
        for call in [
            lambda: store.createInvite(invite("i1", usesAllowed=2, roles=("staff",)), token("i1")),
            lambda: store.createAccount(account("alice", roles=("admin",), offline=(
                OfflineMessage(NOW, "<message>while away</message>"),))),
            lambda: store.createAccount(account("bob", inviteUse=InviteUse(
                result(store.reserveInvite(token("i1"), HOST, NOW)).id, "ibr", "192.0.2.1"))),
            lambda: store.setRosterItem(HOST, "alice", RosterItem(f"bob@{HOST}", "Bob", "both",
                                                                  groups=("Friends",))),
            lambda: store.setPendingIn(HOST, "bob", "eve@example.net", "<presence type='subscribe'/>"),
            lambda: store.storeOffline(HOST, "bob", OfflineMessage(NOW, "<message>hi</message>"), 10),
            lambda: store.createApiKey("k1", b"secret-hash", HOST, "ops", NOW),
            lambda: store.block(HOST, "alice", ["spam@example.net"]),
            lambda: store.recordDevices(HOST, [("alice", Device("dev1", "Conversations", "phone", NOW))], 5),
            lambda: store.issueToken(HOST, "alice", "dev1", FastToken("HT-SHA-256-NONE", b"salt",
                                                                      NOW, NOW + 3600)),
            lambda: store.appendArchive(HOST, [("alice", ArchivedMessage(
                1_700_000_000_000_001, f"bob@{HOST}", "<message>archived</message>", "desk"), False)],
                100),
            lambda: store.setArchivePrefs(HOST, "alice", ArchivePrefs("roster", ("a@b.c",), ())),
            lambda: store.publishPepItem(HOST, "alice", "urn:xmpp:avatar:data", "{}", "av1",
                                         "<item id='av1'/>", 1),
            lambda: store.setAccountXML(HOST, "alice", "vcard-temp", "<vCard/>"),
            lambda: store.setPushRegistration(HOST, "alice", PushRegistration("push.example", "n1",
                                                                              "")),
            lambda: store.createUpload(Upload("u1", HOST, "alice", "cat.jpg", 1234, "image/jpeg",
                                              NOW, NOW + 600, "slot"), 0, 0),
            lambda: store.saveRoom(StoredRoom(f"groups.{HOST}", "tea", {"persistent": True},
                                              "Tea", "alice", NOW,
                                              {f"alice@{HOST}": ("owner", "")})),
            lambda: store.archiveRoomMessage(f"groups.{HOST}", "tea", ArchivedRoomMessage(
                "s1", NOW, f"tea@groups.{HOST}/alice", f"alice@{HOST}", "<message/>"), 100),
            lambda: store.createCircle(Circle(HOST, "Family", f"family@groups.{HOST}", NOW)),
            lambda: store.addCircleMember(HOST, "Family", "alice"),
        ]:
            result(call())
    finally:
        store.close()


def tableRows(conn, tables) -> dict[str, list[tuple]]:
    """Every row of every table, in a comparable order."""
    return {table: sorted(tuple(row) for row in conn.execute(
        f"SELECT {', '.join(columns)} FROM {table}").fetchall()) for table, columns in tables}


def migrate(dataDir, dsn: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invitesrv.ctl", "--data-dir", str(dataDir), "migrate-store",
         "--to-dsn", dsn], capture_output=True, text=True, timeout=120)


@pytest_twisted.inlineCallbacks
def test_migrateEveryTable(tmp_path, postgresqlDSN):
    """
    Every table's rows arrive as they were; the PostgreSQL store then reads
    them (a password, a roster, the invite's audit, offline messages) and
    new rows get ids after the copied ones.
    """
    dataDir = tmp_path / "data"
    populate(dataDir / "invitesrv.sqlite3")
    lite = openDatabase(str(dataDir / "invitesrv.sqlite3"))
    tables = sqliteTables(lite)
    before = tableRows(lite, tables)
    lite.close()
    empty = [table for table, rows in before.items() if not rows]
    assert not empty, f"give these tables a row in populate(), so their copy is tested: {empty}"

    done = migrate(dataDir, postgresqlDSN)
    assert done.returncode == 0, done.stderr
    assert f"Copied {sum(map(len, before.values()))} rows of {len(tables)} tables" in done.stdout
    with psycopg.connect(postgresqlDSN) as conn:
        assert tableRows(conn, tables) == before

    store = PostgreSQLStore(postgresqlDSN)
    store.open()
    try:
        assert (yield store.listAccounts(HOST)) == ["alice", "bob"]
        assert (yield store.getCredentials(HOST, "bob", "SCRAM-SHA-256")) == account("bob").credentials[0]
        assert [i.contact for i in (yield store.getRoster(HOST, "alice")).items] == [f"bob@{HOST}"]
        used = yield store.getInvite("i1")
        assert (used.uses, used.uses_log[0]["address"]) == (1, "192.0.2.1")
        assert (yield store.storeOffline(HOST, "bob", OfflineMessage(NOW, "<message>new</message>"), 10))
        kept = yield store.getOffline(HOST, "bob")
        assert [m.stanza for m in kept] == ["<message>hi</message>", "<message>new</message>"]
        assert kept[1].id > kept[0].id
    finally:
        store.close()


def test_refusesANonEmptyDatabase(tmp_path, postgresqlDSN):
    """A second copy into the same database is refused, and changes nothing there."""
    dataDir = tmp_path / "data"
    populate(dataDir / "invitesrv.sqlite3")
    assert migrate(dataDir, postgresqlDSN).returncode == 0
    with psycopg.connect(postgresqlDSN) as conn:
        conn.execute("DELETE FROM accounts WHERE username = 'bob'")  # so that a copy could fit
        conn.commit()
        count = conn.execute("SELECT COUNT(*) FROM accounts").fetchone()[0]
    again = migrate(dataDir, postgresqlDSN)
    assert again.returncode == 1
    assert "not empty" in again.stderr
    with psycopg.connect(postgresqlDSN) as conn:
        assert conn.execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == count


def test_unreachableDatabase(tmp_path):
    """A DSN that leads nowhere is a clear error, not a traceback."""
    dataDir = tmp_path / "data"
    populate(dataDir / "invitesrv.sqlite3")
    failed = migrate(dataDir, f"host={tmp_path} dbname=none connect_timeout=2")
    assert failed.returncode == 1
    assert "PostgreSQL:" in failed.stderr and "Traceback" not in failed.stderr
