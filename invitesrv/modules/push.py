"""
XEP-0357 push notifications (C{urn:xmpp:push:0}): a phone whose app is
suspended is woken when a message waits for it.

A client registers its app server (a JID: an external component of this
server, or another domain) and a node with C{<enable/>}, optionally with a
publish-options form (the app's secret, say), and removes it with
C{<disable/>}; registrations are kept in the store, per account, and go
with it. When a message with a body (or an encrypted payload) reaches an
account that has nowhere to deliver it (the C{offline-message} hook, whose
result this module leaves alone) or a stream-managed session waiting to be
resumed (the C{hibernated-stanza} hook), each registration gets a pubsub
publish of a C{urn:xmpp:push:summary} form, as Conversations and Monal
read it: C{message-count} (the messages since the user was last online),
C{last-message-sender}, and C{last-message-body} only with
C{include_body}, for privacy, as in Prosody's mod_cloud_notify.

Notifications are coalesced, as a phone needs one to wake, not one per
message (a burst of messages to a hibernated session would otherwise send
as many pushes): a registration gets at most one notification per
C{min_interval}; what comes meanwhile is summed up in one more notification
at the end of the interval, with the count and the last sender by then, so
the last message is never left without one. A user who comes back online
starts afresh.

The publish goes from the account's bare JID through the router. Not
answered within C{timeout}, or answered with an error of type C{wait}, it
is sent again after C{timeout} doubled each time, at most C{retries} times;
an error of type C{cancel} means the app server no longer knows the device,
and the registration is removed, as the XEP says.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from twisted.internet import defer
from twisted.words.protocols.jabber import error, jid
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish

from invitesrv.config import Duration
from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.modules.offline import parseStanza
from invitesrv.store.interfaces import PushRegistration, StoreUnavailable

log = logger()

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
NS_SUMMARY = "urn:xmpp:push:summary"
NS_PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
# Payloads that make a message without a body worth waking a phone for (encrypted ones).
ENCRYPTED = frozenset(("eu.siacs.conversations.axolotl", "urn:xmpp:omemo:2", "jabber:x:encrypted",
                       "urn:xmpp:openpgp:0"))


@dataclass(frozen=True)
class PushOptions:
    """
    C{[modules.push]}: whether notifications carry the message text, how
    long an app server has to answer, and how many times a publish is sent again.
    """

    include_body: bool = False
    timeout: Duration = Duration(30)
    retries: int = 3
    min_interval: Duration = Duration(30)  # at most one notification per registration this often


class Throttle:
    """When a registration was last notified, and the notification held back since."""

    __slots__ = ("last", "call", "message", "held")

    def __init__(self, last: float):
        self.last = last
        self.call = None  # the coalesced notification, due at the end of the interval
        self.message = None  # the last message held back
        self.held = 0  # how many were held back

    def cancel(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


def isImportant(message: domish.Element) -> bool:
    """Whether a message is worth waking a device for: a body, or an encrypted payload."""
    if message.name != "message" or message.getAttribute("type", "normal") not in ("chat", "normal"):
        return False
    return any(child.name == "body" or child.uri in ENCRYPTED for child in message.elements())


def field(form: domish.Element, var: str, value: str) -> None:
    element = form.addElement("field")
    element["var"] = var
    element.addElement("value", content=value)


def formType(form: domish.Element) -> str | None:
    for child in form.elements(NS_DATA, "field"):
        if child.getAttribute("var") == "FORM_TYPE":
            return str(next(child.elements(NS_DATA, "value"), "")) or None
    return None


class Publish:
    """A notification on its way to one app server, with its retries."""

    __slots__ = ("username", "registration", "iq", "attempt", "timer")

    def __init__(self, username: str, registration: PushRegistration, iq: domish.Element):
        self.username = username
        self.registration = registration
        self.iq = iq
        self.attempt = 0
        self.timer = None


class PushModule(HostModule):
    """Registers app servers and wakes the devices behind them."""

    name = "push"
    accountFeatures = (NS_PUSH,)
    Options = PushOptions
    hooks = (("offline-message", "onOffline", 10),
             ("hibernated-stanza", "onHibernated"),
             ("initial-presence", "onOnline"),
             ("user-deleted", "onUserDeleted"))
    observers = ((f"/iq[@type='set']/enable[@xmlns='{NS_PUSH}']", "onRequest"),
                 (f"/iq[@type='set']/disable[@xmlns='{NS_PUSH}']", "onRequest"),
                 ("/iq[@type='result']", "onAnswer"), ("/iq[@type='error']", "onAnswer"))

    def __init__(self) -> None:
        HostModule.__init__(self)
        self.counts: dict[str, int] = {}  # username: messages notified since last online
        self.pending: dict[str, Publish] = {}  # iq id: publish waiting for its answer
        # username -> (service, node): when it was last notified, and what waits
        self.throttles: dict[str, dict[tuple[str, str], Throttle]] = {}
        self._ids = itertools.count(1)

    def connectionLost(self, reason) -> None:
        for publish in self.pending.values():
            if publish.timer is not None and publish.timer.active():
                publish.timer.cancel()
        self.pending.clear()
        self._forgetThrottles(None)
        HostModule.connectionLost(self, reason)

    # -- registrations ------------------------------------------------------------

    def onRequest(self, iq) -> None:
        """<enable/> or <disable/> from one of the account's own sessions."""
        sender = jid.JID(iq["from"])
        target = iq.getAttribute("to")
        if sender.host != self.host.name or target not in (None, sender.userhost()):
            return  # another account's JID: the host refuses it
        iq.handled = True
        d = defer.maybeDeferred(self._change, sender.user, iq.firstChildElement())
        d.addCallback(lambda _: toResponse(iq, "result"))
        d.addErrback(self._failed, iq)
        d.addCallback(self.send)

    def _change(self, username: str, request: domish.Element):
        service = request.getAttribute("jid")
        node = request.getAttribute("node")
        try:
            service = jid.JID(service).full() if service else None
        except (jid.InvalidFormat, UnicodeError):
            service = None
        if service is None or request.name not in ("enable", "disable"):
            raise error.StanzaError("bad-request", text="A push request names the app server's jid")
        store, host = self.host.store, self.host.name
        if request.name == "disable":
            self._forgetThrottles(username)
            return store.removePushRegistrations(host, username, service, node or None)
        if not node:
            raise error.StanzaError("bad-request", text="Enabling push needs a node")
        options = ""
        form = next(request.elements(NS_DATA, "x"), None)
        if form is not None:
            if formType(form) != NS_PUBLISH_OPTIONS:
                raise error.StanzaError("bad-request",
                                        text=f"The form's FORM_TYPE must be {NS_PUBLISH_OPTIONS}")
            options = form.toXml()
        log.info("{user}@{host} enabled push notifications through {service}", user=username,
                 host=host, service=service)
        return store.setPushRegistration(host, username, PushRegistration(service, node, options))

    def _failed(self, failure, iq):
        if not failure.check(error.StanzaError):
            log.failure("Push request from {sender} failed", failure, sender=iq.getAttribute("from"))
            return error.StanzaError("internal-server-error").toResponse(iq)
        return failure.value.toResponse(iq)

    def onUserDeleted(self, host, username: str) -> None:
        """The store deleted the account's registrations with it; forget what is under way."""
        self.counts.pop(username, None)
        self._forgetThrottles(username)
        for key, publish in list(self.pending.items()):
            if publish.username == username:
                if publish.timer is not None and publish.timer.active():
                    publish.timer.cancel()
                del self.pending[key]

    # -- when to notify ---------------------------------------------------------

    def onOffline(self, username: str, message: domish.Element) -> None:
        """Hook C{offline-message}: notify, and leave the keeping to the offline module."""
        if isImportant(message):
            self.notify(username, message)
        return None

    def onHibernated(self, session, stanza: domish.Element) -> None:
        if isImportant(stanza):
            self.notify(session.user, stanza)

    def onOnline(self, session) -> None:
        """The user is back: the count starts again, and nothing held back is sent."""
        self.counts.pop(session.user, None)
        self._forgetThrottles(session.user)

    def _forgetThrottles(self, username: str | None) -> None:
        """Forget when C{username}'s registrations (None: everyone's) were notified."""
        if username is None:
            gone, self.throttles = list(self.throttles.values()), {}
        else:
            gone = [self.throttles.pop(username, {})]
        for throttles in gone:
            for throttle in throttles.values():
                throttle.cancel()

    def notify(self, username: str, message: domish.Element) -> defer.Deferred:
        """Publish a summary of C{message} to each of the user's app servers."""
        count = self.counts[username] = self.counts.get(username, 0) + 1
        d = self.host.store.getPushRegistrations(self.host.name, username)
        d.addCallback(self._publishAll, username, message, count)
        d.addErrback(lambda failure: failure.check(StoreUnavailable) or log.failure(
            "Cannot notify {user}@{host}", failure, user=username, host=self.host.name))
        return d

    def _publishAll(self, registrations, username: str, message, count: int) -> None:
        interval = self.options.min_interval
        now = self.host.now()
        for registration in registrations:
            throttles = self.throttles.setdefault(username, {})
            key = (registration.service, registration.node)
            throttle = throttles.get(key)
            if throttle is None or (throttle.call is None and now - throttle.last >= interval):
                throttles[key] = Throttle(now)
                self._publish(username, registration, message, count)
                continue
            throttle.message = message
            throttle.held += 1
            self.host.metrics["push.coalesced"] += 1
            if throttle.call is None:
                throttle.call = self.host.clock.callLater(
                    max(0.0, throttle.last + interval - now), self._publishHeld, username,
                    registration)

    def _publishHeld(self, username: str, registration: PushRegistration) -> None:
        """The end of the interval: one notification for what was held back, with the count now."""
        throttle = self.throttles[username][registration.service, registration.node]
        throttle.call = None
        throttle.last = self.host.now()
        log.info("Push notifications for {user}@{host} to {service}: {count} held back for"
                 " modules.push.min_interval ({interval:.0f} s), sent as one", user=username,
                 host=self.host.name, service=registration.service, count=throttle.held,
                 interval=self.options.min_interval)
        message, throttle.message, throttle.held = throttle.message, None, 0
        self._publish(username, registration, message, self.counts.get(username, 1))

    def _publish(self, username: str, registration: PushRegistration, message, count: int) -> None:
        iq = self._notification(username, registration, message, count)
        publish = Publish(username, registration, iq)
        self.pending[iq["id"]] = publish
        self._send(publish)

    def _notification(self, username: str, registration: PushRegistration, message,
                      count: int) -> domish.Element:
        iq = domish.Element((None, "iq"))
        iq["type"] = "set"
        iq["id"] = f"push-{next(self._ids)}"
        iq["from"] = f"{username}@{self.host.name}"
        iq["to"] = registration.service
        pubsub = iq.addElement((NS_PUBSUB, "pubsub"))
        publish = pubsub.addElement("publish")
        publish["node"] = registration.node
        form = publish.addElement("item").addElement((NS_PUSH, "notification")).addElement(
            (NS_DATA, "x"))
        form["type"] = "submit"
        field(form, "FORM_TYPE", NS_SUMMARY)
        field(form, "message-count", str(count))
        sender = message.getAttribute("from")
        if sender:
            field(form, "last-message-sender", sender)
        if self.options.include_body and message.body is not None:
            field(form, "last-message-body", str(message.body))
        if registration.options:
            pubsub.addElement("publish-options").addChild(parseStanza(registration.options))
        return iq

    # -- delivery, answers and retries ----------------------------------------------

    def _send(self, publish: Publish) -> None:
        timeout = self.options.timeout * 2 ** publish.attempt
        publish.timer = self.host.clock.callLater(timeout, self._timedOut, publish.iq["id"])
        self.send(publish.iq)

    def _timedOut(self, iqId: str) -> None:
        publish = self.pending.get(iqId)
        if publish is not None:
            publish.timer = None
            self._retry(iqId, publish, "no answer")

    def _retry(self, iqId: str, publish: Publish, why: str) -> None:
        if publish.attempt >= self.options.retries:
            del self.pending[iqId]
            log.info("Push notification for {user}@{host} to {service} given up: {why}",
                     user=publish.username, host=self.host.name,
                     service=publish.registration.service, why=why)
            self.host.metrics["push.failed"] += 1
            return
        publish.attempt += 1
        self.host.metrics["push.retried"] += 1
        self._send(publish)

    def onAnswer(self, iq) -> None:
        """The app server's answer to a publish (to the user's bare JID)."""
        publish = self.pending.get(iq.getAttribute("id"))
        if publish is None or iq.getAttribute("from") != publish.registration.service:
            return
        iq.handled = True
        if publish.timer is not None and publish.timer.active():
            publish.timer.cancel()
        publish.timer = None
        if iq["type"] == "result":
            del self.pending[iq["id"]]
            self.host.metrics["push.sent"] += 1
            return
        kind = iq.error.getAttribute("type") if iq.error is not None else None
        if kind == "wait":
            self._retry(iq["id"], publish, "the app server said wait")
            return
        del self.pending[iq["id"]]
        if kind == "cancel":
            registration = publish.registration
            log.info("{service} refused a push notification for {user}@{host}; registration"
                     " removed", service=registration.service, user=publish.username,
                     host=self.host.name)
            self.host.metrics["push.disabled"] += 1
            throttle = self.throttles.get(publish.username, {}).pop(
                (registration.service, registration.node), None)
            if throttle is not None:
                throttle.cancel()
            d = self.host.store.removePushRegistrations(self.host.name, publish.username,
                                                        registration.service, registration.node)
            d.addErrback(lambda failure: failure.check(StoreUnavailable) or log.failure(
                "Cannot remove a push registration", failure))
        else:
            log.info("{service} answered a push notification for {user}@{host} with an error",
                     service=publish.registration.service, user=publish.username,
                     host=self.host.name)
