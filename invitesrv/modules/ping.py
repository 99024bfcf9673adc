"""XEP-0199 XMPP Ping: the server answers pings addressed to it."""

from twisted.words.protocols.jabber.xmlstream import toResponse
from wokkel import disco
from wokkel.iwokkel import IDisco
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

NS_PING = "urn:xmpp:ping"
PING = f"/iq[@type='get']/ping[@xmlns='{NS_PING}']"


@implementer(IDisco)
class PingModule(XMPPHandler):
    """Answers C{<ping/>} to the host (clients use it to check the connection)."""

    def connectionInitialized(self):
        self.xmlstream.addObserver(PING, self.onPing)

    def connectionLost(self, reason):
        self.xmlstream.removeObserver(PING, self.onPing)
        XMPPHandler.connectionLost(self, reason)

    def onPing(self, iq):
        iq.handled = True
        self.send(toResponse(iq, "result"))

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if target.user is None and not nodeIdentifier:
            return [disco.DiscoFeature(NS_PING)]
        return []

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        return []
