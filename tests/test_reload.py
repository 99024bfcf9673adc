"""
Reloading a running server (SIGHUP, C{invitesrvctl reload}): new handshakes
get the new certificate on every TLS listener while sessions opened before
stay up; the config's live parts change and are reported, what needs a
restart is reported as such, and a broken config is refused without harm.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from conftest import RunningServer
from cryptography import x509
from rawxmpp import RawClient
from testca import CertificateAuthority, servedCertificate

from invitesrv.config import Limits, parseConfig
from invitesrv.limits import AddressList, ConnectionLimiter, Limiter


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitForLog(server: RunningServer, text: str, count: int = 1, timeout: float = 20.0) -> str:
    """Wait until the server's log holds C{text} C{count} times; return the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        if log.count(text) >= count:
            return log
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the log:\n{server.log()}")


def ping(client: RawClient, ident: str) -> str:
    client.send(f"<iq type='get' id='{ident}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    return client.recvUntil(f"<iq[^>]*id=.{ident}.[^>]*(/>|>.*?</iq>)")


def test_sighupReloadsTheCertificate(tmp_path):
    """
    After the certificate files are replaced and SIGHUP sent, STARTTLS,
    direct TLS and HTTPS handshakes present the new certificate, and a
    session opened before the reload still answers.
    """
    ca = CertificateAuthority()
    certPath, keyPath = tmp_path / "cert" / "fullchain.pem", tmp_path / "cert" / "privkey.pem"
    first = ca.write(certPath, keyPath, ["localhost"])
    https = freePort()
    server = RunningServer(tmp_path, 'c2s_direct_tls = ["tcp:0:interface=127.0.0.1"]\n'
                                     f'https = ["tcp:{https}:interface=127.0.0.1"]\n'
                                     f'[tls]\ncertificate = "{certPath}"\nkey = "{keyPath}"\n')
    server.start()
    try:
        server.adduser("alice@localhost", "secret-password")
        direct = server.listenerPort("Direct TLS clients (XEP-0368)")
        assert servedCertificate(direct, "localhost").serial_number == first.serial_number
        before = RawClient(server.port)
        before.login("alice", "secret-password")
        assert "result" in ping(before, "p1")

        second = ca.write(certPath, keyPath, ["localhost"])
        server.process.send_signal(signal.SIGHUP)
        waitForLog(server, "Reload: tls: certificate of (default)")

        with RawClient(server.port) as fresh:
            fresh.startTLS()
            shown = x509.load_der_x509_certificate(fresh.sock.getpeercert(binary_form=True))
        assert shown.serial_number == second.serial_number
        assert servedCertificate(direct, "localhost").serial_number == second.serial_number
        assert servedCertificate(https, "localhost").serial_number == second.serial_number
        assert "result" in ping(before, "p3")
        before.close()
        assert server.process.poll() is None
    finally:
        server.stop()


def test_ctlReloadReportsChanges(tmp_path):
    """
    C{invitesrvctl reload} applies and prints a new C{[limits] auth_timeout}
    (a new connection is then held to it) and a host's new admins, and
    reports a changed C{[listen] c2s} as needing a restart.
    """
    server = RunningServer(tmp_path)
    server.start()
    try:
        text = server.configPath.read_text()
        server.configPath.write_text(
            text.replace('c2s = ["tcp:0:interface=127.0.0.1"]',
                         'c2s = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"]')
            + '[limits]\nauth_timeout = "2s"\n[hosts.localhost]\nadmins = ["boss@localhost"]\n')
        output = server.ctl("reload").stdout.splitlines()
        assert "limits.auth_timeout: 30.0 -> 2.0" in output
        assert "hosts.localhost.admins: [] -> ['boss@localhost']" in output
        assert ("listen.c2s: ['tcp:0:interface=127.0.0.1'] -> ['tcp:0:interface=127.0.0.1',"
                " 'tcp:0:interface=127.0.0.2'] (needs a restart)") in output
        log = server.log()
        assert "Reload: limits.auth_timeout: 30.0 -> 2.0" in log
        assert "(needs a restart)" in log
        with RawClient(server.port) as idle:
            idle.openStream()
            assert "connection-timeout" in idle.readAll(timeout=15)
        # Applied changes are not reported twice; what waits for a restart is, until then.
        again = server.ctl("reload").stdout.splitlines()
        assert len(again) == 1 and again[0].startswith("listen.c2s:")
    finally:
        server.stop()


def test_brokenConfigRefusedOnReload(tmp_path):
    """
    A config file that does not load is refused, by SIGHUP and by
    C{invitesrvctl reload}, with one log line each; the server runs on with
    the configuration it had.
    """
    server = RunningServer(tmp_path)
    server.start()
    try:
        server.configPath.write_text(server.configPath.read_text() + "[limits]\nauth_timeout = -1\n")
        # With --data-dir alone, the tool itself reads no config: the server refuses it.
        result = subprocess.run([sys.executable, "-m", "invitesrv.ctl", "--data-dir",
                                 str(server.dataDir), "reload"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1
        assert "reload refused, nothing changed" in result.stderr
        assert "limits.auth_timeout" in result.stderr
        server.process.send_signal(signal.SIGHUP)
        log = waitForLog(server, "Reload refused", count=2)
        assert len([line for line in log.splitlines() if "Reload refused" in line]) == 2
        assert "Reload: " not in log
        with RawClient(server.port) as client:
            assert "starttls" in client.openStream()
        assert server.process.poll() is None
    finally:
        server.stop()


def wrongPassword(server: RunningServer, username: str) -> None:
    with RawClient(server.port) as client:
        client.startTLS()
        assert "<failure" in client.scram(username, "wrong password")


def test_logLevel(tmp_path):
    """
    C{[server] log_level}: at debug, set at the start, a stream-managed
    session waiting for its client is logged (at the default, info, it is
    not); reloaded to warn, a failed login is no longer logged; reloaded back
    to info, it is again.
    """
    server = RunningServer(tmp_path)
    server.configPath.write_text(server.configPath.read_text().replace(
        "[listen]", 'log_level = "debug"\n[listen]'))
    server.start()
    try:
        server.adduser("alice@localhost", "secret-password")
        phone = RawClient(server.port)
        phone.login("alice", "secret-password", "phone")
        phone.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        phone.recvUntil("<enabled[^>]*/>")
        phone.close()
        waitForLog(server, "alice@localhost/phone: connection lost; the session waits")

        wrongPassword(server, "before")
        waitForLog(server, 'for user "before"')
        text = server.configPath.read_text()
        server.configPath.write_text(text.replace('log_level = "debug"', 'log_level = "warn"'))
        assert "server.log_level: 'debug' -> 'warn'" in server.ctl("reload").stdout.splitlines()
        wrongPassword(server, "muted")
        server.configPath.write_text(text.replace('log_level = "debug"', 'log_level = "info"'))
        server.ctl("reload")
        wrongPassword(server, "after")
        log = waitForLog(server, 'for user "after"')
        assert 'for user "muted"' not in log
        assert "Reload: server.log_level: 'warn' -> 'info'" in log
    finally:
        server.stop()


def test_limiterReconfigureKeepsCounts():
    """
    A reload's new limits apply to the next connection while the open ones
    stay counted: lowering the per-address cap below what is open refuses
    the next, and releasing them all brings the count to zero even when the
    allowlist changed in between.
    """
    from twisted.internet import task
    clock = task.Clock()
    limiter = Limiter(Limits(max_connections_per_address=5, connection_rate=0), clock)
    for _ in range(3):
        assert limiter.admit("192.0.2.1") is None
    limiter.reconfigure(Limits(max_connections_per_address=2, connection_rate=0,
                               allowlist=("192.0.2.1",), auth_failure_window=7))
    assert limiter.admit("192.0.2.1") is None  # allowlisted now
    assert limiter.authByAddress.window == 7
    limiter.reconfigure(Limits(max_connections_per_address=2, connection_rate=0))
    assert limiter.admit("192.0.2.1").condition == "policy-violation"
    assert limiter.authByAddress.window == Limits().auth_failure_window
    for _ in range(4):
        limiter.release("192.0.2.1")
    assert limiter.connections.total == 0 and limiter.connections.open == {}


def test_connectionLimiterConfigure():
    """New rates reach the buckets of addresses already seen."""
    from twisted.internet import task
    clock = task.Clock()
    pool = ConnectionLimiter(clock, 0, 0, 1, 1, AddressList(()))
    assert pool.admit("192.0.2.1") is None
    assert pool.admit("192.0.2.1") is not None  # the burst of 1 is spent
    pool.configure(0, 0, 1, 3, AddressList(()))
    assert pool.admit("192.0.2.1") is None  # the burst grew by 2


def test_compareConfigs():
    """Live changes are applied to the running config; the rest is left as it was."""
    from invitesrv.reload import compareConfigs
    old = parseConfig({"listen": {"c2s": ["tcp:5222"]}})
    new = parseConfig({"listen": {"c2s": ["tcp:5223"]}, "limits": {"max_connections": 7},
                       "hosts": {"localhost": {"allow_registration": True}, "other.test": {}}})
    running, applied, restart = compareConfigs(old, new)
    assert running.limits.max_connections == 7 and running.c2s == ("tcp:5222",)
    assert running.hosts == {"localhost": new.hosts["localhost"]}
    assert applied == ["hosts.localhost.allow_registration: False -> True",
                       "limits.max_connections: 10000 -> 7"]
    assert restart == ["hosts: other.test added (needs a restart)",
                       "listen.c2s: ['tcp:5222'] -> ['tcp:5223'] (needs a restart)"]


def test_reloadServiceSignalHandler():
    """
    SIGHUP is handled while the service runs (the reload is handed to the
    reactor's thread) and left as it was at stop; an application's own
    handler is not replaced.
    """
    import os

    from invitesrv.reload import ReloadService

    class Reactor:
        def __init__(self):
            self.calls = []

        def callFromThread(self, f, *args):
            self.calls.append(f)

    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        reactor = Reactor()
        reloader = ReloadService(None, reactor)
        reloader.startService()
        os.kill(os.getpid(), signal.SIGHUP)
        assert reactor.calls == [reloader.reload]
        reloader.stopService()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL

        def application(signum, frame):
            pass
        signal.signal(signal.SIGHUP, application)
        reloader.startService()
        assert signal.getsignal(signal.SIGHUP) is application
        reloader.stopService()
        assert signal.getsignal(signal.SIGHUP) is application
    finally:
        signal.signal(signal.SIGHUP, previous)
