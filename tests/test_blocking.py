"""
XEP-0191 blocking command and XEP-0377 spam reports, end to end over real
sockets against a real server: a blocked contact's messages bounce and the
user's presence stops reaching it, the user's own stanzas to it are refused,
unblocking restores both; pushes reach the user's other resources;
unblock-all; slixmpp's XEP-0191 plugin as an independent client; the
blocklist survives a restart and goes with its account; a spam report is
logged and counted.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import urllib.request

import pytest
from conftest import RunningServer
from prometheus_client.parser import text_string_to_metric_families
from slix import Client as SlixClient
from slix import run
from streamharness import Client, addAccounts
from test_presence import isPresence, online, subscribeBothWays
from test_roster import PASSWORD, StanzaClient, addUsers, errorCondition
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from invitesrv.modules.blocking import matches

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
NS_REPORTING = "urn:xmpp:reporting:1"
MAX_ITEMS = 1000  # docs/limits.md
USERS = ("romeo", "juliet", "tybalt", "paris", "nurse", "viola", "orsino")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (with a metrics listener), its accounts created."""
    running = RunningServer(tmp_path_factory.mktemp("blocking"),
                            'metrics = ["tcp:0:interface=127.0.0.1"]\n').start()
    addUsers(running, *(f"{name}@localhost" for name in USERS))
    yield running
    running.stop()


def items(xml: str) -> str:
    """Blocking items for the space-separated JIDs C{xml}."""
    return "".join(f"<item jid='{address}'/>" for address in xml.split())


def isBlockingPush(name: str, addresses: tuple[str, ...]):
    """A predicate for a block or unblock push naming exactly C{addresses}."""
    def match(element: domish.Element) -> bool:
        if element.name != "iq" or element.getAttribute("type") != "set":
            return False
        for request in element.elements(NS_BLOCKING, name):
            return tuple(item["jid"] for item in request.elements(NS_BLOCKING, "item")) == addresses
        return False
    return match


def blocklist(client: StanzaClient) -> list[str]:
    """The client's blocklist, as the server answers a get."""
    reply = client.request(f"<blocklist xmlns='{NS_BLOCKING}'/>")
    assert reply["type"] == "result", reply.toXml()
    return [item["jid"] for item in next(reply.elements(NS_BLOCKING, "blocklist")).elements()]


def isReply(stanzaId: str):
    """A predicate for the result or error answering the stanza C{stanzaId}."""
    return lambda e: e.getAttribute("id") == stanzaId and e.getAttribute("type") in ("result", "error")


def test_blockAndUnblock(server):
    """
    Romeo blocks Juliet: both his resources get the push, she gets his
    unavailable presence, her message bounces with service-unavailable, her
    presence and IQs stop reaching him, his message to her is refused with
    not-acceptable and <blocked/>. Unblocking restores all of it, and
    Romeo's server probes Juliet for the presence he missed.
    """
    romeo = online(server.port, "romeo", "a")
    romeoB = online(server.port, "romeo", "b")
    juliet = online(server.port, "juliet")
    subscribeBothWays(romeo, juliet)
    juliet.expect(isPresence(romeo.jid), what="romeo/a online")
    juliet.expect(isPresence(romeoB.jid), what="romeo/b online")
    assert blocklist(romeoB) == []

    reply = romeo.request(f"<block xmlns='{NS_BLOCKING}'>{items('juliet@localhost')}</block>", "set")
    assert reply["type"] == "result"
    for client in (romeo, romeoB):
        client.expect(isBlockingPush("block", ("juliet@localhost",)), what="block push")
    juliet.expect(isPresence(romeo.jid, "unavailable"), what="romeo/a gone")
    juliet.expect(isPresence(romeoB.jid, "unavailable"), what="romeo/b gone")
    assert blocklist(romeo) == ["juliet@localhost"]
    romeo.discard()  # what came before the block

    juliet.send("<message to='romeo@localhost' id='m1' type='chat'><body>wherefore</body></message>")
    bounced = juliet.expect(isReply("m1"), what="bounce")
    assert errorCondition(bounced) == "service-unavailable"
    juliet.send(f"<iq to='{romeo.jid}' id='v1' type='get'><query xmlns='jabber:iq:version'/></iq>")
    assert errorCondition(juliet.expect(isReply("v1"))) == "service-unavailable"
    juliet.send("<presence><show>away</show></presence>")
    romeo.send("<message to='juliet@localhost' id='m2' type='chat'><body>hark</body></message>")
    refused = romeo.expect(isReply("m2"), what="refusal")
    assert errorCondition(refused) == "not-acceptable"
    assert next(refused.error.elements(NS_BLOCKING_ERRORS, "blocked"), None) is not None
    romeo.send("<presence><show>dnd</show></presence>")
    romeo.absent(lambda e: e.name == "message" or isPresence(juliet.jid, None)(e), what="juliet")
    juliet.absent(lambda e: e.name == "message" or isPresence(romeo.jid, None)(e), what="romeo")

    reply = romeoB.request(f"<unblock xmlns='{NS_BLOCKING}'>{items('juliet@localhost')}</unblock>",
                           "set")
    assert reply["type"] == "result"
    for client in (romeo, romeoB):
        client.expect(isBlockingPush("unblock", ("juliet@localhost",)), what="unblock push")
    juliet.expect(isPresence(romeo.jid, show="dnd"), what="romeo/a back")
    juliet.expect(isPresence(romeoB.jid), what="romeo/b back")
    romeo.expect(isPresence(juliet.jid, show="away"), what="juliet's presence, probed again")
    juliet.send(f"<message to='{romeo.jid}' id='m3' type='chat'><body>again</body></message>")
    assert str(romeo.expect(lambda e: e.name == "message").body) == "again"
    for client in (romeo, romeoB, juliet):
        client.close()


