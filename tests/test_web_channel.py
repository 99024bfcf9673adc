"""
The HTTP connection under the server's limits, byte by byte: the site's
channels on a L{StringTransport} and a L{task.Clock}, as the real listener
builds them. A client that drips header lines is cut at the header deadline
although each line would reset twisted.web's idle timeout; a slow body at the
body deadline; the limiter's HTTP pool admits or refuses each connection; a
body over its route's cap is refused with 413 before it is read (by its
Content-Length, or counted when chunked); and the API key is checked before
the body is read, with the channel reading nothing meanwhile.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from invitesrv.config import Config, HostOptions, Limits
from invitesrv.service import InviteServer
from invitesrv.web.api import hashSecret
from invitesrv.web.site import makeSite

HOST = "example.org"
KEY_ID, SECRET = "0123456789abcdef", "s3cret"
LIMITS = Limits(allowlist=(), http_max_connections=3, http_max_connections_per_address=2,
                http_connection_rate=0, http_header_timeout=20, http_body_timeout=30)


class Store:
    """The store calls a request makes before its body: API keys, answered when the test says."""

    def __init__(self):
        self.pending: list[defer.Deferred] = []

    def getApiKey(self, keyId):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def answer(self, keyId: str) -> None:
        """Fire the oldest key lookup: the test's key is valid for HOST, any other unknown."""
        row = (hashSecret(SECRET), HOST) if keyId == KEY_ID else None
        self.pending.pop(0).callback(row)


class Web:
    """A site built as the server builds it, on a Clock, with connections made by hand."""

    def __init__(self, limits: Limits = LIMITS):
        self.clock = task.Clock()
        self.store = Store()
        config = Config(hosts={HOST: HostOptions()}, modules=(), limits=limits)
        self.server = InviteServer(config, store=self.store, reactor=self.clock, loadModules=False)
        self.site = makeSite(self.server)

    def connect(self, address: str = "192.0.2.1"):
        """A new connection from C{address}: (channel, transport)."""
        peer = IPv4Address("TCP", address, 40000)
        channel = self.site.buildProtocol(peer)
        transport = StringTransport(IPv4Address("TCP", "127.0.0.1", 80), peer)
        channel.makeConnection(transport)
        return channel, transport

    @property
    def metrics(self):
        return self.server.metrics


def closed(transport: StringTransport) -> bool:
    return transport.disconnecting or transport.disconnected


