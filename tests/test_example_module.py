"""
The example of docs/modules.md, installed from its own package (an entry
point in C{invitesrv.modules} from its pyproject.toml, its own
C{[modules.motd]} table):
its own test passes, and a server that lists it greets a client over the
wire with the per-host text. So the guide cannot drift from the platform.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import RunningServer
from rawxmpp import RawClient

EXAMPLE = Path(__file__).parent.parent / "docs" / "example-module"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """
    The example installed into a directory of its own as an installer lays
    it out: its package, and a dist-info whose name, version and entry
    points are read from its own pyproject.toml (no network, no wheel tool).
    """
    target = tmp_path_factory.mktemp("site")
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copytree(EXAMPLE / "invitesrv_motd", target / "invitesrv_motd")
    info = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    groups = project["entry-points"]
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
        for group, entries in groups.items()))
    return target


def environment(site: Path) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{path}" if path else str(site)}


def test_exampleOwnTest(site, tmp_path):
    """The example's own test passes against the installed package."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         str(EXAMPLE / "tests")], capture_output=True, text=True, timeout=300, check=False,
        cwd=tmp_path, env=environment(site))
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr


def test_exampleOverTheWire(site, tmp_path):
    """Listed in server.modules with its options, the installed module greets a new session."""
    server = RunningServer(tmp_path, '[modules.motd]\ntext = "Hello all"\n'
                           '[hosts."localhost".modules.motd]\ntext = "Hello localhost"\n',
                           env=environment(site))
    config = server.configPath.read_text()
    server.configPath.write_text(config.replace(
        "[server]\n", '[server]\nmodules = ["disco", "motd"]\n', 1))
    server.start()
    try:
        server.adduser("alice@localhost", "alice password")
        with RawClient(server.port) as client:
            client.login("alice", "alice password", "desk")
            reply = client.recvUntil(r"<message[^>]*type='headline'.*?</message>")
            assert "<body>Hello localhost</body>" in reply
            client.send("<iq type='get' id='d1' to='localhost'>"
                        "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            assert "<feature var='urn:example:motd'/>" in client.recvUntil(r"<iq[^>]*id='d1'.*?</iq>")
    finally:
        server.stop()


def test_exampleBadOption(site, tmp_path):
    """A wrong key in its table stops start-up naming the key and the file."""
    config = tmp_path / "invitesrv.toml"
    config.write_text('[server]\nmodules = ["motd"]\n[modules.motd]\ndelay = "soon"\n')
    from conftest import TWISTD
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "invitesrv", "--config", str(config)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
                            env=environment(site))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{config}: modules.motd.delay: expected a duration" in output, output
