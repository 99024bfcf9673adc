"""
Federation as a service: the router's default route while running, the
outgoing peers by domain pair, the factory for incoming streams, and the
dialback keys of this server.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from invitesrv.limits import BucketTable
from invitesrv.logs import logger
from invitesrv.tls import CurrentOptions
from invitesrv.xmpp.dialback import checkKey, dialbackKey, dialbackSecret
from invitesrv.xmpp.resolve import Resolver
from invitesrv.xmpp.router import bounce, parseJID
from invitesrv.xmpp.s2s.incoming import S2SListenFactory
from invitesrv.xmpp.s2s.outgoing import OutgoingPeer
from invitesrv.xmpp.s2s.tls import PeerTLS

log = logger()


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
        self.options = server.config.federation
        self.clock = server.clock
        self._tls = CurrentOptions(server, lambda options: PeerTLS(options, self.options.trust))
        self.resolver = Resolver(reactor, self.options.hosts, servers=self.options.dnsServers,
                                 fallbackPort=self.options.fallback_port)
        self.peers: dict[tuple[str, str], OutgoingPeer] = {}
        self.stanzaBuckets = BucketTable(self.clock, self.options.stanza_rate,
                                         self.options.stanza_burst)
        self.listenFactory = S2SListenFactory(self)

    @property
    def config(self):
        """The server's config: a reload replaces it."""
        return self.server.config

    @property
    def tls(self) -> PeerTLS | None:
        """TLS with the server's current certificates (a reload replaces them); None without."""
        return self._tls.current if self.server.tls is not None else None

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
        if self.router.local(local) is None:
            log.warn("Dropped a stanza for {target} whose sender is not local",
                     target=target.full())
            return
        self.peer(local, target.host).send(stanza)

    def peer(self, local: str, remote: str) -> OutgoingPeer:
        peer = self.peers.get((local, remote))
        if peer is None:
            peer = self.peers[local, remote] = OutgoingPeer(self, local, remote)
        return peer

    def stanzaWait(self, domain: str) -> float:
        """
        Count a stanza from C{domain} (over all its incoming streams); return
        how long its streams must not be read, 0 while within C{stanza_rate}.
        """
        if not self.options.stanza_rate:
            return 0.0
        return self.stanzaBuckets[domain].take(1)

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
