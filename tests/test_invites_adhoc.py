"""
The invite ad-hoc commands over real sockets: who sees and runs which
command, the exact result form clients read, and an account invite made by
an admin through ad-hoc that a new client then redeems, registering and
logging in with SCRAM.
"""

from __future__ import annotations

import calendar
import re
import time

import pytest
from rawxmpp import RawClient
from slix import Client, run

HOST = "localhost"
CONFIG = f"""
[hosts.{HOST}]
admins = ["admin@{HOST}"]
max_pending_invites = 3
"""
NS_COMMANDS = "http://jabber.org/protocol/commands"
CONTACT = "urn:xmpp:invite#invite"
ACCOUNT = "urn:xmpp:invite#create-account"
RESET = "xmpp:prosody.im/mod_invites_adhoc#password-reset"
LIST = "urn:x-invitesrv:invites#list"
REVOKE = "urn:x-invitesrv:invites#revoke"
JOINED = "urn:x-invitesrv:invites#joined"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import RunningServer
    running = RunningServer(tmp_path_factory.mktemp("adhoc"), CONFIG)
    running.start()
    for name in ("admin", "alice", "bob"):
        running.adduser(f"{name}@{HOST}", "a long password")
    yield running
    running.stop()


def reply(client: RawClient, iqid: str) -> str:
    return client.recvUntil(rf"<iq [^>]*id='{iqid}'[^>]*(/>|>.*?</iq>)")


def execute(client: RawClient, node: str, iqid: str, extra: str = "", payload: str = "") -> str:
    client.send(f"<iq type='set' id='{iqid}' to='{HOST}'><command xmlns='{NS_COMMANDS}' "
                f"node='{node}' {extra}>{payload}</command></iq>")
    return reply(client, iqid)


def field(answer: str, var: str) -> str | None:
    match = re.search(rf"<field [^>]*var='{var}'[^>]*?(/>|>.*?</field>)", answer, re.DOTALL)
    if match is None:
        raise AssertionError(f"no field {var} in {answer}")
    value = re.search(r"<value>(.*?)</value>", match.group(0))
    return value.group(1) if value else None


def loggedIn(server, user: str) -> RawClient:
    client = RawClient(server.port)
    client.login(user, "a long password", "adhoc")
    return client


def test_resultForm(server):
    """An admin's contact invite: completed, type='result', FORM_TYPE first, then the three fields."""
    with loggedIn(server, "admin") as client:
        answer = execute(client, CONTACT, "c1", "action='execute'")
    assert "type='result'" in answer and "status='completed'" in answer
    form = re.search(r"<x xmlns='jabber:x:data' type='result'>.*?</x>", answer, re.DOTALL).group(0)
    assert re.findall(r"var='([^']+)'", form) == ["FORM_TYPE", "landing-url", "uri", "expire"]
    assert "<value>urn:xmpp:invite#invitation</value>" in form
    assert re.fullmatch(rf"xmpp:admin@{HOST}\?roster;preauth=[A-Za-z0-9_-]{{24}};ibr=y",
                        field(answer, "uri"))
    assert field(answer, "landing-url") is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", field(answer, "expire"))


def test_userContactInviteWithoutRegistration(server):
    """A plain user's contact invite has no ibr=y (allow_user_invites is false)."""
    with loggedIn(server, "alice") as client:
        answer = execute(client, CONTACT, "c2")
    assert re.fullmatch(rf"xmpp:alice@{HOST}\?roster;preauth=[A-Za-z0-9_-]{{24}}",
                        field(answer, "uri"))


