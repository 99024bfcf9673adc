"""
XEP-0313 message archive end to end: a real server over TCP and TLS with
its SQLite store, queried by slixmpp's own MAM plugin and in raw XML (the
exact result and fin bytes, RSM edge cases), with preferences, retention,
account deletion, offline delivery and carbons on two devices.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from conftest import RunningServer
from rawxmpp import RawClient
from slix import Client as SlixClient
from slix import run
from test_roster import PASSWORD, StanzaClient, addUsers
from twisted.words.xish import domish

NS_MAM = "urn:xmpp:mam:2"
NS_SID = "urn:xmpp:sid:0"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_CARBONS = "urn:xmpp:carbons:2"
ID = r"[A-Za-z0-9_-]{11}"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hugo", "ivy")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with the default modules (the archive among them) and its accounts."""
    running = RunningServer(tmp_path_factory.mktemp("mam"), "").start()
    addUsers(running, *(f"{name}@localhost" for name in USERS))
    yield running
    running.stop()


def chat(to: str, body: str, stanzaId: str = "") -> str:
    return f"<message to='{to}' type='chat' id='{stanzaId or body}'><body>{body}</body></message>"


def isMessage(body: str):
    return lambda e: e.name == "message" and e.body is not None and str(e.body) == body


def stanzaIds(element: domish.Element) -> list[tuple[str, str]]:
    return [(sid["by"], sid["id"]) for sid in element.elements(NS_SID, "stanza-id")]


def rawQuery(raw: RawClient, queryId: str, payload: str = "") -> str:
    """Send an archive query; the bytes of every result and of the answer, as received."""
    raw.send(f"<iq type='set' id='{queryId}'><query xmlns='{NS_MAM}' queryid='{queryId}'>{payload}"
             "</query></iq>")
    return raw.recvUntil(rf"<iq [^>]*id='{queryId}'.*?(</iq>|/>)")


def test_slixmppHistory(server):
    """
    slixmpp's XEP-0313 plugin pages through the history of one contact,
    oldest first and newest first, and a 'with' filter leaves others out.
    """
    async def scenario():
        plugins = ("xep_0030", "xep_0059", "xep_0313", "xep_0359")
        alice = SlixClient("alice@localhost/slix", PASSWORD, plugins=plugins)
        bob = SlixClient("bob@localhost/slix", PASSWORD, plugins=plugins)
        got: asyncio.Queue = asyncio.Queue()
        alice.add_event_handler("message", lambda m: got.put_nowait(m))
        for client in (alice, bob):
            assert await client.login(server.port)
        await asyncio.sleep(0.3)  # alice's presence is in: bob's messages go to her session
        for number in range(12):
            bob.send_message(mto="alice@localhost", mbody=f"history {number}", mtype="chat")
        for _ in range(12):
            live = await asyncio.wait_for(got.get(), 10)
            assert live["stanza_id"]["by"] == "alice@localhost" and live["stanza_id"]["id"]
        bodies = [str(m["mam_result"]["forwarded"]["stanza"]["body"]) async for m in
                  alice.plugin["xep_0313"].iterate(with_jid="bob@localhost", rsm={"max": 5})]
        assert bodies == [f"history {n}" for n in range(12)]
        newest = [str(m["mam_result"]["forwarded"]["stanza"]["body"]) async for m in
                  alice.plugin["xep_0313"].iterate(with_jid="bob@localhost", rsm={"max": 5},
                                                   reverse=True, total=7)]
        assert newest == [f"history {n}" for n in range(11, 4, -1)]
        others = [m async for m in alice.plugin["xep_0313"].iterate(with_jid="carol@localhost")]
        assert others == []
        sent = [str(m["mam_result"]["forwarded"]["stanza"]["body"]) async for m in
                bob.plugin["xep_0313"].iterate(with_jid="alice@localhost", rsm={"max": 50})]
        assert sent == [f"history {n}" for n in range(12)]
        for client in (alice, bob):
            await client.logout()
    run(scenario())


