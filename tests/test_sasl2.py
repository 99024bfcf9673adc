"""
End to end over real TLS with a real store: SASL2 (XEP-0388), Bind2
(XEP-0386) with carbons and CSI inline, and FAST tokens (XEP-0484): issue,
use with each mechanism, rotation with its grace, replay, revocation, and
throttling; spoken by the independent client of C{saslclient}.
"""

import re
import uuid

import pytest
from OpenSSL import SSL
from rawxmpp import RawClient
from saslclient import NS_BIND2, NS_FAST, SASLClient, ScramClient, userAgent

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def server(sharedServer):
    for name in ("alice", "bob", "carol", "dave", "erin"):
        sharedServer.adduser(f"{name}@localhost", PASSWORD)
    return sharedServer


def scramPlus(client: SASLClient, username: str, password: str = PASSWORD) -> ScramClient:
    return ScramClient("SCRAM-SHA-256-PLUS", username, password, "p=tls-exporter,,",
                       client.bindings()["tls-exporter"])


def requestToken(mechanism: str = "HT-SHA-256-NONE") -> str:
    return f"<request-token xmlns='{NS_FAST}' mechanism='{mechanism}'/>"


def bind2(tag: str = "phone", extra: str = "") -> str:
    return f"<bind xmlns='{NS_BIND2}'><tag>{tag}</tag>{extra}</bind>"


def getToken(server, username: str, agent: str, mechanism: str = "HT-SHA-256-NONE") -> str:
    """Log in with the password and get a token for device C{agent}."""
    with SASLClient(server.port) as client:
        client.startTLS()
        result = client.scram2(scramPlus(client, username), "SCRAM-SHA-256-PLUS",
                               userAgent(agent) + requestToken(mechanism))
        assert result.ok and result.token, result
        return result.token


def fastLogin(server, username: str, agent: str, token: str, mechanism: str = "HT-SHA-256-NONE",
              extra: str = "", version: int = SSL.TLS1_3_VERSION):
    with SASLClient(server.port) as client:
        client.startTLS(version)
        return client.fast(mechanism, username, token, userAgent(agent) + extra)


# -- SASL2 -------------------------------------------------------------------------


def test_offer(server):
    """<authentication/> lists the mechanisms, Bind2 with carbons, CSI and stream management, and FAST's."""
    with SASLClient(server.port) as client:
        features = client.startTLS()
    offer = re.search(r"<authentication xmlns=.urn:xmpp:sasl:2.>(.*?)</authentication>", features).group(1)
    mechanisms = re.findall(r"<mechanism>([^<]+)</mechanism>", offer.split("<inline>")[0])
    assert mechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1",
                          "PLAIN"]
    bind = re.search(r"<bind xmlns=.urn:xmpp:bind:0.>(.*?)</bind>", offer).group(1)
    assert re.findall(r"var=.([^'\"]+)", bind) == ["urn:xmpp:carbons:2", "urn:xmpp:csi:0",
                                                      "urn:xmpp:sm:3"]
    fast = re.search(r"<fast xmlns=.urn:xmpp:fast:0.>(.*?)</fast>", offer).group(1)
    assert re.findall(r"<mechanism>([^<]+)</mechanism>", fast) == [
        "HT-SHA-256-EXPR", "HT-SHA-256-ENDP", "HT-SHA-256-NONE"]


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256",
                                       "SCRAM-SHA-1"])
def test_scramWithoutBind2(server, mechanism):
    """A challenge, then success with the server's signature and the bare JID; then RFC 6120 bind."""
    with SASLClient(server.port) as client:
        client.startTLS()
        scram = (scramPlus(client, "alice") if mechanism == "SCRAM-SHA-256-PLUS" else ScramClient(
            mechanism, "alice", PASSWORD, "p=tls-server-end-point,,",
            client.bindings()["tls-server-end-point"]) if mechanism.endswith("-PLUS")
            else ScramClient(mechanism, "alice", PASSWORD))
        result = client.scram2(scram, mechanism)
        assert result.ok, result
        assert len(result.challenges) == 1
        assert result.identifier == "alice@localhost"
        client.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                    "<resource>old</resource></bind></iq>")  # no stream restart in SASL2
        assert "alice@localhost/old" in client.recvUntil(r"<iq[^>]*id=.b1.*?</iq>")


def test_plain(server):
    """PLAIN works in SASL2 too: success at once, no challenge."""
    with SASLClient(server.port) as client:
        client.startTLS()
        result = client.authenticate("PLAIN", b"\0alice\0" + PASSWORD.encode())
        assert result.ok and not result.challenges and result.identifier == "alice@localhost"


