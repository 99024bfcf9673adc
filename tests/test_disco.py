"""
XEP-0030 service discovery, end to end: the server's identity and the
features its modules declare, and the account identity on a bare JID, shown
only to the account itself and to contacts subscribed to its presence.
"""

from __future__ import annotations

import re

import pytest
from conftest import RunningServer
from rawxmpp import RawClient
from slix import Client, run

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module with the default modules."""
    running = RunningServer(tmp_path_factory.mktemp("disco"), "").start()
    for user in ("alice", "bob", "carol"):
        running.adduser(f"{user}@localhost", f"{user} password")
    yield running
    running.stop()


def query(client: RawClient, iqID: str, to: str | None, namespace: str = NS_INFO) -> str:
    """Send a disco query (no C{to} when None) and return the reply."""
    address = f" to='{to}'" if to else ""
    client.send(f"<iq type='get' id='{iqID}'{address}><query xmlns='{namespace}'/></iq>")
    return client.recvUntil(rf"<iq[^>]*id='{iqID}'[^>]*(/>|>.*?</iq>)")


def errorPart(reply: str) -> str:
    """The C{<error/>} of a reply (what must not differ between two refusals)."""
    return re.search(r"<error.*</error>", reply).group(0)


def test_serverIdentityAndFeatures(server):
    """The server is server/im "invitesrv" and lists each enabled module's features."""
    with RawClient(server.port) as client:
        client.login("alice", "alice password", "info")
        reply = query(client, "s1", "localhost")
    assert "type='result'" in reply
    assert re.search(r"<identity (?=[^>]*category='server')(?=[^>]*type='im')(?=[^>]*name='invitesrv')",
                     reply)
    features = set(re.findall(r"<feature var='([^']+)'", reply))
    assert {NS_INFO, NS_ITEMS, "msgoffline", "http://jabber.org/protocol/commands",
            "urn:xmpp:ping", "jabber:iq:version", "urn:xmpp:time"} <= features


def test_slixmppDiscoversTheServer(server):
    """slixmpp's xep_0030 reads the identity, the features and the (empty) items."""
    async def scenario():
        client = Client("bob@localhost/slix", "bob password")
        assert await client.login(server.port)
        info = await client.plugin["xep_0030"].get_info("localhost", timeout=5)
        identities = info["disco_info"]["identities"]
        assert ("server", "im", None, "invitesrv") in identities
        assert "msgoffline" in info["disco_info"]["features"]
        items = await client.plugin["xep_0030"].get_items("localhost", timeout=5)
        assert items["type"] == "result"
        await client.logout()
    run(scenario())


def test_ownAccount(server):
    """A user discovers its own bare JID, with C{to} or without: account/registered."""
    with RawClient(server.port) as client:
        client.login("alice", "alice password", "own")
        for reply in (query(client, "o1", "alice@localhost"), query(client, "o2", None)):
            assert "type='result'" in reply
            assert re.search(r"<identity (?=[^>]*category='account')(?=[^>]*type='registered')", reply)
        assert "type='result'" in query(client, "o3", None, NS_ITEMS)


def test_strangersLearnNothing(server):
    """Without a subscription, an existing and a missing account get the same refusal."""
    with RawClient(server.port) as client:
        client.login("carol", "carol password", "stranger")
        existing = query(client, "x1", "alice@localhost")
        missing = query(client, "x2", "nobody@localhost")
        items = query(client, "x3", "alice@localhost", NS_ITEMS)
    for reply in (existing, missing, items):
        assert "type='error'" in reply and "<service-unavailable" in reply
    assert errorPart(existing) == errorPart(missing)


def test_subscribedContact(server):
    """Once alice is subscribed to bob's presence, she may discover him; he still may not."""
    with RawClient(server.port) as alice, RawClient(server.port) as bob:
        alice.login("alice", "alice password", "sub")
        bob.login("bob", "bob password", "sub")
        bob.send("<presence/>")
        alice.send("<presence/>")
        alice.send("<presence to='bob@localhost' type='subscribe'/>")
        bob.recvUntil(r"<presence[^>]*type='subscribe'[^>]*/?>")
        bob.send("<presence to='alice@localhost' type='subscribed'/>")
        alice.recvUntil(r"<presence[^>]*type='subscribed'")
        reply = query(alice, "c1", "bob@localhost")
        assert "type='result'" in reply and "category='account'" in reply
        assert "<service-unavailable" in query(bob, "c2", "alice@localhost")
