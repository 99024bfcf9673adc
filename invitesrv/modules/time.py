"""XEP-0202 Entity Time of the server."""

import datetime

from twisted.words.protocols.jabber import error
from twisted.words.xish import domish
from wokkel.subprotocols import IQHandlerMixin

from invitesrv.modules.base import HostModule

NS_TIME = "urn:xmpp:time"
TIME = f"/iq[@type='get']/time[@xmlns='{NS_TIME}']"


class TimeModule(HostModule, IQHandlerMixin):
    """Answers with the server's UTC time (XEP-0082 format)."""

    name = "time"
    features = (NS_TIME,)
    observers = ((TIME, "handleRequest"),)
    iqHandlers = {TIME: "onTime"}

    def onTime(self, iq):
        if iq.getAttribute("to") != self.parent.name:
            raise error.StanzaError("service-unavailable")
        now = datetime.datetime.fromtimestamp(self.parent.now(), datetime.timezone.utc)
        element = domish.Element((NS_TIME, "time"))
        element.addElement("tzo", content="+00:00")
        element.addElement("utc", content=now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        return element
