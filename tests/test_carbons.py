"""
XEP-0280 message carbons: a user's other devices see the messages one
device sends and receives. In memory for the rules (which messages are
copied, to whom, and how wrapped), and end to end with slixmpp's own
carbons plugin over real sockets.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import RunningServer
from slix import Client as SlixClient
from slix import run
from streamharness import Client, addAccounts
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_CLIENT = "jabber:client"
ENABLE = f"<enable xmlns='{NS_CARBONS}'/>"


def available(client: Client, priority: int = 0) -> Client:
    """Send available presence (the presence module makes the session a recipient) and forget replies."""
    client.send(f"<presence><priority>{priority}</priority></presence>")
    client.discard()
    return client


@pytest.fixture
def world(servers):
    """Alice on two devices (phone at the higher priority, laptop), and Bob."""
    server = servers(modules=("roster", "presence", "carbons"))
    addAccounts(server, "alice", "bob")
    phone = available(Client(server, "alice", "phone"), 5)
    laptop = available(Client(server, "alice", "laptop"), 1)
    bob = available(Client(server, "bob", "desk"))
    return phone, laptop, bob


def carbon(direction: str, body: str | None = None):
    """A matcher for a carbon of C{direction} whose forwarded message has C{body}."""
    def match(element):
        if element.name != "message":
            return False
        for wrapper in element.elements(NS_CARBONS, direction):
            inner = next(next(wrapper.elements(NS_FORWARD, "forwarded")).elements(NS_CLIENT, "message"))
            return body is None or (inner.body is not None and str(inner.body) == body)
        return False
    return match


def anyCarbon(element) -> bool:
    """Whether C{element} is a carbon, sent or received."""
    return carbon("sent")(element) or carbon("received")(element)


def plain(body: str):
    """A matcher for the message itself (not a carbon) with C{body}."""
    return lambda e: e.name == "message" and e.body is not None and str(e.body) == body


def test_enableAnswersAndDiscoFeature(world):
    """Enabling and disabling are answered with a result; the host's disco names the feature."""
    phone, laptop, bob = world
    assert phone.request(ENABLE, "set")["type"] == "result"
    assert phone.request(f"<disable xmlns='{NS_CARBONS}'/>", "set")["type"] == "result"
    assert phone.request(ENABLE, "set", to="bob@localhost")["type"] == "error"  # not for another account


def test_sentAndReceivedCopies(world):
    """What the phone sends and what reaches the phone is copied to the enabled laptop, wrapped."""
    phone, laptop, bob = world
    assert laptop.request(ENABLE, "set")["type"] == "result"
    phone.send("<message to='bob@localhost' type='chat' id='m1'><body>out</body></message>")
    bob.expect(plain("out"))
    sent = laptop.expect(carbon("sent", "out"), "sent carbon")
    assert sent["from"] == "alice@localhost" and sent["to"] == laptop.jid and sent["type"] == "chat"
    inner = next(next(sent.elements(NS_CARBONS, "sent")).elements(NS_FORWARD, "forwarded")).message
    assert inner["from"] == phone.jid and inner["to"] == "bob@localhost"
    bob.send("<message to='alice@localhost' type='chat'><body>in</body></message>")
    phone.expect(plain("in"))  # the highest priority gets the message itself
    laptop.expect(carbon("received", "in"), "received carbon")
    laptop.absent(plain("in"), "the message itself")
    bob.send(f"<message to='{phone.jid}'><body>to the phone</body></message>")  # normal, full JID
    laptop.expect(carbon("received", "to the phone"), "received carbon of a full-JID message")
    phone.absent(carbon("sent"), "a carbon of its own message")
    phone.absent(carbon("received"), "a carbon of what it got itself")


def test_whatIsNotCopied(world):
    """Private, no-copy, error, groupchat and headline messages, and bodiless normal ones, are not copied."""
    phone, laptop, bob = world
    laptop.request(ENABLE, "set")
    for extra, kind in ((f"<private xmlns='{NS_CARBONS}'/>", "chat"),
                        ("<no-copy xmlns='urn:xmpp:hints'/>", "chat"), ("", "headline")):
        phone.send(f"<message to='bob@localhost' type='{kind}'><body>x</body>{extra}</message>")
        bob.send(f"<message to='alice@localhost' type='{kind}'><body>x</body>{extra}</message>")
    bob.send(f"<message to='{phone.jid}' type='error'><body>x</body></message>")
    bob.send(f"<message to='{phone.jid}'><subject>no body</subject></message>")
    laptop.absent(anyCarbon, "a copy")
    bob.send(f"<message to='{phone.jid}'><received xmlns='urn:xmpp:receipts' id='m1'/></message>")
    laptop.expect(carbon("received"), "a carbon of a receipt")


