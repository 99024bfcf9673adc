"""
Assembly: from a L{Config} to a running server, with or without twistd.

L{InviteServer} holds what one process shares (config, store, router,
virtual hosts, TLS). L{makeService} wraps it in a C{MultiService} of named
children, so an embedding application can take the pieces it wants:
C{"store"}, C{"hosts"} (with their components, L{invitesrv.components}),
C{"control"} (the channel C{invitesrvctl} reaches a running server through,
L{invitesrv.control}), C{"cluster"} (cluster mode, L{invitesrv.cluster.node}, when
C{[cluster] enabled}), C{"reload"} (SIGHUP reloads certificates and config,
L{invitesrv.reload}), C{"s2s"} (federation, when C{[listen] s2s} names a
listener), C{"c2s"}, C{"c2s-direct-tls"}, C{"http"} (invite pages, web
registration and the admin API), C{"component"} (external XEP-0114
components, when C{[listen] component} names a listener), C{"metrics"} (the
counters, logged every C{limits.metrics_interval}), C{"prometheus"} (the
OpenMetrics endpoint, when C{[listen] metrics} names a listener) and
C{"systemd"} (readiness and watchdog notifications under a C{Type=notify} unit).
"""

from __future__ import annotations

import os
import resource
import secrets
import stat
from pathlib import Path

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import failure

from invitesrv.components.base import InternalComponent
from invitesrv.components.external import ComponentFactory, ExternalComponent
from invitesrv.config import Config, ConfigError
from invitesrv.control import SOCKET_NAME, ControlFactory, writeRecord
from invitesrv.host import VirtualHost
from invitesrv.limits import Limiter, Metrics
from invitesrv.logs import logger, setLevel
from invitesrv.metrics import MetricsService
from invitesrv.reload import ReloadService, reloadServer
from invitesrv.store.sqlite import SQLiteStore
from invitesrv.systemd import NotifyService
from invitesrv.tls import CurrentOptions, loadServerTLS
from invitesrv.web.site import httpsFactory, makeSite
from invitesrv.xmpp.c2s import C2SFactory
from invitesrv.xmpp.router import Router
from invitesrv.xmpp.s2s.service import S2SService

log = logger()


STOP_TIMEOUT = 10  # seconds the hosts' modules have at shutdown to write what they hold
PRIVATE_UMASK = 0o077  # what the process creates (database, WAL, key, backups) is the owner's


def secureDataDir(path: Path) -> list[Path]:
    """
    Keep the data directory to its owner: set the process umask so that
    every file created from now on (the database, its WAL and shared-memory
    files, the secret, the generated key, upgrade backups) is 0600 and every
    directory 0700, create the directory 0700, and take group and other
    permissions off whatever is already in it (an older installation, a
    copy made with another umask), with a log line. It holds SCRAM keys, API
    key hashes and invites. Return the paths whose mode was changed.
    """
    os.umask(PRIVATE_UMASK)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    changed = []
    entries = [(str(path), 0o700)]
    for directory, subdirectories, files in os.walk(path):
        entries += [(os.path.join(directory, name), 0o700) for name in subdirectories]
        entries += [(os.path.join(directory, name), 0o600) for name in files]
    for name, private in entries:
        mode = os.lstat(name).st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            os.chmod(name, stat.S_IMODE(mode) & private)
            changed.append(Path(name))
    if changed:
        log.warn("Data directory {path} was open to other users: removed their access to"
                 " {count} entries ({names})", path=path, count=len(changed),
                 names=", ".join(str(p.relative_to(path)) if p != path else "." for p in changed))
    return changed


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


def makeStore(config: Config, reactor):
    """The store C{[store]} names, not opened yet."""
    if config.store.backend == "postgresql":
        try:
            from invitesrv.store.postgresql import PostgreSQLStore
        except ImportError as e:
            raise ConfigError(f"{config.source}: store.backend = \"postgresql\" needs psycopg"
                              f" ({e}): pip install 'invitesrv[postgresql]'") from None
        return PostgreSQLStore(config.store.dsn, reactor,
                               busyTimeout=config.limits.store_busy_timeout)
    return SQLiteStore(config.databasePath, reactor, busyTimeout=config.limits.store_busy_timeout)


