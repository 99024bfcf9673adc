"""
XEP-0160 offline messages: what a user was sent while away is kept and handed
over, oldest first and stamped with XEP-0203 C{<delay/>}, when the user comes
back.

The host calls the C{offline-message} hook when a message reaches an account
with no available resource (RFC 6121 section 8.5.2.2.1). Kept are messages of
type C{normal} or C{chat} for an existing account, up to the host's
C{offline_max_messages}, that carry something a person or a client wants
later: a body, a receipt (XEP-0184), an invitation, an encrypted payload...
Messages whose only payload is a chat-state notification (XEP-0085), ids or
hints are dropped silently, as are those with an XEP-0334 C{<no-store/>}
hint; an C{<store/>} hint keeps any message. A missing account, a full store
or a store failure leaves the message unkept, and the host bounces it with
C{service-unavailable}. Stored messages go with their account: the store
deletes them with it.

They are delivered on the hook C{initial-presence}, to the first session
that becomes available with a non-negative priority.
"""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish
from wokkel import disco
from wokkel.iwokkel import IDisco
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

from invitesrv.store.interfaces import OfflineMessage, StoreUnavailable

log = Logger()

NS_CLIENT = "jabber:client"
NS_OFFLINE = "msgoffline"
NS_DELAY = "urn:xmpp:delay"
NS_HINTS = "urn:xmpp:hints"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_STANZA_ID = "urn:xmpp:sid:0"
STORED_TYPES = frozenset(("normal", "chat"))
# Payloads that do not make a message worth keeping on their own.
NOT_CONTENT = frozenset((NS_CHATSTATES, NS_HINTS, NS_STANZA_ID))


def isWorthKeeping(message: domish.Element) -> bool:
    """Whether a message of type normal or chat should wait for its addressee."""
    hints = {child.name for child in message.elements(NS_HINTS)}
    if "no-store" in hints:
        return False
    if "store" in hints:
        return True
    return any(child.uri not in NOT_CONTENT and not (child.uri == NS_CLIENT and child.name == "thread")
               for child in message.elements())


def parseStanza(text: str) -> domish.Element:
    """The element serialised in C{text} (a stanza as the store keeps it)."""
    elements = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = elements.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(b"<stored>" + text.encode("utf-8") + b"</stored>")
    return elements[0]


def delayStamp(seconds: float) -> str:
    """An XEP-0082 UTC date-time, to the millisecond."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@implementer(IDisco)
class OfflineModule(XMPPHandler):
    """Keeps messages for offline users and delivers them at their next presence."""

    def connectionInitialized(self):
        hooks = self.parent.hooks
        hooks.add("offline-message", self.keep)
        hooks.add("initial-presence", self.deliver)

    def connectionLost(self, reason):
        hooks = self.parent.hooks
        hooks.remove("offline-message", self.keep)
        hooks.remove("initial-presence", self.deliver)
        XMPPHandler.connectionLost(self, reason)

    def keep(self, username: str, message: domish.Element) -> defer.Deferred | None:
        """The C{offline-message} hook: fire True if the message was dealt with."""
        if message.getAttribute("type", "normal") not in STORED_TYPES:
            return None
        if not isWorthKeeping(message):
            return defer.succeed(True)
        host = self.parent
        entry = OfflineMessage(host.now(), message.toXml())
        d = host.store.accountExists(host.name, username)
        d.addCallback(lambda exists: exists and host.store.storeOffline(
            host.name, username, entry, host.options.offline_max_messages))

        def failed(failure):
            if not failure.check(StoreUnavailable):  # the store logs those once per episode
                log.failure("Cannot keep a message for {user}@{host}", failure, user=username,
                            host=host.name)
            return False
        return d.addErrback(failed)

    def deliver(self, session) -> defer.Deferred | None:
        """
        The C{initial-presence} hook: hand the session what was kept, oldest
        first. A resource with a negative priority gets none (RFC 6121 section
        8.5.2.1.1 keeps bare-JID messages from it).
        """
        if session.priority < 0:
            return None
        host = self.parent
        d = host.store.popOffline(host.name, session.user)

        def send(messages):
            for entry in messages:
                message = parseStanza(entry.stanza)
                if not any(delay.getAttribute("from") == host.name
                           for delay in message.elements(NS_DELAY, "delay")):
                    delay = message.addElement((NS_DELAY, "delay"))
                    delay["from"] = host.name
                    delay["stamp"] = delayStamp(entry.stamp)
                if session.closed:
                    # Gone while the store answered: another resource, or the store again.
                    host.deliverToAccount(message, session.bareJID)
                else:
                    session.send(message)

        d.addCallback(send)
        d.addErrback(lambda failure: failure.check(StoreUnavailable) or log.failure(
            "Cannot deliver offline messages to {user}", failure, user=session.bare))
        return d

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if target.user is None and not nodeIdentifier:
            return [disco.DiscoFeature(NS_OFFLINE)]
        return []

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        return []
