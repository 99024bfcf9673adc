"""
PEP, avatars and vCards with aioxmpp, a second independent client library
(its own XML layer, its own XEP-0115 and XEP-0163 code): a contact whose
caps ask for avatar metadata hears of a new avatar, reads it, and finds it
as the vCard's photo (XEP-0398); a stranger reads an open node and not a
presence one; slixmpp's XEP-0048 (private storage) and XEP-0402 plugins
see the same bookmarks.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import RunningServer
from slix import Client as SlixClient
from slix import run
from test_presence import online, subscribeBothWays
from test_roster import PASSWORD, addUsers

aioxmpp = pytest.importorskip("aioxmpp", reason="aioxmpp (the [test] extra) is not installed")

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
USERS = ("dave", "erin", "frank", "gina")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, its accounts created."""
    running = RunningServer(tmp_path_factory.mktemp("pepaio")).start()
    addUsers(running, *(f"{name}@localhost" for name in USERS))
    yield running
    running.stop()


def aioClient(address: str, port: int):
    """An aioxmpp client over STARTTLS to the test server (its self-signed certificate accepted)."""
    import aioxmpp.connector
    return aioxmpp.PresenceManagedClient(
        aioxmpp.JID.fromstr(address),
        aioxmpp.make_security_layer(PASSWORD, no_verify=True),
        override_peer=[("127.0.0.1", port, aioxmpp.connector.STARTTLSConnector())])


def test_avatarWithAioxmpp(server):
    """
    Dave publishes an avatar with aioxmpp's AvatarService; Erin, his
    contact, whose AvatarService asks for metadata+notify, is told, fetches
    the image, and gets it as Dave's vCard photo; Frank, a stranger, gets
    neither the avatar nor the photo.
    """
    import aioxmpp.avatar
    import aioxmpp.vcard
    a, b = online(server.port, "dave"), online(server.port, "erin")
    subscribeBothWays(a, b)
    a.close()
    b.close()

    async def scenario():
        dave, erin, frank = (aioClient(f"{name}@localhost", server.port) for name in ("dave", "erin",
                                                                                       "frank"))
        changed = asyncio.Queue()
        erinAvatars = erin.summon(aioxmpp.avatar.AvatarService)
        erinAvatars.on_metadata_changed.connect(lambda jid, metadata: changed.put_nowait((jid, metadata)))
        daveAvatars = dave.summon(aioxmpp.avatar.AvatarService)
        async with dave.connected(), erin.connected(), frank.connected():
            dave.presence = aioxmpp.PresenceState(True)
            erin.presence = aioxmpp.PresenceState(True)
            await asyncio.sleep(1)  # caps announced and checked
            avatarSet = aioxmpp.avatar.AvatarSet()
            avatarSet.add_avatar_image("image/png", image_bytes=IMAGE)
            await daveAvatars.publish_avatar_set(avatarSet)
            jid, metadata = await asyncio.wait_for(changed.get(), 20)
            while jid.bare() != aioxmpp.JID.fromstr("dave@localhost"):
                jid, metadata = await asyncio.wait_for(changed.get(), 20)
            descriptors = list(metadata)
            assert [d.id_ for d in descriptors] == [avatarSet.png_id]
            image = await descriptors[0].get_image_bytes()
            assert image == IMAGE
            vcard = await erin.summon(aioxmpp.vcard.VCardService).get_vcard(
                aioxmpp.JID.fromstr("dave@localhost"))
            assert vcard.get_photo_data() == IMAGE
            strangerCard = await frank.summon(aioxmpp.vcard.VCardService).get_vcard(
                aioxmpp.JID.fromstr("dave@localhost"))
            assert strangerCard.get_photo_data() is None
            with pytest.raises(aioxmpp.errors.XMPPCancelError) as refused:
                await frank.summon(aioxmpp.PubSubClient).get_items(
                    aioxmpp.JID.fromstr("dave@localhost"), "urn:xmpp:avatar:metadata")
            assert refused.value.condition == aioxmpp.ErrorCondition.ITEM_NOT_FOUND

    run(scenario(), 90)


def test_bookmarksLegacyAndPep(server):
    """
    XEP-0411 across two libraries' plugins: bookmarks stored by slixmpp's
    XEP-0048 (private storage) are read by its XEP-0402 plugin, and the
    other way round.
    """
    async def scenario():
        old = SlixClient("gina@localhost", PASSWORD, plugins=("xep_0030", "xep_0048", "xep_0049"))
        new = SlixClient("gina@localhost/new", PASSWORD, plugins=("xep_0030", "xep_0060", "xep_0402"))
        assert await old.login(server.port)
        assert await new.login(server.port)
        from slixmpp.plugins.xep_0048 import Bookmarks
        bookmarks = Bookmarks()
        bookmarks.add_conference("room@muc.localhost", "gina", name="Room", autojoin=True)
        await old["xep_0048"].set_bookmarks(bookmarks, method="xep_0049")
        fetched = await new["xep_0060"].get_items("gina@localhost", "urn:xmpp:bookmarks:1")
        items = list(fetched["pubsub"]["items"])
        assert [item["id"] for item in items] == ["room@muc.localhost"]
        assert items[0]["conference"]["name"] == "Room"
        assert items[0]["conference"]["nick"] == "gina"
        from slixmpp.plugins.xep_0402.stanza import Conference
        conference = Conference()
        conference["name"], conference["autojoin"], conference["nick"] = "Other", False, "g"
        await new["xep_0060"].publish("gina@localhost", "urn:xmpp:bookmarks:1", id="other@muc.localhost",
                                      payload=conference)
        got = await old["xep_0048"].get_bookmarks(method="xep_0049")
        rooms = {str(c["jid"]): c["name"] for c in got["private"]["bookmarks"]["conferences"]}
        assert rooms == {"room@muc.localhost": "Room", "other@muc.localhost": "Other"}
        await old.logout()
        await new.logout()

    run(scenario(), 60)


def test_noFailuresLogged(server):
    """Everything above ran without a failure in the server's log."""
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
