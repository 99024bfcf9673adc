"""
Cluster mode end to end: a private PostgreSQL (the shared store), a private
redis-server and two or three real nodes (C{twistd -n invitesrv}) serving
one domain, clients on different nodes. Each node has a data directory of
its own; the server secret is copied from the first node to the others
before they start, as docs/cluster.md tells an admin to.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import RunningServer, startAll
from rawxmpp import NS_STREAM_HEADER, RawClient
from redisserver import RedisServer, needRedis
from slix import Client as SlixClient
from slix import run
from slixmpp.exceptions import IqError
from test_smacks_e2e import bodies as allBodies
from test_smacks_e2e import chat, settled

from invitesrv.cluster.node import CLAIM_SLOT

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[postgresql]')")

HOST = "localhost"
PASSWORD = "a long password"


class Cluster:
    """Nodes n1, n2, ... of one cluster: one Redis, one PostgreSQL database, one server secret."""

    def __init__(self, root, redis: RedisServer, dsn: str, count: int = 2, db: int = 0,
                 extra: str = "", ttl: int = 3, env: dict[str, str] | None = None):
        self.dsn = dsn
        self.nodes: list[RunningServer] = []
        for index in range(1, count + 1):
            directory = root / f"n{index}"
            directory.mkdir(parents=True)
            self.nodes.append(RunningServer(directory, (
                f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
                f'[cluster]\nenabled = true\nredis = "{redis.url}{db}"\nnode = "n{index}"\n'
                f'ttl = {ttl}\n' + extra), env=env))
        self.nodes[0].start()  # upgrades the database and makes the secret the others need
        secret = self.nodes[0].dataDir / "server.secret"
        for node in self.nodes[1:]:
            node.dataDir.mkdir(mode=0o700)
            shutil.copy2(secret, node.dataDir / "server.secret")
        startAll(self.nodes[1:])
        for node in self.nodes:
            waitForLog(node, "joined")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def waitForLog(server: RunningServer, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in the log of {server.directory}:\n{server.log()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    needRedis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis, postgresql):
    """Two nodes on a database of their own, with accounts made through the first."""
    database = postgresql.createDatabase()
    nodes = Cluster(tmp_path_factory.mktemp("cluster"), redis, postgresql.dsn(database))
    for user in ("alice", "bob", "carol", "dave", "eve", "frank", "grace", "heidi", "paul", "quinn",
                 "kate", "liam"):
        nodes.nodes[0].adduser(f"{user}@{HOST}", PASSWORD)
    yield nodes
    nodes.stop()
    postgresql.dropDatabase(database)


async def until(condition, timeout: float = 10.0, what: str = "") -> None:
    """Wait (bounded) until C{condition()} holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.05)


async def befriend(first: tuple[str, RunningServer], second: tuple[str, RunningServer]) -> None:
    """Two users, each logged in on a node, subscribe to each other both ways, then log out."""
    (one, oneNode), (other, otherNode) = first, second
    a = SlixClient(f"{one}@{HOST}/one", PASSWORD)
    b = SlixClient(f"{other}@{HOST}/one", PASSWORD)
    for client, node in ((a, oneNode), (b, otherNode)):
        assert await client.login(node.port, presence=False)
        await client.get_roster()
        client.send_presence()
    a.send_presence(pto=f"{other}@{HOST}", ptype="subscribe")
    await until(lambda: a.client_roster[f"{other}@{HOST}"]["subscription"] == "both"
                and b.client_roster[f"{one}@{HOST}"]["subscription"] == "both",
                what="a mutual subscription")
    for client in (a, b):
        await client.logout()


def test_contactsOnTwoNodes(cluster):
    """
    Alice on node 1, Bob on node 2: a subscription both ways (roster pushes
    on both nodes), each sees the other online, they chat both ways, and a
    message to Bob's bare JID reaches his one session on the other node.
    """
    n1, n2 = cluster.nodes

    async def scenario():
        alice = SlixClient(f"alice@{HOST}/phone", PASSWORD)
        bob = SlixClient(f"bob@{HOST}/desk", PASSWORD)
        online = {"alice": asyncio.Event(), "bob": asyncio.Event()}
        alice.add_event_handler("got_online", lambda p: p["from"].bare == f"bob@{HOST}"
                                and online["bob"].set())
        bob.add_event_handler("got_online", lambda p: p["from"].bare == f"alice@{HOST}"
                              and online["alice"].set())
        got = {"alice": asyncio.Queue(), "bob": asyncio.Queue()}
        alice.add_event_handler("message", lambda m: got["alice"].put_nowait(m))
        bob.add_event_handler("message", lambda m: got["bob"].put_nowait(m))
        assert await alice.login(n1.port, presence=False)
        assert await bob.login(n2.port, presence=False)
        for client in (alice, bob):
            await client.get_roster()
            client.send_presence()
        alice.send_presence(pto=f"bob@{HOST}", ptype="subscribe")
        await asyncio.wait_for(asyncio.gather(online["alice"].wait(), online["bob"].wait()), 15)
        await until(lambda: alice.client_roster[f"bob@{HOST}"]["subscription"] == "both"
                    and bob.client_roster[f"alice@{HOST}"]["subscription"] == "both",
                    what="both rosters at 'both' (roster pushes across nodes)")

        alice.send_message(mto=f"bob@{HOST}", mbody="hello from node 1", mtype="chat")
        message = await asyncio.wait_for(got["bob"].get(), 10)
        assert str(message["body"]) == "hello from node 1"
        assert message["from"] == f"alice@{HOST}/phone"
        bob.send_message(mto=f"alice@{HOST}/phone", mbody="hello from node 2", mtype="chat")
        assert str((await asyncio.wait_for(got["alice"].get(), 10))["body"]) == "hello from node 2"
        for client in (alice, bob):
            await client.logout()
    run(scenario())


