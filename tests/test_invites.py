"""
The invite model and its rules, in memory: a real L{InviteManager} over a
real in-memory SQLite store, with time from a L{task.Clock} so expiry, the
sweeping timer and the invitee delay are checked to the second.
"""

from __future__ import annotations

import hashlib
import re

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from invitesrv.config import Config, HostOptions
from invitesrv.invites import InviteError, InviteManager, hashToken
from invitesrv.modules.invites import InvitesModule
from invitesrv.registrar import RegistrationError
from invitesrv.service import InviteServer
from invitesrv.store.sqlite import SQLiteStore

HOST = "example.org"
OTHER = "other.example"
DAY = 86400


def makeHost(publicURL: str = "", **options):
    """A host C{example.org} (plus C{other.example}) over a fresh in-memory store and a Clock."""
    clock = task.Clock()
    clock.advance(1_700_000_000)
    hostOptions = HostOptions(**options)
    config = Config(hosts={HOST: hostOptions, OTHER: HostOptions()}, modules=(),
                    public_url=publicURL, scram_iterations=4096)
    store = SQLiteStore(":memory:")
    store.open()
    server = InviteServer(config, store=store, reactor=clock, loadModules=False)
    host = server.hosts[HOST]
    return host, InviteManager(host), clock


@pytest.fixture
def setup():
    host, manager, clock = makeHost(admins=("boss@example.org",))
    yield host, manager, clock
    host.store.close()


def addUser(host, username: str, password: str = "a long password"):
    return host.registrar.register(username, password, "cli", trusted=True)


@pytest_twisted.inlineCallbacks
def test_tokenAndStorage(setup):
    """The token is 24 base64url characters; only its SHA-256 is stored, under a separate id."""
    host, manager, _clock = setup
    created = yield manager.createAccount()
    assert re.fullmatch(r"[A-Za-z0-9_-]{24}", created.token)
    assert created.invite.id != created.token and created.token not in created.invite.id
    found = yield host.store.findInvite(hashlib.sha256(created.token.encode()).digest())
    assert found.id == created.invite.id
    assert (yield host.store.findInvite(created.token.encode())) is None
    dump = "\n".join(host.store._conn.iterdump())
    assert created.token not in dump


@pytest_twisted.inlineCallbacks
def test_uris(setup):
    """The xmpp: URIs are exactly Prosody's, per kind."""
    host, manager, _clock = setup
    yield addUser(host, "romeo")
    yield addUser(host, "bob")
    anyone = yield manager.createAccount()
    assert anyone.uri == f"xmpp:{HOST}?register;preauth={anyone.token}"
    bound = yield manager.createAccount("juliet")
    assert bound.uri == f"xmpp:juliet@{HOST}?register;preauth={bound.token}"
    reset = yield manager.createReset("bob")
    assert reset.uri == f"xmpp:bob@{HOST}?register;preauth={reset.token}"
    contact = yield manager.createContact("romeo")
    assert contact.uri == f"xmpp:romeo@{HOST}?roster;preauth={contact.token}"
    both = yield manager.createContact("romeo", True)
    assert both.uri == f"xmpp:romeo@{HOST}?roster;preauth={both.token};ibr=y"


@pytest_twisted.inlineCallbacks
def test_landingURLs():
    """invites_page wins over public_url; neither gives no link; contact-only invites get none."""
    host, manager, _clock = makeHost(invites_page="https://{host}/join/{token}",
                                    publicURL="https://web.example/")
    try:
        created = yield manager.createAccount()
        assert created.landing == f"https://{HOST}/join/{created.token}"
        yield addUser(host, "romeo")
        contact = yield manager.createContact("romeo")
        assert contact.landing is None
    finally:
        host.store.close()
    host, manager, _clock = makeHost(publicURL="https://web.example/")
    try:
        created = yield manager.createAccount()
        assert created.landing == f"https://web.example/invite/{created.token}"
    finally:
        host.store.close()
    host, manager, _clock = makeHost()
    try:
        assert (yield manager.createAccount()).landing is None
    finally:
        host.store.close()


@pytest_twisted.inlineCallbacks
def test_inviteCreatedHook(setup):
    """Hook invite-created sees the stored invite and may change the links."""
    host, manager, _clock = setup
    seen = []

    def onCreated(invite, links):
        seen.append((invite.id, links["token"]))
        links["landing"] = "https://elsewhere/" + links["token"]

    host.hooks.add("invite-created", onCreated)
    created = yield manager.createAccount()
    assert seen == [(created.invite.id, created.token)]
    assert created.landing == "https://elsewhere/" + created.token
    assert (yield manager.get(created.invite.id)) is not None


@pytest_twisted.inlineCallbacks
def test_expiry(setup):
    """Default TTL is invite_expiry; a token works until then and not a second later."""
    _host, manager, clock = setup
    created = yield manager.createAccount()
    assert created.invite.expires - created.invite.created == 7 * DAY
    clock.advance(7 * DAY - 1)
    invite = yield manager.reserve(created.token)
    assert invite is not None
    yield manager.release(invite)
    clock.advance(1)
    assert (yield manager.reserve(created.token)) is None
    assert (yield manager.list("expired"))[0].id == created.invite.id
    short = yield manager.createAccount(ttl=60)
    clock.advance(61)
    assert (yield manager.reserve(short.token)) is None


