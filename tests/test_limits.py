"""
What one connection may cost, and how many connections there may be.

First the bookkeeping of L{invitesrv.limits} on a L{task.Clock}; then the
stream layer in memory (connection caps, read-rate back-pressure, a client
that does not read, closing deadlines, XEP-0478 advertisement, idle pings),
driven as Wokkel's tests drive streams; then a real server over real sockets:
slow-loris connections closed at the authentication timeout while a normal
client logs in, the per-address cap, the read rate measured, a client that
never reads dropped, pings to silent clients and TCP keepalive on the socket.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from conftest import RunningServer
from rawxmpp import NS_STREAM_HEADER, RawClient, readFor
from streamharness import HEADER, ClientConnection, addAccount, login
from twisted.internet import error, task
from twisted.python import failure

from invitesrv.config import Limits
from invitesrv.limits import (
    AddressList,
    ConnectionLimiter,
    EpisodeLog,
    FailureCounter,
    Limiter,
    Metrics,
    TokenBucket,
    addressKey,
    failureDelay,
)
from invitesrv.modules.watchdog import WatchdogModule
from invitesrv.xmpp.stream import CLOSE_TIMEOUT

PASSWORD = "correct horse"
NS_LIMITS = "urn:xmpp:stream-limits:0"
NS_PING = "urn:xmpp:ping"


# -- the bookkeeping ---------------------------------------------------------------


def test_tokenBucket():
    """A burst at once, then the rate; taking beyond the budget says how long the debt lasts."""
    clock = task.Clock()
    bucket = TokenBucket(clock, rate=100, burst=200)
    assert bucket.take(150) == 0
    assert bucket.take(100) == pytest.approx(0.5)  # 50 in debt at 100/s
    clock.advance(0.5)
    assert bucket.take(0) == 0
    clock.advance(10)
    assert bucket.take(200) == 0  # refilled to the burst, never beyond
    assert bucket.take(1) == pytest.approx(0.01)
    bucket.configure(rate=1000, burst=5000)  # authenticated: 4800 more burst, the debt of 1 stays
    assert bucket.take(4799) == 0 and bucket.take(1) == pytest.approx(0.001)


def test_failureCounterWindow():
    """Failures count within a window that slides with each failure, and can be forgotten."""
    clock = task.Clock()
    counter = FailureCounter(clock, window=60)
    assert [counter.add("a") for _ in range(3)] == [1, 2, 3]
    clock.advance(59)
    assert counter.add("a") == 4
    clock.advance(59)
    assert counter.count("a") == 4
    clock.advance(1)
    assert counter.count("a") == 0
    counter.add("b")
    counter.reset("b")
    assert counter.count("b") == 0


def test_failureCounterBounded():
    """A flood of fresh keys costs a bounded table: the oldest are forgotten."""
    counter = FailureCounter(task.Clock(), window=60, maxEntries=3)
    for key in "abcd":
        counter.add(key)
    assert len(counter) == 3
    assert counter.count("a") == 0 and counter.count("d") == 1


def test_failureDelay():
    """The first failures are free, then 1, 2, 4... seconds, capped."""
    assert [failureDelay(n, 5, 30) for n in range(1, 13)] == [0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 30, 30]
    assert failureDelay(10**6, 5, 30) == 30


def test_addressKey():
    """IPv4 counts per address (mapped or not), IPv6 per /64, which one host usually holds."""
    assert addressKey("203.0.113.5") == "203.0.113.5"
    assert addressKey("::ffff:203.0.113.5") == "203.0.113.5"
    assert addressKey("2001:db8:1:2:3:4:5:6") == addressKey("2001:db8:1:2::9") == "2001:db8:1:2::/64"
    assert addressKey("2001:db8:1:3::1") != addressKey("2001:db8:1:2::1")
    allowlist = AddressList(["127.0.0.1", "10.0.0.0/8", "::1"])
    assert "127.0.0.1" in allowlist and "10.1.2.3" in allowlist and "::ffff:10.9.9.9" in allowlist
    assert "::1" in allowlist and "127.0.0.2" not in allowlist and "not an address" not in allowlist


def test_connectionLimiter():
    """Per-address cap, per-address rate, global cap; the allowlist is held to the global cap only."""
    clock = task.Clock()
    limiter = ConnectionLimiter(clock, maxConnections=6, maxPerAddress=2, rate=1, burst=3,
                                allowlist=AddressList(["127.0.0.1"]))
    assert limiter.admit("192.0.2.1") is None and limiter.admit("192.0.2.1") is None
    refusal = limiter.admit("192.0.2.1")
    assert refusal.condition == "policy-violation" and "Too many connections" in refusal.text
    limiter.release("192.0.2.1")
    assert limiter.admit("192.0.2.1") is None  # the third of the burst
    limiter.release("192.0.2.1")
    refusal = limiter.admit("192.0.2.1")
    assert refusal.condition == "policy-violation" and "new connections" in refusal.text
    clock.advance(1)
    assert limiter.admit("192.0.2.1") is None
    for _ in range(4):
        assert limiter.admit("127.0.0.1") is None  # beyond the per-address cap: allowlisted
    assert limiter.total == 6
    assert limiter.admit("127.0.0.1").condition == "resource-constraint"
    assert limiter.admit("198.51.100.1").condition == "resource-constraint"
    for _ in range(4):
        limiter.release("127.0.0.1")
    limiter.release("192.0.2.1")
    limiter.release("192.0.2.1")
    assert limiter.total == 0 and limiter.open == {}


def test_limiterAccountsNeverBlock():
    """
    An address that keeps failing is blocked; an account is only slowed down,
    so its owner still logs in from elsewhere; the allowlist is neither.
    """
    limiter = Limiter(Limits(auth_failures_free=2, auth_failures_block=4, auth_delay_max=8,
                             allowlist=("127.0.0.1",)), task.Clock())
    delays = [limiter.authFailed("192.0.2.1", "alice@localhost") for _ in range(4)]
    assert delays == [0, 0, 1, 2]
    assert limiter.authBlocked("192.0.2.1")
    assert not limiter.authBlocked("198.51.100.7")
    assert limiter.authFailed("198.51.100.7", "alice@localhost") == 4  # the account's 5th
    assert not limiter.authBlocked("198.51.100.7")
    for _ in range(10):
        limiter.authFailed("127.0.0.1", "bob@localhost")
    assert not limiter.authBlocked("127.0.0.1")
    assert limiter.metrics["auth.failed"] == 15 and limiter.metrics["auth.throttled"] == 11


def test_episodeLog():
    """An episode is reported once at its start, and its end gives its length and events."""
    clock = task.Clock()
    episodes = EpisodeLog(clock, quiet=60)
    assert episodes.event() and not episodes.event()
    clock.advance(30)
    assert not episodes.event()
    clock.advance(60)
    assert episodes.event()  # a minute of quiet ended the first one
    clock.advance(5)
    assert episodes.ended() == (5, 1) and episodes.ended() is None


def test_metricsSummary():
    """The counters read as one sorted line."""
    metrics = Metrics()
    assert metrics.summary() == "none"
    metrics["b.two"] += 2
    metrics["a.one"] += 1
    assert metrics.summary() == "a.one=1, b.two=2"


# -- the stream layer, in memory ------------------------------------------------------


def lose(connection: ClientConnection) -> None:
    """The client hangs up."""
    connection.stream.connectionLost(failure.Failure(error.ConnectionDone()))


def test_perAddressCap(servers):
    """Over the per-address cap a connection gets <policy-violation/>; others are unaffected."""
    server = servers(limits={"max_connections_per_address": 2})
    first, second = ClientConnection(server), ClientConnection(server)
    third = ClientConnection(server)
    assert third.streamError() == "policy-violation" and third.closed and third.ended
    assert not first.closed and not second.closed
    assert not ClientConnection(server, address="192.0.2.8").closed
    lose(first)
    assert not ClientConnection(server).closed
    assert server.metrics["connections.refused"] == 1


def test_globalCap(servers):
    """The global cap holds for every address, allowlisted ones too: <resource-constraint/>."""
    server = servers(limits={"max_connections": 2})
    ClientConnection(server, address="127.0.0.1")
    ClientConnection(server, address="192.0.2.1")
    for address in ("127.0.0.1", "192.0.2.2"):
        assert ClientConnection(server, address=address).streamError() == "resource-constraint"


def test_connectionRate(servers):
    """New connections per address: the burst, then the rate."""
    clock = task.Clock()
    server = servers(clock, limits={"connection_rate": 1, "connection_burst": 2})
    assert not ClientConnection(server).closed and not ClientConnection(server).closed
    assert ClientConnection(server).streamError() == "policy-violation"
    assert not ClientConnection(server, address="192.0.2.99").closed
    clock.advance(1)
    assert not ClientConnection(server).closed


def test_endlessStreamHeader(servers):
    """A stream header that never ends is held to the pre-authentication stanza size."""
    connection = ClientConnection(servers(limits={"stanza_size_preauth": 5000}))
    connection.send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                    "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' x='")
    for _ in range(4):
        connection.send("a" * 1000)
    assert not connection.closed
    connection.send("a" * 1000)
    assert connection.streamError() == "policy-violation" and connection.closed


def test_readRateBackPressure(servers):
    """
    A chunk that goes over the read budget is held and the connection is not
    read from until the budget refills; then the chunk is parsed.
    """
    clock = task.Clock()
    server = servers(clock, limits={"read_rate_preauth": 100, "read_burst_preauth": 300})
    connection = ClientConnection(server)
    connection.openStream()
    connection.received()
    assert connection.transport.producerState == "producing"
    request = "<iq type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>"
    header = len(HEADER.format(to="localhost").encode())
    # 100 bytes over the burst: one second at 100 bytes/s.
    connection.send(" " * (400 - header - len(request)) + request)
    assert connection.transport.producerState == "paused"
    clock.advance(0.99)
    assert connection.transport.producerState == "paused" and connection.received() == []
    clock.advance(0.01)
    assert connection.transport.producerState == "producing"
    (reply,) = connection.received()
    assert reply["id"] == "v1"
    assert server.metrics["reads.throttled"] == 1


@pytest_twisted.inlineCallbacks
def test_readRateAfterAuthentication(servers):
    """Authentication moves a stream to the authenticated rate; the allowlist is never throttled."""
    server = servers(limits={"read_rate_preauth": 100, "read_burst_preauth": 100_000,
                             "read_rate": 5000, "read_burst": 7000})
    yield addAccount(server, "alice", PASSWORD)
    connection = ClientConnection(server, encrypted=True)
    assert connection.stream.readBucket.rate == 100
    yield login(connection, "alice", PASSWORD)
    assert (connection.stream.readBucket.rate, connection.stream.readBucket.burst) == (5000, 7000)
    assert ClientConnection(server, address="127.0.0.1").stream.readBucket is None


@pytest_twisted.inlineCallbacks
def test_clientThatDoesNotRead(servers):
    """
    When the transport says the peer is not reading (it pauses its producer),
    the stream stops reading too, and a peer that lets more than send_buffer
    bytes pile up is dropped; one that reads again is resumed.
    """
    server = servers(limits={"send_buffer": 2000})
    yield addAccount(server, "alice", PASSWORD)
    yield addAccount(server, "bob", PASSWORD)
    alice = ClientConnection(server, encrypted=True)
    yield login(alice, "alice", PASSWORD, "desk")
    bob = ClientConnection(server, encrypted=True, address="192.0.2.8")
    yield login(bob, "bob", PASSWORD, "desk")
    message = f"<message to='alice@localhost/desk' type='chat'><body>{'x' * 500}</body></message>"

    alice.stream.pauseProducing()  # what Twisted does when 64 KiB wait unsent
    assert alice.transport.producerState == "paused"
    bob.send(message * 3)
    alice.stream.resumeProducing()  # it read after all
    assert alice.transport.producerState == "producing" and not alice.transport.disconnected

    alice.stream.pauseProducing()
    bob.send(message * 3)
    assert not alice.transport.disconnected
    bob.send(message)
    assert alice.transport.disconnected  # aborted, not politely closed
    assert server.metrics["connections.unread"] == 1
    assert not bob.closed


def test_peerThatTakesNothingIsDropped(servers):
    """
    A peer that leaves more than Twisted's buffer unread for send_timeout is
    dropped, however little was sent to it meanwhile (it is its reading that
    is measured); one that empties the buffer in time stays.
    """
    clock = task.Clock()
    server = servers(clock, limits={"send_timeout": 30, "auth_timeout": 1000})
    connection = ClientConnection(server, encrypted=True)
    connection.stream.pauseProducing()  # more than 64 KiB wait unsent
    clock.advance(29)
    connection.stream.resumeProducing()  # it read them all
    clock.advance(60)
    assert not connection.transport.disconnected
    connection.stream.pauseProducing()
    clock.advance(29)
    assert not connection.transport.disconnected
    clock.advance(1)
    assert connection.transport.disconnected
    assert server.metrics["connections.unread"] == 1


def test_stallDuringHandshakeIsNotTimed(servers):
    """
    A pause while a TLS handshake is under way only means our bytes wait for
    the peer's answer: send_timeout starts when the handshake is done.
    """
    clock = task.Clock()
    server = servers(clock, limits={"send_timeout": 30, "auth_timeout": 1000})
    connection = ClientConnection(server)
    connection.stream.handshaking = True  # STARTTLS under way
    connection.stream.pauseProducing()
    clock.advance(100)
    assert not connection.transport.disconnected
    connection.stream.handshakeCompleted()
    clock.advance(29)
    assert not connection.transport.disconnected
    clock.advance(1)
    assert connection.transport.disconnected


def test_whenSent(servers):
    """
    whenSent fires True at once while the peer reads, else when the transport
    has taken what waited, and False when the connection ends first: what a
    sender of many stanzas waits on between them.
    """
    server = servers(limits={"send_timeout": 0})
    connection = ClientConnection(server, encrypted=True)
    taken = []
    connection.stream.whenSent().addCallback(taken.append)
    assert taken == [True]
    connection.stream.pauseProducing()
    connection.stream.whenSent().addCallback(taken.append)
    assert taken == [True]
    connection.stream.resumeProducing()
    assert taken == [True, True]
    connection.stream.pauseProducing()
    connection.stream.whenSent().addCallback(taken.append)
    connection.stream.connectionLost(failure.Failure(error.ConnectionLost()))
    assert taken == [True, True, False]
    connection.stream.whenSent().addCallback(taken.append)
    assert taken == [True, True, False, False]


def test_closeHasADeadline(servers):
    """A closed stream whose peer does not take the last bytes is aborted after CLOSE_TIMEOUT."""
    clock = task.Clock()
    connection = ClientConnection(servers(clock))
    connection.stream.closeWithError("policy-violation")
    assert connection.transport.disconnecting and not connection.transport.disconnected
    clock.advance(CLOSE_TIMEOUT)
    assert connection.transport.disconnected


def watched(servers, clock, **limits):
    """An in-memory server whose host runs the watchdog module."""
    server = servers(clock, limits=limits)
    host = server.hosts["localhost"]
    host.addModule("watchdog", WatchdogModule())
    host.start()
    return server


def limitsOf(features) -> dict[str, str]:
    element = next(features.elements(NS_LIMITS, "limits"))
    return {child.name: str(child) for child in element.elements()}


@pytest_twisted.inlineCallbacks
def test_streamLimitsAdvertised(servers):
    """XEP-0478: the stanza size limit of each stage, and after authentication the idle time."""
    server = watched(servers, task.Clock(), stanza_size_preauth=5000, stanza_size=70000,
                     idle_timeout=120)
    yield addAccount(server, "alice", PASSWORD)
    connection = ClientConnection(server, encrypted=True)
    connection.openStream()
    assert limitsOf(connection.features()) == {"max-bytes": "5000"}
    connection.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                    "AGFsaWNlAGNvcnJlY3QgaG9yc2U=</auth>")
    yield connection.nextNamed("success")
    connection.openStream()
    assert limitsOf(connection.features()) == {"max-bytes": "70000", "idle-seconds": "120"}


def pings(connection: ClientConnection) -> list:
    return [e for e in connection.received()
            if e.name == "iq" and next(e.elements(NS_PING, "ping"), None) is not None]


@pytest_twisted.inlineCallbacks
def test_idleSessionPinged(servers):
    """
    A silent session is pinged after idle_timeout; an answer (anything at all)
    keeps it; no answer within ping_timeout closes it with connection-timeout.
    """
    clock = task.Clock()
    server = watched(servers, clock, idle_timeout=60, ping_timeout=10)
    yield addAccount(server, "alice", PASSWORD)
    alice = ClientConnection(server, encrypted=True)
    full = yield login(alice, "alice", PASSWORD, "phone")
    clock.advance(59.9)
    assert pings(alice) == []
    clock.advance(0.1)
    (ping,) = pings(alice)
    assert (ping["type"], ping["to"], ping["from"]) == ("get", full, "localhost")
    alice.send(f"<iq type='result' id='{ping['id']}' to='localhost'/>")
    clock.advance(10)
    assert not alice.closed
    clock.advance(49.9)
    assert pings(alice) == []
    clock.advance(0.1)
    assert len(pings(alice)) == 1
    clock.advance(9.9)
    assert not alice.closed
    clock.advance(0.1)
    assert alice.streamError() == "connection-timeout"
    assert server.router.resourcesOf("alice@localhost") == {}
    assert server.metrics["sessions.ping-timeout"] == 1


@pytest_twisted.inlineCallbacks
def test_oneTimerWatchesEverySession(servers):
    """
    Sessions are watched by one sweep, not a timer each (a timer is about
    600 bytes, per idle connection); each silent one is still pinged, and
    within a quarter of the ping timeout of when it is due.
    """
    clock = task.Clock()
    server = watched(servers, clock, idle_timeout=60, ping_timeout=10)
    names = [f"user{i}" for i in range(5)]
    for name in names:
        yield addAccount(server, name, PASSWORD)
    timers = len(clock.getDelayedCalls())
    clients = []
    for name in names:
        clients.append(ClientConnection(server, encrypted=True))
        yield login(clients[-1], name, PASSWORD)
        clock.advance(1)
    assert len(clock.getDelayedCalls()) == timers
    clock.advance(55)  # the first was bound 60 s ago
    assert [len(pings(client)) for client in clients] == [1, 0, 0, 0, 0]
    clock.advance(4 + 10 / 4)
    assert [len(pings(client)) for client in clients[1:]] == [1, 1, 1, 1]


@pytest_twisted.inlineCallbacks
def test_busySessionNotPinged(servers):
    """A session that keeps talking (whitespace keepalives count) is never pinged."""
    clock = task.Clock()
    server = watched(servers, clock, idle_timeout=60, ping_timeout=10)
    yield addAccount(server, "alice", PASSWORD)
    alice = ClientConnection(server, encrypted=True)
    yield login(alice, "alice", PASSWORD)
    for _ in range(20):
        clock.advance(45)
        alice.send(" ")
    assert pings(alice) == [] and not alice.closed
    assert server.metrics["sessions.pinged"] == 0


# -- a real server, real sockets --------------------------------------------------------


E2E_CONFIG = """
[limits]
allowlist = []
auth_timeout = 3
max_connections_per_address = 60
connection_rate = 100
connection_burst = 200
read_rate_preauth = 40000
read_burst_preauth = 20000
read_rate = 0
send_buffer = 300000
idle_timeout = 2
ping_timeout = 1
tcp_keepalive = 30
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer(tmp_path_factory.mktemp("limits"), E2E_CONFIG)
    running.start()
    for name in ("alice", "bob", "carol"):
        running.adduser(f"{name}@localhost", PASSWORD)
    yield running
    running.stop()


