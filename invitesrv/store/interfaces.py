"""
What the server needs from persistent storage, as zope.interface declarations.

Every method returns a Deferred, so that a networked backend (PostgreSQL, for
several nodes) fits without touching the modules. Values cross this boundary
as the small frozen dataclasses below, never as rows or cursors.
C{tests/store_behaviour.py} is the behaviour suite every backend must pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.words.protocols.jabber import error
from zope.interface import Attribute, Interface

SUBSCRIPTIONS = ("none", "to", "from", "both")


class StoreError(Exception):
    """Base class of the store's expected failures."""


class AccountExists(StoreError):
    """The username is taken on that host."""


class UsernameReserved(StoreError):
    """A pending invite holds that username for somebody else."""


class UsernameConfusable(StoreError):
    """
    The username is a mixed-script or whole-script look-alike of an existing
    account's (L{invitesrv.usernames.looksAlike}).
    """


class InviteUnavailable(StoreError):
    """The invite is gone, used up, revoked or expired."""


class StoreUnavailable(StoreError, error.StanzaError):
    """
    The database cannot be used now (locked by another process, disk full);
    try later. It is also the stanza error C{wait}/C{resource-constraint}, so
    a handler that lets it through tells the client to retry, rather than
    C{internal-server-error} with a traceback per stanza in the log: the
    store logs the episode once. C{reason} is the database's own message.
    """

    def __init__(self, reason: str = ""):
        error.StanzaError.__init__(self, "resource-constraint", "wait",
                                   "The server cannot use its storage now; try again later")
        self.reason = reason

    def __str__(self) -> str:
        return self.reason or self.text


@dataclass(frozen=True)
class Credentials:
    """The SCRAM secrets of one mechanism: never the password itself."""

    mechanism: str  # "SCRAM-SHA-1" or "SCRAM-SHA-256"
    salt: bytes
    iterations: int
    storedKey: bytes
    serverKey: bytes


@dataclass(frozen=True)
class RosterItem:
    """One contact on a user's roster (RFC 6121 section 2.1.2)."""

    contact: str  # bare JID
    name: str | None = None
    subscription: str = "none"
    ask: bool = False  # pending-out: we asked the contact for a subscription
    approved: bool = False  # pre-approved: the contact's request will be granted at once
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Roster:
    """A whole roster, or the changes since a version when C{removed} says so."""

    version: int
    items: tuple[RosterItem, ...]
    removed: tuple[str, ...] = ()
    # A change set also lists (contact, version) of every change, oldest first,
    # so that each interim roster push carries the version of its own change.
    changes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class OfflineMessage:
    stamp: float
    stanza: str  # serialised XML
    id: int = field(default=0, compare=False)  # the store's, increasing; 0 until stored


@dataclass(frozen=True)
class ArchivedMessage:
    """One message of a user's archive (XEP-0313)."""

    id: int  # microseconds since the epoch when archived, increasing: also its time
    peer: str  # the bare JID of the other party
    stanza: str  # serialised XML
    resource: str = ""  # the other party's resource


@dataclass(frozen=True)
class ArchiveQuery:
    """
    Which messages of one archive a query asks for: a filter (C{peer} and
    C{resource}, the exclusive id bounds C{low} and C{high}, or C{ids}) and a
    page of what passes it (after the exclusive cursor C{after} and before
    C{before}, skipping C{offset}; the newest C{limit} with C{last}, else the
    oldest).
    """

    peer: str | None = None
    resource: str | None = None
    low: int | None = None
    high: int | None = None
    ids: tuple[int, ...] | None = None
    after: int | None = None
    before: int | None = None
    offset: int = 0
    limit: int = 20
    last: bool = False


@dataclass(frozen=True)
class ArchivePage:
    """A page of an archive query, oldest first."""

    messages: tuple[ArchivedMessage, ...]
    count: int  # messages that pass the filter
    # How many of those come before the first of the page; None going backward
    # (C{last}), where clients do not need it: slixmpp's RSM iterator stops
    # paging backward at a page whose index plus its length is the count.
    index: int | None
    complete: bool  # no more beyond the page in the query's direction


