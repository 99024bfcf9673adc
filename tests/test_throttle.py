"""
Failed logins and invite-token guesses are slowed down, then refused, per
address and per account, without a username oracle and without locking the
real user out; every failure is logged in the one format that the fail2ban
filter of C{docs/limits.md} matches; admins read the counters.

In memory with a L{task.Clock} (the password check itself runs on the real
reactor's thread pool, so tests wait for it, then move the clock), then over
real sockets from several loopback addresses (127.0.0.x), each one a
different client address to the server.
"""

from __future__ import annotations

import base64
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import pytest_twisted
from conftest import RunningServer
from rawxmpp import RawClient
from streamharness import NS_SASL, ClientConnection, addAccount, login
from twisted.internet import defer, reactor, task

from invitesrv.host import findModule

PASSWORD = "correct horse"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "limits.md"


@defer.inlineCallbacks
def waitUntil(condition, timeout: float = 5.0):
    """Wait on the real reactor (the store's thread, the password check) until C{condition()}."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        yield task.deferLater(reactor, 0.002, lambda: None)


def plain(username: str, password: str) -> str:
    payload = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    return f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>"


def opened(server, address: str = "192.0.2.7") -> ClientConnection:
    connection = ClientConnection(server, encrypted=True, address=address)
    connection.openStream()
    connection.received()
    return connection


def saslAnswers(connection: ClientConnection) -> list[str]:
    return [child.name for element in connection.received() if element.name == "failure"
            for child in element.elements()]


@defer.inlineCallbacks
def failedLoginDelay(server, clock, username: str, address: str = "192.0.2.7"):
    """
    One wrong password on a fresh connection; fire with how long (clock
    seconds) the <failure/> was held back.
    """
    connection = opened(server, address)
    counted = server.metrics["auth.failed"]
    connection.send(plain(username, "wrong password"))
    yield waitUntil(lambda: server.metrics["auth.failed"] > counted)
    waited = 0.0
    while not (answers := saslAnswers(connection)):
        clock.advance(0.25)
        waited += 0.25
        assert waited < 100
    assert answers == ["not-authorized"]
    return waited


@pytest_twisted.inlineCallbacks
def test_delaysGrowAlikeForKnownAndUnknownUsers(servers):
    """
    The first failures are answered at once, then after 1, 2, 4... seconds,
    capped; for an existing account exactly as for a name that does not
    exist, so the delay tells nothing about which is which.
    """
    delays = {}
    for username in ("alice", "nobody"):
        clock = task.Clock()
        server = servers(clock, limits={"auth_failures_free": 2, "auth_delay_max": 4,
                                        "auth_failures_block": 0})
        yield addAccount(server, "alice", PASSWORD)
        delays[username] = []
        for _ in range(6):
            delays[username].append((yield failedLoginDelay(server, clock, username)))
    assert delays["alice"] == delays["nobody"] == [0, 0, 1, 2, 4, 4]


@pytest_twisted.inlineCallbacks
def test_addressBlockedForAWhile(servers):
    """
    An address with auth_failures_block failures gets <policy-violation/> at
    its next attempt, until a window passes without failures; another
    address logs in to the same account at once.
    """
    clock = task.Clock()
    server = servers(clock, limits={"auth_failures_free": 100, "auth_failures_block": 3,
                                    "auth_failure_window": 600})
    yield addAccount(server, "alice", PASSWORD)
    for _ in range(3):
        assert (yield failedLoginDelay(server, clock, "alice")) == 0
    blocked = opened(server)
    blocked.send(plain("alice", PASSWORD))
    assert blocked.streamError() == "policy-violation" and blocked.closed
    assert server.metrics["auth.blocked"] == 1
    yield login(ClientConnection(server, encrypted=True, address="198.51.100.1"), "alice", PASSWORD)
    clock.advance(600)
    yield login(ClientConnection(server, encrypted=True), "alice", PASSWORD, "back")


@pytest_twisted.inlineCallbacks
def test_accountSlowedButNeverLockedOut(servers):
    """
    Guesses against one account from many addresses slow each other down,
    but its owner's correct password is accepted at once, and resets the
    account's count.
    """
    clock = task.Clock()
    server = servers(clock, limits={"auth_failures_free": 1, "auth_delay_max": 4,
                                    "auth_failures_block": 3})
    yield addAccount(server, "alice", PASSWORD)
    delays = []
    for n in range(1, 9):
        delays.append((yield failedLoginDelay(server, clock, "alice", f"192.0.2.{n}")))
    assert delays == [0, 1, 2, 4, 4, 4, 4, 4]
    owner = ClientConnection(server, encrypted=True, address="198.51.100.1")
    assert (yield login(owner, "alice", PASSWORD)) == "alice@localhost/test"  # no clock moved
    assert (yield failedLoginDelay(server, clock, "alice", "192.0.2.20")) == 0


@pytest_twisted.inlineCallbacks
def test_allowlistNeverBlocked(servers):
    """Loopback (the default allowlist) is held to the per-account delays only, never blocked."""
    clock = task.Clock()
    server = servers(clock, limits={"auth_failures_free": 100, "auth_failures_block": 2})
    for _ in range(4):
        yield failedLoginDelay(server, clock, "bob", "127.0.0.1")
    connection = opened(server, "127.0.0.1")
    connection.send(plain("bob", "another guess"))
    yield waitUntil(lambda: server.metrics["auth.failed"] == 5)
    assert saslAnswers(connection) == ["not-authorized"] and not connection.closed


def tokenServer(servers, clock, **limits):
    """An in-memory server whose host redeems invite tokens."""
    server = servers(clock, limits=limits)
    host = server.hosts["localhost"]
    host.addModule("invites_register", findModule("invites_register")())
    host.start()
    return server


def preauth(connection: ClientConnection, iqID: str, token: str = "not-a-real-token") -> None:
    connection.send(f"<iq type='set' id='{iqID}'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/>"
                    "</iq>")


@pytest_twisted.inlineCallbacks
def test_tokenGuessesSlowedThenBlocked(servers):
    """
    Refused invite tokens: the first few answered at once, then slowly, then
    the address gets <policy-violation/>; another address is unaffected.
    """
    clock = task.Clock()
    server = tokenServer(servers, clock, token_failures_free=2, token_failures_block=4,
                         auth_delay_max=30)
    guesser = opened(server)
    waits = []
    for n in range(1, 5):
        preauth(guesser, f"t{n}")
        yield waitUntil(lambda n=n: server.metrics["tokens.refused"] == n)
        waited = 0.0
        while not (replies := [e for e in guesser.received() if e.name == "iq"]):
            clock.advance(0.25)
            waited += 0.25
        assert replies[0]["type"] == "error" and replies[0].error.forbidden is not None
        waits.append(waited)
    assert waits == [0, 0, 1, 2]
    preauth(guesser, "t5")
    assert guesser.streamError() == "policy-violation"
    other = opened(server, "198.51.100.1")
    preauth(other, "o1")
    yield waitUntil(lambda: server.metrics["tokens.refused"] == 5)
    (reply,) = [e for e in other.received() if e.name == "iq"]
    assert reply["type"] == "error" and not other.closed


# -- over real sockets --------------------------------------------------------------------


E2E_CONFIG = """
[limits]
allowlist = []
auth_failures_free = 2
auth_failures_block = 4
auth_delay_max = "2s"
token_failures_free = 1
token_failures_block = 3
[host_defaults]
admins = ["admin@localhost"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer(tmp_path_factory.mktemp("throttle"), E2E_CONFIG)
    running.start()
    for name in ("alice", "bob", "admin"):
        running.adduser(f"{name}@localhost", PASSWORD)
    yield running
    running.stop()


def failregex() -> re.Pattern:
    """The fail2ban filter of docs/limits.md, as a Python regex (<HOST> becomes a group)."""
    line = next(line for line in DOCS.read_text("utf-8").splitlines()
                if line.startswith("failregex = "))
    pattern = line[len("failregex = "):].replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)")
    return re.compile(pattern)


