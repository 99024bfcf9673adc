"""
XEP-0352 client state indication: while a client says it is inactive,
presence updates and chat states wait (the latest per contact), and go out
in order when it is active again or something important is sent. In memory
for the rules, and over a real socket with raw XML.
"""

from __future__ import annotations

import base64
import re

import pytest
from conftest import RunningServer
from rawxmpp import RawClient
from streamharness import NS_SASL, PASSWORD, Client, ClientConnection, addAccounts

from invitesrv.modules.csi import CSIOptions

NS_CSI = "urn:xmpp:csi:0"
INACTIVE = f"<inactive xmlns='{NS_CSI}'/>"
ACTIVE = f"<active xmlns='{NS_CSI}'/>"
CHATSTATE = "<composing xmlns='http://jabber.org/protocol/chatstates'/>"


@pytest.fixture
def server(servers):
    """A server with CSI, and the accounts of a user and two contacts."""
    server = servers(modules=("csi",))
    addAccounts(server, "alice", "bob", "carol")
    return server


def presence(sender: Client, to: str, show: str) -> None:
    """Directed presence with C{show}: it reaches C{to} as a presence update does."""
    sender.send(f"<presence to='{to}'><show>{show}</show></presence>")


def stanzas(client: Client) -> list[tuple[str, str, str]]:
    """(name, from, show or body or child name) of what C{client} received, in order; forgotten after."""
    client._collect()
    seen = []
    for element in client.backlog:
        if element.name in ("presence", "message"):
            detail = element.show or element.body or next(element.elements()).name
            seen.append((element.name, element.getAttribute("from"), str(detail)))
    client.backlog.clear()
    return seen


def test_featureAfterAuthentication(server):
    """The stream offers CSI after authentication, not before."""
    connection = ClientConnection(server, encrypted=True)
    connection.openStream()
    assert not list(connection.features().elements(NS_CSI, "csi"))
    payload = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    connection.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    connection.nextNamed("success")
    connection.openStream()
    assert list(connection.features().elements(NS_CSI, "csi"))


def test_nonzasNeverEndTheStream(server):
    """CSI nonzas before binding, or twice in a row, are taken quietly."""
    connection = ClientConnection(server, encrypted=True)
    connection.openStream()
    connection.send(INACTIVE + ACTIVE)
    assert connection.streamError() is None and not connection.closed
    alice = Client(server, "alice")
    alice.send(INACTIVE + INACTIVE + ACTIVE + ACTIVE)
    assert alice.streamError() is None and not alice.closed


def test_heldUntilActiveLatestPerContactInOrder(server):
    """
    While inactive nothing trivial arrives; on <active/> the latest of
    each, in the order they last changed.
    """
    alice, bob, carol = Client(server, "alice"), Client(server, "bob"), Client(server, "carol")
    alice.send(INACTIVE)
    presence(bob, alice.jid, "away")
    presence(carol, alice.jid, "dnd")
    bob.send(f"<message to='{alice.jid}' type='chat'>{CHATSTATE}</message>")
    presence(bob, alice.jid, "xa")
    assert stanzas(alice) == []
    alice.send(ACTIVE)
    assert stanzas(alice) == [("presence", carol.jid, "dnd"), ("message", bob.jid, "composing"),
                              ("presence", bob.jid, "xa")]
    presence(bob, alice.jid, "chat")  # active again: at once
    assert stanzas(alice) == [("presence", bob.jid, "chat")]


def test_importantStanzaFlushesFirst(server):
    """A message with a body, or an IQ, goes at once while inactive, after what was held."""
    alice, bob = Client(server, "alice"), Client(server, "bob")
    alice.send(INACTIVE)
    presence(bob, alice.jid, "away")
    bob.send(f"<message to='{alice.jid}' type='chat'><body>hi</body></message>")
    assert stanzas(alice) == [("presence", bob.jid, "away"), ("message", bob.jid, "hi")]
    presence(bob, alice.jid, "xa")
    assert stanzas(alice) == []  # still inactive
    reply = alice.request("<ping xmlns='urn:xmpp:ping'/>", to="localhost")  # an IQ to the client
    assert reply["type"] == "error"  # no ping module here: the error is an IQ too
    assert stanzas(alice) == [("presence", bob.jid, "xa")]


def test_boundedBuffer(servers):
    """Past [modules.csi] max_held distinct contacts' updates, what is held is sent."""
    server = servers(modules=("csi",), module_options={"csi": {"max_held": 2}})
    assert server.hosts["localhost"].modules["csi"].options == CSIOptions(max_held=2)
    addAccounts(server, "alice", "bob", "carol", "dave")
    alice = Client(server, "alice")
    contacts = [Client(server, name) for name in ("bob", "carol", "dave")]
    alice.send(INACTIVE)
    for contact in contacts[:2]:
        presence(contact, alice.jid, "away")
    assert stanzas(alice) == []
    presence(contacts[2], alice.jid, "away")
    assert [sender for _, sender, _ in stanzas(alice)] == [c.jid for c in contacts]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A real server with the default modules (csi among them)."""
    server = RunningServer(tmp_path_factory.mktemp("csi"), "").start()
    for user in ("erin", "frank", "grace"):
        server.adduser(f"{user}@localhost", f"{user} password")
    yield server
    server.stop()


def settled(client: RawClient) -> None:
    """Wait until the server has handled what C{client} sent so far (a ping's answer)."""
    client.send("<iq type='get' id='settled'><ping xmlns='urn:xmpp:ping'/></iq>")
    client.recvUntil(r"<iq[^>]*id='settled'[^>]*/?>")


def test_rawClientInactiveThenActive(running):
    """
    Over a real socket: an inactive client gets no presence flood; a
    message with a body arrives at once after what was held; <active/>
    sends the latest presence of each contact, in order.
    """
    with RawClient(running.port) as erin, RawClient(running.port) as frank, \
            RawClient(running.port) as grace:
        me = erin.login("erin", "erin password", "phone")
        frankJID = frank.login("frank", "frank password", "desk")
        graceJID = grace.login("grace", "grace password", "desk")
        erin.send(INACTIVE)
        settled(erin)
        for show in ("away", "xa", "dnd", "chat", "away"):
            frank.send(f"<presence to='{me}'><show>{show}</show></presence>")
        settled(frank)
        grace.send(f"<presence to='{me}'><show>dnd</show></presence>")
        settled(grace)
        assert "<presence" not in erin.readAll(1.0)
        frank.send(f"<message to='{me}' type='chat'><body>wake up</body></message>")
        text = erin.recvUntil(r"wake up</body>")
        shows = re.findall(r"<presence[^>]*from='([^']+)'[^>]*>\s*<show>(\w+)</show>", text)
        assert shows == [(frankJID, "away"), (graceJID, "dnd")], text
        for show in ("xa", "dnd"):
            grace.send(f"<presence to='{me}'><show>{show}</show></presence>")
        settled(grace)
        frank.send(f"<presence to='{me}'><show>xa</show></presence>")
        settled(frank)
        assert "<presence" not in erin.readAll(1.0)
        erin.send(ACTIVE)
        text = erin.recvUntil(rf"from='{re.escape(frankJID)}'[^>]*>\s*<show>xa</show>")
        shows = re.findall(r"<presence[^>]*from='([^']+)'[^>]*>\s*<show>(\w+)</show>", text)
        assert shows == [(graceJID, "dnd"), (frankJID, "xa")], text
        assert "</stream:stream>" not in text
