"""
Finding a remote domain's server (L{invitesrv.xmpp.resolve}) in memory, on
a L{Clock}: SRV order and the C{.} target, XEP-0368 direct TLS records
mixed in, the A/AAAA fallback, addresses interleaved IPv6 first and fed to
the connection race without the system resolver, DNS timeouts as their own
error (the sender hears remote-server-timeout), and the bounded cache
honouring TTLs. The same code against a real DNS server is in
C{test_s2s_dns.py}.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, error
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.names import client, dns, hosts
from twisted.names import error as dnsError
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from invitesrv.xmpp.resolve import (
    CACHE_MAX_TTL,
    DNS_TIMEOUTS,
    BoundedCache,
    DNSTimeout,
    NoXMPPService,
    Resolver,
    Target,
    interleave,
    srvOrder,
)
from invitesrv.xmpp.s2s.service import S2SService


def srv(name: str, priority: int, weight: int, port: int, target: str, ttl: int = 60) -> dns.RRHeader:
    """An SRV record as a DNS answer carries it."""
    return dns.RRHeader(name, dns.SRV, payload=dns.Record_SRV(priority, weight, port, target, ttl), ttl=ttl)


def a(name: str, address: str, ttl: int = 60) -> dns.RRHeader:
    """An A record."""
    return dns.RRHeader(name, dns.A, payload=dns.Record_A(address, ttl), ttl=ttl)


def aaaa(name: str, address: str, ttl: int = 60) -> dns.RRHeader:
    """An AAAA record."""
    return dns.RRHeader(name, dns.AAAA, payload=dns.Record_AAAA(address, ttl), ttl=ttl)


def soa(zone: str, ttl: int, minimum: int) -> dns.RRHeader:
    """An SOA record, whose TTL and minimum bound how long a negative answer is kept."""
    return dns.RRHeader(zone, dns.SOA, payload=dns.Record_SOA(minimum=minimum, ttl=ttl), ttl=ttl)


class FakeDNS:
    """
    A DNS server in memory, queried the way C{twisted.names.client.Resolver}
    is: names it holds records for answer them (or nothing, for another
    type); other names do not exist (with C{authority} in the answer); names
    in C{silent} never answer, so the query fails as Twisted's does, with
    L{defer.TimeoutError}, once its timeouts have passed on the clock.
    """

    def __init__(self, clock, records=(), silent=(), authority=()):
        self.clock = clock
        self.records = list(records)
        self.silent = set(silent)
        self.authority = list(authority)
        self.queries: list[tuple[str, int]] = []

    def query(self, query, timeout=None):
        """Answer as described above, noting the query."""
        timeout = timeout or DNS_TIMEOUTS
        name = str(query.name)
        self.queries.append((name, query.type))
        if name in self.silent:
            d = defer.Deferred()
            self.clock.callLater(sum(timeout), d.errback, defer.TimeoutError(query))
            return d
        known = [record for record in self.records if str(record.name) == name]
        if not known:
            message = dns.Message(rCode=dns.ENAME)
            message.authority = self.authority
            return defer.fail(dnsError.DNSNameError(message))
        answers = [record for record in known if record.type == query.type]
        return defer.succeed((answers, [] if answers else self.authority, []))


def resolverWith(*records, silent=(), clock=None, **options) -> tuple[Resolver, FakeDNS]:
    """A L{Resolver} over a L{FakeDNS} holding C{records}, through the real cache."""
    clock = clock or Clock()
    fake = FakeDNS(clock, records, silent)
    return Resolver(clock, {}, dnsResolver=BoundedCache(fake, clock), **options), fake


def resolved(d: defer.Deferred):
    """The result of a Deferred that has fired (raising its failure)."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


# -- order ---------------------------------------------------------------------------


def test_srvOrder():
    """SRV targets: lower priority first; within one, a draw weighted by weight (RFC 2782)."""
    records = [dns.Record_SRV(20, 0, 5269, "backup.test"), dns.Record_SRV(10, 1, 5269, "light.test"),
               dns.Record_SRV(10, 9, 5270, "heavy.test")]
    names = lambda ordered: [str(record.target) for record in ordered]  # noqa: E731
    assert names(srvOrder(records, choose=lambda: 0.5)) == ["heavy.test", "light.test", "backup.test"]
    assert names(srvOrder(records, choose=lambda: 0.05)) == ["light.test", "heavy.test", "backup.test"]
    zero = [dns.Record_SRV(5, 0, 1, "one.test"), dns.Record_SRV(5, 0, 2, "two.test")]
    assert sorted(names(srvOrder(zero))) == ["one.test", "two.test"]


