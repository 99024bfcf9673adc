"""
XEP-0160 offline messages. End to end, over real sockets: kept while the
user is away and delivered with an XEP-0203 delay at the next available
presence (also to slixmpp), handed over one at a time as the client reads
(the audit's case of 200 KB messages) and forgotten only once sent, also
when a client stops reading; to a phone with stream management, ten ahead
of its acknowledgements. The rest as unit tests on the in-memory
harness (the whole server on a StringTransport, a Clock and a MemoryStore):
the exact stamp, C{offline_max_messages} and C{offline_max_message_size},
what is kept and in which order, negative priority, a store fault, and the
pacing by the stream.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from datetime import datetime

import pytest
from conftest import RunningServer
from rawxmpp import RawClient
from slix import Client as SlixClient
from slix import run
from streamharness import Client, addAccounts
from synchronous import result
from twisted.internet import task
from twisted.logger import globalLogPublisher

from invitesrv.config import HostOptions
from invitesrv.store.interfaces import OfflineMessage

CAP = 3
MAX_SIZE = 20_000
MESSAGE = r"<message[^>]*>.*?</message>"
SEND_TIMEOUT = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module."""
    running = RunningServer(tmp_path_factory.mktemp("offline"),
                            f"[hosts.localhost]\noffline_max_messages = {CAP}\n"
                            f"offline_max_message_size = {MAX_SIZE}\n").start()
    for user in ("alice", "bob", "frank"):
        running.adduser(f"{user}@localhost", f"{user} password")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    """A server with the default offline limits; a client that reads nothing for SEND_TIMEOUT s is cut."""
    running = RunningServer(tmp_path_factory.mktemp("roomy"),
                            f"[limits]\nsend_timeout = {SEND_TIMEOUT}\n").start()
    for user in ("alice", "greta", "hans", "ida"):
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


def test_phoneGetsTenAheadOfItsAcknowledgements(roomy):
    """
    A phone with stream management (XEP-0198) gets ten kept messages at
    once, before it acknowledges any, not one per round trip; the rest come
    as it acknowledges, and they are forgotten once all were acknowledged.
    """
    ids = sendOffline(roomy, "ida", 0, 15)
    phone = RawClient(roomy.port)
    try:
        phone.login("ida", "ida password", "phone")
        phone.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        phone.recvUntil("<enabled[^>]*/>")
        phone.send("<presence/>")
        assert receivedIds(phone, 10) == ids[:10]
        assert "<message" not in phone.readAll(0.5)  # the eleventh waits for an acknowledgement
        phone.send("<a xmlns='urn:xmpp:sm:3' h='4'/>")
        assert receivedIds(phone, 4) == ids[10:14]
        assert stored(roomy, "ida") == 15  # a batch (up to twenty) is forgotten once delivered
        phone.send("<a xmlns='urn:xmpp:sm:3' h='15'/>")  # all so far, its presence too
        assert receivedIds(phone, 1) == ids[14:]
        phone.send("<a xmlns='urn:xmpp:sm:3' h='16'/>")
        waitStored(roomy, "ida", 0)
        assertServed(phone)
    finally:
        phone.close()


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
        frank = SlixClient("frank@localhost/slix", "frank password", plugins=("xep_0030", "xep_0203"))
        received = frank.loop.create_future()
        frank.add_event_handler("message", lambda m: received.done() or received.set_result(m))
        assert await frank.login(server.port)
        message = await asyncio.wait_for(received, 10)
        assert message["body"] == "for slixmpp"
        assert message["delay"]["from"] == "localhost"
        assert abs(message["delay"]["stamp"].timestamp() - time.time()) < 30
        await frank.logout()
    run(scenario())


# -- unit tests: the whole server on a StringTransport, a Clock and a MemoryStore ------

KEPT_AT = 1_700_000_000.0  # the Clock's time when messages are sent


@pytest.fixture
def local(servers):
    """An in-memory server with roster, presence and offline, keeping CAP messages of MAX_SIZE."""
    clock = task.Clock()
    clock.advance(KEPT_AT)
    server = servers(clock, modules=("roster", "presence", "offline"), hosts={"localhost": HostOptions(
        offline_max_messages=CAP, offline_max_message_size=MAX_SIZE)})
    addAccounts(server, "alice", "bob")
    return server


def available(server, user: str, resource: str = "r", priority: int | None = None) -> Client:
    """A client logged in as C{user} that has sent its initial presence."""
    client = Client(server, user, resource)
    client.send("<presence/>" if priority is None else
                f"<presence><priority>{priority}</priority></presence>")
    return client


def isMessage(stanzaId: str | None = None, kind: str | None = None):
    """A predicate for a message (with id C{stanzaId}, of type C{kind}, where given)."""
    def match(element) -> bool:
        return (element.name == "message"
                and stanzaId in (None, element.getAttribute("id"))
                and kind in (None, element.getAttribute("type")))
    return match


def test_keptWithTheTimeItArrived(local):
    """
    A chat message to a user who is away is kept, with the time it arrived
    as its XEP-0203 stamp, and delivered at the next available presence,
    not before (a bound resource that sent none gets nothing).
    """
    alice = Client(local, "alice")
    alice.send("<message to='bob@localhost' type='chat' id='m1'><body>while you were away</body>"
               "</message>")
    alice.absent(isMessage(kind="error"))
    local.reactor.advance(90)
    bob = Client(local, "bob")
    bob.absent(isMessage(), what="a message before presence")
    bob.send("<presence/>")
    message = bob.expect(isMessage("m1"))
    assert str(message.body) == "while you were away" and message["from"] == "alice@localhost/r"
    delay = next(message.elements("urn:xmpp:delay", "delay"))
    assert (delay["from"], delay["stamp"]) == ("localhost", "2023-11-14T22:13:20.000Z")
    assert result(local.store.getOffline("localhost", "bob")) == []


