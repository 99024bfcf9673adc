"""
XEP-0198 stream management: counting and acknowledgements (wrapping at
2^32), resumption with exactly the unacknowledged stanzas, the rules of
<failed/>, hibernation on a Clock, and what a session that ends without
resumption hands on (another resource, offline storage, an error), never
twice. In memory here; over real sockets in test_smacks_e2e.
"""

from __future__ import annotations

import base64

import pytest
from streamharness import NS_SASL, PASSWORD, Client, ClientConnection, addAccounts
from synchronous import result
from twisted.internet import task

from invitesrv.modules.smacks import MODULUS, STATE

NS_SM = "urn:xmpp:sm:3"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_CSI = "urn:xmpp:csi:0"
NS_CARBONS = "urn:xmpp:carbons:2"
MODULES = ("roster", "presence", "smacks", "offline", "carbons", "csi")


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def server(servers, clock):
    server = servers(clock, modules=MODULES)
    addAccounts(server, "alice", "bob", "mallory")
    return server


def enable(client: Client, resume: bool = True):
    """Enable stream management; return the <enabled/> element."""
    attribute = " resume='true'" if resume else ""
    client.send(f"<enable xmlns='{NS_SM}'{attribute}/>")
    return client.expect(lambda e: e.uri == NS_SM, "enabled")


def smElements(client: Client, name: str) -> list:
    client._collect()
    found = [e for e in client.backlog if e.uri == NS_SM and e.name == name]
    client.backlog = [e for e in client.backlog if not (e.uri == NS_SM and e.name == name)]
    return found


def bodies(client, name: str = "message") -> list[str]:
    """The bodies of the messages received so far (forgotten after)."""
    client._collect()
    found = [str(e.body) for e in client.backlog if e.name == name and e.body is not None]
    client.backlog = [e for e in client.backlog if not (e.name == name and e.body is not None)]
    return found


def chat(sender: Client, to: str, body: str) -> None:
    sender.send(f"<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>")


def authenticated(server, username: str) -> ClientConnection:
    """A new connection authenticated as C{username}, not bound: ready to resume."""
    connection = ClientConnection(server, encrypted=True)
    connection.openStream()
    connection.received()
    payload = base64.b64encode(f"\0{username}\0{PASSWORD}".encode()).decode()
    connection.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    connection.nextNamed("success")
    connection.openStream()
    connection.features()
    return connection


def resume(server, username: str, token: str, h: int) -> tuple[ClientConnection, list]:
    connection = authenticated(server, username)
    connection.send(f"<resume xmlns='{NS_SM}' previd='{token}' h='{h}'/>")
    return connection, connection.received()


def test_featureAfterAuthentication(server):
    """<sm/> is offered once the client is authenticated, not before."""
    connection = ClientConnection(server, encrypted=True)
    connection.openStream()
    assert not list(connection.features().elements(NS_SM, "sm"))
    connection = ClientConnection(server, encrypted=True)
    connection.openStream()
    connection.received()
    payload = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    connection.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    connection.nextNamed("success")
    connection.openStream()
    assert list(connection.features().elements(NS_SM, "sm"))


def test_enableRules(server):
    """Before binding, and a second time, <enable/> fails with unexpected-request; the stream lives."""
    connection = authenticated(server, "alice")
    connection.send(f"<enable xmlns='{NS_SM}'/>")
    (answer,) = connection.received()
    assert answer.name == "failed" and answer.firstChildElement().name == "unexpected-request"
    alice = Client(server, "alice")
    enabled = enable(alice, resume=False)
    assert enabled.name == "enabled" and enabled.getAttribute("id") is None
    assert enable(alice).name == "failed"
    assert not alice.closed


def test_enabledWithResumption(server):
    """resume='true' gets an unguessable token and the hibernation time as max."""
    alice = Client(server, "alice")
    enabled = enable(alice)
    assert enabled["resume"] == "true" and enabled["max"] == "600"
    other = Client(server, "alice", "desk")
    assert len(enabled["id"]) >= 32 and enable(other)["id"] != enabled["id"]


