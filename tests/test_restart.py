"""
A restart loses nothing: after SIGTERM the server says goodbye to connected
clients and exits cleanly; started again on the same data directory it has
the same accounts, passwords, certificate and secret.
"""

from __future__ import annotations

import signal

from rawxmpp import RawClient

PASSWORD = "restart password"


def canLogIn(port: int, username: str, password: str) -> bool:
    with RawClient(port) as client:
        client.startTLS()
        return "<success" in client.scram(username, password)


def test_accountsSurviveRestart(serverFactory):
    """Accounts created before a stop log in after a start on the same data directory."""
    server = serverFactory()
    server.adduser("alice@localhost", PASSWORD)
    server.adduser("bob@localhost", "bob password")
    assert canLogIn(server.port, "alice", PASSWORD)
    data = server.dataDir
    certificate = (data / "tls" / "server.crt").read_bytes()
    secret = (data / "server.secret").read_bytes()

    with RawClient(server.port) as connected:
        connected.login("bob", "bob password", "desk")
        # twistd exits through the signal that stopped it, once shut down cleanly.
        assert server.stop(signal.SIGTERM) == -signal.SIGTERM
        text = connected.recvUntil(r"</stream:stream>")
        assert "<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in text
        assert connected.isClosed()
    log = server.log()
    assert "Server Shut Down." in log and "Traceback" not in log

    server.start()
    assert canLogIn(server.port, "alice", PASSWORD)
    assert canLogIn(server.port, "bob", "bob password")
    assert not canLogIn(server.port, "alice", "wrong password")
    with RawClient(server.port) as client:
        assert client.login("alice", PASSWORD, "again") == "alice@localhost/again"
    assert (data / "tls" / "server.crt").read_bytes() == certificate
    assert (data / "server.secret").read_bytes() == secret
    listed = server.ctl("users").stdout.split()
    assert listed == ["alice@localhost", "bob@localhost"]