@dataclass(frozen=True)
class ArchivePrefs:
    """A user's XEP-0441 preferences: the default policy and the JIDs always or never archived."""

    policy: str  # "always", "never" or "roster"
    always: tuple[str, ...] = ()
    never: tuple[str, ...] = ()


@dataclass(frozen=True)
class PushRegistration:
    """An XEP-0357 app server a user's device asked to be woken through."""

    service: str  # the app server's JID
    node: str
    options: str = ""  # serialised XML: the publish-options form, if the client gave one


@dataclass(frozen=True)
class InviteUse:
    """One registration or reset done with an invite, for the audit."""

    inviteId: str
    path: str  # "ibr", "web", "api", "cli", "contact"
    address: str = ""


@dataclass(frozen=True)
class NewAccount:
    """
    Everything an account creation writes, applied in one transaction: the
    account, its credentials and roles, the invite use (consumption and audit),
    roster items on both sides, and (for an account imported from another
    server) its pending subscription requests, offline messages, PEP nodes
    with their items, and XML kept by key (the vCard).
    """

    host: str
    username: str
    credentials: tuple[Credentials, ...]
    roles: tuple[str, ...] = ()
    inviteUse: InviteUse | None = None
    rosterItems: tuple[tuple[str, RosterItem], ...] = ()  # (owner username, item)
    now: float = 0.0
    pendingIn: tuple[tuple[str, str], ...] = ()  # (contact, subscribe stanza XML)
    offline: tuple[OfflineMessage, ...] = ()
    pep: tuple[PepNode, ...] = ()
    accountXML: tuple[tuple[str, str], ...] = ()  # (key, XML), as L{IPep.setAccountXML} keeps it
    circles: tuple[str, ...] = ()  # circles of the host it joins (those that exist)


@dataclass(frozen=True)
class Invite:
    """An invite as stored; the secret token itself is never stored."""

    id: str
    host: str
    kind: str  # "account", "contact" or "reset"
    created: float
    expires: float
    username: str | None = None
    inviter: str | None = None
    allowRegistration: bool = True
    usesAllowed: int | None = 1  # None: unlimited
    uses: int = 0
    reserved: int = 0
    revoked: float | None = None
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    note: str = ""
    source: str = ""
    welcome: str = ""  # the creator's words to whoever accepts it
    reminded: float | None = None  # when the creator was told it expires unused
    uses_log: tuple[dict, ...] = field(default=(), compare=False)
    room: str = ""  # contact invites: a room of the inviter's the redeemer is invited into

    def status(self, now: float) -> str:
        """C{pending}, C{used}, C{expired} or C{revoked}."""
        if self.revoked is not None:
            return "revoked"
        if self.usesAllowed is not None and self.uses >= self.usesAllowed:
            return "used"
        if now >= self.expires:
            return "expired"
        return "pending"


