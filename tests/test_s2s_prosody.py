"""
Federation with a real Prosody (the Debian package, run privately: its own
config, data directory and loopback ports, never the system service).

invitesrv serves a.test and Prosody serves prosody.test. Neither looks
anything up in DNS: invitesrv has prosody.test in its static host map, and
Prosody loads a small plugin written here that sends its connections for
a.test to our listener. Both have self-signed certificates, so each proves
its domain by dialback (Prosody with C{s2s_secure_auth = false}).

Across: chat both ways, a presence subscription reaching C{both} on both
sides, an a.test contact invite (XEP-0379) redeemed by a Prosody user, and
a Prosody user's contact invite (made with Prosody's own mod_invites_adhoc)
redeemed by an a.test user, who is never asked to approve the inviter.
Skipped when C{/usr/bin/prosody} is not installed (C{apt-get install -y prosody}).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import RunningServer, terminate
from test_roster import PASSWORD, StanzaClient, addUsers
from test_s2s import chat, eventually, federated, freePort, isPresence, online, subscription

from invitesrv.tls import generateSelfSigned

PROSODY = Path("/usr/bin/prosody")
PROSODYCTL = Path("/usr/bin/prosodyctl")
DOMAIN = "prosody.test"

pytestmark = pytest.mark.skipif(
    not (PROSODY.exists() and PROSODYCTL.exists()),
    reason="Prosody is not installed (apt-get install -y prosody)")

# Sends Prosody's server-to-server connections for the domains in
# s2s_static_hosts to a fixed address instead of resolving them.
STATIC_HOSTS_PLUGIN = """\
local service = require "net.resolvers.service";
local manual = require "net.resolvers.manual";
if not service.static_hosts then
	local resolve = service.new;
	service.static_hosts = {};
	service.new = function (hostname, service_name, proto, extra)
		local target = service.static_hosts[hostname];
		if target == nil then
			return resolve(hostname, service_name, proto, extra);
		end
		if service_name ~= "xmpp-server" then
			return manual.new({}, proto, extra);
		end
		return manual.new({ { "tcp4", target[1], target[2], extra } }, proto, extra);
	end
end
for host, target in pairs(module:get_option("s2s_static_hosts", {})) do
	service.static_hosts[host] = target;
end
"""

CONFIG = """\
run_as_root = true
daemonize = false
pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
certificates = "{root}/certs"
plugin_paths = {{ "{root}/plugins" }}
log = {{ info = "{root}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {s2s} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ {s2sDirectTLS} }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "presence"; "posix";
                    "s2s_static_hosts"; "adhoc"; "invites"; "invites_adhoc"; "invites_register" }}