def test_countsBothWays(server, clock):
    """The server asks with <r/> after a burst; its <a/> counts what the client sent."""
    alice, bob = Client(server, "alice"), Client(server, "bob")
    enable(alice)
    for body in ("one", "two", "three"):
        chat(bob, alice.jid, body)
    clock.advance(0)
    assert len(smElements(alice, "r")) == 1  # one request for the burst
    assert STATE.get(server.router.session(_jid(alice))).sent == 3
    alice.send(f"<a xmlns='{NS_SM}' h='2'/>")
    clock.advance(0)
    assert [e["h"] for e in smElements(alice, "a")] == []
    assert len(smElements(alice, "r")) == 1  # one still unacknowledged: asked again
    alice.send("<presence/>")
    alice.send(f"<message to='{bob.jid}' type='chat'><body>hi</body></message>")
    alice.send(f"<r xmlns='{NS_SM}'/>")
    assert [e["h"] for e in smElements(alice, "a")] == ["2"]


def test_countsWrapAt2To32(server, clock):
    """h goes from 2^32 - 1 to 0, for what the client sends and for what it acknowledges."""
    alice, bob = Client(server, "alice"), Client(server, "bob")
    enable(alice)
    state = STATE.get(server.router.session(_jid(alice)))
    state.handled = MODULUS - 1
    state.acked = MODULUS - 2
    alice.send(f"<message to='{bob.jid}' type='chat'><body>hi</body></message>")
    alice.send(f"<r xmlns='{NS_SM}'/>")
    assert smElements(alice, "a")[0]["h"] == "0"
    for body in ("one", "two", "three"):
        chat(bob, alice.jid, body)
    assert state.sent == 1
    alice.send(f"<a xmlns='{NS_SM}' h='0'/>")
    assert len(state.queue) == 1
    alice.send(f"<a xmlns='{NS_SM}' h='1'/>")
    assert len(state.queue) == 0 and not alice.closed


def test_ackOfMoreThanSentEndsTheStream(server):
    """XEP-0198: an h above what was sent is a stream error with <handled-count-too-high/>."""
    alice, bob = Client(server, "alice"), Client(server, "bob")
    enable(alice)
    chat(bob, alice.jid, "one")
    alice.send(f"<a xmlns='{NS_SM}' h='2'/>")
    alice._collect()
    error = next(e for e in alice.backlog if e.name == "error")
    assert error.firstChildElement().name == "undefined-condition"
    too = next(error.elements(NS_SM, "handled-count-too-high"))
    assert (too["h"], too["send-count"]) == ("2", "1")


def test_resumeSendsExactlyWhatWasNotAcknowledged(server, clock):
    """
    After a lost connection the session waits; a resumption with the
    client's h gets <resumed/> with the server's count, then exactly the
    stanzas after h, in order and marked with when they were first sent.
    """
    alice, bob = Client(server, "alice"), Client(server, "bob")
    alice.send("<presence/>")
    alice.discard()
    token = enable(alice)["id"]
    chat(bob, alice.jid, "one")
    chat(bob, alice.jid, "two")
    assert bodies(alice) == ["one", "two"]
    alice.send(f"<a xmlns='{NS_SM}' h='1'/>")  # it took "one" only, as far as it knows
    alice.drop()
    clock.advance(30)
    chat(bob, alice.jid, "three")  # to the waiting session
    assert server.router.session(_jid(alice)) is not None
    connection, answer = resume(server, "alice", token, 1)
    resumed = answer[0]
    assert (resumed.name, resumed["previd"], resumed["h"]) == ("resumed", token, "0")
    messages = [e for e in answer if e.name == "message"]
    assert [str(m.body) for m in messages] == ["two", "three"]
    assert all(m.delay is not None for m in messages)
    chat(bob, alice.jid, "four")  # the resumed session goes on over the new connection
    clock.advance(0)
    assert [str(e.body) for e in connection.received() if e.name == "message"] == ["four"]
    assert server.metrics["smacks.resumed"] == 1


def test_resumeOfALiveStreamEndsItWithConflict(server):
    """A client that resumes before the server noticed the old connection died: conflict there."""
    alice = Client(server, "alice")
    token = enable(alice)["id"]
    connection, answer = resume(server, "alice", token, 0)
    assert answer[0].name == "resumed"
    assert alice.streamError() == "conflict"