class IAccounts(Interface):
    """Accounts and their SCRAM credentials."""

    def createAccount(account: NewAccount):
        """
        Create an account with everything in L{NewAccount}, in one transaction.
        Fails with L{AccountExists}, L{UsernameConfusable} (a look-alike of
        an account of the host), L{UsernameReserved} (a pending invite other
        than the one used, reset invites included, names that username) or
        L{InviteUnavailable}, and then writes nothing.
        """

    def accountExists(host: str, username: str):
        """Fire with a bool."""

    def listAccounts(host: str):
        """Fire with the sorted usernames of C{host}."""

    def getCredentials(host: str, username: str, mechanism: str):
        """Fire with L{Credentials} or None."""

    def countAccountsWithout(host: str, mechanism: str):
        """
        Fire with how many accounts of C{host} have no credentials for
        C{mechanism} (accounts imported with SCRAM-SHA-1 keys only).
        """

    def setCredentials(host: str, username: str, credentials, inviteUse=None, now: float = 0.0):
        """
        Replace the credentials of an existing account, consuming
        C{inviteUse} (a reset invite) in the same transaction. Fire with
        True, or False when there is no such account.
        """

    def deleteAccount(host: str, username: str, now: float = 0.0):
        """
        Delete the account and everything it owns, and revoke (at C{now}),
        in the same transaction, every pending invite it made or that names
        it: its reset invites, invites bound to its username, its contact
        invites, invites it created (C{source} its bare JID). Nothing of
        the account then works for whoever takes the name next. Fire with a
        bool.
        """

    def getRoles(host: str, username: str):
        """Fire with the account's roles as a frozenset."""

    def listRoleHolders(host: str, role: str):
        """Fire with the sorted usernames of C{host} that hold C{role}."""


class IRosters(Interface):
    """Rosters, with versions for XEP-0237, and pending subscription requests."""

    rosterObservers = Attribute(
        "Callables run with (host, username) in the caller's thread when a call that will"
        " change that user's roster is made (username None: any user of the host; host"
        " None: the host is not known before the transaction), before the change is"
        " written; a roster cache drops its copy. Reads made after the call see the change.")

    def getRoster(host: str, username: str):
        """Fire with the whole L{Roster}."""

    def getRosterChanges(host: str, username: str, since: int):
        """Fire with a L{Roster} of changes since C{since}, or None if unknown."""

    def getRosterItem(host: str, username: str, contact: str):
        """Fire with a L{RosterItem} or None."""

    def setRosterItem(host: str, username: str, item: RosterItem):
        """Add or replace an item; fire with the new roster version."""

    def removeRosterItem(host: str, username: str, contact: str):
        """Remove an item; fire with the new version, or None if it was absent."""

    def getPendingIn(host: str, username: str):
        """Fire with a list of (contact, stanza XML) subscription requests."""

    def getRosterAndPendingIn(host: str, username: str):
        """
        What a session's initial presence reads, at once: fire with the
        whole L{Roster} and the list L{getPendingIn} gives.
        """

    def setPendingIn(host: str, username: str, contact: str, stanza: str):
        """Remember an inbound subscription request until it is answered."""

    def removePendingIn(host: str, username: str, contact: str):
        """Forget an inbound request; fire with True if there was one."""


class IOfflineMessages(Interface):
    """Messages kept for users who are offline (XEP-0160)."""

    def storeOffline(host: str, username: str, message: OfflineMessage, cap: int):
        """Keep a message; fire with False when the user already has C{cap}."""

    def getOffline(host: str, username: str, after: int = 0, limit: int = 20):
        """
        Fire with up to C{limit} of the user's messages stored after the one
        with id C{after}, oldest first, each with its id. They stay stored:
        a message is forgotten only once delivered (L{removeOffline}).
        """

    def removeOffline(host: str, username: str, upTo: int):
        """Forget the user's messages up to and including id C{upTo}; fire with how many."""


class ArchiveItemNotFound(StoreError):
    """A query names, as a cursor or a bound, an id that is not in the archive."""


