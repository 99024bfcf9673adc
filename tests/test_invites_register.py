"""
Invite tokens over real sockets: XEP-0401/XEP-0445 preauth then XEP-0077
registration on an invite-only server, with invites made by C{invitesrvctl}.
Each hole of Prosody 0.12.3 listed in the spec (section 8) has a test here:
racing streams, one stream registering twice, username-bound and reset
invites used for other names, tokens used on another host, expired tokens,
preauth before TLS, and reservations of dead streams.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from rawxmpp import RawClient

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


@pytest.mark.parametrize("token", ["", "A" * 24, "x" * 5000, "<bad>"])
def test_invalidTokens(server, token):
    """Unknown, empty or over-long tokens: cancel/forbidden with Prosody's text."""
    token = token.replace("<", "&lt;").replace(">", "&gt;")
    with tlsClient(server) as client:
        answer = preauth(client, token)
        assert "type='cancel'" in answer and "<forbidden " in answer
        assert errorText(answer) == INVALID
        client.send("<iq type='set' id='na'><preauth xmlns='urn:xmpp:pars:0'/></iq>")
        assert "<forbidden " in reply(client, "na")
    assert "x" * 100 not in server.log()


def test_preauthBeforeTLSRefused(server):
    """A valid token presented on plaintext is refused, and stays usable after STARTTLS."""
    _, token, _ = createInvite(server, HOST)
    with RawClient(server.port) as client:
        client.openStream()
        answer = preauth(client, token)
        assert "<policy-violation " in answer and errorText(answer) == "Encryption is required"
    with tlsClient(server) as client:
        assert isResult(preauth(client, token))
        assert isResult(register(client, "aftertls"))


def test_sameStreamTwice(server):
    """Even with a two-use invite, one preauth serves one registration on a stream."""
    _, token, _ = createInvite(server, "--uses", "2", HOST)
    with tlsClient(server) as client:
        assert isResult(preauth(client, token))
        assert isResult(register(client, "twice1"))
        answer = register(client, "twice2", iqid="reg2")
        assert "<not-acceptable " in answer and errorText(answer) == INVITE_ONLY
        assert isResult(preauth(client, token, "pa2"))
        assert isResult(register(client, "twice2", iqid="reg3"))
    assert {"twice1@localhost", "twice2@localhost"} <= users(server)


def test_sameStreamPipelined(server):
    """Two registrations sent at once after one preauth: one account, one refusal."""
    _, token, _ = createInvite(server, "--uses", "2", HOST)
    with tlsClient(server) as client:
        assert isResult(preauth(client, token))
        client.send("".join(
            f"<iq type='set' id='{iqid}'><query xmlns='jabber:iq:register'><username>{name}"
            "</username><password>a long password</password></query></iq>"
            for iqid, name in (("p1", "pipe1"), ("p2", "pipe2"))))
        answers = [client.recvUntil(r"<iq [^>]*id='p[12]'[^>]*(/>|>.*?</iq>)") for _ in "12"]
    assert [isResult(answer) for answer in answers].count(True) == 1
    assert len({"pipe1@localhost", "pipe2@localhost"} & users(server)) == 1


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


def test_usernameBoundInvite(server):
    """An invite for carol registers only carol, and nobody else may take carol meanwhile."""
    _, token, output = createInvite(server, f"carol@{HOST}")
    assert f"xmpp:carol@{HOST}?register;preauth={token}" in output
    _, otherToken, _ = createInvite(server, HOST)
    with tlsClient(server) as client:
        assert isResult(preauth(client, otherToken))
        answer = register(client, "carol")
        assert "<conflict " in answer and "reserved" in errorText(answer)
    with tlsClient(server) as client:
        assert isResult(preauth(client, token))
        answer = register(client, "dave")
        assert errorText(answer) == "The chosen username is not valid with this invitation"
        assert isResult(register(client, "Carol", iqid="reg2"))
    assert "carol@localhost" in users(server) and "dave@localhost" not in users(server)


def test_resetInvite(server):
    """A reset invite sets bob's password (old fails, new works) and does nothing else."""
    server.adduser(f"bob@{HOST}", "old password")
    _, token, output = createInvite(server, "--reset", "bob", HOST)
    assert f"xmpp:bob@{HOST}?register;preauth={token}" in output
    with tlsClient(server) as client:
        assert isResult(preauth(client, token))
        answer = register(client, "eve", "new password")
        assert errorText(answer) == "Incorrect username for password reset"
        assert isResult(register(client, "bob", "new password", "reg2"))
        assert "<not-acceptable " in register(client, "bob", "third password", "reg3")
    assert not canLogIn(server, "bob", "old password")
    assert canLogIn(server, "bob", "new password")
    assert "eve@localhost" not in users(server)
    result = server.ctl("invite", "create", "--reset", "nobody", HOST, check=False)
    assert result.returncode == 1 and "no account nobody@localhost" in result.stderr


