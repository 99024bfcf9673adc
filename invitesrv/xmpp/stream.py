"""
The restricted XML stream every peer is read with, client or server.

Client streams (L{invitesrv.xmpp.c2s}) and server-to-server streams
(L{invitesrv.xmpp.s2s}) are thin subclasses of L{RestrictedStream}, so that
every limit on what a peer may cost applies to both in one place: the size of
the opening tag, stanza size, depth and attributes (the restricted parser of
L{invitesrv.xmpp.xmlparser}), the read rate with back-pressure, the send
buffer of a peer that does not read, the deadline for a closed stream to go,
and a handler error that ends only its own stream. The rules and counters
are in L{invitesrv.limits}, the values in C{[limits]}.
"""

from __future__ import annotations

import socket

from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.xish import domish
from zope.interface import implementer

from invitesrv.logs import logger
from invitesrv.xmpp.router import parseJID
from invitesrv.xmpp.xmlparser import RestrictedElementStream, StreamViolation

log = logger()

NS_STREAMS = xmlstream.NS_STREAMS
NS_TLS = xmlstream.NS_XMPP_TLS
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_CLIENT = "jabber:client"
NS_SERVER = "jabber:server"
STANZAS = frozenset(("message", "presence", "iq"))


def _quoted(value: str) -> str:
    """An attribute value as domish writes it: escaped, in single quotes."""
    return "'" + domish.escapeToXml(value, isattrib=1) + "'"
IQ_TYPES = frozenset(("get", "set", "result", "error"))


def badIQ(stanza) -> bool:
    """An iq with no known type or no id (RFC 6120 8.2.3): answered with bad-request, not routed."""
    return stanza.name == "iq" and (stanza.getAttribute("type") not in IQ_TYPES
                                    or not stanza.getAttribute("id"))


def peerSender(stanza) -> jid.JID:
    """
    The C{from} of a stanza on a server or component stream, where every
    stanza carries C{from} and C{to}; L{StreamViolation} names the stream
    error otherwise.
    """
    sender = stanza.getAttribute("from")
    if not sender or not stanza.getAttribute("to"):
        raise StreamViolation("improper-addressing", "A stanza needs 'from' and 'to'")
    try:
        return parseJID(sender)
    except (jid.InvalidFormat, UnicodeError):
        raise StreamViolation("invalid-from", f"Malformed 'from': {sender!r}") from None

# Seconds a stream we closed has to say goodbye (flush, TLS close, the peer's
# closing tag) before the connection is dropped: a peer that stopped reading
# cannot keep its socket by never taking our last bytes.
CLOSE_TIMEOUT = 10.0

# A listening stream that has received nothing for this long (seconds, at
# most twice as long) lets its parser rest (L{RestrictedElementStream.rest}):
# soon, so that a burst of logins re-uses the memory of the parsers of those
# already done.
PARSER_REST = 0.5

# Why a stream is not reading from its peer (bits of RestrictedStream._pauses).
_RATE = 1  # over a budget: its read rate, or a stanza rate (L{RestrictedStream.throttle})
_SEND = 2  # the peer does not read what is sent to it


