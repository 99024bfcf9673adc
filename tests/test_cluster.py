"""
Cluster mode in memory: the Redis protocol on a StringTransport, the
directory of other nodes' sessions, and a node on a Clock whose Redis is a
recorder, for the rules (what is published, where a stanza for another node
goes, what happens when that node is gone, shared limits).
"""

from __future__ import annotations

import json
import sys

import pytest
from streamharness import Client, addAccounts, result
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python import failure

from invitesrv.cluster.directory import Directory, RemoteSession
from invitesrv.cluster.node import ClusterNode
from invitesrv.cluster.redis import RedisError, RedisProtocol, RedisUnavailable, parseURL
from invitesrv.config import ClusterOptions, ConfigError, parseConfig
from invitesrv.modules.carbons import ENABLED
from invitesrv.modules.mam import ARCHIVE_SLOTS
from invitesrv.services.slots import Slot
from invitesrv.xmpp.router import parseJID

# -- the protocol ------------------------------------------------------------------


def connected(onMessage=None) -> tuple[RedisProtocol, StringTransport]:
    protocol = RedisProtocol(onMessage)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_commandsAndRepliesInOrder():
    """Commands are packed as RESP arrays; replies fire their Deferreds in order, errors as RedisError."""
    protocol, transport = connected()
    first, second, third = (protocol.execute("GET", "a"), protocol.execute("INCR", "n"),
                            protocol.execute("BAD"))
    assert transport.value() == (b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n"
                                 b"*1\r\n$3\r\nBAD\r\n")
    protocol.dataReceived(b"$5\r\nvalue\r\n:4")  # the second reply split across reads
    assert result(first) == b"value" and not second.called
    protocol.dataReceived(b"2\r\n-ERR unknown command\r\n")
    assert result(second) == 42
    with pytest.raises(RedisError, match="unknown command"):
        result(third)


