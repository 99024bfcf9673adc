"""
C{invitesrvctl} accounts, run as a user runs it (both C{python -m
invitesrv.ctl} and the console script) against the data of a running server:
passwords come from standard input, never from the command line, errors are
one clear line, and what the command changes is live for the server at once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunningServer
from rawxmpp import RawClient
from slix import Client, run

CONSOLE_SCRIPT = str(Path(sys.executable).with_name("invitesrvctl"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer(tmp_path_factory.mktemp("ctl"), "").start()
    yield running
    running.stop()


def ctl(server, *args: str, input: str | None = None, script: bool = False):
    """Run the command (module or console script) on the server's config; return the result."""
    command = [CONSOLE_SCRIPT] if script else [sys.executable, "-m", "invitesrv.ctl"]
    return subprocess.run([*command, "--config", str(server.configPath), *args], input=input,
                          capture_output=True, text=True, timeout=60, cwd=server.directory,
                          check=False)


def fails(result, message: str) -> None:
    """The command failed with C{message} on standard error, and no traceback."""
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def canLogIn(server, username: str, password: str) -> bool:
    with RawClient(server.port) as client:
        client.startTLS()
        return "<success" in client.scram(username, password)


def test_adduserWhileServerRuns(server):
    """An account created from the command line logs in at once (slixmpp, SCRAM)."""
    result = ctl(server, "adduser", "Carol@localhost", input="carol's secret\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Created carol@localhost"

    async def scenario():
        client = Client("carol@localhost/cli", "carol's secret")
        assert await client.login(server.port)
        await client.logout()
    run(scenario())
    for output in (result.stdout, result.stderr, server.log()):
        assert "carol's secret" not in output


def test_consoleScript(server):
    """The installed invitesrvctl script does the same."""
    result = ctl(server, "adduser", "dora@localhost", input="dora password\n", script=True)
    assert result.returncode == 0, result.stderr
    listed = ctl(server, "users", script=True)
    assert "dora@localhost" in listed.stdout.split()
    assert canLogIn(server, "dora", "dora password")


def test_passwordNotAnArgument(server):
    """There is no way to put a password on the command line: it would show in ps."""
    result = ctl(server, "adduser", "erin@localhost", "erin password", input="")
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
    assert "erin@localhost" not in ctl(server, "users").stdout
    helpText = ctl(server, "adduser", "--help").stdout
    assert "password" not in helpText.lower()


def test_noPasswordOnStdin(server):
    fails(ctl(server, "adduser", "erin@localhost", input=""), "no password on standard input")
    assert "erin@localhost" not in ctl(server, "users").stdout


def test_adduserErrors(server):
    """Unknown host, existing account, invalid username or password: one clear line each."""
    ctl(server, "adduser", "frank@localhost", input="frank password\n")
    fails(ctl(server, "adduser", "frank@example.org", input="pw pw pw pw\n"),
          "unknown host 'example.org'")
    fails(ctl(server, "adduser", "frank@localhost", input="other password\n"),
          "account frank@localhost exists")
    fails(ctl(server, "adduser", "fr ank@localhost", input="pw pw pw pw\n"), "is not a valid JID")
    fails(ctl(server, "adduser", "localhost", input="pw pw pw pw\n"), "is not an account address")
    fails(ctl(server, "adduser", "gina@localhost", input="short\n"), "Password is too short")
    assert canLogIn(server, "frank", "frank password")


def test_passwd(server):
    """A new password works at once and the old one stops working."""
    ctl(server, "adduser", "hank@localhost", input="old password\n")
    result = ctl(server, "passwd", "hank@localhost", input="new password\n")
    assert result.returncode == 0, result.stderr
    assert canLogIn(server, "hank", "new password")
    assert not canLogIn(server, "hank", "old password")
    fails(ctl(server, "passwd", "nobody@localhost", input="new password\n"), "no account nobody@localhost")


def test_deluser(server):
    """A deleted account can no longer log in, and deleting it twice is an error."""
    ctl(server, "adduser", "ivan@localhost", input="ivan password\n")
    assert canLogIn(server, "ivan", "ivan password")
    result = ctl(server, "deluser", "ivan@localhost")
    assert result.returncode == 0 and "Deleted ivan@localhost" in result.stdout
    assert not canLogIn(server, "ivan", "ivan password")
    fails(ctl(server, "deluser", "ivan@localhost"), "no account ivan@localhost")
    assert "ivan@localhost" not in ctl(server, "users").stdout


def test_users(server):
    """users lists accounts sorted, for every host or one; an unknown host is an error."""
    ctl(server, "adduser", "abby@localhost", input="abby password\n")
    listed = ctl(server, "users", "localhost").stdout.split()
    assert "abby@localhost" in listed and listed == sorted(listed)
    fails(ctl(server, "users", "example.org"), "unknown host 'example.org'")


def test_deluserLeavesContactsRosters(server):
    """An account deleted from the command line is gone from its contacts' rosters too."""
    server.adduser("gone@localhost", "a password here")
    server.adduser("stays@localhost", "a password here")
    with RawClient(server.port) as client:
        client.login("stays", "a password here")
        client.send("<iq type='set' id='add'><query xmlns='jabber:iq:roster'>"
                    "<item jid='gone@localhost' name='Gone'/></query></iq>")
        client.recvUntil(r"<iq [^>]*id='add'[^>]*/>")
    ctl(server, "deluser", "gone@localhost")
    with RawClient(server.port) as client:
        client.login("stays", "a password here", "again")
        client.send("<iq type='get' id='get'><query xmlns='jabber:iq:roster'/></iq>")
        roster = client.recvUntil(r"<iq [^>]*id='get'.*?(</iq>|/>)")
    assert "type='result'" in roster and "gone@localhost" not in roster