def test_tokenOfAnotherAccountFails(server):
    """mallory cannot resume alice's session with her token: item-not-found, and alice still can."""
    alice = Client(server, "alice")
    token = enable(alice)["id"]
    alice.drop()
    _, answer = resume(server, "mallory", token, 0)
    assert answer[0].name == "failed" and answer[0].getAttribute("h") is None
    assert answer[0].firstChildElement().name == "item-not-found"
    _, answer = resume(server, "alice", token, 0)
    assert answer[0].name == "resumed"


def test_resumeBeforeAuthenticationOrAfterBinding(server):
    """<resume/> on a bound stream fails with unexpected-request."""
    alice = Client(server, "alice")
    token = enable(alice)["id"]
    alice.send(f"<resume xmlns='{NS_SM}' previd='{token}' h='0'/>")
    failed = smElements(alice, "failed")[0]
    assert failed.firstChildElement().name == "unexpected-request"


def test_hibernationTimeoutSendsMessagesOffline(server, clock):
    """
    Not resumed within hibernation_time: the session ends, its unacked
    messages are kept offline and delivered once at the next login; a late
    <resume/> learns the h the server had reached.
    """
    alice, bob = Client(server, "alice"), Client(server, "bob")
    token = enable(alice)["id"]
    alice.send("<presence/>")
    chat(bob, alice.jid, "one")
    alice.drop()
    chat(bob, alice.jid, "two")
    clock.advance(599)
    assert server.router.session(_jid(alice)) is not None
    clock.advance(1)
    assert server.router.session(_jid(alice)) is None
    _, answer = resume(server, "alice", token, 0)
    assert (answer[0].name, answer[0]["h"]) == ("failed", "1")
    assert answer[0].firstChildElement().name == "item-not-found"
    again = Client(server, "alice", "phone")
    again.send("<presence/>")
    assert bodies(again) == ["one", "two"]
    again.send("<presence type='unavailable'/>")
    again.send("<presence/>")
    assert bodies(again) == []
    assert bodies(bob) == [] and not [e for e in bob.backlog if e.getAttribute("type") == "error"]


def test_closeWithoutAcksSendsMessagesOffline(server):
    """A client that closes its stream with messages unacknowledged finds them at the next login."""
    alice, bob = Client(server, "alice"), Client(server, "bob")
    enable(alice)
    alice.send("<presence/>")
    chat(bob, alice.jid, "one")
    alice.close()
    alice.drop()
    again = Client(server, "alice", "phone")
    again.send("<presence/>")
    assert bodies(again) == ["one"]


def test_handedToAnotherResourceOnce(server, clock):
    """
    Another resource of the account gets the unacked message, unless it
    had it already: as a recipient of the same message or as a carbon.
    """
    alice, bob = Client(server, "alice", "phone"), Client(server, "bob")
    token = enable(alice)["id"]
    alice.send("<presence/>")
    desk = Client(server, "alice", "desk")
    desk.send("<presence/>")
    chat(bob, alice.jid, "to the phone")  # the desk has no carbons: it gets it afterwards
    chat(bob, alice.bare, "to both")  # both resources are recipients
    desk.request(f"<enable xmlns='{NS_CARBONS}'/>", "set")
    chat(bob, alice.jid, "carbon")  # the desk gets a carbon of it
    assert bodies(desk) == ["to both"]
    desk.discard()  # and the carbon
    alice.drop()
    clock.advance(600)
    assert bodies(desk) == ["to the phone"]
    desk._collect()
    assert not [e.toXml() for e in desk.backlog if e.name == "message"]
    _, answer = resume(server, "alice", token, 0)
    assert answer[0].name == "failed"


def test_carbonsOfAPhoneAreNotHandedOn(server, clock):
    """A carbon in the queue is not handed on: the device that took part has the message."""
    alice, bob = Client(server, "alice", "phone"), Client(server, "bob")
    alice.request(f"<enable xmlns='{NS_CARBONS}'/>", "set")
    enable(alice)
    desk = Client(server, "alice", "desk")
    chat(desk, bob.jid, "from the desk")
    alice._collect()
    assert [e for e in alice.backlog if e.name == "message" and e.sent is not None]
    alice.drop()
    clock.advance(600)
    desk._collect()
    assert not [e for e in desk.backlog if e.name == "message"]
    again = Client(server, "alice", "phone")
    again.send("<presence/>")
    assert bodies(again) == []


