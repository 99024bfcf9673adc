"""
The roster (RFC 6121 section 2) with roster versioning (section 2.6, XEP-0237).

Rosters live in the store. This module answers roster gets and sets from a
user's own resources and sends roster pushes to the resources that asked for
the roster (RFC 6121's "interested" resources). Every change to one user's
roster, whether from a roster set here or from subscription handling in
L{invitesrv.modules.presence}, runs under that user's lock
(L{RosterModule.locked}): each change is a read, a decision and a write, and
two of them interleaved would lose one.

Versions are the store's per-user counter written as decimal strings. A get
carrying a version the store can diff from is answered with an empty result
and then one push per changed item, each with the version of its own change,
so a client cut off half way asks again from the last push it saw.

The roster of a user who is online is kept in memory, as Prosody keeps it in
the session: presence broadcasts read it without a store round trip, and a
phone fetching its roster at every reconnect costs no XML building either (it
is kept serialised once asked for): a get with the current version is
answered "unchanged" at once, a plain get with the bytes kept. The store tells
the module before any call that changes a roster (L{IRosters.rosterObservers}),
whoever makes it, and the copy is dropped; it is dropped too when the user's
last session has ended (after the unavailable broadcast).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.xish import domish

from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.store.interfaces import Roster, RosterItem
from invitesrv.xmpp.router import parseJID

log = logger()

NS_CLIENT = "jabber:client"
NS_ROSTER = "jabber:iq:roster"
NS_ROSTERVER = "urn:xmpp:features:rosterver"
ROSTER_REQUEST = f"/iq[@type='get' or @type='set']/query[@xmlns='{NS_ROSTER}']"
MAX_NAME_LENGTH = 1023  # characters in an item's name or in one group's name
TO = frozenset(("to", "both"))  # the user receives the contact's presence
FROM = frozenset(("from", "both"))  # the contact receives the user's presence


def itemElement(item: RosterItem) -> domish.Element:
    """The C{<item/>} describing C{item} in a roster result or push."""
    element = domish.Element((NS_ROSTER, "item"))
    element["jid"] = item.contact
    if item.name:
        element["name"] = item.name
    element["subscription"] = item.subscription
    if item.ask:
        element["ask"] = "subscribe"
    if item.approved:
        element["approved"] = "true"
    for group in item.groups:
        element.addElement("group", content=group)
    return element


def removedElement(contact: str) -> domish.Element:
    """The C{<item/>} of a push saying C{contact} left the roster."""
    element = domish.Element((NS_ROSTER, "item"))
    element["jid"] = contact
    element["subscription"] = "remove"
    return element


def parseVersion(text: str | None) -> int | None:
    """A C{ver} this server issued, or None for anything else (including "")."""
    if text and text.isascii() and text.isdigit() and len(text) < 19:
        return int(text)
    return None


def parseSetItem(query: domish.Element,
                 owner: str) -> tuple[str, str | None, tuple[str, ...], bool]:
    """
    Check the item of a roster set (RFC 6121 section 2.3.3) and return
    C{(contact, name, groups, remove)}; raise a C{StanzaError} when invalid.
    """
    items = list(query.elements(NS_ROSTER, "item"))
    if len(items) != 1:
        raise error.StanzaError("bad-request", text="A roster set carries exactly one item")
    item = items[0]
    raw = item.getAttribute("jid")
    if not raw:
        raise error.StanzaError("bad-request", text="A roster item needs a jid")
    try:
        contact = parseJID(raw)
    except (jid.InvalidFormat, UnicodeError):
        raise error.StanzaError("jid-malformed", text="The item's jid is not a valid JID") from None
    if contact.resource is not None:
        raise error.StanzaError("bad-request", text="A roster item is a bare JID")
    if contact.userhost() == owner:
        raise error.StanzaError("not-allowed", text="Your own JID cannot be on your roster")
    name = item.getAttribute("name") or None
    if name is not None and len(name) > MAX_NAME_LENGTH:
        raise error.StanzaError("not-acceptable", text="The item's name is too long")
    groups: list[str] = []
    for group in item.elements(NS_ROSTER, "group"):
        text = str(group)
        if not text:
            raise error.StanzaError("not-acceptable", text="A group name cannot be empty")
        if len(text) > MAX_NAME_LENGTH:
            raise error.StanzaError("not-acceptable", text="A group name is too long")
        if text in groups:
            raise error.StanzaError("bad-request", text=f"Group {text!r} is given twice")
        groups.append(text)
    return contact.userhost(), name, tuple(groups), item.getAttribute("subscription") == "remove"


class KeptRoster:
    """An online user's roster, and its C{<query/>} once a get asked for it."""

    __slots__ = ("roster", "xml")

    def __init__(self, roster: Roster):
        self.roster = roster
        self.xml: str | None = None

    def serialised(self) -> str:
        if self.xml is None:
            query = domish.Element((NS_ROSTER, "query"))
            query["ver"] = str(self.roster.version)
            for item in self.roster.items:
                query.addChild(itemElement(item))
            self.xml = query.toXml()
        return self.xml


