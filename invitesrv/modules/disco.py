"""
XEP-0030 Service Discovery, for the server's JID and its accounts' bare JIDs.

Wokkel's L{DiscoHandler} asks every sibling handler that provides
L{IDisco}, so each module declares its own features and this one adds the
identities: C{server/im} for the host, C{account/registered} for an account.
The host's disco#items are its components (C{host.discoItems}).
The server answers for an account only to the account itself or to a contact
with a presence subscription to it (RFC 6121 section 8.5.1, XEP-0030 section
3.3); anyone else, and anyone asking about an account that does not exist,
gets the same C{service-unavailable}, so disco tells no stranger who exists.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid
from wokkel import disco
from wokkel.iwokkel import IDisco
from zope.interface import implementer

SERVER_NAME = "invitesrv"


@implementer(IDisco)
class DiscoModule(disco.DiscoHandler):
    """Answers disco#info and disco#items for the host and its accounts."""

    def connectionLost(self, reason):
        """Detach the two observers Wokkel's handler attached: the host's stream outlives a stop."""
        self.xmlstream.removeObserver(disco.DISCO_INFO, self.handleRequest)
        self.xmlstream.removeObserver(disco.DISCO_ITEMS, self.handleRequest)
        disco.DiscoHandler.connectionLost(self, reason)

    def info(self, requestor: jid.JID, target: jid.JID | None, nodeIdentifier: str):
        """Gather disco#info once the requestor may see C{target} (no C{to}: its own account)."""
        target = target or requestor.userhostJID()
        d = self._checkAccess(requestor, target)
        d.addCallback(lambda _: disco.DiscoHandler.info(self, requestor, target, nodeIdentifier))
        return d

    def items(self, requestor: jid.JID, target: jid.JID | None, nodeIdentifier: str):
        """Gather disco#items under the same rule as L{info}."""
        target = target or requestor.userhostJID()
        d = self._checkAccess(requestor, target)
        d.addCallback(lambda _: disco.DiscoHandler.items(self, requestor, target, nodeIdentifier))
        return d

    def _checkAccess(self, requestor: jid.JID, target: jid.JID):
        """Fire if C{requestor} may discover C{target}; fail with service-unavailable if not."""
        if target.user is None or requestor.userhost() == target.userhost():
            return defer.succeed(None)
        host = self.parent
        d = host.store.getRosterItem(host.name, target.user, requestor.userhost())

        def check(item):
            if item is None or item.subscription not in ("from", "both"):
                raise error.StanzaError("service-unavailable")
        return d.addCallback(check)

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if nodeIdentifier:
            return []
        if target.user is None:
            return [disco.DiscoIdentity("server", "im", SERVER_NAME),
                    disco.DiscoFeature(disco.NS_DISCO_INFO),
                    disco.DiscoFeature(disco.NS_DISCO_ITEMS)]
        return [disco.DiscoIdentity("account", "registered"),
                disco.DiscoFeature(disco.NS_DISCO_INFO)]

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        """The host lists its components (C{host.discoItems}); an account lists nothing."""
        if target.user is None and not nodeIdentifier:
            return list(self.parent.discoItems)
        return []
