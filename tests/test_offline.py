"""
XEP-0160 offline messages, end to end: kept while the user is away,
delivered with an XEP-0203 delay at the next available presence, bounded by
C{offline_max_messages} and C{offline_max_message_size}, handed over one at
a time as the client reads and forgotten only once sent; and, in memory,
gone with the account and paced by the stream.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from datetime import datetime

import pytest
import pytest_twisted
from conftest import RunningServer
from rawxmpp import RawClient
from slix import Client, run
from streamharness import ClientConnection, addAccount, login
from twisted.internet import error, reactor, task
from twisted.python import failure
from twisted.words.protocols.jabber import jid

from invitesrv.modules.offline import OfflineModule
from invitesrv.store.interfaces import NewAccount, OfflineMessage
from invitesrv.store.sqlite import SQLiteStore

CAP = 3
MAX_SIZE = 20_000
MESSAGE = r"<message[^>]*>.*?</message>"
SEND_TIMEOUT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, keeping at most CAP messages of MAX_SIZE bytes per user."""
    running = RunningServer(tmp_path_factory.mktemp("offline"),
                            f"[hosts.localhost]\noffline_max_messages = {CAP}\n"
                            f"offline_max_message_size = {MAX_SIZE}\n").start()
    for user in ("alice", "bob", "carol", "dave", "erin", "frank", "gina"):
        running.adduser(f"{user}@localhost", f"{user} password")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    """A server with the default offline limits; a client that reads nothing for SEND_TIMEOUT s is cut."""
    running = RunningServer(tmp_path_factory.mktemp("roomy"),
                            f"[limits]\nsend_timeout = {SEND_TIMEOUT}\n").start()
    for user in ("alice", "greta", "hans"):
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


def stored(server, user: str) -> int:
    """How many messages the server's database keeps for C{user}@localhost."""
    with sqlite3.connect(f"file:{server.dataDir / 'invitesrv.sqlite3'}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM offline_messages WHERE username = ?",
                          (user,)).fetchone()[0]


def waitStored(server, user: str, count: int, timeout: float = 10.0) -> None:
    """Wait until the database keeps C{count} messages for C{user}."""
    deadline = time.monotonic() + timeout
    while stored(server, user) != count:
        assert time.monotonic() < deadline, f"{stored(server, user)} messages kept for {user}"
        time.sleep(0.05)


def sendOffline(server, to: str, large: int, small: int = 0) -> list[str]:
    """
    Send C{large} messages of 200 KB, then C{small} short ones, to C{to}, who
    is offline; wait until all are kept and return their ids in order.
    """
    ids = [f"big{n}" for n in range(large)] + [f"small{n}" for n in range(small)]
    with connected(server, "alice", f"to-{to}") as alice:
        for stanzaId in ids:
            body = "x" * 200_000 if stanzaId.startswith("big") else stanzaId
            alice.send(f"<message to='{to}@localhost' type='chat' id='{stanzaId}'><body>{body}</body>"
                       "</message>")
        waitStored(server, to, len(ids))
        assert "type='error'" not in alice.readAll(0.2)
    return ids


def receivedIds(client: RawClient, count: int) -> list[str]:
    """The ids of the next C{count} messages C{client} reads."""
    return [re.search(r"id='([^']+)'", client.recvUntil(MESSAGE)).group(1) for _ in range(count)]


