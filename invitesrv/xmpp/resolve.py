"""
Where a remote XMPP domain's server listens (RFC 6120 section 3.2).

A domain named in the static map (C{[s2s] hosts}) goes where the map says,
with no DNS at all: that is how tests and private deployments federate. Any
other domain is looked up as C{_xmpp-server._tcp.<domain>} SRV records
(RFC 2782 order: priority, then a weighted random draw), falling back to
the domain itself on port 5269 when there are none; a single C{.} target
means the domain offers no XMPP service. Each candidate is tried in turn
with a L{HostnameEndpoint} (A and AAAA, happy eyeballs).

Wokkel's C{XMPPServerConnector} does the SRV part as a reconnecting
connector on the global reactor; endpoints give this module an injected
reactor, a timeout per attempt and cancellation.
"""

from __future__ import annotations

import random

from twisted.internet import defer, endpoints, error
from twisted.logger import Logger
from twisted.names import dns
from twisted.names import error as dnsError

from invitesrv.config import DEFAULT_S2S_PORT

log = Logger()

SRV_TIMEOUTS = (1, 3, 5)  # seconds per retry of an SRV query (Twisted's default adds up to a minute)


class NoXMPPService(error.ConnectError):
    """The domain says (SRV target C{.}) that it offers no server-to-server service."""


def srvOrder(records: list, choose=random.random) -> list[tuple[str, int]]:
    """
    The targets of SRV records in the order RFC 2782 says to try them:
    by priority, and within one priority by a draw weighted by C{weight}.
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
            ordered.append((str(record.target), record.port))
            group.pop(index)
    return ordered


class Resolver:
    """
    Finds and connects to the server of a remote domain.

    @ivar static: domain -> (host, port), from C{[s2s] hosts}.
    """

    def __init__(self, reactor, static: dict[str, tuple[str, int]], dnsResolver=None):
        self.reactor = reactor
        self.static = dict(static)
        self._dns = dnsResolver

    @property
    def dns(self):
        """The DNS client, made on first use: a server that never looks anything up reads no resolv.conf."""
        if self._dns is None:
            from twisted.names import client
            self._dns = client.createResolver(reactor=self.reactor)
        return self._dns

    @defer.inlineCallbacks
    def resolve(self, domain: str):
        """Fire with the (host, port) candidates for C{domain}, best first."""
        if domain in self.static:
            return [self.static[domain]]
        ascii = domain.encode("idna").decode("ascii")
        try:
            answers, _, _ = yield self.dns.lookupService(f"_xmpp-server._tcp.{ascii}",
                                                         timeout=SRV_TIMEOUTS)
        except (dnsError.DomainError, dnsError.DNSQueryTimeoutError, dnsError.DNSServerError,
                dnsError.DNSNameError, dnsError.DNSQueryRefusedError, defer.TimeoutError) as e:
            log.debug("No SRV records for {domain} ({error})", domain=domain, error=e)
            answers = []
        records = [answer.payload for answer in answers if answer.type == dns.SRV]
        if len(records) == 1 and str(records[0].target) in ("", "."):
            raise NoXMPPService(string=f"{domain} offers no server-to-server service")
        if not records:
            return [(ascii, DEFAULT_S2S_PORT)]
        return srvOrder(records)

    @defer.inlineCallbacks
    def connect(self, domain: str, factory, timeout: float):
        """
        Connect C{factory} to the server of C{domain}, trying each candidate;
        fire with the protocol, or fail with the last candidate's error.
        """
        targets = yield self.resolve(domain)
        failure = None
        for host, port in targets:
            endpoint = endpoints.HostnameEndpoint(self.reactor, host, port, timeout=timeout)
            try:
                protocol = yield endpoint.connect(factory)
            except (error.ConnectError, error.DNSLookupError, error.TimeoutError) as e:
                log.info("Cannot connect to {host}:{port} for {domain}: {error}", host=host,
                         port=port, domain=domain, error=e)
                failure = e
                continue
            return protocol
        raise failure
