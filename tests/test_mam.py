"""
XEP-0313 message archive, in memory on a Clock: what is archived and
stamped with a stanza id, the queries and their paging, preferences,
retention and the per-user limit, and how offline storage and carbons carry
the same ids. The end-to-end tests are in C{test_mam_e2e.py}.
"""

from __future__ import annotations

import pytest
from streamharness import Client, addAccounts
from synchronous import result
from twisted.internet import defer, task
from twisted.words.xish import domish

from invitesrv.config import HostOptions
from invitesrv.modules.mam import ARCHIVE_SLOTS, ArchiveIds, decodeId, encodeId, shouldArchive
from invitesrv.modules.offline import parseStanza
from invitesrv.store.interfaces import ArchivedMessage, ArchiveQuery

NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_CARBONS = "urn:xmpp:carbons:2"
MODULES = ("roster", "presence", "offline", "carbons", "disco", "mam")
START = 1_700_000_000.0


def available(client: Client) -> Client:
    client.send("<presence/>")
    client.discard()
    return client


def message(to: str, body: str | None = "hi", extra: str = "", kind: str = "chat") -> str:
    content = f"<body>{body}</body>" if body is not None else ""
    return f"<message to='{to}' type='{kind}' id='m-{body}'>{content}{extra}</message>"


def stanzaIds(element: domish.Element) -> list[tuple[str, str]]:
    """The (by, id) of each stanza id the message carries."""
    return [(sid["by"], sid["id"]) for sid in element.elements(NS_SID, "stanza-id")]


def carbonOf(direction: str):
    """A matcher for a carbon of C{direction}."""
    return lambda e: e.name == "message" and any(True for _ in e.elements(NS_CARBONS, direction))


def isMessage(body: str):
    return lambda e: e.name == "message" and e.body is not None and str(e.body) == body


@pytest.fixture
def clock():
    clock = task.Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def makeServer(servers, clock):
    """A server with the archive, alice and bob, on the Clock; host options as given."""
    def make(**options):
        server = servers(clock, modules=MODULES, hosts={"localhost": HostOptions(**options)})
        addAccounts(server, "alice", "bob")
        return server
    return make


def query(client: Client, form: str = "", rsm: str = "", extra: str = "", queryId: str = "q"):
    """Run an archive query: the result messages (in the order received) and the iq answer."""
    fields = f"<x xmlns='jabber:x:data' type='submit'>{form}</x>" if form else ""
    paging = f"<set xmlns='{NS_RSM}'>{rsm}</set>" if rsm else ""
    reply = client.request(f"<query xmlns='{NS_MAM}' queryid='{queryId}'>{fields}{paging}{extra}</query>",
                           "set")
    results = []
    client._collect()
    for element in list(client.backlog):
        if element.name == "message" and any(True for _ in element.elements(NS_MAM, "result")):
            client.backlog.remove(element)
            results.append(element)
    return results, reply


def forwardedBodies(results) -> list[str]:
    return [str(next(r.elements(NS_MAM, "result")).forwarded.message.body) for r in results]


def field(var: str, *values: str) -> str:
    return f"<field var='{var}'>{''.join(f'<value>{v}</value>' for v in values)}</field>"


def fin(reply: domish.Element) -> dict:
    """What the fin says: complete, first, its index, last and count."""
    element = next(reply.elements(NS_MAM, "fin"))
    rsm = next(element.elements(NS_RSM, "set"))
    first = next(rsm.elements(NS_RSM, "first"), None)
    last = next(rsm.elements(NS_RSM, "last"), None)
    return {"complete": element.getAttribute("complete") == "true",
            "first": str(first) if first is not None else None,
            "index": first.getAttribute("index") if first is not None else None,
            "last": str(last) if last is not None else None,
            "count": int(str(next(rsm.elements(NS_RSM, "count"))))}


# -- what is archived, and the stanza ids --------------------------------------------


