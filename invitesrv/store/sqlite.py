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
import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

from twisted.internet import threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from invitesrv.limits import EpisodeLog
from invitesrv.store.interfaces import (
    AccountExists,
    ArchivedMessage,
    ArchiveItemNotFound,
    ArchivePage,
    ArchivePrefs,
    ArchiveQuery,
    Credentials,
    Device,
    FastToken,
    Invite,
    InviteUnavailable,
    InviteUse,
    IStore,
    NewAccount,
    OfflineMessage,
    PepNode,
    PushRegistration,
    QuotaExceeded,
    Roster,
    RosterItem,
    RosterObservers,
    StoreUnavailable,
    Upload,
    UploadUsage,
    UsernameConfusable,
    UsernameReserved,
)
from invitesrv.store.sqlite_groups import GroupsSQL
from invitesrv.usernames import looksAlike, skeleton

log = Logger()

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


def _item(row) -> RosterItem:
    return RosterItem(contact=row[0], name=row[1], subscription=row[2], ask=bool(row[3]),
                      approved=bool(row[4]), groups=tuple(json.loads(row[5])))


# An invite that can still be used at a time given as the first parameter.
_PENDING = "revoked IS NULL AND expires > ? AND (uses_allowed IS NULL OR uses < uses_allowed)"

_INVITE_COLUMNS = ("id, host, kind, created, expires, username, inviter, allow_registration, "
                   "uses_allowed, uses, reserved, revoked, roles, groups, note, source, welcome, reminded,"
                   " room")


def _invite(row, uses=()) -> Invite:
    return Invite(id=row[0], host=row[1], kind=row[2], created=row[3], expires=row[4],
                  username=row[5], inviter=row[6], allowRegistration=bool(row[7]),
                  usesAllowed=row[8], uses=row[9], reserved=row[10], revoked=row[11],
                  roles=tuple(json.loads(row[12])), groups=tuple(json.loads(row[13])),
                  note=row[14], source=row[15], welcome=row[16], reminded=row[17], room=row[18],
                  uses_log=tuple(uses))


_DEVICE = ("device, software, name, last_login, cur_mechanism, cur_salt, cur_issued, cur_expires,"
           " cur_count, new_mechanism, new_salt, new_issued, new_expires")


def _device(row) -> Device:
    """A L{Device} from a row of C{_DEVICE}."""
    current = FastToken(*row[4:8], row[8] or 0) if row[5] is not None else None
    pending = FastToken(*row[9:13]) if row[10] is not None else None
    return Device(*row[:4], current=current, pending=pending)


