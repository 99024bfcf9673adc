"""
Store writes nobody waits for, made in batches: under load many become one
transaction (one hand-off to the store's thread); when quiet each goes at
once.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer

from invitesrv.logs import logger
from invitesrv.store.interfaces import StoreUnavailable

log = logger()


class BatchWriter:
    """
    Hands items to C{write} (a list of them -> Deferred) without waiting:
    the first at once, or C{delay} seconds on C{clock} later with those
    that came meanwhile; those that come while a batch is being written go
    together once it is. C{write} may fire with items to write again
    (changed: an archive id another node took), which go first in the next
    batch. A batch that fails is logged with C{what} (the store logs its
    unavailability itself, once per episode).
    """

    def __init__(self, write: Callable[[list], defer.Deferred], what: str, clock=None,
                 delay: float = 0.0) -> None:
        self.write = write
        self.what = what
        self.clock = clock
        self.delay = delay
        self.pending: list = []
        self.waiting: list[defer.Deferred] = []  # callers waiting for the pending batch
        self.busy = False
        self._timer = None

    def add(self, item) -> None:
        self.pending.append(item)
        if self.busy or self._timer is not None:
            return
        if self.delay:
            self._timer = self.clock.callLater(self.delay, self._write)
        else:
            self._write()

    def written(self) -> defer.Deferred:
        """
        Fire once what was added so far is written, or will be before any
        store call made now (the store runs its calls in order): a batch
        waiting for its delay goes now.
        """
        if not self.pending:
            return defer.succeed(None)
        d = defer.Deferred()
        self.waiting.append(d)
        if self._timer is not None:
            self._timer.cancel()
            self._write()
        return d

    def _write(self) -> None:
        self._timer = None
        batch, self.pending = self.pending, []
        waiting, self.waiting = self.waiting, []
        self.busy = True
        d = defer.maybeDeferred(self.write, batch)
        d.addCallbacks(self._again, self._failed, errbackArgs=(len(batch),))
        d.addCallback(self._done, waiting)

    def _again(self, items) -> bool:
        """Put what the write handed back first in the next batch; whether there was any."""
        if items:
            self.pending[:0] = items
        return bool(items)

    def _failed(self, failure, count: int) -> bool:
        if not failure.check(StoreUnavailable):
            log.failure("Cannot {what} ({count} at once)", failure, what=self.what, count=count)
        return False

    def _done(self, again: bool, waiting: list[defer.Deferred]) -> None:
        self.busy = False
        if again:  # who waited for those items waits for the next batch
            self.waiting[:0] = waiting
            waiting = []
        if self.pending:
            self._write()
        for d in waiting:
            d.callback(None)
