"""
XEP-0198 resumption across the nodes of a cluster, in memory: two nodes on
one Clock, their Redis a bus that hands each PUBLISH to the node listening
on the next turn of the clock (as pub/sub does). The session held by one
node is resumed on the other with exactly what the client did not
acknowledge; a wrong token or another account's fails as on one node; a
node that does not answer makes the resumption fail in bounded time, and a
hand-over that comes too late is ended with nothing lost.
"""

from __future__ import annotations

import json

import pytest
from streamharness import Client, addAccounts, result
from test_cluster import FakeRedis
from test_smacks import MODULES, NS_SM, bodies, chat, enable, resume
from twisted.internet import defer, task

from invitesrv.cluster.node import ClusterNode
from invitesrv.config import ClusterOptions
from invitesrv.modules.carbons import ENABLED
from invitesrv.modules.csi import HELD
from invitesrv.modules.smacks import STATE
from invitesrv.xmpp.router import parseJID


class Bus(FakeRedis):
    """One node's command connection to a Redis shared by the nodes of a L{Pair}."""

    def __init__(self, pair, node):
        FakeRedis.__init__(self)
        self.pair = pair
        self.node = node

    def execute(self, *args):
        if args[0] == "PUBLISH":
            self.sent.append(args)
            return defer.succeed(self.pair.publish(args[1], args[2]))
        return FakeRedis.execute(self, *args)


class Pair:
    """Nodes n1 and n2 of one cluster, each its own in-memory server, on one Clock."""

    def __init__(self, servers):
        self.clock = task.Clock()
        self.nodes = []
        self.deaf: set[str] = set()  # listening, never answering (a frozen process)
        self.gone: set[str] = set()  # nobody listens on its channel (a killed process)
        for name in ("n1", "n2"):
            server = servers(clock=self.clock, modules=MODULES)
            addAccounts(server, "alice", "bob", "mallory")
            node = ClusterNode(server, ClusterOptions(enabled=True, node=name, ttl=6), self.clock)
            node.commands = Bus(self, node)
            node.attach()
            node.ready = True
            self.nodes.append(node)
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    node.directory.load(other.node, {b"~epoch": other.epoch.encode(),
                                                     b"~seq": b"0"})

    def publish(self, channel: str, payload) -> int:
        data = payload if isinstance(payload, bytes) else payload.encode()
        listening = [node for node in self.nodes if node.node not in self.gone
                     and channel in (node.events, node.channelOf(node.node))]
        for node in listening:
            if node.node not in self.deaf:
                self.clock.callLater(0, node._received, channel.encode(), data)
        return len(listening)

    def settle(self) -> None:
        for _ in range(20):
            self.clock.advance(0)

    def detach(self) -> None:
        for node in self.nodes:
            node.detach()


@pytest.fixture
def pair(servers):
    pair = Pair(servers)
    yield pair
    pair.detach()


def hibernating(pair):
    """
    Alice on n1 with resumable stream management, Bob on n2; she sent one
    message, was sent three, acknowledged one; her link is lost.
    """
    n1, n2 = pair.nodes
    alice = Client(n1.server, "alice", "phone")
    alice.send("<presence><priority>7</priority></presence>")
    bob = Client(n2.server, "bob", "desk")
    token = enable(alice)["id"]
    chat(alice, bob.jid, "hello")  # counted: the h of <resumed/>
    pair.settle()
    for body in ("one", "two", "three"):
        chat(bob, alice.jid, body)
        pair.settle()
    assert bodies(alice) == ["one", "two", "three"]
    alice.send(f"<a xmlns='{NS_SM}' h='1'/>")
    alice.drop()
    pair.settle()
    return alice, bob, token


def test_resumedOnTheOtherNode(pair):
    """
    The session held by n1 is resumed on n2: <resumed/> with its count,
    the two messages not acknowledged again (with their delay), then the
    session goes on on n2 as it was (priority, presence), n1 holds nothing
    and told nobody it went.
    """
    n1, n2 = pair.nodes
    alice, bob, token = hibernating(pair)
    bob.discard()
    connection, answer = resume(n2.server, "alice", token, 1)
    assert answer == []  # n1 is asked first
    pair.settle()
    received = connection.received()
    assert received[0].name == "resumed" and received[0]["previd"] == token
    assert received[0]["h"] == "1"
    again = [e for e in received if e.name == "message"]
    assert [str(e.body) for e in again] == ["two", "three"]
    assert all(any(c.name == "delay" for c in e.elements()) for e in again)
    session = n2.server.router.sessions["alice@localhost"]["phone"]
    assert session.stream is connection.stream and session.priority == 7 and session.available
    assert "alice@localhost" not in n1.server.router.sessions
    assert STATE.get(session).queue and STATE.get(session).token == token
    bob.absent(lambda e: e.name == "presence", "presence")
    assert n1.directory.session(parseJID(alice.jid)).node == "n2"
    chat(bob, alice.jid, "four")
    pair.settle()
    assert "four" in [str(e.body) for e in connection.received() if e.name == "message"]
    assert result(n1.server.store.getOffline("localhost", "alice")) == []
    assert result(n2.server.store.getOffline("localhost", "alice")) == []


