"""
XEP-0050 ad-hoc commands: the framework and the XEP-0133 online-users command.

End-to-end tests talk to a real server (one for the module, with an admin)
in raw XML and with slixmpp's xep_0050 plugin. The session rules (actions
offered, expiry, ownership) are also driven in memory, with a L{Clock} and
a command written against the public API, the way other modules write them.
"""

from __future__ import annotations

import invitesrv  # noqa: F401 (its Wokkel shim goes before any Wokkel import)

# isort: split
import re
import xml.etree.ElementTree as ET

import pytest
import pytest_twisted
from conftest import RunningServer
from rawxmpp import RawClient
from slix import Client, run
from streamharness import ClientConnection, Servers, addAccount, login
from twisted.internet import defer, task
from twisted.words.xish import domish
from wokkel import data_form

from invitesrv.config import HostOptions
from invitesrv.modules import adhoc
from invitesrv.modules.adhoc import (
    AdHocCommand,
    AdHocModule,
    CommandProvider,
    CommandResult,
    FormCommand,
)

NS = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
ONLINE = "http://jabber.org/protocol/admin#get-online-users-list"
ADMIN_CONFIG = '[hosts.localhost]\nadmins = ["admin@localhost"]\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: admin@localhost is an admin, alice is not."""
    running = RunningServer(tmp_path_factory.mktemp("adhoc"), ADMIN_CONFIG).start()
    running.adduser("admin@localhost", "admin password")
    running.adduser("alice@localhost", "alice password")
    yield running
    running.stop()


def q(tag: str, ns: str = NS) -> str:
    return f"{{{ns}}}{tag}"


def request(client: RawClient, xml: str, iqID: str) -> ET.Element:
    """Send an IQ and parse the reply with the same id."""
    client.send(xml)
    text = client.recvUntil(rf"<iq[^>]*id='{iqID}'.*?</iq>")
    return ET.fromstring(text[text.index("<iq"):])


def command(client: RawClient, iqID: str, node: str, action: str | None = None,
            sessionID: str | None = None, payload: str = "") -> ET.Element:
    attributes = f" node='{node}'"
    if action:
        attributes += f" action='{action}'"
    if sessionID:
        attributes += f" sessionid='{sessionID}'"
    return request(client, f"<iq type='set' id='{iqID}' to='localhost'>"
                           f"<command xmlns='{NS}'{attributes}>{payload}</command></iq>", iqID)


def errorCondition(reply: ET.Element) -> tuple[str, str, list[str]]:
    """(error type, stanza condition, other children's tags) of an error reply."""
    assert reply.get("type") == "error", ET.tostring(reply)
    error = reply.find("error")
    tags = [child.tag for child in error]
    condition = next(t.split("}")[1] for t in tags if t.startswith(f"{{{NS_STANZAS}}}") and not
                     t.endswith("}text"))
    return error.get("type"), condition, tags


def itemNodes(reply: ET.Element) -> list[str]:
    query = reply.find(q("query", "http://jabber.org/protocol/disco#items"))
    return [item.get("node") for item in query]


def test_commandsListedByPermission(server):
    """The commands node lists the admin command to an admin only (raw XML)."""
    items = ("<iq type='get' id='i1' to='localhost'><query xmlns='http://jabber.org/protocol/"
             f"disco#items' node='{NS}'/></iq>")
    with RawClient(server.port) as admin, RawClient(server.port) as alice:
        admin.login("admin", "admin password", "list")
        alice.login("alice", "alice password", "list")
        assert ONLINE in itemNodes(request(admin, items, "i1"))
        assert ONLINE not in itemNodes(request(alice, items, "i1"))


def test_slixmppListsAndRuns(server):
    """slixmpp's xep_0050 sees the command, runs both steps and reads the online users."""
    async def scenario():
        admin = Client("admin@localhost/slix", "admin password", plugins=("xep_0030", "xep_0050"))
        assert await admin.login(server.port)
        listing = await admin.plugin["xep_0050"].get_commands("localhost", timeout=5)
        nodes = [item[1] for item in listing["disco_items"]["items"]]
        assert ONLINE in nodes
        first = await admin.plugin["xep_0050"].send_command("localhost", ONLINE, timeout=5)
        assert first["command"]["status"] == "executing"
        form = first["command"]["form"]
        assert "max_items" in form.get_fields()
        answer = admin.plugin["xep_0004"].make_form("submit")
        answer.add_field(var="max_items", value="none")
        done = await admin.plugin["xep_0050"].send_command(
            "localhost", ONLINE, action="complete", payload=answer,
            sessionid=first["command"]["sessionid"], timeout=5)
        assert done["command"]["status"] == "completed"
        values = done["command"]["form"].get_fields()["onlineuserjids"].get_value()
        assert "admin@localhost" in [str(v) for v in values]
        await admin.logout()
    run(scenario())


