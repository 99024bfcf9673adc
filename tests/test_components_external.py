"""
External components (XEP-0114) against the real server over TCP.

slixmpp's C{ComponentXMPP}, an independent implementation of the component
side, serves C{push.localhost}: a slixmpp client logged in to localhost
exchanges messages with it, finds it in the host's disco#items under the
name of its own identity, and asks it disco#info; once it disconnects, its
domain answers C{service-unavailable}. Raw XML for what a component must not
get away with: a wrong secret, a domain that is not an external component,
a stanza from another domain, a stanza too large; and a second connection
for the domain replacing the first.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time

import pytest
import slixmpp
from cryptography import x509
from rawxmpp import RawClient
from slix import Client, run
from slixmpp.exceptions import IqError
from test_roster import PASSWORD, StanzaClient, addUsers

SECRET = "a secret of the push component"
HEADER = ("<?xml version='1.0'?><stream:stream xmlns='{ns}' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='{to}'>")
CONFIG = f"""component = ["tcp:0:interface=127.0.0.1"]
[limits]
allowlist = []
stanza_size_preauth = 2000
[hosts."localhost".components.push]
secret = "{SECRET}"
[hosts."localhost".components.echo]
modules = ["ping"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with the push component's secret, a component listener and two accounts."""
    from conftest import RunningServer
    server = RunningServer(tmp_path_factory.mktemp("components"), CONFIG)
    server.start()
    deadline = time.monotonic() + 10
    while "Components" not in server.ports and time.monotonic() < deadline:
        server.ports.update((label, int(port)) for label, port in
                            re.findall(r"(Components) listening on [\d.]+:(\d+)", server.log()))
        time.sleep(0.05)
    addUsers(server, "alice@localhost", "bob@localhost")
    yield server
    server.stop()


def componentStream(server, domain: str = "push.localhost", namespace: str = "jabber:component:accept"):
    """A raw connection to the component listener with its stream opened; and the stream id."""
    raw = RawClient(server.ports["Components"], timeout=10)
    raw.send(HEADER.format(ns=namespace, to=domain))
    header = raw.recvUntil(r"<stream:stream[^>]*>")
    found = re.search(r"\bid=['\"]([^'\"]+)", header)
    return raw, found.group(1) if found else None


def connected(server, secret: str = SECRET) -> RawClient:
    """A raw component authenticated as push.localhost."""
    raw, streamID = componentStream(server)
    raw.send(f"<handshake>{hashlib.sha1((streamID + secret).encode()).hexdigest()}</handshake>")
    raw.recvUntil(r"<handshake\s*/>")
    return raw


def streamError(raw: RawClient) -> str:
    text = raw.recvUntil(r"</stream:error>")
    return re.search(r"<stream:error><([a-z-]+)", text).group(1)


class PushComponent(slixmpp.ComponentXMPP):
    """A slixmpp component that answers disco and sends every message back, marked."""

    def __init__(self, port: int):
        super().__init__("push.localhost", SECRET, "127.0.0.1", port)
        self.register_plugin("xep_0030")
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda event: self.started.set_result(True))
        self.add_event_handler("message", self.echo)

    def echo(self, message):
        if message["type"] != "error":
            self.send_message(mto=message["from"], mfrom=message["to"],
                              mbody=f"echo: {message['body']}", mtype="chat")


def test_slixmppComponentServesItsDomain(server):
    """A real component connects, exchanges messages, is listed and answers disco; then leaves."""
    async def scenario():
        component = PushComponent(server.ports["Components"])
        component.plugin["xep_0030"].add_identity("component", "generic", name="Push test")
        component.connect()
        await asyncio.wait_for(component.started, 10)
        alice = Client("alice@localhost", PASSWORD)
        assert await alice.login(server.port)
        answers = asyncio.Queue()
        alice.add_event_handler("message", answers.put_nowait)
        alice.send_message(mto="push.localhost", mbody="hello", mtype="chat")
        echo = await asyncio.wait_for(answers.get(), 10)
        assert (str(echo["from"]), echo["body"]) == ("push.localhost", "echo: hello")
        alice.send_message(mto="device@push.localhost/x", mbody="to a JID at it", mtype="chat")
        echo = await asyncio.wait_for(answers.get(), 10)
        assert (str(echo["from"]), echo["body"]) == ("device@push.localhost/x", "echo: to a JID at it")

        info = await alice.plugin["xep_0030"].get_info(jid="push.localhost", timeout=10)
        assert ("component", "generic", None, "Push test") in info["disco_info"]["identities"]
        items = await alice.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
        assert ("push.localhost", None, "Push test") in items["disco_items"]["items"]

        component.disconnect()
        await asyncio.wait_for(component.disconnected, 10)
        condition = None
        for _ in range(50):
            try:
                await alice.plugin["xep_0030"].get_info(jid="push.localhost", timeout=10)
            except IqError as e:
                condition = e.condition
                break
            await asyncio.sleep(0.1)
        assert condition == "service-unavailable"
        items = await alice.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
        listed = [item[0] for item in items["disco_items"]["items"]]
        assert "push.localhost" not in listed and "echo.localhost" in listed
        await alice.logout()
    run(scenario())
    assert "Component push.localhost connected from 127.0.0.1" in server.log()
    assert "Component push.localhost disconnected" in server.log()


