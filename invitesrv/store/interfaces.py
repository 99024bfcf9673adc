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
    server) its pending subscription requests and offline messages.
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
        """Change expires, usesAllowed or note; fire with the new L{Invite} or None."""

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


class UnknownArchiveId(StoreError):
    """An archive query names a message id (RSM, before-id, after-id) that is not archived."""


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
        Fails with L{UnknownArchiveId} when an id bound is not archived.
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


class IStore(IAccounts, IRosters, IOfflineMessages, IBlocklists, IInvites, IApiKeys, IRooms,
             ICircles):
    """Everything the server stores."""

    path = Attribute("Where the data lives, for log lines.")
