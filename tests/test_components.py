"""
Components: subdomain services routed like hosts (L{invitesrv.components}).

In process, on a L{task.Clock}: an echo service on C{echo.localhost} built
from a module defined here, served with a module loaded by name; its
stanzas come and go through the router, the host lists it in disco#items
under the name of its own identity, and once removed its domain is no
longer served. The C{components} config table and its errors. End-to-end
tests of external XEP-0114 components are in L{test_components_external}.
"""

from __future__ import annotations

import invitesrv  # noqa: F401 (its Wokkel shim goes before any Wokkel import)

# isort: split
import hashlib
import re
from pathlib import Path

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish
from wokkel import disco

from invitesrv.components.external import ComponentFactory
from invitesrv.config import ComponentOptions, Config, ConfigError, Limits, parseConfig
from invitesrv.modules.base import HostModule
from invitesrv.service import HostsService, InviteServer
from invitesrv.store.sqlite import SQLiteStore
from invitesrv.tap import Options

NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "invitesrv.example.toml"


class EchoModule(HostModule):
    """Sends every message back to its sender from the address it was sent to."""

    name = "echo"
    identities = (disco.DiscoIdentity("component", "generic", "Echo"),)
    observers = (("/message", "onMessage"),)

    def onMessage(self, message):
        if message.getAttribute("type") == "error":
            return
        message.handled = True
        echo = domish.Element((NS_CLIENT, "message"))
        echo["from"], echo["to"] = message["to"], message["from"]
        echo.addElement("body", content=str(message.body))
        self.send(echo)


class Session:
    """A bound client resource standing in for a stream: what it is sent is kept."""

    def __init__(self, full: str):
        self.full = full
        self.jid = jid.JID(full)
        self.bare, self.resource = full.split("/")
        self.available, self.priority = True, 0
        self.received: list[domish.Element] = []

    def send(self, element) -> None:
        self.received.append(element)

    def last(self) -> domish.Element:
        assert self.received, "nothing received"
        return self.received.pop()


@pytest.fixture
def server():
    """localhost with disco, and echo.localhost with ping (by name) and the echo module."""
    config = Config(modules=("disco",), components={
        "localhost": {"echo.localhost": ComponentOptions(modules=("ping",))}})
    store = SQLiteStore(":memory:")
    store.open()
    server = InviteServer(config, store=store, reactor=task.Clock())
    server.components["echo.localhost"].addModule("echo", EchoModule())
    hosts = HostsService(server)
    hosts.startService()
    yield server
    hosts.stopService()
    store.close()


@pytest.fixture
def alice(server):
    session = Session("alice@localhost/desk")
    server.router.bind(session)
    return session


def send(server, xml: str) -> None:
    """Route a stanza parsed from C{xml} (in jabber:client) as a bound session's would be."""
    stanzas = []
    parser = domish.elementStream()
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = stanzas.append
    parser.parse(f"<stream xmlns='{NS_CLIENT}'>{xml}".encode())
    server.router.route(stanzas[0])


def errorCondition(stanza: domish.Element) -> str | None:
    if stanza.getAttribute("type") != "error":
        return None
    return next(c.name for c in stanza.error.elements() if c.uri == NS_STANZAS)


def test_messagesReachTheComponentAndItsAnswersTheSender(server, alice):
    """Stanzas to the domain and to JIDs at it reach its modules; their answers are routed."""
    for to in ("echo.localhost", "room@echo.localhost", "room@echo.localhost/nick"):
        send(server, f"<message from='{alice.full}' to='{to}'><body>hi {to}</body></message>")
        echo = alice.last()
        assert (echo["from"], echo["to"], str(echo.body)) == (to, alice.full, f"hi {to}")


