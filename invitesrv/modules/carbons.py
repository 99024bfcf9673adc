"""
XEP-0280 Message Carbons (C{urn:xmpp:carbons:2}): every device of a user
sees the conversation, whichever device took part in it.

A session enables carbons with an IQ (kept in a slot). A chat message (or a
normal one with a body, or one carrying receipts, chat markers or chat
states, as Prosody's mod_carbons copies) that one of the user's sessions
sends is copied to the user's other enabled sessions in C{<sent/>}; one
delivered to some of the user's sessions (to the bare JID or to a full one)
is copied to the enabled sessions that did not get it in C{<received/>}.
C{<private/>} and XEP-0334's C{<no-copy/>} keep a message from being copied;
error, groupchat and headline messages never are. A C{<private/>} element is
the sender's instruction to the servers: as Prosody's mod_carbons does, it is
taken off a message delivered to a local account, so the recipient never sees
it; an XEP-0334 C{<no-copy/>} hint (which XEP-0280 has senders add anyway)
takes its place, so the recipient's other devices get no copies either.
"""

from __future__ import annotations

from twisted.words.protocols.jabber import jid
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish

from invitesrv.modules.base import HostModule
from invitesrv.services.slots import Slot

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_HINTS = "urn:xmpp:hints"
NS_CLIENT = "jabber:client"
# Payloads that make a message without a body worth copying (Prosody's mod_carbons).
COPIED_PAYLOADS = frozenset(("urn:xmpp:receipts", "urn:xmpp:chat-markers:0",
                             "http://jabber.org/protocol/chatstates"))
ENABLED = Slot("carbons.enabled", bool, default=False)


def isCopied(message: domish.Element) -> bool:
    """Whether a message sent or received by a user goes to the user's other devices."""
    kind = message.getAttribute("type", "normal")
    if kind not in ("chat", "normal"):
        return False
    body = False
    payload = False
    for child in message.elements():
        uri = child.uri
        if uri == NS_CARBONS or (uri == NS_HINTS and child.name == "no-copy"):
            return False  # private, or already a carbon
        if child.name == "body":
            body = True
        elif uri in COPIED_PAYLOADS:
            payload = True
    return kind == "chat" or body or payload


def copyElement(element: domish.Element) -> domish.Element:
    """A deep copy of C{element}, owned by nothing (the original may still be sent or held)."""
    clone = domish.Element((element.uri, element.name), element.defaultUri,
                           dict(element.attributes), dict(element.localPrefixes))
    for child in element.children:
        clone.addChild(copyElement(child) if isinstance(child, domish.Element) else child)
    return clone


class CarbonsModule(HostModule):
    """Copies a user's messages to the user's other carbons-enabled sessions."""

    name = "carbons"
    features = (NS_CARBONS,)
    hooks = (("session-bound", "onSessionBound"), ("message-delivered", "onDelivered"),
             ("inbound-stanza", "onInbound"),
             ("bind2-features", "bind2Feature"), ("bind2-inline", "onBind2"))
    observers = ((f"/iq[@type='set']/enable[@xmlns='{NS_CARBONS}']", "onToggle"),
                 (f"/iq[@type='set']/disable[@xmlns='{NS_CARBONS}']", "onToggle"))

    def onToggle(self, iq):
        """Enable or disable carbons for the session that asks (of its own account only)."""
        session = self.host.router.session(jid.JID(iq["from"]))
        target = iq.getAttribute("to")
        if session is None or target not in (None, session.bare, self.host.name):
            return  # not a session of this host asking for itself: the host refuses it
        iq.handled = True
        ENABLED.set(session, iq.firstChildElement().name == "enable")
        self.send(toResponse(iq, "result"))

    def bind2Feature(self, stream) -> str:
        """Carbons can be enabled inside XEP-0386's bind."""
        return NS_CARBONS

    def onBind2(self, session, request, bound) -> None:
        """C{<enable/>} inside C{<bind/>}: as the IQ would (there is nothing to answer)."""
        if next(request.elements(NS_CARBONS, "enable"), None) is not None:
            ENABLED.set(session, True)

    def onSessionBound(self, session) -> None:
        session.addInput(self.sent)

    def sent(self, session, element, forward) -> None:
        """What a session sends passes here: its messages are copied once they are routed."""
        others = self._enabled(session.bare, (session,)) if element.name == "message" else ()
        copied = bool(others) and isCopied(element)  # before routing takes <private/> off
        forward(element)
        if (copied and not session.closed and element.getAttribute("from") == session.full
                and _bare(element.getAttribute("to")) != session.bare):
            self._copy("sent", element, others)

    def onInbound(self, stanza, target) -> None:
        """A message marked C{<private/>} reaches a local account with C{<no-copy/>} instead."""
        if stanza.name == "message":
            private = [child for child in stanza.elements(NS_CARBONS, "private")]
            if private:
                for child in private:
                    stanza.children.remove(child)
                stanza.addElement((NS_HINTS, "no-copy"))

    def onDelivered(self, message, sessions) -> None:
        """C{message} went to C{sessions} of one account: its other enabled sessions get a copy."""
        others = self.copiedTo(message, sessions)
        if others:
            self._copy("received", message, others)

    def copiedTo(self, message, sessions) -> list:
        """
        The sessions that get a copy of C{message} delivered to C{sessions}
        (bound sessions of one account): stream management asks, so as not
        to hand a message again to a device that has a copy.
        """
        if not sessions or not isCopied(message):
            return []
        sender = message.getAttribute("from")
        return [s for s in self._enabled(sessions[0].bare, sessions) if s.full != sender]

    def _enabled(self, bare: str, excluded) -> list:
        return [s for s in self.host.resources.online(bare)
                if s not in excluded and ENABLED.get(s)]

    def _copy(self, direction: str, message: domish.Element, sessions) -> None:
        original = copyElement(message)
        if original.uri is None:  # made by the server: a forwarded stanza is in jabber:client
            original.uri = original.defaultUri = NS_CLIENT
        for session in sessions:
            carbon = domish.Element((None, "message"))
            carbon["from"] = session.bare
            carbon["to"] = session.full
            carbon["type"] = message.getAttribute("type", "normal")
            carbon.addElement((NS_CARBONS, direction)).addElement(
                (NS_FORWARD, "forwarded")).addChild(original)
            session.send(carbon)


def _bare(address: str | None) -> str | None:
    """The bare part of a JID string (without parsing it: the router already checked it)."""
    return address.split("/", 1)[0] if address else address