def test_rawResultAndFin(server):
    """The exact bytes of a result and of the fin, and RSM's edge cases, in raw XML."""
    with RawClient(server.port) as carol, RawClient(server.port) as dave:
        carol.login("carol", PASSWORD, "raw")
        dave.login("dave", PASSWORD, "raw")
        assert rawQuery(carol, "empty") == (
            "<iq to='carol@localhost/raw' id='empty' type='result'><fin xmlns='urn:xmpp:mam:2'"
            " complete='true'><set xmlns='http://jabber.org/protocol/rsm'><count>0</count></set>"
            "</fin></iq>")
        dave.send(chat("carol@localhost", "one"))
        dave.send(chat("carol@localhost", "two"))
        dave.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        dave.recvUntil("id='sync'")
        time.sleep(0.2)
        answer = rawQuery(carol, "all")
        results = re.findall(r"<message .*?</message></forwarded></result></message>", answer)
        assert len(results) == 2, answer
        match = re.fullmatch(
            rf"<message to='carol@localhost/raw'><result xmlns='urn:xmpp:mam:2' queryid='all'"
            rf" id='({ID})'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay'"
            rf" stamp='{STAMP}'/><message xmlns='jabber:client' to='carol@localhost' type='chat'"
            rf" id='one' from='dave@localhost/raw'><body>one</body></message></forwarded></result>"
            rf"</message>", results[0])
        assert match, results[0]
        first = match.group(1)
        last = re.search(rf"id='({ID})'", results[1]).group(1)
        assert answer.endswith(
            f"<iq to='carol@localhost/raw' id='all' type='result'><fin xmlns='urn:xmpp:mam:2'"
            f" complete='true'><set xmlns='http://jabber.org/protocol/rsm'><first index='0'>{first}"
            f"</first><last>{last}</last><count>2</count></set></fin></iq>"), answer
        assert rawQuery(carol, "zero", f"<set xmlns='{NS_RSM}'><max>0</max></set>") == (
            "<iq to='carol@localhost/raw' id='zero' type='result'><fin xmlns='urn:xmpp:mam:2'>"
            "<set xmlns='http://jabber.org/protocol/rsm'><count>2</count></set></fin></iq>")
        answer = rawQuery(carol, "past", f"<set xmlns='{NS_RSM}'><after>{last}</after></set>")
        assert "<result" not in answer and "complete='true'" in answer and "<count>2</count>" in answer
        answer = rawQuery(carol, "end", f"<set xmlns='{NS_RSM}'><max>1</max><before/></set>")
        assert re.findall(r"<body>(\w+)</body>", answer) == ["two"]
        assert f"<first>{last}</first>" in answer and "complete=" not in answer
        answer = rawQuery(carol, "ghost", f"<set xmlns='{NS_RSM}'><after>AAAAAAAAAAA</after></set>")
        assert "type='error'" in answer and "<item-not-found" in answer


def test_prefs(server):
    """XEP-0441 over the wire: 'never' with an 'always' exception, kept across queries."""
    erin = StanzaClient(server.port, "erin")
    reply = erin.request(f"<prefs xmlns='{NS_MAM}' default='never'><always><jid>frank@localhost</jid>"
                         "</always></prefs>", "set")
    assert reply["type"] == "result" and reply.prefs["default"] == "never"
    erin.send("<presence/>")
    frank, gina = StanzaClient(server.port, "frank"), StanzaClient(server.port, "gina")
    gina.send(chat("erin@localhost", "not kept"))
    frank.send(chat("erin@localhost", "kept"))
    assert not stanzaIds(erin.expect(isMessage("not kept")))
    assert stanzaIds(erin.expect(isMessage("kept")))
    erin.send(f"<iq type='set' id='q'><query xmlns='{NS_MAM}'/></iq>")
    erin.expect(lambda e: e.getAttribute("id") == "q")
    bodies = [str(e.result.forwarded.message.body) for e in erin.backlog
              if e.name == "message" and e.result is not None]
    assert bodies == ["kept"]
    assert erin.request(f"<prefs xmlns='{NS_MAM}'/>").prefs["default"] == "never"
    for client in (erin, frank, gina):
        client.close()


