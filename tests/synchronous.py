"""
Stand-ins that make threaded work synchronous, so a unit test runs on a
L{task.Clock} with no reactor: a thread pool that runs each callable at
once, a Clock that is also the reactor's thread API, and L{result} to read
a Deferred that must have fired already.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.python import failure


class InlineThreadPool:
    """A thread pool (as L{twisted.python.threadpool.ThreadPool} is used) running callables in the caller."""

    def start(self) -> None:
        """Nothing to start: there are no threads."""

    def stop(self) -> None:
        """Nothing to stop."""

    def callInThreadWithCallback(self, onResult, func, *args, **kwargs) -> None:
        try:
            value = func(*args, **kwargs)
        except BaseException:
            onResult(False, failure.Failure())
        else:
            onResult(True, value)


class ThreadlessClock(task.Clock):
    """A L{task.Clock} whose C{callFromThread} calls at once, for L{InlineThreadPool} users."""

    def callFromThread(self, f, *args, **kwargs) -> None:
        f(*args, **kwargs)


def inline(f, *args, **kwargs) -> defer.Deferred:
    """C{deferToThread} that runs C{f} at once, in the caller."""
    return defer.maybeDeferred(f, *args, **kwargs)


def result(deferred: defer.Deferred):
    """The result of C{deferred}, which must have fired already (its failure is raised)."""
    outcome = []
    deferred.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired: something waits on real time or the reactor"
    if isinstance(outcome[0], failure.Failure):
        outcome[0].raiseException()
    return outcome[0]
