"""
Presence (RFC 6121 sections 3 and 4): subscriptions, broadcast, probes and
directed presence for the users of one virtual host.

The user's server and the contact's server each do their half of every
exchange. Outbound presence (what a user's own client sends) reaches this
module through the C{client-presence} hook before any routing, so the user's
half (roster state, broadcast, stamping the bare JID) is done whatever domain
the C{to} names. Inbound presence (addressed to a local user, from a local or
a remote sender) arrives through the host's stream like any stanza, and gets
the contact's half. The halves only talk through routed stanzas: a local
contact and a remote one take the same path, and only the router tells them
apart.

Subscription state follows the tables of RFC 6121 Appendix A. The roster
item holds C{subscription}, C{ask} (pending out) and C{approved} (a
pre-approval, section 3.4, also recorded when the user's subscribe carries
a XEP-0379 token, whose redemption brings the contact's request back); a
pending-in request is kept whole in the store
until the user answers it, and is delivered again each time a resource of
the user becomes available, one at a time as the stream takes them. A
request is stored at most C{subscription_request_max_size} bytes long: its
C{<status/>} text is cut to fit, and a request still too large is refused
with C{policy-violation}. Every state change runs under the user's roster
lock (L{RosterModule.locked}).

What other modules may call: L{PresenceModule.approveSubscription},
L{PresenceModule.requestSubscription} and
L{PresenceModule.sendCurrentPresence}; and hook C{subscription-request}
lets a module answer an inbound request itself (XEP-0379 pre-authenticated
subscriptions).
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish
from twisted.words.xish.domish import escapeToXml

from invitesrv.logs import logger
from invitesrv.modules.base import HostModule
from invitesrv.modules.roster import FROM, TO, RosterModule
from invitesrv.store.interfaces import RosterItem, StoreUnavailable
from invitesrv.xmpp.c2s import NOBODY
from invitesrv.xmpp.router import bounce, parseJID
from invitesrv.xmpp.xmlparser import RestrictedElementStream

log = logger()

NS_CLIENT = "jabber:client"
NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"
NS_PARS = "urn:xmpp:pars:0"
SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))
PRESENCE_TYPES = SUBSCRIPTION_TYPES | {None, "unavailable", "probe", "error"}
ELLIPSIS = "\u2026"  # ends a status text that was cut


def makePresence(kind: str | None, sender: str, to: str | None = None,
                 stanzaId: str | None = None) -> domish.Element:
    """A new presence stanza with no content."""
    presence = domish.Element((NS_CLIENT, "presence"))
    if kind is not None:
        presence["type"] = kind
    presence["from"] = sender
    if to is not None:
        presence["to"] = to
    if stanzaId:
        presence["id"] = stanzaId
    return presence


def addressed(stanza: domish.Element, to: str, sender: str | None = None) -> domish.Element:
    """
    A copy of C{stanza} for one recipient: the same content, C{to} set (and
    C{from} when given). Children are shared, not copied: a broadcast makes
    one of these per recipient and nothing changes them afterwards.
    """
    copy = domish.Element((stanza.uri, stanza.name), stanza.defaultUri,
                          dict(stanza.attributes), dict(stanza.localPrefixes))
    copy.children = list(stanza.children)
    copy["to"] = to
    if sender is not None:
        copy["from"] = sender
    return copy


def parsePriority(presence: domish.Element) -> int:
    """The C{<priority/>} of an available presence (RFC 6121 4.7.2.3): 0 if absent or invalid."""
    for child in presence.elements(presence.uri, "priority"):
        try:
            value = int(str(child).strip())
        except ValueError:
            return 0
        return max(-128, min(127, value))
    return 0


def xmlSize(element: domish.Element) -> int:
    """The size in bytes of C{element} serialised."""
    return len(element.toXml().encode("utf-8"))


def cutText(text: str, budget: int) -> str:
    """C{text} cut, with an ellipsis, to at most C{budget} bytes once escaped as XML."""
    if len(escapeToXml(text).encode("utf-8")) <= budget:
        return text
    budget -= len(ELLIPSIS.encode("utf-8"))
    if budget < 0:
        return ""
    size = 0
    for index, char in enumerate(text):
        size += len(escapeToXml(char).encode("utf-8"))
        if size > budget:
            return text[:index] + ELLIPSIS
    return text


def capRequest(presence: domish.Element, cap: int) -> bool:
    """
    Cut the C{<status/>} texts of a subscription request so that it fits in
    C{cap} bytes serialised, in document order; False if it cannot fit.
    """
    size = xmlSize(presence)
    if size <= cap:
        return True
    statuses = list(presence.elements(presence.uri, "status"))
    texts = [str(status) for status in statuses]
    for status in statuses:
        status.children = [""]  # serialised with its end tag, as once it holds text
    budget = cap - xmlSize(presence)
    if budget < 0:
        return False
    for status, text in zip(statuses, texts, strict=True):
        text = cutText(text, budget)
        budget -= len(escapeToXml(text).encode("utf-8"))
        status.children = [text]
    return True


def parseStored(xml: str) -> domish.Element:
    """A stanza this server serialised into the store, read back with the restricted parser."""
    data = f"<stored xmlns='{NS_CLIENT}'>{xml}</stored>".encode()
    elements: list[domish.Element] = []
    parser = RestrictedElementStream(len(data) + 1)
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = elements.append
    parser.DocumentEndEvent = lambda: None
    parser.parse(data)
    return elements[0]


class PresenceModule(HostModule):
    """
    The presence half of an instant-messaging server, for one virtual host.
    It is the host's presence tracker: it sets who is available in
    L{invitesrv.services.resources.Resources}.
    """

    name = "presence"
    depends = ("roster",)
    hooks = (("client-presence", "onClientPresence"),
             ("session-closed", "onSessionClosed"),
             ("stream-features", "onStreamFeatures"),
             ("user-deleting", "onUserDeleting"),
             ("user-registered", "onUserRegistered"))
    observers = (("/presence", "onInboundPresence"),)

    @property
    def roster(self) -> RosterModule:
        """The host's roster module, which holds the per-user locks and sends pushes."""
        return self.parent.modules["roster"]

    def connectionInitialized(self) -> None:
        HostModule.connectionInitialized(self)
        self.parent.resources.track(self)

    def connectionLost(self, reason) -> None:
        self.parent.resources.untrack(self)
        HostModule.connectionLost(self, reason)

    # -- helpers ------------------------------------------------------------

    def _bare(self, username: str) -> str:
        return f"{username}@{self.parent.name}"

    def _sessions(self, username: str) -> list:
        return list(self.parent.router.resourcesOf(self._bare(username)).values())

    def _available(self, username: str) -> list:
        return self.parent.resources.present(self._bare(username))

    def _watch(self, d: defer.Deferred, what: str, **fields) -> None:
        # Store faults are logged by the store, once per episode, not once per stanza.
        d.addErrback(lambda failure: failure.check(StoreUnavailable) or log.failure(
            what, failure, **fields))

    def _deliver(self, username: str, stanza: domish.Element, interested: bool = False) -> None:
        """Hand an inbound stanza to the user's available (or also interested) resources."""
        for session in self._sessions(username):
            if session.available or (interested and session.interested):
                session.send(stanza)

    def sendCurrentPresence(self, username: str, contact: str) -> None:
        """Send the last presence of each of the user's available resources to C{contact}."""
        for session in self._available(username):
            self.send(addressed(session.presence, contact))

    def _sendUnavailable(self, username: str, contact: str) -> None:
        for session in self._available(username):
            self.send(makePresence("unavailable", session.full, contact))

    # -- outbound: what the user's own clients send ---------------------------

    def onClientPresence(self, session, presence) -> bool:
        """Hook C{client-presence}: the user's server's part for every presence a client sends."""
        kind = presence.getAttribute("type")
        to = presence.getAttribute("to")
        if kind not in PRESENCE_TYPES:
            self._refuse(session, presence, "bad-request", "Unknown presence type")
        elif to is None:
            if kind is None:
                self._becomeAvailable(session, presence)
            elif kind == "unavailable":
                self._goOffline(session, presence)
            elif kind != "error":
                self._refuse(session, presence, "bad-request",
                             f"A presence of type {kind} needs a 'to'")
        else:
            try:
                target = parseJID(to)
            except (jid.InvalidFormat, UnicodeError):
                self._refuse(session, presence, "jid-malformed")
                return True
            if kind in SUBSCRIPTION_TYPES:
                contact = target.userhost()
                if contact != session.bare:
                    self._watch(self.roster.locked(session.user, self._outbound, session.user,
                                                   contact, kind, presence),
                                "Outbound {kind} from {user} failed", kind=kind, user=session.bare)
            elif kind in (None, "unavailable"):
                self._directed(session, presence, target)
            else:  # probe (RFC 6121 4.3: routed, answered by the contact's server) or error
                self.send(presence)
        return True

    def _refuse(self, session, presence, condition: str, text: str | None = None) -> None:
        reply = bounce(presence, condition, text=text)
        if reply is not None:
            session.send(reply)

    def _becomeAvailable(self, session, presence) -> None:
        """Initial or subsequent available presence (RFC 6121 4.2.2, 4.4.2)."""
        initial = self.parent.resources.setAvailable(session, parsePriority(presence), presence)
        if initial:
            self._watch(defer.maybeDeferred(self.parent.hooks.run, "initial-presence", session),
                        "An initial-presence callback failed for {session}", session=session)
            # The stored subscription requests go to it too: read with the roster.
            d = self.roster.getRosterAndPendingIn(session.user)
        else:
            d = self.roster.getRoster(session.user).addCallback(lambda roster: (roster, None))
        d.addCallback(self._broadcastAvailable, session, presence)
        self._watch(d, "Presence broadcast for {session} failed", session=session)

    @defer.inlineCallbacks
    def _broadcastAvailable(self, read, session, presence):
        """
        Broadcast C{presence} to the subscribers in C{read} (the roster, and
        for an initial presence the stored requests, else None), then give an
        initial presence the presence of the user's other resources, the
        contacts' (probes) and the requests.
        """
        roster, pending = read
        initial = pending is not None
        for item in roster.items:
            if item.subscription in FROM:
                self.send(addressed(presence, item.contact))
        for other in self._sessions(session.user):
            if other.available:
                other.send(addressed(presence, other.full))
        if not initial:
            return
        for item in roster.items:
            if item.subscription in TO:
                self.send(makePresence("probe", session.bare, item.contact))
        for other in self._available(session.user):
            if other is not session:
                session.send(addressed(other.presence, session.full))
        for _, xml in pending:
            # One at a time as the stream takes them (requests stored before
            # they were capped can be large).
            if session.closed:
                return
            session.send(parseStored(xml))
            yield session.whenSent()

    def _goOffline(self, session, presence) -> None:
        """
        Unavailable presence, sent by the client or generated for a closed
        session (RFC 6121 4.5.2): to subscribers, to the user's available
        resources, and to whoever got directed presence and no broadcast.
        """
        directed = session.directed
        wasAvailable = self.parent.resources.setUnavailable(session)
        session.directed = NOBODY
        if not wasAvailable and not directed:
            return
        d = self.roster.getRoster(session.user) if wasAvailable else defer.succeed(None)
        d.addCallback(self._broadcastUnavailable, session, presence, directed)
        self._watch(d, "Unavailable broadcast for {session} failed", session=session)

    def _broadcastUnavailable(self, roster, session, presence, directed: frozenset[str]) -> None:
        subscribers = set()
        if roster is not None:
            for item in roster.items:
                if item.subscription in FROM:
                    subscribers.add(item.contact)
                    self.send(addressed(presence, item.contact))
            for other in self._sessions(session.user):
                if other is session or (other.available and other.full != session.full):
                    # (A session that replaced this one has the same JID: not told.)
                    other.send(addressed(presence, other.full))
        for target in directed:
            if parseJID(target).userhost() not in subscribers:
                self.send(addressed(presence, target))

    def _directed(self, session, presence, target: jid.JID) -> None:
        """
        Directed presence (RFC 6121 4.6.3): routed as is, and remembered so
        that the entity hears when this resource goes away.
        """
        self.send(presence)
        if target.userhost() == session.bare:
            return
        if presence.getAttribute("type") == "unavailable":
            session.directed -= {target.full()}
        else:
            session.directed |= {target.full()}

    @defer.inlineCallbacks
    def _outbound(self, username: str, contact: str, kind: str, presence=None, force: bool = False):
        """
        The user's server's part of an outbound subscription stanza (RFC 6121
        3.1.2, 3.1.5, 3.2.2, 3.3.2, 3.4.2 and Appendix A.2), run under the
        user's roster lock. C{force} approves a C{subscribed} even with no
        stored request (see L{approveSubscription}).
        """
        store, host = self.parent.store, self.parent.name
        user = self._bare(username)
        if presence is None:
            presence = makePresence(kind, user, contact)
        else:
            presence["from"] = user
            presence["to"] = contact
        item: RosterItem | None = yield self.roster.getItem(username, contact)
        subscription = item.subscription if item is not None else "none"
        if kind == "subscribe":
            # A request carrying the contact's XEP-0379 token redeems their
            # invite, and their server asks back at once: the user already
            # said yes, so pre-approve it (RFC 6121 3.4) rather than prompt.
            invited = (subscription not in FROM
                       and next(presence.elements(NS_PARS, "preauth"), None) is not None)
            item = item or RosterItem(contact)
            asks = subscription not in TO and not item.ask
            if asks or (invited and not item.approved):
                yield self.roster.saveItem(username, replace(
                    item, ask=item.ask or asks, approved=item.approved or invited))
            self.send(presence)
        elif kind == "subscribed":
            pendingIn = yield store.removePendingIn(host, username, contact)
            if subscription in FROM:
                if force:  # answer the request in flight, as for one already granted
                    self.send(presence)
                    self.sendCurrentPresence(username, contact)
            elif pendingIn or force:
                yield self._approve(username, item or RosterItem(contact), presence)
            elif item is None or not item.approved:
                yield self.roster.saveItem(username,
                                           replace(item or RosterItem(contact), approved=True))
        elif kind == "unsubscribe":
            if item is not None and (subscription in TO or item.ask):
                yield self.roster.saveItem(username, replace(
                    item, subscription={"to": "none", "both": "from"}.get(subscription, subscription),
                    ask=False))
            self.send(presence)
        else:  # unsubscribed: cancel the contact's subscription, deny or cancel a pre-approval
            pendingIn = yield store.removePendingIn(host, username, contact)
            if subscription in FROM:
                self._sendUnavailable(username, contact)
                self.send(presence)
                yield self.roster.saveItem(username, replace(
                    item, subscription="none" if subscription == "from" else "to", approved=False))
            else:
                if pendingIn:
                    self.send(presence)
                if item is not None and item.approved:
                    yield self.roster.saveItem(username, replace(item, approved=False))

    @defer.inlineCallbacks
    def _approve(self, username: str, item: RosterItem, subscribed=None):
        """The contact now has a subscription to the user (RFC 6121 3.1.5); under the lock."""
        contact = item.contact
        self.send(subscribed if subscribed is not None
                  else makePresence("subscribed", self._bare(username), contact))
        yield self.roster.saveItem(username, replace(
            item, subscription="both" if item.subscription == "to" else "from", approved=False))
        self.sendCurrentPresence(username, contact)

    # -- inbound: presence addressed to a local user --------------------------

    def onInboundPresence(self, presence) -> None:
        """The contact's server's part for presence addressed to a local account."""
        presence.handled = True
        try:
            target = parseJID(presence["to"])
            origin = parseJID(presence["from"])
        except (KeyError, jid.InvalidFormat, UnicodeError):
            return
        if target.user is None:
            return  # presence to the server itself: nothing to do with it
        kind = presence.getAttribute("type")
        username = target.user
        if kind in SUBSCRIPTION_TYPES:
            contact = origin.userhost()
            if contact == target.userhost():
                return
            presence["to"] = target.userhost()
            self._watch(self._inbound(username, contact, kind, presence),
                        "Inbound {kind} for {user} failed", kind=kind, user=target.userhost())
        elif kind == "probe":
            self._watch(self._answerProbe(username, origin, presence),
                        "Probe of {user} failed", user=target.userhost())
        elif kind in (None, "unavailable", "error") and target.resource is None:
            self._deliver(username, presence)

    def _inbound(self, username: str, contact: str, kind: str, presence) -> defer.Deferred:
        if kind == "subscribe":
            return self._inboundSubscribe(username, contact, presence)
        # Taken at once (not after a yield): work queued on the lock before
        # this stanza was routed also runs before it.
        return self.roster.locked(username, self._inboundChange, username, contact, kind, presence)

    @defer.inlineCallbacks
    def _inboundSubscribe(self, username: str, contact: str, presence):
        """
        An inbound subscription request (RFC 6121 3.1.3, Appendix A.3.1):
        answered by the server when it can, else offered to the
        C{subscription-request} hook, else stored and delivered.
        """
        answered = yield self.roster.locked(username, self._answerSubscribe, username, contact)
        if answered:
            return
        hooked = defer.maybeDeferred(self.parent.hooks.first, "subscription-request",
                                     self.parent.name, username, contact, presence)
        hooked.addErrback(self._hookFailed, username)
        if (yield hooked):
            return
        yield self.roster.locked(username, self._storeRequest, username, contact, presence)

    def _hookFailed(self, failure, username: str) -> bool:
        log.failure("A subscription-request callback failed for {user}", failure,
                    user=self._bare(username))
        return False

    @defer.inlineCallbacks
    def _answerSubscribe(self, username: str, contact: str):
        """True when the server answers the request itself (or ignores it)."""
        item = yield self.roster.getItem(username, contact)
        if item is not None and item.subscription in FROM:
            self.send(makePresence("subscribed", self._bare(username), contact))
            self.sendCurrentPresence(username, contact)
            return True
        if item is not None and item.approved:
            yield self._approve(username, item)
            return True
        if item is None:
            exists = yield self.parent.store.accountExists(self.parent.name, username)
            return not exists  # RFC 6121 8.5.1: silently ignored
        return False

    @defer.inlineCallbacks
    def _storeRequest(self, username: str, contact: str, presence):
        store, host = self.parent.store, self.parent.name
        item = yield self.roster.getItem(username, contact)
        if item is not None and item.subscription in FROM:  # granted in the meantime
            self.send(makePresence("subscribed", self._bare(username), contact))
            return
        pending = yield store.getPendingIn(host, username)
        if any(other == contact for other, _ in pending):
            return  # RFC 6121 3.1.3: one request per contact, not delivered again now
        options = self.parent.options
        if len(pending) >= options.max_pending_subscriptions:
            self._refuseInbound(presence, "resource-constraint", "wait",
                                "Too many subscription requests are waiting for this user")
            return
        if not capRequest(presence, options.subscription_request_max_size):
            self._refuseInbound(presence, "policy-violation", "modify",
                                f"A subscription request may be at most"
                                f" {options.subscription_request_max_size} bytes long")
            return
        yield store.setPendingIn(host, username, contact, presence.toXml())
        self._deliver(username, presence)

    def _refuseInbound(self, presence, condition: str, errorType: str, text: str) -> None:
        """Answer an inbound stanza with an error, routed back to its sender."""
        reply = bounce(presence, condition, errorType, text)
        if reply is not None:
            self.send(reply)

    @defer.inlineCallbacks
    def _inboundChange(self, username: str, contact: str, kind: str, presence):
        """Inbound subscribed, unsubscribe, unsubscribed (RFC 6121 Appendix A.3.2-A.3.4)."""
        item = yield self.roster.getItem(username, contact)
        subscription = item.subscription if item is not None else "none"
        if kind == "subscribed":
            if item is None or not item.ask or subscription in TO:
                return
            self._deliver(username, presence, interested=True)
            yield self.roster.saveItem(username, replace(
                item, subscription="to" if subscription == "none" else "both", ask=False))
        elif kind == "unsubscribed":
            if item is None or not (item.ask or subscription in TO):
                return
            self._deliver(username, presence, interested=True)
            yield self.roster.saveItem(username, replace(
                item, subscription={"to": "none", "both": "from"}.get(subscription, subscription),
                ask=False))
        else:  # unsubscribe: the contact no longer wants the user's presence
            pendingIn = yield self.parent.store.removePendingIn(self.parent.name, username, contact)
            if subscription in FROM:
                self._deliver(username, presence, interested=True)
                yield self.roster.saveItem(username, replace(
                    item, subscription="none" if subscription == "from" else "to"))
                self._sendUnavailable(username, contact)
            elif pendingIn:
                self._deliver(username, presence, interested=True)

    @defer.inlineCallbacks
    def _answerProbe(self, username: str, origin: jid.JID, probe):
        """A presence probe for a local user (RFC 6121 4.3.2)."""
        user, prober = self._bare(username), origin.userhost()
        stanzaId = probe.getAttribute("id")
        if prober != user:
            item = yield self.roster.getItem(username, prober)
            if item is None or item.subscription not in FROM:
                # Not subscribed: say so, unless it is a request still waiting
                # for the user's answer (that would cancel it).
                pending = yield self.parent.store.getPendingIn(self.parent.name, username)
                if not any(contact == prober for contact, _ in pending):
                    self.send(makePresence("unsubscribed", user, prober, stanzaId))
                return
        sessions = self._available(username)
        if not sessions:
            self.send(makePresence("unavailable", user, probe["from"], stanzaId))
        for session in sessions:
            self.send(addressed(session.presence, probe["from"]))

    # -- session and account life cycle ---------------------------------------

    def onSessionClosed(self, session) -> None:
        """Hook C{session-closed}: a resource gone, gracefully or not, is unavailable."""
        if session.available or session.directed:
            self._goOffline(session, makePresence("unavailable", session.full))

    def onStreamFeatures(self, session, features) -> None:
        """Advertise subscription pre-approval (RFC 6121 3.4) once authenticated."""
        if session.authenticated:
            features.addElement((NS_PREAPPROVAL, "sub"))

    @defer.inlineCallbacks
    def onUserDeleting(self, host: str, username: str):
        """
        Hook C{user-deleting}: cancel the account's subscriptions both ways,
        deny its pending requests, and take it off local contacts' rosters.
        """
        if host != self.parent.name:
            return
        user = self._bare(username)
        roster = yield self.roster.getRoster(username)
        pending = yield self.parent.store.getPendingIn(host, username)
        contacts = {item.contact for item in roster.items} | {contact for contact, _ in pending}
        waiting = {contact for contact, _ in pending}
        for item in roster.items:
            if item.subscription in TO or item.ask:
                self.send(makePresence("unsubscribe", user, item.contact))
            if item.subscription in FROM:
                self._sendUnavailable(username, item.contact)
                self.send(makePresence("unsubscribed", user, item.contact))
                waiting.discard(item.contact)
        for contact in waiting:
            self.send(makePresence("unsubscribed", user, contact))
        for contact in sorted(contacts):
            other = parseJID(contact)
            if other.host == host and other.user is not None and other.resource is None:
                yield self.roster.locked(other.user, self._forget, other.user, user)

    @defer.inlineCallbacks
    def _forget(self, username: str, contact: str):
        yield self.parent.store.removePendingIn(self.parent.name, username, contact)
        yield self.roster.removeItem(username, contact)

    def onUserRegistered(self, registration) -> None:
        """
        Hook C{user-registered}: roster rows written with an account (an
        inviter and the invitee) start a presence exchange like an approval.
        """
        if registration.host != self.parent.name:
            return
        for owner, item in registration.rosterItems:
            if item.subscription in FROM:
                self.sendCurrentPresence(owner, item.contact)

    # -- for other modules ----------------------------------------------------

    def approveSubscription(self, username: str, contact: str) -> defer.Deferred:
        """
        Act as if local user C{username} had answered a subscription request
        from C{contact} (a bare JID) with C{subscribed}: the contact gains a
        subscription to the user's presence (the item becomes C{from} or
        C{both}), C{subscribed} and the user's current presence go to the
        contact, and the user's interested resources get the push. Unlike a
        client's C{subscribed} this needs no stored request, so a
        C{subscription-request} callback may approve the request it is
        handling. Fires when done.
        """
        contact = parseJID(contact).userhost()
        return self.roster.locked(username, self._outbound, username, contact, "subscribed",
                                  None, True)

    def requestSubscription(self, username: str, contact: str) -> defer.Deferred:
        """
        Send a subscription request from local user C{username} to C{contact}
        (a bare JID), as if the user's client had sent C{subscribe}: the item
        gets C{ask='subscribe'} and is pushed. Does nothing when the user is
        already subscribed or already waiting for an answer. Fires with True
        if a request was sent.
        """
        contact = parseJID(contact).userhost()
        return self.roster.locked(username, self._request, username, contact)

    @defer.inlineCallbacks
    def _request(self, username: str, contact: str):
        item = yield self.roster.getItem(username, contact)
        if item is not None and (item.subscription in TO or item.ask):
            return False
        yield self._outbound(username, contact, "subscribe")
        return True