def assertAlive(client: RawClient, iqID: str) -> None:
    client.send(f"<iq type='get' id='{iqID}' to='localhost'><ping xmlns='{NS_PING}'/></iq>")
    reply = client.recvUntil(rf"<iq[^>]*id='{iqID}'[^>]*(/>|>.*?</iq>)")
    assert "type='result'" in reply, reply


def test_slowLorisClosedWhileOthersLogIn(server):
    """
    Fifty connections trickling their stream header at two bytes a second are
    all closed with connection-timeout at auth_timeout (3 s), while a normal
    client logs in and is served meanwhile.
    """
    header = NS_STREAM_HEADER.format(host="localhost").encode()
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    started = time.monotonic()
    received = {sock: b"" for sock in slow}
    closedAt: dict[socket.socket, float] = {}
    normal = None
    try:
        offset = 0
        while len(closedAt) < len(slow) and time.monotonic() - started < 10:
            for sock in slow:
                if sock not in closedAt and offset < len(header):
                    try:
                        sock.send(header[offset:offset + 1])
                    except OSError:
                        pass
            offset += 1
            readFor(0.5, received, closedAt, started)
            if normal is None and time.monotonic() - started > 0.5:
                normal = RawClient(server.port)
                assert normal.login("alice", PASSWORD, "normal") == "alice@localhost/normal"
                assertAlive(normal, "during")
        assert len(closedAt) == 50, f"{50 - len(closedAt)} slow connections still open"
        assert all(2.8 < when < 6 for when in closedAt.values()), sorted(closedAt.values())
        for data in received.values():
            assert b"<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in data
        assertAlive(normal, "after")
    finally:
        for sock in slow:
            sock.close()
        if normal is not None:
            normal.close()


