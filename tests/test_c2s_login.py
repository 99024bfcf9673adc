"""End to end: a real server process, real TLS, real SQLite, slixmpp logging in."""

import ssl
import time

import pytest
from rawxmpp import RawClient
from slix import Client, run


@pytest.fixture(scope="module")
def server(sharedServer):
    sharedServer.adduser("alice@localhost", "correct horse")
    return sharedServer


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_slixmppLogsIn(server, mechanism):
    """slixmpp logs in over STARTTLS with each mechanism and gets a ping answered."""
    async def scenario():
        client = Client("alice@localhost/phone", "correct horse", mechanism)
        assert await client.login(server.port)
        assert str(client.boundjid) == "alice@localhost/phone"
        await client.plugin["xep_0199"].ping("localhost", timeout=5)
        await client.logout()
    run(scenario())


def test_wrongPasswordFails(server):
    """A wrong password is refused and a fresh client still logs in afterwards."""
    async def scenario():
        bad = Client("alice@localhost/x", "wrong horse", "SCRAM-SHA-256")
        assert not await bad.login(server.port)
        await bad.logout()
        good = Client("alice@localhost/x", "correct horse")
        assert await good.login(server.port)
        await good.logout()
    run(scenario())


def test_rawLoginAndPing(server):
    """The raw client negotiates STARTTLS, SCRAM and bind, and pings the server."""
    with RawClient(server.port) as client:
        assert client.login("alice", "correct horse", "desk") == "alice@localhost/desk"
        client.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        reply = client.recvUntil(r"<iq[^>]*id='p1'[^>]*/>")
        assert "type='result'" in reply


def test_quietStreamReadAfterItsParserRests(server):
    """
    Over real TLS, a client quiet for longer than the parser's rest (its
    parser is freed) is read as before when it speaks again, and a stanza
    left half-sent across that time (the parser must keep it) completes.
    """
    from invitesrv.xmpp.stream import PARSER_REST
    with RawClient(server.port) as client:
        client.login("alice", "correct horse", "quiet")
        client.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        client.recvUntil(r"<iq[^>]*id='p1'[^>]*/>")
        time.sleep(2 * PARSER_REST + 0.5)
        client.send("<iq type='get' id='p2' to='localhost'><ping xmlns")
        time.sleep(2 * PARSER_REST + 0.5)
        client.send("='urn:xmpp:ping'/></iq>")
        assert "type='result'" in client.recvUntil(r"<iq[^>]*id='p2'[^>]*/>")
        client.send("</stream:stream>")
        assert client.isClosed()


def test_directTLS(tmp_path):
    """XEP-0368: on the direct-TLS listener the stream is encrypted from the first byte."""
    from conftest import RunningServer
    server = RunningServer(tmp_path)
    server.configPath.write_text(server.configPath.read_text().replace(
        '[listen]\n', '[listen]\nc2s_direct_tls = ["tcp:0:interface=127.0.0.1"]\n'))
    server.start()
    try:
        server.adduser("dora@localhost", "direct and secure")
        port = server.ports["Direct TLS clients (XEP-0368)"]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["xmpp-client"])
        with RawClient(port) as client:
            client.sock = context.wrap_socket(client.sock, server_hostname="localhost")
            assert client.sock.selected_alpn_protocol() == "xmpp-client"
            features = client.openStream()
            assert "starttls" not in features and "SCRAM-SHA-256" in features
            assert "<success" in client.scram("dora", "direct and secure")
    finally:
        server.stop()
