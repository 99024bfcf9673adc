"""
XEP-0163 PEP, in memory (a L{Clock}, a L{MemoryStore}, clients on a
L{StringTransport}): publishing and reading by access model, publish-options
preconditions, notifications decided by verified XEP-0115 caps, the last item
on login and on a contact's presence, the limits, and an account's deletion.
"""

from __future__ import annotations

import pytest
from streamharness import Client, addAccounts
from synchronous import result
from test_presence import isPresence
from twisted.internet import defer
from twisted.words.xish import domish

from invitesrv.caps import NS_CAPS, NS_DISCO_INFO, capsHash
from invitesrv.modules.pep import PepOptions
from invitesrv.pubsub import NS_ERRORS, NS_EVENT, NS_OWNER, NS_PUBSUB
from invitesrv.store.interfaces import PepNode, RosterItem

NS_VCARD = "vcard-temp"
NS_PRIVATE = "jabber:iq:private"

NS_AVATAR_META = "urn:xmpp:avatar:metadata"
NS_DEVICELIST = "eu.siacs.conversations.axolotl.devicelist"
NOTIFY = (f"{NS_AVATAR_META}+notify", f"{NS_DEVICELIST}+notify", "urn:xmpp:bookmarks:1+notify")


def discoQuery(features, node: str | None = None) -> domish.Element:
    """A client's disco#info: one identity and C{features}."""
    query = domish.Element((NS_DISCO_INFO, "query"))
    if node:
        query["node"] = node
    identity = query.addElement("identity")
    identity["category"], identity["type"], identity["name"] = "client", "pc", "Test"
    for feature in features:
        query.addElement("feature")["var"] = feature
    return query


def test_capsHashVectors():
    """XEP-0115 section 5.2 and 5.3: the simple and the complex example hash as the XEP says."""
    simple = discoQuery(["http://jabber.org/protocol/caps", NS_DISCO_INFO,
                         "http://jabber.org/protocol/disco#items", "http://jabber.org/protocol/muc"])
    identity = next(simple.elements(NS_DISCO_INFO, "identity"))
    identity["name"] = "Exodus 0.9.1"
    assert capsHash(simple) == "QgayPKawpkPSDYmwT/WM94uAlu0="
    complex_ = domish.Element((NS_DISCO_INFO, "query"))
    for lang, name in (("en", "Psi 0.11"), ("el", "Ψ 0.11")):
        identity = complex_.addElement("identity")
        identity["category"], identity["type"], identity["name"] = "client", "pc", name
        identity[("http://www.w3.org/XML/1998/namespace", "lang")] = lang
    for feature in ("http://jabber.org/protocol/caps", NS_DISCO_INFO,
                    "http://jabber.org/protocol/disco#items", "http://jabber.org/protocol/muc"):
        complex_.addElement("feature")["var"] = feature
    form = complex_.addElement(("jabber:x:data", "x"))
    form["type"] = "result"
    for var, values in (("FORM_TYPE", ["urn:xmpp:dataforms:softwareinfo"]),
                        ("ip_version", ["ipv4", "ipv6"]), ("os", ["Mac"]), ("os_version", ["10.5.1"]),
                        ("software", ["Psi"]), ("software_version", ["0.11"])):
        field = form.addElement("field")
        field["var"] = var
        for value in values:
            field.addElement("value", content=value)
    assert capsHash(complex_) == "q07IKJEyjvHSyhy//CH0CxmKi8w="