def test_executeAndComplete(server):
    """Two steps in raw XML: a form with a session, then a result form listing who is online."""
    with RawClient(server.port) as admin, RawClient(server.port) as alice:
        admin.login("admin", "admin password", "exec")
        alice.login("alice", "alice password", "exec")
        first = command(admin, "e1", ONLINE)
        step = first.find(q("command"))
        assert step.get("status") == "executing"
        sessionID = step.get("sessionid")
        assert sessionID
        actions = step.find(q("actions"))
        assert actions.get("execute") == "complete"
        assert [child.tag for child in actions] == [q("complete")]
        assert step.find(q("x", NS_DATA)).get("type") == "form"
        submit = (f"<x xmlns='{NS_DATA}' type='submit'><field var='max_items'><value>none</value>"
                  "</field></x>")
        done = command(admin, "e2", ONLINE, "complete", sessionID, submit).find(q("command"))
        assert done.get("status") == "completed"
        assert done.get("sessionid") == sessionID
        result = done.find(q("x", NS_DATA))
        assert result.get("type") == "result"
        field = next(f for f in result if f.get("var") == "onlineuserjids")
        assert field.get("label") == "The list of all online users"
        assert {"admin@localhost", "alice@localhost"} <= {v.text for v in field}
        # The session is over: it cannot be continued.
        again = command(admin, "e3", ONLINE, "complete", sessionID, submit)
        assert errorCondition(again)[1] == "bad-request"
        assert q("bad-sessionid") in errorCondition(again)[2]


def test_cancel(server):
    """A canceled session answers status canceled and is gone afterwards."""
    with RawClient(server.port) as admin:
        admin.login("admin", "admin password", "cancel")
        sessionID = command(admin, "c1", ONLINE).find(q("command")).get("sessionid")
        canceled = command(admin, "c2", ONLINE, "cancel", sessionID).find(q("command"))
        assert canceled.get("status") == "canceled"
        assert canceled.get("sessionid") == sessionID
        gone = command(admin, "c3", ONLINE, "complete", sessionID)
        assert errorCondition(gone)[1] == "bad-request"


def test_actionNotOffered(server):
    """An action the step did not offer is a bad-request with bad-action; the session stays."""
    with RawClient(server.port) as admin:
        admin.login("admin", "admin password", "action")
        sessionID = command(admin, "a1", ONLINE).find(q("command")).get("sessionid")
        wrong = command(admin, "a2", ONLINE, "next", sessionID)
        assert errorCondition(wrong)[:2] == ("modify", "bad-request")
        assert q("bad-action") in errorCondition(wrong)[2]
        malformed = command(admin, "a3", ONLINE, "jump", sessionID)
        assert q("malformed-action") in errorCondition(malformed)[2]
        # A plain execute means the offered default (complete); without a form: bad-payload.
        empty = command(admin, "a4", ONLINE, "execute", sessionID)
        assert q("bad-payload") in errorCondition(empty)[2]


def test_forbiddenToNonAdmins(server):
    """A user gets auth/forbidden with a canceled command and an error note, and no disco#info."""
    with RawClient(server.port) as alice:
        alice.login("alice", "alice password", "forbidden")
        reply = command(alice, "f1", ONLINE)
        kind, condition, _ = errorCondition(reply)
        assert (kind, condition) == ("auth", "forbidden")
        canceled = reply.find(q("command"))
        assert canceled.get("status") == "canceled"
        note = canceled.find(q("note"))
        assert note.get("type") == "error" and "permission" in note.text
        info = request(alice, f"<iq type='get' id='f2' to='localhost'><query xmlns='http://jabber.org"
                              f"/protocol/disco#info' node='{ONLINE}'/></iq>", "f2")
        assert errorCondition(info)[:2] == ("auth", "forbidden")
        assert info.find("error").find(q("text", NS_STANZAS)).text == "This item is not available to you"


def test_unknownNode(server):
    """An unknown node is item-not-found, for execution and for disco#info."""
    with RawClient(server.port) as admin:
        admin.login("admin", "admin password", "unknown")
        assert errorCondition(command(admin, "u1", "urn:example:nothing"))[1] == "item-not-found"
        info = request(admin, "<iq type='get' id='u2' to='localhost'><query xmlns='http://jabber.org"
                              "/protocol/disco#info' node='urn:example:nothing'/></iq>", "u2")
        assert errorCondition(info)[1] == "item-not-found"


