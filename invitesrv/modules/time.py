"""XEP-0202 Entity Time of the server."""

import datetime

from twisted.words.protocols.jabber import error
from twisted.words.xish import domish
from wokkel import disco
from wokkel.iwokkel import IDisco
from wokkel.subprotocols import IQHandlerMixin, XMPPHandler
from zope.interface import implementer

NS_TIME = "urn:xmpp:time"
TIME = f"/iq[@type='get']/time[@xmlns='{NS_TIME}']"


@implementer(IDisco)
class TimeModule(XMPPHandler, IQHandlerMixin):
    """Answers with the server's UTC time (XEP-0082 format)."""

    iqHandlers = {TIME: "onTime"}

    def connectionInitialized(self):
        self.xmlstream.addObserver(TIME, self.handleRequest)

    def connectionLost(self, reason):
        self.xmlstream.removeObserver(TIME, self.handleRequest)
        XMPPHandler.connectionLost(self, reason)

    def onTime(self, iq):
        if iq.getAttribute("to") != self.parent.name:
            raise error.StanzaError("service-unavailable")
        now = datetime.datetime.fromtimestamp(self.parent.now(), datetime.timezone.utc)
        element = domish.Element((NS_TIME, "time"))
        element.addElement("tzo", content="+00:00")
        element.addElement("utc", content=now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        return element

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if target.user is None and not nodeIdentifier:
            return [disco.DiscoFeature(NS_TIME)]
        return []

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        return []
