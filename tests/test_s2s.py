"""
Federation (RFC 6120 server-to-server streams, XEP-0220 dialback, XEP-0178
SASL EXTERNAL) end to end: invitesrv processes for a.test, b.test, c.test and
d.test on loopback, each with its own data directory and a static host map
instead of DNS. a.test and b.test have self-signed certificates and prove
their domains by dialback; c.test and d.test have certificates from a test
CA they trust, require valid certificates and use SASL EXTERNAL.

Across domains: chat, iq routing and errors, a presence subscription reaching
C{both} on both sides, and a contact invite (XEP-0379) redeemed from the other
domain. Refused: a peer claiming a domain it did not prove, garbage, a
dialback key that does not verify, unknown hosts, stanzas before
authentication; each is cut off while the real peers keep talking.
Unreachable and silent servers bounce with C{remote-server-not-found} and
C{remote-server-timeout}. In process: the C{[s2s]} config.
"""

from __future__ import annotations

import datetime
import re
import socket
import ssl
import time
from pathlib import Path

import pytest
from conftest import RunningServer, startAll
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rawxmpp import RawClient
from test_roster import StanzaClient, addUsers, errorCondition, isPush, rosterItems
from twisted.words.xish import domish

from invitesrv.config import ConfigError, FederationOptions, parseConfig
from invitesrv.xmpp.dialback import dialbackKey, dialbackSecret
from invitesrv.xmpp.s2s.stream import retarget

S2S_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
              "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
              "from='{sender}' to='{to}' version='1.0'>")


def freePort() -> int:
    """A loopback port free right now (servers must know each other's ports before starting)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def federated(domain: str, port: int, peers: dict[str, int], extra: str = "") -> str:
    """Extra TOML for a test server: an s2s listener, a static host map, one virtual host."""
    hosts = ", ".join(f'"{name}" = "127.0.0.1:{peerPort}"' for name, peerPort in peers.items())
    return (f's2s = ["tcp:{port}:interface=127.0.0.1"]\n'
            f'[s2s]\nhosts = {{ {hosts} }}\nconnect_timeout = "3s"\nidle_timeout = "4s"\n{extra}'
            f'[hosts."{domain}"]\n')


def writeCertificates(directory: Path, domains: list[str], names: dict | None = None) -> Path:
    """
    A test CA and, for each domain, a certificate it signed (naming the
    domain as a DNS-ID, or with the subjectAltNames in C{names[domain]});
    return the CA file.
    """
    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "invitesrv test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    ca = (x509.CertificateBuilder().subject_name(caName).issuer_name(caName)
          .public_key(caKey.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(validity[0]).not_valid_after(validity[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(caKey, hashes.SHA256()))
    caPath = directory / "ca.pem"
    caPath.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for domain in domains:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(caName).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0]).not_valid_after(validity[1])
            .add_extension(x509.SubjectAlternativeName((names or {}).get(domain, [x509.DNSName(domain)])),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(caKey, hashes.SHA256()))
        (directory / f"{domain}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (directory / f"{domain}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return caPath


class Network:
    """The four servers, and ports where nothing answers."""

    def __init__(self, root: Path):
        ports = {name: freePort() for name in ("a.test", "b.test", "c.test", "d.test", "down.test")}
        self.silent = socket.socket()
        self.silent.bind(("127.0.0.1", 0))
        self.silent.listen(8)  # accepts connections (in the backlog) and never says a word
        peers = dict(ports, **{"slow.test": self.silent.getsockname()[1]})
        ca = writeCertificates(root, ["c.test", "d.test"])
        self.servers: dict[str, RunningServer] = {}
        for domain in ("a.test", "b.test", "c.test", "d.test"):
            extra = ""
            if domain in ("c.test", "d.test"):
                extra = f'trust = "{ca}"\nrequire_valid_certificates = true\n' \
                        f'[tls]\ncertificate = "{root / (domain + ".crt")}"\n' \
                        f'key = "{root / (domain + ".key")}"\n'
            directory = root / domain
            directory.mkdir()
            if domain == "a.test":
                extra = "max_queued = 10\n"
            others = {name: port for name, port in peers.items() if name != domain}
            self.servers[domain] = RunningServer(directory, federated(domain, ports[domain], others, extra))
        try:
            startAll(self.servers.values())
        except Exception:
            self.stop()
            raise

    def __getitem__(self, domain: str) -> RunningServer:
        return self.servers[domain]

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.silent.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    network = Network(tmp_path_factory.mktemp("federation"))
    try:
        addUsers(network["a.test"], "alice@a.test", "carol@a.test", "grace@a.test", "heidi@a.test")
        addUsers(network["b.test"], "bob@b.test", "dave@b.test", "erin@b.test", "ivan@b.test")
        addUsers(network["c.test"], "chris@c.test")
        addUsers(network["d.test"], "dana@d.test")
        yield network
    finally:
        network.stop()


def online(server: RunningServer, user: str, resource: str = "desk") -> StanzaClient:
    """Logged in to its own domain, roster fetched (so pushes come), available."""
    domain = user.split("@")[1]
    client = StanzaClient(server.port, user.split("@")[0], resource, host=domain)
    client.rosterGet()
    client.send("<presence/>")
    client.expect(isPresence(client.jid), what="own presence")
    return client


def isPresence(sender: str, kind: str = "available"):
    """A predicate for a presence from C{sender} (full or bare) of type C{kind}."""
    def match(element: domish.Element) -> bool:
        return (element.name == "presence" and element.getAttribute("from") == sender
                and element.getAttribute("type", "available") == kind)
    return match


def isMessage(sender: str, body: str | None = None, kind: str | None = None):
    def match(element: domish.Element) -> bool:
        if element.name != "message" or element.getAttribute("from") != sender:
            return False
        if kind is not None and element.getAttribute("type") != kind:
            return False
        return body is None or any(str(child) == body for child in element.elements()
                                   if child.name == "body")
    return match


def subscription(client: StanzaClient, contact: str) -> str | None:
    """The subscription of C{client}'s roster item for C{contact}, fetched now."""
    item = rosterItems(client.rosterGet()).get(contact)
    return None if item is None else item.getAttribute("subscription", "none")


