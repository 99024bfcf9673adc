"""
Invite tokens: XEP-0401/XEP-0445 preauth then XEP-0077 registration on an
invite-only server. End to end, over real sockets with invites made by
C{invitesrvctl}: the features, the whole path to a SCRAM login and the audit,
streams racing on one token, the command line beside a running server. The
rest as unit tests on the in-memory harness (the whole server on a
StringTransport, a Clock and a MemoryStore, invites made by
L{InviteManager}). Each hole of Prosody 0.12.3 listed in the spec (section
8) has a test: racing streams, one stream registering twice, username-bound
and reset invites used for other names, tokens used on another host,
expired tokens, preauth before TLS, and reservations of dead streams.
"""

from __future__ import annotations

import base64
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from rawxmpp import RawClient
from streamharness import NS_BIND, NS_SASL, PASSWORD, Client, ClientConnection, addAccounts
from synchronous import result
from twisted.internet import error, task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import failure
from twisted.words.xish import domish

from invitesrv.config import HostOptions
from invitesrv.invites import InviteManager

HOST = "localhost"
OTHER = "other.test"
CONFIG = f"""
[hosts.{HOST}]
admins = ["admin@{HOST}"]
[hosts."{OTHER}"]
"""
INVALID = "The invite token is invalid or expired"
INVITE_ONLY = "Registration on this server is through invitation only"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import RunningServer
    running = RunningServer(tmp_path_factory.mktemp("invites"), CONFIG)
    running.start()
    yield running
    running.stop()


def createInvite(server, *args: str) -> tuple[str, str, str]:
    """Run C{invitesrvctl invite create ARGS}; return (id, token, output)."""
    output = server.ctl("invite", "create", *args).stdout
    inviteId = re.search(r"^Invite (\w+):", output, re.MULTILINE).group(1)
    token = re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1)
    return inviteId, token, output


def reply(client: RawClient, iqid: str) -> str:
    return client.recvUntil(rf"<iq [^>]*id='{iqid}'[^>]*(/>|>.*?</iq>)")


def isResult(answer: str) -> bool:
    return re.match(r"<iq [^>]*type='result'", answer) is not None


def errorText(answer: str) -> str:
    match = re.search(r"<text[^>]*>(.*?)</text>", answer, re.DOTALL)
    return match.group(1) if match else ""