def test_modulesByNameAndRefusals(server, alice):
    """A module named in the config answers; an iq nobody handles gets service-unavailable."""
    send(server, f"<iq type='get' id='p1' from='{alice.full}' to='echo.localhost'>"
                 "<ping xmlns='urn:xmpp:ping'/></iq>")
    reply = alice.last()
    assert (reply["type"], reply["id"], reply["from"]) == ("result", "p1", "echo.localhost")
    send(server, f"<iq type='get' id='v1' from='{alice.full}' to='room@echo.localhost'>"
                 "<query xmlns='jabber:iq:version'/></iq>")
    reply = alice.last()
    assert errorCondition(reply) == "service-unavailable"
    assert reply["from"] == "room@echo.localhost"


def test_discoItemsOfTheHostListTheComponentByItsIdentity(server, alice):
    """The host's disco#items name the component as its own disco#info identity does."""
    send(server, f"<iq type='get' id='i1' from='{alice.full}' to='localhost'>"
                 f"<query xmlns='{disco.NS_DISCO_ITEMS}'/></iq>")
    items = [(item["jid"], item.getAttribute("name")) for item in alice.last().query.elements()]
    assert items == [("echo.localhost", "Echo")]
    send(server, f"<iq type='get' id='i2' from='{alice.full}' to='echo.localhost'>"
                 f"<query xmlns='{disco.NS_DISCO_INFO}'/></iq>")
    info = disco.DiscoInfo.fromElement(alice.last().query)
    assert dict(info.identities) == {("component", "generic"): "Echo"}
    assert {"urn:xmpp:ping", disco.NS_DISCO_INFO} <= set(info.features)


def test_removedComponentIsNoLongerServed(server, alice):
    """Once stopped, the domain is not listed and stanzas to it bounce (no federation here)."""
    server.components["echo.localhost"].stop()
    send(server, f"<iq type='get' id='i1' from='{alice.full}' to='localhost'>"
                 f"<query xmlns='{disco.NS_DISCO_ITEMS}'/></iq>")
    assert list(alice.last().query.elements()) == []
    send(server, f"<message from='{alice.full}' to='echo.localhost'><body>hi</body></message>")
    reply = alice.last()
    assert errorCondition(reply) == "remote-server-not-found"
    assert reply["from"] == "echo.localhost"
    assert alice.received == []


# -- configuration --------------------------------------------------------------


def test_componentsConfig():
    """[hosts."HOST".components.NAME] serves NAME.HOST with modules or a secret."""
    config = parseConfig({"hosts": {"example.org": {
        "admins": ["alice@example.org"],
        "components": {"groups": {"modules": ["ping"]},
                       "push": {"secret": "s" * 16}}}}})
    assert config.components == {"example.org": {
        "groups.example.org": ComponentOptions(modules=("ping",)),
        "push.example.org": ComponentOptions(secret="s" * 16)}}
    assert config.hosts["example.org"].admins == ("alice@example.org",)
    assert parseConfig({}).components == {}


@pytest.mark.parametrize("table, message", [
    ({"groups": {}}, "hosts.example.org.components.groups: give either modules"),
    ({"groups": {"modules": ["ping"], "secret": "s" * 16}}, "not both or neither"),
    ({"push": {"secret": "short"}}, "components.push.secret: use at least 16"),
    ({"a.b": {"modules": ["ping"]}}, "'a.b' is not a subdomain label"),
    ({"push": {"secret": "s" * 16, "port": 5347}}, "unknown option hosts.example.org.components.push.port"),
    ({"bad name": {"modules": ["ping"]}}, "is not a valid domain name"),
    ({"groups": {"modules": ["disco", "ping"]}}, "groups.modules: leave out 'disco'"),
    (["groups"], "must be a table"),
])
def test_componentsConfigErrors(table, message):
    """A wrong component table stops start-up naming the key and the file."""
    with pytest.raises(ConfigError) as caught:
        parseConfig({"hosts": {"example.org": {"components": table}}}, "test.toml")
    assert message in str(caught.value) and "test.toml" in str(caught.value)


