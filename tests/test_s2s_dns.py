"""
Federation through DNS, end to end: invitesrv processes that find each
other only through a real DNS server (dnsmasq, started by the test on a
loopback port and named in C{[s2s] dns_servers}), with no static host map.

- a.test and b.test publish C{_xmpp-server._tcp} SRV records; b.test's
  first target refuses connections (so the second is used), and its second
  has an AAAA record where nobody listens and an A record where b.test does
  (both families tried). b.test gets its listener from C{--s2s}.
- c.test publishes no SRV record, only an AAAA record: it is reached on the
  fallback port (C{[s2s] fallback_port}, since the test cannot take 5269 on
  a shared machine; it stands for 5269).
- nowhere.test does not exist (NXDOMAIN) and none.test has a C{.} SRV
  target: both bounce at once with C{remote-server-not-found}.
- e.test's DNS server is a UDP socket that never answers: its users get
  C{remote-server-timeout} once the lookups time out.
- s.test, x.test and h.test require valid certificates from a test CA:
  s.test's names it only by SRV-ID and x.test's only by XmppAddr (both
  valid), h.test's only by a DNS-ID of its SRV target (not valid for h.test).
- A private Prosody 0.12 is found only through DNS too, over XEP-0368 direct
  TLS (C{_xmpps-server._tcp}) ahead of STARTTLS; Prosody reaches us back
  through the small static-hosts plugin of C{test_s2s_prosody.py}.

Skipped when dnsmasq (Debian package C{dnsmasq-base}) is not installed.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import RunningServer, startAll
from cryptography import x509
from dnsserver import Dnsmasq, needsDnsmasq
from test_roster import addUsers, errorCondition
from test_s2s import chat, freePort, online, writeCertificates
from test_s2s_identity import srvID, xmppAddr
from test_s2s_prosody import DOMAIN, PROSODY, Prosody, prosodyOnline

pytestmark = needsDnsmasq


def dnsFederated(domain: str, dnsServer: str, extra: str = "", listen: int | None = None,
                 connectTimeout: str = "5s") -> str:
    """Extra TOML for a test server that finds its peers through C{dnsServer} only."""
    listener = f's2s = ["tcp:{listen}:interface=127.0.0.1"]\n' if listen else ""
    return (f'{listener}[s2s]\ndns_servers = ["{dnsServer}"]\nconnect_timeout = "{connectTimeout}"\n'
            f'{extra}[hosts."{domain}"]\n')


class DNSNetwork:
    """dnsmasq, the servers it names, and the silent DNS server of e.test."""

    def __init__(self, root):
        self.ports = ports = {name: freePort() for name in ("a.test", "b.test", "c.test", "down")}
        self.dns = Dnsmasq(root, [
            f"srv-host=_xmpp-server._tcp.a.test,xmpp.a.test,{ports['a.test']},10,0",
            "host-record=xmpp.a.test,127.0.0.1",
            f"srv-host=_xmpp-server._tcp.b.test,down.b.test,{ports['down']},10,0",
            f"srv-host=_xmpp-server._tcp.b.test,xmpp.b.test,{ports['b.test']},20,0",
            "host-record=down.b.test,127.0.0.1",
            "host-record=xmpp.b.test,127.0.0.1,::1",
            "host-record=c.test,::1",
            "srv-host=_xmpp-server._tcp.none.test",
        ]).start()
        self.silentDNS = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.silentDNS.bind(("127.0.0.1", 0))  # reads nothing, answers nothing
        silent = f"127.0.0.1:{self.silentDNS.getsockname()[1]}"
        fallback = f"fallback_port = {ports['c.test']}\n"
        self.servers = {}
        for domain, config, args in (
                ("a.test", dnsFederated("a.test", self.dns.address, fallback, ports["a.test"]), ()),
                ("b.test", dnsFederated("b.test", self.dns.address, fallback),
                 ("--s2s", f"tcp:{ports['b.test']}:interface=127.0.0.1")),
                ("c.test", f's2s = ["tcp:{ports["c.test"]}:interface=\\\\:\\\\:1"]\n'
                           + dnsFederated("c.test", self.dns.address), ()),
                ("e.test", dnsFederated("e.test", silent, listen=freePort(), connectTimeout="30s"), ())):
            (root / domain).mkdir()
            self.servers[domain] = RunningServer(root / domain, config, args)
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
        self.dns.stop()
        self.silentDNS.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """The network of L{DNSNetwork}, one user on each server."""
    network = DNSNetwork(tmp_path_factory.mktemp("dns-federation"))
    try:
        addUsers(network["a.test"], "alice@a.test")
        addUsers(network["b.test"], "bob@b.test")
        addUsers(network["c.test"], "carol@c.test")
        addUsers(network["e.test"], "erin@e.test")
        yield network
    finally:
        network.stop()


def bounced(client, stanzaID: str, timeout: float = 10):
    """The error that came back for the stanza C{stanzaID}, and how long it took."""
    started = time.monotonic()
    reply = client.expect(lambda e: e.getAttribute("id") == stanzaID, timeout=timeout)
    return errorCondition(reply), time.monotonic() - started


def test_chatThroughSRV(net):
    """
    a.test and b.test find each other through SRV records and chat; a.test
    first tries b.test's first target (refused), then its second, whose
    IPv6 address refuses and whose IPv4 address answers.
    """
    alice, bob = online(net["a.test"], "alice@a.test"), online(net["b.test"], "bob@b.test")
    chat(alice, bob, "found you in DNS")
    chat(bob, alice, "and I found you")
    log = net["a.test"].log()
    assert f"Cannot connect to down.b.test:{net.ports['down']} for b.test" in log
    assert "Outgoing stream from a.test to b.test authenticated by dialback" in log
    assert "Outgoing stream from b.test to a.test authenticated by dialback" in net["b.test"].log()
    queries = net.dns.log()
    for name in ("_xmpp-server._tcp.b.test", "_xmpps-server._tcp.b.test", "xmpp.b.test",
                 "_xmpp-server._tcp.a.test"):
        assert f"query[SRV] {name}" in queries or f"query[A] {name}" in queries, name
    assert "query[AAAA] xmpp.b.test" in queries
    alice.close()
    bob.close()


def test_fallbackToAddressRecords(net):
    """c.test has no SRV record: a.test connects to its AAAA address on the fallback port."""
    alice, carol = online(net["a.test"], "alice@a.test", "fallback"), online(net["c.test"], "carol@c.test")
    chat(alice, carol, "no SRV needed")
    chat(carol, alice, "indeed")
    assert "query[AAAA] c.test" in net.dns.log()
    alice.close()
    carol.close()


def test_nonexistentDomainBouncesAtOnce(net):
    """NXDOMAIN everywhere, or a "." SRV target: remote-server-not-found, without waiting."""
    alice = online(net["a.test"], "alice@a.test", "lost")
    for domain in ("nowhere.test", "none.test"):
        alice.send(f"<message to='someone@{domain}' id='{domain}'><body>anyone?</body></message>")
        condition, took = bounced(alice, domain)
        assert condition == "remote-server-not-found" and took < 2, (domain, condition, took)
    assert "none.test offers no server-to-server service" in net["a.test"].log()
    alice.close()


def test_silentDNSIsATimeout(net):
    """
    e.test's DNS never answers: its user gets remote-server-timeout when
    the lookups time out (9 s, well before connect_timeout's 30 s), not
    remote-server-not-found.
    """
    erin = online(net["e.test"], "erin@e.test")
    erin.send("<message to='alice@a.test' id='silent'><body>hello?</body></message>")
    condition, took = bounced(erin, "silent", timeout=20)
    assert condition == "remote-server-timeout"
    assert 8 < took < 15, took
    erin.close()


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """
    s.test, x.test and h.test, found through SRV records pointing to
    xmpp.<domain>, requiring valid certificates from a test CA: s.test's
    names it only by SRV-ID, x.test's only by XmppAddr, and h.test's only by
    a DNS-ID of its SRV target xmpp.h.test.
    """
    root = tmp_path_factory.mktemp("dns-certificates")
    domains = ("s.test", "x.test", "h.test")
    ca = writeCertificates(root, list(domains), {"s.test": [srvID("_xmpp-server.s.test")],
                                                 "x.test": [xmppAddr("x.test")],
                                                 "h.test": [x509.DNSName("xmpp.h.test")]})
    ports = {domain: freePort() for domain in domains}
    dns = Dnsmasq(root, [line for domain in domains for line in (
        f"srv-host=_xmpp-server._tcp.{domain},xmpp.{domain},{ports[domain]},0,0",
        f"host-record=xmpp.{domain},127.0.0.1")])
    servers = {}
    for domain in domains:
        (root / domain).mkdir()
        servers[domain] = RunningServer(root / domain, dnsFederated(
            domain, dns.address, f'trust = "{ca}"\nrequire_valid_certificates = true\n'
            f'[tls]\ncertificate = "{root / (domain + ".crt")}"\nkey = "{root / (domain + ".key")}"\n',
            listen=ports[domain]))
    try:
        dns.start()
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(RunningServer.start, servers.values()))
        for domain in domains:
            addUsers(servers[domain], f"user@{domain}")
        yield servers
    finally:
        for server in servers.values():
            server.stop()
        dns.stop()


def test_certificateNamesFromTheStream(strict):
    """
    A certificate naming its domain only by SRV-ID, or only by XmppAddr, is
    valid (SASL EXTERNAL both ways); one naming only the SRV target host is
    not valid for the domain, so s.test refuses to talk to h.test.
    """
    s, x = online(strict["s.test"], "user@s.test"), online(strict["x.test"], "user@x.test")
    chat(s, x, "my certificate has an SRV-ID")
    chat(x, s, "mine an XmppAddr")
    for server, local, remote in ((strict["s.test"], "s.test", "x.test"),
                                  (strict["x.test"], "x.test", "s.test")):
        assert f"Outgoing stream from {local} to {remote} authenticated by SASL EXTERNAL" in server.log()
    s.send("<message to='user@h.test' id='h'><body>and you?</body></message>")
    condition, _ = bounced(s, "h")
    assert condition == "remote-server-not-found"
    assert "the certificate of h.test is not valid" in strict["s.test"].log()
    s.close()
    x.close()


@pytest.fixture(scope="module")
def prosodyPair(tmp_path_factory):
    """
    a.test (invitesrv) and prosody.test (Prosody), which a.test finds only
    through DNS: a direct TLS SRV record ahead of a STARTTLS one.
    """
    if not PROSODY.exists():
        pytest.skip("Prosody is not installed (apt-get install -y prosody)")
    root = tmp_path_factory.mktemp("dns-prosody")
    ours = freePort()
    (root / "prosody").mkdir()
    prosody = Prosody(root / "prosody", ours, directTLS=True)
    dns = Dnsmasq(root, [
        f"srv-host=_xmpps-server._tcp.{DOMAIN},xmpp.{DOMAIN},{prosody.s2sDirectTLS},5,0",
        f"srv-host=_xmpp-server._tcp.{DOMAIN},xmpp.{DOMAIN},{prosody.s2s},10,0",
        f"host-record=xmpp.{DOMAIN},127.0.0.1",
    ])
    (root / "invitesrv").mkdir()
    server = RunningServer(root / "invitesrv", dnsFederated("a.test", dns.address, listen=ours))
    try:
        dns.start()
        prosody.register("bob")
        prosody.start()
        server.start()
        addUsers(server, "alice@a.test")
        yield server, prosody
    finally:
        server.stop()
        prosody.stop()
        dns.stop()


def test_chatWithProsodyFoundThroughDNS(prosodyPair):
    """Chat both ways with a Prosody that a.test reached through SRV records, over direct TLS."""
    server, prosody = prosodyPair
    alice, bob = online(server, "alice@a.test"), prosodyOnline(prosody, "bob")
    chat(alice, bob, "found through DNS")
    chat(bob, alice, "hello invitesrv")
    log = server.log()
    assert f"Connected to {DOMAIN} at xmpp.{DOMAIN}:{prosody.s2sDirectTLS} (direct TLS)" in log
    assert f"Outgoing stream from a.test to {DOMAIN} authenticated by dialback" in log
    assert f"Outgoing s2s connection {DOMAIN}->a.test complete" in prosody.log()
    assert f"Incoming s2s connection a.test->{DOMAIN} complete" in prosody.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
    alice.close()
    bob.close()


def test_noTracebacks(net):
    """Nothing above left an unhandled error in a server's log."""
    for server in net.servers.values():
        log = server.log()
        assert "Traceback" not in log and "Unhandled" not in log, log