def preauth(client: RawClient, token: str, iqid: str = "pa", attributes: str = "",
            kind: str = "set") -> str:
    client.send(f"<iq type='{kind}' id='{iqid}'{attributes}>"
                f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
    return reply(client, iqid)


def register(client: RawClient, username: str, password: str = "a long password",
             iqid: str = "reg") -> str:
    client.send(f"<iq type='set' id='{iqid}'><query xmlns='jabber:iq:register'>"
                f"<username>{username}</username><password>{password}</password></query></iq>")
    return reply(client, iqid)


def tlsClient(server, host: str = HOST) -> RawClient:
    client = RawClient(server.port, host)
    client.startTLS()
    return client


def users(server, host: str = HOST) -> set[str]:
    return set(server.ctl("users", host).stdout.split())


def canLogIn(server, username: str, password: str, host: str = HOST) -> bool:
    with RawClient(server.port, host) as client:
        client.startTLS()
        return "<success" in client.scram(username, password)


def test_streamFeatures(server):
    """Both invite features appear once the stream is encrypted, not before."""
    with RawClient(server.port) as client:
        plain = client.openStream()
    assert "urn:xmpp:invite" not in plain and "urn:xmpp:ibr-token:0" not in plain
    with RawClient(server.port) as client:
        features = client.startTLS()
    assert "<register xmlns='urn:xmpp:invite'/>" in features
    assert "<register xmlns='urn:xmpp:ibr-token:0'/>" in features


def test_accountInvite(server):
    """The whole path: preauth (a result from the host), register, SCRAM login, then the audit."""
    inviteId, token, output = createInvite(server, HOST)
    assert f"URI:  xmpp:{HOST}?register;preauth={token}" in output
    with tlsClient(server) as client:
        answer = preauth(client, token, attributes=f" to='{HOST}'")
        assert isResult(answer) and f"from='{HOST}'" in answer
        assert isResult(register(client, "newcomer"))
    assert canLogIn(server, "newcomer", "a long password")
    shown = server.ctl("invite", "show", inviteId).stdout
    assert re.search(r"Status:\s+used", shown) and "by newcomer via ibr from 127.0.0.1" in shown


def race(server, token: str, prefix: str, streams: int = 20) -> list[bool]:
    """C{streams} clients preauth the same token at once, then register; who succeeded."""
    barrier = threading.Barrier(streams, timeout=30)

    def attempt(index: int) -> bool:
        with RawClient(server.port, timeout=30) as client:
            client.startTLS()
            barrier.wait()
            if not isResult(preauth(client, token)):
                return False
            return isResult(register(client, f"{prefix}{index}"))

    with ThreadPoolExecutor(streams) as pool:
        return list(pool.map(attempt, range(streams)))


def test_raceSingleUse(server):
    """Twenty streams racing on one single-use token create exactly one account."""
    _, token, _ = createInvite(server, HOST)
    results = race(server, token, "racer")
    assert results.count(True) == 1
    assert len([user for user in users(server) if user.startswith("racer")]) == 1


def test_raceFiveUses(server):
    """Twenty streams racing on a five-use token create exactly five accounts."""
    inviteId, token, _ = createInvite(server, "--uses", "5", HOST)
    results = race(server, token, "five")
    assert results.count(True) == 5
    assert len([user for user in users(server) if user.startswith("five")]) == 5
    assert re.search(r"Uses:\s+5 of 5", server.ctl("invite", "show", inviteId).stdout)


def test_ctlLeavesReservationsAlone(server):
    """invitesrvctl, run while a stream holds the only use, does not free it for another stream."""
    _, token, _ = createInvite(server, HOST)
    with tlsClient(server) as holder:
        assert isResult(preauth(holder, token))
        server.ctl("invite", "list")
        with tlsClient(server) as other:
            assert errorText(preauth(other, token)) == INVALID
        assert isResult(register(holder, "holder"))


def test_cliListAndQR(server):
    """
    invite list filters by status; --uses unlimited and --qr print what they
    say; a reset invite needs an account, and a revoked invite is not revoked again.
    """
    inviteId, _, output = createInvite(server, "--uses", "unlimited", "--note", "team",
                                       "--qr", HOST)
    assert "unlimited uses" in output and "█" in output
    pending = server.ctl("invite", "list", "--status", "pending").stdout
    assert re.search(rf"^{inviteId}\s+localhost\s+account\s+0/∞\s.*pending\s+team$", pending,
                     re.MULTILINE)
    assert inviteId not in server.ctl("invite", "list", "--status", "used").stdout
    bad = server.ctl("invite", "create", "--uses", "0", HOST, check=False)
    assert bad.returncode == 2 and "--uses" in bad.stderr
    noAccount = server.ctl("invite", "create", "--reset", "nobody", HOST, check=False)
    assert noAccount.returncode == 1 and "no account nobody@localhost" in noAccount.stderr
    assert f"Revoked invite {inviteId}" in server.ctl("invite", "revoke", inviteId).stdout
    again = server.ctl("invite", "revoke", inviteId, check=False)
    assert again.returncode == 1 and "not pending (revoked)" in again.stderr


def test_noErrorsLogged(server):
    """None of the above left an unhandled error or a token in the server log."""
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
    assert "preauth=" not in log


# -- unit tests: the whole server on a StringTransport, a Clock and a MemoryStore ------

NOW = 1_700_000_000.0
MODULES = ("register", "invites", "invites_register")


@pytest.fixture
def local(servers):
    """
    An in-memory server for both hosts, with the registration modules; the
    test fails if anything logged an error or a token.
    """
    clock = task.Clock()
    clock.advance(NOW)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield servers(clock, modules=MODULES, hosts={HOST: HostOptions(), OTHER: HostOptions()})
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_failure") is not None or e.get("log_level") in (
        LogLevel.error, LogLevel.critical)], [formatEvent(e) for e in events]
    assert not [e for e in events if "preauth=" in (formatEvent(e) or "")]


def newInvite(server, host: str = HOST, kind: str = "createAccount", *args, **kwargs):
    """A new invite of C{host} (L{InviteManager} method C{kind}), as L{CreatedInvite}."""
    return result(getattr(InviteManager(server.hosts[host]), kind)(*args, **kwargs))


def connect(server, host: str = HOST, encrypted: bool = True) -> ClientConnection:
    """A new stream to C{host}, opened, its features read."""
    connection = ClientConnection(server, encrypted=encrypted)
    connection.openStream(host)
    connection.received()
    return connection


def answer(connection: ClientConnection, iqid: str) -> domish.Element:
    """The reply to iq C{iqid}, which the server has sent."""
    replies = [e for e in connection.received() if e.name == "iq" and e.getAttribute("id") == iqid]
    assert len(replies) == 1, replies
    return replies[0]