def test_carbonsAndPushesAcrossNodes(cluster):
    """
    Carol on both nodes (phone on node 1, laptop on node 2, carbons on the
    laptop), Dave on node 1: the laptop gets carbons of what the phone sends
    and receives, and a roster push when the phone adds a contact; a message
    to Carol's bare JID goes to the session of highest priority, whichever
    node holds it; Dave sees Carol's laptop's presence through the probe.
    """
    n1, n2 = cluster.nodes

    async def scenario():
        plugins = ("xep_0030", "xep_0280")
        phone = SlixClient(f"carol@{HOST}/phone", PASSWORD, plugins=plugins)
        laptop = SlixClient(f"carol@{HOST}/laptop", PASSWORD, plugins=plugins)
        dave = SlixClient(f"dave@{HOST}/desk", PASSWORD, plugins=plugins)
        copies: asyncio.Queue = asyncio.Queue()
        laptop.add_event_handler("carbon_sent", lambda m: copies.put_nowait(("sent", m)))
        laptop.add_event_handler("carbon_received", lambda m: copies.put_nowait(("received", m)))
        got = {name: asyncio.Queue() for name in ("phone", "laptop", "dave")}
        for name, client in (("phone", phone), ("laptop", laptop), ("dave", dave)):
            client.add_event_handler("message", lambda m, name=name: m["body"]
                                     and got[name].put_nowait(m))
        pushes: asyncio.Queue = asyncio.Queue()
        laptop.add_event_handler("roster_update", lambda iq: pushes.put_nowait(iq))

        assert await phone.login(n1.port, presence=False)
        assert await laptop.login(n2.port, presence=False)
        assert await dave.login(n1.port, presence=False)
        for client in (phone, laptop, dave):
            await client.get_roster()
        await laptop.plugin["xep_0280"].enable(timeout=10)
        phone.send_presence(ppriority=1)
        laptop.send_presence(ppriority=5)
        dave.send_presence()
        await asyncio.sleep(0.5)  # the nodes hear of the sessions' presence

        phone.send_message(mto=f"dave@{HOST}", mbody="sent by the phone", mtype="chat")
        assert str((await asyncio.wait_for(got["dave"].get(), 10))["body"]) == "sent by the phone"
        direction, message = await asyncio.wait_for(copies.get(), 10)
        assert direction == "sent" and message["carbon_sent"]["body"] == "sent by the phone"

        dave.send_message(mto=f"carol@{HOST}/phone", mbody="for the phone", mtype="chat")
        assert str((await asyncio.wait_for(got["phone"].get(), 10))["body"]) == "for the phone"
        direction, message = await asyncio.wait_for(copies.get(), 10)
        assert direction == "received" and message["carbon_received"]["body"] == "for the phone"

        dave.send_message(mto=f"carol@{HOST}", mbody="to the bare JID", mtype="chat")
        assert str((await asyncio.wait_for(got["laptop"].get(), 10))["body"]) == "to the bare JID"
        await asyncio.sleep(0.3)
        assert got["phone"].empty()  # priority 1 < 5: only the laptop, on the other node

        await phone.update_roster(f"dave@{HOST}", name="Dave")
        deadline = time.monotonic() + 10
        while True:
            push = await asyncio.wait_for(pushes.get(), max(0.1, deadline - time.monotonic()))
            if f"dave@{HOST}" in push["roster"]["items"]:
                assert push["roster"]["items"][f"dave@{HOST}"]["name"] == "Dave"
                break
        for client in (phone, laptop, dave):
            await client.logout()
    run(scenario())


def test_presenceProbeAnsweredFromOtherNode(cluster):
    """
    Eve and Frank are mutual contacts. Eve comes online on node 2; Frank,
    logging in later on node 1, is told of her at once (his probe answered
    from the mirror of node 2's sessions), and hears when she leaves.
    """
    n1, n2 = cluster.nodes

    async def scenario():
        eve = SlixClient(f"eve@{HOST}/laptop", PASSWORD)
        frank = SlixClient(f"frank@{HOST}/desk", PASSWORD)
        seen, gone = asyncio.Event(), asyncio.Event()
        statuses = []
        frank.add_event_handler("got_online", lambda p: p["from"].bare == f"eve@{HOST}"
                                and (statuses.append(p["status"]), seen.set()))
        frank.add_event_handler("got_offline", lambda p: p["from"].bare == f"eve@{HOST}"
                                and gone.set())
        assert await eve.login(n2.port, presence=False)
        await eve.get_roster()
        eve.send_presence(pstatus="on node 2")
        await asyncio.sleep(0.5)
        assert await frank.login(n1.port, presence=False)
        await frank.get_roster()
        frank.send_presence()
        await asyncio.wait_for(seen.wait(), 10)
        assert statuses == ["on node 2"]
        await eve.logout()
        await asyncio.wait_for(gone.wait(), 10)
        await frank.logout()
    run(befriend(("eve", n1), ("frank", n2)))
    run(scenario())


def test_rosterChangedOnOtherNode(cluster):
    """
    Grace's roster is kept in node 1's memory while she is online there;
    Heidi, on node 2, cancels Grace's subscription (node 2 writes Grace's
    roster): node 1 drops its copy, and Grace's next roster get says 'from'.
    """
    n1, n2 = cluster.nodes

    run(befriend(("grace", n1), ("heidi", n1)))

    def rosterGet(client: RawClient, iqid: str) -> str:
        """The answer to a roster get (not the pushes received before it)."""
        client.send(f"<iq type='get' id='{iqid}'><query xmlns='jabber:iq:roster'/></iq>")
        pattern = rf"<iq [^>]*id='{iqid}'.*?</iq>"
        return re.search(pattern, client.recvUntil(pattern), re.S).group(0)

    with RawClient(n1.port) as grace, RawClient(n2.port) as heidi:
        grace.login("grace", PASSWORD, "desk")
        assert re.search(rf"jid='heidi@{HOST}'[^>]*subscription='both'", rosterGet(grace, "r1"))
        grace.send("<presence/>")
        heidi.login("heidi", PASSWORD, "desk")
        heidi.send(f"<presence to='grace@{HOST}' type='unsubscribed'/>")
        time.sleep(1.5)  # past roster_settle
        assert re.search(rf"jid='heidi@{HOST}'[^>]*subscription='from'", rosterGet(grace, "r2"))


def test_groupChatAcrossNodes(cluster):
    """
    Alice on node 1 and Bob on node 2 join one room: both see each other
    join, and a message to the room reaches both (the room lives on the
    node that serves the group chats for the cluster, and its stanzas for
    occupants on the other node are forwarded).
    """
    n1, n2 = cluster.nodes
    room = "tea@groups.localhost"

    async def scenario():
        plugins = ("xep_0030", "xep_0045", "xep_0004", "xep_0359")
        alice = SlixClient(f"alice@{HOST}/muc", PASSWORD, plugins=plugins)
        bob = SlixClient(f"bob@{HOST}/muc", PASSWORD, plugins=plugins)
        assert await alice.login(n1.port)
        assert await bob.login(n2.port)
        await alice.plugin["xep_0045"].join_muc_wait(room, "Alice", timeout=10)
        form = alice.plugin["xep_0004"].make_form("submit")  # an instant room
        form.add_field("FORM_TYPE", value="http://jabber.org/protocol/muc#roomconfig")
        await alice.plugin["xep_0045"].set_room_config(room, form)
        _, _, occupants, _ = await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=10)
        assert f"{room}/Alice" in [str(p["from"]) for p in occupants]
        got = {"alice": asyncio.Queue(), "bob": asyncio.Queue()}
        alice.add_event_handler("groupchat_message", got["alice"].put_nowait)
        bob.add_event_handler("groupchat_message", got["bob"].put_nowait)
        bob.send_message(mto=room, mbody="from node 2", mtype="groupchat")
        for name in ("alice", "bob"):
            message = await asyncio.wait_for(got[name].get(), 10)
            assert (str(message["from"]), message["body"]) == (f"{room}/Bob", "from node 2")
        for client in (alice, bob):
            await client.logout()
    run(scenario())