@pytest_twisted.inlineCallbacks
def test_resetInvites(setup):
    """A reset invite needs an existing account and lives reset_invite_expiry (one day)."""
    host, manager, _clock = setup
    with pytest.raises(InviteError, match="no account"):
        yield manager.createReset("ghost")
    yield addUser(host, "bob")
    created = yield manager.createReset("bob")
    assert created.invite.kind == "reset" and created.invite.username == "bob"
    assert created.invite.expires - created.invite.created == DAY
    assert created.invite.usesAllowed == 1


@pytest_twisted.inlineCallbacks
def test_usesAllowed(setup):
    """N-use invites give N reservations at once; a release gives one back; None is unlimited."""
    _host, manager, _clock = setup
    three = yield manager.createAccount(usesAllowed=3)
    held = []
    for _ in range(3):
        held.append((yield manager.reserve(three.token)))
    assert all(held)
    assert (yield manager.reserve(three.token)) is None
    yield manager.release(held[0])
    assert (yield manager.reserve(three.token)) is not None
    unlimited = yield manager.createAccount(usesAllowed=None)
    for _ in range(30):
        assert (yield manager.reserve(unlimited.token)) is not None
    with pytest.raises(InviteError):
        yield manager.createAccount(usesAllowed=0)


@pytest_twisted.inlineCallbacks
def test_reserveRefusals(setup):
    """Junk, contact-only, revoked and other-host tokens reserve nothing."""
    host, manager, _clock = setup
    for junk in (None, "", "x" * 65, "x" * 5000):
        assert hashToken(junk) is None
        assert (yield manager.reserve(junk)) is None
    yield addUser(host, "romeo")
    contactOnly = yield manager.createContact("romeo")
    assert (yield manager.reserve(contactOnly.token)) is None
    withIBR = yield manager.createContact("romeo", True)
    assert (yield manager.reserve(withIBR.token)) is not None
    revoked = yield manager.createAccount()
    assert (yield manager.revoke(revoked.invite.id))
    assert not (yield manager.revoke(revoked.invite.id))
    assert (yield manager.reserve(revoked.token)) is None
    elsewhere = yield InviteManager(host.router.hosts[OTHER]).createAccount()
    assert (yield manager.reserve(elsewhere.token)) is None
    assert (yield manager.get(elsewhere.invite.id)) is None


@pytest_twisted.inlineCallbacks
def test_boundUsername(setup):
    """A username-bound invite is single-use, for a free name, and holds it against others."""
    host, manager, _clock = setup
    yield addUser(host, "taken")
    with pytest.raises(InviteError, match="already exists"):
        yield manager.createAccount("taken")
    with pytest.raises(InviteError, match="only once"):
        yield manager.createAccount("carol", usesAllowed=2)
    carol = yield manager.createAccount("carol")
    with pytest.raises(InviteError, match="already holds"):
        yield manager.createAccount("carol")
    other = yield manager.reserve((yield manager.createAccount()).token)
    with pytest.raises(RegistrationError, match="reserved"):
        yield host.registrar.register("carol", "a long password", "ibr", invite=other)
    own = yield manager.reserve(carol.token)
    with pytest.raises(RegistrationError, match="not valid with this invitation"):
        yield host.registrar.register("dave", "a long password", "ibr", invite=own)
    yield host.registrar.register("carol", "a long password", "ibr", invite=own)
    assert (yield host.store.accountExists(HOST, "carol"))


@pytest_twisted.inlineCallbacks
def test_maxPendingInvites():
    """A user holds at most max_pending_invites pending invites; admins have no cap."""
    host, manager, _clock = makeHost(max_pending_invites=2, allow_user_invites=True,
                                    admins=("boss@example.org",))
    try:
        yield addUser(host, "alice")
        me = f"alice@{HOST}"
        first = yield manager.createContact("alice", creator=me)
        yield manager.createAccount(creator=me)
        with pytest.raises(InviteError, match="2 pending"):
            yield manager.createContact("alice", creator=me)
        assert len((yield manager.list("pending", owner=me))) == 2
        assert (yield manager.revoke(first.invite.id, owner=me))
        yield manager.createContact("alice", creator=me)
        for _ in range(3):
            yield manager.createAccount(creator="boss@example.org")
        assert not (yield manager.revoke(first.invite.id, owner="boss@example.org"))
    finally:
        host.store.close()


@pytest_twisted.inlineCallbacks
def test_inviteeDelay():
    """An account made with an invite may invite others only invitee_invite_delay later."""
    host, manager, clock = makeHost(invitee_invite_delay=3600)
    try:
        created = yield manager.createAccount()
        invite = yield manager.reserve(created.token)
        yield host.registrar.register("newbie", "a long password", "ibr", invite=invite)
        yield addUser(host, "oldtimer")
        me = f"newbie@{HOST}"
        clock.advance(3599)
        with pytest.raises(InviteError, match="too new"):
            yield manager.createAccount(creator=me)
        yield manager.createContact("newbie", False, creator=me)  # no account creation: allowed
        yield manager.createAccount(creator=f"oldtimer@{HOST}")
        clock.advance(1)
        yield manager.createAccount(creator=me)
    finally:
        host.store.close()


