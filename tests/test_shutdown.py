"""
A clean shutdown (SIGTERM) over real sockets: every client, whatever stage
its stream is at, is told C{<system-shutdown/>} and the stream is closed;
the process exits within a bound even when a client does not read what it
is sent; nothing is reported as a crash; and an invite that a stream held at
that moment is free again after the restart.
"""

from __future__ import annotations

import re
import signal
import socket
import time

from rawxmpp import RawClient

PASSWORD = "correct horse"
SHUTDOWN = "<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"


def preauth(client: RawClient, token: str) -> str:
    client.send(f"<iq type='set' id='pa'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
    return client.recvUntil(r"<iq [^>]*id='pa'[^>]*(/>|>.*?</iq>)")


def test_shutdownTellsEveryoneAndEndsInTime(serverFactory):
    """
    SIGTERM with a bound client, one half-way through negotiation, one that
    sent nothing, one holding a single-use invite, and one that stopped
    reading with megabytes on their way to it: the first four get
    <system-shutdown/> and are closed, the process is gone within 8 seconds
    (it waits at most 5 for the clients), and after a restart the invite
    works again.
    """
    server = serverFactory("[limits]\nsend_buffer = 100000000\n")
    for name in ("alice", "bob", "carol"):
        server.adduser(f"{name}@localhost", PASSWORD)
    output = server.ctl("invite", "create", "localhost").stdout
    token = re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1)

    bound = RawClient(server.port)
    bound.login("alice", PASSWORD, "desk")
    negotiating = RawClient(server.port)
    negotiating.startTLS()
    silent = RawClient(server.port)
    holder = RawClient(server.port)
    holder.startTLS()
    assert "type='result'" in preauth(holder, token)
    deaf = RawClient(server.port)
    deaf.login("bob", PASSWORD, "deaf")
    deaf.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    loud = RawClient(server.port)
    loud.login("carol", PASSWORD, "loud")
    body = "x" * 60_000
    for _ in range(80):
        loud.send(f"<message to='bob@localhost/deaf' type='headline'><body>{body}</body></message>")
    loud.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    loud.recvUntil(r"<iq[^>]*id='sync'")  # the server has taken all of it

    started = time.monotonic()
    status = server.stop(signal.SIGTERM, timeout=15)
    elapsed = time.monotonic() - started
    assert status == -signal.SIGTERM, status  # twistd exits through the signal, cleanly
    assert elapsed < 8, elapsed
    for client in (bound, negotiating, silent, holder, loud):
        text = client.readAll(2)
        assert SHUTDOWN in text and text.rstrip().endswith("</stream:stream>"), text[-300:]
        assert client.isClosed(1)
        client.close()
    deaf.close()
    log = server.log()
    assert "Server Shut Down." in log and "Traceback" not in log

    server.start()
    with RawClient(server.port) as client:
        client.startTLS()
        assert "type='result'" in preauth(client, token)
