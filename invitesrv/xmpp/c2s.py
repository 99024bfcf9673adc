"""
Client-to-server streams: the listening factory, the stream protocol, and the
bound session through which an authenticated client's stanzas travel.

Stream negotiation (STARTTLS, SASL, binding) lives in L{invitesrv.xmpp.auth};
this module enforces the addressing rules once a resource is bound: it stamps
C{from} (a spoofed one ends the stream), checks C{to}, and hands the stanza
to its host or the router. No feature logic lives here.
"""

from __future__ import annotations

from functools import partial

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid, xmlstream

from invitesrv.xmpp.stream import NS_CLIENT, STANZAS, ListeningFactory, RestrictedStream, badIQ

# The counters of stanzas from and to clients, by kind (names made once, not per stanza).
RECEIVED = {name: f"stanzas.in.{name}" for name in STANZAS}
SENT = {name: f"stanzas.out.{name}" for name in STANZAS}

NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"


# The empty set of directed-presence targets, shared by the sessions that have none.
NOBODY: frozenset[str] = frozenset()


class C2SStream(RestrictedStream):
    """
    A client's stream: every limit of L{RestrictedStream}, with the client
    rates and sizes. C{lastReceived} is what the C{watchdog} module reads to
    ping a silent session and close a dead one.
    """