def test_blockHoldsOnTheOtherNode(cluster):
    """Carol on node 2 blocks Dave: Dave's message from node 1 is refused there, not delivered."""
    n1, n2 = cluster.nodes
    with RawClient(n2.port) as carol, RawClient(n1.port) as dave:
        carol.login("carol", PASSWORD, "blocker")
        carol.send("<presence/>")
        carol.send(f"<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'>"
                   f"<item jid='dave@{HOST}'/></block></iq>")
        assert "type='result'" in carol.recvUntil(r"<iq [^>]*id='b1'[^>]*(/>|>.*?</iq>)")
        time.sleep(0.5)  # node 1 reads Carol's blocklist again
        dave.login("dave", PASSWORD, "blocked")
        dave.send(f"<message to='carol@{HOST}' type='chat' id='x1'><body>hello?</body></message>")
        pattern = r"<message [^>]*id='x1'.*?</message>"
        answer = re.search(pattern, dave.recvUntil(pattern), re.S).group(0)
        assert "type='error'" in answer and "service-unavailable" in answer
        carol.send(f"<iq type='set' id='b2'><unblock xmlns='urn:xmpp:blocking'>"
                   f"<item jid='dave@{HOST}'/></unblock></iq>")
        assert "type='result'" in carol.recvUntil(r"<iq [^>]*id='b2'[^>]*(/>|>.*?</iq>)")
        assert "hello?" not in carol.readAll(0.5)


NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_EVENT = NS_PUBSUB + "#event"
NS_AXOLOTL = "eu.siacs.conversations.axolotl"
DEVICES = NS_AXOLOTL + ".devicelist"
AVATAR_METADATA = "urn:xmpp:avatar:metadata"
BOOKMARKS = "urn:xmpp:bookmarks:1"


def deviceList(*ids: int) -> ET.Element:
    """A legacy OMEMO device list, as a client publishes it."""
    return ET.fromstring(f"<list xmlns='{NS_AXOLOTL}'>"
                         + "".join(f"<device id='{i}'/>" for i in ids) + "</list>")


def devicesOf(items) -> set[int]:
    """The device ids in the items of an event or an items answer."""
    return {int(device.get("id")) for item in items for device in item["payload"]}


async def pepEvent(events: asyncio.Queue, node: str, timeout: float = 15.0):
    """The next event (kind, message) of C{node} among those queued, the others passed over."""
    deadline = time.monotonic() + timeout
    while True:
        kind, message = await asyncio.wait_for(events.get(), max(0.1, deadline - time.monotonic()))
        event = message["pubsub_event"]
        if (event["delete"]["node"] if kind == "delete" else event["items"]["node"]) == node:
            return kind, message


def test_pepAcrossNodes(cluster):
    """
    Paul publishes on node 1; Quinn, his contact on node 2, whose caps ask
    for OMEMO device lists and avatar metadata (+notify), hears of each
    publication, retraction and deletion, and what she reads through node 2
    is what node 1 wrote (node 2 forgets its copy of Paul's nodes when node
    1 changes them). Logging in again on node 2, she gets his last avatar.
    """
    n1, n2 = cluster.nodes
    run(befriend(("paul", n1), ("quinn", n2)))
    plugins = ("xep_0030", "xep_0060", "xep_0084", "xep_0115", "xep_0163")

    def contact() -> tuple[SlixClient, asyncio.Queue]:
        """Quinn's client (its caps say devicelist+notify and metadata+notify) and Paul's events."""
        quinn = SlixClient(f"quinn@{HOST}/phone", PASSWORD, plugins=plugins)
        quinn.plugin["xep_0163"].add_interest(DEVICES)
        events: asyncio.Queue = asyncio.Queue()
        for kind in ("publish", "retract", "delete"):
            quinn.add_event_handler(f"pubsub_{kind}", lambda m, kind=kind: m["from"].bare == f"paul@{HOST}"
                                   and events.put_nowait((kind, m)))
        return quinn, events

    async def scenario():
        quinn, events = contact()
        paul = SlixClient(f"paul@{HOST}/desk", PASSWORD, plugins=plugins)
        assert await quinn.login(n2.port)
        assert await paul.login(n1.port)
        await asyncio.sleep(1)  # caps announced and checked
        pubsub = paul.plugin["xep_0060"]
        owner = f"paul@{HOST}"

        await pubsub.publish(owner, DEVICES, id="current", payload=deviceList(1))
        kind, event = await pepEvent(events, DEVICES)
        assert kind == "publish" and devicesOf(event["pubsub_event"]["items"]) == {1}
        read = await quinn.plugin["xep_0060"].get_items(owner, DEVICES)
        assert devicesOf(read["pubsub"]["items"]) == {1}

        await pubsub.publish(owner, DEVICES, id="current", payload=deviceList(1, 2))
        read = await quinn.plugin["xep_0060"].get_items(owner, DEVICES)
        assert devicesOf(read["pubsub"]["items"]) == {1, 2}  # not node 2's copy from before
        kind, event = await pepEvent(events, DEVICES)
        assert kind == "publish" and devicesOf(event["pubsub_event"]["items"]) == {1, 2}

        await pubsub.retract(owner, DEVICES, "current", notify=True)
        kind, event = await pepEvent(events, DEVICES)
        assert kind == "retract" and event["pubsub_event"]["items"]["retract"]["id"] == "current"
        read = await quinn.plugin["xep_0060"].get_items(owner, DEVICES)
        assert list(read["pubsub"]["items"]) == []

        await pubsub.publish(owner, DEVICES, id="current", payload=deviceList(3))
        assert (await pepEvent(events, DEVICES))[0] == "publish"
        await pubsub.delete_node(owner, DEVICES)
        assert (await pepEvent(events, DEVICES))[0] == "delete"
        with pytest.raises(IqError) as missing:
            await quinn.plugin["xep_0060"].get_items(owner, DEVICES)
        assert missing.value.iq["error"]["condition"] == "item-not-found"

        await paul.plugin["xep_0084"].publish_avatar_metadata([{"id": "a1", "type": "image/png", "bytes": 3}])
        kind, event = await pepEvent(events, AVATAR_METADATA)
        assert event["pubsub_event"]["items"]["item"]["id"] == "a1"
        await quinn.logout()
        await paul.plugin["xep_0084"].publish_avatar_metadata([{"id": "a2", "type": "image/png", "bytes": 4}])
        quinn, events = contact()
        assert await quinn.login(n2.port)  # her presence: his last items, read on node 2
        kind, event = await pepEvent(events, AVATAR_METADATA)
        assert event["pubsub_event"]["items"]["item"]["id"] == "a2"
        for client in (quinn, paul):
            await client.logout()
    run(scenario(), 90)


