"""
The SQL shared by the stores on a relational database (SQLite, PostgreSQL).

Every store method is one transaction of portable SQL, run on a worker
thread by the backend's L{SQLStore._transaction}; the statements are written
with C{?} placeholders and in the SQL that SQLite and PostgreSQL both speak
(C{ON CONFLICT} upserts, C{RETURNING}), and a backend whose driver speaks
otherwise translates them once per statement text
(L{invitesrv.store.postgresql.translate}). A backend gives the connection
and the transaction; the queries, and what they mean, live here once.
"""

from __future__ import annotations

import json

from twisted.internet import threads
from zope.interface import implementer

from invitesrv.limits import EpisodeLog
from invitesrv.logs import logger
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

log = logger()


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


_ONE_DEVICE = f"SELECT {_DEVICE} FROM devices WHERE host = ? AND username = ? AND device = ?"

_CREDENTIALS = ("SELECT salt, iterations, stored_key, server_key FROM credentials"
                " WHERE host = ? AND username = ? AND mechanism = ?")


def _credentials(mechanism: str, rows) -> Credentials | None:
    """The L{Credentials} of the rows of C{_CREDENTIALS}."""
    return Credentials(mechanism, *rows[0]) if rows else None


# One statement: the version and the items it numbers, read together.
_ROSTER = ("SELECT a.roster_version, r.contact, r.name, r.subscription, r.ask, r.approved, r.groups"
           " FROM accounts a LEFT JOIN roster_items r ON r.host = a.host AND r.username = a.username"
           " AND r.subscription != 'remove' WHERE a.host = ? AND a.username = ? ORDER BY r.contact")


def _roster(rows) -> Roster:
    """The L{Roster} of the rows of C{_ROSTER}."""
    return Roster(rows[0][0] if rows else 0, tuple(_item(row[1:]) for row in rows if row[1] is not None))


_PENDING_IN = "SELECT contact, stanza FROM pending_in WHERE host = ? AND username = ? ORDER BY contact"