class Pep:
    """An in-memory server with PEP, whose users' clients answer caps queries when asked."""

    def __init__(self, servers, **options) -> None:
        self.server = servers(modules=("roster", "presence", "disco", "pep", "vcard", "private"))
        self.host = self.server.hosts["localhost"]
        self.pep = self.host.modules["pep"]
        if options:
            self.pep.options = PepOptions(**options)
        self.store = self.server.store

    def accounts(self, *usernames: str) -> None:
        addAccounts(self.server, *usernames)

    def friends(self, a: str, b: str) -> None:
        """Mutual presence subscription, in the store."""
        result(self.store.setRosterItem("localhost", a, RosterItem(f"{b}@localhost", subscription="both")))
        result(self.store.setRosterItem("localhost", b, RosterItem(f"{a}@localhost", subscription="both")))

    def online(self, username: str, resource: str = "r", notify=NOTIFY, ver: str | None = None,
               answer: bool = True) -> Client:
        """
        A client that sends presence with caps for C{notify} (C{ver}: a
        hash of its own instead of the right one) and answers the caps query.
        """
        client = Client(self.server, username, resource)
        client.rosterGet()
        query = discoQuery(notify)
        ver = ver or capsHash(query)
        client.send(f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='https://example.org/test'"
                    f" ver='{ver}'/></presence>")
        client.expect(isPresence(client.jid), what="own presence echoed")
        if answer:
            self.answerCaps(client, query)
        return client

    @staticmethod
    def answerCaps(client: Client, query: domish.Element) -> None:
        """Answer every caps query the client got so far."""
        client._collect()
        for iq in [e for e in client.backlog if e.name == "iq" and e.getAttribute("type") == "get"
                   and next(e.elements(NS_DISCO_INFO, "query"), None) is not None]:
            client.backlog.remove(iq)
            answer = domish.Element((None, "iq"))
            answer["type"], answer["id"], answer["to"] = "result", iq["id"], iq["from"]
            copy = discoQuery([f["var"] for f in query.elements(NS_DISCO_INFO, "feature")],
                              next(iq.elements(NS_DISCO_INFO, "query")).getAttribute("node"))
            answer.addChild(copy)
            client.send(answer.toXml())


@pytest.fixture
def pep(servers):
    made = Pep(servers)
    made.accounts("alice", "bob", "eve")
    made.friends("alice", "bob")
    return made


def publish(client: Client, node: str, payload: str, itemId: str = "current", options: dict | None = None,
            to: str | None = None) -> domish.Element:
    """Publish one item; the iq's answer."""
    form = ""
    if options is not None:
        fields = "".join(f"<field var='pubsub#{k}'><value>{v}</value></field>" for k, v in options.items())
        form = ("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'"
                " type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
                f"{fields}</x></publish-options>")
    return client.request(f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item id='{itemId}'>"
                          f"{payload}</item></publish>{form}</pubsub>", "set", to)


def items(client: Client, owner: str, node: str, extra: str = "", inner: str = "") -> domish.Element:
    return client.request(f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'{extra}>{inner}</items></pubsub>",
                          "get", owner)


def itemIds(reply: domish.Element) -> list[str]:
    assert reply["type"] == "result", reply.toXml()
    return [item["id"] for item in reply.pubsub.items.elements(NS_PUBSUB, "item")]


def condition(reply: domish.Element) -> tuple[str, ...]:
    """The error's conditions: the stanza one, then any application one."""
    assert reply["type"] == "error", reply.toXml()
    return tuple(child.name for child in reply.error.elements()
                 if child.name != "text")


def isEvent(owner: str, node: str, itemId: str | None = None, kind: str = "item"):
    def match(element):
        if element.name != "message" or element.getAttribute("from") != owner:
            return False
        for event in element.elements(NS_EVENT, "event"):
            for wrapper in event.elements():
                if wrapper.getAttribute("node") != node:
                    continue
                if itemId is None and kind in ("delete", "purge"):
                    return wrapper.name == kind
                return any(child.name == kind and child.getAttribute("id") == itemId
                           for child in wrapper.elements())
        return False
    return match


AVATAR = f"<metadata xmlns='{NS_AVATAR_META}'><info bytes='3' id='abc' type='image/png'/></metadata>"
DEVICES = f"<list xmlns='{NS_DEVICELIST}'><device id='12345'/></list>"


def test_publishNotifiesByCaps(pep):
    """
    A publication reaches the contact's resource whose verified caps list
    NODE+notify and the owner's own such resource, not a resource without
    the +notify nor a stranger.
    """
    alice = pep.online("alice")
    bob = pep.online("bob")
    bobQuiet = pep.online("bob", "quiet", notify=())
    eve = pep.online("eve")
    for client in (alice, bob, bobQuiet, eve):
        client.discard()
    reply = publish(alice, NS_AVATAR_META, AVATAR, "abc")
    assert reply["type"] == "result", reply.toXml()
    assert reply.pubsub.publish.item["id"] == "abc"
    event = bob.expect(isEvent("alice@localhost", NS_AVATAR_META, "abc"))
    assert event["type"] == "headline"
    assert next(event.event.items.item.elements(NS_AVATAR_META, "metadata"))
    alice.expect(isEvent("alice@localhost", NS_AVATAR_META, "abc"))
    bobQuiet.absent(isEvent("alice@localhost", NS_AVATAR_META, "abc"))
    eve.absent(lambda e: e.name == "message")
    assert itemIds(items(bob, "alice@localhost", NS_AVATAR_META)) == ["abc"]
    assert condition(items(eve, "alice@localhost", NS_AVATAR_META)) == ("item-not-found",)


