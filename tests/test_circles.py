"""
Circles end to end (L{invitesrv.modules.circles}): C{invitesrvctl circle}
on a running server and on a stopped one, an invite naming a circle, and
the newcomer's first login with slixmpp: the circle's contacts on the
roster, the room's invite waiting, the room open to them; leaving takes
both away. The ad-hoc command for admins, over raw XML.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from rawxmpp import RawClient
from slix import Client, run
from slixmpp.exceptions import PresenceError

PASSWORD = "a long password"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
CONFIG = """
[hosts.localhost]
admins = ["boss@localhost"]
"""


@pytest.fixture
def running(serverFactory):
    server = serverFactory(CONFIG)
    for name in ("alice", "bob", "boss"):
        server.adduser(f"{name}@localhost", PASSWORD)
    return server


def registerWithInvite(server, token: str, username: str) -> None:
    """Present the invite's token and register in-band, as a client following the invite does."""
    with RawClient(server.port) as client:
        client.startTLS()
        client.send(f"<iq type='set' id='pa'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
        assert "type='result'" in client.recvUntil(r"<iq [^>]*id='pa'[^>]*(/>|>.*?</iq>)")
        client.send("<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
                    f"<username>{username}</username><password>{PASSWORD}</password></query></iq>")
        answer = client.recvUntil(r"<iq [^>]*id='reg'[^>]*(/>|>.*?</iq>)")
        assert "type='result'" in answer, answer


def client(name: str) -> Client:
    return Client(f"{name}@localhost/desk", PASSWORD, plugins=("xep_0030", "xep_0045", "xep_0060"))


async def bookmarks(who: Client) -> dict:
    """The account's XEP-0402 bookmarks: room JID -> (name, autojoin, nick)."""
    result = await who.plugin["xep_0060"].get_items(who.boundjid.bare, NS_BOOKMARKS, timeout=10)
    found = {}
    for item in result.xml.iter(f"{{{NS_PUBSUB}}}item"):
        conference = item.find(f"{{{NS_BOOKMARKS}}}conference")
        found[item.get("id")] = (conference.get("name"), conference.get("autojoin"),
                                 conference.findtext(f"{{{NS_BOOKMARKS}}}nick"))
    return found


def test_inviteIntoCircleAndFirstLogin(running):
    """
    An admin makes a circle of alice and bob and an invite naming it; carol
    registers with it. At her first login her roster has both, in the
    circle's group, with mutual subscriptions; the room's invite is waiting,
    the room is in her bookmarks to join automatically (XEP-0402), and she
    may join the members-only room. Taken out, she loses all three.
    """
    out = running.ctl("circle", "create", "localhost", "Family").stdout
    room = re.search(r"room (\S+@groups\.localhost)\)", out).group(1)
    for name in ("alice", "bob"):
        running.ctl("circle", "add", "localhost", "Family", name)
    refused = running.ctl("invite", "create", "--circle", "Nope", "localhost", check=False)
    assert refused.returncode == 1 and "no circle named 'Nope'" in refused.stderr
    output = running.ctl("invite", "create", "--circle", "Family", "localhost").stdout
    token = re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1)

    async def scenario():
        alice = client("alice")
        pushes: asyncio.Queue = asyncio.Queue()
        alice.add_event_handler("roster_update", pushes.put_nowait)
        assert await alice.login(running.port)
        await alice.get_roster()  # a roster fetched: roster pushes come
        await alice.plugin["xep_0045"].join_muc_wait(room, "Alice", timeout=10)
        await asyncio.get_running_loop().run_in_executor(
            None, registerWithInvite, running, token, "carol")
        await asyncio.wait_for(pushes.get(), 10)  # alice is told: carol is on her roster now
        assert alice.client_roster["carol@localhost"]["subscription"] == "both"
        assert alice.client_roster["carol@localhost"]["groups"] == ["Family"]

        carol = client("carol")
        invites: asyncio.Queue = asyncio.Queue()
        carol.add_event_handler("groupchat_invite", invites.put_nowait)
        assert await carol.login(running.port)
        await carol.get_roster()
        roster = carol.client_roster
        assert {contact: (roster[contact]["subscription"], roster[contact]["groups"])
                for contact in ("alice@localhost", "bob@localhost")} == {
            "alice@localhost": ("both", ["Family"]), "bob@localhost": ("both", ["Family"])}
        invite = await asyncio.wait_for(invites.get(), 10)
        assert str(invite["from"]) == room
        assert await bookmarks(carol) == {room: ("Family", "true", "carol")}
        _, _, occupants, _ = await carol.plugin["xep_0045"].join_muc_wait(room, "Carol", timeout=10)
        assert f"{room}/Alice" in [str(p["from"]) for p in occupants]
        info = await carol.plugin["xep_0030"].get_info(jid=room, timeout=10)
        assert {"muc_membersonly", "muc_hidden"} <= set(info["disco_info"]["features"])
        await carol.logout()

        await asyncio.get_running_loop().run_in_executor(
            None, lambda: running.ctl("circle", "remove", "localhost", "Family", "carol"))
        carol = client("carol")
        assert await carol.login(running.port)
        await carol.get_roster()
        assert "alice@localhost" not in carol.client_roster
        assert await bookmarks(carol) == {}
        with pytest.raises(PresenceError, match="registration-required"):
            await carol.plugin["xep_0045"].join_muc_wait(room, "Carol", timeout=10)
        for each in (alice, carol):
            await each.logout()

    run(scenario())
    listed = running.ctl("circle", "list", "localhost").stdout
    assert f"Family\t{room}\talice, bob" in listed


