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
C{service-unavailable}; a message larger than C{offline_max_message_size}
gets C{policy-violation} saying so. Stored messages go with their account:
the store deletes them with it.

They are delivered on the hook C{initial-presence}, to the first session
that becomes available with a non-negative priority, in order. Each is sent
only once the connection has taken the one before
(L{invitesrv.xmpp.c2s.Session.whenTaken}), so a few large messages never
pile up unsent in the server. One is forgotten only once it was delivered
(L{invitesrv.xmpp.c2s.Session.whenSent}: with stream management, once the
client acknowledged it); up to C{WINDOW} go out ahead of those
acknowledgements, so a phone gets its messages in one round trip rather
than one round trip each. A client that stops reading, or goes away, in the
middle finds what it did not get at its next login.

With the message archive (L{invitesrv.modules.mam}), a message is archived
and stamped with its archive's C{<stanza-id/>} before it reaches this hook,
so the kept copy carries the id under which the user's other devices find
it in the archive. The two stores stay apart on purpose (C{docs/archive.md}):
this one holds what one device must still be given, the archive the history.
"""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.internet import defer
from twisted.words.xish import domish

from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.store.interfaces import OfflineMessage, StoreUnavailable
from invitesrv.xmpp.router import bounce

log = logger()

NS_CLIENT = "jabber:client"
NS_OFFLINE = "msgoffline"
NS_DELAY = "urn:xmpp:delay"
NS_HINTS = "urn:xmpp:hints"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_STANZA_ID = "urn:xmpp:sid:0"
STORED_TYPES = frozenset(("normal", "chat"))
# Payloads that do not make a message worth keeping on their own.
NOT_CONTENT = frozenset((NS_CHATSTATES, NS_HINTS, NS_STANZA_ID))
# Kept messages read from the store at a time while delivering.
BATCH = 20
# Kept messages sent to a session ahead of its acknowledgements.
WINDOW = 10


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


class OfflineModule(HostModule):
    """Keeps messages for offline users and delivers them at their next presence."""

    name = "offline"
    features = (NS_OFFLINE,)
    hooks = (("offline-message", "keep"), ("initial-presence", "deliver"))

    def __init__(self) -> None:
        HostModule.__init__(self)
        self.delivering: set[str] = set()  # users whose kept messages are being handed over

    def keep(self, username: str, message: domish.Element) -> defer.Deferred | None:
        """The C{offline-message} hook: fire True if the message was dealt with."""
        if message.getAttribute("type", "normal") not in STORED_TYPES:
            return None
        if not isWorthKeeping(message):
            return defer.succeed(True)
        host = self.parent
        entry = OfflineMessage(host.now(), message.toXml())
        size, cap = len(entry.stanza.encode("utf-8")), host.options.offline_max_message_size
        if size > cap:
            reply = bounce(message, "policy-violation", "modify",
                           f"Too large to keep for a user who is offline: {size} bytes,"
                           f" at most {cap}")
            if reply is not None:
                host.router.route(reply)
            return defer.succeed(True)
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
        8.5.2.1.1 keeps bare-JID messages from it), nor does a second resource
        while the first is still being handed the messages.
        """
        user = session.user
        if session.priority < 0 or user in self.delivering:
            return None
        self.delivering.add(user)
        d = self._handOver(session)
        d.addErrback(lambda failure: failure.check(StoreUnavailable) or log.failure(
            "Cannot deliver offline messages to {user}", failure, user=session.bare))
        d.addBoth(lambda _: self.delivering.discard(user))
        return d

    @defer.inlineCallbacks
    def _handOver(self, session):
        """Deliver the kept messages a batch at a time; forget each batch once it was sent."""
        store, host, user = self.parent.store, self.parent.name, session.user
        after = 0
        while True:
            batch = yield store.getOffline(host, user, after, BATCH)
            if not batch:
                return
            sent = yield self._send(session, batch)
            if sent:
                yield store.removeOffline(host, user, sent)
            if sent != batch[-1].id:
                return  # every resource went away: the rest waits for the next one
            after = sent

    @defer.inlineCallbacks
    def _send(self, session, batch: list[OfflineMessage]):
        """
        Send a batch in order; fire with the id of the last message
        delivered (0: none). What a session did not get before it went away
        goes, still in order, to another available resource of the user, if
        there is one.
        """
        sent, tried = 0, set()
        while batch:
            session = self._recipient(session, tried)
            if session is None:
                return sent
            tried.add(session)
            delivered = yield self._sendTo(session, batch)
            if delivered:
                sent = batch[delivered - 1].id
                batch = batch[delivered:]
        return sent

    @defer.inlineCallbacks
    def _sendTo(self, session, batch: list[OfflineMessage]):
        """
        How many of C{batch}, from the first, C{session} was delivered: each
        is sent once the connection took the one before, with at most
        C{WINDOW} not yet delivered.
        """
        deliveries: list[defer.Deferred] = []
        delivered = 0
        for entry in batch:
            while len(deliveries) - delivered >= WINDOW:
                if not (yield deliveries[delivered]):
                    return delivered
                delivered += 1
            if deliveries and not (yield session.whenTaken()):
                break
            session.send(self._stamped(entry))
            deliveries.append(session.whenSent())
        for delivery in deliveries[delivered:]:
            if not (yield delivery):
                break
            delivered += 1
        return delivered

    def _recipient(self, session, tried: set):
        """
        C{session} while it may be handed bare-JID messages, else the other
        resource of the user that may, with the highest priority; never one
        in C{tried}.
        """
        resources = self.parent.resources
        if session not in tried and resources.best((session,)) is not None:
            return session
        return resources.best(other for other in resources.online(session.bare)
                              if other not in tried)

    def _stamped(self, entry: OfflineMessage) -> domish.Element:
        """The kept message, with the XEP-0203 delay of when this server kept it."""
        message = parseStanza(entry.stanza)
        host = self.parent.name
        if not any(delay.getAttribute("from") == host
                   for delay in message.elements(NS_DELAY, "delay")):
            delay = message.addElement((NS_DELAY, "delay"))
            delay["from"] = host
            delay["stamp"] = delayStamp(entry.stamp)
        return message
