"""
Presence (RFC 6121 sections 3 and 4). End to end, over real sockets against
one server process: subscriptions both ways with their pushes, presence seen
and withdrawn (also when a TCP connection just dies), directed presence,
pending requests delivered again at login (cut to a size, one at a time),
pre-approval, and the errors.
slixmpp plays an independent client; raw XML clients check exact stanzas.
In process, over an in-memory store: the hooks and methods other modules use
(C{subscription-request}, approveSubscription, requestSubscription,
C{user-deleting}, C{user-registered}).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
import pytest_twisted
from slix import Client, run
from test_roster import (
    NS_ROSTER,
    StanzaClient,
    addUsers,
    errorCondition,
    isPush,
    rosterItems,
)
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from invitesrv.config import Config
from invitesrv.modules.presence import ELLIPSIS, capRequest, parseStored, xmlSize
from invitesrv.service import InviteServer
from invitesrv.store.interfaces import NewAccount, RosterItem
from invitesrv.store.sqlite import SQLiteStore
from invitesrv.xmpp.c2s import C2SFactory, Session

NS_PARS = "urn:xmpp:pars:0"


def isPresence(sender: str | None = None, kind: str | None = "available",
               show: str | None = None):
    """
    A predicate for a presence stanza from C{sender} (full or bare JID) of
    type C{kind} ("available" for no type, None for any), with C{show} if given.
    """
    def match(element: domish.Element) -> bool:
        if element.name != "presence":
            return False
        if sender is not None and element.getAttribute("from") != sender:
            return False
        if kind is not None and element.getAttribute("type", "available") != kind:
            return False
        if show is not None:
            shows = [str(c) for c in element.elements() if c.name == "show"]
            return shows == [show]
        return True
    return match


def online(port: int, username: str, resource: str = "raw") -> StanzaClient:
    """A raw client that asked for its roster and sent initial presence."""
    client = StanzaClient(port, username, resource)
    client.rosterGet()
    client.send("<presence/>")
    client.expect(isPresence(client.jid), what="own presence echoed")
    return client


def subscribeBothWays(a: StanzaClient, b: StanzaClient) -> None:
    """Mutual subscription between two online clients, answering each request."""
    a.send(f"<presence to='{b.bare}' type='subscribe'/>")
    b.expect(isPresence(a.bare, "subscribe"))
    b.send(f"<presence to='{a.bare}' type='subscribed'/>")
    b.send(f"<presence to='{a.bare}' type='subscribe'/>")
    a.expect(isPresence(b.bare, "subscribe"))
    a.send(f"<presence to='{b.bare}' type='subscribed'/>")
    a.expect(isPush(b.bare, "both"))
    b.expect(isPush(a.bare, "both"))


USERS = ["romeo", "juliet", "nurse", "tybalt", "mercutio", "benvolio", "paris", "friar",
         "lady", "capulet", "balthasar", "abram", "sampson", "gregory", "peter", "rosaline",
         "escalus", "lawrence", "john"]


@pytest.fixture(scope="module")
def server(sharedServer):
    addUsers(sharedServer, *(f"{name}@localhost" for name in USERS))
    return sharedServer


def test_mutualSubscriptionWithPushes(server):
    """
    Three clients: romeo (two resources) and juliet subscribe to each other.
    Every step brings the pushes and stanzas RFC 6121 section 3 lists, ending
    in subscription='both' on both rosters and presence flowing both ways.
    """
    romeo = online(server.port, "romeo", "home")
    romeo2 = online(server.port, "romeo", "away")
    juliet = online(server.port, "juliet", "balcony")
    try:
        romeo.expect(isPresence("romeo@localhost/away"), what="the new resource's presence")
        romeo2.expect(isPresence("romeo@localhost/home"), what="the other resource's presence")
        romeo.send("<presence to='juliet@localhost' type='subscribe' id='sub1'/>")
        for resource in (romeo, romeo2):
            resource.expect(isPush("juliet@localhost", "none", ask=True), what="pending-out push")
        request = juliet.expect(isPresence("romeo@localhost", "subscribe"), what="request")
        assert request["id"] == "sub1" and request["to"] == "juliet@localhost"
        juliet.absent(isPush("romeo@localhost"), wait=0.2, what="push before approval")

        juliet.send("<presence to='romeo@localhost' type='subscribed'/>")
        juliet.expect(isPush("romeo@localhost", "from", ask=False))
        for resource in (romeo, romeo2):
            resource.expect(isPresence("juliet@localhost", "subscribed"))
            resource.expect(isPush("juliet@localhost", "to", ask=False))
            resource.expect(isPresence("juliet@localhost/balcony"), what="juliet's presence")

        juliet.send("<presence to='romeo@localhost' type='subscribe'/>")
        juliet.expect(isPush("romeo@localhost", "from", ask=True))
        romeo.expect(isPresence("juliet@localhost", "subscribe"))
        romeo2.expect(isPresence("juliet@localhost", "subscribe"))
        romeo2.send("<presence to='juliet@localhost' type='subscribed'/>")
        romeo.expect(isPush("juliet@localhost", "both"))
        romeo2.expect(isPush("juliet@localhost", "both"))
        juliet.expect(isPresence("romeo@localhost", "subscribed"))
        juliet.expect(isPush("romeo@localhost", "both", ask=False))
        juliet.expect(isPresence("romeo@localhost/home"))
        juliet.expect(isPresence("romeo@localhost/away"))

        assert rosterItems(romeo.rosterGet())["juliet@localhost"]["subscription"] == "both"
        assert rosterItems(juliet.rosterGet())["romeo@localhost"]["subscription"] == "both"
        romeo.send("<presence><show>dnd</show></presence>")
        juliet.expect(isPresence("romeo@localhost/home", show="dnd"))
        romeo2.expect(isPresence("romeo@localhost/home", show="dnd"), what="own resource's update")
    finally:
        for client in (romeo, romeo2, juliet):
            client.close()


def test_presenceSeenAndWithdrawn(server):
    """
    With a mutual subscription: logging in brings the contact's presence
    (probe), updates and unavailable are broadcast, and a TCP connection that
    dies without a closing tag still ends in unavailable for the contact.
    """
    nurse = online(server.port, "nurse", "kitchen")
    tybalt = online(server.port, "tybalt", "street")
    subscribeBothWays(nurse, tybalt)
    tybalt.close()
    try:
        late = StanzaClient(server.port, "tybalt", "late")
        late.rosterGet()
        late.send("<presence><priority>5</priority></presence>")
        nurse.expect(isPresence("tybalt@localhost/late"), what="tybalt online")
        late.expect(isPresence("nurse@localhost/kitchen"), what="probe answered")

        nurse.send("<presence><show>away</show><status>cooking</status></presence>")
        late.expect(isPresence("nurse@localhost/kitchen", show="away"))
        nurse.send("<presence type='unavailable'><status>bye</status></presence>")
        gone = late.expect(isPresence("nurse@localhost/kitchen", "unavailable"))
        assert [str(c) for c in gone.elements() if c.name == "status"] == ["bye"]
        nurse.send("<presence/>")
        late.expect(isPresence("nurse@localhost/kitchen"), what="nurse back")

        late.drop()
        nurse.expect(isPresence("tybalt@localhost/late", "unavailable"), what="unavailable after drop")
        # A probe for someone with nothing available says unavailable.
        nurse.close()
        again = StanzaClient(server.port, "tybalt", "again")
        again.send("<presence/>")
        again.expect(isPresence("nurse@localhost", "unavailable"), what="probe answer when offline")
        again.close()
    finally:
        nurse.close()


def test_directedPresence(server):
    """
    Directed presence reaches an entity with no subscription, and that entity
    hears unavailable when the resource goes, even by a dropped connection;
    after directed unavailable it hears nothing more.
    """
    mercutio = online(server.port, "mercutio", "m")
    benvolio = online(server.port, "benvolio", "b")
    paris = online(server.port, "paris", "p")
    try:
        mercutio.send("<presence to='benvolio@localhost/b'><status>hi</status></presence>")
        benvolio.expect(isPresence("mercutio@localhost/m"), what="directed presence")
        mercutio.send("<presence to='paris@localhost'/>")
        paris.expect(isPresence("mercutio@localhost/m"), what="directed presence to a bare JID")
        mercutio.send("<presence type='unavailable' to='paris@localhost'/>")
        paris.expect(isPresence("mercutio@localhost/m", "unavailable"))
        mercutio.send("<presence><show>chat</show></presence>")
        benvolio.absent(isPresence("mercutio@localhost/m"), wait=0.3,
                        what="a broadcast to a non-subscriber")
        mercutio.drop()
        benvolio.expect(isPresence("mercutio@localhost/m", "unavailable"), what="unavailable")
        paris.absent(isPresence("mercutio@localhost/m"), wait=0.3, what="presence after directed unavailable")
    finally:
        for client in (benvolio, paris):
            client.close()


def test_pendingRequestDeliveredAgainAtLogin(server):
    """
    A request for an offline user is kept and delivered at each initial
    presence until answered, and only once per login.
    """
    friar = online(server.port, "friar", "cell")
    try:
        friar.send("<presence to='lady@localhost' type='subscribe'><status>hello</status></presence>")
        friar.expect(isPush("lady@localhost", "none", ask=True))
        for attempt in range(2):
            lady = StanzaClient(server.port, "lady", f"try{attempt}")
            lady.absent(isPresence("friar@localhost", "subscribe"), wait=0.2, what="request before presence")
            lady.send("<presence/>")
            request = lady.expect(isPresence("friar@localhost", "subscribe"), what="stored request")
            assert [str(c) for c in request.elements() if c.name == "status"] == ["hello"]
            lady.absent(isPresence("friar@localhost", "subscribe"), wait=0.2, what="second copy")
            if attempt:
                lady.rosterGet()
                lady.send("<presence to='friar@localhost' type='unsubscribed'/>")
                friar.expect(isPresence("lady@localhost", "unsubscribed"), what="denial")
                friar.expect(isPush("lady@localhost", "none", ask=False))
                lady.absent(isPush("friar@localhost"), wait=0.2, what="a roster item for a denial")
            lady.close()
        lady = StanzaClient(server.port, "lady", "after")
        lady.send("<presence/>")
        lady.absent(isPresence("friar@localhost", "subscribe"), wait=0.3, what="an answered request")
        lady.close()
    finally:
        friar.close()


def test_largeRequestsDoNotLockTheUserOut(server):
    """
    Seven requests with 200 KB of status each, sent while the user is away
    (the audit's case), are kept cut to subscription_request_max_size, the
    status ending with an ellipsis: the user gets all seven at every login
    and stays connected. (They used to come in one burst taken for a client
    that does not read: the user was dropped at every login, for good.) A
    request too large even without its status is refused, saying why.
    """
    askers = [f"asker{n}" for n in range(7)]
    addUsers(server, "ida@localhost", *(f"{name}@localhost" for name in askers))
    for name in askers:
        asker = StanzaClient(server.port, name)
        try:
            asker.rosterGet()
            asker.send(f"<presence to='ida@localhost' type='subscribe'><status>{'s' * 200_000}"
                       "</status></presence>")
            asker.expect(isPush("ida@localhost", "none", ask=True))
            asker.request("<ping xmlns='urn:xmpp:ping'/>", to="localhost")
        finally:
            asker.close()
    for login in range(2):
        ida = StanzaClient(server.port, "ida", f"login{login}")
        try:
            ida.send("<presence/>")
            for name in askers:
                request = ida.expect(isPresence(f"{name}@localhost", "subscribe"), what=name)
                status = str(request.status)
                assert status.startswith("sss") and status.endswith(ELLIPSIS)
                assert xmlSize(request) <= 4096 + len(" to='ida@localhost'")
            assert ida.request("<ping xmlns='urn:xmpp:ping'/>", to="localhost")["type"] == "result"
        finally:
            ida.close()
    big = online(server.port, "asker0")
    try:
        big.send(f"<presence to='juliet@localhost' type='subscribe'><nick xmlns="
                 f"'http://jabber.org/protocol/nick'>{'n' * 5000}</nick></presence>")
        refused = big.expect(isPresence("juliet@localhost", "error"), what="the refusal")
        assert errorCondition(refused) == "policy-violation"
        assert "at most 4096 bytes" in str(refused.error.text)
    finally:
        big.close()


def test_largeStoredRequestsArePaced(server):
    """
    Requests stored before they were capped (200 KB of status each, written
    straight into the database) reach the user one at a time as the client
    reads them: all seven arrive, whole, and the user stays connected.
    """
    askers = [f"old{n}" for n in range(7)]
    addUsers(server, "jo@localhost")
    with sqlite3.connect(server.dataDir / "invitesrv.sqlite3") as db:
        db.executemany("INSERT INTO pending_in (host, username, contact, stanza) VALUES (?, ?, ?, ?)",
                       [("localhost", "jo", f"{name}@localhost",
                         f"<presence xmlns='jabber:client' type='subscribe' from='{name}@localhost'"
                         f" to='jo@localhost'><status>{'s' * 200_000}</status></presence>")
                        for name in askers])
    jo = StanzaClient(server.port, "jo")
    try:
        jo.send("<presence/>")
        for name in askers:
            request = jo.expect(isPresence(f"{name}@localhost", "subscribe"), what=name)
            assert str(request.status) == "s" * 200_000
        assert jo.request("<ping xmlns='urn:xmpp:ping'/>", to="localhost")["type"] == "result"
    finally:
        jo.close()


def test_preApproval(server):
    """
    RFC 6121 3.4: a subscribed with no request pending is kept as approved
    (pushed, not routed), and the later request is granted at once.
    """
    capulet = online(server.port, "capulet", "c")
    balthasar = online(server.port, "balthasar", "b")
    try:
        capulet.send("<presence to='balthasar@localhost' type='subscribed'/>")
        capulet.expect(isPush("balthasar@localhost", "none", approved=True))
        balthasar.absent(isPresence("capulet@localhost", "subscribed"), wait=0.3,
                         what="a routed pre-approval")
        balthasar.send("<presence to='capulet@localhost' type='subscribe'/>")
        balthasar.expect(isPresence("capulet@localhost", "subscribed"), what="auto-approval")
        balthasar.expect(isPush("capulet@localhost", "to"))
        balthasar.expect(isPresence("capulet@localhost/c"), what="capulet's presence")
        capulet.expect(isPush("balthasar@localhost", "from", approved=False))
        capulet.absent(isPresence("balthasar@localhost", "subscribe"), wait=0.3,
                       what="the request (it was pre-approved)")
    finally:
        capulet.close()
        balthasar.close()


def test_errorsAndIgnoredStanzas(server):
    """
    Subscription stanzas need a 'to' (bad-request), unknown presence types
    are refused, a malformed 'to' is jid-malformed, and a subscription to
    oneself or an unsolicited 'subscribed' changes nothing.
    """
    abram = online(server.port, "abram", "a")
    sampson = online(server.port, "sampson", "s")
    try:
        for kind in ("subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe"):
            abram.send(f"<presence type='{kind}' id='n-{kind}'/>")
            reply = abram.expect(lambda e, k=kind: e.getAttribute("id") == f"n-{k}", what=kind)
            assert reply["type"] == "error" and errorCondition(reply) == "bad-request", reply.toXml()
        abram.send("<presence type='dance' id='bad-type'/>")
        assert errorCondition(abram.expect(lambda e: e.getAttribute("id") == "bad-type")) == "bad-request"
        abram.send("<presence to='bad@@localhost' type='subscribe' id='bad-to'/>")
        assert errorCondition(abram.expect(lambda e: e.getAttribute("id") == "bad-to")) == "jid-malformed"
        abram.send("<presence to='abram@localhost' type='subscribe'/>")
        sampson.send("<presence to='abram@localhost' type='unsubscribed'/>")
        sampson.send("<presence to='abram@localhost' type='subscribed'/>")  # pre-approval only
        abram.absent(lambda e: e.name == "iq" or e.getAttribute("type") in (
            "subscribe", "subscribed", "unsubscribed"), wait=0.4, what="any subscription effect")
        assert rosterItems(abram.rosterGet()) == {}
        # A stranger's probe reveals nothing.
        sampson.send("<presence to='abram@localhost' type='probe' id='pr'/>")
        sampson.absent(isPresence(None, None), wait=0.4, what="presence of someone not shared with")
    finally:
        abram.close()
        sampson.close()


def test_unsubscribeThenCancel(server):
    """
    Unsubscribing (RFC 6121 3.3) and cancelling (3.2) one direction at a
    time: each side gets the stanza, its push, and the unavailable presence
    of the party that stops sharing.
    """
    gregory = online(server.port, "gregory", "g")
    peter = online(server.port, "peter", "p")
    try:
        subscribeBothWays(gregory, peter)
        peter.expect(isPresence("gregory@localhost/g"))
        peter.send("<presence to='gregory@localhost' type='unsubscribe'/>")
        peter.expect(isPush("gregory@localhost", "from"))
        gregory.expect(isPresence("peter@localhost", "unsubscribe"))
        gregory.expect(isPush("peter@localhost", "to"))
        peter.expect(isPresence("gregory@localhost/g", "unavailable"), what="unavailable after unsubscribe")

        peter.send("<presence to='gregory@localhost' type='unsubscribed'/>")
        gregory.expect(isPresence("peter@localhost/p", "unavailable"), what="unavailable first")
        gregory.expect(isPresence("peter@localhost", "unsubscribed"))
        gregory.expect(isPush("peter@localhost", "none"))
        peter.expect(isPush("gregory@localhost", "none"))
        assert rosterItems(gregory.rosterGet())["peter@localhost"]["subscription"] == "none"
        assert rosterItems(peter.rosterGet())["gregory@localhost"]["subscription"] == "none"
    finally:
        gregory.close()
        peter.close()


def test_removeCancelsBothWays(server):
    """Removing a contact with a mutual subscription cancels both directions (RFC 6121 2.5.2)."""
    lawrence = online(server.port, "lawrence", "l")
    john = online(server.port, "john", "j")
    try:
        subscribeBothWays(lawrence, john)
        john.expect(isPresence("lawrence@localhost/l"))
        reply = lawrence.rosterSet("<item jid='john@localhost' subscription='remove'/>")
        assert reply["type"] == "result"
        lawrence.expect(isPush("john@localhost", "remove"))
        john.expect(isPresence("lawrence@localhost", "unsubscribe"))
        john.expect(isPresence("lawrence@localhost/l", "unavailable"))
        john.expect(isPresence("lawrence@localhost", "unsubscribed"))
        john.expect(isPush("lawrence@localhost", "to"))
        john.expect(isPush("lawrence@localhost", "none"))
        assert rosterItems(john.rosterGet())["lawrence@localhost"]["subscription"] == "none"
        assert "john@localhost" not in rosterItems(lawrence.rosterGet())
    finally:
        lawrence.close()
        john.close()


def test_slixmppContactsSeeEachOther(server):
    """
    slixmpp (auto-authorise and auto-subscribe, its defaults) adds a contact:
    both rosters reach 'both', each sees the other online, then offline.
    """
    async def scenario():
        rosaline = Client("rosaline@localhost/slix", "a long password")
        escalus = Client("escalus@localhost/slix", "a long password")
        seen = {name: asyncio.Event() for name in ("rosaline", "escalus", "offline")}
        rosaline.add_event_handler("got_online", lambda p: p["from"].bare == "escalus@localhost"
                                   and seen["escalus"].set())
        escalus.add_event_handler("got_online", lambda p: p["from"].bare == "rosaline@localhost"
                                  and seen["rosaline"].set())
        escalus.add_event_handler("got_offline", lambda p: p["from"].bare == "rosaline@localhost"
                                  and seen["offline"].set())
        for client in (rosaline, escalus):
            assert await client.login(server.port, presence=False)
            await client.get_roster()
            client.send_presence()
        rosaline.send_presence(pto="escalus@localhost", ptype="subscribe")
        await wait(seen["escalus"], seen["rosaline"])

        def mutual() -> bool:
            return (rosaline.client_roster["escalus@localhost"]["subscription"] == "both"
                    and escalus.client_roster["rosaline@localhost"]["subscription"] == "both")

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not mutual():
            await asyncio.sleep(0.05)
        assert mutual()
        await rosaline.logout()
        await wait(seen["offline"])
        await escalus.logout()
    run(scenario())


async def wait(*events: asyncio.Event, timeout: float = 10.0) -> None:
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in events)), timeout)


# -- in process: hooks and methods for other modules --------------------------------


class MemoryClient:
    """
    A bound resource on an in-process server: its stanzas enter through the
    real L{Session} (stamping, routing, hooks), and what the server writes on
    its L{StringTransport} is parsed back. SASL is skipped: the account's
    session is bound as the authenticator binds one.
    """

    def __init__(self, server: InviteServer, username: str, resource: str = "r"):
        host = server.hosts["localhost"]
        self.transport = StringTransport()
        self.stream = C2SFactory(server).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5222))
        self.stream.makeConnection(self.transport)
        authenticator = self.stream.authenticator
        authenticator.host = host
        authenticator.authenticated = True
        authenticator.username = username
        self.session = Session(self.stream, host, jid.JID(tuple=(username, host.name, resource)),
                               "127.0.0.1")
        host.router.bind(self.session)
        authenticator.session = self.session
        self.jid = self.session.full
        self.backlog: list[domish.Element] = []
        self._parser = domish.elementStream()
        self._parser.DocumentStartEvent = lambda root: None
        self._parser.ElementEvent = self.backlog.append
        self._parser.DocumentEndEvent = lambda: None
        self._parser.parse(b"<stream xmlns='jabber:client'>")
        self._offset = 0

    def send(self, xml: str) -> None:
        self.session.stanzaReceived(parseStored(xml))

    def _parse(self) -> None:
        data = self.transport.value()[self._offset:]
        self._offset += len(data)
        if data:
            self._parser.parse(data)

    @defer.inlineCallbacks
    def expect(self, match, timeout: float = 5.0, what: str = "stanza"):
        """Fire with the first stanza C{match} accepts, waiting for the store's thread."""
        deadline = time.monotonic() + timeout
        while True:
            self._parse()
            for index, element in enumerate(self.backlog):
                if match(element):
                    return self.backlog.pop(index)
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.jid}: no {what} in {[e.toXml() for e in self.backlog]}")
            yield task.deferLater(reactor, 0.005, lambda: None)

    @defer.inlineCallbacks
    def settle(self, wait: float = 0.2):
        """Wait, then fire with everything received so far."""
        yield task.deferLater(reactor, wait, lambda: None)
        self._parse()
        received = list(self.backlog)
        self.backlog.clear()
        return received


