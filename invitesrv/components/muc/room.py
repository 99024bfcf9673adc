"""
One multi-user chat room (XEP-0045): its configuration, affiliations,
occupants, subject and history, and the protocol of a room: joining,
leaving, nick changes, groupchat and private messages, invites, the admin
and owner requests, destruction.

A room knows its occupants by nick. An occupant is one real bare JID under
one nick, with one or more sessions (full JIDs): a user on two devices
appears once, and every session gets what the occupant gets. What the room
sends goes out through its L{MUCService}, which also keeps persistent rooms
in the store and answers for the service as a whole.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid
from twisted.words.xish import domish
from wokkel import data_form

from invitesrv.modules.offline import NS_DELAY, delayStamp
from invitesrv.xmpp.router import bounce

NS_CLIENT = "jabber:client"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = NS_MUC + "#user"
NS_MUC_ADMIN = NS_MUC + "#admin"
NS_MUC_OWNER = NS_MUC + "#owner"
NS_ROOMCONFIG = NS_MUC + "#roomconfig"
NS_ROOMINFO = NS_MUC + "#roominfo"
NS_SID = "urn:xmpp:sid:0"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
NS_CONFERENCE = "jabber:x:conference"

AFFILIATION_RANK = {"outcast": 0, "none": 1, "member": 2, "admin": 3, "owner": 4}
ROLES = ("none", "visitor", "participant", "moderator")
WHOIS = ("moderators", "anyone")


@dataclass
class RoomConfig:
    """The owner's settings of a room (the configuration form), kept as JSON for a persistent room."""

    name: str = ""
    description: str = ""
    persistent: bool = False
    public: bool = True
    membersOnly: bool = False
    moderated: bool = False
    password: str = ""
    whois: str = "moderators"
    maxUsers: int = 0  # 0: the service's limit
    historyLength: int = 20
    allowInvites: bool = False
    changeSubject: bool = False
    archive: bool = True  # archived while persistent (XEP-0313)
    salt: str = field(default_factory=lambda: secrets.token_hex(16))  # of the occupant ids

    @classmethod
    def fromDict(cls, values: dict) -> RoomConfig:
        """From stored JSON; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


# The configuration form: field var, RoomConfig attribute, field type, label.
CONFIG_FIELDS = (
    ("muc#roomconfig_roomname", "name", "text-single", "Name"),
    ("muc#roomconfig_roomdesc", "description", "text-single", "Description"),
    ("muc#roomconfig_persistentroom", "persistent", "boolean", "Persistent (kept when empty)"),
    ("muc#roomconfig_publicroom", "public", "boolean", "Listed in the directory of rooms"),
    ("muc#roomconfig_membersonly", "membersOnly", "boolean", "Only members may join"),
    ("muc#roomconfig_moderatedroom", "moderated", "boolean", "Only participants with voice speak"),
    ("muc#roomconfig_passwordprotectedroom", None, "boolean", "Password required to join"),
    ("muc#roomconfig_roomsecret", "password", "text-private", "Password"),
    ("muc#roomconfig_whois", "whois", "list-single", "Who may see real addresses"),
    ("muc#roomconfig_maxusers", "maxUsers", "text-single", "Maximum occupants (0: the service's)"),
    ("muc#roomconfig_historylength", "historyLength", "text-single", "Messages sent to newcomers"),
    ("muc#roomconfig_allowinvites", "allowInvites", "boolean", "Occupants may invite others"),
    ("muc#roomconfig_changesubject", "changeSubject", "boolean", "Occupants may change the subject"),
    ("muc#roomconfig_enablearchiving", "archive", "boolean", "Archive messages (persistent rooms)"),
)


class RoomError(error.StanzaError):
    """A request to a room that is refused with a stanza error."""


def stanzaError(condition: str, text: str | None = None, errorType: str | None = None):
    return RoomError(condition, errorType, text)


@dataclass
class Occupant:
    """One nick in a room: a real bare JID, its role, and its sessions' latest presences."""

    nick: str
    bare: str
    role: str
    id: str  # XEP-0421 occupant id: stable for this bare JID in this room
    sessions: dict = field(default_factory=dict)  # full JID -> presence element

    @property
    def presence(self) -> domish.Element:
        """The presence the room shows for the occupant: that of its latest session."""
        return next(reversed(self.sessions.values()))

    @property
    def full(self) -> str:
        return next(reversed(self.sessions))


def _boolean(value: str | None) -> bool:
    return value in ("1", "true")


