"""
Under systemd: the unit file shipped in conf/ is valid, and a server run
with C{$NOTIFY_SOCKET} says it is ready only once it listens, pings the
watchdog, and says when it stops.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import TWISTD

UNIT = Path(__file__).parent.parent / "conf" / "invitesrv.service"


def test_unitFileVerifies(tmp_path):
    """C{systemd-analyze verify} accepts the unit (with ExecStart pointing at this twistd)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    unit = tmp_path / "invitesrv.service"
    unit.write_text(text.replace("/opt/invitesrv/bin/twistd", TWISTD))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "invitesrv.service" not in result.stderr, result.stderr


def test_readyWatchdogStopping(serverFactory, tmp_path, monkeypatch):
    """READY=1 after the listeners listen, WATCHDOG=1 at half the interval, STOPPING=1 at the end."""
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    try:
        server = serverFactory()
        ready = receiver.recv(4096).decode()
        assert ready.startswith("READY=1\n"), ready
        assert f"MAINPID={server.process.pid}" in ready
        assert receiver.recv(4096) == b"WATCHDOG=1"
        assert receiver.recv(4096) == b"WATCHDOG=1"
        server.stop()
        states = []
        while b"STOPPING=1" not in states:
            states.append(receiver.recv(4096))
    finally:
        receiver.close()
