"""BatchWriter: store writes nobody waits for, one at a time and together under load."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from invitesrv.services.batches import BatchWriter
from invitesrv.store.interfaces import StoreUnavailable


class Store:
    """A write that stays pending until the test answers it."""

    def __init__(self):
        self.calls: list[tuple[list, defer.Deferred]] = []

    def write(self, batch):
        d = defer.Deferred()
        self.calls.append((batch, d))
        return d


def test_quietThenBusy():
    """The first item goes at once; those added while it is written go together after it."""
    store = Store()
    writer = BatchWriter(store.write, "write things")
    writer.add(1)
    for item in (2, 3, 4):
        writer.add(item)
    assert [batch for batch, _ in store.calls] == [[1]]
    store.calls[0][1].callback(None)
    assert [batch for batch, _ in store.calls] == [[1], [2, 3, 4]]
    store.calls[1][1].callback(None)
    writer.add(5)
    assert [batch for batch, _ in store.calls][-1] == [5]


def test_writtenWaitsForWhatWasAdded():
    """C{written} fires when what was added before it is handed to the store, not before."""
    store = Store()
    writer = BatchWriter(store.write, "write things")
    assert writer.written().called  # nothing pending
    writer.add(1)
    writer.add(2)
    waited = writer.written()
    store.calls[0][1].callback(None)
    assert not waited.called  # [2] is being written now
    store.calls[1][1].callback(None)
    assert waited.called


def test_failureLoggedAndWritingGoesOn():
    """A failed batch is logged (not StoreUnavailable: the store says that once) and the next goes."""
    store = Store()
    writer = BatchWriter(store.write, "write things")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        writer.add(1)
        writer.add(2)
        store.calls[0][1].errback(RuntimeError("disk full"))
        writer.add(3)
        store.calls[1][1].errback(StoreUnavailable("locked"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [e for e in events if e.get("log_failure") is not None]
    assert [e["what"] for e in failures] == ["write things"]
    assert [batch for batch, _ in store.calls] == [[1], [2], [3]]


def test_itemsHandedBackGoFirstInTheNextBatch():
    """
    What a write hands back is written again first in the next batch, and
    who waited for it waits for that batch.
    """
    store = Store()
    writer = BatchWriter(store.write, "write things")
    writer.add(1)
    writer.add(2)
    waited = writer.written()
    store.calls[0][1].callback(None)
    writer.add(3)
    store.calls[1][1].callback(["2 again"])
    assert not waited.called
    assert [batch for batch, _ in store.calls][-1] == ["2 again", 3]
    store.calls[2][1].callback(None)
    assert waited.called


def test_delay():
    """
    With a delay, a batch waits that long for more items; one asked for
    (C{written}) goes at once.
    """
    store, clock = Store(), Clock()
    writer = BatchWriter(store.write, "write things", clock, delay=1.0)
    writer.add(1)
    clock.advance(0.5)
    writer.add(2)
    assert store.calls == []
    clock.advance(0.5)
    assert [batch for batch, _ in store.calls] == [[1, 2]]
    store.calls[0][1].callback(None)
    writer.add(3)
    waited = writer.written()
    assert [batch for batch, _ in store.calls][-1] == [3] and not clock.getDelayedCalls()
    store.calls[1][1].callback(None)
    assert waited.called
