"""
XEP-0357 push notifications: registrations (kept in the store, checked,
removed with the account), the summary a message to an offline account or
to a hibernating stream-managed session publishes, retries with backoff,
and an app server's cancel that removes the registration. In memory with a
stand-in app server routed like a component; over the wire (at the end)
with a real XEP-0114 component as the app server.
"""

from __future__ import annotations

import hashlib
import re
import time

import pytest
from conftest import RunningServer
from rawxmpp import RawClient
from streamharness import Client, addAccounts
from synchronous import result
from twisted.internet import task

from invitesrv.modules.offline import parseStanza

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
NS_SM = "urn:xmpp:sm:3"
APP = "push.example.net"
OPTIONS = ("<x xmlns='jabber:x:data' type='submit'>"
           "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
           "<field var='secret'><value>s3cret</value></field></x>")


class AppServer:
    """A stand-in XEP-0357 app server: routed like a component, it keeps what it gets."""

    def __init__(self, router, name: str = APP):
        self.name = name
        self.router = router
        self.received = []
        router.addComponent(self)

    def receive(self, stanza, target) -> None:
        self.received.append(stanza)

    def answer(self, iq, kind: str = "result", errorType: str = "cancel") -> None:
        """Answer a publish: a result, or an error of C{errorType}."""
        reply = f"<iq type='{kind}' id='{iq['id']}' from='{self.name}' to='{iq['from']}'>"
        if kind == "error":
            reply += (f"<error type='{errorType}'><item-not-found"
                      " xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>")
        self.router.route(parseStanza(reply + "</iq>"))

    def fields(self, index: int = -1) -> dict[str, str]:
        """The summary form of a notification received, as var: value."""
        iq = self.received[index]
        form = next(iq.pubsub.publish.item.notification.elements(NS_DATA, "x"))
        return {f["var"]: str(f.value) for f in form.elements(NS_DATA, "field")}


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def server(servers, clock):
    server = servers(clock, modules=("roster", "presence", "offline", "smacks", "push"))
    addAccounts(server, "alice", "bob")
    return server


@pytest.fixture
def app(server):
    return AppServer(server.router)