class Memory:
    """An in-process server with the roster and presence modules over an in-memory store."""

    def __init__(self) -> None:
        self.store = SQLiteStore(":memory:")
        self.store.open()
        self.server = InviteServer(Config(modules=("roster", "presence")), store=self.store,
                                   reactor=task.Clock())
        self.host = self.server.hosts["localhost"]
        self.host.start()
        self.presence = self.host.modules["presence"]
        self.roster = self.host.modules["roster"]

    def close(self) -> None:
        self.host.stop()
        self.store.close()

    def account(self, username: str, *items: RosterItem):
        return self.store.createAccount(NewAccount("localhost", username, (), rosterItems=tuple(
            (username, item) for item in items)))

    @defer.inlineCallbacks
    def online(self, username: str, resource: str = "r"):
        client = MemoryClient(self.server, username, resource)
        client.send(f"<iq type='get' id='r'><query xmlns='{NS_ROSTER}'/></iq>")
        yield client.expect(lambda e: e.getAttribute("id") == "r")
        client.send("<presence/>")
        yield client.expect(isPresence(client.jid))
        return client


@pytest.fixture
def memory():
    memory = Memory()
    yield memory
    memory.close()


@pytest_twisted.inlineCallbacks
def test_subscriptionRequestHook(memory):
    """
    A C{subscription-request} callback that fires True owns the request:
    here it approves it and subscribes back through the module's methods,
    as XEP-0379 pre-authenticated subscriptions do. One that fires False
    leaves the request to the user.
    """
    seen = []

    def onRequest(host, username, contact, stanza):
        seen.append((host, username, contact))
        if not list(stanza.elements(NS_PARS, "preauth")):
            return defer.succeed(False)
        d = memory.presence.approveSubscription(username, contact)
        d.addCallback(lambda _: memory.presence.requestSubscription(username, contact))
        d.addCallback(lambda sent: sent is True)
        return d

    memory.host.hooks.add("subscription-request", onRequest)
    for name in ("alice", "bob", "carol"):
        yield memory.account(name)
    alice = yield memory.online("alice")
    bob = yield memory.online("bob")
    carol = yield memory.online("carol")

    bob.send(f"<presence to='alice@localhost' type='subscribe'><preauth xmlns='{NS_PARS}' token='t'/>"
             "</presence>")
    yield alice.expect(isPush("bob@localhost", "from", ask=False), what="approved push")
    yield alice.expect(isPush("bob@localhost", "from", ask=True), what="reciprocal request push")
    yield bob.expect(isPresence("alice@localhost", "subscribed"))
    yield bob.expect(isPush("alice@localhost", "to"))
    yield bob.expect(isPresence("alice@localhost/r"), what="alice's presence")
    yield bob.expect(isPresence("alice@localhost", "subscribe"), what="alice's reciprocal request")
    received = yield alice.settle()
    assert not [e.toXml() for e in received if isPresence("bob@localhost", "subscribe")(e)]
    # The reciprocal request had no preauth: the callback saw it and let bob answer.
    assert seen == [("localhost", "alice", "bob@localhost"), ("localhost", "bob", "alice@localhost")]
    assert (yield memory.presence.requestSubscription("alice", "bob@localhost")) is False

    carol.send("<presence to='alice@localhost' type='subscribe'/>")
    yield alice.expect(isPresence("carol@localhost", "subscribe"), what="an ordinary request")
    assert (yield memory.store.getPendingIn("localhost", "alice"))[0][0] == "carol@localhost"


