"""XEP-0092 Software Version of the server (leave the module out to hide it)."""

import platform

from twisted.words.xish import domish
from wokkel import disco
from wokkel.iwokkel import IDisco
from wokkel.subprotocols import IQHandlerMixin, XMPPHandler
from zope.interface import implementer

import invitesrv

NS_VERSION = "jabber:iq:version"
VERSION = f"/iq[@type='get']/query[@xmlns='{NS_VERSION}']"


@implementer(IDisco)
class VersionModule(XMPPHandler, IQHandlerMixin):
    """Answers with the server's name, version and operating system."""

    iqHandlers = {VERSION: "onVersion"}

    def connectionInitialized(self):
        self.xmlstream.addObserver(VERSION, self.handleRequest)

    def connectionLost(self, reason):
        self.xmlstream.removeObserver(VERSION, self.handleRequest)
        XMPPHandler.connectionLost(self, reason)

    def onVersion(self, iq):
        if iq.getAttribute("to") != self.parent.name:
            from twisted.words.protocols.jabber import error
            raise error.StanzaError("service-unavailable")
        query = domish.Element((NS_VERSION, "query"))
        query.addElement("name", content="invitesrv")
        query.addElement("version", content=invitesrv.__version__)
        query.addElement("os", content=platform.system())
        return query

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if target.user is None and not nodeIdentifier:
            return [disco.DiscoFeature(NS_VERSION)]
        return []

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        return []
