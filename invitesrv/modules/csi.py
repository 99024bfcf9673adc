"""
XEP-0352 Client State Indication: a phone in the background is not woken
for what can wait.

After authentication the stream offers C{<csi xmlns='urn:xmpp:csi:0'/>}. A
session that says C{<inactive/>} has presence updates and messages that
carry nothing but a chat state held back, the latest one per contact only
(per full JID and kind), in the order they last changed. Anything else (a
message with a body, an IQ, a subscription request) first sends what was
held, then goes at once; so does C{<active/>}, and so does a buffer that
grows past C{max_held}. A CSI nonza never ends the stream, not even one
sent before binding (it is ignored then). When the session ends, what is
held goes on its way out too: stream management (which runs after this
module on C{session-closed}) hands on what the client did not get.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.words.xish import domish

from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.modules.carbons import NS_CARBONS, NS_FORWARD
from invitesrv.modules.offline import NS_CHATSTATES, NS_CLIENT, NS_HINTS
from invitesrv.services.slots import Slot

log = logger()

NS_CSI = "urn:xmpp:csi:0"
# What a held message may carry besides its chat state.
INCIDENTAL = frozenset((NS_CHATSTATES, NS_HINTS))
HELD = Slot("csi.held", dict)  # on an inactive session: key -> (element, forward)


@dataclass(frozen=True)
class CSIOptions:
    """C{[modules.csi]}: at most C{max_held} stanzas wait for an inactive client."""

    max_held: int = 256


def _chatStateOnly(message: domish.Element) -> bool:
    """Whether C{message} (or the message a carbon forwards) says nothing but a chat state."""
    children = list(message.elements())
    if len(children) == 1 and children[0].uri == NS_CARBONS:
        for forwarded in children[0].elements(NS_FORWARD, "forwarded"):
            for inner in forwarded.elements(NS_CLIENT, "message"):
                return _chatStateOnly(inner)
        return False
    return (any(child.uri == NS_CHATSTATES for child in children)
            and all(child.uri in INCIDENTAL for child in children))


def holdKey(element: domish.Element):
    """What C{element} replaces in the buffer if it may wait, or None if it goes now."""
    if element.name == "presence":
        if element.getAttribute("type") in (None, "unavailable"):
            return ("presence", element.getAttribute("from"))
    elif element.name == "message" and element.getAttribute("type") != "error" and _chatStateOnly(element):
        return ("chatstate", element.getAttribute("from"), element.getAttribute("to"))
    return None


class CSIModule(HostModule):
    """Holds what can wait while a client says it is inactive."""

    name = "csi"
    Options = CSIOptions
    hooks = (("stream-features", "onFeatures"), ("session-bound", "onSessionBound"),
             ("session-closed", "onSessionClosed"),
             ("bind2-features", "bind2Feature"), ("bind2-inline", "onBind2"))
    nonzas = {(NS_CSI, "inactive"): "onInactive", (NS_CSI, "active"): "onActive"}

    def onFeatures(self, stream, features) -> None:
        if stream.authenticated:
            features.addElement((NS_CSI, "csi"))

    def bind2Feature(self, stream) -> str:
        """The client's state can be given inside XEP-0386's bind."""
        return NS_CSI

    def onBind2(self, session, request, bound) -> None:
        """C{<inactive/>} inside C{<bind/>}: the session starts inactive."""
        if next(request.elements(NS_CSI, "inactive"), None) is not None:
            HELD.set(session, {})

    def onSessionBound(self, session) -> None:
        session.addOutput(self.output)

    def output(self, session, element, forward) -> None:
        """Every stanza to a session passes here: held while it is inactive and may wait."""
        held = HELD.get(session)
        if held is None:
            forward(element)
            return
        key = holdKey(element)
        if key is None:
            self.flush(session)
            forward(element)
            return
        held.pop(key, None)  # the newer one replaces it, at the end
        held[key] = (element, forward)
        if len(held) > self.options.max_held:
            log.info("{jid}: more than {count} stanzas held for an inactive client; sending them",
                     jid=session.full, count=self.options.max_held)
            self.flush(session)

    def onInactive(self, stream, element) -> None:
        session = stream.session
        if session is not None and HELD.get(session) is None:
            HELD.set(session, {})

    def onActive(self, stream, element) -> None:
        session = stream.session
        if session is not None:
            self.flush(session)
            HELD.pop(session)

    def onSessionClosed(self, session) -> None:
        """What was held is sent, not forgotten: stream management keeps what the client misses."""
        self.flush(session)
        HELD.pop(session)

    def flush(self, session) -> None:
        """Send what is held for C{session}, in order; it stays inactive."""
        held = HELD.get(session)
        if held:
            pending = list(held.values())
            held.clear()
            for element, forward in pending:
                forward(element)
