"""
The multi-user chat service (XEP-0045) of a host, on its own subdomain.

The host module C{muc} (L{GroupsModule}, on by default) serves
C{groups.HOST} (C{subdomain} in C{[modules.muc]}) as an internal component
(L{invitesrv.components.base.InternalComponent}): listed in the host's
disco#items with the identity conference/text. L{MUCService}, the
component's module, holds the rooms (L{invitesrv.components.muc.room}),
creates them when a user joins one that does not exist, keeps persistent
ones with their affiliations in the store (they come back after a restart,
with their recent history from the archive), archives their messages
(XEP-0313, with stanza ids of XEP-0359), answers archive queries, the
moderation of XEP-0425, the self-ping of XEP-0410 and disco, and applies
the limits of C{[modules.muc]}.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid
from twisted.words.xish import domish
from wokkel import disco

from invitesrv.components.base import InternalComponent
from invitesrv.components.muc import archive
from invitesrv.components.muc.room import (
    AFFILIATION_RANK,
    NS_CLIENT,
    NS_MUC,
    NS_MUC_ADMIN,
    NS_MUC_OWNER,
    NS_OCCUPANT_ID,
    NS_SID,
    Room,
    RoomConfig,
    RoomError,
    copyTo,
    stanzaError,
)
from invitesrv.host import moduleOptions
from invitesrv.limits import BucketTable
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule, ModuleError
from invitesrv.modules.offline import delayStamp, parseStanza
from invitesrv.store.interfaces import (
    ArchivedRoomMessage,
    ArchiveItemNotFound,
    RoomArchiveQuery,
    StoredRoom,
)
from invitesrv.xmpp.router import bounce, parseJID

log = logger()

NS_PING = "urn:xmpp:ping"
NS_MODERATE = "urn:xmpp:message-moderate:1"
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_X_DATA = "jabber:x:data"
NS_VCARD = "vcard-temp"
RELAY_TIMEOUT = 60  # seconds a relayed request's answer is awaited
ROOM_CREATION = ("local", "admins", "anyone")


@dataclass(frozen=True)
class MUCOptions:
    """C{[modules.muc]}: where the group chat service is, who may create rooms, and its limits."""

    subdomain: str = "groups"
    name: str = "Group chats"
    room_creation: str = "local"
    rooms_per_user: int = 100
    max_occupants: int = 200
    message_rate: int = 5
    message_burst: int = 20
    max_message_size: int = 65_536
    max_history: int = 50
    archive: bool = True
    archive_max_messages: int = 100_000
    archive_page: int = 100


class MUCService(HostModule):
    """The rooms of one multi-user chat domain; see the module docstring."""

    name = "muc"
    features = (NS_MUC,)
    observers = (("/presence", "onPresence"), ("/message", "onMessage"), ("/iq", "onIQ", -1))
    Options = MUCOptions

    def __init__(self, owner) -> None:
        self.owner = owner
        self.rooms: dict[str, Room] = {}
        self.loaded: defer.Deferred | None = None
        self.buckets = None
        self.rate: tuple[int, int] = (0, 0)
        self.relayed: dict = {}  # relay id -> (requester, its id, occupant JID asked, timer)

    @property
    def options(self) -> MUCOptions:
        """The C{[modules.muc]} options of the host module, as a reload leaves them."""
        return self.owner.options

    @property
    def domain(self) -> str:
        return self.parent.name

    @property
    def identities(self):
        return (disco.DiscoIdentity("conference", "text", self.options.name),)

    def now(self) -> float:
        return self.parent.host.now()

    def connectionInitialized(self) -> None:
        """Attach the observers, then load the persistent rooms (stanzas wait for them)."""
        HostModule.connectionInitialized(self)
        options = self.options
        self.rate = (options.message_rate, options.message_burst)
        self.buckets = BucketTable(self.parent.clock, *self.rate)
        self.loaded = self.loadRooms()

    def connectionLost(self, reason) -> None:
        for *_, timer in self.relayed.values():
            if timer.active():
                timer.cancel()
        self.relayed.clear()
        HostModule.connectionLost(self, reason)

    # -- persistence -------------------------------------------------------------

    @defer.inlineCallbacks
    def loadRooms(self):
        store = self.parent.store
        try:
            stored = yield store.listRooms(self.domain)
        except Exception:
            log.failure("Cannot load the rooms of {domain}", domain=self.domain)
            return
        for record in stored:
            room = Room(self, record.name, RoomConfig.fromDict(record.config), record.created)
            room.stored = True
            room.subject, room.subjectBy = record.subject, record.subjectBy
            for who, (affiliation, reason) in record.affiliations.items():
                room.affiliations[who] = affiliation
                room.reasons[who] = reason
            self.rooms[record.name] = room
            length = min(room.config.historyLength, self.options.max_history)
            if room.archiving and length:
                page, _ = yield store.queryRoomArchive(self.domain, record.name,
                                                       RoomArchiveQuery(last=True, max=length))
                for message in page:
                    element = parseStanza(message.stanza)
                    if element.body is not None:
                        room.remember(message.stamp, element)
        log.info("{domain}: {count} persistent rooms", domain=self.domain, count=len(stored))

    def saveRoom(self, room: Room):
        """Write a persistent room (or forget one no longer persistent); fire when done."""
        store = self.parent.store
        if room.config.persistent and not room.destroyed:
            d = store.saveRoom(StoredRoom(
                self.domain, room.name, asdict(room.config), room.subject, room.subjectBy,
                room.created, {who: (affiliation, room.reasons.get(who, ""))
                               for who, affiliation in room.affiliations.items()}))
            room.stored = True
        elif room.stored:
            room.stored = False
            d = store.deleteRoom(self.domain, room.name)
        else:
            return defer.succeed(None)
        d.addErrback(lambda failure: log.failure("Cannot store the room {room}", failure,
                                                 room=room.bare))
        return d

    def archive(self, room: Room, stanzaId: str, stamp: float, message: domish.Element,
                occupant: str) -> None:
        d = self.parent.store.archiveRoomMessage(
            self.domain, room.name, ArchivedRoomMessage(stanzaId, stamp, message["from"], occupant,
                                                        message.toXml()),
            self.options.archive_max_messages)
        d.addErrback(lambda failure: log.failure("Cannot archive a message of {room}", failure,
                                                 room=room.bare))

    # -- rooms: creation, limits, emptiness ------------------------------------------

    def room(self, name: str) -> Room | None:
        return self.rooms.get(name)

    @defer.inlineCallbacks
    def createRoom(self, name: str, owner: str | None, config: RoomConfig | None = None,
                   locked: bool = False):
        """A new room with C{owner} (a bare JID, or None for one the server runs); stored if persistent."""
        room = Room(self, name, config or RoomConfig(), self.now())
        room.locked = locked
        if owner:
            room.affiliations[owner] = "owner"
        self.rooms[name] = room
        yield self.saveRoom(room)
        log.info("Room {room} created{by}", room=room.bare, by=f" by {owner}" if owner else "")
        return room

    @defer.inlineCallbacks
    def mayCreate(self, bare: str):
        """Raise the stanza error that refuses C{bare} a new room, if it may not create one."""
        host = self.parent.host
        policy = self.options.room_creation
        user = jid.JID(bare)
        if policy == "admins" and not (yield host.isAdmin(user)):
            raise stanzaError("not-allowed", "Only admins create rooms here")
        if policy == "local" and user.host != host.name:
            raise stanzaError("not-allowed", f"Only users of {host.name} create rooms here")
        owned = sum(1 for room in self.rooms.values() if room.affiliations.get(bare) == "owner")
        if self.options.rooms_per_user and owned >= self.options.rooms_per_user:
            log.info("{user} owns {count} rooms of {domain} (limit rooms_per_user)", user=bare,
                     count=owned, domain=self.domain)
            raise stanzaError("policy-violation", f"You own {owned} rooms here, the most allowed",
                              "wait")

    def checkJoin(self, room: Room, bare: str, sameNick: bool) -> None:
        limit = min(room.config.maxUsers or self.options.max_occupants, self.options.max_occupants)
        privileged = AFFILIATION_RANK[room.affiliation(bare)] >= AFFILIATION_RANK["admin"]
        if limit and len(room.occupants) >= limit and not sameNick and not privileged:
            log.info("{room} is full ({count} occupants, limit max_occupants)", room=room.bare,
                     count=len(room.occupants))
            raise stanzaError("service-unavailable", f"The room is full ({limit} occupants)")

    def checkMessage(self, room: Room, occupant, message: domish.Element) -> None:
        size = len(message.toXml().encode("utf-8"))
        if size > self.options.max_message_size:
            raise stanzaError("not-acceptable", f"The message is too large ({size} bytes; at most"
                              f" {self.options.max_message_size})", "modify")
        rate = (self.options.message_rate, self.options.message_burst)
        if rate != self.rate:  # a reload changed them
            self.rate = rate
            self.buckets.configure(*rate)
        if self.options.message_rate and not self.buckets[f"{room.bare} {occupant.bare}"].tryTake():
            log.info("{user} sends too many messages to {room} (limit message_rate)",
                     user=occupant.bare, room=room.bare)
            raise stanzaError("resource-constraint", "You are sending messages too fast", "wait")

    def checkConfig(self, room: Room, config: RoomConfig) -> None:
        if config.maxUsers > self.options.max_occupants:
            raise stanzaError("not-acceptable", "muc#roomconfig_maxusers is at most"
                              f" {self.options.max_occupants} here", "modify")
        if config.historyLength > self.options.max_history:
            raise stanzaError("not-acceptable", "muc#roomconfig_historylength is at most"
                              f" {self.options.max_history} here", "modify")

    def occupantLeft(self, room: Room) -> None:
        """A temporary room goes with its last occupant (as does one never configured)."""
        if room.isEmpty() and (room.locked or not room.config.persistent) \
                and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            room.destroyed = True
            self.saveRoom(room)

    def destroyRoom(self, room: Room, alternate: str | None = None, reason: str = ""):
        room.destroy(alternate, reason)
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        log.info("Room {room} destroyed", room=room.bare)
        return self.saveRoom(room)

    # -- stanzas ---------------------------------------------------------------

    def send(self, element: domish.Element) -> None:
        self.parent.send(element)

    def refuse(self, stanza, condition: str, text: str | None = None, errorType: str | None = None,
               sender: str | None = None) -> None:
        reply = bounce(stanza, condition, errorType, text)
        if reply is not None:
            if sender:
                reply["from"] = sender
            self.send(reply)

    def runAsync(self, d: defer.Deferred, stanza) -> defer.Deferred:
        """Answer C{stanza} with the error a refused asynchronous request failed with."""
        def failed(failure):
            if failure.check(error.StanzaError):
                reply = failure.value.toResponse(stanza)
                if stanza.getAttribute("type") not in ("error", "result"):
                    self.send(reply)
            else:
                log.failure("A request to {domain} failed", failure, domain=self.domain)
                self.refuse(stanza, "internal-server-error")
        return d.addErrback(failed)

    def _whenLoaded(self, method, stanza) -> None:
        stanza.handled = True
        if self.loaded is not None and not self.loaded.called:
            self.loaded.addCallback(lambda _: method(stanza))
        else:
            method(stanza)

    @staticmethod
    def _addresses(stanza):
        try:
            return parseJID(stanza["from"]), parseJID(stanza["to"])
        except (KeyError, jid.InvalidFormat, UnicodeError):
            return None, None

    def onPresence(self, presence) -> None:
        self._whenLoaded(self._presence, presence)

    def _presence(self, presence) -> None:
        sender, to = self._addresses(presence)
        if sender is None or to.user is None:
            return
        room = self.rooms.get(to.user)
        kind = presence.getAttribute("type")
        if to.resource is None:
            occupant = room.occupantOf(sender.full()) if room is not None else None
            if kind is None:
                self.refuse(presence, "jid-malformed", "Join a room as room@service/nickname")
            elif kind == "unavailable" and occupant is not None:  # a leave without the nick
                room.onPresence(presence, sender, occupant.nick)
            return
        if room is not None:
            room.onPresence(presence, sender, to.resource)
        elif kind is None:
            self.runAsync(self._create(presence, sender, to), presence)

    @defer.inlineCallbacks
    def _create(self, presence, sender: jid.JID, to: jid.JID):
        """A join of a room that does not exist makes it, owned by the joiner (XEP-0045 10.1)."""
        yield self.mayCreate(sender.userhost())
        room = self.rooms.get(to.user)
        if room is None:
            asked = next(presence.elements(NS_MUC, "x"), None) is not None
            room = yield self.createRoom(to.user, sender.userhost(), locked=asked)
        room.onPresence(presence, sender, to.resource)

    def onMessage(self, message) -> None:
        self._whenLoaded(self._message, message)

    def _message(self, message) -> None:
        sender, to = self._addresses(message)
        if sender is None:
            return
        if message.getAttribute("type") == "error":
            return
        room = self.rooms.get(to.user) if to.user else None
        if room is None:
            self.refuse(message, "item-not-found", "No such room")
            return
        try:
            room.onMessage(message, sender, to.resource)
        except RoomError as e:
            self.send(e.toResponse(message))

    def onIQ(self, iq) -> None:
        if getattr(iq, "handled", False):
            return
        if iq.getAttribute("type") in ("result", "error"):
            self._relayAnswer(iq)
            return
        if iq.getAttribute("type") not in ("get", "set"):
            return
        sender, to = self._addresses(iq)
        if sender is None or to.user is None:
            return
        self._whenLoaded(self._iq, iq)

    def _iq(self, iq) -> None:
        sender, to = self._addresses(iq)
        room = self.rooms.get(to.user)
        child = next(iq.elements(), None)
        if room is None:
            self.refuse(iq, "item-not-found", "No such room")
            return
        if child is None:
            self.refuse(iq, "bad-request")
            return
        if to.resource is not None:
            self._occupantIQ(iq, room, sender, to.resource, child)
            return
        handler = {
            (NS_MUC_ADMIN, "get"): self._adminGet, (NS_MUC_ADMIN, "set"): self._adminSet,
            (NS_MUC_OWNER, "get"): self._ownerGet, (NS_MUC_OWNER, "set"): self._ownerSet,
            (archive.NS_MAM, "set"): self._archiveQuery, (NS_MODERATE, "set"): self._moderate,
            (NS_PING, "get"): lambda iq, room, sender: None,
        }.get((child.uri, iq["type"]))
        if handler is None:
            self.refuse(iq, "service-unavailable")
            return
        d = defer.maybeDeferred(handler, iq, room, sender)
        d.addCallback(lambda payload: self._answer(iq, payload))
        self.runAsync(d, iq)

    def _answer(self, iq, payload) -> None:
        reply = domish.Element((NS_CLIENT, "iq"))
        reply["type"], reply["id"] = "result", iq["id"]
        reply["from"], reply["to"] = iq["to"], iq["from"]
        if payload is not None:
            reply.addChild(payload)
        self.send(reply)

    def _occupantIQ(self, iq, room: Room, sender: jid.JID, nick: str, child) -> None:
        """
        XEP-0410: a ping to one's own nick says whether one is still joined.
        Other requests of an occupant to another (a vCard for an avatar) are
        relayed from the sender's room JID: a vCard to the addressee's bare
        JID, anything else to its latest session; the answer comes back the
        same way (L{_relayAnswer}).
        """
        occupant = room.occupantOf(sender.full())
        target = room.occupants.get(nick)
        if occupant is None:
            self.refuse(iq, "not-acceptable", "You are not in this room")
        elif target is None:
            self.refuse(iq, "item-not-found", "Nobody has that nickname here")
        elif (child.uri, child.name) == (NS_PING, "ping") and target is occupant:
            self._answer(iq, None)
        else:
            relayed = copyTo(iq, target.bare if child.uri == NS_VCARD else target.full)
            relayed["from"] = f"{room.bare}/{occupant.nick}"
            relayed["id"] = relayId = f"relay-{uuid.uuid4().hex}"
            timer = self.parent.clock.callLater(RELAY_TIMEOUT, self.relayed.pop, relayId, None)
            self.relayed[relayId] = (iq["from"], iq["id"], iq["to"], timer)
            self.send(relayed)

    def _relayAnswer(self, iq) -> None:
        """The answer to a relayed request goes back to its sender, from the addressee's room JID."""
        entry = self.relayed.pop(iq.getAttribute("id", ""), None)
        if entry is None:
            return
        iq.handled = True
        requester, requestId, occupantJID, timer = entry
        if timer.active():
            timer.cancel()
        answer = copyTo(iq, requester)
        answer["from"], answer["id"] = occupantJID, requestId
        self.send(answer)

    # -- admin and owner ---------------------------------------------------------------

    def _adminGet(self, iq, room: Room, sender: jid.JID):
        return room.adminGet(iq, sender.full())

    def _adminSet(self, iq, room: Room, sender: jid.JID):
        d = room.adminSet(iq, sender)
        return d.addCallback(lambda _: None)

    def _requireOwner(self, room: Room, sender: jid.JID) -> None:
        if room.affiliation(sender.userhost()) != "owner":
            raise stanzaError("forbidden", "Only owners configure or destroy a room")

    def _ownerGet(self, iq, room: Room, sender: jid.JID):
        self._requireOwner(room, sender)
        query = domish.Element((NS_MUC_OWNER, "query"))
        query.addChild(room.configForm().toElement())
        return query

    @defer.inlineCallbacks
    def _ownerSet(self, iq, room: Room, sender: jid.JID):
        self._requireOwner(room, sender)
        destroy = next(iq.query.elements(NS_MUC_OWNER, "destroy"), None)
        if destroy is not None:
            reason = str(destroy.reason) if destroy.reason is not None else ""
            yield self.destroyRoom(room, destroy.getAttribute("jid"), reason)
            return None
        form = next(iq.query.elements(NS_X_DATA, "x"), None)
        if form is None:
            raise stanzaError("bad-request", "Submit the configuration form, or destroy the room")
        if form.getAttribute("type") == "cancel":
            if room.locked:  # a new room its owner does not want after all
                yield self.destroyRoom(room)
            return None
        if form.getAttribute("type") != "submit":
            raise stanzaError("bad-request", "Submit the configuration form")
        wasLocked = room.locked
        codes = room.applyConfig(form)
        room.locked = False
        yield self.saveRoom(room)
        if not wasLocked:
            room.statusMessage(*codes)
        return None

    # -- archive and moderation ------------------------------------------------------

    @defer.inlineCallbacks
    def _archiveQuery(self, iq, room: Room, sender: jid.JID):
        """XEP-0313 on a room: its members (or anyone, for an open room) read its archive."""
        if not room.archiving:
            raise stanzaError("service-unavailable", "This room keeps no archive")
        rank = AFFILIATION_RANK[room.affiliation(sender.userhost())]
        if rank == AFFILIATION_RANK["outcast"] or (
                room.config.membersOnly and rank < AFFILIATION_RANK["member"]):
            raise stanzaError("forbidden", "Only members read the archive of this room")
        query = archive.parseQuery(iq.query, self.options.archive_page)
        try:
            page, complete = yield self.parent.store.queryRoomArchive(self.domain, room.name, query)
        except ArchiveItemNotFound as e:
            raise stanzaError("item-not-found", f"No archived message {e.args[0]!r}") from None
        queryId = iq.query.getAttribute("queryid")
        for message in page:
            self.send(archive.resultMessage(message, iq["from"], room.bare, queryId))
        return archive.fin(page, complete)

    @defer.inlineCallbacks
    def _moderate(self, iq, room: Room, sender: jid.JID):
        """XEP-0425: a moderator retracts a message for everyone, in the archive too."""
        moderator = room.occupantOf(sender.full())
        if moderator is None or moderator.role != "moderator":
            raise stanzaError("forbidden", "Only moderators retract messages")
        stanzaId = iq.moderate.getAttribute("id") if iq.moderate is not None else None
        if not stanzaId or next(iq.moderate.elements(NS_RETRACT, "retract"), None) is None:
            raise stanzaError("bad-request", "Name the message to retract, with <retract/>")
        reason = str(iq.moderate.reason) if iq.moderate.reason is not None else ""
        original = None
        for entry in list(room.history):
            sid = next(entry[1].elements(NS_SID, "stanza-id"), None)
            if sid is not None and sid.getAttribute("id") == stanzaId:
                original = entry[1]
                room.history.remove(entry)
        tombstone = self._retraction(room, moderator, stanzaId, reason, original, tombstone=True)
        archived = None
        if room.archiving:
            archived = yield self.parent.store.retractRoomMessage(self.domain, room.name, stanzaId,
                                                                  tombstone.toXml())
        if original is None and archived is None:
            raise stanzaError("item-not-found", "No such message in this room")
        room.broadcastMessage(self._retraction(room, moderator, stanzaId, reason, None))
        log.info("{moderator} retracted message {id} in {room}", moderator=sender.userhost(),
                 id=stanzaId, room=room.bare)
        return None

    def _retraction(self, room: Room, moderator, stanzaId: str, reason: str, original,
                    tombstone: bool = False) -> domish.Element:
        """The retraction sent to occupants, or (C{tombstone}) what replaces the message in the archive."""
        message = domish.Element((NS_CLIENT, "message"))
        message["type"] = "groupchat"
        if tombstone:
            message["from"] = original["from"] if original is not None else room.bare
            retract = message.addElement((NS_RETRACT, "retracted"))
            retract["stamp"] = delayStamp(self.now())
        else:
            message["from"] = room.bare
            message["id"] = stanzaId + "-retraction"
            retract = message.addElement((NS_RETRACT, "retract"))
            retract["id"] = stanzaId
        moderated = retract.addElement((NS_MODERATE, "moderated"))
        moderated["by"] = f"{room.bare}/{moderator.nick}"
        moderated.addElement((NS_OCCUPANT_ID, "occupant-id"))["id"] = moderator.id
        if reason:
            retract.addElement("reason", content=reason)
        return message

    # -- disco -------------------------------------------------------------------------

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if nodeIdentifier or target.resource is not None:
            return []
        if target.user is None:
            return list(self.identities) + [disco.DiscoFeature(f) for f in self.features]
        room = self.rooms.get(target.user)
        if room is None or (room.locked and room.affiliation(requestor.userhost()) != "owner"):
            raise error.StanzaError("item-not-found")
        return ([disco.DiscoIdentity("conference", "text", room.config.name or room.name)]
                + [disco.DiscoFeature(f) for f in room.features()] + [room.infoForm()])

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        """The public rooms of the service (not those still waiting for their configuration)."""
        if nodeIdentifier or target.user is not None:
            return []
        return [disco.DiscoItem(room.jid, name=room.config.name or room.name)
                for name, room in sorted(self.rooms.items())
                if room.config.public and not room.locked]


