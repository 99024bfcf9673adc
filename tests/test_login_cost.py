"""
What a login and a reconnect cost the server, counted rather than timed (in
memory, on a Clock): work that is not needed is not done. A bound session's
JID and the server's answers to it are not stringprepped again, nor the
username and resource of a phone's next login, a stream
that uses no channel binding computes none, the store is read once where
once will do, a parser a restart replaced is freed at once, and an idle
stream's parser rests.
"""

from __future__ import annotations

import base64
import gc
import hmac
import weakref
from dataclasses import replace

import pytest
from streamharness import PASSWORD, Client, ClientConnection, addAccounts
from twisted.internet import task
from twisted.words.protocols.jabber import jid

from invitesrv.config import DEFAULT_MODULES
from invitesrv.modules.sasl2 import DEVICE_RECORD_DELAY
from invitesrv.xmpp.router import prepareResource, prepareUsername
from invitesrv.xmpp.stream import PARSER_REST

NS_PING = "urn:xmpp:ping"
NS_SASL2 = "urn:xmpp:sasl:2"
NS_FAST = "urn:xmpp:fast:0"
AGENT = "<user-agent id='phone-1'><software>unit</software></user-agent>"


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def server(servers, clock):
    server = servers(clock, modules=DEFAULT_MODULES)
    addAccounts(server, "ann")
    return server


def test_noStringprepForBoundJIDs(server, monkeypatch):
    """
    Binding a resource, presence and a ping answered to the full JID prepare
    no JID: its parts are prepared already, and stringprep costs more than
    the rest of a bind.
    """
    Client(server, "ann", "warm").close()  # the host's own name, parsed once for good
    prepared = []
    original = jid.prep
    monkeypatch.setattr(jid, "prep", lambda *parts: prepared.append(parts) or original(*parts))
    client = Client(server, "ann", "phone")
    client.send("<presence/>")
    answer = client.request(f"<ping xmlns='{NS_PING}'/>", to="localhost")
    assert answer["type"] == "result" and answer["to"] == "ann@localhost/phone"
    assert client.jid == "ann@localhost/phone"
    session = server.router.resourcesOf("ann@localhost")["phone"]
    assert (session.jid.user, session.jid.host, session.jid.resource) == ("ann", "localhost", "phone")
    assert prepared == []
    client.close()


def test_namesPreparedOnce(server):
    """
    A phone's next login stringpreps neither its username nor its resource
    again; a name that nodeprep refuses is refused every time.
    """
    Client(server, "ann", "phone").close()
    before = [(f.cache_info().hits, f.cache_info().misses) for f in (prepareUsername, prepareResource)]
    Client(server, "ann", "phone").close()
    after = [(f.cache_info().hits, f.cache_info().misses) for f in (prepareUsername, prepareResource)]
    assert [(hits + 1, misses) for hits, misses in before] == after
    for _ in range(2):
        with pytest.raises(UnicodeError):
            prepareUsername("ann@elsewhere")



def authenticate(server, mechanism: str, initial: bytes, inline: str):
    """A SASL2 C{<authenticate/>} on a new encrypted stream: the stream and the answer."""
    connection = ClientConnection(server, encrypted=True)
    connection.openStream()
    connection.received()
    connection.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'><initial-response>"
                    f"{base64.b64encode(initial).decode()}</initial-response>{AGENT}{inline}"
                    "</authenticate>")
    return connection, connection.next()


