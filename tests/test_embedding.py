"""
Embedding is a feature: the example of C{docs/embedding.md}, an existing
Twisted application that builds invitesrv around its own reactor without
twistd, really serves XMPP clients and really sees them through the pieces
it took (the router and a host's hooks).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from slix import Client, run

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "embed_example.py"
PASSWORD = "embedded password"


class Example:
    """The example application running in a subprocess, its output in a file."""

    def __init__(self, directory: Path):
        self.output = directory / "output.log"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(EXAMPLE), "--provision", "alice", "--data-dir",
                 str(directory / "data"), "--c2s", "tcp:0:interface=127.0.0.1",
                 "--web", "tcp:0:interface=127.0.0.1"],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=directory)
        self.process.stdin.write(f"{PASSWORD}\n".encode())
        self.process.stdin.close()

    def text(self) -> str:
        return self.output.read_text("utf-8", "replace")

    def waitFor(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text())
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the example's output:\n{self.text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def example(tmp_path):
    running = Example(tmp_path)
    running.waitFor(r"(?m)\] Ready$")  # the application's line, not the server's "Ready: serving …"
    yield running
    running.stop()


def port(example: Example, label: str) -> int:
    return int(example.waitFor(rf"{label} listening on [\d.]+:(\d+)").group(1))


def onlinePage(example: Example) -> str:
    url = f"http://127.0.0.1:{port(example, 'Status page')}/"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_exampleServesClients(example):
    """
    slixmpp logs in to the embedded server with the account the application
    provisioned; the application's page and hooks see the session.
    """
    assert "Provisioned alice@localhost" in example.text()
    assert onlinePage(example) == "nobody\n"
    clientPort = port(example, "Clients")

    async def scenario():
        client = Client("alice@localhost/embedded", PASSWORD)
        assert await client.login(clientPort)
        await client.plugin["xep_0199"].ping("localhost", timeout=5)
        assert onlinePage(example) == "alice@localhost\n"
        await client.logout()
    run(scenario())
    example.waitFor(r"alice@localhost/embedded is online")
    example.waitFor(r"alice@localhost/embedded left")


def test_exampleStopsCleanly(example):
    """On SIGTERM the application stops its services, the embedded server's included."""
    assert example.stop() == 0
    text = example.text()
    assert "Main loop terminated" in text and "Traceback" not in text
