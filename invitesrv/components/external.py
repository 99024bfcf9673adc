"""
External components (XEP-0114, the Jabber Component Protocol): a push app
server, a gateway or a bridge that serves a subdomain from its own process.

The component connects to C{[listen] component}, names the domain it serves
in the stream header's C{to} and proves it with C{<handshake/>}: the hex
SHA-1 of the stream id and the domain's secret from the configuration,
compared in constant time. A domain that is not an external component of a
served host ends the stream with C{<host-unknown/>}, a wrong handshake with
C{<not-authorized/>}. The stream is a L{RestrictedStream} like a client's
or a server's: admitted by the connection limiter, held to the stanza sizes
and read rates of C{[limits]}, with C{auth_timeout} to authenticate.

Once connected, the component may send stanzas only from its domain or a
JID at it (else C{<invalid-from/>}, as for a client or server); they go
through the router like any other. While it is not connected its domain
stays routed here, and stanzas for it are answered with
C{<service-unavailable/>}: the domain is ours, so neither another server nor
C{remote-server-not-found} is the right answer.

A second connection for a domain that is connected replaces the first, which
ends with C{<conflict/>} (as a client's new session does for its resource,
RFC 6120 section 7.7.2.2): only a holder of the secret can do that, and a
component that restarts is back at once instead of being locked out until
the old TCP connection is found dead.
"""

from __future__ import annotations

import hmac
import secrets

from twisted.words.protocols.jabber import jid, xmlstream
from twisted.words.xish import domish
from wokkel import disco

from invitesrv.components.base import Component
from invitesrv.logs import logger
from invitesrv.xmpp.router import bounce
from invitesrv.xmpp.s2s.stream import domainOf, retarget, streamErrorCondition
from invitesrv.xmpp.stream import (
    NS_CLIENT,
    NS_STREAMS,
    STANZAS,
    ListeningFactory,
    RestrictedStream,
    badIQ,
    peerSender,
)
from invitesrv.xmpp.xmlparser import StreamViolation

log = logger()

NS_COMPONENT = "jabber:component:accept"


class ExternalComponent(Component):
    """
    The route to a domain served by an external component: its stream
    while one is connected (and then listed in the host's disco#items),
    C{service-unavailable} while none is.
    """

    def __init__(self, name: str, host, secret: str):
        Component.__init__(self, name, host)
        self.secret = secret
        self.stream = None
        self.discoQuery: str | None = None  # id of our disco#info request to the component

    def stop(self) -> None:
        Component.stop(self)
        if self.stream is not None:
            self.stream.closeWithError("system-shutdown")

    def receive(self, stanza, target: jid.JID) -> None:
        """Send a stanza to the component; refuse it when none is connected, or its stream is closing."""
        if self.stream is None or self.stream.closing:
            self.refuse(stanza, "service-unavailable", "The component is not connected")
            return
        self.stream.send(retarget(stanza, NS_CLIENT, NS_COMPONENT))

    def attach(self, stream) -> None:
        """C{stream} authenticated for this domain: route to it, replacing an older one."""
        old, self.stream = self.stream, stream
        if old is not None:
            log.info("Component {domain}: a new connection replaces the one from {address}",
                     domain=self.name, address=old.address)
            old.closeWithError("conflict", "Replaced by a new connection")
        self.list()
        self.discoQuery = secrets.token_hex(8)
        query = domish.Element((NS_COMPONENT, "iq"))
        query["type"], query["id"] = "get", self.discoQuery
        query["from"], query["to"] = self.host.name, self.name
        query.addElement((disco.NS_DISCO_INFO, "query"))
        stream.send(query)

    def detach(self, stream) -> None:
        """C{stream} is gone: stanzas for the domain are refused until it reconnects."""
        if self.stream is stream:
            log.info("Component {domain} disconnected", domain=self.name)
            self.stream = None
            self.unlist()

    def answered(self, iq) -> bool:
        """Take the name from the answer to our disco#info request; False if C{iq} is not it."""
        if self.discoQuery is None or iq.getAttribute("id") != self.discoQuery \
                or iq.getAttribute("to") != self.host.name:
            return False
        self.discoQuery = None
        if iq.getAttribute("type") == "result" and iq.query is not None:
            self.named(disco.DiscoInfo.fromElement(iq.query).identities.values())
        return True


