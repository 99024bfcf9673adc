"""
Prosody's stored records turned into invitesrv's values, on small data
directories written here in the exact form Prosody writes (the end-to-end
test uses a real one): the cases a fresh Prosody 0.12 does not produce, such
as older record shapes, other password hashes and damaged files.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from invitesrv.modules.pep import PepOptions
from invitesrv.modules.vcard import VcardOptions
from invitesrv.prosodydata import ProsodyDataDir, ProsodyDataError, credentialsOf, tokenLabel
from invitesrv.pubsub import DEFAULTS

HOST = "example.org"
NOW = 1_800_000_000


def write(root, relative: str, text: str):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def account(root, name: str = "alice", encoded: str | None = None):
    return write(root, f"example%2eorg/accounts/{encoded or name}.dat",
                 'return {\n\t["salt"] = "s";\n\t["stored_key"] = "' + "ab" * 20 + '";\n'
                 '\t["server_key"] = "' + "cd" * 20 + '";\n\t["iteration_count"] = 4096;\n};\n')


def test_credentialKinds():
    """SHA-1 and SHA-256 keys are told apart by length; a plaintext password gives both."""
    sha1 = credentialsOf({"salt": "s", "iteration_count": 4096, "stored_key": "ab" * 20,
                          "server_key": "cd" * 20}, "alice", 4096)
    assert [c.mechanism for c in sha1] == ["SCRAM-SHA-1"] and sha1[0].storedKey == b"\xab" * 20
    sha256 = credentialsOf({"salt": "s", "iteration_count": 4096, "stored_key": "ab" * 32,
                            "server_key": "cd" * 32}, "alice", 4096)
    assert [c.mechanism for c in sha256] == ["SCRAM-SHA-256"]
    plain = credentialsOf({"password": "secret"}, "alice", 4096)
    assert sorted(c.mechanism for c in plain) == ["SCRAM-SHA-1", "SCRAM-SHA-256"]
    for record in ({}, {"salt": "s", "iteration_count": 4096, "stored_key": "zz",
                        "server_key": "cd"}, {"salt": "s", "iteration_count": -1,
                                             "stored_key": "ab" * 20, "server_key": "cd" * 20}):
        with pytest.raises(ProsodyDataError):
            credentialsOf(record, "alice", 4096)


def test_rosterShapes(tmp_path):
    """
    The roster's own entry is left out, a bad JID is skipped with a reason,
    and requests kept at the top level (older Prosody) are still found.
    """
    path = account(tmp_path)
    write(tmp_path, "example%2eorg/roster/alice.dat", """return {
	["alice@example.org"] = { ["subscription"] = "both"; };
	["bob@example.org"] = { ["subscription"] = "to"; ["groups"] = { ["A"] = true; ["B"] = true; }; };
	["not a jid@"] = { ["subscription"] = "none"; };
	["pending"] = { ["carol@example.org"] = true; };
};
""")
    data = ProsodyDataDir(tmp_path).account(HOST, "alice", path, 4096)
    assert [(i.contact, i.subscription, i.groups) for i in data.rosterItems] == [
        ("bob@example.org", "to", ("A", "B"))]
    assert [contact for contact, _ in data.pendingIn] == ["carol@example.org"]
    assert "type='subscribe'" in data.pendingIn[0][1] and "from='carol@example.org'" in data.pendingIn[0][1]
    assert len(data.skipped) == 1 and "not a valid JID" in data.skipped[0]


def test_offlineStampsAndNamespaces(tmp_path):
    """Items without 'when' use their stamp; namespaced attributes and children keep theirs."""
    path = account(tmp_path)
    write(tmp_path, "example%2eorg/offline/alice.list", """item({
	["name"] = "message";
	["attr"] = { ["to"] = "alice@example.org"; ["stamp"] = "2027-01-15T08:00:00Z";
		["http://www.w3.org/XML/1998/namespace\\001lang"] = "de"; };
	{ ["name"] = "body"; ["attr"] = {}; "hallo"; };
	{ ["name"] = "x"; ["attr"] = { ["xmlns"] = "urn:example"; }; };
});
""")
    [message] = ProsodyDataDir(tmp_path).account(HOST, "alice", path, 4096).offline
    assert message.stamp == 1800000000.0
    assert message.stanza == ("<message xmlns='jabber:client' to='alice@example.org' xml:lang='de'>"
                              "<body>hallo</body><x xmlns='urn:example'/></message>")


def pepItem(key: str, text: str) -> str:
    """An item as mod_pep's archive store writes it."""
    return (f'item({{ "{text}"; ["name"] = "n"; ["key"] = "{key}"; ["when"] = 1;'
            f' ["with"] = "alice@example.org"; ["attr"] = {{ ["xmlns"] = "urn:x";'
            f' ["stamp"] = "2027-01-15T08:00:00Z"; }}; }});\n')


