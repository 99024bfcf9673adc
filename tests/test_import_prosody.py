"""
C{invitesrvctl import prosody} against a real Prosody 0.12 data directory.

The data is made by Debian's prosody and prosodyctl, run privately (their own
config and data dir, loopback ports): accounts registered with prosodyctl (one
user and one host with non-ASCII names), a roster with a mutual subscription,
a pending request and offline messages made over real client streams, a
vCard with a photo, an avatar, a nick, OMEMO device lists and bundles and
bookmarks published with slixmpp, and mod_invites invites from C{prosodyctl
mod_invites generate}. Then the real
CLI imports it into a new invitesrv data dir, the real server starts, and
clients log in with their Prosody passwords: SCRAM-SHA-1, slixmpp's own
choice of mechanism, and PLAIN (which gives the account SCRAM-SHA-256 keys),
and read what was published back with slixmpp, as open as it was in Prosody.
Skipped when C{/usr/bin/prosody} is not installed (C{apt-get install -y prosody}).
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import slix
from conftest import RunningServer
from rawxmpp import RawClient
from slixmpp.exceptions import IqError
from test_invites_register import isResult, preauth, register
from test_roster import NS_ROSTER, StanzaClient, rosterItems
from test_s2s import freePort, isPresence
from test_s2s_prosody import DOMAIN, PROSODY, PROSODYCTL, Prosody

pytestmark = pytest.mark.skipif(
    not (PROSODY.exists() and PROSODYCTL.exists()),
    reason="Prosody is not installed (apt-get install -y prosody)")

OTHER = "bücher.test"  # a second host, with a non-ASCII name (b%c3%bccher%2etest on disk)
PLAIN = "plain.test"  # a host whose Prosody kept plaintext passwords (internal_plain)
PASSWORDS = {"alice": "alice's Prosody password", "bob": "bob's Prosody password",
             "jürgen": "Jürgens Passwört", "carol": "carol's Prosody password",
             "dave": "dave's plaintext password"}

CONFIG = """\
run_as_root = true
daemonize = false
pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
certificates = "{root}/certs"
log = {{ info = "{root}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {s2s} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "presence"; "offline"; "vcard";
                    "pep"; "invites"; "posix" }}
authentication = "internal_hashed"
ssl = {{ certificate = "{root}/certs/{domain}.crt"; key = "{root}/certs/{domain}.key"; }}
VirtualHost "{domain}"
VirtualHost "{other}"
VirtualHost "{plain}"
  authentication = "internal_plain"
"""


NS_PUBSUB = "http://jabber.org/protocol/pubsub"
PHOTO = b"\x89PNG\r\n\x1a\n alice's vCard photo"
AVATAR = b"\x89PNG\r\n\x1a\n jurgen's avatar"
PEP_PLUGINS = ("xep_0004", "xep_0030", "xep_0054", "xep_0060", "xep_0084", "xep_0163", "xep_0172")
OPEN = {"access_model": "open"}
BUNDLE = ("<bundle xmlns='eu.siacs.conversations.axolotl'><signedPreKeyPublic signedPreKeyId='1'>"
          "BQ==</signedPreKeyPublic><identityKey>BQ==</identityKey></bundle>")
PEP_PUBLISHED = (  # (node, item id, payload, publish-options)
    ("eu.siacs.conversations.axolotl.devicelist", "current",
     "<list xmlns='eu.siacs.conversations.axolotl'><device id='1234'/></list>", OPEN),
    ("eu.siacs.conversations.axolotl.bundles:1234", "current", BUNDLE, OPEN),
    ("urn:xmpp:omemo:2:devices", "current",
     "<devices xmlns='urn:xmpp:omemo:2'><device id='1234' label='desk'/></devices>", OPEN),
    ("urn:xmpp:omemo:2:bundles", "1234", "<bundle xmlns='urn:xmpp:omemo:2'><spk id='1'>BQ==</spk>"
     "<ik>BQ==</ik></bundle>", {"access_model": "open", "max_items": "max"}),
    ("urn:xmpp:bookmarks:1", f"room@conference.{DOMAIN}",
     "<conference xmlns='urn:xmpp:bookmarks:1' name='The room' autojoin='true'><nick>ali</nick>"
     "</conference>", {"persist_items": "true", "access_model": "whitelist", "max_items": "max",
                       "send_last_published_item": "never"}),
    ("urn:xmpp:test:0", "current", "<x xmlns='urn:xmpp:test:0'/>", {}),
)


class DataProsody(Prosody):
    """A private Prosody with two hosts, storing what the import reads."""

    def __init__(self, root):
        Prosody.__init__(self, root, freePort())
        self.config.write_text(CONFIG.format(root=root, c2s=self.c2s, s2s=self.s2s,
                                             domain=DOMAIN, other=OTHER, plain=PLAIN))

    def prosodyctl(self, *args: str) -> str:
        return subprocess.run([str(PROSODYCTL), "--config", str(self.config), *args], check=True,
                              capture_output=True, text=True, timeout=60).stdout

    def client(self, username: str) -> StanzaClient:
        """A client logged in to Prosody, which has SCRAM-SHA-1 keys only."""
        return scramClient(self.c2s, username)


def scramClient(port: int, username: str, host: str = DOMAIN) -> StanzaClient:
    """A L{StanzaClient} logged in with SCRAM-SHA-1 and the user's Prosody password."""
    return StanzaClient(port, username, "desk", host, PASSWORDS[username], "SCRAM-SHA-1")


