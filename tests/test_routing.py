"""
Routing between raw clients of a real server: messages, IQs and presence by
full and bare JID, C{from} always stamped by the server, the errors for
offline resources and other domains, and a resource bound twice.
"""

from __future__ import annotations

import pytest
from conftest import RunningServer
from rawxmpp import RawClient
from twisted.words.xish import domish

PASSWORD = "routing password"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer(tmp_path_factory.mktemp("routing"), "").start()
    running.adduser("alice@localhost", PASSWORD)
    running.adduser("bob@localhost", PASSWORD)
    yield running
    running.stop()


@pytest.fixture
def alice(server):
    with RawClient(server.port) as client:
        client.login("alice", PASSWORD, "a")
        yield client


@pytest.fixture
def bob(server):
    with RawClient(server.port) as client:
        client.login("bob", PASSWORD, "b")
        yield client


def parse(xml: str) -> domish.Element:
    """One stanza as the server wrote it, parsed in the jabber:client namespace."""
    parser = domish.ExpatElementStream()
    found: list[domish.Element] = []
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = found.append
    parser.parse(b"<stream xmlns='jabber:client'>" + xml.encode("utf-8"))
    return found[0]


def receive(client: RawClient, name: str, stanzaID: str, timeout: float = 5.0) -> domish.Element:
    """The next C{name} stanza with id C{stanzaID} that C{client} gets (others are skipped)."""
    text = client.recvUntil(rf"<{name}\s[^>]*id='{stanzaID}'[^>]*(/>|>.*?</{name}>)", timeout)
    return parse(text[text.rindex(f"<{name} "):])


def errorCondition(stanza: domish.Element) -> str:
    assert stanza["type"] == "error", stanza.toXml()
    return next(c.name for c in stanza.error.elements()
                if c.uri == "urn:ietf:params:xml:ns:xmpp-stanzas" and c.name != "text")


def available(client: RawClient, full: str) -> None:
    """Send initial presence and wait for it to come back (the resource is then available)."""
    client.send("<presence/>")
    client.recvUntil(rf"<presence[^>]*from='{full}'")


def test_messageToFullJID(alice, bob):
    """A message to a full JID reaches that resource, stamped with the sender's full JID."""
    alice.send("<message to='bob@localhost/b' id='m1' type='chat'><body>hello</body></message>")
    message = receive(bob, "message", "m1")
    assert message["from"] == "alice@localhost/a"
    assert message["to"] == "bob@localhost/b"
    assert str(message.body) == "hello"


def test_fromStampedWhenBare(alice, bob):
    """A client may give its bare JID as from; the server puts the full JID there."""
    alice.send("<message from='alice@localhost' to='bob@localhost/b' id='m2'><body>x</body></message>")
    assert receive(bob, "message", "m2")["from"] == "alice@localhost/a"


def test_messageToBareJID(alice, bob):
    """A message to a bare JID reaches the account's available resource."""
    available(bob, "bob@localhost/b")
    alice.send("<message to='bob@localhost' id='m3' type='chat'><body>bare</body></message>")
    message = receive(bob, "message", "m3")
    assert message["from"] == "alice@localhost/a" and str(message.body) == "bare"


def test_iqBetweenFullJIDs(alice, bob):
    """An IQ to a full JID is delivered; the answer finds its way back."""
    alice.send("<iq to='bob@localhost/b' id='q1' type='get'><query xmlns='urn:example:q'/></iq>")
    request = receive(bob, "iq", "q1")
    assert request["from"] == "alice@localhost/a" and request["type"] == "get"
    bob.send("<iq to='alice@localhost/a' id='q1' type='result'/>")
    result = receive(alice, "iq", "q1")
    assert (result["type"], result["from"]) == ("result", "bob@localhost/b")


def test_iqToBareJID(alice, bob):
    """
    An IQ to a bare JID is for the server to answer on the account's behalf
    (RFC 6121 section 8.5.1): unknown payloads get service-unavailable from
    the bare JID and never reach a resource.
    """
    alice.send("<iq to='bob@localhost' id='q2' type='get'><query xmlns='urn:example:q'/></iq>")
    reply = receive(alice, "iq", "q2")
    assert reply["from"] == "bob@localhost"
    assert errorCondition(reply) == "service-unavailable"
    assert "q2" not in bob.readAll(0.3)


def test_directedPresenceToFullJID(alice, bob):
    """Directed presence to a full JID is delivered, stamped."""
    alice.send("<presence to='bob@localhost/b' id='p1'><status>here</status></presence>")
    presence = receive(bob, "presence", "p1")
    assert presence["from"] == "alice@localhost/a" and str(presence.status) == "here"


def test_iqToOfflineResource(alice):
    """An IQ to a full JID that is not connected: service-unavailable from that JID."""
    alice.send("<iq to='bob@localhost/gone' id='q3' type='get'><query xmlns='urn:example:q'/></iq>")
    reply = receive(alice, "iq", "q3")
    assert reply["from"] == "bob@localhost/gone"
    assert errorCondition(reply) == "service-unavailable"


@pytest.mark.parametrize("stanza", [
    "<message to='someone@elsewhere.example' id='r1'><body>x</body></message>",
    "<iq to='elsewhere.example' id='r1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>",
    "<presence to='someone@elsewhere.example/r' id='r1'/>",
])
def test_otherDomain(alice, stanza):
    """With no server-to-server links yet, other domains are not reachable."""
    alice.send(stanza)
    name = stanza[1:stanza.index(" ")]
    reply = receive(alice, name, "r1")
    assert errorCondition(reply) == "remote-server-not-found"


def test_malformedTo(alice):
    alice.send("<message to='a@b@c' id='bad'><body>x</body></message>")
    assert errorCondition(receive(alice, "message", "bad")) == "jid-malformed"


def test_sameResourceTwice(server, alice):
    """
    Binding a resource that is in use replaces the older session, which
    gets a conflict stream error; stanzas then go to the newer one.
    """
    with RawClient(server.port) as older:
        assert older.login("bob", PASSWORD, "phone") == "bob@localhost/phone"
        with RawClient(server.port) as newer:
            assert newer.login("bob", PASSWORD, "phone") == "bob@localhost/phone"
            text = older.recvUntil(r"</stream:stream>")
            assert "<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in text
            assert older.isClosed()
            alice.send("<message to='bob@localhost/phone' id='m4'><body>which?</body></message>")
            assert receive(newer, "message", "m4")["from"] == "alice@localhost/a"
