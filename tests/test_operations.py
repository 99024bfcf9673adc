"""
Running the server as an admin does: start-up that fails fast and says why in
one line, and C{invitesrvctl} reaching the running server through its control
channel (the Unix socket in the data dir) without repeating the server's flags.
"""

from __future__ import annotations

import re
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

from conftest import TWISTD, RunningServer
from rawxmpp import RawClient

from invitesrv.store.sqlite import checkBackup


def twistd(directory, *args: str):
    """Run C{twistd -n invitesrv ARGS} to its end (it should not get as far as serving)."""
    return subprocess.run([TWISTD, "-n", "--pidfile=", "invitesrv", *args], cwd=directory,
                          capture_output=True, text=True, timeout=60, check=False)


def oneLineError(result, *expected: str) -> None:
    """
    The process failed, saying C{expected} on one line (of standard error,
    or of the log once logging has started), with no traceback or usage text.
    """
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and "Usage:" not in output, output
    lines = [line for line in output.splitlines() if expected[0] in line]
    assert len(lines) == 1, output
    for text in expected:
        assert text in lines[0], output


def test_portTakenStopsStartup(tmp_path):
    """A listener whose port is taken stops start-up with one line and exit status 1."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        for option in ("--c2s", "--http"):
            extra = ("--c2s", "tcp:0:interface=127.0.0.1") if option == "--http" else ()
            result = twistd(tmp_path, "--data-dir", str(tmp_path / "data"), *extra,
                            option, f"tcp:{port}:interface=127.0.0.1")
            oneLineError(result, f"cannot listen on tcp:{port}:interface=127.0.0.1")
            assert "HTTP listening on" not in result.stdout
    finally:
        taken.close()


def test_badEndpointNamesTheOption(tmp_path):
    """A malformed endpoint is refused at start-up naming the option, not with a traceback."""
    oneLineError(twistd(tmp_path, "--c2s", "tcp:notaport"), "--c2s", "'tcp:notaport'")
    oneLineError(twistd(tmp_path, "--c2s", "tcp:5222:interface=::"), "--c2s", "interface=\\:\\:")
    config = tmp_path / "bad.toml"
    config.write_text('[listen]\nhttp = ["tcp:80:bogus=1"]\n')
    oneLineError(twistd(tmp_path, "--config", str(config)), f"{config}: listen.http")


def test_configErrorWithoutUsageText(tmp_path):
    """A config error under twistd is one line, without twistd's usage text."""
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nauth_timeout = 'soon'\n")
    oneLineError(twistd(tmp_path, "--config", str(config)), f"{config}: limits.auth_timeout")


def ctl(server: RunningServer, *args: str, input: str | None = None, config: bool = True):
    command = [sys.executable, "-m", "invitesrv.ctl"]
    if config:
        command += ["--config", str(server.configPath)]
    return subprocess.run([*command, *args], input=input, capture_output=True, text=True,
                          timeout=60, cwd=server.directory, check=False)


def test_ctlUsesTheRunningServersHosts(serverFactory):
    """
    A server started with C{--domain}: the control socket is the owner's
    alone, and C{invitesrvctl} with only the config adds and lists accounts
    of that domain, and says which data dir it uses.
    """
    server = serverFactory("", "--domain", "example.test")
    socketPath = server.dataDir / "control.sock"
    assert stat.S_ISSOCK(socketPath.stat().st_mode)
    assert stat.S_IMODE(socketPath.stat().st_mode) == 0o600
    result = ctl(server, "adduser", "bob@example.test", input="bob's long password\n")
    assert result.returncode == 0, result.stderr
    assert f"data dir {server.dataDir.resolve()} (server running)" in result.stderr
    assert ctl(server, "users").stdout.split() == ["bob@example.test"]
    with RawClient(server.port, host="example.test") as client:
        assert client.login("bob", "bob's long password", resource="r") == "bob@example.test/r"
    server.stop()
    # Stopped: the record in the data dir still names the host, and the database is used directly.
    result = ctl(server, "users")
    assert result.stdout.split() == ["bob@example.test"], result.stderr
    assert "(server not running)" in result.stderr