class IArchives(Interface):
    """
    Each account's message archive (XEP-0313) and its preferences
    (XEP-0441); they go with the account.
    """

    def appendArchive(host: str, entries, maxItems: int):
        """
        Archive C{entries}, (username, L{ArchivedMessage}, rosterOnly)
        triples, in one transaction; an entry for an account that does not
        exist, or with C{rosterOnly} whose peer is not on the account's
        roster, is skipped. An archive over C{maxItems} loses its oldest
        messages. Fire with how many were archived, and the list of the
        entries not archived because the account's archive already holds
        their ids: the caller archives them again under new ids (two nodes
        of a cluster must never give one id twice, but a message would
        rather change its id than be lost).
        """

    def queryArchive(host: str, username: str, query: ArchiveQuery):
        """
        Fire with the L{ArchivePage} C{query} asks for; fail with
        L{ArchiveItemNotFound} when C{query.after} or C{query.before} is not
        an id of the archive.
        """

    def lastArchiveId(host: str):
        """Fire with the highest id archived on C{host} (0 for none)."""

    def sweepArchive(host: str, before: int, limit: int):
        """
        Delete at most C{limit} of the oldest messages of C{host} with ids
        below C{before}; fire with how many.
        """

    def getArchivePrefs(host: str):
        """Fire with a dict: each account of C{host} that set preferences, its L{ArchivePrefs}."""

    def setArchivePrefs(host: str, username: str, prefs: ArchivePrefs):
        """Keep the user's preferences."""


class IBlocklists(Interface):
    """
    Each account's XEP-0191 blocklist: JIDs (domain, bare or full, as the
    client gave them after stringprep) the user blocks. It goes with the account.
    """

    def getBlocklist(host: str, username: str):
        """Fire with the user's blocked JIDs, sorted."""

    def getBlocklists(host: str):
        """Fire with a dict: each account of C{host} that blocks anyone, its blocked JIDs."""

    def block(host: str, username: str, items):
        """Add C{items}; fire with those that were not blocked yet, sorted."""

    def unblock(host: str, username: str, items=None):
        """Remove C{items} (all when None); fire with those that were blocked, sorted."""


class IPushRegistrations(Interface):
    """
    Each account's XEP-0357 push registrations, one per (app server, node).
    They go with the account.
    """

    def getPushRegistrations(host: str, username: str):
        """Fire with the user's L{PushRegistration}s, by service and node."""

    def setPushRegistration(host: str, username: str, registration: PushRegistration):
        """Add or replace (same service and node) a registration."""

    def removePushRegistrations(host: str, username: str, service: str, node: str | None = None):
        """Remove the registration (all of C{service}'s when C{node} is None); fire with how many."""


@dataclass(frozen=True)
class FastToken:
    """
    A XEP-0484 token of one device: never the token, only the salt it is
    derived from (with the installation's secret), its mechanism and life.
    C{count}: the highest use count a client gave for it (replay protection).
    """

    mechanism: str
    salt: bytes
    issued: float
    expires: float
    count: int = 0


@dataclass(frozen=True)
class Device:
    """
    A device (a SASL2 user-agent id) an account logged in from, with its
    FAST tokens: C{current}, and C{pending} (issued, not used yet).
    """

    id: str
    software: str = ""
    name: str = ""
    lastLogin: float = 0.0
    current: FastToken | None = None
    pending: FastToken | None = None


class IDevices(Interface):
    """The devices of each account (XEP-0388 user agents) and their FAST tokens."""

    def recordDevices(host: str, devices, keep: int):
        """
        For each C{(username, device)} of C{devices}: add or update the
        device's software, name and last login (its tokens stay), unless the
        account is gone; forget the account's least recently used devices
        beyond C{keep}.
        """

    def getDevices(host: str, username: str):
        """Fire with the account's L{Device}s, the most recently used first."""

    def getDevice(host: str, username: str, deviceId: str):
        """Fire with the L{Device} or None."""

    def getTokenLogin(host: str, username: str, deviceId: str, mechanism: str):
        """
        What a token login checks, read at once (a reconnect's one store
        call): fire with C{(device, credentials)}, the L{Device} (or None)
        and the account's L{Credentials} of C{mechanism} (or None).
        """

    def issueToken(host: str, username: str, deviceId: str, token: FastToken):
        """Make C{token} the device's pending token (adding the device if it is new)."""

    def useToken(host: str, username: str, deviceId: str, salt: bytes, count: int | None):
        """
        A login with the token of C{salt}: the pending one becomes current
        (the old current one is no longer valid); the current one stays.
        C{count}, when given, must exceed the highest seen for the token.
        Fire with True if the token was valid for that use, atomically.
        """

    def revokeTokens(host: str, username: str, deviceId: str | None = None):
        """Forget the tokens of the device (of every device when None)."""

    def forgetDevice(host: str, username: str, deviceId: str):
        """Forget the device and its tokens; fire with True if it existed."""


