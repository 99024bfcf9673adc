"""
XEP-0191 blocking command, with XEP-0377 spam reports.

A user blocks JIDs (a domain, a bare JID or a full JID, matched as XEP-0191
section 3.3 and XEP-0016 say: a domain blocks every JID at it, a bare JID
every resource). The blocklist is stored with the account (it goes with it)
and read once, for the whole host, when the module starts; changes are
written to the store first and then to that copy, which the checks read
synchronously, so every stanza is checked in the order it came.

What blocking does, at three documented hooks:
  - C{inbound-stanza}: nothing from a blocked JID reaches the user: a message
    is bounced with C{service-unavailable} (XEP-0191 section 3.3), an IQ get
    or set too, anything else (presence, probes, subscription requests) is
    dropped, so a blocked JID also learns nothing of the user's presence;
  - C{client-stanza}: what the user's clients send to a blocked JID is
    refused with C{not-acceptable} and C{<blocked
    xmlns='urn:xmpp:blocking:errors'/>};
  - C{host-send}: presence the server sends for the user (broadcasts, probe
    answers) does not go to blocked JIDs. At block time, a blocked contact
    who had the user's presence gets an unavailable presence from each of
    the user's available resources; at unblock time it gets their presence
    again.

Block and unblock are pushed to every resource of the user that asked for
the blocklist or the roster, as Prosody does. A block item may carry an
XEP-0377 C{<report/>}: it is logged in one line for admins (reporter,
reported JID, reason, the text cut to L{REPORT_TEXT}) and counted in the
metrics as C{reports.spam} or C{reports.abuse}. A blocklist holds at most
L{MAX_ITEMS} JIDs, so that what is kept in memory for a host stays bounded.
"""

from __future__ import annotations

import itertools

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.xish import domish

from invitesrv.accountiq import answer
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.modules.presence import addressed, makePresence
from invitesrv.modules.roster import FROM, TO
from invitesrv.services.slots import Slot
from invitesrv.xmpp.router import bounce, parseJID

log = logger()

NS_CLIENT = "jabber:client"
NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
NS_REPORTING = "urn:xmpp:reporting:1"
REASONS = {"urn:xmpp:reporting:spam": "spam", "urn:xmpp:reporting:abuse": "abuse"}
REPORT_TEXT = 200  # characters of a report's text that go into the log
MAX_ITEMS = 1000  # JIDs one account may block (docs/limits.md)
REQUEST = f"/iq/*[@xmlns='{NS_BLOCKING}']"

ASKED = Slot("blocking.asked", bool, default=False)  # the session asked for the blocklist


def candidates(address: jid.JID) -> tuple[str, ...]:
    """The blocklist items that match C{address} (XEP-0016 section 2.1's order)."""
    items = [address.full(), address.userhost(), address.host]
    if address.resource is not None:
        items.append(f"{address.host}/{address.resource}")
    return tuple(items)


def matches(item: str, address: jid.JID) -> bool:
    """Whether the blocklist item C{item} covers C{address}."""
    return item in candidates(address)