class InviteServer:
    """
    One server: its virtual hosts with their modules, over one store. The
    C{limiter} holds its per-address and per-account limits and C{metrics}
    its event counters (shared by every host as C{host.metrics}). C{tls} is
    replaced by a reload: what uses it reads it at each new connection.
    C{reloadConfig}, when given, reads the config again for a reload.
    """

    def __init__(self, config: Config, store=None, reactor=None, loadModules: bool = True,
                 reloadConfig=None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.clock = reactor
        self.store = store if store is not None else makeStore(config, reactor)
        self.router = Router()
        self.listeners: list[ListenerService] = []  # filled by makeService
        self.tls = None
        self.reloadConfig = reloadConfig  # reads the config again (None: certificates only)
        self.secret = secrets.token_bytes(32)
        self.metrics = Metrics()
        self.limiter = Limiter(config.limits, reactor, self.metrics, config.trusted_proxies)
        self.hosts = {name: VirtualHost(name, options, config, self.store, self.router, reactor)
                      for name, options in config.hosts.items()}
        for host in self.hosts.values():
            host.metrics = self.metrics
        if loadModules:
            for host in self.hosts.values():
                host.loadModules(config.modules)
        self.components = self.makeComponents(loadModules)

    def makeComponents(self, loadModules: bool = True) -> dict:
        """
        The components of the served hosts, by domain (routed once started):
        external ones wait for their connection, internal ones get their modules.
        """
        components = {}
        for name, served in self.config.components.items():
            host = self.hosts.get(name)
            if host is None:
                continue  # a host the command line left out
            for domain, options in served.items():
                if options.secret:
                    components[domain] = ExternalComponent(domain, host, options.secret)
                    continue
                component = components[domain] = InternalComponent(domain, host)
                if loadModules:
                    component.loadModules(options.modules)
        return components

    def makeTLS(self, config: Config, problems: list[str] | None = None):
        """
        The TLS options of C{config}: its certificates (per host, by SNI) and
        policy. With C{problems} (a reload), a host's certificate that does not
        load keeps the one in use and is reported there.
        """
        try:
            return loadServerTLS(config, list(self.hosts), self.tls if problems is not None else None,
                                 problems)
        except ValueError as e:
            raise ConfigError(f"{config.source}: {e}") from None

    def loadTLS(self) -> None:
        """Load the certificates, generating a self-signed one when none is configured."""
        self.tls = self.makeTLS(self.config)
        self.secret = loadSecret(self.config.data_dir / "server.secret")

    def reload(self) -> list[str]:
        """Re-read the certificates and the live config (L{invitesrv.reload}); return the changes."""
        return reloadServer(self)

    def c2sFactory(self, directTLS: bool = False):
        factory = C2SFactory(self, directTLS)
        if directTLS:
            return TLSMemoryBIOFactory(CurrentOptions(self), False, factory)
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
    """Starts the modules of every virtual host and its components, before the listeners."""

    def __init__(self, server: InviteServer):
        self.server = server

    def privilegedStartService(self):
        for host in self.server.hosts.values():
            if not host.started:
                host.start()
                log.info("Serving {host} with modules {modules}", host=host.name,
                         modules=", ".join(host.modules))
        for component in self.server.components.values():
            if not component.started:
                component.start()
                log.info("Serving component {domain} of {host}: {what}", domain=component.name,
                         host=component.host.name,
                         what=f"modules {', '.join(component.modules)}"
                         if isinstance(component, InternalComponent) else "external (XEP-0114)")

    def startService(self):
        self.privilegedStartService()
        service.Service.startService(self)

    def stopService(self):
        """
        Stop the components, then the hosts; fire once their modules have
        written what they still hold (at most L{STOP_TIMEOUT} seconds).
        """
        service.Service.stopService(self)
        for component in self.server.components.values():
            component.stop()
        stopping = defer.DeferredList([host.stop() for host in self.server.hosts.values()])
        clock = self.server.clock
        timeout = clock.callLater(STOP_TIMEOUT, stopping.cancel)

        def stopped(result):
            if timeout.active():
                timeout.cancel()
            else:
                log.warn("The hosts' modules did not finish writing within {seconds} s;"
                         " stopping anyway", seconds=STOP_TIMEOUT)
        return stopping.addBoth(stopped)


class ListenError(Exception):
    """A listener cannot listen: the server must not run listening on less than it was told."""


class ListenerService(internet.StreamServerEndpointService):
    """
    An endpoint listener that logs the address it really got (port 0 too),
    and stops start-up with L{ListenError} when it cannot listen (a port
    taken, an address not on this machine).
    """

    def __init__(self, endpoint, factory, label: str, description: str = ""):
        internet.StreamServerEndpointService.__init__(self, endpoint, factory)
        self.label = label
        self.description = description
        self.kind = ""  # the [listen] key it serves
        self.port = None

    def privilegedStartService(self):
        self._raiseSynchronously = True
        try:
            internet.StreamServerEndpointService.privilegedStartService(self)
        except Exception as e:
            reason = getattr(e, "socketError", None) or e
            raise ListenError(f"{self.label}: cannot listen on {self.description or self.endpoint}:"
                              f" {reason}") from None
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


class ControlService(ListenerService):
    """
    The control channel's Unix socket in the data dir (mode 0600), opened
    after the store and hosts and before the listeners, with a record of
    what the server serves. A second server on the same data dir cannot take
    the socket's lock and stops. A data dir whose path is too long for a
    Unix socket leaves the server without a channel (the log says so).
    """

    def __init__(self, server, reactor):
        self.server = server
        self.path = server.config.data_dir / SOCKET_NAME
        endpoint = endpoints.UNIXServerEndpoint(reactor, str(self.path), mode=0o600, wantPID=True)
        ListenerService.__init__(self, endpoint, ControlFactory(server), "Control channel",
                                 str(self.path))

    def privilegedStartService(self):
        writeRecord(self.server)
        if len(os.fsencode(self.path)) >= 104:  # sun_path holds 104 to 108 bytes
            log.warn("No control channel: the path {path} is too long for a Unix socket;"
                     " invitesrvctl will work on the database alone", path=self.path)
            return
        ListenerService.privilegedStartService(self)

    def _listening(self, port):
        self.port = port
        log.info("Control channel listening on {path}", path=self.path)
        return port


class ServerService(service.MultiService):
    """
    The whole server. When a listener cannot listen, the store that start-up
    opened is closed (its threads would keep the process alive) before the
    L{ListenError} goes up; once all is up, one log line says it is ready.
    """

    def privilegedStartService(self):
        try:
            service.MultiService.privilegedStartService(self)
        except ListenError:
            self.getServiceNamed("store").stopService()
            raise

    def startService(self):
        """Start every child; the log says when all of them (every listener) are up."""
        setLevel(self.server.config.log_level)
        service.MultiService.startService(self)
        log.info("Ready: serving {hosts}", hosts=", ".join(self.server.hosts))

    def stopService(self):
        """
        Stop the children one after the other, the last started first, each
        once the one before has stopped: the listeners let their clients go,
        then the hosts' modules finish what they write (stream management
        keeps its sessions' unacknowledged messages offline), and only then
        does the store close.
        """
        service.Service.stopService(self)
        d = defer.succeed(None)
        for child in reversed(list(self)):
            d.addBoth(self._stopNext, child)
        return d.addErrback(self._stopFailed)

    def _stopNext(self, result, child):
        self._stopFailed(result)
        return defer.maybeDeferred(child.stopService)

    @staticmethod
    def _stopFailed(result) -> None:
        if isinstance(result, failure.Failure):
            log.failure("Stopping a part of the server failed", result)


def makeService(config: Config, reactor=None, store=None,
                reloadConfig=None) -> service.MultiService:
    """
    Build the whole server as a MultiService of named children. A reload
    (SIGHUP, C{invitesrvctl reload}) reads the config again with
    C{reloadConfig()} when given; without it, only the certificates.
    """
    if reactor is None:
        from twisted.internet import reactor
    _, files = raiseFileLimit()
    wanted = config.limits.max_connections
    if config.http or config.https:
        wanted += config.limits.http_max_connections
    if wanted > files - 100:
        log.warn("limits.max_connections (with http_max_connections when HTTP listens) is"
                 " {wanted} but only {files} files may be open: new connections will fail"
                 " before that limit is reached", wanted=wanted, files=files)
    secureDataDir(config.data_dir)
    server = InviteServer(config, store, reactor, reloadConfig=reloadConfig)
    server.loadTLS()
    top = ServerService()
    top.server = server
    for name, child in (("store", StoreService(server.store)), ("hosts", HostsService(server)),
                        ("control", ControlService(server, reactor)),
                        ("reload", ReloadService(server, reactor))):
        child.setName(name)
        child.setServiceParent(top)
    if config.cluster.enabled:  # before the listeners: sessions are published from the first
        from invitesrv.cluster.node import ClusterNode
        cluster = ClusterNode(server, config.cluster, reactor)
        cluster.setName("cluster")
        cluster.setServiceParent(top)

    def group(name: str) -> service.MultiService:
        child = service.MultiService()
        child.setName(name)
        child.setServiceParent(top)
        return child

    def listen(parent, key: str, makeFactory, label: str) -> None:
        """Listen on each endpoint of C{[listen] key}, each with C{makeFactory()}."""
        for description in getattr(config, key):
            endpoint = endpoints.serverFromString(reactor, description)
            listener = ListenerService(endpoint, makeFactory(), label, description)
            listener.kind = key
            listener.setServiceParent(parent)
            server.listeners.append(listener)

    federation = group("s2s")
    if config.s2s:
        s2s = S2SService(server, reactor)
        s2s.setName("federation")
        s2s.setServiceParent(federation)
        listen(federation, "s2s", lambda: s2s.listenFactory, "Servers")
    listen(group("c2s"), "c2s", server.c2sFactory, "Clients")
    listen(group("c2s-direct-tls"), "c2s_direct_tls", lambda: server.c2sFactory(directTLS=True),
           "Direct TLS clients (XEP-0368)")
    listen(group("component"), "component", lambda: ComponentFactory(server),
           "Components")
    if config.limits.metrics_interval:
        metrics = internet.TimerService(config.limits.metrics_interval, server.metrics.logSummary)
        metrics.clock = reactor
        metrics.setName("metrics")
        metrics.setServiceParent(top)
    http = group("http")
    if config.http or config.https:
        site = makeSite(server)
        listen(http, "http", lambda: site, "HTTP")
        https = httpsFactory(server, site)
        listen(http, "https", lambda: https, "HTTPS")
    prometheus = group("prometheus")
    if config.metrics:
        exporter = MetricsService(server, reactor)
        exporter.setServiceParent(prometheus)
        scrape = exporter.site()
        listen(prometheus, "metrics", lambda: scrape, "Metrics")
    notify = NotifyService(reactor)  # last: started once everything listens
    notify.setName("systemd")
    notify.setServiceParent(top)
    return top