@pytest.mark.parametrize("xml, archived", [
    ("<message type='chat'><body>x</body></message>", True),
    ("<message><body>x</body></message>", True),
    ("<message type='headline'><body>x</body></message>", False),
    ("<message type='groupchat'><body>x</body></message>", False),
    ("<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>", False),
    ("<message type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>", False),
    ("<message type='chat'><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>", False),
    ("<message type='chat'><store xmlns='urn:xmpp:hints'/></message>", True),
    ("<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>", True),
    ("<message type='chat'><received xmlns='urn:xmpp:receipts' id='1'/></message>", True),
    ("<message><x xmlns='http://jabber.org/protocol/muc#user'><invite from='a@b'/></x></message>", True),
])
def test_shouldArchive(xml, archived):
    """Prosody's rules: content, encrypted payloads, receipts and invites are kept; hints win."""
    stanza = parseStanza(xml.replace("<message", "<message xmlns='jabber:client'", 1))
    assert shouldArchive(stanza) is archived


def test_idsIncreaseAndAreOpaque():
    """Ids follow the clock, never repeat nor go back, and read back from their text."""
    ids = ArchiveIds()
    first = ids.next(START)
    assert ids.next(START) == first + 1
    assert ids.next(START - 60) == first + 2  # the clock went back
    assert ids.next(START + 1) == first + 1_000_000
    text = encodeId(first)
    assert len(text) == 11 and str(first) not in text and decodeId(text) == first


def test_idsOfTwoSlotsNeverMeet(clock):
    """
    Two nodes of a cluster, each with its slot, reading the same microsecond
    on their clocks give different ids; each node's ids increase, end with
    its slot and read back as their time (at most ARCHIVE_SLOTS microseconds
    late), and keep increasing when its clock goes back.
    """
    one, other = ArchiveIds(), ArchiveIds()
    one.slot, other.slot = 5, 6
    given, times = {one: [], other: []}, []
    for _ in range(100):
        times.append(int(clock.seconds() * 1_000_000))
        for _ in range(3):  # a burst within one microsecond
            for ids, numbers in given.items():
                numbers.append(ids.next(clock.seconds()))
        clock.advance(0.000_2)
    given[one].append(one.next(clock.seconds() - 60))
    assert not set(given[one]) & set(given[other])
    for ids, numbers in given.items():
        assert numbers == sorted(set(numbers))
        assert {number % ARCHIVE_SLOTS for number in numbers} == {ids.slot}
        firsts = zip(numbers[:300:3], times, strict=True)  # the first id of each burst
        assert all(0 <= number - time < ARCHIVE_SLOTS for number, time in firsts)


def test_slotTakenAfterOtherIds():
    """
    A node that takes a slot after ids of the store (another node's, or its
    own from before it had one) goes on above them, in its slot.
    """
    ids = ArchiveIds()
    ids.last = 1_700_000_000_000_107
    ids.slot = 3
    assert ids.next(START) == 1_700_000_000_000_131  # 131 = 2 * 64 + 3
    ids.slot = None
    assert ids.next(START) == 1_700_000_000_000_132


def test_takenIdArchivedAgain(makeServer):
    """
    A message whose id another node gave first (already in the archive) is
    archived under the next id this node gives, not dropped; the messages
    that had those ids keep them.
    """
    server = makeServer()
    alice = available(Client(server, "alice", "laptop"))
    bob = available(Client(server, "bob", "desk"))
    first = int(START * 1_000_000)  # bob's copy; alice's would be the next two
    result(server.store.appendArchive("localhost", [
        ("alice", ArchivedMessage(first + n, "carol@localhost", f"<m{n}/>"), False)
        for n in range(3)], 100))
    bob.send(message("alice@localhost", "hello"))
    alice.expect(isMessage("hello"))
    results, _ = query(alice)
    assert [decodeId(next(r.elements(NS_MAM, "result"))["id"]) for r in results] == [
        first, first + 1, first + 2, first + 3]
    assert forwardedBodies(results[3:]) == ["hello"]


