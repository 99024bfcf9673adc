"""
A real DNS server for tests: Debian's dnsmasq (package C{dnsmasq-base}), run
in the foreground on a loopback port with a temporary config, answering
only for the names the test gives it (C{local=/test/}: anything else under
C{.test} is "no such name"), never forwarding and never reading the system's
hosts or resolv.conf. Tests that need it skip, saying why, when
C{/usr/sbin/dnsmasq} is missing.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import terminate
from twisted.names import dns

DNSMASQ = Path("/usr/sbin/dnsmasq")

needsDnsmasq = pytest.mark.skipif(
    not DNSMASQ.exists(), reason="dnsmasq is not installed (apt-get install -y dnsmasq-base)")


def freeUDPPort() -> int:
    """A loopback port free right now for UDP and for TCP (dnsmasq takes both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class Dnsmasq:
    """
    dnsmasq serving C{lines} (dnsmasq config lines such as
    C{srv-host=_xmpp-server._tcp.a.test,xmpp.a.test,5269,0,5} and
    C{host-record=xmpp.a.test,127.0.0.1,::1}) on 127.0.0.1.

    @ivar address: C{"127.0.0.1:port"}, as C{[s2s] dns_servers} takes it.
    """

    def __init__(self, directory: Path, lines: list[str], ttl: int = 0):
        self.directory = directory
        self.port = freeUDPPort()
        self.address = f"127.0.0.1:{self.port}"
        self.conf = directory / "dnsmasq.conf"
        self.conf.write_text("\n".join(["local=/test/", f"local-ttl={ttl}", *lines]) + "\n")
        self.logPath = directory / "dnsmasq.log"
        self.process = None

    def start(self, timeout: float = 10.0) -> Dnsmasq:
        """Run dnsmasq and wait until it answers."""
        with self.logPath.open("wb") as log:
            self.process = subprocess.Popen(
                [str(DNSMASQ), "--keep-in-foreground", f"--port={self.port}",
                 "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                 "--pid-file=", "--user=", "--log-facility=-", "--log-queries",
                 f"--conf-file={self.conf}"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited:\n{self.log()}")
            if self.answers():
                return self
        self.stop()
        raise RuntimeError(f"dnsmasq did not start:\n{self.log()}")

    def answers(self) -> bool:
        """Does dnsmasq answer a query yet (any answer, "no such name" too)?"""
        query = dns.Message(id=1, recDes=1)
        query.queries = [dns.Query("ready.test")]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            s.sendto(query.toStr(), ("127.0.0.1", self.port))
            try:
                return bool(s.recv(512))
            except OSError:
                return False

    def stop(self) -> None:
        """Terminate dnsmasq (killed if it lingers)."""
        terminate(self.process)

    def log(self) -> str:
        """What dnsmasq logged, every query included."""
        return self.logPath.read_text("utf-8", "replace") if self.logPath.exists() else ""