def test_forgedCapsNotTrusted(pep):
    """A ver whose disco#info does not hash to it is believed for that resource only, never cached."""
    alice = pep.online("alice")
    pep.online("bob", ver="Zm9yZ2VkLXZlcnNpb24tc3RyaW5nLQ==")
    assert pep.pep.caps.get("Zm9yZ2VkLXZlcnNpb24tc3RyaW5nLQ==") is None
    bob2 = pep.online("bob", "two", notify=(), ver="Zm9yZ2VkLXZlcnNpb24tc3RyaW5nLQ==", answer=False)
    bob2.discard()
    publish(alice, NS_AVATAR_META, AVATAR, "abc")
    bob2.absent(lambda e: e.name == "message")


def test_verifiedCapsCached(pep):
    """A verified ver is asked once: the next resource announcing it is not asked again."""
    pep.online("bob")
    assert len(pep.pep.caps) == 1
    other = pep.online("bob", "two", answer=False)
    other.absent(lambda e: e.name == "iq" and e.getAttribute("type") == "get")
    alice = pep.online("alice")
    other.discard()
    publish(alice, NS_AVATAR_META, AVATAR, "abc")
    other.expect(isEvent("alice@localhost", NS_AVATAR_META, "abc"))


def test_lastItemOnLoginAndPresence(pep):
    """The last item reaches the owner's new resource and a contact coming online."""
    alice = pep.online("alice")
    publish(alice, NS_AVATAR_META, AVATAR, "old")
    publish(alice, NS_AVATAR_META, AVATAR, "abc")
    alice.close()
    again = pep.online("alice", "two")
    again.expect(isEvent("alice@localhost", NS_AVATAR_META, "abc"))
    again.absent(isEvent("alice@localhost", NS_AVATAR_META, "old"))
    bob = pep.online("bob")
    bob.expect(isEvent("alice@localhost", NS_AVATAR_META, "abc"))
    eve = pep.online("eve")
    eve.absent(lambda e: e.name == "message")


def test_openAccessForStrangers(pep):
    """An OMEMO device list published with access_model open is read by a stranger; a presence one is not."""
    alice = pep.online("alice")
    assert publish(alice, NS_DEVICELIST, DEVICES, options={"access_model": "open"})["type"] == "result"
    publish(alice, "urn:xmpp:nickname", "<nick xmlns='http://jabber.org/protocol/nick'>A</nick>")
    eve = pep.online("eve")
    reply = items(eve, "alice@localhost", NS_DEVICELIST)
    assert itemIds(reply) == ["current"]
    assert next(reply.pubsub.items.item.elements(NS_DEVICELIST, "list")).device["id"] == "12345"
    assert condition(items(eve, "alice@localhost", "urn:xmpp:nickname")) == ("item-not-found",)
    assert condition(publish(eve, NS_DEVICELIST, DEVICES, to="alice@localhost")) == ("forbidden",)


def test_publishOptionsPrecondition(pep):
    """publish-options the node does not meet: conflict, precondition-not-met; after a configure, fine."""
    alice = pep.online("alice")
    assert publish(alice, NS_DEVICELIST, DEVICES)["type"] == "result"
    reply = publish(alice, NS_DEVICELIST, DEVICES, options={"access_model": "open"})
    assert condition(reply) == ("conflict", "precondition-not-met")
    assert next(reply.error.elements(NS_ERRORS, "precondition-not-met"))
    form = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            "<value>http://jabber.org/protocol/pubsub#node_config</value></field>"
            "<field var='pubsub#access_model'><value>open</value></field></x>")
    reply = alice.request(f"<pubsub xmlns='{NS_OWNER}'><configure node='{NS_DEVICELIST}'>{form}</configure>"
                          "</pubsub>", "set")
    assert reply["type"] == "result", reply.toXml()
    assert publish(alice, NS_DEVICELIST, DEVICES, options={"access_model": "open"})["type"] == "result"
    reply = alice.request(f"<pubsub xmlns='{NS_OWNER}'><configure node='{NS_DEVICELIST}'/></pubsub>")
    values = {f["var"]: str(f.value) for f in reply.pubsub.configure.x.elements() if f.name == "field"
              and f.getAttribute("var")}
    assert values["pubsub#access_model"] == "open"
    assert condition(publish(alice, "n", "<x xmlns='y'/>", options={"access_model": "bogus"})) == (
        "not-acceptable", "unsupported-access-model")