@implementer(IStore)
class SQLStore(GroupsSQL, RosterObservers):
    """
    L{IStore} in SQL, over the connection and transactions of a subclass.

    Each call runs C{fn(conn, *args)} in one transaction on C{threadpool},
    through the subclass's C{_transaction}: C{conn} has the C{execute} and
    C{executemany} of a DB-API connection. A database that cannot be used
    fails calls with L{StoreUnavailable}; the transaction is rolled back, so
    nothing is half written. Such an episode is logged once, when it starts
    and when it ends; meanwhile C{_failFast} tells the backend to wait only
    briefly, so requests queued behind a fault are answered in milliseconds.
    """

    def __init__(self, reactor, busyTimeout: float, threadpool):
        if reactor is None:
            from twisted.internet import reactor
        self.busyTimeout = busyTimeout
        self._reactor = reactor
        self._pool = threadpool
        self._fault = EpisodeLog(reactor)
        self._failFast = False  # set in the reactor thread, read by the worker
        self._pending = 0  # calls given to the worker and not answered yet
        self.observeLatency = None  # called with each call's seconds (the metrics endpoint's)
        RosterObservers.__init__(self)

    def _transaction(self, fn, args):
        """Run C{fn(conn, *args)} in one transaction, in the calling (worker) thread."""
        raise NotImplementedError

    def _lockName(self, conn, name: str) -> None:
        """
        Hold a lock on C{name} until the transaction ends, where transactions
        may run at once: so two writers check and write one after the other.
        A backend whose write transactions run one at a time has nothing to do.
        """

    def _held(self, conn, inviteId: str, change: int) -> None:
        """
        Count C{change} more (or fewer) reservations of invite C{inviteId}
        as this server's, where several servers share the store and one may
        die holding some. A backend that one server uses alone frees every
        reservation at its start, and has nothing to do.
        """

    def _run(self, fn, *args):
        """Run C{fn(conn, *args)} in one transaction on a worker thread."""
        self._pending += 1
        d = threads.deferToThreadPool(self._reactor, self._pool, self._transaction, fn, args)
        d.addBoth(self._answered)
        d.addCallbacks(self._available, self._unavailable)
        if self.observeLatency is not None:
            d.addBoth(self._observed, self._reactor.seconds())
        return d

    def _answered(self, result):
        self._pending -= 1
        return result

    def _read(self, fn, *args):
        """
        Run C{fn(conn, *args)}, which only reads, in one transaction: as
        L{_run} does, unless the backend can answer at once.
        """
        return self._run(fn, *args)

    def _select(self, *statements):
        """
        Fire with the rows of each of C{statements} (SQL and its
        parameters), which only read: run by L{_read}, unless the backend
        has a faster way for plain reads.
        """
        return self._read(lambda conn: [conn.execute(sql, params).fetchall()
                                        for sql, params in statements])

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

    # -- accounts -----------------------------------------------------------

    def createAccount(self, account: NewAccount):
        self.rosterChanging(account.host, account.username)
        for owner, _item in account.rosterItems:
            self.rosterChanging(account.host, owner)
        if account.circles:
            self.rosterChanging(account.host, None)  # every member of those circles
        return self._run(self._createAccount, account)

    def _createAccount(self, conn, a: NewAccount):
        shape = skeleton(a.username)
        # The same name and its look-alikes share a skeleton: one writer at a time checks it.
        self._lockName(conn, f"account {a.host} {shape}")
        if conn.execute("SELECT 1 FROM accounts WHERE host = ? AND username = ?",
                        (a.host, a.username)).fetchone():
            raise AccountExists(a.username)
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
        SQLStore._writeCredentials(conn, a.host, a.username, a.credentials)
        conn.executemany("INSERT INTO roles (host, username, role) VALUES (?, ?, ?)",
                         [(a.host, a.username, role) for role in a.roles])
        if a.inviteUse:
            SQLStore._useInvite(conn, a.inviteUse, a.host, a.username, a.now)
            self._held(conn, a.inviteUse.inviteId, -1)
        for owner, item in a.rosterItems:
            if conn.execute("SELECT 1 FROM accounts WHERE host = ? AND username = ?",
                            (a.host, owner)).fetchone():
                SQLStore._setRosterItem(conn, a.host, owner, item)
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
            SQLStore._addCircleMember(conn, a.host, circle, a.username)

    @staticmethod
    def _useInvite(conn, use: InviteUse, host: str, username: str, now: float):
        """Turn a reservation into a use and write the audit row."""
        cursor = conn.execute(
            "UPDATE invites SET uses = uses + 1,"
            " reserved = CASE WHEN reserved > 0 THEN reserved - 1 ELSE 0 END"
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
            "INSERT INTO credentials (host, username, mechanism, salt, iterations, stored_key,"
            " server_key) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host, username, mechanism)"
            " DO UPDATE SET salt = excluded.salt, iterations = excluded.iterations,"
            " stored_key = excluded.stored_key, server_key = excluded.server_key",
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
        return self._select((_CREDENTIALS, (host, username, mechanism))).addCallback(
            lambda rows: _credentials(mechanism, rows[0]))

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
        return self._select((_ROSTER, (host, username))).addCallback(lambda rows: _roster(rows[0]))

    def getRosterAndPendingIn(self, host, username):
        return self._select((_ROSTER, (host, username)), (_PENDING_IN, (host, username))).addCallback(
            lambda rows: (_roster(rows[0]), rows[1]))

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
        version = SQLStore._bumpVersion(conn, host, username)
        conn.execute(
            "INSERT INTO roster_items (host, username, contact, name, subscription, ask,"
            " approved, groups, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (host, username, contact) DO UPDATE SET name = excluded.name,"
            " subscription = excluded.subscription, ask = excluded.ask,"
            " approved = excluded.approved, groups = excluded.groups, version = excluded.version",
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
        version = SQLStore._bumpVersion(conn, host, username)
        conn.execute(
            "UPDATE roster_items SET subscription = 'remove', name = NULL, ask = 0,"
            " approved = 0, groups = '[]', version = ?"
            " WHERE host = ? AND username = ? AND contact = ?", (version, host, username, contact))
        return version

    def removeRosterItem(self, host, username, contact):
        self.rosterChanging(host, username)
        return self._run(self._removeRosterItem, host, username, contact)

    def getPendingIn(self, host, username):
        return self._select((_PENDING_IN, (host, username))).addCallback(lambda rows: rows[0])

    def setPendingIn(self, host, username, contact, stanza):
        return self._run(lambda conn: conn.execute(
            "INSERT INTO pending_in (host, username, contact, stanza)"
            " SELECT ?, ?, ?, ? WHERE EXISTS"
            " (SELECT 1 FROM accounts WHERE host = ? AND username = ?)"
            " ON CONFLICT (host, username, contact) DO UPDATE SET stanza = excluded.stanza",
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
        return self._select((
            "SELECT stamp, stanza, id FROM offline_messages WHERE host = ? AND username = ? AND id > ?"
            " ORDER BY id LIMIT ?", (host, username, after, limit))).addCallback(
                lambda rows: [OfflineMessage(*row) for row in rows[0]])

    def removeOffline(self, host, username, upTo):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM offline_messages WHERE host = ? AND username = ? AND id <= ?",
            (host, username, upTo)).rowcount)

    # -- message archives ---------------------------------------------------

    def appendArchive(self, host, entries, maxItems):
        def append(conn):
            added: dict[str, int] = {}
            taken = []
            for username, m, rosterOnly in entries:
                stored = conn.execute(
                    "INSERT INTO archive (host, username, id, peer, resource, stanza)"
                    " SELECT ?, ?, ?, ?, ?, ?"
                    " WHERE EXISTS (SELECT 1 FROM accounts WHERE host = ? AND username = ?)"
                    " AND (NOT ? OR EXISTS (SELECT 1 FROM roster_items WHERE host = ?"
                    " AND username = ? AND contact = ? AND subscription != 'remove'))"
                    " ON CONFLICT DO NOTHING",
                    (host, username, m.id, m.peer, m.resource, m.stanza, host, username,
                     rosterOnly, host, username, m.peer)).rowcount
                if stored:
                    added[username] = added.get(username, 0) + 1
                elif conn.execute("SELECT 1 FROM archive WHERE host = ? AND username = ? AND id = ?",
                                  (host, username, m.id)).fetchone():
                    taken.append((username, m, rosterOnly))
            for username, count in added.items():
                items = conn.execute(
                    "INSERT INTO archive_sizes (host, username, items) VALUES (?, ?, ?)"
                    " ON CONFLICT (host, username) DO UPDATE SET items = archive_sizes.items + excluded.items"
                    " RETURNING items",
                    (host, username, count)).fetchone()[0]
                self._trimArchive(conn, host, username, items, maxItems)
            return sum(added.values()), taken
        return self._run(append)

    @staticmethod
    def _trimArchive(conn, host: str, username: str, items: int, maxItems: int) -> None:
        """A user's archive holding C{items} messages loses its oldest beyond C{maxItems}."""
        if items > maxItems:
            conn.execute(
                "DELETE FROM archive WHERE host = ? AND username = ? AND id IN (SELECT id"
                " FROM archive WHERE host = ? AND username = ? ORDER BY id LIMIT ?)",
                (host, username, host, username, items - maxItems))
            conn.execute("UPDATE archive_sizes SET items = ? WHERE host = ? AND username = ?",
                         (maxItems, host, username))

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
                " WHERE host = ? AND id < ? ORDER BY id LIMIT ?) AS oldest GROUP BY username",
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
            "INSERT INTO archive_prefs (host, username, policy, always, never)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (host, username) DO UPDATE SET"
            " policy = excluded.policy, always = excluded.always, never = excluded.never",
            (host, username, prefs.policy, json.dumps(list(prefs.always)),
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
                "INSERT INTO blocklist (host, username, blocked) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
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
            conn.execute("INSERT INTO push_registrations (host, username, service, node, options)"
                         " VALUES (?, ?, ?, ?, ?) ON CONFLICT (host, username, service, node)"
                         " DO UPDATE SET options = excluded.options",
                         (host, username, registration.service, registration.node,
                          registration.options))
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

    def recordDevices(self, host, devices, keep):
        def record(conn):
            conn.executemany(
                "INSERT INTO devices (host, username, device, software, name, last_login)"
                " SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM accounts"
                " WHERE host = ? AND username = ?) ON CONFLICT (host, username, device) DO UPDATE SET"
                " software = excluded.software, name = excluded.name, last_login = excluded.last_login",
                [(host, username, device.id, device.software, device.name, device.lastLogin, host,
                  username) for username, device in devices])
            conn.executemany(
                "DELETE FROM devices WHERE host = ? AND username = ? AND device NOT IN ("
                " SELECT device FROM devices WHERE host = ? AND username = ?"
                " ORDER BY last_login DESC, device LIMIT ?)",
                [(host, username, host, username, keep)
                 for username in dict.fromkeys(username for username, _ in devices)])
        return self._run(record)

    def getDevices(self, host, username):
        return self._run(lambda conn: [_device(row) for row in conn.execute(
            f"SELECT {_DEVICE} FROM devices WHERE host = ? AND username = ?"
            " ORDER BY last_login DESC, device", (host, username))])

    def getDevice(self, host, username, deviceId):
        return self._select((_ONE_DEVICE, (host, username, deviceId))).addCallback(
            lambda rows: _device(rows[0][0]) if rows[0] else None)

    def getTokenLogin(self, host, username, deviceId, mechanism):
        return self._select((_ONE_DEVICE, (host, username, deviceId)),
                            (_CREDENTIALS, (host, username, mechanism))).addCallback(
            lambda rows: (_device(rows[0][0]) if rows[0] else None, _credentials(mechanism, rows[1])))

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
                "UPDATE devices SET cur_count = CASE WHEN cur_count > ? THEN cur_count ELSE ? END"
                " WHERE host = ? AND username = ? AND device = ? AND cur_salt = ?"
                " AND (? IS NULL OR ? > cur_count)",
                (count or 0, count or 0, *key, salt, count, count)).rowcount == 1
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
        def nodes(rows):
            found: dict[str, tuple[str, list]] = {}
            for node, config, itemId, xml in rows[0]:
                items = found.setdefault(node, (config, []))[1]
                if itemId is not None:
                    items.append((itemId, xml))
            return [PepNode(node, config, tuple(items)) for node, (config, items) in found.items()]
        return self._select((
            "SELECT n.node, n.config, i.item_id, i.xml FROM pep_nodes n LEFT JOIN pep_items i"
            " ON i.host = n.host AND i.username = n.username AND i.node = n.node"
            " WHERE n.host = ? AND n.username = ? ORDER BY n.node, i.seq",
            (host, username))).addCallback(nodes)

    def setPepNode(self, host, username, node, config):
        return self._run(lambda conn: conn.execute(
            "INSERT INTO pep_nodes (host, username, node, config) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (host, username, node) DO UPDATE SET config = excluded.config",
            (host, username, node, config)))

    def deletePepNode(self, host, username, node):
        return self._run(lambda conn: conn.execute(
            "DELETE FROM pep_nodes WHERE host = ? AND username = ? AND node = ?",
            (host, username, node)).rowcount == 1)

    def publishPepItem(self, host, username, node, config, itemId, xml, maxItems):
        def publish(conn):
            key = (host, username, node)
            conn.execute("INSERT INTO pep_nodes (host, username, node, config)"
                         " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (*key, config))
            conn.execute("INSERT INTO pep_items (host, username, node, item_id, xml, seq)"
                         " SELECT ?, ?, ?, ?, ?, COALESCE(MAX(seq), 0) + 1 FROM pep_items"
                         " WHERE host = ? AND username = ? AND node = ?"
                         " ON CONFLICT (host, username, node, item_id)"
                         " DO UPDATE SET xml = excluded.xml, seq = excluded.seq",
                         (*key, itemId, xml, *key))
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
                conn.execute("INSERT INTO account_xml (host, username, key, xml) VALUES (?, ?, ?, ?)"
                             " ON CONFLICT (host, username, key) DO UPDATE SET xml = excluded.xml",
                             (host, username, key, xml))
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
            if cursor.rowcount != 1:
                return None
            invite = self._getInvite(conn, "token_hash", tokenHash)
            self._held(conn, invite.id, 1)
            return invite
        return self._run(reserve)

    def releaseInvite(self, inviteId):
        def release(conn):
            if conn.execute("UPDATE invites SET reserved = reserved - 1 WHERE id = ? AND reserved > 0",
                            (inviteId,)).rowcount:
                self._held(conn, inviteId, -1)
        return self._run(release)

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
            "SELECT username, CAST(SUM(CASE WHEN state = 'stored' THEN 1 ELSE 0 END) AS BIGINT),"
            " CAST(SUM(CASE WHEN state = 'stored' THEN size ELSE 0 END) AS BIGINT),"
            " CAST(SUM(CASE WHEN state != 'stored' THEN 1 ELSE 0 END) AS BIGINT)"
            " FROM uploads WHERE host = ? GROUP BY username ORDER BY username", (host,))])


_UPLOAD_COLUMNS = "id, host, username, filename, size, content_type, created, expires, state"


def _upload(row) -> Upload | None:
    return Upload(*row) if row is not None else None