def test_receivedAndSentAreArchivedWithIds(makeServer):
    """
    A message is archived for its sender and its recipient: the recipient
    gets it with the id of its own archive; the sender's id stays home.
    """
    server = makeServer()
    alice = available(Client(server, "alice", "laptop"))
    bob = available(Client(server, "bob", "desk"))
    bob.send(message("alice@localhost", "hello"))
    received = alice.expect(isMessage("hello"))
    [(by, archiveId)] = stanzaIds(received)
    assert by == "alice@localhost"
    results, reply = query(alice)
    assert reply["type"] == "result"
    [entry] = [next(r.elements(NS_MAM, "result")) for r in results]
    assert entry["id"] == archiveId and entry["queryid"] == "q"
    forwarded = entry.forwarded.message
    assert forwarded["from"] == "bob@localhost/desk" and str(forwarded.body) == "hello"
    assert not stanzaIds(forwarded)
    assert entry.forwarded.delay["stamp"] == "2023-11-14T22:13:20.000Z"
    bobResults, _ = query(bob)
    assert forwardedBodies(bobResults) == ["hello"]
    assert next(bobResults[0].elements(NS_MAM, "result"))["id"] != archiveId


def test_stopWaitsForArchiveWrites(makeServer):
    """
    A host that stops fires only once the archive's writes under way, and
    those gathered behind them, are written: the store closes after them.
    """
    server = makeServer()
    write, writes = server.store.appendArchive, []

    def slowly(*args):
        writes.append((args, defer.Deferred()))
        return writes[-1][1]
    server.store.appendArchive = slowly
    bob = available(Client(server, "bob", "desk"))
    for body in ("one", "two"):
        bob.send(message("alice@localhost", body))
    stopped = server.hosts["localhost"].stop()
    batches = 0
    while writes:
        assert not stopped.called
        args, d = writes.pop(0)
        write(*args).chainDeferred(d)
        batches += 1
    assert stopped.called and batches == 2  # the first batch, and the one gathered behind it
    server.store.appendArchive = write
    assert len(result(server.store.queryArchive("localhost", "alice", ArchiveQuery())).messages) == 2


def test_spoofedIdsAreRemoved(makeServer):
    """A stanza id by the recipient that came from outside is dropped; others' stay."""
    server = makeServer()
    alice = available(Client(server, "alice"))
    bob = available(Client(server, "bob"))
    bob.send(message("alice@localhost", "spoof", "<stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost'"
                                                 " id='AAAAAAAAAAE'/><stanza-id xmlns='urn:xmpp:sid:0'"
                                                 " by='elsewhere.example' id='x'/>"))
    ids = stanzaIds(alice.expect(isMessage("spoof")))
    assert ("elsewhere.example", "x") in ids
    assert [by for by, _ in ids].count("alice@localhost") == 1
    assert ("alice@localhost", "AAAAAAAAAAE") not in ids


def test_notArchivedIsNotStamped(makeServer):
    """Chat states alone, no-store hints and headlines are delivered without an id, and not archived."""
    server = makeServer()
    alice = available(Client(server, "alice"))
    bob = available(Client(server, "bob"))
    bob.send(message("alice@localhost", None, "<composing xmlns='http://jabber.org/protocol/chatstates'/>"))
    bob.send(message("alice@localhost", "secret", "<no-store xmlns='urn:xmpp:hints'/>"))
    bob.send(message("alice@localhost", "news", kind="headline"))
    for element in alice.received():
        assert not stanzaIds(element)
    results, reply = query(alice)
    assert results == [] and fin(reply)["count"] == 0


def test_chatStatesLeftOutOfArchivedCopy(makeServer):
    """The archived copy of a message loses its chat state; the delivered one keeps it."""
    server = makeServer()
    alice = available(Client(server, "alice"))
    bob = available(Client(server, "bob"))
    bob.send(message("alice@localhost", "typed", "<active xmlns='http://jabber.org/protocol/chatstates'/>"))
    assert alice.expect(isMessage("typed")).active is not None
    results, _ = query(alice)
    assert next(results[0].elements(NS_MAM, "result")).forwarded.message.active is None