def test_avatarAcrossNodesWithAioxmpp(cluster):
    """
    aioxmpp on both sides: Kate on node 1 publishes an avatar; Liam, her
    contact on node 2, is told (aioxmpp's AvatarService asks for metadata
    +notify), and gets it as her vCard photo through node 2; so with her
    next avatar (XEP-0398: node 2 reads her avatar again).
    """
    pytest.importorskip("aioxmpp", reason="aioxmpp (the [test] extra) is not installed")
    import aioxmpp
    import aioxmpp.avatar
    import aioxmpp.connector
    import aioxmpp.vcard
    n1, n2 = cluster.nodes
    run(befriend(("kate", n1), ("liam", n2)))

    def client(name: str, port: int):
        return aioxmpp.PresenceManagedClient(
            aioxmpp.JID.fromstr(f"{name}@{HOST}"), aioxmpp.make_security_layer(PASSWORD, no_verify=True),
            override_peer=[("127.0.0.1", port, aioxmpp.connector.STARTTLSConnector())])

    async def scenario():
        kate, liam = client("kate", n1.port), client("liam", n2.port)
        changed: asyncio.Queue = asyncio.Queue()
        liam.summon(aioxmpp.avatar.AvatarService).on_metadata_changed.connect(
            lambda jid, metadata: jid.bare() == aioxmpp.JID.fromstr(f"kate@{HOST}")
            and changed.put_nowait(list(metadata)))
        avatars = kate.summon(aioxmpp.avatar.AvatarService)
        async with kate.connected(), liam.connected():
            kate.presence = aioxmpp.PresenceState(True)
            liam.presence = aioxmpp.PresenceState(True)
            await asyncio.sleep(1)  # caps announced and checked
            for image in (b"\x89PNG\r\n\x1a\n" + bytes(range(100)), b"\x89PNG\r\n\x1a\n" + bytes(range(50))):
                avatarSet = aioxmpp.avatar.AvatarSet()
                avatarSet.add_avatar_image("image/png", image_bytes=image)
                await avatars.publish_avatar_set(avatarSet)
                descriptors = await asyncio.wait_for(changed.get(), 20)
                assert [d.id_ for d in descriptors] == [avatarSet.png_id]
                assert await descriptors[0].get_image_bytes() == image
                vcard = await liam.summon(aioxmpp.vcard.VCardService).get_vcard(
                    aioxmpp.JID.fromstr(f"kate@{HOST}"))
                assert vcard.get_photo_data() == image

    run(scenario(), 90)


def test_ownResourcesAcrossNodesRaw(cluster):
    """
    In raw XML: Paul's tablet on node 2 announces caps with bookmarks
    +notify and answers the server's caps query; a bookmark his desk
    publishes on node 1 reaches the tablet.
    """
    from twisted.words.xish import domish

    from invitesrv.caps import capsHash

    n1, n2 = cluster.nodes
    query = domish.Element(("http://jabber.org/protocol/disco#info", "query"))
    identity = query.addElement("identity")
    identity["category"], identity["type"], identity["name"] = "client", "pc", "raw"
    query.addElement("feature")["var"] = f"{BOOKMARKS}+notify"
    ver = capsHash(query)
    with RawClient(n2.port) as tablet, RawClient(n1.port) as desk:
        tablet.login("paul", PASSWORD, "tablet")
        tablet.send(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1'"
                    f" node='https://example.org/raw' ver='{ver}'/></presence>")
        asked = tablet.recvUntil(r"<iq [^>]*type='get'.*?</iq>")
        iqid = re.search(r"id='([^']+)'", re.search(r"<iq [^>]*>", asked).group(0)).group(1)
        tablet.send(f"<iq type='result' id='{iqid}' to='paul@{HOST}'>"
                    f"<query xmlns='http://jabber.org/protocol/disco#info'"
                    f" node='https://example.org/raw#{ver}'>"
                    "<identity category='client' type='pc' name='raw'/>"
                    f"<feature var='{BOOKMARKS}+notify'/></query></iq>")
        time.sleep(0.5)  # the answer checked
        desk.login("paul", PASSWORD, "desk")
        desk.send(f"<iq type='set' id='p1'><pubsub xmlns='{NS_PUBSUB}'><publish node='{BOOKMARKS}'>"
                  "<item id='tea@groups.localhost'><conference xmlns='urn:xmpp:bookmarks:1'"
                  " name='Tea' autojoin='true'/></item></publish></pubsub></iq>")
        assert "type='result'" in desk.recvUntil(r"<iq [^>]*id='p1'.*?(/>|</iq>)")
        event = tablet.recvUntil(r"<message [^>]*>.*?</message>")
        assert f"<items node='{BOOKMARKS}'>" in event and "id='tea@groups.localhost'" in event
        assert f"xmlns='{NS_EVENT}'" in event


def preauth(client: RawClient, token: str) -> str:
    """Send invite C{token} (XEP-0401) on a new stream; the answer."""
    client.startTLS()
    client.send(f"<iq type='set' id='pa'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
    return client.recvUntil(r"<iq [^>]*id='pa'[^>]*(/>|>.*?</iq>)")


def test_inviteCreatedOnOneNodeUsedOnTheOther(cluster):
    """An invite made through node 1 registers an account on node 2, which logs in on node 1."""
    n1, n2 = cluster.nodes
    output = n1.ctl("invite", "create", HOST).stdout
    token = re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1)
    with RawClient(n2.port) as client:
        assert "type='result'" in preauth(client, token)
        client.send("<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
                    f"<username>newcomer</username><password>{PASSWORD}</password></query></iq>")
        assert "type='result'" in client.recvUntil(r"<iq [^>]*id='reg'[^>]*(/>|>.*?</iq>)")
    with RawClient(n1.port) as client:
        assert client.login("newcomer", PASSWORD) == f"newcomer@{HOST}/raw"
    with RawClient(n1.port) as client:  # spent: a second use fails on either node
        assert "type='error'" in preauth(client, token)