def test_unackedRequestBounces(server, clock):
    """An IQ request the client never acknowledged is answered with recipient-unavailable."""
    alice, bob = Client(server, "alice"), Client(server, "bob")
    enable(alice)
    alice.drop()
    bob.send(f"<iq type='get' id='v1' to='{alice.jid}'><query xmlns='jabber:iq:version'/></iq>")
    clock.advance(600)
    reply = bob.expect(lambda e: e.name == "iq" and e["id"] == "v1")
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "recipient-unavailable"


def test_queueLimitEndsTheSession(servers, clock):
    """Past max_queue unacknowledged stanzas the session ends with resource-constraint; nothing is lost."""
    server = servers(clock, modules=MODULES, module_options={"smacks": {"max_queue": 3}})
    addAccounts(server, "alice", "bob")
    alice, bob = Client(server, "alice"), Client(server, "bob")
    enable(alice)
    alice.send("<presence/>")
    for body in ("one", "two", "three", "four"):
        chat(bob, alice.jid, body)
    clock.advance(0)
    assert [e["h"] for e in smElements(alice, "a")] == ["1"]  # the server's last count, then the end
    error = alice.expect(lambda e: e.name == "error")
    assert error.firstChildElement().name == "resource-constraint"
    again = Client(server, "alice", "phone")
    again.send("<presence/>")
    assert bodies(again) == ["one", "two", "three", "four"]