def eventually(check, timeout: float = 8.0):
    """The value of C{check()} once truthy, polling; the last value after C{timeout}."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def chat(sender: StanzaClient, recipient: StanzaClient, text: str) -> domish.Element:
    """A chat message from one client to the other's bare JID, as received."""
    sender.send(f"<message to='{recipient.bare}' type='chat'><body>{text}</body></message>")
    return recipient.expect(isMessage(sender.jid, text, "chat"), timeout=10, what=f"message {text!r}")


class S2SPeer(RawClient):
    """A raw server-to-server connection, for playing a misbehaving peer."""

    def open(self, sender: str, to: str) -> str:
        """Send a stream header; return the stream id of the answer (after its features)."""
        self.send(S2S_HEADER.format(sender=sender, to=to))
        header = self.recvUntil(r"<stream:stream[^>]*>")
        self.recvUntil(r"</stream:features>|<stream:features/>")
        return re.search(r"\bid=['\"]([^'\"]+)", header).group(1)

    def startTLS(self, sender: str, to: str) -> str:
        """Open, STARTTLS, open again; return the new stream id."""
        self.open(sender, to)
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.recvUntil(r"<proceed[^>]*/>")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname=to)
        return self.open(sender, to)

    def streamError(self) -> str:
        """The condition of the stream error that ends the stream."""
        text = self.recvUntil(r"</stream:error>")
        return re.search(r"<stream:error><([a-z-]+)", text).group(1)


