"""
XEP-0030 Service Discovery, for the server's JID and its accounts' bare JIDs.

Wokkel's L{DiscoHandler} asks every sibling handler that provides
L{IDisco}; every L{HostModule} does, from the C{features} and C{identities}
it declares, so disco answers are what is loaded. This module adds the
identities: C{server/im} for the host, C{account/registered} for an account;
and the host's disco#items from the C{disco-items} hook (the services, such
as components, that the host lists).
The server answers for an account only to the account itself or to a contact
with a presence subscription to it (RFC 6121 section 8.5.1, XEP-0030 section
3.3); anyone else, and anyone asking about an account that does not exist,
gets the same C{service-unavailable}, so disco tells no stranger who exists.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid
from wokkel import disco

from invitesrv.modules.base import HostModule

SERVER_NAME = "invitesrv"


class DiscoModule(disco.DiscoHandler, HostModule):
    """Answers disco#info and disco#items for the host and its accounts."""

    name = "disco"
    identities = (disco.DiscoIdentity("server", "im", SERVER_NAME),)
    features = (disco.NS_DISCO_INFO, disco.NS_DISCO_ITEMS)
    accountIdentities = (disco.DiscoIdentity("account", "registered"),)
    accountFeatures = (disco.NS_DISCO_INFO,)
    observers = ((disco.DISCO_INFO, "handleRequest"), (disco.DISCO_ITEMS, "handleRequest"))

    def connectionInitialized(self):
        """The declared observers only (not Wokkel's own, which a stop would leave behind)."""
        HostModule.connectionInitialized(self)
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

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        """The host's items: what the C{disco-items} hook lists for its JID."""
        if target.user is not None:
            return []
        items = []
        for listed in self.parent.hooks.run("disco-items", requestor, nodeIdentifier):
            items.extend(listed or ())
        return items