def test_componentDomainServedTwice():
    """A component domain that is also a host (or another host's component) is refused."""
    with pytest.raises(ConfigError, match="groups.example.org is served twice"):
        parseConfig({"hosts": {"example.org": {"components": {"groups": {"modules": ["ping"]}}},
                               "groups.example.org": {}}})


def test_exampleDocumentsComponentOptions():
    """Every component option is described in the example, with the listener."""
    text = EXAMPLE.read_text("utf-8")
    for option in ComponentOptions.__dataclass_fields__:
        assert re.search(rf"^#   {option}: ", text, re.MULTILINE), option
    assert re.search(r"^#component = \[\]$", text, re.MULTILINE)


def test_moduleTableForAComponentModule():
    """[modules.NAME] may configure a module that only a component loads."""
    config = parseConfig({"server": {"modules": ["disco"]}, "modules": {"ping": {}},
                          "hosts": {"example.org": {"components": {"groups": {"modules": ["ping"]}}}}})
    assert config.module_options == {"ping": {}}


def test_twistdRefusesAnUnknownComponentModule(tmp_path):
    """A component module that does not exist stops start-up naming the component."""
    path = tmp_path / "bad.toml"
    path.write_text('[hosts."example.org".components.groups]\nmodules = ["nosuch"]\n')
    with pytest.raises(usage.UsageError, match=re.escape(
            f"{path}: hosts.example.org.components: groups.example.org: no module named 'nosuch'")):
        Options().parseOptions(["--config", str(path)])


def componentConnection(server):
    """An in-memory connection to the component listener, its stream header sent."""
    peer = IPv4Address("TCP", "192.0.2.9", 40000)
    transport = StringTransport(peerAddress=peer)
    stream = ComponentFactory(server).buildProtocol(peer)
    stream.makeConnection(transport)
    stream.dataReceived(b"<stream:stream xmlns='jabber:component:accept' "
                        b"xmlns:stream='http://etherx.jabber.org/streams' to='push.localhost'>")
    return stream, transport


@pytest.fixture
def external():
    """An unstarted server with the external component push.localhost routed, on a Clock."""
    config = Config(modules=(), limits=Limits(auth_timeout=5), components={
        "localhost": {"push.localhost": ComponentOptions(secret="s" * 16)}})
    store = SQLiteStore(":memory:")
    store.open()
    server = InviteServer(config, store=store, reactor=task.Clock())
    server.components["push.localhost"].start()
    yield server
    store.close()


def test_externalComponentMustHandshakeInTime(external):
    """A component connection is a restricted stream: auth_timeout, then <connection-timeout/>."""
    stream, transport = componentConnection(external)
    assert b"from='push.localhost'" in transport.value()
    external.clock.advance(4)
    assert not transport.disconnecting
    external.clock.advance(2)
    assert b"<connection-timeout" in transport.value() and transport.disconnecting


def test_closingComponentStreamTakesNoStanzas(external):
    """Once a component's stream is ending, stanzas for it bounce instead of vanishing."""
    stream, transport = componentConnection(external)
    streamID = stream.sid
    stream.dataReceived(f"<handshake>{hashlib.sha1((streamID + 's' * 16).encode()).hexdigest()}"
                        "</handshake>".encode())
    assert b"<handshake/>" in transport.value()
    alice = Session("alice@localhost/desk")
    external.router.bind(alice)
    send(external, f"<message from='{alice.full}' to='push.localhost'><body>one</body></message>")
    assert b"<body>one</body>" in transport.value() and alice.received == []
    stream.dataReceived(b"<message from='alice@localhost' to='bob@localhost'/>")
    assert b"<invalid-from" in transport.value()
    send(external, f"<message from='{alice.full}' to='push.localhost'><body>two</body></message>")
    assert errorCondition(alice.last()) == "service-unavailable"
    assert b"two" not in transport.value()