@pytest_twisted.inlineCallbacks
def test_contactInviteLookup(setup):
    """A contact token applies to its inviter only, and only while pending."""
    host, manager, clock = setup
    yield addUser(host, "romeo")
    created = yield manager.createContact("romeo", ttl=100)
    assert (yield manager.findContactInvite(created.token, "juliet")) is None
    assert (yield manager.findContactInvite("nonsense", "romeo")) is None
    assert (yield manager.findContactInvite(created.token, "romeo")).id == created.invite.id
    clock.advance(100)
    assert (yield manager.findContactInvite(created.token, "romeo")) is None


def waitFor(check, timeout: float = 5.0):
    """Poll the asynchronous C{check} (a Deferred-returning callable) until it fires True."""
    @pytest_twisted.inlineCallbacks
    def poll():
        for _ in range(int(timeout / 0.02)):
            if (yield check()):
                return True
            yield task.deferLater(reactor, 0.02, lambda: None)
        return False
    return poll()


@pytest_twisted.inlineCallbacks
def test_sweepTimer(setup):
    """The module's timer, on the host's clock, deletes used and expired invites and keeps live ones."""
    host, manager, clock = setup
    expiring = yield manager.createAccount(ttl=60)
    used = yield manager.createAccount()
    yield host.registrar.register("user1", "a long password", "ibr",
                                  invite=(yield manager.reserve(used.token)))
    live = yield manager.createAccount()
    module = InvitesModule()
    host.addModule("invites", module)
    host.start()
    try:
        clock.advance(InvitesModule.sweepInterval - 1)
        assert len((yield manager.list())) == 3
        clock.advance(1)

        def swept():
            return manager.list().addCallback(lambda invites: len(invites) == 1)
        assert (yield waitFor(swept))
        assert (yield manager.list())[0].id == live.invite.id
        assert (yield manager.get(expiring.invite.id)) is None
    finally:
        host.stop()
    assert module._sweeper is None and not clock.getDelayedCalls()


@pytest_twisted.inlineCallbacks
def test_reminderAndExpiredHook():
    """
    A day before an unused invite of a local user expires, the sweep tells
    that user once (hook C{host-send} sees the chat message); invites made
    by the command line, already used, or too short-lived for a reminder are
    not announced; an invite found expired is passed to C{invite-expired}.
    """
    host, manager, clock = makeHost(allow_user_invites=True)
    sent, expired = [], []
    yield addUser(host, "alice")
    yield addUser(host, "bob")
    waiting = yield manager.createContact("alice", True, note="for Carol", welcome="Hi Carol!")
    used = yield manager.createContact("bob", True)
    yield host.registrar.register("dave", "a long password", "ibr",
                                  invite=(yield manager.reserve(used.token)))
    yield manager.createContact("bob", True, ttl=2 * 3600)
    yield manager.createAccount(source="cli")
    host.hooks.add("host-send", lambda stanza: sent.append(stanza) or True)
    host.hooks.add("invite-expired", expired.append)
    host.addModule("invites", InvitesModule())
    host.start()
    try:
        for _hour in range(6 * 24 - 1):
            clock.advance(InvitesModule.sweepInterval)
            yield task.deferLater(reactor, 0, lambda: None)
        assert (yield waitFor(lambda: task.deferLater(reactor, 0, lambda: len(expired) == 1)))
        assert sent == [] and expired[0].inviter == "bob"
        for _hour in range(3):
            clock.advance(InvitesModule.sweepInterval)
            yield waitFor(lambda: task.deferLater(reactor, 0, lambda: bool(sent)), timeout=1)
        assert len(sent) == 1
        message = sent[0]
        assert (message["to"], message["from"], message["type"]) == (f"alice@{HOST}", HOST, "chat")
        body = str(message.body)
        assert f"{waiting.invite.id} (for Carol) expires at" in body and "nobody has used it" in body
        assert (yield manager.get(waiting.invite.id)).reminded is not None
    finally:
        host.stop()
        host.store.close()


@pytest_twisted.inlineCallbacks
def test_welcomeText(setup):
    """
    An inviter's welcome text is kept with the invite, trimmed; one too long
    or with control characters is refused.
    """
    host, manager, _clock = setup
    yield addUser(host, "alice")
    created = yield manager.createContact("alice", True, welcome="  Hello!\r\nSee you.  ")
    assert (yield manager.get(created.invite.id)).welcome == "Hello!\nSee you."
    with pytest.raises(InviteError, match="longer than 1000"):
        yield manager.createAccount(welcome="x" * 1001)
    with pytest.raises(InviteError, match="control characters"):
        yield manager.createAccount(welcome="ring \x07")