def test_interleave():
    """Address families alternate, IPv6 first, whatever is left of the longer list last."""
    assert interleave(["::1", "::2"], ["1", "2", "3", "4"]) == ["::1", "1", "::2", "2", "3", "4"]
    assert interleave([], ["1"]) == ["1"] and interleave(["::1"], []) == ["::1"]


def test_starttlsAndDirectTLSRecordsMixed():
    """
    _xmpp-server and _xmpps-server records (XEP-0368) are ordered together
    by priority; each target says whether TLS starts at once.
    """
    resolver, fake = resolverWith(
        srv("_xmpp-server._tcp.example.test", 20, 0, 5269, "starttls.example.test"),
        srv("_xmpps-server._tcp.example.test", 10, 0, 5270, "direct.example.test"),
        srv("_xmpp-server._tcp.example.test", 30, 0, 5269, "backup.example.test"))
    assert resolved(resolver.resolve("example.test")) == [
        Target("direct.example.test", 5270, True), Target("starttls.example.test", 5269, False),
        Target("backup.example.test", 5269, False)]
    assert sorted(fake.queries) == [("_xmpp-server._tcp.example.test", dns.SRV),
                                    ("_xmpps-server._tcp.example.test", dns.SRV)]


def test_staticHostsNeedNoDNS():
    """A domain in [s2s] hosts goes where the map says; nothing is looked up."""
    clock = Clock()
    fake = FakeDNS(clock)
    resolver = Resolver(clock, {"mapped.test": ("127.0.0.1", 5999)}, dnsResolver=fake)
    assert resolved(resolver.resolve("mapped.test")) == [Target("127.0.0.1", 5999)]
    assert fake.queries == []


# -- no records, no service --------------------------------------------------------------


def test_noSRVFallsBackToTheDomain():
    """No SRV records at all: the domain itself, on the fallback port (5269 unless configured)."""
    resolver, _ = resolverWith(a("plain.test", "192.0.2.1"))
    assert resolved(resolver.resolve("plain.test")) == [Target("plain.test", 5269)]
    resolver, _ = resolverWith(fallbackPort=5999)
    assert resolved(resolver.resolve("Bücher.test")) == [Target("xn--bcher-kva.test", 5999)]


def test_dotTargetMeansNoService():
    """
    A single "." _xmpp-server target: the domain does not federate (no
    fallback), unless it offers direct TLS records; a "." _xmpps-server
    target only says there is no direct TLS.
    """
    resolver, _ = resolverWith(srv("_xmpp-server._tcp.none.test", 0, 0, 0, ""))
    with pytest.raises(NoXMPPService, match="none.test offers no server-to-server service"):
        resolved(resolver.resolve("none.test"))
    resolver, _ = resolverWith(srv("_xmpp-server._tcp.tls.test", 0, 0, 0, ""),
                               srv("_xmpps-server._tcp.tls.test", 5, 0, 5270, "xmpp.tls.test"))
    assert resolved(resolver.resolve("tls.test")) == [Target("xmpp.tls.test", 5270, True)]
    resolver, _ = resolverWith(srv("_xmpps-server._tcp.plain.test", 0, 0, 0, ""))
    assert resolved(resolver.resolve("plain.test")) == [Target("plain.test", 5269)]


def test_srvTimeoutIsATimeout():
    """
    A DNS server that never answers the _xmpp-server query: L{DNSTimeout}
    once the query's timeouts (9 s) are spent, not before, and not a
    fallback to the domain's addresses.
    """
    clock = Clock()
    resolver, fake = resolverWith(silent={"_xmpp-server._tcp.slow.test", "_xmpps-server._tcp.slow.test"},
                                  clock=clock)
    d = resolver.resolve("slow.test")
    clock.advance(sum(DNS_TIMEOUTS) - 0.1)
    assert not d.called
    clock.advance(0.2)
    with pytest.raises(DNSTimeout):
        resolved(d)
    assert ("slow.test", dns.A) not in fake.queries