def test_stanzaArrivingAtTheOldNodeForwarded(pair):
    """A message reaching n1 right after the hand-over goes to n2 for the resumed session."""
    n1, n2 = pair.nodes
    alice, bob, token = hibernating(pair)
    carol = Client(n1.server, "bob", "laptop")
    connection, _ = resume(n2.server, "alice", token, 3)
    pair.clock.advance(0)  # n1 hands over; n2 has not heard yet
    chat(carol, alice.jid, "late")
    pair.settle()
    received = connection.received()
    assert received[0].name == "resumed"
    assert [str(e.body) for e in received if e.name == "message"] == ["late"]


def test_flagsAndInactivityTravel(pair):
    """
    Carbons enabled, directed presence and an inactive client (CSI) are so
    on the node that resumes; the target of the directed presence is told
    nothing by the hand-over.
    """
    n1, n2 = pair.nodes
    mallory = Client(n1.server, "mallory", "x")
    alice = Client(n1.server, "alice", "phone")
    alice.send("<presence to='mallory@localhost/x'/>")
    mallory.expect(lambda e: e.name == "presence", "directed presence")
    token = enable(alice)["id"]
    alice.send("<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    alice.drop()
    pair.settle()
    resume(n2.server, "alice", token, 0)
    pair.settle()
    session = n2.server.router.sessions["alice@localhost"]["phone"]
    assert ENABLED.get(session) and HELD.get(session) == {}
    assert session.directed == {"mallory@localhost/x"}
    mallory.absent(lambda e: e.name == "presence", "presence")


def test_anotherAccountsTokenFails(pair):
    """Mallory on n2 with Alice's token: item-not-found, and Alice's session stays on n1."""
    n1, n2 = pair.nodes
    mallory = Client(n1.server, "mallory", "x")  # a session on n1, so n2 asks n1
    _, _, token = hibernating(pair)
    connection, _ = resume(n2.server, "mallory", token, 0)
    pair.settle()
    (answer,) = connection.received()
    assert answer.name == "failed" and answer.firstChildElement().name == "item-not-found"
    assert STATE.get(n1.server.router.sessions["alice@localhost"]["phone"]).token == token
    assert "mallory@localhost" in n1.server.router.sessions and not mallory.closed


def test_unknownTokenFails(pair):
    """A token nobody holds: item-not-found once n1 said so; the stream may bind afresh."""
    n1, n2 = pair.nodes
    hibernating(pair)
    connection, _ = resume(n2.server, "alice", "forged", 0)
    pair.settle()
    (answer,) = connection.received()
    assert answer.name == "failed" and answer.firstChildElement().name == "item-not-found"
    assert n2.server.metrics["smacks.resume-failed"] == 1


def test_deadNodeFailsAtOnce(pair):
    """Nobody listens on n1's channel: <failed/> at once, n1 forgotten."""
    n1, n2 = pair.nodes
    _, _, token = hibernating(pair)
    pair.gone.add("n1")
    _, (answer,) = resume(n2.server, "alice", token, 1)
    assert answer.name == "failed"
    assert "n1" not in n2.directory.nodes


def test_silentNodeTimesOutAndLateHandOverKept(pair):
    """
    n1 does not answer: <failed/> after resume_timeout. Its hand-over,
    arriving later, does not go astray: the session ends on n2 at once and
    its unacknowledged messages wait offline; the client's new session is
    untouched.
    """
    n1, n2 = pair.nodes
    _, _, token = hibernating(pair)
    pair.deaf.add("n1")
    connection, _ = resume(n2.server, "alice", token, 1)
    pair.settle()
    assert connection.received() == []
    pair.clock.advance(4.9)
    assert connection.received() == []
    pair.clock.advance(0.2)
    (answer,) = connection.received()
    assert answer.name == "failed" and n2.server.metrics["cluster.resume-timeout"] == 1
    pair.deaf.clear()
    request = next(args[2] for args in n2.commands.sent
                   if args[0] == "PUBLISH" and args[1] == n2.channelOf("n1")
                   and args[2].startswith(b"q"))
    n1._received(n1.channelOf("n1").encode(), request)  # heard at last
    pair.settle()
    assert "alice@localhost" not in n1.server.router.sessions
    assert "alice@localhost" not in n2.server.router.sessions
    kept = [json.dumps(m.stanza) for m in result(n2.server.store.getOffline("localhost", "alice"))]
    assert len(kept) == 2 and "two" in kept[0] and "three" in kept[1]
    assert n2.directory.session(parseJID("alice@localhost/phone")) is None
    assert n1.directory.session(parseJID("alice@localhost/phone")) is None


def test_attachedSessionHandedOver(pair):
    """A session whose old link is still open (not known dead) is resumed too; that link gets <conflict/>."""
    n1, n2 = pair.nodes
    alice = Client(n1.server, "alice", "phone")
    token = enable(alice)["id"]
    pair.settle()
    connection, _ = resume(n2.server, "alice", token, 0)
    pair.settle()
    assert connection.received()[0].name == "resumed"
    assert alice.streamError() == "conflict"


def test_singleNodeAsksNobody(servers):
    """Without a cluster, an unknown token fails at once, as it always did."""
    server = servers(task.Clock(), modules=MODULES)
    addAccounts(server, "alice")
    _, received = resume(server, "alice", "unknown", 0)
    assert [e.name for e in received] == ["failed"]