def test_commandNodeInfo(server):
    """disco#info on a command node an admin may use names it as a command node."""
    with RawClient(server.port) as admin:
        admin.login("admin", "admin password", "info")
        info = request(admin, "<iq type='get' id='n1' to='localhost'><query xmlns='http://jabber.org"
                              f"/protocol/disco#info' node='{ONLINE}'/></iq>", "n1")
        text = ET.tostring(info, encoding="unicode")
        assert re.search(r"category=\"automation\"[^>]*type=\"command-node\"", text)
        assert f'var="{NS}"' in text and f'var="{NS_DATA}"' in text


# -- in memory: the framework's rules, with a clock ---------------------------------


class Steps(AdHocCommand):
    """Three steps (next, then prev or complete), keeping a count in the session."""

    node = "urn:example:steps"
    name = "Steps"

    def __init__(self) -> None:
        self.canceled: list[str] = []

    def execute(self, requester, action, form, session):
        session.data.setdefault("log", []).append(action)
        if session.stage == 0:
            return CommandResult.executing(self._form(1), actions=("next",))
        if action == "next":
            return CommandResult.executing(self._form(2), actions=("prev", "complete"),
                                           default="complete")
        if action == "prev":
            return CommandResult.executing(self._form(1), actions=("next",))
        return CommandResult.completed(note=" ".join(session.data["log"]))

    def cancel(self, requester, session):
        self.canceled.append(session.id)

    @staticmethod
    def _form(page: int) -> data_form.Form:
        return data_form.Form("form", title=f"Page {page}")


class Hello(FormCommand):
    """A two-step command for local users: a name, then a greeting (a Deferred)."""

    node = "urn:example:hello"
    name = "Hello"

    def makeForm(self, requester, session):
        form = data_form.Form("form")
        form.addField(data_form.Field("text-single", "name", required=True, label="Name"))
        form.addField(data_form.Field("boolean", "loud"))
        return form

    def submit(self, requester, form, session):
        greeting = f"Hello {form['name']}" + ("!" if form.get("loud") else "")
        result = data_form.Form("result")
        result.addField(data_form.Field(var="greeting", value=greeting, label="Greeting"))
        return defer.succeed(CommandResult.completed(result))


class ExampleCommands(CommandProvider):
    """A module offering commands through the public API only."""

    def __init__(self) -> None:
        CommandProvider.__init__(self)
        self.steps = Steps()

    def adhocCommands(self):
        return [self.steps, Hello()]


class Memory:
    """
    An in-process server (streamharness: real streams over StringTransports,
    an in-memory store, a Clock) with the ad-hoc framework and a module that
    offers commands through the public API.
    """

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.server = Servers()(self.clock, hosts={"localhost": HostOptions(admins=("admin@localhost",))})
        self.host = self.server.hosts["localhost"]
        self.adhoc = AdHocModule()
        self.host.addModule("adhoc", self.adhoc)
        self.provider = ExampleCommands()
        self.host.addModule("example", self.provider)
        self.host.start()

    def close(self) -> None:
        self.host.stop()
        self.server.store.close()

    @defer.inlineCallbacks
    def connect(self, username: str):
        """Create an account and fire with a connection logged in to it."""
        yield addAccount(self.server, username, f"{username} password")
        connection = ClientConnection(self.server, encrypted=True)
        yield login(connection, username, f"{username} password", "r")
        return connection

    @defer.inlineCallbacks
    def command(self, connection: ClientConnection, node: str, action: str | None = None,
                sessionID: str | None = None, form: data_form.Form | None = None):
        """Send a command request; fire with the reply."""
        element = domish.Element((NS, "command"))
        element["node"] = node
        if action:
            element["action"] = action
        if sessionID:
            element["sessionid"] = sessionID
        if form is not None:
            element.addChild(form.toElement())
        connection.send(f"<iq type='set' id='x' to='localhost'>{element.toXml()}</iq>")
        reply = yield connection.nextNamed("iq")
        return reply


@pytest.fixture
def memory():
    memory = Memory()
    yield memory
    memory.close()


def status(reply: domish.Element) -> str:
    return reply.command["status"]


def stanzaError(reply: domish.Element) -> tuple[str, list[str]]:
    assert reply["type"] == "error", reply.toXml()
    return reply.error.firstChildElement().name, [c.name for c in reply.error.elements()]


