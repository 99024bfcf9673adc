"""
The PostgreSQL store: the shared behaviour suite against a real, private
PostgreSQL (started by the C{postgresql} fixture), then what only it has:
versioned schema files applied atomically, the same tables as SQLite's,
invites that stay atomic with several nodes writing at once, and a lost
connection that is made again.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from store_behaviour import HOST, NOW, SQLAudit, StoreBehaviour, account, credentials, invite, token
from twisted.internet import defer, reactor, task

from invitesrv.store.interfaces import (
    AccountExists,
    ArchivedMessage,
    ArchiveQuery,
    InviteUnavailable,
    InviteUse,
    NewAccount,
    StoreUnavailable,
)
from invitesrv.store.sqlite import openDatabase

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[postgresql]')")

from invitesrv.store import postgresql  # noqa: E402 (psycopg first)
from invitesrv.store.pgreader import PipelinedReader  # noqa: E402
from invitesrv.store.postgresql import (  # noqa: E402
    PostgreSQLStore,
    describe,
    schemaFiles,
    translate,
    upgradeSchema,
)


@pytest.fixture(scope="module")
def template(postgresql):
    """A database at the latest schema, copied for each test (faster than applying it each time)."""
    name = postgresql.createDatabase()
    with psycopg.connect(postgresql.dsn(name)) as conn:
        upgradeSchema(conn)
    yield name
    postgresql.dropDatabase(name)


@pytest.fixture
def dsn(postgresql, template):
    """A new database at the latest schema, empty."""
    name = postgresql.createDatabase(template)
    yield postgresql.dsn(name)
    postgresql.dropDatabase(name)


def openStore(dsn: str, serving: bool = True) -> PostgreSQLStore:
    store = PostgreSQLStore(dsn, busyTimeout=5)
    store.open(serving)
    return store


class TestPostgreSQLStore(SQLAudit, StoreBehaviour):
    """The behaviour suite on PostgreSQL, as the server uses the store."""

    integrityErrors = (KeyError, psycopg.IntegrityError)

    @pytest.fixture
    def store(self, dsn):
        store = openStore(dsn)
        yield store
        store.close()


# -- the SQL dialect ------------------------------------------------------------------------


def test_translate():
    """The shared SQL's parameters and SQLite-only phrases become PostgreSQL's; % is escaped."""
    assert translate("SELECT 1 FROM t WHERE a = ? AND (? IS NULL OR b = ?)") == (
        "SELECT 1 FROM t WHERE a = %s AND (CAST(%s AS TEXT) IS NULL OR b = %s)")
    assert translate("SELECT 1 FROM t WHERE id IS NOT ? AND s LIKE '%@%'") == (
        "SELECT 1 FROM t WHERE id IS DISTINCT FROM %s AND s LIKE '%%@%%'")
    assert translate("SELECT x FROM t ORDER BY seq DESC LIMIT -1 OFFSET ?") == (
        "SELECT x FROM t ORDER BY seq DESC LIMIT ALL OFFSET %s")


def test_describeHidesThePassword():
    """The store is named in the log by its DSN, without the password."""
    described = describe("host=/run/pg dbname=xmpp user=invitesrv password=sekrit")
    assert "sekrit" not in described and "dbname=xmpp" in described
    assert "sekrit" not in describe("postgresql://invitesrv:sekrit@127.0.0.1/xmpp")


# -- the schema -----------------------------------------------------------------------------


def columns(conn, query: str) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    for table, column in conn.execute(query).fetchall():
        tables.setdefault(table, []).append(column)
    return {table: sorted(names) for table, names in tables.items()}


def test_schemaHasSQLitesTables(postgresqlDSN):
    """
    A new database gets the latest schema, recorded in invitesrv_schema,
    and has every table and column the SQLite schema has: the shared SQL
    runs on both, and migrate-store copies each table as it is.
    """
    store = openStore(postgresqlDSN)
    store.close()
    with psycopg.connect(postgresqlDSN) as conn:
        assert conn.execute("SELECT version FROM invitesrv_schema").fetchall() == [
            (schemaFiles()[-1][0],)]
        postgres = columns(conn, "SELECT table_name, column_name FROM information_schema.columns"
                                 " WHERE table_schema = 'public' AND table_name != 'invitesrv_schema'")
    lite = openDatabase(":memory:")
    sqlite = columns(lite, "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p"
                           " WHERE m.type = 'table'")
    lite.close()
    # Its own: which server holds the invite reservations (several servers share the database).
    assert set(postgres.pop("invite_holds")) == {"invite_id", "holder", "held"}
    assert postgres == sqlite


def test_schemaStepsAreAtomic(postgresqlDSN):
    """A step that fails leaves the database as it was: no table of the failed run, no version."""
    scripts = [(1, "CREATE TABLE one (x INTEGER);"), (2, "CREATE TABLE two (x NOSUCHTYPE);")]
    with psycopg.connect(postgresqlDSN) as conn:
        with pytest.raises(psycopg.errors.UndefinedObject):
            upgradeSchema(conn, scripts)
        assert conn.execute("SELECT to_regclass('one'), to_regclass('invitesrv_schema')").fetchone() == (
            None, None)
        assert upgradeSchema(conn, scripts[:1]) == 0
        assert upgradeSchema(conn, scripts[:1]) == 1  # already there: nothing to do
        assert conn.execute("SELECT version FROM invitesrv_schema").fetchall() == [(1,)]


def test_newerSchemaRefused(postgresqlDSN):
    """A database upgraded by a newer invitesrv is not used by an older one."""
    with psycopg.connect(postgresqlDSN) as conn:
        upgradeSchema(conn, [(1, "SELECT 1;"), (2, "SELECT 2;")])
        with pytest.raises(RuntimeError, match="newer"):
            upgradeSchema(conn, [(1, "SELECT 1;")])


# -- several nodes on one database ------------------------------------------------------------


@pytest.fixture
def nodes(dsn):
    """Two stores on one database, as two nodes of a cluster use it."""
    stores = [openStore(dsn), openStore(dsn)]
    yield stores
    for store in stores:
        store.close()


@defer.inlineCallbacks
def register(store, username: str):
    """What the registrar does with a token: reserve it, create the account using it."""
    reserved = yield store.reserveInvite(token("once"), HOST, NOW)
    if reserved is None:
        return None
    try:
        yield store.createAccount(account(username, inviteUse=InviteUse(reserved.id, "ibr")))
    except (InviteUnavailable, AccountExists):
        yield store.releaseInvite(reserved.id)
        return None
    return username


@pytest_twisted.inlineCallbacks
def test_inviteRaceAcrossNodes(nodes):
    """
    Twenty registrations with one single-use token, spread over two nodes
    and started at once, give exactly one account; the invite shows one use
    and no reservation left.
    """
    first, second = nodes
    yield first.createInvite(invite("once", usesAllowed=1), token("once"))
    attempts = [register(nodes[i % 2], f"user{i}") for i in range(20)]
    results = yield defer.gatherResults(attempts)
    winners = [name for name in results if name is not None]
    assert len(winners) == 1
    assert (yield second.listAccounts(HOST)) == winners
    used = yield first.getInvite("once")
    assert (used.uses, used.reserved) == (1, 0)
    assert [use["username"] for use in used.uses_log] == winners
    with psycopg.connect(first.dsn) as conn:  # every hold given back or turned into the use
        assert conn.execute("SELECT COUNT(*) FROM invite_holds").fetchone() == (0,)


@pytest_twisted.inlineCallbacks
def test_inviteRaceManyWriters(postgresql, template):
    """
    The same race with twenty writers at once (a connection each), so that
    every attempt's transaction overlaps the others': still one account.
    """
    dsn = postgresql.dsn(postgresql.createDatabase(template))
    stores = [openStore(dsn) for _ in range(20)]
    try:
        yield stores[0].createInvite(invite("once", usesAllowed=1), token("once"))
        results = yield defer.gatherResults([register(store, f"user{i}")
                                             for i, store in enumerate(stores)])
        assert len([name for name in results if name is not None]) == 1
        assert len((yield stores[1].listAccounts(HOST))) == 1
        used = yield stores[2].getInvite("once")
        assert (used.uses, used.reserved) == (1, 0)
    finally:
        for store in stores:
            store.close()


@pytest_twisted.inlineCallbacks
def test_sameNameOnTwoNodes(nodes):
    """The same (or a look-alike) username created on two nodes at once: one account."""
    attempts = [defer.maybeDeferred(nodes[i % 2].createAccount, account(name))
                for i, name in enumerate(["anna", "anna", "аnna", "anna"])]  # Cyrillic а
    outcomes = yield defer.DeferredList(attempts, consumeErrors=True)
    assert [ok for ok, _ in outcomes].count(True) == 1
    assert len((yield nodes[0].listAccounts(HOST))) == 1


def serversGone(dsn: str, timeout: float = 10.0) -> None:
    """Wait until PostgreSQL has ended the closed stores' sessions (it does so a moment after)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND application_name LIKE 'invitesrv %'").fetchone()[0]:
            assert time.monotonic() < deadline, "the closed stores' sessions did not end"
            time.sleep(0.02)


