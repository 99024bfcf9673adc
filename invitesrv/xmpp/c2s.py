"""
Client-to-server streams: the listening factory, the stream protocol, and the
bound session through which an authenticated client's stanzas travel.

Stream negotiation (STARTTLS, SASL, binding) lives in L{invitesrv.xmpp.auth};
this module enforces the addressing rules once a resource is bound: it stamps
C{from} (a spoofed one ends the stream), checks C{to}, and hands the stanza
to its host or the router. No feature logic lives here.
"""

from __future__ import annotations

import socket

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.words.protocols.jabber import error, jid, xmlstream
from zope.interface import implementer

from invitesrv.xmpp.xmlparser import RestrictedElementStream, StreamViolation

log = Logger()

NS_CLIENT = "jabber:client"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
STANZAS = frozenset(("message", "presence", "iq"))
IQ_TYPES = frozenset(("get", "set", "result", "error"))

# Seconds a stream we closed has to say goodbye (flush, TLS close) before the
# connection is dropped: a peer that stopped reading cannot keep its socket by
# never taking our last bytes.
CLOSE_TIMEOUT = 10.0

# Why a stream is not reading from its peer (bits of C2SStream._pauses).
_RATE = 1  # over its read budget
_SEND = 2  # the peer does not read what is sent to it