def test_directTLSTimeoutLeavesStartTLS():
    """The direct TLS lookup timing out does not stop the STARTTLS records from being used."""
    clock = Clock()
    resolver, _ = resolverWith(srv("_xmpp-server._tcp.half.test", 0, 0, 5269, "xmpp.half.test"),
                               silent={"_xmpps-server._tcp.half.test"}, clock=clock)
    d = resolver.resolve("half.test")
    clock.advance(sum(DNS_TIMEOUTS) + 1)
    assert resolved(d) == [Target("xmpp.half.test", 5269)]


# -- addresses ----------------------------------------------------------------------------


def test_addresses():
    """AAAA and A records, interleaved IPv6 first; an address needs no lookup; none is an error."""
    resolver, fake = resolverWith(aaaa("dual.test", "::1"), aaaa("dual.test", "2001:db8::2"),
                                  a("dual.test", "127.0.0.1"), a("v4.test", "127.0.0.2"))
    assert resolved(resolver.addresses("dual.test")) == ["::1", "127.0.0.1", "2001:db8::2"]
    assert resolved(resolver.addresses("v4.test")) == ["127.0.0.2"]
    count = len(fake.queries)
    assert resolved(resolver.addresses("::1")) == ["::1"]
    assert resolved(resolver.addresses("127.0.0.1")) == ["127.0.0.1"]
    assert len(fake.queries) == count
    with pytest.raises(error.DNSLookupError) as raised:
        resolved(resolver.addresses("nowhere.test"))
    assert not isinstance(raised.value, DNSTimeout)


def test_addressesTimeout():
    """No address and a lookup that timed out: L{DNSTimeout}, so the sender hears "timeout"."""
    clock = Clock()
    resolver, _ = resolverWith(silent={"slow.test"}, clock=clock)
    d = resolver.addresses("slow.test")
    clock.advance(sum(DNS_TIMEOUTS) + 1)
    with pytest.raises(DNSTimeout):
        resolved(d)


def test_connectRacesAddressesFromTheInjectedDNS():
    """
    L{Resolver.connect} connects to the addresses the injected DNS gave,
    IPv6 first and IPv4 0.3 s later (happy eyeballs), through the reactor
    it was given; the system resolver is never asked. Direct TLS targets
    get a factory that knows it, and are skipped when direct TLS is off.
    """
    reactor = MemoryReactorClock()
    fake = FakeDNS(reactor, [srv("_xmpps-server._tcp.ex.test", 0, 0, 5270, "xmpp.ex.test"),
                             srv("_xmpp-server._tcp.ex.test", 10, 0, 5269, "xmpp.ex.test"),
                             aaaa("xmpp.ex.test", "::1"), a("xmpp.ex.test", "127.0.0.1")])
    resolver = Resolver(reactor, {}, dnsResolver=BoundedCache(fake, reactor))
    targets = []

    def factoryFor(target):
        """Note which target each connection attempt is for."""
        targets.append(target)
        return Factory.forProtocol(Protocol)

    d = resolver.connect("ex.test", factoryFor, timeout=10)
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("::1", 5270)]
    reactor.advance(0.3)
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("::1", 5270), ("127.0.0.1", 5270)]
    assert targets == [Target("xmpp.ex.test", 5270, True)]
    d.cancel()
    d.addErrback(lambda failure: None)

    reactor = MemoryReactorClock()
    fake.clock = reactor
    resolver = Resolver(reactor, {}, dnsResolver=BoundedCache(fake, reactor))
    targets.clear()
    resolver.connect("ex.test", factoryFor, timeout=10, directTLS=False).addErrback(lambda failure: None)
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("::1", 5269)]
    assert targets == [Target("xmpp.ex.test", 5269, False)]


def test_dnsClient():
    """
    The DNS client is made with the injected reactor (the old
    C{createResolver(reactor=...)} call raised a TypeError on current
    Twisted): /etc/hosts first, then [s2s] dns_servers, or without them the
    servers of the system's resolv.conf.
    """
    clock = Clock()
    hostsFile, cache = Resolver(clock, {}, servers=[("127.0.0.1", 5353), ("::1", 53)]).dns.resolvers
    assert isinstance(hostsFile, hosts.Resolver) and hostsFile.file == b"/etc/hosts"
    configured = cache.resolver
    assert isinstance(configured, client.Resolver) and configured._reactor is clock
    assert configured.servers == [("127.0.0.1", 5353), ("::1", 53)] and configured.resolv is None
    assert configured.timeout == DNS_TIMEOUTS
    system = Resolver(clock, {}).dns.resolvers[1].resolver
    assert system.resolv == "/etc/resolv.conf" and system.servers == [] and system._reactor is clock