def test_fastReconnectReadsOnce(server, clock):
    """
    A reconnect with a FAST token and Bind2 reads the store once before
    C{<success/>} (the device's tokens and the password key together), then
    records the device, with other logins' that came meanwhile.
    """
    _, success = authenticate(server, "PLAIN", f"\0ann\0{PASSWORD}".encode(),
                              f"<request-token xmlns='{NS_FAST}' mechanism='HT-SHA-256-NONE'/>")
    token = next(success.elements(NS_FAST, "token"))["token"]
    store = server.store
    calls = []
    for name in ("getTokenLogin", "getDevice", "getCredentials", "recordDevices", "useToken"):
        method = getattr(store, name)
        setattr(store, name, lambda *args, method=method, name=name, **kwargs:
                calls.append(name) or method(*args, **kwargs))
    for _ in range(2):  # the first use makes the new token current: a write
        del calls[:]
        proof = hmac.digest(token.encode(), b"Initiator", "sha256")
        connection, success = authenticate(server, "HT-SHA-256-NONE", b"ann\0" + proof,
                                           "<bind xmlns='urn:xmpp:bind:0'><tag>load</tag></bind>")
        assert success.name == "success", success.toXml()
        connection.send("</stream:stream>")
        recorded = calls.count("recordDevices")
        clock.advance(DEVICE_RECORD_DELAY)
    assert recorded == 0
    assert calls == ["getTokenLogin", "recordDevices"]


def test_initialPresenceReadsOnce(server):
    """
    An initial presence reads the roster and the stored subscription
    requests in one store call (the offline module reads its own); a second
    resource, whose roster is kept, reads the requests alone.
    """
    store = server.store
    calls = []
    for name in ("getRoster", "getPendingIn", "getRosterAndPendingIn", "getOffline"):
        method = getattr(store, name)
        setattr(store, name, lambda *args, method=method, name=name, **kwargs:
                calls.append(name) or method(*args, **kwargs))
    phone = Client(server, "ann", "phone")
    phone.send("<presence/>")
    assert phone.request(f"<ping xmlns='{NS_PING}'/>", to="localhost")["type"] == "result"
    assert calls == ["getOffline", "getRosterAndPendingIn"]
    del calls[:]
    laptop = Client(server, "ann", "laptop")
    laptop.send("<presence/>")
    assert laptop.request(f"<ping xmlns='{NS_PING}'/>", to="localhost")["type"] == "result"
    assert calls == ["getOffline", "getPendingIn"]
    phone.close()
    laptop.close()


def test_replacedParserFreedAtOnce(server):
    """
    The parser a stream had before SASL's restart (about 10 KB of expat
    state once it has parsed a header) is freed when the stream restarts,
    and the last one when the connection goes: not at some later garbage
    collection, which left an idle connection's memory kilobytes higher.
    """
    gc.disable()
    try:
        client = ClientConnection(server, encrypted=True)
        client.openStream()
        before = weakref.ref(client.stream.stream)
        payload = base64.b64encode(f"\0ann\0{PASSWORD}".encode()).decode()
        client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>")
        assert client.nextNamed("success") is not None
        assert before() is None
        client.openStream()
        last = weakref.ref(client.stream.stream)
        client.stream.connectionLost(None)
        assert last() is None
    finally:
        gc.enable()


def test_idleStreamKeepsASharedDict(server):
    """
    A bound stream's instance dict stays within the 30 keys Python shares
    between instances of a class (past them each stream had a dict of its
    own, 1.6 KB): the stream's own state is in slots.
    """
    client = Client(server, "ann", "phone")
    client.send("<presence/>")
    assert len(vars(client.stream)) <= 30, sorted(vars(client.stream))
    assert client.stream.lastReceived is not None and not client.stream.closing
    client.close()


def test_wrappersMadeOncePerModule(server):
    """
    The wrappers every bound session gets (stream management, client state,
    carbons) are the modules' own functions, not closures made per session:
    about 1.2 KB of an idle connection were such closures and their links.
    """
    client = Client(server, "ann", "phone")
    client.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    session = server.router.resourcesOf("ann@localhost")["phone"]
    wrappers = session.outputs + session.inputs
    assert len(wrappers) >= 4
    assert [w for w in wrappers if getattr(w, "__closure__", None)] == []
    answer = client.request(f"<ping xmlns='{NS_PING}'/>", to="localhost")
    assert answer["type"] == "result"
    client.close()


