"""
Multi-user chat (L{invitesrv.components.muc}) in process, on a L{task.Clock}
with the in-memory store: the component on groups.localhost, joins and
their status codes, messages, history, nick changes, affiliations and roles,
configuration, persistence across a restart, the room archive and its
moderation, self-ping, disco and the limits. End-to-end tests with client
libraries are in L{test_muc_e2e}.
"""

from __future__ import annotations

import invitesrv  # noqa: F401 (its Wokkel shim goes before any Wokkel import)

# isort: split
from dataclasses import replace

import pytest
from test_components import Session as ComponentsSession
from twisted.internet import task
from twisted.words.xish import domish
from wokkel import disco

from invitesrv.config import ComponentOptions, Config
from invitesrv.modules.base import ModuleError
from invitesrv.service import HostsService, InviteServer
from invitesrv.store.memory import MemoryStore

NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
ROOM = "room@groups.localhost"


class Session(ComponentsSession):
    """A bound client resource standing in for a stream, with the directed presence it sent."""

    def __init__(self, full: str):
        ComponentsSession.__init__(self, full)
        self.directed: set[str] = set()

    def take(self) -> list[domish.Element]:
        received, self.received = self.received, []
        return received


class World:
    """A server with the muc module over one store; L{restart} builds a new one on the same store."""

    def __init__(self, options: str = "", store=None):
        self.store = store or MemoryStore()
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        tables = {}
        if options:
            tables["muc"] = dict(item.split("=") for item in options.split(","))
            tables["muc"] = {k: int(v) if v.isdigit() else v for k, v in tables["muc"].items()}
        self.server = InviteServer(Config(modules=("disco", "muc"), module_options=tables),
                                   store=self.store, reactor=self.clock)
        self.hosts = HostsService(self.server)
        self.hosts.startService()
        self.sessions: dict[str, Session] = {}

    @property
    def service(self):
        return self.server.hosts["localhost"].modules["muc"].service

    def session(self, full: str) -> Session:
        if full not in self.sessions:
            self.sessions[full] = Session(full)
            self.server.router.bind(self.sessions[full])
        return self.sessions[full]

    def send(self, xml: str) -> None:
        stanzas = []
        parser = domish.elementStream()
        parser.DocumentStartEvent = lambda root: None
        parser.ElementEvent = stanzas.append
        parser.parse(f"<stream xmlns='{NS_CLIENT}'>{xml}".encode())
        self.server.router.route(stanzas[0])

    def join(self, full: str, nick: str, room: str = ROOM, extra: str = "") -> list[domish.Element]:
        session = self.session(full)
        session.take()
        self.send(f"<presence from='{full}' to='{room}/{nick}'><x xmlns='{NS_MUC}'>{extra}</x></presence>")
        return session.take()

    def create(self, full: str, nick: str, room: str = ROOM, **fields) -> None:
        """Join a new room and submit its configuration form (C{fields}: var suffix -> value)."""
        self.join(full, nick, room)
        values = "".join(f"<field var='muc#roomconfig_{var}'><value>{value}</value></field>"
                         for var, value in fields.items())
        self.send(f"<iq type='set' id='c1' from='{full}' to='{room}'>"
                  f"<query xmlns='{NS_MUC}#owner'><x xmlns='jabber:x:data' type='submit'>"
                  f"<field var='FORM_TYPE'><value>{NS_MUC}#roomconfig</value></field>{values}"
                  "</x></query></iq>")
        assert [s["type"] for s in self.session(full).take() if s.name == "iq"] == ["result"]

    def restart(self) -> World:
        self.stop()
        return World(store=self.store)

    def stop(self) -> None:
        if self.hosts.running:
            self.hosts.stopService()


@pytest.fixture
def world():
    world = World()
    yield world
    world.stop()


def say(world, full: str, inner: str, to: str = ROOM) -> None:
    """A groupchat message from C{full} with C{inner} as its content."""
    world.send(f"<message type='groupchat' from='{full}' to='{to}'>{inner}</message>")