def makeProsodyData(prosody: DataProsody) -> dict[str, str]:
    """Accounts, roster, offline messages and invites, made by Prosody itself; return tokens."""
    for name in ("alice", "bob", "jürgen"):
        prosody.prosodyctl("register", name, DOMAIN, PASSWORDS[name])
    prosody.prosodyctl("register", "carol", OTHER, PASSWORDS["carol"])
    prosody.prosodyctl("register", "dave", PLAIN, PASSWORDS["dave"])
    tokens = {}
    for kind, args in (("account", ()), ("reset", ("--reset", "alice"))):
        output = prosody.prosodyctl("mod_invites", "generate", DOMAIN, *args)
        tokens[kind] = re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1)
    prosody.start()
    try:
        alice, jurgen = prosody.client("alice"), prosody.client("jürgen")
        for client in (alice, jurgen):
            client.rosterGet()
            client.send("<presence/>")
        # alice and jürgen subscribe to each other: 'both', with a name and a group.
        alice.rosterSet(f"<item jid='jürgen@{DOMAIN}' name='Jürgen'><group>Family</group></item>")
        alice.send(f"<presence to='jürgen@{DOMAIN}' type='subscribe'/>")
        jurgen.expect(isPresence(f"alice@{DOMAIN}", "subscribe"), timeout=10)
        jurgen.send(f"<presence to='alice@{DOMAIN}' type='subscribed'/>")
        jurgen.send(f"<presence to='alice@{DOMAIN}' type='subscribe'/>")
        alice.expect(isPresence(f"jürgen@{DOMAIN}", "subscribe"), timeout=10)
        alice.send(f"<presence to='jürgen@{DOMAIN}' type='subscribed'/>")
        jurgen.expect(isPresence(alice.jid), timeout=10, what="alice's presence")
        # bob is offline: a subscription request and two messages wait for him.
        alice.send(f"<presence to='bob@{DOMAIN}' type='subscribe'/>")
        for number, body in enumerate(("first <offline> message", "zweite Nachricht ✓")):
            alice.send(f"<message to='bob@{DOMAIN}' type='chat' id='m{number}' xml:lang='de'>"
                       f"<body>{body.replace('<', '&lt;').replace('>', '&gt;')}</body></message>")
        alice.close()
        jurgen.close()
        slix.run(publishWithSlixmpp(prosody.c2s))
    finally:
        prosody.stop()
    return tokens


