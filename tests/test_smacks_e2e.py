"""
XEP-0198 stream management over real sockets, in raw XML where the bytes
matter: enable and counting, a link that freezes (a proxy that stops
forwarding, as a phone changing networks), resumption after an abrupt
close, a close without acknowledgements, two resources with carbons, and
slixmpp's xep_0198 plugin resuming on its own.
"""

from __future__ import annotations

import asyncio
import re
import select
import socket
import threading
import time

import pytest
import slix
from conftest import RunningServer
from rawxmpp import RawClient
from saslclient import NS_BIND2, SASLClient

NS_SM = "urn:xmpp:sm:3"
HIBERNATION = 6  # seconds: short, so that a session that is not resumed ends within a test


class FreezingProxy:
    """
    A TCP proxy in front of the server for one client connection. Once
    C{freeze()} is called it stops forwarding in both directions and keeps
    the connections open: to both ends the link just went silent.
    """

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        self.sockets += [client, server]
        peers = {client: server, server: client}
        while not self.stopped.is_set():
            if self.frozen.is_set():
                time.sleep(0.05)
                continue
            readable, _, _ = select.select(list(peers), [], [], 0.05)
            for sock in readable:
                if self.frozen.is_set():
                    break
                data = sock.recv(65536)
                if not data:
                    return
                peers[sock].sendall(data)

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        for sock in self.sockets:
            sock.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A real server with the default modules and a short hibernation."""
    server = RunningServer(tmp_path_factory.mktemp("smacks"),
                           f"[modules.smacks]\nhibernation_time = {HIBERNATION}\n").start()
    for user in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan"):
        server.adduser(f"{user}@localhost", f"{user} password")
    yield server
    server.stop()


def login(client: RawClient, user: str, resource: str = "raw") -> str:
    return client.login(user, f"{user} password", resource)


def enable(client: RawClient) -> str:
    """Enable resumable stream management; return the resumption token."""
    client.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    enabled = client.recvUntil(r"<enabled [^>]*/>")
    assert "resume='true'" in enabled and f"max='{HIBERNATION}'" in enabled, enabled
    return re.search(r"id='([^']+)'", enabled).group(1)


def authenticate(client: RawClient, user: str) -> None:
    """STARTTLS and SCRAM, and the stream after it: ready to resume (not bound)."""
    client.startTLS()
    assert "<success" in client.scram(user, f"{user} password")
    client.openStream()


def chat(sender: RawClient, to: str, body: str) -> None:
    sender.send(f"<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>")


def settled(client: RawClient) -> str:
    """Wait until the server has handled what C{client} sent so far; return what came until then."""
    client.send("<iq type='get' id='settled'><ping xmlns='urn:xmpp:ping'/></iq>")
    return client.recvUntil(r"<iq[^>]*id='settled'[^>]*/?>")


def bodies(text: str) -> list[str]:
    return re.findall(r"<body>([^<]*)</body>", text)


def test_enableAndCountBothWays(running):
    """enabled with a token; the server asks with <r/> and answers <r/> with what it got."""
    with RawClient(running.port) as alice, RawClient(running.port) as bob:
        me = login(alice, "alice")
        login(bob, "bob")
        enable(alice)
        chat(bob, me, "one")
        text = alice.recvUntil(f"<r xmlns='{NS_SM}'/>")
        assert bodies(text) == ["one"]
        alice.send(f"<a xmlns='{NS_SM}' h='1'/><r xmlns='{NS_SM}'/>")
        assert "h='0'" in alice.recvUntil(r"<a [^>]*/>")
        chat(alice, "bob@localhost", "two")
        alice.send(f"<r xmlns='{NS_SM}'/>")
        assert "h='1'" in alice.recvUntil(r"<a [^>]*/>")


def test_frozenLinkResumedElsewhere(running):
    """
    The client's link freezes (a proxy stops forwarding); messages sent to it
    meanwhile are written into the dead link and kept unacknowledged. The
    client resumes on a new connection with the h it had and gets exactly
    the messages it had not acknowledged, once; the session goes on there.
    """
    proxy = FreezingProxy(running.port)
    try:
        with RawClient(proxy.port) as phone, RawClient(running.port) as bob:
            me = login(phone, "carol", "phone")
            login(bob, "bob")
            token = enable(phone)
            chat(bob, me, "before")
            assert bodies(phone.recvUntil(r"</message>")) == ["before"]
            phone.send(f"<a xmlns='{NS_SM}' h='1'/>")
            settled(phone)
            proxy.freeze()
            chat(bob, me, "frozen 1")
            chat(bob, me, "frozen 2")
            settled(bob)
            with RawClient(running.port) as again:
                authenticate(again, "carol")
                again.send(f"<resume xmlns='{NS_SM}' previd='{token}' h='1'/>")
                resumed = again.recvUntil(r"<resumed [^>]*/>")
                assert f"previd='{token}'" in resumed and "h='1'" in resumed  # its ack and settled ping
                text = again.recvUntil(r"frozen 2</body>.*?</message>")
                assert bodies(text) == ["frozen 1", "frozen 2"]
                assert "urn:xmpp:delay" in text
                chat(bob, me, "after")
                text = again.recvUntil(r"after</body>")
                text += again.readAll(1.0)
                assert bodies(text) == ["after"]
    finally:
        proxy.close()


def test_resumeAfterAbruptClose(running):
    """A connection closed without a closing tag: the session waits and is resumed with all unacked."""
    with RawClient(running.port) as bob:
        login(bob, "bob")
        phone = RawClient(running.port)
        me = login(phone, "dave", "phone")
        token = enable(phone)
        chat(bob, me, "one")
        phone.recvUntil(r"one</body>")
        phone.close()  # no acknowledgement, no closing tag
        chat(bob, me, "two")
        settled(bob)
        with RawClient(running.port) as again:
            authenticate(again, "dave")
            again.send(f"<resume xmlns='{NS_SM}' previd='{token}' h='0'/>")
            again.recvUntil(r"<resumed [^>]*/>")
            assert bodies(again.recvUntil(r"two</body>")) == ["one", "two"]


def test_closeWithoutAcksGoesOffline(running):
    """
    A client that closes its stream with messages unacknowledged (and no
    other resource) finds them at its next login, once, in order.
    """
    with RawClient(running.port) as bob:
        login(bob, "bob")
        with RawClient(running.port) as phone:
            me = login(phone, "erin", "phone")
            phone.send("<presence/>")
            phone.recvUntil(r"<presence[^>]*/?>")
            enable(phone)
            chat(bob, me, "one")
            chat(bob, me, "two")
            phone.recvUntil(r"two</body>")
            phone.send("</stream:stream>")
            assert phone.isClosed()
        settled(bob)
        for expected in (["one", "two"], []):
            with RawClient(running.port) as again:
                login(again, "erin", "laptop")
                again.send("<presence/>")
                text = settled(again) + again.readAll(1.5)
                assert bodies(text) == expected, text


def test_twoResourcesWithCarbons(running):
    """
    A phone with stream management and a desktop with carbons: when the
    phone's session ends unresumed, the desktop (which had a carbon) gets
    nothing twice, and nothing goes offline; a message the desktop never
    saw is handed to it.
    """
    with RawClient(running.port) as bob, RawClient(running.port) as desk:
        login(bob, "bob")
        deskJID = login(desk, "frank", "desk")
        desk.send("<presence><priority>1</priority></presence>")
        settled(desk)
        phone = RawClient(running.port)
        login(phone, "frank", "phone")
        phone.send("<presence><priority>5</priority></presence>")
        enable(phone)
        chat(bob, "frank@localhost", "before carbons")  # to the phone only
        phone.recvUntil(r"before carbons</body>")
        desk.send("<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        desk.recvUntil(r"id='c1'")
        chat(bob, "frank@localhost", "with carbons")
        phone.recvUntil(r"with carbons</body>")
        assert "with carbons" in desk.recvUntil(r"with carbons</body>")
        phone.close()  # abrupt: it hibernates, then ends
        settled(bob)
        time.sleep(HIBERNATION + 1.0)
        text = desk.readAll(2.0)
        assert bodies(text) == ["before carbons"], text
        assert deskJID in text
    with RawClient(running.port) as again:
        login(again, "frank", "phone")
        again.send("<presence/>")
        assert bodies(settled(again) + again.readAll(1.5)) == []


def test_wrongAccountToken(running):
    """A token used by another account fails with item-not-found; its owner still resumes."""
    with RawClient(running.port) as phone:
        login(phone, "grace", "phone")
        token = enable(phone)
        with RawClient(running.port) as thief:
            authenticate(thief, "bob")
            thief.send(f"<resume xmlns='{NS_SM}' previd='{token}' h='0'/>")
            failed = thief.recvUntil(r"</failed>")
            assert "item-not-found" in failed and " h=" not in failed
        with RawClient(running.port) as again:
            authenticate(again, "grace")
            again.send(f"<resume xmlns='{NS_SM}' previd='{token}' h='0'/>")
            again.recvUntil(r"<resumed [^>]*/>")
            assert "<conflict" in phone.readAll(2.0)


def test_slixmppResumes(running):
    """slixmpp's xep_0198 enables management; after a lost connection it resumes and gets what it missed."""
    async def scenario():
        heidi = slix.Client("heidi@localhost/slix", "heidi password",
                            plugins=("xep_0030", "xep_0199", "xep_0198"))
        got: asyncio.Queue = asyncio.Queue()
        heidi.add_event_handler("message", lambda message: got.put_nowait(str(message["body"])))
        enabled = asyncio.get_event_loop().create_future()
        resumed = asyncio.get_event_loop().create_future()
        heidi.add_event_handler("sm_enabled", lambda _: enabled.done() or enabled.set_result(True))
        heidi.add_event_handler("session_resumed",
                                lambda _: resumed.done() or resumed.set_result(True))
        assert await heidi.login(running.port)
        await asyncio.wait_for(enabled, 10)
        bob = RawClient(running.port)
        try:
            login(bob, "bob")
            chat(bob, "heidi@localhost/slix", "one")
            assert await asyncio.wait_for(got.get(), 10) == "one"
            lost = heidi.disconnected
            heidi.abort()
            await asyncio.wait_for(lost, 10)
            await asyncio.sleep(0.5)  # the server notices the connection is gone
            chat(bob, "heidi@localhost/slix", "two")
            settled(bob)
            heidi.connect("127.0.0.1", running.port)
            await asyncio.wait_for(resumed, 15)
            assert await asyncio.wait_for(got.get(), 10) == "two"
            await asyncio.sleep(0.5)
            assert got.empty()
        finally:
            bob.close()
            await heidi.logout()
    slix.run(scenario())