def ask(world, full: str, to: str, inner: str, kind: str = "get") -> None:
    world.send(f"<iq type='{kind}' id='q' from='{full}' to='{to}'>{inner}</iq>")


def codes(presence) -> set[int]:
    x = next(presence.elements(NS_USER, "x"), None)
    return {int(s["code"]) for s in x.elements(NS_USER, "status")} if x is not None else set()


def item(presence) -> domish.Element:
    return next(next(presence.elements(NS_USER, "x")).elements(NS_USER, "item"))


def condition(stanza) -> str | None:
    if stanza.getAttribute("type") != "error":
        return None
    return next(c.name for c in stanza.error.elements() if c.uri == NS_STANZAS)


def bodies(stanzas) -> list[str]:
    return [str(s.body) for s in stanzas if s.name == "message" and s.body is not None]


def test_createReservedRoomIsLockedUntilConfigured(world):
    """A join of a new room makes the joiner its owner (201); others cannot enter before it is configured."""
    received = world.join("alice@localhost/a", "Alice")
    own = [s for s in received if s.name == "presence"][-1]
    assert own["from"] == f"{ROOM}/Alice"
    assert {110, 201} <= codes(own)
    assert (item(own)["affiliation"], item(own)["role"]) == ("owner", "moderator")
    refused = world.join("bob@localhost/b", "Bob")
    assert [condition(s) for s in refused] == ["item-not-found"]
    world.create("alice@localhost/a", "Alice", roomname="Tea")
    received = world.join("bob@localhost/b", "Bob")
    presences = [s for s in received if s.name == "presence"]
    assert [p["from"] for p in presences] == [f"{ROOM}/Alice", f"{ROOM}/Bob"]
    assert codes(presences[-1]) == {110}
    assert "jid" not in item(presences[0]).attributes  # semi-anonymous by default
    subject = received[-1]
    assert subject.name == "message" and subject.subject is not None


def test_instantRoomWithoutMucElement(world):
    """A join without the MUC element (groupchat 1.0) makes an instant room at once."""
    alice = world.session("alice@localhost/a")
    world.send(f"<presence from='alice@localhost/a' to='{ROOM}/Alice'/>")
    assert 201 not in codes([s for s in alice.take() if s.name == "presence"][-1])
    assert [s.name for s in world.join("bob@localhost/b", "Bob")][-1] == "message"


def test_messagesReachEveryOccupantWithStanzaAndOccupantIds(world):
    """A groupchat message goes to every session, from the sender's room JID, stamped by the room."""
    world.create("alice@localhost/a", "Alice")
    world.join("bob@localhost/b", "Bob")
    world.session("alice@localhost/a").take()
    world.send(f"<message type='groupchat' id='m1' from='bob@localhost/b' to='{ROOM}'>"
               "<body>hello</body><stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='x'/></message>")
    for full in ("alice@localhost/a", "bob@localhost/b"):
        (message,) = world.session(full).take()
        assert (message["from"], message["to"], str(message.body)) == (f"{ROOM}/Bob", full, "hello")
        ids = [s["id"] for s in message.elements("urn:xmpp:sid:0", "stanza-id")]
        assert len(ids) == 1 and ids != ["forged"]
        assert next(message.elements("urn:xmpp:occupant-id:0", "occupant-id"))["id"]


def test_nonOccupantAndVisitorCannotSpeak(world):
    """A message from outside the room is refused; in a moderated room a visitor has no voice."""
    world.create("alice@localhost/a", "Alice", moderatedroom=1)
    carol = world.session("carol@localhost/c")
    say(world, "carol@localhost/c", "<body>x</body>")
    assert condition(carol.take()[0]) == "not-acceptable"
    joined = world.join("carol@localhost/c", "Carol")
    assert item([s for s in joined if s.name == "presence"][-1])["role"] == "visitor"
    say(world, "carol@localhost/c", "<body>x</body>")
    assert condition(carol.take()[0]) == "forbidden"