def test_offlineAndArchiveAgreeOnTwoDevices(server):
    """
    hugo is away when ivy writes: his phone gets the message from offline
    storage with the archive's stanza id, his laptop no second copy but the
    same message, with that id, from the archive; a message while both are
    online reaches each device once, with one id, also in the laptop's
    carbon of what the phone is sent.
    """
    ivy = StanzaClient(server.port, "ivy")
    ivy.send(chat("hugo@localhost", "while away"))
    ivy.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    ivy.expect(lambda e: e.getAttribute("id") == "sync")
    phone = StanzaClient(server.port, "hugo", "phone")
    phone.send("<presence/>")
    [(by, offlineId)] = stanzaIds(phone.expect(isMessage("while away")))
    assert by == "hugo@localhost"
    laptop = StanzaClient(server.port, "hugo", "laptop")
    for device in (phone, laptop):
        assert device.request(f"<enable xmlns='{NS_CARBONS}'/>", "set")["type"] == "result"
    laptop.send("<presence/>")
    laptop.absent(isMessage("while away"))
    laptop.send(f"<iq type='set' id='q'><query xmlns='{NS_MAM}' queryid='catch-up'/></iq>")
    laptop.expect(lambda e: e.getAttribute("id") == "q")
    [result] = [e.result for e in laptop.backlog if e.name == "message" and e.result is not None]
    assert result["id"] == offlineId and str(result.forwarded.message.body) == "while away"
    laptop.discard()
    phone.discard()
    ivy.send(chat("hugo@localhost", "both online"))
    ids = {tuple(stanzaIds(device.expect(isMessage("both online")))) for device in (phone, laptop)}
    assert len(ids) == 1 and next(iter(ids))[0][0] == "hugo@localhost"
    for device in (phone, laptop):
        device.absent(isMessage("both online"))
    ivy.send(chat("hugo@localhost/phone", "to the phone"))
    [(_, phoneId)] = stanzaIds(phone.expect(isMessage("to the phone")))
    carbon = laptop.expect(lambda e: e.name == "message" and next(e.elements(NS_CARBONS, "received"),
                                                                   None) is not None)
    inner = next(carbon.elements(NS_CARBONS, "received")).forwarded.message
    assert stanzaIds(inner) == [("hugo@localhost", phoneId)]
    for client in (ivy, phone, laptop):
        client.close()


def test_deletedAccountLosesArchive(server):
    """invitesrvctl deluser while the server runs: a new account of that name has an empty archive."""
    addUsers(server, "jack@localhost", "kate@localhost")
    kate = StanzaClient(server.port, "kate")
    kate.send(chat("jack@localhost", "remember me"))
    kate.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    kate.expect(lambda e: e.getAttribute("id") == "sync")
    kate.close()
    server.ctl("deluser", "jack@localhost")
    addUsers(server, "jack@localhost")
    jack = StanzaClient(server.port, "jack")
    reply = jack.request(f"<query xmlns='{NS_MAM}'/>", "set")
    assert str(reply.fin.set.count) == "0"
    jack.close()


def test_retentionSweep(tmp_path):
    """With archive_expires_after = 4 s, a message is in the archive at once and gone after a sweep."""
    running = RunningServer(tmp_path, "[host_defaults]\narchive_expires_after = 4\n"
                                      "archive_sweep_interval = 1\n").start()
    try:
        addUsers(running, "lou@localhost", "max@localhost")
        lou, mac = StanzaClient(running.port, "lou"), StanzaClient(running.port, "max")
        mac.send(chat("lou@localhost", "short-lived"))
        mac.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        mac.expect(lambda e: e.getAttribute("id") == "sync")
        assert str(lou.request(f"<query xmlns='{NS_MAM}'/>", "set").fin.set.count) == "1"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.5)
            lou.discard()
            if str(lou.request(f"<query xmlns='{NS_MAM}'/>", "set").fin.set.count) == "0":
                break
        else:
            raise AssertionError("the archived message was not swept")
        assert "Archive of localhost: 2 messages older than" in running.log()  # lou's and max's copies
    finally:
        running.stop()