# -- the cache ------------------------------------------------------------------------------


def test_cacheHonoursTTL():
    """An answer is reused for its smallest TTL, then asked again."""
    clock = Clock()
    fake = FakeDNS(clock, [a("host.test", "127.0.0.1", ttl=30), a("host.test", "127.0.0.2", ttl=60)])
    cache = BoundedCache(fake, clock)
    first = resolved(cache.lookupAddress("host.test"))
    clock.advance(29)
    assert resolved(cache.lookupAddress("HOST.test")) == first
    assert len(fake.queries) == 1
    clock.advance(2)
    resolved(cache.lookupAddress("host.test"))
    assert len(fake.queries) == 2


def test_cacheCapsTTLAndSize():
    """No answer outlives CACHE_MAX_TTL, and the least recently used answers go first."""
    clock = Clock()
    fake = FakeDNS(clock, [a(f"h{n}.test", "127.0.0.1", ttl=10 ** 8) for n in range(3)])
    cache = BoundedCache(fake, clock, size=2)
    for name in ("h0.test", "h1.test", "h0.test", "h2.test"):
        resolved(cache.lookupAddress(name))
    assert len(cache.entries) == 2
    assert fake.queries == [("h0.test", dns.A), ("h1.test", dns.A), ("h2.test", dns.A)]
    resolved(cache.lookupAddress("h1.test"))  # dropped when h2 came
    assert len(fake.queries) == 4
    clock.advance(CACHE_MAX_TTL + 1)
    resolved(cache.lookupAddress("h0.test"))
    assert len(fake.queries) == 5


def test_cacheNegativeAnswers():
    """
    "No such name" is kept as long as the zone's SOA says (the smaller of
    its TTL and minimum, RFC 2308), not at all without an SOA; timeouts are
    never kept.
    """
    clock = Clock()
    fake = FakeDNS(clock, authority=[soa("test", ttl=300, minimum=60)], silent={"slow.test"})
    cache = BoundedCache(fake, clock)
    for _ in range(2):
        with pytest.raises(dnsError.DNSNameError):
            resolved(cache.lookupAddress("gone.test"))
    assert len(fake.queries) == 1
    clock.advance(61)
    with pytest.raises(dnsError.DNSNameError):
        resolved(cache.lookupAddress("gone.test"))
    assert len(fake.queries) == 2
    fake.authority = []
    for _ in range(2):
        with pytest.raises(dnsError.DNSNameError):
            resolved(cache.lookupAddress("other.test"))
    assert len(fake.queries) == 4
    for _ in range(2):
        d = cache.lookupAddress("slow.test")
        clock.advance(sum(DNS_TIMEOUTS))
        with pytest.raises(defer.TimeoutError):
            resolved(d)
    assert len(fake.queries) == 6


# -- what the sender hears --------------------------------------------------------------


@pytest.mark.parametrize("silent, after, condition", [
    ({"_xmpp-server._tcp.far.test", "_xmpps-server._tcp.far.test"}, sum(DNS_TIMEOUTS),
     "remote-server-timeout"),
    ((), 0, "remote-server-not-found"),
])
def test_federationBounces(servers, silent, after, condition):
    """
    A stanza for a domain whose DNS never answers bounces with
    remote-server-timeout once the lookups time out (9 s, before the 30 s
    connect_timeout); one for a domain that does not exist bounces with
    remote-server-not-found at once.
    """
    clock = Clock()
    federation = S2SService(servers(clock), reactor=clock)
    federation.resolver = Resolver(clock, {}, dnsResolver=BoundedCache(FakeDNS(clock, silent=silent), clock))
    bounced = []
    federation.bounce = lambda stanza, condition, text=None: bounced.append(condition)
    message = domish.Element(("jabber:client", "message"))
    message["from"], message["to"] = "alice@localhost/desk", "bob@far.test"
    federation.route(message, jid.JID("bob@far.test"))
    if after:
        clock.advance(after - 0.1)
        assert bounced == []
        clock.advance(0.2)
    assert bounced == [condition]