def test_historyOnJoinHonoursMaxstanzas(world):
    """Newcomers get the recent messages with delay stamps, as many as they ask for."""
    world.create("alice@localhost/a", "Alice")
    for n in range(5):
        say(world, "alice@localhost/a", f"<body>m{n}</body>")
    received = world.join("bob@localhost/b", "Bob")
    assert bodies(received) == ["m0", "m1", "m2", "m3", "m4"]
    assert all(next(s.elements("urn:xmpp:delay", "delay"), None) is not None
               for s in received if s.body is not None)
    received = world.join("carol@localhost/c", "Carol", extra="<history maxstanzas='2'/>")
    assert bodies(received) == ["m3", "m4"]
    received = world.join("dave@localhost/d", "Dave", extra="<history maxchars='0'/>")
    assert bodies(received) == []


def test_nickConflictAndChange(world):
    """A taken nick is a conflict; a change shows 303 with the new nick, then the new presence."""
    world.create("alice@localhost/a", "Alice")
    world.join("bob@localhost/b", "Bob")
    refused = world.join("carol@localhost/c", "Bob")
    assert condition(refused[0]) == "conflict"
    world.session("alice@localhost/a").take()
    world.send(f"<presence from='bob@localhost/b' to='{ROOM}/Robert'/>")
    gone, back = world.session("alice@localhost/a").take()
    assert gone["type"] == "unavailable" and codes(gone) == {303}
    assert item(gone)["nick"] == "Robert" and back["from"] == f"{ROOM}/Robert"


def test_multiSessionNick(world):
    """The same user from two devices under one nick: one occupant, messages to both sessions."""
    world.create("alice@localhost/a", "Alice")
    world.join("bob@localhost/phone", "Bob")
    world.session("alice@localhost/a").take()
    world.join("bob@localhost/laptop", "Bob")
    assert world.session("alice@localhost/a").take() == []  # nobody new arrived
    say(world, "alice@localhost/a", "<body>hi</body>")
    assert bodies(world.session("bob@localhost/phone").take()) == ["hi"]
    assert bodies(world.session("bob@localhost/laptop").take()) == ["hi"]
    world.send(f"<presence type='unavailable' from='bob@localhost/phone' to='{ROOM}/Bob'/>")
    assert world.service.room("room").occupants["Bob"].sessions.keys() == {"bob@localhost/laptop"}


def test_privateMessages(world):
    """A message to room/nick reaches that occupant only, from the sender's room JID."""
    world.create("alice@localhost/a", "Alice")
    world.join("bob@localhost/b", "Bob")
    world.send(f"<message type='chat' from='alice@localhost/a' to='{ROOM}/Bob'><body>psst</body></message>")
    (message,) = world.session("bob@localhost/b").take()
    assert (message["from"], str(message.body)) == (f"{ROOM}/Alice", "psst")
    world.send(f"<message type='chat' from='alice@localhost/a' to='{ROOM}/Nobody'><body>x</body></message>")
    assert condition(world.session("alice@localhost/a").take()[-1]) == "item-not-found"


def test_kickAndBan(world):
    """A moderator kicks (307) and an owner bans (301); the banned cannot come back."""
    world.create("alice@localhost/a", "Alice")
    world.join("bob@localhost/b", "Bob")
    world.send(f"<iq type='set' id='k' from='alice@localhost/a' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#admin'><item nick='Bob' role='none'><reason>out</reason></item>"
               "</query></iq>")
    kicked = world.session("bob@localhost/b").take()
    assert kicked[0]["type"] == "unavailable" and codes(kicked[0]) == {307, 110}
    world.join("bob@localhost/b", "Bob")
    world.send(f"<iq type='set' id='b' from='alice@localhost/a' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#admin'><item jid='bob@localhost' affiliation='outcast'/>"
               "</query></iq>")
    assert codes(world.session("bob@localhost/b").take()[0]) == {301, 110}
    assert condition(world.join("bob@localhost/b", "Bob")[0]) == "forbidden"
    world.send(f"<iq type='get' id='l' from='alice@localhost/a' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#admin'><item affiliation='outcast'/></query></iq>")
    (result,) = [s for s in world.session("alice@localhost/a").take() if s.name == "iq" and s["id"] == "l"]
    assert [i["jid"] for i in result.query.elements()] == ["bob@localhost"]