def test_writesBatchedAndQueriesWaitForThem(makeServer, monkeypatch):
    """
    While a write is on its way to the store, what comes next gathers into
    one batch; a query waits for the messages archived before it.
    """
    server = makeServer()
    alice = available(Client(server, "alice"))
    bob = Client(server, "bob")
    writes = []
    append = server.store.appendArchive

    def slowAppend(host, entries, maxItems):
        writes.append((defer.Deferred(), host, entries, maxItems))
        return writes[-1][0]
    monkeypatch.setattr(server.store, "appendArchive", slowAppend)

    def finishWrite(number: int) -> None:
        d, *args = writes[number]
        d.callback(result(append(*args)))

    for number in range(3):
        bob.send(message("alice@localhost", f"m{number}"))
    assert [len(entries) for _, _, entries, _ in writes] == [1]  # bob's copy of m0; 5 wait
    alice.send(f"<iq type='set' id='early'><query xmlns='{NS_MAM}'/></iq>")
    alice.absent(lambda e: e.getAttribute("id") == "early")
    finishWrite(0)
    assert [len(entries) for _, _, entries, _ in writes] == [1, 5]
    alice.absent(lambda e: e.getAttribute("id") == "early")
    finishWrite(1)
    alice.expect(lambda e: e.getAttribute("id") == "early")
    results = [e for e in alice.backlog if e.name == "message" and e.result is not None]
    assert forwardedBodies(results) == ["m0", "m1", "m2"]


# -- queries ---------------------------------------------------------------------------


@pytest.fixture
def filled(makeServer, clock):
    """Alice's archive: 25 messages from bob, one a second, and alice online to query it."""
    server = makeServer()
    alice = available(Client(server, "alice"))
    bob = Client(server, "bob", "desk")
    for number in range(25):
        bob.send(message("alice@localhost", f"m{number}"))
        clock.advance(1)
    alice.discard()
    return alice


def test_paging(filled):
    """RSM: a first page, the next after its last, the last page, before a page, and by index."""
    alice = filled
    results, reply = query(alice, rsm="<max>10</max>")
    assert forwardedBodies(results) == [f"m{n}" for n in range(10)]
    first = fin(reply)
    assert (first["complete"], first["index"], first["count"]) == (False, "0", 25)
    assert first["first"] == next(results[0].elements(NS_MAM, "result"))["id"]
    assert first["last"] == next(results[-1].elements(NS_MAM, "result"))["id"]
    results, reply = query(alice, rsm=f"<max>10</max><after>{first['last']}</after>")
    assert forwardedBodies(results) == [f"m{n}" for n in range(10, 20)]
    assert fin(reply)["index"] == "10"
    results, reply = query(alice, rsm="<max>10</max><before/>")
    assert forwardedBodies(results) == [f"m{n}" for n in range(15, 25)]
    last = fin(reply)
    assert (last["complete"], last["index"]) == (False, None)  # no index going backward
    results, reply = query(alice, rsm=f"<max>10</max><before>{last['first']}</before>")
    assert forwardedBodies(results) == [f"m{n}" for n in range(5, 15)]
    results, reply = query(alice, rsm=f"<max>10</max><before>{fin(reply)['first']}</before>")
    assert forwardedBodies(results) == [f"m{n}" for n in range(5)] and fin(reply)["complete"]
    results, reply = query(alice, rsm="<max>3</max><index>22</index>")
    assert forwardedBodies(results) == ["m22", "m23", "m24"] and fin(reply)["complete"]
    results, reply = query(alice, rsm="<max>5</max>", extra=f"<flip-page xmlns='{NS_MAM}'/>")
    assert forwardedBodies(results) == ["m4", "m3", "m2", "m1", "m0"]
    assert fin(reply)["first"] == next(results[-1].elements(NS_MAM, "result"))["id"]


def test_pagingEdges(filled, makeServer):
    """max=0 counts; after the last is an empty complete page; an unknown id is item-not-found."""
    alice = filled
    results, reply = query(alice, rsm="<max>0</max>")
    assert results == [] and fin(reply)["count"] == 25 and fin(reply)["first"] is None
    _, reply = query(alice, rsm="<max>1</max><before/>")
    lastId = fin(reply)["last"]
    results, reply = query(alice, rsm=f"<after>{lastId}</after>")
    assert results == [] and fin(reply)["complete"] and fin(reply)["count"] == 25
    for rsm in ("<after>AAAAAAAAAAE</after>", "<before>nonsense</before>"):
        _, reply = query(alice, rsm=rsm)
        assert reply["type"] == "error" and reply.error.firstChildElement().name == "item-not-found"
    _, reply = query(alice, rsm="<max>many</max>")
    assert reply.error.firstChildElement().name == "bad-request"
    results, reply = query(alice, rsm="<max>500</max>")
    assert len(results) == 25
    results, reply = query(alice)
    assert len(results) == 20 and not fin(reply)["complete"]  # the default page


