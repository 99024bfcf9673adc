"""
The store on PostgreSQL, for an installation that outgrows one file: several
nodes over one database, or a database server of its own.

The queries are the shared ones of L{invitesrv.store.sql}; this module gives
them a connection and transactions, and speaks PostgreSQL where SQLite's SQL
differs (L{translate}). Each store (each node) uses one connection from one
worker thread, so its calls commit in the order they are made, as on SQLite;
plain reads with no call before them waiting go on a second connection that
the reactor drives (L{invitesrv.store.pgreader});
what several nodes do at once is made safe by PostgreSQL: conditional
updates for invites (C{... WHERE uses + reserved < uses_allowed}, atomic at
any isolation level), and a transaction-scoped advisory lock where a check
and the write it allows must not interleave (L{PostgreSQLStore._lockName}).

The schema is a series of numbered SQL files in C{schema_postgresql/}; the
table C{invitesrv_schema} says how many have been applied. They are applied
at start in one transaction, under an advisory lock, so nodes starting at
once upgrade the database once.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import secrets

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool
from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

from invitesrv.logs import logger
from invitesrv.store.interfaces import StoreUnavailable
from invitesrv.store.pgreader import PipelinedReader
from invitesrv.store.sql import SQLStore
from invitesrv.store.sqlite import schemaScripts
from invitesrv.usernames import skeleton

log = logger()

SERVING = "invitesrv"  # the application_name of a server's connections, with its holder id
TOOL = "invitesrvctl"  # and of a tool's, which holds no reservations
SCHEMA_LOCK = 0x696E7673  # the advisory lock held while the schema is upgraded
RETRIES = 3  # attempts of a transaction PostgreSQL rolled back (deadlock, serialization)
RECONNECT_DELAY = 1.0  # seconds between attempts to connect the reads' connection again

# Where SQLite's SQL is not PostgreSQL's: a parameter whose type only its
# value would tell, IS NOT meaning "is distinct from", no limit as -1.
_REWRITES = (
    (re.compile(r"\? IS NULL"), "CAST(? AS TEXT) IS NULL"),
    (re.compile(r"IS NOT \?"), "IS DISTINCT FROM ?"),
    (re.compile(r"LIMIT -1\b"), "LIMIT ALL"),
)


def _rewritten(sql: str) -> str:
    for pattern, replacement in _REWRITES:
        sql = pattern.sub(replacement, sql)
    return sql


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """The shared SQL statement C{sql}, with C{?} parameters, as psycopg's PostgreSQL."""
    return _rewritten(sql.replace("%", "%%")).replace("?", "%s")


@functools.lru_cache(maxsize=256)
def numbered(sql: str) -> bytes:
    """The shared SQL statement C{sql} as libpq takes it: C{$1}, C{$2}... for its C{?} parameters."""
    parts = _rewritten(sql).split("?")
    return "".join(part + (f"${n}" if n < len(parts) else "")
                   for n, part in enumerate(parts, 1)).encode()


def schemaFiles() -> list[tuple[int, str]]:
    """The numbered PostgreSQL schema files shipped with the package, in order."""
    return schemaScripts(importlib.resources.files("invitesrv.store") / "schema_postgresql")


