"""
Reloading a running server (SIGHUP, C{invitesrvctl reload}): the
certificates are read again, and so is the config file, whose live parts
(C{[limits]}, the hosts' options, the modules' C{[modules.NAME]} tables,
C{[tls]}, C{require_encryption}, C{scram_iterations}, C{log_level}) apply
to what happens next; the sessions already open stay. What a running
server cannot change (listeners, hosts added or removed, the data dir and
so the store, the modules, federation, the public URL) is reported as
needing a restart and left as it is. A config that does
not load is refused with one log line: the server keeps the one it has.
"""

from __future__ import annotations

import dataclasses
import signal

from twisted.application import service

from invitesrv.config import _LISTEN_KEYS, _SERVER_KEYS, Config, ConfigError
from invitesrv.logs import logger, setLevel

log = logger()

# What a running server cannot change in place: the limits read once at
# start, and the hosts' options parsed when their modules start.
RESTART_LIMITS = {"store_busy_timeout", "metrics_interval"}
RESTART_HOST_OPTIONS = {"registration_allowlist", "registration_blocklist"}
LIVE = {"limits", "hosts", "tls_certificate", "tls_key", "tls_certificates", "tls_ciphers",
        "tls_groups", "tls_resumption", "require_encryption", "scram_iterations", "log_level",
        "module_options", "host_module_options"}


class ReloadError(Exception):
    """The reload was refused (a config or certificate that does not load); nothing changed."""


def _key(name: str) -> str:
    """The config file's name of a L{Config} field: C{listen.c2s}, C{tls.ciphers}, ..."""
    if name.startswith("tls_"):
        return "tls." + name[len("tls_"):]
    if name in _LISTEN_KEYS:
        return "listen." + name
    if name in _SERVER_KEYS:
        return "server." + name
    return {"federation": "s2s", "module_options": "modules",
            "host_module_options": "hosts.*.modules"}.get(name, name)


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _fieldChanges(where: str, old, new, restart: set[str]) -> tuple[list[str], list[str], dict]:
    """The changed fields of two dataclasses: (applied lines, restart lines, applied values)."""
    applied, needsRestart, values = [], [], {}
    for field in dataclasses.fields(old):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before == after:
            continue
        line = f"{where}.{field.name}: {_show(before)} -> {_show(after)}"
        if field.name in restart:
            needsRestart.append(line + " (needs a restart)")
        else:
            applied.append(line)
            values[field.name] = after
    return applied, needsRestart, values


def compareConfigs(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """
    What changes from C{old} to C{new}: the config to run with (C{old} with
    the live changes of C{new}), the lines of the changes applied, and
    those of the changes that need a restart.
    """
    applied, needsRestart, values = [], [], {}
    for field in dataclasses.fields(Config):
        name = field.name
        before, after = getattr(old, name), getattr(new, name)
        if name == "source" or before == after:
            continue
        if name == "limits":
            lines, restart, changed = _fieldChanges("limits", before, after, RESTART_LIMITS)
            applied += lines
            needsRestart += restart
            values["limits"] = dataclasses.replace(before, **changed)
        elif name == "hosts":
            hosts = dict(before)
            for host in before.keys() - after.keys():
                needsRestart.append(f"hosts: {host} removed (needs a restart)")
            for host in after.keys() - before.keys():
                needsRestart.append(f"hosts: {host} added (needs a restart)")
            for host in before.keys() & after.keys():
                lines, restart, changed = _fieldChanges(f"hosts.{host}", before[host], after[host],
                                                        RESTART_HOST_OPTIONS)
                applied += lines
                needsRestart += restart
                hosts[host] = dataclasses.replace(before[host], **changed)
            values["hosts"] = hosts
        elif name in LIVE:
            applied.append(f"{_key(name)}: {_show(before)} -> {_show(after)}")
            values[name] = after
        elif dataclasses.is_dataclass(before):
            needsRestart += _fieldChanges(_key(name), before, after, {
                f.name for f in dataclasses.fields(before)})[1]
        else:
            needsRestart.append(f"{_key(name)}: {_show(before)} -> {_show(after)} (needs a restart)")
    return dataclasses.replace(old, source=new.source, **values), sorted(applied), sorted(needsRestart)


def certificateChanges(old, new) -> list[str]:
    """Which certificates (the default, and each name's) are new, by serial number."""
    def serials(options) -> dict[str, int]:
        found = {"(default)": options.certificate.get_serial_number()}
        found.update((name, named.certificate.get_serial_number())
                     for name, named in options.byName.items())
        return found

    before, after = serials(old), serials(new)
    lines = []
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) != after.get(name):
            was = f"{before[name]:x}" if name in before else "none"
            now = f"{after[name]:x}" if name in after else "none"
            lines.append(f"tls: certificate of {name}: serial {was} -> {now}")
    return lines


def applyConfig(server, config: Config) -> None:
    """Run C{server} with C{config} (the result of L{compareConfigs}) from now on."""
    server.config = config
    setLevel(config.log_level)
    server.limiter.reconfigure(config.limits)
    for name, host in server.hosts.items():
        host.config = config
        host.options = config.hosts.get(name, host.options)
        host.reloadModuleOptions()


def reloadServer(server) -> list[str]:
    """
    Re-read the config (when the server has a file to read it from) and the
    certificates; apply what can change live and log one line per change,
    and one per change that needs a restart; a host's certificate that does
    not load keeps the one in use, with an error line. Return those lines.
    Raise L{ReloadError} (logged once) and change nothing when the config or
    the default certificate does not load.
    """
    current = server.config
    problems: list[str] = []
    try:
        if server.reloadConfig is not None:
            config, applied, needsRestart = compareConfigs(current, server.reloadConfig())
        else:
            config, applied, needsRestart = current, [], []
        tls = server.makeTLS(config, problems)
    except ConfigError as e:
        log.error("Reload refused, still running with the configuration loaded before: {error}",
                  error=e)
        raise ReloadError(str(e)) from None
    changes = applied + certificateChanges(server.tls, tls) + needsRestart
    applyConfig(server, config)
    server.tls = tls
    for line in changes:
        log.info("Reload: {change}", change=line)
    for problem in problems:
        log.error("Reload: {problem}", problem=problem)
    if not changes and not problems:
        log.info("Reload: no changes")
    return changes + problems


class ReloadService(service.Service):
    """
    Reloads the server on SIGHUP (systemd's C{ExecReload}, C{kill -HUP}).
    The handler is installed at start, unless the process already handles
    the signal (an application embedding the server), and the previous one
    is put back at stop. The reload itself runs in the reactor's thread.
    """

    def __init__(self, server, reactor):
        self.server = server
        self.reactor = reactor
        self.previous = None

    def startService(self):
        service.Service.startService(self)
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
            self.previous = signal.signal(signal.SIGHUP, self._received)

    def stopService(self):
        if self.previous is not None:
            signal.signal(signal.SIGHUP, self.previous)
            self.previous = None
        return service.Service.stopService(self)

    def _received(self, signum, frame):
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        log.info("Reloading (SIGHUP)")
        try:
            reloadServer(self.server)
        except ReloadError:
            pass  # logged: the server runs on as it was
