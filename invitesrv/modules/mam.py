"""
XEP-0313 Message Archive Management (C{urn:xmpp:mam:2}) for accounts, with
XEP-0359 stanza ids and XEP-0441 preferences: every device of a user can
read the conversations it missed.

What is archived follows Prosody's mod_mam: chat and normal messages with a
body, a subject, an encrypted payload (OMEMO, XEP-0380), a receipt, a chat
marker, an invitation or a call, unless an XEP-0334 C{<no-store/>} or
C{<no-permanent-store/>} hint says not to (a C{<store/>} hint archives any
chat or normal message); chat states are left out of the archived copy. A
message is archived in the archive of the account that sends it
(C{client-stanza}, to anyone but the account itself) and of the account
that receives it (C{inbound-stanza}), when the user's preferences allow it.

Each archived message gets its id when it is archived, before it is
delivered: the received message carries C{<stanza-id by='user@host'/>}
with it to every session, to offline storage, and into carbons; a sent
message carries it in the carbons of the user's other devices but not to
the recipient. A C{<stanza-id/>} that claims to be by the user, from
anywhere else, is removed first. Ids are microseconds since the epoch,
increasing on each host, written opaquely (11 characters); an id is also
the message's archived time, so time ranges, pages and the retention sweep
are ranges of one index. The nodes of a cluster each end their ids with a
slot of their own (L{ArchiveIds}), so that they never give one id twice; a
message whose id was taken all the same is archived under a new one.

Writes are batched without delay (L{BatchWriter}): while one batch is on
its way to the store, the next gathers, and a query waits for the writes
queued before it.
With the C{roster} policy the store decides (in the same transaction) and
the live message carries no stanza id. See C{docs/archive.md}.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import datetime

from twisted.internet import defer, task
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.xish import domish

from invitesrv.config import ARCHIVE_POLICIES
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.modules.offline import NS_CHATSTATES, NS_CLIENT, NS_DELAY, NS_HINTS, delayStamp
from invitesrv.services.batches import BatchWriter
from invitesrv.services.slots import Slot
from invitesrv.store.interfaces import (
    ArchivedMessage,
    ArchiveItemNotFound,
    ArchivePrefs,
    ArchiveQuery,
    StoreUnavailable,
)
from invitesrv.xmpp.router import parseJID

log = logger()

NS_MAM = "urn:xmpp:mam:2"
NS_MAM_EXTENDED = "urn:xmpp:mam:2#extended"
NS_SID = "urn:xmpp:sid:0"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DATA = "jabber:x:data"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
# Payloads that make a message without a body worth archiving (Prosody's mod_mam).
ARCHIVED_PAYLOADS = frozenset((
    "urn:xmpp:eme:0", "eu.siacs.conversations.axolotl", "urn:xmpp:omemo:2",
    "urn:xmpp:receipts", "urn:xmpp:chat-markers:0", "jabber:x:conference",
    "urn:xmpp:jingle-message:0", "urn:xmpp:jingle-message:1"))
FORM_FIELDS = ("with", "start", "end", "before-id", "after-id", "ids")
DEFAULT_PAGE = 20  # messages in a page when the query gives no <max/> (Prosody's)
SWEEP_BATCH = 1000  # messages the retention sweep deletes per transaction
# Nodes of a cluster that allocate archive ids of their own: the low 6 bits of an id.
ARCHIVE_SLOTS = 64
QUERIED = Slot("mam.queried", bool, default=False)  # the session's client read the archive


def shouldArchive(message: domish.Element) -> bool:
    """Whether a message is worth keeping in the archives (Prosody's C{should_store})."""
    if message.getAttribute("type", "normal") not in ("chat", "normal"):
        return False
    hints = {child.name for child in message.elements(NS_HINTS)}
    if "no-store" in hints or "no-permanent-store" in hints:
        return False
    if "store" in hints:
        return True
    for child in message.elements():
        if child.uri == message.uri and child.name in ("body", "subject"):
            return True
        if child.uri in ARCHIVED_PAYLOADS or (
                child.uri == NS_MUC_USER and child.firstChildElement() is not None
                and any(True for _ in child.elements(NS_MUC_USER, "invite"))):
            return True
    return False


def archivedForm(message: domish.Element) -> str:
    """The message as archived: in jabber:client, without its chat states."""
    clone = domish.Element((NS_CLIENT, "message"), NS_CLIENT, dict(message.attributes))
    clone.children = [child for child in message.children
                      if not (isinstance(child, domish.Element) and child.uri == NS_CHATSTATES)]
    return clone.toXml()


def encodeId(number: int) -> str:
    """The opaque text of an archive id."""
    return base64.urlsafe_b64encode(number.to_bytes(8, "big")).decode("ascii").rstrip("=")


def decodeId(text: str | None) -> int:
    """The archive id written as C{text}; an C{item-not-found} error if it is none."""
    if text is not None and len(text) == 11:
        try:
            return int.from_bytes(base64.urlsafe_b64decode(text + "="), "big")
        except ValueError:
            pass
    raise error.StanzaError("item-not-found", text=f"No message has the id {text!r}")


def parseStamp(text: str) -> int:
    """An XEP-0082 date-time as microseconds since the epoch; C{bad-request} if it is none."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise error.StanzaError("bad-request", text=f"Not an XEP-0082 date-time: {text!r}")
    return int(moment.timestamp() * 1_000_000)


def _bareOf(address: str) -> str | None:
    """The bare JID of C{address}, stringprepped; None when it is not a JID."""
    try:
        return parseJID(address).userhost()
    except (jid.InvalidFormat, UnicodeError):
        return None


class ArchiveIds:
    """
    Allocates a host's archive ids: microseconds since the epoch, always
    increasing. A node of a cluster has a C{slot} of its own, which every id
    it gives ends with (the id modulo L{ARCHIVE_SLOTS}): two nodes archiving
    for one account in the same microsecond still give two ids, each at most
    L{ARCHIVE_SLOTS} microseconds after its time.
    """

    def __init__(self) -> None:
        self.last = 0
        self.slot: int | None = None  # None: every microsecond is this process's

    def next(self, now: float) -> int:
        number = max(self.last + 1, int(now * 1_000_000))
        if self.slot is not None:
            number += (self.slot - number) % ARCHIVE_SLOTS
        self.last = number
        return number


class MAMModule(HostModule):
    """Archives the messages of a host's accounts and answers their archive queries."""

    name = "mam"
    accountFeatures = (NS_MAM, NS_MAM_EXTENDED, NS_SID)
    hooks = (("inbound-stanza", "onInbound", -100),
             ("client-stanza", "onClientStanza", -100),
             ("offline-message", "onOffline", -100),
             ("user-deleted", "onUserDeleted"),
             ("host-stopping", "onHostStopping", -100))  # after stream management handed on
    observers = ((f"/iq[@type='set']/query[@xmlns='{NS_MAM}']", "onQuery"),
                 (f"/iq[@type='get']/query[@xmlns='{NS_MAM}']", "onFormRequest"),
                 (f"/iq[@type='get']/metadata[@xmlns='{NS_MAM}']", "onMetadata"),
                 (f"/iq/prefs[@xmlns='{NS_MAM}']", "onPrefs"))

    def __init__(self) -> None:
        HostModule.__init__(self)
        self.prefs: dict[str, ArchivePrefs] = {}  # username: preferences, of those who set any
        self.ids = ArchiveIds()
        self.writer: BatchWriter | None = None
        self._sweeper: task.LoopingCall | None = None

    def connectionInitialized(self) -> None:
        HostModule.connectionInitialized(self)
        host = self.parent
        self.writer = BatchWriter(self._append, f"archive messages on {host.name}")
        d = host.store.lastArchiveId(host.name)
        d.addCallback(lambda last: setattr(self.ids, "last", max(self.ids.last, last)))
        d.addCallback(lambda _: host.store.getArchivePrefs(host.name))
        d.addCallback(self.prefs.update)
        d.addErrback(lambda failure: log.failure("Cannot read the archive state of {host}",
                                                 failure, host=host.name))
        if host.options.archive_expires_after > 0:
            self._sweeper = task.LoopingCall(self.sweep)
            self._sweeper.clock = host.clock
            self._sweeper.start(max(1.0, host.options.archive_sweep_interval), now=False)

    def connectionLost(self, reason) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        HostModule.connectionLost(self, reason)

    # -- archiving ------------------------------------------------------------

    def policy(self, username: str, peer: str) -> bool | None:
        """Whether the user's messages with C{peer} are archived; None: if C{peer} is on the roster."""
        prefs = self.prefs.get(username)
        if prefs is not None:
            if peer in prefs.always:
                return True
            if peer in prefs.never:
                return False
        chosen = prefs.policy if prefs is not None else self.parent.options.archive_default_policy
        return None if chosen == "roster" else chosen == "always"

    def _archive(self, username: str, peer: str, message: domish.Element) -> str | None:
        """Archive C{message} for C{username}; the text of its id, if archived now for sure."""
        other = parseJID(peer)
        decision = self.policy(username, other.userhost())
        if decision is False:
            return None
        number = self.ids.next(self.parent.now())
        self.writer.add((username, ArchivedMessage(number, other.userhost(), archivedForm(message),
                                                   other.resource or ""), decision is None))
        return encodeId(number) if decision else None

    def _append(self, batch: list) -> defer.Deferred:
        """
        Write a batch of the writer's; fire with the messages whose ids the
        archive already held (another node gave them), under new ids, for
        the writer to write again: none is dropped.
        """
        host = self.parent
        d = host.store.appendArchive(host.name, batch, host.options.archive_max_items)
        return d.addCallback(lambda appended: [self._renumber(*entry) for entry in appended[1]])

    def _renumber(self, username: str, message: ArchivedMessage, rosterOnly: bool) -> tuple:
        """The entry under this node's next id, logged: the id it was delivered with is another's."""
        number = self.ids.next(self.parent.now())
        log.warn("Archive id {old} of {user}@{host} was taken (by another node?): archived as {new}",
                 old=encodeId(message.id), user=username, host=self.parent.name, new=encodeId(number))
        return username, replace(message, id=number), rosterOnly

    def _stamp(self, message: domish.Element, owner: str, archiveId: str) -> None:
        stanzaId = message.addElement((NS_SID, "stanza-id"))
        stanzaId["by"] = owner
        stanzaId["id"] = archiveId

    def onInbound(self, stanza, target: jid.JID) -> None:
        """
        Hook C{inbound-stanza} (after blocking's): archive a message for the
        account it is for, and stamp it with its id before it is delivered.
        """
        if stanza.name != "message":
            return None
        owner = target.userhost()
        _removeIds(stanza, owner)
        sender = stanza.getAttribute("from")
        if sender is not None and shouldArchive(stanza):
            archiveId = self._archive(target.user, sender, stanza)
            if archiveId is not None:
                self._stamp(stanza, owner, archiveId)
        return None

    def onClientStanza(self, session, stanza) -> bool | None:
        """
        Hook C{client-stanza} (the last one): archive a message a user sends
        to someone else. The message goes on without the stanza id, which
        stays on C{stanza} for the carbons of the user's other devices.
        """
        if stanza.name != "message":
            return None
        _removeIds(stanza, session.bare)
        to = stanza.getAttribute("to")
        if to is None or _bareOf(to) in (None, session.bare) or not shouldArchive(stanza):
            return None  # to the account itself: archived once, as received
        archiveId = self._archive(session.user, to, stanza)
        if archiveId is None:
            return None
        outgoing = domish.Element((stanza.uri, stanza.name), stanza.defaultUri, dict(stanza.attributes))
        outgoing.children = list(stanza.children)
        self._stamp(stanza, session.bare, archiveId)
        self.parent.router.route(outgoing)
        return True

    def onOffline(self, username: str, message) -> defer.Deferred | None:
        """
        Hook C{offline-message}, after the offline module's: without one, a
        message that was archived is not bounced (it waits in the archive).
        """
        own = f"{username}@{self.parent.name}"
        if any(sid.getAttribute("by") == own for sid in message.elements(NS_SID, "stanza-id")):
            return defer.succeed(True)
        return None

    def onHostStopping(self, host) -> defer.Deferred:
        """Hook C{host-stopping}: the store closes once what was archived so far is written."""
        return self.writer.written()

    def setSlot(self, slot: int | None) -> None:
        """
        Give ids in C{slot} from now on: the one this node of a cluster
        holds (L{invitesrv.cluster.node}), or None when it holds none.
        """
        self.ids.slot = slot

    def onUserDeleted(self, host: str, username: str) -> None:
        """Hook C{user-deleted}: the store deleted the archive and preferences with the account."""
        self.prefs.pop(username, None)

    @defer.inlineCallbacks
    def sweep(self):
        """Delete what is older than C{archive_expires_after}, a batch per transaction."""
        host = self.parent
        expires = host.options.archive_expires_after
        if expires <= 0:
            return 0
        cutoff = int((host.now() - expires) * 1_000_000)
        total = 0
        try:
            while True:
                swept = yield host.store.sweepArchive(host.name, cutoff, SWEEP_BATCH)
                total += swept
                if swept < SWEEP_BATCH:
                    break
        except StoreUnavailable:
            pass  # the store logs those; the next sweep goes on
        except Exception:
            log.failure("Cannot sweep the archives of {host}", host=host.name)
        if total:
            log.info("Archive of {host}: {count} messages older than {seconds:.0f} s deleted",
                     host=host.name, count=total, seconds=expires)
        return total

    # -- queries ----------------------------------------------------------------

    def _owner(self, iq) -> str | None:
        """
        The username whose archive C{iq} is about, or None when it is not
        this host's to answer. An account may use only its own archive;
        anyone else is answered C{forbidden}.
        """
        to = iq.getAttribute("to")
        try:
            sender = parseJID(iq["from"])
            target = parseJID(to) if to else jid.JID(tuple=(sender.user, sender.host, None))
        except (KeyError, jid.InvalidFormat, UnicodeError):
            return None
        if target.host != self.parent.name or target.user is None:
            return None  # the host has no archive of its own
        iq.handled = True
        if sender.userhost() != target.userhost() or target.resource is not None:
            self.send(error.StanzaError("forbidden", text="Only its owner may use an archive")
                      .toResponse(iq))
            return None
        return target.user

    def _reply(self, iq, failure) -> None:
        """Answer C{iq} with the stanza error of C{failure}, or an internal error (logged)."""
        if failure.check(ArchiveItemNotFound):
            failure = error.StanzaError("item-not-found", text="No message has that id")
        elif failure.check(error.StanzaError):
            failure = failure.value
        else:
            log.failure("Archive request of {sender} failed", failure, sender=iq.getAttribute("from"))
            failure = error.StanzaError("internal-server-error")
        self.send(failure.toResponse(iq))

    def onQuery(self, iq) -> None:
        """An archive query: its results as messages to the session that asked, then the fin."""
        username = self._owner(iq)
        if username is None:
            return
        request = iq.query
        try:
            query, flip = self._parseQuery(request)
        except error.StanzaError as e:
            self.send(e.toResponse(iq))
            return
        host = self.parent
        session = host.router.session(parseJID(iq["from"]))
        if session is not None:
            QUERIED.set(session, True)
        d = self.writer.written()
        d.addCallback(lambda _: host.store.queryArchive(host.name, username, query))
        d.addCallback(self._answer, iq, request.getAttribute("queryid"), query, flip)
        d.addErrback(lambda failure: self._reply(iq, failure))

    def readFromArchive(self, session, messages: list[domish.Element]) -> defer.Deferred:
        """
        Fire with those of C{messages}, sent to C{session} and not
        acknowledged when it ended, that its client will read from the
        archive instead: the client queried the archive in that session (as
        Prosody's C{mam_requested}), and the archive holds them, under the
        stanza id they carry (asked of the store, once what is being
        written is written). Prosody's mod_smacks keeps those out of
        offline storage, so the client does not get them twice.
        """
        numbers: dict[int, domish.Element] = {}
        if QUERIED.get(session):
            for message in messages:
                for stanzaId in message.elements(NS_SID, "stanza-id"):
                    if stanzaId.getAttribute("by") == session.bare:
                        try:
                            numbers[decodeId(stanzaId.getAttribute("id"))] = message
                        except error.StanzaError:
                            pass
        if not numbers:
            return defer.succeed([])
        host = self.parent
        query = ArchiveQuery(ids=tuple(numbers), limit=len(numbers))
        d = self.writer.written()
        d.addCallback(lambda _: host.store.queryArchive(host.name, session.user, query))
        d.addCallback(lambda page: [numbers[found.id] for found in page.messages
                                    if found.id in numbers])
        return d

    def _parseQuery(self, request) -> tuple[ArchiveQuery, bool]:
        """The L{ArchiveQuery} a C{<query/>} asks for, and whether the page is flipped."""
        fields: dict = {}
        for form in request.elements(NS_DATA, "x"):
            for field in form.elements(NS_DATA, "field"):
                fields[field.getAttribute("var")] = [str(v) for v in field.elements(NS_DATA, "value")]
        formType = fields.pop("FORM_TYPE", [NS_MAM])
        if formType != [NS_MAM]:
            raise error.StanzaError("bad-request", text=f"Expected the FORM_TYPE {NS_MAM}")
        unknown = sorted(str(name) for name in set(fields) - set(FORM_FIELDS))
        if unknown:
            raise error.StanzaError("bad-request", text=f"Unknown field: {', '.join(unknown)}")
        value = {name: values[0] for name, values in fields.items() if values}
        filters: dict = {}
        if "with" in value:
            try:
                other = parseJID(value["with"])
            except (jid.InvalidFormat, UnicodeError):
                raise error.StanzaError("bad-request", text="'with' is not a JID") from None
            filters["peer"], filters["resource"] = other.userhost(), other.resource
        low = [decodeId(value["after-id"])] if "after-id" in value else []
        high = [decodeId(value["before-id"])] if "before-id" in value else []
        if "start" in value:
            low.append(parseStamp(value["start"]) - 1)
        if "end" in value:
            high.append(parseStamp(value["end"]) + 1)
        if "ids" in fields:
            if len(fields["ids"]) > self.parent.options.archive_max_page:
                raise error.StanzaError("policy-violation", "modify", text=f"At most"
                                        f" {self.parent.options.archive_max_page} ids at a time")
            filters["ids"] = tuple(decodeId(text) for text in fields["ids"])
        page: dict = {"limit": DEFAULT_PAGE}
        for rsm in request.elements(NS_RSM, "set"):
            for child in rsm.elements(NS_RSM):
                text = str(child).strip()
                if child.name in ("max", "index"):
                    if not text.isdigit():
                        raise error.StanzaError("bad-request", text=f"<{child.name}/> takes a number")
                    page["limit" if child.name == "max" else "offset"] = int(text)
                elif child.name == "after":
                    page["after"] = decodeId(text)
                elif child.name == "before":
                    page["last"] = True
                    if text:
                        page["before"] = decodeId(text)
        page["limit"] = min(page["limit"], self.parent.options.archive_max_page)
        flip = any(True for _ in request.elements(NS_MAM, "flip-page"))
        return ArchiveQuery(low=max(low, default=None), high=min(high, default=None),
                            **filters, **page), flip

    def _answer(self, page, iq, queryId: str | None, query: ArchiveQuery, flip: bool) -> None:
        session = self.parent.router.session(parseJID(iq["from"]))
        if session is None:
            return  # the session that asked is gone
        for message in reversed(page.messages) if flip else page.messages:
            session.send(self._result(message, session.full, queryId))
        response = xmlstream.toResponse(iq, "result")
        fin = response.addElement((NS_MAM, "fin"))
        if page.complete:
            fin["complete"] = "true"
        rsm = fin.addElement((NS_RSM, "set"))
        if page.messages:
            first = rsm.addElement("first", content=encodeId(page.messages[0].id))
            if page.index is not None:
                first["index"] = str(page.index)
            rsm.addElement("last", content=encodeId(page.messages[-1].id))
        rsm.addElement("count", content=str(page.count))
        session.send(response)

    def _result(self, message: ArchivedMessage, to: str, queryId: str | None) -> domish.Element:
        """
        An archived message, forwarded in a C{<result/>}: written as text
        around the message's XML as it was archived (a page is 50 of these).
        """
        wrapper = domish.Element((NS_CLIENT, "message"))
        wrapper["to"] = to
        query = "" if queryId is None else f" queryid='{domish.escapeToXml(queryId, True)}'"
        wrapper.addRawXml(
            f"<result xmlns='{NS_MAM}'{query} id='{encodeId(message.id)}'>"
            f"<forwarded xmlns='{NS_FORWARD}'><delay xmlns='{NS_DELAY}'"
            f" stamp='{delayStamp(message.id / 1_000_000)}'/>{message.stanza}</forwarded></result>")
        return wrapper

    def onFormRequest(self, iq) -> None:
        """The fields a query form may have (XEP-0313 section 6.1)."""
        if self._owner(iq) is None:
            return
        response = xmlstream.toResponse(iq, "result")
        form = response.addElement((NS_MAM, "query")).addElement((NS_DATA, "x"))
        form["type"] = "form"
        kinds = {"FORM_TYPE": "hidden", "with": "jid-single", "ids": "list-multi"}
        for var in ("FORM_TYPE",) + FORM_FIELDS:
            field = form.addElement("field")
            field["var"] = var
            field["type"] = kinds.get(var, "text-single")
            if var == "FORM_TYPE":
                field.addElement("value", content=NS_MAM)
        self.send(response)

    def onMetadata(self, iq) -> None:
        """The ids and times of the first and last archived messages (XEP-0313 section 7)."""
        username = self._owner(iq)
        if username is None:
            return
        store, host = self.parent.store, self.parent.name
        d = self.writer.written()
        d.addCallback(lambda _: defer.gatherResults([
            store.queryArchive(host, username, ArchiveQuery(limit=1)),
            store.queryArchive(host, username, ArchiveQuery(limit=1, last=True))], consumeErrors=True))

        def answer(pages):
            response = xmlstream.toResponse(iq, "result")
            metadata = response.addElement((NS_MAM, "metadata"))
            for name, page in zip(("start", "end"), pages, strict=True):
                for message in page.messages:
                    edge = metadata.addElement(name)
                    edge["id"] = encodeId(message.id)
                    edge["timestamp"] = delayStamp(message.id / 1_000_000)
            self.send(response)
        d.addCallback(answer)
        d.addErrback(lambda failure: self._reply(iq, getattr(failure.value, "subFailure", failure)))

    # -- preferences (XEP-0441) ---------------------------------------------------

    def onPrefs(self, iq) -> None:
        """Get or set the user's archiving preferences."""
        username = self._owner(iq)
        if username is None:
            return
        if iq["type"] == "get":
            self._sendPrefs(iq, self._prefsOf(username))
            return
        if iq["type"] != "set":
            return
        element = iq.prefs
        policy = element.getAttribute("default", "")
        try:
            if policy not in ARCHIVE_POLICIES:
                raise error.StanzaError("bad-request", text=f"default must be one of"
                                                            f" {', '.join(ARCHIVE_POLICIES)}")
            lists = [tuple(_jids(element, name)) for name in ("always", "never")]
        except error.StanzaError as e:
            self.send(e.toResponse(iq))
            return
        prefs = ArchivePrefs(policy, *lists)
        d = self.parent.store.setArchivePrefs(self.parent.name, username, prefs)
        d.addCallback(lambda _: self.learnPrefs(username, prefs))
        d.addCallback(lambda _: self.parent.hooks.run("archive-prefs-changed", self.parent,
                                                      username, prefs))
        d.addCallback(lambda _: self._sendPrefs(iq, prefs))
        d.addErrback(lambda failure: self._reply(iq, failure))

    def learnPrefs(self, username: str, prefs: ArchivePrefs) -> None:
        """The user's preferences as stored (here, or by another node of a cluster)."""
        self.prefs[username] = prefs

    def _prefsOf(self, username: str) -> ArchivePrefs:
        return self.prefs.get(username) or ArchivePrefs(self.parent.options.archive_default_policy)

    def _sendPrefs(self, iq, prefs: ArchivePrefs) -> None:
        response = xmlstream.toResponse(iq, "result")
        element = response.addElement((NS_MAM, "prefs"))
        element["default"] = prefs.policy
        for name, jids in (("always", prefs.always), ("never", prefs.never)):
            listed = element.addElement(name)
            for address in jids:
                listed.addElement("jid", content=address)
        self.send(response)


def _jids(prefs: domish.Element, name: str) -> list[str]:
    """The JIDs listed in C{<always/>} or C{<never/>}, stringprepped; C{jid-malformed} if one is not."""
    found = []
    for listed in prefs.elements(NS_MAM, name):
        for item in listed.elements(NS_MAM, "jid"):
            try:
                found.append(parseJID(str(item).strip()).full())
            except (jid.InvalidFormat, UnicodeError):
                raise error.StanzaError("jid-malformed", text=f"Not a JID: {str(item)!r}") from None
    return sorted(set(found))


def _removeIds(message: domish.Element, owner: str) -> None:
    """Remove the C{<stanza-id/>}s claiming to be by C{owner}: only the archive writes those."""
    if any(True for _ in message.elements(NS_SID, "stanza-id")):
        message.children = [
            child for child in message.children
            if not (isinstance(child, domish.Element) and child.uri == NS_SID
                    and child.name == "stanza-id" and _bareOf(child.getAttribute("by", "")) == owner)]