def test_privateMarkTakenOff(world):
    """
    XEP-0280 <private/> is for the servers: the recipient gets the message
    without it (a <no-copy/> hint instead), and neither side's devices get copies.
    """
    phone, laptop, bob = world
    laptop.request(ENABLE, "set")
    bobLaptop = available(Client(phone.server, "bob", "laptop"))
    bobLaptop.request(ENABLE, "set")
    phone.send(f"<message to='bob@localhost' type='chat'><body>secret</body>"
               f"<private xmlns='{NS_CARBONS}'/></message>")
    received = bob.expect(plain("secret"))
    assert not list(received.elements(NS_CARBONS, "private"))
    assert list(received.elements("urn:xmpp:hints", "no-copy"))
    laptop.absent(anyCarbon, "a copy of a private message sent")
    bobLaptop.absent(anyCarbon, "a copy of a private message received")


def test_disabledGetsNone(world):
    """A session that did not enable carbons, or disabled them, gets no copies."""
    phone, laptop, bob = world
    phone.send("<message to='bob@localhost' type='chat'><body>one</body></message>")
    laptop.request(ENABLE, "set")
    laptop.request(f"<disable xmlns='{NS_CARBONS}'/>", "set")
    phone.send("<message to='bob@localhost' type='chat'><body>two</body></message>")
    bob.send("<message to='alice@localhost' type='chat'><body>three</body></message>")
    bob.expect(plain("two"))
    laptop.absent(anyCarbon, "a copy")


def test_messageToOwnResource(world):
    """A message from the phone to the laptop's full JID reaches the laptop once, and is not copied back."""
    phone, laptop, bob = world
    phone.request(ENABLE, "set")
    laptop.request(ENABLE, "set")
    phone.send(f"<message to='{laptop.jid}' type='chat'><body>note</body></message>")
    laptop.expect(plain("note"))
    laptop.absent(carbon("received"), "a carbon of what it got")
    phone.absent(anyCarbon, "a copy of its own message")


def test_serverMadeMessageForwardedAsClientStanza(world):
    """A message the server made (no namespace of its own) is forwarded as a jabber:client message."""
    phone, laptop, bob = world
    laptop.request(ENABLE, "set")
    made = domish.Element((None, "message"))
    made["from"], made["to"], made["type"] = "localhost", phone.jid, "chat"
    made.addElement("body", content="from the server")
    phone.server.hosts["localhost"].receive(made, jid.JID(phone.jid))
    copy = laptop.expect(carbon("received", "from the server"), "received carbon")
    inner = next(next(copy.elements(NS_CARBONS, "received")).elements(NS_FORWARD, "forwarded"))
    assert [child.uri for child in inner.elements()] == [NS_CLIENT]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A real server with the default modules (carbons among them)."""
    server = RunningServer(tmp_path_factory.mktemp("carbons"), "").start()
    for user in ("carol", "dave"):
        server.adduser(f"{user}@localhost", f"{user} password")
    yield server
    server.stop()


def test_slixmppCarbons(running):
    """
    slixmpp's XEP-0280 plugin on two resources of one account: the other
    device gets carbons of sent and received chats, not of private ones,
    and none once it disabled them.
    """
    async def scenario():
        plugins = ("xep_0030", "xep_0280")
        phone = SlixClient("carol@localhost/phone", "carol password", plugins=plugins)
        laptop = SlixClient("carol@localhost/laptop", "carol password", plugins=plugins)
        dave = SlixClient("dave@localhost/desk", "dave password", plugins=plugins)
        copies: asyncio.Queue = asyncio.Queue()
        laptop.add_event_handler("carbon_sent", lambda m: copies.put_nowait(("sent", m)))
        laptop.add_event_handler("carbon_received", lambda m: copies.put_nowait(("received", m)))
        got: asyncio.Queue = asyncio.Queue()
        dave.add_event_handler("message", lambda m: got.put_nowait(m))
        for client in (phone, laptop, dave):
            assert await client.login(running.port)
        await laptop.plugin["xep_0280"].enable(timeout=10)
        await asyncio.sleep(0.3)  # presence settles: the phone and laptop are both recipients

        phone.send_message(mto="dave@localhost", mbody="sent by the phone", mtype="chat")
        direction, message = await asyncio.wait_for(copies.get(), 10)
        assert direction == "sent"
        assert message["carbon_sent"]["body"] == "sent by the phone"
        assert message["carbon_sent"]["to"].bare == "dave@localhost"
        assert str((await asyncio.wait_for(got.get(), 10))["body"]) == "sent by the phone"

        dave.send_message(mto="carol@localhost/phone", mbody="for the phone", mtype="chat")
        direction, message = await asyncio.wait_for(copies.get(), 10)
        assert direction == "received" and message["carbon_received"]["body"] == "for the phone"

        private = phone.make_message(mto="dave@localhost", mbody="private", mtype="chat")
        private.enable("carbon_private")
        private.send()
        assert str((await asyncio.wait_for(got.get(), 10))["body"]) == "private"

        await laptop.plugin["xep_0280"].disable(timeout=10)
        phone.send_message(mto="dave@localhost", mbody="after disable", mtype="chat")
        assert str((await asyncio.wait_for(got.get(), 10))["body"]) == "after disable"
        await asyncio.sleep(0.5)
        assert copies.empty(), [copies.get_nowait() for _ in range(copies.qsize())]
        for client in (phone, laptop, dave):
            await client.logout()
    run(scenario())