def _number(value: str | None, var: str) -> int:
    try:
        number = int(value or 0)
    except ValueError:
        raise stanzaError("not-acceptable", f"{var} must be a whole number") from None
    if number < 0:
        raise stanzaError("not-acceptable", f"{var} must be 0 or more")
    return number


def parseStamp(text: str) -> float:
    """An XEP-0082 date-time as seconds; a C{ValueError} if it is not one."""
    stamp = datetime.fromisoformat(text.strip())
    if stamp.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return stamp.timestamp()


def parseHistoryRequest(x: domish.Element | None, now: float):
    """
    The join history a client asks for (XEP-0045 section 7.2.15): at most
    C{maxstanzas} messages, C{maxchars} characters, and none older than
    C{seconds} or C{since}; None where it sets no bound (or a bad one).
    """
    history = next(x.elements(NS_MUC, "history"), None) if x is not None else None
    if history is None:
        return None, None, None
    try:
        maxStanzas = int(history["maxstanzas"]) if history.hasAttribute("maxstanzas") else None
        maxChars = int(history["maxchars"]) if history.hasAttribute("maxchars") else None
        oldest = now - int(history["seconds"]) if history.hasAttribute("seconds") else None
        if history.hasAttribute("since"):
            since = parseStamp(history["since"])
            oldest = since if oldest is None else max(oldest, since)
    except ValueError:
        return None, None, None
    return maxStanzas, maxChars, oldest


def copyTo(stanza: domish.Element, to: str) -> domish.Element:
    """
    A copy of C{stanza} addressed to C{to}: each recipient gets its own
    element (sessions may hold what they are sent), sharing the children.
    """
    copy = domish.Element((stanza.uri, stanza.name))
    copy.attributes.update(stanza.attributes)
    copy["to"] = to
    for child in stanza.children:
        copy.addChild(child)
    return copy


