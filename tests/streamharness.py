"""
In-memory client connections for unit tests of the stream layer, in the
manner of Wokkel's C{test_server.py}: a real L{C2SStream} and authenticator
from L{C2SFactory}, a L{StringTransport}, raw bytes through C{dataReceived},
and the elements the server wrote parsed back for assertions.

The server is the real L{InviteServer} over a L{MemoryStore}, on a
L{task.Clock}, with password hashing run inline: everything the server does
for a client's bytes has happened when C{dataReceived} returns, and time
passes only when a test advances the clock. No thread, no reactor.
"""

from __future__ import annotations

import base64

from synchronous import inline, result
from twisted.internet import defer, error, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python import failure
from twisted.words.xish import domish

from invitesrv.config import Config, Limits
from invitesrv.service import InviteServer
from invitesrv.store.memory import MemoryStore
from invitesrv.xmpp.c2s import C2SFactory

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_ROSTER = "jabber:iq:roster"
PASSWORD = "a long password"
HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='{to}' version='1.0'>")


class TLSStringTransport(StringTransport):
    """
    A StringTransport that records a STARTTLS instead of doing one: the
    bytes after C{<proceed/>} then stand for what the TLS layer decrypted.
    """

    tlsContext = None

    def startTLS(self, contextFactory) -> None:
        self.tlsContext = contextFactory


class Servers:
    """Makes in-memory servers for one test and closes their stores after it."""

    def __init__(self) -> None:
        self.made: list[InviteServer] = []

    def __call__(self, clock: task.Clock | None = None, store=None, **options) -> InviteServer:
        """
        An L{InviteServer} (for C{localhost} unless C{hosts} says otherwise)
        over an open L{MemoryStore}, on C{clock} (a new L{task.Clock} by
        default). C{options} are L{Config} fields; C{limits} may be a dict
        of L{Limits} fields. Without C{modules} it is the stream layer on its
        own; with them (names, as in the config) its hosts are started, and
        stopped after the test.
        C{store} replaces the L{MemoryStore} for a test of another backend's
        behaviour (opened here, closed after the test).
        """
        limits = options.pop("limits", {})
        options.setdefault("modules", ())
        config = Config(limits=Limits(**limits), **options)
        store = MemoryStore() if store is None else store
        store.open()
        server = InviteServer(config, store=store, reactor=clock or task.Clock())
        for host in server.hosts.values():
            host.deferToThread = inline
            if config.modules:
                host.start()
        self.made.append(server)
        return server

    def closeAll(self) -> None:
        for server in self.made:
            for host in server.hosts.values():
                if host.started:
                    host.stop()
            server.store.close()


class ClientConnection:
    """
    One client connection to C{server}. C{received()} lists, in order, the
    elements the server sent since the last call (its stream headers appear
    as elements named C{stream}); C{closed} says the server hung up.
    """

    def __init__(self, server: InviteServer, encrypted: bool = False, address: str = "192.0.2.7"):
        self.server = server
        self.factory = C2SFactory(server, directTLS=encrypted)
        peer = IPv4Address("TCP", address, 40000)
        self.transport = TLSStringTransport(peerAddress=peer)
        self.stream = self.factory.buildProtocol(peer)
        self.stream.makeConnection(self.transport)
        self.authenticator = self.stream.authenticator
        self._offset = 0
        self._parser = None
        self._pending: list[domish.Element] = []
        self.ended = False

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def send(self, data: str | bytes) -> None:
        """Bytes from the client, exactly as given."""
        self.stream.dataReceived(data.encode("utf-8") if isinstance(data, str) else data)

    def openStream(self, to: str = "localhost") -> None:
        self.send(HEADER.format(to=to))

    # -- what the server wrote -------------------------------------------------

    def _newDocument(self) -> None:
        self._parser = domish.elementStream()
        self._parser.DocumentStartEvent = self._pending.append
        self._parser.ElementEvent = self._pending.append
        self._parser.DocumentEndEvent = self._documentEnded

    def _documentEnded(self) -> None:
        self.ended = True

    def _parse(self) -> None:
        data = self.transport.value()[self._offset:]
        self._offset += len(data)
        for index, part in enumerate(data.split(b"<stream:stream ")):
            if index > 0:
                self._newDocument()
                part = b"<stream:stream " + part
            if part:
                self._parser.parse(part)

    def received(self) -> list[domish.Element]:
        """Everything the server sent since the last call, parsed."""
        self._parse()
        elements = self._pending[:]
        self._pending.clear()  # the parser appends to this very list
        return elements

    def next(self) -> domish.Element:
        """
        The next element the server sent, which must be there already:
        nothing the server does waits for real time. (Also usable as
        C{yield connection.next()} in C{inlineCallbacks}.)
        """
        self._parse()
        if not self._pending:
            raise AssertionError(f"nothing sent; output so far: {self.transport.value()!r}")
        return self._pending.pop(0)

    def nextNamed(self, name: str) -> domish.Element:
        """The next element called C{name}, skipping stream headers and features."""
        while True:
            element = self.next()
            if element.name == name:
                return element
            if element.name not in ("stream", "features"):
                raise AssertionError(f"expected <{name}/>, got {element.toXml()}")

    def streamError(self) -> str | None:
        """The condition of the stream error the server sent, if it did."""
        for element in self.received():
            if element.uri == NS_STREAMS and element.name == "error":
                condition = next(c for c in element.elements() if c.uri == NS_STREAM_ERRORS
                                 and c.name != "text")
                return condition.name
        return None

    def features(self) -> domish.Element:
        """The C{<stream:features/>} of the stream just opened."""
        for element in self.received():
            if element.uri == NS_STREAMS and element.name == "features":
                return element
        raise AssertionError("no stream features sent")