def lose(channel, transport: StringTransport) -> None:
    """The connection ends (the peer or the transport closed it)."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    transport.disconnected = True
    channel.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def web():
    return Web()


def test_dripIsCutAtTheHeaderDeadline(web):
    """
    One header line every 5 seconds keeps resetting twisted.web's idle
    timeout, but the request line and headers must be complete within
    http_header_timeout (20 s): the client gets 408 and the connection ends;
    the limiter counts it.
    """
    channel, transport = web.connect()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: example.org\r\n")
    for n in range(3):
        web.clock.advance(5)
        channel.dataReceived(b"X-Drip-%d: x\r\n" % n)
        assert not closed(transport)
    web.clock.advance(5)
    assert closed(transport)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert web.metrics["http.request-timeout"] == 1
    lose(channel, transport)
    assert web.server.limiter.webConnections.total == 0


def test_slowBodyIsCutAtTheBodyDeadline(web):
    """A body that trickles in is cut at http_body_timeout (30 s) after its headers."""
    channel, transport = web.connect()
    channel.dataReceived(b"POST /register/abc HTTP/1.1\r\nHost: example.org\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: 100\r\n\r\n")
    for _ in range(5):
        web.clock.advance(5)
        channel.dataReceived(b"a=b&")
    assert not closed(transport)
    web.clock.advance(5)
    assert closed(transport) and transport.value().startswith(b"HTTP/1.1 408 ")
    assert web.metrics["http.body-timeout"] == 1


def test_idleKeepAliveEndsQuietly(web):
    """
    After an answer, a keep-alive connection has http_header_timeout to send
    its next request; if it sends nothing, it is closed without a 408 and
    without being counted as slow.
    """
    channel, transport = web.connect()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    web.clock.advance(19)
    assert not closed(transport)
    web.clock.advance(1)
    assert closed(transport) and transport.value() == b""
    assert web.metrics["http.request-timeout"] == 0


def test_connectionsAdmittedByTheLimiter(web):
    """
    HTTP connections go through the limiter's HTTP pool: the third from one
    address (cap 2) gets 429 and is closed, the fourth overall (cap 3) 503;
    one that ends makes room again. XMPP's pool is untouched.
    """
    first, _ = web.connect("192.0.2.1")
    second, _ = web.connect("192.0.2.1")
    third, transport = web.connect("192.0.2.1")
    assert transport.value().startswith(b"HTTP/1.1 429 ") and closed(transport)
    assert b"Too many connections from your address" in transport.value()
    other, _ = web.connect("198.51.100.7")
    fourth, transport = web.connect("198.51.100.8")
    assert transport.value().startswith(b"HTTP/1.1 503 ") and closed(transport)
    fourth.dataReceived(b"GET / HTTP/1.1\r\n\r\n")  # a refused connection reads nothing
    assert transport.value().count(b"HTTP/1.1") == 1
    lose(second, second.transport)
    again, transport = web.connect("192.0.2.1")
    assert not closed(transport)
    assert (web.metrics["http.refused"], web.metrics["http.accepted"]) == (2, 4)
    assert web.server.limiter.connections.total == 0


def test_bodyOverTheCapRefusedBeforeItIsRead(web):
    """
    A Content-Length over the route's cap (64 KiB for the API) is answered
    413 in JSON at once, before the key is looked at and with no
    "100 Continue"; the connection ends and nothing of the body is kept.
    """
    channel, transport = web.connect()
    channel.dataReceived(b"POST /api/v1/invites HTTP/1.1\r\nHost: example.org\r\n"
                         b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 500000000\r\n\r\n" + b"x" * 1000)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "too-large"
    assert closed(transport) and web.store.pending == []


def test_pagesTakeNoBody(web):
    """An invite page takes no body at all: any is refused (413), as a page."""
    channel, transport = web.connect()
    channel.dataReceived(b"GET /invite/abc HTTP/1.1\r\nHost: example.org\r\n"
                         b"Content-Length: 10\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ") and closed(transport)
    assert b"text/html" in transport.value()


def test_chunkedBodyCutAtTheCap(web):
    """
    A chunked body has no length to check: its bytes are counted as they
    come and the request is refused (413) once they pass the form's cap
    (64 KiB); what came is dropped and the rest never read.
    """
    channel, transport = web.connect()
    channel.dataReceived(b"POST /register/abc HTTP/1.1\r\nHost: example.org\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"4000\r\n" + b"a" * 0x4000 + b"\r\n"
    for _ in range(4):
        channel.dataReceived(chunk)
        assert transport.value() == b""
    channel.dataReceived(chunk)
    assert transport.value().startswith(b"HTTP/1.1 413 ") and closed(transport)
    assert channel.requests == [] or len(channel.requests[0].content.getvalue()) == 0


@pytest.mark.parametrize("key, code", [("0123456789abcdef.wrong", 401), ("unknown.key", 401)])
def test_apiKeyCheckedBeforeTheBody(web, key, code):
    """
    A body for a private API route is read only after its key is found
    valid: while the store is asked, the channel reads nothing (paused) and
    sends no "100 Continue"; a wrong key is answered 401 and the connection
    ends with the body unread.
    """
    channel, transport = web.connect()
    channel.dataReceived(b"POST /api/v1/invites HTTP/1.1\r\nHost: example.org\r\n"
                         b"Authorization: Bearer " + key.encode() + b"\r\n"
                         b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 20\r\n\r\n")
    assert transport.producerState == "paused" and transport.value() == b""
    web.store.answer(key.split(".")[0])
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 %d " % code) and closed(transport)
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "unauthorized"


def test_bodyReadOnceTheKeyIsValid(web):
    """
    With a valid key the channel asks for the body ("100 Continue"), reads
    what came meanwhile and the rest, and the API answers it (here: not
    JSON, 400), checking the key once.
    """
    channel, transport = web.connect()
    channel.dataReceived(b"POST /api/v1/invites HTTP/1.1\r\nHost: example.org\r\n"
                         b"Authorization: Bearer " + f"{KEY_ID}.{SECRET}".encode() + b"\r\n"
                         b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                         b"Content-Length: 10\r\n\r\nnot ")
    assert transport.producerState == "paused"
    web.store.answer(KEY_ID)
    assert transport.producerState == "producing"
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    channel.dataReceived(b"json!!")
    answer = transport.value().split(b"\r\n\r\n", 1)[1]
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert "not valid JSON" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["message"]
    assert web.store.pending == [] and not closed(transport)


def test_unknownApiRouteRefusedBeforeTheBody(web):
    """A body for an API path that does not exist is refused (404) before it is read."""
    channel, transport = web.connect()
    channel.dataReceived(b"POST /api/v1/nothing HTTP/1.1\r\nHost: example.org\r\n"
                         b"Content-Length: 1000\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 ") and closed(transport)


def test_keyCheckOutlivedByTheDeadline(web):
    """
    A key lookup slower than the body deadline: the request is cut (408) at
    the deadline, and the late answer of the store changes nothing.
    """
    channel, transport = web.connect()
    channel.dataReceived(b"POST /api/v1/invites HTTP/1.1\r\nHost: example.org\r\n"
                         b"Authorization: Bearer " + f"{KEY_ID}.{SECRET}".encode() + b"\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    web.clock.advance(30)
    assert transport.value() == b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n" \
                                b"Connection: close\r\n\r\n"
    web.store.answer(KEY_ID)
    assert transport.value().count(b"HTTP/1.1 ") == 1


def test_trustedProxiesHeldOnlyToTheTotal():
    """
    A reverse proxy in server.trusted_proxies brings many clients'
    connections from one address: it is not held to the per-address cap,
    only to the total.
    """
    web = Web()
    config = Config(hosts={HOST: HostOptions()}, modules=(), limits=LIMITS,
                    trusted_proxies=("192.0.2.80",))
    web.server = InviteServer(config, store=web.store, reactor=web.clock, loadModules=False)
    web.site = makeSite(web.server)
    transports = [web.connect("192.0.2.80")[1] for _ in range(4)]
    assert [closed(t) for t in transports] == [False, False, False, True]
    assert transports[-1].value().startswith(b"HTTP/1.1 503 ")
