"""
The twistd plugin's options and service: C{twistd -n invitesrv [options]}.

With no options at all this serves C{localhost} on C{tcp:5222}, keeping its
database and a self-signed certificate under C{./data}. The command-line
overrides are for trying it out and for scripts; everything else is in the
TOML file named by C{--config}.
"""

from __future__ import annotations

import gc
import sys

from twisted.application import service
from twisted.python import usage

from invitesrv.config import ConfigError, loadConfig, withOverrides
from invitesrv.host import ModuleError, findModule, moduleOptions
from invitesrv.logs import logger
from invitesrv.service import ListenError
from invitesrv.service import makeService as _makeService
from invitesrv.store.interfaces import StoreUnavailable

log = logger()


def _stop(message: str) -> None:
    """End twistd with one line and exit status 1 (it would print its whole usage first)."""
    print(f"invitesrv: {message}", file=sys.stderr)
    raise SystemExit(1)


class Options(usage.Options):
    """Command-line options of C{twistd invitesrv}."""

    optParameters = [
        ["config", "c", None, "TOML configuration file (see conf/invitesrv.example.toml)."],
        ["data-dir", "d", None, "Directory for the database, certificate and secrets."],
        ["public-url", None, None, "Public base URL of the HTTP listener, for invite links."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["domain"] = []
        self["c2s"] = []
        self["s2s"] = []
        self["admin"] = []
        self["http"] = []

    def opt_domain(self, name):
        """Serve this virtual host (repeatable; replaces the configured hosts)."""
        self["domain"].append(name)

    def opt_c2s(self, endpoint):
        """Client listener endpoint, e.g. tcp:5222:interface=\\:\\: (repeatable)."""
        self["c2s"].append(endpoint)

    def opt_s2s(self, endpoint):
        """Server-to-server listener endpoint, e.g. tcp:5269:interface=\\:\\: (repeatable; federates)."""
        self["s2s"].append(endpoint)

    def opt_admin(self, address):
        """Make this JID an admin of its host (repeatable)."""
        self["admin"].append(address)

    def opt_http(self, endpoint):
        """HTTP listener endpoint for invite pages and the API, e.g. tcp:5280 (repeatable)."""
        self["http"].append(endpoint)

    def postOptions(self):
        try:
            self._loadConfig()
        except usage.UsageError as e:
            if self.parent is not None:  # run by twistd
                _stop(str(e))
            raise

    def _loadConfig(self):
        try:
            self.config = self.readConfig()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def readConfig(self):
        """
        The config file with the command-line overrides, at start and at
        each reload; L{ConfigError} says what is wrong with it (modules
        included: a missing one, a missing dependency, a wrong option).
        """
        config = withOverrides(loadConfig(self["config"]), dataDir=self["data-dir"],
                               domains=self["domain"], c2s=self["c2s"], s2s=self["s2s"],
                               admins=self["admin"], http=self["http"],
                               publicURL=self["public-url"])
        classes = {}
        for name in config.modules:
            try:
                classes[name] = findModule(name)
            except ModuleError as e:
                raise ConfigError(f"{config.source}: server.modules: {e}") from None
        for name, cls in classes.items():
            for needed in getattr(cls, "depends", ()):
                if needed not in classes:
                    raise ConfigError(f"{config.source}: server.modules: module {name!r}"
                                      f" needs module {needed!r}, which is not listed")
            for host in config.hosts:
                moduleOptions(cls, name, config, host)
        for host, served in config.components.items():
            for domain, options in served.items():
                for name in options.modules:
                    try:
                        moduleOptions(findModule(name), name, config, domain)
                    except (ModuleError, ConfigError) as e:
                        raise ConfigError(f"{config.source}: hosts.{host}.components:"
                                          f" {domain}: {e}") from None
        return config


# The cyclic garbage collector's thresholds in a server's process (Python's
# are 700, 10, 10). A connection's objects live tens of milliseconds; with a
# young collection every 700 allocations they were promoted to the oldest
# generation, whose full collections (about 60 ms each, with 2000 sessions
# kept for resumption) took 8 % of the CPU of phones reconnecting and set
# the p99 latency of logins (bench/README.md run X).
GC_THRESHOLDS = (20000, 20, 10)


class TwistdService(service.MultiService):
    """
    The server as twistd runs it: a listener that cannot listen, or a store
    that cannot be reached, ends start-up with one line in the log (by then
    standard error goes there too), and exit status 1. The process is the
    server's own, so it tunes the garbage collector (L{GC_THRESHOLDS}); a
    server embedded in another program leaves that to the program.
    """

    def startService(self):
        gc.set_threshold(*GC_THRESHOLDS)
        service.MultiService.startService(self)

    def privilegedStartService(self):
        try:
            service.MultiService.privilegedStartService(self)
        except (ListenError, StoreUnavailable) as e:
            log.critical("{error}; stopping", error=e)
            raise SystemExit(1) from None


def makeService(options: Options):
    """Build the server for twistd; a reload reads the same file with the same overrides."""
    top = TwistdService()
    _makeService(options.config, reloadConfig=options.readConfig).setServiceParent(top)
    return top