def describe(dsn: str) -> str:
    """C{dsn} without its password, to be logged."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql (an unreadable dsn)"
    params.pop("password", None)
    return f"postgresql {make_conninfo(**params)}"


def upgradeSchema(conn: psycopg.Connection, scripts: list[tuple[int, str]] | None = None) -> int:
    """
    Bring the database of C{conn} to the latest schema in one transaction
    (nothing changes if a step fails); return the version it was at.
    """
    scripts = schemaFiles() if scripts is None else scripts
    latest = scripts[-1][0] if scripts else 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS invitesrv_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM invitesrv_schema").fetchone()
        version = row[0] if row else 0
        if version > latest:
            raise RuntimeError(f"the database's schema version {version} is newer than this"
                               f" invitesrv's ({latest})")
        for number, script in scripts:
            if number > version:
                conn.execute(script)
        if version < latest:
            log.info("PostgreSQL schema upgraded from {old} to {new}", old=version, new=latest)
            conn.execute("DELETE FROM invitesrv_schema")
            conn.execute("INSERT INTO invitesrv_schema (version) VALUES (%s)", (latest,))
    return version


class _Connection:
    """The C{execute} and C{executemany} of a DB-API connection, taking the shared SQL."""

    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection):
        self._conn = conn

    def execute(self, sql: str, params=()):
        return self._conn.execute(translate(sql), params)

    def executemany(self, sql: str, rows):
        cursor = self._conn.cursor()
        rows = list(rows)
        if rows:
            cursor.executemany(translate(sql), rows)
        return cursor

    def alone(self, fn, *args):
        """
        Run C{fn(self, *args)} with each statement its own transaction: for
        reads, whose statements see what was committed before each of them
        either way (READ COMMITTED), and for a call whose only statement is
        its write, C{BEGIN} and C{COMMIT} would only add two round trips to
        the server.
        """
        self._conn.autocommit = True
        try:
            return fn(self, *args)
        finally:
            self._conn.autocommit = False


class PostgreSQLStore(SQLStore):
    """
    L{IStore} on the PostgreSQL database at C{dsn} (a libpq connection
    string or URI). A database that cannot be reached, a connection lost,
    or a lock held beyond C{busyTimeout} seconds fails calls with
    L{StoreUnavailable}; the transaction is rolled back, and the connection
    is made again for the next call.
    """

    def __init__(self, dsn: str, reactor=None, busyTimeout: float = 5.0):
        SQLStore.__init__(self, reactor, busyTimeout, ThreadPool(1, 1, name="invitesrv-db"))
        self.dsn = dsn
        self.path = describe(dsn)  # what the logs say the store is
        self._connections: ConnectionPool | None = None
        self._conn: psycopg.Connection | None = None  # held by the worker between calls
        self._reader: PipelinedReader | None = None  # see _select
        self._readerDue: float | None = None  # when to connect the reader again, if lost
        # This process's name for its reservations (invite_holds), and its connections'.
        self.holder = f"{SERVING} {secrets.token_hex(8)}"

    def open(self, serving: bool = True) -> None:
        """
        Upgrade the schema, connect and start the worker. C{serving} is False
        for a tool (C{invitesrvctl}) that may run beside the servers.
        """
        name = self.holder if serving else TOOL
        try:
            conn = psycopg.connect(self.dsn, application_name=name,
                                   connect_timeout=max(1, round(self.busyTimeout)))
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"cannot connect to {self.path}: {str(e).strip()}") from None
        with conn:
            upgradeSchema(conn)
            if serving:
                with conn.transaction():
                    self._started(conn)
        self._connections = ConnectionPool(
            self.dsn, min_size=1, max_size=1, open=False, name="invitesrv",
            kwargs={"application_name": name}, configure=self._configure,
            timeout=self.busyTimeout)
        self._connections.open(wait=True, timeout=max(self.busyTimeout, 1))
        self._pool.start()
        if serving and psycopg.Pipeline.is_supported():  # (libpq 14 and later)
            try:
                self._readerConnected(self._connectReader())
            except psycopg.OperationalError as e:
                log.warn("No connection for the store's reads yet ({reason}); they go to its"
                         " worker until there is", reason=str(e).strip())
                self._readerLost()

    def _connectReader(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True, application_name=self.holder,
                               connect_timeout=max(1, round(self.busyTimeout)))

    def _readerConnected(self, conn: psycopg.Connection) -> None:
        if self._connections is None:  # closed meanwhile
            conn.close()
            return
        self._reader = PipelinedReader(self._reactor, conn, self.busyTimeout, self._readerLost)
        self._readerDue = None

    def _readerLost(self) -> None:
        self._reader = None
        self._readerDue = self._reactor.seconds() + RECONNECT_DELAY

    def _reconnectReader(self) -> None:
        """Connect the reads' connection again, on a thread; reads go to the worker meanwhile."""
        self._readerDue = float("inf")  # until this attempt ends
        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                      self._connectReader)
        d.addCallbacks(self._readerConnected, lambda _: self._readerLost())

    @staticmethod
    def _started(conn: psycopg.Connection) -> None:
        """What a server does once at start, in one transaction on C{conn}."""
        others = conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name LIKE %s AND pid != pg_backend_pid()",
            (f"{SERVING} %",)).fetchone()[0]
        if not others:
            # No server is running on the database, so no registration is in
            # flight: free the invite reservations a crash leaked.
            conn.execute("UPDATE invites SET reserved = 0 WHERE reserved != 0")
            conn.execute("DELETE FROM invite_holds")
            # Nor an upload: a PUT cut by a stop may be tried again.
            conn.execute("UPDATE uploads SET state = 'slot' WHERE state = 'uploading'")
        else:
            PostgreSQLStore._freeAbandoned(conn)
        # A newer ICU may have newer confusables data than the stored skeletons.
        stale = [(skeleton(username), host, username) for host, username, shape in conn.execute(
            "SELECT host, username, skeleton FROM accounts") if skeleton(username) != shape]
        if stale:
            conn.cursor().executemany(
                "UPDATE accounts SET skeleton = %s WHERE host = %s AND username = %s", stale)

    @staticmethod
    def _freeAbandoned(conn: psycopg.Connection) -> None:
        """
        Free the invite reservations of the servers no longer connected (a
        node of a cluster that was killed), leaving those of the running ones.
        """
        conn.execute(
            "WITH gone AS (DELETE FROM invite_holds WHERE holder NOT IN ("
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name IS NOT NULL) RETURNING invite_id, held)"
            " UPDATE invites SET reserved = GREATEST(reserved - freed.held, 0)"
            " FROM (SELECT invite_id, SUM(held) AS held FROM gone GROUP BY invite_id) AS freed"
            " WHERE invites.id = freed.invite_id")

    def _held(self, conn, inviteId: str, change: int) -> None:
        if change > 0:
            conn.execute("INSERT INTO invite_holds (invite_id, holder, held) VALUES (?, ?, ?)"
                         " ON CONFLICT (invite_id, holder)"
                         " DO UPDATE SET held = invite_holds.held + EXCLUDED.held",
                         (inviteId, self.holder, change))
        elif not conn.execute("UPDATE invite_holds SET held = held + ? WHERE invite_id = ?"
                              " AND holder = ? AND held > ?",
                              (change, inviteId, self.holder, -change)).rowcount:
            conn.execute("DELETE FROM invite_holds WHERE invite_id = ? AND holder = ?",
                         (inviteId, self.holder))

    def _configure(self, conn: psycopg.Connection) -> None:
        """A new connection waits for a row lock no longer than a call waits for SQLite's."""
        conn.execute(f"SET lock_timeout = {int(self.busyTimeout * 1000)}")
        conn.commit()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._readerDue = None
        self._pool.stop()
        self._release()
        if self._connections is not None:
            self._connections.close()
            self._connections = None

    def _release(self) -> None:
        """Give the held connection back to the pool, which replaces it if it is broken."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._connections.putconn(conn)

    def _transaction(self, fn, args):
        waiting = min(self.busyTimeout, 0.05) if self._failFast else self.busyTimeout
        attempt = 1
        while True:
            try:
                # The worker keeps its connection from call to call, and takes
                # one from the pool only when it has none (at first, or after a fault).
                if self._conn is None:
                    self._conn = self._connections.getconn(timeout=waiting)
                conn = self._conn
                try:
                    result = fn(_Connection(conn), *args)
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
                return result
            except errors.TransactionRollback as e:
                # A deadlock or a serialization failure: the whole transaction
                # was rolled back, and may be tried again.
                if attempt == RETRIES:
                    raise StoreUnavailable(str(e).strip()) from e
                attempt += 1
            except psycopg.OperationalError as e:
                self._release()
                raise StoreUnavailable(str(e).strip()) from e

    def _select(self, *statements):
        """
        On the reads' connection (L{PipelinedReader}), when no call is still
        waiting on the worker: a read then sees every write asked before it,
        as on the worker. Otherwise, or while that connection is being made
        again, on the worker, behind the calls before it.
        """
        if self._reader is None:
            if self._readerDue is not None and self._reactor.seconds() >= self._readerDue:
                self._reconnectReader()
            return SQLStore._select(self, *statements)
        if self._pending:
            return SQLStore._select(self, *statements)
        d = self._reader.select([(numbered(sql), params) for sql, params in statements])
        d.addCallbacks(self._available, self._unavailable)
        if self.observeLatency is not None:
            d.addBoth(self._observed, self._reactor.seconds())
        return d

    def _read(self, fn, *args):
        """A read, behind the calls before it, without a transaction around it (L{_Connection.alone})."""
        return self._run(lambda conn: conn.alone(fn, *args))

    def _lockName(self, conn, name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))

    def appendArchive(self, host, entries, maxItems):
        """
        The batch in one statement that commits by itself (a busy node
        archives thousands of messages a second: a statement per message and
        per user fell seconds behind, bench/cluster.py); an archive it takes
        over its limit is trimmed in a second transaction, before the call's
        result. The entries whose ids were taken are those that qualified
        but were not inserted: what PostgreSQL returns, not a read of the
        archive, which would miss another node's insert not yet committed.
        """
        columns = [list(column) for column in zip(
            *((username, m.id, m.peer, m.resource, m.stanza, rosterOnly)
              for username, m, rosterOnly in entries), strict=True)] or [[]] * 6

        def append(conn):
            return conn.execute(
                "WITH e AS (SELECT * FROM unnest(?::text[], ?::bigint[], ?::text[], ?::text[],"
                " ?::text[], ?::boolean[]) WITH ORDINALITY"
                " AS e(username, id, peer, resource, stanza, roster_only, n)),"
                " q AS (SELECT * FROM e"
                " WHERE EXISTS (SELECT 1 FROM accounts a WHERE a.host = ? AND a.username = e.username)"
                " AND (NOT e.roster_only OR EXISTS (SELECT 1 FROM roster_items r WHERE r.host = ?"
                " AND r.username = e.username AND r.contact = e.peer AND r.subscription != 'remove'))),"
                " stored AS (INSERT INTO archive (host, username, id, peer, resource, stanza)"
                " SELECT ?, q.username, q.id, q.peer, q.resource, q.stanza FROM q"
                " ORDER BY q.n ON CONFLICT DO NOTHING RETURNING username, id),"
                " added AS (SELECT username, COUNT(*) AS items FROM stored GROUP BY username),"
                # In the order of the usernames, as every node locks the sizes.
                " sizes AS (INSERT INTO archive_sizes (host, username, items)"
                " SELECT ?, username, items FROM added ORDER BY username"
                " ON CONFLICT (host, username) DO UPDATE SET items = archive_sizes.items + excluded.items"
                " RETURNING username, items)"
                " SELECT added.items, sizes.username, sizes.items, NULL::bigint"
                " FROM added JOIN sizes USING (username)"
                " UNION ALL SELECT NULL, NULL, NULL, q.n FROM q WHERE NOT EXISTS"
                " (SELECT 1 FROM stored s WHERE s.username = q.username AND s.id = q.id)",
                (*columns, host, host, host, host)).fetchall()

        def trim(conn, over):
            for username, items in over:
                self._trimArchive(conn, host, username, items, maxItems)

        def appended(rows):
            sizes = [row[:3] for row in rows if row[3] is None]
            taken = [entries[row[3] - 1] for row in rows if row[3] is not None]
            added = sum(count for count, _, _ in sizes)
            over = [(username, items) for _, username, items in sizes if items > maxItems]
            if not over:
                return added, taken
            return self._run(trim, over).addCallback(lambda _: (added, taken))
        return self._run(lambda conn: conn.alone(append)).addCallback(appended)