async def publishWithSlixmpp(port: int) -> None:
    """
    With slixmpp's plugins: alice sets her vCard (kept whole by mod_vcard:
    its photo is her only avatar) and publishes her OMEMO keys (open, with
    publish-options, as Conversations does), bookmarks (the owner only) and
    a node of no known kind (the default access model: presence); jürgen
    sets an avatar and a nick (the default access model too).
    """
    alice = slix.Client(f"alice@{DOMAIN}", PASSWORDS["alice"], plugins=PEP_PLUGINS)
    assert await alice.login(port, presence=False)
    vcard = alice.plugin["xep_0054"].make_vcard()
    vcard["FN"], vcard["NICKNAME"] = "Alice", "ali"
    vcard["PHOTO"]["TYPE"], vcard["PHOTO"]["BINVAL"] = "image/png", PHOTO
    await alice.plugin["xep_0054"].publish_vcard(vcard)
    for node, itemId, payload, options in PEP_PUBLISHED:
        form = None
        if options:
            form = alice.plugin["xep_0004"].make_form("submit")
            form.add_field("FORM_TYPE", "hidden", value=f"{NS_PUBSUB}#publish-options")
            for name, value in options.items():
                form.add_field(f"pubsub#{name}", value=value)
        await alice.plugin["xep_0060"].publish(f"alice@{DOMAIN}", node, itemId,
                                               ET.fromstring(payload), form)
    await alice.logout()
    jurgen = slix.Client(f"jürgen@{DOMAIN}", PASSWORDS["jürgen"], plugins=PEP_PLUGINS)
    assert await jurgen.login(port, presence=False)
    await jurgen.plugin["xep_0084"].publish_avatar(AVATAR)
    await jurgen.plugin["xep_0084"].publish_avatar_metadata(
        [{"id": jurgen.plugin["xep_0084"].generate_id(AVATAR), "type": "image/png", "bytes": len(AVATAR)}])
    await jurgen.plugin["xep_0172"].publish_nick("Jürgen J.")
    await jurgen.logout()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A Prosody data dir, imported by the CLI into a new invitesrv, which then runs."""
    root = tmp_path_factory.mktemp("prosody-import")
    (root / "prosody").mkdir()
    prosody = DataProsody(root / "prosody")
    tokens = makeProsodyData(prosody)
    (root / "invitesrv").mkdir()
    server = RunningServer(root / "invitesrv",
                           "".join(f'[hosts."{name}"]\n' for name in (DOMAIN, OTHER, PLAIN)))
    result = server.ctl("import", "prosody", str(root / "prosody" / "data"))
    server.start()
    yield server, prosody, tokens, result
    server.stop()


def features(server, host: str = DOMAIN) -> str:
    with RawClient(server.port, host) as client:
        return client.startTLS()


def test_summary(imported):
    """The CLI says what it imported, and what it skipped (vCards, PEP) and why."""
    server, _, _, result = imported
    output = result.stdout
    # alice: 6 nodes and 2 made from her vCard's photo; jürgen: avatar (2) and nick
    assert (f"{DOMAIN}: 3 accounts, 3 roster items, 1 pending subscription requests,"
            " 2 offline messages, 1 vCards, 11 PEP nodes with 11 items, 2 invites imported"
            ) in output, output
    assert f"{OTHER}: 1 accounts," in output
    assert "invitesrv has no storage for them yet" not in output, output  # vCards and PEP too
    assert set(server.ctl("users", DOMAIN).stdout.split()) == {
        f"{name}@{DOMAIN}" for name in ("alice", "bob", "jürgen")}
    assert server.ctl("users", OTHER).stdout.split() == [f"carol@{OTHER}"]


def test_secondRunChangesNothing(imported):
    """Run again, nothing is imported twice or overwritten: each account says it exists."""
    server, prosody, tokens, _ = imported
    output = server.ctl("import", "prosody", str(prosody.root / "data")).stdout
    assert f"{DOMAIN}: 0 accounts, 0 roster items, 0 pending subscription requests," \
           " 0 offline messages, 0 vCards, 0 PEP nodes with 0 items, 0 invites imported" in output
    assert f"skipped: jürgen@{DOMAIN}: the account exists in invitesrv (left unchanged)" in output
    assert output.count("already imported") == 2
    for path in server.dataDir.glob("invitesrv.sqlite3*"):  # only the tokens' hashes are kept
        assert not any(token.encode() in path.read_bytes() for token in tokens.values())
    assert not any(token in output for token in tokens.values())


def test_dryRunAndDamagedFile(imported, tmp_path):
    """
    --dry-run counts and writes nothing; an account file that is code, not
    data, is an error for that account alone, and the exit status says so.
    """
    _, prosody, _, _ = imported
    data = tmp_path / "data"
    shutil.copytree(prosody.root / "data", data)
    (data / "prosody%2etest" / "accounts" / "bob.dat").write_text('return os.execute("id");\n')
    other = RunningServer(tmp_path, f'[hosts."{DOMAIN}"]\n')
    result = other.ctl("import", "prosody", "--dry-run", str(data), check=False)
    assert result.returncode == 1
    assert (f"{DOMAIN}: 2 accounts, 3 roster items, 0 pending subscription requests,"
            " 0 offline messages, 1 vCards, 11 PEP nodes with 11 items, 2 invites would be imported"
            ) in result.stdout, result.stdout
    assert f"host {OTHER}: not served by this invitesrv" in result.stdout
    assert re.search(rf"error: bob@{DOMAIN}: not Prosody data: .*bob\.dat:1:8: expected a string",
                     result.stderr), result.stderr
    assert other.ctl("users", DOMAIN).stdout == ""


def test_scramSha1WithProsodyPassword(imported):
    """Prosody's SCRAM-SHA-1 keys work as they are; SHA-256 is not offered while they are all."""
    server = imported[0]
    offered = features(server)
    assert "<mechanism>SCRAM-SHA-1</mechanism>" in offered
    assert "SCRAM-SHA-256" not in offered
    with RawClient(server.port, DOMAIN) as client:
        client.startTLS()
        assert "<success" in client.scram("alice", PASSWORDS["alice"], "SCRAM-SHA-1")
    with RawClient(server.port, DOMAIN) as client:
        client.startTLS()
        assert "<not-authorized/>" in client.scram("alice", "not the password", "SCRAM-SHA-1")


