"""
What a phone relies on, with aioxmpp, a second independent client library
(its own stream management, carbons and blocking code): its XEP-0198
session survives a lost connection and gets what came meanwhile, once; a
second device of the account gets XEP-0280 carbons; XEP-0191 blocking
silences a contact and unblocking lets it through again.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from conftest import RunningServer
from rawxmpp import RawClient
from slix import run
from test_smacks_e2e import FreezingProxy, chat, settled

aioxmpp = pytest.importorskip("aioxmpp", reason="aioxmpp (the [test] extra) is not installed")

USERS = ("kim", "lee", "max")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, with its accounts."""
    running = RunningServer(tmp_path_factory.mktemp("phoneaio")).start()
    for user in USERS:
        running.adduser(f"{user}@localhost", f"{user} password")
    yield running
    running.stop()


def aioClient(address: str, *ports: int):
    """An aioxmpp client over STARTTLS, trying C{ports} on 127.0.0.1 in order."""
    import aioxmpp.connector
    client = aioxmpp.PresenceManagedClient(
        aioxmpp.JID.fromstr(address),
        aioxmpp.make_security_layer(f"{address.split('@')[0]} password", no_verify=True),
        override_peer=[("127.0.0.1", port, aioxmpp.connector.STARTTLSConnector()) for port in ports])
    client.backoff_start = timedelta(seconds=0.2)  # reconnect at once, as a phone does
    return client


def chats(client) -> asyncio.Queue:
    """The bodies of the chat messages C{client} gets (not carbons)."""
    import aioxmpp.dispatcher
    got: asyncio.Queue = asyncio.Queue()

    def received(message):
        if message.body and message.xep0280_received is None and message.xep0280_sent is None:
            got.put_nowait(message.body.any())
    client.summon(aioxmpp.dispatcher.SimpleMessageDispatcher).register_callback(
        aioxmpp.MessageType.CHAT, None, received)
    return got


def test_aioxmppResumesAfterLostConnection(server):
    """
    aioxmpp enables resumable stream management by itself. Its connection
    is cut (the proxy it went through closes both ends, as a phone's
    network goes); a message sent meanwhile waits in the hibernated session
    and arrives after aioxmpp resumes it, once, with no new session.
    """
    proxy = FreezingProxy(server.port)

    async def scenario():
        kim = aioClient("kim@localhost/phone", proxy.port, server.port)
        got = chats(kim)
        resumed, established = asyncio.Event(), []
        kim.on_stream_resumed.connect(lambda: resumed.set())
        kim.on_stream_established.connect(lambda: established.append(True))
        lee = RawClient(server.port)
        try:
            lee.login("lee", "lee password", "desk")
            async with kim.connected():
                assert kim.stream.sm_enabled and kim.stream.sm_resumable
                chat(lee, "kim@localhost/phone", "one")
                assert await asyncio.wait_for(got.get(), 10) == "one"
                proxy.close()  # the link is gone; the client reconnects on its own
                await asyncio.sleep(0.5)  # the server notices and hibernates the session
                chat(lee, "kim@localhost/phone", "two")
                settled(lee)
                await asyncio.wait_for(resumed.wait(), 20)
                assert await asyncio.wait_for(got.get(), 10) == "two"
                await asyncio.sleep(0.5)
                assert got.empty() and established == [True]  # resumed: never a second session
        finally:
            lee.close()
            proxy.close()
    run(scenario())


def test_aioxmppCarbonsAndBlocking(server):
    """
    Max's desktop (aioxmpp) enables carbons and sees what his phone gets;
    it blocks Lee: Lee's next message bounces with service-unavailable and
    reaches neither device; unblocked, Lee gets through again.
    """
    import aioxmpp.blocking
    import aioxmpp.carbons
    import aioxmpp.dispatcher

    async def scenario():
        desk = aioClient("max@localhost/desk", server.port)
        copies: asyncio.Queue = asyncio.Queue()
        desk.summon(aioxmpp.dispatcher.SimpleMessageDispatcher).register_callback(
            aioxmpp.MessageType.CHAT, None,
            lambda m: m.xep0280_received is not None
            and copies.put_nowait(m.xep0280_received.stanza.body.any()))
        blocking = desk.summon(aioxmpp.blocking.BlockingClient)
        initial = asyncio.Event()
        blocking.on_initial_blocklist_received.connect(lambda blocklist: initial.set())
        pushed: asyncio.Queue = asyncio.Queue()
        blocking.on_jids_blocked.connect(pushed.put_nowait)
        phone, lee = RawClient(server.port), RawClient(server.port)
        try:
            phone.login("max", "max password", "phone")
            phone.send("<presence/>")
            lee.login("lee", "lee password", "desk")
            async with desk.connected():
                await asyncio.wait_for(initial.wait(), 10)
                assert blocking.blocklist == frozenset()
                await desk.summon(aioxmpp.carbons.CarbonsClient).enable()
                chat(lee, "max@localhost/phone", "for the phone")
                assert await asyncio.wait_for(copies.get(), 10) == "for the phone"

                await blocking.block_jids([aioxmpp.JID.fromstr("lee@localhost")])
                assert await asyncio.wait_for(pushed.get(), 10) == {aioxmpp.JID.fromstr("lee@localhost")}
                assert blocking.blocklist == {aioxmpp.JID.fromstr("lee@localhost")}
                chat(lee, "max@localhost/phone", "blocked")
                answer = settled(lee)
                assert "type='error'" in answer and "service-unavailable" in answer, answer
                await asyncio.sleep(0.5)
                assert copies.empty()
                assert "blocked</body>" not in settled(phone)

                await blocking.unblock_all()
                chat(lee, "max@localhost/phone", "welcome back")
                assert await asyncio.wait_for(copies.get(), 10) == "welcome back"
        finally:
            phone.close()
            lee.close()
    run(scenario())