def test_ctlRefusesToCreateAStrayDatabase(tmp_path):
    """Run from the wrong directory, a command says there is no database instead of making one."""
    result = subprocess.run([sys.executable, "-m", "invitesrv.ctl", "invite", "list"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "no database in" in result.stderr and "--create" in result.stderr, result.stderr
    assert not (tmp_path / "data").exists()
    result = subprocess.run([sys.executable, "-m", "invitesrv.ctl", "--create", "users"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "(a new database)" in result.stderr
    assert (tmp_path / "data" / "invitesrv.sqlite3").exists()


def test_ctlOutputIntoAClosedPipe(sharedServer):
    """C{invitesrvctl users | head -1} ends quietly: no BrokenPipeError traceback."""
    for number in range(40):
        sharedServer.adduser(f"pipe{number}@localhost", "a long password")
    result = subprocess.run(
        f"{sys.executable} -m invitesrv.ctl --config {sharedServer.configPath} users | head -1",
        shell=True, capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_helpHasNoMarkup():
    """C{--help} reads as plain text."""
    result = subprocess.run([sys.executable, "-m", "invitesrv.ctl", "--help"], capture_output=True,
                            text=True, timeout=60, check=True)
    assert "C{" not in result.stdout and "invitesrv server" in result.stdout
    result = subprocess.run([sys.executable, "-m", "invitesrv.ctl", "invite", "show", "--help"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert "the invite's id" in result.stdout


def test_liveCommands(serverFactory):
    """
    C{sessions} lists who is online from where, C{announce} reaches them,
    C{kick} ends a session, and C{deluser} runs in the server: the deleted
    user's contact is told at once (the database alone could not tell anyone).
    """
    server = serverFactory()
    for name in ("ann", "ben"):
        server.adduser(f"{name}@localhost", f"{name}'s long password")
    with RawClient(server.port) as ann, RawClient(server.port) as ben:
        ann.login("ann", "ann's long password", resource="phone")
        ben.login("ben", "ben's long password", resource="desk")
        ann.send("<presence/>")
        ben.send("<presence/>")
        ann.send("<presence type='subscribe' to='ben@localhost'/>")
        ben.recvUntil("type=['\"]subscribe")
        ben.send("<presence type='subscribed' to='ann@localhost'/>")
        ann.recvUntil("<presence from=['\"]ben@localhost/desk")

        lines = ctl(server, "sessions").stdout.splitlines()
        assert [line.split("\t")[:2] for line in lines] == [
            ["ann@localhost/phone", "127.0.0.1"], ["ben@localhost/desk", "127.0.0.1"]]

        result = ctl(server, "announce", "localhost", "Maintenance at noon")
        assert result.stdout.strip() == "Sent to 2 session(s)", result.stderr
        for client in (ann, ben):
            client.recvUntil("<body>Maintenance at noon</body>")

        result = ctl(server, "kick", "ben@localhost/desk", "--text", "bye")
        assert result.stdout.strip() == "Disconnected 1 session(s)", result.stderr
        assert "policy-violation" in ben.recvUntil("</stream:stream>")
        ann.recvUntil("type=['\"]unavailable")

        result = ctl(server, "deluser", "ben@localhost")
        assert result.returncode == 0, result.stderr
        ann.recvUntil("type=['\"]unsubscribe")
        assert ctl(server, "users").stdout.split() == ["ann@localhost"]

    status = ctl(server, "status")
    assert "Running, pid" in status.stdout and "serving localhost" in status.stdout


def test_liveCommandsNeedTheServer(serverFactory):
    """Without a running server, C{sessions} says so in one line."""
    server = serverFactory()
    server.stop()
    result = ctl(server, "sessions")
    assert result.returncode == 1
    assert "no server is running" in result.stderr and "Traceback" not in result.stderr


def test_readmeLoginSnippet(serverFactory, tmp_path):
    """The README's slixmpp example, run as written (but for the port), prints "logged in" and exits."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    snippet = re.search(r"## First login.*?```python\n(.*?)```", readme, re.S).group(1)
    server = serverFactory()
    server.adduser("alice@localhost", "the password")
    script = tmp_path / "snippet.py"
    script.write_text(snippet.replace("5222", str(server.port)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.stdout.strip() == "logged in", result.stdout + result.stderr
    assert result.returncode == 0


def test_inviteLinkFromThePublicURLFlag(serverFactory):
    """C{invite create} prints the landing link when the public URL came from C{--public-url}."""
    server = serverFactory("", "--http", "tcp:0:interface=127.0.0.1",
                           "--public-url", "https://chat.example.test")
    result = ctl(server, "invite", "create", "localhost")
    assert result.returncode == 0, result.stderr
    assert "Link: https://chat.example.test/invite/" in result.stdout, result.stdout


def test_backupAndRestore(serverFactory, tmp_path):
    """
    A backup taken while the server runs (and registers people) is a whole,
    private copy; restore refuses while the server runs, and afterwards
    brings back what the backup held, keeping the database it replaced.
    """
    server = serverFactory()
    for name in ("alice", "bob"):
        server.adduser(f"{name}@localhost", f"{name}'s long password")
    busy = threading.Thread(target=lambda: [server.adduser(f"user{n}@localhost", "a long password")
                                            for n in range(15)])
    busy.start()
    copies = [tmp_path / f"copy{n}.sqlite3" for n in range(3)]
    for copy in copies:
        result = ctl(server, "backup", str(copy))
        assert result.returncode == 0, result.stderr
    busy.join()
    for copy in copies:
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert checkBackup(str(copy)) >= 1
    assert "exists" in ctl(server, "backup", str(copies[0])).stderr

    assert ctl(server, "deluser", "bob@localhost").returncode == 0
    result = ctl(server, "restore", str(copies[0]))
    assert result.returncode == 1 and "stop it first" in result.stderr
    server.stop()
    result = ctl(server, "restore", str(copies[0]))
    assert result.returncode == 0, result.stderr
    assert (server.dataDir / "invitesrv.sqlite3.before-restore").exists()
    server.start()
    with RawClient(server.port) as client:
        assert client.login("bob", "bob's long password", resource="r") == "bob@localhost/r"


def test_restoreRefusesWhatIsNotABackup(serverFactory, tmp_path):
    """Restoring a file that is not an invitesrv database says so and changes nothing."""
    server = serverFactory()
    server.adduser("alice@localhost", "alice's long password")
    server.stop()
    bogus = tmp_path / "bogus.sqlite3"
    bogus.write_bytes(b"not a database" * 100)
    result = ctl(server, "restore", str(bogus))
    assert result.returncode == 1 and "not an SQLite database" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert ctl(server, "users").stdout.split() == ["alice@localhost"]


def test_ctlEndsSessionsOfChangedAndDeletedAccounts(serverFactory):
    """
    C{invitesrvctl passwd} and C{deluser} while the server runs go through
    its registrar: the account's live sessions end at once.
    """
    server = serverFactory()
    for name in ("cleo", "dana"):
        server.adduser(f"{name}@localhost", f"{name}'s long password")
    with RawClient(server.port) as cleo, RawClient(server.port) as dana:
        cleo.login("cleo", "cleo's long password")
        dana.login("dana", "dana's long password")
        result = ctl(server, "passwd", "cleo@localhost", input="cleo's new password\n")
        assert result.returncode == 0, result.stderr
        assert "not-authorized" in cleo.recvUntil("</stream:stream>")
        assert ctl(server, "deluser", "dana@localhost").returncode == 0
        assert "not-authorized" in dana.recvUntil("</stream:stream>")
    with RawClient(server.port) as cleo:
        assert cleo.login("cleo", "cleo's new password", resource="r") == "cleo@localhost/r"