def ask(connection: ClientConnection, token: str, iqid: str = "pa", attributes: str = "",
        kind: str = "set") -> domish.Element:
    """Send a preauth with C{token}; the reply."""
    connection.send(f"<iq type='{kind}' id='{iqid}'{attributes}>"
                    f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
    return answer(connection, iqid)


def registerOn(connection: ClientConnection, username: str, password: str = "a long password",
               iqid: str = "reg") -> domish.Element:
    """Send a registration; the reply."""
    connection.send(f"<iq type='set' id='{iqid}'><query xmlns='jabber:iq:register'>"
                    f"<username>{username}</username><password>{password}</password></query></iq>")
    return answer(connection, iqid)


def succeeded(reply: domish.Element) -> bool:
    return reply["type"] == "result"


def condition(reply: domish.Element) -> tuple[str, str]:
    """The error type and defined condition of an error reply."""
    assert reply["type"] == "error", reply.toXml()
    return reply.error["type"], next(c.name for c in reply.error.elements() if c.name != "text")


def text(reply: domish.Element) -> str:
    return "".join(str(t) for t in reply.error.elements() if t.name == "text")


def accounts(server, host: str = HOST) -> list[str]:
    return result(server.store.listAccounts(host))


def logsIn(server, username: str, password: str, host: str = HOST) -> bool:
    """Whether PLAIN with C{password} succeeds for C{username}."""
    connection = connect(server, host)
    payload = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    connection.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    return [e.name for e in connection.received()] == ["success"]


@pytest.mark.parametrize("token", ["", "A" * 24, "x" * 5000, "<bad>"])
def test_invalidTokens(local, token):
    """Unknown, empty or over-long tokens: cancel/forbidden with Prosody's text."""
    token = token.replace("<", "&lt;").replace(">", "&gt;")
    client = connect(local)
    reply = ask(client, token)
    assert condition(reply) == ("cancel", "forbidden") and text(reply) == INVALID
    client.send("<iq type='set' id='na'><preauth xmlns='urn:xmpp:pars:0'/></iq>")
    assert condition(answer(client, "na")) == ("cancel", "forbidden")


def test_preauthBeforeTLSRefused(local):
    """A valid token presented on plaintext is refused, and stays usable once encrypted."""
    created = newInvite(local)
    reply = ask(connect(local, encrypted=False), created.token)
    assert condition(reply)[1] == "policy-violation" and text(reply) == "Encryption is required"
    client = connect(local)
    assert succeeded(ask(client, created.token))
    assert succeeded(registerOn(client, "aftertls"))


def test_sameStreamTwice(local):
    """Even with a two-use invite, one preauth serves one registration on a stream."""
    created = newInvite(local, usesAllowed=2)
    client = connect(local)
    assert succeeded(ask(client, created.token))
    assert succeeded(registerOn(client, "twice1"))
    refused = registerOn(client, "twice2", iqid="reg2")
    assert condition(refused)[1] == "not-acceptable" and text(refused) == INVITE_ONLY
    assert succeeded(ask(client, created.token, "pa2"))
    assert succeeded(registerOn(client, "twice2", iqid="reg3"))
    assert accounts(local) == ["twice1", "twice2"]


def test_sameStreamPipelined(local):
    """Two registrations sent at once after one preauth: one account, one refusal."""
    created = newInvite(local, usesAllowed=2)
    client = connect(local)
    assert succeeded(ask(client, created.token))
    client.send("".join(
        f"<iq type='set' id='{iqid}'><query xmlns='jabber:iq:register'><username>{name}"
        "</username><password>a long password</password></query></iq>"
        for iqid, name in (("p1", "pipe1"), ("p2", "pipe2"))))
    replies = [e for e in client.received() if e.name == "iq"]
    assert sorted(e["type"] for e in replies) == ["error", "result"]
    assert len(accounts(local)) == 1
    assert result(local.store.getInvite(created.invite.id)).uses == 1


def test_usernameBoundInvite(local):
    """An invite for carol registers only carol, and nobody else may take carol meanwhile."""
    created = newInvite(local, username="carol")
    assert created.uri == f"xmpp:carol@{HOST}?register;preauth={created.token}"
    other = newInvite(local)
    client = connect(local)
    assert succeeded(ask(client, other.token))
    refused = registerOn(client, "carol")
    assert condition(refused)[1] == "conflict" and "reserved" in text(refused)
    client = connect(local)
    assert succeeded(ask(client, created.token))
    refused = registerOn(client, "dave")
    assert text(refused) == "The chosen username is not valid with this invitation"
    assert succeeded(registerOn(client, "Carol", iqid="reg2"))
    assert accounts(local) == ["carol"]


def test_resetInvite(local):
    """A reset invite sets bob's password (old fails, new works) and does nothing else."""
    addAccounts(local, "bob", password="old password")
    created = newInvite(local, HOST, "createReset", "bob")
    assert created.uri == f"xmpp:bob@{HOST}?register;preauth={created.token}"
    client = connect(local)
    assert succeeded(ask(client, created.token))
    assert text(registerOn(client, "eve", "new password")) == "Incorrect username for password reset"
    assert succeeded(registerOn(client, "bob", "new password", "reg2"))
    assert condition(registerOn(client, "bob", "third password", "reg3"))[1] == "not-acceptable"
    assert not logsIn(local, "bob", "old password")
    assert logsIn(local, "bob", "new password")
    assert accounts(local) == ["bob"]


def test_inviteBoundToHost(local):
    """A token of localhost is invalid on other.test, and the reverse."""
    created, other = newInvite(local), newInvite(local, OTHER)
    client = connect(local, OTHER)
    assert text(ask(client, created.token)) == INVALID
    assert succeeded(ask(client, other.token, "pa2"))
    assert succeeded(registerOn(client, "elsewhere"))
    assert (accounts(local, OTHER), accounts(local)) == (["elsewhere"], [])
    assert text(ask(connect(local), other.token)) == INVALID
    assert succeeded(ask(connect(local), created.token))


def test_expiredToken(local):
    """A token is usable until its expiry, and forbidden from then on."""
    created = newInvite(local, ttl=60)
    local.reactor.advance(59)
    assert succeeded(ask(connect(local), created.token))
    created = newInvite(local, ttl=60)
    local.reactor.advance(60)
    assert text(ask(connect(local), created.token)) == INVALID


def test_revokedToken(local):
    """A revoked invite's token is forbidden, also to a stream that preauthed before."""
    created = newInvite(local)
    early = connect(local)
    assert succeeded(ask(early, created.token))
    assert result(InviteManager(local.hosts[HOST]).revoke(created.invite.id))
    assert text(ask(connect(local), created.token)) == INVALID
    assert not succeeded(registerOn(early, "late"))
    assert accounts(local) == []


def test_deadStreamReleases(local):
    """A stream that dies after its preauth gives the single use back to the next one."""
    created = newInvite(local)
    first = connect(local)
    assert succeeded(ask(first, created.token))
    assert text(ask(connect(local), created.token)) == INVALID
    first.stream.connectionLost(failure.Failure(error.ConnectionLost()))
    third = connect(local)
    assert succeeded(ask(third, created.token))
    assert succeeded(registerOn(third, "afterdeath"))


def test_loginReleases(local):
    """A stream that preauths and then logs in to an existing account gives the use back."""
    created = newInvite(local)
    addAccounts(local, "existing")
    client = connect(local)
    assert succeeded(ask(client, created.token))
    payload = base64.b64encode(b"\0existing\0" + PASSWORD.encode()).decode()
    client.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    assert client.nextNamed("success").uri == NS_SASL
    assert text(ask(connect(local), created.token)) == INVALID  # still held by the stream
    client.openStream()
    client.received()
    client.send(f"<iq type='set' id='b'><bind xmlns='{NS_BIND}'/></iq>")
    assert succeeded(answer(client, "b"))
    assert succeeded(ask(connect(local), created.token))


def test_contactOnlyTokenCannotRegister(local):
    """A contact invite without ibr=y is refused as a registration token."""
    addAccounts(local, "romeo")
    created = newInvite(local, HOST, "createContact", "romeo")
    assert created.uri == f"xmpp:romeo@{HOST}?roster;preauth={created.token}"
    assert text(ask(connect(local), created.token)) == INVALID


def test_preauthInsideRegisterQuery(local):
    """A <preauth/> carried inside the register query is honoured as an implicit preauth."""
    created = newInvite(local)
    client = connect(local)
    for iqid, name in (("inl", "inline"), ("bad", "inline2")):
        client.send(f"<iq type='set' id='{iqid}'><query xmlns='jabber:iq:register'>"
                    f"<username>{name}</username><password>a long password</password>"
                    f"<preauth xmlns='urn:xmpp:pars:0' token='{created.token}'/></query></iq>")
    replies = {e["id"]: e for e in client.received() if e.name == "iq"}
    assert succeeded(replies["inl"]) and text(replies["bad"]) == INVALID
    assert accounts(local) == ["inline"]


def test_preauthAfterLogin(local):
    """
    Once authenticated, a preauth IQ is not for the registration machinery:
    service-unavailable. Before, a get is accepted as a set is (as Prosody does).
    """
    created = newInvite(local)
    addAccounts(local, "logged")
    assert condition(ask(Client(local, "logged"), created.token))[1] == "service-unavailable"
    assert succeeded(ask(connect(local), created.token, kind="get"))
