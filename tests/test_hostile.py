"""
Hostile and broken clients against a real server process, in raw XML over
TCP and TLS. Each bad connection gets its stream or SASL error; after each
one a fresh client still logs in, and a client that stayed connected all
along is never disturbed. A connection that never authenticates is closed
after C{[limits] auth_timeout}.
"""

from __future__ import annotations

import base64
import time

import pytest
from conftest import RunningServer
from rawxmpp import NS_STREAM_HEADER, RawClient

PASSWORD = "correct horse"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
HEADER = NS_STREAM_HEADER.format(host="localhost")
HEADER_WITHOUT_DECLARATION = HEADER.replace("<?xml version='1.0'?>", "")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, with a short authentication timeout."""
    running = RunningServer(tmp_path_factory.mktemp("hostile"), "[limits]\nauth_timeout = 1\n")
    running.start()
    running.adduser("alice@localhost", PASSWORD)
    running.adduser("bob@localhost", PASSWORD)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def bystander(server):
    """Bob, logged in before the first hostile connection and kept open until the end."""
    client = RawClient(server.port)
    client.login("bob", PASSWORD, "bystander")
    yield client
    client.close()


@pytest.fixture
def afterwards(server, bystander):
    """After each test: a fresh client logs in, and the bystander still answers."""
    yield
    with RawClient(server.port) as fresh:
        assert fresh.login("alice", PASSWORD, "fresh") == "alice@localhost/fresh"
    assertAlive(bystander, "after")


def assertAlive(client: RawClient, iqID: str) -> None:
    """The client's connection is open and bound: the server answers its ping."""
    client.send(f"<iq type='get' id='{iqID}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = client.recvUntil(rf"<iq[^>]*id='{iqID}'[^>]*(/>|>.*?</iq>)")
    assert "type='result'" in reply, reply


def assertStreamError(client: RawClient, condition: str) -> None:
    """The server sent <stream:error> with C{condition}, closed the stream, and hung up."""
    text = client.recvUntil(r"</stream:stream>")
    error = text[text.index("<stream:error"):]
    assert f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in error, text
    assert client.isClosed(), "the connection stayed open after the stream error"


def saslFailure(client: RawClient) -> str:
    text = client.recvUntil(r"<failure[^>]*>.*?</failure>")
    return text[text.index("<failure"):]


def authenticated(server) -> RawClient:
    """A client that has done STARTTLS and SCRAM and restarted the stream, but not bound."""
    client = RawClient(server.port)
    client.startTLS()
    assert "<success" in client.scram("alice", PASSWORD)
    client.openStream()
    return client


def bound(server, resource: str = "hostile") -> RawClient:
    client = RawClient(server.port)
    client.login("alice", PASSWORD, resource)
    return client


pytestmark = pytest.mark.usefixtures("afterwards")


# -- forbidden XML, before anything else ---------------------------------------------


@pytest.mark.parametrize("data", [
    "<?xml version='1.0'?><!DOCTYPE stream:stream>",
    "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
    "<!ENTITY lol1 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]>",
    "<?xml version='1.0'?><!-- hello -->",
    HEADER + "<?evil instruction?>",
    HEADER + "<!-- a comment in the stream -->",
], ids=["doctype", "entities", "comment", "pi", "comment-in-stream"])
def test_restrictedXML(server, data):
    with RawClient(server.port) as client:
        client.send(data)
        assertStreamError(client, "restricted-xml")


def test_invalidUTF8(server):
    with RawClient(server.port) as client:
        client.openStream()
        client.send(b"<iq type='get' id='x'><q xmlns='\xc3\x28'/></iq>")
        assertStreamError(client, "not-well-formed")


def test_headerInsideStream(server):
    with RawClient(server.port) as client:
        client.openStream()
        client.send(HEADER_WITHOUT_DECLARATION)
        assertStreamError(client, "unsupported-stanza-type")


# -- stream headers ----------------------------------------------------------------------


@pytest.mark.parametrize(("header", "condition"), [
    (HEADER.replace("'localhost'", "'example.org'"), "host-unknown"),
    (HEADER.replace("xmlns='jabber:client'", "xmlns='jabber:server'"), "invalid-namespace"),
    (HEADER_WITHOUT_DECLARATION.replace("version='1.0'", "version='0.9'"), "unsupported-version"),
    (HEADER_WITHOUT_DECLARATION.replace(" version='1.0'", ""), "unsupported-version"),
], ids=["host-unknown", "namespace", "version-0.9", "no-version"])
def test_badHeader(server, header, condition):
    with RawClient(server.port) as client:
        client.send(header)
        assertStreamError(client, condition)


# -- limits ----------------------------------------------------------------------------------


def test_oversizedStanzaBeforeAuth(server):
    """A stanza over the 10 000-byte pre-authentication limit."""
    with RawClient(server.port) as client:
        client.openStream()
        client.send(f"<iq type='get' id='big'><query xmlns='jabber:iq:register'>{'x' * 12_000}"
                    "</query></iq>")
        assertStreamError(client, "policy-violation")


def test_tooDeep(server):
    with RawClient(server.port) as client:
        client.openStream()
        client.send("<iq type='get' id='deep'>" + "<a xmlns='x'>" * 120)
        assertStreamError(client, "policy-violation")


def test_tooManyAttributes(server):
    with RawClient(server.port) as client:
        client.openStream()
        attributes = " ".join(f"a{n}='v'" for n in range(100))
        client.send(f"<iq type='get' id='attrs' {attributes}><q xmlns='x'/></iq>")
        assertStreamError(client, "policy-violation")


# -- SASL -------------------------------------------------------------------------------------


def test_saslBeforeTLS(server):
    """With encryption required, no mechanism is offered and SASL is refused before TLS."""
    with RawClient(server.port) as client:
        features = client.openStream()
        assert "<starttls" in features and "<required/>" in features
        assert "<mechanisms" not in features
        client.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>"
                    f"{base64.b64encode(b'n,,n=alice,r=abc').decode()}</auth>")
        assert "<encryption-required/>" in saslFailure(client)


