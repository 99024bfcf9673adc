"""
Where a remote XMPP domain's server listens (RFC 6120 section 3.2, XEP-0368).

A domain named in the static map (C{[s2s] hosts}) goes where the map says,
with no DNS at all: that is how private deployments federate. Any other
domain is looked up as C{_xmpp-server._tcp.<domain>} (STARTTLS) and
C{_xmpps-server._tcp.<domain>} (direct TLS) SRV records, both sets in one
RFC 2782 order (priority, then a weighted random draw); a single C{.} target
of C{_xmpp-server} means the domain offers no server-to-server service.
Without SRV records the domain itself is tried on port 5269. Each target's
AAAA and A records are looked up too, and its addresses raced IPv6 first,
IPv4 next, a new attempt every 0.3 s (happy eyeballs, RFC 8305) by Twisted's
L{HostnameEndpoint}, fed the addresses found here.

Every lookup goes through one DNS client, built with the injected reactor:
C{/etc/hosts} first, then the servers of the system's C{/etc/resolv.conf}
or, when set, of C{[s2s] dns_servers} (tests point it at a DNS server they
start), behind a L{BoundedCache}. A lookup that times out fails with L{DNSTimeout}, which
the caller reports as C{remote-server-timeout}, not as a missing server.

Wokkel's C{XMPPServerConnector} does the SRV part as a reconnecting
connector on the global reactor, with the system's resolver for addresses;
this module gives the injected reactor, bounded timeouts and cancellation.
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
import random
import socket
from dataclasses import dataclass

from twisted.internet import defer, endpoints, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IReactorPluggableNameResolver
from twisted.names import client, common, dns, hosts, resolve
from twisted.names import error as dnsError
from zope.interface import implementer

from invitesrv.config import DEFAULT_S2S_PORT
from invitesrv.logs import logger

log = logger()

RESOLV_CONF = "/etc/resolv.conf"
HOSTS = b"/etc/hosts"
DNS_TIMEOUTS = (1, 3, 5)  # seconds per try of one query: 9 s in all (Twisted's default is a minute)
CACHE_SIZE = 1000  # answers kept; the least recently used go first
CACHE_MAX_TTL = 86400  # no answer is kept longer than a day, whatever its TTL says
MAX_TARGETS = 10  # SRV targets tried for one domain
MAX_ADDRESSES = 8  # addresses tried for one target
SERVICES = (("_xmpp-server._tcp", False), ("_xmpps-server._tcp", True))


class NoXMPPService(error.ConnectError):
    """The domain says (SRV target C{.}) that it offers no server-to-server service."""


class DNSTimeout(error.DNSLookupError):
    """The DNS did not answer in time: the server may exist, we could not find out."""


@dataclass(frozen=True)
class Target:
    """One place to try: a host name (or address), a port, and whether TLS starts at once."""

    host: str
    port: int
    directTLS: bool = False


# An SRV record's place in the order, and the target it names.
_Offer = collections.namedtuple("_Offer", "priority weight target")


def srvOrder(records: list, choose=random.random) -> list:
    """
    SRV records in the order RFC 2782 says to try them: by priority, and
    within one priority by a draw weighted by C{weight}.
    """
    ordered = []
    for priority in sorted({record.priority for record in records}):
        group = [record for record in records if record.priority == priority]
        while group:
            total = sum(record.weight for record in group)
            pick = choose() * total
            for index, record in enumerate(group):
                pick -= record.weight
                if pick < 0 or total == 0 or index == len(group) - 1:
                    break
            ordered.append(group.pop(index))
    return ordered


def interleave(first: list, second: list) -> list:
    """C{first[0], second[0], first[1], second[1], ...}: RFC 8305's order of address families."""
    return [item for pair in itertools.zip_longest(first, second) for item in pair if item is not None]


