"""
XEP-0160 offline messages, end to end: kept while the user is away,
delivered with an XEP-0203 delay at the next available presence, bounded by
C{offline_max_messages}; and, in memory, gone with the account.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime

import pytest
import pytest_twisted
from conftest import RunningServer
from rawxmpp import RawClient
from slix import Client, run

from invitesrv.store.interfaces import NewAccount, OfflineMessage
from invitesrv.store.sqlite import SQLiteStore

CAP = 3
MESSAGE = r"<message[^>]*>.*?</message>"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, keeping at most CAP messages per user."""
    running = RunningServer(tmp_path_factory.mktemp("offline"),
                            f"[hosts.localhost]\noffline_max_messages = {CAP}\n").start()
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        running.adduser(f"{user}@localhost", f"{user} password")
    yield running
    running.stop()


def online(server, user: str, resource: str = "r", priority: int | None = None) -> RawClient:
    """A raw client logged in as C{user} that has sent its initial presence."""
    client = RawClient(server.port)
    client.login(user, f"{user} password", resource)
    client.send("<presence/>" if priority is None else
                f"<presence><priority>{priority}</priority></presence>")
    return client


def connected(server, user: str, resource: str = "r") -> RawClient:
    """A raw client logged in as C{user}, not available (no presence sent)."""
    client = RawClient(server.port)
    client.login(user, f"{user} password", resource)
    return client


