"""
The module platform: what a L{HostModule} declares is wired by its host and
unwired at stop; dependencies and option tables are checked at load with
errors that name what is wrong; the stream extension points (nonzas,
output wrappers, stream death, session take-over, slots) carry small test
modules exactly as stream management, CSI and SASL2 will use them; and
delivery asks the resources service, not the presence module.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from streamharness import NS_SASL, ClientConnection, addAccount, login
from twisted.python import failure
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish
from wokkel import disco

from invitesrv.config import ConfigError, parseConfig
from invitesrv.host import ModuleError, moduleOptions
from invitesrv.modules.base import HostModule
from invitesrv.services.slots import Slot

NS_ECHO = "urn:example:echo"
NS_TEST = "urn:example:test"


class EchoModule(HostModule):
    """A nonza handler: echoes C{<echo/>} back on the stream, before or after login."""

    name = "echo"
    nonzas = {(NS_ECHO, "echo"): "onEcho"}

    def onEcho(self, stream, element):
        reply = domish.Element((NS_ECHO, "echoed"))
        reply["authenticated"] = str(stream.authenticated).lower()
        stream.xmlstream.send(reply)


SENT = Slot("test.sent", int, default=0)
RECEIVED = Slot("test.received", int, default=0)


class CounterModule(HostModule):
    """Input and output wrappers: count the stanzas each way (as XEP-0198 does)."""

    name = "counter"
    hooks = (("session-bound", "onSessionBound"),)

    def onSessionBound(self, session):
        session.addOutput(self.countOut)
        session.addInput(self.countIn)

    def countOut(self, session, element, forward):
        SENT.set(session, SENT.get(session) + 1)
        forward(element)

    def countIn(self, session, element, forward):
        RECEIVED.set(session, RECEIVED.get(session) + 1)
        forward(element)


HELD = Slot("test.held", list)


class HoldModule(HostModule):
    """An output wrapper that holds stanzas until C{<flush/>}, then lets them by (as CSI does)."""

    name = "hold"
    hooks = (("session-bound", "onSessionBound"),)
    nonzas = {(NS_TEST, "flush"): "onFlush"}

    def onSessionBound(self, session):
        HELD.set(session, [])
        session.addOutput(self.hold)

    def hold(self, session, element, forward):
        held = HELD.get(session)
        if held is None:
            forward(element)
        else:
            held.append((element, forward))

    def onFlush(self, stream, element):
        for held, forward in HELD.pop(stream.session):
            forward(held)


class KeeperModule(HostModule):
    """Keeps a session whose stream was lost (as XEP-0198 hibernation does)."""

    name = "keeper"
    hooks = (("stream-lost", "onStreamLost"),)

    def __init__(self):
        HostModule.__init__(self)
        self.kept = []

    def onStreamLost(self, session, reason):
        self.kept.append(session)
        return True


class NeedsEcho(HostModule):
    """Declares a dependency on the echo module."""

    name = "needy"
    depends = ("echo",)
    features = (NS_TEST,)
    accountIdentities = (disco.DiscoIdentity("pubsub", "pep"),)
    accountFeatures = (NS_TEST + "#account",)
    observers = (("/iq[@type='get']/query[@xmlns='urn:example:test']", "onQuery"),)

    def onQuery(self, iq):
        iq.handled = True


@dataclass(frozen=True)
class GreeterOptions:
    """The options of a module with a schema."""

    text: str = "hello"
    times: int = 1


class Greeter(HostModule):
    """A module with an options table."""

    name = "greeter"
    Options = GreeterOptions


def message(to: str, body: str = "hi") -> domish.Element:
    element = domish.Element(("jabber:client", "message"))
    element["to"] = to
    element["from"] = "someone@example.net/x"
    element["type"] = "chat"
    element.addElement("body", content=body)
    return element


def named(connection: ClientConnection, name: str) -> list[domish.Element]:
    return [e for e in connection.received() if e.name == name]


def attached(host) -> tuple[int, int, int]:
    """Observers on the host's stream, hook callbacks and nonza handlers."""
    stream = host.stream
    observers = sum(len(observer.callbacks)
                    for table in (stream._eventObservers, stream._xpathObservers)
                    for byPriority in table.values() for observer in byPriority.values())
    hooks = sum(len(host.hooks.callbacks(name)) for name in list(host.hooks._hooks))
    return observers, hooks, len(host.nonzas)