class RosterModule(HostModule):
    """
    Roster gets, sets and pushes for one virtual host, and the per-user
    serialisation every roster change goes through. The presence module and
    the invites code use the public methods: L{locked}, L{getItem},
    L{getRoster}, L{saveItem}, L{removeItem}, L{push} and L{pushStored}.
    """

    name = "roster"
    observers = ((ROSTER_REQUEST, "onRosterRequest"),)
    # user-registered before the presence module exchanges presence for the same items.
    hooks = (("stream-features", "onStreamFeatures"),
             ("user-registered", "onUserRegistered", 10),
             ("session-closed", "onSessionClosed", -10))  # after the unavailable broadcast

    def __init__(self) -> None:
        HostModule.__init__(self)
        self._locks: dict[str, defer.DeferredLock] = {}
        self._pushIds = itertools.count(1)
        # Online users' rosters.
        self._kept: dict[str, KeptRoster] = {}
        # Bumped when a user's roster (key None: any user's) is about to change,
        # so that a read under way when it changed is not kept.
        self._changes: dict[str | None, int] = {}

    def connectionInitialized(self):
        HostModule.connectionInitialized(self)
        self.parent.store.rosterObservers.append(self._rosterChanging)

    def connectionLost(self, reason):
        self.parent.store.rosterObservers.remove(self._rosterChanging)
        self._kept.clear()
        HostModule.connectionLost(self, reason)

    def _rosterChanging(self, host: str | None, username: str | None) -> None:
        """The store is about to change C{username}'s roster (None: anyone's)."""
        if host not in (None, self.parent.name):
            return
        self._changes[username] = self._changes.get(username, 0) + 1
        if username is None:
            self._kept.clear()
        else:
            self._kept.pop(username, None)

    def onSessionClosed(self, session) -> None:
        """Forget the roster of a user who is no longer online."""
        if session.host is self.parent and not self.parent.resources.online(session.bare):
            self._kept.pop(session.user, None)

    def _read(self, username: str) -> defer.Deferred:
        """Fire with the user's roster from the store, kept if the user is online."""
        before = (self._changes.get(username), self._changes.get(None))
        d = self.parent.store.getRoster(self.parent.name, username)
        d.addCallback(self._keep, username, before)
        return d

    def _keep(self, roster: Roster, username: str, before) -> KeptRoster:
        kept = KeptRoster(roster)
        # Not if it changed while being read, nor for someone offline.
        if (before == (self._changes.get(username), self._changes.get(None))
                and self.parent.resources.online(f"{username}@{self.parent.name}")):
            self._kept[username] = kept
        return kept

    # -- the API other modules use ------------------------------------------

    def locked(self, username: str, fn, *args, **kwargs) -> defer.Deferred:
        """
        Run C{fn(*args, **kwargs)} (which may return a Deferred) once every
        earlier change to C{username}'s roster is done; fire with its result.
        Never wait inside C{fn} on another user's locked work: hand it over by
        routing a stanza instead.
        """
        lock = self._locks.get(username)
        if lock is None:
            lock = self._locks[username] = defer.DeferredLock()
        d = lock.run(fn, *args, **kwargs)
        d.addBoth(self._forgetLock, username, lock)
        return d

    def _forgetLock(self, result, username: str, lock: defer.DeferredLock):
        if not lock.locked and not lock.waiting and self._locks.get(username) is lock:
            del self._locks[username]
        return result

    def getRoster(self, username: str) -> defer.Deferred:
        """Fire with the user's whole L{Roster} (kept in memory while the user is online)."""
        kept = self._kept.get(username)
        if kept is not None:
            return defer.succeed(kept.roster)
        return self._read(username).addCallback(lambda kept: kept.roster)

    def getRosterAndPendingIn(self, username: str) -> defer.Deferred:
        """
        Fire with the user's whole L{Roster} and stored subscription requests
        (as L{IRosters.getPendingIn} gives them): what an initial presence
        needs, in one store call when the roster is not kept yet.
        """
        store, host = self.parent.store, self.parent.name
        kept = self._kept.get(username)
        if kept is not None:
            return store.getPendingIn(host, username).addCallback(lambda pending: (kept.roster, pending))
        before = (self._changes.get(username), self._changes.get(None))
        d = store.getRosterAndPendingIn(host, username)
        d.addCallback(lambda read: (self._keep(read[0], username, before).roster, read[1]))
        return d

    def getItem(self, username: str, contact: str) -> defer.Deferred:
        """Fire with the user's L{RosterItem} for C{contact} (a bare JID), or None."""
        return self.parent.store.getRosterItem(self.parent.name, username, contact)

    @defer.inlineCallbacks
    def saveItem(self, username: str, item: RosterItem):
        """Write an item and push it to the user's interested resources; fire with the version."""
        version = yield self.parent.store.setRosterItem(self.parent.name, username, item)
        self.push(username, item.contact, item, version)
        return version

    @defer.inlineCallbacks
    def removeItem(self, username: str, contact: str):
        """Remove an item and push the removal; fire with the version, or None if absent."""
        version = yield self.parent.store.removeRosterItem(self.parent.name, username, contact)
        if version is not None:
            self.push(username, contact, None, version)
        return version

    def push(self, username: str, contact: str, item: RosterItem | None, version: int) -> None:
        """Send a roster push (C{item} None: a removal) to the user's interested resources."""
        bare = f"{username}@{self.parent.name}"
        for session in self.parent.resources.interested(bare):
            self._pushTo(session.full, contact, item, version)

    @defer.inlineCallbacks
    def pushStored(self, username: str, contacts):
        """
        Push the stored state of C{contacts} (bare JIDs) to the user's
        interested resources, each with the version of its last change: for
        roster rows written straight to the store, as a registration does.
        """
        bare = f"{username}@{self.parent.name}"
        if not self.parent.resources.interested(bare):
            return
        changes = yield self.parent.store.getRosterChanges(self.parent.name, username, 0)
        if changes is None:
            return
        items = {item.contact: item for item in changes.items}
        wanted = set(contacts)
        for contact, version in changes.changes:
            if contact in wanted:
                self.push(username, contact, items.get(contact), version)

    # -- hooks --------------------------------------------------------------

    def onStreamFeatures(self, session, features) -> None:
        """Advertise roster versioning (RFC 6121 section 2.6.1) once authenticated."""
        if session.authenticated:
            features.addElement((NS_ROSTERVER, "ver"))

    def onUserRegistered(self, registration):
        """Push the roster rows a registration wrote (an inviter's new contact) to their owners."""
        if registration.host != self.parent.name or not registration.rosterItems:
            return None
        byOwner: dict[str, list[str]] = {}
        for owner, item in registration.rosterItems:
            byOwner.setdefault(owner, []).append(item.contact)
        return defer.gatherResults([self.pushStored(owner, contacts)
                                    for owner, contacts in byOwner.items()], consumeErrors=True)

    # -- roster requests ----------------------------------------------------

    def onRosterRequest(self, iq) -> None:
        iq.handled = True
        handler = self._get if iq.getAttribute("type") == "get" else self._set
        d = defer.maybeDeferred(handler, iq)
        d.addErrback(self._failed, iq)

    def _failed(self, failure, iq) -> None:
        if failure.check(error.StanzaError):
            reply = failure.value.toResponse(iq)
        else:
            log.failure("Roster request from {sender} failed", failure,
                        sender=iq.getAttribute("from"))
            reply = error.StanzaError("internal-server-error").toResponse(iq)
        self.send(reply)

    def _requester(self, iq) -> jid.JID:
        """The full JID of a local user asking about their own roster, else forbidden."""
        try:
            sender = parseJID(iq.getAttribute("from", ""))
            to = iq.getAttribute("to")
            target = sender.userhostJID() if to is None else parseJID(to)
        except (jid.InvalidFormat, UnicodeError):
            target = sender = None
        if (sender is None or sender.user is None or sender.host != self.parent.name
                or target != sender.userhostJID()):
            raise error.StanzaError("forbidden", text="Only the account itself may use its roster")
        return sender

    @defer.inlineCallbacks
    def _get(self, iq):
        sender = self._requester(iq)
        session = self.parent.router.session(sender)
        if session is not None:
            # Before reading: a change racing with this get is then pushed
            # (perhaps twice), never lost.
            self.parent.resources.setInterested(session)
        store, host, username = self.parent.store, self.parent.name, sender.user
        query = next(iq.elements(NS_ROSTER, "query"))
        since = parseVersion(query.getAttribute("ver"))
        # The copy serves only when no change of the user's is under way:
        # a get answers with every change the client sent before it.
        kept = self._kept.get(username) if username not in self._locks else None
        if kept is not None and since == kept.roster.version:
            self.send(xmlstream.toResponse(iq, "result"))
            return
        if since is not None:
            # Reads queue behind the user's changes under way (stanzas keep their order).
            changes: Roster | None = yield self.locked(username, store.getRosterChanges, host,
                                                       username, since)
            if changes is not None:
                self.send(xmlstream.toResponse(iq, "result"))
                items = {item.contact: item for item in changes.items}
                for contact, version in changes.changes:
                    self._pushTo(sender.full(), contact, items.get(contact), version)
                return
        if kept is None:
            kept = yield self.locked(username, self._read, username)
        reply = xmlstream.toResponse(iq, "result")
        reply.addRawXml(kept.serialised())
        self.send(reply)

    @defer.inlineCallbacks
    def _set(self, iq):
        sender = self._requester(iq)
        query = next(iq.elements(NS_ROSTER, "query"))
        contact, name, groups, remove = parseSetItem(query, sender.userhost())
        if remove:
            yield self.locked(sender.user, self._remove, sender.user, contact)
        else:
            yield self.locked(sender.user, self._update, sender.user, contact, name, groups)
        self.send(xmlstream.toResponse(iq, "result"))

    @defer.inlineCallbacks
    def _update(self, username: str, contact: str, name: str | None, groups: tuple[str, ...]):
        """A roster set: name and groups as given, subscription state kept."""
        old = yield self.getItem(username, contact)
        item = RosterItem(contact, name, groups=groups) if old is None else replace(
            old, name=name, groups=groups)
        yield self.saveItem(username, item)

    @defer.inlineCallbacks
    def _remove(self, username: str, contact: str):
        """
        A roster removal (RFC 6121 section 2.5.2): the item goes, and so do
        the subscriptions both ways and any request pending either way.
        """
        host = self.parent.name
        item = yield self.getItem(username, contact)
        if item is None:
            raise error.StanzaError("item-not-found", text=f"{contact} is not on the roster")
        pendingIn = yield self.parent.store.removePendingIn(host, username, contact)
        yield self.removeItem(username, contact)
        bare = f"{username}@{host}"
        if item.subscription in TO or item.ask:
            self.send(_presence("unsubscribe", bare, contact))
        if item.subscription in FROM:
            for session in self.parent.resources.present(bare):
                self.send(_presence("unavailable", session.full, contact))
        if item.subscription in FROM or pendingIn:
            self.send(_presence("unsubscribed", bare, contact))

    def _pushTo(self, full: str, contact: str, item: RosterItem | None, version: int) -> None:
        iq = domish.Element((NS_CLIENT, "iq"))
        iq["type"] = "set"
        iq["id"] = f"push{next(self._pushIds)}"
        iq["to"] = full
        query = iq.addElement((NS_ROSTER, "query"))
        query["ver"] = str(version)
        query.addChild(itemElement(item) if item is not None else removedElement(contact))
        self.send(iq)


def _presence(kind: str, sender: str, to: str) -> domish.Element:
    presence = domish.Element((NS_CLIENT, "presence"))
    presence["type"] = kind
    presence["from"] = sender
    presence["to"] = to
    return presence
