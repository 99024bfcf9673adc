"""
Server-to-server streams (RFC 6120): federation as the router's default route.

A stanza for a domain this server does not host reaches L{S2SService.route}.
It goes out on the outgoing stream of its (local domain, remote domain)
pair, which is opened on demand: the remote server is found
(L{invitesrv.xmpp.resolve}), TLS is started, and this server proves its
domain with SASL EXTERNAL (XEP-0178) when the peer accepts our certificate,
else with dialback (XEP-0220). Stanzas wait in a bounded queue meanwhile and
are bounced with C{remote-server-not-found} or C{remote-server-timeout} when
the peer cannot be reached or refuses us.

Incoming streams arrive on their own listener. A peer proves a domain with
SASL EXTERNAL (its certificate is valid for that domain) or dialback (the
domain's authoritative server, reached over our outgoing stream to it,
confirms the key); only then may it send stanzas, and only C{from} domains it
proved (else stream error C{invalid-from}) to domains we host (else
C{host-unknown}). Verified stanzas go to C{host.receive(stanza, target)}.
Each stream is read with the restricted parser, with the pre-authentication
stanza size until a domain is proved; a peer that breaks a rule loses its own
stream and nothing else. Idle streams are closed after C{[s2s] idle_timeout}
by sending the closing tag and reading on until the peer's, so that nothing
the peer sent in the meantime is lost.

Wokkel's C{wokkel.server} has the same parts (its listen and connect
authenticators, C{ServerService} with queues of stanzas per domain pair and
dialback key helpers, used here through L{invitesrv.xmpp.dialback}), but no
STARTTLS or SASL EXTERNAL, an expat parser with no limits, a C{wokkel.component}
router and the global reactor; this module keeps its shape and replaces those.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.pyopenssl import verify_hostname
from twisted.application import service
from twisted.internet import defer, protocol, ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.xish import domish
from zope.interface import implementer

from invitesrv.xmpp.dialback import NS_DIALBACK, NS_DIALBACK_FEATURE, checkKey, dialbackKey, dialbackSecret
from invitesrv.xmpp.resolve import Resolver
from invitesrv.xmpp.router import bounce, parseJID
from invitesrv.xmpp.xmlparser import RestrictedElementStream, StreamViolation, speaksXMPP1

log = Logger()

NS_SERVER = "jabber:server"
NS_CLIENT = "jabber:client"
NS_STREAMS = xmlstream.NS_STREAMS
NS_TLS = xmlstream.NS_XMPP_TLS
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZAS = frozenset(("message", "presence", "iq"))
IQ_TYPES = frozenset(("get", "set", "result", "error"))

MAX_PENDING_DIALBACK = 10  # dialback requests waiting for an answer on one incoming stream
CLOSE_GRACE = 10.0  # seconds to wait for the peer's closing tag after ours


class RemoteUnavailable(Exception):
    """The remote server cannot be reached or refused us; C{condition} is the stanza error."""

    def __init__(self, condition: str, text: str):
        Exception.__init__(self, text)
        self.condition = condition
        self.text = text


def retarget(element: domish.Element, old: str, new: str) -> domish.Element:
    """
    A copy of C{element} with namespace C{old} replaced by C{new}: stanzas are
    C{jabber:client} inside the server and C{jabber:server} between servers.
    A copy, because modules share children between the stanzas they send.
    """
    copy = domish.Element((new if element.uri == old else element.uri, element.name),
                          new if element.defaultUri == old else element.defaultUri,
                          dict(element.attributes), dict(element.localPrefixes))
    for child in element.children:
        if isinstance(child, domish.Element):
            child = retarget(child, old, new)
            child.parent = copy
        copy.children.append(child)
    return copy


def domainOf(text: str | None) -> str | None:
    """The prepared domain in C{text}, or None when it is absent or not a bare domain."""
    if not text:
        return None
    try:
        parsed = parseJID(text)
    except (jid.InvalidFormat, UnicodeError):
        return None
    if parsed.user is not None or parsed.resource is not None:
        return None
    return parsed.host


def streamErrorCondition(element: domish.Element) -> str:
    """The condition of a received C{<stream:error/>}."""
    for child in element.elements():
        if child.uri == NS_STREAM_ERRORS and child.name != "text":
            return child.name
    return "undefined-condition"


# -- TLS ----------------------------------------------------------------------


class PeerTLS:
    """
    TLS for server-to-server streams, both directions, with this server's
    certificate. The handshake accepts any peer certificate (and asks
    incoming peers for theirs); whether it is valid is decided afterwards
    (L{PeerCertificate.validFor}), so an invalid one means dialback rather
    than a failed connection. Twisted's C{optionsForClientTLS} would instead
    abort the handshake, and a second connection would be needed.
    """

    def __init__(self, options, trust: str = ""):
        self.clientContext = self._context(options, trust)
        self.serverContext = self._context(options, trust)

    @staticmethod
    def _context(options, trust: str) -> SSL.Context:
        context = ssl.CertificateOptions(
            privateKey=options.privateKey, certificate=options.certificate,
            extraCertChain=options.extraCertChain, raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        ).getContext()
        if trust:
            context.load_verify_locations(trust)
        else:
            context.set_default_verify_paths()
        # Asking for the peer's certificate makes OpenSSL insist on a session
        # id context, even with session caching off.
        context.set_session_id(b"invitesrv-s2s")
        # Peers (Prosody) offer ALPN "xmpp-server"; the default selection,
        # made for HTTP, would end the handshake with an internal error.
        context.set_alpn_select_callback(_selectALPN)
        return context

    def client(self, serverName: str) -> PeerCertificate:
        """The TLS layer of an outgoing stream to C{serverName} (sent as SNI)."""
        return PeerCertificate(self.clientContext, serverName)

    def server(self) -> PeerCertificate:
        """The TLS layer of an incoming stream."""
        return PeerCertificate(self.serverContext, None)


def _selectALPN(connection, offered: list[bytes]):
    return b"xmpp-server" if b"xmpp-server" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator)
class PeerCertificate:
    """One stream's TLS layer: it remembers what was wrong with the peer's certificate."""

    def __init__(self, context: SSL.Context, serverName: str | None):
        self.context = context
        self.serverName = serverName
        self.connection: SSL.Connection | None = None
        self.problems: list[int] = []

    def _check(self, connection, certificate, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            self.problems.append(errno)
        return True

    def _connection(self) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_verify(SSL.VERIFY_PEER, self._check)
        self.connection = connection
        return connection

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        connection = self._connection()
        try:
            connection.set_tlsext_host_name(self.serverName.encode("idna"))
        except UnicodeError:
            pass
        return connection

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return self._connection()

    def validFor(self, domain: str) -> bool:
        """Did the peer show a certificate that chains to a trusted root and names C{domain}?"""
        connection = self.connection
        if connection is None or self.problems or connection.get_peer_certificate() is None:
            return False
        try:
            verify_hostname(connection, domain.encode("idna").decode("ascii"))
        except (CertificateError, VerificationError, UnicodeError, ValueError):
            return False
        return True


# -- streams --------------------------------------------------------------------


class S2SStream(xmlstream.XmlStream):
    """
    One server-to-server TCP connection: read with the restricted parser,
    elements handed straight to the authenticator, closed when idle.

    @ivar closing: our closing tag (or a stream error) is sent: nothing more
        goes out, but what the peer still sends is read until its closing tag.
    @ivar failed: a stream error ended it: nothing more is read either.
    @ivar closed: fires when the connection is gone.
    """

    def __init__(self, authenticator, federation: S2SService):
        self.federation = federation
        self.clock = federation.clock
        self.limits = federation.config.limits
        xmlstream.XmlStream.__init__(self, authenticator)
        self.closing = False
        self.failed = False
        self.closed = defer.Deferred()
        self.lastActive = 0.0
        self._idleCall = None
        self._graceCall = None

    def connectionMade(self) -> None:
        self.lastActive = self.clock.seconds()
        idle = self.federation.options.idle_timeout
        if idle > 0:
            self._idleCall = self.clock.callLater(idle, self._checkIdle)
        xmlstream.XmlStream.connectionMade(self)

    def _initializeStream(self) -> None:
        limits = self.limits
        size = limits.stanza_size if self.authenticator.authenticated else limits.stanza_size_preauth
        self.stream = RestrictedElementStream(size, limits.max_depth, limits.max_attributes,
                                              limits.max_attribute_length)
        self.stream.DocumentStartEvent = self.onDocumentStart
        self.stream.ElementEvent = self.onElement
        self.stream.DocumentEndEvent = self.onDocumentEnd

    def acceptLargeStanzas(self) -> None:
        """A domain is proved: from now on stanzas may be as large as C{[limits] stanza_size}."""
        self.stream.maxStanzaSize = self.limits.stanza_size

    def dataReceived(self, data: bytes) -> None:
        if self.failed:
            return
        self.lastActive = self.clock.seconds()
        try:
            self.stream.parse(data)
        except StreamViolation as e:
            log.info("Closing the {stream}: {condition}: {text}", stream=self.authenticator.label,
                     condition=e.condition, text=e.text)
            self.closeWithError(e.condition, e.text)

    def onDocumentStart(self, rootElement) -> None:
        if not self.failed:
            self.authenticator.streamStarted(rootElement)

    def onElement(self, element) -> None:
        if self.failed:
            return
        try:
            self.authenticator.elementReceived(element)
        except Exception:
            log.failure("Error handling an element on the {stream}", stream=self.authenticator.label)
            self.closeWithError("internal-server-error")

    def onDocumentEnd(self) -> None:
        """The peer closed its stream: close ours (if not done yet) and the connection."""
        if not self.closing:
            self.closing = True
            self.sendFooter()
        self.transport.loseConnection()

    def sendFooter(self) -> None:
        xmlstream.XmlStream.send(self, "</stream:stream>")

    def close(self) -> None:
        """Close gracefully: our closing tag, then read on until the peer's (bounded in time)."""
        if self.closing:
            return
        self.closing = True
        self.sendFooter()
        self._graceCall = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def closeWithError(self, condition: str, text: str | None = None) -> None:
        """Send a stream error and drop the connection; nothing more is read or sent."""
        if self.failed:
            return
        if self.closing:
            self.transport.loseConnection()
        else:
            self.sendStreamError(error.StreamError(condition, text))
        self.failed = self.closing = True

    def send(self, obj) -> None:
        if not self.closing:
            self.lastActive = self.clock.seconds()
            xmlstream.XmlStream.send(self, obj)

    def _checkIdle(self) -> None:
        self._idleCall = None
        limit = self.federation.options.idle_timeout
        idle = self.clock.seconds() - self.lastActive
        if idle < limit:
            self._idleCall = self.clock.callLater(limit - idle, self._checkIdle)
        elif not self.closing:
            log.info("Closing the idle {stream}", stream=self.authenticator.label)
            self.close()

    def connectionLost(self, reason) -> None:
        for call in (self._idleCall, self._graceCall):
            if call is not None and call.active():
                call.cancel()
        self._idleCall = self._graceCall = None
        self.closing = self.failed = True
        xmlstream.XmlStream.connectionLost(self, reason)
        self.authenticator.connectionLost(reason)
        self.closed.callback(None)