def test_participantsCannotKickOrChangeAffiliations(world):
    """Without the right role or affiliation, admin requests are forbidden; the last owner stays."""
    world.create("alice@localhost/a", "Alice")
    world.join("bob@localhost/b", "Bob")
    bob = world.session("bob@localhost/b")
    world.send(f"<iq type='set' id='k' from='bob@localhost/b' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#admin'><item nick='Alice' role='none'/></query></iq>")
    assert condition(bob.take()[-1]) == "forbidden"
    world.send(f"<iq type='set' id='k' from='bob@localhost/b' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#admin'><item jid='bob@localhost' affiliation='owner'/></query></iq>")
    assert condition(bob.take()[-1]) == "forbidden"
    world.send(f"<iq type='set' id='o' from='alice@localhost/a' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#admin'><item jid='alice@localhost' affiliation='member'/>"
               "</query></iq>")
    assert condition(world.session("alice@localhost/a").take()[-1]) == "conflict"


def test_membersOnlyRoom(world):
    """
    Non-members get registration-required; a member added by an admin may
    join and see the owners and members, not the outcasts.
    """
    world.create("alice@localhost/a", "Alice", membersonly=1)
    assert condition(world.join("bob@localhost/b", "Bob")[0]) == "registration-required"
    world.send(f"<iq type='set' id='m' from='alice@localhost/a' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#admin'><item jid='bob@localhost' affiliation='member'/></query></iq>")
    joined = world.join("bob@localhost/b", "Bob")
    assert item([s for s in joined if s.name == "presence"][-1])["affiliation"] == "member"
    for wanted, listed in (("owner", ["alice@localhost"]), ("member", ["bob@localhost"])):
        ask(world, "bob@localhost/b", ROOM,
            f"<query xmlns='{NS_MUC}#admin'><item affiliation='{wanted}'/></query>")
        answer = world.session("bob@localhost/b").take()[-1]
        assert [i["jid"] for i in answer.query.elements()] == listed  # a member sees who belongs
    ask(world, "bob@localhost/b", ROOM,
        f"<query xmlns='{NS_MUC}#admin'><item affiliation='outcast'/></query>")
    assert condition(world.session("bob@localhost/b").take()[-1]) == "forbidden"


def test_passwordProtectedRoom(world):
    world.create("alice@localhost/a", "Alice", passwordprotectedroom=1, roomsecret="s3cret")
    assert condition(world.join("bob@localhost/b", "Bob")[0]) == "not-authorized"
    assert condition(world.join("bob@localhost/b", "Bob", extra="<password>nope</password>")[0]) \
        == "not-authorized"
    joined = world.join("bob@localhost/b", "Bob", extra="<password>s3cret</password>")
    assert joined[-1].subject is not None


def test_subjectChange(world):
    """Only moderators change the subject, unless the room lets occupants; newcomers get it."""
    world.create("alice@localhost/a", "Alice")
    world.join("bob@localhost/b", "Bob")
    say(world, "bob@localhost/b", "<subject>mine</subject>")
    assert condition(world.session("bob@localhost/b").take()[-1]) == "forbidden"
    say(world, "alice@localhost/a", "<subject>Tea</subject>")
    received = world.join("carol@localhost/c", "Carol")
    assert (str(received[-1].subject), received[-1]["from"]) == ("Tea", f"{ROOM}/Alice")