def test_plainBeforeTLS(server):
    """PLAIN before TLS would put the password on the wire in clear: refused."""
    with RawClient(server.port) as client:
        client.openStream()
        payload = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
        client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        assert "<encryption-required/>" in saslFailure(client)
        assert not client.isClosed(0.2)
    with RawClient(server.port) as client:
        assert "<mechanism>PLAIN</mechanism>" in client.startTLS()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_wrongPassword(server, mechanism):
    with RawClient(server.port) as client:
        client.startTLS()
        result = client.scram("alice", "wrong horse", mechanism)
        assert "<not-authorized/>" in result, result
        assert "<success" in client.scram("alice", PASSWORD, mechanism)


def test_wrongPasswordPlain(server):
    with RawClient(server.port) as client:
        client.startTLS()
        payload = base64.b64encode(b"\0alice\0wrong horse").decode()
        client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        assert "<not-authorized/>" in saslFailure(client)


def test_unknownMechanism(server):
    with RawClient(server.port) as client:
        client.startTLS()
        client.send(f"<auth xmlns='{NS_SASL}' mechanism='X-OAUTH2'>AAAA</auth>")
        assert "<invalid-mechanism/>" in saslFailure(client)


def test_badBase64(server):
    with RawClient(server.port) as client:
        client.startTLS()
        client.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>%%%</auth>")
        assert "<incorrect-encoding/>" in saslFailure(client)


def test_passwordGuessing(server):
    """Five wrong passwords on one connection end it."""
    with RawClient(server.port) as client:
        client.startTLS()
        payload = base64.b64encode(b"\0alice\0guess").decode()
        for _ in range(5):
            client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
            assert "<not-authorized/>" in saslFailure(client)
        assertStreamError(client, "policy-violation")


# -- out of order -----------------------------------------------------------------------------


def test_stanzaBeforeAuth(server):
    with RawClient(server.port) as client:
        client.startTLS()
        client.send("<message to='bob@localhost/bystander'><body>spam</body></message>")
        assertStreamError(client, "not-authorized")


def test_bindBeforeAuth(server, bystander):
    """A bind before authentication binds nothing and reaches no one."""
    with RawClient(server.port) as client:
        client.startTLS()
        client.send(f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'><resource>bystander"
                    "</resource></bind></iq>")
        reply = client.recvUntil(r"<iq[^>]*id='b1'.*?</iq>")
        assert "type='error'" in reply and "<jid>" not in reply
    assertAlive(bystander, "after-bind")


def test_stanzaBeforeBind(server):
    with authenticated(server) as client:
        client.send("<message to='bob@localhost/bystander'><body>early</body></message>")
        assertStreamError(client, "not-authorized")


def test_spoofedFrom(server, bystander):
    """A stanza claiming to be from someone else ends the stream and is not delivered."""
    with bound(server) as client:
        client.send("<message from='bob@localhost/other' to='bob@localhost/bystander'>"
                    "<body>spoofed</body></message>")
        assertStreamError(client, "invalid-from")
    assertAlive(bystander, "after-spoof")
    assert "spoofed" not in bystander.readAll(0.2)


def test_whitespaceKeepalives(server):
    """Whitespace between stanzas is a keepalive, before and after authentication."""
    with RawClient(server.port) as client:
        client.openStream()
        client.send(" ")
        client.send("\n")
        assert not client.isClosed(0.2)
    with bound(server) as client:
        for _ in range(20):
            client.send(" \n")
        assertAlive(client, "keepalive")


# -- the authentication timeout ----------------------------------------------------------------


def test_authTimeout(server):
    """A connection that opens a stream and then waits is closed after auth_timeout (1 s)."""
    with RawClient(server.port) as client:
        started = time.monotonic()
        client.openStream()
        assertStreamError(client, "connection-timeout")
        assert 0.8 < time.monotonic() - started < 5


def test_authTimeoutSilent(server):
    """So is a connection that never sends a byte; it gets a header and the error."""
    with RawClient(server.port) as client:
        text = client.recvUntil(r"</stream:stream>", timeout=5)
        assert "<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in text
        assert client.isClosed()


def test_authTimeoutAfterTLS(server):
    """Starting TLS does not stop the clock."""
    with RawClient(server.port) as client:
        client.startTLS()
        assertStreamError(client, "connection-timeout")


def test_bystanderUndisturbed(server, bystander):
    """The client connected before all of the above is still bound and answered."""
    time.sleep(1.2)  # longer than auth_timeout: bound sessions are not on the clock
    assertAlive(bystander, "final")