@dataclass(frozen=True)
class PepNode:
    """One PEP node of an account: its options (JSON text) and items, oldest first."""

    node: str
    config: str
    items: tuple[tuple[str, str], ...] = ()  # (item id, the <item/> as XML)


class IPep(Interface):
    """
    Each account's XEP-0163 PEP nodes and their items, and XML kept by key
    (XEP-0049 private storage, the vCard). All of it goes with the account.
    """

    def getPep(host: str, username: str):
        """Fire with the account's L{PepNode}s, sorted by node."""

    def setPepNode(host: str, username: str, node: str, config: str):
        """Create the node, or set the options of the node that exists."""

    def deletePepNode(host: str, username: str, node: str):
        """Delete the node and its items; fire with True if it existed."""

    def publishPepItem(host: str, username: str, node: str, config: str, itemId: str, xml: str,
                       maxItems: int):
        """
        Create the node with C{config} if it is missing, store the item as
        the newest (replacing the one with its id) and drop the oldest beyond
        C{maxItems} (0: keep none); fire with the ids dropped.
        """

    def retractPepItem(host: str, username: str, node: str, itemId: str):
        """Delete an item; fire with True if it existed."""

    def purgePepNode(host: str, username: str, node: str):
        """Delete every item of the node."""

    def getAccountXML(host: str, username: str, key: str):
        """Fire with the XML the account keeps under C{key}, or None."""

    def setAccountXML(host: str, username: str, key: str, xml: str | None):
        """Keep C{xml} under C{key} (None: forget it)."""


class IInvites(Interface):
    """Invites, keyed by the hash of their token, with an audit of each use."""

    def createInvite(invite: Invite, tokenHash: bytes):
        """Store a new invite."""

    def getInvite(inviteId: str):
        """Fire with an L{Invite} (with its uses) or None."""

    def findInvite(tokenHash: bytes):
        """Fire with the L{Invite} for a token hash, or None."""

    def listInvites(host: str, inviter: str | None = None):
        """Fire with the host's invites, newest first."""

    def reserveInvite(tokenHash: bytes, host: str, now: float):
        """
        Atomically take one use of a pending invite for an attempt under way.
        Fire with the L{Invite}, or None when it is not usable.
        """

    def releaseInvite(inviteId: str):
        """Give back a use taken by L{reserveInvite} for an attempt that failed."""

    def consumeInvite(use: InviteUse, now: float, rosterItems=(), usedBy: str = ""):
        """
        Record a use of an invite that needs no account creation (a contact
        invite redeemed by a subscription), with the roster changes it makes,
        in one transaction; C{usedBy} (the contact's JID) goes in the audit.
        Fails with L{InviteUnavailable}.
        """

    def updateInvite(inviteId: str, **changes):
        """Change expires, usesAllowed, note or reminded; fire with the new L{Invite} or None."""

    def revokeInvite(inviteId: str, now: float):
        """Fire with True when a pending invite was revoked."""

    def sweepInvites(now: float):
        """Delete invites that can no longer be used; keep the audit. Fire with a count."""

    def accountInvitedAt(host: str, username: str):
        """
        Fire with when the account was created with an invite (from the
        audit), or None: throttles keep new invitees from inviting at once.
        """


class IApiKeys(Interface):
    """Keys for the admin HTTP API, stored hashed."""

    def createApiKey(keyId: str, secretHash: bytes, host: str, name: str, now: float):
        """Store a new key."""

    def getApiKey(keyId: str):
        """Fire with (secretHash, host, name, created) or None."""

    def listApiKeys():
        """Fire with a list of (keyId, host, name, created)."""

    def deleteApiKey(keyId: str):
        """Fire with True if it existed."""