def timedFailure(client: RawClient, username: str) -> float:
    started = time.monotonic()
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>"
                f"{base64.b64encode(f'{chr(0)}{username}{chr(0)}wrong'.encode()).decode()}</auth>")
    answer = client.recvUntil(r"<failure[^>]*>.*?</failure>")
    assert "<not-authorized/>" in answer
    return time.monotonic() - started


def test_failuresSlowedAndLoggedForFail2ban(server):
    """
    Over the wire: two failures answered at once, the third after a second;
    each one logged in the fixed format, which the documented fail2ban
    filter matches, finding the client's address.
    """
    with RawClient(server.port, source="127.0.0.2") as client:
        client.startTLS()
        delays = [timedFailure(client, "alice") for _ in range(3)]
    assert delays[0] < 0.5 and delays[1] < 0.5 and 0.9 < delays[2] < 2, delays
    lines = [line for line in server.log().splitlines() if "127.0.0.2" in line]
    failures = [line for line in lines if "Authentication failure" in line]
    assert [line.split("] ", 1)[1] for line in failures] == [
        'Authentication failure from 127.0.0.2 for user "alice"',
        'Authentication failure from 127.0.0.2 for user "alice"',
        'Authentication failure from 127.0.0.2 for user "alice" (throttled)',
    ]
    pattern = failregex()
    assert [pattern.search(line).group("host") for line in failures] == ["127.0.0.2"] * 3
    assert not any(pattern.search(line) for line in server.log().splitlines()
                   if "Authentication failure" not in line)