def test_maxItemsRetractPurgeDelete(pep):
    """max_items (a number and 'max'), items by id and max_items, retract with notify, purge, delete."""
    alice = pep.online("alice")
    bob = pep.online("bob")
    for n in range(4):
        publish(alice, "urn:xmpp:bookmarks:1", f"<conference xmlns='urn:xmpp:bookmarks:1' name='{n}'/>",
                f"room{n}@muc", options={"max_items": "max", "access_model": "whitelist",
                                         "send_last_published_item": "never"})
    assert itemIds(items(alice, None, "urn:xmpp:bookmarks:1")) == [f"room{n}@muc" for n in (3, 2, 1, 0)]
    assert itemIds(items(alice, None, "urn:xmpp:bookmarks:1", " max_items='2'")) == ["room3@muc", "room2@muc"]
    assert itemIds(items(alice, None, "urn:xmpp:bookmarks:1", "", "<item id='room1@muc'/>")) == ["room1@muc"]
    assert condition(items(bob, "alice@localhost", "urn:xmpp:bookmarks:1")) == ("item-not-found",)
    bob.absent(isEvent("alice@localhost", "urn:xmpp:bookmarks:1", "room0@muc"))
    publish(alice, NS_AVATAR_META, AVATAR, "a1")
    publish(alice, NS_AVATAR_META, AVATAR, "a2")
    assert itemIds(items(alice, None, NS_AVATAR_META)) == ["a2"]  # the default max_items is 1
    bob.discard()
    reply = alice.request(f"<pubsub xmlns='{NS_PUBSUB}'><retract node='{NS_AVATAR_META}' notify='true'>"
                          "<item id='a2'/></retract></pubsub>", "set")
    assert reply["type"] == "result", reply.toXml()
    bob.expect(isEvent("alice@localhost", NS_AVATAR_META, "a2", "retract"))
    reply = alice.request(f"<pubsub xmlns='{NS_OWNER}'><purge node='urn:xmpp:bookmarks:1'/></pubsub>", "set")
    assert reply["type"] == "result"
    assert itemIds(items(alice, None, "urn:xmpp:bookmarks:1")) == []
    reply = alice.request(f"<pubsub xmlns='{NS_OWNER}'><delete node='urn:xmpp:bookmarks:1'/></pubsub>", "set")
    assert reply["type"] == "result"
    assert condition(items(alice, None, "urn:xmpp:bookmarks:1")) == ("item-not-found",)
    stored = result(pep.store.getPep("localhost", "alice"))
    assert [node.node for node in stored] == [NS_AVATAR_META]


def test_limits(servers):
    """Payload size, items kept, nodes per account and bytes per account, each with its error and text."""
    pep = Pep(servers, max_items=3, max_nodes=2, max_payload=200, max_bytes=300)
    pep.accounts("alice")
    alice = pep.online("alice")
    big = f"<x xmlns='y'>{'a' * 200}</x>"
    reply = publish(alice, "n1", big)
    assert condition(reply) == ("not-acceptable", "payload-too-big")
    assert "200 bytes" in str(reply.error.text)
    tooMany = publish(alice, "n1", "<x xmlns='y'/>", options={"max_items": "4"})
    assert condition(tooMany) == ("not-acceptable",)
    for n in range(3):
        assert publish(alice, "n1", f"<x xmlns='y'>{'a' * 60}</x>", f"i{n}",
                       options={"max_items": "max"})["type"] == "result"
    assert publish(alice, "n2", "<x xmlns='y'/>")["type"] == "result"
    reply = publish(alice, "n3", "<x xmlns='y'/>")
    assert condition(reply) == ("resource-constraint",)
    assert "at most 2 PEP nodes" in str(reply.error.text)
    reply = publish(alice, "n2", f"<x xmlns='y'>{'a' * 150}</x>", "big")
    assert condition(reply) == ("resource-constraint",)
    assert "300 bytes" in str(reply.error.text)


