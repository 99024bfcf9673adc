"""
Group chats end to end: a real server over TCP with STARTTLS and its SQLite
store, driven by slixmpp's XEP-0045 plugin and by aioxmpp's MUC client (two
independent client libraries); status codes checked on the raw presences;
a persistent room, its affiliations and its archive across a restart.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from slix import Client, run
from slixmpp.exceptions import PresenceError

ROOM = "tea@groups.localhost"
NS_USER = "http://jabber.org/protocol/muc#user"


def statusCodes(presence) -> set[int]:
    """The status codes of a presence as slixmpp received it (from the raw XML)."""
    x = presence.xml.find(f"{{{NS_USER}}}x")
    return {int(s.get("code")) for s in x.findall(f"{{{NS_USER}}}status")} if x is not None else set()


@pytest.fixture
def running(serverFactory):
    server = serverFactory()
    for name in ("alice", "bob", "carol"):
        server.adduser(f"{name}@localhost", f"{name} password")
    return server


def muc(name: str, resource: str = "desk") -> Client:
    return Client(f"{name}@localhost/{resource}", f"{name} password",
                  plugins=("xep_0030", "xep_0045", "xep_0004", "xep_0313", "xep_0359", "xep_0199"))


async def configure(client: Client, room: str, **values) -> None:
    """Fetch the configuration form and submit it with C{values} (var suffix -> value)."""
    form = await client.plugin["xep_0045"].get_room_config(room)
    submitted = client.plugin["xep_0004"].make_form("submit")
    submitted.add_field("FORM_TYPE", value="http://jabber.org/protocol/muc#roomconfig")
    for var, value in values.items():
        submitted.add_field(f"muc#roomconfig_{var}", value=value)
    assert form["fields"]  # the server offered a form to fill
    await client.plugin["xep_0045"].set_room_config(room, submitted)


def test_slixmppRoomLifeAndRestart(running):
    """
    slixmpp end to end: create and configure a persistent members-only room,
    a member joins, messages carry stanza ids, a nick change and a kick
    show their status codes; after a restart the room, its affiliations
    and its archive are still there.
    """
    async def before():
        alice, bob = muc("alice"), muc("bob")
        for client in (alice, bob):
            assert await client.login(running.port)
        presence, _, _, _ = await alice.plugin["xep_0045"].join_muc_wait(ROOM, "Alice", timeout=10)
        assert {110, 201} <= statusCodes(presence)
        await configure(alice, ROOM, roomname="Tea", persistentroom=True, membersonly=True)
        with pytest.raises(PresenceError, match="registration-required"):
            await bob.plugin["xep_0045"].join_muc_wait(ROOM, "Bob", timeout=10)
        await alice.plugin["xep_0045"].set_affiliation(ROOM, "member", jid="bob@localhost")
        presence, subject, occupants, _ = await bob.plugin["xep_0045"].join_muc_wait(
            ROOM, "Bob", timeout=10)
        assert statusCodes(presence) == {110, 170}
        assert f"{ROOM}/Alice" in [str(p["from"]) for p in occupants]
        got: asyncio.Queue = asyncio.Queue()
        bob.add_event_handler("groupchat_message", got.put_nowait)
        alice.send_message(mto=ROOM, mbody="welcome", mtype="groupchat")
        message = await asyncio.wait_for(got.get(), 10)
        assert (str(message["from"]), message["body"]) == (f"{ROOM}/Alice", "welcome")
        assert message["stanza_id"]["by"] == ROOM and message["stanza_id"]["id"]

        seen: asyncio.Queue = asyncio.Queue()
        alice.add_event_handler(f"muc::{ROOM}::presence", seen.put_nowait)
        bob.plugin["xep_0045"].join_muc(ROOM, "Robert")  # a nick change
        gone = await asyncio.wait_for(seen.get(), 10)
        assert gone["type"] == "unavailable" and statusCodes(gone) == {303}
        assert (await asyncio.wait_for(seen.get(), 10))["from"].resource == "Robert"
        await alice.plugin["xep_0045"].set_role(ROOM, "Robert", "none", reason="bye")
        kicked = await asyncio.wait_for(seen.get(), 10)
        assert kicked["type"] == "unavailable" and statusCodes(kicked) == {307}
        for client in (alice, bob):
            await client.logout()

    async def after():
        alice, bob = muc("alice"), muc("bob")
        for client in (alice, bob):
            assert await client.login(running.port)
        members = await alice.plugin["xep_0045"].get_affiliation_list(ROOM, "member")
        assert [str(m) for m in members] == ["bob@localhost"]
        _, _, _, history = await bob.plugin["xep_0045"].join_muc_wait(ROOM, "Bob", timeout=10,
                                                                      maxstanzas=10)
        assert [m["body"] for m in history] == ["welcome"]
        info = await bob.plugin["xep_0030"].get_info(jid=ROOM, timeout=10)
        assert "muc_membersonly" in info["disco_info"]["features"]
        archived = []
        async for page in bob.plugin["xep_0313"].iterate(ROOM, total=10):
            archived.append(page["mam_result"]["forwarded"]["stanza"]["body"])
        assert archived == ["welcome"]
        for client in (alice, bob):
            await client.logout()

    run(before())
    running.stop()
    running.start()
    run(after())


def test_aioxmppMeetsSlixmpp(running):
    """aioxmpp's MUC client joins a room made by slixmpp; both see each other's messages."""
    import aioxmpp.connector
    import aioxmpp.muc

    logging.getLogger("aioxmpp").setLevel(logging.WARNING)

    async def scenario():
        alice = muc("alice")
        assert await alice.login(running.port)
        await alice.plugin["xep_0045"].join_muc_wait(ROOM, "Alice", timeout=10)
        await configure(alice, ROOM, roomname="Tea")
        got: asyncio.Queue = asyncio.Queue()
        alice.add_event_handler("groupchat_message", got.put_nowait)

        client = aioxmpp.PresenceManagedClient(
            aioxmpp.JID.fromstr("carol@localhost/laptop"),
            aioxmpp.make_security_layer("carol password", no_verify=True),
            override_peer=[("127.0.0.1", running.port, aioxmpp.connector.STARTTLSConnector())])
        received: asyncio.Queue = asyncio.Queue()
        async with client.connected():
            room, joined = client.summon(aioxmpp.muc.MUCClient).join(
                aioxmpp.JID.fromstr(ROOM), "Carol")
            room.on_message.connect(lambda message, member, source, **kwargs:
                                    received.put_nowait((member.nick, str(message.body.any()))))
            await asyncio.wait_for(joined, 10)
            assert sorted(member.nick for member in room.members) == ["Alice", "Carol"]
            alice.send_message(mto=ROOM, mbody="hello carol", mtype="groupchat")
            assert await asyncio.wait_for(received.get(), 10) == ("Alice", "hello carol")
            reply = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
            reply.body[None] = "hello alice"
            await room.send_message(reply)
            while (message := await asyncio.wait_for(got.get(), 10))["from"].resource == "Alice":
                pass  # her own message, echoed
            assert (str(message["from"]), message["body"]) == (f"{ROOM}/Carol", "hello alice")
            await room.leave()
        await alice.logout()

    run(scenario())
