"""XEP-0092 Software Version of the server (leave the module out to hide it)."""

import platform

from twisted.words.xish import domish
from wokkel.subprotocols import IQHandlerMixin

import invitesrv
from invitesrv.modules.base import HostModule

NS_VERSION = "jabber:iq:version"
VERSION = f"/iq[@type='get']/query[@xmlns='{NS_VERSION}']"


class VersionModule(HostModule, IQHandlerMixin):
    """Answers with the server's name, version and operating system."""

    name = "version"
    features = (NS_VERSION,)
    observers = ((VERSION, "handleRequest"),)
    iqHandlers = {VERSION: "onVersion"}

    def onVersion(self, iq):
        if iq.getAttribute("to") != self.parent.name:
            from twisted.words.protocols.jabber import error
            raise error.StanzaError("service-unavailable")
        query = domish.Element((NS_VERSION, "query"))
        query.addElement("name", content="invitesrv")
        query.addElement("version", content=invitesrv.__version__)
        query.addElement("os", content=platform.system())
        return query