def test_permissions(server):
    """Users do not see or run the admin commands; disco lists what each may run."""
    with loggedIn(server, "bob") as client:
        answer = execute(client, ACCOUNT, "a1")
        assert "<forbidden " in answer and "status='canceled'" in answer
        assert "You don't have permission to execute this command" in answer
        assert "<forbidden " in execute(client, RESET, "r1")
        client.send(f"<iq type='get' id='d1' to='{HOST}'><query "
                    f"xmlns='http://jabber.org/protocol/disco#items' node='{NS_COMMANDS}'/></iq>")
        items = reply(client, "d1")
        assert CONTACT in items and LIST in items and REVOKE in items
        assert ACCOUNT not in items and RESET not in items
    with loggedIn(server, "admin") as client:
        client.send(f"<iq type='get' id='d2' to='{HOST}'><query "
                    f"xmlns='http://jabber.org/protocol/disco#items' node='{NS_COMMANDS}'/></iq>")
        items = reply(client, "d2")
        assert all(node in items for node in (CONTACT, ACCOUNT, RESET, LIST, REVOKE, JOINED))
        assert "name='Create new account invite'" in items


def test_adminAccountInviteEndToEnd(server):
    """
    An admin creates an account invite through ad-hoc, reserving the
    username in the form shown first; a new client
    preauths with its token, registers, and logs in with SCRAM; the admin,
    online, is told.
    """
    admin = loggedIn(server, "admin")
    admin.send("<presence/>")
    shown = execute(admin, ACCOUNT, "a2")
    assert "status='executing'" in shown and "var='username'" in shown
    session = re.search(r"sessionid='([^']+)'", shown).group(1)
    answer = execute(admin, ACCOUNT, "a3", f"sessionid='{session}' action='complete'",
                     "<x xmlns='jabber:x:data' type='submit'><field var='username'>"
                     "<value>adhocnew</value></field></x>")
    uri = field(answer, "uri")
    token = re.fullmatch(rf"xmpp:adhocnew@{HOST}\?register;preauth=([A-Za-z0-9_-]{{24}})",
                         uri).group(1)
    with RawClient(server.port) as newcomer:
        newcomer.startTLS()
        newcomer.send(f"<iq type='set' id='p'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
        assert "type='result'" in reply(newcomer, "p")
        newcomer.send("<iq type='set' id='r'><query xmlns='jabber:iq:register'>"
                      "<username>adhocnew</username><password>a long password</password>"
                      "</query></iq>")
        assert re.match(r"<iq [^>]*type='result'", reply(newcomer, "r"))
    with RawClient(server.port) as again:
        assert again.login("adhocnew", "a long password") == "adhocnew@localhost/raw"
    inviteId = re.search(r"registered with your invite (\w+)\.", admin.recvUntil(
        r"<message .*?</message>")).group(1)
    admin.close()
    assert re.search(r"Status:\s+used", server.ctl("invite", "show", inviteId).stdout)


def test_whoJoined(server):
    """
    What the inviter sees: the admin's who-joined command names the account
    made with the invite of the test above; another user's names nobody.
    """
    with loggedIn(server, "admin") as client:
        answer = execute(client, JOINED, "j1")
    assert "status='completed'" in answer and "1 joined" in answer
    assert re.search(rf"<value>adhocnew@{HOST} at \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ "
                     r"\(invite \w+\)</value>", answer), answer
    with loggedIn(server, "alice") as client:
        answer = execute(client, JOINED, "j2")
    assert "status='completed'" in answer and "0 joined" in answer and "adhocnew" not in answer


def test_slixmppRunsCommand(server):
    """slixmpp's XEP-0050 plugin runs the contact-invite command and reads the fields."""
    async def scenario():
        client = Client(f"alice@{HOST}/slix", "a long password",
                        plugins=("xep_0030", "xep_0004", "xep_0050"))
        assert await client.login(server.port)
        iq = await client.plugin["xep_0050"].send_command(HOST, CONTACT, timeout=10)
        values = iq["command"]["form"].get_values()
        await client.logout()
        return iq["command"]["status"], values
    status, values = run(scenario())
    assert status == "completed"
    assert values["uri"].startswith(f"xmpp:alice@{HOST}?roster;preauth=")


def test_slixmppAccountFormFlow(server):
    """
    XEP-0401's newer flow with slixmpp's XEP-0050 plugin: an admin's
    create-account first shows the choices, then the submitted ones (a
    reserved username, roles, a one-hour expiry) make the invite.
    """
    async def scenario():
        client = Client(f"admin@{HOST}/slix", "a long password",
                        plugins=("xep_0030", "xep_0004", "xep_0050"))
        assert await client.login(server.port)
        adhoc = client.plugin["xep_0050"]
        first = await adhoc.send_command(HOST, ACCOUNT, timeout=10)
        shown = list(first["command"]["form"].get_fields())
        form = client.plugin["xep_0004"].make_form("submit")
        form.add_field(var="username", value="reserved")
        form.add_field(var="roles", ftype="text-multi", value=["member", "beta"])
        form.add_field(var="ttl", value="3600")
        form.add_field(var="welcome", ftype="text-multi", value=["Welcome aboard!", "— the admin"])
        iq = await adhoc.send_command(HOST, ACCOUNT, action="complete", payload=form,
                                      sessionid=first["command"]["sessionid"], timeout=10)
        await client.logout()
        return first["command"]["status"], shown, iq["command"]["status"], \
            iq["command"]["form"].get_values()
    firstStatus, shown, status, values = run(scenario())
    assert firstStatus == "executing"
    assert shown == ["username", "roles", "groups", "uses", "ttl", "welcome"]
    assert status == "completed"
    assert re.fullmatch(rf"xmpp:reserved@{HOST}\?register;preauth=\S+", values["uri"])
    expires = calendar.timegm(time.strptime(values["expire"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expires - (time.time() + 3600)) < 120
    inviteId = re.search(r"^(\w+) +\S+ +account reserved ", server.ctl(
        "invite", "list", HOST).stdout, re.MULTILINE).group(1)
    shownByCtl = server.ctl("invite", "show", inviteId).stdout
    assert "member" in shownByCtl and "beta" in shownByCtl, shownByCtl
    assert "Welcome:  Welcome aboard!\n— the admin" in shownByCtl, shownByCtl


def test_oneStepWithSubmittedChoices(server):
    """
    A client that sends its choices with the first execute gets the result at
    once: an admin's contact invite without ibr=y; a bad value is refused, and
    so is a choice from a user who may not invite new users.
    """
    with loggedIn(server, "admin") as client:
        answer = execute(client, CONTACT, "s1", "action='execute'",
                         "<x xmlns='jabber:x:data' type='submit'><field var='ibr'>"
                         "<value>false</value></field></x>")
        assert "status='completed'" in answer
        assert re.fullmatch(rf"xmpp:admin@{HOST}\?roster;preauth=[A-Za-z0-9_-]{{24}}",
                            field(answer, "uri"))
        refused = execute(client, CONTACT, "s2", "action='execute'",
                          "<x xmlns='jabber:x:data' type='submit'><field var='uses'>"
                          "<value>0</value></field></x>")
        assert "<bad-request " in refused and "<bad-payload " in refused, refused
    with loggedIn(server, "alice") as client:
        refused = execute(client, CONTACT, "s3", "action='execute'",
                          "<x xmlns='jabber:x:data' type='submit'><field var='ibr'>"
                          "<value>true</value></field></x>")
    assert "<not-allowed " in refused and "nothing you may choose" in refused, refused


@pytest.mark.parametrize(("fields", "expected"), [
    ({"uses": "unlimited", "ttl": "60"}, {"usesAllowed": None, "ttl": 60.0}),
    ({"username": "Carol", "roles": ["a:b", " "]}, {"username": "carol", "roles": ("a:b",)}),
    ({"uses": "0"}, "uses is a whole number"),
    ({"ttl": str(366 * 86400)}, "ttl is a number of seconds"),
    ({"ttl": "soon"}, "invalid literal"),
    ({"roles": ["no spaces please"]}, "roles are names"),
    ({"username": "a b"}, "Invalid form"),
    ({"welcome": ["Hello,", "welcome!"]}, {"welcome": "Hello,\nwelcome!"}),
    ({"welcome": ["x" * 1001]}, "longer than 1000"),
    ({"welcome": ["bell \x07"]}, "control characters"),
])
def test_readChoices(fields, expected):
    """Submitted choices become creation arguments; anything out of bounds is a bad-payload."""
    from invitesrv.modules.adhoc import CommandError
    from invitesrv.modules.invites_adhoc import data_form, readChoices  # Wokkel, once patched
    form = data_form.Form("submit")
    for var, value in fields.items():
        form.addField(data_form.Field("text-multi" if isinstance(value, list) else "text-single",
                                      var, values=value if isinstance(value, list) else [value]))
    if isinstance(expected, dict):
        assert readChoices(form) == expected
    else:
        with pytest.raises(CommandError) as raised:
            readChoices(form)
        assert raised.value.condition == "bad-request" and expected in raised.value.text


def test_resetCommand(server):
    """The reset command asks for a JID, then gives a reset invite for that account only."""
    server.adduser(f"forgetful@{HOST}", "old password")
    with loggedIn(server, "admin") as client:
        first = execute(client, RESET, "r2")
        assert "status='executing'" in first and "var='accountjid'" in first
        session = re.search(r"sessionid='([^']+)'", first).group(1)
        submitted = ("<x xmlns='jabber:x:data' type='submit'><field var='accountjid'>"
                     "<value>{}</value></field></x>")
        answer = execute(client, RESET, "r3", f"sessionid='{session}' action='complete'",
                         submitted.format(f"nobody@{HOST}"))
        assert "<item-not-found " in answer
        first = execute(client, RESET, "r4")
        session = re.search(r"sessionid='([^']+)'", first).group(1)
        answer = execute(client, RESET, "r5", f"sessionid='{session}' action='complete'",
                         submitted.format(f"forgetful@{HOST}"))
    uri = field(answer, "uri")
    token = re.fullmatch(rf"xmpp:forgetful@{HOST}\?register;preauth=(\S+)", uri).group(1)
    with RawClient(server.port) as client:
        client.startTLS()
        client.send(f"<iq type='set' id='p'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
        assert "type='result'" in reply(client, "p")
        client.send("<iq type='set' id='r'><query xmlns='jabber:iq:register'>"
                    "<username>forgetful</username><password>new password</password></query></iq>")
        assert re.match(r"<iq [^>]*type='result'", reply(client, "r"))
    with RawClient(server.port) as client:
        client.startTLS()
        assert "<success" in client.scram("forgetful", "new password")


def test_listRevokeAndQuota(server):
    """Bob lists his pending invites, hits the cap of three, revokes one and may create again."""
    with loggedIn(server, "bob") as client:
        for index in range(3):
            assert "status='completed'" in execute(client, CONTACT, f"b{index}")
        refused = execute(client, CONTACT, "b3")
        assert "<not-allowed " in refused and "3 pending invites" in refused
        listing = execute(client, LIST, "l1")
        lines = re.findall(r"<value>(\w+): contact, used 0/1", listing)
        assert len(lines) == 3
        first = execute(client, REVOKE, "v1")
        session = re.search(r"sessionid='([^']+)'", first).group(1)
        assert all(f"<option label='{line}: " in first for line in lines)
        answer = execute(client, REVOKE, "v2", f"sessionid='{session}' action='complete'",
                         "<x xmlns='jabber:x:data' type='submit'><field var='invite'>"
                         f"<value>{lines[0]}</value></field></x>")
        assert "status='completed'" in answer and f"Invite {lines[0]} revoked" in answer
        assert len(re.findall(r"<value>\w+: contact", execute(client, LIST, "l2"))) == 2
        assert "status='completed'" in execute(client, CONTACT, "b4")
    with loggedIn(server, "alice") as client:
        first = execute(client, REVOKE, "v3")
        assert lines[1] not in first


def test_noErrorsLogged(server):
    """None of the above left an unhandled error in the server log."""
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