def assertServed(client: RawClient) -> None:
    """The connection still works: a ping to the server is answered."""
    client.send("<iq type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    client.recvUntil(r"<iq[^>]*id='alive'[^>]*/>")


def test_auditCaseAllDeliveredInOrder(roomy):
    """
    8 offline messages of 200 KB and 3 small ones (the audit's case): at
    login all 11 arrive in order, the client stays connected, and the store
    forgets them only afterwards. (They used to be deleted first, then sent
    in one burst that the unread-output check took for a client that does not
    read: nothing arrived and everything was lost.)
    """
    ids = sendOffline(roomy, "greta", 8, 3)
    with online(roomy, "greta") as greta:
        assert receivedIds(greta, len(ids)) == ids
        assertServed(greta)
        waitStored(roomy, "greta", 0)
    assert "does not read what is sent to it" not in roomy.log()


def test_clientThatStopsReadingKeepsItsMessages(roomy):
    """
    A client that logs in and stops reading (its TCP window full) is cut
    after send_timeout, and what it was not sent is still kept: at its next
    login it all arrives, in order. 8 MB are kept for it: more than the
    kernel's socket buffers on loopback take (they grow to 4 MiB), which
    count as sent.
    """
    ids = sendOffline(roomy, "hans", 40)
    deaf = RawClient(roomy.port, receiveBuffer=4096)
    try:
        deaf.login("hans", "hans password", "deaf")
        deaf.send("<presence/>")
        started = time.monotonic()
        while "Dropping the connection from 127.0.0.1: it does not read" not in roomy.log():
            assert time.monotonic() - started < SEND_TIMEOUT + 10, "not cut"
            time.sleep(0.1)
        assert time.monotonic() - started >= SEND_TIMEOUT - 0.5
    finally:
        deaf.close()
    assert f"nothing taken in {SEND_TIMEOUT} s" in roomy.log()
    time.sleep(0.5)  # the store's thread
    kept = stored(roomy, "hans")
    assert 0 < kept <= len(ids)
    with online(roomy, "hans", "again") as hans:
        assert receivedIds(hans, kept) == ids[-kept:]
        assertServed(hans)
        waitStored(roomy, "hans", 0)


def test_tooLargeToKeep(server):
    """A message over offline_max_message_size is refused with an error that says so."""
    with connected(server, "alice", "large") as alice:
        alice.send(f"<message to='gina@localhost' type='chat' id='large'><body>{'y' * MAX_SIZE}"
                   "</body></message>")
        alice.send("<message to='gina@localhost' type='chat' id='fits'><body>fits</body></message>")
        reply = alice.recvUntil(r"<message[^>]*id='large'.*?</message>")
        settle(alice)
    assert "type='error'" in reply and "<policy-violation" in reply
    assert re.search(r"at most 20000</text>", reply), reply
    assert stored(server, "gina") == 1


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
        assert (yield store.getOffline("localhost", "gone")) == []
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


def offlineServer(servers, clock):
    """An in-memory server whose host runs only the offline module."""
    server = servers(clock)
    host = server.hosts["localhost"]
    host.addModule("offline", OfflineModule())
    host.start()
    return server


def wait(seconds: float):
    """A Deferred that fires after C{seconds} on the real reactor (the store's thread answers there)."""
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_deliveryPacedByTheStream(servers):
    """
    Kept messages go out one at a time, the next only once the stream took
    the one before: to a client that does not read nothing more is queued,
    nothing is forgotten, and what it did not take waits for its next
    session, which gets everything in order; only then is it forgotten.
    """
    server = offlineServer(servers, task.Clock())
    host, store = server.hosts["localhost"], server.store
    yield addAccount(server, "alice", "correct horse")
    for n in range(3):
        yield store.storeOffline("localhost", "alice", OfflineMessage(
            1.0, f"<message xmlns='jabber:client' type='chat'><body>m{n}</body></message>"), 10)

    def available(connection, resource):
        session = host.router.session(jid.JID(f"alice@localhost/{resource}"))
        session.available = True
        connection.received()
        return session

    deaf = ClientConnection(server, encrypted=True)
    yield login(deaf, "alice", "correct horse", "deaf")
    session = available(deaf, "deaf")
    deaf.stream.pauseProducing()  # what Twisted does when 64 KiB wait unsent
    delivery = host.hooks.run("initial-presence", session)[0]
    first = yield deaf.nextNamed("message")
    assert str(first.body) == "m0"
    yield wait(0.3)
    assert deaf.received() == []
    assert len((yield store.getOffline("localhost", "alice"))) == 3
    deaf.stream.connectionLost(failure.Failure(error.ConnectionLost()))
    yield delivery
    assert len((yield store.getOffline("localhost", "alice"))) == 3

    reader = ClientConnection(server, encrypted=True)
    yield login(reader, "alice", "correct horse", "reader")
    yield host.hooks.run("initial-presence", available(reader, "reader"))[0]
    assert [str(m.body) for m in reader.received() if m.name == "message"] == ["m0", "m1", "m2"]
    assert (yield store.getOffline("localhost", "alice")) == []