@pytest_twisted.inlineCallbacks
def test_reservationsFreedWhenNoServerRuns(dsn):
    """
    A server starting alone frees the reservations a crash leaked; one
    starting beside another server leaves them, as they may be in use.
    """
    running = openStore(dsn)
    yield running.createInvite(invite("i1", usesAllowed=1), token("i1"))
    assert (yield running.reserveInvite(token("i1"), HOST, NOW)) is not None
    tool = openStore(dsn, serving=False)
    tool.close()
    second = openStore(dsn)
    assert (yield second.getInvite("i1")).reserved == 1
    running.close()
    second.close()
    serversGone(dsn)
    alone = openStore(dsn)
    try:
        assert (yield alone.getInvite("i1")).reserved == 0
    finally:
        alone.close()


@pytest_twisted.inlineCallbacks
def test_reservationsOfADeadServerFreedBesideOthers(dsn):
    """
    A node of a cluster that dies (its connection gone) with reservations
    leaks them while the other nodes run: the next server to start frees
    those, and leaves the reservations of the servers still running.
    """
    survivor, dying = opened = [openStore(dsn), openStore(dsn)]
    try:
        for name in ("i1", "i2"):
            yield survivor.createInvite(invite(name, usesAllowed=1), token(name))
        assert (yield survivor.reserveInvite(token("i1"), HOST, NOW)) is not None
        assert (yield dying.reserveInvite(token("i2"), HOST, NOW)) is not None
        opened.remove(dying)
        dying.close()  # as a killed process: its reservation stays in the database
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname ="
                               " current_database() AND application_name LIKE 'invitesrv%%'"
                               " AND application_name != %s", (survivor.holder,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the closed store's session did not end"
                time.sleep(0.02)
        assert (yield survivor.getInvite("i2")).reserved == 1
        restarted = openStore(dsn)
        opened.append(restarted)
        assert (yield restarted.getInvite("i2")).reserved == 0  # usable again
        assert (yield restarted.getInvite("i1")).reserved == 1  # in use on the survivor
        assert (yield restarted.reserveInvite(token("i2"), HOST, NOW)) is not None
        yield survivor.releaseInvite("i1")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT holder, held FROM invite_holds").fetchall() == [
                (restarted.holder, 1)]
    finally:
        for store in opened:
            store.close()