def test_declarationsWiredAndUnwired(servers):
    """Hooks, observers and nonzas declared by modules are added at start and removed at stop."""
    host = servers().hosts["localhost"]
    for module in (EchoModule(), NeedsEcho(), KeeperModule(), HoldModule()):
        host.addModule(module.name, module)
    before = attached(host)
    host.start()
    assert attached(host) == (before[0] + 1, before[1] + 2, before[2] + 2)
    host.stop()
    assert attached(host) == before


def test_missingDependencyNamed(servers):
    """A module whose dependency is not loaded stops the host's start, naming both."""
    host = servers().hosts["localhost"]
    host.addModule("needy", NeedsEcho())
    with pytest.raises(ModuleError, match="'needy' needs module 'echo'"):
        host.start()
    assert not host.started


def test_nonzaHandlerTwiceRefused(servers):
    """Two modules cannot both take the same nonza."""
    host = servers().hosts["localhost"]
    host.addModule("echo", EchoModule())
    host.addModule("echo2", EchoModule())
    with pytest.raises(ModuleError, match="two modules handle the nonza"):
        host.start()


@pytest_twisted.inlineCallbacks
def test_discoFromDeclarations(servers):
    """Disco#info lists the features of the loaded modules; disco#items what the hook lists."""
    server = servers()
    host = server.hosts["localhost"]
    host.loadModules(("disco",))
    host.addModule("echo", EchoModule())
    host.addModule("needy", NeedsEcho())
    item = disco.DiscoItem(jid.JID("groups.localhost"), name="Groups")
    host.hooks.add("disco-items", lambda requestor, node: [item] if not node else [])
    host.start()
    requestor, target = jid.JID("una@localhost/x"), jid.JID("localhost")
    info = yield host.modules["disco"].info(requestor, target, "")
    features = {str(entry) for entry in info if isinstance(entry, disco.DiscoFeature)}
    assert features == {disco.NS_DISCO_INFO, disco.NS_DISCO_ITEMS, NS_TEST}
    info = yield host.modules["disco"].info(requestor, requestor.userhostJID(), "")
    assert {str(entry) for entry in info if isinstance(entry, disco.DiscoFeature)} == {
        disco.NS_DISCO_INFO, NS_TEST + "#account"}
    assert {(i.category, i.type) for i in info if isinstance(i, disco.DiscoIdentity)} == {
        ("account", "registered"), ("pubsub", "pep")}
    items = yield host.modules["disco"].items(requestor, target, "")
    assert [i.entity for i in items] == [jid.JID("groups.localhost")]
    host.stop()
    info = yield host.modules["disco"].info(requestor, target, "")
    assert NS_TEST in {str(entry) for entry in info}  # still loaded, only stopped


# -- options ---------------------------------------------------------------------------


def test_moduleOptionsFromTables():
    """[modules.NAME] sets a module's options; [hosts."x".modules.NAME] overrides them per host."""
    config = parseConfig({"server": {"modules": ["greeter"]},
                          "modules": {"greeter": {"text": "welcome", "times": 2}},
                          "hosts": {"a.example": {"modules": {"greeter": {"times": 3}}},
                                    "b.example": {}}}, "test.toml")
    assert moduleOptions(Greeter, "greeter", config, "a.example") == GreeterOptions("welcome", 3)
    assert moduleOptions(Greeter, "greeter", config, "b.example") == GreeterOptions("welcome", 2)
    assert moduleOptions(EchoModule, "echo", parseConfig({}, "t"), "localhost") is None


@pytest.mark.parametrize(("data", "message"), [
    ({"modules": {"greeter": {"colour": "red"}}}, "test.toml: unknown option modules.greeter.colour"),
    ({"modules": {"greeter": {"times": "x"}}}, "test.toml: modules.greeter.times: expected a whole"),
    ({"hosts": {"a.example": {"modules": {"greeter": {"text": 1}}}}},
     "test.toml: hosts.a.example.modules.greeter.text: expected a string"),
])
def test_moduleOptionsErrors(data, message):
    """A wrong key or value in a module's table is an error naming the key and the file."""
    config = parseConfig({"server": {"modules": ["greeter", "echo"]}, **data}, "test.toml")
    with pytest.raises(ConfigError, match=re.escape(message)):
        for host in config.hosts:
            moduleOptions(Greeter, "greeter", config, host)


def test_moduleTableForUnlistedModule():
    """A table for a module that is not loaded is a typo until proved otherwise."""
    with pytest.raises(ConfigError, match=re.escape("test.toml: [modules.gretter]: module 'gretter'"
                                                    " is not in server.modules")):
        parseConfig({"server": {"modules": ["greeter"]}, "modules": {"gretter": {}}}, "test.toml")