def test_accountDeletion(pep):
    """Deleting an account deletes its nodes: a new account of that name starts with none."""
    alice = pep.online("alice")
    publish(alice, NS_DEVICELIST, DEVICES, options={"access_model": "open"})
    result(pep.host.registrar.deleteAccount("alice"))
    assert result(pep.store.getPep("localhost", "alice")) == []
    addAccounts(pep.server, "alice")
    eve = pep.online("eve")
    assert condition(items(eve, "alice@localhost", NS_DEVICELIST)) == ("item-not-found",)


def test_discoAdvertisesPep(pep):
    """The account's bare JID has the pubsub/pep identity and the features clients check."""
    alice = pep.online("alice")
    reply = alice.request(f"<query xmlns='{NS_DISCO_INFO}'/>", "get", "alice@localhost")
    identities = {(i["category"], i["type"]) for i in reply.query.elements(NS_DISCO_INFO, "identity")}
    features = {f["var"] for f in reply.query.elements(NS_DISCO_INFO, "feature")}
    assert ("pubsub", "pep") in identities
    assert {f"{NS_PUBSUB}#publish-options", f"{NS_PUBSUB}#publish", f"{NS_PUBSUB}#access-open"} <= features


PNG = "iVBORw0KGgo="  # base64 of 8 bytes, the PNG signature


def test_vcardPhotoBecomesAvatar(pep):
    """
    XEP-0398: a vCard's PHOTO is published as the PEP avatar (data and
    metadata, open); a vCard get gives it back; the contact with caps hears
    of the metadata; presence without a photo hash gets the avatar's id.
    """
    import base64
    import hashlib
    alice, bob = pep.online("alice"), pep.online("bob")
    bob.discard()
    reply = alice.request(f"<vCard xmlns='{NS_VCARD}'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>"
                          f"<BINVAL>{PNG}</BINVAL></PHOTO></vCard>", "set")
    assert reply["type"] == "result", reply.toXml()
    avatarId = hashlib.sha1(base64.b64decode(PNG)).hexdigest()
    bob.expect(isEvent("alice@localhost", NS_AVATAR_META, avatarId))
    eve = pep.online("eve")
    reply = eve.request(f"<vCard xmlns='{NS_VCARD}'/>", "get", "alice@localhost")
    assert str(reply.vCard.FN) == "Alice"
    assert str(reply.vCard.PHOTO.BINVAL) == PNG and str(reply.vCard.PHOTO.TYPE) == "image/png"
    assert itemIds(items(eve, "alice@localhost", "urn:xmpp:avatar:data")) == [avatarId]
    assert condition(eve.request(f"<vCard xmlns='{NS_VCARD}'><FN>Eve</FN></vCard>", "set",
                                 "alice@localhost")) == ("forbidden",)
    bob.discard()
    alice.send("<presence><show>away</show></presence>")
    presence = bob.expect(isPresence(alice.jid))
    assert str(next(presence.elements("vcard-temp:x:update", "x")).photo) == avatarId


def test_pepAvatarInVcard(pep):
    """An avatar published over PEP (presence access) is the vCard photo for a contact, not a stranger."""
    alice = pep.online("alice")
    publish(alice, "urn:xmpp:avatar:data", f"<data xmlns='urn:xmpp:avatar:data'>{PNG}</data>", "abc")
    publish(alice, NS_AVATAR_META, AVATAR, "abc")
    bob, eve = pep.online("bob"), pep.online("eve")
    reply = bob.request(f"<vCard xmlns='{NS_VCARD}'/>", "get", "alice@localhost")
    assert str(reply.vCard.PHOTO.BINVAL) == PNG
    reply = eve.request(f"<vCard xmlns='{NS_VCARD}'/>", "get", "alice@localhost")
    assert reply["type"] == "result" and reply.vCard.PHOTO is None