def test_failure(server):
    """A wrong password: <failure/> with the RFC 6120 condition and a text; counted in the log."""
    with SASLClient(server.port) as client:
        client.startTLS()
        result = client.scram2(scramPlus(client, "alice", "wrong horse"), "SCRAM-SHA-256-PLUS")
        assert not result.ok
        assert re.search(r"<failure xmlns=.urn:xmpp:sasl:2.><not-authorized xmlns="
                         r".urn:ietf:params:xml:ns:xmpp-sasl./>", result.xml), result.xml
        result = client.authenticate("X-UNKNOWN", b"x")
        assert "<invalid-mechanism" in result.xml
        scram = ScramClient("SCRAM-SHA-256", "alice", PASSWORD, "y,,")
        result = client.scram2(scram, "SCRAM-SHA-256")
        assert "<not-authorized" in result.xml and "<text>Channel binding downgrade" in result.xml
        assert client.scram2(scramPlus(client, "alice"), "SCRAM-SHA-256-PLUS").ok  # still open
    assert 'Authentication failure from 127.0.0.1 for user "alice"' in server.log()


def test_bind2WithCarbons(server):
    """
    Bind2 binds a resource from the tag and the device, enables carbons in
    the same round trip, and the session is a normal one: it gets carbons
    of what the account's other session sends.
    """
    agent = str(uuid.uuid4())
    with SASLClient(server.port) as phone, RawClient(server.port) as desk:
        phone.startTLS()
        result = phone.scram2(scramPlus(phone, "bob"), "SCRAM-SHA-256-PLUS",
                              userAgent(agent) + bind2("Conv", "<enable xmlns='urn:xmpp:carbons:2'/>"))
        assert result.ok, result
        full = result.identifier
        assert re.fullmatch(r"bob@localhost/Conv\.[a-z2-7]{8}", full), full
        assert re.search(r"<bound xmlns=.urn:xmpp:bind:0.", result.xml), result.xml
        desk.login("bob", PASSWORD, "desk")
        desk.send("<message to='carol@localhost' type='chat' id='m1'><body>hi</body></message>")
        carbon = phone.recvUntil(r"<message.*?</message>")
        assert re.search(r"<sent xmlns=.urn:xmpp:carbons:2.", carbon), carbon
        assert "hi" in carbon
        phone.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
        assert "type='result'" in phone.recvUntil(r"<iq[^>]*id=.r1.*?(/>|</iq>)")
    with SASLClient(server.port) as again:  # the same device gets the same resource back
        again.startTLS()
        result = again.scram2(scramPlus(again, "bob"), "SCRAM-SHA-256-PLUS", userAgent(agent) + bind2("Conv"))
        assert result.identifier == full


def test_bind2Inactive(server):
    """<inactive/> inline: presence for the new session waits, a message with a body does not."""
    with SASLClient(server.port) as phone, RawClient(server.port) as other:
        phone.startTLS()
        result = phone.scram2(scramPlus(phone, "carol"), "SCRAM-SHA-256-PLUS",
                              userAgent(str(uuid.uuid4())) + bind2("p", "<inactive xmlns='urn:xmpp:csi:0'/>"))
        assert result.ok, result
        other.login("carol", PASSWORD, "other")
        other.send("<presence/>")
        other.send(f"<message to='{result.identifier}' type='chat'><composing "
                   "xmlns='http://jabber.org/protocol/chatstates'/></message>")
        other.send(f"<message to='{result.identifier}' type='chat'><body>now</body></message>")
        got = phone.recvUntil(r"<body>now</body>")
        assert got.index("composing") < got.index("<body>now")  # held, then sent before the body


# -- FAST --------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["HT-SHA-256-NONE", "HT-SHA-256-EXPR", "HT-SHA-256-ENDP"])
def test_fastLogin(server, mechanism):
    """A token issued inline logs in in one round trip, with Bind2, with each mechanism."""
    agent = str(uuid.uuid4())
    token = getToken(server, "dave", agent, mechanism)
    result = fastLogin(server, "dave", agent, token, mechanism, bind2("fast"))
    assert result.ok and not result.challenges, result
    assert result.identifier.startswith("dave@localhost/fast.")
    wrongDevice = fastLogin(server, "dave", str(uuid.uuid4()), token, mechanism)
    assert not wrongDevice.ok and "<not-authorized" in wrongDevice.xml


