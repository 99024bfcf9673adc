"""
What belongs to an account goes with it, end to end on the real server with
the real C{invitesrvctl}: admin rights (from an admin invite, or a name in
the config), reset and contact invites, sessions after a password change or
a deletion; and a new name may not look like an existing one (PRECIS and
UTS #39), while existing accounts keep logging in.
"""

from __future__ import annotations

import http.client
import re
from urllib.parse import urlencode

import pytest
from rawxmpp import RawClient

HOST = "localhost"
CONFIG = f"""
[hosts.{HOST}]
admins = ["boss@{HOST}"]
"""
PASSWORD = "a long password"
RESET = "xmpp:prosody.im/mod_invites_adhoc#password-reset"
ADMIN_NAME = "The requested username is reserved for the administrators of this server."
LOOK_ALIKE = "The requested username is too similar to an existing one."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import RunningServer
    running = RunningServer(tmp_path_factory.mktemp("accounts"), CONFIG,
                            ("--http", "tcp:0:interface=127.0.0.1"))
    running.start()
    running.key = running.ctl("apikey", "create", HOST).stdout.strip().splitlines()[-1]
    yield running
    running.stop()


def createInvite(server, *args: str) -> str:
    """Run C{invitesrvctl invite create ARGS}; return the token."""
    output = server.ctl("invite", "create", *args).stdout
    return re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1)


def reply(client: RawClient, iqid: str) -> str:
    return client.recvUntil(rf"<iq [^>]*id='{iqid}'[^>]*(/>|>.*?</iq>)")


def errorText(answer: str) -> str:
    match = re.search(r"<text[^>]*>(.*?)</text>", answer, re.DOTALL)
    return match.group(1) if match else ""