def test_pepOptionsItemsAndLimits(tmp_path):
    """
    Options Prosody had and invitesrv lacks are made safe (an unknown access
    model: the owner only), a max_items beyond this server's becomes 'max',
    a republished id keeps its newest payload, the oldest items beyond the
    node's max_items and payloads over max_payload stay behind (said so),
    a node without persistence brings no items, a node kept as C{true}
    (older Prosody) gets mod_pep's defaults, and nodes beyond max_nodes
    are left out.
    """
    path = account(tmp_path)
    write(tmp_path, "example%2eorg/pep/alice.dat", """return {
	["a"] = { ["name"] = "a"; ["config"] = { ["access_model"] = "authorize"; ["max_items"] = 2; }; };
	["b"] = { ["name"] = "b"; ["config"] = { ["max_items"] = 1000; ["include_payload"] = false; }; };
	["c"] = { ["name"] = "c"; ["config"] = { ["persist_items"] = false; }; };
	["d"] = true;
	["e"] = { ["name"] = "e"; ["config"] = {}; };
};
""")
    write(tmp_path, "example%2eorg/pep_a/alice.list",
          pepItem("1", "one") + pepItem("2", "two") + pepItem("1", "newer") + pepItem("3", "three"))
    write(tmp_path, "example%2eorg/pep_b/alice.list", pepItem("big", "x" * 200) + pepItem("ok", "y"))
    write(tmp_path, "example%2eorg/pep_c/alice.list", pepItem("1", "kept in memory only"))
    data = ProsodyDataDir(tmp_path).account(HOST, "alice", path, 4096,
                                            PepOptions(max_items=10, max_nodes=4, max_payload=100))
    nodes = {node.node: (json.loads(node.config), node.items) for node in data.pep}
    assert list(nodes) == ["a", "b", "c", "d"]
    assert nodes["a"][0]["access_model"] == "whitelist" and nodes["a"][0]["max_items"] == 2
    assert nodes["a"][1] == (("1", "<n xmlns='urn:x'>newer</n>"), ("3", "<n xmlns='urn:x'>three</n>"))
    assert nodes["b"][0]["max_items"] == "max" and nodes["b"][0]["deliver_payloads"] is False
    assert nodes["b"][1] == (("ok", "<n xmlns='urn:x'>y</n>"),)
    assert nodes["c"][1] == () and nodes["c"][0]["persist_items"] is False
    assert nodes["d"][0] == {**DEFAULTS, "access_model": "presence", "max_items": 1}
    assert len(data.skipped) == 4, data.skipped
    assert "'authorize' unknown here: the owner only" in data.skipped[0]
    assert "1 item(s) beyond its max_items" in data.skipped[1]
    assert "item big over modules.pep.max_payload (100)" in data.skipped[2]
    assert "PEP node e: over modules.pep.max_nodes (4)" in data.skipped[3]