def test_inviteRaceAcrossNodes(cluster):
    """
    Twenty streams, ten on each node, race on one single-use token: exactly
    one account is made (the reservation is one conditional update in the
    shared store, whichever node makes it).
    """
    n1, n2 = cluster.nodes
    output = n1.ctl("invite", "create", HOST).stdout
    token = re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1)
    barrier = threading.Barrier(20, timeout=30)

    def attempt(index: int) -> bool:
        with RawClient((n1, n2)[index % 2].port, timeout=30) as client:
            client.startTLS()
            barrier.wait()
            client.send(f"<iq type='set' id='pa'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
            if "type='result'" not in client.recvUntil(r"<iq [^>]*id='pa'[^>]*(/>|>.*?</iq>)"):
                return False
            client.send("<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
                        f"<username>racer{index}</username><password>{PASSWORD}</password></query></iq>")
            return "type='result'" in client.recvUntil(r"<iq [^>]*id='reg'[^>]*(/>|>.*?</iq>)")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(attempt, range(20)))
    assert results.count(True) == 1
    made = [user for user in n2.ctl("users", HOST).stdout.split() if user.startswith("racer")]
    assert len(made) == 1


def bodies(text: str) -> list[str]:
    return re.findall(r"<body>(m\d+)</body>", text)


def stored(dsn: str, username: str, enough, timeout: float = 15.0) -> tuple[list[str], list[str]]:
    """
    The bodies kept offline for, and archived by, C{username} in the
    PostgreSQL store, once C{enough(kept, archived)} holds (bounded wait).
    """
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            kept = bodies("".join(row[0] for row in conn.execute(
                "SELECT stanza FROM offline_messages WHERE username = %s ORDER BY id", (username,))))
            archived = bodies("".join(row[0] for row in conn.execute(
                "SELECT stanza FROM archive WHERE username = %s ORDER BY id", (username,))))
            if enough(kept, archived) or time.monotonic() > deadline:
                return kept, archived
            time.sleep(0.1)