class RosterObservers:
    """What both stores share for L{IRosters.rosterObservers}."""

    def __init__(self) -> None:
        self.rosterObservers: list = []

    def rosterChanging(self, host: str, username: str | None) -> None:
        for observer in list(self.rosterObservers):
            observer(host, username)


class QuotaExceeded(StoreError):
    """
    An upload slot would take its owner over a limit: C{kind} is C{"quota"}
    (the bytes the account may keep) or C{"daily"} (the bytes it may upload
    in 24 hours).
    """

    def __init__(self, kind: str):
        StoreError.__init__(self, kind)
        self.kind = kind


@dataclass(frozen=True)
class Upload:
    """
    One XEP-0363 upload: a slot handed out (C{state} C{"slot"}), being
    received (C{"uploading"}) or a stored file (C{"stored"}). C{expires} is
    when the PUT URL stops working for a slot, and when the file goes for a
    stored upload.
    """

    id: str
    host: str
    username: str
    filename: str
    size: int
    contentType: str
    created: float
    expires: float
    state: str = "slot"


@dataclass(frozen=True)
class UploadUsage:
    """What one account has stored: C{files} and their C{bytes}, and its slots not used yet."""

    username: str
    files: int
    bytes: int
    pending: int


class IUploads(Interface):
    """
    XEP-0363 uploads: the slots handed out and the files stored, for
    quotas, single-use PUT URLs and expiry. The files themselves are on
    disk, kept by the upload module.
    """

    def createUpload(upload: Upload, quota: int, daily: int):
        """
        Record a new slot if its owner stays within C{quota} bytes in all
        and C{daily} bytes created in the 24 hours before C{upload.created}
        (0: no limit), counting slots and files; fail with L{QuotaExceeded}
        otherwise. One transaction: two requests cannot both pass a limit.
        """

    def getUpload(uploadId: str):
        """Fire with the L{Upload} or None."""

    def beginUpload(uploadId: str, now: float):
        """
        Take a slot whose PUT URL is still valid for its PUT (C{slot} to
        C{uploading}); fire with True if this call took it.
        """

    def finishUpload(uploadId: str, expires: float):
        """The file is on disk: C{uploading} to C{stored}, kept until C{expires}; fire with True."""

    def abortUpload(uploadId: str):
        """The PUT failed: C{uploading} back to C{slot}, to be tried again while its URL is valid."""

    def expiredUploads(host: str, now: float, limit: int):
        """At most C{limit} uploads of C{host} expired at C{now}, oldest first (none being received)."""

    def deleteUploads(uploadIds):
        """Forget these uploads (their files are gone); fire with how many there were."""

    def listUploads(host: str, username: str):
        """Fire with the account's uploads (every state), oldest first."""

    def uploadUsage(host: str):
        """Fire with an L{UploadUsage} per account of C{host} with uploads, by username."""


class CircleExists(StoreError):
    """A circle of that name exists on the host."""


@dataclass(frozen=True)
class StoredRoom:
    """A persistent group chat room: its configuration (a JSON-able dict), subject, affiliations."""

    service: str
    name: str
    config: dict
    subject: str = ""
    subjectBy: str = ""
    created: float = 0.0
    affiliations: dict = field(default_factory=dict)  # bare JID -> (affiliation, reason)


@dataclass(frozen=True)
class RoomArchiveQuery:
    """
    Which archived messages of a room to return (XEP-0313 with XEP-0059):
    C{with_} (the sender's room JID), a time range, exclusive bounds by
    message id (C{afterId}, C{beforeId}: RSM after/before or the
    before-id/after-id fields), and C{last}: the page at the end rather
    than the beginning (RSM C{<before/>}).
    """

    with_: str | None = None
    start: float | None = None
    end: float | None = None
    afterId: str | None = None
    beforeId: str | None = None
    ids: tuple[str, ...] = ()
    last: bool = False
    max: int = 50