def test_mediatedInviteAddsMember(world):
    """An owner's invite to a members-only room reaches the invitee and makes them a member."""
    world.create("alice@localhost/a", "Alice", membersonly=1)
    world.session("bob@localhost/b")
    world.send(f"<message from='alice@localhost/a' to='{ROOM}'><x xmlns='{NS_USER}'>"
               "<invite to='bob@localhost'><reason>tea?</reason></invite></x></message>")
    (invite,) = world.session("bob@localhost/b").take()
    x = next(invite.elements(NS_USER, "x"))
    assert invite["from"] == ROOM and x.invite["from"] == "alice@localhost"
    assert str(x.invite.reason) == "tea?"
    assert world.join("bob@localhost/b", "Bob")[-1].subject is not None


def test_whoisAnyoneShowsJIDs(world):
    """In a non-anonymous room everybody sees real JIDs, and the joiner gets 100."""
    world.create("alice@localhost/a", "Alice", whois="anyone")
    joined = [s for s in world.join("bob@localhost/b", "Bob") if s.name == "presence"]
    assert item(joined[0])["jid"] == "alice@localhost/a"
    assert codes(joined[-1]) == {100, 110}


def test_configurationChangeAnnounced(world):
    """A new configuration is announced with 104 (and 172 when real JIDs become visible)."""
    world.create("alice@localhost/a", "Alice")
    world.join("bob@localhost/b", "Bob")
    world.send(f"<iq type='set' id='c' from='alice@localhost/a' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#owner'><x xmlns='jabber:x:data' type='submit'>"
               "<field var='muc#roomconfig_whois'><value>anyone</value></field></x></query></iq>")
    (message,) = world.session("bob@localhost/b").take()
    assert codes(message) == {104, 172}
    ask(world, "bob@localhost/b", f"{ROOM}",
        f"<query xmlns='{NS_MUC}#owner'/>")
    assert condition(world.session("bob@localhost/b").take()[-1]) == "forbidden"


def test_destroyWithAlternateVenue(world):
    world.create("alice@localhost/a", "Alice", persistentroom=1)
    world.join("bob@localhost/b", "Bob")
    world.send(f"<iq type='set' id='d' from='alice@localhost/a' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#owner'><destroy jid='new@groups.localhost'><reason>moved</reason>"
               "</destroy></query></iq>")
    (gone,) = world.session("bob@localhost/b").take()
    destroy = next(gone.elements(NS_USER, "x")).destroy
    assert gone["type"] == "unavailable" and destroy["jid"] == "new@groups.localhost"
    assert world.service.room("room") is None
    assert world.store.listRooms("groups.localhost").result == []


def test_temporaryRoomGoesWithLastOccupant(world):
    world.create("alice@localhost/a", "Alice")
    world.send(f"<presence type='unavailable' from='alice@localhost/a' to='{ROOM}/Alice'/>")
    assert world.service.room("room") is None


def test_persistentRoomSurvivesRestart(world):
    """Configuration, affiliations, subject and history of a persistent room come back after a restart."""
    world.create("alice@localhost/a", "Alice", persistentroom=1, membersonly=1, roomname="Club")
    world.send(f"<iq type='set' id='m' from='alice@localhost/a' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#admin'><item jid='bob@localhost' affiliation='member'/></query></iq>")
    say(world, "alice@localhost/a", "<subject>Rules</subject>")
    say(world, "alice@localhost/a", "<body>kept</body>")
    world.send(f"<presence type='unavailable' from='alice@localhost/a' to='{ROOM}/Alice'/>")
    assert world.service.room("room") is not None
    world = world.restart()
    try:
        room = world.service.room("room")
        assert (room.config.name, room.config.membersOnly) == ("Club", True)
        assert room.affiliations == {"alice@localhost": "owner", "bob@localhost": "member"}
        assert condition(world.join("carol@localhost/c", "Carol")[0]) == "registration-required"
        received = world.join("bob@localhost/b", "Bob")
        assert bodies(received) == ["kept"]
        assert str(received[-1].subject) == "Rules"
    finally:
        world.stop()


def archiveQuery(world, full: str, inner: str = "", queryId: str = "q") -> tuple[list, domish.Element]:
    world.session(full).take()
    world.send(f"<iq type='set' id='mam' from='{full}' to='{ROOM}'>"
               f"<query xmlns='urn:xmpp:mam:2' queryid='{queryId}'>{inner}</query></iq>")
    received = world.session(full).take()
    return [s for s in received if s.name == "message"], received[-1]


