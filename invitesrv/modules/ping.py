"""XEP-0199 XMPP Ping: the server answers pings addressed to it."""

from twisted.words.protocols.jabber.xmlstream import toResponse

from invitesrv.modules.base import HostModule

NS_PING = "urn:xmpp:ping"
PING = f"/iq[@type='get']/ping[@xmlns='{NS_PING}']"


class PingModule(HostModule):
    """Answers C{<ping/>} to the host (clients use it to check the connection)."""

    name = "ping"
    features = (NS_PING,)
    observers = ((PING, "onPing"),)

    def onPing(self, iq):
        iq.handled = True
        self.send(toResponse(iq, "result"))
