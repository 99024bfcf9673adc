"""
Assembly: from a L{Config} to a running server, with or without twistd.

L{InviteServer} holds what one process shares (config, store, router,
virtual hosts, TLS). L{makeService} wraps it in a C{MultiService} of named
children, so an embedding application can take the pieces it wants:
C{"store"}, C{"hosts"}, C{"s2s"} (federation, when C{[listen] s2s} names a
listener), C{"c2s"}, C{"c2s-direct-tls"}, C{"http"} (invite pages, web
registration and the admin API), C{"metrics"} (the counters, logged every
C{limits.metrics_interval}) and C{"timers"}.
"""

from __future__ import annotations

import os
import resource
import secrets
from pathlib import Path

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from invitesrv.config import Config, ConfigError
from invitesrv.host import VirtualHost
from invitesrv.limits import Limiter, Metrics
from invitesrv.store.sqlite import SQLiteStore
from invitesrv.tls import loadContextFactory
from invitesrv.web.site import httpsFactory, makeSite
from invitesrv.xmpp.c2s import C2SFactory
from invitesrv.xmpp.router import Router
from invitesrv.xmpp.s2s.service import S2SService

log = Logger()


def loadSecret(path: Path) -> bytes:
    """A per-installation secret (created once, mode 0600) for derived values."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
        return secret


def raiseFileLimit() -> tuple[int, int]:
    """Raise the open-files limit to the hard limit: every client is a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        log.info("Open files limit raised from {old} to {new}", old=soft, new=target)
        return soft, target
    return soft, soft


class InviteServer:
    """
    One server: its virtual hosts with their modules, over one store. The
    C{limiter} holds its per-address and per-account limits and C{metrics}
    its event counters (shared by every host as C{host.metrics}).
    """

    def __init__(self, config: Config, store=None, reactor=None, loadModules: bool = True):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.clock = reactor
        self.store = store if store is not None else SQLiteStore(
            config.databasePath, reactor, busyTimeout=config.limits.store_busy_timeout)
        self.router = Router()
        self.tls = None
        self.secret = secrets.token_bytes(32)
        self.metrics = Metrics()
        self.limiter = Limiter(config.limits, reactor, self.metrics)
        self.hosts = {name: VirtualHost(name, options, config, self.store, self.router, reactor)
                      for name, options in config.hosts.items()}
        for host in self.hosts.values():
            host.metrics = self.metrics
        if loadModules:
            for host in self.hosts.values():
                host.loadModules(config.modules)

    def loadTLS(self) -> None:
        """Load the certificate, generating a self-signed one when none is configured."""
        config = self.config
        try:
            self.tls = loadContextFactory(config.certificatePath, config.keyPath, list(self.hosts),
                                          generate=config.tls_certificate is None,
                                          ciphers=config.tls_ciphers, groups=config.tls_groups)
        except ValueError as e:
            raise ConfigError(f"{config.source}: {e}") from None
        self.secret = loadSecret(config.data_dir / "server.secret")

    def c2sFactory(self, directTLS: bool = False):
        factory = C2SFactory(self, directTLS)
        if directTLS:
            return TLSMemoryBIOFactory(self.tls, False, factory)
        return factory


class StoreService(service.Service):
    """
    Opens the store first (children start in order and the listeners come
    last; under twistd in the privileged phase) and closes it at the end.
    """

    def __init__(self, store):
        self.store = store
        self.opened = False

    def privilegedStartService(self):
        if not self.opened:
            self.store.open()
            self.opened = True
            log.info("Store: {path}", path=self.store.path)

    def startService(self):
        self.privilegedStartService()
        service.Service.startService(self)

    def stopService(self):
        service.Service.stopService(self)
        if self.opened:
            self.store.close()
            self.opened = False


