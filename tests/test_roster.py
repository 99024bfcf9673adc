"""
The roster (RFC 6121 section 2) and roster versioning. End to end, over real
sockets against one server process: the stream features and pushes to every
interested resource. The rest as unit tests on the in-memory harness (the
whole server on a StringTransport, a Clock and a MemoryStore): the errors,
access to other rosters, versioning, concurrent changes. Either way replies
and pushes are parsed back into elements, so that tests match on what was
sent, in whatever order pushes and results interleave.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from rawxmpp import RawClient
from streamharness import Client, Requests, addAccounts
from synchronous import result
from twisted.words.xish import domish

from invitesrv.store.interfaces import RosterItem

NS_ROSTER = "jabber:iq:roster"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
PASSWORD = "a long password"
STREAM = ("<stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams'>")

# Creates accounts through the registrar in one process (as invitesrvctl
# adduser does one at a time): argv = config file, password, addresses.
ADD_USERS = """
import sys
from twisted.internet import defer, task
from invitesrv.config import loadConfig
from invitesrv.service import InviteServer

@defer.inlineCallbacks
def main(reactor, path, password, *addresses):
    server = InviteServer(loadConfig(path), reactor=reactor, loadModules=False)
    server.store.open(serving=False)
    try:
        for address in addresses:
            user, host = address.split("@")
            yield server.hosts[host].registrar.register(user, password, "cli", trusted=True)
    finally:
        server.store.close()