@pytest.mark.parametrize("mechanism", [None, "SCRAM-SHA-1"])
def test_slixmppLogsIn(imported, mechanism):
    """
    slixmpp, left to choose its mechanism or told SCRAM-SHA-1, logs in as
    jürgen at its first attempt: no failed login on the way (slixmpp would
    retry with another mechanism after one, but each failure counts towards
    the login throttle and fail2ban).
    """
    server = imported[0]
    before = len(server.log())

    async def login():
        client = slix.Client(f"jürgen@{DOMAIN}", PASSWORDS["jürgen"], mechanism)
        try:
            return await client.login(server.port)
        finally:
            await client.logout()
    assert slix.run(login())
    assert 'for user "jürgen"' not in server.log()[before:]


def test_strongestOfferedMechanismWorks(imported):
    """
    A client that takes the strongest SCRAM offered and never falls back
    (as Conversations does) logs in: what is offered is what the account has.
    """
    server = imported[0]
    with RawClient(server.port, DOMAIN) as client:
        offered = re.findall(r"<mechanism>([^<]+)</mechanism>", client.startTLS())
        strongest = next(m for m in ("SCRAM-SHA-256", "SCRAM-SHA-1") if m in offered)
        assert "<success" in client.scram("bob", PASSWORDS["bob"], strongest)


def test_rosterPendingRequestAndOfflineMessages(imported):
    """bob finds alice's request and both messages; alice and jürgen find each other."""
    server = imported[0]
    alice = scramClient(server.port, "alice")
    items = rosterItems(alice.rosterGet())
    assert items[f"jürgen@{DOMAIN}"].getAttribute("subscription") == "both"
    assert items[f"jürgen@{DOMAIN}"].getAttribute("name") == "Jürgen"
    assert [str(g) for g in items[f"jürgen@{DOMAIN}"].elements(NS_ROSTER, "group")] == ["Family"]
    assert items[f"bob@{DOMAIN}"].getAttribute("ask") == "subscribe"
    alice.close()
    bob = scramClient(server.port, "bob")
    bob.send("<presence/>")
    bob.expect(isPresence(f"alice@{DOMAIN}", "subscribe"), what="alice's request")
    bodies = []
    for _ in range(2):
        message = bob.expect(lambda e: e.name == "message", what="an offline message")
        assert message.getAttribute("from").startswith(f"alice@{DOMAIN}")
        assert next(message.elements("urn:xmpp:delay", "delay")).getAttribute("stamp")
        bodies.append(str(next(message.elements("jabber:client", "body"))))
    assert bodies == ["first <offline> message", "zweite Nachricht ✓"]
    bob.close()


def test_vcardAvatarOmemoBookmarksAndNick(imported):
    """
    What alice and jürgen published in Prosody, read from invitesrv with
    slixmpp, each node as open as it was there: bob, a stranger to both,
    gets alice's vCard with her photo (now her avatar), her OMEMO device
    lists and bundles (open), but neither her bookmarks (the owner only),
    nor her node of no known kind, nor jürgen's avatar and nick (contacts
    only); alice, jürgen's contact, gets those, and her own bookmarks.
    """
    server = imported[0]

    async def scenario():
        alice = slix.Client(f"alice@{DOMAIN}", PASSWORDS["alice"], "SCRAM-SHA-1", PEP_PLUGINS)
        bob = slix.Client(f"bob@{DOMAIN}", PASSWORDS["bob"], "SCRAM-SHA-1", PEP_PLUGINS)
        assert await alice.login(server.port, presence=False)
        assert await bob.login(server.port, presence=False)
        vcard = (await bob.plugin["xep_0054"].get_vcard(f"alice@{DOMAIN}", cached=False))["vcard_temp"]
        assert (vcard["FN"], vcard["NICKNAME"]) == ("Alice", ["ali"])
        assert vcard["PHOTO"]["BINVAL"] == PHOTO and vcard["PHOTO"]["TYPE"] == "image/png"
        for node, itemId, payload, options in PEP_PUBLISHED:
            reader = bob if options.get("access_model") == "open" else alice
            items = (await reader.plugin["xep_0060"].get_items(f"alice@{DOMAIN}", node))["pubsub"]["items"]
            assert [(item["id"], shape(item["payload"])) for item in items] == [
                (itemId, shape(ET.fromstring(payload)))], node
            if reader is alice:
                await refused(bob, f"alice@{DOMAIN}", node)
        avatarId = hashlib.sha1(AVATAR).hexdigest()
        fetched = await alice.plugin["xep_0084"].retrieve_avatar(f"jürgen@{DOMAIN}", avatarId)
        assert fetched["pubsub"]["items"]["item"]["avatar_data"]["value"] == AVATAR
        nick = await alice.plugin["xep_0060"].get_items(f"jürgen@{DOMAIN}", "http://jabber.org/protocol/nick")
        assert nick["pubsub"]["items"]["item"]["payload"].text == "Jürgen J."
        for node in ("urn:xmpp:avatar:data", "urn:xmpp:avatar:metadata", "http://jabber.org/protocol/nick"):
            await refused(bob, f"jürgen@{DOMAIN}", node)
        await alice.logout()
        await bob.logout()

    slix.run(scenario(), 120)


