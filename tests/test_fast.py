"""
SASL2, Bind2 and FAST in memory on a Clock: what depends on time (token
expiry, rotation once half the lifetime is over) and the protocol's edges
(abort, a response with no exchange, inline work that fails, a second
authentication), which the end-to-end tests over TLS in C{test_sasl2} do
not reach. Without TLS the stream offers HT-SHA-256-NONE only.
"""

from __future__ import annotations

import base64
import hmac
import re

import pytest
from streamharness import PASSWORD, ClientConnection, addAccounts
from twisted.internet import task

from invitesrv.xmpp.channelbinding import endPointHash

NS_SASL2 = "urn:xmpp:sasl:2"
NS_FAST = "urn:xmpp:fast:0"
DAY = 86400
AGENT = "<user-agent id='d1'><software>unit</software></user-agent>"


@pytest.fixture
def clock():
    clock = task.Clock()
    clock.advance(1_700_000_000)
    return clock


@pytest.fixture
def server(servers, clock):
    server = servers(clock, modules=("sasl2", "bind2", "fast", "carbons", "csi"),
                     module_options={"fast": {"token_lifetime": 20 * DAY}})
    addAccounts(server, "alice")
    return server


def connect(server) -> ClientConnection:
    connection = ClientConnection(server, encrypted=True)
    connection.openStream()
    connection.received()
    return connection


def authenticate(connection, mechanism: str, initial: bytes, inline: str = ""):
    payload = base64.b64encode(initial).decode()
    connection.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'>"
                    f"<initial-response>{payload}</initial-response>{inline}</authenticate>")
    return connection.next()


def plain(connection, inline: str = ""):
    return authenticate(connection, "PLAIN", f"\0alice\0{PASSWORD}".encode(), inline)


def fast(connection, token: str, inline: str = ""):
    proof = hmac.digest(token.encode(), b"Initiator", "sha256")
    return authenticate(connection, "HT-SHA-256-NONE", b"alice\0" + proof, AGENT + inline)


def issuedToken(success) -> str | None:
    for token in success.elements(NS_FAST, "token"):
        return token["token"]
    return None


def newToken(server) -> str:
    success = plain(connect(server), AGENT + f"<request-token xmlns='{NS_FAST}' "
                    "mechanism='HT-SHA-256-NONE'/>")
    assert success.name == "success", success.toXml()
    return issuedToken(success)


def test_offerWithoutTLS(server):
    """No TLS session, no binding: SCRAM without -PLUS, and HT-SHA-256-NONE alone."""
    features = ClientConnection(server, encrypted=True)
    features.openStream()
    xml = features.received()[-1].toXml()
    assert "-PLUS" not in xml and "sasl-channel-binding" not in xml
    assert re.search(r"<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism></fast>", xml)


def test_expiry(server, clock):
    """A token works until its lifetime is over, and not after."""
    token = newToken(server)
    clock.advance(20 * DAY - 1)
    assert fast(connect(server), token).name == "success"
    clock.advance(1)
    failure = fast(connect(server), token)
    assert failure.name == "failure" and failure.firstChildElement().name == "not-authorized"


def test_rotationOnceHalfTheLifeIsOver(server, clock):
    """Past half its lifetime a token login gets a new token unasked; the new one then works."""
    token = newToken(server)
    clock.advance(10 * DAY - 1)
    assert issuedToken(fast(connect(server), token)) is None
    clock.advance(2)
    rotated = issuedToken(fast(connect(server), token))
    assert rotated and rotated != token
    clock.advance(15 * DAY)  # past the first token's life, within the new one's
    assert fast(connect(server), rotated).name == "success"
    assert fast(connect(server), token).name == "failure"


def test_tokenNeedsTheDevice(server):
    """No user-agent id: no token is issued, and none can be used."""
    success = plain(connect(server), f"<request-token xmlns='{NS_FAST}' mechanism='HT-SHA-256-NONE'/>")
    assert success.name == "success" and issuedToken(success) is None
    token = newToken(server)
    proof = hmac.digest(token.encode(), b"Initiator", "sha256")
    failure = authenticate(connect(server), "HT-SHA-256-NONE", b"alice\0" + proof)
    assert failure.name == "failure" and "user-agent" in str(failure.text)


