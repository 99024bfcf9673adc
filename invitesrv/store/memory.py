"""
A store held in memory, answering at once: for unit tests.

Every method returns a Deferred that has already fired, so a test of a
module over a L{StringTransport} and a L{task.Clock} runs with no thread and
no reactor. It has the semantics of L{invitesrv.store.sqlite.SQLiteStore}
(the shared behaviour suite, C{tests/store_behaviour.py}, checks both): each
call is one transaction, rolled back when it fails, so nothing is half
written. L{MemoryStore.breakDown} makes calls fail as a locked or full
database does, to test the paths of a store fault.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

from twisted.internet import defer
from zope.interface import implementer

from invitesrv.store.interfaces import (
    AccountExists,
    ArchivedMessage,
    ArchiveItemNotFound,
    ArchivePage,
    ArchivePrefs,
    ArchiveQuery,
    Circle,
    CircleExists,
    Device,
    Invite,
    InviteUnavailable,
    InviteUse,
    IStore,
    NewAccount,
    OfflineMessage,
    PepNode,
    QuotaExceeded,
    Roster,
    RosterItem,
    RosterObservers,
    StoredRoom,
    StoreUnavailable,
    Upload,
    UploadUsage,
    UsernameConfusable,
    UsernameReserved,
    joinedCircle,
    leftCircle,
)
from invitesrv.usernames import looksAlike, skeleton


@dataclass(frozen=True)
class _Account:
    created: float
    skeleton: str
    rosterVersion: int = 0


@dataclass(frozen=True)
class _Use:
    """One row of the invite audit, which outlives its invite."""

    inviteId: str
    host: str
    usedAt: float
    username: str
    path: str
    address: str


@dataclass
class _Tables:
    """
    Every row, keyed as the SQLite tables are. Values are immutable, so a
    copy of each table is a snapshot of the whole store.
    """

    accounts: dict = field(default_factory=dict)  # (host, username): _Account
    credentials: dict = field(default_factory=dict)  # (host, username, mechanism): Credentials
    roles: dict = field(default_factory=dict)  # (host, username): frozenset
    roster: dict = field(default_factory=dict)  # (host, username, contact): (RosterItem | None, version)
    pendingIn: dict = field(default_factory=dict)  # (host, username, contact): stanza
    offline: dict = field(default_factory=dict)  # id: (host, username, OfflineMessage)
    blocklist: dict = field(default_factory=dict)  # (host, username): frozenset of JIDs
    archive: dict = field(default_factory=dict)  # (host, username, id): ArchivedMessage
    archivePrefs: dict = field(default_factory=dict)  # (host, username): ArchivePrefs
    pepNodes: dict = field(default_factory=dict)  # (host, username, node): config
    pepItems: dict = field(default_factory=dict)  # (host, username, node): ((id, xml), ...) oldest first
    accountXML: dict = field(default_factory=dict)  # (host, username, key): xml
    push: dict = field(default_factory=dict)  # (host, username, service, node): PushRegistration
    invites: dict = field(default_factory=dict)  # id: Invite (without its uses_log)
    tokens: dict = field(default_factory=dict)  # token hash: invite id
    audit: list = field(default_factory=list)  # _Use, oldest first
    apiKeys: dict = field(default_factory=dict)  # key id: (secretHash, host, name, created)
    devices: dict = field(default_factory=dict)  # (host, username, device id): Device
    uploads: dict = field(default_factory=dict)  # id: Upload
    lastOfflineId: int = 0
    rooms: dict = field(default_factory=dict)  # (service, name): StoredRoom
    roomArchive: dict = field(default_factory=dict)  # id: (service, name, ArchivedRoomMessage)
    lastArchiveId: int = 0
    circles: dict = field(default_factory=dict)  # (host, name): Circle (members left empty)
    circleMembers: dict = field(default_factory=dict)  # (host, circle, username): True

    def snapshot(self) -> _Tables:
        return _Tables(**{name: copy.copy(value) for name, value in vars(self).items()})


def _pending(invite: Invite, now: float) -> bool:
    """Whether C{invite} can still be used at C{now} (SQLite's C{_PENDING})."""
    return invite.status(now) == "pending"


def _usesLeft(invite: Invite) -> bool:
    """Whether a use is left that no attempt under way has reserved."""
    return invite.usesAllowed is None or invite.uses + invite.reserved < invite.usesAllowed


@implementer(IStore)
class MemoryStore(RosterObservers):
    """
    L{IStore} in memory, synchronous. While L{breakDown} is in effect every
    call fails with L{StoreUnavailable} and changes nothing, as SQLite's
    does while the database is locked by another process or the disk is full.
    """

    path = ":memory:"

    def __init__(self):
        self._tables = _Tables()
        self._fault: str | None = None
        self.observeLatency = None  # as SQLiteStore's; no call here takes any time
        RosterObservers.__init__(self)

    # -- life cycle and faults ----------------------------------------------

    def open(self, serving: bool = True) -> None:
        """Free reservations when serving, as a server start does (no attempt survives one)."""
        if serving:
            for inviteId, invite in self._tables.invites.items():
                self._tables.invites[inviteId] = replace(invite, reserved=0)
            for uploadId, upload in self._tables.uploads.items():
                if upload.state == "uploading":
                    self._tables.uploads[uploadId] = replace(upload, state="slot")

    def close(self) -> None:
        """Nothing to release: the data stays, as a file would."""

    def breakDown(self, reason: str = "database is locked") -> None:
        """Fail every call from now on with L{StoreUnavailable}(C{reason}) until L{recover}."""
        self._fault = reason

    def recover(self) -> None:
        """Answer calls again after L{breakDown}."""
        self._fault = None

    def _run(self, fn, *args):
        """Run C{fn(tables, *args)} as one transaction; fire with its result or failure."""
        if self._fault is not None:
            return defer.fail(StoreUnavailable(self._fault))
        saved = self._tables.snapshot()
        try:
            return defer.succeed(fn(self._tables, *args))
        except Exception:
            self._tables = saved
            return defer.fail()

    # -- accounts -----------------------------------------------------------

    def createAccount(self, account: NewAccount):
        self.rosterChanging(account.host, account.username)
        for owner, _item in account.rosterItems:
            self.rosterChanging(account.host, owner)
        if account.circles:
            self.rosterChanging(account.host, None)  # every member of those circles
        return self._run(self._createAccount, account)

    @classmethod
    def _createAccount(cls, t: _Tables, a: NewAccount):
        if (a.host, a.username) in t.accounts:
            raise AccountExists(a.username)
        shape = skeleton(a.username)
        if any(looksAlike(a.username, other) for (host, other), row in t.accounts.items()
               if host == a.host and row.skeleton == shape):
            raise UsernameConfusable(a.username)
        inviteId = a.inviteUse.inviteId if a.inviteUse else None
        if any(i.host == a.host and i.username == a.username and i.id != inviteId
               and _pending(i, a.now) for i in t.invites.values()):
            raise UsernameReserved(a.username)
        t.accounts[a.host, a.username] = _Account(a.now, shape)
        cls._writeCredentials(t, a.host, a.username, a.credentials)
        if a.roles:
            t.roles[a.host, a.username] = frozenset(a.roles)
        if a.inviteUse:
            cls._useInvite(t, a.inviteUse, a.host, a.username, a.now)
        for owner, item in a.rosterItems:
            if (a.host, owner) in t.accounts:
                cls._setRosterItem(t, a.host, owner, item)
        for contact, stanza in a.pendingIn:
            t.pendingIn[a.host, a.username, contact] = stanza
        for message in a.offline:
            t.lastOfflineId += 1
            t.offline[t.lastOfflineId] = (a.host, a.username, replace(message, id=t.lastOfflineId))
        for node in a.pep:
            t.pepNodes[a.host, a.username, node.node] = node.config
            t.pepItems[a.host, a.username, node.node] = tuple(node.items)
        for key, xml in a.accountXML:
            t.accountXML[a.host, a.username, key] = xml
        for circle in a.circles:
            cls._addCircleMember(t, a.host, circle, a.username)

    @staticmethod
    def _useInvite(t: _Tables, use: InviteUse, host: str, username: str, now: float):
        """Turn a reservation into a use and write the audit row."""
        invite = t.invites.get(use.inviteId)
        if (invite is None or invite.host != host or invite.revoked is not None
                or (invite.usesAllowed is not None and invite.uses >= invite.usesAllowed)):
            raise InviteUnavailable(use.inviteId)
        t.invites[invite.id] = replace(invite, uses=invite.uses + 1,
                                       reserved=max(invite.reserved - 1, 0))
        t.audit.append(_Use(use.inviteId, host, now, username, use.path, use.address))

    @staticmethod
    def _writeCredentials(t: _Tables, host, username, credentials):
        for c in credentials:
            t.credentials[host, username, c.mechanism] = c

    def accountExists(self, host, username):
        return self._run(lambda t: (host, username) in t.accounts)

    def listAccounts(self, host):
        return self._run(lambda t: sorted(u for h, u in t.accounts if h == host))

    def countAccountsWithout(self, host, mechanism):
        return self._run(lambda t: sum(1 for h, u in t.accounts
                                       if h == host and (h, u, mechanism) not in t.credentials))

    def getCredentials(self, host, username, mechanism):
        return self._run(lambda t: t.credentials.get((host, username, mechanism)))

    def setCredentials(self, host, username, credentials, inviteUse=None, now=0.0):
        def set_(t):
            if (host, username) not in t.accounts:
                return False
            self._writeCredentials(t, host, username, credentials)
            if inviteUse:
                self._useInvite(t, inviteUse, host, username, now)
            return True
        return self._run(set_)

    def deleteAccount(self, host, username, now=0.0):
        self.rosterChanging(host, None)  # its own, and every roster it was on
        def delete(t):
            if t.accounts.pop((host, username), None) is None:
                return False
            owned = (host, username)
            for table in (t.credentials, t.roster, t.pendingIn, t.devices, t.pepNodes, t.pepItems,
                          t.accountXML, t.push):
                for key in [key for key in table if key[:2] == owned]:
                    del table[key]
            t.roles.pop(owned, None)
            t.blocklist.pop(owned, None)
            t.archivePrefs.pop(owned, None)
            for key in [key for key in t.archive if key[:2] == owned]:
                del t.archive[key]
            for key in [key for key in t.circleMembers if (key[0], key[2]) == owned]:
                del t.circleMembers[key]
            for key in [key for key, row in t.offline.items() if row[:2] == owned]:
                del t.offline[key]
            bare = f"{username}@{host}"
            for i in list(t.invites.values()):
                if i.host == host and _pending(i, now) and (
                        username in (i.username, i.inviter) or i.source == bare):
                    t.invites[i.id] = replace(i, revoked=now)
            for (h, owner, contact), (item, _) in list(t.roster.items()):
                if h == host and contact == bare and item is not None:
                    self._removeRosterItem(t, host, owner, bare)
            for key in [key for key in t.pendingIn if key[0] == host and key[2] == bare]:
                del t.pendingIn[key]
            return True
        return self._run(delete)

    def getRoles(self, host, username):
        return self._run(lambda t: t.roles.get((host, username), frozenset()))

    def listRoleHolders(self, host, role):
        return self._run(lambda t: sorted(u for (h, u), roles in t.roles.items()
                                          if h == host and role in roles))

    # -- rosters ------------------------------------------------------------

    @staticmethod
    def _rows(t: _Tables, host, username):
        """The (contact, item or None for a tombstone, version) rows of a roster."""
        return [(contact, item, version) for (h, u, contact), (item, version) in t.roster.items()
                if (h, u) == (host, username)]

    @staticmethod
    def _getRoster(t: _Tables, host, username) -> Roster:
        account = t.accounts.get((host, username))
        items = sorted((item for _, item, _ in MemoryStore._rows(t, host, username) if item),
                       key=lambda item: item.contact)
        return Roster(account.rosterVersion if account else 0, tuple(items))

    def getRoster(self, host, username):
        return self._run(self._getRoster, host, username)

    def getRosterAndPendingIn(self, host, username):
        return self._run(lambda t: (self._getRoster(t, host, username),
                                    self._getPendingIn(t, host, username)))

    def getRosterChanges(self, host, username, since):
        def get(t):
            account = t.accounts.get((host, username))
            if account is None or since > account.rosterVersion or since < 0:
                return None
            rows = sorted((row for row in self._rows(t, host, username) if row[2] > since),
                          key=lambda row: row[2])
            return Roster(account.rosterVersion,
                          tuple(item for _, item, _ in rows if item),
                          tuple(contact for contact, item, _ in rows if not item),
                          tuple((contact, version) for contact, _, version in rows))
        return self._run(get)

    def getRosterItem(self, host, username, contact):
        return self._run(lambda t: t.roster.get((host, username, contact), (None, 0))[0])

    @staticmethod
    def _bumpVersion(t: _Tables, host, username) -> int:
        account = t.accounts.get((host, username))
        if account is None:
            raise KeyError(f"no account {username}@{host}")
        t.accounts[host, username] = account = replace(account,
                                                       rosterVersion=account.rosterVersion + 1)
        return account.rosterVersion

    @classmethod
    def _setRosterItem(cls, t: _Tables, host, username, item: RosterItem) -> int:
        version = cls._bumpVersion(t, host, username)
        t.roster[host, username, item.contact] = (item, version)
        return version

    def setRosterItem(self, host, username, item):
        self.rosterChanging(host, username)
        return self._run(self._setRosterItem, host, username, item)

    @classmethod
    def _removeRosterItem(cls, t: _Tables, host, username, contact) -> int | None:
        """Turn an item into a tombstone, so versioned gets report its removal."""
        if t.roster.get((host, username, contact), (None, 0))[0] is None:
            return None
        version = cls._bumpVersion(t, host, username)
        t.roster[host, username, contact] = (None, version)
        return version

    def removeRosterItem(self, host, username, contact):
        self.rosterChanging(host, username)
        return self._run(self._removeRosterItem, host, username, contact)

    @staticmethod
    def _getPendingIn(t: _Tables, host, username) -> list:
        return sorted((contact, stanza) for (h, u, contact), stanza in t.pendingIn.items()
                      if (h, u) == (host, username))

    def getPendingIn(self, host, username):
        return self._run(self._getPendingIn, host, username)

    def setPendingIn(self, host, username, contact, stanza):
        def set_(t):
            if (host, username) in t.accounts:
                t.pendingIn[host, username, contact] = stanza
        return self._run(set_)

    def removePendingIn(self, host, username, contact):
        return self._run(lambda t: t.pendingIn.pop((host, username, contact), None) is not None)

    # -- offline messages ---------------------------------------------------

    @staticmethod
    def _offline(t: _Tables, host, username):
        """The user's kept messages, oldest first, each with its id."""
        return [message for (h, u, message) in t.offline.values() if (h, u) == (host, username)]

    def storeOffline(self, host, username, message: OfflineMessage, cap):
        def store(t):
            if (host, username) not in t.accounts:
                raise KeyError(f"no account {username}@{host}")  # SQLite's foreign key
            if len(self._offline(t, host, username)) >= cap:
                return False
            t.lastOfflineId += 1
            t.offline[t.lastOfflineId] = (host, username, replace(message, id=t.lastOfflineId))
            return True
        return self._run(store)

    def getOffline(self, host, username, after=0, limit=20):
        return self._run(lambda t: [m for m in self._offline(t, host, username)
                                    if m.id > after][:limit])

    def removeOffline(self, host, username, upTo):
        def remove(t):
            gone = [m.id for m in self._offline(t, host, username) if m.id <= upTo]
            for messageId in gone:
                del t.offline[messageId]
            return len(gone)
        return self._run(remove)

    # -- message archives ---------------------------------------------------

    @staticmethod
    def _archive(t: _Tables, host, username) -> list[ArchivedMessage]:
        """The user's archive, oldest first."""
        return sorted((m for (h, u, _), m in t.archive.items() if (h, u) == (host, username)),
                      key=lambda m: m.id)

    def appendArchive(self, host, entries, maxItems):
        def append(t):
            added: dict[str, int] = {}
            taken = []
            for username, message, rosterOnly in entries:
                if (host, username, message.id) in t.archive:
                    taken.append((username, message, rosterOnly))
                    continue
                if (host, username) not in t.accounts:
                    continue
                item = t.roster.get((host, username, message.peer), (None,))[0]
                if rosterOnly and item is None:
                    continue
                t.archive[host, username, message.id] = message
                added[username] = added.get(username, 0) + 1
            for username in added:
                for old in self._archive(t, host, username)[:-maxItems or None]:
                    del t.archive[host, username, old.id]
            return sum(added.values()), taken
        return self._run(append)

    def queryArchive(self, host, username, query: ArchiveQuery):
        def read(t):
            archive = self._archive(t, host, username)
            for cursor in (query.after, query.before):
                if cursor is not None and cursor not in {m.id for m in archive}:
                    raise ArchiveItemNotFound(cursor)
            passing = [m for m in archive
                       if query.peer in (None, m.peer) and query.resource in (None, m.resource)
                       and (query.low is None or m.id > query.low)
                       and (query.high is None or m.id < query.high)
                       and (query.ids is None or m.id in query.ids)]
            page = [m for m in passing if (query.after is None or m.id > query.after)
                    and (query.before is None or m.id < query.before)]
            if query.last:
                chosen = page[max(0, len(page) - query.offset - query.limit):len(page) - query.offset]
                complete = len(page) - query.offset <= query.limit
            else:
                chosen = page[query.offset:query.offset + query.limit]
                complete = len(page) - query.offset <= query.limit
            index = passing.index(chosen[0]) if chosen else query.offset
            if query.last:
                index = None
            return ArchivePage(tuple(chosen), len(passing), index, complete)
        return self._run(read)

    def lastArchiveId(self, host):
        return self._run(lambda t: max((key[2] for key in t.archive if key[0] == host), default=0))

    def sweepArchive(self, host, before, limit):
        def sweep(t):
            old = sorted((key for key in t.archive if key[0] == host and key[2] < before),
                         key=lambda key: key[2])[:limit]
            for key in old:
                del t.archive[key]
            return len(old)
        return self._run(sweep)

    def getArchivePrefs(self, host):
        return self._run(lambda t: {u: prefs for (h, u), prefs in t.archivePrefs.items() if h == host})

    def setArchivePrefs(self, host, username, prefs: ArchivePrefs):
        def set_(t):
            if (host, username) not in t.accounts:
                raise KeyError(f"no account {username}@{host}")  # SQLite's foreign key
            t.archivePrefs[host, username] = prefs
        return self._run(set_)

    # -- blocklists ---------------------------------------------------------

    def getBlocklist(self, host, username):
        return self._run(lambda t: sorted(t.blocklist.get((host, username), ())))

    def getBlocklists(self, host):
        return self._run(lambda t: {u: sorted(items) for (h, u), items in sorted(t.blocklist.items())
                                    if h == host and items})

    def block(self, host, username, items):
        def block(t):
            if (host, username) not in t.accounts:
                raise KeyError(f"no account {username}@{host}")  # SQLite's foreign key
            blocked = t.blocklist.get((host, username), frozenset())
            t.blocklist[host, username] = blocked | set(items)
            return sorted(set(items) - blocked)
        return self._run(block)

    def unblock(self, host, username, items=None):
        def unblock(t):
            blocked = t.blocklist.get((host, username), frozenset())
            gone = blocked if items is None else blocked & set(items)
            t.blocklist[host, username] = blocked - gone
            return sorted(gone)
        return self._run(unblock)

    # -- push registrations ---------------------------------------------------

    def getPushRegistrations(self, host, username):
        return self._run(lambda t: [registration for key, registration in sorted(t.push.items())
                                    if key[:2] == (host, username)])

    def setPushRegistration(self, host, username, registration):
        def set_(t):
            if (host, username) not in t.accounts:
                raise KeyError(f"no account {username}@{host}")  # SQLite's foreign key
            t.push[host, username, registration.service, registration.node] = registration
        return self._run(set_)

    def removePushRegistrations(self, host, username, service, node=None):
        def remove(t):
            gone = [key for key in t.push if key[:3] == (host, username, service)
                    and node in (None, key[3])]
            for key in gone:
                del t.push[key]
            return len(gone)
        return self._run(remove)

    # -- devices and FAST tokens ----------------------------------------------

    def recordDevices(self, host, devices, keep):
        def record(t):
            for username, device in devices:
                if (host, username) not in t.accounts:
                    continue
                key = (host, username, device.id)
                old = t.devices.get(key)
                t.devices[key] = device if old is None else replace(
                    old, software=device.software, name=device.name, lastLogin=device.lastLogin)
            for username in {username for username, _ in devices}:
                mine = sorted((d for k, d in t.devices.items() if k[:2] == (host, username)),
                              key=lambda d: (-d.lastLogin, d.id))
                for gone in mine[keep:]:
                    del t.devices[host, username, gone.id]
        return self._run(record)

    def getDevices(self, host, username):
        return self._run(lambda t: sorted(
            (d for k, d in t.devices.items() if k[:2] == (host, username)),
            key=lambda d: (-d.lastLogin, d.id)))

    def getDevice(self, host, username, deviceId):
        return self._run(lambda t: t.devices.get((host, username, deviceId)))

    def getTokenLogin(self, host, username, deviceId, mechanism):
        return self._run(lambda t: (t.devices.get((host, username, deviceId)),
                                    t.credentials.get((host, username, mechanism))))

    def issueToken(self, host, username, deviceId, token):
        def issue(t):
            if (host, username) not in t.accounts:
                raise KeyError(f"no account {username}@{host}")  # SQLite's foreign key
            device = t.devices.get((host, username, deviceId)) or Device(deviceId, lastLogin=token.issued)
            t.devices[host, username, deviceId] = replace(device, pending=token)
        return self._run(issue)

    def useToken(self, host, username, deviceId, salt, count):
        def use(t):
            device = t.devices.get((host, username, deviceId))
            if device is None:
                return False
            if device.pending is not None and device.pending.salt == salt:
                t.devices[host, username, deviceId] = replace(
                    device, current=replace(device.pending, count=count or 0), pending=None)
                return True
            current = device.current
            if current is None or current.salt != salt or (count is not None and count <= current.count):
                return False
            t.devices[host, username, deviceId] = replace(
                device, current=replace(current, count=max(current.count, count or 0)))
            return True
        return self._run(use)

    def revokeTokens(self, host, username, deviceId=None):
        def revoke(t):
            keys = [k for k, d in t.devices.items() if k[:2] == (host, username)
                    and (deviceId is None or k[2] == deviceId)]
            for key in keys:
                t.devices[key] = replace(t.devices[key], current=None, pending=None)
            return len(keys)
        return self._run(revoke)

    def forgetDevice(self, host, username, deviceId):
        return self._run(lambda t: t.devices.pop((host, username, deviceId), None) is not None)
    # -- PEP and account XML --------------------------------------------------

    def getPep(self, host, username):
        return self._run(lambda t: [PepNode(key[2], config, t.pepItems.get(key, ()))
                                    for key, config in sorted(t.pepNodes.items())
                                    if key[:2] == (host, username)])

    def setPepNode(self, host, username, node, config):
        def set_(t):
            self._owned(t, host, username)
            t.pepNodes[host, username, node] = config
        return self._run(set_)

    def deletePepNode(self, host, username, node):
        def delete(t):
            t.pepItems.pop((host, username, node), None)
            return t.pepNodes.pop((host, username, node), None) is not None
        return self._run(delete)

    def publishPepItem(self, host, username, node, config, itemId, xml, maxItems):
        def publish(t):
            self._owned(t, host, username)
            key = (host, username, node)
            t.pepNodes.setdefault(key, config)
            items = [item for item in t.pepItems.get(key, ()) if item[0] != itemId] + [(itemId, xml)]
            cut = max(0, len(items) - maxItems)
            t.pepItems[key] = tuple(items[cut:])
            return [item[0] for item in reversed(items[:cut])]
        return self._run(publish)

    def retractPepItem(self, host, username, node, itemId):
        def retract(t):
            items = t.pepItems.get((host, username, node), ())
            t.pepItems[host, username, node] = tuple(item for item in items if item[0] != itemId)
            return len(items) != len(t.pepItems[host, username, node])
        return self._run(retract)

    def purgePepNode(self, host, username, node):
        def purge(t):
            return len(t.pepItems.pop((host, username, node), ()))
        return self._run(purge)

    def getAccountXML(self, host, username, key):
        return self._run(lambda t: t.accountXML.get((host, username, key)))

    def setAccountXML(self, host, username, key, xml):
        def set_(t):
            self._owned(t, host, username)
            if xml is None:
                t.accountXML.pop((host, username, key), None)
            else:
                t.accountXML[host, username, key] = xml
        return self._run(set_)

    @staticmethod
    def _owned(t, host, username) -> None:
        """SQLite's foreign key: rows belong to an account that exists."""
        if (host, username) not in t.accounts:
            raise KeyError(f"no account {username}@{host}")

    # -- invites ------------------------------------------------------------

    def createInvite(self, invite: Invite, tokenHash: bytes):
        def create(t):
            if invite.id in t.invites or tokenHash in t.tokens:
                raise ValueError(f"invite {invite.id} exists")  # SQLite's unique constraints
            t.invites[invite.id] = replace(invite, uses=0, reserved=0, revoked=None, reminded=None,
                                           uses_log=())
            t.tokens[tokenHash] = invite.id
        return self._run(create)

    @staticmethod
    def _getInvite(t: _Tables, inviteId):
        invite = t.invites.get(inviteId)
        if invite is None:
            return None
        return replace(invite, uses_log=tuple(
            {"used_at": u.usedAt, "username": u.username, "path": u.path, "address": u.address}
            for u in t.audit if u.inviteId == inviteId))

    def getInvite(self, inviteId):
        return self._run(self._getInvite, inviteId)

    def findInvite(self, tokenHash):
        return self._run(lambda t: self._getInvite(t, t.tokens.get(tokenHash)))

    def listInvites(self, host, inviter=None):
        return self._run(lambda t: sorted(
            (i for i in t.invites.values()
             if i.host == host and (inviter is None or i.inviter == inviter)),
            key=lambda i: (-i.created, i.id)))

    def reserveInvite(self, tokenHash, host, now):
        def reserve(t):
            invite = t.invites.get(t.tokens.get(tokenHash))
            if (invite is None or invite.host != host or invite.revoked is not None
                    or invite.expires <= now or not _usesLeft(invite)):
                return None
            t.invites[invite.id] = replace(invite, reserved=invite.reserved + 1)
            return self._getInvite(t, invite.id)
        return self._run(reserve)

    def releaseInvite(self, inviteId):
        def release(t):
            invite = t.invites.get(inviteId)
            if invite is not None and invite.reserved > 0:
                t.invites[inviteId] = replace(invite, reserved=invite.reserved - 1)
        return self._run(release)

    def consumeInvite(self, use: InviteUse, now: float, rosterItems=(), usedBy=""):
        for username, _item in rosterItems:
            self.rosterChanging(None, username)  # the invite's host is read in the transaction
        def consume(t):
            invite = t.invites.get(use.inviteId)
            if invite is None or invite.expires <= now or not _usesLeft(invite):
                raise InviteUnavailable(use.inviteId)
            # A use without a prior reservation: take it directly.
            t.invites[invite.id] = replace(invite, reserved=invite.reserved + 1)
            owner = usedBy or (rosterItems[0][0] if rosterItems else "")
            self._useInvite(t, use, invite.host, owner, now)
            for username, item in rosterItems:
                self._setRosterItem(t, invite.host, username, item)
        return self._run(consume)

    def updateInvite(self, inviteId, **changes):
        unknown = set(changes) - {"expires", "usesAllowed", "note", "reminded"}
        if unknown:
            raise TypeError(f"cannot change {sorted(unknown)}")

        def update(t):
            if inviteId in t.invites:
                t.invites[inviteId] = replace(t.invites[inviteId], **changes)
            return self._getInvite(t, inviteId)
        return self._run(update)

    def revokeInvite(self, inviteId, now):
        def revoke(t):
            invite = t.invites.get(inviteId)
            if invite is None or invite.revoked is not None:
                return False
            t.invites[inviteId] = replace(invite, revoked=now)
            return True
        return self._run(revoke)

    def sweepInvites(self, now):
        def sweep(t):
            gone = [i for i in t.invites.values() if i.reserved == 0 and i.status(now) != "pending"]
            for invite in gone:
                del t.invites[invite.id]
            for tokenHash in [h for h, inviteId in t.tokens.items() if inviteId not in t.invites]:
                del t.tokens[tokenHash]
            return len(gone)
        return self._run(sweep)

    def accountInvitedAt(self, host, username):
        def invitedAt(t):
            account = t.accounts.get((host, username))
            stamps = [u.usedAt for u in t.audit if (u.host, u.username) == (host, username)
                      and account is not None and u.usedAt == account.created]
            return max(stamps, default=None)
        return self._run(invitedAt)

    # -- API keys -----------------------------------------------------------

    def createApiKey(self, keyId, secretHash, host, name, now):
        def create(t):
            if keyId in t.apiKeys:
                raise ValueError(f"API key {keyId} exists")  # SQLite's primary key
            t.apiKeys[keyId] = (secretHash, host, name, now)
        return self._run(create)

    def getApiKey(self, keyId):
        return self._run(lambda t: t.apiKeys.get(keyId))

    def listApiKeys(self):
        return self._run(lambda t: sorted(((keyId, *row[1:]) for keyId, row in t.apiKeys.items()),
                                          key=lambda row: row[3]))

    def deleteApiKey(self, keyId):
        return self._run(lambda t: t.apiKeys.pop(keyId, None) is not None)

    # -- uploads ------------------------------------------------------------

    def createUpload(self, upload: Upload, quota: int, daily: int):
        def create(t):
            owned = [u for u in t.uploads.values()
                     if (u.host, u.username) == (upload.host, upload.username)]
            if quota and sum(u.size for u in owned) + upload.size > quota:
                raise QuotaExceeded("quota")
            if daily and sum(u.size for u in owned
                             if u.created > upload.created - 86400) + upload.size > daily:
                raise QuotaExceeded("daily")
            if upload.id in t.uploads:
                raise KeyError(upload.id)
            t.uploads[upload.id] = upload
        return self._run(create)

    def getUpload(self, uploadId):
        return self._run(lambda t: t.uploads.get(uploadId))

    def _changeUpload(self, uploadId, fromState: str, condition=lambda upload: True, **changes):
        """Change an upload in state C{fromState} that meets C{condition}; fire with True if one did."""
        def change(t):
            upload = t.uploads.get(uploadId)
            if upload is None or upload.state != fromState or not condition(upload):
                return False
            t.uploads[uploadId] = replace(upload, **changes)
            return True
        return self._run(change)

    def beginUpload(self, uploadId, now):
        return self._changeUpload(uploadId, "slot", lambda upload: upload.expires > now,
                                  state="uploading")

    def finishUpload(self, uploadId, expires):
        return self._changeUpload(uploadId, "uploading", state="stored", expires=expires)

    def abortUpload(self, uploadId):
        return self._changeUpload(uploadId, "uploading", state="slot")

    def expiredUploads(self, host, now, limit):
        return self._run(lambda t: sorted(
            (u for u in t.uploads.values()
             if u.host == host and u.expires <= now and u.state != "uploading"),
            key=lambda u: u.expires)[:limit])

    def deleteUploads(self, uploadIds):
        return self._run(lambda t: sum(t.uploads.pop(uploadId, None) is not None
                                       for uploadId in uploadIds))

    def listUploads(self, host, username):
        return self._run(lambda t: sorted(
            (u for u in t.uploads.values() if (u.host, u.username) == (host, username)),
            key=lambda u: (u.created, u.id)))

    def uploadUsage(self, host):
        def usage(t):
            owners: dict[str, list] = {}
            for upload in t.uploads.values():
                if upload.host == host:
                    owners.setdefault(upload.username, []).append(upload)
            return [UploadUsage(name, sum(u.state == "stored" for u in owned),
                                sum(u.size for u in owned if u.state == "stored"),
                                sum(u.state != "stored" for u in owned))
                    for name, owned in sorted(owners.items())]
        return self._run(usage)
    # -- rooms --------------------------------------------------------------

    def saveRoom(self, room: StoredRoom):
        def save(t):
            old = t.rooms.get((room.service, room.name))
            created = old.created if old is not None else room.created
            t.rooms[room.service, room.name] = replace(room, created=created,
                                                       config=copy.deepcopy(room.config),
                                                       affiliations=dict(room.affiliations))
        return self._run(save)

    def listRooms(self, service):
        return self._run(lambda t: [
            replace(room, config=copy.deepcopy(room.config), affiliations=dict(room.affiliations))
            for (s, _), room in sorted(t.rooms.items()) if s == service])

    def deleteRoom(self, service, name):
        def delete(t):
            if t.rooms.pop((service, name), None) is None:
                return False
            for key in [key for key, row in t.roomArchive.items() if row[:2] == (service, name)]:
                del t.roomArchive[key]
            return True
        return self._run(delete)

    def archiveRoomMessage(self, service, name, message, cap):
        def archive(t):
            if (service, name) not in t.rooms:
                raise KeyError(f"no room {name} at {service}")  # SQLite's foreign key
            if any(row[2].id == message.id for row in t.roomArchive.values()):
                raise ValueError(f"message {message.id} is archived")  # SQLite's unique key
            t.lastArchiveId += 1
            t.roomArchive[t.lastArchiveId] = (service, name, message)
            if cap:
                mine = [key for key, row in t.roomArchive.items() if row[:2] == (service, name)]
                for key in mine[:-cap]:
                    del t.roomArchive[key]
        return self._run(archive)

    def queryRoomArchive(self, service, name, query):
        def run(t):
            rows = [(key, row[2]) for key, row in sorted(t.roomArchive.items())
                    if row[:2] == (service, name)]
            position = {message.id: key for key, message in rows}

            def keyOf(stanzaId):
                if stanzaId not in position:
                    raise ArchiveItemNotFound(stanzaId)
                return position[stanzaId]
            low = keyOf(query.afterId) if query.afterId is not None else None
            high = keyOf(query.beforeId) if query.beforeId is not None else None
            chosen = [message for key, message in rows
                      if (low is None or key > low) and (high is None or key < high)
                      and (query.with_ is None or message.sender == query.with_)
                      and (query.start is None or message.stamp >= query.start)
                      and (query.end is None or message.stamp <= query.end)
                      and (not query.ids or message.id in query.ids)]
            if query.last:
                return chosen[-query.max:] if query.max else [], len(chosen) <= query.max
            return chosen[:query.max], len(chosen) <= query.max
        return self._run(run)

    def retractRoomMessage(self, service, name, stanzaId, tombstone):
        def retract(t):
            for key, (s, n, message) in t.roomArchive.items():
                if (s, n) == (service, name) and message.id == stanzaId:
                    t.roomArchive[key] = (s, n, replace(message, stanza=tombstone))
                    return message
            return None
        return self._run(retract)

    # -- circles ------------------------------------------------------------

    def createCircle(self, circle: Circle):
        def create(t):
            if (circle.host, circle.name) in t.circles:
                raise CircleExists(circle.name)
            t.circles[circle.host, circle.name] = replace(circle, members=())
        return self._run(create)

    @staticmethod
    def _getCircle(t: _Tables, host, name) -> Circle | None:
        circle = t.circles.get((host, name))
        if circle is None:
            return None
        return replace(circle, members=tuple(sorted(
            u for (h, c, u) in t.circleMembers if (h, c) == (host, name))))

    def getCircle(self, host, name):
        return self._run(self._getCircle, host, name)

    def listCircles(self, host):
        return self._run(lambda t: [self._getCircle(t, h, name)
                                    for (h, name) in sorted(t.circles) if h == host])

    @classmethod
    def _leave(cls, t: _Tables, host, name, username, others) -> None:
        """Undo what circle C{name} gave C{username} and each of C{others} on their rosters."""
        for owner, contact in [(username, o) for o in others] + [(o, username) for o in others]:
            bare = f"{contact}@{host}"
            changed = leftCircle(t.roster.get((host, owner, bare), (None, 0))[0], name)
            if changed is None:
                cls._removeRosterItem(t, host, owner, bare)
            elif changed is not False:
                cls._setRosterItem(t, host, owner, changed)

    def deleteCircle(self, host, name):
        self.rosterChanging(host, None)  # every member's roster loses the others
        def delete(t):
            circle = self._getCircle(t, host, name)
            if circle is None:
                return None
            members = list(circle.members)
            while members:
                self._leave(t, host, name, members.pop(), members)
            del t.circles[host, name]
            for member in circle.members:
                del t.circleMembers[host, name, member]
            return circle
        return self._run(delete)

    @classmethod
    def _addCircleMember(cls, t: _Tables, host, name, username):
        circle = cls._getCircle(t, host, name)
        if circle is None or (host, username) not in t.accounts:
            return None
        others = [member for member in circle.members if member != username]
        t.circleMembers[host, name, username] = True
        for owner, contact in [(username, o) for o in others] + [(o, username) for o in others]:
            bare = f"{contact}@{host}"
            item = t.roster.get((host, owner, bare), (None, 0))[0]
            cls._setRosterItem(t, host, owner, joinedCircle(item, bare, name))
        return others

    def addCircleMember(self, host, name, username):
        self.rosterChanging(host, None)  # the newcomer's and every member's
        return self._run(self._addCircleMember, host, name, username)

    def removeCircleMember(self, host, name, username):
        self.rosterChanging(host, None)  # the leaver's and every member's
        def remove(t):
            circle = self._getCircle(t, host, name)
            if circle is None or username not in circle.members:
                return None
            others = [member for member in circle.members if member != username]
            self._leave(t, host, name, username, others)
            del t.circleMembers[host, name, username]
            return others
        return self._run(remove)