def test_vcardPhotoOnlyWithoutAvatar(tmp_path):
    """
    A vCard is kept without its photo; the photo becomes the avatar (open)
    only when PEP has none, as mod_vcard_legacy moves it; a vCard over
    max_size is left out, said so.
    """
    path = account(tmp_path)
    vcard = write(tmp_path, "example%2eorg/vcard/alice.dat", """return {
	{ "Alice"; ["name"] = "FN"; ["attr"] = { ["xmlns"] = "vcard-temp"; }; };
	{ { "aGk="; ["name"] = "BINVAL"; ["attr"] = { ["xmlns"] = "vcard-temp"; }; };
		["name"] = "PHOTO"; ["attr"] = { ["xmlns"] = "vcard-temp"; }; };
	["name"] = "vCard"; ["attr"] = { ["xmlns"] = "vcard-temp"; };
};
""")
    data = ProsodyDataDir(tmp_path).account(HOST, "alice", path, 4096)
    assert data.accountXML == [("vcard-temp", "<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>")]
    assert [(n.node, json.loads(n.config)["access_model"], n.items[0][0]) for n in data.pep] == [
        ("urn:xmpp:avatar:data", "open", hashlib.sha1(b"hi").hexdigest()),
        ("urn:xmpp:avatar:metadata", "open", hashlib.sha1(b"hi").hexdigest())]
    write(tmp_path, "example%2eorg/pep/alice.dat",
          'return { ["urn:xmpp:avatar:metadata"] = { ["config"] = {}; }; };\n')
    data = ProsodyDataDir(tmp_path).account(HOST, "alice", path, 4096, vcardLimits=VcardOptions(10))
    assert [n.node for n in data.pep] == ["urn:xmpp:avatar:metadata"] and data.pep[0].items == ()
    assert data.accountXML == [] and data.skipped == ["the vCard: over modules.vcard.max_size (10)"]
    vcard.write_text('return { ["name"] = "x"; ["attr"] = {}; };\n')
    assert "not a vCard" in ProsodyDataDir(tmp_path).account(HOST, "alice", path, 4096).skipped[0]


def test_vcardTempFromOpenVcard4(tmp_path):
    """
    Without a vcard store (mod_vcard_legacy), an open vCard4 node gives the
    vCard-temp Prosody answered with; a vCard4 for contacts only gives none
    (vCard-temp is open to all), said so.
    """
    path = account(tmp_path)
    pep = write(tmp_path, "example%2eorg/pep/alice.dat", """return {
	["urn:xmpp:vcard4"] = { ["name"] = "urn:xmpp:vcard4";
		["config"] = { ["access_model"] = "open"; ["_defaults_only"] = true; }; };
};
""")
    write(tmp_path, "example%2eorg/pep_urn%3axmpp%3avcard4/alice.list", """item({
	{ { "Alice Liddell"; ["name"] = "text"; ["attr"] = {}; }; ["name"] = "fn"; ["attr"] = {}; };
	{ { "Liddell"; ["name"] = "surname"; ["attr"] = {}; }; { "Alice"; ["name"] = "given"; ["attr"] = {}; };
		["name"] = "n"; ["attr"] = {}; };
	{ { "ali"; ["name"] = "text"; ["attr"] = {}; }; ["name"] = "nickname"; ["attr"] = {}; };
	{ { "a@example.org"; ["name"] = "text"; ["attr"] = {}; };
		{ { { "work"; ["name"] = "text"; ["attr"] = {}; }; ["name"] = "type"; ["attr"] = {}; };
			["name"] = "parameters"; ["attr"] = {}; };
		["name"] = "email"; ["attr"] = {}; };
	{ { "tel:+331234"; ["name"] = "uri"; ["attr"] = {}; }; ["name"] = "tel"; ["attr"] = {}; };
	{ { "xmpp:alice@example.org"; ["name"] = "uri"; ["attr"] = {}; }; ["name"] = "impp"; ["attr"] = {}; };
	["name"] = "vcard"; ["key"] = "current"; ["when"] = 1; ["with"] = "alice@example.org";
	["attr"] = { ["xmlns"] = "urn:ietf:params:xml:ns:vcard-4.0"; ["stamp"] = "2027-01-15T08:00:00Z"; };
});
""")
    data = ProsodyDataDir(tmp_path).account(HOST, "alice", path, 4096)
    assert data.accountXML == [("vcard-temp", (
        "<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><N><FAMILY>Liddell</FAMILY><GIVEN>Alice</GIVEN>"
        "</N><NICKNAME>ali</NICKNAME><EMAIL><USERID>a@example.org</USERID><INTERNET/><WORK/></EMAIL>"
        "<TEL><NUMBER>+331234</NUMBER></TEL><JABBERID>alice@example.org</JABBERID></vCard>"))]
    assert [n.node for n in data.pep] == ["urn:xmpp:vcard4"] and not data.skipped
    pep.write_text(pep.read_text().replace('"open"', '"presence"'))
    data = ProsodyDataDir(tmp_path).account(HOST, "alice", path, 4096)
    assert data.accountXML == [] and "not open to all" in data.skipped[0]