def test_boundMechanismsNeedTLS(server):
    """HT-SHA-256-EXPR without a TLS session to bind to is not offered, and refused."""
    failure = authenticate(connect(server), "HT-SHA-256-EXPR", b"alice\0x", AGENT)
    assert failure.firstChildElement().name == "invalid-mechanism"


def test_abortAndStrayResponse(server):
    """A response with no exchange is malformed; an abort ends one; the stream stays usable."""
    connection = connect(server)
    connection.send(f"<response xmlns='{NS_SASL2}'>AAAA</response>")
    assert connection.next().firstChildElement().name == "malformed-request"
    connection.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='SCRAM-SHA-256'/>")
    assert connection.next().name == "challenge"  # no initial response: an empty challenge
    connection.send(f"<abort xmlns='{NS_SASL2}'/>")
    assert connection.next().firstChildElement().name == "aborted"
    assert plain(connection).name == "success"
    connection.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='PLAIN'/>")
    assert connection.streamError() == "policy-violation"


@pytest.mark.parametrize("mechanism", ["PLAIN", "HT-SHA-256-NONE"])
def test_encryptionRequired(servers, mechanism):
    """Before TLS nothing is offered, and an <authenticate/> sent anyway is refused."""
    server = servers(modules=("sasl2", "bind2", "fast"), require_encryption=True)
    addAccounts(server, "alice")
    connection = ClientConnection(server, encrypted=False)
    connection.openStream()
    assert "urn:xmpp:sasl:2" not in connection.received()[-1].toXml()
    failure = authenticate(connection, mechanism, b"alice\0x", AGENT)
    assert failure.firstChildElement().name == "encryption-required"


def test_fastNeedsTLSEvenWhenNotRequired(servers):
    """Where plaintext streams are allowed, a token still never travels in the clear."""
    server = servers(modules=("sasl2", "bind2", "fast"), require_encryption=False)
    addAccounts(server, "alice")
    connection = ClientConnection(server, encrypted=False)
    connection.openStream()
    connection.received()
    failure = authenticate(connection, "HT-SHA-256-NONE", b"alice\0x", AGENT)
    assert failure.firstChildElement().name == "encryption-required"


def test_badUserAgent(server):
    """A user-agent id longer than 128 characters is malformed."""
    failure = plain(connect(server), f"<user-agent id='{'x' * 129}'/>")
    assert failure.firstChildElement().name == "malformed-request"


def test_storeFaultAfterTheExchange(server):
    """
    If the inline work cannot be stored, the login is not half done: no
    success, the stream ends, and no session is bound.
    """
    connection = connect(server)
    store = server.store
    store.issueToken = lambda *args: store._run(lambda t: 1 / 0)
    payload = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    connection.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='PLAIN'><initial-response>{payload}"
                    f"</initial-response>{AGENT}<bind xmlns='urn:xmpp:bind:0'/><request-token "
                    f"xmlns='{NS_FAST}' mechanism='HT-SHA-256-NONE'/></authenticate>")
    assert "success" not in connection.transport.value().decode()
    assert connection.streamError() == "internal-server-error"
    assert not server.router.resourcesOf("alice@localhost")


def test_bind2Tag(server):
    """The tag is kept to its safe characters; without a device the resource is random."""
    success = plain(connect(server), "<bind xmlns='urn:xmpp:bind:0'><tag>My Phone/1</tag></bind>")
    identifier = str(next(success.elements(NS_SASL2, "authorization-identifier")))
    assert re.fullmatch(r"alice@localhost/MyPhone1\.[0-9a-f]{8}", identifier), identifier


@pytest.mark.parametrize(("algorithm", "expected"), [("sha1", "sha256"), ("md5", "sha256"),
                                                     ("sha384", "sha384"), (None, "sha256")])
def test_endPointHash(algorithm, expected):
    """RFC 5929: the certificate's signature hash, but SHA-256 for MD5 and SHA-1 (and none)."""
    import hashlib

    from cryptography.hazmat.primitives import hashes
    named = {"sha1": hashes.SHA1(), "md5": hashes.MD5(), "sha384": hashes.SHA384(), None: None}
    assert endPointHash(b"der", named[algorithm]) == hashlib.new(expected, b"der").digest()