def test_optionsForModuleWithoutSchema():
    """Options for a module that takes none are refused."""
    config = parseConfig({"server": {"modules": ["echo"]}, "modules": {"echo": {"x": 1}}}, "t.toml")
    with pytest.raises(ConfigError, match="module 'echo' takes no options"):
        moduleOptions(EchoModule, "echo", config, "localhost")


# -- stream extension points --------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_nonzaBeforeAndAfterLogin(servers):
    """A module's nonza handler gets its element before authentication and after binding."""
    server = servers()
    host = server.hosts["localhost"]
    host.addModule("echo", EchoModule())
    host.start()
    yield addAccount(server, "una", "una password")
    before = ClientConnection(server, encrypted=True)
    before.openStream()
    before.received()
    before.send(f"<echo xmlns='{NS_ECHO}'/>")
    assert [e["authenticated"] for e in named(before, "echoed")] == ["false"]
    connection = ClientConnection(server, encrypted=True)
    yield login(connection, "una", "una password")
    connection.send(f"<echo xmlns='{NS_ECHO}'/>")
    assert [e["authenticated"] for e in named(connection, "echoed")] == ["true"]
    host.stop()
    connection.send(f"<echo xmlns='{NS_ECHO}'/>")  # no handler any more: not a stanza
    assert connection.streamError() == "unsupported-stanza-type"


@pytest_twisted.inlineCallbacks
def test_outputWrappers(servers):
    """
    Input wrappers see every stanza from the client; output wrappers every
    stanza to it, and one may hold them until told.
    """
    server = servers()
    host = server.hosts["localhost"]
    host.addModule("counter", CounterModule())
    host.addModule("hold", HoldModule())
    host.start()
    yield addAccount(server, "una", "una password")
    connection = ClientConnection(server, encrypted=True)
    yield login(connection, "una", "una password")
    session = connection.authenticator.session
    host.receive(message("una@localhost/test", "one"), jid.JID("una@localhost/test"))
    host.receive(message("una@localhost/test", "two"), jid.JID("una@localhost/test"))
    assert named(connection, "message") == [] and SENT.get(session) == 0
    connection.send(f"<flush xmlns='{NS_TEST}'/>")
    assert [str(m.body) for m in named(connection, "message")] == ["one", "two"]
    assert SENT.get(session) == 2 and RECEIVED.get(session) == 0
    connection.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
                    "<iq type='get' id='p2'/>")  # the second is refused (no child): counted too
    assert RECEIVED.get(session) == 2 and SENT.get(session) == 4


@pytest_twisted.inlineCallbacks
def test_streamLostKeepsSessionForTakeOver(servers):
    """
    A lost stream is offered to C{stream-lost}: a module that keeps the
    session leaves it bound, and a new stream of the account takes it over;
    a stream the client closed itself is not offered.
    """
    server = servers()
    host = server.hosts["localhost"]
    keeper = KeeperModule()
    host.addModule("keeper", keeper)
    host.start()
    yield addAccount(server, "una", "una password")
    first = ClientConnection(server, encrypted=True)
    yield login(first, "una", "una password")
    session = first.authenticator.session
    first.stream.connectionLost(failure.Failure(ConnectionError("gone")))
    assert keeper.kept == [session] and not session.closed
    assert server.router.session(jid.JID("una@localhost/test")) is session

    second = ClientConnection(server, encrypted=True)
    second.openStream()
    payload = base64.b64encode(b"\0una\0una password").decode()
    second.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    yield second.nextNamed("success")
    second.openStream()
    second.authenticator.takeOver(session)
    host.receive(message("una@localhost/test", "after"), jid.JID("una@localhost/test"))
    assert [str(m.body) for m in named(second, "message")] == ["after"]

    second.send("</stream:stream>")
    second.stream.connectionLost(failure.Failure(ConnectionError("closed")))
    assert keeper.kept == [session] and session.closed
    assert server.router.session(jid.JID("una@localhost/test")) is None