def test_roomArchiveWithPaging(world):
    """
    A persistent room's archive answers MAM queries page by page (RSM),
    with before-id; chat states are not archived.
    """
    world.create("alice@localhost/a", "Alice", persistentroom=1)
    for n in range(5):
        say(world, "alice@localhost/a", f"<body>m{n}</body>")
    say(world, "alice@localhost/a", "<active xmlns='http://jabber.org/protocol/chatstates'/>")
    messages, end = archiveQuery(world, "alice@localhost/a",
                                 "<set xmlns='http://jabber.org/protocol/rsm'><max>2</max></set>")
    texts = [str(m.result.forwarded.message.body) for m in messages]
    assert texts == ["m0", "m1"] and end["type"] == "result"
    assert end.fin.getAttribute("complete") is None
    last = str(end.fin.set.last)
    messages, end = archiveQuery(world, "alice@localhost/a",
                                 f"<set xmlns='http://jabber.org/protocol/rsm'><after>{last}</after></set>")
    assert [str(m.result.forwarded.message.body) for m in messages] == ["m2", "m3", "m4"]
    assert end.fin["complete"] == "true"
    messages, end = archiveQuery(world, "alice@localhost/a",
                                 "<set xmlns='http://jabber.org/protocol/rsm'><max>1</max><before/></set>")
    assert [str(m.result.forwarded.message.body) for m in messages] == ["m4"]
    fourth = messages[0].result["id"]
    messages, _ = archiveQuery(world, "alice@localhost/a",
                               "<x xmlns='jabber:x:data' type='submit'>"
                               "<field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>"
                               f"<field var='before-id'><value>{fourth}</value></field></x>")
    assert len(messages) == 4
    _, end = archiveQuery(world, "alice@localhost/a",
                          "<set xmlns='http://jabber.org/protocol/rsm'><after>nope</after></set>")
    assert condition(end) == "item-not-found"


def test_moderatorRetractsMessage(world):
    """XEP-0425: the retraction goes to everyone, and the archive keeps only a tombstone."""
    world.create("alice@localhost/a", "Alice", persistentroom=1)
    world.join("bob@localhost/b", "Bob")
    world.session("alice@localhost/a").take()
    say(world, "bob@localhost/b", "<body>oops</body>")
    (message,) = world.session("alice@localhost/a").take()
    sid = next(message.elements("urn:xmpp:sid:0", "stanza-id"))["id"]
    world.send(f"<iq type='set' id='r' from='bob@localhost/b' to='{ROOM}'>"
               f"<moderate xmlns='urn:xmpp:message-moderate:1' id='{sid}'>"
               "<retract xmlns='urn:xmpp:message-retract:1'/></moderate></iq>")
    assert condition(world.session("bob@localhost/b").take()[-1]) == "forbidden"
    world.send(f"<iq type='set' id='r' from='alice@localhost/a' to='{ROOM}'>"
               f"<moderate xmlns='urn:xmpp:message-moderate:1' id='{sid}'>"
               "<retract xmlns='urn:xmpp:message-retract:1'/><reason>spam</reason></moderate></iq>")
    retraction = world.session("bob@localhost/b").take()[0]
    assert next(retraction.elements("urn:xmpp:message-retract:1", "retract"))["id"] == sid
    messages, _ = archiveQuery(world, "alice@localhost/a")
    (archived,) = [m.result.forwarded.message for m in messages]
    assert archived.body is None
    assert next(archived.elements("urn:xmpp:message-retract:1", "retracted"), None) is not None
    assert bodies(world.join("carol@localhost/c", "Carol")) == []