@defer.inlineCallbacks
def ownedRoom(host, username: str, room: str):
    """
    Fire with C{room} (a bare JID, prepared) if it is a persistent room of
    C{host}'s group chats that C{username} owns, else with None. Read from
    the store, so that C{invitesrvctl} can check it with no server running.
    """
    try:
        parsed = jid.JID(room)
    except (jid.InvalidFormat, UnicodeError):
        return None
    options = moduleOptions(GroupsModule, "muc", host.config, host.name)
    if parsed.user is None or parsed.resource is not None or not options.subdomain \
            or parsed.host != f"{options.subdomain}.{host.name}":
        return None
    for stored in (yield host.store.listRooms(parsed.host)):
        if stored.name == parsed.user:
            owner = stored.affiliations.get(f"{username}@{host.name}", ("none",))[0] == "owner"
            return parsed.userhost() if owner else None
    return None


class GroupsModule(HostModule):
    """
    The host's group chat service: a component on C{SUBDOMAIN.HOST} served
    by a L{MUCService}, started and stopped with the host's modules.
    C{service} is that service, for modules that make rooms (circles).
    """

    name = "muc"
    Options = MUCOptions
    hooks = (("user-deleted", "onUserDeleted"), ("invite-used", "onInviteUsed"))

    def __init__(self) -> None:
        self.component: InternalComponent | None = None
        self.service: MUCService | None = None

    def connectionInitialized(self) -> None:
        HostModule.connectionInitialized(self)
        options = self.options
        if options.room_creation not in ROOM_CREATION:
            raise ModuleError(f"modules.muc.room_creation is one of {', '.join(ROOM_CREATION)},"
                              f" not {options.room_creation!r}")
        if not options.subdomain:
            return
        host = self.parent
        domain = f"{options.subdomain}.{host.name}"
        if host.router.local(domain) is not None or domain in host.config.components.get(host.name, {}):
            raise ModuleError(f"{domain} is served twice: by modules.muc and as a host or component"
                              " (set [modules.muc] subdomain to another name)")
        self.component = InternalComponent(domain, host)
        self.service = MUCService(self)
        self.component.addModule("muc", self.service)
        self.component.start()
        log.info("Group chats of {host} on {domain}", host=host.name, domain=domain)

    def connectionLost(self, reason) -> None:
        if self.component is not None:
            self.component.stop()
            self.component = self.service = None
        HostModule.connectionLost(self, reason)

    def onInviteUsed(self, invite, username: str, path: str):
        """
        A contact invite naming a room was redeemed: its owner's room invites
        the redeemer (a member first, if the room is members-only).
        """
        if not invite.room or invite.kind != "contact" or self.service is None:
            return None
        room = self.service.room(jid.JID(invite.room).user)
        inviter = f"{invite.inviter}@{self.parent.name}"
        if room is None or room.affiliation(inviter) != "owner":
            return None
        who = username if "@" in username else f"{username}@{self.parent.name}"
        d = defer.succeed(None)
        if room.config.membersOnly and room.affiliation(who) == "none":
            room.setAffiliation(who, "member")
            d = self.service.saveRoom(room)
        room.sendInvite(who, inviter)
        return d

    def onUserDeleted(self, host: str, username: str):
        """
        A deleted account's affiliations go with it: whoever takes the name
        later owns, administers or belongs to no room (nor is banned).
        """
        if self.service is None:
            return None
        bare = f"{username}@{host}"
        saved = []
        for room in list(self.service.rooms.values()):
            if room.affiliation(bare) != "none":
                room.setAffiliation(bare, "none")
                saved.append(self.service.saveRoom(room))
        return defer.gatherResults(saved)