def register(client: Client, node: str = "node1", form: str = OPTIONS):
    return client.request(f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='{node}'>{form}</enable>", "set")


def registrations(server, username: str = "alice"):
    return result(server.store.getPushRegistrations("localhost", username))


def test_enableAndDisable(server):
    """enable keeps the registration with its publish-options; disable removes it (or all of the service)."""
    alice = Client(server, "alice")
    assert register(alice)["type"] == "result"
    assert register(alice, "node2", "")["type"] == "result"
    (first, second) = registrations(server)
    assert (first.service, first.node, second.node, second.options) == (APP, "node1", "node2", "")
    assert "s3cret" in first.options
    assert alice.request(f"<disable xmlns='{NS_PUSH}' jid='{APP}' node='node1'/>", "set")["type"] == "result"
    assert [r.node for r in registrations(server)] == ["node2"]
    assert alice.request(f"<disable xmlns='{NS_PUSH}' jid='{APP}'/>", "set")["type"] == "result"
    assert registrations(server) == []


def test_badRequests(server):
    """No jid, no node, or a form that is not publish-options: bad-request; another's JID: refused."""
    alice = Client(server, "alice")
    for payload in (f"<enable xmlns='{NS_PUSH}' node='n'/>", f"<enable xmlns='{NS_PUSH}' jid='{APP}'/>",
                    f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'><x xmlns='{NS_DATA}'"
                    " type='submit'/></enable>"):
        reply = alice.request(payload, "set")
        assert reply["type"] == "error" and reply.error.firstChildElement().name == "bad-request"
    reply = alice.request(f"<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'/>", "set", to="bob@localhost")
    assert reply["type"] == "error"
    assert registrations(server, "bob") == [] and registrations(server) == []


def test_offlineMessageNotified(server, app, clock):
    """
    A message kept offline publishes the summary form to the node, with the
    publish-options; the count grows until the user is back (the second
    notification comes at the end of min_interval); no body by default.
    """
    alice, bob = Client(server, "alice"), Client(server, "bob")
    register(alice)
    alice.close()
    alice.drop()
    bob.send("<message to='alice@localhost' type='chat'><body>hello</body></message>")
    bob.send("<message to='alice@localhost' type='chat'><composing"
             " xmlns='http://jabber.org/protocol/chatstates'/></message>")  # not worth waking for
    bob.send("<message to='alice@localhost' type='chat'><body>again</body></message>")
    assert len(app.received) == 1
    app.answer(app.received[0])
    clock.advance(30)
    assert len(app.received) == 2
    iq = app.received[0]
    assert (iq["type"], iq["from"], iq["to"]) == ("set", "alice@localhost", APP)
    assert iq.pubsub.publish["node"] == "node1"
    assert app.fields(0) == {"FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1",
                             "last-message-sender": bob.jid}
    assert app.fields(1)["message-count"] == "2"
    assert "s3cret" in next(iq.pubsub.elements(NS_PUBSUB, "publish-options")).toXml()
    back = Client(server, "alice", "back")
    back.send("<presence/>")
    assert [str(e.body) for e in back.backlog + back.received() if e.name == "message"] == [
        "hello", "again"]  # the offline module kept them: its result is untouched
    back.close()
    back.drop()
    bob.send("<message to='alice@localhost' type='chat'><body>later</body></message>")
    assert app.fields()["message-count"] == "1"


def test_bodyOnlyWhenConfigured(servers, clock):
    """include_body puts the text in last-message-body."""
    server = servers(clock, modules=("roster", "presence", "offline", "push"),
                     module_options={"push": {"include_body": True}})
    addAccounts(server, "alice", "bob")
    app = AppServer(server.router)
    alice, bob = Client(server, "alice"), Client(server, "bob")
    register(alice)
    alice.close()
    alice.drop()
    bob.send("<message to='alice@localhost' type='chat'><body>hello</body></message>")
    assert app.fields()["last-message-body"] == "hello"


def test_hibernatedSessionNotified(server, app):
    """A message queued for a stream-managed session waiting to be resumed wakes the device."""
    alice, bob = Client(server, "alice"), Client(server, "bob")
    alice.send("<presence/>")
    register(alice)
    alice.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    alice.drop()
    assert app.received == []
    bob.send(f"<message to='{alice.jid}' type='chat'><body>wake up</body></message>")
    assert len(app.received) == 1 and app.fields()["last-message-sender"] == bob.jid


def test_burstToHibernatedSessionCoalesced(server, app, clock):
    """
    Fifty messages to a hibernated session: one notification at once, one
    more at the end of min_interval (30 s) with the count and last sender by
    then, and nothing else; a message after the interval is notified at
    once again. Once the user is back, what was held back is not sent.
    """
    alice, bob = Client(server, "alice"), Client(server, "bob")
    alice.send("<presence/>")
    register(alice)
    alice.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    alice.drop()
    for number in range(50):
        clock.advance(0.1)
        bob.send(f"<message to='{alice.jid}' type='chat'><body>{number}</body></message>")
    assert len(app.received) == 1 and app.fields()["message-count"] == "1"
    assert server.metrics["push.coalesced"] == 49
    app.answer(app.received[0])
    clock.advance(30 - 5.0 + 0.1 - 0.01)
    assert len(app.received) == 1
    clock.advance(0.02)
    assert len(app.received) == 2 and app.fields()["message-count"] == "50"
    app.answer(app.received[1])
    clock.advance(300)
    assert len(app.received) == 2
    bob.send(f"<message to='{alice.jid}' type='chat'><body>later</body></message>")
    assert len(app.received) == 3 and app.fields()["message-count"] == "51"
    app.answer(app.received[2])
    bob.send(f"<message to='{alice.jid}' type='chat'><body>held</body></message>")
    back = Client(server, "alice", "back")
    back.send("<presence/>")
    clock.advance(60)
    assert len(app.received) == 3


def test_minIntervalZeroSendsEach(servers, clock):
    """min_interval = 0: every message is notified on its own, as before."""
    server = servers(clock, modules=("roster", "presence", "offline", "push"),
                     module_options={"push": {"min_interval": 0}})
    addAccounts(server, "alice", "bob")
    app = AppServer(server.router)
    alice, bob = Client(server, "alice"), Client(server, "bob")
    register(alice)
    alice.close()
    alice.drop()
    for _ in range(3):
        bob.send("<message to='alice@localhost' type='chat'><body>hi</body></message>")
    assert [app.fields(i)["message-count"] for i in range(3)] == ["1", "2", "3"]


def test_retriedWithBackoff(server, app, clock):
    """Unanswered, a notification is sent again after 30 s, then 60 s, then 120 s; then given up."""
    alice, bob = Client(server, "alice"), Client(server, "bob")
    register(alice)
    alice.close()
    alice.drop()
    bob.send("<message to='alice@localhost' type='chat'><body>hello</body></message>")
    sent = [0.0]
    for wait in (30, 60, 120):
        clock.advance(wait - 0.1)
        assert len(app.received) == len(sent)
        clock.advance(0.1)
        sent.append(clock.seconds())
        assert len(app.received) == len(sent)
    assert len({iq["id"] for iq in app.received}) == 1
    clock.advance(240)
    assert len(app.received) == 4 and server.metrics["push.failed"] == 1
    app.answer(app.received[-1])  # too late: ignored
    assert server.metrics["push.sent"] == 0


def test_answeredNotRetried(server, app, clock):
    """A result ends it; an error of type wait is retried like a timeout."""
    alice, bob = Client(server, "alice"), Client(server, "bob")
    register(alice)
    alice.close()
    alice.drop()
    bob.send("<message to='alice@localhost' type='chat'><body>one</body></message>")
    app.answer(app.received[0], "error", "wait")
    assert len(app.received) == 2
    app.answer(app.received[1])
    clock.advance(1000)
    assert len(app.received) == 2 and server.metrics["push.sent"] == 1


def test_cancelRemovesRegistration(server, app, clock):
    """
    An error of type cancel from the app server removes that registration;
    what is held back for it is not sent.
    """
    alice, bob = Client(server, "alice"), Client(server, "bob")
    register(alice)
    register(alice, "node2")
    alice.close()
    alice.drop()
    bob.send("<message to='alice@localhost' type='chat'><body>one</body></message>")
    assert len(app.received) == 2
    cancelled = next(iq for iq in app.received if iq.pubsub.publish["node"] == "node1")
    bob.send("<message to='alice@localhost' type='chat'><body>two</body></message>")
    app.answer(cancelled, "error", "cancel")
    assert [r.node for r in registrations(server)] == ["node2"]
    app.answer(next(iq for iq in app.received if iq.pubsub.publish["node"] == "node2"))
    clock.advance(30)
    assert [iq.pubsub.publish["node"] for iq in app.received[2:]] == ["node2"]


def test_deletedWithTheAccount(server, app):
    """Deleting the account deletes its registrations."""
    alice = Client(server, "alice")
    register(alice)
    result(server.hosts["localhost"].registrar.deleteAccount("alice"))
    assert registrations(server) == []
    addAccounts(server, "alice")
    assert registrations(server) == []


def test_disco(server):
    """The account's disco#info names urn:xmpp:push:0, as Conversations looks for it."""
    server.hosts["localhost"].loadModules(["disco"])
    alice = Client(server, "alice")
    reply = alice.request("<query xmlns='http://jabber.org/protocol/disco#info'/>", to="alice@localhost")
    assert NS_PUSH in [f["var"] for f in reply.query.elements("http://jabber.org/protocol/disco#info",
                                                              "feature")]


# -- over the wire, with an external component as the app server -------------------

SECRET = "a secret of the app server component"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    server = RunningServer(tmp_path_factory.mktemp("push"), f"""component = ["tcp:0:interface=127.0.0.1"]
[hosts."localhost".components.app]
secret = "{SECRET}"
[modules.push]
timeout = 2
retries = 1
""").start()
    server.listenerPort("Components")
    for user in ("alice", "bob"):
        server.adduser(f"{user}@localhost", f"{user} password")
    yield server
    server.stop()


def component(server) -> RawClient:
    """app.localhost connected over XEP-0114."""
    raw = RawClient(server.listenerPort("Components"))
    raw.send("<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
             "xmlns:stream='http://etherx.jabber.org/streams' to='app.localhost'>")
    header = raw.recvUntil(r"<stream:stream[^>]*>")
    streamID = re.search(r"\bid=['\"]([^'\"]+)", header).group(1)
    raw.send(f"<handshake>{hashlib.sha1((streamID + SECRET).encode()).hexdigest()}</handshake>")
    raw.recvUntil(r"<handshake\s*/>")
    return raw


def test_componentAppServer(running):
    """
    A real XEP-0114 component gets the notification with the summary form
    and the publish-options; its <error type='cancel'/> removes the
    registration, so the next message notifies no one.
    """
    with component(running) as app, RawClient(running.port) as bob:
        with RawClient(running.port) as alice:
            alice.login("alice", "alice password", "phone")
            alice.send(f"<iq type='set' id='p1'><enable xmlns='{NS_PUSH}' jid='app.localhost'"
                       f" node='n1'>{OPTIONS}</enable></iq>")
            assert "type='result'" in alice.recvUntil(r"<iq[^>]*id='p1'[^>]*>")
        bob.login("bob", "bob password")
        time.sleep(0.3)  # alice's session is gone
        bob.send("<message to='alice@localhost' type='chat'><body>psst</body></message>")
        text = app.recvUntil(r"<iq [^>]*><pubsub .*?</iq>")  # after the host's disco#info query
        text = text[text.rindex("<iq "):]
        assert "from='alice@localhost'" in text and "node='n1'" in text
        assert re.search(r"<field var=['\"]FORM_TYPE['\"]><value>urn:xmpp:push:summary</value>", text)
        assert re.search(r"<field var=['\"]message-count['\"]><value>1</value>", text)
        assert "last-message-sender" in text and "psst" not in text and "s3cret" in text
        iqId = re.search(r"<iq[^>]* id=['\"]([^'\"]+)", text).group(1)
        app.send(f"<iq type='error' id='{iqId}' from='app.localhost' to='alice@localhost'>"
                 "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                 "</error></iq>")
        time.sleep(0.5)
        bob.send("<message to='alice@localhost' type='chat'><body>again</body></message>")
        assert "<pubsub" not in app.readAll(3.5)  # nothing: not even a retry of the first one