@pytest_twisted.inlineCallbacks
def test_accountDeletionTellsContacts(memory):
    """
    Deleting an account cancels its subscriptions both ways and takes it off
    local contacts' rosters, with pushes; contacts see it go offline.
    """
    yield memory.account("alice", RosterItem("bob@localhost", subscription="both"))
    yield memory.account("bob", RosterItem("alice@localhost", subscription="both"))
    yield memory.account("carol")
    yield memory.store.setPendingIn("localhost", "alice", "carol@localhost",
                                    "<presence from='carol@localhost' type='subscribe'/>")
    yield memory.roster.saveItem("carol", RosterItem("alice@localhost", ask=True))
    bob = yield memory.online("bob")
    carol = yield memory.online("carol")
    alice = yield memory.online("alice")
    yield bob.expect(isPresence("alice@localhost/r"))

    assert (yield memory.host.registrar.deleteAccount("alice"))
    yield bob.expect(isPresence("alice@localhost/r", "unavailable"))
    yield bob.expect(isPush("alice@localhost", "remove"), what="removal push")
    yield carol.expect(isPresence("alice@localhost", "unsubscribed"), what="denied request")
    yield carol.expect(isPush("alice@localhost", "remove"))
    assert (yield memory.roster.getRoster("bob")).items == ()
    assert (yield memory.roster.getRoster("carol")).items == ()
    assert not (yield memory.store.accountExists("localhost", "alice"))
    assert alice.session.jid.user == "alice"


