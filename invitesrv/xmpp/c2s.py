"""
Client-to-server streams: the listening factory, the stream protocol, and the
bound session through which an authenticated client's stanzas travel.

Stream negotiation (STARTTLS, SASL, binding) lives in L{invitesrv.xmpp.auth};
this module enforces the addressing rules once a resource is bound: it stamps
C{from} (a spoofed one ends the stream), checks C{to}, and hands the stanza
to its host or the router. No feature logic lives here.
"""

from __future__ import annotations

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.words.protocols.jabber import error, jid, xmlstream

from invitesrv.xmpp.router import bounce, parseJID
from invitesrv.xmpp.xmlparser import RestrictedElementStream, StreamViolation

log = Logger()

NS_CLIENT = "jabber:client"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
STANZAS = frozenset(("message", "presence", "iq"))
IQ_TYPES = frozenset(("get", "set", "result", "error"))


class C2SStream(xmlstream.XmlStream):
    """
    An XML stream read with the restricted parser. Elements go straight to
    the authenticator rather than through XPath observers: the per-stanza
    path stays short.
    """

    def __init__(self, authenticator, limits):
        self.limits = limits
        xmlstream.XmlStream.__init__(self, authenticator)
        self.closing = False
        self.closed = defer.Deferred()  # fires when the connection is gone

    def _initializeStream(self):
        limits = self.limits
        size = limits.stanza_size if self.authenticator.authenticated else limits.stanza_size_preauth
        self.stream = RestrictedElementStream(size, limits.max_depth, limits.max_attributes,
                                              limits.max_attribute_length)
        self.stream.DocumentStartEvent = self.onDocumentStart
        self.stream.ElementEvent = self.onElement
        self.stream.DocumentEndEvent = self.onDocumentEnd

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.stream.parse(data)
        except StreamViolation as e:
            log.info("Closing stream from {address}: {condition}: {text}",
                     address=self.authenticator.address, condition=e.condition, text=e.text)
            self.closeWithError(e.condition, e.text)

    def onDocumentStart(self, rootElement) -> None:
        self.authenticator.streamStarted(rootElement)

    def onElement(self, element) -> None:
        if not self.closing:
            self.authenticator.elementReceived(element)

    def onDocumentEnd(self) -> None:
        self.close()

    def closeWithError(self, condition: str, text: str | None = None) -> None:
        """Send a stream error and close; nothing more is read or sent."""
        if self.closing:
            return
        self.sendStreamError(error.StreamError(condition, text))
        self.closing = True

    def close(self) -> None:
        if not self.closing:
            self.sendFooter()
            self.closing = True
            self.transport.loseConnection()

    def send(self, obj) -> None:
        if not self.closing:
            xmlstream.XmlStream.send(self, obj)

    def connectionLost(self, reason) -> None:
        self.closing = True
        xmlstream.XmlStream.connectionLost(self, reason)
        self.authenticator.connectionLost(reason)
        self.closed.callback(None)


class Session:
    """A bound resource: where a user's stanzas come from and go to."""

    __slots__ = ("stream", "host", "jid", "full", "bare", "bareJID", "user", "resource",
                 "priority", "available", "presence", "interested", "directed", "address",
                 "closed", "__weakref__")

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
        self.directed: set[str] = set()  # JIDs sent directed presence
        self.closed = False

    def __repr__(self) -> str:
        return f"<Session {self.full}>"

    def send(self, element) -> None:
        self.stream.send(element)

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
        sender = stanza.getAttribute("from")
        if sender is not None and sender != self.full and sender != self.bare:
            self.close("invalid-from")
            return
        stanza["from"] = self.full
        if name == "iq" and not self._validIQ(stanza):
            return
        if name == "presence" and self.host.hooks.first("client-presence", self, stanza):
            return
        to = stanza.getAttribute("to")
        if to is None:
            self.host.receive(stanza, self.bareJID)
            return
        try:
            target = parseJID(to)
        except (jid.InvalidFormat, UnicodeError):
            reply = bounce(stanza, "jid-malformed")
            if reply is not None:
                del reply["from"]
                self.send(reply)
            return
        router = self.host.router
        host = router.hosts.get(target.host)
        if host is None:
            router.routeRemote(stanza, target)
        else:
            host.receive(stanza, target)

    def _validIQ(self, iq) -> bool:
        kind = iq.getAttribute("type")
        if kind not in IQ_TYPES or not iq.getAttribute("id"):
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


class C2SFactory(protocol.ServerFactory):
    """
    Builds a stream and its authenticator per connection. It keeps the live
    streams so that a shutdown can say goodbye to each one.
    """

    def __init__(self, server, directTLS: bool = False):
        self.server = server
        self.directTLS = directTLS
        self.streams: set[C2SStream] = set()
        self.noisy = False

    def buildProtocol(self, addr):
        from invitesrv.xmpp.auth import C2SAuthenticator
        authenticator = C2SAuthenticator(self.server, encrypted=self.directTLS)
        stream = C2SStream(authenticator, self.server.config.limits)
        stream.factory = self
        return stream