def test_handshakeRefusals(server):
    """A wrong secret, a domain that is no external component, a wrong namespace: stream errors."""
    raw, streamID = componentStream(server)
    wrong = hashlib.sha1((streamID + "not the secret").encode()).hexdigest()
    raw.send(f"<handshake>{wrong}</handshake>")
    assert streamError(raw) == "not-authorized"
    assert raw.isClosed()
    for domain in ("nowhere.localhost", "localhost", "echo.localhost"):
        raw, _ = componentStream(server, domain)
        assert streamError(raw) == "host-unknown", domain
    raw, _ = componentStream(server, namespace="jabber:client")
    assert streamError(raw) == "invalid-namespace"
    raw, _ = componentStream(server)
    raw.send("<message from='push.localhost' to='alice@localhost'><body>early</body></message>")
    assert streamError(raw) == "not-authorized"
    raw, _ = componentStream(server)
    raw.send(f"<message>{'x' * 3000}</message>")
    assert streamError(raw) == "policy-violation"


def test_componentStanzasMustComeFromItsDomain(server):
    """A stanza from another domain or with no sender ends the component's stream."""
    for stanza, condition in (
            ("<message from='alice@localhost' to='bob@localhost'><body>spoof</body></message>",
             "invalid-from"),
            ("<message from='push.localhost.evil' to='bob@localhost'/>", "invalid-from"),
            ("<message to='bob@localhost'/>", "improper-addressing")):
        raw = connected(server)
        raw.recvUntil(r"<iq[^>]*>.*?</iq>")  # the server's disco#info request
        raw.send(stanza)
        assert streamError(raw) == condition, stanza
        raw.close()


def test_secondConnectionReplacesTheFirst(server):
    """Only the newest connection for a domain is routed; the older one gets <conflict/>."""
    first = connected(server)
    second = connected(server)
    assert streamError(first) == "conflict"
    bob = StanzaClient(server.port, "bob")
    bob.send("<message to='push.localhost' id='m1'><body>which one</body></message>")
    received = second.recvUntil(r"<message[^>]*>.*?</message>")
    assert "which one" in received and "from='bob@localhost/raw'" in received
    second.send("<message from='push.localhost' to='bob@localhost/raw'><body>this one</body>"
                "</message>")
    answer = bob.expect(lambda e: e.name == "message" and e.getAttribute("from") == "push.localhost")
    assert str(answer.body) == "this one"
    second.close()


@pytest.mark.parametrize("proof", ["dialback", "SASL EXTERNAL"])
def test_componentAcrossFederation(tmp_path, proof):
    """
    A user of another server reaches an external component of b.test, and
    its answer reaches her: the component's domain is proved both ways as
    its host's would be, by dialback, or by SASL EXTERNAL with the host's
    certificate where it names the subdomain.
    """
    from conftest import RunningServer
    from test_s2s import federated, freePort, writeCertificates

    ports = {"a.test": freePort(), "b.test": freePort()}
    routes = {"a.test": {"b.test": ports["b.test"], "push.b.test": ports["b.test"]},
              "b.test": {"a.test": ports["a.test"]}}
    ca = writeCertificates(tmp_path, list(ports),
                           {domain: [x509.DNSName(domain), x509.DNSName(f"push.{domain}")]
                            for domain in ports})
    servers = {}
    for domain in ports:
        (tmp_path / domain).mkdir()
        extra = ""
        if proof == "SASL EXTERNAL":
            extra = (f'trust = "{ca}"\nrequire_valid_certificates = true\n'
                     f'[tls]\ncertificate = "{tmp_path / (domain + ".crt")}"\n'
                     f'key = "{tmp_path / (domain + ".key")}"\n')
        config = federated(domain, ports[domain], routes[domain], extra)
        if domain == "b.test":
            config = ('component = ["tcp:0:interface=127.0.0.1"]\n' + config
                      + f'[hosts."b.test".components.push]\nsecret = "{SECRET}"\n')
        servers[domain] = RunningServer(tmp_path / domain, config)
    try:
        for server in servers.values():
            server.start()
        b = servers["b.test"]
        b.ports["Components"] = int(re.search(r"Components listening on [\d.]+:(\d+)", b.log()).group(1))
        addUsers(servers["a.test"], "alice@a.test")
        raw, streamID = componentStream(b, "push.b.test")
        raw.send(f"<handshake>{hashlib.sha1((streamID + SECRET).encode()).hexdigest()}</handshake>")
        raw.recvUntil(r"<handshake\s*/>")
        alice = StanzaClient(servers["a.test"].port, "alice", host="a.test")
        alice.send("<message to='device@push.b.test' type='chat'><body>across</body></message>")
        received = raw.recvUntil(r"<message[^>]*>.*?</message>", timeout=20)
        assert "across" in received and "from='alice@a.test/raw'" in received
        raw.send("<message from='device@push.b.test' to='alice@a.test/raw' type='chat'>"
                 "<body>back</body></message>")
        answer = alice.expect(lambda e: e.name == "message"
                              and e.getAttribute("from") == "device@push.b.test", timeout=20)
        assert str(answer.body) == "back"
        assert re.search(r"Incoming stream from a.test to push.b.test \(127.0.0.1:\d+\) "
                         f"authenticated by {proof}", b.log())
        assert f"Outgoing stream from push.b.test to a.test authenticated by {proof}" in b.log()
        raw.close()
    finally:
        for server in servers.values():
            server.stop()