class ComponentAuthenticator(xmlstream.ListenAuthenticator):
    """The receiving side of one component stream: header, handshake, then its stanzas."""

    namespace = NS_COMPONENT

    def __init__(self, server):
        xmlstream.ListenAuthenticator.__init__(self)
        self.server = server
        self.router = server.router
        self.component: ExternalComponent | None = None
        self.authenticated = False

    @property
    def label(self) -> str:
        """How log lines name this stream."""
        name = self.component.name if self.component is not None else "an unknown domain"
        return f"component stream for {name} ({self.xmlstream.address})"

    def connectionLost(self, reason) -> None:
        if self.authenticated:
            self.component.detach(self.xmlstream)

    def streamStarted(self, root) -> None:
        xs = self.xmlstream
        xs.namespace = NS_COMPONENT
        xs.prefixes = {NS_STREAMS: "stream"}
        xs.version = (0, 0)  # XEP-0114 streams carry no version, hence no features
        xs.sid = secrets.token_hex(16)
        if root.uri != NS_STREAMS or root.name != "stream" \
                or root.defaultUri != NS_COMPONENT:
            xs.closeWithError("invalid-namespace")
            return
        component = self.router.components.get(domainOf(root.getAttribute("to")))
        if not isinstance(component, ExternalComponent):
            log.info("Closing the {stream}: {domain!r} is not an external component here",
                     stream=self.label, domain=root.getAttribute("to"))
            xs.closeWithError("host-unknown")
            return
        self.component = component
        xs.thisEntity = component.jid
        xs.sendHeader()

    def elementReceived(self, element) -> None:
        xs = self.xmlstream
        uri, name = element.uri, element.name
        if uri == NS_STREAMS and name == "error":
            log.info("The {stream} ended with error {condition}", stream=self.label,
                     condition=streamErrorCondition(element))
            xs.transport.loseConnection()
        elif self.authenticated and uri == NS_COMPONENT and name in STANZAS:
            self._stanza(element)
        elif not self.authenticated and uri == NS_COMPONENT and name == "handshake":
            self._handshake(element)
        elif not self.authenticated:
            xs.closeWithError("not-authorized")
        else:
            xs.closeWithError("unsupported-stanza-type")

    def _handshake(self, element) -> None:
        """XEP-0114 section 3: the hex SHA-1 of the stream id and the secret."""
        xs = self.xmlstream
        component = self.component
        expected = xmlstream.hashPassword(xs.sid, component.secret)
        if not hmac.compare_digest(str(element).strip().lower().encode(), expected.encode()):
            log.info("Closing the {stream}: wrong handshake", stream=self.label)
            self.server.metrics["components.auth-failures"] += 1
            xs.closeWithError("not-authorized")
            return
        self.authenticated = True
        xs.established()
        xs.promote()
        xs.send(domish.Element((NS_COMPONENT, "handshake")))
        log.info("Component {domain} connected from {address}", domain=component.name,
                 address=xs.address)
        component.attach(xs)

    def _stanza(self, stanza) -> None:
        """A stanza from the component: from its domain, with a C{to}; then routed."""
        xs = self.xmlstream
        sender = stanza.getAttribute("from")
        try:
            origin = peerSender(stanza)
            if origin.host != self.component.name:
                raise StreamViolation("invalid-from", f"Not from {self.component.name}")
        except StreamViolation as e:
            log.info("Closing the {stream}: a stanza from {sender} ({error})", stream=self.label,
                     sender=sender, error=e.text)
            xs.closeWithError(e.condition)
            return
        stanza = retarget(stanza, NS_COMPONENT, NS_CLIENT)
        if self.component.answered(stanza):
            return
        if badIQ(stanza):
            reply = bounce(stanza, "bad-request", text="An iq needs an id and a type")
            if reply is not None:
                self.router.route(reply)
            return
        self.router.route(stanza)


class ComponentFactory(ListeningFactory):
    """Builds external components' streams."""

    def buildProtocol(self, addr):
        stream = RestrictedStream(ComponentAuthenticator(self.server), self.server)
        stream.factory = self
        return stream
