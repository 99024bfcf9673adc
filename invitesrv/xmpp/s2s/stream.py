"""
The server-to-server stream (a L{RestrictedStream} that closes when idle and
reads on after its closing tag until the peer's), and what both directions
share: namespaces, the stanza namespace swap, domain parsing.
"""

from __future__ import annotations

from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from invitesrv.logs import logger
from invitesrv.xmpp.router import parseJID
from invitesrv.xmpp.stream import RestrictedStream

log = logger()

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"


class RemoteUnavailable(Exception):
    """The remote server cannot be reached or refused us; C{condition} is the stanza error."""

    def __init__(self, condition: str, text: str):
        Exception.__init__(self, text)
        self.condition = condition
        self.text = text


def retarget(element: domish.Element, old: str, new: str) -> domish.Element:
    """
    A copy of C{element} with namespace C{old} replaced by C{new}: stanzas are
    C{jabber:client} inside the server and C{jabber:server} between servers.
    A copy, because modules share children between the stanzas they send.
    """
    copy = domish.Element((new if element.uri == old else element.uri, element.name),
                          new if element.defaultUri == old else element.defaultUri,
                          dict(element.attributes), dict(element.localPrefixes))
    for child in element.children:
        if isinstance(child, domish.Element):
            child = retarget(child, old, new)
            child.parent = copy
        copy.children.append(child)
    return copy


def domainOf(text: str | None) -> str | None:
    """The prepared domain in C{text}, or None when it is absent or not a bare domain."""
    if not text:
        return None
    try:
        parsed = parseJID(text)
    except (jid.InvalidFormat, UnicodeError):
        return None
    if parsed.user is not None or parsed.resource is not None:
        return None
    return parsed.host


def streamErrorCondition(element: domish.Element) -> str:
    """The condition of a received C{<stream:error/>}."""
    for child in element.elements():
        if child.uri == NS_STREAM_ERRORS and child.name != "text":
            return child.name
    return "undefined-condition"


class S2SStream(RestrictedStream):
    """
    One server-to-server TCP connection, with every limit of
    L{RestrictedStream}. Unlike a client stream it reads on after our closing
    tag until the peer's (nothing the peer sent meanwhile is lost), and it is
    closed after C{[s2s] idle_timeout} without traffic either way.
    """

    readAfterClose = True

    def __init__(self, authenticator, federation):
        RestrictedStream.__init__(self, authenticator, federation.server)
        self.federation = federation
        self.lastSent = 0.0
        self._idleCall = None

    def connectionMade(self) -> None:
        self.lastSent = self.clock.seconds()
        idle = self.federation.options.idle_timeout
        if idle > 0:
            self._idleCall = self.clock.callLater(idle, self._checkIdle)
        RestrictedStream.connectionMade(self)

    def send(self, obj) -> None:
        if not self.closing:
            self.lastSent = self.clock.seconds()
        RestrictedStream.send(self, obj)

    def _checkIdle(self) -> None:
        self._idleCall = None
        limit = self.federation.options.idle_timeout
        idle = self.clock.seconds() - max(self.lastReceived, self.lastSent)
        if idle < limit:
            self._idleCall = self.clock.callLater(limit - idle, self._checkIdle)
        elif not self.closing:
            log.info("Closing the idle {stream}", stream=self.label)
            self.close()

    def connectionLost(self, reason) -> None:
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        RestrictedStream.connectionLost(self, reason)