def test_controlCharactersInPasswordAreFailedLogins(server):
    """
    A PLAIN password with a control character (a BEL, a NUL inside it,
    which SASLprep forbids) is a wrong password like any other: answered
    <not-authorized/>, counted (the third waits a second), one log line each
    and no traceback.
    """
    delays = []
    with RawClient(server.port, source="127.0.0.9") as client:
        client.startTLS()
        for password in ("bell\x07", "nul\x00inside", "\x1bescape"):
            payload = base64.b64encode(f"\0frank\0{password}".encode()).decode()
            started = time.monotonic()
            client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
            answer = client.recvUntil(r"<failure[^>]*>.*?</failure>")
            assert "<not-authorized/>" in answer, answer
            delays.append(time.monotonic() - started)
    assert delays[0] < 0.5 and delays[1] < 0.5 and 0.9 < delays[2] < 2, delays
    lines = [line.split("] ", 1)[1] for line in server.log().splitlines() if "127.0.0.9" in line]
    assert lines == ['Authentication failure from 127.0.0.9 for user "frank"'] * 2 + [
        'Authentication failure from 127.0.0.9 for user "frank" (throttled)']
    assert "Traceback" not in server.log() and "#critical]" not in server.log()


def test_addressBlockedOwnerStillLogsIn(server):
    """
    Four failures from one address block it (a stream error at its next
    attempt, logged for fail2ban too); the owner logs in from another address
    at once.
    """
    with RawClient(server.port, source="127.0.0.3") as client:
        client.startTLS()
        for _ in range(4):
            timedFailure(client, "bob")
    with RawClient(server.port, source="127.0.0.3") as client:
        client.startTLS()
        client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGJvYgBjb3JyZWN0IGhvcnNl</auth>")
        text = client.recvUntil(r"</stream:stream>")
        assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in text
        assert "try again later" in text and client.isClosed()
    started = time.monotonic()
    with RawClient(server.port, source="127.0.0.4") as owner:
        assert owner.login("bob", PASSWORD, "home") == "bob@localhost/home"
    assert time.monotonic() - started < 2
    blocked = [line for line in server.log().splitlines() if "(blocked)" in line]
    assert blocked and failregex().search(blocked[-1]).group("host") == "127.0.0.3"


def test_tokenGuessingOverTheWire(server):
    """Refused tokens: the second waits a second, the fourth attempt ends the stream."""
    with RawClient(server.port, source="127.0.0.5") as client:
        client.startTLS()
        waits = []
        for n in range(3):
            started = time.monotonic()
            client.send(f"<iq type='set' id='g{n}'><preauth xmlns='urn:xmpp:pars:0' token='guess{n}'/></iq>")
            reply = client.recvUntil(rf"<iq[^>]*id='g{n}'.*?</iq>")
            assert "<forbidden" in reply
            waits.append(time.monotonic() - started)
        assert waits[0] < 0.5 and 0.9 < waits[1] < 2 and 1.9 < waits[2] < 3, waits
        client.send("<iq type='set' id='g3'><preauth xmlns='urn:xmpp:pars:0' token='guess3'/></iq>")
        assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in \
            client.recvUntil(r"</stream:stream>")
    lines = [line for line in server.log().splitlines()
             if "Authentication failure from 127.0.0.5 for an invite token" in line]
    assert len(lines) == 4 and lines[-1].endswith("(blocked)")
    assert all(failregex().search(line).group("host") == "127.0.0.5" for line in lines)


NS_COMMANDS = "http://jabber.org/protocol/commands"


def counters(client: RawClient, iqID: str) -> ET.Element:
    client.send(f"<iq type='set' id='{iqID}' to='localhost'><command xmlns='{NS_COMMANDS}'"
                " node='urn:x-invitesrv:admin#counters' action='execute'/></iq>")
    return ET.fromstring(client.recvUntil(rf"<iq[^>]*id='{iqID}'.*?</iq>"))


def test_countersForAdmins(server):
    """An admin reads the counters with an ad-hoc command; a user may not."""
    with RawClient(server.port, source="127.0.0.6") as client:
        client.startTLS()
        timedFailure(client, "nobody")
    with RawClient(server.port, source="127.0.0.7") as admin:
        admin.login("admin", PASSWORD, "console")
        reply = counters(admin, "c1")
        assert reply.get("type") == "result"
        fields = {field.get("var"): field.findtext("{jabber:x:data}value")
                  for field in reply.iter("{jabber:x:data}field")}
        assert int(fields["auth.failed"]) >= 1 and int(fields["sessions.bound"]) >= 1
        assert int(fields["connections.accepted"]) >= 2
    with RawClient(server.port, source="127.0.0.8") as user:
        user.login("alice", PASSWORD, "curious")
        reply = counters(user, "c2")
        assert reply.get("type") == "error" and reply.find(".//{*}forbidden") is not None