class Session:
    """
    A bound resource: where a user's stanzas come from and go to.

    Modules keep their per-session state in L{invitesrv.services.slots.Slot}s
    (C{slots}), and may wrap what goes out to the client (L{addOutput}):
    to count it, queue it or hold it back; and what comes in from it
    (L{addInput}): to count it, or see what it sends. Availability, priority and
    interest are set through L{invitesrv.services.resources.Resources}.
    """

    __slots__ = ("stream", "host", "jid", "full", "bare", "bareJID", "user", "resource",
                 "priority", "available", "presence", "interested", "directed", "address",
                 "closed", "slots", "outputs", "inputs", "__weakref__")

    def __init__(self, stream, host, full: jid.JID, address: str):
        self.stream = stream
        self.host = host
        self.jid = full
        self.full = full.full()
        self.bare = full.userhost()
        self.bareJID = full.userhostJID()
        self.user = full.user
        self.resource = full.resource
        self.address = address
        self.priority = 0
        self.available = False  # sent available presence (RFC 6121 "available resource")
        self.presence = None  # the last available presence broadcast
        self.interested = False  # asked for the roster: gets roster pushes
        # JIDs sent directed presence; replaced, not changed: most sessions
        # send none, and an empty set of their own was 216 bytes each
        self.directed = NOBODY
        self.closed = False
        self.slots: dict = {}  # see invitesrv.services.slots
        self.outputs: tuple = ()  # see addOutput
        self.inputs: tuple = ()  # see addInput

    def __repr__(self) -> str:
        return f"<Session {self.full}>"

    def send(self, element) -> None:
        """Send a stanza to the client, through the output wrappers."""
        self.host.metrics[SENT.get(element.name, "stanzas.out.other")] += 1
        outputs = self.outputs
        if outputs:
            _onward(self, outputs, len(outputs) - 1, Session.deliver, element)
        else:
            self.stream.send(element)

    def deliver(self, element) -> None:
        """Past the output wrappers: onto the session's stream (whichever it is by then)."""
        self.stream.send(element)

    def receive(self, stanza) -> None:
        """A stanza from the client, through the input wrappers."""
        inputs = self.inputs
        if inputs:
            _onward(self, inputs, len(inputs) - 1, Session.stanzaReceived, stanza)
        else:
            self.stanzaReceived(stanza)

    def addOutput(self, wrapper) -> None:
        """
        Wrap the way out: every stanza sent to this session goes to
        C{wrapper(session, element, forward)} instead, which calls
        C{forward(element)} when (and if) it is to go on towards the stream:
        now, later (queued or held), or never. The last wrapper added sees a
        stanza first. A module's method serves every session: nothing is
        made per session.
        """
        self.outputs = (*self.outputs, wrapper)

    def removeOutput(self, wrapper) -> None:
        self.outputs = tuple(w for w in self.outputs if w != wrapper)

    def addInput(self, wrapper) -> None:
        """
        Wrap the way in: every stanza the client sends goes to
        C{wrapper(session, element, forward)} first, before any check (stream
        management counts each one); C{forward(element)} has it checked,
        stamped and routed. The last wrapper added sees a stanza first.
        """
        self.inputs = (*self.inputs, wrapper)

    def removeInput(self, wrapper) -> None:
        self.inputs = tuple(w for w in self.inputs if w != wrapper)

    def attach(self, stream) -> None:
        """
        Go on over C{stream} (a new connection taking over this session, as
        stream management's resumption does); the output wrappers stay.
        """
        self.stream = stream

    def whenSent(self) -> defer.Deferred:
        """
        Fire True once what was sent to this session so far is delivered as
        far as the server can tell, False if the session ends first. With
        stream management (a module answering the C{when-sent} hook) that is
        the client's acknowledgement; without, when the transport has taken
        it (L{RestrictedStream.whenSent}).
        """
        if self.closed:
            return defer.succeed(False)
        d = self.host.hooks.first("when-sent", self)
        return self.stream.whenSent() if d is None else d

    def whenTaken(self) -> defer.Deferred:
        """
        Fire True once the connection has taken what was sent to this
        session so far (at once while the client reads), False if the
        session or its connection ends first, whatever stream management
        says: a sender of many stanzas waits on this between them instead
        of piling them up.
        """
        if self.closed:
            return defer.succeed(False)
        return self.stream.whenSent()

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """End the session: unavailable to everyone at once, then the stream."""
        if self.closed:
            return
        self.closed = True
        self.host.router.unbind(self)
        self.host.hooks.run("session-closed", self)
        if condition:
            self.stream.closeWithError(condition, text)
        else:
            self.stream.close()

    def stanzaReceived(self, stanza) -> None:
        """A stanza from the client: stamp, check and route it."""
        name = stanza.name
        if stanza.uri != NS_CLIENT or name not in STANZAS:
            self.close("unsupported-stanza-type")
            return
        self.host.metrics[RECEIVED[name]] += 1
        sender = stanza.getAttribute("from")
        if sender is not None and sender != self.full and sender != self.bare:
            self.close("invalid-from")
            return
        stanza["from"] = self.full
        if name == "iq" and not self._validIQ(stanza):
            return
        if self.host.hooks.first("client-stanza", self, stanza):
            return
        if name == "presence" and self.host.hooks.first("client-presence", self, stanza):
            return
        if stanza.getAttribute("to") is None:
            self.host.receive(stanza, self.bareJID)
        else:
            self.host.router.route(stanza)

    def _validIQ(self, iq) -> bool:
        kind = iq.getAttribute("type")
        if badIQ(iq):
            self.send(error.StanzaError("bad-request", text="An iq needs an id and a type").toResponse(iq))
            return False
        if kind in ("get", "set"):
            children = [c for c in iq.elements()]
            if len(children) != 1:
                self.send(error.StanzaError("bad-request",
                                            text="A request iq has exactly one child").toResponse(iq))
                return False
            if children[0].uri == NS_SESSION and kind == "set":
                # RFC 3921 session establishment: a no-op kept for old clients.
                self.send(xmlstream.toResponse(iq, "result"))
                return False
        return True


def _onward(session: Session, wrappers: tuple, index: int, last, element) -> None:
    """
    Hand C{element} to wrapper C{index}, whose C{forward} goes on to the one
    before it and after the first to C{last(session, element)}. The chain is
    the tuple of when the stanza set out: a wrapper added or removed meanwhile
    does not change where a held stanza goes.
    """
    if index < 0:
        last(session, element)
    else:
        wrappers[index](session, element, partial(_onward, session, wrappers, index - 1, last))


class C2SFactory(ListeningFactory):
    """Builds a stream and its authenticator per connection."""

    def __init__(self, server, directTLS: bool = False):
        ListeningFactory.__init__(self, server)
        self.directTLS = directTLS

    def buildProtocol(self, addr):
        from invitesrv.xmpp.auth import C2SAuthenticator
        authenticator = C2SAuthenticator(self.server, encrypted=self.directTLS)
        stream = C2SStream(authenticator, self.server)
        stream.factory = self
        return stream