def register(server, token: str | None, username: str, password: str = PASSWORD) -> str:
    """Present C{token} (if any) and register in-band; return the answer to the registration."""
    with RawClient(server.port) as client:
        client.startTLS()
        if token is not None:
            client.send(f"<iq type='set' id='pa'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
            answer = reply(client, "pa")
            if "type='result'" not in answer:
                return answer
        client.send(f"<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
                    f"<username>{username}</username><password>{password}</password></query></iq>")
        return reply(client, "reg")


def registered(server, token: str, username: str) -> None:
    answer = register(server, token, username)
    assert "type='result'" in answer, answer


def online(server, username: str, resource: str, password: str = PASSWORD) -> RawClient:
    client = RawClient(server.port)
    client.login(username, password, resource)
    return client


def runResetCommand(client: RawClient) -> str:
    """Start the admins' password-reset command; return the answer."""
    client.send(f"<iq type='set' id='cmd' to='{HOST}'><command xmlns="
                f"'http://jabber.org/protocol/commands' node='{RESET}' action='execute'/></iq>")
    return reply(client, "cmd")


def listsResetCommand(client: RawClient) -> bool:
    client.send(f"<iq type='get' id='items' to='{HOST}'><query xmlns="
                "'http://jabber.org/protocol/disco#items' node='http://jabber.org/protocol/commands'/></iq>")
    return RESET in reply(client, "items")


def request(server, method: str, path: str, body: bytes = b"", headers=None):
    """One HTTP request to the server's site; return (status, headers, text)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["HTTP"], timeout=15)
    try:
        connection.request(method, path, body or None, headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read().decode("utf-8")
    finally:
        connection.close()


def registerOnTheWeb(server, token: str, username: str) -> tuple[int, str]:
    """Fetch the registration form (and its CSRF cookie), post it; return (status, page)."""
    path = f"/register/{token}"
    _, headers, page = request(server, "GET", path)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    fields = {"username": username, "password": PASSWORD, "confirm": PASSWORD, "csrf": csrf}
    status, _, page = request(server, "POST", path, urlencode(fields).encode(), {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": headers["Set-Cookie"].split(";", 1)[0]})
    return status, page


def streamError(client: RawClient) -> str:
    """The stream error the server ended the stream with ('' if it is still open)."""
    text = client.recvUntil(r"</stream:stream>|</stream:error>")
    return text[text.find("<stream:error"):]


# -- admin rights --------------------------------------------------------------------


def test_adminRoleGoesWithAccount(server):
    """
    frank registers with an admin invite and has the admin commands;
    invitesrvctl deletes frank while the server runs; a stranger who
    registers "frank" with a plain invite has none of them.
    """
    registered(server, createInvite(server, "--admin", HOST), "frank")
    with online(server, "frank", "first") as frank:
        assert "status='executing'" in runResetCommand(frank)
        assert listsResetCommand(frank)
    server.ctl("deluser", f"frank@{HOST}")
    registered(server, createInvite(server, HOST), "frank")
    with online(server, "frank", "stranger") as stranger:
        answer = runResetCommand(stranger)
        assert "type='error'" in answer and "<forbidden" in answer, answer
        assert not listsResetCommand(stranger)


def test_configAdminNameOnlyFromCommandLine(server):
    """
    boss, named in the config, deletes its own account in-band; nobody can
    register "boss" after that, with any invite, nor get an invite for it:
    only invitesrvctl adduser creates it again.
    """
    server.adduser(f"boss@{HOST}", PASSWORD)
    with online(server, "boss", "desk") as boss:
        assert "status='executing'" in runResetCommand(boss)
        boss.send("<iq type='set' id='rm'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        assert "type='result'" in reply(boss, "rm")
    for token in (createInvite(server, HOST), createInvite(server, "--admin", HOST)):
        answer = register(server, token, "Boss")
        assert "<conflict" in answer and errorText(answer) == ADMIN_NAME, answer
        status, page = registerOnTheWeb(server, token, "boss")
        assert status == 409 and ADMIN_NAME in page, page
    refused = server.ctl("invite", "create", "--user", "boss", HOST, check=False)
    assert refused.returncode == 1 and "only invitesrvctl adduser can create it" in refused.stderr
    assert f"boss@{HOST}" not in server.ctl("users", HOST).stdout
    server.adduser(f"boss@{HOST}", PASSWORD)
    with online(server, "boss", "again") as boss:
        assert "status='executing'" in runResetCommand(boss)


# -- invites of a deleted account ------------------------------------------------------


def test_resetInviteDiesWithAccount(server):
    """
    A reset invite for gina, then gina is deleted and someone else
    registers "gina": the old reset link no longer works for anything.
    """
    server.adduser(f"gina@{HOST}", PASSWORD)
    reset = createInvite(server, "--reset", "gina", HOST)
    server.ctl("deluser", f"gina@{HOST}")
    registered(server, createInvite(server, HOST), "gina")
    answer = register(server, reset, "gina", "the taker's new password")
    assert "type='error'" in answer and "invalid or expired" in errorText(answer), answer
    online(server, "gina", "still", PASSWORD).close()


def test_contactInviteDiesWithAccount(server):
    """
    A contact invite of hugo, then hugo is deleted and someone else takes
    the name: ivan subscribing with the old token is not approved; the new
    hugo gets an ordinary request.
    """
    for name in ("hugo", "ivan"):
        server.adduser(f"{name}@{HOST}", PASSWORD)
    token = createInvite(server, "--contact", "hugo", HOST)
    server.ctl("deluser", f"hugo@{HOST}")
    registered(server, createInvite(server, HOST), "hugo")
    with online(server, "hugo", "new") as hugo, online(server, "ivan", "desk") as ivan:
        hugo.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        reply(hugo, "r")
        hugo.send("<presence/>")
        ivan.send(f"<presence to='hugo@{HOST}' type='subscribe'>"
                  f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/></presence>")
        request = hugo.recvUntil(r"<presence [^>]*type='subscribe'[^>]*>")
        assert f"from='ivan@{HOST}'" in request
        assert "type='subscribed'" not in ivan.readAll(1.0)


# -- sessions ----------------------------------------------------------------------------


def test_passwordChangeEndsOtherSessions(server):
    """
    judy changes her password in-band from her phone: her laptop's stream
    ends with <not-authorized/>, the phone keeps working; a password reset
    with a reset invite then ends the phone's session too.
    """
    server.adduser(f"judy@{HOST}", PASSWORD)
    laptop = online(server, "judy", "laptop")
    phone = online(server, "judy", "phone")
    phone.send("<iq type='set' id='pw'><query xmlns='jabber:iq:register'><username>judy</username>"
               "<password>judy's second password</password></query></iq>")
    assert "type='result'" in reply(phone, "pw")
    ended = streamError(laptop)
    assert "<not-authorized" in ended and "Password changed" in ended, ended
    assert laptop.isClosed()
    phone.send(f"<iq type='get' id='ping' to='{HOST}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert "type='result'" in reply(phone, "ping")
    registered(server, createInvite(server, "--reset", "judy", HOST), "judy")
    assert "<not-authorized" in streamError(phone)
    for client in (laptop, phone):
        client.close()


def test_deletionEndsEverySession(server):
    """
    Removing the account in-band ends its other sessions with
    <not-authorized/>, and so does deleting one through the admin API.
    """
    server.adduser(f"kim@{HOST}", PASSWORD)
    other = online(server, "kim", "other")
    with online(server, "kim", "remover") as remover:
        remover.send("<iq type='set' id='rm'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        assert "type='result'" in reply(remover, "rm")
        ended = streamError(other)
        assert "<not-authorized" in ended and "Account deleted" in ended, ended
    other.close()
    server.adduser(f"lena@{HOST}", PASSWORD)
    with online(server, "lena", "phone") as lena:
        status, _, _ = request(server, "DELETE", "/api/v1/users/lena",
                               headers={"Authorization": f"Bearer {server.key}"})
        assert status == 204
        ended = streamError(lena)
        assert "<not-authorized" in ended and "Account deleted" in ended, ended


# -- usernames ---------------------------------------------------------------------------

# Real look-alikes: Cyrillic а е о р с, Greek ο, and an all-Cyrillic "scope".
LOOK_ALIKES = {
    "alice": "\u0430lice",
    "peter": "p\u0435ter",
    "bob": "b\u043eb",
    "pam": "\u0440am",
    "carl": "\u0441arl",
    "otto": "\u03bftto",
    "scope": "\u0455\u0441\u043e\u0440\u0435",
}


def test_lookAlikesRefused(server):
    """
    With alice, peter, bob, pam, carl, otto and scope registered, their
    mixed-script and whole-script look-alikes are refused at registration,
    a fullwidth "ａlice" is "alice" (taken); a name in one other script,
    and one that differs within Latin, are accepted.
    """
    for name in LOOK_ALIKES:
        server.adduser(f"{name}@{HOST}", PASSWORD)
    token = createInvite(server, "--uses", "unlimited", HOST)
    for name, lookAlike in LOOK_ALIKES.items():
        answer = register(server, token, lookAlike)
        assert "<conflict" in answer and errorText(answer) == LOOK_ALIKE, (name, answer)
    answer = register(server, token, "\uff41lice")
    assert "<conflict" in answer and "already exists" in errorText(answer), answer
    for name in ("\u043c\u0430\u0440\u0438\u044f", "carla"):
        registered(server, token, name)
    listed = server.ctl("users", HOST).stdout.split()
    assert f"\u043c\u0430\u0440\u0438\u044f@{HOST}" in listed
    assert not any(f"{lookAlike}@{HOST}" in listed for lookAlike in LOOK_ALIKES.values())


def test_precisRefusesWhatNodeprepTook(server):
    """
    PRECIS UsernameCaseMapped refuses names nodeprep let through (symbols,
    compatibility characters), with the usual error, and no invite is made
    for one; an existing account named by the CLI in capitals logs in by
    any case.
    """
    token = createInvite(server, "--uses", "unlimited", HOST)
    for name in ("i\u2665xmpp", "\u2168", "x\u00b2"):
        answer = register(server, token, name)
        assert "<not-acceptable" in answer and "username is invalid" in errorText(answer), answer
    refused = server.ctl("invite", "create", "--user", "i\u2665xmpp", HOST, check=False)
    assert refused.returncode == 1
    assert "cannot be the username of a new account" in refused.stderr, refused.stderr
    server.adduser(f"Laura@{HOST}", PASSWORD)
    for login in ("laura", "LAURA"):
        online(server, login, login).close()


def test_noErrorsLogged(server):
    """Everything above was answered without an unhandled error in the server log."""
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
