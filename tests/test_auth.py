"""
Stream negotiation in memory: stream headers, STARTTLS, every SASL failure
condition, resource binding and the authentication timeout, driven with raw
bytes through a real stream and authenticator, asserting on what the server
writes back.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
import scramp
from streamharness import (
    HEADER,
    NS_BIND,
    NS_SASL,
    NS_STREAMS,
    NS_TLS,
    ClientConnection,
    addAccount,
    login,
    mechanisms,
)
from twisted.internet import defer, task

from invitesrv.tls import loadContextFactory

PASSWORD = "correct horse"


@pytest.fixture
def server(servers):
    return servers()


def auth(mechanism: str | None, payload: bytes | str | None = None) -> str:
    """An C{<auth/>} element; bytes are base64-encoded, a str is sent as is."""
    attribute = f" mechanism='{mechanism}'" if mechanism else ""
    if isinstance(payload, bytes):
        payload = base64.b64encode(payload).decode() if payload else "="
    return f"<auth xmlns='{NS_SASL}'{attribute}>{payload or ''}</auth>"


def failureCondition(element) -> str:
    assert (element.uri, element.name) == (NS_SASL, "failure"), element.toXml()
    return next(c.name for c in element.elements() if c.name != "text")


def encryptedStream(server) -> ClientConnection:
    """A connection that is already encrypted (as after direct TLS), stream open."""
    connection = ClientConnection(server, encrypted=True)
    connection.openStream()
    connection.received()
    return connection


# -- stream headers -------------------------------------------------------------


def test_headerAnswered(server):
    """A good header is answered with ours (from, id, version) and the features."""
    connection = ClientConnection(server)
    connection.openStream()
    header, features = connection.received()
    assert (header.uri, header.name) == (NS_STREAMS, "stream")
    assert header["from"] == "localhost" and header["version"] == "1.0"
    assert len(header["id"]) >= 16
    assert (features.uri, features.name) == (NS_STREAMS, "features")


@pytest.mark.parametrize("to", ["example.org", "alice@localhost", "", "local host"])
def test_hostUnknown(server, to):
    """A stream to a domain this server does not serve (or to no domain) is refused."""
    connection = ClientConnection(server)
    connection.send(HEADER.format(to=to) if to else HEADER.replace(" to='{to}'", ""))
    assert connection.streamError() == "host-unknown"
    assert connection.closed


@pytest.mark.parametrize("header", [
    HEADER.replace("xmlns='jabber:client'", "xmlns='jabber:server'"),
    HEADER.replace("http://etherx.jabber.org/streams", "urn:example:streams"),
    HEADER.replace("stream:stream", "stream:flow"),
])
def test_invalidNamespace(server, header):
    connection = ClientConnection(server)
    connection.send(header.format(to="localhost"))
    assert connection.streamError() == "invalid-namespace"


@pytest.mark.parametrize("version", ["0.9", None, "one"])
def test_unsupportedVersion(server, version):
    """RFC 6120 needs version 1.0; older or missing versions are refused."""
    attribute = f" version='{version}'" if version else ""
    connection = ClientConnection(server)
    connection.send(f"<stream:stream xmlns='jabber:client' xmlns:stream='{NS_STREAMS}'"
                    f" to='localhost'{attribute}>")
    assert connection.streamError() == "unsupported-version"


def test_newerMinorVersion(server):
    """A 1.x header is answered as 1.0."""
    connection = ClientConnection(server)
    connection.send(HEADER.format(to="localhost").replace("'1.0'", "'1.5'"))
    header, _ = connection.received()
    assert header["version"] == "1.0"


def test_stanzaBeforeAuthentication(server):
    """A message or presence before authentication ends the stream."""
    connection = encryptedStream(server)
    connection.send("<message to='bob@localhost'><body>hi</body></message>")
    assert connection.streamError() == "not-authorized"


# -- STARTTLS and what is offered -------------------------------------------------


@pytest.fixture
def tlsServer(servers, tmp_path):
    server = servers()
    server.tls = loadContextFactory(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"],
                                    generate=True)
    return server


def test_tlsRequiredFirst(tlsServer):
    """Before TLS only STARTTLS is offered, marked required: no SASL at all."""
    connection = ClientConnection(tlsServer)
    connection.openStream()
    features = connection.features()
    starttls = next(features.elements(NS_TLS, "starttls"))
    assert next(starttls.elements(NS_TLS, "required"), None) is not None
    assert mechanisms(features) == []


def test_startTLS(tlsServer):
    """<starttls/> gets <proceed/>, TLS starts, and the new stream offers PLAIN too."""
    connection = ClientConnection(tlsServer)
    connection.openStream()
    connection.received()
    connection.send(f"<starttls xmlns='{NS_TLS}'/>")
    (proceed,) = connection.received()
    assert (proceed.uri, proceed.name) == (NS_TLS, "proceed")
    assert connection.transport.tlsContext is tlsServer.tls
    assert connection.authenticator.encrypted
    connection.openStream()
    features = connection.features()
    assert next(features.elements(NS_TLS, "starttls"), None) is None
    assert mechanisms(features) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    connection.send(f"<starttls xmlns='{NS_TLS}'/>")
    (failure,) = connection.received()
    assert (failure.uri, failure.name) == (NS_TLS, "failure")
    assert connection.closed


def test_plainNotOfferedBeforeTLS(servers):
    """Without encryption (allowed by config) PLAIN is neither offered nor accepted."""
    server = servers(require_encryption=False)
    connection = ClientConnection(server)
    connection.openStream()
    assert mechanisms(connection.features()) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]
    connection.send(auth("PLAIN", b"\0alice\0" + PASSWORD.encode()))
    assert failureCondition(connection.received()[0]) == "invalid-mechanism"


@pytest_twisted.inlineCallbacks
def test_encryptionRequired(tlsServer):
    """SASL before TLS, when encryption is required, fails with encryption-required."""
    yield addAccount(tlsServer, "alice", PASSWORD)
    connection = ClientConnection(tlsServer)
    connection.openStream()
    connection.received()
    connection.send(auth("SCRAM-SHA-256", b"n,,n=alice,r=abcdef"))
    assert failureCondition((yield connection.next())) == "encryption-required"


# -- SASL -----------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_plainSuccess(server):
    """PLAIN over an encrypted stream: success, stream restart, bind features."""
    yield addAccount(server, "alice", PASSWORD)
    connection = encryptedStream(server)
    connection.send(auth("PLAIN", b"\0alice\0" + PASSWORD.encode()))
    success = yield connection.next()
    assert (success.uri, success.name) == (NS_SASL, "success")
    connection.openStream()
    features = connection.features()
    assert next(features.elements(NS_BIND, "bind"), None) is not None
    assert mechanisms(features) == []


@pytest.mark.parametrize(("payload", "condition"), [
    (b"\0alice\0wrong horse", "not-authorized"),
    (b"\0nobody\0" + PASSWORD.encode(), "not-authorized"),
    (b"\0\0" + PASSWORD.encode(), "not-authorized"),
    (b"bob@localhost\0alice\0" + PASSWORD.encode(), "invalid-authzid"),
    (b"alice\0" + PASSWORD.encode(), "malformed-request"),
    (None, "malformed-request"),
    ("!!!not base64!!!", "incorrect-encoding"),
])
@pytest_twisted.inlineCallbacks
def test_plainFailures(server, payload, condition):
    """Each wrong PLAIN attempt gets its own failure condition; the stream stays open."""
    yield addAccount(server, "alice", PASSWORD)
    connection = encryptedStream(server)
    connection.send(auth("PLAIN", payload))
    assert failureCondition((yield connection.next())) == condition
    assert not connection.closed
    connection.send(auth("PLAIN", b"\0alice\0" + PASSWORD.encode()))
    assert (yield connection.next()).name == "success"


def test_invalidMechanism(server):
    connection = encryptedStream(server)
    connection.send(auth("DIGEST-MD5", b"x"))
    assert failureCondition(connection.received()[0]) == "invalid-mechanism"
    connection.send(auth(None, b"x"))
    assert failureCondition(connection.received()[0]) == "malformed-request"


def test_responseWithoutExchange(server):
    """A <response/> with no exchange under way is malformed."""
    connection = encryptedStream(server)
    connection.send(f"<response xmlns='{NS_SASL}'>abcd</response>")
    assert failureCondition(connection.received()[0]) == "malformed-request"


@defer.inlineCallbacks
def scramExchange(connection, username: str, password: str, mechanism: str = "SCRAM-SHA-256"):
    """Run SCRAM as a client; fire with the server's last element and the client."""
    client = scramp.ScramClient([mechanism], username, password)
    connection.send(auth(mechanism, client.get_client_first().encode()))
    challenge = yield connection.next()
    if challenge.name != "challenge":
        return challenge, client
    client.set_server_first(base64.b64decode(str(challenge)).decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    connection.send(f"<response xmlns='{NS_SASL}'>{final}</response>")
    return (yield connection.next()), client


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
@pytest_twisted.inlineCallbacks
def test_scramSuccess(server, mechanism):
    """SCRAM succeeds and the server proves it knows the credentials too."""
    yield addAccount(server, "alice", PASSWORD)
    connection = encryptedStream(server)
    success, client = yield scramExchange(connection, "alice", PASSWORD, mechanism)
    assert success.name == "success", success.toXml()
    client.set_server_final(base64.b64decode(str(success)).decode())  # raises if forged


@pytest_twisted.inlineCallbacks
def test_scramWrongPasswordAndUnknownUser(server):
    """
    A wrong password and an unknown user look the same: a challenge, then
    not-authorized at the very end (no username oracle).
    """
    yield addAccount(server, "alice", PASSWORD)
    for username, password in (("alice", "wrong horse"), ("mallory", PASSWORD)):
        connection = encryptedStream(server)
        failure, _ = yield scramExchange(connection, username, password)
        assert failureCondition(failure) == "not-authorized"


@pytest_twisted.inlineCallbacks
def test_scramMalformed(server):
    """A client-first message that is not SCRAM, or asks for channel binding, is malformed."""
    for first in (b"hello", b"p=tls-unique,,n=alice,r=abc", b"n,,r=abc"):
        connection = encryptedStream(server)
        connection.send(auth("SCRAM-SHA-256", first))
        assert failureCondition((yield connection.next())) == "malformed-request"


@pytest_twisted.inlineCallbacks
def test_abort(server):
    """<abort/> ends the exchange with <aborted/>; a new one may start."""
    yield addAccount(server, "alice", PASSWORD)
    connection = encryptedStream(server)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    connection.send(auth("SCRAM-SHA-256", client.get_client_first().encode()))
    assert (yield connection.next()).name == "challenge"
    connection.send(f"<abort xmlns='{NS_SASL}'/>")
    assert failureCondition((yield connection.next())) == "aborted"
    success, _ = yield scramExchange(connection, "alice", PASSWORD)
    assert success.name == "success"


@pytest_twisted.inlineCallbacks
def test_tooManyFailures(server):
    """The fifth wrong password ends the stream with policy-violation."""
    connection = encryptedStream(server)
    for _ in range(5):
        connection.send(auth("PLAIN", b"\0alice\0wrong"))
        assert failureCondition((yield connection.next())) == "not-authorized"
    assert connection.streamError() == "policy-violation"


# -- binding -----------------------------------------------------------------------------


def bindRequest(resource: str | None, iqID: str = "b1") -> str:
    inner = f"<resource>{resource}</resource>" if resource is not None else ""
    return f"<iq type='set' id='{iqID}'><bind xmlns='{NS_BIND}'>{inner}</bind></iq>"


@defer.inlineCallbacks
def authenticated(server, username: str = "alice") -> ClientConnection:
    """An encrypted connection that has authenticated and restarted its stream."""
    connection = encryptedStream(server)
    connection.send(auth("PLAIN", f"\0{username}\0{PASSWORD}".encode()))
    assert (yield connection.next()).name == "success"
    connection.openStream()
    connection.received()
    return connection


@pytest_twisted.inlineCallbacks
def test_bindServerChosenResource(server):
    """Without a requested resource the server picks a random one."""
    yield addAccount(server, "alice", PASSWORD)
    connection = yield authenticated(server)
    connection.send(bindRequest(None))
    (reply,) = connection.received()
    assert reply["type"] == "result" and reply["id"] == "b1"
    full = str(reply.bind.jid)
    user, resource = full.split("/")
    assert user == "alice@localhost" and len(resource) >= 8
    assert server.router.resourcesOf("alice@localhost")[resource].full == full


@pytest_twisted.inlineCallbacks
def test_bindRequestedResource(server):
    """A requested resource is resourceprepped and used."""
    yield addAccount(server, "alice", PASSWORD)
    connection = yield authenticated(server)
    connection.send(bindRequest("Phone ☃"))
    (reply,) = connection.received()
    assert str(reply.bind.jid) == "alice@localhost/Phone ☃"


@pytest_twisted.inlineCallbacks
def test_bindBadResource(server):
    """A resource that fails resourceprep gets bad-request; nothing is bound."""
    yield addAccount(server, "alice", PASSWORD)
    connection = yield authenticated(server)
    connection.send(bindRequest("private\ue000use"))
    (reply,) = connection.received()
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "bad-request"
    assert server.router.resourcesOf("alice@localhost") == {}


@pytest_twisted.inlineCallbacks
def test_bindConflictReplacesOlderSession(server):
    """Binding a resource that is in use ends the older session with <conflict/>."""
    yield addAccount(server, "alice", PASSWORD)
    first = ClientConnection(server, encrypted=True)
    full = yield login(first, "alice", PASSWORD, "desk")
    older = server.router.session(first.authenticator.session.jid)
    second = ClientConnection(server, encrypted=True)
    assert (yield login(second, "alice", PASSWORD, "desk")) == full
    assert first.streamError() == "conflict" and first.closed
    assert not second.closed
    newer = server.router.session(second.authenticator.session.jid)
    assert newer is second.authenticator.session and newer is not older


@pytest_twisted.inlineCallbacks
def test_bindBeforeAuthentication(server):
    """A bind before authentication is not a bind: an error, and no session."""
    yield addAccount(server, "alice", PASSWORD)
    connection = encryptedStream(server)
    connection.send(bindRequest("desk"))
    (reply,) = connection.received()
    assert reply["type"] == "error"
    assert connection.authenticator.session is None
    assert server.router.resourcesOf("alice@localhost") == {}


@pytest_twisted.inlineCallbacks
def test_stanzaBeforeBind(server):
    """Authenticated but unbound: a stanza other than bind ends the stream."""
    yield addAccount(server, "alice", PASSWORD)
    connection = yield authenticated(server)
    connection.send("<message to='alice@localhost'><body>hi</body></message>")
    assert connection.streamError() == "not-authorized"


@pytest_twisted.inlineCallbacks
def test_legacySessionBeforeBind(server):
    """RFC 3921 session establishment is answered (old clients send it) and harmless."""
    yield addAccount(server, "alice", PASSWORD)
    connection = yield authenticated(server)
    connection.send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    (reply,) = connection.received()
    assert reply["type"] == "result" and reply["id"] == "s1"
    connection.send(bindRequest("desk"))
    assert connection.received()[0]["type"] == "result"


# -- the authentication timeout ------------------------------------------------------------


def test_authTimeout(servers):
    """A connection that does not authenticate in time gets connection-timeout."""
    clock = task.Clock()
    server = servers(clock, limits={"auth_timeout": 30})
    connection = ClientConnection(server)
    connection.openStream()
    connection.received()
    clock.advance(29.9)
    assert not connection.closed
    clock.advance(0.1)
    assert connection.streamError() == "connection-timeout"
    assert connection.closed


def test_authTimeoutWithoutHeader(servers):
    """Even a connection that never sends a byte is closed (a header is sent first)."""
    clock = task.Clock()
    connection = ClientConnection(servers(clock))
    clock.advance(60)
    assert connection.streamError() == "connection-timeout"


@pytest_twisted.inlineCallbacks
def test_authTimeoutUntilBound(servers):
    """Authenticating is not enough: the resource must be bound in time too."""
    clock = task.Clock()
    server = servers(clock)
    yield addAccount(server, "alice", PASSWORD)
    connection = yield authenticated(server)
    clock.advance(60)
    assert connection.streamError() == "connection-timeout"


@pytest_twisted.inlineCallbacks
def test_noTimeoutOnceBound(servers):
    """A bound session is not on the timer any more."""
    clock = task.Clock()
    server = servers(clock)
    yield addAccount(server, "alice", PASSWORD)
    connection = ClientConnection(server, encrypted=True)
    yield login(connection, "alice", PASSWORD)
    clock.advance(3600)
    assert not connection.closed
    assert clock.getDelayedCalls() == []
