"""
A private redis-server for the cluster tests: Debian's binary with a
temporary config (loopback, an ephemeral port, no persistence), started and
stopped by the tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = Path("/usr/bin/redis-server")


def needRedis() -> None:
    """Skip (saying why) without redis-server; under CI (CI set) fail instead: it must be there."""
    if REDIS_SERVER.exists():
        return
    message = f"{REDIS_SERVER} is not installed (apt-get install redis-server)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server on 127.0.0.1 with nothing written to disk."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = freePort()
        self.config = directory / "redis.conf"
        self.config.write_text(
            f"bind 127.0.0.1\nport {self.port}\nsave \"\"\nappendonly no\n"
            f"dir {directory}\nlogfile {directory / 'redis.log'}\ndaemonize no\n")
        self.process = None

    @property
    def url(self) -> str:
        """Its URL without the database number (so that clusters in one test run stay apart)."""
        return f"redis://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 15.0) -> RedisServer:
        self.process = subprocess.Popen([str(REDIS_SERVER), str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == "+PONG":
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start: {self.log()}")

    def command(self, *args: str) -> str:
        """Run one command over a fresh connection; the first line of the reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            request = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
            s.sendall(request.encode())
            return s.recv(65536).decode().split("\r\n")[0]

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
