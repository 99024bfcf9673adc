"""
The restricted stream base that client and server-to-server streams share
(L{invitesrv.xmpp.stream.RestrictedStream}): every limit holds on both
listeners. Over real sockets: an opening tag that never ends is cut at the
cap on the c2s and the s2s port. In memory, on a L{task.Clock}: an incoming
server stream is held to the read rate like a client, and an exception in a
handler ends only its own stream, with a stream error.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
import pytest_twisted
from streamharness import ClientConnection, addAccount, login
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.words.protocols.jabber import jid, xmlstream

from invitesrv.config import FederationOptions, Limits
from invitesrv.xmpp.s2s.service import S2SService
from invitesrv.xmpp.stream import RestrictedStream

S2S_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
              "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
              "from='peer.test' to='localhost' version='1.0'>")
C2S_OPEN = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0' ")
S2S_OPEN = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
            "xmlns:stream='http://etherx.jabber.org/streams' to='a.test' version='1.0' ")


@pytest.fixture(scope="module")
def listening(tmp_path_factory):
    """One server with a client and a server-to-server listener, the default stream limits."""
    from conftest import RunningServer
    server = RunningServer(tmp_path_factory.mktemp("stream"),
                           's2s = ["tcp:0:interface=127.0.0.1"]\n[limits]\nallowlist = []\n',
                           ("--domain", "a.test"))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(("label", "opening", "namespace"), [("Clients", C2S_OPEN, "jabber:client"),
                                                             ("Servers", S2S_OPEN, "jabber:server")])
def test_endlessOpeningTag(listening, label, opening, namespace):
    """
    An opening C{<stream:stream} tag that never ends (attribute after
    attribute) is cut with C{<policy-violation/>} once it passes the
    pre-authentication stanza size (10 000 bytes), on the client port and on
    the server-to-server port alike; nothing like the megabyte sent is read.
    """
    attribute = "a{}='" + "x" * 1000 + "' "
    sent = 0
    with socket.create_connection(("127.0.0.1", listening.ports[label]), timeout=10) as sock:
        sock.sendall(opening.encode())
        try:
            for index in range(1000):  # about 1 MB, far past the cap
                chunk = attribute.format(index).encode()
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server hung up: what it sent before is still readable
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    assert b"<policy-violation" in received, (sent, received)
    assert f"xmlns='{namespace}'".encode() in received  # the error's stream header
    assert "Stream header too large" in listening.log()


def s2sStream(servers, clock, federation: FederationOptions | None = None, **limits):
    """An incoming server-to-server stream of an in-memory server, on a StringTransport."""
    server = servers(clock, limits=limits, federation=federation or FederationOptions())
    federation = S2SService(server, reactor=clock)
    address = IPv4Address("TCP", "192.0.2.9", 40000)
    stream = federation.listenFactory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    stream.makeConnection(transport)
    return server, stream, transport


def test_s2sReadRate(servers):
    """
    An incoming server stream over its read budget is paused like a client's:
    the chunk that went over is held, nothing is read until the budget
    refills, then the chunk is parsed.
    """
    clock = task.Clock()
    server, stream, transport = s2sStream(servers, clock, read_rate_preauth=100,
                                          read_burst_preauth=300)
    assert stream.readBucket is not None
    stream.dataReceived(S2S_HEADER.encode())
    assert b"<stream:features" in transport.value() and transport.producerState == "producing"
    transport.clear()
    # 100 bytes over the burst: one second at 100 bytes/s. The element
    # after them is refused (TLS first), which shows when it is parsed.
    stanza = "<db:result from='peer.test' to='localhost'>key</db:result>"
    stream.dataReceived((" " * (400 - len(S2S_HEADER) - len(stanza)) + stanza).encode())
    assert transport.producerState == "paused"
    clock.advance(0.99)
    assert transport.producerState == "paused" and transport.value() == b""
    clock.advance(0.01)
    assert b"policy-violation" in transport.value()
    assert server.metrics["reads.throttled"] == 1


@pytest_twisted.inlineCallbacks
def test_s2sStanzaRate(servers):
    """
    A remote domain that sends more than [s2s] stanza_rate stanzas a second
    (past the burst) is slowed, not cut off: the stanzas it sent are all
    delivered, its stream is not read until the budget has refilled, and
    what arrives meanwhile is delivered after the pause.
    """
    clock = task.Clock()
    options = FederationOptions(require_encryption=False, stanza_rate=10, stanza_burst=20)
    server, stream, transport = s2sStream(servers, clock, federation=options)
    yield addAccount(server, "alice", "correct horse")
    alice = ClientConnection(server, encrypted=True, address="192.0.2.10")
    yield login(alice, "alice", "correct horse", "desk")
    # The authoritative server of peer.test (outside this test) vouches for its key.
    stream.federation.verifyDialback = lambda *args: defer.succeed(True)
    stream.dataReceived(S2S_HEADER.encode())
    stream.dataReceived(b"<db:result from='peer.test' to='localhost'>key</db:result>")
    assert b"type='valid'" in transport.value()

    def messages(numbers) -> bytes:
        return "".join(f"<message from='bob@peer.test' to='alice@localhost/desk' type='chat'>"
                       f"<body>{n}</body></message>" for n in numbers).encode()

    def delivered() -> list[str]:
        return [str(element.body) for element in alice.received() if element.name == "message"]

    stream.dataReceived(messages(range(30)))  # 10 past the burst: a second at 10 a second
    assert delivered() == [str(n) for n in range(30)]
    assert transport.producerState == "paused" and server.metrics["stanzas.throttled"] == 10
    stream.dataReceived(messages(range(30, 35)))  # already on its way: held
    clock.advance(0.99)
    assert delivered() == [] and transport.producerState == "paused"
    clock.advance(0.01)
    assert delivered() == [str(n) for n in range(30, 35)]
    assert transport.producerState == "paused"  # those 5 cost half a second more
    clock.advance(0.5)
    assert transport.producerState == "producing"
    clock.advance(1)  # a second's worth of budget
    stream.dataReceived(messages([35]))
    assert delivered() == ["35"] and transport.producerState == "producing"
    assert not transport.disconnecting


def test_s2sOpeningTagCap(servers):
    """The s2s opening tag is held to the pre-authentication size, in memory too."""
    server, stream, transport = s2sStream(servers, task.Clock(), stanza_size_preauth=2000,
                                          read_rate_preauth=0)
    stream.dataReceived(S2S_OPEN.encode())
    for index in range(10):
        stream.dataReceived(f"a{index}='{'x' * 300}' ".encode())
    assert b"<policy-violation" in transport.value() and transport.disconnecting


def test_pauseDuringHandshakeKeepsReading(servers):
    """
    Data written during a TLS handshake waits for the peer's handshake
    answer, and TLS pauses the stream as a producer meanwhile: reading goes
    on (else the handshake could never finish, as an outgoing s2s stream
    that sends its header right after STARTTLS found). Once the handshake is
    done, a pause means the peer does not read, and reading stops.
    """
    connection = ClientConnection(servers(task.Clock()))
    connection.stream.startTLS(object())
    connection.stream.pauseProducing()  # what TLS does with a write buffered in the handshake
    assert connection.transport.producerState == "producing"
    connection.stream.handshakeCompleted()
    assert connection.transport.producerState == "paused"
    connection.stream.resumeProducing()
    assert connection.transport.producerState == "producing"


def test_handlerErrorTrapped(servers):
    """
    An exception in a client stream's handler ends that stream with
    C{<internal-server-error/>} (and a logged traceback) instead of escaping
    into the parser and the reactor; other connections are untouched.
    """
    server = servers(task.Clock())
    broken, other = ClientConnection(server), ClientConnection(server, address="192.0.2.8")

    def explode(element):
        raise RuntimeError("a bug in a handler")

    broken.authenticator.elementReceived = explode
    broken.openStream()
    broken.send("<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>")
    assert broken.streamError() == "internal-server-error" and broken.closed
    other.openStream()
    assert other.features() is not None and not other.closed


@pytest.mark.parametrize(("namespace", "dialback", "initiating", "sid", "to", "sender"), [
    ("jabber:client", False, False, "c0ffee", None, "localhost"),
    ("jabber:server", True, False, "abc'<&", "peer.test", "localhost"),
    ("jabber:server", True, True, None, "peer.test", "localhost"),
    ("jabber:server", False, True, "ignored", "peer.test", None),
])
def test_headerAsTwistedWritesIt(namespace, dialback, initiating, sid, to, sender):
    """
    The opening tag a stream writes as text is, byte for byte, the one
    Twisted's C{sendHeader} builds as an element: client and server streams,
    either side, with or without the dialback prefix, an id to escape.
    """
    written = []
    for send in (RestrictedStream.sendHeader, xmlstream.XmlStream.sendHeader):
        authenticator = xmlstream.Authenticator()
        authenticator.namespace = namespace
        stream = RestrictedStream(authenticator, SimpleNamespace(
            config=SimpleNamespace(limits=Limits()), clock=task.Clock()))
        stream.transport = StringTransport()
        stream.initiating, stream.sid = initiating, sid
        stream.otherEntity = jid.JID(to) if to else None
        stream.thisEntity = jid.JID(sender) if sender else None
        if dialback:
            stream.prefixes["jabber:server:dialback"] = "db"
        send(stream)
        written.append(stream.transport.value())
    assert written[0] == written[1]