def test_publishedMessagesGoToTheSubscriber():
    """
    Once subscribed, a published message goes to onMessage; the
    subscription's confirmation to its command.
    """
    messages = []
    protocol, transport = connected(lambda channel, data: messages.append((channel, data)))
    d = protocol.execute("SUBSCRIBE", "c")
    protocol.dataReceived(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
                          b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nhello\r\n")
    assert result(d) == [b"subscribe", b"c", 1]
    assert messages == [(b"c", b"hello")]


def test_connectionLostFailsWhatWaits():
    """Commands without a reply when the connection goes fail with RedisUnavailable."""
    protocol, transport = connected()
    d = protocol.execute("PING")
    protocol.connectionLost(failure.Failure(ConnectionDone()))
    with pytest.raises(RedisUnavailable):
        result(d)


def test_readingInBatches():
    """
    With readEvery, the connection stops reading after each read and reads
    again that much later: the answers of many commands come in one read.
    """
    clock = task.Clock()
    protocol = RedisProtocol(readEvery=0.02, clock=clock)
    transport = StringTransport()
    protocol.makeConnection(transport)
    first, second = protocol.execute("PUBLISH", "c", "a"), protocol.execute("PUBLISH", "c", "b")
    protocol.dataReceived(b":1\r\n")
    assert result(first) == 1 and transport.producerState == "paused"
    clock.advance(0.02)
    assert transport.producerState == "producing"
    protocol.dataReceived(b":0\r\n")
    assert result(second) == 0
    protocol.connectionLost(failure.Failure(ConnectionDone()))
    assert not clock.getDelayedCalls()


def test_parseURL():
    assert parseURL("redis://127.0.0.1:6380/2") == ("127.0.0.1", 6380, 2, None, None)
    assert parseURL("redis://:s%40cret@[::1]") == ("::1", 6379, 0, None, "s@cret")
    for bad in ("http://127.0.0.1", "redis://127.0.0.1/x", "redis:///0"):
        with pytest.raises(ValueError):
            parseURL(bad)


SHARED_STORE = {"backend": "postgresql", "dsn": "host=/run/postgresql dbname=invitesrv"}


def test_clusterConfig():
    """[cluster] is off by default; a bad URL, node name or TTL is refused naming the key."""
    assert parseConfig({}).cluster == ClusterOptions(enabled=False)
    config = parseConfig({"cluster": {"enabled": True, "node": "n1", "ttl": "30s"},
                          "store": SHARED_STORE})
    assert config.cluster.enabled and config.cluster.node == "n1" and config.cluster.ttl == 30
    for table, key in (({"redis": "localhost:6379"}, "cluster.redis"),
                       ({"node": "two words"}, "cluster.node"), ({"ttl": 1}, "cluster.ttl"),
                       ({"nodes": 3}, "cluster.nodes")):
        with pytest.raises(ConfigError, match=key):
            parseConfig({"cluster": table})


def test_clusterNeedsHiredis(monkeypatch):
    """Cluster mode without the hiredis package stops start-up saying what to install."""
    monkeypatch.setitem(sys.modules, "hiredis", None)
    with pytest.raises(ConfigError, match=r"invitesrv\[cluster\]"):
        parseConfig({"cluster": {"enabled": True}, "store": SHARED_STORE})
    assert not parseConfig({"cluster": {"enabled": False}}).cluster.enabled


def test_clusterNeedsTheSharedStore():
    """
    Cluster mode on the SQLite store is refused at start, saying what to
    use: each node's start would free the invite reservations of the
    others' registrations in flight, and a file serves one machine only.
    """
    with pytest.raises(ConfigError, match=r'cluster.enabled needs the postgresql store'):
        parseConfig({"cluster": {"enabled": True}})
    with pytest.raises(ConfigError, match=r'cluster.enabled needs the postgresql store'):
        parseConfig({"cluster": {"enabled": True}, "store": {"backend": "sqlite"}})
    assert parseConfig({"cluster": {"enabled": True}, "store": SHARED_STORE}).cluster.enabled


# -- the directory -----------------------------------------------------------------


class Recorder:
    """Stands in for the node: what its remote sessions were sent."""

    def __init__(self):
        self.forwarded = []

    def forward(self, session, element):
        self.forwarded.append((session.full, element.toXml()))


@pytest.fixture
def directory(servers):
    server = servers()
    return Directory(Recorder(), server.router, Slot.named), server


def state(priority=0, available=True, presence="<presence/>", interested=False, flags=()):
    return [priority, available, presence, interested, list(flags), "192.0.2.1"]


def test_directoryEventsInOrder(directory):
    """Events apply in order; one already seen is ignored; a gap or a new incarnation asks for a full read."""
    directory, _ = directory
    directory.load("n2", {b"~epoch": b"e1", b"~seq": b"3"})
    assert directory.accepts("n2", "e1", 4) is True
    directory.apply("n2", 4, "bob@localhost/desk", state(5, flags=[ENABLED.name]))
    session = directory.session(parseJID("bob@localhost/desk"))
    assert isinstance(session, RemoteSession) and session.priority == 5 and ENABLED.get(session)
    assert session.presence.name == "presence"
    assert directory.accepts("n2", "e1", 4) is False  # seen
    assert directory.accepts("n2", "e1", 6) is None  # 5 was missed
    assert directory.accepts("n2", "e2", 1) is None  # restarted
    assert directory.accepts("n3", "e1", 1) is None  # never heard of
    directory.apply("n2", 5, "bob@localhost/desk", None)
    assert session.closed and directory.session(parseJID("bob@localhost/desk")) is None
    assert directory.byBare == {}


def test_directoryLoadIgnoresAnOlderSnapshot(directory):
    """A node's hash read after its events went further is not taken."""
    directory, _ = directory
    directory.load("n2", {b"~epoch": b"e1", b"~seq": b"1", b"bob@localhost/a": json.dumps(state())})
    directory.apply("n2", 2, "bob@localhost/a", None)
    directory.load("n2", {b"~epoch": b"e1", b"~seq": b"1", b"bob@localhost/a": json.dumps(state())})
    assert directory.session(parseJID("bob@localhost/a")) is None


def test_routerSeesRemoteSessions(directory):
    """
    The router lists an account's sessions on every node; a local one wins
    over a remote one of the same name.
    """
    directory, server = directory
    router = server.router
    directory.load("n2", {b"~epoch": b"e", b"~seq": b"1",
                          b"bob@localhost/desk": json.dumps(state()),
                          b"bob@localhost/phone": json.dumps(state())})
    assert router.resourcesOf("bob@localhost") == {}  # no directory yet: this node only
    router.directory = directory
    assert set(router.resourcesOf("bob@localhost")) == {"desk", "phone"}
    local = object()
    router.sessions["bob@localhost"] = {"desk": local}
    assert router.resourcesOf("bob@localhost")["desk"] is local
    assert router.session(parseJID("bob@localhost/phone")).node == "n2"
    dropped = directory.drop("n2")
    assert len(dropped) == 2 and all(s.closed for s in dropped)
    assert router.resourcesOf("bob@localhost") == {"desk": local}


# -- a node whose Redis is a recorder ---------------------------------------------------


class FakeRedis:
    """Stands in for the command connection: records each command, answers as told."""

    def __init__(self):
        self.sent: list[tuple] = []
        self.answers: dict = {"EVAL": 0}  # the script that claims an archive slot: slot 0
        self.db = 0
        self.url = "redis://fake/0"

    def execute(self, *args):
        self.sent.append(args)
        answer = self.answers.get(args[0], b"OK")
        if callable(answer):
            answer = answer(*args)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def published(self, channel: str) -> list:
        return [args[2] for args in self.sent if args[0] == "PUBLISH" and args[1] == channel]


@pytest.fixture
def node(servers):
    """A node 'n1' of a cluster, with the messaging modules, alice and bob, on a Clock."""
    clock = task.Clock()
    server = servers(clock=clock, modules=("roster", "presence", "offline", "carbons", "blocking"))
    addAccounts(server, "alice", "bob")
    cluster = ClusterNode(server, ClusterOptions(enabled=True, node="n1", ttl=6), clock)
    cluster.commands = FakeRedis()
    cluster.attach()
    cluster.ready = True
    yield cluster
    cluster.detach()


def bobOnN2(node, priority=0):
    node.directory.load("n2", {b"~epoch": b"e", b"~seq": b"1",
                               b"bob@localhost/desk": json.dumps(state(priority))})


def test_sessionsArePublished(node):
    """A bound session, its presence and its end are written to the node's hash and told to the others."""
    alice = Client(node.server, "alice", "phone")
    alice.send("<presence><priority>3</priority></presence>")
    alice.drop()
    events = [json.loads(e) for e in node.commands.published("invitesrv:events:0")]
    states = [(e["j"], e["st"] and e["st"][:2]) for e in events if e["k"] == "s"]
    assert states == [("alice@localhost/phone", [0, False]), ("alice@localhost/phone", [3, True]),
                      ("alice@localhost/phone", None)]
    assert [e["s"] for e in events if e["k"] == "s"] == [1, 2, 3]
    hsets = [args for args in node.commands.sent if args[0] == "HSET"]
    assert hsets[1][1:3] == ("invitesrv:sessions:n1", "alice@localhost/phone")
    assert ("HDEL", "invitesrv:sessions:n1", "alice@localhost/phone") in node.commands.sent


def test_messageForwardedToTheNodeOfTheSession(node):
    """A message to a bare JID whose session is on node 2 is published on node 2's channel."""
    bobOnN2(node)
    node.commands.answers["PUBLISH"] = 1
    alice = Client(node.server, "alice", "phone")
    alice.send("<message to='bob@localhost' type='chat' id='m1'><body>hi</body></message>")
    payload = node.commands.published("invitesrv:to:0:n2")
    assert len(payload) == 1 and payload[0].startswith(b"dbob@localhost/desk\n<message")
    assert b"<body>hi</body>" in payload[0]
    assert result(node.server.store.getOffline("localhost", "bob")) == []


def test_nodeGoneMessageKeptOffline(node):
    """Nobody listens on node 2's channel: node 2 is forgotten and the message waits offline."""
    bobOnN2(node)
    node.commands.answers["PUBLISH"] = 0
    alice = Client(node.server, "alice", "phone")
    alice.send("<message to='bob@localhost/desk' type='chat' id='m1'><body>hi</body></message>")
    assert "n2" not in node.directory.nodes
    kept = result(node.server.store.getOffline("localhost", "bob"))
    assert len(kept) == 1 and "<body>hi</body>" in kept[0].stanza
    alice.send("<iq to='bob@localhost/desk' type='get' id='q'><query xmlns='jabber:iq:version'/></iq>")
    assert alice.expect(lambda e: e.getAttribute("id") == "q")["type"] == "error"


def test_redisDownMessageKeptOffline(node):
    """Without Redis, a message for another node's session waits offline too."""
    bobOnN2(node)
    node.commands.answers["PUBLISH"] = RedisUnavailable("down")
    alice = Client(node.server, "alice", "phone")
    alice.send("<message to='bob@localhost' type='chat' id='m1'><body>hi</body></message>")
    assert len(result(node.server.store.getOffline("localhost", "bob"))) == 1


def test_expiredNodeForgotten(node):
    """At the heartbeat, a node whose key expired (it died) is forgotten: its sessions, its connections."""
    bobOnN2(node)
    node.limits.remote["n2"] = {"192.0.2.1": 3}
    node.commands.answers["EXPIRE"] = 1
    node.commands.answers["MGET"] = [b"e"]
    node.beat()
    assert "n2" in node.directory.nodes
    node.commands.answers["MGET"] = [None]
    node.beat()
    assert "n2" not in node.directory.nodes and node.limits.elsewhere("192.0.2.1") == 0
    assert node.server.router.resourcesOf("bob@localhost") == {}


def test_stanzaFromAnotherNode(node):
    """A stanza published for a session here reaches it; for a session gone, a message waits offline."""
    bob = Client(node.server, "bob", "desk")
    bob.discard()
    node._received(b"invitesrv:to:0:n1", b"dbob@localhost/desk\n"
                   b"<message from='alice@localhost/x' to='bob@localhost/desk' type='chat'>"
                   b"<body>over</body></message>")
    assert str(bob.expect(lambda e: e.name == "message").body) == "over"
    node._received(b"invitesrv:to:0:n1", b"dbob@localhost/gone\n"
                   b"<message from='alice@localhost/x' to='bob@localhost/gone' type='chat'>"
                   b"<body>later</body></message>")
    kept = result(node.server.store.getOffline("localhost", "bob"))
    assert len(kept) == 1 and "later" in kept[0].stanza


def test_closeFromAnotherNode(node):
    """A session bound again on another node ends here with a conflict."""
    bob = Client(node.server, "bob", "desk")
    node._received(b"invitesrv:to:0:n1", b"cbob@localhost/desk\nconflict\nReplaced")
    assert bob.streamError() == "conflict"


def test_rosterChangeElsewhereDropsTheCopy(node):
    """Another node's roster change drops this node's copy now, and again once it settled."""
    dropped = []
    node.server.store.rosterObservers.append(lambda host, user: dropped.append(user))
    node._received(b"invitesrv:events:0", json.dumps(
        {"k": "roster", "n": "n2", "h": "localhost", "u": "bob"}).encode())
    assert dropped == ["bob"]
    node.reactor.advance(1)
    assert dropped == ["bob", "bob"]
    assert not any(json.loads(e)["k"] == "roster"
                   for e in node.commands.published("invitesrv:events:0"))  # not told back


def test_failuresCountedAcrossNodes(node):
    """A failed login is counted in Redis; the cluster's count is taken here and told to the others."""
    node.commands.answers["INCR"] = 7
    limiter = node.server.limiter
    limiter.authFailed("192.0.2.9", "bob@localhost")
    assert limiter.authByAddress.count("192.0.2.9") == 7
    told = [json.loads(e) for e in node.commands.published("invitesrv:events:0")]
    assert {"k": "failures", "c": "auth-address", "key": "192.0.2.9", "v": 7, "n": "n1"} in told
    node._received(b"invitesrv:events:0", json.dumps(
        {"k": "failures", "c": "tokens", "key": "192.0.2.8", "v": 30, "n": "n2"}).encode())
    assert limiter.tokenBlocked("192.0.2.8")
    node._received(b"invitesrv:events:0", json.dumps(
        {"k": "failures", "c": "auth-account", "key": "bob@localhost", "v": 0, "n": "n2"}).encode())
    assert limiter.authByAccount.count("bob@localhost") == 0


def test_connectionsPerAddressAcrossNodes(node):
    """Connections from one address to the other nodes count against the per-address limit here."""
    connections = node.server.limiter.connections
    connections.configure(100, 3, 0, 0, connections.allowlist)
    node._received(b"invitesrv:events:0", json.dumps(
        {"k": "connections", "a": "192.0.2.5", "v": 2, "n": "n2"}).encode())
    assert connections.admit("192.0.2.5") is None
    assert connections.admit("192.0.2.5").condition == "policy-violation"
    assert ("HSET", "invitesrv:connections:n1", "192.0.2.5", 1) in node.commands.sent
    connections.release("192.0.2.5")
    assert ("HDEL", "invitesrv:connections:n1", "192.0.2.5") in node.commands.sent


def test_newConnectionsRateAcrossNodes(node):
    """
    New connections from one address to another node spend this node's
    budget (connection_rate) too: the rate holds for the cluster. Counts
    that fall (connections ended) give nothing back; time refills.
    """
    connections = node.server.limiter.connections
    connections.configure(100, 0, 1.0, 3, connections.allowlist)
    for count in (1, 2, 1):
        node._received(b"invitesrv:events:0", json.dumps(
            {"k": "connections", "a": "192.0.2.6", "v": count, "n": "n2"}).encode())
    assert connections.admit("192.0.2.6") is None
    refused = connections.admit("192.0.2.6")
    assert refused is not None and "Too many new connections" in refused.text
    assert connections.admit("192.0.2.7") is None  # another address has its own budget
    node.server.clock.advance(1.0)
    assert connections.admit("192.0.2.6") is None


def test_expiredEntriesWrittenAgain(node):
    """A node that finds its own entries expired (it was stopped past the TTL) writes them all again."""
    node.commands.connection = object()
    node.subscriber = node.commands
    node.synced = (node.commands.connection, node.commands.connection)
    Client(node.server, "bob", "desk")
    node.commands.answers.update({"EXPIRE": 0, "SCAN": [b"0", []]})
    node.commands.sent.clear()
    node.beat()
    sent = node.commands.sent
    assert ("DEL", "invitesrv:sessions:n1") in sent
    written = [args for args in sent if args[0] == "HSET" and args[1] == "invitesrv:sessions:n1"]
    assert written and "bob@localhost/desk" in written[0]


def test_componentsServedByTheOldestNode(node):
    """
    Stanzas for an internal component (the group chats) go to the node
    running longest; when it is gone, the next one (here this one) serves them.
    """
    from invitesrv.components.base import InternalComponent
    component = InternalComponent("groups.localhost", node.server.hosts["localhost"])
    node.server.router.addComponent(component)
    received = []
    component.receive = lambda stanza, target: received.append(stanza)
    node.since = 100.0
    node.directory.load("n0", {b"~epoch": b"e", b"~seq": b"0", b"~since": b"50.0"})
    node.directory.load("n9", {b"~epoch": b"e", b"~seq": b"0", b"~since": b"150.0"})
    assert node.componentNode() == "n0"
    node.commands.answers["PUBLISH"] = 0  # n0 died
    alice = Client(node.server, "alice", "phone")
    alice.send("<presence to='tea@groups.localhost/Alice'/>")
    assert node.commands.published("invitesrv:to:0:n0")[0].startswith(b"r<presence")
    assert "n0" not in node.directory.nodes and node.componentNode() == "n1"
    assert [stanza.getAttribute("to") for stanza in received] == ["tea@groups.localhost/Alice"]
    node._received(b"invitesrv:to:0:n1", b"r<presence from='bob@localhost/x'"
                   b" to='tea@groups.localhost/Bob'/>")
    assert received[-1]["from"] == "bob@localhost/x"


def test_blocklistChangesTold(node):
    """A block made here is told to the other nodes; one made on another node is read from the store."""
    alice = Client(node.server, "alice", "phone")
    alice.send("<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'>"
               "<item jid='mallory@example.net'/></block></iq>")
    assert alice.expect(lambda e: e.getAttribute("id") == "b1")["type"] == "result"
    told = [json.loads(e) for e in node.commands.published("invitesrv:events:0")]
    assert {"k": "blocklist", "n": "n1", "h": "localhost", "u": "alice"} in told
    blocking = node.server.hosts["localhost"].modules["blocking"]
    result(node.server.store.block("localhost", "bob", ["eve@example.net"]))  # as node 2 did
    assert not blocking.isBlocked("bob", "eve@example.net")
    node._received(b"invitesrv:events:0", json.dumps(
        {"k": "blocklist", "n": "n2", "h": "localhost", "u": "bob"}).encode())
    assert blocking.isBlocked("bob", "eve@example.net")


def test_archivePrefsTold(servers):
    """Archive preferences set here are told to the other nodes; those told are archived by."""
    clock = task.Clock()
    server = servers(clock=clock, modules=("roster", "presence", "mam"))
    addAccounts(server, "alice")
    cluster = ClusterNode(server, ClusterOptions(enabled=True, node="n1"), clock)
    cluster.commands = FakeRedis()
    cluster.attach()
    cluster.ready = True
    try:
        alice = Client(server, "alice", "phone")
        alice.send("<iq type='set' id='p1'><prefs xmlns='urn:xmpp:mam:2' default='never'>"
                   "<always><jid>bob@localhost</jid></always></prefs></iq>")
        assert alice.expect(lambda e: e.getAttribute("id") == "p1")["type"] == "result"
        told = [json.loads(e) for e in cluster.commands.published("invitesrv:events:0")]
        assert {"k": "archive-prefs", "n": "n1", "h": "localhost", "u": "alice",
                "p": ["never", ["bob@localhost"], []]} in told
        mam = server.hosts["localhost"].modules["mam"]
        assert mam.policy("carol", "bob@localhost") is True  # the default: always
        cluster._received(b"invitesrv:events:0", json.dumps(
            {"k": "archive-prefs", "n": "n2", "h": "localhost", "u": "carol",
             "p": ["always", [], ["bob@localhost"]]}).encode())
        assert mam.policy("carol", "bob@localhost") is False
    finally:
        cluster.detach()


def test_archiveSlotHeld(servers):
    """
    At each heartbeat the node holds its archive slot in Redis, asking for
    the one it had, and the host's archive gives its ids in it; with every
    slot held by other nodes, the archive gives them as a single node does.
    """
    clock = task.Clock()
    server = servers(clock=clock, modules=("roster", "presence", "mam"))
    cluster = ClusterNode(server, ClusterOptions(enabled=True, node="n1", ttl=6), clock)
    cluster.commands = FakeRedis()
    cluster.ready = True
    ids = server.hosts["localhost"].modules["mam"].ids
    for answer, slot in ((7, 7), (7, 7), (-1, None), (2, 2)):
        cluster.commands.answers["EVAL"] = answer
        cluster.beat()
        assert ids.slot == slot
    claims = [args[2:] for args in cluster.commands.sent if args[0] == "EVAL"]
    assert claims == [(1, "invitesrv:archive-slot:", "n1", 6, ARCHIVE_SLOTS, had)
                      for had in (-1, 7, 7, -1)]


def test_checkPeersBounded(node):
    """
    The admin's views ask Redis which nodes listen: one that does not is
    dropped and named; a Redis that does not answer is waited for no longer
    than PEERS_TIMEOUT, and the answer is then "unsure" (None).
    """
    bobOnN2(node)
    node.directory.load("n3", {b"~epoch": b"e", b"~seq": b"1",
                               b"alice@localhost/desk": json.dumps(state())})
    node.commands.answers["PUBSUB"] = [b"invitesrv:to:0:n2", 1, b"invitesrv:to:0:n3", 0]
    assert result(node.checkPeers()) == ["n3"]
    assert node.commands.sent[-1] == ("PUBSUB", "NUMSUB", "invitesrv:to:0:n2", "invitesrv:to:0:n3")
    assert sorted(node.directory.nodes) == ["n2"]
    node.commands.execute = lambda *args: defer.Deferred()  # Redis says nothing
    d = node.checkPeers()
    node.reactor.advance(1.9)
    assert not d.called
    node.reactor.advance(0.2)
    assert result(d) is None and "n2" in node.directory.nodes


# -- PEP across nodes ---------------------------------------------------------------


@pytest.fixture
def pepNode(servers):
    """A node 'n1' with PEP (alice, bob and carol, alice and bob mutual contacts) on a Clock."""
    from test_pep import Pep
    made = Pep(servers)
    made.accounts("alice", "bob", "carol")
    made.friends("alice", "bob")
    cluster = ClusterNode(made.server, ClusterOptions(enabled=True, node="n1", ttl=6), task.Clock())
    cluster.commands = FakeRedis()
    cluster.attach()
    cluster.ready = True
    yield cluster, made
    cluster.detach()


def pepEvents(cluster) -> list[dict]:
    return [event for event in map(json.loads, cluster.commands.published("invitesrv:events:0"))
            if event["k"] == "pep"]


def test_pepChangesTold(pepNode):
    """
    Each change of an account's PEP nodes here is told to the other nodes
    in one message, a publication with its event (for the interested
    resources they hold), whether or not anyone here is interested.
    """
    from test_pep import AVATAR, NS_AVATAR_META, publish
    cluster, pep = pepNode
    alice = Client(pep.server, "alice", "phone")
    assert publish(alice, NS_AVATAR_META, AVATAR, "abc")["type"] == "result"
    [told] = pepEvents(cluster)
    assert (told["n"], told["h"], told["u"], told["pn"]) == ("n1", "localhost", "alice", NS_AVATAR_META)
    assert told["o"]["access_model"] == "presence"
    assert "<item id='abc'><metadata" in told["x"] and told["x"].startswith("<event")
    reply = alice.request(f"<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'>"
                          f"<purge node='{NS_AVATAR_META}'/></pubsub>", "set")
    assert reply["type"] == "result"
    assert "<purge node=" in pepEvents(cluster)[-1]["x"]
    alice.request("<pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='quiet'/></pubsub>",
                  "set")
    assert pepEvents(cluster)[-1]["x"] is None and len(pepEvents(cluster)) == 3


def test_pepChangedElsewhere(pepNode):
    """
    A change told by another node: this node's copy of the account's nodes
    goes (its next read is the store's), its interested resources get the
    event, subject to the node's access model, and nothing is told back.
    """
    from test_pep import AVATAR, NS_AVATAR_META, isEvent, itemIds, items

    from invitesrv.pubsub import DEFAULTS, dumpOptions
    cluster, pep = pepNode
    bob, carol = pep.online("bob"), pep.online("carol")
    assert result(pep.pep.items("alice", NS_AVATAR_META)) is None  # read, and kept
    result(pep.store.publishPepItem("localhost", "alice", NS_AVATAR_META, dumpOptions(DEFAULTS),
                                    "abc", AVATAR, 1))  # as node 2 did
    assert result(pep.pep.items("alice", NS_AVATAR_META)) is None  # the copy
    event = (f"<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='{NS_AVATAR_META}'>"
             f"<item id='abc'>{AVATAR}</item></items></event>")
    for client in (bob, carol):
        client.discard()
    cluster._received(b"invitesrv:events:0", json.dumps(
        {"k": "pep", "n": "n2", "h": "localhost", "u": "alice", "pn": NS_AVATAR_META,
         "o": DEFAULTS, "x": event}).encode())
    assert itemIds(items(bob, "alice@localhost", NS_AVATAR_META)) == ["abc"]
    bob.expect(isEvent("alice@localhost", NS_AVATAR_META, "abc"))
    carol.absent(lambda e: e.name == "message")  # interested, but not a contact
    assert pepEvents(cluster) == []


def test_pepPresenceHandedOver(pepNode):
    """
    A presence of bob's session on node 2 that reaches alice here (a
    probe's answer) goes to node 2, which keeps its sessions' interest:
    nothing is kept or asked here. Handed one here for a session here, it
    is read as if it came from the stream (its caps asked); for a session
    gone, it is not.
    """
    from test_pep import NOTIFY, discoQuery

    from invitesrv.caps import NS_CAPS, capsHash
    cluster, pep = pepNode
    cluster.directory.load("n2", {b"~epoch": b"e", b"~seq": b"1",
                                  b"bob@localhost/desk": json.dumps(state())})
    ver = capsHash(discoQuery(NOTIFY))
    presence = (f"<presence from='bob@localhost/desk' to='alice@localhost'><c xmlns='{NS_CAPS}'"
                f" hash='sha-1' node='https://example.org/test' ver='{ver}'/></presence>")
    pep.server.router.route(cluster.reader.parse(
        b"<presence type='probe' from='bob@localhost/desk' to='alice@localhost'/>"))
    pep.server.router.route(cluster.reader.parse(presence.encode()))
    [handed] = [m for m in cluster.commands.published("invitesrv:to:0:n2") if m[:1] == b"p"]
    assert handed.startswith(b"p<presence") and b"bob@localhost/desk" in handed
    assert pep.pep.interest == {} and pep.pep._queries == {}

    cluster.directory.drop("n2")
    bob = Client(pep.server, "bob", "desk")
    bob.discard()
    cluster._received(b"invitesrv:to:0:n1", b"p" + presence.encode())
    bob.absent(lambda e: e.name == "iq")  # bound, but not available yet
    bob.send("<presence/>")
    bob.discard()
    cluster._received(b"invitesrv:to:0:n1", b"p" + presence.encode())
    asked = bob.expect(lambda e: e.name == "iq" and e.getAttribute("type") == "get")
    assert asked["from"] == "alice@localhost"
    bob.backlog.insert(0, asked)
    pep.answerCaps(bob, discoQuery(NOTIFY))
    assert set(pep.pep.interest["alice"]) == {"bob@localhost/desk"}


def test_pepChangesMadeWithoutRedis(pepNode):
    """
    A PEP change made while Redis is away cannot be told: when this node
    joins again, the others are told to read every account's nodes again,
    and so does this node (it may have missed theirs).
    """
    from test_pep import AVATAR, NS_AVATAR_META, publish
    cluster, pep = pepNode
    alice = Client(pep.server, "alice", "phone")
    cluster.ready = False
    assert publish(alice, NS_AVATAR_META, AVATAR, "abc")["type"] == "result"
    assert pepEvents(cluster) == [] and pep.pep.loaded("alice") is not None
    cluster.subscriber = cluster.commands
    cluster.commands.connection = object()  # Redis is back
    cluster.synced = (object(), object())  # the connections before
    cluster.commands.answers["SCAN"] = [b"0", []]
    cluster._sync()
    resets = [json.loads(e) for e in cluster.commands.published("invitesrv:events:0")
              if json.loads(e)["k"] == "r"]
    assert resets[-1]["pep"] is True and cluster.ready and not cluster.pepUntold
    assert pep.pep.loaded("alice") is None  # read again when next needed
    result(pep.pep.service("alice"))
    cluster._received(b"invitesrv:events:0", json.dumps({"k": "r", "n": "n2", "e": "x"}).encode())
    assert pep.pep.loaded("alice") is not None  # a node that told everything
    cluster._received(b"invitesrv:events:0", json.dumps(
        {"k": "r", "n": "n2", "e": "y", "pep": True}).encode())
    assert pep.pep.loaded("alice") is None


def test_pepInterestOfASessionGoneElsewhere(pepNode):
    """
    The interest this node kept for bob's session, resumed since on node 2
    (it left without its unavailable presence passing here), is not used: a
    publication is not forwarded to it from here (node 2 tells it, so it
    would hear twice), and the entry is forgotten.
    """
    from test_pep import AVATAR, NS_AVATAR_META, publish
    cluster, pep = pepNode
    cluster.directory.load("n2", {b"~epoch": b"e", b"~seq": b"1",
                                  b"bob@localhost/desk": json.dumps(state())})
    pep.pep.interest["alice"] = {"bob@localhost/desk": frozenset({NS_AVATAR_META})}
    cluster.commands.answers["PUBLISH"] = 1
    alice = Client(pep.server, "alice", "phone")
    assert publish(alice, NS_AVATAR_META, AVATAR, "abc")["type"] == "result"
    assert cluster.commands.published("invitesrv:to:0:n2") == []
    assert "alice" not in pep.pep.interest
