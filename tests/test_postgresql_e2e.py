"""
The real server (C{twistd -n invitesrv}) on the PostgreSQL store, end to
end: an account made with invitesrvctl, another registered in-band with an
invite, a login, a message to an account that is offline kept across a
restart and delivered at its next login; nothing goes to an SQLite file.
"""

from __future__ import annotations

import time

import pytest
from conftest import RunningServer
from rawxmpp import RawClient
from test_accounts import createInvite
from test_circles import PASSWORD, registerWithInvite

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[postgresql]')")


def waitForOffline(dsn: str, timeout: float = 15.0) -> None:
    """Wait until a message is kept in the database (no stanza tells its sender that)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute("SELECT COUNT(*) FROM offline_messages").fetchone()[0]:
            assert time.monotonic() < deadline, "the message was not kept"
            time.sleep(0.05)


def test_serverOnPostgreSQL(serverFactory, postgresqlDSN):
    """Register with an invite, log in, message an offline account; it is delivered after a restart."""
    server = serverFactory(f'[store]\nbackend = "postgresql"\ndsn = "{postgresqlDSN}"\n')
    assert "Store: postgresql " in server.log()
    server.adduser("alice@localhost", PASSWORD)
    registerWithInvite(server, createInvite(server, "localhost"), "bob")
    with RawClient(server.port) as bob:
        assert bob.login("bob", PASSWORD, "desk") == "bob@localhost/desk"
    with RawClient(server.port) as alice:
        alice.login("alice", PASSWORD, "desk")
        alice.send("<message to='bob@localhost' type='chat' id='m1'><body>kept for you</body></message>")

    waitForOffline(postgresqlDSN)
    server.stop()
    server.start()
    with RawClient(server.port) as bob:
        bob.login("bob", PASSWORD, "phone")
        bob.send("<presence/>")
        delivered = bob.recvUntil(r"<message .*?</message>")
        assert "kept for you" in delivered and "from='alice@localhost/desk'" in delivered
        assert "urn:xmpp:delay" in delivered
    assert not (server.dataDir / "invitesrv.sqlite3").exists()
    with psycopg.connect(postgresqlDSN) as conn:
        assert conn.execute("SELECT username FROM accounts ORDER BY username").fetchall() == [
            ("alice",), ("bob",)]
        assert conn.execute("SELECT COUNT(*) FROM invite_uses WHERE username = 'bob'").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM offline_messages").fetchone() == (0,)


def test_unreachableDatabaseStopsStartUp(tmp_path):
    """A server whose database cannot be reached says so in one line and exits with status 1."""
    server = RunningServer(tmp_path, f'[store]\nbackend = "postgresql"\ndsn = "host={tmp_path}'
                                     ' dbname=none connect_timeout=2"\n')
    with pytest.raises(RuntimeError, match="server exited"):
        server.start(timeout=30)
    assert server.process.wait(10) == 1
    log = server.log()
    assert "cannot connect to postgresql " in log and "stopping" in log
    assert "Traceback" not in log


def serverSessions(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND application_name LIKE 'invitesrv %%'").fetchone()[0]


def test_loginsGoOnWhenTheDatabaseEndsTheConnections(serverFactory, postgresqlDSN):
    """
    The database ends the server's connections (a restart, a failover):
    a login meanwhile is at worst told to try again later, the next ones
    work, and the server connects its writes' and its reads' connections again.
    """
    server = serverFactory(f'[store]\nbackend = "postgresql"\ndsn = "{postgresqlDSN}"\n')
    server.adduser("alice@localhost", PASSWORD)
    with RawClient(server.port) as alice:
        alice.login("alice", PASSWORD, "desk")
    assert serverSessions(postgresqlDSN) == 2  # the worker's connection and the reads'
    with psycopg.connect(postgresqlDSN, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                     " WHERE application_name LIKE 'invitesrv %%' AND datname = current_database()")
    answers = []
    deadline = time.monotonic() + 15
    while serverSessions(postgresqlDSN) < 2:
        assert time.monotonic() < deadline, f"the server did not connect again: {answers}"
        with RawClient(server.port) as alice:
            alice.startTLS()
            answers.append(alice.scram("alice", PASSWORD, "SCRAM-SHA-256"))
        time.sleep(0.2)
    assert answers and all("<success" in answer or "<temporary-auth-failure/>" in answer
                           for answer in answers), answers
    for resource in ("phone", "laptop"):
        with RawClient(server.port) as alice:
            assert alice.login("alice", PASSWORD, resource) == f"alice@localhost/{resource}"
    log = server.log()
    assert "reading connection was lost" in log and "Traceback" not in log