task.react(main, sys.argv[1:])
"""


def addUsers(server, *addresses: str) -> None:
    """Create accounts (all with L{PASSWORD}) on a running test server."""
    subprocess.run([sys.executable, "-c", ADD_USERS, str(server.configPath), PASSWORD, *addresses],
                   check=True, timeout=60, cwd=server.directory)


class StanzaClient(Requests):
    """
    A raw client, logged in and bound, whose incoming stanzas are parsed into
    domish elements. L{expect} takes the first element a predicate accepts,
    keeping the others for later calls, so a test states what must arrive
    without depending on how pushes, results and presence interleave.
    """

    def __init__(self, port: int, username: str, resource: str = "raw", host: str = "localhost",
                 password: str = PASSWORD, mechanism: str = "SCRAM-SHA-256"):
        self.raw = RawClient(port, host)
        self.jid = self.raw.login(username, password, resource, mechanism)
        self.bare = self.jid.split("/")[0]
        self.backlog: list[domish.Element] = []
        self._parser = domish.elementStream()
        self._parser.DocumentStartEvent = lambda root: None
        self._parser.ElementEvent = self.backlog.append
        self._parser.DocumentEndEvent = lambda: None
        self._parser.parse(STREAM.encode())
        leftover, self.raw.buffer = self.raw.buffer, b""
        if leftover:
            self._parser.parse(leftover)
        self._ids = 0

    def send(self, xml: str) -> None:
        self.raw.send(xml)

    def _read(self, timeout: float) -> None:
        self.raw.sock.settimeout(max(timeout, 0.01))
        try:
            chunk = self.raw.sock.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            raise ConnectionError(f"{self.jid}: connection closed")
        self._parser.parse(chunk)

    def expect(self, match: Callable[[domish.Element], bool], timeout: float = 5.0,
               what: str = "stanza") -> domish.Element:
        """The first stanza C{match} accepts, waiting up to C{timeout} seconds for it."""
        deadline = time.monotonic() + timeout
        while True:
            for index, element in enumerate(self.backlog):
                if match(element):
                    return self.backlog.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.jid}: no {what} in {[e.toXml() for e in self.backlog]}")
            self._read(remaining)

    def absent(self, match: Callable[[domish.Element], bool], wait: float = 0.5,
               what: str = "stanza") -> None:
        """Fail if a stanza C{match} accepts arrives within C{wait} seconds."""
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            self._read(remaining)
        found = [e.toXml() for e in self.backlog if match(e)]
        assert not found, f"{self.jid}: unexpected {what}: {found}"

    def discard(self) -> None:
        """Forget everything received so far."""
        self.backlog.clear()

    def close(self) -> None:
        """End the stream properly."""
        try:
            self.send("</stream:stream>")
        except OSError:
            pass
        self.raw.close()

    def drop(self) -> None:
        """Reset the TCP connection: no closing tag, no TLS close."""
        sock = self.raw.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def rosterItems(reply: domish.Element) -> dict[str, domish.Element]:
    """The items of a roster result, by JID."""
    query = next(reply.elements(NS_ROSTER, "query"))
    return {item["jid"]: item for item in query.elements(NS_ROSTER, "item")}


def errorCondition(reply: domish.Element) -> str | None:
    """The defined condition of an error reply, or None for a result."""
    if reply.getAttribute("type") != "error":
        return None
    error = next(child for child in reply.elements() if child.name == "error")
    return next(c.name for c in error.elements() if c.uri == NS_STANZAS and c.name != "text")


def isPush(contact: str, subscription: str | None = None, ask: bool | None = None,
           approved: bool | None = None) -> Callable[[domish.Element], bool]:
    """A predicate for a roster push about C{contact} (with the given state, where given)."""
    def match(element: domish.Element) -> bool:
        if element.name != "iq" or element.getAttribute("type") != "set":
            return False
        for query in element.elements(NS_ROSTER, "query"):
            for item in query.elements(NS_ROSTER, "item"):
                if item.getAttribute("jid") != contact:
                    continue
                if subscription is not None and item.getAttribute("subscription") != subscription:
                    return False
                if ask is not None and (item.getAttribute("ask") == "subscribe") != ask:
                    return False
                return approved is None or (item.getAttribute("approved") == "true") == approved
        return False
    return match


def pushVersion(push: domish.Element) -> str:
    return next(push.elements(NS_ROSTER, "query"))["ver"]


USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


@pytest.fixture(scope="module")
def server(sharedServer):
    addUsers(sharedServer, *(f"{name}@localhost" for name in USERS))
    return sharedServer


@pytest.fixture
def local(servers):
    """An in-memory server with the roster and presence modules, on a Clock."""
    return servers(modules=("roster", "presence"))


def test_featuresAdvertised(server):
    """An authenticated stream advertises roster versioning and pre-approval; a new one does not."""
    client = RawClient(server.port)
    try:
        before = client.startTLS()
        assert "urn:xmpp:features:rosterver" not in before
        assert "<success" in client.scram("alice", PASSWORD)
        after = client.openStream()
        assert "<ver xmlns='urn:xmpp:features:rosterver'/>" in after
        assert "<sub xmlns='urn:xmpp:features:pre-approval'/>" in after
    finally:
        client.close()


def test_setGetAndPushToEveryInterestedResource(server):
    """
    A roster set is pushed to every resource that asked for the roster (not
    to one that did not), and a later get returns the name and groups kept.
    """
    phone = StanzaClient(server.port, "alice", "phone")
    laptop = StanzaClient(server.port, "alice", "laptop")
    quiet = StanzaClient(server.port, "alice", "quiet")
    try:
        empty = phone.rosterGet()
        assert rosterItems(empty) == {}
        laptop.rosterGet()
        reply = phone.rosterSet("<item jid='Bob@LOCALHOST' name='Bob B.'>"
                                "<group>Friends</group><group>Work</group></item>")
        assert reply["type"] == "result"
        for client in (phone, laptop):
            push = client.expect(isPush("bob@localhost", "none", ask=False), what="push")
            item = next(next(push.elements(NS_ROSTER, "query")).elements(NS_ROSTER, "item"))
            assert item["name"] == "Bob B."
            assert [str(g) for g in item.elements(NS_ROSTER, "group")] == ["Friends", "Work"]
            assert push.getAttribute("from") in (None, "alice@localhost")
        quiet.absent(isPush("bob@localhost"), what="push to a resource that never asked")
        items = rosterItems(quiet.rosterGet())
        assert items["bob@localhost"]["name"] == "Bob B."
        assert items["bob@localhost"]["subscription"] == "none"
        assert sorted(str(g) for g in items["bob@localhost"].elements(NS_ROSTER, "group")) == [
            "Friends", "Work"]
        # An update replaces name and groups; removal pushes subscription='remove'.
        phone.rosterSet("<item jid='bob@localhost'><group>Work</group></item>")
        push = laptop.expect(isPush("bob@localhost", "none"), what="update push")
        item = next(next(push.elements(NS_ROSTER, "query")).elements(NS_ROSTER, "item"))
        assert item.getAttribute("name") is None
        assert [str(g) for g in item.elements(NS_ROSTER, "group")] == ["Work"]
        assert phone.rosterSet("<item jid='bob@localhost' subscription='remove'/>")["type"] == "result"
        laptop.expect(isPush("bob@localhost", "remove"), what="removal push")
        assert "bob@localhost" not in rosterItems(phone.rosterGet())
    finally:
        for client in (phone, laptop, quiet):
            client.close()


@pytest.mark.parametrize("item, condition", [
    ("<item jid='not a jid@@localhost'/>", "jid-malformed"),
    ("<item jid='carol@localhost/phone'/>", "bad-request"),
    ("<item name='no jid'/>", "bad-request"),
    ("<item jid='a@localhost'/><item jid='b@localhost'/>", "bad-request"),
    ("<item jid='a@localhost'><group>G</group><group>G</group></item>", "bad-request"),
    ("<item jid='a@localhost'><group></group></item>", "not-acceptable"),
    (f"<item jid='a@localhost' name='{'n' * 1024}'/>", "not-acceptable"),
    ("<item jid='carol@localhost'/>", "not-allowed"),
    ("<item jid='nobody@localhost' subscription='remove'/>", "item-not-found"),
])
def test_setErrors(local, item, condition):
    """Invalid roster sets get the RFC 6121 section 2.3.3 and 2.5.3 errors and change nothing."""
    addAccounts(local, "carol")
    client = Client(local, "carol", "errors")
    client.rosterGet()
    reply = client.rosterSet(item)
    assert errorCondition(reply) == condition, reply.toXml()
    client.absent(isPush("a@localhost"))
    assert rosterItems(client.rosterGet()) == {}
    assert result(local.store.getRoster("localhost", "carol")).version == 0


def test_otherUsersRosterForbidden(local):
    """A roster get or set addressed to another account is forbidden."""
    addAccounts(local, "alice", "dave")
    client = Client(local, "dave", "snoop")
    assert errorCondition(client.rosterGet(to="alice@localhost")) == "forbidden"
    reply = client.rosterSet("<item jid='eve@localhost'/>", to="alice@localhost")
    assert errorCondition(reply) == "forbidden"
    assert errorCondition(client.rosterGet(to="localhost")) == "forbidden"
    assert result(local.store.getRoster("localhost", "alice")).items == ()
    # Addressed to the account itself is the same as no 'to'.
    assert client.rosterGet(to="dave@localhost")["type"] == "result"


def test_versioningSendsOnlyChanges(local):
    """
    A get with a known version is answered with an empty result and one push
    per item changed since, each with its own version; an unknown or foreign
    version gets the full roster with the current version.
    """
    addAccounts(local, "erin")
    client = Client(local, "erin", "v1")
    try:
        start = client.rosterGet(ver="")
        base = next(start.elements(NS_ROSTER, "query"))["ver"]
        for name in ("one", "two", "three"):
            client.rosterSet(f"<item jid='{name}@localhost'/>")
        client.discard()
        cached = client.rosterGet()
        cachedVer = next(cached.elements(NS_ROSTER, "query"))["ver"]
        client.rosterSet("<item jid='two@localhost' subscription='remove'/>")
        client.rosterSet("<item jid='four@localhost' name='Four'/>")
        client.rosterSet("<item jid='one@localhost' name='One'/>")
    finally:
        client.close()

    later = Client(local, "erin", "v2")
    try:
        reply = later.rosterGet(ver=cachedVer)
        assert reply["type"] == "result" and not list(reply.elements()), reply.toXml()
        pushes = [later.expect(isPush(contact), what=f"interim push for {contact}")
                  for contact in ("two@localhost", "four@localhost", "one@localhost")]
        assert isPush("two@localhost", "remove")(pushes[0])
        versions = [int(pushVersion(p)) for p in pushes]
        assert versions == sorted(versions) and len(set(versions)) == 3
        assert versions[0] > int(cachedVer)
        later.absent(isPush("three@localhost"), what="push of an unchanged item")
        # Up to date: empty result, no pushes.
        current = str(versions[-1])
        reply = later.rosterGet(ver=current)
        assert not list(reply.elements())
        later.absent(lambda e: e.name == "iq" and e.getAttribute("type") == "set")
        # Unknown, foreign and empty versions: the whole roster.
        for ver in ("999999", "v-foreign", "", "00x"):
            full = later.rosterGet(ver=ver)
            assert sorted(rosterItems(full)) == ["four@localhost", "one@localhost", "three@localhost"]
            assert next(full.elements(NS_ROSTER, "query"))["ver"] == current
        assert int(base) < int(current)
    finally:
        later.close()


def test_concurrentChangesAreNotLost(local):
    """
    A roster set and a subscription request for the same contact, sent in
    one write, both land: the item keeps the name and gets ask='subscribe'.
    """
    addAccounts(local, "frank")
    client = Client(local, "frank", "fast")
    try:
        client.rosterGet()
        for index in range(5):
            contact = f"remote{index}@example.invalid"
            client.send(f"<iq type='set' id='s{index}'><query xmlns='{NS_ROSTER}'>"
                        f"<item jid='{contact}' name='N{index}'/></query></iq>"
                        f"<presence to='{contact}' type='subscribe'/>")
        for index in range(5):
            client.expect(lambda e, i=index: e.name == "iq" and e.getAttribute("id") == f"s{i}")
        items = rosterItems(client.rosterGet())
        for index in range(5):
            item = items[f"remote{index}@example.invalid"]
            assert item.getAttribute("name") == f"N{index}"
            assert item.getAttribute("ask") == "subscribe"
    finally:
        client.close()


def test_onlineUsersRosterKept(local):
    """
    An online user's roster is read from the store once: a second get sends
    the same bytes, a get with the current version is answered "unchanged",
    and the broadcasts of presence read it, all without a store call. Whatever changes the roster
    through the store (a roster set, a write by another module, an account
    deletion) is seen at the next get; the copy goes with the last session.
    """
    addAccounts(local, "kim", "lee")
    store = local.store
    calls = []
    for name in ("getRoster", "getRosterChanges"):
        method = getattr(store, name)
        setattr(store, name, lambda *args, method=method, name=name: calls.append(name) or method(*args))
    module = local.hosts["localhost"].modules["roster"]
    client = Client(local, "kim", "phone")
    try:
        client.rosterSet("<item jid='lee@localhost' name='Lee'/>")
        first = client.rosterGet()
        client.send("<presence/>")  # its broadcast reads the roster too
        assert calls == ["getRoster"]
        again = client.rosterGet()
        assert again.toXml().replace(again["id"], "") == first.toXml().replace(first["id"], "")
        version = next(again.elements(NS_ROSTER, "query"))["ver"]
        unchanged = client.rosterGet(ver=version)
        assert unchanged["type"] == "result" and not list(unchanged.elements())
        assert calls == ["getRoster"]

        result(store.setRosterItem("localhost", "kim", RosterItem("sam@localhost", "Sam")))
        assert sorted(rosterItems(client.rosterGet())) == ["lee@localhost", "sam@localhost"]
        result(store.deleteAccount("localhost", "lee"))
        assert sorted(rosterItems(client.rosterGet())) == ["sam@localhost"]
        assert calls == ["getRoster"] * 3
        assert "kim" in module._kept
    finally:
        client.drop()
    assert "kim" not in module._kept
    assert calls == ["getRoster"] * 3  # the unavailable broadcast read the copy