def test_fastEndPointOnTLS12(server):
    """On TLS 1.2 HT-SHA-256-EXPR is not offered, ENDP works."""
    agent = str(uuid.uuid4())
    token = getToken(server, "dave", agent, "HT-SHA-256-ENDP")
    result = fastLogin(server, "dave", agent, token, "HT-SHA-256-EXPR", version=SSL.TLS1_2_VERSION)
    assert "<invalid-mechanism" in result.xml
    assert fastLogin(server, "dave", agent, token, "HT-SHA-256-ENDP", version=SSL.TLS1_2_VERSION).ok


def test_fastBindingChecked(server):
    """An EXPR token proof made with another session's exporter (a relay) fails."""
    agent = str(uuid.uuid4())
    token = getToken(server, "dave", agent, "HT-SHA-256-EXPR")
    with SASLClient(server.port) as client, SASLClient(server.port) as relay:
        client.startTLS()
        relay.startTLS()
        relay.tls, client.tls = client.tls, relay.tls  # the client computes with the other session
        try:
            result = client.fast("HT-SHA-256-EXPR", "dave", token, userAgent(agent))
        finally:
            relay.tls, client.tls = client.tls, relay.tls
        assert not result.ok


def test_rotationAndReplay(server):
    """
    A new token leaves the old one valid until it is used (the client may
    have lost the answer); after that the old one fails. A use count must
    grow: a replayed login fails.
    """
    agent = str(uuid.uuid4())
    first = getToken(server, "erin", agent)
    rotated = fastLogin(server, "erin", agent, first, extra=requestToken())
    assert rotated.ok and rotated.token and rotated.token != first
    second = rotated.token
    assert fastLogin(server, "erin", agent, first).ok  # grace: the new one is not used yet
    assert fastLogin(server, "erin", agent, second).ok
    old = fastLogin(server, "erin", agent, first)
    assert not old.ok and "<not-authorized" in old.xml
    counted = f"<fast xmlns='{NS_FAST}' count='7'/>"
    assert fastLogin(server, "erin", agent, second, extra=counted).ok
    replayed = fastLogin(server, "erin", agent, second, extra=counted)
    assert not replayed.ok and "replaced or replayed" in replayed.xml
    assert fastLogin(server, "erin", agent, second, extra=f"<fast xmlns='{NS_FAST}' count='8'/>").ok


def test_invalidate(server):
    """<fast invalidate='true'/>: this login is the token's last."""
    agent = str(uuid.uuid4())
    token = getToken(server, "erin", agent)
    assert fastLogin(server, "erin", agent, token, extra=f"<fast xmlns='{NS_FAST}' invalidate='true'/>").ok
    assert not fastLogin(server, "erin", agent, token).ok


def test_revokedByPasswordChange(serverFactory):
    """
    A new password ends the tokens, whether the server runs (the hook) or
    not (the token is derived from the stored key).
    """
    server = serverFactory()
    server.adduser("frank@localhost", PASSWORD)
    agents = [str(uuid.uuid4()) for _ in range(2)]
    tokens = [getToken(server, "frank", agent) for agent in agents]
    server.ctl("passwd", "frank@localhost", input="new horse\nnew horse\n")
    assert not fastLogin(server, "frank", agents[0], tokens[0]).ok
    server.stop()
    server.ctl("passwd", "frank@localhost", input="newer horse\nnewer horse\n")
    server.start()
    assert not fastLogin(server, "frank", agents[1], tokens[1]).ok


def test_revokedWithAccount(serverFactory):
    """A deleted account's tokens do not work for a new account of the same name."""
    server = serverFactory()
    server.adduser("gina@localhost", PASSWORD)
    agent = str(uuid.uuid4())
    token = getToken(server, "gina", agent)
    server.ctl("deluser", "gina@localhost")
    server.adduser("gina@localhost", PASSWORD)
    assert not fastLogin(server, "gina", agent, token).ok


def test_wrongTokensThrottled(serverFactory):
    """Wrong tokens count as failed logins: past the free ones the answer waits, then blocking."""
    server = serverFactory("[limits]\nallowlist = []\nauth_failures_free = 1\nauth_delay_max = 1\n"
                           "auth_failures_block = 3\n")
    server.adduser("hank@localhost", PASSWORD)
    agent = str(uuid.uuid4())
    for _ in range(3):
        assert not fastLogin(server, "hank", agent, "not-a-token").ok
    assert "(throttled)" in server.log()
    with SASLClient(server.port) as client:
        client.startTLS()
        client.send("<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>"
                    "<initial-response>=</initial-response></authenticate>")
        assert "policy-violation" in client.readAll(5)


# -- devices -----------------------------------------------------------------------