@pytest_twisted.inlineCallbacks
def test_stepsFollowOfferedActions(memory):
    """next, prev and complete move through the steps; a plain execute is the default action."""
    alice = yield memory.connect("alice")
    first = yield memory.command(alice, Steps.node)
    assert status(first) == "executing"
    sessionID = first.command["sessionid"]
    assert first.command.actions["execute"] == "next"
    second = yield memory.command(alice, Steps.node, "next", sessionID)
    actions = second.command.actions
    assert [c.name for c in actions.elements()] == ["prev", "complete"]
    assert actions["execute"] == "complete"
    back = yield memory.command(alice, Steps.node, "prev", sessionID)
    assert str(back.command.x.title) == "Page 1"
    yield memory.command(alice, Steps.node, "execute", sessionID)  # next
    done = yield memory.command(alice, Steps.node, "execute", sessionID)  # complete
    assert status(done) == "completed"
    assert str(done.command.note) == "execute next prev next complete"
    assert memory.adhoc.sessions == {}


@pytest_twisted.inlineCallbacks
def test_sessionBelongsToItsRequester(memory):
    """Another user cannot continue (or cancel) somebody's session: bad-sessionid."""
    alice = yield memory.connect("alice")
    bob = yield memory.connect("bob")
    sessionID = (yield memory.command(alice, Steps.node)).command["sessionid"]
    condition, children = stanzaError((yield memory.command(bob, Steps.node, "cancel", sessionID)))
    assert condition == "bad-request" and "bad-sessionid" in children
    assert status((yield memory.command(alice, Steps.node, "next", sessionID))) == "executing"


@pytest_twisted.inlineCallbacks
def test_sessionsExpire(memory):
    """An idle session expires: session-expired, and the command is told to cancel."""
    alice = yield memory.connect("alice")
    sessionID = (yield memory.command(alice, Steps.node)).command["sessionid"]
    memory.clock.advance(adhoc.SESSION_TIMEOUT - 1)
    assert status((yield memory.command(alice, Steps.node, "next", sessionID))) == "executing"
    memory.clock.advance(adhoc.SESSION_TIMEOUT - 1)  # each step restarts the timer
    assert memory.provider.steps.canceled == []
    memory.clock.advance(2)
    assert memory.provider.steps.canceled == [sessionID]
    condition, children = stanzaError((yield memory.command(alice, Steps.node, "complete", sessionID)))
    assert condition == "not-allowed" and "session-expired" in children


@pytest_twisted.inlineCallbacks
def test_sessionsPerRequesterAreBounded(memory):
    """Starting more sessions than allowed cancels the requester's oldest idle one."""
    alice = yield memory.connect("alice")
    first = (yield memory.command(alice, Steps.node)).command["sessionid"]
    for _ in range(adhoc.MAX_SESSIONS_PER_REQUESTER):
        yield memory.command(alice, Steps.node)
    assert len(memory.adhoc.sessions) == adhoc.MAX_SESSIONS_PER_REQUESTER
    assert memory.provider.steps.canceled == [first]


@pytest_twisted.inlineCallbacks
def test_formCommandChecksTheSubmission(memory):
    """A FormCommand gets a typed form; a missing required field is bad-payload."""
    alice = yield memory.connect("alice")
    sessionID = (yield memory.command(alice, Hello.node)).command["sessionid"]
    empty = data_form.Form("submit")
    condition, children = stanzaError((yield memory.command(alice, Hello.node, "complete",
                                                            sessionID, empty)))
    assert condition == "bad-request" and "bad-payload" in children
    assert sessionID not in memory.adhoc.sessions  # a failed step ends the session
    sessionID = (yield memory.command(alice, Hello.node)).command["sessionid"]
    answer = data_form.Form("submit")
    answer.addField(data_form.Field(None, "name", value="Alice"))
    answer.addField(data_form.Field(None, "loud", value="1"))
    done = yield memory.command(alice, Hello.node, "complete", sessionID, answer)
    assert status(done) == "completed"
    field = done.command.x.field
    assert (field["label"], str(field.value)) == ("Greeting", "Hello Alice!")


@pytest_twisted.inlineCallbacks
def test_providersComeAndGo(memory):
    """Commands are collected at each request: a provider that stops takes them away."""
    alice = yield memory.connect("alice")
    assert status((yield memory.command(alice, Steps.node))) == "executing"
    memory.provider.connectionLost(None)
    condition, _ = stanzaError((yield memory.command(alice, Steps.node)))
    assert condition == "item-not-found"