def test_selfPing(world):
    """XEP-0410: a joined session's ping to its nick succeeds; a session that is not joined is told."""
    world.create("alice@localhost/a", "Alice")
    world.session("alice@localhost/other")
    ask(world, "alice@localhost/a", f"{ROOM}/Alice",
        "<ping xmlns='urn:xmpp:ping'/>")
    assert world.session("alice@localhost/a").take()[-1]["type"] == "result"
    ask(world, "alice@localhost/other", f"{ROOM}/Alice",
        "<ping xmlns='urn:xmpp:ping'/>")
    assert condition(world.session("alice@localhost/other").take()[-1]) == "not-acceptable"


def test_requestsToOccupantsAreRelayed(world):
    """
    A request to another occupant goes to it from the sender's room JID (a
    vCard to its bare JID), and the answer comes back from the addressee's.
    """
    world.create("alice@localhost/a", "Alice")
    world.join("bob@localhost/b", "Bob")
    alice, bob = world.session("alice@localhost/a"), world.session("bob@localhost/b")
    alice.take()
    world.send(f"<iq type='get' id='v1' from='alice@localhost/a' to='{ROOM}/Bob'>"
               "<query xmlns='jabber:iq:version'/></iq>")
    (relayed,) = bob.take()
    assert (relayed["from"], relayed["to"]) == (f"{ROOM}/Alice", "bob@localhost/b")
    world.send(f"<iq type='result' id='{relayed['id']}' from='bob@localhost/b' to='{ROOM}/Alice'>"
               "<query xmlns='jabber:iq:version'><name>x</name></query></iq>")
    (answer,) = alice.take()
    assert (answer["type"], answer["id"], answer["from"]) == ("result", "v1", f"{ROOM}/Bob")
    world.send(f"<iq type='get' id='v2' from='alice@localhost/a' to='{ROOM}/Bob'>"
               "<vCard xmlns='vcard-temp'/></iq>")  # to bob@localhost: nobody answers vCards here
    (answer,) = alice.take()
    assert (condition(answer), answer["id"], answer["from"]) == ("service-unavailable", "v2",
                                                                 f"{ROOM}/Bob")
    assert world.service.relayed == {}


def test_discoOfServiceAndRoom(world):
    """The host lists the service; the service lists public rooms; a room describes itself."""
    alice = world.session("alice@localhost/a")
    world.session("bob@localhost/b")
    ask(world, "alice@localhost/a", "localhost",
        f"<query xmlns='{disco.NS_DISCO_ITEMS}'/>")
    assert [i["jid"] for i in alice.take()[-1].query.elements()] == ["groups.localhost"]
    ask(world, "alice@localhost/a", "groups.localhost",
        f"<query xmlns='{disco.NS_DISCO_INFO}'/>")
    info = disco.DiscoInfo.fromElement(alice.take()[-1].query)
    assert dict(info.identities) == {("conference", "text"): "Group chats"}
    world.create("alice@localhost/a", "Alice", roomname="Tea", persistentroom=1)
    world.create("alice@localhost/a", "Alice", room="hidden@groups.localhost", publicroom=0)
    ask(world, "alice@localhost/a", "groups.localhost",
        f"<query xmlns='{disco.NS_DISCO_ITEMS}'/>")
    assert [(i["jid"], i["name"]) for i in alice.take()[-1].query.elements()] == [(ROOM, "Tea")]
    ask(world, "bob@localhost/b", f"{ROOM}",
        f"<query xmlns='{disco.NS_DISCO_INFO}'/>")
    info = disco.DiscoInfo.fromElement(world.session("bob@localhost/b").take()[-1].query)
    assert {"muc_persistent", "muc_public", "muc_semianonymous", "urn:xmpp:mam:2"} <= set(info.features)
    assert info.extensions["http://jabber.org/protocol/muc#roominfo"]
    ask(world, "bob@localhost/b", "none@groups.localhost",
        f"<query xmlns='{disco.NS_DISCO_INFO}'/>")
    assert condition(world.session("bob@localhost/b").take()[-1]) == "item-not-found"


