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
NS_SM = "urn:xmpp:sm:3"
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


def test_unackedStanzasSurviveShutdown(serverFactory):
    """
    Stream-managed sessions at SIGTERM: alice's phone, its connection gone
    (hibernated) with one message unacknowledged and one queued since, and
    carol's phone, connected, with one unacknowledged. After the restart
    each finds hers in offline storage at the next login, in order and
    once: nothing is lost with the sessions, nothing comes twice.
    """
    server = serverFactory()
    for name in ("alice", "bob", "carol"):
        server.adduser(f"{name}@localhost", PASSWORD)
    bob = RawClient(server.port)
    bob.login("bob", PASSWORD, "desk")
    phones = {}
    for name in ("alice", "carol"):
        phone = phones[name] = RawClient(server.port)
        phone.login(name, PASSWORD, "phone")
        phone.send("<presence/>")
        phone.recvUntil(r"<presence[^>]*/?>")
        phone.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
        phone.recvUntil(r"<enabled [^>]*/>")
    send(bob, "alice@localhost/phone", "one")
    send(bob, "carol@localhost/phone", "three")
    phones["alice"].recvUntil(r"one</body>")
    phones["carol"].recvUntil(r"three</body>")
    phones["alice"].close()  # no ack, no closing tag: the session hibernates
    time.sleep(0.5)
    send(bob, "alice@localhost/phone", "two")
    bob.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    bob.recvUntil(r"<iq[^>]*id='sync'")
    assert "Traceback" not in server.log()

    assert server.stop(signal.SIGTERM, timeout=15) == -signal.SIGTERM
    for client in (bob, phones["carol"]):
        client.close()
    log = server.log()
    assert "2 stanzas unacknowledged; handing them on" in log, log[-3000:]
    assert "Traceback" not in log and "Cannot keep" not in log, log[-3000:]

    server.start()
    for name, expected in (("alice", ["one", "two"]), ("carol", ["three"])):
        for wanted in (expected, []):
            with RawClient(server.port) as again:
                again.login(name, PASSWORD, "laptop")
                again.send("<presence/>")
                text = again.readAll(2)
                assert re.findall(r"<body>([^<]*)</body>", text) == wanted, text


def send(sender: RawClient, to: str, body: str) -> None:
    sender.send(f"<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>")