@pytest_twisted.inlineCallbacks
def test_lostConnectionIsMadeAgain(dsn):
    """
    When the server ends the store's connection, the call under way fails
    with StoreUnavailable (nothing written), and the next one reconnects.
    """
    store = openStore(dsn)
    try:
        yield store.createAccount(account("alice"))
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                          " WHERE application_name LIKE 'invitesrv %' AND datname = current_database()"
                          " AND pid != pg_backend_pid()")
        with pytest.raises(StoreUnavailable):
            yield store.createAccount(NewAccount(HOST, "bob", credentials(), now=NOW))
        assert (yield store.listAccounts(HOST)) == ["alice"]
        yield store.createAccount(account("bob"))
        assert (yield store.listAccounts(HOST)) == ["alice", "bob"]
    finally:
        store.close()



@pytest_twisted.inlineCallbacks
def test_archiveBatchInOneStatement(dsn, monkeypatch):
    """
    A batch of archived messages costs one statement, committing by itself
    (one round trip to the server), whatever its size: a busy node archives
    thousands of messages a second, and with a statement per message and per
    user its writes fell seconds behind (bench/cluster.py). An archive taken
    over its limit costs one more transaction.
    """
    store = openStore(dsn)
    statements = []  # each statement the store sends, and whether it committed by itself
    execute, executemany = psycopg.Connection.execute, psycopg.Cursor.executemany

    def counted(conn, *args, **kwargs):
        statements.append(conn.autocommit)
        return execute(conn, *args, **kwargs)

    def countedMany(cursor, *args, **kwargs):
        statements.append(cursor.connection.autocommit)
        return executemany(cursor, *args, **kwargs)
    try:
        for name in ("alice", "bob", "carol"):
            yield store.createAccount(account(name))
        monkeypatch.setattr(psycopg.Connection, "execute", counted)
        monkeypatch.setattr(psycopg.Cursor, "executemany", countedMany)
        entries = [(name, ArchivedMessage(n, "dave@example.org", f"<m{n}/>"), False)
                   for n in range(1, 41) for name in ("alice", "bob", "carol", "ghost")]
        assert (yield store.appendArchive(HOST, entries, 1000)) == (120, [])
        assert statements == [True]
        del statements[:]
        assert (yield store.appendArchive(HOST, entries[:8] + [
            ("alice", ArchivedMessage(50, "dave@example.org", "<m/>"), False)], 40)) == (
                1, [entry for entry in entries[:8] if entry[0] != "ghost"])  # their ids taken
        assert statements == [True, False, False]  # alice's oldest deleted, her size set
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(limit=2))
        assert ([m.id for m in page.messages], page.count) == ([2, 3], 40)
        assert (yield store.queryArchive(HOST, "bob", ArchiveQuery())).count == 40
    finally:
        store.close()