def test_streamFeaturesMadeOncePerStage(server):
    """
    The features offered before TLS, after it and after authentication are
    built and serialised once each (more than 0.1 ms a stream); the next
    stream at a stage gets the same bytes without running the hooks. A hook
    added afterwards, or a reloaded configuration, is offered from the next
    stream on.
    """
    host = server.hosts["localhost"]
    runs = []
    host.hooks.add("stream-features", lambda stream, features: runs.append(stream.encrypted))
    first = ClientConnection(server, encrypted=True)
    first.openStream()
    offered = first.features().toXml()
    second = ClientConnection(server, encrypted=True)
    second.openStream()
    assert second.features().toXml() == offered and runs == [True]
    plain = ClientConnection(server)
    plain.openStream()
    assert plain.features().toXml() != offered and runs == [True, False]

    def extra(stream, features):
        features.addElement(("urn:example:extra", "extra"))
    host.hooks.add("stream-features", extra)
    third = ClientConnection(server, encrypted=True)
    third.openStream()
    assert "urn:example:extra" in third.features().toXml()
    host.hooks.remove("stream-features", extra)
    host.options = replace(host.options, allow_registration=not host.options.allow_registration)
    fourth = ClientConnection(server, encrypted=True)
    fourth.openStream()
    assert "urn:example:extra" not in fourth.features().toXml() and runs.count(True) == 3


def test_idleStreamsParserRests(servers):
    """
    A bound client quiet for L{PARSER_REST} seconds no longer holds an expat
    parser (about 15 KB); what it sends next is read and answered as before,
    and a client that keeps talking keeps its parser. The sweep looks only
    at the streams that read since their parser rested, and stops with the
    listener.
    """
    clock = task.Clock()
    server = servers(clock, modules=DEFAULT_MODULES)
    addAccounts(server, "ann", "bob")
    quiet, busy = Client(server, "ann", "phone"), Client(server, "bob", "desk")

    def sweeps() -> int:
        return sum(isinstance(call.func, task.LoopingCall) for call in clock.getDelayedCalls())

    before = sweeps()
    for client in quiet, busy:
        client.factory.startFactory()
    assert sweeps() == before + 2
    for _ in range(4):
        clock.advance(PARSER_REST / 2)
        busy.send(" ")
    assert quiet.stream.stream.resting and not busy.stream.stream.resting
    assert quiet.stream not in quiet.factory.awake  # the sweep looks at it no more
    answer = quiet.request(f"<ping xmlns='{NS_PING}'/>", to="localhost")
    assert answer["type"] == "result" and not quiet.stream.stream.resting
    assert quiet.stream in quiet.factory.awake
    clock.advance(2 * PARSER_REST)
    assert quiet.stream.stream.resting
    for client in quiet, busy:
        client.factory.stopFactory()
    assert sweeps() == before
    quiet.close()
    busy.close()


class FakeTLSConnection:
    """A TLS 1.3 connection's channel-binding sources, counting what is computed."""

    def __init__(self, certificate):
        self.certificate = certificate
        self.computed: list[str] = []

    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        self.computed.append("exporter")
        return bytes(length)

    def get_certificate(self):
        return self

    def to_cryptography(self):
        """The certificate's conversion, the costly part of its hash."""
        self.computed.append("end-point")
        return self.certificate


def test_channelBindingsComputedWhenAskedFor():
    """
    A stream offers the binding types of its TLS session at once, but the
    keying material and the certificate hash are computed only when a
    mechanism looks them up, once each.
    """
    from testca import CertificateAuthority
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from invitesrv.xmpp.channelbinding import TLS_EXPORTER, TLS_SERVER_END_POINT, channelBindings

    class Transport(TLSMemoryBIOProtocol):
        def __init__(self, connection):
            self.connection = connection

        def getHandle(self):
            return self.connection

    certificate, _ = CertificateAuthority().issue(["localhost"])
    connection = FakeTLSConnection(certificate)
    bindings = channelBindings(Transport(connection))
    assert list(bindings) == [TLS_EXPORTER, TLS_SERVER_END_POINT] and TLS_EXPORTER in bindings
    assert connection.computed == []
    assert bindings[TLS_EXPORTER] == bytes(32) and bindings[TLS_EXPORTER] == bytes(32)
    assert connection.computed == ["exporter"]
    assert len(bindings[TLS_SERVER_END_POINT]) == 32
    assert connection.computed == ["exporter", "end-point"]
    assert bindings.get("tls-unique") is None