@pytest_twisted.inlineCallbacks
def test_registrationRosterRowsArePushed(memory):
    """
    Roster rows written with a new account (an inviter's contact) are
    pushed to the owner's interested resources, and the owner's presence is
    sent to the new contact.
    """
    def addInviter(registration):
        registration.rosterItems.append((registration.username,
                                         RosterItem("alice@localhost", subscription="both")))
        registration.rosterItems.append(("alice", RosterItem(f"{registration.username}@localhost",
                                                             subscription="both", groups=("New",))))

    memory.host.hooks.add("user-registering", addInviter)
    yield memory.account("alice")
    alice = yield memory.online("alice")
    early = MemoryClient(memory.server, "newbie", "early")  # bound for the test; receives presence
    early.session.available = True
    yield memory.host.registrar.register("newbie", "a long password", "cli", trusted=True)
    push = yield alice.expect(isPush("newbie@localhost", "both"), what="push of the new contact")
    query = next(push.elements(NS_ROSTER, "query"))
    assert int(query["ver"]) == (yield memory.roster.getRoster("alice")).version
    assert [str(g) for g in next(query.elements(NS_ROSTER, "item")).elements(NS_ROSTER, "group")] == ["New"]
    yield early.expect(isPresence("alice@localhost/r"), what="inviter's presence")


