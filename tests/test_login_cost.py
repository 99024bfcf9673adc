"""
What a login and a reconnect cost the server, counted rather than timed (in
memory, on a Clock): work that is not needed is not done. A bound session's
JID and the server's answers to it are not stringprepped again, and a
stream that uses no channel binding computes none.
"""

from __future__ import annotations

import pytest
from streamharness import Client, addAccounts
from twisted.words.protocols.jabber import jid

from invitesrv.config import DEFAULT_MODULES

NS_PING = "urn:xmpp:ping"


@pytest.fixture
def server(servers):
    server = servers(modules=DEFAULT_MODULES)
    addAccounts(server, "ann")
    return server


def test_noStringprepForBoundJIDs(server, monkeypatch):
    """
    Binding a resource, presence and a ping answered to the full JID prepare
    no JID: its parts are prepared already, and stringprep costs more than
    the rest of a bind.
    """
    Client(server, "ann", "warm").close()  # the host's own name, parsed once for good
    prepared = []
    original = jid.prep
    monkeypatch.setattr(jid, "prep", lambda *parts: prepared.append(parts) or original(*parts))
    client = Client(server, "ann", "phone")
    client.send("<presence/>")
    answer = client.request(f"<ping xmlns='{NS_PING}'/>", to="localhost")
    assert answer["type"] == "result" and answer["to"] == "ann@localhost/phone"
    assert client.jid == "ann@localhost/phone"
    session = server.router.resourcesOf("ann@localhost")["phone"]
    assert (session.jid.user, session.jid.host, session.jid.resource) == ("ann", "localhost", "phone")
    assert prepared == []
    client.close()