def test_pageSizeCapped(makeServer):
    """A larger <max/> than archive_max_page gets that many."""
    server = makeServer(archive_max_page=3)
    alice = available(Client(server, "alice"))
    bob = Client(server, "bob")
    for number in range(5):
        bob.send(message("alice@localhost", f"m{number}"))
    results, reply = query(alice, rsm="<max>50</max>")
    assert len(results) == 3 and not fin(reply)["complete"]


def test_filters(makeServer, clock):
    """with (bare and full), start and end, after-id and before-id, and ids."""
    server = makeServer()
    addAccounts(server, "carol")
    alice = available(Client(server, "alice"))
    bob = Client(server, "bob", "desk")
    carol = Client(server, "carol", "phone")
    for number in range(6):
        (bob if number % 2 else carol).send(message("alice@localhost", f"m{number}"))
        clock.advance(60)
    results, _ = query(alice, field("with", "bob@localhost"))
    assert forwardedBodies(results) == ["m1", "m3", "m5"]
    results, _ = query(alice, field("with", "carol@localhost/phone"))
    assert forwardedBodies(results) == ["m0", "m2", "m4"]
    assert query(alice, field("with", "carol@localhost/other"))[0] == []
    # An id is the time it was archived, a microsecond after the sender's copy of the message.
    results, _ = query(alice, field("start", "2023-11-14T22:14:20Z") + field("end", "2023-11-14T22:16:21Z"))
    assert forwardedBodies(results) == ["m1", "m2", "m3"]
    ids = [next(r.elements(NS_MAM, "result"))["id"] for r in query(alice)[0]]
    results, _ = query(alice, field("after-id", ids[1]) + field("before-id", ids[4]))
    assert forwardedBodies(results) == ["m2", "m3"]
    results, reply = query(alice, field("ids", ids[0], ids[5]))
    assert forwardedBodies(results) == ["m0", "m5"] and fin(reply)["count"] == 2
    for bad in (field("start", "yesterday"), field("fulltext", "x"), field("with", "@@")):
        assert query(alice, bad)[1].error.firstChildElement().name == "bad-request"
    tooMany = field("ids", *([ids[0]] * 51))
    assert query(alice, tooMany)[1].error.firstChildElement().name == "policy-violation"


def test_onlyOwnArchive(makeServer):
    """Another account's archive is forbidden; one's own by bare JID is fine."""
    server = makeServer()
    alice = available(Client(server, "alice"))
    reply = alice.request(f"<query xmlns='{NS_MAM}'/>", "set", to="bob@localhost")
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "forbidden"
    reply = alice.request(f"<query xmlns='{NS_MAM}'/>", "set", to="alice@localhost")
    assert reply["type"] == "result"


def test_formAndMetadata(filled):
    """The query form lists the fields; metadata names the first and last messages."""
    alice = filled
    reply = alice.request(f"<query xmlns='{NS_MAM}'/>", "get")
    fields = [f["var"] for f in reply.query.x.elements("jabber:x:data", "field")]
    assert fields == ["FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"]
    reply = alice.request(f"<metadata xmlns='{NS_MAM}'/>", "get")
    ids = [next(r.elements(NS_MAM, "result"))["id"] for r in query(alice, rsm="<max>50</max>")[0]]
    assert reply.metadata.start["id"] == ids[0] and reply.metadata.end["id"] == ids[-1]
    assert reply.metadata.start["timestamp"] == "2023-11-14T22:13:20.000Z"


