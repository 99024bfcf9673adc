"""
RFC 6121 section 8 delivery rules, end to end over real sockets: which
resource gets a message to a full or bare JID, what bounces, and with which
error.
"""

from __future__ import annotations

import pytest
from conftest import RunningServer
from rawxmpp import RawClient

MESSAGE = r"<message[^>]*>.*?</message>"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, with a sender and a recipient of several resources."""
    running = RunningServer(tmp_path_factory.mktemp("messages"), "").start()
    for user in ("alice", "bob", "nina"):
        running.adduser(f"{user}@localhost", f"{user} password")
    yield running
    running.stop()


def online(server, user: str, resource: str, priority: int = 0) -> RawClient:
    """A raw client logged in as C{user}/C{resource}, available with C{priority}."""
    client = RawClient(server.port)
    client.login(user, f"{user} password", resource)
    client.send(f"<presence><priority>{priority}</priority></presence>")
    # Its own presence comes back once it is available.
    client.recvUntil(rf"<presence[^>]*from='{user}@localhost/{resource}'")
    return client


def bodies(client: RawClient, wait: float = 0.5) -> str:
    """Everything C{client} received in the next C{wait} seconds."""
    return client.readAll(wait)


def errorOf(client: RawClient, stanzaID: str) -> str:
    """The reply to the stanza with that id, which must be an error."""
    reply = client.recvUntil(rf"<(message|iq)\b[^>]*id='{stanzaID}'[^>]*>.*?</(message|iq)>")
    assert "type='error'" in reply, reply
    return reply


def test_fullAndBareJID(server):
    """To a full JID: that resource only. To the bare JID: the highest priority only."""
    with online(server, "alice", "a") as alice, online(server, "bob", "low", 1) as low, \
            online(server, "bob", "high", 5) as high:
        alice.send("<message to='bob@localhost/low' type='chat'><body>to low</body></message>")
        assert "to low" in low.recvUntil(MESSAGE)
        alice.send("<message to='bob@localhost' type='chat'><body>to bare</body></message>")
        assert "to bare" in high.recvUntil(MESSAGE)
        assert "to bare" not in bodies(low)
        assert "to low" not in bodies(high)


def test_negativePriorityGetsNoBareJIDMessages(server):
    """A resource with a negative priority gets full-JID messages but not bare-JID ones."""
    with online(server, "alice", "n") as alice, online(server, "bob", "shy", -1) as shy:
        alice.send("<message to='bob@localhost' id='b1'><body>to bare</body></message>")
        alice.send("<message to='bob@localhost/shy' id='f1'><body>to shy</body></message>")
        received = shy.recvUntil(MESSAGE)
        assert "to shy" in received
        assert "to bare" not in received + bodies(shy)
        # The bare-JID message was kept offline, not refused.
        assert "type='error'" not in bodies(alice)


def test_headlineToAll(server):
    """A headline to the bare JID goes to every non-negative resource."""
    with online(server, "alice", "h") as alice, online(server, "bob", "one", 1) as one, \
            online(server, "bob", "two", 3) as two, online(server, "bob", "neg", -5) as neg:
        alice.send("<message to='bob@localhost' type='headline'><body>news</body></message>")
        assert "news" in one.recvUntil(MESSAGE)
        assert "news" in two.recvUntil(MESSAGE)
        assert "news" not in bodies(neg)


def test_groupchatToBareJIDBounces(server):
    """A groupchat message to a user's bare JID is refused with service-unavailable."""
    with online(server, "alice", "g") as alice, online(server, "bob", "g"):
        alice.send("<message to='bob@localhost' type='groupchat' id='gc1'><body>x</body></message>")
        assert "<service-unavailable" in errorOf(alice, "gc1")


def test_unknownLocalUser(server):
    """A message to an account that does not exist: service-unavailable."""
    with online(server, "alice", "u") as alice:
        alice.send("<message to='nobody@localhost' type='chat' id='u1'><body>x</body></message>")
        assert "<service-unavailable" in errorOf(alice, "u1")


def test_otherDomain(server):
    """A message to another domain: remote-server-not-found (no server-to-server yet)."""
    with online(server, "alice", "d") as alice:
        alice.send("<message to='someone@example.org' id='d1'><body>x</body></message>")
        assert "<remote-server-not-found" in errorOf(alice, "d1")


def test_iqToOfflineFullJID(server):
    """An iq to a full JID with no session: service-unavailable, even for an existing account."""
    with online(server, "alice", "i") as alice:
        alice.send("<iq type='get' to='nina@localhost/gone' id='i1'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert "<service-unavailable" in errorOf(alice, "i1")