@pytest_twisted.inlineCallbacks
def test_probeRepairsStaleSubscription(memory):
    """
    A probe to a contact whose roster no longer grants the subscription is
    answered 'unsubscribed' (RFC 6121 4.3.2), which takes the stale 'to' off
    the prober's roster with a push; a probe from a user with a request
    still pending is not answered so (that would cancel the request).
    """
    yield memory.account("alice")
    yield memory.account("bob", RosterItem("alice@localhost", subscription="to"))
    yield memory.account("carol", RosterItem("alice@localhost", ask=True))
    yield memory.store.setPendingIn("localhost", "alice", "carol@localhost",
                                    "<presence from='carol@localhost' type='subscribe'/>")
    alice = yield memory.online("alice")
    bob = yield memory.online("bob")
    yield bob.expect(isPresence("alice@localhost", "unsubscribed"))
    yield bob.expect(isPush("alice@localhost", "none"))
    received = yield alice.settle()
    assert not [e for e in received if isPresence("bob@localhost", "subscribe")(e)]
    carol = MemoryClient(memory.server, "carol", "c")
    carol.send("<presence to='alice@localhost' type='probe'/>")
    received = yield carol.settle()
    assert not [e.toXml() for e in received if e.name == "presence"]
    assert (yield memory.roster.getItem("carol", "alice@localhost")).ask