def mechanisms(features: domish.Element) -> list[str]:
    """The SASL mechanism names a C{<stream:features/>} offers."""
    for child in features.elements(NS_SASL, "mechanisms"):
        return [str(m) for m in child.elements(NS_SASL, "mechanism")]
    return []


@defer.inlineCallbacks
def addAccount(server: InviteServer, username: str, password: str, host: str = "localhost"):
    """Create an account through the registrar, as C{invitesrvctl adduser} does."""
    yield server.hosts[host].registrar.register(username, password, "cli", trusted=True)


@defer.inlineCallbacks
def login(connection: ClientConnection, username: str, password: str, resource: str = "test"):
    """
    Open a stream, authenticate with PLAIN (the connection must be
    encrypted) and bind C{resource}; fire with the bound full JID.
    """
    connection.openStream()
    connection.received()
    payload = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    connection.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    success = yield connection.nextNamed("success")
    assert success.uri == NS_SASL
    connection.openStream()
    connection.received()
    connection.send(f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{resource}"
                    "</resource></bind></iq>")
    reply = yield connection.nextNamed("iq")
    assert reply["type"] == "result", reply.toXml()
    return str(reply.bind.jid)


class Requests:
    """
    IQ requests for a test client with C{send}, C{expect} and an C{_ids}
    counter: the in-memory L{Client} and the socket client of C{test_roster}.
    """

    def request(self, payload: str, kind: str = "get", to: str | None = None) -> domish.Element:
        """Send an iq and return its result or error."""
        self._ids += 1
        iqId = f"q{self._ids}"
        address = f" to='{to}'" if to else ""
        self.send(f"<iq type='{kind}' id='{iqId}'{address}>{payload}</iq>")
        return self.expect(lambda e: e.name == "iq" and e.getAttribute("id") == iqId
                           and e.getAttribute("type") in ("result", "error"), what=f"reply to {iqId}")

    def rosterGet(self, ver: str | None = None, to: str | None = None) -> domish.Element:
        version = "" if ver is None else f" ver='{ver}'"
        return self.request(f"<query xmlns='{NS_ROSTER}'{version}/>", "get", to)

    def rosterSet(self, item: str, to: str | None = None) -> domish.Element:
        return self.request(f"<query xmlns='{NS_ROSTER}'>{item}</query>", "set", to)


class Client(Requests, ClientConnection):
    """
    A client logged in (PLAIN over an encrypted connection) and bound, as a
    user's client is: what it sends goes through the whole server, and the
    stanzas it receives are matched with L{expect}, which takes the first
    one a predicate accepts and keeps the others, so a test states what
    must arrive without depending on how pushes, results and presence
    interleave.
    """

    def __init__(self, server: InviteServer, username: str, resource: str = "r",
                 password: str = PASSWORD):
        ClientConnection.__init__(self, server, encrypted=True)
        self.jid = result(login(self, username, password, resource))
        self.bare = self.jid.split("/")[0]
        self.backlog: list[domish.Element] = []
        self._ids = 0

    def _collect(self) -> None:
        self.backlog += self.received()

    def expect(self, match, what: str = "stanza") -> domish.Element:
        """The first stanza received so far that C{match} accepts."""
        self._collect()
        for index, element in enumerate(self.backlog):
            if match(element):
                return self.backlog.pop(index)
        raise AssertionError(f"{self.jid}: no {what} in {[e.toXml() for e in self.backlog]}")

    def absent(self, match, what: str = "stanza") -> None:
        """Fail if a stanza C{match} accepts was received (everything sent has been, at once)."""
        self._collect()
        found = [e.toXml() for e in self.backlog if match(e)]
        assert not found, f"{self.jid}: unexpected {what}: {found}"

    def discard(self) -> None:
        """Forget everything received so far."""
        self._collect()
        self.backlog.clear()

    def close(self) -> None:
        """End the stream properly."""
        if not self.closed:
            self.send("</stream:stream>")

    def drop(self) -> None:
        """The connection dies: no closing tag."""
        self.stream.connectionLost(failure.Failure(error.ConnectionLost()))


def addAccounts(server: InviteServer, *usernames: str, password: str = PASSWORD) -> None:
    """Create accounts (all with C{password}) through the registrar of C{localhost}."""
    for username in usernames:
        result(addAccount(server, username, password))