def test_privateStorage(pep):
    """XEP-0049: the account's own elements, kept by namespace; no one else's; jabber:* refused."""
    alice, bob = pep.online("alice"), pep.online("bob")
    assert alice.request(f"<query xmlns='{NS_PRIVATE}'><prefs xmlns='x:y'><a>1</a></prefs></query>",
                         "set")["type"] == "result"
    reply = alice.request(f"<query xmlns='{NS_PRIVATE}'><prefs xmlns='x:y'/></query>")
    assert str(reply.query.prefs.a) == "1"
    reply = alice.request(f"<query xmlns='{NS_PRIVATE}'><other xmlns='x:z'/></query>")
    assert reply.query.other is not None and not reply.query.other.children
    assert condition(bob.request(f"<query xmlns='{NS_PRIVATE}'><prefs xmlns='x:y'/></query>", "get",
                                 "alice@localhost")) == ("forbidden",)
    assert condition(alice.request(f"<query xmlns='{NS_PRIVATE}'><x xmlns='jabber:client'/></query>",
                                   "set")) == ("not-acceptable",)


def test_bookmarksBothWays(pep):
    """
    XEP-0411: legacy bookmarks set in private storage are XEP-0402 items
    (a removed room retracted, with notification to the owner's other
    resource), and a XEP-0402 publish is what the legacy get returns.
    """
    alice = pep.online("alice")
    other = pep.online("alice", "other")
    legacy = ("<storage xmlns='storage:bookmarks'>"
              "<conference jid='a@muc.localhost' name='A' autojoin='true'><nick>al</nick></conference>"
              "<conference jid='b@muc.localhost' name='B'/><url name='w' url='https://example.org/'/>"
              "</storage>")
    assert alice.request(f"<query xmlns='{NS_PRIVATE}'>{legacy}</query>", "set")["type"] == "result"
    reply = items(alice, None, "urn:xmpp:bookmarks:1")
    assert sorted(itemIds(reply)) == ["a@muc.localhost", "b@muc.localhost"]
    other.expect(isEvent("alice@localhost", "urn:xmpp:bookmarks:1", "a@muc.localhost"))
    conference = [i for i in reply.pubsub.items.elements(NS_PUBSUB, "item")
                  if i["id"] == "a@muc.localhost"][0].conference
    assert conference["autojoin"] == "true" and str(conference.nick) == "al"
    config = alice.request(f"<pubsub xmlns='{NS_OWNER}'><configure node='urn:xmpp:bookmarks:1'/></pubsub>")
    values = {f["var"]: str(f.value) for f in config.pubsub.configure.x.elements() if f.name == "field"
              and f.getAttribute("var")}
    assert values["pubsub#access_model"] == "whitelist"
    alice.request(f"<query xmlns='{NS_PRIVATE}'><storage xmlns='storage:bookmarks'>"
                  "<conference jid='a@muc.localhost' name='A' autojoin='true'/></storage></query>", "set")
    other.expect(isEvent("alice@localhost", "urn:xmpp:bookmarks:1", "b@muc.localhost", "retract"))
    publish(alice, "urn:xmpp:bookmarks:1", "<conference xmlns='urn:xmpp:bookmarks:1' name='C'/>",
            "c@muc.localhost")
    reply = alice.request(f"<query xmlns='{NS_PRIVATE}'><storage xmlns='storage:bookmarks'/></query>")
    rooms = {c["jid"]: c.getAttribute("name") for c in reply.query.storage.elements()
             if c.name == "conference"}
    assert rooms == {"a@muc.localhost": "A", "c@muc.localhost": "C"}


def test_capsQueryTimesOut(pep):
    """A resource that never answers the caps query is asked again at its next presence, after the timeout."""
    isQuery = lambda e: e.name == "iq" and e.getAttribute("type") == "get"  # noqa: E731
    bob = pep.online("bob", answer=False)
    bob.expect(isQuery, what="caps query")
    bob.send(f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='https://example.org/test'"
             f" ver='{capsHash(discoQuery(NOTIFY))}'/></presence>")
    bob.absent(isQuery, what="a second query while the first waits")
    pep.server.clock.advance(pep.pep.options.caps_timeout + 1)
    bob.send(f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='https://example.org/test'"
             f" ver='{capsHash(discoQuery(NOTIFY))}'/></presence>")
    bob.expect(isQuery, what="caps query after the timeout")