@pytest_twisted.inlineCallbacks
def test_takeOverEndsLiveStream(servers):
    """A session taken over while its old stream is still open ends that stream with conflict."""
    server = servers()
    host = server.hosts["localhost"]
    host.start()
    yield addAccount(server, "una", "una password")
    first = ClientConnection(server, encrypted=True)
    yield login(first, "una", "una password")
    session = first.authenticator.session
    second = ClientConnection(server, encrypted=True)
    yield login(second, "una", "una password", resource="other")
    with pytest.raises(ValueError):
        second.authenticator.takeOver(session)  # it is bound already
    third = ClientConnection(server, encrypted=True)
    third.openStream()
    payload = base64.b64encode(b"\0una\0una password").decode()
    third.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    yield third.nextNamed("success")
    third.openStream()
    third.authenticator.takeOver(session)
    assert first.streamError() == "conflict" and not session.closed
    first.stream.connectionLost(failure.Failure(ConnectionError("closed")))
    assert not session.closed and session.stream is third.stream


def test_slotsAreTyped():
    """A slot holds its own type only, per owner, with a default."""
    class Owner:
        def __init__(self):
            self.slots = {}
    a, b = Owner(), Owner()
    SENT.set(a, 3)
    assert (SENT.get(a), SENT.get(b)) == (3, 0)
    with pytest.raises(TypeError, match="slot test.sent holds int"):
        SENT.set(a, "3")
    assert SENT.pop(a) == 3 and SENT.get(a) == 0


# -- resources --------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_bareJIDMessageWithoutPresenceModule(servers):
    """
    Without a presence module nothing tracks availability: a message to the
    bare JID reaches the bound session instead of going offline.
    """
    server = servers()
    host = server.hosts["localhost"]
    host.start()
    yield addAccount(server, "una", "una password")
    connection = ClientConnection(server, encrypted=True)
    yield login(connection, "una", "una password")
    host.receive(message("una@localhost", "to the bare JID"), jid.JID("una@localhost"))
    assert [str(m.body) for m in named(connection, "message")] == ["to the bare JID"]


@pytest_twisted.inlineCallbacks
def test_bareJIDMessageWaitsForPresenceWhenTracked(servers):
    """With the presence module, a session that sent no presence is not available (RFC 6121)."""
    server = servers()
    host = server.hosts["localhost"]
    host.loadModules(("roster", "presence"))
    host.start()
    yield addAccount(server, "una", "una password")
    connection = ClientConnection(server, encrypted=True)
    yield login(connection, "una", "una password")
    session = connection.authenticator.session
    assert host.resources.recipients("una@localhost") == []
    connection.send("<presence><priority>3</priority></presence>")
    assert host.resources.recipients("una@localhost") == [session]
    assert session.priority == 3


# -- hooks -------------------------------------------------------------------------


def test_everyHookDocumented():
    """Every hook the server or a built-in module runs is described in invitesrv/hooks.py."""
    root = Path(__file__).parent.parent / "invitesrv"
    import invitesrv.hooks
    documented = set(re.findall(r"^C\{([a-z-]+)\}", invitesrv.hooks.__doc__, re.MULTILINE))
    used = set()
    for path in root.rglob("*.py"):
        used |= set(re.findall(r"hooks\.(?:run|first|fire)\(\s*\"([a-z-]+)\"", path.read_text()))
    assert used and used <= documented, used - documented
    assert {"stream-lost", "disco-items"} <= used


def test_hookCallbacksKeptInOrder():
    """
    A hook's callbacks are made ready once per change, not at every run (some
    run per stanza), in priority order; a callback that removes another
    while the hook runs does not change the run under way.
    """
    from invitesrv.hooks import Hooks
    hooks = Hooks()
    ran = []

    def first():
        ran.append("first")
        hooks.remove("h", second)
        return "one"

    def second():
        ran.append("second")

    hooks.add("h", second)
    hooks.add("h", first, priority=5)
    ready = hooks.callbacks("h")
    assert ready == (first, second) and hooks.callbacks("h") is ready
    assert hooks.run("h") == ["one", None] and ran == ["first", "second"]
    assert hooks.callbacks("h") == (first,) and hooks.callbacks("other") == ()
    assert hooks.first("h") == "one"


@pytest.mark.parametrize(("toml", "message"), [
    ('[server]\nmodules = ["presence"]\n',
     "server.modules: module 'presence' needs module 'roster', which is not listed"),
    ('[server]\nmodules = ["ping"]\n[modules.ping]\nx = 1\n', "module 'ping' takes no options"),
])
def test_startUpChecks(tmp_path, toml, message):
    """twistd's option parsing refuses a missing dependency or a bad module table, naming the file."""
    from twisted.python import usage

    from invitesrv.tap import Options
    config = tmp_path / "invitesrv.toml"
    config.write_text(toml)
    with pytest.raises(usage.UsageError, match=re.escape(f"{config}: {message}")):
        Options().parseOptions(["--config", str(config)])
