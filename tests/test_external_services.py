"""
XEP-0215 external services (L{invitesrv.modules.external_services}): the
STUN and TURN entries of the config, TURN credentials by coturn's REST API
scheme, and a real coturn (Debian's C{coturn}, started here on loopback
with a temporary config) that allocates a relay with the credentials the
server hands out, and refuses expired or forged ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import socket
import subprocess
import time

import pytest
from streamharness import Client, addAccounts
from twisted.internet import task
from twisted.words.xish import domish

from invitesrv.config import ConfigError
from invitesrv.modules.external_services import NS_EXTDISCO

SECRET = "the secret coturn and the server share"
OPTIONS = {"stun": ["127.0.0.1:3478"], "turn": ["turn.example:3479"],
           "turns": ["turn.example"], "secret": SECRET, "credential_lifetime": "1h"}
NOW = 1_800_000_000


def extdiscoServer(servers, options=None, now: float = NOW):
    """An in-memory server for localhost with the module, on a clock at C{now}."""
    clock = task.Clock()
    clock.advance(now)
    server = servers(clock, modules=("roster", "presence", "disco", "external_services"),
                     module_options={"external_services": options or OPTIONS})
    addAccounts(server, "alice")
    return server


def services(client, kind: str | None = None) -> list[dict]:
    """The C{<service/>} entries of a services request, as attribute dicts."""
    asked = f" type='{kind}'" if kind else ""
    reply = client.request(f"<services xmlns='{NS_EXTDISCO}'{asked}/>", to="localhost")
    assert reply["type"] == "result", reply.toXml()
    return [dict(entry.attributes) for entry in reply.services.elements(NS_EXTDISCO, "service")]


def password(username: str, secret: str = SECRET) -> str:
    """The coturn REST API password of C{username} under C{secret}."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def test_services(servers):
    """STUN as configured; TURN on UDP and TCP, TURNS on TLS's port, each with credentials."""
    alice = Client(extdiscoServer(servers), "alice")
    found = services(alice)
    assert [(s["type"], s["host"], s["port"], s["transport"]) for s in found] == [
        ("stun", "127.0.0.1", "3478", "udp"), ("turn", "turn.example", "3479", "udp"),
        ("turn", "turn.example", "3479", "tcp"), ("turns", "turn.example", "5349", "tcp")]
    assert "username" not in found[0] and "restricted" not in found[0]
    for entry in found[1:]:
        assert entry["username"] == f"{NOW + 3600}:alice"
        assert entry["password"] == password(entry["username"])
        assert (entry["restricted"], entry["expires"]) == ("1", "2027-01-15T09:00:00Z")
    assert [s["type"] for s in services(alice, "stun")] == ["stun"]
    assert services(alice, "nothing") == []


def test_credentials(servers):
    """Credentials for one named service; an unknown or unrestricted one is item-not-found."""
    alice = Client(extdiscoServer(servers), "alice")
    reply = alice.request(f"<credentials xmlns='{NS_EXTDISCO}'><service host='turn.example'"
                          " type='turn' port='3479'/></credentials>", to="localhost")
    entries = [dict(e.attributes) for e in reply.credentials.elements(NS_EXTDISCO, "service")]
    assert [e["transport"] for e in entries] == ["udp", "tcp"]
    assert entries[0]["password"] == password(f"{NOW + 3600}:alice")
    for service in ("host='127.0.0.1' type='stun'", "host='turn.example' type='turn' port='1'",
                    "host='elsewhere' type='turn'"):
        reply = alice.request(f"<credentials xmlns='{NS_EXTDISCO}'><service {service}/>"
                              "</credentials>", to="localhost")
        assert reply.error.firstChildElement().name == "item-not-found", service
    reply = alice.request(f"<credentials xmlns='{NS_EXTDISCO}'/>", to="localhost")
    assert reply.error.firstChildElement().name == "bad-request"