@pytest_twisted.inlineCallbacks
def test_droppedConnectionAndDirectedPresenceInMemory(memory):
    """A session lost without a goodbye sends unavailable to subscribers and directed JIDs."""
    yield memory.account("alice", RosterItem("bob@localhost", subscription="from"))
    yield memory.account("bob", RosterItem("alice@localhost", subscription="to"))
    yield memory.account("carol")
    bob = yield memory.online("bob")
    carol = yield memory.online("carol")
    alice = yield memory.online("alice")
    yield bob.expect(isPresence("alice@localhost/r"))
    alice.send("<presence to='carol@localhost/r'/>")
    yield carol.expect(isPresence("alice@localhost/r"))
    alice.stream.connectionLost(Failure(ConnectionLost()))
    yield bob.expect(isPresence("alice@localhost/r", "unavailable"))
    yield carol.expect(isPresence("alice@localhost/r", "unavailable"))
    assert memory.host.router.resourcesOf("alice@localhost") == {}


@pytest_twisted.inlineCallbacks
def test_sessionPresenceState(memory):
    """
    A session records availability, priority (clamped to -128..127, 0 when
    invalid) and its last presence; C{initial-presence} fires each time it
    becomes available, not on updates.
    """
    initial = []
    memory.host.hooks.add("initial-presence", initial.append)
    yield memory.account("alice")
    alice = MemoryClient(memory.server, "alice", "r")
    session = alice.session
    assert not session.available and initial == []
    for value, expected in (("5", 5), ("300", 127), ("-1000", -128), ("x", 0), ("-3", -3)):
        alice.send(f"<presence><priority>{value}</priority><show>away</show></presence>")
        assert session.available and session.priority == expected
        assert [str(c) for c in session.presence.elements() if c.name == "show"] == ["away"]
    assert initial == [session]
    alice.send("<presence type='unavailable'/>")
    assert not session.available and session.presence is None
    alice.send("<presence/>")
    assert initial == [session, session] and session.priority == 0
    yield alice.settle()