def test_limits():
    """Occupants per room, message rate, message size and rooms per user are refused with clear errors."""
    world = World("max_occupants=2,message_rate=1,message_burst=2,max_message_size=300,rooms_per_user=1")
    try:
        world.create("alice@localhost/a", "Alice")
        world.join("bob@localhost/b", "Bob")
        full = world.join("carol@localhost/c", "Carol")
        assert condition(full[0]) == "service-unavailable"
        assert "full" in str(full[0].error.text)
        for n in range(3):
            say(world, "bob@localhost/b", f"<body>{n}</body>")
        refusals = [condition(s) for s in world.session("bob@localhost/b").take()]
        assert refusals == [None, None, "resource-constraint"]
        world.clock.advance(1)
        say(world, "bob@localhost/b", f"<body>{'x' * 400}</body>")
        assert condition(world.session("bob@localhost/b").take()[-1]) == "not-acceptable"
        refused = world.join("alice@localhost/a", "Alice", room="second@groups.localhost")
        assert condition(refused[0]) == "policy-violation"
        remote = world.join("eve@remote.example/e", "Eve", room="third@groups.localhost")
        assert world.server.router.sessions  # the remote user's error goes to the default route
        assert remote == []
    finally:
        world.stop()


def test_limitsFollowTheOptionsOfTheHostModule(world):
    """The service reads the host module's options at each use: a reload's new ones apply at once."""
    module = world.server.hosts["localhost"].modules["muc"]
    world.create("alice@localhost/a", "Alice")
    module.options = replace(module.options, max_occupants=1)
    assert condition(world.join("bob@localhost/b", "Bob")[0]) == "service-unavailable"


def test_deletedAccountLosesItsAffiliations(world):
    """Whoever registers a deleted account's name later inherits none of its rooms."""
    from invitesrv.store.interfaces import NewAccount
    world.store.createAccount(NewAccount("localhost", "bob", ()))
    world.create("alice@localhost/a", "Alice", persistentroom=1)
    world.send(f"<iq type='set' id='o' from='alice@localhost/a' to='{ROOM}'>"
               f"<query xmlns='{NS_MUC}#admin'><item jid='bob@localhost' affiliation='owner'/>"
               "</query></iq>")
    assert world.service.room("room").affiliation("bob@localhost") == "owner"
    world.server.hosts["localhost"].registrar.deleteAccount("bob")
    assert world.service.room("room").affiliation("bob@localhost") == "none"
    (stored,) = world.store.listRooms("groups.localhost").result
    assert "bob@localhost" not in stored.affiliations


def test_componentOfTheSameNameStopsStartUp():
    """A configured component on groups.HOST and the group chats cannot both have the domain."""
    config = Config(modules=("disco", "muc"), components={
        "localhost": {"groups.localhost": ComponentOptions(modules=("ping",))}})
    server = InviteServer(config, store=MemoryStore(), reactor=task.Clock())
    with pytest.raises(ModuleError, match="groups.localhost is served twice"):
        HostsService(server).startService()


def test_contactInviteBringsIntoTheInvitersRoom(world):
    """A contact invite naming a room its inviter owns: the redeemer becomes a member and is invited."""
    from invitesrv.invites import InviteError, InviteManager
    from invitesrv.store.interfaces import NewAccount
    host = world.server.hosts["localhost"]
    for name in ("alice", "bob"):
        world.store.createAccount(NewAccount("localhost", name, ()))
    world.create("alice@localhost/a", "Alice", persistentroom=1, membersonly=1)
    manager = InviteManager(host)
    refused = []
    manager.createContact("bob", room=ROOM).addErrback(refused.append)
    assert refused[0].check(InviteError)  # bob owns no such room
    invite = manager.createContact("alice", room=ROOM).result.invite
    assert invite.room == ROOM
    carol = world.session("carol@localhost/c")
    host.hooks.fire("invite-used", invite, "carol@localhost", "contact")
    (message,) = carol.take()
    assert message["from"] == ROOM
    assert next(message.elements(NS_USER, "x")).invite["from"] == "alice@localhost"
    assert world.join("carol@localhost/c", "Carol")[-1].subject is not None