class BoundedCache(common.ResolverBase):
    """
    Answers of another resolver, kept for their TTL (at most
    L{CACHE_MAX_TTL}), at most L{CACHE_SIZE} of them, the least recently
    used dropped first. "No such name" and "no such record" are kept as long
    as the zone's SOA says (RFC 2308), or not at all without one; timeouts
    and server failures never.

    Twisted's C{CacheResolver} keeps every answer with a timer each and no
    bound; here the remote domains looked up are chosen by local users and
    their TTLs by remote zones, so both are capped.
    """

    def __init__(self, resolver, clock, size: int = CACHE_SIZE):
        common.ResolverBase.__init__(self)
        self.resolver = resolver
        self.clock = clock
        self.size = size
        self.entries: collections.OrderedDict = collections.OrderedDict()

    def _lookup(self, name, cls, type, timeout):
        """A kept answer (or "no such name") if still fresh, else the wrapped resolver's."""
        key = (name.lower(), cls, type)
        entry = self.entries.get(key)
        if entry is not None:
            expires, result = entry
            if expires > self.clock.seconds():
                self.entries.move_to_end(key)
                return defer.fail(result) if isinstance(result, Exception) else defer.succeed(result)
            del self.entries[key]
        d = self.resolver.query(dns.Query(name, type, cls), timeout)
        d.addCallbacks(self._answered, self._failed, (key,), None, (key,))
        return d

    def _answered(self, result, key):
        """Keep an answer for its smallest TTL; an empty one for the SOA's negative TTL."""
        answers, authority, _ = result
        ttl = min((record.ttl for record in answers), default=None) if answers \
            else self._negativeTTL(authority)
        self._keep(key, result, ttl)
        return result

    def _failed(self, failure, key):
        """Keep "no such name" for the SOA's negative TTL; pass every failure on."""
        if failure.check(dnsError.DNSNameError):
            message = failure.value.args[0] if failure.value.args else None
            if isinstance(message, dns.Message):
                self._keep(key, failure.value, self._negativeTTL(message.authority))
        return failure

    @staticmethod
    def _negativeTTL(authority) -> int | None:
        """How long a negative answer may be kept (RFC 2308 section 5); None without an SOA."""
        soas = [record for record in authority if record.type == dns.SOA]
        return min(soas[0].ttl, soas[0].payload.minimum) if soas else None

    def _keep(self, key, result, ttl: int | None) -> None:
        """Remember C{result} for C{ttl} seconds (capped), dropping the least recently used."""
        if not ttl:
            return
        self.entries[key] = (self.clock.seconds() + min(ttl, CACHE_MAX_TTL), result)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def makeDNSResolver(reactor, servers=()) -> resolve.ResolverChain:
    """
    The DNS client for federation: C{/etc/hosts} first (as the system's
    resolver would, for names in C{[s2s] hosts} and private SRV targets),
    then the DNS servers C{servers} ((address, port) pairs), else those of
    resolv.conf, behind a L{BoundedCache}.
    """
    if servers:
        dnsClient = client.Resolver(servers=list(servers), reactor=reactor, timeout=DNS_TIMEOUTS)
    else:
        dnsClient = client.Resolver(resolv=RESOLV_CONF, reactor=reactor, timeout=DNS_TIMEOUTS)
    return resolve.ResolverChain([hosts.Resolver(HOSTS), BoundedCache(dnsClient, reactor)])


@implementer(IHostResolution)
class _Resolution:
    """A resolution of known addresses: done as soon as it begins."""

    def __init__(self, name: str):
        self.name = name

    def cancel(self) -> None:
        """Nothing is in progress to stop."""


@implementer(IHostnameResolver, IReactorPluggableNameResolver)
class _KnownAddresses:
    """
    The reactor a L{HostnameEndpoint} sees: the real one's connections and
    time, but names resolve to the addresses already looked up here, so
    the system resolver is never asked.
    """

    def __init__(self, reactor, addresses: list[str]):
        self.connectTCP = reactor.connectTCP
        self.callLater = reactor.callLater
        self.seconds = reactor.seconds
        self.addresses = addresses
        self.nameResolver = self

    def installNameResolver(self, resolver):
        """Refused: the point of this reactor is that its names are already resolved."""
        raise NotImplementedError("the addresses are fixed")

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        """Hand the known addresses to C{receiver} at once, whatever C{hostName} is."""
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        for address in self.addresses:
            kind = IPv6Address if ":" in address else IPv4Address
            receiver.addressResolved(kind("TCP", address, portNumber))
        receiver.resolutionComplete()
        return resolution