def test_perAddressCapOverTheWire(server):
    """The 61st connection from one address is refused with a stream error and closed."""
    held = [RawClient(server.port, source="127.0.0.2") for _ in range(60)]
    try:
        with RawClient(server.port, source="127.0.0.2") as refused:
            text = refused.recvUntil(r"</stream:stream>")
            assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in text
            assert "Too many connections from your address" in text
            assert refused.isClosed()
        with RawClient(server.port, source="127.0.0.3") as other:
            assert "<mechanisms" in other.startTLS()
    finally:
        for client in held:
            client.close()
    assert "Refusing connections: Too many connections from your address" in server.log()


def test_readRateOverTheWire(server):
    """
    A client that sends 80 kB before authentication at once is read at
    40 kB/s after its 20 kB burst: the answer to what follows takes 1.5 s.
    """
    with RawClient(server.port, source="127.0.0.4") as client:
        client.openStream()
        started = time.monotonic()
        client.send(b" " * 80_000 + b"<iq type='get' id='late'><query xmlns='jabber:iq:version'/></iq>")
        client.recvUntil(r"<iq[^>]*id='late'", timeout=10)
        elapsed = time.monotonic() - started
        assert 1.3 < elapsed < 2.9, elapsed


def test_clientThatNeverReadsIsDropped(server):
    """
    Alice stops reading while Bob sends her megabytes: once more than
    send_buffer bytes wait beyond the socket buffers, the server drops her
    connection. Bob is served throughout.
    """
    alice = RawClient(server.port, source="127.0.0.5")
    alice.login("alice", PASSWORD, "deaf")
    alice.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    bob = RawClient(server.port, source="127.0.0.6")
    bob.login("bob", PASSWORD, "loud")
    body = "x" * 60_000
    try:
        for index in range(150):
            bob.send(f"<message to='alice@localhost/deaf' type='headline'><body>{body}</body></message>")
            if index % 10 == 9:
                assertAlive(bob, f"p{index}")
                if "does not read what is sent to it" in server.log():
                    break
        assert "Dropping the connection from 127.0.0.5: it does not read" in server.log()
        assertAlive(bob, "after")
        alice.sock.settimeout(5)
        with pytest.raises((ConnectionError, OSError, TimeoutError)):
            while alice.sock.recv(1 << 20):
                pass
            raise ConnectionError("closed")
    finally:
        alice.close()
        bob.close()


