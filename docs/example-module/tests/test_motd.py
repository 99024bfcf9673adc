"""
The example module on its own: loaded by its entry point with its options
table, it greets a new session after the configured delay (on a Clock).
"""

from __future__ import annotations

from twisted.internet import task
from twisted.words.protocols.jabber import jid

from invitesrv.config import parseConfig
from invitesrv.service import InviteServer
from invitesrv.store.sqlite import SQLiteStore
from invitesrv.xmpp.c2s import Session


class Stream:
    """Just enough of a client stream: what is sent to it."""

    def __init__(self):
        self.sent = []

    def send(self, element):
        self.sent.append(element)


def test_greetsAfterDelay():
    """The options table reaches the module; the greeting waits for its delay."""
    config = parseConfig({"server": {"modules": ["motd"]},
                          "modules": {"motd": {"text": "Hello all", "delay": "2s"}},
                          "hosts": {"localhost": {"modules": {"motd": {"text": "Hello here"}}}}})
    clock = task.Clock()
    store = SQLiteStore(":memory:")
    server = InviteServer(config, store=store, reactor=clock)
    host = server.hosts["localhost"]
    host.start()
    stream = Stream()
    session = Session(stream, host, jid.JID("una@localhost/desk"), "127.0.0.1")
    host.hooks.run("session-bound", session)
    assert stream.sent == []
    clock.advance(2)
    assert [str(m.body) for m in stream.sent] == ["Hello here"]
    host.stop()
