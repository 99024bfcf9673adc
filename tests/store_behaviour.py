"""
The behaviour every L{IStore} implementation must have, as one test mixin
(in the manner of Idavoll's storage tests): a backend's test module
subclasses L{StoreBehaviour}, provides a C{store} fixture (an open, empty
store) and L{StoreBehaviour.inviteAudit}, and inherits every test.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface.verify import verifyObject

from invitesrv.store.interfaces import (
    AccountExists,
    ArchivedMessage,
    ArchivedRoomMessage,
    ArchiveItemNotFound,
    ArchivePrefs,
    ArchiveQuery,
    Circle,
    CircleExists,
    Credentials,
    Device,
    FastToken,
    Invite,
    InviteUnavailable,
    InviteUse,
    IStore,
    NewAccount,
    OfflineMessage,
    PepNode,
    PushRegistration,
    QuotaExceeded,
    RoomArchiveQuery,
    RosterItem,
    StoredRoom,
    Upload,
    UploadUsage,
    UsernameConfusable,
    UsernameReserved,
)

HOST = "example.org"
NOW = 1_700_000_000.0


def credentials(seed: bytes = b"1") -> tuple[Credentials, ...]:
    """Plausible SCRAM secrets without the cost of deriving them."""
    return (Credentials("SCRAM-SHA-256", b"salt" + seed, 4096, seed * 32, seed * 32),
            Credentials("SCRAM-SHA-1", b"salt" + seed, 4096, seed * 20, seed * 20))


def account(username: str, host: str = HOST, **kwargs) -> NewAccount:
    kwargs.setdefault("credentials", credentials())
    kwargs.setdefault("now", NOW)
    return NewAccount(host, username, **kwargs)


def invite(inviteId: str, **kwargs) -> Invite:
    """An invite created at NOW, pending for an hour unless told otherwise."""
    kwargs.setdefault("host", HOST)
    kwargs.setdefault("kind", "account")
    kwargs.setdefault("created", NOW)
    kwargs.setdefault("expires", NOW + 3600)
    return Invite(id=inviteId, **kwargs)


def token(inviteId: str) -> bytes:
    """The token hash stored for C{inviteId} in these tests."""
    return f"hash-of-{inviteId}".encode()


class StoreBehaviour:
    """Tests every store passes; subclasses give the C{store} fixture."""

    # What a write for an account that does not exist raises (a foreign key's error).
    integrityErrors: tuple[type[Exception], ...] = (KeyError, sqlite3.IntegrityError)

    def inviteAudit(self, store, inviteId: str) -> defer.Deferred:
        """
        Fire with the audit rows kept for C{inviteId} as (username, path,
        address) tuples, read directly from the backend: the audit must
        outlive the invite, and no interface method reads a deleted invite.
        """
        raise NotImplementedError

    @defer.inlineCallbacks
    def createInvite(self, store, inviteId: str, **kwargs):
        created = invite(inviteId, **kwargs)
        yield store.createInvite(created, token(inviteId))
        return created

    def test_providesIStore(self, store):
        """The store declares and implements the whole interface."""
        assert verifyObject(IStore, store)

    # -- accounts ----------------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_createAccount(self, store):
        """An account exists once created, on its host only, with its credentials and roles."""
        assert not (yield store.accountExists(HOST, "alice"))
        yield store.createAccount(account("alice", roles=("admin", "staff")))
        assert (yield store.accountExists(HOST, "alice"))
        assert not (yield store.accountExists("other.example", "alice"))
        secrets = {c.mechanism: c for c in credentials()}
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
            assert (yield store.getCredentials(HOST, "alice", mechanism)) == secrets[mechanism]
        assert (yield store.getCredentials(HOST, "alice", "SCRAM-SHA-512")) is None
        assert (yield store.getCredentials(HOST, "bob", "SCRAM-SHA-256")) is None
        assert (yield store.getRoles(HOST, "alice")) == frozenset({"admin", "staff"})
        assert (yield store.getRoles(HOST, "bob")) == frozenset()
        assert (yield store.listRoleHolders(HOST, "admin")) == ["alice"]

    @pytest_twisted.inlineCallbacks
    def test_listAccounts(self, store):
        for name in ("zoe", "alice", "mike"):
            yield store.createAccount(account(name))
        yield store.createAccount(account("bob", host="other.example"))
        assert (yield store.listAccounts(HOST)) == ["alice", "mike", "zoe"]
        assert (yield store.listAccounts("other.example")) == ["bob"]
        assert (yield store.listAccounts("nowhere.example")) == []

    @pytest_twisted.inlineCallbacks
    def test_accountConflict(self, store):
        """A second account of the same name fails and changes nothing."""
        yield store.createAccount(account("alice"))
        yield self.createInvite(store, "i1")
        reserved = yield store.reserveInvite(token("i1"), HOST, NOW)
        with pytest.raises(AccountExists):
            yield store.createAccount(account("alice", credentials=credentials(b"2"),
                                              roles=("admin",), inviteUse=InviteUse(reserved.id, "ibr")))
        assert (yield store.getCredentials(HOST, "alice", "SCRAM-SHA-1")) == credentials()[1]
        assert (yield store.getRoles(HOST, "alice")) == frozenset()
        assert (yield store.getInvite("i1")).uses == 0

    @pytest_twisted.inlineCallbacks
    def test_setCredentials(self, store):
        yield store.createAccount(account("alice"))
        assert (yield store.setCredentials(HOST, "alice", credentials(b"2")))
        assert (yield store.getCredentials(HOST, "alice", "SCRAM-SHA-256")) == credentials(b"2")[0]
        assert not (yield store.setCredentials(HOST, "bob", credentials(b"2")))
        assert not (yield store.accountExists(HOST, "bob"))

    @pytest_twisted.inlineCallbacks
    def test_deleteLeavesLocalRosters(self, store):
        """A deleted account leaves the rosters (and pending requests) of its host's users."""
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        yield store.setRosterItem(HOST, "bob", RosterItem(f"alice@{HOST}", subscription="both"))
        yield store.setRosterItem(HOST, "bob", RosterItem("carol@example.org", subscription="to"))
        yield store.setPendingIn(HOST, "bob", f"alice@{HOST}", "<presence type='subscribe'/>")
        before = (yield store.getRoster(HOST, "bob")).version
        assert (yield store.deleteAccount(HOST, "alice"))
        roster = yield store.getRoster(HOST, "bob")
        assert [item.contact for item in roster.items] == ["carol@example.org"]
        changes = yield store.getRosterChanges(HOST, "bob", before)
        assert changes.removed == (f"alice@{HOST}",)
        assert (yield store.getPendingIn(HOST, "bob")) == []

    @pytest_twisted.inlineCallbacks
    def test_deleteCascades(self, store):
        """Deleting an account deletes everything it owns; a new account of that name starts empty."""
        yield store.createAccount(account("alice", roles=("admin",)))
        yield store.setRosterItem(HOST, "alice", RosterItem("bob@example.org", subscription="both"))
        yield store.setPendingIn(HOST, "alice", "eve@example.org", "<presence type='subscribe'/>")
        yield store.storeOffline(HOST, "alice", OfflineMessage(NOW, "<message/>"), 10)
        yield store.block(HOST, "alice", ["eve@example.org"])
        yield store.publishPepItem(HOST, "alice", "urn:xmpp:avatar:data", "{}", "1", "<item/>", 1)
        yield store.setAccountXML(HOST, "alice", "vcard-temp", "<vCard/>")
        assert (yield store.deleteAccount(HOST, "alice"))
        assert not (yield store.deleteAccount(HOST, "alice"))
        assert not (yield store.accountExists(HOST, "alice"))
        assert (yield store.getCredentials(HOST, "alice", "SCRAM-SHA-256")) is None
        assert (yield store.getRoles(HOST, "alice")) == frozenset()
        yield store.createAccount(account("alice"))
        roster = yield store.getRoster(HOST, "alice")
        assert roster.items == ()
        assert (yield store.getPendingIn(HOST, "alice")) == []
        assert (yield store.getOffline(HOST, "alice")) == []
        assert (yield store.getRoles(HOST, "alice")) == frozenset()
        assert (yield store.getBlocklist(HOST, "alice")) == []
        assert (yield store.getPep(HOST, "alice")) == []
        assert (yield store.getAccountXML(HOST, "alice", "vcard-temp")) is None

    @pytest_twisted.inlineCallbacks
    def test_deleteRevokesInvites(self, store):
        """
        Deleting an account revokes, in the same step, the pending invites
        that name it or that it made: its reset invite, its contact invite,
        an invite it created; another's invites and used ones stay as they were.
        """
        yield store.createAccount(account("frank"))
        yield store.createAccount(account("gina"))
        yield self.createInvite(store, "reset", kind="reset", username="frank")
        yield self.createInvite(store, "contact", kind="contact", inviter="frank", usesAllowed=None)
        yield self.createInvite(store, "made", source=f"frank@{HOST}")
        yield self.createInvite(store, "used", source=f"frank@{HOST}")
        yield store.createAccount(account("hugo", inviteUse=InviteUse(
            (yield store.reserveInvite(token("used"), HOST, NOW)).id, "ibr")))
        yield self.createInvite(store, "ginas", kind="contact", inviter="gina")
        yield self.createInvite(store, "otherHost", kind="reset", username="frank",
                                host="other.example")
        assert (yield store.deleteAccount(HOST, "frank", NOW + 5))
        for inviteId in ("reset", "contact", "made"):
            revoked = yield store.getInvite(inviteId)
            assert revoked.status(NOW) == "revoked" and revoked.revoked == NOW + 5
            assert (yield store.reserveInvite(token(inviteId), HOST, NOW + 6)) is None
        assert (yield store.getInvite("used")).status(NOW) == "used"
        for inviteId in ("ginas", "otherHost"):
            assert (yield store.getInvite(inviteId)).status(NOW) == "pending"
        yield store.createAccount(account("frank"))  # the name is free again, with nothing attached

    @pytest_twisted.inlineCallbacks
    def test_lookAlikeRefused(self, store):
        """
        A name that is a mixed-script or whole-script look-alike of an
        existing account of the host is refused; one of another host, a
        look-alike within one script, and the same name elsewhere are not.
        """
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("scope"))
        for lookAlike in ("\u0430lice", "alic\u0435", "\u0455\u0441\u043e\u0440\u0435"):
            with pytest.raises(UsernameConfusable):
                yield store.createAccount(account(lookAlike))
            assert not (yield store.accountExists(HOST, lookAlike))
        yield store.createAccount(account("\u0430lice", host="other.example"))
        yield store.createAccount(account("paull"))
        yield store.createAccount(account("paul1"))

    @pytest_twisted.inlineCallbacks
    def test_accountWithRosterItems(self, store):
        """Roster items created with an account are written for existing owners only."""
        yield store.createAccount(account("bob"))
        yield store.createAccount(account("alice", rosterItems=(
            ("alice", RosterItem("bob@example.org", subscription="both")),
            ("bob", RosterItem("alice@example.org", subscription="both", groups=("Friends",))),
            ("ghost", RosterItem("alice@example.org")),
        )))
        assert (yield store.getRosterItem(HOST, "alice", "bob@example.org")).subscription == "both"
        item = yield store.getRosterItem(HOST, "bob", "alice@example.org")
        assert item.groups == ("Friends",)
        assert not (yield store.accountExists(HOST, "ghost"))

    # -- rosters -------------------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_rosterItemsRoundTrip(self, store):
        """Every field of a roster item is kept."""
        yield store.createAccount(account("alice"))
        item = RosterItem("bob@example.org", name="Bob ☃", subscription="to", ask=True,
                          approved=True, groups=("Work", "Friends"))
        yield store.setRosterItem(HOST, "alice", item)
        assert (yield store.getRosterItem(HOST, "alice", "bob@example.org")) == item
        assert (yield store.getRoster(HOST, "alice")).items == (item,)
        assert (yield store.getRosterItem(HOST, "alice", "carol@example.org")) is None

    @pytest_twisted.inlineCallbacks
    def test_rosterVersions(self, store):
        """Each change bumps the version; changes since a version list items and tombstones."""
        yield store.createAccount(account("alice"))
        assert (yield store.getRoster(HOST, "alice")).version == 0
        bob, carol = RosterItem("bob@example.org"), RosterItem("carol@example.org")
        assert (yield store.setRosterItem(HOST, "alice", bob)) == 1
        assert (yield store.setRosterItem(HOST, "alice", carol)) == 2
        renamed = RosterItem("bob@example.org", name="Bobby")
        assert (yield store.setRosterItem(HOST, "alice", renamed)) == 3
        roster = yield store.getRoster(HOST, "alice")
        assert roster.version == 3 and roster.items == (renamed, carol)

        changes = yield store.getRosterChanges(HOST, "alice", 2)
        assert (changes.version, changes.items, changes.removed) == (3, (renamed,), ())
        assert (yield store.removeRosterItem(HOST, "alice", "carol@example.org")) == 4
        assert (yield store.removeRosterItem(HOST, "alice", "carol@example.org")) is None
        changes = yield store.getRosterChanges(HOST, "alice", 3)
        assert (changes.version, changes.items, changes.removed) == (4, (), ("carol@example.org",))
        assert [contact for contact, _ in changes.changes] == ["carol@example.org"]
        assert (yield store.getRoster(HOST, "alice")).items == (renamed,)
        assert (yield store.getRosterItem(HOST, "alice", "carol@example.org")) is None

        current = yield store.getRosterChanges(HOST, "alice", 4)
        assert (current.version, current.items, current.removed) == (4, (), ())
        assert (yield store.getRosterChanges(HOST, "alice", 5)) is None
        assert (yield store.getRosterChanges(HOST, "nobody", 0)) is None

        yield store.setRosterItem(HOST, "alice", carol)
        changes = yield store.getRosterChanges(HOST, "alice", 3)
        assert (changes.items, changes.removed) == ((carol,), ())

    @pytest_twisted.inlineCallbacks
    def test_rostersAreSeparate(self, store):
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        yield store.setRosterItem(HOST, "alice", RosterItem("carol@example.org"))
        assert (yield store.getRoster(HOST, "bob")).items == ()
        assert (yield store.getRoster(HOST, "bob")).version == 0

    @pytest_twisted.inlineCallbacks
    def test_pendingIn(self, store):
        """Inbound subscription requests are kept per contact until removed."""
        yield store.createAccount(account("alice"))
        yield store.setPendingIn(HOST, "alice", "bob@example.org", "<presence id='1'/>")
        yield store.setPendingIn(HOST, "alice", "bob@example.org", "<presence id='2'/>")
        yield store.setPendingIn(HOST, "alice", "carol@example.org", "<presence id='3'/>")
        assert [tuple(row) for row in (yield store.getPendingIn(HOST, "alice"))] == [
            ("bob@example.org", "<presence id='2'/>"), ("carol@example.org", "<presence id='3'/>")]
        assert (yield store.removePendingIn(HOST, "alice", "bob@example.org"))
        assert not (yield store.removePendingIn(HOST, "alice", "bob@example.org"))
        assert len((yield store.getPendingIn(HOST, "alice"))) == 1
        yield store.setPendingIn(HOST, "nobody", "bob@example.org", "<presence/>")
        assert (yield store.getPendingIn(HOST, "nobody")) == []

    @pytest_twisted.inlineCallbacks
    def test_rosterAndPendingIn(self, store):
        """An initial presence reads the roster and the pending requests in one call."""
        yield store.createAccount(account("alice"))
        yield store.setRosterItem(HOST, "alice", RosterItem("carol@example.org", "Carol"))
        yield store.setPendingIn(HOST, "alice", "bob@example.org", "<presence id='1'/>")
        roster, pending = yield store.getRosterAndPendingIn(HOST, "alice")
        assert roster == (yield store.getRoster(HOST, "alice")) and roster.items
        assert [tuple(row) for row in pending] == [("bob@example.org", "<presence id='1'/>")]
        roster, pending = yield store.getRosterAndPendingIn(HOST, "nobody")
        assert (roster.items, list(pending)) == ((), [])

    @pytest_twisted.inlineCallbacks
    def test_accountWithImportedData(self, store):
        """
        An imported account comes with its pending requests and offline
        messages in the same transaction; a refused creation writes none of them.
        """
        data = dict(pendingIn=(("bob@example.org", "<presence type='subscribe'/>"),),
                    offline=(OfflineMessage(NOW - 60, "<m1/>"), OfflineMessage(NOW - 30, "<m2/>")))
        yield store.createAccount(account("alice", **data))
        assert [tuple(row) for row in (yield store.getPendingIn(HOST, "alice"))] == [
            ("bob@example.org", "<presence type='subscribe'/>")]
        with pytest.raises(AccountExists):
            yield store.createAccount(account("alice", **data))
        assert (yield store.getOffline(HOST, "alice")) == list(data["offline"])
        assert len((yield store.getPendingIn(HOST, "alice"))) == 1

    @pytest_twisted.inlineCallbacks
    def test_countAccountsWithout(self, store):
        """Accounts with SCRAM-SHA-1 keys only (imported) are counted, per host."""
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob", credentials=credentials()[1:]))
        yield store.createAccount(account("carol", host="other.org", credentials=credentials()[1:]))
        assert (yield store.countAccountsWithout(HOST, "SCRAM-SHA-256")) == 1
        assert (yield store.countAccountsWithout(HOST, "SCRAM-SHA-1")) == 0
        yield store.setCredentials(HOST, "bob", credentials(b"2"))
        assert (yield store.countAccountsWithout(HOST, "SCRAM-SHA-256")) == 0
        assert (yield store.countAccountsWithout("other.org", "SCRAM-SHA-256")) == 1

    # -- offline messages -----------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_pushRegistrations(self, store):
        """One registration per app server and node, replaced in place; removed one or all; per account."""
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        assert (yield store.getPushRegistrations(HOST, "alice")) == []
        phone = PushRegistration("push.example.org", "node1", "<x/>")
        yield store.setPushRegistration(HOST, "alice", phone)
        yield store.setPushRegistration(HOST, "alice", PushRegistration("push.example.org", "node2"))
        yield store.setPushRegistration(HOST, "alice", PushRegistration("apns.example", "n"))
        yield store.setPushRegistration(HOST, "bob", PushRegistration("push.example.org", "node1"))
        replaced = PushRegistration("push.example.org", "node1", "<x type='submit'/>")
        yield store.setPushRegistration(HOST, "alice", replaced)
        assert (yield store.getPushRegistrations(HOST, "alice")) == [
            PushRegistration("apns.example", "n"), replaced,
            PushRegistration("push.example.org", "node2")]
        assert (yield store.removePushRegistrations(HOST, "alice", "push.example.org", "node2")) == 1
        assert (yield store.removePushRegistrations(HOST, "alice", "push.example.org", "nope")) == 0
        assert (yield store.removePushRegistrations(HOST, "alice", "apns.example")) == 1
        assert (yield store.getPushRegistrations(HOST, "alice")) == [replaced]
        assert (yield store.deleteAccount(HOST, "alice"))
        assert (yield store.getPushRegistrations(HOST, "alice")) == []
        assert (yield store.getPushRegistrations(HOST, "bob")) == [
            PushRegistration("push.example.org", "node1")]

    @pytest_twisted.inlineCallbacks
    def test_devices(self, store):
        """Devices are kept per account, most recent first, at most C{keep}, and go with it."""
        yield store.createAccount(account("alice"))
        yield store.recordDevices(HOST, [("alice", Device("phone", "Conv", "Pixel", NOW))], keep=2)
        yield store.recordDevices(HOST, [("alice", Device("laptop", "Dino", "", NOW + 1))], keep=2)
        assert [d.id for d in (yield store.getDevices(HOST, "alice"))] == ["laptop", "phone"]
        yield store.recordDevices(HOST, [("alice", Device("phone", "Conv 2", "Pixel", NOW + 2))], keep=2)
        assert (yield store.getDevice(HOST, "alice", "phone")) == Device("phone", "Conv 2", "Pixel",
                                                                         NOW + 2)
        yield store.recordDevices(HOST, [("alice", Device("tablet", "", "", NOW + 3))], keep=2)
        assert [d.id for d in (yield store.getDevices(HOST, "alice"))] == ["tablet", "phone"]
        assert (yield store.forgetDevice(HOST, "alice", "phone"))
        assert not (yield store.forgetDevice(HOST, "alice", "phone"))
        assert (yield store.getDevice(HOST, "alice", "phone")) is None
        yield store.deleteAccount(HOST, "alice")
        yield store.createAccount(account("alice"))
        assert (yield store.getDevices(HOST, "alice")) == []

    @pytest_twisted.inlineCallbacks
    def test_devicesInABatch(self, store):
        """
        One call records several accounts' logins; an account deleted since
        its login is skipped without losing the others'; each account keeps
        its C{keep} most recent devices.
        """
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        yield store.recordDevices(HOST, [
            ("alice", Device("phone", "Conv", "", NOW)), ("gone", Device("phone", "", "", NOW)),
            ("bob", Device("laptop", "Dino", "", NOW)), ("alice", Device("tablet", "", "", NOW + 1)),
            ("alice", Device("laptop", "Gajim", "", NOW + 2))], keep=2)
        assert [d.id for d in (yield store.getDevices(HOST, "alice"))] == ["laptop", "tablet"]
        assert (yield store.getDevices(HOST, "bob")) == [Device("laptop", "Dino", "", NOW)]
        assert (yield store.getDevices(HOST, "gone")) == []

    @pytest_twisted.inlineCallbacks
    def test_fastTokens(self, store):
        """
        A new token is pending until used; the current one stays valid
        until then, and not after; counts only grow; revocation forgets both.
        """
        yield store.createAccount(account("alice"))
        first = FastToken("HT-SHA-256-NONE", b"salt1", NOW, NOW + 100)
        yield store.issueToken(HOST, "alice", "phone", first)  # a new device: added
        assert (yield store.getDevice(HOST, "alice", "phone")) == Device("phone", lastLogin=NOW,
                                                                         pending=first)
        yield store.recordDevices(HOST, [("alice", Device("phone", "Conv", lastLogin=NOW + 1))], keep=5)
        assert (yield store.getDevice(HOST, "alice", "phone")).pending == first
        assert (yield store.useToken(HOST, "alice", "phone", b"salt1", 1))
        device = yield store.getDevice(HOST, "alice", "phone")
        assert (device.current, device.pending) == (
            FastToken("HT-SHA-256-NONE", b"salt1", NOW, NOW + 100, count=1), None)
        assert not (yield store.useToken(HOST, "alice", "phone", b"salt1", 1))  # replayed count
        assert (yield store.useToken(HOST, "alice", "phone", b"salt1", 2))
        assert (yield store.useToken(HOST, "alice", "phone", b"salt1", None))
        second = FastToken("HT-SHA-256-NONE", b"salt2", NOW + 1, NOW + 101)
        yield store.issueToken(HOST, "alice", "phone", second)
        assert (yield store.useToken(HOST, "alice", "phone", b"salt1", 3))  # grace: not used yet
        assert (yield store.useToken(HOST, "alice", "phone", b"salt2", 1))
        assert not (yield store.useToken(HOST, "alice", "phone", b"salt1", 4))  # replaced
        assert not (yield store.useToken(HOST, "alice", "other", b"salt2", 5))
        assert (yield store.revokeTokens(HOST, "alice")) == 1
        assert not (yield store.useToken(HOST, "alice", "phone", b"salt2", 6))
        device = yield store.getDevice(HOST, "alice", "phone")
        assert (device.current, device.pending) == (None, None)

    @pytest_twisted.inlineCallbacks
    def test_tokenLogin(self, store):
        """A token login reads the device and the account's credentials of a mechanism at once."""
        yield store.createAccount(account("alice"))
        token = FastToken("HT-SHA-256-NONE", b"salt1", NOW, NOW + 100)
        yield store.issueToken(HOST, "alice", "phone", token)
        keys = yield store.getCredentials(HOST, "alice", "SCRAM-SHA-1")
        device, found = yield store.getTokenLogin(HOST, "alice", "phone", "SCRAM-SHA-1")
        assert (device, found) == ((yield store.getDevice(HOST, "alice", "phone")), keys)
        assert device.pending == token and keys is not None
        assert (yield store.getTokenLogin(HOST, "alice", "other", "SCRAM-SHA-1")) == (None, keys)
        assert (yield store.getTokenLogin(HOST, "alice", "phone", "SCRAM-SHA-512"))[1] is None
        assert (yield store.getTokenLogin(HOST, "nobody", "phone", "SCRAM-SHA-1")) == (None, None)

    @pytest_twisted.inlineCallbacks
    def test_blocklist(self, store):
        """Blocking says what is new, unblocking what was there; each account has its own list."""
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        assert (yield store.getBlocklist(HOST, "alice")) == []
        assert (yield store.block(HOST, "alice", ["spam.example", "eve@example.org"])) == [
            "eve@example.org", "spam.example"]
        assert (yield store.block(HOST, "alice", ["eve@example.org", "eve@example.org/phone"])) == [
            "eve@example.org/phone"]
        assert (yield store.block(HOST, "bob", ["mallory@example.org"])) == ["mallory@example.org"]
        assert (yield store.getBlocklist(HOST, "alice")) == [
            "eve@example.org", "eve@example.org/phone", "spam.example"]
        assert (yield store.unblock(HOST, "alice", ["spam.example", "nobody@example.org"])) == [
            "spam.example"]
        assert (yield store.unblock(HOST, "alice")) == ["eve@example.org", "eve@example.org/phone"]
        assert (yield store.getBlocklist(HOST, "alice")) == []
        assert (yield store.unblock(HOST, "alice")) == []
        assert (yield store.getBlocklist(HOST, "bob")) == ["mallory@example.org"]
        yield store.block(HOST, "alice", ["eve@example.org"])
        assert (yield store.getBlocklists(HOST)) == {"alice": ["eve@example.org"],
                                                     "bob": ["mallory@example.org"]}
        assert (yield store.getBlocklists("other.example")) == {}

    @pytest_twisted.inlineCallbacks
    def test_blockNeedsAccount(self, store):
        """No blocklist row is written for an account that does not exist."""
        with pytest.raises(self.integrityErrors):  # the foreign key
            yield store.block(HOST, "ghost", ["eve@example.org"])
        yield store.createAccount(account("ghost"))
        assert (yield store.getBlocklist(HOST, "ghost")) == []

    @pytest_twisted.inlineCallbacks
    def test_offlineCap(self, store):
        """Messages are kept up to the cap, returned oldest first, and count until removed."""
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        for number in range(3):
            kept = yield store.storeOffline(HOST, "alice", OfflineMessage(NOW + number, f"<m{number}/>"), 3)
            assert kept
        assert not (yield store.storeOffline(HOST, "alice", OfflineMessage(NOW + 9, "<m9/>"), 3))
        assert (yield store.storeOffline(HOST, "bob", OfflineMessage(NOW, "<b/>"), 3))
        messages = yield store.getOffline(HOST, "alice")
        assert messages == [OfflineMessage(NOW + n, f"<m{n}/>") for n in range(3)]
        assert (yield store.getOffline(HOST, "alice")) == messages  # reading removes nothing
        assert (yield store.removeOffline(HOST, "alice", messages[-1].id)) == 3
        assert (yield store.getOffline(HOST, "alice")) == []
        assert (yield store.storeOffline(HOST, "alice", OfflineMessage(NOW, "<again/>"), 3))
        assert (yield store.getOffline(HOST, "bob")) == [OfflineMessage(NOW, "<b/>")]

    @pytest_twisted.inlineCallbacks
    def test_offlineReadInPieces(self, store):
        """
        Offline messages are read a batch at a time after the last one handed
        over, and removed only up to the last one delivered: what was not
        delivered, and what arrived meanwhile, stays.
        """
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        for number in range(5):
            yield store.storeOffline(HOST, "alice", OfflineMessage(NOW + number, f"<m{number}/>"), 10)
        yield store.storeOffline(HOST, "bob", OfflineMessage(NOW, "<b/>"), 10)
        first = yield store.getOffline(HOST, "alice", limit=2)
        assert [m.stanza for m in first] == ["<m0/>", "<m1/>"]
        assert first[0].id < first[1].id
        second = yield store.getOffline(HOST, "alice", after=first[-1].id, limit=2)
        assert [m.stanza for m in second] == ["<m2/>", "<m3/>"]
        assert (yield store.removeOffline(HOST, "alice", first[-1].id)) == 2
        yield store.storeOffline(HOST, "alice", OfflineMessage(NOW + 9, "<late/>"), 10)
        rest = yield store.getOffline(HOST, "alice")
        assert [m.stanza for m in rest] == ["<m2/>", "<m3/>", "<m4/>", "<late/>"]
        assert (yield store.removeOffline(HOST, "alice", rest[-1].id)) == 4
        assert (yield store.getOffline(HOST, "bob")) == [OfflineMessage(NOW, "<b/>")]

    # -- message archives ---------------------------------------------------------------

    @defer.inlineCallbacks
    def archive(self, store, username: str, count: int, first: int = 1, peers=("bob@example.org",)):
        """Archive C{count} messages for C{username}, ids C{first}.., peers in turn."""
        entries = [(username, ArchivedMessage(first + n, peers[n % len(peers)], f"<m{first + n}/>"), False)
                   for n in range(count)]
        assert (yield store.appendArchive(HOST, entries, 1000)) == (count, [])

    @staticmethod
    def ids(page) -> list[int]:
        return [m.id for m in page.messages]

    @pytest_twisted.inlineCallbacks
    def test_archivePages(self, store):
        """
        Pages go forward from the start or after a cursor, backward from the
        end or before one, with the count of the whole filtered set, the index
        of their first message and whether they reach the end.
        """
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        yield self.archive(store, "alice", 10, peers=("bob@example.org", "carol@example.org"))
        yield self.archive(store, "bob", 2, first=100)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(limit=4))
        assert (self.ids(page), page.count, page.index, page.complete) == ([1, 2, 3, 4], 10, 0, False)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(limit=4, after=8))
        assert (self.ids(page), page.count, page.index, page.complete) == ([9, 10], 10, 8, True)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(limit=4, last=True))
        assert (self.ids(page), page.index, page.complete) == ([7, 8, 9, 10], None, False)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(limit=4, last=True, before=3))
        assert (self.ids(page), page.index, page.complete) == ([1, 2], None, True)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(limit=3, offset=5))
        assert (self.ids(page), page.index) == ([6, 7, 8], 5)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(limit=0))
        assert (self.ids(page), page.count, page.complete) == ([], 10, False)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(limit=5, after=10))
        assert (self.ids(page), page.complete) == ([], True)
        assert (yield store.queryArchive(HOST, "carol", ArchiveQuery())).count == 0
        with pytest.raises(ArchiveItemNotFound):
            yield store.queryArchive(HOST, "alice", ArchiveQuery(after=100))  # bob's, not alice's
        with pytest.raises(ArchiveItemNotFound):
            yield store.queryArchive(HOST, "alice", ArchiveQuery(before=11, last=True))

    @pytest_twisted.inlineCallbacks
    def test_archiveFilters(self, store):
        """A peer, a resource, an id range and a list of ids each narrow the set that is paged and counted."""
        yield store.createAccount(account("alice"))
        yield self.archive(store, "alice", 10, peers=("bob@example.org", "carol@example.org"))
        yield store.appendArchive(HOST, [("alice", ArchivedMessage(
            11, "bob@example.org", "<m11/>", "phone"), False)], 1000)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(peer="bob@example.org", limit=3))
        assert (self.ids(page), page.count) == ([1, 3, 5], 6)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(peer="bob@example.org", after=5, limit=2))
        assert (self.ids(page), page.index, page.complete) == ([7, 9], 3, False)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(
            peer="bob@example.org", resource="phone"))
        assert (self.ids(page), page.messages[0].resource, page.messages[0].stanza) == (
            [11], "phone", "<m11/>")
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(low=3, high=8))
        assert (self.ids(page), page.count) == ([4, 5, 6, 7], 4)
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery(ids=(2, 9, 42)))
        assert (self.ids(page), page.count) == ([2, 9], 2)

    @pytest_twisted.inlineCallbacks
    def test_archiveChecksAccountAndRoster(self, store):
        """
        Nothing is archived for an account that does not exist, nor, when
        asked, from a peer who is not on the roster.
        """
        yield store.createAccount(account("alice"))
        yield store.setRosterItem(HOST, "alice", RosterItem("carol@example.org"))
        added = yield store.appendArchive(HOST, [
            ("ghost", ArchivedMessage(1, "bob@example.org", "<m/>"), False),
            ("alice", ArchivedMessage(2, "bob@example.org", "<m/>"), True),
            ("alice", ArchivedMessage(3, "carol@example.org", "<m/>"), True),
            ("alice", ArchivedMessage(4, "bob@example.org", "<m/>"), False)], 1000)
        assert added == (2, [])
        assert self.ids((yield store.queryArchive(HOST, "alice", ArchiveQuery()))) == [3, 4]
        assert (yield store.lastArchiveId(HOST)) == 4
        assert (yield store.lastArchiveId("other.example")) == 0

    @pytest_twisted.inlineCallbacks
    def test_archiveIdTaken(self, store):
        """
        An entry whose id the account's archive already holds (another node
        gave it) is given back to be archived again, not dropped; the
        message that had the id keeps it, and other archives may hold it too.
        """
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        yield self.archive(store, "alice", 2, first=10)
        again = ("alice", ArchivedMessage(11, "carol@example.org", "<again/>"), False)
        added = yield store.appendArchive(HOST, [
            again, ("bob", ArchivedMessage(11, "carol@example.org", "<m/>"), False),
            ("ghost", ArchivedMessage(11, "carol@example.org", "<m/>"), False)], 1000)
        assert added == (1, [again])
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery())
        assert [(m.id, m.stanza) for m in page.messages] == [(10, "<m10/>"), (11, "<m11/>")]
        assert self.ids((yield store.queryArchive(HOST, "bob", ArchiveQuery()))) == [11]

    @pytest_twisted.inlineCallbacks
    def test_archiveLimitAndSweep(self, store):
        """
        An archive over its limit loses its oldest messages; the sweep
        deletes the oldest of the host below an id, at most a batch at a
        time, and the limit still counts right afterwards.
        """
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        entries = [("alice", ArchivedMessage(n, "bob@example.org", "<m/>"), False) for n in range(1, 8)]
        assert (yield store.appendArchive(HOST, entries, 5)) == (7, [])
        page = yield store.queryArchive(HOST, "alice", ArchiveQuery())
        assert (self.ids(page), page.count) == ([3, 4, 5, 6, 7], 5)
        yield store.appendArchive(HOST, [("bob", ArchivedMessage(n, "a@example.org", "<m/>"), False)
                                         for n in (1, 4, 9)], 5)
        assert (yield store.sweepArchive(HOST, 6, 3)) == 3  # alice's 3 and 4, bob's 1
        assert (yield store.sweepArchive(HOST, 6, 3)) == 2  # alice's 5, bob's 4
        assert (yield store.sweepArchive(HOST, 6, 3)) == 0
        assert self.ids((yield store.queryArchive(HOST, "alice", ArchiveQuery()))) == [6, 7]
        assert self.ids((yield store.queryArchive(HOST, "bob", ArchiveQuery()))) == [9]
        yield store.appendArchive(HOST, [("alice", ArchivedMessage(n, "bob@example.org", "<m/>"), False)
                                         for n in range(10, 14)], 5)
        assert self.ids((yield store.queryArchive(HOST, "alice", ArchiveQuery()))) == [7, 10, 11, 12, 13]

    @pytest_twisted.inlineCallbacks
    def test_archiveGoesWithAccount(self, store):
        """Deleting an account deletes its archive and its preferences with it."""
        yield store.createAccount(account("alice"))
        yield self.archive(store, "alice", 3)
        yield store.setArchivePrefs(HOST, "alice", ArchivePrefs("roster", ("bob@example.org",)))
        assert (yield store.getArchivePrefs(HOST)) == {
            "alice": ArchivePrefs("roster", ("bob@example.org",))}
        assert (yield store.deleteAccount(HOST, "alice"))
        yield store.createAccount(account("alice"))
        assert (yield store.queryArchive(HOST, "alice", ArchiveQuery())).count == 0
        assert (yield store.getArchivePrefs(HOST)) == {}
        yield store.appendArchive(HOST, [("alice", ArchivedMessage(n, "b@example.org", "<m/>"), False)
                                         for n in range(10, 13)], 2)
        assert self.ids((yield store.queryArchive(HOST, "alice", ArchiveQuery()))) == [11, 12]

    @pytest_twisted.inlineCallbacks
    def test_archivePrefs(self, store):
        """Preferences are replaced whole, per account."""
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        yield store.setArchivePrefs(HOST, "alice", ArchivePrefs("never", (), ("eve@example.org",)))
        yield store.setArchivePrefs(HOST, "alice", ArchivePrefs("always", ("x@example.org",)))
        yield store.setArchivePrefs(HOST, "bob", ArchivePrefs("roster"))
        assert (yield store.getArchivePrefs(HOST)) == {
            "alice": ArchivePrefs("always", ("x@example.org",)), "bob": ArchivePrefs("roster")}
        assert (yield store.getArchivePrefs("other.example")) == {}

    # -- invites ------------------------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_inviteRoundTrip(self, store):
        """An invite is found by id and by token hash, with every field kept."""
        created = yield self.createInvite(store, "i1", kind="contact", username=None, inviter="alice",
                                          allowRegistration=False, usesAllowed=None,
                                          roles=("staff",), groups=("Team",), note="for the team",
                                          source="alice@example.org", welcome="Hi, it's Alice!")
        assert (yield store.getInvite("i1")) == created
        assert (yield store.findInvite(token("i1"))) == created
        assert (yield store.getInvite("nope")) is None
        assert (yield store.findInvite(b"nope")) is None
        assert created.status(NOW) == "pending"

    @pytest_twisted.inlineCallbacks
    def test_listInvites(self, store):
        """Invites of a host, newest first, optionally those of one inviter."""
        yield self.createInvite(store, "old", created=NOW - 10, inviter="alice")
        yield self.createInvite(store, "new", created=NOW, inviter="bob")
        yield self.createInvite(store, "elsewhere", host="other.example")
        assert [i.id for i in (yield store.listInvites(HOST))] == ["new", "old"]
        assert [i.id for i in (yield store.listInvites(HOST, "alice"))] == ["old"]

    @pytest_twisted.inlineCallbacks
    def test_reserveIsAtomic(self, store):
        """With one use allowed, only one of many simultaneous reservations succeeds."""
        yield self.createInvite(store, "i1", usesAllowed=1)
        results = yield defer.gatherResults([store.reserveInvite(token("i1"), HOST, NOW)
                                             for _ in range(8)])
        winners = [r for r in results if r is not None]
        assert len(winners) == 1 and winners[0].reserved == 1
        assert (yield store.reserveInvite(token("i1"), HOST, NOW)) is None

    @pytest_twisted.inlineCallbacks
    def test_reserveCountsUses(self, store):
        """An invite with three uses allows three reservations; unlimited ones any number."""
        yield self.createInvite(store, "three", usesAllowed=3)
        yield self.createInvite(store, "many", usesAllowed=None)
        results = yield defer.gatherResults([store.reserveInvite(token("three"), HOST, NOW)
                                             for _ in range(5)])
        assert sum(r is not None for r in results) == 3
        for _ in range(10):
            assert (yield store.reserveInvite(token("many"), HOST, NOW)) is not None

    @pytest_twisted.inlineCallbacks
    def test_reserveRefusesUnusable(self, store):
        """Expired, revoked, unknown or other-host invites cannot be reserved."""
        yield self.createInvite(store, "i1")
        assert (yield store.reserveInvite(token("i1"), HOST, NOW + 3600)) is None
        assert (yield store.reserveInvite(token("i1"), "other.example", NOW)) is None
        assert (yield store.reserveInvite(b"unknown", HOST, NOW)) is None
        assert (yield store.revokeInvite("i1", NOW))
        assert (yield store.reserveInvite(token("i1"), HOST, NOW)) is None

    @pytest_twisted.inlineCallbacks
    def test_release(self, store):
        """A released reservation can be taken again."""
        yield self.createInvite(store, "i1")
        reserved = yield store.reserveInvite(token("i1"), HOST, NOW)
        yield store.releaseInvite(reserved.id)
        assert (yield store.getInvite("i1")).reserved == 0
        yield store.releaseInvite(reserved.id)
        assert (yield store.getInvite("i1")).reserved == 0
        assert (yield store.reserveInvite(token("i1"), HOST, NOW)) is not None

    @pytest_twisted.inlineCallbacks
    def test_consumeWithAccount(self, store):
        """Creating the account turns the reservation into a use, with its audit row."""
        yield self.createInvite(store, "i1")
        reserved = yield store.reserveInvite(token("i1"), HOST, NOW)
        yield store.createAccount(account("carol", inviteUse=InviteUse(reserved.id, "web", "192.0.2.1"),
                                          now=NOW + 5))
        used = yield store.getInvite("i1")
        assert (used.uses, used.reserved, used.status(NOW + 5)) == (1, 0, "used")
        assert [(u["username"], u["path"], u["address"], u["used_at"]) for u in used.uses_log] == [
            ("carol", "web", "192.0.2.1", NOW + 5)]
        assert (yield store.reserveInvite(token("i1"), HOST, NOW)) is None
        assert (yield store.accountInvitedAt(HOST, "carol")) == NOW + 5
        yield store.createAccount(account("dave"))
        assert (yield store.accountInvitedAt(HOST, "dave")) is None

    @pytest_twisted.inlineCallbacks
    def test_consumeRevokedFails(self, store):
        """An invite revoked while a registration was under way creates no account."""
        yield self.createInvite(store, "i1")
        reserved = yield store.reserveInvite(token("i1"), HOST, NOW)
        yield store.revokeInvite("i1", NOW)
        with pytest.raises(InviteUnavailable):
            yield store.createAccount(account("carol", inviteUse=InviteUse(reserved.id, "ibr")))
        assert not (yield store.accountExists(HOST, "carol"))
        assert (yield store.getInvite("i1")).status(NOW) == "revoked"

    @pytest_twisted.inlineCallbacks
    def test_resetInvite(self, store):
        """A reset invite is consumed with the new credentials, in one step."""
        yield store.createAccount(account("alice"))
        yield self.createInvite(store, "r1", kind="reset", username="alice")
        reserved = yield store.reserveInvite(token("r1"), HOST, NOW)
        assert (yield store.setCredentials(HOST, "alice", credentials(b"2"),
                                           InviteUse(reserved.id, "web"), NOW))
        assert (yield store.getInvite("r1")).uses == 1
        assert (yield store.getCredentials(HOST, "alice", "SCRAM-SHA-1")) == credentials(b"2")[1]

    @pytest_twisted.inlineCallbacks
    def test_consumeContactInvite(self, store):
        """A contact invite is consumed with the roster changes it brings, in one step."""
        yield store.createAccount(account("alice"))
        yield self.createInvite(store, "c1", kind="contact", inviter="alice", usesAllowed=None)
        items = (("alice", RosterItem("bob@other.example", subscription="from")),)
        yield store.consumeInvite(InviteUse("c1", "contact"), NOW, items, usedBy="bob@other.example")
        used = yield store.getInvite("c1")
        assert used.uses == 1 and used.reserved == 0
        assert used.uses_log[0]["username"] == "bob@other.example"
        assert (yield store.getRosterItem(HOST, "alice", "bob@other.example")).subscription == "from"
        with pytest.raises(InviteUnavailable):
            yield store.consumeInvite(InviteUse("c1", "contact"), NOW + 3600, ())
        yield store.revokeInvite("c1", NOW)
        with pytest.raises(InviteUnavailable):
            yield store.consumeInvite(InviteUse("c1", "contact"), NOW, ())
        with pytest.raises(InviteUnavailable):
            yield store.consumeInvite(InviteUse("nope", "contact"), NOW, ())

    @pytest_twisted.inlineCallbacks
    def test_consumeRespectsReservations(self, store):
        """A direct use never takes the use another attempt has reserved."""
        yield store.createAccount(account("alice"))
        yield self.createInvite(store, "c1", kind="contact", inviter="alice", usesAllowed=1)
        reserved = yield store.reserveInvite(token("c1"), HOST, NOW)
        with pytest.raises(InviteUnavailable):
            yield store.consumeInvite(InviteUse("c1", "contact"), NOW,
                                      (("alice", RosterItem("bob@other.example")),))
        assert (yield store.getRosterItem(HOST, "alice", "bob@other.example")) is None
        yield store.createAccount(account("carol", inviteUse=InviteUse(reserved.id, "ibr")))
        assert (yield store.getInvite("c1")).uses == 1

    @pytest_twisted.inlineCallbacks
    def test_usernameReservedByInvite(self, store):
        """
        A pending invite for a username keeps it for its holder, and a
        pending reset invite keeps it for the account it resets (whoever
        created an account of that name would get its link); expired,
        revoked and used invites reserve nothing.
        """
        yield self.createInvite(store, "forCarol", username="carol")
        with pytest.raises(UsernameReserved):
            yield store.createAccount(account("carol"))
        yield self.createInvite(store, "other")
        other = yield store.reserveInvite(token("other"), HOST, NOW)
        with pytest.raises(UsernameReserved):
            yield store.createAccount(account("carol", inviteUse=InviteUse(other.id, "ibr")))
        assert (yield store.getInvite("other")).uses == 0
        mine = yield store.reserveInvite(token("forCarol"), HOST, NOW)
        yield store.createAccount(account("carol", inviteUse=InviteUse(mine.id, "ibr")))

        yield self.createInvite(store, "reset", kind="reset", username="dave")
        with pytest.raises(UsernameReserved):
            yield store.createAccount(account("dave"))
        yield store.revokeInvite("reset", NOW)
        yield store.createAccount(account("dave"))
        yield self.createInvite(store, "expired", username="erin", expires=NOW - 1)
        yield store.createAccount(account("erin"))
        yield self.createInvite(store, "revoked", username="frank")
        yield store.revokeInvite("revoked", NOW)
        yield store.createAccount(account("frank"))

    @pytest_twisted.inlineCallbacks
    def test_revoke(self, store):
        yield self.createInvite(store, "i1")
        assert (yield store.revokeInvite("i1", NOW + 1))
        assert not (yield store.revokeInvite("i1", NOW + 2))
        assert not (yield store.revokeInvite("nope", NOW))
        assert (yield store.getInvite("i1")).revoked == NOW + 1

    @pytest_twisted.inlineCallbacks
    def test_updateInvite(self, store):
        yield self.createInvite(store, "i1")
        updated = yield store.updateInvite("i1", expires=NOW + 7200, usesAllowed=5, note="bigger")
        assert (updated.expires, updated.usesAllowed, updated.note) == (NOW + 7200, 5, "bigger")
        assert (yield store.getInvite("i1")) == updated
        assert (yield store.updateInvite("nope", note="x")) is None

    @pytest_twisted.inlineCallbacks
    def test_inviteReminded(self, store):
        """A new invite was never reminded of; the reminder's time is kept once set."""
        created = yield self.createInvite(store, "i1")
        assert created.reminded is None
        updated = yield store.updateInvite("i1", reminded=NOW + 60)
        assert updated.reminded == NOW + 60
        assert (yield store.getInvite("i1")).reminded == NOW + 60

    @pytest_twisted.inlineCallbacks
    def test_sweepKeepsAudit(self, store):
        """
        Sweeping deletes invites that can never be used again (expired,
        revoked, used up) but keeps pending and in-flight ones, and the audit.
        """
        yield self.createInvite(store, "pending")
        yield self.createInvite(store, "expired", expires=NOW - 1)
        yield self.createInvite(store, "revoked")
        yield store.revokeInvite("revoked", NOW)
        yield self.createInvite(store, "used")
        used = yield store.reserveInvite(token("used"), HOST, NOW)
        yield store.createAccount(account("carol", inviteUse=InviteUse(used.id, "ibr", "192.0.2.9")))
        yield self.createInvite(store, "inflight", expires=NOW + 10)
        yield store.reserveInvite(token("inflight"), HOST, NOW)

        assert (yield store.sweepInvites(NOW + 20)) == 3
        remaining = {i.id for i in (yield store.listInvites(HOST))}
        assert remaining == {"pending", "inflight"}
        assert (yield self.inviteAudit(store, "used")) == [("carol", "ibr", "192.0.2.9")]
        assert (yield store.accountInvitedAt(HOST, "carol")) == NOW
        assert (yield store.sweepInvites(NOW + 20)) == 0

    # -- API keys ----------------------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_apiKeys(self, store):
        yield store.createApiKey("k1", b"hash1", HOST, "backup job", NOW)
        yield store.createApiKey("k2", b"hash2", "other.example", "portal", NOW + 1)
        assert tuple((yield store.getApiKey("k1"))) == (b"hash1", HOST, "backup job", NOW)
        assert (yield store.getApiKey("nope")) is None
        assert [tuple(row) for row in (yield store.listApiKeys())] == [
            ("k1", HOST, "backup job", NOW), ("k2", "other.example", "portal", NOW + 1)]
        assert (yield store.deleteApiKey("k1"))
        assert not (yield store.deleteApiKey("k1"))
        assert (yield store.getApiKey("k1")) is None

    @pytest_twisted.inlineCallbacks
    def test_pepItems(self, store):
        """Publishing keeps items newest last, replaces by id and drops the oldest beyond the cap."""
        yield store.createAccount(account("alice"))
        yield store.createAccount(account("bob"))
        assert (yield store.getPep(HOST, "alice")) == []
        assert (yield store.publishPepItem(HOST, "alice", "n", "{}", "1", "<item id='1'/>", 2)) == []
        assert (yield store.publishPepItem(HOST, "alice", "n", "{}", "2", "<item id='2'/>", 2)) == []
        assert (yield store.publishPepItem(HOST, "alice", "n", "{}", "1", "<item id='1b'/>", 2)) == []
        assert (yield store.publishPepItem(HOST, "alice", "n", "{}", "3", "<item id='3'/>", 2)) == ["2"]
        yield store.publishPepItem(HOST, "bob", "n", '{"a": 1}', "x", "<item/>", 5)
        assert (yield store.getPep(HOST, "alice")) == [
            PepNode("n", "{}", (("1", "<item id='1b'/>"), ("3", "<item id='3'/>")))]
        assert (yield store.retractPepItem(HOST, "alice", "n", "1"))
        assert not (yield store.retractPepItem(HOST, "alice", "n", "1"))
        yield store.setPepNode(HOST, "alice", "n", '{"max_items": 9}')
        yield store.setPepNode(HOST, "alice", "m", "{}")
        assert (yield store.getPep(HOST, "alice")) == [
            PepNode("m", "{}"), PepNode("n", '{"max_items": 9}', (("3", "<item id='3'/>"),))]
        assert (yield store.publishPepItem(HOST, "alice", "m", "{}", "z", "<item/>", 0)) == ["z"]
        yield store.purgePepNode(HOST, "alice", "n")
        assert (yield store.deletePepNode(HOST, "alice", "m"))
        assert not (yield store.deletePepNode(HOST, "alice", "m"))
        assert (yield store.getPep(HOST, "alice")) == [PepNode("n", '{"max_items": 9}')]
        assert (yield store.getPep(HOST, "bob")) == [PepNode("n", '{"a": 1}', (("x", "<item/>"),))]
        with pytest.raises(self.integrityErrors):
            yield store.publishPepItem(HOST, "nobody", "n", "{}", "1", "<item/>", 1)

    @pytest_twisted.inlineCallbacks
    def test_createAccountWithPep(self, store):
        """
        An imported account's PEP nodes (items in order) and keyed XML are
        written with the account, and a later publication goes after them.
        """
        nodes = (PepNode("a", '{"max_items": 2}', (("1", "<x/>"), ("2", "<y/>"))), PepNode("b", "{}"))
        yield store.createAccount(account("alice", pep=nodes, accountXML=(("vcard-temp", "<vCard/>"),)))
        assert (yield store.getPep(HOST, "alice")) == list(nodes)
        assert (yield store.getAccountXML(HOST, "alice", "vcard-temp")) == "<vCard/>"
        assert (yield store.publishPepItem(HOST, "alice", "a", "{}", "3", "<z/>", 2)) == ["1"]
        assert (yield store.getPep(HOST, "alice"))[0].items == (("2", "<y/>"), ("3", "<z/>"))

    @pytest_twisted.inlineCallbacks
    def test_accountXML(self, store):
        """XML kept by key, replaced and forgotten."""
        yield store.createAccount(account("alice"))
        assert (yield store.getAccountXML(HOST, "alice", "k")) is None
        yield store.setAccountXML(HOST, "alice", "k", "<a/>")
        yield store.setAccountXML(HOST, "alice", "k", "<b/>")
        assert (yield store.getAccountXML(HOST, "alice", "k")) == "<b/>"
        yield store.setAccountXML(HOST, "alice", "k", None)
        assert (yield store.getAccountXML(HOST, "alice", "k")) is None
    # -- uploads -----------------------------------------------------------------------

    @staticmethod
    def upload(uploadId: str, username: str = "alice", size: int = 100, created: float = NOW,
               **kwargs) -> Upload:
        """A slot whose PUT URL is valid for ten minutes from C{created}."""
        kwargs.setdefault("expires", created + 600)
        return Upload(uploadId, HOST, username, f"{uploadId}.txt", size, "text/plain", created,
                      **kwargs)

    @pytest_twisted.inlineCallbacks
    def test_uploadLifeCycle(self, store):
        """A slot is taken by one PUT at a time, only while valid; stored, then expired."""
        slot = self.upload("u1")
        yield store.createUpload(slot, 0, 0)
        assert (yield store.getUpload("u1")) == slot
        assert (yield store.getUpload("nope")) is None
        assert not (yield store.beginUpload("u1", NOW + 600))  # the URL has expired
        assert (yield store.beginUpload("u1", NOW))
        assert not (yield store.beginUpload("u1", NOW))  # a second PUT at the same time
        assert (yield store.abortUpload("u1"))  # the first one failed: it may be tried again
        assert (yield store.beginUpload("u1", NOW))
        assert (yield store.finishUpload("u1", NOW + 7 * 86400))
        assert not (yield store.beginUpload("u1", NOW))  # single use
        assert not (yield store.abortUpload("u1"))
        stored = yield store.getUpload("u1")
        assert (stored.state, stored.expires) == ("stored", NOW + 7 * 86400)
        assert (yield store.expiredUploads(HOST, NOW + 86400, 10)) == []
        assert (yield store.expiredUploads(HOST, NOW + 7 * 86400, 10)) == [stored]
        assert (yield store.deleteUploads(["u1", "nope"])) == 1
        assert (yield store.getUpload("u1")) is None

    @pytest_twisted.inlineCallbacks
    def test_uploadQuotas(self, store):
        """Slots and files count against the quota; the daily limit counts the last 24 hours."""
        yield store.createUpload(self.upload("old", size=600, created=NOW - 90000), 1000, 0)
        yield store.createUpload(self.upload("new", size=300), 1000, 500)
        with pytest.raises(QuotaExceeded) as caught:
            yield store.createUpload(self.upload("big", size=201), 1000, 0)
        assert caught.value.kind == "quota"
        with pytest.raises(QuotaExceeded) as caught:
            yield store.createUpload(self.upload("day", size=201), 0, 500)
        assert caught.value.kind == "daily"
        yield store.createUpload(self.upload("fits", size=100), 1000, 500)
        yield store.createUpload(self.upload("bob", username="bob", size=900), 1000, 500 + 400)
        assert (yield store.getUpload("big")) is None

    @pytest_twisted.inlineCallbacks
    def test_uploadListsAndUsage(self, store):
        """Per account: its uploads oldest first, and what it stores."""
        yield store.createUpload(self.upload("a2", created=NOW + 1, size=5), 0, 0)
        yield store.createUpload(self.upload("a1", size=7), 0, 0)
        yield store.createUpload(self.upload("b1", username="bob", size=9), 0, 0)
        yield store.beginUpload("a1", NOW)
        yield store.finishUpload("a1", NOW + 100)
        assert [u.id for u in (yield store.listUploads(HOST, "alice"))] == ["a1", "a2"]
        assert (yield store.listUploads("other.example", "alice")) == []
        assert (yield store.uploadUsage(HOST)) == [UploadUsage("alice", 1, 7, 1),
                                                   UploadUsage("bob", 0, 0, 1)]

    @pytest_twisted.inlineCallbacks
    def test_expiredSkipsUploading(self, store):
        """A file being received is not swept; the batch size is kept, oldest first."""
        yield store.createUpload(self.upload("u1"), 0, 0)
        yield store.beginUpload("u1", NOW)
        for number in range(3):
            yield store.createUpload(self.upload(f"s{number}", created=NOW - number), 0, 0)
        yield store.createUpload(replace(self.upload("other", created=NOW - 9), host="other.example"),
                                 0, 0)
        assert [u.id for u in (yield store.expiredUploads(HOST, NOW + 601, 2))] == ["s2", "s1"]
    # -- group chat rooms and their archives -----------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_roomsWithAffiliations(self, store):
        """A room is written whole (affiliations replaced) and deleted with its archive."""
        room = StoredRoom("groups.example.org", "tea", {"name": "Tea", "persistent": True},
                          "Rules", "Alice", NOW, {"alice@example.org": ("owner", "")})
        yield store.saveRoom(room)
        yield store.saveRoom(replace(room, affiliations={"bob@example.org": ("outcast", "spam")}))
        (loaded,) = yield store.listRooms("groups.example.org")
        assert (loaded.config, loaded.subject, loaded.affiliations) == (
            {"name": "Tea", "persistent": True}, "Rules", {"bob@example.org": ("outcast", "spam")})
        assert (yield store.listRooms("elsewhere.example.org")) == []
        yield store.archiveRoomMessage("groups.example.org", "tea", archived("m1"), 0)
        assert (yield store.deleteRoom("groups.example.org", "tea"))
        assert not (yield store.deleteRoom("groups.example.org", "tea"))
        yield store.saveRoom(room)
        page, complete = yield store.queryRoomArchive("groups.example.org", "tea", RoomArchiveQuery())
        assert (page, complete) == ([], True)

    @pytest_twisted.inlineCallbacks
    def test_roomArchivePagingAndCap(self, store):
        """Pages forward and from the end, id bounds, a cap on what is kept, retraction."""
        service = "groups.example.org"
        yield store.saveRoom(StoredRoom(service, "tea", {}, created=NOW))
        for n in range(6):
            yield store.archiveRoomMessage(service, "tea", archived(f"m{n}", NOW + n), 5)

        def ids(page):
            return [m.id for m in page[0]], page[1]
        assert ids((yield store.queryRoomArchive(service, "tea", RoomArchiveQuery(max=2)))) \
            == (["m1", "m2"], False)
        assert ids((yield store.queryRoomArchive(service, "tea", RoomArchiveQuery(
            afterId="m2", max=5)))) == (["m3", "m4", "m5"], True)
        assert ids((yield store.queryRoomArchive(service, "tea", RoomArchiveQuery(
            last=True, max=2)))) == (["m4", "m5"], False)
        assert ids((yield store.queryRoomArchive(service, "tea", RoomArchiveQuery(
            beforeId="m4", start=NOW + 2, with_="tea@groups.example.org/Alice")))) == (["m2", "m3"], True)
        with pytest.raises(ArchiveItemNotFound):
            yield store.queryRoomArchive(service, "tea", RoomArchiveQuery(afterId="m0"))
        gone = yield store.retractRoomMessage(service, "tea", "m3", "<message/>")
        assert gone.stanza == "<message>m3</message>"
        page, _ = yield store.queryRoomArchive(service, "tea", RoomArchiveQuery(ids=("m3",)))
        assert [m.stanza for m in page] == ["<message/>"]
        assert (yield store.retractRoomMessage(service, "tea", "nope", "<message/>")) is None

    @pytest_twisted.inlineCallbacks
    def test_inviteRoom(self, store):
        """A contact invite keeps the room it brings its redeemer into."""
        yield store.createInvite(invite("r1", kind="contact", inviter="alice",
                                        room="tea@groups.example.org"), token("r1"))
        yield store.createInvite(invite("r2"), token("r2"))
        assert (yield store.getInvite("r1")).room == "tea@groups.example.org"
        assert (yield store.findInvite(token("r2"))).room == ""

    # -- circles -----------------------------------------------------------------------

    @pytest_twisted.inlineCallbacks
    def test_circlesGiveAndTakeSubscriptions(self, store):
        """Members get mutual subscriptions in the circle's group; leaving takes only what it gave."""
        for name in ("alice", "bob", "carol"):
            yield store.createAccount(account(name))
        yield store.createCircle(Circle(HOST, "Family", "family@groups.example.org", NOW))
        with pytest.raises(CircleExists):
            yield store.createCircle(Circle(HOST, "Family", "other@groups.example.org", NOW))
        assert (yield store.addCircleMember(HOST, "Family", "alice")) == []
        assert (yield store.addCircleMember(HOST, "Family", "bob")) == ["alice"]
        assert (yield store.addCircleMember(HOST, "Family", "nobody")) is None
        item = yield store.getRosterItem(HOST, "alice", f"bob@{HOST}")
        assert (item.subscription, item.groups) == ("both", ("Family",))
        yield store.setRosterItem(HOST, "carol", RosterItem(f"alice@{HOST}", "Mum", "both",
                                                            groups=("Friends",)))
        yield store.createAccount(account("dave", circles=("Family", "Nope")))
        circle = yield store.getCircle(HOST, "Family")
        assert circle.members == ("alice", "bob", "dave")
        assert (yield store.getRosterItem(HOST, "alice", f"dave@{HOST}")).groups == ("Family",)
        yield store.addCircleMember(HOST, "Family", "carol")
        kept = yield store.getRosterItem(HOST, "carol", f"alice@{HOST}")
        assert (kept.name, kept.groups) == ("Mum", ("Friends", "Family"))
        assert (yield store.removeCircleMember(HOST, "Family", "carol")) == ["alice", "bob", "dave"]
        assert (yield store.getRosterItem(HOST, "carol", f"alice@{HOST}")).groups == ("Friends",)
        assert (yield store.getRosterItem(HOST, "carol", f"bob@{HOST}")) is None
        assert (yield store.removeCircleMember(HOST, "Family", "carol")) is None
        yield store.deleteAccount(HOST, "dave", NOW)
        assert (yield store.getCircle(HOST, "Family")).members == ("alice", "bob")
        deleted = yield store.deleteCircle(HOST, "Family")
        assert deleted.members == ("alice", "bob")
        assert (yield store.getRosterItem(HOST, "alice", f"bob@{HOST}")) is None
        assert (yield store.listCircles(HOST)) == []
        assert (yield store.deleteCircle(HOST, "Family")) is None

    @pytest_twisted.inlineCallbacks
    def test_circlesTellRosterObservers(self, store):
        """
        Every circle change rewrites members' rosters, so the observers (the
        roster module's in-memory copies) hear of each before it is made.
        """
        for name in ("alice", "bob"):
            yield store.createAccount(account(name))
        yield store.createCircle(Circle(HOST, "Family", "family@groups.example.org", NOW))
        heard = []
        store.rosterObservers.append(lambda host, username: heard.append((host, username)))
        yield store.addCircleMember(HOST, "Family", "alice")
        yield store.addCircleMember(HOST, "Family", "bob")
        assert heard == [(HOST, None)] * 2
        del heard[:]
        yield store.createAccount(account("carol", circles=("Family",)))
        assert (HOST, None) in heard
        for change in (lambda: store.removeCircleMember(HOST, "Family", "carol"),
                       lambda: store.deleteCircle(HOST, "Family")):
            del heard[:]
            yield change()
            assert heard == [(HOST, None)]


def archived(stanzaId: str, stamp: float = NOW) -> ArchivedRoomMessage:
    return ArchivedRoomMessage(stanzaId, stamp, "tea@groups.example.org/Alice", "alice@example.org",
                               f"<message>{stanzaId}</message>")


class SQLAudit:
    """Reads the audit straight from an SQL store's connection, on the store's own thread."""

    def inviteAudit(self, store, inviteId):
        return store._run(lambda conn: conn.execute(
            "SELECT username, path, address FROM invite_uses WHERE invite_id = ? ORDER BY id",
            (inviteId,)).fetchall())