@dataclass(frozen=True)
class ArchivedRoomMessage:
    """One groupchat message of a room archive."""

    id: str  # its stanza id (XEP-0359), unique
    stamp: float
    sender: str  # room@service/nick
    occupant: str  # the sender's real bare JID
    stanza: str  # serialised XML, as broadcast


@dataclass(frozen=True)
class Circle:
    """A named group of accounts of a host, with its members-only room."""

    host: str
    name: str
    room: str  # the room's bare JID
    created: float = 0.0
    members: tuple[str, ...] = ()  # usernames, sorted


def joinedCircle(item: RosterItem | None, contact: str, circle: str) -> RosterItem:
    """A roster item for a fellow member of C{circle}: mutual subscription, in its group."""
    if item is None:
        return RosterItem(contact, subscription="both", groups=(circle,))
    groups = item.groups if circle in item.groups else item.groups + (circle,)
    return RosterItem(contact, item.name, "both", groups=groups)


def leftCircle(item: RosterItem | None, circle: str) -> RosterItem | None | bool:
    """
    What becomes of a roster item when its contact and its owner no longer
    share C{circle}: False to leave it alone (not the circle's), None to
    remove it (the circle's group was its only one), or the item without it.
    """
    if item is None or circle not in item.groups:
        return False
    groups = tuple(group for group in item.groups if group != circle)
    return RosterItem(item.contact, item.name, item.subscription, item.ask, item.approved,
                      groups) if groups else None


class IRooms(Interface):
    """Persistent group chat rooms (XEP-0045) and their archives (XEP-0313)."""

    def saveRoom(room: StoredRoom):
        """Write the room, its configuration, subject and affiliations (replacing all of them)."""

    def listRooms(service: str):
        """Fire with every stored L{StoredRoom} of the service."""

    def deleteRoom(service: str, name: str):
        """Forget the room with its affiliations and archive; fire with True if it existed."""

    def archiveRoomMessage(service: str, name: str, message: ArchivedRoomMessage, cap: int):
        """Append a message to a stored room's archive, keeping its last C{cap} (0: all)."""

    def queryRoomArchive(service: str, name: str, query: RoomArchiveQuery):
        """
        Fire with (messages, complete): up to C{query.max} messages, oldest
        first, and whether no more match beyond them in the paging direction.
        Fails with L{ArchiveItemNotFound} when an id bound is not archived.
        """

    def retractRoomMessage(service: str, name: str, stanzaId: str, tombstone: str):
        """Replace an archived message by C{tombstone}; fire with its L{ArchivedRoomMessage} or None."""


class ICircles(Interface):
    """Circles: named groups of a host's accounts whose members see each other."""

    def createCircle(circle: Circle):
        """Store a new circle (without members); fails with L{CircleExists}."""

    def getCircle(host: str, name: str):
        """Fire with the L{Circle} and its members, or None."""

    def listCircles(host: str):
        """Fire with the host's circles (with members), by name."""

    def deleteCircle(host: str, name: str):
        """
        Delete the circle and the roster items in its group between its
        members; fire with the L{Circle} as it was, or None.
        """

    def addCircleMember(host: str, name: str, username: str):
        """
        Add an account to a circle and give it and every other member mutual
        subscriptions (roster group: the circle's name), in one transaction;
        fire with the other members, or None when the circle or account does
        not exist.
        """

    def removeCircleMember(host: str, name: str, username: str):
        """
        Take an account out of a circle with the roster items the circle gave
        it and the other members; fire with the other members, or None if it
        was not a member.
        """


class IStore(IAccounts, IRosters, IOfflineMessages, IArchives, IBlocklists, IPep, IInvites,
             IApiKeys, IDevices, IPushRegistrations, IUploads, IRooms, ICircles):
    """Everything the server stores."""

    path = Attribute("Where the data lives, for log lines.")
