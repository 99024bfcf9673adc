"""
Presence (RFC 6121 sections 3 and 4). End to end, over real sockets against
one server process: subscriptions both ways with their pushes, presence seen
and withdrawn (also when a TCP connection just dies), pending requests cut to
a size and delivered one at a time as the client reads, and slixmpp as an
independent client. The rest as unit tests on the in-memory harness (the
whole server on a StringTransport, a Clock and a MemoryStore): directed
presence, pending requests delivered again at login and capped, pre-approval,
the errors, unsubscribing and cancelling, and the hooks and methods other
modules use (C{subscription-request}, approveSubscription,
requestSubscription, C{user-deleting}, C{user-registered}).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from slix import Client as SlixClient
from slix import run
from streamharness import Client, ClientConnection, addAccounts
from synchronous import result
from test_roster import (
    NS_ROSTER,
    StanzaClient,
    addUsers,
    errorCondition,
    isPush,
    rosterItems,
)
from twisted.internet import defer
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from invitesrv.config import HostOptions
from invitesrv.modules.presence import ELLIPSIS, capRequest, xmlSize
from invitesrv.store.interfaces import RosterItem
from invitesrv.xmpp.c2s import Session

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


def test_slixmppContactsSeeEachOther(server):
    """
    slixmpp (auto-authorise and auto-subscribe, its defaults) adds a contact:
    both rosters reach 'both', each sees the other online, then offline.
    """
    async def scenario():
        rosaline = SlixClient("rosaline@localhost/slix", "a long password")
        escalus = SlixClient("escalus@localhost/slix", "a long password")
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


# -- unit tests: the whole server on a StringTransport, a Clock and a MemoryStore ------


class Memory:
    """
    An in-memory server with the roster and presence modules, whose clients
    log in as users' clients do (L{streamharness.Client}); every answer has
    been written when a client's C{send} returns.
    """

    def __init__(self, servers, **hostOptions) -> None:
        self.server = servers(modules=("roster", "presence"),
                              hosts={"localhost": HostOptions(**hostOptions)})
        self.store = self.server.store
        self.host = self.server.hosts["localhost"]
        self.presence = self.host.modules["presence"]
        self.roster = self.host.modules["roster"]

    def accounts(self, *usernames: str) -> None:
        addAccounts(self.server, *usernames)

    def account(self, username: str, *items: RosterItem) -> None:
        """An account whose roster already holds C{items}."""
        self.accounts(username)
        for item in items:
            result(self.store.setRosterItem("localhost", username, item))

    def online(self, username: str, resource: str = "r") -> Client:
        """A client that asked for its roster and sent initial presence."""
        client = Client(self.server, username, resource)
        client.rosterGet()
        client.send("<presence/>")
        client.expect(isPresence(client.jid), what="own presence echoed")
        return client


@pytest.fixture
def memory(servers):
    return Memory(servers)


def test_directedPresence(memory):
    """
    Directed presence reaches an entity with no subscription, and that entity
    hears unavailable when the resource goes, even by a dropped connection;
    after directed unavailable it hears nothing more.
    """
    memory.accounts("mercutio", "benvolio", "paris")
    mercutio = memory.online("mercutio", "m")
    benvolio = memory.online("benvolio", "b")
    paris = memory.online("paris", "p")
    try:
        mercutio.send("<presence to='benvolio@localhost/b'><status>hi</status></presence>")
        benvolio.expect(isPresence("mercutio@localhost/m"), what="directed presence")
        mercutio.send("<presence to='paris@localhost'/>")
        paris.expect(isPresence("mercutio@localhost/m"), what="directed presence to a bare JID")
        mercutio.send("<presence type='unavailable' to='paris@localhost'/>")
        paris.expect(isPresence("mercutio@localhost/m", "unavailable"))
        mercutio.send("<presence><show>chat</show></presence>")
        benvolio.absent(isPresence("mercutio@localhost/m"),
                        what="a broadcast to a non-subscriber")
        mercutio.drop()
        benvolio.expect(isPresence("mercutio@localhost/m", "unavailable"), what="unavailable")
        paris.absent(isPresence("mercutio@localhost/m"), what="presence after directed unavailable")
    finally:
        for client in (benvolio, paris):
            client.close()


def test_pendingRequestDeliveredAgainAtLogin(memory):
    """
    A request for an offline user is kept and delivered at each initial
    presence until answered, and only once per login.
    """
    memory.accounts("friar", "lady")
    friar = memory.online("friar", "cell")
    try:
        friar.send("<presence to='lady@localhost' type='subscribe'><status>hello</status></presence>")
        friar.expect(isPush("lady@localhost", "none", ask=True))
        for attempt in range(2):
            lady = Client(memory.server, "lady", f"try{attempt}")
            lady.absent(isPresence("friar@localhost", "subscribe"), what="request before presence")
            lady.send("<presence/>")
            request = lady.expect(isPresence("friar@localhost", "subscribe"), what="stored request")
            assert [str(c) for c in request.elements() if c.name == "status"] == ["hello"]
            lady.absent(isPresence("friar@localhost", "subscribe"), what="second copy")
            if attempt:
                lady.rosterGet()
                lady.send("<presence to='friar@localhost' type='unsubscribed'/>")
                friar.expect(isPresence("lady@localhost", "unsubscribed"), what="denial")
                friar.expect(isPush("lady@localhost", "none", ask=False))
                lady.absent(isPush("friar@localhost"), what="a roster item for a denial")
            lady.close()
        lady = Client(memory.server, "lady", "after")
        lady.send("<presence/>")
        lady.absent(isPresence("friar@localhost", "subscribe"), what="an answered request")
        lady.close()
    finally:
        friar.close()


def test_preApproval(memory):
    """
    RFC 6121 3.4: a subscribed with no request pending is kept as approved
    (pushed, not routed), and the later request is granted at once.
    """
    memory.accounts("capulet", "balthasar")
    capulet = memory.online("capulet", "c")
    balthasar = memory.online("balthasar", "b")
    try:
        capulet.send("<presence to='balthasar@localhost' type='subscribed'/>")
        capulet.expect(isPush("balthasar@localhost", "none", approved=True))
        balthasar.absent(isPresence("capulet@localhost", "subscribed"),
                         what="a routed pre-approval")
        balthasar.send("<presence to='capulet@localhost' type='subscribe'/>")
        balthasar.expect(isPresence("capulet@localhost", "subscribed"), what="auto-approval")
        balthasar.expect(isPush("capulet@localhost", "to"))
        balthasar.expect(isPresence("capulet@localhost/c"), what="capulet's presence")
        capulet.expect(isPush("balthasar@localhost", "from", approved=False))
        capulet.absent(isPresence("balthasar@localhost", "subscribe"),
                       what="the request (it was pre-approved)")
    finally:
        capulet.close()
        balthasar.close()


def test_errorsAndIgnoredStanzas(memory):
    """
    Subscription stanzas need a 'to' (bad-request), unknown presence types
    are refused, a malformed 'to' is jid-malformed, and a subscription to
    oneself or an unsolicited 'subscribed' changes nothing.
    """
    memory.accounts("abram", "sampson")
    abram = memory.online("abram", "a")
    sampson = memory.online("sampson", "s")
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
            "subscribe", "subscribed", "unsubscribed"), what="any subscription effect")
        assert rosterItems(abram.rosterGet()) == {}
        # A stranger's probe reveals nothing.
        sampson.send("<presence to='abram@localhost' type='probe' id='pr'/>")
        sampson.absent(isPresence(None, None), what="presence of someone not shared with")
    finally:
        abram.close()
        sampson.close()


def test_unsubscribeThenCancel(memory):
    """
    Unsubscribing (RFC 6121 3.3) and cancelling (3.2) one direction at a
    time: each side gets the stanza, its push, and the unavailable presence
    of the party that stops sharing.
    """
    memory.accounts("gregory", "peter")
    gregory = memory.online("gregory", "g")
    peter = memory.online("peter", "p")
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


def test_removeCancelsBothWays(memory):
    """Removing a contact with a mutual subscription cancels both directions (RFC 6121 2.5.2)."""
    memory.accounts("lawrence", "john")
    lawrence = memory.online("lawrence", "l")
    john = memory.online("john", "j")
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
    memory.accounts("alice", "bob", "carol")
    alice = memory.online("alice")
    bob = memory.online("bob")
    carol = memory.online("carol")

    bob.send(f"<presence to='alice@localhost' type='subscribe'><preauth xmlns='{NS_PARS}' token='t'/>"
             "</presence>")
    alice.expect(isPush("bob@localhost", "from", ask=False), what="approved push")
    alice.expect(isPush("bob@localhost", "from", ask=True), what="reciprocal request push")
    bob.expect(isPresence("alice@localhost", "subscribed"))
    bob.expect(isPush("alice@localhost", "to"))
    bob.expect(isPresence("alice@localhost/r"), what="alice's presence")
    # bob's request carried a token, so his server pre-approved alice (RFC
    # 6121 3.4): her request back is granted without reaching the hook or bob.
    bob.expect(isPush("alice@localhost", "both"), what="the pre-approved reciprocal request")
    bob.absent(isPresence("alice@localhost", "subscribe"), what="alice's reciprocal request")
    alice.absent(isPresence("bob@localhost", "subscribe"), what="the request a callback owned")
    assert seen == [("localhost", "alice", "bob@localhost")]
    assert result(memory.presence.requestSubscription("alice", "bob@localhost")) is False

    carol.send("<presence to='alice@localhost' type='subscribe'/>")
    alice.expect(isPresence("carol@localhost", "subscribe"), what="an ordinary request")
    assert result(memory.store.getPendingIn("localhost", "alice"))[0][0] == "carol@localhost"


def test_accountDeletionTellsContacts(memory):
    """
    Deleting an account cancels its subscriptions both ways and takes it off
    local contacts' rosters, with pushes; contacts see it go offline.
    """
    memory.account("alice", RosterItem("bob@localhost", subscription="both"))
    memory.account("bob", RosterItem("alice@localhost", subscription="both"))
    memory.account("carol", RosterItem("alice@localhost", ask=True))
    result(memory.store.setPendingIn("localhost", "alice", "carol@localhost",
                                     "<presence from='carol@localhost' type='subscribe'/>"))
    bob = memory.online("bob")
    carol = memory.online("carol")
    memory.online("alice")
    bob.expect(isPresence("alice@localhost/r"))

    assert result(memory.host.registrar.deleteAccount("alice"))
    bob.expect(isPresence("alice@localhost/r", "unavailable"))
    bob.expect(isPush("alice@localhost", "remove"), what="removal push")
    carol.expect(isPresence("alice@localhost", "unsubscribed"), what="denied request")
    carol.expect(isPush("alice@localhost", "remove"))
    assert result(memory.store.getRoster("localhost", "bob")).items == ()
    assert result(memory.store.getRoster("localhost", "carol")).items == ()
    assert not result(memory.store.accountExists("localhost", "alice"))


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
    memory.accounts("alice")
    alice = memory.online("alice")
    # A resource of the new account, bound for the test before it exists; it receives presence.
    early = ClientConnection(memory.server, encrypted=True)
    session = Session(early.stream, memory.host, jid.JID("newbie@localhost/early"), "127.0.0.1")
    memory.host.router.bind(session)
    session.available = True
    result(memory.host.registrar.register("newbie", "a long password", "cli", trusted=True))
    push = alice.expect(isPush("newbie@localhost", "both"), what="push of the new contact")
    query = next(push.elements(NS_ROSTER, "query"))
    assert int(query["ver"]) == result(memory.store.getRoster("localhost", "alice")).version
    assert [str(g) for g in next(query.elements(NS_ROSTER, "item")).elements(NS_ROSTER, "group")] == ["New"]
    assert b"from='alice@localhost/r'" in early.transport.value(), "no presence of the inviter"


def test_probeRepairsStaleSubscription(memory):
    """
    A probe to a contact whose roster no longer grants the subscription is
    answered 'unsubscribed' (RFC 6121 4.3.2), which takes the stale 'to' off
    the prober's roster with a push; a probe from a user with a request
    still pending is not answered so (that would cancel the request).
    """
    memory.accounts("alice")
    memory.account("bob", RosterItem("alice@localhost", subscription="to"))
    memory.account("carol", RosterItem("alice@localhost", ask=True))
    result(memory.store.setPendingIn("localhost", "alice", "carol@localhost",
                                     "<presence from='carol@localhost' type='subscribe'/>"))
    alice = memory.online("alice")
    bob = memory.online("bob")
    bob.expect(isPresence("alice@localhost", "unsubscribed"))
    bob.expect(isPush("alice@localhost", "none"))
    alice.absent(isPresence("bob@localhost", "subscribe"))
    carol = Client(memory.server, "carol", "c")
    carol.send("<presence to='alice@localhost' type='probe'/>")
    carol.absent(lambda e: e.name == "presence", what="an answer to a probe with a request pending")
    assert result(memory.store.getRosterItem("localhost", "carol", "alice@localhost")).ask


def test_droppedConnectionAndDirectedPresenceInMemory(memory):
    """A session lost without a goodbye sends unavailable to subscribers and directed JIDs."""
    memory.account("alice", RosterItem("bob@localhost", subscription="from"))
    memory.account("bob", RosterItem("alice@localhost", subscription="to"))
    memory.accounts("carol")
    bob = memory.online("bob")
    carol = memory.online("carol")
    alice = memory.online("alice")
    bob.expect(isPresence("alice@localhost/r"))
    alice.send("<presence to='carol@localhost/r'/>")
    carol.expect(isPresence("alice@localhost/r"))
    alice.drop()
    bob.expect(isPresence("alice@localhost/r", "unavailable"))
    carol.expect(isPresence("alice@localhost/r", "unavailable"))
    assert memory.host.router.resourcesOf("alice@localhost") == {}


def test_sessionPresenceState(memory):
    """
    A session records availability, priority (clamped to -128..127, 0 when
    invalid) and its last presence; C{initial-presence} fires each time it
    becomes available, not on updates.
    """
    initial = []
    memory.host.hooks.add("initial-presence", initial.append)
    memory.accounts("alice")
    alice = Client(memory.server, "alice", "r")
    session = memory.host.router.session(jid.JID(alice.jid))
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


def test_pendingRequestsCapped(servers):
    """
    Past max_pending_subscriptions unanswered requests for one user, a new
    requester gets wait/resource-constraint and nothing more is stored; the
    requests already waiting are still delivered.
    """
    memory = Memory(servers, max_pending_subscriptions=2)
    memory.accounts("target", "one", "two", "three")
    senders = {name: memory.online(name) for name in ("one", "two", "three")}
    for name in ("one", "two"):
        senders[name].send("<presence to='target@localhost' type='subscribe'/>")
        senders[name].expect(isPush("target@localhost", "none", ask=True))
    senders["three"].send("<presence to='target@localhost' type='subscribe'/>")
    refused = senders["three"].expect(isPresence("target@localhost", "error"), what="the refusal")
    assert refused.error.getAttribute("type") == "wait"
    assert refused.error.firstChildElement().name == "resource-constraint"
    assert [contact for contact, _ in result(memory.store.getPendingIn("localhost", "target"))] == [
        "one@localhost", "two@localhost"]
    target = Client(memory.server, "target", "phone")
    target.send("<presence/>")
    for name in ("one", "two"):
        target.expect(isPresence(f"{name}@localhost", "subscribe"), what=f"{name}'s request")
    target.absent(isPresence("three@localhost", "subscribe"), what="a request over the cap")


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