# -- the reads' own connection ----------------------------------------------------------------


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def workerCalls(store) -> list:
    """Record each call that runs on C{store}'s worker thread, from now on."""
    calls = []
    transaction = store._transaction
    store._transaction = lambda fn, args: calls.append(fn) or transaction(fn, args)
    return calls


def until(condition, seconds: float = 5.0):
    """Fire once C{condition()} is true, checking every 10 ms; fail after C{seconds}."""
    deadline = time.monotonic() + seconds

    @defer.inlineCallbacks
    def wait():
        while not condition():
            assert time.monotonic() < deadline, f"not true within {seconds} s: {condition}"
            yield sleep(0.01)
    return wait()


@pytest_twisted.inlineCallbacks
def test_readsGoOnTheirOwnConnection(dsn):
    """
    Plain reads asked while nothing waits on the worker are answered from
    the reads' connection, many in flight at once, each with its own rows;
    the worker runs none of them.
    """
    store = openStore(dsn)
    try:
        for name in ("alice", "bob"):
            yield store.createAccount(account(name))
        yield store.setPendingIn(HOST, "bob", "carol@example.net", "<presence type='subscribe'/>")
        calls = workerCalls(store)
        answers = yield defer.gatherResults(
            [store.getCredentials(HOST, name, "SCRAM-SHA-256") for name in ("alice", "bob", "zed")] * 20
            + [store.getRosterAndPendingIn(HOST, "bob"), store.getOffline(HOST, "alice")])
        secret = {c.mechanism: c for c in credentials()}["SCRAM-SHA-256"]
        assert answers[:60] == [secret, secret, None] * 20
        roster, pending = answers[60]
        assert (roster.items, pending) == ((), [("carol@example.net", "<presence type='subscribe'/>")])
        assert answers[61] == []
        assert calls == []
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_readAfterAWaitingWriteSeesIt(dsn):
    """A read asked while a write still waits on the worker goes behind it, and sees it."""
    store = openStore(dsn)
    try:
        yield store.createAccount(account("alice"))
        calls = workerCalls(store)
        written = store.setPendingIn(HOST, "alice", "bob@example.net", "<presence/>")
        read = store.getPendingIn(HOST, "alice")
        yield written
        assert (yield read) == [("bob@example.net", "<presence/>")]
        assert len(calls) == 2
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_lostReadingConnectionIsMadeAgain(dsn, monkeypatch):
    """
    When the server ends the reads' connection, reads go to the worker,
    then the connection is made again and reads go back to it.
    """
    monkeypatch.setattr(postgresql, "RECONNECT_DELAY", 0.05)
    store = openStore(dsn)
    try:
        yield store.createAccount(account("alice"))
        pid = store._reader._conn.info.backend_pid
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        yield until(lambda: store._reader is None)
        calls = workerCalls(store)
        assert (yield store.getRoster(HOST, "alice")).version == 0
        assert len(calls) == 1
        yield sleep(0.1)
        assert (yield store.getRoster(HOST, "alice")).version == 0  # on the worker; reconnects
        yield until(lambda: store._reader is not None)
        assert store._reader._conn.info.backend_pid != pid
        assert (yield store.getPendingIn(HOST, "alice")) == []
        assert len(calls) == 2
    finally:
        store.close()


