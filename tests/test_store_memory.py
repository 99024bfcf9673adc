"""
The in-memory store: the shared behaviour suite, then what only it has,
answers that have already fired (no reactor needed) and simulated faults.
"""

from __future__ import annotations

import pytest
from store_behaviour import HOST, NOW, StoreBehaviour, account, invite, token
from synchronous import result

from invitesrv.store.interfaces import InviteUse, RosterItem, StoreUnavailable
from invitesrv.store.memory import MemoryStore


class TestMemoryStore(StoreBehaviour):
    """The behaviour suite, as every unit test on a Clock uses the store."""

    @pytest.fixture
    def store(self):
        store = MemoryStore()
        store.open()
        yield store
        store.close()

    def inviteAudit(self, store, inviteId):
        return store._run(lambda tables: [(u.username, u.path, u.address) for u in tables.audit
                                          if u.inviteId == inviteId])


def test_answersAtOnce():
    """Every answer has fired when the call returns: unit tests need no reactor."""
    store = MemoryStore()
    assert result(store.createAccount(account("alice"))) is None
    assert result(store.setRosterItem(HOST, "alice", RosterItem("bob@example.org"))) == 1
    assert [i.contact for i in result(store.getRoster(HOST, "alice")).items] == ["bob@example.org"]


def test_faultChangesNothing():
    """
    While broken down, every call fails with StoreUnavailable (a stanza
    error telling the client to wait) and writes nothing; after recovery
    the data is as it was.
    """
    store = MemoryStore()
    result(store.createAccount(account("alice")))
    store.breakDown("disk full")
    for call in (store.accountExists(HOST, "alice"),
                 store.createAccount(account("bob")),
                 store.setRosterItem(HOST, "alice", RosterItem("bob@example.org"))):
        with pytest.raises(StoreUnavailable) as caught:
            result(call)
        assert str(caught.value) == "disk full" and caught.value.type == "wait"
    store.recover()
    assert result(store.accountExists(HOST, "alice"))
    assert not result(store.accountExists(HOST, "bob"))
    assert result(store.getRoster(HOST, "alice")).version == 0


def test_failedCallRolledBack():
    """
    A call that fails half-way (here a roster item for an account that does
    not exist, after the invite use) leaves nothing of itself behind.
    """
    store = MemoryStore()
    result(store.createAccount(account("alice")))
    result(store.createInvite(invite("c1", kind="contact", inviter="alice", usesAllowed=None),
                              token("c1")))
    with pytest.raises(KeyError):
        result(store.consumeInvite(InviteUse("c1", "contact"), NOW, (
            ("alice", RosterItem("bob@other.example")), ("ghost", RosterItem("bob@other.example")))))
    used = result(store.getInvite("c1"))
    assert (used.uses, used.reserved, used.uses_log) == (0, 0, ())
    assert result(store.getRoster(HOST, "alice")) == result(store.getRoster(HOST, "nobody"))


def test_reservationsFreedAtOpen():
    """Opening for serving frees reservations, as a server start does with SQLite."""
    store = MemoryStore()
    result(store.createInvite(invite("i1"), token("i1")))
    assert result(store.reserveInvite(token("i1"), HOST, NOW)) is not None
    store.open(serving=False)
    assert result(store.reserveInvite(token("i1"), HOST, NOW)) is None
    store.open()
    assert result(store.reserveInvite(token("i1"), HOST, NOW)) is not None


def test_uploadsFreedAtOpen():
    """Opening for serving frees the slots of PUTs a stop cut, as SQLite's open does."""
    store = MemoryStore()
    result(store.createUpload(StoreBehaviour.upload("u1"), 0, 0))
    assert result(store.beginUpload("u1", NOW))
    store.open(serving=False)
    assert not result(store.beginUpload("u1", NOW))
    store.open()
    assert result(store.beginUpload("u1", NOW))