class HostsService(service.Service):
    """Starts the modules of every virtual host, before the listeners."""

    def __init__(self, server: InviteServer):
        self.server = server

    def privilegedStartService(self):
        for host in self.server.hosts.values():
            if not host.started:
                host.start()
                log.info("Serving {host} with modules {modules}", host=host.name,
                         modules=", ".join(host.modules))

    def startService(self):
        self.privilegedStartService()
        service.Service.startService(self)

    def stopService(self):
        service.Service.stopService(self)
        for host in self.server.hosts.values():
            host.stop()


class ListenerService(internet.StreamServerEndpointService):
    """An endpoint listener that logs the address it really got (port 0 too)."""

    def __init__(self, endpoint, factory, label: str):
        internet.StreamServerEndpointService.__init__(self, endpoint, factory)
        self.label = label
        self.port = None

    def privilegedStartService(self):
        internet.StreamServerEndpointService.privilegedStartService(self)
        self._waitingForPort.addCallback(self._listening)

    def stopService(self):
        """Stop accepting, then tell every client why the stream ends and let it go."""
        d = internet.StreamServerEndpointService.stopService(self)
        factory = getattr(self.factory, "wrappedFactory", self.factory)
        streams = list(getattr(factory, "streams", ()))  # an HTTP site has none
        for stream in streams:
            stream.closeWithError("system-shutdown")
        closed = [stream.closed for stream in streams if not stream.closed.called]
        if not closed:
            return d
        everyone = defer.DeferredList(closed)
        timeout = factory.server.clock.callLater(5, everyone.cancel)
        everyone.addBoth(lambda _: timeout.active() and timeout.cancel())
        return defer.DeferredList([d, everyone])

    def _listening(self, port):
        self.port = port
        address = port.getHost()
        log.info("{label} listening on {host}:{port}", label=self.label,
                 host=address.host, port=address.port)
        return port


def makeService(config: Config, reactor=None, store=None) -> service.MultiService:
    """Build the whole server as a MultiService of named children."""
    if reactor is None:
        from twisted.internet import reactor
    _, files = raiseFileLimit()
    if config.limits.max_connections > files - 100:
        log.warn("limits.max_connections is {wanted} but only {files} files may be open: new"
                 " connections will fail before that limit is reached",
                 wanted=config.limits.max_connections, files=files)
    server = InviteServer(config, store, reactor)
    server.loadTLS()
    top = service.MultiService()
    top.server = server
    for name, child in (("store", StoreService(server.store)), ("hosts", HostsService(server))):
        child.setName(name)
        child.setServiceParent(top)
    federation = service.MultiService()
    federation.setName("s2s")
    federation.setServiceParent(top)
    if config.s2s:
        s2s = S2SService(server, reactor)
        s2s.setName("federation")
        s2s.setServiceParent(federation)
        for description in config.s2s:
            endpoint = endpoints.serverFromString(reactor, description)
            ListenerService(endpoint, s2s.listenFactory, "Servers").setServiceParent(federation)
    for name, descriptions, directTLS in (("c2s", config.c2s, False),
                                          ("c2s-direct-tls", config.c2s_direct_tls, True)):
        group = service.MultiService()
        group.setName(name)
        group.setServiceParent(top)
        for description in descriptions:
            endpoint = endpoints.serverFromString(reactor, description)
            label = "Direct TLS clients (XEP-0368)" if directTLS else "Clients"
            ListenerService(endpoint, server.c2sFactory(directTLS), label).setServiceParent(group)
    if config.limits.metrics_interval:
        metrics = internet.TimerService(config.limits.metrics_interval, server.metrics.logSummary)
        metrics.clock = reactor
        metrics.setName("metrics")
        metrics.setServiceParent(top)
    http = service.MultiService()
    http.setName("http")
    http.setServiceParent(top)
    if config.http or config.https:
        site = makeSite(server)
        for description in config.http:
            endpoint = endpoints.serverFromString(reactor, description)
            ListenerService(endpoint, site, "HTTP").setServiceParent(http)
        for description in config.https:
            endpoint = endpoints.serverFromString(reactor, description)
            ListenerService(endpoint, httpsFactory(server, site), "HTTPS").setServiceParent(http)
    return top
