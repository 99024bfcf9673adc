"""
Contact invites end to end, with the real roster, presence and offline
modules: a contact invite with C{ibr=y} makes the newcomer and the inviter
mutual contacts at registration (the online inviter gets the push and a
note, the newcomer a welcome message), and an XEP-0379 subscription carrying
a contact token is approved without the inviter ever seeing a request.
"""

from __future__ import annotations

import re
import time

import pytest
from rawxmpp import RawClient

HOST = "localhost"
CONFIG = f"""
[hosts.{HOST}]
welcome_message = "Welcome to {{host}}, {{username}}!"
"""
PASSWORD = "a long password"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import RunningServer
    running = RunningServer(tmp_path_factory.mktemp("contacts"), CONFIG)
    running.start()
    for name in ("alice", "bob", "carol"):
        running.adduser(f"{name}@{HOST}", PASSWORD)
    yield running
    running.stop()


def createInvite(server, *args: str) -> tuple[str, str, str]:
    output = server.ctl("invite", "create", *args).stdout
    inviteId = re.search(r"^Invite (\w+):", output, re.MULTILINE).group(1)
    token = re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1)
    return inviteId, token, output


def reply(client: RawClient, iqid: str) -> str:
    return client.recvUntil(rf"<iq [^>]*id='{iqid}'[^>]*(/>|>.*?</iq>)")


def online(server, user: str, resource: str = "desk") -> RawClient:
    """Logged in, roster fetched (so pushes come), available."""
    client = RawClient(server.port)
    client.login(user, PASSWORD, resource)
    client.send("<iq type='get' id='roster0'><query xmlns='jabber:iq:roster'/></iq>")
    reply(client, "roster0")
    client.send("<presence/>")
    return client


def subscription(server, user: str, contact: str) -> str | None:
    """The subscription of C{user}'s item for C{contact}, from a fresh roster fetch."""
    with RawClient(server.port) as client:
        client.login(user, PASSWORD, "check")
        client.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        roster = reply(client, "r")
    match = re.search(rf"<item [^>]*jid='{re.escape(contact)}'[^>]*>", roster)
    if match is None:
        return None
    return re.search(r"subscription='(\w+)'", match.group(0)).group(1)


def eventually(check, timeout: float = 5.0):
    """The value of C{check()} once truthy, polling; fails after C{timeout}."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_contactInviteWithRegistration(server):
    """
    alice's contact invite with ibr=y: the newcomer registers, alice gets a
    push (both) and a note at once, the newcomer finds alice (both), the
    host's welcome message and, from alice, the invite's welcome text when
    logging in.
    """
    alice = online(server, "alice")
    _, token, output = createInvite(server, "--contact", "alice", "--allow-registration",
                                    "--welcome", "Hi Frank, it's Alice <3\nSee you!", HOST)
    assert f"xmpp:alice@{HOST}?roster;preauth={token};ibr=y" in output
    with RawClient(server.port) as newcomer:
        newcomer.startTLS()
        newcomer.send(f"<iq type='set' id='p'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
        assert "type='result'" in reply(newcomer, "p")
        newcomer.send("<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>frank"
                      f"</username><password>{PASSWORD}</password></query></iq>")
        assert re.match(r"<iq [^>]*type='result'", reply(newcomer, "r"))
    push = alice.recvUntil(r"<iq [^>]*type='set'.*?</iq>")
    assert re.search(rf"<item [^>]*jid='frank@{HOST}'[^>]*subscription='both'", push)
    note = alice.recvUntil(r"<message .*?</message>")
    assert f"from='{HOST}'" in note
    assert f"frank@{HOST} accepted your invite and is now one of your contacts." in note
    alice.close()

    frank = RawClient(server.port)
    frank.login("frank", PASSWORD, "phone")
    frank.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
    roster = reply(frank, "r1")
    assert re.search(rf"<item [^>]*jid='alice@{HOST}'[^>]*subscription='both'", roster)
    frank.send("<presence/>")
    welcome = frank.recvUntil(r"<message .*?</message>")
    assert f"Welcome to {HOST}, frank!" in welcome and f"from='{HOST}'" in welcome
    personal = frank.recvUntil(r"<message .*?</message>")
    assert re.match(rf"<message [^>]*from='alice@{HOST}'", personal), personal
    assert "<body>Hi Frank, it's Alice &lt;3\nSee you!</body>" in personal, personal
    frank.close()
    assert subscription(server, "alice", f"frank@{HOST}") == "both"


def test_preauthorisedSubscription(server):
    """
    XEP-0379: bob subscribes with alice's contact token and nothing else;
    both rosters reach 'both' with no request shown to either (bob's server
    pre-approves alice's request back), and the token is spent: carol using
    it later gets the normal manual flow.
    """
    inviteId, token, _ = createInvite(server, "--contact", "alice", HOST)
    alice = online(server, "alice")
    bob = online(server, "bob")
    bob.send(f"<presence to='alice@{HOST}' type='subscribe'>"
             f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/></presence>")
    assert eventually(lambda: subscription(server, "bob", f"alice@{HOST}") == "both")
    assert eventually(lambda: subscription(server, "alice", f"bob@{HOST}") == "both")
    for client, contact in ((alice, "bob"), (bob, "alice")):
        seen = client.readAll(1.0)
        assert "type='subscribe'" not in seen
        assert re.search(rf"<item [^>]*jid='{contact}@{HOST}'[^>]*subscription='both'", seen)
    shown = server.ctl("invite", "show", inviteId).stdout
    assert re.search(r"Status:\s+used", shown) and f"by bob@{HOST} via contact" in shown

    carol = online(server, "carol")
    carol.send(f"<presence to='alice@{HOST}' type='subscribe'>"
               f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/></presence>")
    request = alice.recvUntil(r"<presence [^>]*type='subscribe'[^>]*>")
    assert f"from='carol@{HOST}'" in request
    assert subscription(server, "alice", f"carol@{HOST}") is None
    for client in (alice, bob, carol):
        client.close()


def test_tokenOfSomeoneElse(server):
    """A contact token of alice's sent to bob is ignored: bob gets an ordinary request."""
    _, token, _ = createInvite(server, "--contact", "alice", HOST)
    bob = online(server, "bob", "laptop")
    carol = online(server, "carol", "laptop")
    carol.send(f"<presence to='bob@{HOST}' type='subscribe'>"
               f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/></presence>")
    request = bob.recvUntil(r"<presence [^>]*type='subscribe'.*?</presence>")
    assert f"from='carol@{HOST}'" in request
    assert subscription(server, "bob", f"carol@{HOST}") is None
    bob.close()
    carol.close()


def test_noErrorsLogged(server):
    """None of the above left an unhandled error in the server log."""
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