class Room:
    """A room of a L{MUCService}; see the module docstring."""

    def __init__(self, service, name: str, config: RoomConfig, created: float):
        self.service = service
        self.name = name
        self.jid = jid.JID(tuple=(name, service.domain, None))
        self.bare = self.jid.full()
        self.config = config
        self.created = created
        self.affiliations: dict[str, str] = {}  # bare JID -> owner, admin, member or outcast
        self.reasons: dict[str, str] = {}
        self.occupants: dict[str, Occupant] = {}  # nick -> occupant
        self.nicks: dict[str, str] = {}  # full JID of a session -> its nick
        self.subject = ""
        self.subjectBy = ""
        self.history: deque = deque()  # (stamp, message element, characters)
        self.locked = False  # a new room until its owner configures it (or takes it as it is)
        self.destroyed = False
        self.stored = False  # written to the store (persistent)

    # -- who is who --------------------------------------------------------------

    def affiliation(self, who: str) -> str:
        """The affiliation of a bare JID (C{none} if it has none)."""
        return self.affiliations.get(who, "none")

    def defaultRole(self, affiliation: str) -> str:
        if affiliation in ("owner", "admin"):
            return "moderator"
        if affiliation == "member" or not self.config.moderated:
            return "participant"
        return "visitor"

    def occupantOf(self, full: str) -> Occupant | None:
        nick = self.nicks.get(full)
        return self.occupants.get(nick) if nick is not None else None

    def occupantId(self, bare: str) -> str:
        """XEP-0421: the same for a user whatever their nick, different in every room."""
        digest = hmac.new(self.config.salt.encode(), f"{self.bare}\0{bare}".encode(),
                          hashlib.sha256).digest()
        return base64.b64encode(digest[:18]).decode()

    def canSeeJIDs(self, occupant: Occupant | None) -> bool:
        return self.config.whois == "anyone" or (occupant is not None and occupant.role == "moderator")

    def isEmpty(self) -> bool:
        return not self.occupants

    @property
    def archiving(self) -> bool:
        return self.config.persistent and self.config.archive and self.service.options.archive

    # -- sending -----------------------------------------------------------------

    def send(self, element: domish.Element) -> None:
        self.service.send(element)

    def refuse(self, stanza: domish.Element, condition: str, text: str | None = None,
               errorType: str | None = None) -> None:
        reply = bounce(stanza, condition, errorType, text)
        if reply is not None:
            self.send(reply)

    def occupantPresence(self, occupant: Occupant, to: str, codes=(), unavailable: bool = False,
                         extra=None) -> domish.Element:
        """The presence of C{occupant} as the session C{to} is shown it."""
        presence = domish.Element((NS_CLIENT, "presence"))
        presence["from"] = f"{self.bare}/{occupant.nick}"
        presence["to"] = to
        if unavailable:
            presence["type"] = "unavailable"
        else:
            for child in occupant.presence.elements():
                if child.uri not in (NS_MUC, NS_MUC_USER, NS_OCCUPANT_ID):
                    presence.addChild(child)
        x = presence.addElement((NS_MUC_USER, "x"))
        item = x.addElement("item")
        item["affiliation"] = self.affiliation(occupant.bare)
        item["role"] = "none" if unavailable else occupant.role
        if self.canSeeJIDs(self.occupantOf(to)) or to in occupant.sessions:
            item["jid"] = occupant.full
        if extra is not None:
            extra(x, item)
        for code in codes:
            x.addElement("status")["code"] = str(code)
        presence.addElement((NS_OCCUPANT_ID, "occupant-id"))["id"] = occupant.id
        return presence

    def broadcastPresence(self, occupant: Occupant, codes=(), unavailable: bool = False,
                          extra=None, selfCodes=()) -> None:
        """Send the presence of C{occupant} to every session in the room (its own with 110)."""
        for other in list(self.occupants.values()) + (
                [occupant] if occupant.nick not in self.occupants else []):
            for full in other.sessions:
                own = other is occupant
                codes_ = list(codes) + ([110] + list(selfCodes) if own else [])
                self.send(self.occupantPresence(occupant, full, codes_, unavailable, extra))

    def broadcastMessage(self, message: domish.Element) -> None:
        """Send a copy of C{message} to every session of every occupant."""
        for occupant in self.occupants.values():
            for full in occupant.sessions:
                self.send(copyTo(message, full))

    def statusMessage(self, *codes: int) -> None:
        """A groupchat message from the room itself with status codes (104 and the like)."""
        message = domish.Element((NS_CLIENT, "message"))
        message["type"] = "groupchat"
        message["from"] = self.bare
        message["id"] = str(uuid.uuid4())
        x = message.addElement((NS_MUC_USER, "x"))
        for code in codes:
            x.addElement("status")["code"] = str(code)
        self.broadcastMessage(message)

    # -- presence: joining, changing, leaving ---------------------------------------

    def onPresence(self, presence: domish.Element, sender: jid.JID, nick: str) -> None:
        """A presence from a user's session to C{room/nick}."""
        full = sender.full()
        kind = presence.getAttribute("type")
        current = self.occupantOf(full)
        if kind == "unavailable":
            if current is not None:
                self.leave(current, full, presence)
            return
        if kind == "error":
            if current is not None:
                self.leave(current, full, None)
            return
        if kind is not None:
            return  # subscriptions and probes mean nothing to a room
        if current is None:
            self.join(presence, sender, nick)
        elif current.nick != nick:
            self.changeNick(presence, current, full, nick)
        else:
            current.sessions[full] = presence
            current.sessions[full] = current.sessions.pop(full)  # the latest goes last
            self.broadcastPresence(current)

    def join(self, presence: domish.Element, sender: jid.JID, nick: str) -> None:
        """XEP-0045 section 7.2: check, then presences, history and subject for the newcomer."""
        full, bare = sender.full(), sender.userhost()
        x = next(presence.elements(NS_MUC, "x"), None)
        affiliation = self.affiliation(bare)
        owner = affiliation == "owner"
        existing = self.occupants.get(nick)
        try:
            if self.locked and not owner:
                raise stanzaError("item-not-found", "This room is not configured yet")
            if affiliation == "outcast":
                raise stanzaError("forbidden", "You are banned from this room")
            if existing is not None and existing.bare != bare:
                raise stanzaError("conflict", "That nickname is in use")
            if self.config.membersOnly and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["member"]:
                raise stanzaError("registration-required", "This room is for members only")
            if self.config.password and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["admin"]:
                given = next(x.elements(NS_MUC, "password"), None) if x is not None else None
                if given is None or not hmac.compare_digest(str(given).encode(),
                                                            self.config.password.encode()):
                    raise stanzaError("not-authorized", "A password is required to join this room")
            self.service.checkJoin(self, bare, existing is not None)
        except RoomError as e:
            reply = e.toResponse(presence)
            reply["from"] = f"{self.bare}/{nick}"
            self.send(reply)
            return
        if existing is not None:  # another session of the same user, under the same nick
            existing.sessions[full] = presence
            self.nicks[full] = nick
            for other in self.occupants.values():
                self.send(self.occupantPresence(other, full, [110] if other is existing else []))
            self.sendHistory(full, x)
            self.sendSubject(full)
            return
        occupant = Occupant(nick, bare, self.defaultRole(affiliation), self.occupantId(bare),
                            {full: presence})
        for other in self.occupants.values():
            self.send(self.occupantPresence(other, full))
        self.occupants[nick] = occupant
        self.nicks[full] = nick
        selfCodes = [100] if self.config.whois == "anyone" else []
        if self.archiving:
            selfCodes.append(170)
        if self.locked:
            selfCodes.append(201)
        self.broadcastPresence(occupant, selfCodes=selfCodes)
        self.sendHistory(full, x)
        self.sendSubject(full)

    def sendHistory(self, full: str, x: domish.Element | None) -> None:
        maxStanzas, maxChars, oldest = parseHistoryRequest(x, self.service.now())
        chosen = []
        chars = 0
        for stamp, message, size in reversed(self.history):
            if maxStanzas is not None and len(chosen) >= maxStanzas:
                break
            if oldest is not None and stamp < oldest:
                break
            if maxChars is not None and chars + size > maxChars:
                break
            chars += size
            chosen.append((stamp, message))
        for stamp, message in reversed(chosen):
            copy = copyTo(message, full)
            stamped = copy.addElement((NS_DELAY, "delay"))
            stamped["stamp"], stamped["from"] = delayStamp(stamp), self.bare
            self.send(copy)

    def sendSubject(self, full: str) -> None:
        """The subject, always last of a join (an empty one when there is none)."""
        message = domish.Element((NS_CLIENT, "message"))
        message["type"], message["to"], message["id"] = "groupchat", full, str(uuid.uuid4())
        message["from"] = f"{self.bare}/{self.subjectBy}" if self.subjectBy else self.bare
        message.addElement("subject", content=self.subject)
        self.send(message)

    def changeNick(self, presence: domish.Element, occupant: Occupant, full: str, nick: str) -> None:
        """XEP-0045 section 7.6: unavailable with 303 under the old nick, then the new one."""
        holder = self.occupants.get(nick)
        if holder is not None:
            reply = stanzaError("conflict", "That nickname is in use").toResponse(presence)
            reply["from"] = f"{self.bare}/{nick}"
            self.send(reply)
            return

        def newNick(x, item):
            item["nick"] = nick
        self.broadcastPresence(occupant, [303], unavailable=True, extra=newNick)
        del self.occupants[occupant.nick]
        occupant.nick = nick
        occupant.sessions[full] = presence
        occupant.sessions[full] = occupant.sessions.pop(full)
        self.occupants[nick] = occupant
        for session in occupant.sessions:
            self.nicks[session] = nick
        self.broadcastPresence(occupant)

    def leave(self, occupant: Occupant, full: str, presence: domish.Element | None) -> None:
        """A session left; the occupant leaves with its last session."""
        self.nicks.pop(full, None)
        last = occupant.sessions.pop(full, None)
        if occupant.sessions:
            if last is not None:
                unavailable = self.occupantPresence(occupant, full, [110], unavailable=True)
                self.send(unavailable)
            self.broadcastPresence(occupant)
            return
        occupant.sessions[full] = presence if presence is not None else last
        del self.occupants[occupant.nick]

        def status(x, item):
            if presence is not None and presence.status is not None:
                x.parent.addChild(presence.status)
        self.broadcastPresence(occupant, unavailable=True, extra=status)
        occupant.sessions.clear()
        self.service.occupantLeft(self)

    def removeOccupant(self, occupant: Occupant, codes, actor: str | None, reason: str) -> None:
        """Take an occupant out (kicked, banned, no longer a member), saying why."""
        del self.occupants[occupant.nick]
        for full in occupant.sessions:
            self.nicks.pop(full, None)

        def details(x, item):
            if actor:
                item.addElement("actor")["nick"] = actor
            if reason:
                item.addElement("reason", content=reason)
        self.broadcastPresence(occupant, codes, unavailable=True, extra=details)
        occupant.sessions.clear()

    # -- messages ----------------------------------------------------------------

    def onMessage(self, message: domish.Element, sender: jid.JID, nick: str | None) -> None:
        kind = message.getAttribute("type", "normal")
        full = sender.full()
        occupant = self.occupantOf(full)
        if kind == "error":
            return
        if nick is not None:
            self.privateMessage(message, occupant, nick)
        elif kind == "groupchat":
            self.groupchat(message, occupant)
        else:
            x = next(message.elements(NS_MUC_USER, "x"), None)
            if x is not None and (next(x.elements(NS_MUC_USER, "invite"), None) is not None
                                  or next(x.elements(NS_MUC_USER, "decline"), None) is not None):
                self.service.runAsync(self.mediatedInvite(message, x, sender, occupant), message)
            else:
                self.refuse(message, "bad-request", "Send groupchat messages to the room")

    def groupchat(self, message: domish.Element, occupant: Occupant | None) -> None:
        if occupant is None:
            self.refuse(message, "not-acceptable", "You are not in this room")
            return
        if occupant.role == "visitor":
            self.refuse(message, "forbidden", "You have no voice in this room")
            return
        subject = message.subject
        if subject is not None and message.body is None:
            if not (self.config.changeSubject or occupant.role == "moderator"):
                self.refuse(message, "forbidden", "Only moderators may change the subject")
                return
        self.service.checkMessage(self, occupant, message)
        out = domish.Element((NS_CLIENT, "message"))
        out["type"] = "groupchat"
        out["from"] = f"{self.bare}/{occupant.nick}"
        if message.getAttribute("id"):
            out["id"] = message["id"]
        for child in message.elements():
            if child.uri in (NS_SID, NS_OCCUPANT_ID, NS_DELAY):
                continue  # only the room stamps these
            out.addChild(child)
        out.addElement((NS_OCCUPANT_ID, "occupant-id"))["id"] = occupant.id
        if subject is not None and message.body is None:
            self.subject, self.subjectBy = str(subject), occupant.nick
            self.broadcastMessage(out)
            self.service.saveRoom(self)
            return
        stanzaId = str(uuid.uuid4())
        sid = out.addElement((NS_SID, "stanza-id"))
        sid["id"], sid["by"] = stanzaId, self.bare
        now = self.service.now()
        if message.body is not None:  # not chat states and the like
            self.remember(now, out)
            if self.archiving:
                self.service.archive(self, stanzaId, now, out, occupant.bare)
        self.broadcastMessage(out)

    def remember(self, stamp: float, message: domish.Element) -> None:
        """Keep a message for the history of newcomers, up to C{historyLength}."""
        limit = min(self.config.historyLength, self.service.options.max_history)
        if limit <= 0:
            self.history.clear()
            return
        self.history.append((stamp, message, len(message.toXml())))
        while len(self.history) > limit:
            self.history.popleft()

    def privateMessage(self, message: domish.Element, occupant: Occupant | None, nick: str) -> None:
        """XEP-0045 section 7.5: to every session of the addressee, from the sender's room JID."""
        target = self.occupants.get(nick)
        if occupant is None:
            self.refuse(message, "not-acceptable", "You are not in this room")
            return
        if target is None:
            self.refuse(message, "item-not-found", "Nobody has that nickname here")
            return
        if message.getAttribute("type") == "groupchat":
            self.refuse(message, "bad-request", "Private messages are not of type groupchat")
            return
        out = domish.Element((NS_CLIENT, "message"))
        for name, value in message.attributes.items():
            if name not in ("from", "to"):
                out[name] = value
        out["from"] = f"{self.bare}/{occupant.nick}"
        for child in message.elements():
            if child.uri != NS_OCCUPANT_ID:
                out.addChild(child)
        out.addElement((NS_MUC_USER, "x"))
        out.addElement((NS_OCCUPANT_ID, "occupant-id"))["id"] = occupant.id
        for full in target.sessions:
            self.send(copyTo(out, full))

    @defer.inlineCallbacks
    def mediatedInvite(self, message, x, sender: jid.JID, occupant: Occupant | None):
        """XEP-0045 section 7.8.2: the room relays an invite (or a decline back to the inviter)."""
        bare = sender.userhost()
        decline = next(x.elements(NS_MUC_USER, "decline"), None)
        if decline is not None:
            to = decline.getAttribute("to")
            if not to:
                raise stanzaError("bad-request", "A decline names whom it goes to")
            out = domish.Element((NS_CLIENT, "message"))
            out["from"], out["to"] = self.bare, to
            relayed = out.addElement((NS_MUC_USER, "x")).addElement("decline")
            relayed["from"] = bare
            if decline.reason is not None:
                relayed.addElement("reason", content=str(decline.reason))
            self.send(out)
            return
        if occupant is None:
            raise stanzaError("not-acceptable", "Join the room to invite others")
        affiliation = self.affiliation(bare)
        mayInvite = (self.config.allowInvites or occupant.role == "moderator"
                     or AFFILIATION_RANK[affiliation] >= AFFILIATION_RANK["admin"])
        if not mayInvite:
            raise stanzaError("forbidden", "Only moderators may invite to this room")
        for invite in x.elements(NS_MUC_USER, "invite"):
            try:
                invitee = jid.JID(invite.getAttribute("to", ""))
            except (jid.InvalidFormat, UnicodeError):
                raise stanzaError("jid-malformed", "The invitee is not a JID") from None
            reason = str(invite.reason) if invite.reason is not None else ""
            if self.config.membersOnly and self.affiliation(invitee.userhost()) == "none":
                self.affiliations[invitee.userhost()] = "member"
                yield self.service.saveRoom(self)
            self.sendInvite(invitee.full(), bare, reason)

    def sendInvite(self, to: str, inviter: str, reason: str = "") -> None:
        """The invite a room sends (mediated), with a direct-invite copy (XEP-0249) for older clients."""
        out = domish.Element((NS_CLIENT, "message"))
        out["from"], out["to"], out["id"] = self.bare, to, str(uuid.uuid4())
        x = out.addElement((NS_MUC_USER, "x"))
        invite = x.addElement("invite")
        if inviter:
            invite["from"] = inviter
        if reason:
            invite.addElement("reason", content=reason)
        if self.config.password:
            x.addElement("password", content=self.config.password)
        what = self.config.name or self.bare
        out.addElement("body", content=f"You are invited to {what} ({self.bare})"
                       + (f": {reason}" if reason else ""))
        self.send(out)

    # -- admin and owner requests ----------------------------------------------------

    def adminGet(self, iq, requester: str):
        """The list of an affiliation or role (XEP-0045 sections 9 and 8)."""
        item = next(iq.query.elements(NS_MUC_ADMIN, "item"), None)
        occupant = self.occupantOf(requester)
        mine = AFFILIATION_RANK[self.affiliation(jid.JID(requester).userhost())]
        if item is None:
            raise stanzaError("bad-request", "Ask for an affiliation or a role")
        result = domish.Element((NS_MUC_ADMIN, "query"))
        if item.hasAttribute("affiliation"):
            wanted = item["affiliation"]
            if wanted not in AFFILIATION_RANK or wanted == "none":
                raise stanzaError("bad-request", f"Unknown affiliation {wanted!r}")
            # Members of a members-only or non-anonymous room see who belongs to it
            # (clients build a private group's member list from these); the
            # outcasts are for admins and owners only.
            seesMembers = mine >= AFFILIATION_RANK["member"] and wanted != "outcast" and (
                self.config.membersOnly or self.config.whois == "anyone")
            if mine < AFFILIATION_RANK["admin"] and not seesMembers:
                raise stanzaError("forbidden", "Only admins and owners see this affiliation list")
            for who, affiliation in sorted(self.affiliations.items()):
                if affiliation == wanted:
                    row = result.addElement("item")
                    row["affiliation"], row["jid"] = affiliation, who
                    if self.reasons.get(who):
                        row.addElement("reason", content=self.reasons[who])
        elif item.hasAttribute("role"):
            if occupant is None or occupant.role != "moderator":
                raise stanzaError("forbidden", "Only moderators see role lists")
            for other in self.occupants.values():
                if other.role == item["role"]:
                    row = result.addElement("item")
                    row["role"], row["nick"] = other.role, other.nick
                    row["affiliation"], row["jid"] = self.affiliation(other.bare), other.full
        else:
            raise stanzaError("bad-request", "Ask for an affiliation or a role")
        return result

    def adminSet(self, iq, requester: jid.JID):
        """Change roles (by nick) and affiliations (by JID), all or none."""
        items = list(iq.query.elements(NS_MUC_ADMIN, "item"))
        if not items:
            raise stanzaError("bad-request", "Give at least one item")
        actor = self.occupantOf(requester.full())
        actorBare = requester.userhost()
        mine = self.affiliation(actorBare)
        changes = []
        for item in items:
            reason = str(item.reason) if item.reason is not None else ""
            if item.hasAttribute("affiliation"):
                changes.append(("affiliation", self.checkAffiliationChange(item, mine, actorBare),
                                item["affiliation"], reason))
            elif item.hasAttribute("role") and item.hasAttribute("nick"):
                changes.append(("role", self.checkRoleChange(item, actor, mine), item["role"],
                                reason))
            else:
                raise stanzaError("bad-request", "An item changes a role (nick) or an affiliation (jid)")
        owners = {who for who, a in self.affiliations.items() if a == "owner"}
        for kind, who, value, _ in changes:
            if kind == "affiliation":
                (owners.add if value == "owner" else owners.discard)(who)
        if not owners and any(a == "owner" for a in self.affiliations.values()):
            raise stanzaError("conflict", "A room keeps at least one owner")
        actorNick = actor.nick if actor is not None else None
        for kind, target, value, reason in changes:
            if kind == "affiliation":
                self.setAffiliation(target, value, reason, actorNick)
            else:
                self.setRole(target, value, reason, actorNick)
        return self.service.saveRoom(self)

    def checkAffiliationChange(self, item, mine: str, actorBare: str) -> str:
        value = item["affiliation"]
        if value not in AFFILIATION_RANK:
            raise stanzaError("bad-request", f"Unknown affiliation {value!r}")
        try:
            target = jid.JID(item.getAttribute("jid", "")).userhost()
        except (jid.InvalidFormat, UnicodeError):
            raise stanzaError("jid-malformed", "The item's jid is not a JID") from None
        if not item.getAttribute("jid"):
            if item.hasAttribute("nick") and item["nick"] in self.occupants:
                target = self.occupants[item["nick"]].bare
            else:
                raise stanzaError("bad-request", "An affiliation change names a jid")
        theirs = self.affiliation(target)
        if mine == "owner":
            return target
        if mine == "admin" and AFFILIATION_RANK[theirs] < AFFILIATION_RANK["admin"] \
                and AFFILIATION_RANK[value] < AFFILIATION_RANK["admin"]:
            return target
        raise stanzaError("not-allowed" if mine == "admin" else "forbidden",
                          "You may not change that affiliation")

    def checkRoleChange(self, item, actor: Occupant | None, mine: str) -> Occupant:
        value = item["role"]
        if value not in ROLES:
            raise stanzaError("bad-request", f"Unknown role {value!r}")
        target = self.occupants.get(item["nick"])
        if target is None:
            raise stanzaError("item-not-found", "Nobody has that nickname here")
        if actor is None or actor.role != "moderator":
            raise stanzaError("forbidden", "Only moderators change roles")
        theirs = self.affiliation(target.bare)
        if AFFILIATION_RANK[theirs] >= AFFILIATION_RANK["admin"] and value != "moderator":
            raise stanzaError("not-allowed", "Admins and owners keep their role")
        if (value == "moderator" or target.role == "moderator") and \
                AFFILIATION_RANK[mine] < AFFILIATION_RANK["admin"]:
            raise stanzaError("not-allowed", "Only admins and owners grant or revoke moderation")
        return target

    def setRole(self, occupant: Occupant, role: str, reason: str = "", actor: str | None = None) -> None:
        if role == "none":
            self.removeOccupant(occupant, [307], actor, reason)
            self.service.occupantLeft(self)
            return
        occupant.role = role
        self.broadcastPresence(occupant)

    def setAffiliation(self, who: str, affiliation: str, reason: str = "",
                       actor: str | None = None) -> None:
        """Set the affiliation of a bare JID; its occupant, if present, is shown or removed."""
        if affiliation == "none":
            self.affiliations.pop(who, None)
            self.reasons.pop(who, None)
        else:
            self.affiliations[who] = affiliation
            self.reasons[who] = reason
        for occupant in [o for o in self.occupants.values() if o.bare == who]:
            if affiliation == "outcast":
                self.removeOccupant(occupant, [301], actor, reason)
            elif self.config.membersOnly and affiliation == "none":
                self.removeOccupant(occupant, [321], actor, reason)
            else:
                occupant.role = self.defaultRole(affiliation)
                self.broadcastPresence(occupant)
        if self.isEmpty():
            self.service.occupantLeft(self)

    def configForm(self) -> data_form.Form:
        form = data_form.Form("form", title=f"Configuration of {self.bare}", formNamespace=NS_ROOMCONFIG)
        for var, attribute, kind, label in CONFIG_FIELDS:
            if attribute is None:
                value = bool(self.config.password)
            else:
                value = getattr(self.config, attribute)
            if kind == "list-single":
                options = [data_form.Option(w) for w in WHOIS]
                form.addField(data_form.Field(kind, var, str(value), label=label, options=options))
            elif kind == "boolean":
                form.addField(data_form.Field(kind, var, bool(value), label=label))
            else:
                form.addField(data_form.Field(kind, var, str(value), label=label))
        return form

    def applyConfig(self, form: domish.Element) -> list[int]:
        """Apply a submitted configuration form; return the status codes to announce (104 ...)."""
        values = {}
        for f in form.elements(data_form.NS_X_DATA, "field"):
            value = next(f.elements(data_form.NS_X_DATA, "value"), None)
            values[f.getAttribute("var")] = str(value) if value is not None else ""
        new = RoomConfig(**asdict(self.config))
        for var, attribute, kind, _ in CONFIG_FIELDS:
            if var not in values or attribute is None:
                continue
            value = values[var]
            if kind == "boolean":
                setattr(new, attribute, _boolean(value))
            elif attribute in ("maxUsers", "historyLength"):
                setattr(new, attribute, _number(value, var))
            elif attribute == "whois":
                if value not in WHOIS:
                    raise stanzaError("not-acceptable", f"{var} is one of {', '.join(WHOIS)}")
                new.whois = value
            else:
                setattr(new, attribute, value)
        if "muc#roomconfig_passwordprotectedroom" in values and not _boolean(
                values["muc#roomconfig_passwordprotectedroom"]):
            new.password = ""
        self.service.checkConfig(self, new)
        codes = []
        if new.whois != self.config.whois:
            codes.append(172 if new.whois == "anyone" else 173)
        if new.persistent and new.archive != (self.config.persistent and self.config.archive):
            codes.append(170)
        codes.append(104)
        self.config = new
        while len(self.history) > min(new.historyLength, self.service.options.max_history):
            self.history.popleft()
        if new.membersOnly:
            for occupant in list(self.occupants.values()):
                if AFFILIATION_RANK[self.affiliation(occupant.bare)] < AFFILIATION_RANK["member"]:
                    self.removeOccupant(occupant, [322], None, "")
        return codes

    def destroy(self, alternate: str | None = None, reason: str = "", password: str = "") -> None:
        """XEP-0045 section 10.9: every occupant is told, with the alternate venue, if any."""
        self.destroyed = True

        def venue(x, item):
            destroy = x.addElement("destroy")
            if alternate:
                destroy["jid"] = alternate
            if reason:
                destroy.addElement("reason", content=reason)
            if password:
                destroy.addElement("password", content=password)
        for occupant in list(self.occupants.values()):
            for full in occupant.sessions:
                self.send(self.occupantPresence(occupant, full, unavailable=True, extra=venue))
        self.occupants.clear()
        self.nicks.clear()

    # -- disco -----------------------------------------------------------------------

    def features(self) -> list[str]:
        c = self.config
        return [NS_MUC,
                "muc_persistent" if c.persistent else "muc_temporary",
                "muc_public" if c.public else "muc_hidden",
                "muc_membersonly" if c.membersOnly else "muc_open",
                "muc_moderated" if c.moderated else "muc_unmoderated",
                "muc_passwordprotected" if c.password else "muc_unsecured",
                "muc_nonanonymous" if c.whois == "anyone" else "muc_semianonymous",
                NS_MUC + "#stable_id", NS_MUC + "#self-ping-optimization",
                NS_SID, NS_OCCUPANT_ID, "urn:xmpp:message-moderate:1", "urn:xmpp:message-retract:1"
                ] + (["urn:xmpp:mam:2"] if self.archiving else [])

    def infoForm(self) -> data_form.Form:
        form = data_form.Form("result", formNamespace=NS_ROOMINFO)
        form.addField(data_form.Field("text-single", "muc#roominfo_description", self.config.description,
                                      label="Description"))
        form.addField(data_form.Field("text-single", "muc#roomconfig_roomname", self.config.name,
                                      label="Name"))
        form.addField(data_form.Field("text-single", "muc#roominfo_subject", self.subject,
                                      label="Subject"))
        form.addField(data_form.Field("text-single", "muc#roominfo_occupants",
                                      str(len(self.occupants)), label="Occupants"))
        form.addField(data_form.Field("boolean", "muc#roomconfig_changesubject",
                                      self.config.changeSubject, label="Occupants may change the subject"))
        form.addField(data_form.Field("boolean", "muc#roomconfig_allowinvites",
                                      self.config.allowInvites, label="Occupants may invite others"))
        return form