def test_silentClientPingedThenClosed(server):
    """
    With idle_timeout 2 s and ping_timeout 1 s: a client that answers pings
    stays, one that does not is closed with connection-timeout; the features
    after authentication say so (XEP-0478).
    """
    answering = RawClient(server.port, source="127.0.0.7")
    answering.startTLS()
    assert "<success" in answering.scram("carol", PASSWORD)
    features = answering.openStream()
    assert ("<limits xmlns='urn:xmpp:stream-limits:0'><max-bytes>262144</max-bytes>"
            "<idle-seconds>2</idle-seconds></limits>") in features
    answering.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                   "<resource>awake</resource></bind></iq>")
    answering.recvUntil(r"<iq[^>]*id='b'.*?</iq>")
    silent = RawClient(server.port, source="127.0.0.8")
    silent.login("bob", PASSWORD, "asleep")
    stop = threading.Event()

    def answer():
        while not stop.is_set():
            try:
                ping = answering.recvUntil(r"<iq[^>]*id='(ping-[0-9a-f]+)'[^>]*>", timeout=0.5)
            except TimeoutError:
                continue
            except OSError:
                return
            iqID = re.search(r"id='(ping-[0-9a-f]+)'", ping).group(1)
            answering.send(f"<iq type='result' id='{iqID}' to='localhost'/>")

    responder = threading.Thread(target=answer)
    responder.start()
    try:
        started = time.monotonic()
        text = silent.recvUntil(r"</stream:stream>", timeout=10)
        assert "<ping xmlns='urn:xmpp:ping'/>" in text
        assert "<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in text
        assert 2 < time.monotonic() - started < 6
        time.sleep(1.5)
    finally:
        stop.set()
        responder.join()
    assert not answering.isClosed(0.1)
    assertAlive(answering, "still")
    answering.close()
    silent.close()
    assert "Closing the session of bob@localhost/asleep from 127.0.0.8: no answer to a ping" \
        in server.log()


def socketTimer(localPort: int, remotePort: int) -> str | None:
    """The kernel's timer field (tr) of the server's side of a TCP connection, from /proc/net/tcp."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        return None
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{localPort:04X}") and fields[2].endswith(f":{remotePort:04X}"):
            return fields[5].split(":")[0]
    return None


def test_tcpKeepaliveOnAcceptedSockets(server):
    """The server's socket of a new connection has its keepalive timer running (Linux)."""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    with RawClient(server.port, source="127.0.0.9") as client:
        time.sleep(0.2)
        timer = socketTimer(server.port, client.sock.getsockname()[1])
        assert timer == "02", timer  # 02: the keepalive timer