def test_inviteBoundToHost(server):
    """A token of localhost is invalid on other.test, and the reverse."""
    _, token, _ = createInvite(server, HOST)
    _, otherToken, _ = createInvite(server, OTHER)
    with tlsClient(server, OTHER) as client:
        assert errorText(preauth(client, token)) == INVALID
        assert isResult(preauth(client, otherToken, "pa2"))
        assert isResult(register(client, "elsewhere"))
    assert "elsewhere@other.test" in users(server, OTHER)
    assert "elsewhere@localhost" not in users(server)
    with tlsClient(server) as client:
        assert isResult(preauth(client, token))


def test_expiredToken(server):
    """A token past its expiry is forbidden."""
    _, token, _ = createInvite(server, "--expires", "1s", HOST)
    time.sleep(1.2)
    with tlsClient(server) as client:
        assert errorText(preauth(client, token)) == INVALID


def test_revokedToken(server):
    """A revoked invite's token is forbidden; revoking twice says it is not pending."""
    inviteId, token, _ = createInvite(server, HOST)
    assert f"Revoked invite {inviteId}" in server.ctl("invite", "revoke", inviteId).stdout
    with tlsClient(server) as client:
        assert errorText(preauth(client, token)) == INVALID
    again = server.ctl("invite", "revoke", inviteId, check=False)
    assert again.returncode == 1 and "not pending (revoked)" in again.stderr


def test_deadStreamReleases(server):
    """A stream that dies after its preauth gives the single use back to the next one."""
    _, token, _ = createInvite(server, HOST)
    first = tlsClient(server)
    assert isResult(preauth(first, token))
    with tlsClient(server) as second:
        assert errorText(preauth(second, token)) == INVALID
    first.close()
    deadline = time.monotonic() + 5
    while True:
        with tlsClient(server) as third:
            if isResult(preauth(third, token)):
                assert isResult(register(third, "afterdeath"))
                break
        assert time.monotonic() < deadline, "the reservation was never released"
        time.sleep(0.1)


def test_ctlLeavesReservationsAlone(server):
    """invitesrvctl, run while a stream holds the only use, does not free it for another stream."""
    _, token, _ = createInvite(server, HOST)
    with tlsClient(server) as holder:
        assert isResult(preauth(holder, token))
        server.ctl("invite", "list")
        with tlsClient(server) as other:
            assert errorText(preauth(other, token)) == INVALID
        assert isResult(register(holder, "holder"))


def test_loginReleases(server):
    """A stream that preauths and then logs in to an existing account gives the use back."""
    _, token, _ = createInvite(server, HOST)
    server.adduser(f"existing@{HOST}", "a long password")
    with tlsClient(server) as client:
        assert isResult(preauth(client, token))
        assert "<success" in client.scram("existing", "a long password")
        client.openStream()
        client.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        assert isResult(reply(client, "b"))
        with tlsClient(server) as other:
            assert isResult(preauth(other, token))


def test_contactOnlyTokenCannotRegister(server):
    """A contact invite without ibr=y is refused as a registration token."""
    server.adduser(f"romeo@{HOST}", "a long password")
    _, token, output = createInvite(server, "--contact", "romeo", HOST)
    assert f"URI:  xmpp:romeo@{HOST}?roster;preauth={token}\n" in output
    with tlsClient(server) as client:
        assert errorText(preauth(client, token)) == INVALID


def test_preauthInsideRegisterQuery(server):
    """A <preauth/> carried inside the register query is honoured as an implicit preauth."""
    _, token, _ = createInvite(server, HOST)
    with tlsClient(server) as client:
        client.send("<iq type='set' id='inl'><query xmlns='jabber:iq:register'>"
                    "<username>inline</username><password>a long password</password>"
                    f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/></query></iq>")
        assert isResult(reply(client, "inl"))
        client.send("<iq type='set' id='bad'><query xmlns='jabber:iq:register'>"
                    "<username>inline2</username><password>a long password</password>"
                    f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/></query></iq>")
        assert errorText(reply(client, "bad")) == INVALID
    assert "inline@localhost" in users(server)


def test_preauthAfterLogin(server):
    """
    Once authenticated, a preauth IQ is not for the registration machinery:
    service-unavailable. Before, a get is accepted as a set is (as Prosody does).
    """
    _, token, _ = createInvite(server, HOST)
    server.adduser(f"logged@{HOST}", "a long password")
    with RawClient(server.port) as client:
        client.login("logged", "a long password")
        answer = preauth(client, token)
        assert "<service-unavailable " in answer
    with tlsClient(server) as client:
        assert isResult(preauth(client, token, kind="get"))


def test_cliListAndQR(server):
    """invite list filters by status; --uses unlimited and --qr print what they say."""
    inviteId, _, output = createInvite(server, "--uses", "unlimited", "--note", "team",
                                       "--qr", HOST)
    assert "unlimited uses" in output and "█" in output
    pending = server.ctl("invite", "list", "--status", "pending").stdout
    assert re.search(rf"^{inviteId}\s+localhost\s+account\s+0/∞\s.*pending\s+team$", pending,
                     re.MULTILINE)
    assert inviteId not in server.ctl("invite", "list", "--status", "used").stdout
    bad = server.ctl("invite", "create", "--uses", "0", HOST, check=False)
    assert bad.returncode == 2 and "--uses" in bad.stderr


def test_noErrorsLogged(server):
    """None of the above left an unhandled error or a token in the server log."""
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
    assert "preauth=" not in log
