"""
Incoming server-to-server streams: the receiving side. A peer proves a
domain with SASL EXTERNAL (its certificate is valid for that domain) or
dialback (the domain's authoritative server, reached over our outgoing
stream to it, confirms the key); only then may it send stanzas, and only
C{from} domains it proved to domains we host (a host or one of its
components, L{invitesrv.components}, proved the same way as the host).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.words.protocols.jabber import jid, xmlstream
from twisted.words.xish import domish

from invitesrv.logs import logger
from invitesrv.xmpp.dialback import NS_DIALBACK, NS_DIALBACK_FEATURE
from invitesrv.xmpp.router import parseJID
from invitesrv.xmpp.s2s.stream import (
    NS_STANZAS,
    RemoteUnavailable,
    S2SStream,
    domainOf,
    retarget,
    streamErrorCondition,
)
from invitesrv.xmpp.s2s.tls import PeerCertificate
from invitesrv.xmpp.stream import (
    NS_CLIENT,
    NS_SASL,
    NS_SERVER,
    NS_STREAMS,
    NS_TLS,
    STANZAS,
    ListeningFactory,
    badIQ,
    peerSender,
)
from invitesrv.xmpp.xmlparser import StreamViolation, speaksXMPP1

if TYPE_CHECKING:
    from invitesrv.xmpp.s2s.service import S2SService

log = logger()

MAX_PENDING_DIALBACK = 10  # dialback requests waiting for an answer on one incoming stream


def sendSASL(xs, name: str) -> None:
    """Send an empty SASL element (C{<success/>}, C{<failure/>}) on C{xs}."""
    xs.send(domish.Element((NS_SASL, name)))


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
        self.slowed = False  # over the stanza rate of its domain at the last stanza

    @property
    def authenticated(self) -> bool:
        return bool(self.verified)

    @property
    def label(self) -> str:
        """How log lines name this stream."""
        return f"incoming stream from {self.remote or 'an unnamed server'} ({self.address})"

    def connectionMade(self) -> None:
        port = getattr(self.xmlstream.transport.getPeer(), "port", "")
        self.address = f"{self.xmlstream.address}:{port}"

    def connectionLost(self, reason) -> None:
        self.gone = True
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
        if self.router.local(local) is None or (self.local is not None and local != self.local):
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
        xs.startTLS(self.tls)
        self.encrypted = True
        xs.reset()

    def _sasl(self, element) -> None:
        """SASL EXTERNAL (XEP-0178): the certificate proves the domain of the stream header."""
        xs = self.xmlstream
        if element.name != "auth":
            sendSASL(xs, "failure")
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
        sendSASL(xs, "success")
        xs.reset()

    def _proved(self, pair: tuple[str, str], how: str) -> None:
        self.verified.add(pair)
        self.xmlstream.established()
        self.xmlstream.promote()
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
        if self.router.local(local) is None:
            xs.closeWithError("host-unknown")
            return
        if self.router.local(remote) is not None:
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
        if self.router.local(originating) is None:
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
        try:
            origin = peerSender(stanza)
        except StreamViolation as e:
            xs.closeWithError(e.condition)
            return
        try:
            target = parseJID(stanza["to"])
        except (jid.InvalidFormat, UnicodeError):
            xs.closeWithError("improper-addressing", "Malformed 'to'")
            return
        local = self.router.local(target.host)
        if local is None:
            log.info("Closing the {stream}: stanza for {domain}, not served here",
                     stream=self.label, domain=target.host)
            xs.closeWithError("host-unknown")
            return
        if (target.host, origin.host) not in self.verified:
            log.info("Closing the {stream}: stanza from {domain}, which it has not proved",
                     stream=self.label, domain=origin.host)
            xs.closeWithError("invalid-from")
            return
        self._stanzaRate(origin.host)
        stanza = retarget(stanza, NS_SERVER, NS_CLIENT)
        if badIQ(stanza):
            self.federation.bounce(stanza, "bad-request", "An iq needs an id and a type")
            return
        local.receive(stanza, target)

    def _stanzaRate(self, domain: str) -> None:
        """Hold the stream to C{domain}'s stanza rate: past it, stop reading for a while."""
        wait = self.federation.stanzaWait(domain)
        if not wait:
            self.slowed = False
            return
        self.federation.server.metrics["stanzas.throttled"] += 1
        if not self.slowed:
            log.info("Slowing down the {stream}: {domain} sends more than {rate} stanzas a second",
                     stream=self.label, domain=domain, rate=self.federation.options.stanza_rate)
        self.slowed = True
        self.xmlstream.throttle(wait)


class S2SListenFactory(ListeningFactory):
    """Builds incoming server-to-server streams."""

    def __init__(self, federation: S2SService):
        ListeningFactory.__init__(self, federation.server)
        self.federation = federation

    def buildProtocol(self, addr):
        stream = S2SStream(IncomingAuthenticator(self.federation), self.federation)
        stream.factory = self
        return stream