def settle(sender: RawClient) -> None:
    """Wait until what C{sender} sent before has been handled: a ping round trip."""
    sender.send("<iq type='get' id='settle' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    sender.recvUntil(r"<iq[^>]*id='settle'[^>]*/>")
    time.sleep(0.2)  # the store works on its own thread


def test_deliveredWithDelayAtNextPresence(server):
    """A chat message to an offline user arrives, stamped, when the user becomes available."""
    with connected(server, "alice") as alice:
        sent = time.time()
        alice.send("<message to='bob@localhost' type='chat' id='m1'><body>while you were away</body>"
                   "</message>")
        settle(alice)
        assert "type='error'" not in alice.readAll(0.3)
    with connected(server, "bob") as bob:
        # Bound but not available yet: nothing is handed over.
        assert "<message" not in bob.readAll(0.5)
        bob.send("<presence/>")
        message = bob.recvUntil(MESSAGE)
    assert "<body>while you were away</body>" in message
    assert "from='alice@localhost/r'" in message
    delay = re.search(r"<delay\b[^>]*/>", message).group(0)
    assert "xmlns='urn:xmpp:delay'" in delay
    assert "from='localhost'" in delay
    stamp = re.search(r"stamp='([^']+)'", delay).group(1)
    assert stamp.endswith("Z")
    assert abs(datetime.fromisoformat(stamp).timestamp() - sent) < 5


def test_slixmppSeesTheDelay(server):
    """slixmpp's XEP-0203 plugin reads the original time of a kept message."""
    with connected(server, "alice", "s") as alice:
        alice.send("<message to='frank@localhost' type='chat'><body>for slixmpp</body></message>")
        settle(alice)

    async def scenario():
        frank = Client("frank@localhost/slix", "frank password", plugins=("xep_0030", "xep_0203"))
        received = frank.loop.create_future()
        frank.add_event_handler("message", lambda m: received.done() or received.set_result(m))
        assert await frank.login(server.port)
        message = await asyncio.wait_for(received, 10)
        assert message["body"] == "for slixmpp"
        assert message["delay"]["from"] == "localhost"
        assert abs(message["delay"]["stamp"].timestamp() - time.time()) < 30
        await frank.logout()
    run(scenario())


def test_oldestFirstAndWhatIsKept(server):
    """Kept messages come oldest first; chat states alone and headlines are not kept."""
    with connected(server, "alice", "order") as alice:
        alice.send("<message to='carol@localhost' type='chat'><body>one</body></message>")
        alice.send("<message to='carol@localhost' type='chat'>"
                   "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        alice.send("<message to='carol@localhost' type='headline'><body>news</body></message>")
        alice.send("<message to='carol@localhost'><body>two</body></message>")
        alice.send("<message to='carol@localhost' type='chat'>"
                   "<received xmlns='urn:xmpp:receipts' id='r1'/></message>")
        settle(alice)
        # Nothing of that was refused.
        assert "type='error'" not in alice.readAll(0.3)
    with online(server, "carol") as carol:
        first = carol.recvUntil(MESSAGE)
        second = carol.recvUntil(MESSAGE)
        third = carol.recvUntil(MESSAGE)
        rest = carol.readAll(0.5)
    assert "<body>one</body>" in first
    assert "<body>two</body>" in second
    assert "urn:xmpp:receipts" in third
    assert "composing" not in rest and "news" not in rest


def test_capReached(server):
    """Past offline_max_messages the sender gets service-unavailable; the first CAP are kept."""
    with connected(server, "alice", "cap") as alice:
        for n in range(CAP + 1):
            alice.send(f"<message to='dave@localhost' id='c{n}'><body>number {n}</body></message>")
        error = alice.recvUntil(rf"<message[^>]*id='c{CAP}'.*?</message>")
        assert "type='error'" in error and "<service-unavailable" in error
        assert "type='error'" not in alice.readAll(0.3)
    with online(server, "dave") as dave:
        bodies = [re.search(r"<body>([^<]*)</body>", dave.recvUntil(MESSAGE)).group(1)
                  for _ in range(CAP)]
        assert f"number {CAP}" not in dave.readAll(0.5)
    assert bodies == [f"number {n}" for n in range(CAP)]


def test_negativePriorityGetsNothing(server):
    """A resource with a negative priority is not handed the kept messages; the next one is."""
    with connected(server, "alice", "neg") as alice:
        alice.send("<message to='erin@localhost' type='chat'><body>later</body></message>")
        settle(alice)
    with online(server, "erin", "low", priority=-1) as low:
        assert "<body>later</body>" not in low.readAll(0.5)
        with online(server, "erin", "high", priority=0) as high:
            assert "<body>later</body>" in high.recvUntil(MESSAGE)


@pytest_twisted.inlineCallbacks
def test_deletedWithTheAccount():
    """Deleting an account deletes its kept messages (the store's cascade)."""
    store = SQLiteStore(":memory:")
    store.open()
    try:
        yield store.createAccount(NewAccount("localhost", "gone", credentials=()))
        kept = yield store.storeOffline("localhost", "gone", OfflineMessage(1.0, "<message/>"), CAP)
        assert kept
        assert (yield store.deleteAccount("localhost", "gone"))
        yield store.createAccount(NewAccount("localhost", "gone", credentials=()))
        assert (yield store.popOffline("localhost", "gone")) == []
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_storeFaultRefusedQuietly(tmp_path):
    """
    While the database is locked by another process, a message for an
    offline user is refused (the sender gets an error) and the module logs no
    traceback of its own: the store reports the episode once.
    """
    import sqlite3
    from dataclasses import replace

    from twisted.logger import globalLogPublisher
    from twisted.words.xish import domish

    from invitesrv.config import Config, HostOptions
    from invitesrv.modules.offline import OfflineModule
    from invitesrv.service import InviteServer

    path = tmp_path / "db.sqlite3"
    store = SQLiteStore(path, busyTimeout=0.1)
    store.open()
    server = InviteServer(Config(hosts={"localhost": replace(HostOptions())}, modules=()),
                          store=store)
    host = server.hosts["localhost"]
    host.addModule("offline", OfflineModule())
    host.start()
    events = []
    globalLogPublisher.addObserver(events.append)
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        message = domish.Element((None, "message"))
        message["type"] = "chat"
        message.addElement("body", content="hello")
        kept = yield host.hooks.first("offline-message", "nobody", message)
        assert kept is False
        assert not [e for e in events if e.get("log_failure") is not None
                    and "offline" in (e.get("log_namespace") or "")]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        globalLogPublisher.removeObserver(events.append)
        host.stop()
        store.close()