@pytest.fixture
def reader(dsn):
    """A reader on its own connection to the test database, with a 0.3 s timeout; what it lost."""
    lost = []
    reader = PipelinedReader(reactor, psycopg.connect(dsn, autocommit=True), 0.3,
                             lambda: lost.append(True))
    yield reader, lost
    reader.close()


@pytest_twisted.inlineCallbacks
def test_readerStatementErrorFailsItsCallOnly(reader):
    """A failing statement fails its call; the calls after it, sent before the error came back, work."""
    reader, lost = reader
    failed = reader.select([(b"SELECT 1 / $1::int", (0,)), (b"SELECT 2", ())])
    fine = reader.select([(b"SELECT $1::int + 1, $2::text", (41, "x")), (b"SELECT 3", ())])
    with pytest.raises(psycopg.DatabaseError, match="division by zero"):
        yield failed
    assert (yield fine) == [[(42, "x")], [(3,)]]
    assert lost == []


@pytest_twisted.inlineCallbacks
def test_readerTimeoutFailsCallsAndCloses(reader):
    """
    A read not answered within the timeout fails with StoreUnavailable,
    as does every call behind it; the connection is closed and reported lost.
    """
    reader, lost = reader
    started = time.monotonic()
    slow = reader.select([(b"SELECT pg_sleep(5)", ())])
    behind = reader.select([(b"SELECT 1", ())])
    for call in (slow, behind):
        with pytest.raises(StoreUnavailable):
            yield call
    assert 0.25 < time.monotonic() - started < 2
    assert lost == [True]
    with pytest.raises(StoreUnavailable):
        yield reader.select([(b"SELECT 1", ())])


@pytest_twisted.inlineCallbacks
def test_readerValueItCannotSendFailsItsCallOnly(reader):
    """A parameter that cannot be converted fails its call before any of its statements is sent."""
    reader, lost = reader
    with pytest.raises(psycopg.ProgrammingError):
        yield reader.select([(b"SELECT $1::int", (1,)), (b"SELECT $1::text", (object(),))])
    assert (yield reader.select([(b"SELECT $1::int", (7,))])) == [[(7,)]]
    assert lost == []


@pytest_twisted.inlineCallbacks
def test_readsWithoutTheirConnectionAtStart(dsn, monkeypatch):
    """
    A server whose reads' connection cannot be made at start (the database
    takes no more clients) starts all the same; reads go to the worker
    until that connection is made.
    """
    monkeypatch.setattr(postgresql, "RECONNECT_DELAY", 0.05)
    connect = PostgreSQLStore._connectReader
    refusals = [psycopg.OperationalError("sorry, too many clients already")]

    def connectReader(store):
        if refusals:
            raise refusals.pop()
        return connect(store)
    monkeypatch.setattr(PostgreSQLStore, "_connectReader", connectReader)
    store = openStore(dsn)
    try:
        assert store._reader is None
        yield store.createAccount(account("alice"))
        yield sleep(0.1)
        calls = workerCalls(store)
        assert (yield store.getRoster(HOST, "alice")).version == 0
        assert len(calls) == 1
        yield until(lambda: store._reader is not None)
        assert (yield store.getPendingIn(HOST, "alice")) == []
        assert len(calls) == 1
    finally:
        store.close()