def test_damagedFilesAreErrors(tmp_path):
    """A roster that is code, or a username not in prepared form: a clear error for that account."""
    path = account(tmp_path)
    write(tmp_path, "example%2eorg/roster/alice.dat", 'return os.execute("id");')
    source = ProsodyDataDir(tmp_path)
    with pytest.raises(ProsodyDataError, match="not Prosody data: .*alice.dat:1:8"):
        source.account(HOST, "alice", path, 4096)
    upper = account(tmp_path, "Alice")
    with pytest.raises(ProsodyDataError, match="not in its prepared form"):
        source.account(HOST, "Alice", upper, 4096)


def test_invites(tmp_path):
    """
    mod_invites records: an admin group invite that can be used again, a
    contact-only invite from the inviter's own file, a reset; expired ones skipped.
    """
    account(tmp_path)
    write(tmp_path, "example%2eorg/invite_token.dat", """return {
	["groupTokenAAAAAAAAAAAAAAA"] = { ["type"] = "register"; ["jid"] = "example.org";
		["created_at"] = 1799990000; ["expires"] = 1800090000; ["reusable"] = true;
		["allow_registration"] = true;
		["additional_data"] = { ["roles"] = { ["prosody:admin"] = true; }; ["groups"] = { "g1"; }; }; };
	["resetTokenAAAAAAAAAAAAAAA"] = { ["type"] = "register"; ["jid"] = "alice@example.org";
		["expires"] = 1800001000; ["additional_data"] = { ["allow_reset"] = "alice"; }; };
	["oldTokenAAAAAAAAAAAAAAAAA"] = { ["type"] = "register"; ["jid"] = "example.org";
		["expires"] = 1700000000; };
};
""")
    write(tmp_path, "example%2eorg/invite_token/alice.dat",
          'return {\n\t["contactTokenAAAAAAAAAAAA"] = 1800005000;\n};\n')
    invites, skipped = ProsodyDataDir(tmp_path).invites(HOST, NOW)
    found = {token: invite for invite, token in invites}
    group = found["groupTokenAAAAAAAAAAAAAAA"]
    assert (group.kind, group.usesAllowed, group.roles, group.groups, group.expires) == (
        "account", None, ("admin",), ("g1",), 1800090000.0)
    reset = found["resetTokenAAAAAAAAAAAAAAA"]
    assert (reset.kind, reset.username, reset.usesAllowed) == ("reset", "alice", 1)
    contact = found["contactTokenAAAAAAAAAAAA"]
    assert (contact.kind, contact.inviter, contact.allowRegistration) == ("contact", "alice", False)
    assert skipped == [f"invite {tokenLabel('oldTokenAAAAAAAAAAAAAAAAA')}: expired"]


def test_notADataDirectory(tmp_path):
    with pytest.raises(ProsodyDataError, match="not a directory"):
        ProsodyDataDir(tmp_path / "missing")
    with pytest.raises(ProsodyDataError, match="no Prosody data"):
        ProsodyDataDir(tmp_path)