def test_sasl2InlineEnableAndResume(running):
    """
    XEP-0388/0386 in one round trip each: stream management enabled inside
    Bind2's <bind/> (<enabled/> in <bound/>), and a lost session resumed
    inside SASL2's <authenticate/> (<resumed/> in <success/>, nothing bound),
    then what was not acknowledged, again.
    """
    with RawClient(running.port) as bob:
        login(bob, "bob")
        phone = SASLClient(running.port)
        phone.startTLS()
        result = phone.authenticate("PLAIN", b"\0ivan\0ivan password",
                                    f"<bind xmlns='{NS_BIND2}'><tag>phone</tag>"
                                    f"<enable xmlns='{NS_SM}' resume='true'/></bind>")
        assert result.ok, result
        enabled = re.search(r"<bound xmlns=.urn:xmpp:bind:0.>.*?<enabled [^>]*>", result.xml, re.S)
        assert enabled, result.xml
        token = re.search(r"id=.([^'\"]+)", enabled.group(0)).group(1)
        chat(bob, result.identifier, "one")
        phone.recvUntil(r"one</body>")
        phone.close()
        chat(bob, result.identifier, "two")
        settled(bob)
        with SASLClient(running.port) as again:
            again.startTLS()
            resumed = again.authenticate("PLAIN", b"\0ivan\0ivan password",
                                         f"<resume xmlns='{NS_SM}' previd='{token}' h='0'/>"
                                         f"<bind xmlns='{NS_BIND2}'><tag>phone</tag></bind>")
            assert resumed.ok and f"previd='{token}'" in resumed.xml, resumed.xml
            assert "<bound" not in resumed.xml and resumed.identifier == result.identifier
            assert bodies(again.recvUntil(r"two</body>")) == ["one", "two"]
