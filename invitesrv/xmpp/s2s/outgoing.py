"""
Outgoing server-to-server streams: the initiating side (STARTTLS, then SASL
EXTERNAL or dialback) and, per (local domain, remote domain) pair, the
authenticated stream, the bounded queue of stanzas waiting for it, and the
dialback keys we were asked to check with the remote domain's server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer, protocol
from twisted.words.protocols.jabber import jid, xmlstream
from twisted.words.xish import domish

from invitesrv.logs import logger
from invitesrv.xmpp.dialback import NS_DIALBACK, NS_DIALBACK_FEATURE
from invitesrv.xmpp.resolve import DNSTimeout
from invitesrv.xmpp.s2s.stream import RemoteUnavailable, S2SStream, retarget, streamErrorCondition
from invitesrv.xmpp.s2s.tls import PeerCertificate
from invitesrv.xmpp.stream import NS_CLIENT, NS_SASL, NS_SERVER, NS_STREAMS, NS_TLS

if TYPE_CHECKING:
    from invitesrv.xmpp.s2s.service import S2SService

log = logger()


class OutgoingAuthenticator(xmlstream.ConnectAuthenticator):
    """
    The initiating side of one outgoing stream: STARTTLS, then SASL EXTERNAL
    if offered, else dialback. It reports to its L{OutgoingPeer}, which also
    sends C{db:verify} requests over it (allowed before it is authenticated).
    """

    namespace = NS_SERVER

    def __init__(self, peer: OutgoingPeer):
        xmlstream.ConnectAuthenticator.__init__(self, peer.remote)
        self.peer = peer
        self.federation = peer.federation
        self.address = ""
        self.encrypted = False
        self.tls: PeerCertificate | None = None
        self.certificateValid = False
        self.authenticated = False
        self.mechanism = ""
        self.saslTried = False
        self.dialbackOffered = False
        self.lastError = ""

    @property
    def label(self) -> str:
        """How log lines name this stream."""
        return f"outgoing stream from {self.peer.local} to {self.peer.remote} ({self.address})"

    def connectionMade(self) -> None:
        xs = self.xmlstream
        xs.namespace = NS_SERVER
        xs.prefixes = {NS_STREAMS: "stream", NS_DIALBACK: "db"}
        xs.thisEntity = jid.JID(self.peer.local)
        xs.otherEntity = jid.JID(self.peer.remote)
        peer = xs.transport.getPeer()
        self.address = f"{getattr(peer, 'host', '')}:{getattr(peer, 'port', '')}"
        self.peer.streamConnected(xs)
        if xs.factory.directTLS:
            self._startTLS(directTLS=True)
        xs.sendHeader()

    def connectionLost(self, reason) -> None:
        self.peer.streamLost(self.xmlstream, self.lastError or reason.getErrorMessage())

    def _giveUp(self, text: str, condition: str | None = None) -> None:
        """This stream will not carry stanzas: tell the peer object, close the stream."""
        self.lastError = text
        self.peer.refused(self.xmlstream, text)
        if condition is None:
            self.xmlstream.close()
        else:
            self.xmlstream.closeWithError(condition, text)

    def streamStarted(self, root) -> None:
        xs = self.xmlstream
        if root.uri != NS_STREAMS or root.name != "stream" or root.defaultUri != NS_SERVER:
            self._giveUp(f"{self.peer.remote} does not speak jabber:server", "invalid-namespace")
            return
        version = root.getAttribute("version", "0.0")
        if version.split(".")[0] in ("", "0"):
            self._giveUp(f"{self.peer.remote} does not speak XMPP 1.0", "unsupported-version")
            return
        xs.sid = root.getAttribute("id") or ""
        self.dialbackOffered = NS_DIALBACK in root.localPrefixes.values()
        if self.encrypted:
            self.certificateValid = self.tls.validFor(self.peer.remote)

    def elementReceived(self, element) -> None:
        uri, name = element.uri, element.name
        if uri == NS_STREAMS and name == "features":
            self._features(element)
        elif uri == NS_STREAMS and name == "error":
            self.lastError = f"stream error {streamErrorCondition(element)}"
            self.xmlstream.transport.loseConnection()
        elif uri == NS_TLS and name == "proceed":
            self._startTLS()
        elif uri == NS_TLS:
            self._giveUp(f"{self.peer.remote} refused STARTTLS")
        elif uri == NS_SASL and name == "success" and self.saslTried and not self.authenticated:
            self.authenticated = True
            self.mechanism = "SASL EXTERNAL"
            self.xmlstream.reset()
            self.xmlstream.sendHeader()
        elif uri == NS_SASL and name == "failure":
            log.info("{remote} refused SASL EXTERNAL from {local}; trying dialback",
                     remote=self.peer.remote, local=self.peer.local)
            self._dialback()
        elif uri == NS_DIALBACK and name == "result":
            self._dialbackResult(element)
        elif uri == NS_DIALBACK and name == "verify":
            self.peer.verifyAnswered(element)

    def _features(self, features) -> None:
        xs = self.xmlstream
        options = self.federation.options
        offered = {(child.uri, child.name): child for child in features.elements()}
        if self.authenticated:  # the stream restarted after SASL
            self.peer.authenticated(xs, self.mechanism)
            if (NS_DIALBACK_FEATURE, "dialback") in offered or self.dialbackOffered:
                self.peer.dialbackReady(xs)
            return
        if (NS_DIALBACK_FEATURE, "dialback") in offered:
            self.dialbackOffered = True
        if not self.encrypted:
            if (NS_TLS, "starttls") in offered and self.federation.tls is not None:
                xs.send(domish.Element((NS_TLS, "starttls")))
                return
            if options.require_encryption:
                self._giveUp(f"{self.peer.remote} does not offer TLS")
                return
        if options.require_valid_certificates and not self.certificateValid:
            self._giveUp(f"the certificate of {self.peer.remote} is not valid")
            return
        mechanisms = offered.get((NS_SASL, "mechanisms"))
        names = [str(m).strip() for m in mechanisms.elements(NS_SASL, "mechanism")] if mechanisms else []
        if "EXTERNAL" in names and self.encrypted and not self.saslTried:
            self.saslTried = True
            element = domish.Element((NS_SASL, "auth"))
            element["mechanism"] = "EXTERNAL"
            element.addContent("=")
            xs.send(element)
            return
        self._dialback()

    def _startTLS(self, directTLS: bool = False) -> None:
        """Start TLS: after C{<proceed/>} (then a new stream), or at once for direct TLS."""
        xs = self.xmlstream
        self.tls = self.federation.tls.client(self.peer.remote, self.peer.local, directTLS)
        xs.startTLS(self.tls)
        self.encrypted = True
        if not directTLS:
            xs.reset()
            xs.sendHeader()

    def _dialback(self) -> None:
        """Prove our domain with a dialback key (XEP-0220 section 2.1)."""
        xs = self.xmlstream
        if self.federation.options.require_valid_certificates:
            self._giveUp(f"{self.peer.remote} did not accept our certificate")
            return
        if not self.dialbackOffered:
            self._giveUp(f"{self.peer.remote} offers no way to authenticate")
            return
        try:
            key = self.federation.key(self.peer.remote, self.peer.local, xs.sid)
        except UnicodeError:
            self._giveUp(f"{self.peer.remote} sent an unusable stream id", "invalid-id")
            return
        self.peer.dialbackReady(xs)
        result = domish.Element((NS_DIALBACK, "result"))
        result["from"], result["to"] = self.peer.local, self.peer.remote
        result.addContent(key)
        xs.send(result)

    def _dialbackResult(self, element) -> None:
        if (element.getAttribute("from") != self.peer.remote
                or element.getAttribute("to") != self.peer.local or self.authenticated):
            return
        if element.getAttribute("type") == "valid":
            self.authenticated = True
            self.mechanism = "dialback"
            self.peer.authenticated(self.xmlstream, self.mechanism)
        else:
            self._giveUp(f"{self.peer.remote} refused our dialback key", "not-authorized")


class OutgoingFactory(protocol.Factory):
    """
    Builds the stream of one connection attempt of an L{OutgoingPeer};
    C{directTLS}: TLS starts at once (XEP-0368), not after STARTTLS.
    """

    noisy = False

    def __init__(self, peer: OutgoingPeer, directTLS: bool = False):
        self.peer = peer
        self.directTLS = directTLS

    def buildProtocol(self, addr):
        stream = S2SStream(OutgoingAuthenticator(self.peer), self.peer.federation)
        stream.factory = self
        return stream


class OutgoingPeer:
    """
    What this server sends from one local domain to one remote domain: the
    authenticated stream, the stanzas waiting for it, and the dialback keys
    we were asked to check with the remote domain's server.
    """

    def __init__(self, federation: S2SService, local: str, remote: str):
        self.federation = federation
        self.local = local
        self.remote = remote
        self.queue: list[domish.Element] = []
        self.stream: S2SStream | None = None  # authenticated: stanzas go here
        self.dialbackStream: S2SStream | None = None  # where db:verify may go
        self.negotiating: S2SStream | None = None
        self.trying = False
        self._connecting: defer.Deferred | None = None
        self._deadline = None
        self._unsent: list[tuple[str, str]] = []  # (stream id, key) to ask about
        self._asked: dict[str, list[tuple[defer.Deferred, object]]] = {}  # stream id -> waiting

    def __repr__(self) -> str:
        return f"<OutgoingPeer {self.local} -> {self.remote}>"

    @property
    def idle(self) -> bool:
        return not (self.trying or self.queue or self._asked or self.stream or self.dialbackStream)

    def _usable(self, stream: S2SStream | None) -> bool:
        return stream is not None and not stream.closing

    def send(self, stanza: domish.Element) -> None:
        """Send now on the authenticated stream, or queue and connect."""
        if self._usable(self.stream):
            self.stream.send(retarget(stanza, NS_CLIENT, NS_SERVER))
            return
        if len(self.queue) >= self.federation.options.max_queued:
            self.federation.bounce(stanza, "resource-constraint",
                                   f"Too many stanzas are waiting for {self.remote}")
            return
        self.queue.append(stanza)
        self.connect()

    def verify(self, streamID: str, key: str) -> defer.Deferred:
        """
        Ask the remote (authoritative) server whether C{key} is its key for
        stream C{streamID}; fire with True or False, or fail with
        L{RemoteUnavailable}.
        """
        d = defer.Deferred()
        timeout = self.federation.clock.callLater(self.federation.options.connect_timeout,
                                                  self._verifyTimedOut, streamID, d)
        self._asked.setdefault(streamID, []).append((d, timeout))
        if self._usable(self.dialbackStream):
            self._sendVerify(self.dialbackStream, streamID, key)
        else:
            self._unsent.append((streamID, key))
            self.connect()
        return d

    def _sendVerify(self, stream: S2SStream, streamID: str, key: str) -> None:
        verify = domish.Element((NS_DIALBACK, "verify"))
        verify["from"], verify["to"], verify["id"] = self.local, self.remote, streamID
        verify.addContent(key)
        stream.send(verify)

    def _answer(self, streamID: str, result=None, failure: Exception | None = None) -> None:
        for d, timeout in self._asked.pop(streamID, []):
            if timeout.active():
                timeout.cancel()
            if failure is None:
                d.callback(result)
            else:
                d.errback(failure)

    def _verifyTimedOut(self, streamID: str, d: defer.Deferred) -> None:
        waiting = self._asked.get(streamID, [])
        self._asked[streamID] = [(other, timeout) for other, timeout in waiting if other is not d]
        if not self._asked[streamID]:
            del self._asked[streamID]
        self._unsent = [(sid, key) for sid, key in self._unsent if sid in self._asked]
        d.errback(RemoteUnavailable("remote-server-timeout", f"{self.remote} did not answer in time"))
        self._forgetIfIdle()

    def verifyAnswered(self, element: domish.Element) -> None:
        """A C{db:verify} answer arrived on our outgoing stream."""
        if element.getAttribute("from") != self.remote or element.getAttribute("to") != self.local:
            return
        self._answer(element.getAttribute("id", ""), element.getAttribute("type") == "valid")
        self._forgetIfIdle()

    # -- connecting ---------------------------------------------------------------

    def connect(self) -> None:
        """Start a connection attempt unless one is under way or a stream is up."""
        if self.trying or self._usable(self.stream):
            return
        federation = self.federation
        self.trying = True
        self._deadline = federation.clock.callLater(federation.options.connect_timeout, self._timedOut)
        log.info("Connecting to {remote} for {local}", remote=self.remote, local=self.local)
        self._connecting = federation.resolver.connect(
            self.remote, lambda target: OutgoingFactory(self, target.directTLS),
            federation.options.connect_timeout, directTLS=federation.tls is not None)
        self._connecting.addErrback(self._cannotConnect)

    def _cannotConnect(self, failure) -> None:
        self._connecting = None
        if failure.check(defer.CancelledError):
            return  # the deadline passed: already handled
        self._failed("remote-server-timeout" if failure.check(DNSTimeout) else "remote-server-not-found",
                     f"cannot connect to {self.remote}: {failure.getErrorMessage()}")

    def _timedOut(self) -> None:
        self._deadline = None
        stream = self.negotiating
        if self._connecting is not None:
            self._connecting.cancel()
        self._failed("remote-server-timeout", f"{self.remote} did not answer in time")
        if stream is not None:
            stream.closeWithError("connection-timeout")

    def streamConnected(self, stream: S2SStream) -> None:
        self._connecting = None
        self.negotiating = stream

    def dialbackReady(self, stream: S2SStream) -> None:
        """C{stream} may carry C{db:verify} requests now: send those that waited."""
        self.dialbackStream = stream
        unsent, self._unsent = self._unsent, []
        for streamID, key in unsent:
            self._sendVerify(stream, streamID, key)

    def authenticated(self, stream: S2SStream, mechanism: str) -> None:
        """The remote server accepted us: send what waited."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.trying = False
        self.negotiating = None
        self.stream = stream
        stream.promote()
        log.info("Outgoing stream from {local} to {remote} authenticated by {how}",
                 local=self.local, remote=self.remote, how=mechanism)
        queue, self.queue = self.queue, []
        for stanza in queue:
            stream.send(retarget(stanza, NS_CLIENT, NS_SERVER))

    def refused(self, stream: S2SStream, text: str) -> None:
        """Negotiation on C{stream} failed (the authenticator closes it)."""
        if stream is self.negotiating:
            self._failed("remote-server-not-found", text)

    def streamLost(self, stream: S2SStream, text: str) -> None:
        if stream is self.stream:
            self.stream = None
            log.info("Outgoing stream from {local} to {remote} closed", local=self.local,
                     remote=self.remote)
        if stream is self.dialbackStream:
            self.dialbackStream = None
            unsent = {streamID for streamID, _ in self._unsent}
            for streamID in [sid for sid in self._asked if sid not in unsent]:
                self._answer(streamID, failure=RemoteUnavailable(
                    "remote-server-not-found", f"{self.remote} closed the stream: {text}"))
        if stream is self.negotiating:
            self._failed("remote-server-not-found", f"{self.remote} closed the stream: {text}")
        if self._unsent and not self.trying:
            self.connect()
        self._forgetIfIdle()

    def _failed(self, condition: str, text: str) -> None:
        """No stream this time: bounce what waited, fail the pending key checks."""
        if not self.trying:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.trying = False
        self.negotiating = None
        log.info("Cannot reach {remote} from {local}: {text}", remote=self.remote, local=self.local,
                 text=text)
        queue, self.queue = self.queue, []
        for stanza in queue:
            self.federation.bounce(stanza, condition, text)
        self._unsent = []
        if self.dialbackStream is None or self.dialbackStream.closing:
            for streamID in list(self._asked):
                self._answer(streamID, failure=RemoteUnavailable(condition, text))
        self._forgetIfIdle()

    def _forgetIfIdle(self) -> None:
        if self.idle:
            self.federation.forget(self)

    def close(self, condition: str | None = None) -> list[defer.Deferred]:
        """Close every stream of this peer; return Deferreds that fire when they are gone."""
        streams = {s for s in (self.stream, self.dialbackStream, self.negotiating) if s is not None}
        if self._connecting is not None:
            self._connecting.cancel()
        for stream in streams:
            if condition:
                stream.closeWithError(condition)
            else:
                stream.close()
        return [stream.closed for stream in streams if not stream.closed.called]