def test_killedNodeLosesNoMessage(tmp_path, redis, postgresqlDSN):
    """
    Alice on node 1 writes to Bob, whose session is on node 2; node 2 is
    killed (SIGKILL) in the middle. Every message is delivered, or kept
    for Bob: those sent after the kill wait in offline storage (node 1 saw
    that nobody listens for node 2 any more), and all are in his archive.
    Node 1 keeps serving: Bob logs in there and gets them.
    """
    nodes = Cluster(tmp_path, redis, postgresqlDSN, db=1)
    try:
        n1, n2 = nodes.nodes
        for user in ("alice", "bob"):
            n1.adduser(f"{user}@{HOST}", PASSWORD)
        bob = RawClient(n2.port)
        bob.login("bob", PASSWORD, "desk")
        bob.send("<presence/>")
        alice = RawClient(n1.port)
        alice.login("alice", PASSWORD, "desk")
        alice.send("<presence/>")
        token = re.search(r"preauth=([A-Za-z0-9_-]+)", n1.ctl("invite", "create", HOST).stdout).group(1)
        newcomer = RawClient(n2.port)  # holds the invite's one use on node 2, as it dies
        assert "type='result'" in preauth(newcomer, token)
        time.sleep(0.5)  # node 1 hears of Bob's presence

        def send(index: int) -> None:
            alice.send(f"<message to='bob@{HOST}' type='chat' id='m{index}'>"
                       f"<body>m{index}</body></message>")

        for index in range(10):
            send(index)
        live = bodies(bob.recvUntil(r"<body>m9</body>"))
        assert live == [f"m{i}" for i in range(10)]
        for index in range(10, 13):
            send(index)
            time.sleep(0.02)
        n2.process.send_signal(signal.SIGKILL)  # mid-traffic
        n2.process.wait(10)
        live += bodies(bob.readAll(1))
        time.sleep(0.2)  # Redis sees node 2's connections closed
        for index in range(13, 20):
            send(index)
            time.sleep(0.02)
        bob.close()
        newcomer.close()
        sent = [f"m{i}" for i in range(20)]
        # In the shared store before anyone asks: all archived, those after the kill kept offline.
        kept, inArchive = stored(postgresqlDSN, "bob", lambda kept, archived: set(sent) <= set(
            archived) and set(sent[13:]) <= set(kept))
        assert set(sent) <= set(inArchive), inArchive  # each one kept, delivered or not
        assert set(sent[13:]) <= set(kept), kept  # after the kill: waiting for Bob

        with RawClient(n1.port) as again:
            again.login("bob", PASSWORD, "phone")
            again.send("<presence/>")
            offline = bodies(again.readAll(3))
            again.send("<iq type='set' id='mam'><query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>")
            archived = bodies(again.recvUntil(r"<iq [^>]*id='mam'.*?</iq>"))
        assert set(kept) <= set(offline), offline  # what was kept is delivered at the next login
        assert set(sent) <= set(archived)
        assert "Cluster node n2 is gone" in n1.log()
        alice.send(f"<iq type='get' id='ping' to='{HOST}'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert "type='result'" in alice.recvUntil(r"<iq [^>]*id='ping'[^>]*(/>|>.*?</iq>)")
        alice.close()

        # Node 2 comes back beside node 1 and frees what it held when it died: the invite works.
        with RawClient(n1.port) as client:
            assert "type='error'" in preauth(client, token)
        n2.start()
        with RawClient(n1.port) as client:
            assert "type='result'" in preauth(client, token)
    finally:
        nodes.stop()


def test_archiveSlotsClaimed(redis):
    """
    The script nodes claim their archive slots with, on the real Redis (four
    slots here): each node gets one of its own, a node finds its own again
    (restarted), keeps the one it had when Redis forgot it and nobody took
    it, and gets none (-1) when every slot is held.
    """
    prefix = "test:archive-slot:"

    def claim(node: str, had: int = -1) -> int:
        return int(redis.command("EVAL", CLAIM_SLOT, "1", prefix, node, "15", "4", str(had))[1:])

    assert [claim(node) for node in ("n1", "n2", "n3")] == [0, 1, 2]
    assert claim("n2") == 1
    assert int(redis.command("TTL", f"{prefix}1")[1:]) > 0
    redis.command("DEL", f"{prefix}0", f"{prefix}2")  # Redis restarted, say: n1 and n3 forgotten
    assert claim("n3", 2) == 2
    assert claim("n4") == 0
    assert claim("n1", 0) == 3  # n4 took slot 0 first
    assert claim("n5") == -1


def test_archiveIdsOfTwoNodesNeverMeet(tmp_path, redis, postgresqlDSN):
    """
    Alice on node 1 and Bob on node 2 write to Carol at once, on nodes
    whose clocks read the same microsecond (tests/steppedclock): each node
    archives every message for Carol, and none is lost from her archive
    for an id the other node gave one of its own (each node ends its ids
    with its slot); the stanza ids she gets are all different.
    """
    paths = [str(Path(__file__).parent / "steppedclock"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    nodes = Cluster(tmp_path, redis, postgresqlDSN, db=4, env=env)
    try:
        n1, n2 = nodes.nodes
        for user in ("alice", "bob", "carol"):
            n1.adduser(f"{user}@{HOST}", PASSWORD)
        alice, bob = RawClient(n1.port), RawClient(n2.port)
        alice.login("alice", PASSWORD, "desk")
        bob.login("bob", PASSWORD, "desk")
        sent = {client: [f"m{first + index}" for index in range(40)]
                for client, first in ((alice, 0), (bob, 100))}
        for client, texts in sent.items():  # each burst in one write, the two at once
            client.send("".join(f"<message to='carol@{HOST}' type='chat'><body>{text}</body>"
                                "</message>" for text in texts))
        everything = set(sent[alice] + sent[bob])
        _, archived = stored(postgresqlDSN, "carol", lambda _, archived: everything <= set(archived))
        assert not everything - set(archived), f"lost: {sorted(everything - set(archived))}"
        assert len(archived) == len(everything)
        assert "was taken" not in n1.log() + n2.log()  # no id met another: none archived again
        with RawClient(n2.port) as carol:
            carol.login("carol", PASSWORD, "phone")
            carol.send("<presence/>")
            text = "".join(carol.recvUntil("</message>") for _ in range(80))
        ids = re.findall(r"<stanza-id [^>]*id='([^']+)'", text)
        assert len(ids) == len(set(ids)) == 80
        alice.close()
        bob.close()
    finally:
        nodes.stop()


def test_failedLoginsCountedAcrossNodes(tmp_path, redis, postgresqlDSN):
    """
    Failed logins from one address are counted for the cluster: after
    three on node 1 (the block is at three here), the address is refused on
    node 2 at its next attempt.
    """
    limits = ("[limits]\nallowlist = []\nauth_failures_free = 0\nauth_failures_block = 3\n"
              "auth_delay_max = 0\n")
    nodes = Cluster(tmp_path, redis, postgresqlDSN, db=2, extra=limits)
    try:
        n1, n2 = nodes.nodes
        n1.adduser(f"mallory@{HOST}", PASSWORD)
        for _ in range(3):
            with RawClient(n1.port) as client:
                client.startTLS()
                assert "<not-authorized" in client.scram("mallory", "wrong password")
        time.sleep(0.5)  # the count travels through Redis
        with RawClient(n2.port) as client:
            client.startTLS()
            client.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                        "AG1hbGxvcnkAd3JvbmcgcGFzc3dvcmQ=</auth>")
            assert "policy-violation" in client.readAll(5)
    finally:
        nodes.stop()


def test_newConnectionsCountedAcrossNodes(tmp_path, redis, postgresqlDSN):
    """
    New connections from one address spend one budget for the cluster
    (connection_burst 4, refilled at one a second): after four on node 1,
    node 2 refuses the next, which on its own it would have taken.
    """
    limits = "[limits]\nallowlist = []\nconnection_rate = 1\nconnection_burst = 4\n"
    nodes = Cluster(tmp_path, redis, postgresqlDSN, db=5, extra=limits)
    try:
        n1, n2 = nodes.nodes
        for _ in range(4):
            with RawClient(n1.port) as client:
                assert "<stream:features" in client.openStream()
        time.sleep(0.3)  # the counts travel through Redis (well under the second a token takes)
        with RawClient(n2.port) as client:
            client.send(NS_STREAM_HEADER.format(host=HOST))
            assert "Too many new connections from your address" in client.readAll(5)
    finally:
        nodes.stop()


def test_redisRestarted(tmp_path, postgresqlDSN):
    """
    Redis stops: each node keeps its clients, and a message for a session
    of the other node waits in offline storage. Redis comes back (empty):
    the nodes write their sessions again and read each other's, and
    messages cross again.
    """
    needRedis()
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis").start()
    nodes = None
    try:
        nodes = Cluster(tmp_path, redis, postgresqlDSN)
        n1, n2 = nodes.nodes
        for user in ("alice", "bob"):
            n1.adduser(f"{user}@{HOST}", PASSWORD)
        bob = RawClient(n2.port)
        bob.login("bob", PASSWORD, "desk")
        bob.send("<presence/>")
        alice = RawClient(n1.port)
        alice.login("alice", PASSWORD, "desk")
        alice.send("<presence/>")
        time.sleep(0.5)
        alice.send(f"<message to='bob@{HOST}' type='chat' id='m1'><body>m1</body></message>")
        assert "m1" in bob.recvUntil(r"<body>m1</body>")

        redis.stop()
        time.sleep(0.5)
        alice.send(f"<message to='bob@{HOST}' type='chat' id='m2'><body>m2</body></message>")
        redis.start()
        for node in (n1, n2):
            deadline = time.monotonic() + 30
            while node.log().count("joined") < 2:
                assert time.monotonic() < deadline, node.log()
                time.sleep(0.1)
        time.sleep(0.5)
        alice.send(f"<message to='bob@{HOST}' type='chat' id='m3'><body>m3</body></message>")
        assert "m3" in bob.recvUntil(r"<body>m3</body>")
        bob.close()
        with RawClient(n1.port) as again:  # m2 waited offline
            again.login("bob", PASSWORD, "phone")
            again.send("<presence/>")
            assert "m2" in again.recvUntil(r"<body>m2</body>")
        alice.close()
    finally:
        if nodes is not None:
            nodes.stop()
        redis.stop()


# -- stream management resumed on another node -------------------------------------

NS_SM = "urn:xmpp:sm:3"


def enableSM(client: RawClient) -> str:
    """Resumable stream management on; the token."""
    client.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    return re.search(r"id='([^']+)'", client.recvUntil(r"<enabled [^>]*/>")).group(1)


def authenticated(port: int, user: str) -> RawClient:
    """A new connection authenticated as C{user}, its stream restarted, nothing bound."""
    client = RawClient(port)
    client.startTLS()
    assert "<success" in client.scram(user, PASSWORD)
    client.openStream()
    return client


def test_frozenLinkResumedOnTheOtherNode(cluster):
    """
    Ivan's phone on node 1 with stream management; its link freezes (the
    old TCP connection still open, as a phone changing networks leaves it).
    Judy, on node 2, writes to it meanwhile. The phone reconnects to node 2
    and resumes: <resumed/> with its count, the two messages it did not
    acknowledge once each, then the conversation goes on on node 2; Judy
    sees no presence from Ivan at all (no unavailable, no new session).
    """
    from test_smacks_e2e import FreezingProxy
    n1, n2 = cluster.nodes
    for user in ("ivan", "judy"):
        n1.adduser(f"{user}@{HOST}", PASSWORD)
    run(befriend(("ivan", n1), ("judy", n2)))
    proxy = FreezingProxy(n1.port)
    try:
        with RawClient(proxy.port) as phone, RawClient(n2.port) as judy:
            me = phone.login("ivan", PASSWORD, "phone")
            judy.login("judy", PASSWORD, "desk")
            judy.send("<presence/>")
            settled(judy)
            phone.send("<presence/>")
            judy.recvUntil(r"<presence [^>]*from='ivan@localhost/phone'")
            phone.recvUntil(r"<presence [^>]*from='judy@localhost/desk'")
            settled(phone)  # before management: not counted
            token = enableSM(phone)
            chat(judy, me, "before")
            received = phone.recvUntil(r"before</body>.*?</message>")
            assert allBodies(received) == ["before"]
            # Whatever else came since <enabled/> counts too (node 2 may ask
            # the phone for its caps). The acknowledgement is read before the
            # link freezes: the answer to the <r/> behind it says so.
            handled = len(re.findall(r"<(?:message|presence|iq)[\s/>]", received))
            phone.send(f"<a xmlns='{NS_SM}' h='{handled}'/><r xmlns='{NS_SM}'/>")
            phone.recvUntil(r"<a [^>]*h='\d+'[^>]*/>")
            proxy.freeze()
            chat(judy, me, "frozen 1")
            chat(judy, me, "frozen 2")
            settled(judy)
            time.sleep(0.3)  # node 1 has them
            with authenticated(n2.port, "ivan") as again:
                again.send(f"<resume xmlns='{NS_SM}' previd='{token}' h='{handled}'/>")
                resumed = again.recvUntil(r"<resumed [^>]*/>")
                assert f"previd='{token}'" in resumed and "h='0'" in resumed, resumed
                text = again.recvUntil(r"frozen 2</body>.*?</message>")
                assert allBodies(text) == ["frozen 1", "frozen 2"]
                chat(judy, me, "after")
                text = again.recvUntil(r"after</body>.*?</message>") + again.readAll(1.0)
                assert allBodies(text) == ["after"]
                chat(again, "judy@localhost", "back")
                seen = judy.recvUntil(r"back</body>.*?</message>") + judy.readAll(0.5)
                assert "<presence" not in seen, seen
        assert "ivan@localhost/phone: handed over to node n2" in n1.log()
        assert "ivan@localhost/phone: handed over by node n1" in n2.log()
    finally:
        proxy.close()


def test_slixmppResumesOnTheOtherNode(cluster):
    """
    slixmpp's xep_0198 on node 1 loses its connection; a message reaches
    it on node 1 meanwhile; it reconnects to node 2 and resumes there: the
    message arrives once.
    """
    n1, n2 = cluster.nodes
    for user in ("kim", "leo"):
        n1.adduser(f"{user}@{HOST}", PASSWORD)

    async def scenario():
        kim = SlixClient(f"kim@{HOST}/slix", PASSWORD, plugins=("xep_0030", "xep_0199", "xep_0198"))
        got: asyncio.Queue = asyncio.Queue()
        kim.add_event_handler("message", lambda message: got.put_nowait(str(message["body"])))
        loop = asyncio.get_event_loop()
        enabled, resumed = loop.create_future(), loop.create_future()
        kim.add_event_handler("sm_enabled", lambda _: enabled.done() or enabled.set_result(True))
        kim.add_event_handler("session_resumed",
                              lambda _: resumed.done() or resumed.set_result(True))
        assert await kim.login(n1.port)
        await asyncio.wait_for(enabled, 10)
        leo = RawClient(n2.port)
        try:
            leo.login("leo", PASSWORD)
            chat(leo, f"kim@{HOST}/slix", "one")
            assert await asyncio.wait_for(got.get(), 10) == "one"
            lost = kim.disconnected
            kim.abort()
            await asyncio.wait_for(lost, 10)
            await asyncio.sleep(0.5)  # node 1 notices the connection is gone
            chat(leo, f"kim@{HOST}/slix", "two")
            settled(leo)
            kim.connect("127.0.0.1", n2.port)
            await asyncio.wait_for(resumed, 15)
            assert await asyncio.wait_for(got.get(), 10) == "two"
            await asyncio.sleep(0.5)
            assert got.empty()
        finally:
            leo.close()
            await kim.logout()
    run(scenario())
    assert "kim@localhost/slix: handed over by node n1" in n2.log()


def test_resumeFailsWhenTheNodeWasKilled(tmp_path, redis, postgresqlDSN):
    """
    The node holding the session is killed (SIGKILL) while it waits: the
    resumption on the other node fails at once with item-not-found, the
    client binds afresh on the same stream, and what it was sent is in
    the archive (and what the dead node had not handed on waits nowhere
    else: nothing is lost).
    """
    nodes = Cluster(tmp_path, redis, postgresqlDSN, db=3)
    try:
        n1, n2 = nodes.nodes
        for user in ("lena", "mike"):
            n1.adduser(f"{user}@{HOST}", PASSWORD)
        phone = RawClient(n1.port)
        me = phone.login("lena", PASSWORD, "phone")
        token = enableSM(phone)
        with RawClient(n2.port) as mike:
            mike.login("mike", PASSWORD)
            settled(mike)
            time.sleep(0.3)  # node 2 knows of Lena's session
            chat(mike, me, "m1")
            phone.recvUntil(r"m1</body>")
            phone.close()  # cut, no acknowledgement
            time.sleep(0.5)
            chat(mike, me, "m2")
            settled(mike)
            time.sleep(0.3)
            n1.process.send_signal(signal.SIGKILL)
            n1.process.wait(10)
            time.sleep(0.2)
            with authenticated(n2.port, "lena") as again:
                started = time.monotonic()
                again.send(f"<resume xmlns='{NS_SM}' previd='{token}' h='0'/>")
                failed = again.recvUntil(r"</failed>")
                assert "item-not-found" in failed and time.monotonic() - started < 3
                again.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                           "<resource>phone</resource></bind></iq>")
                again.recvUntil(r"<iq[^>]*id='b'.*?</iq>")
                again.send("<presence/>")
                again.send("<iq type='set' id='mam'><query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>")
                archived = allBodies(again.recvUntil(r"<iq [^>]*id='mam'.*?</iq>"))
                assert {"m1", "m2"} <= set(archived), archived
    finally:
        nodes.stop()


def test_sasl2InlineResumeOnTheOtherNode(cluster):
    """
    Stream management enabled inside Bind2 on node 1, and the lost session
    resumed inside SASL2's <authenticate/> on node 2: <resumed/> in
    <success/>, nothing bound anew, what was not acknowledged sent again.
    """
    from saslclient import NS_BIND2, SASLClient
    n1, n2 = cluster.nodes
    for user in ("nina", "omar"):
        n1.adduser(f"{user}@{HOST}", PASSWORD)
    credentials = f"\0nina\0{PASSWORD}".encode()
    with RawClient(n2.port) as omar:
        omar.login("omar", PASSWORD)
        phone = SASLClient(n1.port)
        phone.startTLS()
        result = phone.authenticate("PLAIN", credentials, f"<bind xmlns='{NS_BIND2}'><tag>phone</tag>"
                                    f"<enable xmlns='{NS_SM}' resume='true'/></bind>")
        assert result.ok, result
        token = re.search(r"<enabled [^>]*id=.([^'\"]+)", result.xml).group(1)
        time.sleep(0.3)  # node 2 knows of the session
        chat(omar, result.identifier, "one")
        phone.recvUntil(r"one</body>")
        phone.close()
        time.sleep(0.5)
        chat(omar, result.identifier, "two")
        settled(omar)
        time.sleep(0.3)
        with SASLClient(n2.port) as again:
            again.startTLS()
            resumed = again.authenticate("PLAIN", credentials,
                                         f"<resume xmlns='{NS_SM}' previd='{token}' h='0'/>"
                                         f"<bind xmlns='{NS_BIND2}'><tag>phone</tag></bind>")
            assert resumed.ok and f"previd='{token}'" in resumed.xml, resumed.xml
            assert "<bound" not in resumed.xml and resumed.identifier == result.identifier
            assert allBodies(again.recvUntil(r"two</body>")) == ["one", "two"]


def sessionLines(node: RunningServer, *users: str) -> list[list[str]]:
    """
    C{invitesrvctl sessions} on C{node}: each line's JID and node; with
    C{users}, theirs only (a shared cluster may hold other tests' sessions).
    """
    lines = [[line.split("\t")[0], line.split("\t")[-1]]
             for line in node.ctl("sessions").stdout.splitlines()]
    return [line for line in lines if not users or line[0].split("@")[0] in users]


def test_adminViewsAcrossNodes(cluster):
    """
    Asked on node 1, C{invitesrvctl sessions} lists the sessions of both
    nodes with the node of each, C{announce} reaches them all, and C{kick}
    ends an account's sessions on the other node.
    """
    n1, n2 = cluster.nodes
    with RawClient(n1.port) as grace, RawClient(n2.port) as heidi, RawClient(n2.port) as phone:
        grace.login("grace", PASSWORD, "phone")
        heidi.login("heidi", PASSWORD, "desk")
        phone.login("heidi", PASSWORD, "phone")
        expected = [[f"grace@{HOST}/phone", "n1"], [f"heidi@{HOST}/desk", "n2"],
                    [f"heidi@{HOST}/phone", "n2"]]
        deadline = time.monotonic() + 10
        while (lines := sessionLines(n1, "grace", "heidi")) != expected:  # node 1 hears of node 2's
            assert time.monotonic() < deadline, lines
            time.sleep(0.1)
        assert sessionLines(n2, "grace", "heidi") == expected

        everyone = len(sessionLines(n1))
        result = n1.ctl("announce", HOST, "Maintenance at noon")
        assert result.stdout.strip() == f"Sent to {everyone} session(s)", result.stderr
        for client in (grace, heidi, phone):
            client.recvUntil("<body>Maintenance at noon</body>")

        result = n1.ctl("kick", f"heidi@{HOST}", "--text", "bye")
        assert result.stdout.strip() == "Disconnected 2 session(s)", result.stderr
        for client in (heidi, phone):
            assert "policy-violation" in client.recvUntil("</stream:stream>")
        deadline = time.monotonic() + 10
        while (lines := sessionLines(n1, "grace", "heidi")) != expected[:1]:
            assert time.monotonic() < deadline, lines
            time.sleep(0.1)


def test_deadNodeReportedByAdminViews(tmp_path, redis, postgresqlDSN):
    """
    Node 2 is killed (SIGKILL) while its registration has long to live:
    C{sessions} asked on node 1 answers at once, says node 2 is gone and
    lists only node 1's sessions, and node 2's are dropped on node 1.
    """
    nodes = Cluster(tmp_path, redis, postgresqlDSN, db=3, ttl=120)
    try:
        n1, n2 = nodes.nodes
        for user in ("alice", "bob"):
            n1.adduser(f"{user}@{HOST}", PASSWORD)
        with RawClient(n1.port) as alice, RawClient(n2.port) as bob:
            alice.login("alice", PASSWORD, "desk")
            bob.login("bob", PASSWORD, "desk")
            deadline = time.monotonic() + 10
            while len(lines := sessionLines(n1)) != 2:
                assert time.monotonic() < deadline, lines
                time.sleep(0.1)
            n2.process.send_signal(signal.SIGKILL)
            n2.process.wait(10)
            time.sleep(0.2)  # Redis sees node 2's connections closed
            started = time.monotonic()
            result = n1.ctl("sessions")
            assert time.monotonic() - started < 30
            assert result.stdout.splitlines() == [f"alice@{HOST}/desk\t127.0.0.1\tnot available\tn1"]
            assert "Node n2 is gone" in result.stderr
            assert "Cluster node n2 is gone (nobody listens on its channel)" in n1.log()
            result = n1.ctl("announce", HOST, "still here")
            assert result.stdout.strip() == "Sent to 1 session(s)", result.stderr
            alice.recvUntil("<body>still here</body>")
    finally:
        nodes.stop()


def test_noFailuresLogged(cluster):
    """Everything the two nodes of the module's cluster did ran without a failure in their logs."""
    for node in cluster.nodes:
        log = node.log()
        assert "Traceback" not in log and "Unhandled" not in log, log
