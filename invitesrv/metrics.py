"""
Metrics a monitoring system scrapes: an OpenMetrics/Prometheus endpoint on
its own listener (C{[listen] metrics}, meant for loopback or a private
network: it needs no key and names no user).

The server counts events in one place, L{invitesrv.limits.Metrics} (dotted
names such as C{auth.failed}, C{stanzas.in.message}); they are exported as
C{invitesrv_events_total{event="…"}}. Beside them: live gauges (connections,
sessions, hosts), registrations and invites by hooks, store latency, the
reactor's lag, and the process's memory, CPU and files (prometheus-client's
process collector). Each server has its own registry, so an embedding
application's metrics and several servers in one process stay apart.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.internet import task
from twisted.web import resource
from twisted.web import server as webserver

LAG_INTERVAL = 1.0  # seconds between reactor-lag probes


class ServerCollector:
    """Reads the server's event counters and live state at each scrape."""

    def __init__(self, server):
        self.server = server

    def describe(self):
        return []

    def collect(self):
        events = CounterMetricFamily("invitesrv_events", "Events the server counted, by name",
                                     labels=["event"])
        for name, value in sorted(self.server.metrics.items()):
            events.add_metric([name], value)
        yield events
        sessions = GaugeMetricFamily("invitesrv_sessions", "Bound client sessions", labels=["host"])
        counts = dict.fromkeys(self.server.hosts, 0)
        for resources in self.server.router.sessions.values():
            for session in resources.values():
                counts[session.host.name] = counts.get(session.host.name, 0) + 1
        for host, count in sorted(counts.items()):
            sessions.add_metric([host], count)
        yield sessions
        connections = GaugeMetricFamily("invitesrv_connections", "Open connections, by listener"
                                        " (all: every listener the connection limiter admits)",
                                        labels=["listener"])
        connections.add_metric(["all"], self.server.limiter.connections.total)
        counts: dict[str, int] = {}
        for listener in self.server.listeners:
            factory = getattr(listener.factory, "wrappedFactory", listener.factory)
            streams = getattr(factory, "streams", None)
            if streams is not None:
                counts[listener.kind] = counts.get(listener.kind, 0) + len(streams)
        for label, count in sorted(counts.items()):
            connections.add_metric([label], count)
        yield connections


class MetricsService(service.Service):
    """
    Owns the registry: hooks on every host count registrations (by path)
    and invites (created, used, expired); the store reports its latency; a
    looping call measures how late the reactor runs.
    """

    def __init__(self, server, reactor):
        self.server = server
        self.reactor = reactor
        self.registry = CollectorRegistry()
        self.registry.register(ServerCollector(server))
        ProcessCollector(registry=self.registry)
        self.registrations = Counter("invitesrv_registrations", "Accounts created, by path",
                                     ["host", "path"], registry=self.registry)
        self.invites = Counter("invitesrv_invites", "Invites created, used and expired",
                               ["host", "event"], registry=self.registry)
        self.storeLatency = Histogram("invitesrv_store_seconds", "Store operations, in seconds",
                                      registry=self.registry,
                                      buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                               0.1, 0.25, 0.5, 1, 2.5, 5))
        self.reactorLag = Histogram("invitesrv_reactor_lag_seconds",
                                    "How late a timer of the reactor fired", registry=self.registry,
                                    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
        self._hooks = [("user-registered", self._registered), ("invite-created", self._created),
                       ("invite-used", self._used), ("invite-expired", self._expired)]
        self._probe = task.LoopingCall(self._measureLag)
        self._probe.clock = reactor
        self._expected = None

    def resource(self) -> resource.Resource:
        """The scrape target: C{/metrics} (and the same at C{/})."""
        root = resource.Resource()
        metrics = MetricsResource(self.registry)
        root.putChild(b"metrics", metrics)
        root.putChild(b"", metrics)
        return root

    def site(self) -> webserver.Site:
        site = webserver.Site(self.resource())
        site.noisy = False
        site.displayTracebacks = False
        return site

    def startService(self):
        service.Service.startService(self)
        for host in self.server.hosts.values():
            for name, callback in self._hooks:
                host.hooks.add(name, callback)
        self.server.store.observeLatency = self.storeLatency.observe
        self._expected = self.reactor.seconds() + LAG_INTERVAL
        self._probe.start(LAG_INTERVAL, now=False)

    def stopService(self):
        for host in self.server.hosts.values():
            for name, callback in self._hooks:
                host.hooks.remove(name, callback)
        self.server.store.observeLatency = None
        if self._probe.running:
            self._probe.stop()
        return service.Service.stopService(self)

    def _measureLag(self) -> None:
        now = self.reactor.seconds()
        self.reactorLag.observe(max(0.0, now - self._expected))
        self._expected = now + LAG_INTERVAL

    def _registered(self, registration) -> None:
        self.registrations.labels(registration.host, registration.path).inc()

    def _created(self, invite, links) -> None:
        self.invites.labels(invite.host, "created").inc()

    def _used(self, invite, username, path) -> None:
        self.invites.labels(invite.host, "used").inc()

    def _expired(self, invite) -> None:
        self.invites.labels(invite.host, "expired").inc()