def test_disco(makeServer):
    """The account's disco#info says mam:2, its extended features and stanza ids."""
    server = makeServer()
    alice = available(Client(server, "alice"))
    reply = alice.request("<query xmlns='http://jabber.org/protocol/disco#info'/>", to="alice@localhost")
    features = {f["var"] for f in reply.query.elements("http://jabber.org/protocol/disco#info", "feature")}
    assert {NS_MAM, "urn:xmpp:mam:2#extended", NS_SID} <= features


# -- preferences ------------------------------------------------------------------------


def test_prefs(makeServer):
    """Preferences are read, replaced, obeyed, and kept in the store."""
    server = makeServer()
    addAccounts(server, "carol")
    alice = available(Client(server, "alice"))
    reply = alice.request(f"<prefs xmlns='{NS_MAM}'/>", "get")
    assert reply.prefs["default"] == "always"
    reply = alice.request(f"<prefs xmlns='{NS_MAM}' default='never'><always><jid>carol@localhost</jid>"
                          "</always><never/></prefs>", "set")
    assert reply["type"] == "result" and str(reply.prefs.always.jid) == "carol@localhost"
    Client(server, "bob").send(message("alice@localhost", "from-bob"))
    Client(server, "carol").send(message("alice@localhost", "from-carol"))
    assert not stanzaIds(alice.expect(isMessage("from-bob")))
    assert stanzaIds(alice.expect(isMessage("from-carol")))
    assert forwardedBodies(query(alice)[0]) == ["from-carol"]
    stored = result(server.store.getArchivePrefs("localhost"))
    assert stored["alice"].policy == "never" and stored["alice"].always == ("carol@localhost",)
    reply = alice.request(f"<prefs xmlns='{NS_MAM}' default='sometimes'/>", "set")
    assert reply.error.firstChildElement().name == "bad-request"


def test_rosterPolicy(makeServer):
    """With the roster default, only messages with contacts on the roster are archived."""
    server = makeServer(archive_default_policy="roster")
    addAccounts(server, "carol")
    alice = available(Client(server, "alice"))
    alice.rosterSet("<item jid='carol@localhost'/>")
    alice.discard()
    Client(server, "bob").send(message("alice@localhost", "stranger"))
    Client(server, "carol").send(message("alice@localhost", "friend"))
    assert forwardedBodies(query(alice)[0]) == ["friend"]


# -- retention, limits, deletion ------------------------------------------------------


def test_retentionSweep(makeServer, clock):
    """The timer deletes what is older than archive_expires_after, and only that."""
    server = makeServer(archive_expires_after=86400, archive_sweep_interval=3600)
    alice = available(Client(server, "alice"))
    bob = Client(server, "bob")
    bob.send(message("alice@localhost", "old"))
    clock.advance(86400 - 1800)
    bob.send(message("alice@localhost", "new"))
    clock.advance(1800)  # a sweep runs: "old" is not quite a day old yet
    assert forwardedBodies(query(alice)[0]) == ["old", "new"]
    clock.advance(3600)
    assert forwardedBodies(query(alice)[0]) == ["new"]


def test_sweepInBatches(makeServer, clock, monkeypatch):
    """A sweep deletes a batch per store call until none is left."""
    from invitesrv.modules import mam
    monkeypatch.setattr(mam, "SWEEP_BATCH", 4)
    server = makeServer(archive_expires_after=60)
    bob = Client(server, "bob")
    for number in range(10):
        bob.send(message("alice@localhost", f"m{number}"))
    clock.advance(120)
    calls = []
    sweep = server.store.sweepArchive
    monkeypatch.setattr(server.store, "sweepArchive", lambda *a: calls.append(a) or sweep(*a))
    assert result(server.hosts["localhost"].modules["mam"].sweep()) == 20  # both archives
    assert len(calls) == 6 and all(call[2] == 4 for call in calls)


def test_sizeLimit(makeServer):
    """Over archive_max_items, the oldest messages go."""
    server = makeServer(archive_max_items=3)
    alice = available(Client(server, "alice"))
    bob = Client(server, "bob")
    for number in range(5):
        bob.send(message("alice@localhost", f"m{number}"))
    assert forwardedBodies(query(alice)[0]) == ["m2", "m3", "m4"]