def test_matchingAndUnblockAll(server):
    """
    A domain item blocks every JID at it, a full JID only that resource;
    unblock-all empties the list and is pushed as an empty unblock; a bad
    JID (jid-malformed) or more than MAX_ITEMS (resource-constraint) is
    refused and nothing is blocked.
    """
    tybalt = online(server.port, "tybalt")
    paris = online(server.port, "paris", "home")
    bad = tybalt.request(f"<block xmlns='{NS_BLOCKING}'>{items('a@b@c paris@localhost')}</block>",
                         "set")
    assert errorCondition(bad) == "jid-malformed"
    assert errorCondition(tybalt.request(f"<block xmlns='{NS_BLOCKING}'/>", "set")) == "bad-request"
    many = " ".join(f"u{n}@spam.example" for n in range(MAX_ITEMS + 1))
    tooMany = tybalt.request(f"<block xmlns='{NS_BLOCKING}'>{items(many)}</block>", "set")
    assert errorCondition(tooMany) == "resource-constraint"
    assert blocklist(tybalt) == []

    tybalt.request(f"<block xmlns='{NS_BLOCKING}'>{items('paris@localhost/work')}</block>", "set")
    paris.send("<message to='tybalt@localhost' id='p1'><body>from home</body></message>")
    assert str(tybalt.expect(lambda e: e.name == "message").body) == "from home"
    tybalt.request(f"<block xmlns='{NS_BLOCKING}'>{items('localhost')}</block>", "set")
    paris.send("<message to='tybalt@localhost' id='p2'><body>now?</body></message>")
    assert errorCondition(paris.expect(isReply("p2"))) == "service-unavailable"
    assert blocklist(tybalt) == ["localhost", "paris@localhost/work"]

    tybalt.discard()
    assert tybalt.request(f"<unblock xmlns='{NS_BLOCKING}'/>", "set")["type"] == "result"
    tybalt.expect(isBlockingPush("unblock", ()), what="unblock-all push")
    assert blocklist(tybalt) == []
    paris.send("<message to='tybalt@localhost' id='p3'><body>at last</body></message>")
    assert str(tybalt.expect(lambda e: e.name == "message").body) == "at last"
    for client in (tybalt, paris):
        client.close()


def test_slixmpp(server):
    """slixmpp's XEP-0191 plugin blocks, gets the list and the push, and unblocks."""
    async def scenario():
        viola = SlixClient("viola@localhost/slix", PASSWORD, plugins=("xep_0030", "xep_0191"))
        pushed = asyncio.Event()
        viola.add_event_handler("blocked", lambda iq: pushed.set())
        assert await viola.login(server.port, presence=False)
        info = await viola["xep_0030"].get_info(jid="localhost")
        assert {NS_BLOCKING, NS_REPORTING} <= set(info["disco_info"]["features"])
        assert await viola["xep_0191"].get_blocked_jids() == set()
        await viola["xep_0191"].block(["orsino@localhost"])
        await asyncio.wait_for(pushed.wait(), 10)
        assert {str(j) for j in await viola["xep_0191"].get_blocked_jids()} == {"orsino@localhost"}
        orsino = await asyncio.to_thread(StanzaClient, server.port, "orsino")
        await asyncio.to_thread(orsino.send,
                                "<message to='viola@localhost' id='o1'><body>music</body></message>")
        bounced = await asyncio.to_thread(orsino.expect, isReply("o1"))
        assert errorCondition(bounced) == "service-unavailable"
        await viola["xep_0191"].unblock(["orsino@localhost"])
        assert await viola["xep_0191"].get_blocked_jids() == set()
        orsino.close()
        await viola.logout()
    run(scenario())