def test_circleMadeWhileStoppedHasItsRoomAtStart(running):
    """
    Circle changes made with the server stopped reach the rooms when it
    starts. A contact invite may not name a room its inviter does not own.
    """
    running.stop()
    room = re.search(r"room (\S+)\)", running.ctl("circle", "create", "localhost", "Club").stdout).group(1)
    running.ctl("circle", "add", "localhost", "Club", "alice")
    refused = running.ctl("invite", "create", "--room", room, "localhost", check=False)
    assert "--room goes with --contact" in refused.stderr
    refused = running.ctl("invite", "create", "--contact", "alice", "--room", room, "localhost",
                          check=False)  # a circle's room has no owner
    assert "alice@localhost owns no such persistent room" in refused.stderr
    running.start()

    async def scenario():
        alice, bob = client("alice"), client("bob")
        for each in (alice, bob):
            assert await each.login(running.port)
        await alice.plugin["xep_0045"].join_muc_wait(room, "Alice", timeout=10)
        with pytest.raises(PresenceError, match="registration-required"):
            await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=10)
        for each in (alice, bob):
            await each.logout()

    run(scenario())


def test_membersOnlineSeeEachOther(running):
    """Two members online when the circle brings them together get each other's presence at once."""
    async def scenario():
        alice, bob = client("alice"), client("bob")
        seen: asyncio.Queue = asyncio.Queue()
        alice.add_event_handler("presence_available", seen.put_nowait)
        for each in (alice, bob):
            assert await each.login(running.port)
            await each.get_roster()
        def together():
            running.ctl("circle", "create", "localhost", "Pair")
            running.ctl("circle", "add", "localhost", "Pair", "alice")
            running.ctl("circle", "add", "localhost", "Pair", "bob")
        await asyncio.get_running_loop().run_in_executor(None, together)
        while str((presence := await asyncio.wait_for(seen.get(), 10))["from"]) != "bob@localhost/desk":
            pass
        assert presence["type"] == "available"
        for each in (alice, bob):
            await each.logout()

    run(scenario())


def test_adhocCommandForAdmins(running):
    """Admins manage circles over XEP-0050; others do not see the command."""
    node = "urn:invitesrv:circles#manage"

    def command(who: RawClient, inner: str, iqid: str) -> str:
        who.send(f"<iq type='set' id='{iqid}' to='localhost'><command xmlns="
                 f"'http://jabber.org/protocol/commands' node='{node}' {inner}</iq>")
        return who.recvUntil(rf"<iq [^>]*id='{iqid}'[^>]*(/>|>.*?</iq>)")

    with RawClient(running.port) as boss, RawClient(running.port) as alice:
        boss.login("boss", PASSWORD, "desk")
        alice.login("alice", PASSWORD, "desk")
        assert "type='error'" in command(alice, "action='execute'/>", "a1")
        first = command(boss, "action='execute'/>", "b1")
        session = re.search(r"sessionid='([^']+)'", first).group(1)
        answer = command(boss, f"sessionid='{session}' action='complete'><x xmlns='jabber:x:data'"
                               " type='submit'><field var='action'><value>create</value></field>"
                               "<field var='circle'><value>Team</value></field></x></command>", "b2")
        assert "status='completed'" in answer, answer
    assert "Team\t" in running.ctl("circle", "list", "localhost").stdout