def test_heldChatStatesAreHandedOn(server, clock):
    """What CSI held for an inactive phone is handed on when its session ends, not dropped."""
    alice, bob = Client(server, "alice", "phone"), Client(server, "bob")
    enable(alice)
    alice.send(f"<inactive xmlns='{NS_CSI}'/>")
    desk = Client(server, "alice", "desk")
    desk.send("<presence/>")
    bob.send(f"<message to='{alice.jid}' type='chat'>"
             "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    alice.drop()
    clock.advance(600)
    desk._collect()
    assert [e for e in desk.backlog if e.name == "message" and e.composing is not None]


def _jid(client: Client):
    from twisted.words.protocols.jabber import jid
    return jid.JID(client.jid)


def test_pingTimeoutHibernates(servers, clock):
    """
    A managed session whose client stops answering (a frozen link) is not
    ended by the watchdog: its connection is, and the session waits to be
    resumed, still watched over its next stream.
    """
    server = servers(clock, modules=MODULES + ("adhoc", "watchdog"),
                     limits={"idle_timeout": 60, "ping_timeout": 10})
    addAccounts(server, "alice", "bob")
    alice = Client(server, "alice")
    alice.send("<presence/>")
    token = enable(alice)["id"]
    clock.advance(60)  # pinged
    clock.advance(10)
    assert alice.streamError() == "connection-timeout"
    bob = Client(server, "bob")
    chat(bob, alice.jid, "while frozen")
    clock.advance(300)
    assert server.router.session(_jid(alice)) is not None
    connection, answer = resume(server, "alice", token, 0)
    assert answer[0].name == "resumed"
    assert "while frozen" in [str(e.body) for e in answer if e.name == "message"]
    clock.advance(120)  # the new stream is pinged like any other
    assert [e for e in connection.received() if e.name == "iq" and e.getAttribute("type") == "get"]


def test_offlineDeliveryWaitsForAcks(server, clock):
    """
    Messages kept offline are forgotten only once the client acknowledges
    them: a client that goes away with one unacknowledged (its connection
    stalled, then lost) gets it at its next login, once, not twice.
    """
    alice, bob = Client(server, "alice"), Client(server, "bob")
    alice.close()
    alice.drop()
    chat(bob, "alice@localhost", "one")
    chat(bob, "alice@localhost", "two")
    phone = Client(server, "alice", "phone")
    enable(phone)
    phone.send("<presence/>")
    assert bodies(phone) == ["one", "two"]  # ahead of the acknowledgements
    phone.stream.pauseProducing()  # the client stops reading
    phone.send(f"<a xmlns='{NS_SM}' h='1'/>")  # "one" (its presence came after "two")
    phone.drop()
    clock.advance(600)
    again = Client(server, "alice", "laptop")
    again.send("<presence/>")
    assert bodies(again) == ["two"]


def test_offlineDeliveryAheadOfAcks(server, clock):
    """
    A phone with stream management gets its kept messages ten at a time
    ahead of its acknowledgements, not one per round trip: the next ones go
    out as it acknowledges, and all are forgotten once it acknowledged all.
    """
    bob = Client(server, "bob")
    for n in range(13):
        chat(bob, "alice@localhost", f"m{n}")
    assert len(result(server.store.getOffline("localhost", "alice"))) == 13
    phone = Client(server, "alice", "phone")
    enable(phone)
    phone.send("<presence/>")
    assert bodies(phone) == [f"m{n}" for n in range(10)]
    phone.send(f"<a xmlns='{NS_SM}' h='3'/>")  # three (its presence came after the ten)
    assert bodies(phone) == ["m10", "m11", "m12"]
    phone.send(f"<a xmlns='{NS_SM}' h='14'/>")
    assert result(server.store.getOffline("localhost", "alice")) == []


def test_hibernatingSessionsPerAccountBounded(servers, clock):
    """Past max_hibernated waiting sessions of one account, the oldest ends and hands on its messages."""
    server = servers(clock, modules=MODULES, module_options={"smacks": {"max_hibernated": 2}})
    addAccounts(server, "alice", "bob")
    bob = Client(server, "bob")
    phones = []
    for name in ("one", "two", "three"):
        phone = Client(server, "alice", name)
        phone.send("<presence/>")
        enable(phone)
        phones.append(phone)
    chat(bob, phones[0].jid, "for the first")
    for phone in phones:
        clock.advance(1)
        phone.drop()
    assert server.router.session(_jid(phones[0])) is None  # the oldest to wait ended
    assert all(server.router.session(_jid(phone)) is not None for phone in phones[1:])
    assert server.metrics["smacks.hibernation-limit"] == 1
    clock.advance(600)
    again = Client(server, "alice", "laptop")
    again.send("<presence/>")
    assert bodies(again) == ["for the first"]


def mamQuery(client: Client) -> list[str]:
    """Read the whole archive; return the bodies of its messages (the results stay unacked)."""
    client.request("<query xmlns='urn:xmpp:mam:2' queryid='q'/>", "set")
    client._collect()
    results = [e for e in client.backlog if e.name == "message"
               and any(True for _ in e.elements("urn:xmpp:mam:2", "result"))]
    client.backlog = [e for e in client.backlog if e not in results]
    return [str(next(r.elements("urn:xmpp:mam:2", "result")).forwarded.message.body) for r in results]


def test_mamClientReadsUnackedFromArchive(servers, clock):
    """
    A session whose client queried the archive ends with messages
    unacknowledged: those the archive holds are not kept offline too (its
    client reads them from the archive, and would get them twice), as in
    Prosody; one the archive does not hold (a no-permanent-store hint) is
    kept offline; its archive query results are not kept at all; the sender
    gets no error. A session that never queried the archive has all of its
    messages kept offline, as before.
    """
    server = servers(clock, modules=MODULES + ("mam",))
    addAccounts(server, "alice", "bob", "carol")
    alice, bob, carol = Client(server, "alice"), Client(server, "bob"), Client(server, "carol")
    for phone in (alice, carol):
        enable(phone)
        phone.send("<presence/>")
    chat(bob, alice.jid, "earlier")
    assert mamQuery(alice) == ["earlier"]
    for phone in (alice, carol):
        chat(bob, phone.jid, "one")
        bob.send(f"<message to='{phone.jid}' type='chat'><body>unarchived</body>"
                 "<no-permanent-store xmlns='urn:xmpp:hints'/></message>")
        phone.drop()
        chat(bob, phone.jid, "two")
    clock.advance(600)
    assert server.metrics["smacks.archived"] == 3  # earlier, one, two
    for name, kept in (("alice", ["unarchived"]), ("carol", ["one", "unarchived", "two"])):
        again = Client(server, name, "laptop")
        again.send("<presence/>")
        assert bodies(again) == kept
    assert mamQuery(Client(server, "alice", "desk")) == ["earlier", "one", "two"]
    assert not [e for e in bob.backlog if e.getAttribute("type") == "error"]