authentication = "internal_hashed"
s2s_secure_auth = false
s2s_static_hosts = {{ ["a.test"] = {{ "127.0.0.1", {ours} }} }}
ssl = {{ certificate = "{root}/certs/{domain}.crt"; key = "{root}/certs/{domain}.key"; }}
VirtualHost "{domain}"
"""


class Prosody:
    """A private Prosody instance on loopback ports (with C{directTLS}, an XEP-0368 s2s port too)."""

    def __init__(self, root: Path, ours: int, directTLS: bool = False):
        self.root = root
        self.c2s, self.s2s = freePort(), freePort()
        self.s2sDirectTLS = freePort() if directTLS else None
        for name in ("plugins", "data", "certs"):
            (root / name).mkdir()
        (root / "plugins" / "mod_s2s_static_hosts.lua").write_text(STATIC_HOSTS_PLUGIN)
        generateSelfSigned(root / "certs" / f"{DOMAIN}.crt", root / "certs" / f"{DOMAIN}.key", [DOMAIN])
        self.config = root / "prosody.cfg.lua"
        self.config.write_text(CONFIG.format(root=root, c2s=self.c2s, s2s=self.s2s, ours=ours,
                                             domain=DOMAIN, s2sDirectTLS=self.s2sDirectTLS or ""))
        self.process = None

    def register(self, username: str) -> None:
        subprocess.run([str(PROSODYCTL), "--config", str(self.config), "register", username, DOMAIN,
                        PASSWORD], check=True, capture_output=True, timeout=30)

    def start(self, timeout: float = 20.0) -> None:
        self.process = subprocess.Popen([str(PROSODY), "--config", str(self.config), "-F"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prosody exited:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.c2s), 1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"prosody did not start:\n{self.log()}")

    def stop(self) -> None:
        terminate(self.process)

    def log(self) -> str:
        path = self.root / "prosody.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""


class ProsodyClient(StanzaClient):
    """A L{StanzaClient} that logs in to Prosody, whose stored keys are SCRAM-SHA-1 only."""

    def __init__(self, port: int, username: str, resource: str = "raw"):
        StanzaClient.__init__(self, port, username, resource, DOMAIN, mechanism="SCRAM-SHA-1")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """a.test (invitesrv) and prosody.test (Prosody), mapped to each other."""
    root = tmp_path_factory.mktemp("prosody-federation")
    ours = freePort()
    (root / "prosody").mkdir()
    prosody = Prosody(root / "prosody", ours)
    (root / "invitesrv").mkdir()
    server = RunningServer(root / "invitesrv", federated("a.test", ours, {DOMAIN: prosody.s2s}))
    try:
        for name in ("bob", "frank"):
            prosody.register(name)
        prosody.start()
        server.start()
        addUsers(server, "alice@a.test", "grace@a.test")
        yield server, prosody
    finally:
        server.stop()
        prosody.stop()


def prosodyOnline(prosody: Prosody, username: str, resource: str = "desk") -> ProsodyClient:
    client = ProsodyClient(prosody.c2s, username, resource)
    client.rosterGet()
    client.send("<presence/>")
    client.expect(isPresence(client.jid), what="own presence")
    return client


def test_chatWithProsody(pair):
    """Messages cross both ways; each side proved its domain to the other by dialback."""
    server, prosody = pair
    alice, bob = online(server, "alice@a.test"), prosodyOnline(prosody, "bob")
    chat(alice, bob, "hello Prosody")
    chat(bob, alice, "hello invitesrv")
    assert "Outgoing stream from a.test to prosody.test authenticated by dialback" in server.log()
    assert re.search(r"Incoming stream from prosody\.test to a\.test \(127\.0\.0\.1:\d+\) "
                     r"authenticated by dialback", server.log())
    log = prosody.log()
    assert f"Outgoing s2s connection {DOMAIN}->a.test complete" in log
    assert f"Incoming s2s connection a.test->{DOMAIN} complete" in log
    alice.close()
    bob.close()


def test_presenceSubscriptionWithProsody(pair):
    """alice and bob subscribe to each other across: 'both' on both sides, presence seen."""
    server, prosody = pair
    alice, bob = online(server, "alice@a.test", "sub"), prosodyOnline(prosody, "bob", "sub")
    alice.send(f"<presence to='bob@{DOMAIN}' type='subscribe'/>")
    bob.expect(isPresence("alice@a.test", "subscribe"), timeout=10)
    bob.send("<presence to='alice@a.test' type='subscribed'/>")
    bob.send("<presence to='alice@a.test' type='subscribe'/>")
    alice.expect(isPresence(bob.jid), timeout=10, what="bob's presence")
    alice.expect(isPresence(f"bob@{DOMAIN}", "subscribe"), timeout=10)
    alice.send(f"<presence to='bob@{DOMAIN}' type='subscribed'/>")
    bob.expect(isPresence(alice.jid), timeout=10, what="alice's presence")
    assert eventually(lambda: subscription(alice, f"bob@{DOMAIN}") == "both")
    assert eventually(lambda: subscription(bob, "alice@a.test") == "both")
    bob.close()
    alice.expect(isPresence(bob.jid, "unavailable"), timeout=10)
    alice.close()


def test_contactInviteRedeemedFromProsody(pair):
    """
    grace@a.test's contact invite, redeemed by frank on Prosody (pre-approval
    and a subscription request carrying the token): both rosters reach 'both'
    and grace never sees a request.
    """
    server, prosody = pair
    output = server.ctl("invite", "create", "--contact", "grace", "a.test").stdout
    token = re.search(r"xmpp:grace@a\.test\?roster;preauth=([A-Za-z0-9_-]+)", output).group(1)
    grace, frank = online(server, "grace@a.test"), prosodyOnline(prosody, "frank")
    frank.send("<presence to='grace@a.test' type='subscribed'/>")
    frank.send("<presence to='grace@a.test' type='subscribe'>"
               f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/></presence>")
    assert eventually(lambda: subscription(grace, f"frank@{DOMAIN}") == "both")
    assert eventually(lambda: subscription(frank, "grace@a.test") == "both")
    grace.absent(isPresence(f"frank@{DOMAIN}", "subscribe"), wait=0.3, what="subscription request")
    assert "is now a contact of grace" in server.log()
    grace.close()
    frank.close()


def test_contactInviteFromProsody(pair):
    """
    bob@prosody.test makes a contact invite with Prosody's own ad-hoc command
    (as Conversations does); alice@a.test redeems it with a subscription
    carrying the token. Prosody approves and asks back; invitesrv recorded a
    pre-approval when alice sent the token, so it answers for her: both
    rosters reach 'both' and alice never sees bob's request.
    """
    server, prosody = pair
    bob = prosodyOnline(prosody, "bob", "invites")
    answer = bob.request("<command xmlns='http://jabber.org/protocol/commands'"
                         " node='urn:xmpp:invite#invite' action='execute'/>", "set", to=DOMAIN)
    uri = next(str(field.value) for field in answer.command.x.elements("jabber:x:data", "field")
               if field["var"] == "uri")
    token = re.fullmatch(rf"xmpp:bob@{re.escape(DOMAIN)}\?roster;preauth=([\w-]+).*", uri).group(1)
    alice = online(server, "alice@a.test", "invited")
    alice.send(f"<presence to='bob@{DOMAIN}' type='subscribe'>"
               f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/></presence>")
    assert eventually(lambda: subscription(alice, f"bob@{DOMAIN}") == "both")
    assert eventually(lambda: subscription(bob, "alice@a.test") == "both")
    alice.absent(isPresence(f"bob@{DOMAIN}", "subscribe"), wait=0.3, what="subscription request")
    alice.close()
    bob.close()


def test_noTracebacks(pair):
    """Nothing above left an unhandled error in our log."""
    server, _ = pair
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