def _sendSASL(xs, name: str) -> None:
    xs.send(domish.Element((NS_SASL, name)))


# -- incoming -------------------------------------------------------------------


class IncomingAuthenticator(xmlstream.ListenAuthenticator):
    """
    The receiving side of one incoming stream: STARTTLS, SASL EXTERNAL,
    dialback (as receiving server, and as authoritative server answering
    C{db:verify}), then the peer's stanzas for the domain pairs it proved.

    @ivar verified: the (local domain, remote domain) pairs the peer proved.
    """

    namespace = NS_SERVER

    def __init__(self, federation: S2SService):
        xmlstream.ListenAuthenticator.__init__(self)
        self.federation = federation
        self.router = federation.router
        self.address = ""
        self.local: str | None = None
        self.remote: str | None = None
        self.encrypted = False
        self.tls: PeerCertificate | None = None
        self.certificateValid = False
        self.saslDone = False
        self.verified: set[tuple[str, str]] = set()
        self.pending: dict[tuple[str, str], defer.Deferred] = {}
        self.gone = False
        self._timer = None
        self._admitted: str | None = None  # the address the limiter let in

    @property
    def authenticated(self) -> bool:
        return bool(self.verified)

    @property
    def label(self) -> str:
        """How log lines name this stream."""
        return f"incoming stream from {self.remote or 'an unnamed server'} ({self.address})"

    def connectionMade(self) -> None:
        peer = self.xmlstream.transport.getPeer()
        host = getattr(peer, "host", "")
        self.address = f"{host}:{getattr(peer, 'port', '')}"
        # Servers are held to the same connection caps as clients (per
        # address, overall, new connections per second).
        refusal = self.federation.server.limiter.admit(host)
        if refusal is not None:
            self.xmlstream.closeWithError(refusal.condition, refusal.text)
            return
        self._admitted = host
        self.xmlstream.factory.streams.add(self.xmlstream)
        self._timer = self.federation.clock.callLater(self.federation.config.limits.auth_timeout,
                                                      self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        if not self.verified:
            log.info("Closing the {stream}: no domain proved in time", stream=self.label)
            self.xmlstream.closeWithError("connection-timeout")

    def connectionLost(self, reason) -> None:
        self.gone = True
        self.xmlstream.factory.streams.discard(self.xmlstream)
        if self._admitted is not None:
            self.federation.server.limiter.release(self._admitted)
            self._admitted = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.verified:
            log.info("Incoming stream from {remote} ({address}) closed",
                     remote=", ".join(sorted({remote for _, remote in self.verified})),
                     address=self.address)
        else:
            log.debug("The {stream} closed before proving a domain: {reason}", stream=self.label,
                      reason=reason.getErrorMessage())

    # -- stream header and features ---------------------------------------------

    def streamStarted(self, root) -> None:
        xs = self.xmlstream
        xs.namespace = NS_SERVER
        xs.prefixes = {NS_STREAMS: "stream"}
        if not self.federation.options.require_valid_certificates:
            xs.prefixes[NS_DIALBACK] = "db"  # a declared prefix says "dialback spoken here"
        if root.uri != NS_STREAMS or root.name != "stream" or root.defaultUri != NS_SERVER:
            xs.closeWithError("invalid-namespace")
            return
        hosts = self.router.hosts
        to = root.getAttribute("to")
        if to is not None:
            local = domainOf(to)
        elif self.local is not None or len(hosts) != 1:
            local = self.local
        else:
            local = next(iter(hosts))  # RFC 6120 4.7.2: 'to' may be left out; one host is meant
        if local not in hosts or (self.local is not None and local != self.local):
            xs.closeWithError("host-unknown")
            return
        self.local = local
        xs.thisEntity = jid.JID(local)
        sender = root.getAttribute("from")
        remote = domainOf(sender)
        if (sender is not None and remote is None) or (remote and self.remote and remote != self.remote):
            xs.closeWithError("invalid-from")
            return
        self.remote = remote or self.remote
        xs.otherEntity = jid.JID(self.remote) if self.remote else None
        if not speaksXMPP1(root):
            xs.closeWithError("unsupported-version")
            return
        xs.sid = secrets.token_hex(16)
        if self.encrypted and self.remote:
            self.certificateValid = self.tls.validFor(self.remote)
        xs.sendHeader()
        xs.send(self.features())

    def features(self) -> domish.Element:
        options = self.federation.options
        features = domish.Element((NS_STREAMS, "features"))
        if not self.encrypted and self.federation.tls is not None:
            starttls = features.addElement((NS_TLS, "starttls"))
            if options.require_encryption:
                starttls.addElement("required")
        if self.encrypted or not options.require_encryption:
            if self.certificateValid and not self.saslDone:
                features.addElement((NS_SASL, "mechanisms")).addElement("mechanism", content="EXTERNAL")
            if not options.require_valid_certificates:
                features.addElement((NS_DIALBACK_FEATURE, "dialback"))
        return features

    # -- elements ---------------------------------------------------------------

    def elementReceived(self, element) -> None:
        uri, name = element.uri, element.name
        if uri == NS_SERVER and name in STANZAS:
            self._stanza(element)
        elif uri == NS_DIALBACK and name == "result":
            self._dialbackResult(element)
        elif uri == NS_DIALBACK and name == "verify":
            self._dialbackVerify(element)
        elif uri == NS_TLS and name == "starttls":
            self._startTLS()
        elif uri == NS_SASL:
            self._sasl(element)
        elif uri == NS_STREAMS and name == "error":
            log.info("The {stream} ended with error {condition}", stream=self.label,
                     condition=streamErrorCondition(element))
            self.xmlstream.transport.loseConnection()
        else:
            self.xmlstream.closeWithError("unsupported-stanza-type")

    def _startTLS(self) -> None:
        xs = self.xmlstream
        if self.encrypted or self.federation.tls is None:
            xs.send(domish.Element((NS_TLS, "failure")))
            xs.closeWithError("policy-violation", "TLS is not available")
            return
        xs.send(domish.Element((NS_TLS, "proceed")))
        self.tls = self.federation.tls.server()
        xs.transport.startTLS(self.tls)
        self.encrypted = True
        xs.reset()

    def _sasl(self, element) -> None:
        """SASL EXTERNAL (XEP-0178): the certificate proves the domain of the stream header."""
        xs = self.xmlstream
        if element.name != "auth":
            _sendSASL(xs, "failure")
            xs.closeWithError("policy-violation")
            return
        failure = None
        if element.getAttribute("mechanism") != "EXTERNAL":
            failure = "invalid-mechanism"
        elif self.saslDone or not self.certificateValid:
            failure = "not-authorized"
        else:
            text = str(element).strip()
            try:
                authzid = base64.b64decode(text, validate=True).decode("utf-8") if text not in ("", "=") \
                    else ""
            except (binascii.Error, ValueError):
                failure = "incorrect-encoding"
            else:
                if authzid and domainOf(authzid) != self.remote:
                    failure = "invalid-authzid"
        if failure is not None:
            element = domish.Element((NS_SASL, "failure"))
            element.addElement(failure)
            xs.send(element)
            return
        self.saslDone = True
        self._proved((self.local, self.remote), "SASL EXTERNAL")
        _sendSASL(xs, "success")
        xs.reset()

    def _proved(self, pair: tuple[str, str], how: str) -> None:
        self.verified.add(pair)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.xmlstream.acceptLargeStanzas()
        log.info("Incoming stream from {remote} to {local} ({address}) authenticated by {how}",
                 remote=pair[1], local=pair[0], address=self.address, how=how)

    # -- dialback -----------------------------------------------------------------

    def _dialbackResult(self, element) -> None:
        """A peer asks us (the receiving server) to accept a domain with a dialback key."""
        xs = self.xmlstream
        options = self.federation.options
        if element.hasAttribute("type"):
            return  # an answer has no business on an incoming stream
        if options.require_valid_certificates:
            xs.closeWithError("not-authorized", "This server accepts only valid certificates")
            return
        if options.require_encryption and not self.encrypted:
            xs.closeWithError("policy-violation", "Start TLS first")
            return
        local, remote = domainOf(element.getAttribute("to")), domainOf(element.getAttribute("from"))
        if local is None or remote is None:
            xs.closeWithError("improper-addressing")
            return
        if local not in self.router.hosts:
            xs.closeWithError("host-unknown")
            return
        if remote in self.router.hosts:
            xs.closeWithError("invalid-from", f"{remote} is served here")
            return
        pair = (local, remote)
        if pair in self.verified:
            self._dialbackAnswer(pair, "valid")
            return
        if pair in self.pending:
            return
        if len(self.pending) >= MAX_PENDING_DIALBACK:
            xs.closeWithError("policy-violation", "Too many dialback requests at once")
            return
        d = self.federation.verifyDialback(local, remote, xs.sid, str(element).strip())
        self.pending[pair] = d
        d.addCallbacks(self._dialbackChecked, self._dialbackUnchecked, (pair,), None, (pair,))
        d.addErrback(lambda failure: log.failure("Dialback answer to {address} failed", failure,
                                                 address=self.address))

    def _dialbackChecked(self, valid: bool, pair: tuple[str, str]) -> None:
        self.pending.pop(pair, None)
        if self.gone:
            return
        if valid:
            self._proved(pair, "dialback")
            self._dialbackAnswer(pair, "valid")
            return
        log.info("Refused {remote} on a stream from {address}: its authoritative server does not "
                 "know the dialback key", remote=pair[1], address=self.address)
        self._dialbackAnswer(pair, "invalid")
        if not self.verified:
            self.xmlstream.closeWithError("not-authorized", "The dialback key is not valid")

    def _dialbackUnchecked(self, failure, pair: tuple[str, str]) -> None:
        self.pending.pop(pair, None)
        if self.gone:
            return
        condition = failure.value.condition if failure.check(RemoteUnavailable) \
            else "internal-server-error"
        if not failure.check(RemoteUnavailable):
            log.failure("Checking a dialback key of {remote} failed", failure, remote=pair[1])
        else:
            log.info("Cannot check the dialback key of {remote}: {text}", remote=pair[1],
                     text=failure.value.text)
        self._dialbackAnswer(pair, "error", condition)
        if not self.verified:
            self.xmlstream.closeWithError("remote-connection-failed",
                                          f"Cannot reach the authoritative server of {pair[1]}")

    def _dialbackAnswer(self, pair: tuple[str, str], kind: str, condition: str | None = None) -> None:
        answer = domish.Element((NS_DIALBACK, "result"))
        answer["from"], answer["to"], answer["type"] = pair[0], pair[1], kind
        if condition is not None:
            problem = answer.addElement("error")
            problem["type"] = "cancel"
            problem.addElement((NS_STANZAS, condition))
        self.xmlstream.send(answer)

    def _dialbackVerify(self, element) -> None:
        """As the authoritative server: is this key one we made? (Needs no authentication.)"""
        xs = self.xmlstream
        if element.hasAttribute("type"):
            return  # an answer belongs on an outgoing stream
        receiving = domainOf(element.getAttribute("from"))
        originating = domainOf(element.getAttribute("to"))
        streamID = element.getAttribute("id")
        if receiving is None or originating is None or not streamID:
            xs.closeWithError("improper-addressing")
            return
        if originating not in self.router.hosts:
            xs.closeWithError("host-unknown")
            return
        valid = self.federation.checkKey(receiving, originating, streamID, str(element))
        if not valid:
            log.info("{receiving} asked about a dialback key for {originating} that is not ours",
                     receiving=receiving, originating=originating)
        answer = domish.Element((NS_DIALBACK, "verify"))
        answer["from"], answer["to"], answer["id"] = originating, receiving, streamID
        answer["type"] = "valid" if valid else "invalid"
        xs.send(answer)

    # -- stanzas --------------------------------------------------------------------

    def _stanza(self, stanza) -> None:
        xs = self.xmlstream
        if not self.verified:
            xs.closeWithError("not-authorized")
            return
        sender, to = stanza.getAttribute("from"), stanza.getAttribute("to")
        if not sender or not to:
            xs.closeWithError("improper-addressing")
            return
        try:
            origin = parseJID(sender)
        except (jid.InvalidFormat, UnicodeError):
            xs.closeWithError("invalid-from")
            return
        try:
            target = parseJID(to)
        except (jid.InvalidFormat, UnicodeError):
            xs.closeWithError("improper-addressing", "Malformed 'to'")
            return
        host = self.router.hosts.get(target.host)
        if host is None:
            log.info("Closing the {stream}: stanza for {domain}, not served here",
                     stream=self.label, domain=target.host)
            xs.closeWithError("host-unknown")
            return
        if (target.host, origin.host) not in self.verified:
            log.info("Closing the {stream}: stanza from {domain}, which it has not proved",
                     stream=self.label, domain=origin.host)
            xs.closeWithError("invalid-from")
            return
        stanza = retarget(stanza, NS_SERVER, NS_CLIENT)
        if stanza.name == "iq" and (stanza.getAttribute("type") not in IQ_TYPES
                                    or not stanza.getAttribute("id")):
            self.federation.bounce(stanza, "bad-request", "An iq needs an id and a type")
            return
        host.receive(stanza, target)


class S2SListenFactory(protocol.ServerFactory):
    """Builds incoming streams; keeps the live ones so that a shutdown can say goodbye."""

    def __init__(self, federation: S2SService):
        self.federation = federation
        self.server = federation.server
        self.streams: set[S2SStream] = set()
        self.noisy = False

    def buildProtocol(self, addr):
        stream = S2SStream(IncomingAuthenticator(self.federation), self.federation)
        stream.factory = self
        return stream


# -- outgoing -------------------------------------------------------------------


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

    def _startTLS(self) -> None:
        xs = self.xmlstream
        self.tls = self.federation.tls.client(self.peer.remote)
        xs.transport.startTLS(self.tls)
        self.encrypted = True
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
    """Builds the stream of one connection attempt of an L{OutgoingPeer}."""

    noisy = False

    def __init__(self, peer: OutgoingPeer):
        self.peer = peer

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
        self._connecting = federation.resolver.connect(self.remote, OutgoingFactory(self),
                                                       federation.options.connect_timeout)
        self._connecting.addErrback(self._cannotConnect)

    def _cannotConnect(self, failure) -> None:
        self._connecting = None
        if failure.check(defer.CancelledError):
            return  # the deadline passed: already handled
        self._failed("remote-server-not-found", f"cannot connect to {self.remote}: "
                     f"{failure.getErrorMessage()}")

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
        stream.acceptLargeStanzas()
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


# -- the service ------------------------------------------------------------------


class S2SService(service.Service):
    """
    Federation: the router's default route while running, the outgoing
    peers, the key checks, and the factory for incoming streams
    (L{listenFactory}, which C{makeService} puts behind C{[listen] s2s}).
    """

    def __init__(self, server, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.server = server
        self.router = server.router
        self.config = server.config
        self.options = server.config.federation
        self.clock = server.clock
        self.tls = PeerTLS(server.tls, self.options.trust) if server.tls is not None else None
        self.resolver = Resolver(reactor, self.options.hosts)
        self.peers: dict[tuple[str, str], OutgoingPeer] = {}
        self.listenFactory = S2SListenFactory(self)

    @property
    def secret(self) -> str:
        return dialbackSecret(self.server.secret)

    def startService(self) -> None:
        service.Service.startService(self)
        self.router.remote = self

    def stopService(self):
        """Stop routing to other domains and close our outgoing streams."""
        service.Service.stopService(self)
        if self.router.remote is self:
            self.router.remote = None
        closed = []
        for peer in list(self.peers.values()):
            closed += peer.close("system-shutdown")
        if not closed:
            return None
        everyone = defer.DeferredList(closed)
        timeout = self.clock.callLater(5, everyone.cancel)
        everyone.addBoth(lambda _: timeout.active() and timeout.cancel())
        return everyone

    # -- routing ------------------------------------------------------------------

    def route(self, stanza: domish.Element, target: jid.JID) -> None:
        """The router's default route: a stanza from a local domain to C{target.host}."""
        try:
            local = parseJID(stanza["from"]).host
        except (KeyError, jid.InvalidFormat, UnicodeError):
            local = None
        if local not in self.router.hosts:
            log.warn("Dropped a stanza for {target} whose sender is not local",
                     target=target.full())
            return
        self.peer(local, target.host).send(stanza)

    def peer(self, local: str, remote: str) -> OutgoingPeer:
        peer = self.peers.get((local, remote))
        if peer is None:
            peer = self.peers[local, remote] = OutgoingPeer(self, local, remote)
        return peer

    def forget(self, peer: OutgoingPeer) -> None:
        if self.peers.get((peer.local, peer.remote)) is peer:
            del self.peers[peer.local, peer.remote]

    def bounce(self, stanza: domish.Element, condition: str, text: str | None = None) -> None:
        """Tell the sender of C{stanza} it did not get through (nothing for errors and results)."""
        reply = bounce(stanza, condition, text=text)
        if reply is not None:
            self.router.route(reply)

    # -- dialback -------------------------------------------------------------------

    def key(self, receiving: str, originating: str, streamID: str) -> str:
        return dialbackKey(self.secret, receiving, originating, streamID)

    def checkKey(self, receiving: str, originating: str, streamID: str, key: str) -> bool:
        return checkKey(self.secret, receiving, originating, streamID, key)

    def verifyDialback(self, local: str, remote: str, streamID: str, key: str) -> defer.Deferred:
        """Ask C{remote}'s authoritative server about a key it sent us on stream C{streamID}."""
        return self.peer(local, remote).verify(streamID, key)
