"""
systemd's service notifications (sd_notify(3)), for C{Type=notify} units.

systemd then knows the server is ready only once every listener listens
(so units ordered after it start in time), that it is stopping, and, with
C{WatchdogSec=}, that its reactor still turns: a wedged server is restarted.
The protocol is one datagram per state to C{$NOTIFY_SOCKET}; outside
systemd (no such variable) this does nothing.
"""

from __future__ import annotations

import os
import socket

from twisted.application import service
from twisted.internet import task

from invitesrv.logs import logger

log = logger()


class Notifier:
    """Sends states to systemd's notification socket, if there is one."""

    def __init__(self, environ=os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        self.address = address or None
        watchdog = environ.get("WATCHDOG_USEC", "")
        forUs = environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
        self.watchdogInterval = int(watchdog) / 2e6 if watchdog.isdigit() and forUs else None

    def notify(self, state: str) -> None:
        if self.address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(state.encode("utf-8"), self.address)
            except OSError as e:
                log.warn("Cannot notify systemd ({error})", error=e)


class NotifyService(service.Service):
    """
    The last child of the server's service: when it starts, everything
    before it (store, hosts, listeners) is up. It pings the watchdog from the
    reactor, at half the interval systemd asks for.
    """

    def __init__(self, reactor, notifier: Notifier | None = None):
        self.reactor = reactor
        self.notifier = notifier or Notifier()
        self._watchdog = None

    def startService(self):
        service.Service.startService(self)
        self.notifier.notify(f"READY=1\nSTATUS=Serving\nMAINPID={os.getpid()}")
        if self.notifier.watchdogInterval:
            self._watchdog = task.LoopingCall(self.notifier.notify, "WATCHDOG=1")
            self._watchdog.clock = self.reactor
            self._watchdog.start(self.notifier.watchdogInterval)

    def stopService(self):
        self.notifier.notify("STOPPING=1")
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        return service.Service.stopService(self)