def test_interestNeedsSubscriptionAndPresence(pep):
    """
    A caps presence from someone not subscribed to the owner registers no
    interest (even for an open node); a contact that goes unavailable hears nothing more.
    """
    alice = pep.online("alice")
    publish(alice, NS_DEVICELIST, DEVICES, options={"access_model": "open"})
    eve = pep.online("eve")
    eve.send(f"<presence to='alice@localhost'><c xmlns='{NS_CAPS}' hash='sha-1' node='https://example.org/test'"
             f" ver='{capsHash(discoQuery(NOTIFY))}'/></presence>")
    bob = pep.online("bob")
    bob.expect(isEvent("alice@localhost", NS_DEVICELIST, "current"))
    bob.send("<presence type='unavailable'/>")
    eve.discard()
    bob.discard()
    publish(alice, NS_DEVICELIST, DEVICES, "next")
    eve.absent(lambda e: e.name == "message")
    bob.absent(lambda e: e.name == "message")


def test_badRequests(pep):
    """Each malformed or unsupported request gets its own clear error; the service keeps working."""
    alice = pep.online("alice")
    eve = pep.online("eve")
    reply = eve.request(f"<pubsub xmlns='{NS_PUBSUB}'><subscribe node='{NS_DEVICELIST}' jid='eve@localhost'/>"
                        "</pubsub>", "set", "alice@localhost")
    assert condition(reply) == ("feature-not-implemented", "unsupported")
    assert condition(alice.request(f"<pubsub xmlns='{NS_PUBSUB}'><items node='a'/><items node='b'/></pubsub>")
                     ) == ("bad-request",)
    assert condition(items(alice, None, "a", " max_items='many'")) == ("item-not-found",)
    assert condition(alice.request(f"<pubsub xmlns='{NS_PUBSUB}'><publish node='a'/></pubsub>", "set")) == (
        "bad-request", "item-required")
    assert condition(alice.request(f"<pubsub xmlns='{NS_PUBSUB}'><publish node='a'><item id='1'/></publish>"
                                   "</pubsub>", "set")) == ("bad-request", "payload-required")
    assert condition(alice.request(f"<pubsub xmlns='{NS_PUBSUB}'><publish><item><x xmlns='y'/></item>"
                                   "</publish></pubsub>", "set")) == ("bad-request", "nodeid-required")
    assert condition(alice.request(f"<pubsub xmlns='{NS_PUBSUB}'><retract node='a'><item id='1'/></retract>"
                                   "</pubsub>", "set")) == ("item-not-found",)
    assert publish(alice, "a", "<x xmlns='y'/>")["type"] == "result"
    assert condition(items(alice, None, "a", " max_items='many'")) == ("bad-request",)
    reply = alice.request(f"<pubsub xmlns='{NS_PUBSUB}'><create node='a'/></pubsub>", "set")
    assert condition(reply) == ("conflict",)


def test_storeFaultChangesNothing(pep):
    """A publication the store cannot take is refused (wait) and changes nothing, nor tells anyone."""
    alice, bob = pep.online("alice"), pep.online("bob")
    publish(alice, NS_AVATAR_META, AVATAR, "kept")
    bob.discard()
    pep.store.breakDown()
    reply = publish(alice, NS_AVATAR_META, AVATAR, "lost")
    assert condition(reply) == ("resource-constraint",) and reply.error["type"] == "wait"
    bob.absent(lambda e: e.name == "message")
    pep.store.recover()
    assert itemIds(items(bob, "alice@localhost", NS_AVATAR_META)) == ["kept"]


def test_readBeforeAChangeElsewhereNotKept(pep):
    """
    A read of an account's nodes under way when another node's change is
    told may be older than the change: it is handed to who waits for it,
    not kept, and the next request reads again.
    """
    reads = []

    def getPep(host, username):
        reads.append(defer.Deferred())
        return reads[-1]
    pep.store.getPep = getPep
    first = pep.pep.service("alice")
    pep.pep.changedElsewhere("alice", NS_AVATAR_META, None, None)
    second = pep.pep.service("alice")
    assert len(reads) == 2
    reads[0].callback([])
    assert result(first).nodes == {} and pep.pep.loaded("alice") is None
    reads[1].callback([PepNode(NS_AVATAR_META, "{}", (("abc", AVATAR),))])
    service = result(second)
    assert list(service.nodes) == [NS_AVATAR_META] and pep.pep.loaded("alice") is service