class Resolver:
    """
    Finds and connects to the server of a remote domain.

    @ivar static: domain -> (host, port), from C{[s2s] hosts}.
    @ivar fallbackPort: the port tried when a domain has no SRV records.
    """

    def __init__(self, reactor, static: dict[str, tuple[str, int]], dnsResolver=None,
                 servers=(), fallbackPort: int = DEFAULT_S2S_PORT):
        self.reactor = reactor
        self.static = dict(static)
        self.servers = tuple(servers)
        self.fallbackPort = fallbackPort
        self._dns = dnsResolver

    @property
    def dns(self):
        """The DNS client, made on first use: a server that never looks anything up reads no resolv.conf."""
        if self._dns is None:
            self._dns = makeDNSResolver(self.reactor, self.servers)
        return self._dns

    @defer.inlineCallbacks
    def _query(self, lookup, name: str):
        """The answers of one lookup; [] when the name or record does not exist."""
        try:
            answers, _, _ = yield lookup(name, timeout=DNS_TIMEOUTS)
        except defer.TimeoutError as e:  # Twisted's, once the last try of the query is spent
            raise DNSTimeout(f"the DNS did not answer for {name}") from e
        except dnsError.DomainError as e:
            log.debug("No answer for {name} ({error})", name=name, error=e)
            return []
        return answers

    @defer.inlineCallbacks
    def resolve(self, domain: str):
        """
        Fire with the L{Target}s for C{domain}, best first. Fails with
        L{NoXMPPService} when the domain says it has none, or L{DNSTimeout}
        when the C{_xmpp-server} lookup timed out and no direct TLS record
        was found.
        """
        if domain in self.static:
            return [Target(*self.static[domain])]
        ascii = domain.encode("idna").decode("ascii")
        lookups = [self._query(self.dns.lookupService, f"{service}.{ascii}") for service, _ in SERVICES]
        lookups[1].addErrback(self._noDirectTLS, domain)
        (found, starttls), (directFound, direct) = yield defer.DeferredList(lookups, consumeErrors=True)
        if not directFound:
            direct.raiseException()
        if not found and not starttls.check(DNSTimeout):
            starttls.raiseException()
        offers, noService = [], False
        for answers, directTLS in ((starttls if found else [], False), (direct, True)):
            records = [answer.payload for answer in answers if answer.type == dns.SRV]
            if len(records) == 1 and str(records[0].target) in ("", "."):
                noService = noService or not directTLS  # "." for direct TLS: none of that kind
                continue
            offers += [_Offer(record.priority, record.weight,
                              Target(str(record.target), record.port, directTLS))
                       for record in records]
        if offers:
            return [offer.target for offer in srvOrder(offers)[:MAX_TARGETS]]
        if not found:
            starttls.raiseException()
        if noService:
            raise NoXMPPService(string=f"{domain} offers no server-to-server service")
        return [Target(ascii, self.fallbackPort)]

    def _noDirectTLS(self, failure, domain: str) -> list:
        """A failed direct TLS lookup leaves the STARTTLS records (or the fallback) to try."""
        failure.trap(DNSTimeout)
        log.info("No answer for the direct TLS records of {domain}", domain=domain)
        return []

    @defer.inlineCallbacks
    def addresses(self, host: str):
        """
        The IPv6 and IPv4 addresses of C{host}, interleaved IPv6 first, at
        most L{MAX_ADDRESSES}; fails with L{DNSTimeout} if there are none and
        a lookup timed out.
        """
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        lookups = [self._query(self.dns.lookupIPV6Address, host), self._query(self.dns.lookupAddress, host)]
        (v6ok, v6), (v4ok, v4) = yield defer.DeferredList(lookups, consumeErrors=True)
        for ok, result in ((v6ok, v6), (v4ok, v4)):
            if not ok and not result.check(DNSTimeout):
                result.raiseException()
        v6 = [socket.inet_ntop(socket.AF_INET6, answer.payload.address)
              for answer in (v6 if v6ok else []) if answer.type == dns.AAAA]
        v4 = [answer.payload.dottedQuad() for answer in (v4 if v4ok else []) if answer.type == dns.A]
        found = interleave(v6, v4)[:MAX_ADDRESSES]
        if found:
            return found
        if not (v6ok and v4ok):
            raise DNSTimeout(f"the DNS did not answer for {host}")
        raise error.DNSLookupError(f"{host} has no address")

    @defer.inlineCallbacks
    def connect(self, domain: str, factoryFor, timeout: float, directTLS: bool = True):
        """
        Connect to the server of C{domain}, trying each target in turn with a
        factory from C{factoryFor(target)}; fire with the protocol, or fail
        with the last target's error. Direct TLS targets are skipped unless
        C{directTLS}.
        """
        targets = [target for target in (yield self.resolve(domain)) if directTLS or not target.directTLS]
        failure = error.ConnectError(string=f"{domain} offers only direct TLS, which is not configured")
        for target in targets:
            try:
                addresses = yield self.addresses(target.host)
                endpoint = endpoints.HostnameEndpoint(_KnownAddresses(self.reactor, addresses),
                                                      target.host, target.port, timeout=timeout)
                protocol = yield endpoint.connect(factoryFor(target))
            except (error.ConnectError, error.DNSLookupError, error.TimeoutError) as e:
                log.info("Cannot connect to {host}:{port} for {domain}: {error}", host=target.host,
                         port=target.port, domain=domain, error=e)
                failure = e
                continue
            log.info("Connected to {domain} at {host}:{port} ({how})", domain=domain, host=target.host,
                     port=target.port, how="direct TLS" if target.directTLS else "STARTTLS")
            return protocol
        raise failure