def test_tooLargeToKeep(local):
    """A message over offline_max_message_size is refused with an error that says so."""
    alice = Client(local, "alice", "large")
    alice.send(f"<message to='bob@localhost' type='chat' id='large'><body>{'y' * MAX_SIZE}"
               "</body></message>")
    alice.send("<message to='bob@localhost' type='chat' id='fits'><body>fits</body></message>")
    reply = alice.expect(isMessage("large"))
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "policy-violation"
    assert str(reply.error.text).endswith("at most 20000"), reply.toXml()
    alice.absent(isMessage("fits"), what="an error for a message that fits")
    assert ["id='fits'" in m.stanza for m in result(local.store.getOffline("localhost", "bob"))] == [True]


def test_oldestFirstAndWhatIsKept(local):
    """Kept messages come oldest first; chat states alone and headlines are not kept."""
    alice = Client(local, "alice", "order")
    alice.send("<message to='bob@localhost' type='chat'><body>one</body></message>")
    alice.send("<message to='bob@localhost' type='chat'>"
               "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    alice.send("<message to='bob@localhost' type='headline'><body>news</body></message>")
    alice.send("<message to='bob@localhost'><body>two</body></message>")
    alice.send("<message to='bob@localhost' type='chat'>"
               "<received xmlns='urn:xmpp:receipts' id='r1'/></message>")
    alice.absent(isMessage(kind="error"), what="a refusal")
    bob = available(local, "bob")
    first, second, third = (bob.expect(isMessage()) for _ in range(3))
    assert (str(first.body), str(second.body)) == ("one", "two")
    assert [e.uri for e in third.elements() if e.name == "received"] == ["urn:xmpp:receipts"]
    bob.absent(isMessage(), what="a chat state or a headline")


def test_capReached(local):
    """Past offline_max_messages the sender gets service-unavailable; the first CAP are kept."""
    alice = Client(local, "alice", "cap")
    for n in range(CAP + 1):
        alice.send(f"<message to='bob@localhost' id='c{n}'><body>number {n}</body></message>")
    refused = alice.expect(isMessage(f"c{CAP}", "error"))
    assert refused.error.firstChildElement().name == "service-unavailable"
    alice.absent(isMessage(kind="error"), what="a refusal under the cap")
    bob = available(local, "bob")
    assert [str(bob.expect(isMessage()).body) for _ in range(CAP)] == [
        f"number {n}" for n in range(CAP)]
    bob.absent(isMessage(), what="the message over the cap")


def test_negativePriorityGetsNothing(local):
    """A resource with a negative priority is not handed the kept messages; the next one is."""
    Client(local, "alice", "neg").send("<message to='bob@localhost' type='chat'><body>later</body>"
                                       "</message>")
    low = available(local, "bob", "low", priority=-1)
    low.absent(isMessage(), what="a message for a negative priority")
    high = available(local, "bob", "high", priority=0)
    assert str(high.expect(isMessage()).body) == "later"
    low.absent(isMessage(), what="a message for a negative priority")


def test_storeFaultRefusedQuietly(local):
    """
    While the store cannot be used, a message for an offline user is
    refused (the sender gets an error and may send again) and the module
    logs no traceback of its own; once the store is back it is kept.
    """
    alice = Client(local, "alice")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        local.store.breakDown("database is locked")
        alice.send("<message to='bob@localhost' type='chat' id='m1'><body>hello</body></message>")
        local.store.recover()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert alice.expect(isMessage("m1", "error")).error["type"] in ("wait", "cancel")
    assert not [e for e in events if e.get("log_failure") is not None]
    alice.send("<message to='bob@localhost' type='chat' id='m2'><body>hello</body></message>")
    alice.absent(isMessage(kind="error"))
    assert len(result(local.store.getOffline("localhost", "bob"))) == 1


def test_deliveryPacedByTheStream(local):
    """
    Kept messages go out one at a time, the next only once the stream took
    the one before: to a client that does not read nothing more is queued,
    nothing is forgotten, and what it did not take waits for its next
    session, which gets everything in order; only then is it forgotten.
    """
    for n in range(3):
        result(local.store.storeOffline("localhost", "bob", OfflineMessage(
            1.0, f"<message xmlns='jabber:client' type='chat'><body>m{n}</body></message>"), 10))
    deaf = Client(local, "bob", "deaf")
    deaf.stream.pauseProducing()  # what Twisted does when 64 KiB wait unsent
    deaf.send("<presence/>")
    assert str(deaf.expect(isMessage()).body) == "m0"
    local.reactor.advance(60)
    deaf.absent(isMessage(), what="a message queued for a client that does not read")
    assert len(result(local.store.getOffline("localhost", "bob"))) == 3
    deaf.drop()
    assert len(result(local.store.getOffline("localhost", "bob"))) == 3

    reader = available(local, "bob", "reader")
    assert [str(reader.expect(isMessage()).body) for _ in range(3)] == ["m0", "m1", "m2"]
    assert result(local.store.getOffline("localhost", "bob")) == []
