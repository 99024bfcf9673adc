"""
Fixtures that run the real server: C{twistd -n invitesrv} in a subprocess,
listening on an ephemeral port on 127.0.0.1, with its own data directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# The twistd of the Python running the tests: the very command the README gives.
TWISTD = str(Path(sys.executable).with_name("twistd"))
LISTENING = re.compile(r"(Clients|Direct TLS clients \(XEP-0368\)|HTTP|Servers|Components)"
                       r" listening on [\d.:a-f]+:(\d+)")


class RunningServer:
    """A server process started for a test, and ways to talk to it."""

    def __init__(self, directory: Path, extraConfig: str = "", args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, preexec=None):
        """C{env}: the server's environment (default: the tests'); C{preexec}: run in the child."""
        self.directory = directory
        self.env = env
        self.preexec = preexec
        self.dataDir = directory / "data"
        self.configPath = directory / "invitesrv.toml"
        self.logPath = directory / "server.log"
        self.extraConfig = extraConfig
        self.args = args
        self.ports: dict[str, int] = {}
        self.process = None
        self.configPath.write_text(
            f'[server]\ndata_dir = "{self.dataDir}"\n'
            '[listen]\nc2s = ["tcp:0:interface=127.0.0.1"]\n' + extraConfig)

    @property
    def port(self) -> int:
        return self.ports["Clients"]

    def start(self, timeout: float = 30.0) -> RunningServer:
        self.ports = {}
        offset = self.logPath.stat().st_size if self.logPath.exists() else 0
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", f"--logfile={self.logPath}",
             "invitesrv", "--config", str(self.configPath), *self.args],
            cwd=self.directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
            preexec_fn=self.preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()[offset:] if self.logPath.exists() else ""
            for label, port in LISTENING.findall(text):
                self.ports[label] = int(port)
            if "Ready: serving" in text:  # logged once every listener listens
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read().decode()}\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def listenerPort(self, label: str, timeout: float = 30.0) -> int:
        """The port of listener C{label} (start() waits for the client listener only)."""
        deadline = time.monotonic() + timeout
        while label not in self.ports and time.monotonic() < deadline:
            for found, port in LISTENING.findall(self.log()):
                self.ports.setdefault(found, int(port))
            time.sleep(0.05)
        return self.ports[label]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        return self.logPath.read_text("utf-8", "replace") if self.logPath.exists() else ""

    def ctl(self, *args: str, input: str | None = None, check: bool = True):
        """Run C{invitesrvctl --config <this server's config> ARGS}."""
        result = subprocess.run(
            [sys.executable, "-m", "invitesrv.ctl", "--config", str(self.configPath), *args],
            input=input, capture_output=True, text=True, timeout=60, cwd=self.directory)
        if check and result.returncode != 0:
            raise AssertionError(f"invitesrvctl {args} failed: {result.stderr}")
        return result

    def adduser(self, address: str, password: str) -> None:
        self.ctl("adduser", address, input=password + "\n")


def startAll(servers) -> None:
    """Start several servers at once; if one fails, stop them all and raise."""
    servers = list(servers)
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(RunningServer.start, servers))
    except Exception:
        for server in servers:
            server.stop()
        raise


def terminate(process: subprocess.Popen | None) -> None:
    """End a helper process (dnsmasq, Prosody): TERM, then KILL if it lingers."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def serverFactory(tmp_path):
    """Start servers with C{serverFactory(extraConfig, *args)}; all are stopped afterwards."""
    servers = []

    def start(extraConfig: str = "", *args: str, name: str = "server") -> RunningServer:
        directory = tmp_path / f"{name}{len(servers)}"
        directory.mkdir()
        server = RunningServer(directory, extraConfig, args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def sharedServer(tmp_path_factory):
    """One server per test module with the default modules, for tests that only add accounts."""
    server = RunningServer(tmp_path_factory.mktemp("shared"), '')
    server.start()
    yield server
    server.stop()


@pytest.fixture
def servers():
    """Make in-memory servers (L{streamharness.Servers}); their stores are closed afterwards."""
    from streamharness import Servers
    pool = Servers()
    yield pool
    pool.closeAll()


def pytest_sessionfinish(session, exitstatus):
    """
    On CI (the environment variable CI set) every system the tests start
    is installed by C{.ci/run}, so a skipped test is a failure there: a
    skip would pass off a missing system as coverage.
    """
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("CI") and skipped and session.exitstatus == pytest.ExitCode.OK:
        reporter.ensure_newline()
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; on CI nothing may be", red=True)
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            reporter.write_line(f"  {report.nodeid}: {reason}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def postgresql():
    """
    A private PostgreSQL server (L{pgcluster.PrivatePostgreSQL}) for the
    session. Without PostgreSQL its tests skip saying why; on CI (the
    environment variable CI set), where it is installed, they fail instead.
    """
    from pgcluster import PrivatePostgreSQL, missing
    reason = missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI needs it")
        pytest.skip(reason)
    server = PrivatePostgreSQL().start()
    yield server
    server.stop()


@pytest.fixture
def postgresqlDSN(postgresql):
    """The DSN of a new, empty database of the private PostgreSQL, dropped afterwards."""
    name = postgresql.createDatabase()
    yield postgresql.dsn(name)
    postgresql.dropDatabase(name)