def shape(element) -> tuple:
    """An element's name, attributes, text and children, for comparing payloads."""
    return (element.tag, sorted(element.attrib.items()), (element.text or "").strip(),
            [shape(child) for child in element])


async def refused(client, owner: str, node: str) -> None:
    """C{client} may not read the node: item-not-found, as for a node that does not exist."""
    try:
        await client.plugin["xep_0060"].get_items(owner, node)
    except IqError as e:
        assert e.condition == "item-not-found"
    else:
        raise AssertionError(f"{client.boundjid} read {owner}'s {node}")


def test_importedInvitesRedeem(imported):
    """The invite link Prosody made still registers an account (its token was hashed)."""
    server, _, tokens, _ = imported
    with RawClient(server.port, DOMAIN) as client:
        client.startTLS()
        assert isResult(preauth(client, tokens["account"]))
        assert isResult(register(client, "newcomer", "the newcomer's password"))
    with RawClient(server.port, DOMAIN) as client:
        client.startTLS()
        assert "<success" in client.scram("newcomer", "the newcomer's password", "SCRAM-SHA-1")
    shown = server.ctl("invite", "list", DOMAIN).stdout
    assert re.search(r"reset alice\s+0/1 .* pending\s+from Prosody", shown), shown


def test_plainLoginUpgradesToSha256(imported):
    """
    carol, the only account of the other host, logs in once with PLAIN: she
    gets SCRAM-SHA-256 keys, her host offers SCRAM-SHA-256 again, and
    slixmpp's default choice (SHA-256 now) logs her in.
    """
    server = imported[0]
    assert "SCRAM-SHA-256" not in features(server, OTHER)
    with RawClient(server.port, OTHER) as client:
        client.startTLS()
        payload = base64.b64encode(f"\0carol\0{PASSWORDS['carol']}".encode()).decode()
        client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>")
        assert "<success" in client.recvUntil(r"<(success|failure)[^>]*(/>|>.*?</\1>)")
    assert f"Account carol@{OTHER} now has SCRAM-SHA-256 keys too" in server.log()
    offered = features(server, OTHER)
    assert "<mechanism>SCRAM-SHA-256</mechanism>" in offered
    with RawClient(server.port, OTHER) as client:
        client.startTLS()
        assert "<success" in client.scram("carol", PASSWORDS["carol"], "SCRAM-SHA-256")
    assert "SCRAM-SHA-256" not in features(server)  # prosody.test still has SHA-1-only accounts


def test_plaintextPasswordsGetEveryMechanism(imported):
    """
    From a host that kept plaintext passwords, the import derives the keys of
    every mechanism (and keeps no password): SCRAM-SHA-256 is offered there.
    """
    server, prosody, _, _ = imported
    assert "password" in (prosody.root / "data" / "plain%2etest" / "accounts" / "dave.dat").read_text()
    assert "<mechanism>SCRAM-SHA-256</mechanism>" in features(server, PLAIN)
    with RawClient(server.port, PLAIN) as client:
        client.startTLS()
        assert "<success" in client.scram("dave", PASSWORDS["dave"], "SCRAM-SHA-256")
    for path in server.dataDir.glob("invitesrv.sqlite3*"):  # with the write-ahead log
        assert PASSWORDS["dave"].encode() not in path.read_bytes()


def test_noTracebacks(imported):
    """Nothing above left an unhandled error in the server's log."""
    log = imported[0].log()
    assert "Traceback" not in log and "Unhandled" not in log, log
