"""
End to end over real TLS: SCRAM-*-PLUS with each channel-binding type
(XEP-0440 says which), computed by the test client from its own side of
the TLS session; a wrong binding and a downgrade are refused; XEP-0474's
downgrade hash matches what the client saw.
"""

import base64
import re

import pytest
from OpenSSL import SSL
from OpenSSL._util import lib
from saslclient import SASLClient, ScramClient

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def server(sharedServer):
    sharedServer.adduser("alice@localhost", PASSWORD)
    return sharedServer


def offered(features: str) -> tuple[list[str], list[str]]:
    """The RFC 6120 mechanisms and the XEP-0440 channel-binding types of C{features}."""
    mechanisms = re.search(r"<mechanisms[^>]*>(.*?)</mechanisms>", features).group(1)
    return (re.findall(r"<mechanism>([^<]+)</mechanism>", mechanisms),
            re.findall(r"<channel-binding type=['\"]([^'\"]+)['\"]", features))


@pytest.mark.parametrize("version", [SSL.TLS1_3_VERSION, SSL.TLS1_2_VERSION])
def test_offer(server, version):
    """-PLUS first, and tls-exporter on TLS 1.3 only (RFC 9266: not without it)."""
    with SASLClient(server.port) as client:
        mechanisms, bindings = offered(client.startTLS(version))
    assert mechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1",
                          "PLAIN"]
    expected = ["tls-exporter", "tls-server-end-point"] if version == SSL.TLS1_3_VERSION else [
        "tls-server-end-point"]
    assert sorted(bindings) == expected


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"])
@pytest.mark.parametrize("binding", ["tls-exporter", "tls-server-end-point"])
def test_plusLogin(server, mechanism, binding):
    """The binding the client computes matches the server's; the downgrade hash is right."""
    with SASLClient(server.port) as client:
        mechanisms, bindings = offered(client.startTLS())
        scram = ScramClient(mechanism, "alice", PASSWORD, f"p={binding},,", client.bindings()[binding])
        result = client.scramPlus(scram, mechanism)
        assert "<success" in result, result
        final = base64.b64decode(re.search(r">([^<]+)</success>", result).group(1))
        assert scram.verify(final)
        assert scram.attributes["d"] == scram.downgradeHash(mechanisms, bindings)


def test_endPointOnTLS12(server):
    """On TLS 1.2, tls-server-end-point binds; tls-exporter is refused."""
    with SASLClient(server.port) as client:
        client.startTLS(SSL.TLS1_2_VERSION)
        bindings = client.bindings()
        assert "tls-exporter" not in bindings
        scram = ScramClient("SCRAM-SHA-256-PLUS", "alice", PASSWORD, "p=tls-exporter,,", b"x" * 32)
        result = client.scramPlus(scram, "SCRAM-SHA-256-PLUS")
        assert "<malformed-request/>" in result
        scram = ScramClient("SCRAM-SHA-256-PLUS", "alice", PASSWORD, "p=tls-server-end-point,,",
                            bindings["tls-server-end-point"])
        assert "<success" in client.scramPlus(scram, "SCRAM-SHA-256-PLUS")


@pytest.mark.parametrize("binding", ["tls-exporter", "tls-server-end-point"])
def test_wrongBinding(server, binding):
    """Binding data of another TLS session (a relay's) fails, as a wrong password does."""
    with SASLClient(server.port) as client, SASLClient(server.port) as other:
        client.startTLS()
        other.startTLS()
        wrong = other.bindings()[binding]
        if binding == "tls-server-end-point":  # the same certificate: a relay's would differ
            wrong = bytes(b ^ 1 for b in wrong)
        scram = ScramClient("SCRAM-SHA-256-PLUS", "alice", PASSWORD, f"p={binding},,", wrong)
        result = client.scramPlus(scram, "SCRAM-SHA-256-PLUS")
        assert "<not-authorized/>" in result, result
        assert "Authentication failure from 127.0.0.1 for user \"alice\"" in server.log()


def test_yFlagIsADowngrade(server):
    """'y': the client would bind but saw no -PLUS; this server offered them, so someone took them out."""
    with SASLClient(server.port) as client:
        client.startTLS()
        scram = ScramClient("SCRAM-SHA-256", "alice", PASSWORD, "y,,")
        result = client.scramPlus(scram, "SCRAM-SHA-256")
        assert "<not-authorized/>" in result and "downgrade" in result, result


def test_bindingNeedsPlus(server):
    """A 'p=' header with a mechanism without -PLUS is malformed; 'n' with -PLUS too."""
    with SASLClient(server.port) as client:
        client.startTLS()
        binding = client.bindings()["tls-exporter"]
        scram = ScramClient("SCRAM-SHA-256", "alice", PASSWORD, "p=tls-exporter,,", binding)
        assert "<malformed-request/>" in client.scramPlus(scram, "SCRAM-SHA-256")
        scram = ScramClient("SCRAM-SHA-256-PLUS", "alice", PASSWORD, "n,,")
        assert "<malformed-request/>" in client.scramPlus(scram, "SCRAM-SHA-256-PLUS")


def test_noBindingStillLogsIn(server):
    """A client that cannot bind ('n') logs in with plain SCRAM, and sees the downgrade hash."""
    with SASLClient(server.port) as client:
        mechanisms, bindings = offered(client.startTLS())
        scram = ScramClient("SCRAM-SHA-1", "alice", PASSWORD)
        assert "<success" in client.scramPlus(scram, "SCRAM-SHA-1")
        assert scram.attributes["d"] == scram.downgradeHash(mechanisms, bindings)


@pytest.mark.parametrize("version, binding", [(SSL.TLS1_3_VERSION, "tls-exporter"),
                                              (SSL.TLS1_3_VERSION, "tls-server-end-point"),
                                              (SSL.TLS1_2_VERSION, "tls-server-end-point")])
def test_plusLoginOnResumedSession(server, version, binding):
    """
    A phone that resumed its TLS session still binds its login to it: the
    server's certificate hash is the same without a certificate sent, and
    the exporter is the new connection's own.
    """
    with SASLClient(server.port) as first:
        first.startTLS(version)  # the stream's features follow the session ticket
        earlier = first.bindings()[binding]
    with SASLClient(server.port) as client:
        mechanisms, bindings = offered(client.startTLS(version, resume=first.tls))
        assert lib.SSL_session_reused(client.tls._ssl) == 1  # pyOpenSSL has no public call
        data = client.bindings()[binding]
        assert (data != earlier) if binding == "tls-exporter" else (data == earlier)
        scram = ScramClient("SCRAM-SHA-256-PLUS", "alice", PASSWORD, f"p={binding},,", data)
        assert "<success" in client.scramPlus(scram, "SCRAM-SHA-256-PLUS")