def dialbackAs(net: Network, peer: S2SPeer, domain: str, to: str, key: str | None = None) -> str:
    """Offer a dialback key for C{domain} (by default the real one, from its server's secret)."""
    streamID = peer.startTLS(domain, to)
    if key is None:
        secret = dialbackSecret((net[domain].dataDir / "server.secret").read_bytes())
        key = dialbackKey(secret, to, domain, streamID)
    peer.send(f"<db:result from='{domain}' to='{to}'>{key}</db:result>")
    return peer.recvUntil(r"<db:result [^>]*>")


# -- across domains --------------------------------------------------------------


def test_chatAcross(net):
    """Messages go both ways between a.test and b.test, proved by dialback."""
    alice, bob = online(net["a.test"], "alice@a.test"), online(net["b.test"], "bob@b.test")
    message = chat(alice, bob, "hello from a.test")
    assert message["to"] == "bob@b.test"
    chat(bob, alice, "hello from b.test")
    alice.send("<message to='bob@b.test/desk' type='chat'><body>to the resource</body>"
               "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    received = bob.expect(isMessage(alice.jid, "to the resource"))
    assert received.uri == "jabber:client"
    assert [child.uri for child in received.elements()] == [
        "jabber:client", "http://jabber.org/protocol/chatstates", "urn:xmpp:sid:0"]
    assert next(received.elements("urn:xmpp:sid:0", "stanza-id"))["by"] == "bob@b.test"  # its archive
    for server, local, remote in ((net["a.test"], "a.test", "b.test"),
                                  (net["b.test"], "b.test", "a.test")):
        log = server.log()
        assert f"Outgoing stream from {local} to {remote} authenticated by dialback" in log
        assert re.search(rf"Incoming stream from {remote} to {local} \(127.0.0.1:\d+\) authenticated "
                         "by dialback", log)
    alice.close()
    bob.close()


def test_iqAcross(net):
    """An iq reaches the other server and its answer comes back; so do errors."""
    alice = online(net["a.test"], "alice@a.test", "iq")
    pong = alice.request("<ping xmlns='urn:xmpp:ping'/>", to="b.test")
    assert pong["type"] == "result" and pong["from"] == "b.test"
    info = alice.request("<query xmlns='http://jabber.org/protocol/disco#info'/>", to="b.test")
    assert "urn:xmpp:ping" in info.toXml()
    gone = alice.request("<ping xmlns='urn:xmpp:ping'/>", to="bob@b.test/nowhere")
    assert errorCondition(gone) == "service-unavailable" and gone["from"] == "bob@b.test/nowhere"
    alice.close()


def test_presenceSubscriptionAcross(net):
    """
    carol@a.test and dave@b.test subscribe to each other: requests, answers
    and pushes cross, both rosters reach 'both', presence is seen across and
    withdrawn when dave goes away.
    """
    carol, dave = online(net["a.test"], "carol@a.test"), online(net["b.test"], "dave@b.test")
    carol.send("<presence to='dave@b.test' type='subscribe'/>")
    dave.expect(isPresence("carol@a.test", "subscribe"), timeout=10)
    dave.send("<presence to='carol@a.test' type='subscribed'/>")
    dave.send("<presence to='carol@a.test' type='subscribe'/>")
    carol.expect(isPush("dave@b.test", "to"), timeout=10)
    carol.expect(isPresence(dave.jid), timeout=10, what="dave's presence")
    carol.expect(isPresence("dave@b.test", "subscribe"), timeout=10)
    carol.send("<presence to='dave@b.test' type='subscribed'/>")
    dave.expect(isPush("carol@a.test", "both"), timeout=10)
    dave.expect(isPresence(carol.jid), timeout=10, what="carol's presence")
    assert subscription(carol, "dave@b.test") == "both"
    assert subscription(dave, "carol@a.test") == "both"
    dave.close()
    carol.expect(isPresence(dave.jid, "unavailable"), timeout=10)
    carol.close()


def test_contactInviteAcross(net):
    """
    XEP-0379 across domains: grace@a.test's contact invite, redeemed by
    erin@b.test with a subscription request carrying the token and nothing
    else, makes them mutual contacts with no request shown to either (b.test
    pre-approves grace's request back); the invite is spent.
    """
    output = net["a.test"].ctl("invite", "create", "--contact", "grace", "a.test").stdout
    uri = re.search(r"xmpp:grace@a\.test\?roster;preauth=([A-Za-z0-9_-]+)", output)
    assert uri, output
    inviteId = re.search(r"^Invite (\w+):", output, re.MULTILINE).group(1)
    grace, erin = online(net["a.test"], "grace@a.test"), online(net["b.test"], "erin@b.test")
    erin.send(f"<presence to='grace@a.test' type='subscribe'>"
              f"<preauth xmlns='urn:xmpp:pars:0' token='{uri.group(1)}'/></presence>")
    erin.expect(isPush("grace@a.test", "both"), timeout=10)
    grace.expect(isPush("erin@b.test", "both"), timeout=10)
    assert eventually(lambda: subscription(grace, "erin@b.test") == "both")
    assert subscription(erin, "grace@a.test") == "both"
    grace.absent(isPresence("erin@b.test", "subscribe"), wait=0.3, what="subscription request")
    erin.absent(isPresence("grace@a.test", "subscribe"), wait=0.3, what="subscription request")
    shown = net["a.test"].ctl("invite", "show", inviteId).stdout
    assert re.search(r"Status:\s+used", shown) and "by erin@b.test via contact" in shown
    grace.close()
    erin.close()


def test_pepAcross(net):
    """
    XEP-0163 across domains: ivan@b.test, subscribed to heidi@a.test, says
    in his caps he wants avatar metadata; a.test asks his client (over s2s)
    for the disco#info behind them, and heidi's publication reaches him.
    """
    from test_pep import NOTIFY, discoQuery

    from invitesrv.caps import NS_CAPS, NS_DISCO_INFO, capsHash
    heidi, ivan = online(net["a.test"], "heidi@a.test"), online(net["b.test"], "ivan@b.test")
    heidi.send("<presence to='ivan@b.test' type='subscribe'/>")
    ivan.expect(isPresence("heidi@a.test", "subscribe"), timeout=10)
    ivan.send("<presence to='heidi@a.test' type='subscribed'/>")
    ivan.send("<presence to='heidi@a.test' type='subscribe'/>")
    heidi.expect(isPresence("ivan@b.test", "subscribe"), timeout=10)
    heidi.send("<presence to='ivan@b.test' type='subscribed'/>")
    assert eventually(lambda: subscription(heidi, "ivan@b.test") == "both")
    query = discoQuery(NOTIFY)
    ivan.send(f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='https://example.org/test'"
              f" ver='{capsHash(query)}'/></presence>")
    asked = ivan.expect(lambda e: e.name == "iq" and e.getAttribute("from") == "heidi@a.test"
                        and e.getAttribute("type") == "get", timeout=10, what="caps query from a.test")
    answer = domish.Element((None, "iq"))
    answer["type"], answer["id"], answer["to"] = "result", asked["id"], asked["from"]
    answer.addChild(discoQuery(NOTIFY, next(asked.elements(NS_DISCO_INFO, "query"))["node"]))
    ivan.send(answer.toXml())
    metadata = ("<metadata xmlns='urn:xmpp:avatar:metadata'><info id='a1' bytes='9' type='image/png'/>"
                "</metadata>")

    def published() -> bool:
        reply = heidi.request("<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish"
                              f" node='urn:xmpp:avatar:metadata'><item id='a1'>{metadata}</item>"
                              "</publish></pubsub>", "set")
        assert reply["type"] == "result", reply.toXml()
        try:
            ivan.expect(lambda e: e.name == "message" and e.getAttribute("from") == "heidi@a.test"
                        and "urn:xmpp:avatar:metadata" in e.toXml(), timeout=3, what="avatar event")
        except AssertionError:
            return False  # the answer to the caps query may still be on its way
        return True
    assert eventually(published)
    heidi.close()
    ivan.close()


def test_idleStreamsCloseAndReopen(net):
    """Streams idle for idle_timeout are closed on both sides; the next stanza opens new ones."""
    alice, bob = online(net["a.test"], "alice@a.test", "idle"), online(net["b.test"], "bob@b.test", "idle")
    since = {domain: len(net[domain].log()) for domain in ("a.test", "b.test")}
    chat(alice, bob, "before the pause")

    def closedWhenIdle() -> bool:
        # Both ends of a connection go idle at once: whichever timer fires
        # first closes it (on either server), the other end follows its
        # closing tag. Either way the stream from a.test to b.test ends.
        new = {domain: net[domain].log()[offset:] for domain, offset in since.items()}
        return ("Closing the idle" in new["a.test"] + new["b.test"]
                and "Outgoing stream from a.test to b.test closed" in new["a.test"])

    assert eventually(closedWhenIdle, timeout=10)
    time.sleep(0.3)
    chat(alice, bob, "after the pause")
    chat(bob, alice, "and back")
    alice.close()
    bob.close()


def test_saslExternalWithValidCertificates(net):
    """c.test and d.test trust each other's CA and require it: SASL EXTERNAL, no dialback."""
    chris, dana = online(net["c.test"], "chris@c.test"), online(net["d.test"], "dana@d.test")
    chat(chris, dana, "signed by our CA")
    chat(dana, chris, "likewise")
    for server, local, remote in ((net["c.test"], "c.test", "d.test"),
                                  (net["d.test"], "d.test", "c.test")):
        log = server.log()
        assert f"Outgoing stream from {local} to {remote} authenticated by SASL EXTERNAL" in log
        assert re.search(rf"Incoming stream from {remote} to {local} \(127.0.0.1:\d+\) authenticated "
                         "by SASL EXTERNAL", log)
        assert "dialback" not in log
    chris.close()
    dana.close()


def test_validCertificateRequired(net):
    """
    A server that requires valid certificates neither accepts dialback from
    a self-signed peer nor talks to one: both senders get an error.
    """
    alice, chris = online(net["a.test"], "alice@a.test", "strict"), online(net["c.test"], "chris@c.test",
                                                                            "strict")
    alice.send("<message to='chris@c.test' id='m1'><body>dialback only</body></message>")
    bounced = alice.expect(lambda e: e.getAttribute("id") == "m1", timeout=10)
    assert errorCondition(bounced) == "remote-server-not-found"
    chris.send("<message to='alice@a.test' id='m2'><body>self-signed</body></message>")
    bounced = chris.expect(lambda e: e.getAttribute("id") == "m2", timeout=10)
    assert errorCondition(bounced) == "remote-server-not-found"
    assert "the certificate of a.test is not valid" in net["c.test"].log()
    alice.close()
    chris.close()


# -- unreachable -------------------------------------------------------------------


def test_unreachableServers(net):
    """
    Nobody listening: remote-server-not-found. A silent server: what waited
    gets remote-server-timeout after connect_timeout, and what did not fit in
    the queue (max_queued = 10 on a.test) resource-constraint at once.
    """
    alice = online(net["a.test"], "alice@a.test", "lost")
    alice.send("<message to='someone@down.test' id='down'><body>anyone?</body></message>")
    bounced = alice.expect(lambda e: e.getAttribute("id") == "down", timeout=10)
    assert errorCondition(bounced) == "remote-server-not-found"
    assert bounced["from"] == "someone@down.test"
    started = time.monotonic()
    alice.send("<iq type='get' id='ping' to='slow.test'><ping xmlns='urn:xmpp:ping'/></iq>")
    for n in range(10):
        alice.send(f"<message to='someone@slow.test' id='slow{n}'><body>hello?</body></message>")
    full = alice.expect(lambda e: e.getAttribute("id") == "slow9", timeout=2)
    assert errorCondition(full) == "resource-constraint"
    assert time.monotonic() - started < 2
    for waiting in ["ping"] + [f"slow{n}" for n in range(9)]:
        bounced = alice.expect(lambda e, waiting=waiting: e.getAttribute("id") == waiting, timeout=10)
        assert errorCondition(bounced) == "remote-server-timeout"
    assert 2.5 < time.monotonic() - started < 8
    alice.close()


# -- misbehaving peers ---------------------------------------------------------------


def stillFederated(net: Network, text: str) -> None:
    """The real a.test and b.test still exchange messages."""
    alice, bob = online(net["a.test"], "alice@a.test", "check"), online(net["b.test"], "bob@b.test",
                                                                         "check")
    chat(bob, alice, text)
    alice.close()
    bob.close()


def test_peerClaimingAnotherDomain(net):
    """
    A peer that proved b.test (with b.test's real key) may send from b.test,
    but a stanza from any other domain ends its stream with invalid-from.
    """
    alice = online(net["a.test"], "alice@a.test", "spoofed")
    with S2SPeer(net["a.test"].ports["Servers"]) as peer:
        assert "type='valid'" in dialbackAs(net, peer, "b.test", "a.test")
        peer.send("<message from='mallory@b.test/x' to='alice@a.test/spoofed' type='chat'>"
                  "<body>from b.test</body></message>")
        alice.expect(isMessage("mallory@b.test/x", "from b.test"))
        peer.send("<message from='mallory@evil.test/x' to='alice@a.test/spoofed' type='chat'>"
                  "<body>from evil.test</body></message>")
        assert peer.streamError() == "invalid-from"
        assert peer.isClosed()
    alice.absent(isMessage("mallory@evil.test/x"), wait=0.3)
    alice.close()
    stillFederated(net, "after a spoofing peer")


def test_badDialbackKey(net):
    """A key b.test's server did not make is refused, and the stream closed."""
    with S2SPeer(net["a.test"].ports["Servers"]) as peer:
        answer = dialbackAs(net, peer, "b.test", "a.test", key="0" * 64)
        assert "type='invalid'" in answer
        assert peer.streamError() == "not-authorized"
    assert "a.test asked about a dialback key for b.test that is not ours" in net["b.test"].log()
    stillFederated(net, "after a bad key")


def test_garbageAndRuleBreaking(net):
    """Garbage, unknown hosts, stanzas before authentication, huge stanzas: each peer cut off."""
    port = net["a.test"].ports["Servers"]
    with S2SPeer(port) as peer:
        peer.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert peer.streamError() == "not-well-formed"
        assert peer.isClosed()
    with S2SPeer(port) as peer:
        peer.send(S2S_HEADER.format(sender="b.test", to="nowhere.test"))
        assert peer.streamError() == "host-unknown"
    with S2SPeer(port) as peer:
        peer.startTLS("b.test", "a.test")
        peer.send("<message from='bob@b.test' to='alice@a.test'><body>unproved</body></message>")
        assert peer.streamError() == "not-authorized"
    with S2SPeer(port) as peer:
        peer.startTLS("b.test", "a.test")
        peer.send("<message from='bob@b.test' to='alice@a.test'><body>" + "x" * 20000)
        assert peer.streamError() == "policy-violation"
    with S2SPeer(port) as peer:
        peer.open("b.test", "a.test")
        peer.send("<db:result from='b.test' to='a.test'>abc</db:result>")
        assert peer.streamError() == "policy-violation"  # TLS first
    with S2SPeer(port) as peer:
        assert "type='valid'" in dialbackAs(net, peer, "b.test", "a.test")
        peer.send("<message from='bob@b.test' to='someone@elsewhere.test'><body>relay?</body></message>")
        assert peer.streamError() == "host-unknown"
    stillFederated(net, "after the garbage")


def test_authoritativeAnswers(net):
    """As authoritative server, a.test confirms its own keys and denies others, without auth."""
    secret = dialbackSecret((net["a.test"].dataDir / "server.secret").read_bytes())
    with S2SPeer(net["a.test"].ports["Servers"]) as peer:
        peer.startTLS("b.test", "a.test")
        good = dialbackKey(secret, "b.test", "a.test", "stream-1")
        peer.send(f"<db:verify from='b.test' to='a.test' id='stream-1'>{good}</db:verify>")
        assert "type='valid'" in peer.recvUntil(r"<db:verify [^>]*>")
        peer.send(f"<db:verify from='b.test' to='a.test' id='stream-2'>{good}</db:verify>")
        assert "type='invalid'" in peer.recvUntil(r"<db:verify [^>]*>")


def test_noTracebacks(net):
    """None of the above left an unhandled error in any server's log."""
    for server in net.servers.values():
        log = server.log()
        assert "Traceback" not in log and "Unhandled" not in log, log


# -- in process ---------------------------------------------------------------------


def test_federationConfig():
    """[listen] s2s turns federation on; [s2s] hosts maps domains to host:port, checked."""
    assert parseConfig({}).s2s == () and parseConfig({}).federation == FederationOptions()
    config = parseConfig({"listen": {"s2s": ["tcp:5269"]},
                          "s2s": {"hosts": {"Example.ORG": "127.0.0.1:5270", "v6.test": "[::1]:5271",
                                            "plain.test": "xmpp.plain.test"},
                                  "idle_timeout": "5m"}})
    assert config.s2s == ("tcp:5269",)
    assert config.federation.hosts == {"example.org": ("127.0.0.1", 5270), "v6.test": ("::1", 5271),
                                       "plain.test": ("xmpp.plain.test", 5269)}
    assert config.federation.idle_timeout == 300
    for hosts, expected in (({"a@b": "127.0.0.1:1"}, "not a domain name"),
                            ({"b.test": "127.0.0.1:99999"}, "port must be"),
                            ({"b.test": "::1:5269"}, "[address]:port"),
                            ({"b.test": 5269}, "expected a string")):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parseConfig({"s2s": {"hosts": hosts}})
    with pytest.raises(ConfigError, match="s2s.trust"):
        parseConfig({"s2s": {"trust": "/nonexistent/ca.pem"}})
    with pytest.raises(ConfigError, match="unknown option s2s.timeout"):
        parseConfig({"s2s": {"timeout": 3}})


def test_retarget():
    """
    Between servers stanzas are jabber:server: the copy sent has the new
    namespace wherever the old one was, and the original (whose children a
    presence broadcast shares with other recipients) is left as it was.
    """
    stanza = domish.Element(("jabber:client", "message"))
    stanza["to"] = "bob@b.test"
    body = stanza.addElement("body", content="hi")
    stanza.addElement(("urn:xmpp:chat-markers:0", "markable"))
    copy = retarget(stanza, "jabber:client", "jabber:server")
    assert copy.toXml() == ("<message xmlns='jabber:server' to='bob@b.test'><body>hi</body>"
                            "<markable xmlns='urn:xmpp:chat-markers:0'/></message>")
    assert stanza.uri == body.uri == "jabber:client" and body.parent is stanza
    assert next(copy.elements()).parent is copy


def test_serverConnectionsCappedPerAddress(serverFactory):
    """
    Incoming server connections go through the same limiter as clients: past
    the per-address cap a peer is refused with a stream error, and freeing a
    connection lets the next one in.
    """
    server = serverFactory('s2s = ["tcp:0:interface=127.0.0.1"]\n'
                           '[limits]\nmax_connections_per_address = 2\nallowlist = []\n',
                           "--domain", "a.test")
    port = server.ports["Servers"]
    header = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
              "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
              "to='a.test' from='peer.test' version='1.0'>")
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(header.encode())
            assert b"<stream:features" in sock.recv(65536)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            refused = b""
            while chunk := third.recv(65536):
                refused += chunk
            assert b"policy-violation" in refused or b"resource-constraint" in refused
        held.pop().close()
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as again:
            again.sendall(header.encode())
            assert b"<stream:features" in again.recv(65536)
    finally:
        for sock in held:
            sock.close()