def test_deletedAccountLosesArchive(makeServer):
    """Deleting an account deletes its archive and preferences; a new one by that name starts empty."""
    server = makeServer()
    Client(server, "bob").send(message("alice@localhost", "before"))
    host = server.hosts["localhost"]
    result(host.store.setArchivePrefs("localhost", "alice", host.modules["mam"]._prefsOf("alice")))
    assert result(host.registrar.deleteAccount("alice"))
    assert "alice" not in host.modules["mam"].prefs
    addAccounts(server, "alice")
    assert result(server.store.queryArchive("localhost", "alice", ArchiveQuery())).count == 0


# -- offline storage and carbons agree ---------------------------------------------------


def test_offlineCarriesTheArchiveId(makeServer):
    """
    A message for a user with no device online is kept offline and archived
    under one id; the device that comes online gets it with that id, and
    a second device finds it, with the same id, in the archive.
    """
    server = makeServer()
    Client(server, "bob").send(message("alice@localhost", "while-away"))
    phone = Client(server, "alice", "phone")
    phone.send("<presence/>")
    delivered = phone.expect(isMessage("while-away"))
    [(by, archiveId)] = stanzaIds(delivered)
    assert by == "alice@localhost"
    laptop = available(Client(server, "alice", "laptop"))
    laptop.absent(isMessage("while-away"))
    [entry] = query(laptop)[0]
    assert next(entry.elements(NS_MAM, "result"))["id"] == archiveId


def test_withoutOfflineArchivedMessageIsNotBounced(servers, clock):
    """With the archive and no offline module, a message to an offline user waits in the archive."""
    server = servers(clock, modules=("roster", "presence", "mam"))
    addAccounts(server, "alice", "bob")
    bob = available(Client(server, "bob"))
    bob.send(message("alice@localhost", "kept"))
    bob.absent(lambda e: e.getAttribute("type") == "error")
    alice = available(Client(server, "alice"))
    assert forwardedBodies(query(alice)[0]) == ["kept"]


def test_carbonsCarryIds(makeServer):
    """
    Received carbons carry the recipient's archive id; sent carbons the
    sender's, which the recipient does not get.
    """
    server = makeServer()
    phone = available(Client(server, "alice", "phone"))
    laptop = available(Client(server, "alice", "laptop"))
    for device in (phone, laptop):
        device.request(f"<enable xmlns='{NS_CARBONS}'/>", "set")
    bob = available(Client(server, "bob", "desk"))
    phone.send(message("bob@localhost/desk", "from-phone"))
    got = bob.expect(isMessage("from-phone"))
    assert [by for by, _ in stanzaIds(got)] == ["bob@localhost"]
    carbon = laptop.expect(carbonOf("sent"))
    inner = next(carbon.elements(NS_CARBONS, "sent")).forwarded.message
    [(by, sentId)] = stanzaIds(inner)
    assert by == "alice@localhost"
    [entry] = query(phone)[0]
    assert next(entry.elements(NS_MAM, "result"))["id"] == sentId
    bob.send(message("alice@localhost/phone", "to-phone"))
    [(_, receivedId)] = stanzaIds(phone.expect(isMessage("to-phone")))
    carbon = laptop.expect(carbonOf("received"))
    inner = next(carbon.elements(NS_CARBONS, "received")).forwarded.message
    assert stanzaIds(inner) == [("alice@localhost", receivedId)]


def test_defaultPolicyChecked():
    """A default policy that is not always, never or roster stops start-up, naming the key."""
    from invitesrv.config import ConfigError, parseConfig
    assert parseConfig({"host_defaults": {"archive_default_policy": "roster"}}).hosts[
        "localhost"].archive_default_policy == "roster"
    with pytest.raises(ConfigError, match="host_defaults.archive_default_policy: expected one of"):
        parseConfig({"host_defaults": {"archive_default_policy": "sometimes"}}, "x.toml")
    with pytest.raises(ConfigError, match="hosts.example.org.archive_default_policy"):
        parseConfig({"hosts": {"example.org": {"archive_default_policy": "true"}}}, "x.toml")