def test_strangersRefused(servers):
    """A user of another server is refused: credentials relay traffic at the operator's cost."""
    server = extdiscoServer(servers)
    sent = []

    class Remote:
        def route(self, stanza, target):
            sent.append(stanza)

    server.router.remote = Remote()
    request = domish.Element((None, "iq"))
    request["type"], request["id"] = "get", "e1"
    request["from"], request["to"] = "eve@remote.example/x", "localhost"
    request.addElement((NS_EXTDISCO, "services"))
    server.router.route(request)
    assert [reply.error.firstChildElement().name for reply in sent] == ["forbidden"]


def test_defaultsAnswerEmpty(servers):
    """Loaded by default with nothing configured: an empty list, not an error."""
    clock = task.Clock()
    server = servers(clock, modules=("roster", "presence", "disco", "external_services"))
    addAccounts(server, "alice")
    assert services(Client(server, "alice")) == []


@pytest.mark.parametrize("options, message", [
    ({"turn": ["turn.example"]}, "modules.external_services.turn: TURN servers need the secret"),
    ({"stun": ["a b:1"]}, "modules.external_services.stun: 'a b:1' is not host:port"),
])
def test_wrongOptions(servers, options, message):
    """A TURN server without the secret, or a bad address, stops start-up naming the option."""
    with pytest.raises(ConfigError) as caught:
        extdiscoServer(servers, options)
    assert message in str(caught.value)


# -- against coturn --------------------------------------------------------------


def freePort() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (TURN listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@pytest.fixture
def coturn(tmp_path):
    """A private coturn on 127.0.0.1: REST API secret, no system files, no CLI, log in tmp."""
    if shutil.which("turnserver") is None or shutil.which("turnutils_uclient") is None:
        pytest.skip("coturn is not installed (Debian package coturn: turnserver, turnutils_uclient)")
    port = freePort()
    relay = 50000 + port % 10000
    config = tmp_path / "turnserver.conf"
    config.write_text(f"""listening-ip=127.0.0.1
listening-port={port}
relay-ip=127.0.0.1
min-port={relay}
max-port={relay + 50}
use-auth-secret
static-auth-secret={SECRET}
realm=localhost
no-cli
no-tls
no-dtls
allow-loopback-peers
no-software-attribute
userdb={tmp_path / "turndb"}
pidfile={tmp_path / "turnserver.pid"}
log-file={tmp_path / "turnserver.log"}
simple-log
""")
    process = subprocess.Popen(["turnserver", "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None:
                pytest.fail(f"turnserver exited: {(tmp_path / 'turnserver.log').read_text()}")
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def allocates(port: int, username: str, secret: str) -> bool:
    """Whether coturn's own client allocates a relay (and relays through it) with these credentials."""
    result = subprocess.run(["turnutils_uclient", "-p", str(port), "-u", username, "-w", secret,
                             "-y", "-n", "1", "-m", "1", "127.0.0.1"],
                            capture_output=True, text=True, timeout=60)
    return result.returncode == 0 and "Cannot complete Allocation" not in result.stdout


def test_coturnAcceptsHandedOutCredentials(servers, coturn):
    """
    The credentials the server hands out allocate a relay on coturn; the
    same made with another secret (forged), or handed out so long ago that
    they have expired, do not.
    """
    options = dict(OPTIONS, turn=[f"127.0.0.1:{coturn}"])
    alice = Client(extdiscoServer(servers, options, now=time.time()), "alice")
    turn = next(s for s in services(alice, "turn") if s["transport"] == "udp")
    assert allocates(coturn, turn["username"], turn["password"])
    assert not allocates(coturn, turn["username"], password(turn["username"], "not the secret"))
    stale = Client(extdiscoServer(servers, options, now=time.time() - 7200), "alice")
    expired = next(s for s in services(stale, "turn") if s["transport"] == "udp")
    assert int(expired["username"].split(":")[0]) < time.time()
    assert not allocates(coturn, expired["username"], expired["password"])