def command(client: RawClient, iqid: str, payload: str) -> str:
    client.send(f"<iq type='set' id='{iqid}' to='localhost'><command "
                f"xmlns='http://jabber.org/protocol/commands' node='urn:invitesrv:devices' {payload}</iq>")
    return client.recvUntil(rf"<iq [^>]*id='{iqid}'.*?</iq>")


def test_myDevicesLogsOut(serverFactory):
    """
    "My devices" lists the SASL2 devices with their names; logging one out
    ends its session and its token, and leaves the others alone.
    """
    server = serverFactory()
    server.adduser("ivy@localhost", PASSWORD)
    phone, laptop = str(uuid.uuid4()), str(uuid.uuid4())
    token = getToken(server, "ivy", laptop)
    with SASLClient(server.port) as session, RawClient(server.port) as desk:
        session.startTLS()
        result = session.scram2(scramPlus(session, "ivy"), "SCRAM-SHA-256-PLUS",
                                userAgent(phone, "Conversations", "Pixel") + bind2("Conv"))
        assert result.ok
        desk.login("ivy", PASSWORD, "desk")
        form = command(desk, "c1", "action='execute'/>")
        assert "Pixel — Conversations (last login" in form and "test device — testclient" in form
        sessionid = re.search(r"sessionid='([^']+)'", form).group(1)
        done = command(desk, "c2", f"sessionid='{sessionid}' action='complete'><x xmlns='jabber:x:data' "
                       f"type='submit'><field var='logout'><value>{phone}</value></field></x></command>")
        assert "status='completed'" in done and "1 device(s) logged out" in done, done
        assert "This device was logged out" in session.readAll(5)
        form = command(desk, "c3", "action='execute'/>")
        assert "Pixel" not in form and "test device" in form
    assert fastLogin(server, "ivy", laptop, token).ok
    with RawClient(server.port) as desk:
        desk.login("ivy", PASSWORD, "desk")
        sessionid = re.search(r"sessionid='([^']+)'", command(desk, "c4", "action='execute'/>")).group(1)
        command(desk, "c5", f"sessionid='{sessionid}' action='complete'><x xmlns='jabber:x:data' "
                f"type='submit'><field var='logout'><value>{laptop}</value></field></x></command>")
    assert not fastLogin(server, "ivy", laptop, token).ok


def test_devicesRecordedBeforeShutdown(serverFactory):
    """
    A device recorded in a batch that had not gone yet when the server was
    stopped is written before the store closes: it is in "My devices" after
    the restart.
    """
    server = serverFactory()
    server.adduser("jan@localhost", PASSWORD)
    with SASLClient(server.port) as client:
        client.startTLS()
        assert client.scram2(scramPlus(client, "jan"), "SCRAM-SHA-256-PLUS",
                             userAgent(str(uuid.uuid4()), "Monal", "iPhone")).ok
    server.stop()
    server.start()
    with RawClient(server.port) as desk:
        desk.login("jan", PASSWORD, "desk")
        assert "iPhone — Monal (last login" in command(desk, "c1", "action='execute'/>")


# -- invites -----------------------------------------------------------------------


def test_inviteThenOneRoundTrip(serverFactory):
    """
    A SASL2 client registers with an invite (XEP-0401 preauth, then
    XEP-0077) and logs in on the same stream with the new password, asking
    for a token and a resource; its next login is one round trip.
    """
    server = serverFactory()
    output = server.ctl("invite", "create", "localhost").stdout
    invite = re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1)
    agent = str(uuid.uuid4())
    with SASLClient(server.port) as client:
        client.startTLS()
        client.send(f"<iq type='set' id='pa'><preauth xmlns='urn:xmpp:pars:0' token='{invite}'/></iq>")
        assert "type='result'" in client.recvUntil(r"<iq [^>]*id='pa'[^>]*(/>|>.*?</iq>)")
        client.send("<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>jo</username>"
                    f"<password>{PASSWORD}</password></query></iq>")
        assert "type='result'" in client.recvUntil(r"<iq [^>]*id='reg'[^>]*(/>|>.*?</iq>)")
        result = client.scram2(scramPlus(client, "jo"), "SCRAM-SHA-256-PLUS",
                               userAgent(agent) + bind2("Conv") + requestToken("HT-SHA-256-EXPR"))
        assert result.ok and result.token and result.identifier.startswith("jo@localhost/Conv.")
    again = fastLogin(server, "jo", agent, result.token, "HT-SHA-256-EXPR", bind2("Conv"))
    assert again.ok and not again.challenges and again.identifier == result.identifier
