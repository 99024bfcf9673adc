"""
Reads on a PostgreSQL connection the reactor drives: the statements of each
call are sent in libpq's pipeline mode, without waiting for the answers to
the calls before them, and the answers are read when the socket is
readable, with the other connections' data.

A read on the store's worker thread costs two thread hand-offs and a
blocking round trip, in which the worker sleeps and is woken again from
another CPU: measured, about 0.1 ms of the server's CPU per call, several
times what the statements' own work costs. A busy reactor finds the answers
ready when it polls, so a read costs its parsing and little else.
"""

from __future__ import annotations

import os
from collections import deque

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from twisted.internet import defer
from twisted.internet.interfaces import IReadWriteDescriptor
from zope.interface import implementer

from invitesrv.logs import logger
from invitesrv.store.interfaces import StoreUnavailable

log = logger()

# SQLSTATE classes of a connection that is going away, or of a server that
# cannot take the work: the store is unavailable, the statement is not wrong.
_UNAVAILABLE = ("08", "53", "57", "58")

_DONE = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)


class _Call:
    """One call's statements, sent and then synced together, and what came back for them."""

    __slots__ = ("deferred", "loaders", "rows", "error", "started")

    def __init__(self, loaders: list[Transformer], started: float):
        self.deferred = defer.Deferred()
        self.loaders = loaders  # one per statement, in order, each taken once its rows arrive
        self.rows: list[list[tuple]] = []
        self.error: Exception | None = None
        self.started = started


@implementer(IReadWriteDescriptor)
class PipelinedReader:
    """
    Read-only calls on C{conn} (a psycopg connection in autocommit mode,
    given to this reader alone), each one implicit transaction of one or
    more statements: so what one call reads is one snapshot. A call not
    answered within C{timeout} seconds, or a connection lost, fails every
    call waiting with L{StoreUnavailable} and closes the connection;
    C{onLost} is then called, once.
    """

    def __init__(self, reactor, conn: psycopg.Connection, timeout: float, onLost=lambda: None):
        self._reactor = reactor
        self._conn = conn
        self._pgconn = conn.pgconn
        self._timeout = timeout
        self._onLost = onLost
        self._calls: deque[_Call] = deque()
        self._statement: list[pq.abc.PGresult] = []  # the results of the statement being read
        self._writing = False
        self._timer = None
        self._pgconn.nonblocking = 1
        self._pgconn.enter_pipeline_mode()
        # The reactor watches a copy of libpq's descriptor, which libpq
        # closes when the connection fails, before this reader hears of it.
        self._fileno = os.dup(self._pgconn.socket)
        reactor.addReader(self)

    def select(self, statements: list[tuple[bytes, tuple]]) -> defer.Deferred:
        """
        Fire with the rows of each statement (SQL with C{$n} parameters,
        and their values), as a list of lists of tuples.
        """
        if self._pgconn is None:
            return defer.fail(StoreUnavailable("the store's reading connection is closed"))
        # Every parameter is converted before anything is sent: a value that
        # cannot be must not leave a call's statements in the pipeline half sent.
        loaders, sends = [], []
        try:
            for sql, params in statements:
                tx = Transformer(self._conn)
                sends.append((sql, tx.dump_sequence(params, [PyFormat.AUTO] * len(params)),
                              tx.types, tx.formats))
                loaders.append(tx)
        except Exception:
            return defer.fail()
        try:
            for send in sends:
                self._pgconn.send_query_params(*send)
            self._pgconn.pipeline_sync()
        except psycopg.OperationalError as e:
            self._lose(str(e).strip())
            return defer.fail(StoreUnavailable(str(e).strip()))
        call = _Call(loaders, self._reactor.seconds())
        self._calls.append(call)
        if self._timer is None:
            self._timer = self._reactor.callLater(self._timeout, self._timedOut)
        self._flush()
        return call.deferred

    def close(self, reason: str = "the store was closed") -> None:
        """Close the connection; the calls still waiting fail."""
        self._lose(reason, lost=False)

    # -- IReadWriteDescriptor ------------------------------------------------

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "postgresql-reader"

    def doRead(self) -> None:
        pgconn = self._pgconn
        try:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    if not self._statement:
                        break  # nothing more until the socket is readable again
                    self._statementRead()
                elif result.status == pq.ExecStatus.PIPELINE_SYNC:
                    self._callRead()
                else:
                    self._statement.append(result)
        except psycopg.OperationalError as e:
            self._lose(str(e).strip())
            return
        if pgconn.status != pq.ConnStatus.OK:
            self._lose(pgconn.get_error_message() or "the connection to PostgreSQL was lost")

    def doWrite(self) -> None:
        self._flush()

    def connectionLost(self, reason) -> None:
        self._lose(reason.getErrorMessage())

    # -- internals -----------------------------------------------------------

    def _flush(self) -> None:
        try:
            pending = self._pgconn.flush()
        except psycopg.OperationalError as e:
            self._lose(str(e).strip())
            return
        if pending and not self._writing:
            self._reactor.addWriter(self)
            self._writing = True
        elif not pending and self._writing:
            self._reactor.removeWriter(self)
            self._writing = False

    def _statementRead(self) -> None:
        """One statement's results are in: its rows, or why it failed."""
        (result, *_), self._statement = self._statement, []
        call = self._calls[0]
        tx = call.loaders[len(call.rows)]
        if result.status in _DONE:
            tx.set_pgresult(result)
            call.rows.append(tx.load_rows(0, result.ntuples, tuple))
        else:
            call.rows.append([])
            if result.status != pq.ExecStatus.PIPELINE_ABORTED:  # (skipped after an error)
                call.error = call.error or _error(result)

    def _callRead(self) -> None:
        """A call's sync is in: every statement of it has been answered."""
        call = self._calls.popleft()
        if not self._calls and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if call.error is not None:
            call.deferred.errback(call.error)
        else:
            call.deferred.callback(call.rows)

    def _timedOut(self) -> None:
        """
        The timer, set when a call is sent with none waiting: the oldest
        call waiting is late, or the timer goes on until it would be (one
        timer for all the calls, rather than one set again per answer).
        """
        self._timer = None
        if not self._calls:
            return
        left = self._calls[0].started + self._timeout - self._reactor.seconds()
        if left > 0:
            self._timer = self._reactor.callLater(left, self._timedOut)
        else:
            self._lose(f"PostgreSQL did not answer a read within {self._timeout:g} s")

    def _lose(self, reason: str, lost: bool = True) -> None:
        if self._pgconn is None:
            return
        self._reactor.removeReader(self)
        if self._writing:
            self._reactor.removeWriter(self)
            self._writing = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._pgconn = None
        os.close(self._fileno)
        self._conn.close()
        if lost:  # (first, so that what the failed calls' callers do next goes elsewhere)
            log.warn("The store's reading connection was lost: {reason}", reason=reason)
            self._onLost()
        calls, self._calls = self._calls, deque()
        for call in calls:
            call.deferred.errback(StoreUnavailable(reason))


def _error(result) -> Exception:
    """The exception for a failed statement's C{result}."""
    message = (result.error_message or b"").decode("utf-8", "replace").strip()
    state = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
    if state[:2] in _UNAVAILABLE:
        return StoreUnavailable(message)
    return psycopg.DatabaseError(f"{message} (SQLSTATE {state})")