@implementer(IPushProducer, IHandshakeListener)
class RestrictedStream(xmlstream.XmlStream):
    """
    An XML stream read with the restricted parser. Elements go straight to
    the authenticator (C{streamStarted}, C{elementReceived}) rather than
    through XPath observers: the per-stanza path stays short. An exception in
    the authenticator is logged and ends this stream with
    C{<internal-server-error/>}; it never reaches the parser or the reactor.

    The stream also holds each connection to what it may cost:

      - a listening stream is admitted by the server's limiter (connections
        per address, overall, new ones per second) or refused with a stream
        error, and must be L{established} (bound, or a domain proved) within
        C{auth_timeout}, else C{<connection-timeout/>};
      - the opening tag (and anything before it) may not exceed
        C{stanza_size_preauth} bytes, nor stanzas their size before and after
        authentication (L{promote});
      - its read rate: a chunk that goes over the budget is held (one
        read, at most 64 KiB) and the stream stops reading from the peer
        (C{transport.pauseProducing}) until the budget has refilled, so TCP
        pushes back instead of the server buffering;
      - what waits to be sent to a peer that does not read: the stream is
        its transport's streaming producer, so Twisted pauses it when more
        than 64 KiB wait. It then stops reading too (a peer that does not
        read gets no more answers queued), counts what it still sends and
        drops the connection past C{send_buffer}, or when the peer has not
        taken what waits within C{send_timeout}. Whoever sends much on the
        server's own account (offline messages) waits for L{whenSent}
        between stanzas: only the peer's reading is measured, not the
        server's own burst. During a TLS handshake it reads on: what we
        wrote waits for the peer's handshake answer;
      - TCP keepalive, so that a vanished peer is noticed by the kernel.

    @cvar readAfterClose: after our closing tag, read on until the peer's
        (so that nothing it sent meanwhile is lost) instead of hanging up.
    @ivar closing: our closing tag (or a stream error) is sent: nothing more
        goes out.
    @ivar ended: nothing more is read or handled either.
    @ivar closed: fires when the connection is gone.
    @ivar lastReceived: when (clock seconds) the peer last sent anything.
    @ivar address: the peer's IP address.
    @ivar admitted: the limiter counts this (listening) stream.
    """

    readAfterClose = False
    # Twisted's XmlStream keeps its own attributes in the instance dict; with
    # these too, more than Python's 30 shared keys, each stream had a dict of
    # its own (1.6 KB). In slots, they cost 8 bytes each.
    __slots__ = ("server", "limits", "clock", "address", "closing", "ended", "closed",
                 "lastReceived", "peerClosed", "readBucket", "_pauses", "_resumeCall", "_held",
                 "_abortCall", "_authCall", "admitted", "_beforeHeader", "producing", "stalled",
                 "handshaking", "_backlog", "_stallCall", "_waitingSent")

    def __init__(self, authenticator, server):
        self.server = server
        self.limits = server.config.limits
        self.clock = server.clock
        xmlstream.XmlStream.__init__(self, authenticator)
        # A stream error sent before the peer's header is complete (one too
        # large, a refused connection) still names the stream's namespace.
        self.namespace = authenticator.namespace
        self.address = ""
        self.closing = False
        self.ended = False
        self.closed = defer.Deferred()
        self.lastReceived = 0.0
        self.peerClosed = False  # the peer sent its closing tag
        self.readBucket = None  # a limits.TokenBucket, or None: not limited
        self._pauses = 0  # why reading is paused: _RATE | _SEND
        self._resumeCall = None
        self._held: bytes | None = None  # what arrived while throttled, parsed later
        self._abortCall = None
        self._authCall = None
        self.admitted = False
        self._beforeHeader: int | None = 0  # bytes of this document before its header ended
        self.producing = False  # registered as the transport's producer
        self.stalled = False  # the transport paused us: the peer is not reading
        self.handshaking = False  # STARTTLS sent or received, handshake not done
        self._backlog = 0  # bytes sent since then
        self._stallCall = None  # drops the connection if the peer does not read in time
        self._waitingSent: list[defer.Deferred] = []  # see whenSent

    @property
    def label(self) -> str:
        """How log lines name this stream (the authenticator knows best)."""
        return self.authenticator.label

    def connectionMade(self) -> None:
        self.address = getattr(self.transport.getPeer(), "host", "")
        self.lastReceived = self.clock.seconds()
        self.transport.registerProducer(self, True)
        self.producing = True
        self._socketOptions()
        if not self.initiating and not self._admit():
            return
        xmlstream.XmlStream.connectionMade(self)
        if not self.closing:
            self.readBucket = self.server.limiter.readBucket(self.address)

    def _admit(self) -> bool:
        """Count this listening stream against the connection limits, or refuse it."""
        refusal = self.server.limiter.admit(self.address)
        if refusal is not None:
            self.closeWithError(refusal.condition, refusal.text)
            return False
        self.admitted = True
        self.factory.streams.add(self)
        self._authCall = self.clock.callLater(self.limits.auth_timeout, self._authTimedOut)
        return True

    def _authTimedOut(self) -> None:
        self._authCall = None
        log.info("Closing the {stream}: not authenticated in time", stream=self.label)
        self.server.metrics["connections.auth-timeout"] += 1
        self.closeWithError("connection-timeout")

    def established(self) -> None:
        """The peer is through negotiation (bound, or a domain proved): no deadline any more."""
        if self._authCall is not None and self._authCall.active():
            self._authCall.cancel()
        self._authCall = None

    def _socketOptions(self) -> None:
        """
        No Nagle: XMPP is many small request/response writes, each of which
        Nagle would hold back for the peer's delayed ACK. TCP keepalive,
        probing after C{limits.tcp_keepalive} seconds of silence.
        """
        transport = self.transport
        while transport is not None and not hasattr(transport, "setTcpKeepAlive"):
            transport = getattr(transport, "transport", None)
        if transport is None:
            return  # an in-memory transport
        transport.setTcpNoDelay(True)
        idle = int(self.limits.tcp_keepalive)
        if not idle:
            return
        transport.setTcpKeepAlive(True)
        sock = getattr(transport, "socket", None)
        if sock is not None and hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, idle))

    def _initializeStream(self) -> None:
        if self.stream is not None:  # a restart: the old parser goes now
            self.stream.close()
        limits = self.limits
        self.stream = RestrictedElementStream(limits.stanza_size_preauth, limits.max_depth,
                                              limits.max_attributes, limits.max_attribute_length)
        self.stream.DocumentStartEvent = self.onDocumentStart
        self.stream.ElementEvent = self.onElement
        self.stream.DocumentEndEvent = self.onDocumentEnd
        self._beforeHeader = 0
        if self.authenticator.authenticated:
            self.promote()

    def promote(self) -> None:
        """
        The peer has authenticated: from now on stanzas may be as large as
        C{stanza_size} and it reads at C{read_rate}.
        """
        limits = self.limits
        self.stream.maxStanzaSize = limits.stanza_size
        if self.readBucket is not None:
            if limits.read_rate:
                self.readBucket.configure(limits.read_rate, limits.read_burst)
            else:
                self.readBucket = None

    # -- reading ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.ended:
            return
        self.lastReceived = self.clock.seconds()
        bucket = self.readBucket
        wait = bucket.take(len(data)) if bucket is not None else 0.0
        if self._held is not None:  # throttled: decrypted bytes still arriving after the pause
            self._held += data
        elif wait > 0:
            # Over budget: hold this chunk (one read, bounded) and stop reading.
            self.server.metrics["reads.throttled"] += 1
            self._held = data
            self.throttle(wait)
        else:
            self._parse(data)

    def throttle(self, wait: float) -> None:
        """
        Read nothing for C{wait} seconds more: the peer has spent a budget
        (its read rate, or on an incoming server stream the stanza rate of
        its domain). What still arrives is held and parsed when reading
        resumes, so TCP pushes back on the peer and nothing is lost.
        """
        if self._held is None:
            self._held = b""
        self._pauseReading(_RATE)
        call = self._resumeCall
        if call is None:
            self._resumeCall = self.clock.callLater(wait, self._throttleEnded)
        elif call.getTime() < self.clock.seconds() + wait:
            call.reset(wait)

    def _parse(self, data: bytes) -> None:
        if self.admitted:
            self.factory.awake.add(self)
        try:
            self.stream.parse(data)
            if self._beforeHeader is not None:
                # The parser bounds stanzas, not a stream header that never ends.
                self._beforeHeader += len(data)
                if self._beforeHeader > self.limits.stanza_size_preauth:
                    raise StreamViolation("policy-violation", "Stream header too large")
        except StreamViolation as e:
            log.info("Closing the {stream}: {condition}: {text}", stream=self.label,
                     condition=e.condition, text=e.text)
            self.closeWithError(e.condition, e.text)

    def rest(self) -> bool:
        """
        The peer is quiet: free the parser's memory until it sends again
        (nothing is lost). Return whether the parser rests.
        """
        return (self.stream is not None and self._held is None and not self.ended
                and self.stream.rest())

    def _throttleEnded(self) -> None:
        """The budgets are back: parse what was held, then read again unless that spent them."""
        self._resumeCall = None
        wait = self.readBucket.take(0) if self.readBucket is not None else 0
        if wait > 0:
            self._resumeCall = self.clock.callLater(wait, self._throttleEnded)
            return
        data, self._held = self._held, None
        if data and not self.ended:
            self._parse(data)
        if self._resumeCall is None:
            self._resumeReading(_RATE)

    def _pauseReading(self, reason: int) -> None:
        if not self._pauses and not self.ended:
            self.transport.pauseProducing()
        self._pauses |= reason

    def _resumeReading(self, reason: int) -> None:
        self._pauses &= ~reason
        if not self._pauses and not self.ended:
            self.transport.resumeProducing()

    def onDocumentStart(self, rootElement) -> None:
        self._beforeHeader = None
        self._handle(self.authenticator.streamStarted, rootElement)

    def onElement(self, element) -> None:
        self._handle(self.authenticator.elementReceived, element)

    def _handle(self, handler, element) -> None:
        """Hand C{element} to C{handler}; an error in it ends this stream, nothing else."""
        if self.ended:
            return
        try:
            handler(element)
        except Exception:
            log.failure("Error handling an element on the {stream}", stream=self.label)
            self.closeWithError("internal-server-error")

    def onDocumentEnd(self) -> None:
        """The peer closed its stream: close ours (if not done yet) and the connection."""
        self.peerClosed = True
        self.close()
        self.ended = True
        self.transport.loseConnection()

    # -- TLS ---------------------------------------------------------------------

    def startTLS(self, contextFactory) -> None:
        """Start TLS (STARTTLS) on the connection with C{contextFactory}."""
        self.handshaking = True
        self.transport.startTLS(contextFactory)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done (L{IHandshakeListener}). Until now a write
        could not go out before the peer's answer was read, so a pause of the
        transport did not mean the peer was not reading.
        """
        self.handshaking = False
        if self.stalled:
            self._pauseReading(_SEND)
            self._watchStall()

    # -- IPushProducer: the transport tells us whether the peer reads --------

    def pauseProducing(self) -> None:
        """More than the transport's buffer waits to be sent: the peer is not reading."""
        if not self.stalled:
            self.stalled = True
            self._backlog = 0
            self.rawDataOutFn = self._countBacklog
            if not self.handshaking:
                self._pauseReading(_SEND)
                self._watchStall()

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

    def _watchStall(self) -> None:
        """The peer must take what waits within C{send_timeout}."""
        if self.limits.send_timeout and self._stallCall is None:
            self._stallCall = self.clock.callLater(self.limits.send_timeout, self._notReading,
                                                   "nothing taken in {seconds:.0f} s")

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
        if self.ended:
            return
        log.info("Dropping the connection from {address}: it does not read what is sent to it"
                 f" ({why})", address=self.address, count=self._backlog,
                 seconds=self.limits.send_timeout)
        self.server.metrics["connections.unread"] += 1
        self.closing = self.ended = True
        self.transport.abortConnection()

    # -- sending and closing ---------------------------------------------------

    def send(self, obj) -> None:
        """
        Write C{obj} (an element, text or bytes) as Twisted's C{send} does,
        without its two interface checks: 1.5 µs of a send's 1.7 when the
        bytes are ready, as a stanza's often are.
        """
        if self.closing:
            return
        if isinstance(obj, domish.Element):
            obj = obj.toXml(prefixes=self.prefixes, defaultUri=self.namespace,
                            prefixesInScope=list(self.prefixes.values()))
        if isinstance(obj, str):
            obj = obj.encode("utf-8")
        if self.rawDataOutFn is not None:
            self.rawDataOutFn(obj)
        self.transport.write(obj)

    def sendHeader(self) -> None:
        """
        The stream's opening tag, as Twisted's C{sendHeader} writes it, made
        as text rather than built as an element and serialised: a login
        sends three.
        """
        stream = self.prefixes[NS_STREAMS]
        header = [f"<{stream}:stream xmlns:{stream}='{NS_STREAMS}'"
                  f" xmlns={_quoted(self.namespace)}"]
        header += [f" xmlns:{prefix}={_quoted(uri)}" for uri, prefix in self.prefixes.items()
                   if uri != NS_STREAMS]
        if self.otherEntity:
            header.append(f" to={_quoted(self.otherEntity.userhost())}")
        if self.thisEntity:
            header.append(f" from={_quoted(self.thisEntity.userhost())}")
        if not self.initiating and self.sid:
            header.append(f" id={_quoted(self.sid)}")
        if self.version >= (1, 0):
            header.append(" version='{}.{}'".format(*self.version[:2]))
        header.append(">")
        self.send("".join(header))
        self._headerSent = True

    def close(self) -> None:
        """
        Send our closing tag. Then hang up, or with L{readAfterClose} read on
        until the peer's closing tag; either way within L{CLOSE_TIMEOUT}.
        """
        if self.closing:
            return
        self._unregister()
        self.sendFooter()
        self.closing = True
        if not self.readAfterClose:
            self.ended = True
            self.transport.loseConnection()
        self._abortLater()

    def closeWithError(self, condition: str, text: str | None = None, appCondition=None) -> None:
        """
        Send a stream error (with C{appCondition}, an element, if given) and
        close; nothing more is read or sent.
        """
        if self.ended:
            return
        self._unregister()
        if self.closing:  # our closing tag is out already: just hang up
            self.transport.loseConnection()
        else:
            self.sendStreamError(error.StreamError(condition, text, appCondition=appCondition))
        self.closing = self.ended = True
        if self._abortCall is None:
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

    def connectionLost(self, reason) -> None:
        self.closing = self.ended = True
        for call in (self._resumeCall, self._abortCall, self._authCall):
            if call is not None and call.active():
                call.cancel()
        self._resumeCall = self._abortCall = self._authCall = None
        self._cancelStallCall()
        if self.admitted:
            self.admitted = False
            self.server.limiter.release(self.address)
            self.factory.streams.discard(self)
            self.factory.awake.discard(self)
        if self.stream is not None:
            self.stream.close()
        xmlstream.XmlStream.connectionLost(self, reason)
        self.authenticator.connectionLost(reason)
        self._fireSent(False)  # the session is closed by now
        self.closed.callback(None)


class ListeningFactory(protocol.ServerFactory):
    """
    Builds a listener's streams and keeps the live ones: a shutdown says
    goodbye to each, and every L{PARSER_REST} seconds those that received
    nothing meanwhile let their parsers rest. Most connections are idle
    most of the time; this is most of what an idle one costs in memory.
    Only the streams that read since their parser last rested (C{awake})
    are looked at: many idle connections cost the sweep nothing.
    """

    noisy = False

    def __init__(self, server):
        self.server = server
        self.streams: set[RestrictedStream] = set()
        self.awake: set[RestrictedStream] = set()
        self._resting: task.LoopingCall | None = None

    def startFactory(self) -> None:
        self._resting = task.LoopingCall(self.restParsers)
        self._resting.clock = self.server.clock
        self._resting.start(PARSER_REST, now=False)

    def stopFactory(self) -> None:
        if self._resting is not None and self._resting.running:
            self._resting.stop()
        self._resting = None

    def restParsers(self) -> None:
        """Let the parsers of the streams quiet since the last time rest."""
        quiet = self.server.clock.seconds() - PARSER_REST
        for stream in list(self.awake):
            if stream.lastReceived <= quiet and stream.rest():
                self.awake.discard(stream)
