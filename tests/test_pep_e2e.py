"""
PEP end to end, over real sockets against a real server, with clients that
really use it: two slixmpp-omemo clients (XEP-0384, legacy and OMEMO 2)
that are not contacts publish their device lists and bundles and exchange
an encrypted message, and a stranger reads the device list; slixmpp's
XEP-0084 avatar and XEP-0172 nick plugins publish, a contact whose caps
say +notify hears of it, and the last item reaches a client at login.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunningServer
from slix import Client as SlixClient
from slix import run
from test_presence import online, subscribeBothWays
from test_roster import PASSWORD, addUsers

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
LEGACY_DEVICES = "eu.siacs.conversations.axolotl.devicelist"
OMEMO2_DEVICES = "urn:xmpp:omemo:2:devices"
USERS = ("romeo", "juliet", "mallory", "alice", "bob", "carol")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, its accounts created."""
    running = RunningServer(tmp_path_factory.mktemp("pep")).start()
    addUsers(running, *(f"{name}@localhost" for name in USERS))
    yield running
    running.stop()


def deviceIds(reply, namespace: str) -> set[int]:
    """The device ids of a device-list items answer (legacy or OMEMO 2)."""
    assert reply["type"] == "result", reply.toXml()
    ids = set()
    for item in reply.pubsub.items.elements(NS_PUBSUB, "item"):
        for devices in item.elements():
            for device in devices.elements():
                ids.add(int(device["id"]))
    return ids


def test_omemoBetweenStrangers(server):
    """
    Two OMEMO clients that are not contacts publish their device lists and
    bundles (open access, with publish-options), a third account that knows
    neither reads them, and one client sends the other an encrypted message
    that it decrypts (C{omemo_clients.py}, in a process of its own: the
    XML schemas of python-omemo cannot be built once Wokkel's data forms
    have declared zope interfaces on the mapping types).
    """
    if importlib.util.find_spec("slixmpp_omemo") is None:
        pytest.skip("slixmpp-omemo (the [test] extra) is not installed")
    script = Path(__file__).parent / "omemo_clients.py"
    done = subprocess.run([sys.executable, str(script), str(server.port), PASSWORD],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = json.loads(done.stdout.splitlines()[-1])
    assert outcome["decrypted"] == "Wherefore art thou"
    assert outcome["sender"] == "juliet@localhost"
    assert not outcome["plaintextOnWire"]
    deviceId = outcome["romeoDevice"]
    stranger = online(server.port, "mallory")
    for node, namespace in ((LEGACY_DEVICES, "legacy"), (OMEMO2_DEVICES, "omemo2")):
        reply = stranger.request(f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'/></pubsub>",
                                 "get", "romeo@localhost")
        assert deviceId in deviceIds(reply, namespace)
    reply = stranger.request(f"<pubsub xmlns='{NS_PUBSUB}'><items node='urn:xmpp:omemo:2:bundles'/>"
                             "</pubsub>", "get", "romeo@localhost")
    assert [item["id"] for item in reply.pubsub.items.elements(NS_PUBSUB, "item")] == [str(deviceId)]
    stranger.close()


def test_avatarAndNick(server):
    """
    Alice publishes an avatar (data and metadata) and a nick with slixmpp's
    plugins; Bob, her contact, whose caps ask for metadata+notify, gets the
    metadata event; Carol, not a contact, cannot read her avatar; at her
    next login Alice's client gets her own last metadata, and so does Bob's.
    """
    a, b = online(server.port, "alice"), online(server.port, "bob")
    subscribeBothWays(a, b)
    a.close()
    b.close()
    plugins = ("xep_0030", "xep_0060", "xep_0084", "xep_0115", "xep_0163", "xep_0172")

    async def scenario():
        alice, bob = SlixClient("alice@localhost", PASSWORD, plugins=plugins), \
            SlixClient("bob@localhost", PASSWORD, plugins=plugins)
        events = asyncio.Queue()
        bob.add_event_handler("avatar_metadata_publish", events.put_nowait)
        nicks = asyncio.Queue()
        bob.add_event_handler("user_nick_publish", nicks.put_nowait)
        assert await bob.login(server.port)
        assert await alice.login(server.port)
        await asyncio.sleep(1)  # caps queries answered
        data = b"\x89PNG fake image bytes"
        await alice["xep_0084"].publish_avatar(data)
        avatarId = alice["xep_0084"].generate_id(data)
        await alice["xep_0084"].publish_avatar_metadata(
            [{"id": avatarId, "type": "image/png", "bytes": len(data)}])
        await alice["xep_0172"].publish_nick("Alice A.")
        event = await asyncio.wait_for(events.get(), 20)
        assert event["from"].bare == "alice@localhost"
        assert event["pubsub_event"]["items"]["item"]["id"] == avatarId
        nick = await asyncio.wait_for(nicks.get(), 20)
        assert nick["pubsub_event"]["items"]["item"]["nick"]["nick"] == "Alice A."
        fetched = await bob["xep_0084"].retrieve_avatar("alice@localhost", avatarId)
        assert fetched["pubsub"]["items"]["item"]["avatar_data"]["value"] == data
        await bob.logout()
        await alice.logout()

        again = SlixClient("bob@localhost", PASSWORD, plugins=plugins)
        lastItems = asyncio.Queue()
        again.add_event_handler("avatar_metadata_publish", lastItems.put_nowait)
        assert await again.login(server.port)
        event = await asyncio.wait_for(lastItems.get(), 20)
        assert event["pubsub_event"]["items"]["item"]["id"] == avatarId
        await again.logout()
        return avatarId

    avatarId = run(scenario(), 120)
    carol = online(server.port, "carol")
    reply = carol.request(f"<pubsub xmlns='{NS_PUBSUB}'><items node='urn:xmpp:avatar:data'/></pubsub>",
                          "get", "alice@localhost")
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "item-not-found"
    carol.close()
    assert avatarId


def test_noFailuresLogged(server):
    """Everything above ran without a failure in the server's log."""
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