class BlockingModule(HostModule):
    """Blocklists of a host's accounts: the protocol, and the checks on what they send and get."""

    name = "blocking"
    features = (NS_BLOCKING, NS_REPORTING)
    accountFeatures = (NS_BLOCKING,)
    hooks = (("inbound-stanza", "onInbound"),
             ("client-stanza", "onClientStanza"),
             ("host-send", "onHostSend"),
             ("user-deleted", "onUserDeleted"))
    observers = ((REQUEST, "onRequest"),)

    def __init__(self) -> None:
        HostModule.__init__(self)
        self.blocked: dict[str, frozenset[str]] = {}  # username: blocked JIDs
        self._pushIds = itertools.count(1)

    def connectionInitialized(self) -> None:
        HostModule.connectionInitialized(self)
        d = self.parent.store.getBlocklists(self.parent.name)
        d.addCallback(lambda lists: self.blocked.update(
            {username: frozenset(items) for username, items in lists.items()}))
        d.addErrback(lambda failure: log.failure("Cannot read the blocklists of {host}", failure,
                                                 host=self.parent.name))

    def refresh(self, username: str) -> defer.Deferred:
        """Read the user's blocklist from the store again (another node of a cluster changed it)."""
        d = self.parent.store.getBlocklist(self.parent.name, username)
        d.addCallback(lambda items: self.blocked.__setitem__(username, frozenset(items)))
        return d

    def isBlocked(self, username: str, address: str | None) -> bool:
        """
        Whether the account C{username} blocks C{address} (a JID as text);
        never its own JIDs (a user may block their own domain).
        """
        items = self.blocked.get(username)
        if not items or not address:
            return False
        try:
            other = parseJID(address)
        except (jid.InvalidFormat, UnicodeError):
            return False
        own = other.user == username and other.host == self.parent.name
        return not own and not items.isdisjoint(candidates(other))

    # -- enforcement ------------------------------------------------------------

    def onInbound(self, stanza, target: jid.JID) -> bool | None:
        """Hook C{inbound-stanza}: nothing from a JID the user blocks gets through."""
        if not self.isBlocked(target.user, stanza.getAttribute("from")):
            return None
        kind = stanza.getAttribute("type")
        if stanza.name == "message" or (stanza.name == "iq" and kind in ("get", "set")):
            reply = bounce(stanza, "service-unavailable")
            if reply is not None:
                self.parent.router.route(reply)
        return True

    def onClientStanza(self, session, stanza) -> bool | None:
        """Hook C{client-stanza}: the user's clients may not address a JID the user blocks."""
        if not self.isBlocked(session.user, stanza.getAttribute("to")):
            return None
        reply = bounce(stanza, "not-acceptable", "cancel",
                       "You have blocked this address; unblock it first")
        if reply is not None:
            reply.error.addElement((NS_BLOCKING_ERRORS, "blocked"))
            session.send(reply)
        return True

    def onHostSend(self, stanza) -> bool | None:
        """Hook C{host-send}: the server sends no presence of the user to a JID the user blocks."""
        if getattr(stanza, "name", None) != "presence":
            return None
        try:
            sender = parseJID(stanza.getAttribute("from", ""))
        except (jid.InvalidFormat, UnicodeError):
            return None
        if sender.host != self.parent.name or sender.user is None:
            return None
        return self.isBlocked(sender.user, stanza.getAttribute("to")) or None

    def onUserDeleted(self, host: str, username: str) -> None:
        """Hook C{user-deleted}: the store deleted the blocklist with the account."""
        self.blocked.pop(username, None)

    # -- the protocol ---------------------------------------------------------

    def onRequest(self, iq) -> None:
        """A blocklist get, block or unblock from the account itself."""
        if iq.getAttribute("type") not in ("get", "set"):
            return  # a client's answer to a push
        answer(self, iq, self._answer, iq, what="Blocking request")

    def _answer(self, iq):
        """Check the request comes from the account itself and run it; fire with the answer."""
        sender = parseJID(iq["from"])
        to = iq.getAttribute("to")
        if sender.host != self.parent.name or (to is not None and parseJID(to) != sender.userhostJID()):
            raise error.StanzaError("forbidden", text="Only the account itself may use its blocklist")
        request = next(iq.elements())
        kind = iq["type"]
        if kind == "get" and request.name == "blocklist":
            return self._get(iq, sender)
        if kind == "set" and request.name in ("block", "unblock"):
            items = self._items(request)
            if request.name == "block":
                if not items:
                    raise error.StanzaError("bad-request", text="Block at least one JID")
                if len(self.blocked.get(sender.user, frozenset()) | set(items)) > MAX_ITEMS:
                    raise error.StanzaError("resource-constraint", "wait",
                                            f"A blocklist holds at most {MAX_ITEMS} JIDs")
                return self._block(iq, sender, items, self._reports(request))
            return self._unblock(iq, sender, items or None)
        raise error.StanzaError("bad-request")

    @staticmethod
    def _items(request) -> list[str]:
        """The JIDs of the request's items, stringprepped; C{jid-malformed} for a bad one."""
        items = []
        for item in request.elements(NS_BLOCKING, "item"):
            try:
                items.append(parseJID(item.getAttribute("jid", "")).full())
            except (jid.InvalidFormat, UnicodeError):
                raise error.StanzaError("jid-malformed",
                                        text=f"Not a JID: {item.getAttribute('jid')!r}") from None
        return items

    @staticmethod
    def _reports(request) -> list[tuple[str, str, str]]:
        """The XEP-0377 reports in a block: (JID, reason, text); C{bad-request} for an unknown reason."""
        reports = []
        for item in request.elements(NS_BLOCKING, "item"):
            for report in item.elements(NS_REPORTING, "report"):
                reason = REASONS.get(report.getAttribute("reason"))
                if reason is None:
                    raise error.StanzaError("bad-request", text="A report's reason is"
                                            " urn:xmpp:reporting:spam or urn:xmpp:reporting:abuse")
                text = " ".join(str(t) for t in report.elements(NS_REPORTING, "text"))
                reports.append((parseJID(item["jid"]).full(), reason, text))
        return reports

    @defer.inlineCallbacks
    def _get(self, iq, sender: jid.JID):
        """The blocklist; the asking session gets pushes from now on."""
        session = self.parent.router.session(sender)
        if session is not None:
            ASKED.set(session, True)
        items = yield self.parent.store.getBlocklist(self.parent.name, sender.user)
        return self._reply(iq, "blocklist", items)

    @defer.inlineCallbacks
    def _block(self, iq, sender: jid.JID, items: list[str], reports):
        """Store, count the reports, withdraw presence, then check and push (in that order)."""
        host, username = self.parent, sender.user
        roster = yield host.store.getRoster(host.name, username)
        added = yield host.store.block(host.name, username, items)
        for reported, reason, text in reports:
            host.metrics[f"reports.{reason}"] += 1
            log.info("Report by {reporter}: {reported} for {reason}: {text!r}",
                     reporter=sender.userhost(), reported=reported, reason=reason,
                     text=text[:REPORT_TEXT])
        self._tellContacts(username, roster, added, unavailable=True)
        self.blocked[username] = self.blocked.get(username, frozenset()) | set(added)
        host.hooks.run("blocklist-changed", host, username)
        self._push(username, "block", added)
        return self._reply(iq, None, ())

    @defer.inlineCallbacks
    def _unblock(self, iq, sender: jid.JID, items: list[str] | None):
        """Store, stop checking, then give presence back and push; C{items} None: all."""
        host, username = self.parent, sender.user
        roster = yield host.store.getRoster(host.name, username)
        removed = yield host.store.unblock(host.name, username, items)
        self.blocked[username] = self.blocked.get(username, frozenset()) - set(removed)
        host.hooks.run("blocklist-changed", host, username)
        self._tellContacts(username, roster, removed, unavailable=False)
        self._push(username, "unblock", removed if items is not None else None if removed else ())
        return self._reply(iq, None, ())

    def _tellContacts(self, username: str, roster, items, unavailable: bool) -> None:
        """
        Contacts (subscribed to the user's presence, or sent directed
        presence) covered by C{items}: at a block, an unavailable presence
        from each available resource; at an unblock, its presence, and a
        probe to those the user is subscribed to, whose presence was dropped.
        """
        if not items:
            return
        sessions = self.parent.resources.present(f"{username}@{self.parent.name}")
        subscribers = [item.contact for item in roster.items if item.subscription in FROM]
        for session in sessions:
            for contact in set(subscribers) | session.directed:
                address = parseJID(contact)
                if any(matches(item, address) for item in items):
                    self.send(makePresence("unavailable", session.full, contact) if unavailable
                              else addressed(session.presence, contact))
        if sessions and not unavailable:
            for item in roster.items:
                if item.subscription in TO and any(matches(i, parseJID(item.contact)) for i in items):
                    self.send(makePresence("probe", f"{username}@{self.parent.name}", item.contact))

    def _push(self, username: str, name: str, items) -> None:
        """
        Tell the user's resources that asked for the blocklist (or the
        roster) what changed: C{items}, or (None) everything was unblocked.
        """
        if items is not None and not items:
            return
        for session in self.parent.resources.online(f"{username}@{self.parent.name}"):
            if ASKED.get(session) or session.interested:
                push = domish.Element((NS_CLIENT, "iq"))
                push["type"], push["id"], push["to"] = "set", f"block{next(self._pushIds)}", session.full
                request = push.addElement((NS_BLOCKING, name))
                for item in items or ():
                    request.addElement("item")["jid"] = item
                self.send(push)

    @staticmethod
    def _reply(iq, name: str | None, items):
        """The result for C{iq}, carrying C{<name>} with C{items} when a name is given."""
        reply = xmlstream.toResponse(iq, "result")
        if name is not None:
            request = reply.addElement((NS_BLOCKING, name))
            for item in items:
                request.addElement("item")["jid"] = item
        return reply