@implementer(IStore)
class SQLiteStore(GroupsSQL, RosterObservers):
    """
    L{IStore} over one SQLite file (or C{":memory:"}).

    A database that cannot be used (locked by another process beyond
    C{busyTimeout} seconds, disk full, read-only) fails calls with
    L{StoreUnavailable}; the transaction is rolled back, so nothing is half
    written. Such an episode is logged once, when it starts and when it
    ends; meanwhile calls wait only briefly for a lock, so requests queued
    behind a fault are answered in milliseconds, not one busy timeout each.

    Statements run on C{threadpool}, by default a pool of the one thread the
    connection is used from; a test may give one that runs them inline
    (with a C{reactor} whose C{callFromThread} calls at once).
    """

    def __init__(self, path: str | Path, reactor=None, busyTimeout: float = 5.0, threadpool=None):
        if reactor is None:
            from twisted.internet import reactor
        self.path = str(path)
        self.busyTimeout = busyTimeout
        self._reactor = reactor
        self._pool = threadpool if threadpool is not None else ThreadPool(1, 1, name="invitesrv-db")
        self._conn: sqlite3.Connection | None = None
        self._fault = EpisodeLog(reactor)
        self._failFast = False  # set in the reactor thread, read by the worker
        self._waiting = busyTimeout  # the busy timeout the connection has now
        self.observeLatency = None  # called with each call's seconds (the metrics endpoint's)
        RosterObservers.__init__(self)

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
        self._pool.start()

    def close(self) -> None:
        self._pool.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self, fn, *args):
        """Run C{fn(conn, *args)} in one transaction on the worker thread."""
        d = threads.deferToThreadPool(self._reactor, self._pool, self._transaction, fn, args)
        d.addCallbacks(self._available, self._unavailable)
        if self.observeLatency is not None:
            d.addBoth(self._observed, self._reactor.seconds())
        return d

    def _observed(self, result, started: float):
        """Report how long a call took, as its caller waited for it (the thread hop included)."""
        if self.observeLatency is not None:
            self.observeLatency(self._reactor.seconds() - started)
        return result

    def _available(self, result):
        span = self._fault.ended()
        if span is not None:
            self._failFast = False
            log.info("Store available again after {seconds:.1f} s ({count} requests refused"
                     " meanwhile)", seconds=span[0], count=span[1])
        return result

    def _unavailable(self, failure):
        if failure.check(StoreUnavailable):
            self._failFast = True
            if self._fault.event():
                log.error("Store unavailable: {reason}; requests are answered 'try again later'"
                          " until it recovers", reason=failure.value.reason)
        return failure

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

    # -- accounts -----------------------------------------------------------

    def createAccount(self, account: NewAccount):
        self.rosterChanging(account.host, account.username)
        for owner, _item in account.rosterItems:
            self.rosterChanging(account.host, owner)
        if account.circles:
            self.rosterChanging(account.host, None)  # every member of those circles
        return self._run(self._createAccount, account)

    @staticmethod
    def _createAccount(conn, a: NewAccount):
        if conn.execute("SELECT 1 FROM accounts WHERE host = ? AND username = ?",
                        (a.host, a.username)).fetchone():
            raise AccountExists(a.username)
        shape = skeleton(a.username)
        if any(looksAlike(a.username, other) for (other,) in conn.execute(
                "SELECT username FROM accounts WHERE host = ? AND skeleton = ?", (a.host, shape))):
            raise UsernameConfusable(a.username)
        inviteId = a.inviteUse.inviteId if a.inviteUse else None
        reserved = conn.execute(
            f"SELECT 1 FROM invites WHERE {_PENDING} AND host = ? AND username = ? AND id IS NOT ?",
            (a.now, a.host, a.username, inviteId)).fetchone()
        if reserved:
            raise UsernameReserved(a.username)
        conn.execute("INSERT INTO accounts (host, username, created, skeleton) VALUES (?, ?, ?, ?)",
                     (a.host, a.username, a.now, shape))
        SQLiteStore._writeCredentials(conn, a.host, a.username, a.credentials)
        conn.executemany("INSERT INTO roles (host, username, role) VALUES (?, ?, ?)",
                         [(a.host, a.username, role) for role in a.roles])
        if a.inviteUse:
            SQLiteStore._useInvite(conn, a.inviteUse, a.host, a.username, a.now)
        for owner, item in a.rosterItems:
            if conn.execute("SELECT 1 FROM accounts WHERE host = ? AND username = ?",
                            (a.host, owner)).fetchone():
                SQLiteStore._setRosterItem(conn, a.host, owner, item)
        conn.executemany("INSERT INTO pending_in (host, username, contact, stanza) VALUES (?, ?, ?, ?)",
                         [(a.host, a.username, contact, stanza) for contact, stanza in a.pendingIn])
        conn.executemany("INSERT INTO offline_messages (host, username, stamp, stanza) VALUES (?, ?, ?, ?)",
                         [(a.host, a.username, m.stamp, m.stanza) for m in a.offline])
        conn.executemany("INSERT INTO pep_nodes (host, username, node, config) VALUES (?, ?, ?, ?)",
                         [(a.host, a.username, n.node, n.config) for n in a.pep])
        conn.executemany("INSERT INTO pep_items (host, username, node, item_id, xml, seq)"
                         " VALUES (?, ?, ?, ?, ?, ?)",
                         [(a.host, a.username, n.node, itemId, xml, seq) for n in a.pep
                          for seq, (itemId, xml) in enumerate(n.items, 1)])
        conn.executemany("INSERT INTO account_xml (host, username, key, xml) VALUES (?, ?, ?, ?)",
                         [(a.host, a.username, key, xml) for key, xml in a.accountXML])
        for circle in a.circles:
            SQLiteStore._addCircleMember(conn, a.host, circle, a.username)

    @staticmethod
    def _useInvite(conn, use: InviteUse, host: str, username: str, now: float):
        """Turn a reservation into a use and write the audit row."""
        cursor = conn.execute(
            "UPDATE invites SET uses = uses + 1, reserved = MAX(reserved - 1, 0)"
            " WHERE id = ? AND host = ? AND revoked IS NULL"
            " AND (uses_allowed IS NULL OR uses < uses_allowed)", (use.inviteId, host))
        if cursor.rowcount != 1:
            raise InviteUnavailable(use.inviteId)
        conn.execute("INSERT INTO invite_uses (invite_id, host, used_at, username, path, address)"
                     " VALUES (?, ?, ?, ?, ?, ?)",
                     (use.inviteId, host, now, username, use.path, use.address))

    @staticmethod
    def _writeCredentials(conn, host, username, credentials):
        conn.executemany(
            "INSERT OR REPLACE INTO credentials (host, username, mechanism, salt, iterations,"
            " stored_key, server_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(host, username, c.mechanism, c.salt, c.iterations, c.storedKey, c.serverKey)
             for c in credentials])

    def accountExists(self, host, username):
        return self._run(lambda conn: conn.execute(
            "SELECT 1 FROM accounts WHERE host = ? AND username = ?", (host, username)
        ).fetchone() is not None)

    def listAccounts(self, host):
        return self._run(lambda conn: [row[0] for row in conn.execute(
            "SELECT username FROM accounts WHERE host = ? ORDER BY username", (host,))])

    def getCredentials(self, host, username, mechanism):
        def get(conn):
            row = conn.execute(
                "SELECT salt, iterations, stored_key, server_key FROM credentials"
                " WHERE host = ? AND username = ? AND mechanism = ?",
                (host, username, mechanism)).fetchone()
            return Credentials(mechanism, *row) if row else None
        return self._run(get)

    def countAccountsWithout(self, host, mechanism):
        return self._run(lambda conn: conn.execute(
            "SELECT COUNT(*) FROM accounts a WHERE host = ? AND NOT EXISTS (SELECT 1 FROM"
            " credentials c WHERE c.host = a.host AND c.username = a.username AND c.mechanism = ?)",
            (host, mechanism)).fetchone()[0])

    def setCredentials(self, host, username, credentials, inviteUse=None, now=0.0):
        def set_(conn):
            if not conn.execute("SELECT 1 FROM accounts WHERE host = ? AND username = ?",
                                (host, username)).fetchone():
                return False
            self._writeCredentials(conn, host, username, credentials)
            if inviteUse:
                self._useInvite(conn, inviteUse, host, username, now)
            return True
        return self._run(set_)

    def deleteAccount(self, host, username, now=0.0):
        self.rosterChanging(host, None)  # its own, and every roster it was on
        def delete(conn):
            if conn.execute("DELETE FROM accounts WHERE host = ? AND username = ?",
                            (host, username)).rowcount != 1:
                return False
            conn.execute(f"UPDATE invites SET revoked = ? WHERE {_PENDING}"
                         " AND host = ? AND (username = ? OR inviter = ? OR source = ?)",
                         (now, now, host, username, username, f"{username}@{host}"))
            # The same host's rosters forget the account too (a running server's
            # presence module has already done so, with pushes; this covers
            # deletions made while it was not running).
            bare = f"{username}@{host}"
            owners = conn.execute("SELECT username FROM roster_items WHERE host = ? AND contact = ?"
                                  " AND subscription != 'remove'", (host, bare)).fetchall()
            for (owner,) in owners:
                self._removeRosterItem(conn, host, owner, bare)
            conn.execute("DELETE FROM pending_in WHERE host = ? AND contact = ?", (host, bare))
            return True
        return self._run(delete)

    def getRoles(self, host, username):
        return self._run(lambda conn: frozenset(row[0] for row in conn.execute(
            "SELECT role FROM roles WHERE host = ? AND username = ?", (host, username))))

    def listRoleHolders(self, host, role):
        return self._run(lambda conn: [row[0] for row in conn.execute(
            "SELECT username FROM roles WHERE host = ? AND role = ? ORDER BY username", (host, role))])

    # -- rosters ------------------------------------------------------------

    def getRoster(self, host, username):
        def get(conn):
            version = conn.execute("SELECT roster_version FROM accounts WHERE host = ? AND username = ?",
                                   (host, username)).fetchone()
            rows = conn.execute(
                "SELECT contact, name, subscription, ask, approved, groups FROM roster_items"
                " WHERE host = ? AND username = ? AND subscription != 'remove' ORDER BY contact",
                (host, username))
            return Roster(version[0] if version else 0, tuple(_item(row) for row in rows))
        return self._run(get)

    def getRosterChanges(self, host, username, since):
        def get(conn):
            row = conn.execute("SELECT roster_version FROM accounts WHERE host = ? AND username = ?",
                               (host, username)).fetchone()
            if row is None or since > row[0] or since < 0:
                return None
            rows = conn.execute(
                "SELECT contact, name, subscription, ask, approved, groups, version"
                " FROM roster_items"
                " WHERE host = ? AND username = ? AND version > ? ORDER BY version",
                (host, username, since)).fetchall()
            items = tuple(_item(r) for r in rows if r[2] != "remove")
            removed = tuple(r[0] for r in rows if r[2] == "remove")
            return Roster(row[0], items, removed, tuple((r[0], r[6]) for r in rows))
        return self._run(get)

    @staticmethod
    def _getRosterItem(conn, host, username, contact) -> RosterItem | None:
        row = conn.execute(
            "SELECT contact, name, subscription, ask, approved, groups FROM roster_items"
            " WHERE host = ? AND username = ? AND contact = ? AND subscription != 'remove'",
            (host, username, contact)).fetchone()
        return _item(row) if row else None

    def getRosterItem(self, host, username, contact):
        return self._run(self._getRosterItem, host, username, contact)

    @staticmethod
    def _bumpVersion(conn, host, username) -> int:
        conn.execute("UPDATE accounts SET roster_version = roster_version + 1"
                     " WHERE host = ? AND username = ?", (host, username))
        row = conn.execute("SELECT roster_version FROM accounts WHERE host = ? AND username = ?",
                           (host, username)).fetchone()
        if row is None:
            raise KeyError(f"no account {username}@{host}")
        return row[0]

    @staticmethod
    def _setRosterItem(conn, host, username, item: RosterItem) -> int:
        version = SQLiteStore._bumpVersion(conn, host, username)
        conn.execute(
            "INSERT OR REPLACE INTO roster_items (host, username, contact, name, subscription,"
            " ask, approved, groups, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (host, username, item.contact, item.name, item.subscription, int(item.ask),
             int(item.approved), json.dumps(list(item.groups)), version))
        return version

    def setRosterItem(self, host, username, item):
        self.rosterChanging(host, username)
        return self._run(self._setRosterItem, host, username, item)

    @staticmethod
    def _removeRosterItem(conn, host, username, contact) -> int | None:
        """Turn an item into a tombstone, so versioned gets report its removal."""
        if not conn.execute(
                "SELECT 1 FROM roster_items WHERE host = ? AND username = ? AND contact = ?"
                " AND subscription != 'remove'", (host, username, contact)).fetchone():
            return None
        version = SQLiteStore._bumpVersion(conn, host, username)
        conn.execute(
            "UPDATE roster_items SET subscription = 'remove', name = NULL, ask = 0,"
            " approved = 0, groups = '[]', version = ?"
            " WHERE host = ? AND username = ? AND contact = ?", (version, host, username, contact))
        return version

    def removeRosterItem(self, host, username, contact):
        self.rosterChanging(host, username)
        return self._run(self._removeRosterItem, host, username, contact)

    def getPendingIn(self, host, username):
        return self._run(lambda conn: conn.execute(
            "SELECT contact, stanza FROM pending_in WHERE host = ? AND username = ? ORDER BY contact",
            (host, username)).fetchall())

    def setPendingIn(self, host, username, contact, stanza):
        return self._run(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO pending_in (host, username, contact, stanza)"
            " SELECT ?, ?, ?, ? WHERE EXISTS"
            " (SELECT 1 FROM accounts WHERE host = ? AND username = ?)",
            (host, username, contact, stanza, host, username)) and None)

    def removePendingIn(self, host, username, contact):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM pending_in WHERE host = ? AND username = ? AND contact = ?",
            (host, username, contact)).rowcount == 1)

    # -- offline messages ---------------------------------------------------

    def storeOffline(self, host, username, message: OfflineMessage, cap):
        def store(conn):
            count = conn.execute("SELECT COUNT(*) FROM offline_messages WHERE host = ? AND username = ?",
                                 (host, username)).fetchone()[0]
            if count >= cap:
                return False
            conn.execute("INSERT INTO offline_messages (host, username, stamp, stanza)"
                         " VALUES (?, ?, ?, ?)", (host, username, message.stamp, message.stanza))
            return True
        return self._run(store)

    def getOffline(self, host, username, after=0, limit=20):
        return self._run(lambda conn: [OfflineMessage(*row) for row in conn.execute(
            "SELECT stamp, stanza, id FROM offline_messages WHERE host = ? AND username = ? AND id > ?"
            " ORDER BY id LIMIT ?", (host, username, after, limit))])

    def removeOffline(self, host, username, upTo):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM offline_messages WHERE host = ? AND username = ? AND id <= ?",
            (host, username, upTo)).rowcount)

    # -- message archives ---------------------------------------------------

    def appendArchive(self, host, entries, maxItems):
        def append(conn):
            added: dict[str, int] = {}
            for username, m, rosterOnly in entries:
                stored = conn.execute(
                    "INSERT OR IGNORE INTO archive (host, username, id, peer, resource, stanza)"
                    " SELECT ?, ?, ?, ?, ?, ?"
                    " WHERE EXISTS (SELECT 1 FROM accounts WHERE host = ? AND username = ?)"
                    " AND (NOT ? OR EXISTS (SELECT 1 FROM roster_items WHERE host = ?"
                    " AND username = ? AND contact = ? AND subscription != 'remove'))",
                    (host, username, m.id, m.peer, m.resource, m.stanza, host, username,
                     rosterOnly, host, username, m.peer)).rowcount
                if stored:
                    added[username] = added.get(username, 0) + 1
            for username, count in added.items():
                items = conn.execute(
                    "INSERT INTO archive_sizes (host, username, items) VALUES (?, ?, ?)"
                    " ON CONFLICT DO UPDATE SET items = items + excluded.items RETURNING items",
                    (host, username, count)).fetchone()[0]
                if items > maxItems:
                    conn.execute(
                        "DELETE FROM archive WHERE host = ? AND username = ? AND id IN (SELECT id"
                        " FROM archive WHERE host = ? AND username = ? ORDER BY id LIMIT ?)",
                        (host, username, host, username, items - maxItems))
                    conn.execute("UPDATE archive_sizes SET items = ? WHERE host = ? AND username = ?",
                                 (maxItems, host, username))
            return sum(added.values())
        return self._run(append)

    def queryArchive(self, host, username, query: ArchiveQuery):
        def read(conn):
            where, args = ["host = ? AND username = ?"], [host, username]
            for cursor in (query.after, query.before):
                if cursor is not None and not conn.execute(
                        "SELECT 1 FROM archive WHERE host = ? AND username = ? AND id = ?",
                        (host, username, cursor)).fetchone():
                    raise ArchiveItemNotFound(cursor)
            for clause, value in (("peer = ?", query.peer), ("resource = ?", query.resource),
                                  ("id > ?", query.low), ("id < ?", query.high)):
                if value is not None:
                    where.append(clause)
                    args.append(value)
            if query.ids is not None:
                where.append(f"id IN ({', '.join('?' * len(query.ids))})")
                args += query.ids
            condition = " AND ".join(where)
            page, pageArgs = [condition], list(args)
            for clause, value in (("id > ?", query.after), ("id < ?", query.before)):
                if value is not None:
                    page.append(clause)
                    pageArgs.append(value)
            rows = conn.execute(
                f"SELECT id, peer, stanza, resource FROM archive WHERE {' AND '.join(page)}"
                f" ORDER BY id {'DESC' if query.last else ''} LIMIT ? OFFSET ?",
                (*pageArgs, query.limit + 1, query.offset)).fetchall()
            complete = len(rows) <= query.limit
            rows = rows[:query.limit]
            if query.last:
                rows.reverse()
            count = conn.execute(f"SELECT COUNT(*) FROM archive WHERE {condition}", args).fetchone()[0]
            if query.last:
                index = None
            elif not rows or query.after is None:
                index = query.offset
            else:
                index = conn.execute(f"SELECT COUNT(*) FROM archive WHERE {condition} AND id < ?",
                                     (*args, rows[0][0])).fetchone()[0]
            return ArchivePage(tuple(ArchivedMessage(*row) for row in rows), count, index, complete)
        return self._run(read)

    def lastArchiveId(self, host):
        return self._run(lambda conn: conn.execute(
            "SELECT COALESCE(MAX(id), 0) FROM archive WHERE host = ?", (host,)).fetchone()[0])

    def sweepArchive(self, host, before, limit):
        def sweep(conn):
            swept = conn.execute(
                "SELECT username, MAX(id), COUNT(*) FROM (SELECT username, id FROM archive"
                " WHERE host = ? AND id < ? ORDER BY id LIMIT ?) GROUP BY username",
                (host, before, limit)).fetchall()
            for username, top, count in swept:
                # The batch holds the oldest ids of the host: each user's up to its newest one.
                conn.execute("DELETE FROM archive WHERE host = ? AND username = ? AND id <= ?",
                             (host, username, top))
                conn.execute("UPDATE archive_sizes SET items = items - ? WHERE host = ? AND username = ?",
                             (count, host, username))
            return sum(row[2] for row in swept)
        return self._run(sweep)

    def getArchivePrefs(self, host):
        return self._run(lambda conn: {
            username: ArchivePrefs(policy, tuple(json.loads(always)), tuple(json.loads(never)))
            for username, policy, always, never in conn.execute(
                "SELECT username, policy, always, never FROM archive_prefs WHERE host = ?", (host,))})

    def setArchivePrefs(self, host, username, prefs: ArchivePrefs):
        return self._run(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO archive_prefs (host, username, policy, always, never)"
            " VALUES (?, ?, ?, ?, ?)", (host, username, prefs.policy, json.dumps(list(prefs.always)),
                                        json.dumps(list(prefs.never)))) and None)

    # -- blocklists ---------------------------------------------------------

    def getBlocklist(self, host, username):
        return self._run(lambda conn: [row[0] for row in conn.execute(
            "SELECT blocked FROM blocklist WHERE host = ? AND username = ? ORDER BY blocked",
            (host, username))])

    def getBlocklists(self, host):
        def read(conn):
            lists: dict[str, list[str]] = {}
            for username, blocked in conn.execute(
                    "SELECT username, blocked FROM blocklist WHERE host = ? ORDER BY username, blocked",
                    (host,)):
                lists.setdefault(username, []).append(blocked)
            return lists
        return self._run(read)

    def block(self, host, username, items):
        def block(conn):
            return [item for item in sorted(set(items)) if conn.execute(
                "INSERT OR IGNORE INTO blocklist (host, username, blocked) VALUES (?, ?, ?)",
                (host, username, item)).rowcount == 1]
        return self._run(block)

    def unblock(self, host, username, items=None):
        def unblock(conn):
            blocked = [row[0] for row in conn.execute(
                "SELECT blocked FROM blocklist WHERE host = ? AND username = ? ORDER BY blocked",
                (host, username))]
            gone = blocked if items is None else [item for item in blocked if item in set(items)]
            conn.executemany("DELETE FROM blocklist WHERE host = ? AND username = ? AND blocked = ?",
                             [(host, username, item) for item in gone])
            return gone
        return self._run(unblock)

    # -- push registrations ---------------------------------------------------

    def getPushRegistrations(self, host, username):
        return self._run(lambda conn: [PushRegistration(*row) for row in conn.execute(
            "SELECT service, node, options FROM push_registrations WHERE host = ? AND username = ?"
            " ORDER BY service, node", (host, username))])

    def setPushRegistration(self, host, username, registration):
        def set_(conn):
            conn.execute("INSERT OR REPLACE INTO push_registrations (host, username, service, node,"
                         " options) VALUES (?, ?, ?, ?, ?)", (host, username, registration.service,
                                                              registration.node, registration.options))
        return self._run(set_)

    def removePushRegistrations(self, host, username, service, node=None):
        if node is None:
            return self._run(lambda conn: conn.execute(
                "DELETE FROM push_registrations WHERE host = ? AND username = ? AND service = ?",
                (host, username, service)).rowcount)
        return self._run(lambda conn: conn.execute(
            "DELETE FROM push_registrations WHERE host = ? AND username = ? AND service = ?"
            " AND node = ?", (host, username, service, node)).rowcount)

    # -- devices and FAST tokens ----------------------------------------------

    def recordDevice(self, host, username, device, keep):
        def record(conn):
            conn.execute(
                "INSERT INTO devices (host, username, device, software, name, last_login)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host, username, device) DO UPDATE SET"
                " software = excluded.software, name = excluded.name, last_login = excluded.last_login",
                (host, username, device.id, device.software, device.name, device.lastLogin))
            conn.execute(
                "DELETE FROM devices WHERE host = ? AND username = ? AND device NOT IN ("
                " SELECT device FROM devices WHERE host = ? AND username = ?"
                " ORDER BY last_login DESC, device LIMIT ?)", (host, username, host, username, keep))
        return self._run(record)

    def getDevices(self, host, username):
        return self._run(lambda conn: [_device(row) for row in conn.execute(
            f"SELECT {_DEVICE} FROM devices WHERE host = ? AND username = ?"
            " ORDER BY last_login DESC, device", (host, username))])

    def getDevice(self, host, username, deviceId):
        def read(conn):
            row = conn.execute(f"SELECT {_DEVICE} FROM devices WHERE host = ? AND username = ?"
                               " AND device = ?", (host, username, deviceId)).fetchone()
            return _device(row) if row else None
        return self._run(read)

    def issueToken(self, host, username, deviceId, token):
        return self._run(lambda conn: conn.execute(
            "INSERT INTO devices (host, username, device, last_login, new_mechanism, new_salt,"
            " new_issued, new_expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (host, username, device) DO UPDATE SET new_mechanism = excluded.new_mechanism,"
            " new_salt = excluded.new_salt, new_issued = excluded.new_issued,"
            " new_expires = excluded.new_expires",
            (host, username, deviceId, token.issued, token.mechanism, token.salt, token.issued,
             token.expires)))

    def useToken(self, host, username, deviceId, salt, count):
        def use(conn):
            key = (host, username, deviceId)
            if conn.execute(
                    "UPDATE devices SET cur_mechanism = new_mechanism, cur_salt = new_salt,"
                    " cur_issued = new_issued, cur_expires = new_expires, cur_count = ?,"
                    " new_mechanism = NULL, new_salt = NULL, new_issued = NULL, new_expires = NULL"
                    " WHERE host = ? AND username = ? AND device = ? AND new_salt = ?",
                    (count or 0, *key, salt)).rowcount:
                return True
            return conn.execute(
                "UPDATE devices SET cur_count = max(cur_count, ?) WHERE host = ? AND username = ?"
                " AND device = ? AND cur_salt = ? AND (? IS NULL OR ? > cur_count)",
                (count or 0, *key, salt, count, count)).rowcount == 1
        return self._run(use)

    def revokeTokens(self, host, username, deviceId=None):
        return self._run(lambda conn: conn.execute(
            "UPDATE devices SET cur_mechanism = NULL, cur_salt = NULL, cur_issued = NULL,"
            " cur_expires = NULL, cur_count = NULL, new_mechanism = NULL, new_salt = NULL,"
            " new_issued = NULL, new_expires = NULL WHERE host = ? AND username = ?"
            " AND (? IS NULL OR device = ?)", (host, username, deviceId, deviceId)).rowcount)

    def forgetDevice(self, host, username, deviceId):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM devices WHERE host = ? AND username = ? AND device = ?",
            (host, username, deviceId)).rowcount == 1)
    # -- PEP and account XML --------------------------------------------------

    def getPep(self, host, username):
        def read(conn):
            items: dict[str, list] = {}
            for node, itemId, xml in conn.execute(
                    "SELECT node, item_id, xml FROM pep_items WHERE host = ? AND username = ?"
                    " ORDER BY node, seq", (host, username)):
                items.setdefault(node, []).append((itemId, xml))
            return [PepNode(node, config, tuple(items.get(node, ()))) for node, config in conn.execute(
                "SELECT node, config FROM pep_nodes WHERE host = ? AND username = ? ORDER BY node",
                (host, username))]
        return self._run(read)

    def setPepNode(self, host, username, node, config):
        return self._run(lambda conn: conn.execute(
            "INSERT INTO pep_nodes (host, username, node, config) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO UPDATE SET config = excluded.config", (host, username, node, config)))

    def deletePepNode(self, host, username, node):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM pep_nodes WHERE host = ? AND username = ? AND node = ?",
            (host, username, node)).rowcount == 1)

    def publishPepItem(self, host, username, node, config, itemId, xml, maxItems):
        def publish(conn):
            key = (host, username, node)
            conn.execute("INSERT OR IGNORE INTO pep_nodes (host, username, node, config)"
                         " VALUES (?, ?, ?, ?)", (*key, config))
            conn.execute("INSERT OR REPLACE INTO pep_items (host, username, node, item_id, xml, seq)"
                         " SELECT ?, ?, ?, ?, ?, COALESCE(MAX(seq), 0) + 1 FROM pep_items"
                         " WHERE host = ? AND username = ? AND node = ?", (*key, itemId, xml, *key))
            dropped = [row[0] for row in conn.execute(
                "SELECT item_id FROM pep_items WHERE host = ? AND username = ? AND node = ?"
                " ORDER BY seq DESC LIMIT -1 OFFSET ?", (*key, maxItems))]
            conn.executemany("DELETE FROM pep_items WHERE host = ? AND username = ? AND node = ?"
                             " AND item_id = ?", [(*key, dropped_) for dropped_ in dropped])
            return dropped
        return self._run(publish)

    def retractPepItem(self, host, username, node, itemId):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM pep_items WHERE host = ? AND username = ? AND node = ? AND item_id = ?",
            (host, username, node, itemId)).rowcount == 1)

    def purgePepNode(self, host, username, node):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM pep_items WHERE host = ? AND username = ? AND node = ?",
            (host, username, node)).rowcount)

    def getAccountXML(self, host, username, key):
        def get(conn):
            row = conn.execute("SELECT xml FROM account_xml WHERE host = ? AND username = ? AND key = ?",
                               (host, username, key)).fetchone()
            return row and row[0]
        return self._run(get)

    def setAccountXML(self, host, username, key, xml):
        def set_(conn):
            if xml is None:
                conn.execute("DELETE FROM account_xml WHERE host = ? AND username = ? AND key = ?",
                             (host, username, key))
            else:
                conn.execute("INSERT OR REPLACE INTO account_xml (host, username, key, xml)"
                             " VALUES (?, ?, ?, ?)", (host, username, key, xml))
        return self._run(set_)

    # -- invites ------------------------------------------------------------

    def createInvite(self, invite: Invite, tokenHash: bytes):
        return self._run(lambda conn: conn.execute(
            "INSERT INTO invites (id, host, token_hash, kind, username, inviter,"
            " allow_registration, uses_allowed, uses, reserved, created, expires, revoked,"
            " roles, groups, note, source, welcome, room)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, NULL, ?, ?, ?, ?, ?, ?)",
            (invite.id, invite.host, tokenHash, invite.kind, invite.username, invite.inviter,
             int(invite.allowRegistration), invite.usesAllowed, invite.created, invite.expires,
             json.dumps(list(invite.roles)), json.dumps(list(invite.groups)), invite.note,
             invite.source, invite.welcome, invite.room)) and None)

    @staticmethod
    def _getInvite(conn, where: str, value):
        row = conn.execute(f"SELECT {_INVITE_COLUMNS} FROM invites WHERE {where} = ?",
                           (value,)).fetchone()
        if row is None:
            return None
        uses = [dict(zip(("used_at", "username", "path", "address"), u, strict=True)) for u in conn.execute(
            "SELECT used_at, username, path, address FROM invite_uses WHERE invite_id = ?"
            " ORDER BY id", (row[0],))]
        return _invite(row, uses)

    def getInvite(self, inviteId):
        return self._run(self._getInvite, "id", inviteId)

    def findInvite(self, tokenHash):
        return self._run(self._getInvite, "token_hash", tokenHash)

    def listInvites(self, host, inviter=None):
        def list_(conn):
            rows = conn.execute(
                f"SELECT {_INVITE_COLUMNS} FROM invites WHERE host = ?"
                " AND (? IS NULL OR inviter = ?) ORDER BY created DESC, id",
                (host, inviter, inviter)).fetchall()
            return [_invite(row) for row in rows]
        return self._run(list_)

    def reserveInvite(self, tokenHash, host, now):
        def reserve(conn):
            cursor = conn.execute(
                "UPDATE invites SET reserved = reserved + 1 WHERE token_hash = ? AND host = ?"
                " AND revoked IS NULL AND expires > ?"
                " AND (uses_allowed IS NULL OR uses + reserved < uses_allowed)",
                (tokenHash, host, now))
            return self._getInvite(conn, "token_hash", tokenHash) if cursor.rowcount == 1 else None
        return self._run(reserve)

    def releaseInvite(self, inviteId):
        return self._run(lambda conn: conn.execute(
            "UPDATE invites SET reserved = reserved - 1 WHERE id = ? AND reserved > 0",
            (inviteId,)) and None)

    def consumeInvite(self, use: InviteUse, now: float, rosterItems=(), usedBy=""):
        for username, _item in rosterItems:
            self.rosterChanging(None, username)  # the invite's host is read in the transaction
        def consume(conn):
            row = conn.execute("SELECT host, expires FROM invites WHERE id = ?",
                               (use.inviteId,)).fetchone()
            if row is None or row[1] <= now:
                raise InviteUnavailable(use.inviteId)
            host = row[0]
            # A use without a prior reservation: take it directly.
            taken = conn.execute(
                "UPDATE invites SET reserved = reserved + 1 WHERE id = ?"
                " AND (uses_allowed IS NULL OR uses + reserved < uses_allowed)", (use.inviteId,))
            if taken.rowcount != 1:  # every use left is reserved by attempts under way
                raise InviteUnavailable(use.inviteId)
            owner = usedBy or (rosterItems[0][0] if rosterItems else "")
            self._useInvite(conn, use, host, owner, now)
            for username, item in rosterItems:
                self._setRosterItem(conn, host, username, item)
        return self._run(consume)

    def updateInvite(self, inviteId, **changes):
        columns = {"expires": "expires", "usesAllowed": "uses_allowed", "note": "note",
                   "reminded": "reminded"}
        unknown = set(changes) - set(columns)
        if unknown:
            raise TypeError(f"cannot change {sorted(unknown)}")

        def update(conn):
            for key, value in changes.items():
                conn.execute(f"UPDATE invites SET {columns[key]} = ? WHERE id = ?", (value, inviteId))
            return self._getInvite(conn, "id", inviteId)
        return self._run(update)

    def revokeInvite(self, inviteId, now):
        return self._run(lambda conn: conn.execute(
            "UPDATE invites SET revoked = ? WHERE id = ? AND revoked IS NULL", (now, inviteId)
        ).rowcount == 1)

    def sweepInvites(self, now):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM invites WHERE reserved = 0 AND (expires <= ? OR revoked IS NOT NULL"
            " OR (uses_allowed IS NOT NULL AND uses >= uses_allowed))", (now,)).rowcount)

    def accountInvitedAt(self, host, username):
        return self._run(lambda conn: conn.execute(
            "SELECT MAX(u.used_at) FROM invite_uses u JOIN accounts a"
            " ON a.host = u.host AND a.username = u.username"
            " WHERE u.host = ? AND u.username = ? AND u.used_at = a.created",
            (host, username)).fetchone()[0])

    # -- API keys -----------------------------------------------------------

    def createApiKey(self, keyId, secretHash, host, name, now):
        return self._run(lambda conn: conn.execute(
            "INSERT INTO api_keys (key_id, secret_hash, host, name, created) VALUES (?, ?, ?, ?, ?)",
            (keyId, secretHash, host, name, now)) and None)

    def getApiKey(self, keyId):
        return self._run(lambda conn: conn.execute(
            "SELECT secret_hash, host, name, created FROM api_keys WHERE key_id = ?",
            (keyId,)).fetchone())

    def listApiKeys(self):
        return self._run(lambda conn: conn.execute(
            "SELECT key_id, host, name, created FROM api_keys ORDER BY created").fetchall())

    def deleteApiKey(self, keyId):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM api_keys WHERE key_id = ?", (keyId,)).rowcount == 1)

    # -- uploads ------------------------------------------------------------

    def createUpload(self, upload: Upload, quota: int, daily: int):
        def create(conn):
            owner = (upload.host, upload.username)
            if quota and conn.execute("SELECT COALESCE(SUM(size), 0) FROM uploads WHERE host = ?"
                                      " AND username = ?", owner).fetchone()[0] + upload.size > quota:
                raise QuotaExceeded("quota")
            if daily and conn.execute(
                    "SELECT COALESCE(SUM(size), 0) FROM uploads WHERE host = ? AND username = ?"
                    " AND created > ?", (*owner, upload.created - 86400)
            ).fetchone()[0] + upload.size > daily:
                raise QuotaExceeded("daily")
            conn.execute(f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (upload.id, upload.host, upload.username, upload.filename, upload.size,
                          upload.contentType, upload.created, upload.expires, upload.state))
        return self._run(create)

    def getUpload(self, uploadId):
        return self._run(lambda conn: _upload(conn.execute(
            f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE id = ?", (uploadId,)).fetchone()))

    def beginUpload(self, uploadId, now):
        return self._run(lambda conn: conn.execute(
            "UPDATE uploads SET state = 'uploading' WHERE id = ? AND state = 'slot' AND expires > ?",
            (uploadId, now)).rowcount == 1)

    def finishUpload(self, uploadId, expires):
        return self._run(lambda conn: conn.execute(
            "UPDATE uploads SET state = 'stored', expires = ? WHERE id = ? AND state = 'uploading'",
            (expires, uploadId)).rowcount == 1)

    def abortUpload(self, uploadId):
        return self._run(lambda conn: conn.execute(
            "UPDATE uploads SET state = 'slot' WHERE id = ? AND state = 'uploading'",
            (uploadId,)).rowcount == 1)

    def expiredUploads(self, host, now, limit):
        return self._run(lambda conn: [_upload(row) for row in conn.execute(
            f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE expires <= ? AND state != 'uploading'"
            " AND host = ? ORDER BY expires LIMIT ?", (now, host, limit))])

    def deleteUploads(self, uploadIds):
        return self._run(lambda conn: sum(conn.execute(
            "DELETE FROM uploads WHERE id = ?", (uploadId,)).rowcount for uploadId in uploadIds))

    def listUploads(self, host, username):
        return self._run(lambda conn: [_upload(row) for row in conn.execute(
            f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE host = ? AND username = ?"
            " ORDER BY created, id", (host, username))])

    def uploadUsage(self, host):
        return self._run(lambda conn: [UploadUsage(*row) for row in conn.execute(
            "SELECT username, SUM(state = 'stored'), SUM(CASE WHEN state = 'stored' THEN size"
            " ELSE 0 END), SUM(state != 'stored') FROM uploads WHERE host = ? GROUP BY username"
            " ORDER BY username", (host,))])


_UPLOAD_COLUMNS = "id, host, username, filename, size, content_type, created, expires, state"


def _upload(row) -> Upload | None:
    return Upload(*row) if row is not None else None


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