def test_spamReport(server):
    """A report in a block item is logged in one line (text cut) and counted by reason."""
    def reports() -> dict[str, float]:
        """The reports.* counters, scraped from the metrics listener."""
        port = int(re.search(r"Metrics listening on 127.0.0.1:(\d+)", server.log()).group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {s.labels["event"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.labels.get("event", "").startswith("reports.")}

    before = reports()
    nurse = StanzaClient(server.port, "nurse")
    long = "x" * 5000
    reply = nurse.request(
        f"<block xmlns='{NS_BLOCKING}'><item jid='spammer@spam.example'>"
        f"<report xmlns='{NS_REPORTING}' reason='urn:xmpp:reporting:spam'>"
        f"<text>buy {long}</text></report></item></block>", "set")
    assert reply["type"] == "result"
    bad = nurse.request(
        f"<block xmlns='{NS_BLOCKING}'><item jid='other@spam.example'>"
        f"<report xmlns='{NS_REPORTING}' reason='urn:example:nonsense'/></item></block>", "set")
    assert errorCondition(bad) == "bad-request"
    assert blocklist(nurse) == ["spammer@spam.example"]
    nurse.close()
    after = reports()
    assert after.get("reports.spam", 0) == before.get("reports.spam", 0) + 1
    assert after.get("reports.abuse", 0) == before.get("reports.abuse", 0)
    [line] = [line for line in server.log().splitlines() if "spammer@spam.example" in line]
    assert "nurse@localhost" in line and "spam" in line and "buy x" in line
    assert len(line) < 500


def test_restartAndDeletion(serverFactory):
    """
    The blocklist is in the database: after a restart it is still listed and
    still enforced. Deleting the account deletes it; a new account of the
    same name starts with none.
    """
    server = serverFactory()
    addUsers(server, "romeo@localhost", "juliet@localhost")
    romeo = StanzaClient(server.port, "romeo")
    romeo.request(f"<block xmlns='{NS_BLOCKING}'>{items('juliet@localhost spam.example')}</block>",
                  "set")
    romeo.close()
    server.stop()
    server.start()
    romeo = StanzaClient(server.port, "romeo")
    assert blocklist(romeo) == ["juliet@localhost", "spam.example"]
    juliet = StanzaClient(server.port, "juliet")
    juliet.send("<message to='romeo@localhost' id='j1'><body>still?</body></message>")
    assert errorCondition(juliet.expect(isReply("j1"))) == "service-unavailable"

    romeo.send("<iq type='set' id='rm'><query xmlns='jabber:iq:register'><remove/></query></iq>")
    romeo.raw.isClosed()
    database = f"file:{server.dataDir / 'invitesrv.sqlite3'}?mode=ro"
    with sqlite3.connect(database, uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM blocklist").fetchone() == (0,)
    addUsers(server, "romeo@localhost")
    romeo = online(server.port, "romeo")
    assert blocklist(romeo) == []
    juliet.send("<message to='romeo@localhost' id='j2'><body>hello</body></message>")
    assert str(romeo.expect(lambda e: e.name == "message").body) == "hello"
    juliet.absent(isReply("j2"), what="bounce")
    for client in (romeo, juliet):
        client.close()


@pytest.mark.parametrize(("item", "address", "blocked"), [
    ("example.org", "juliet@example.org/balcony", True),
    ("example.org", "example.org", True),
    ("example.org", "juliet@sub.example.org", False),
    ("juliet@example.org", "juliet@example.org/balcony", True),
    ("juliet@example.org", "nurse@example.org", False),
    ("juliet@example.org/balcony", "juliet@example.org/balcony", True),
    ("juliet@example.org/balcony", "juliet@example.org/garden", False),
    ("juliet@example.org/balcony", "juliet@example.org", False),
    ("example.org/bot", "example.org/bot", True),
    ("example.org/bot", "juliet@example.org/bot", True),
])
def test_matches(item, address, blocked):
    """XEP-0191 section 3.3 by way of XEP-0016: what a domain, bare or full JID item covers."""
    assert matches(item, jid.JID(address)) is blocked


def test_directedPresenceAndProbesInMemory(servers):
    """
    On the in-memory harness: an entity that got directed presence hears
    unavailable at block time; a probe from a blocked JID is not answered;
    the user's IQ results to it are dropped without an error.
    """
    server = servers(modules=("roster", "presence", "blocking"))
    addAccounts(server, "hero", "claudio", "don")
    hero = Client(server, "hero", "h")
    hero.send("<presence/>")
    claudio = Client(server, "claudio", "c")
    don = Client(server, "don", "d")
    hero.send("<presence to='claudio@localhost/c'/>")
    claudio.expect(isPresence("hero@localhost/h"), what="directed presence")
    reply = hero.request(f"<block xmlns='{NS_BLOCKING}'>{items('claudio@localhost')}</block>", "set")
    assert reply["type"] == "result"
    claudio.expect(isPresence("hero@localhost/h", "unavailable"), what="unavailable at block time")
    claudio.send("<presence to='hero@localhost' type='probe'/>")
    claudio.absent(lambda e: e.name == "presence", what="an answer to the probe")
    hero.discard()
    hero.send("<iq to='claudio@localhost/c' id='r1' type='result'/>")
    hero.absent(lambda e: True, what="anything")
    claudio.absent(lambda e: e.name == "iq", what="the result")
    don.send("<presence to='hero@localhost/h'/>")
    hero.expect(isPresence("don@localhost/d"), what="others still reach the user")