def test_pendingRequestsCapped(serverFactory):
    """
    Past max_pending_subscriptions unanswered requests for one user, a new
    requester gets wait/resource-constraint and nothing more is stored; the
    requests already waiting are still delivered.
    """
    server = serverFactory("[hosts.localhost]\nmax_pending_subscriptions = 2\n")
    addUsers(server, *(f"{name}@localhost" for name in ("target", "one", "two", "three")))
    senders = {name: online(server.port, name) for name in ("one", "two", "three")}
    try:
        for name in ("one", "two"):
            senders[name].send("<presence to='target@localhost' type='subscribe'/>")
            senders[name].expect(isPush("target@localhost", "none", ask=True))
        senders["three"].send("<presence to='target@localhost' type='subscribe'/>")
        refused = senders["three"].expect(isPresence("target@localhost", "error"),
                                          what="the refusal")
        assert refused.error.getAttribute("type") == "wait"
        assert refused.error.firstChildElement().name == "resource-constraint"
        target = StanzaClient(server.port, "target", "phone")
        try:
            target.send("<presence/>")
            for name in ("one", "two"):
                target.expect(isPresence(f"{name}@localhost", "subscribe"), what=f"{name}'s request")
            target.absent(isPresence("three@localhost", "subscribe"), wait=0.3,
                          what="a request over the cap")
        finally:
            target.close()
    finally:
        for client in senders.values():
            client.close()


def test_capRequest():
    """
    A request over the cap has its status texts cut, in order and with an
    ellipsis, so that its XML (escapes and multi-byte characters counted)
    fits; one too large without its status does not fit at all.
    """
    def request(*statuses: str, extra: str = "") -> domish.Element:
        presence = domish.Element(("jabber:client", "presence"))
        presence["type"] = "subscribe"
        presence["from"] = "eve@example.org"
        for text in statuses:
            presence.addElement("status", content=text)
        if extra:
            presence.addElement(("urn:example", "big"), content=extra)
        return presence

    short = request("hello & welcome")
    before = short.toXml()
    assert capRequest(short, 300) and short.toXml() == before
    for text in ("<&>" * 5000, "\u00e9\u2603" * 5000, "plain" * 5000):
        long = request(text, "second " * 100)
        assert capRequest(long, 600)
        assert xmlSize(long) <= 600
        first, second = [str(status) for status in long.elements("jabber:client", "status")]
        assert first.endswith(ELLIPSIS) and text.startswith(first[:-1])
        assert len(first) > 100
        assert second in ("", ELLIPSIS)  # the first took (nearly) the whole budget
    assert not capRequest(request("hi", extra="x" * 1000), 600)
