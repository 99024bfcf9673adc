"""
Accounts with SCRAM-SHA-1 keys only (imported from Prosody 0.12), in memory:
their host offers SCRAM-SHA-1 alone, so that no client picks a mechanism
the account cannot answer; SCRAM-SHA-1 and PLAIN log them in, and PLAIN gives
them SCRAM-SHA-256 keys, after which the host offers SCRAM-SHA-256 again.
"""

from __future__ import annotations

import pytest
import pytest_twisted
import scramp
from streamharness import NS_SASL, ClientConnection, addAccount, mechanisms
from test_auth import auth, encryptedStream, failureCondition, scramExchange

from invitesrv.store.interfaces import Credentials, NewAccount

PASSWORD = "a password from Prosody"


@pytest.fixture
def server(servers):
    return servers()


@pytest_twisted.inlineCallbacks
def addSha1Account(server, username: str, password: str = PASSWORD):
    """An account as the import writes it: SCRAM-SHA-1 keys only, then the host's refresh."""
    salt, storedKey, serverKey, iterations = scramp.ScramMechanism("SCRAM-SHA-1").make_auth_info(
        password, iteration_count=4096)
    host = server.hosts["localhost"]
    yield server.store.createAccount(NewAccount(
        "localhost", username, (Credentials("SCRAM-SHA-1", salt, iterations, storedKey, serverKey),)))
    yield host.refreshMechanisms()


def offered(server) -> list[str]:
    """The mechanisms a new encrypted stream is offered."""
    connection = ClientConnection(server, encrypted=True)
    connection.openStream()
    return mechanisms(connection.features())


@pytest_twisted.inlineCallbacks
def test_sha1OnlyHostOffersSha1(server):
    """One SHA-1-only account: SCRAM-SHA-256 is neither offered nor accepted; SHA-1 works."""
    yield addAccount(server, "bob", "bob's own password")
    assert offered(server) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    yield addSha1Account(server, "alice")
    assert offered(server) == ["SCRAM-SHA-1", "PLAIN"]
    connection = encryptedStream(server)
    failure, _ = yield scramExchange(connection, "alice", PASSWORD, "SCRAM-SHA-256")
    assert failureCondition(failure) == "invalid-mechanism"
    for username, password in (("alice", PASSWORD), ("bob", "bob's own password")):
        success, _ = yield scramExchange(encryptedStream(server), username, password, "SCRAM-SHA-1")
        assert success.name == "success", success.toXml()


@pytest_twisted.inlineCallbacks
def test_plainLoginAddsSha256Keys(server):
    """A PLAIN login with the right password gives the account SCRAM-SHA-256 keys."""
    yield addSha1Account(server, "alice")
    connection = encryptedStream(server)
    connection.send(auth("PLAIN", b"\0alice\0wrong password"))
    assert failureCondition((yield connection.next())) == "not-authorized"
    assert (yield server.store.getCredentials("localhost", "alice", "SCRAM-SHA-256")) is None
    connection.send(auth("PLAIN", b"\0alice\0" + PASSWORD.encode()))
    assert (yield connection.next()).name == "success"
    assert (yield server.store.getCredentials("localhost", "alice", "SCRAM-SHA-256")) is not None
    assert offered(server) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
        success, _ = yield scramExchange(encryptedStream(server), "alice", PASSWORD, mechanism)
        assert success.name == "success", success.toXml()


@pytest_twisted.inlineCallbacks
def test_newPasswordOrDeletionRestoresSha256(server):
    """A new password, or the account's deletion, also ends the SHA-1-only offer."""
    yield addSha1Account(server, "alice")
    yield addSha1Account(server, "carol")
    host = server.hosts["localhost"]
    assert (yield host.registrar.changePassword("alice", "a brand new password"))
    assert offered(server) == ["SCRAM-SHA-1", "PLAIN"]
    assert (yield host.registrar.deleteAccount("carol"))
    yield host.refreshMechanisms()  # what the hooks started has finished
    assert offered(server) == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]


@pytest_twisted.inlineCallbacks
def test_unknownUserPlainStillRefused(server):
    """With the fallback to SHA-1 keys, an unknown user is still refused like a wrong password."""
    yield addSha1Account(server, "alice")
    connection = encryptedStream(server)
    connection.send(auth("PLAIN", b"\0nobody\0" + PASSWORD.encode()))
    failure = yield connection.next()
    assert (failure.uri, failureCondition(failure)) == (NS_SASL, "not-authorized")
