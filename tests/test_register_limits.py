"""
Registration limits per client address, and admin invites.

The throttle is unit-tested on a L{task.Clock} through the real registrar and
an in-memory store; end to end, a throttled address gets C{wait/policy-violation}
over in-band registration while its invite stays usable, and an account made
with an admin invite is an admin of its host.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import pytest_twisted
from rawxmpp import RawClient
from twisted.internet import task
from twisted.words.protocols.jabber.error import StanzaError

from invitesrv.config import Config, HostOptions
from invitesrv.modules.register_limits import THROTTLED, RegisterLimitsModule
from invitesrv.service import InviteServer
from invitesrv.store.sqlite import SQLiteStore


def makeHost(**options):
    """A started host with only the limits module, open registration and a Clock."""
    clock = task.Clock()
    clock.advance(1_000_000)
    hostOptions = replace(HostOptions(), allow_registration=True, registration_invite_only=False,
                          **options)
    config = Config(hosts={"localhost": hostOptions}, modules=())
    store = SQLiteStore(":memory:")
    store.open()
    server = InviteServer(config, store=store, reactor=clock)
    host = server.hosts["localhost"]
    host.addModule("register_limits", RegisterLimitsModule())
    host.start()
    return host, clock, store


@pytest_twisted.inlineCallbacks
def test_minimumInterval():
    """After one registration, the same address must wait min_seconds_between_registrations."""
    host, clock, store = makeHost(min_seconds_between_registrations=600, registration_allowlist=())
    try:
        yield host.registrar.register("one", "a long password", "ibr", "203.0.113.5")
        with pytest.raises(StanzaError) as refused:
            yield host.registrar.register("two", "a long password", "ibr", "203.0.113.5")
        assert (refused.value.condition, refused.value.type, refused.value.text) == (
            "policy-violation", "wait", THROTTLED)
        yield host.registrar.register("other", "a long password", "ibr", "198.51.100.7")
        clock.advance(601)
        yield host.registrar.register("two", "a long password", "ibr", "203.0.113.5")
        assert (yield store.listAccounts("localhost")) == ["one", "other", "two"]
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_windowedCount():
    """At most registration_throttle_max per period; failed attempts do not count."""
    host, clock, store = makeHost(registration_throttle_max=2, registration_throttle_period=3600,
                                  registration_allowlist=())
    try:
        with pytest.raises(StanzaError):
            yield host.registrar.register("x", "short", "web", "203.0.113.5")  # too short
        yield host.registrar.register("a", "a long password", "web", "203.0.113.5")
        clock.advance(10)
        yield host.registrar.register("b", "a long password", "ibr", "203.0.113.5")
        with pytest.raises(StanzaError) as refused:
            yield host.registrar.register("c", "a long password", "ibr", "203.0.113.5")
        assert refused.value.condition == "policy-violation"
        clock.advance(3600)
        yield host.registrar.register("c", "a long password", "ibr", "203.0.113.5")
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_listsAndTrust():
    """Blocklisted addresses are refused, allowlisted ones exempt, admin actions always allowed."""
    host, clock, store = makeHost(min_seconds_between_registrations=600,
                                  registration_allowlist=("10.0.0.0/8",),
                                  registration_blocklist=("192.0.2.0/24",))
    try:
        with pytest.raises(StanzaError) as refused:
            yield host.registrar.register("evil", "a long password", "ibr", "192.0.2.9")
        assert (refused.value.condition, refused.value.text) == (
            "forbidden", "Your IP address is blocklisted")
        for name in ("p", "q", "r"):
            yield host.registrar.register(name, "a long password", "ibr", "10.1.2.3")
        yield host.registrar.register("cli1", "a long password", "cli", "", trusted=True)
        yield host.registrar.register("cli2", "a long password", "cli", "", trusted=True)
        assert len((yield store.listAccounts("localhost"))) == 5
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_allowlistOnly():
    """With allowlist_registration_only, other addresses may not register at all."""
    host, clock, store = makeHost(allowlist_registration_only=True,
                                  registration_allowlist=("127.0.0.1",))
    try:
        with pytest.raises(StanzaError) as refused:
            yield host.registrar.register("a", "a long password", "ibr", "203.0.113.5")
        assert refused.value.text == "Your IP address is not allowlisted"
        yield host.registrar.register("a", "a long password", "ibr", "::ffff:127.0.0.1")
    finally:
        store.close()


# -- end to end -------------------------------------------------------------

CONFIG = """
[hosts.localhost]
admins = ["root@localhost"]
min_seconds_between_registrations = "1h"
registration_allowlist = []
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import RunningServer
    running = RunningServer(tmp_path_factory.mktemp("limits"), CONFIG)
    running.start()
    yield running
    running.stop()


def createInvite(server, *args: str) -> str:
    output = server.ctl("invite", "create", *args).stdout
    return re.search(r"preauth=([A-Za-z0-9_-]+)", output).group(1)


def registerWith(server, token: str, username: str) -> str:
    """Preauth and register on one stream; return the register reply."""
    with RawClient(server.port) as client:
        client.startTLS()
        client.send(f"<iq type='set' id='pa'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
        assert "type='result'" in client.recvUntil(r"<iq [^>]*id='pa'[^>]*(/>|>.*?</iq>)")
        client.send("<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
                    f"<username>{username}</username><password>a long password</password></query></iq>")
        return client.recvUntil(r"<iq [^>]*id='reg'[^>]*(/>|>.*?</iq>)")


def test_throttledOverTheWire(server):
    """A second registration from the same address waits; the unused invite stays valid."""
    first = createInvite(server, "localhost")
    secondOutput = server.ctl("invite", "create", "localhost").stdout
    second = re.search(r"preauth=([A-Za-z0-9_-]+)", secondOutput).group(1)
    secondId = re.search(r"^Invite (\w+):", secondOutput, re.MULTILINE).group(1)
    assert "type='result'" in registerWith(server, first, "early")
    refused = registerWith(server, second, "late")
    assert "policy-violation" in refused and "type='wait'" in refused
    assert "Too many registrations from this IP address recently" in refused
    assert "late@localhost" not in server.ctl("users", "localhost").stdout
    shown = server.ctl("invite", "show", secondId).stdout
    assert re.search(r"Status:\s+pending", shown) and re.search(r"Uses:\s+0 of 1", shown)
    assert re.search(r"Reserved:\s+0", shown)


def test_adminInviteMakesAnAdmin(tmp_path):
    """An account created with an --admin invite sees the admin ad-hoc commands."""
    from conftest import RunningServer
    running = RunningServer(tmp_path, "").start()
    try:
        token = createInvite(running, "--admin", "localhost")
        user = createInvite(running, "localhost")
        assert "type='result'" in registerWith(running, token, "boss")
        assert "type='result'" in registerWith(running, user, "plain")
        nodes = {}
        for name in ("boss", "plain"):
            with RawClient(running.port) as client:
                client.login(name, "a long password")
                client.send("<iq type='get' id='items' to='localhost'><query "
                            "xmlns='http://jabber.org/protocol/disco#items' "
                            "node='http://jabber.org/protocol/commands'/></iq>")
                nodes[name] = client.recvUntil(r"<iq [^>]*id='items'.*?</iq>")
        assert "urn:xmpp:invite#create-account" in nodes["boss"]
        assert "urn:xmpp:invite#create-account" not in nodes["plain"]
    finally:
        running.stop()