@implementer(IPushProducer)
class C2SStream(xmlstream.XmlStream):
    """
    An XML stream read with the restricted parser. Elements go straight to
    the authenticator rather than through XPath observers: the per-stanza
    path stays short.

    The stream also holds each connection to what it may cost (the rules and
    counters are in L{invitesrv.limits}, the values in C{[limits]}):

      - its read rate: a chunk that goes over the budget is held (one
        read, at most 64 KiB) and the stream stops reading from the peer
        (C{transport.pauseProducing}) until the budget has refilled, so TCP
        pushes back instead of the server buffering;
      - what waits to be sent to a peer that does not read: the stream is
        its transport's streaming producer, so Twisted pauses it when more
        than 64 KiB wait. It then stops reading too (a client that does not
        read gets no more answers queued), counts what it still sends
        (stanzas from others) and drops the connection past C{send_buffer},
        or when the peer has not taken what waits within C{send_timeout}.
        Whoever sends much on the server's own account (offline messages)
        waits for L{whenSent} between stanzas: only the peer's reading is
        measured, not the server's own burst;
      - TCP keepalive, so that a vanished peer is noticed by the kernel.

    C{lastReceived} (clock seconds) is when the peer last sent anything: the
    C{watchdog} module pings a silent session and closes a dead one.
    """

    def __init__(self, authenticator, limits):
        self.limits = limits
        xmlstream.XmlStream.__init__(self, authenticator)
        self.closing = False
        self.closed = defer.Deferred()  # fires when the connection is gone
        self.clock = authenticator.server.clock
        self.lastReceived = 0.0
        self.readBucket = None  # a limits.TokenBucket, or None: not limited
        self._pauses = 0  # why reading is paused: _RATE | _SEND
        self._resumeCall = None
        self._held: bytes | None = None  # a chunk read over the budget, parsed later
        self._abortCall = None
        self.producing = False  # registered as the transport's producer
        self.stalled = False  # the transport paused us: the peer is not reading
        self._backlog = 0  # bytes sent since then
        self._stallCall = None  # drops the connection if the peer does not read in time
        self._waitingSent: list[defer.Deferred] = []  # see whenSent

    def connectionMade(self) -> None:
        self.lastReceived = self.clock.seconds()
        self.transport.registerProducer(self, True)
        self.producing = True
        self._keepAlive()
        xmlstream.XmlStream.connectionMade(self)
        if not self.closing:
            limiter = self.authenticator.server.limiter
            self.readBucket = limiter.readBucket(self.authenticator.address)

    def _keepAlive(self) -> None:
        """TCP keepalive on the socket, probing after C{limits.tcp_keepalive} seconds of silence."""
        idle = int(self.limits.tcp_keepalive)
        transport = self.transport
        while transport is not None and not hasattr(transport, "setTcpKeepAlive"):
            transport = getattr(transport, "transport", None)
        if not idle or transport is None:
            return  # off, or an in-memory transport
        transport.setTcpKeepAlive(True)
        sock = getattr(transport, "socket", None)
        if sock is not None and hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, idle))

    def _initializeStream(self):
        limits = self.limits
        authenticated = self.authenticator.authenticated
        size = limits.stanza_size if authenticated else limits.stanza_size_preauth
        self.stream = RestrictedElementStream(size, limits.max_depth, limits.max_attributes,
                                              limits.max_attribute_length)
        self.stream.DocumentStartEvent = self.onDocumentStart
        self.stream.ElementEvent = self.onElement
        self.stream.DocumentEndEvent = self.onDocumentEnd
        self._beforeHeader = 0  # bytes of this document before its header ended
        if authenticated and self.readBucket is not None:
            if limits.read_rate:
                self.readBucket.configure(limits.read_rate, limits.read_burst)
            else:
                self.readBucket = None

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.lastReceived = self.clock.seconds()
        bucket = self.readBucket
        if bucket is not None:
            wait = bucket.take(len(data))
            if self._held is not None:  # decrypted bytes still arriving after the pause
                self._held += data
                return
            if wait > 0:
                # Over budget: hold this chunk (one read, bounded) and stop reading.
                self.authenticator.server.metrics["reads.throttled"] += 1
                self._held = data
                self._pauseReading(_RATE)
                self._resumeCall = self.clock.callLater(wait, self._rateRefilled)
                return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        try:
            self.stream.parse(data)
            if self._beforeHeader is not None:
                # The parser bounds stanzas, not a stream header that never ends.
                self._beforeHeader += len(data)
                if self._beforeHeader > self.limits.stanza_size_preauth:
                    raise StreamViolation("policy-violation", "Stream header too large")
        except StreamViolation as e:
            log.info("Closing stream from {address}: {condition}: {text}",
                     address=self.authenticator.address, condition=e.condition, text=e.text)
            self.closeWithError(e.condition, e.text)

    def _rateRefilled(self) -> None:
        """The read budget is back: parse what was held, then read again."""
        wait = self.readBucket.take(0) if self.readBucket is not None else 0
        if wait > 0:
            self._resumeCall = self.clock.callLater(wait, self._rateRefilled)
            return
        self._resumeCall = None
        data, self._held = self._held, None
        if data and not self.closing:
            self._parse(data)
        self._resumeReading(_RATE)

    def _pauseReading(self, reason: int) -> None:
        if not self._pauses and not self.closing:
            self.transport.pauseProducing()
        self._pauses |= reason

    def _resumeReading(self, reason: int) -> None:
        self._pauses &= ~reason
        if not self._pauses and not self.closing:
            self.transport.resumeProducing()

    # -- IPushProducer: the transport tells us whether the peer reads --------

    def pauseProducing(self) -> None:
        """More than the transport's buffer waits to be sent: the peer is not reading."""
        if not self.stalled:
            self.stalled = True
            self._backlog = 0
            self.rawDataOutFn = self._countBacklog
            self._pauseReading(_SEND)
            if self.limits.send_timeout:
                self._stallCall = self.clock.callLater(self.limits.send_timeout, self._notReading,
                                                       "nothing taken in {seconds:.0f} s")

    def resumeProducing(self) -> None:
        """The transport has sent what it held."""
        if self.stalled:
            self.stalled = False
            self.rawDataOutFn = None
            self._cancelStallCall()
            self._resumeReading(_SEND)
            self._fireSent(True)

    def whenSent(self) -> defer.Deferred:
        """
        Fire True once the transport has taken what was sent so far (at once
        while the peer reads), False if the connection ends first: a sender
        of many stanzas waits on this between them instead of piling them up.
        """
        if self.closing:
            return defer.succeed(False)
        if not self.stalled:
            return defer.succeed(True)
        d = defer.Deferred()
        self._waitingSent.append(d)
        return d

    def _fireSent(self, taken: bool) -> None:
        waiting, self._waitingSent = self._waitingSent, []
        for d in waiting:
            d.callback(taken)

    def _cancelStallCall(self) -> None:
        if self._stallCall is not None and self._stallCall.active():
            self._stallCall.cancel()
        self._stallCall = None

    def stopProducing(self) -> None:
        """The connection is gone; L{connectionLost} cleans up."""

    def _countBacklog(self, data: bytes) -> None:
        """Called with every write while the peer is not reading (as C{rawDataOutFn})."""
        self._backlog += len(data)
        if self._backlog > self.limits.send_buffer:
            self._notReading("{count} bytes waiting")

    def _notReading(self, why: str) -> None:
        """Drop a peer that does not read what is sent to it; C{why} is a log format."""
        self._stallCall = None
        if self.closing:
            return
        log.info("Dropping the connection from {address}: it does not read what is sent to it"
                 f" ({why})", address=self.authenticator.address, count=self._backlog,
                 seconds=self.limits.send_timeout)
        self.authenticator.server.metrics["connections.unread"] += 1
        self.closing = True
        self.transport.abortConnection()

    def onDocumentStart(self, rootElement) -> None:
        self._beforeHeader = None
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
        self._unregister()
        self.sendStreamError(error.StreamError(condition, text))
        self.closing = True
        self._abortLater()

    def close(self) -> None:
        if not self.closing:
            self._unregister()
            self.sendFooter()
            self.closing = True
            self.transport.loseConnection()
            self._abortLater()

    def _unregister(self) -> None:
        """Stop being the transport's producer: a TLS transport closes only then."""
        if self.producing:
            self.producing = False
            self.transport.unregisterProducer()

    def _abortLater(self) -> None:
        self._abortCall = self.clock.callLater(CLOSE_TIMEOUT, self._closeTimedOut)

    def _closeTimedOut(self) -> None:
        self._abortCall = None
        self.transport.abortConnection()

    def send(self, obj) -> None:
        if not self.closing:
            xmlstream.XmlStream.send(self, obj)

    def connectionLost(self, reason) -> None:
        self.closing = True
        for call in (self._resumeCall, self._abortCall):
            if call is not None and call.active():
                call.cancel()
        self._resumeCall = self._abortCall = None
        self._cancelStallCall()
        xmlstream.XmlStream.connectionLost(self, reason)
        self.authenticator.connectionLost(reason)
        self._fireSent(False)  # the session is closed by now
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

    def whenSent(self) -> defer.Deferred:
        """
        Fire True once what was sent to this session so far is delivered as
        far as the server can tell, False if the session ends first. Without
        stream management that is when the transport has taken it
        (L{C2SStream.whenSent}); XEP-0198 would make it the client's ack.
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
        sender = stanza.getAttribute("from")
        if sender is not None and sender != self.full and sender != self.bare:
            self.close("invalid-from")
            return
        stanza["from"] = self.full
        if name == "iq" and not self._validIQ(stanza):
            return
        if name == "presence" and self.host.hooks.first("client-presence", self, stanza):
            return
        if stanza.getAttribute("to") is None:
            self.host.receive(stanza, self.bareJID)
        else:
            self.host.router.route(stanza)

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
