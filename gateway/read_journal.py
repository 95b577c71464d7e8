"""The journal entries of read-only RPC calls, written behind their answers.

A read-only call (order.status, refund.status, report.monthly, ...) is answered from
a snapshot on the read pool. Its journal entry ("every call is journaled with its
caller", core-api.md) is a write, and a write waits for the writer: on SQLite (one
writer) that is the current bulk transaction, up to the apply of a million results,
so an answer that waited for its entry would wait seconds for a question that
changes nothing. Here the entry is queued with the time of the call and the answer
goes back at once; queued entries are committed in order, several per transaction,
as soon as the writer takes them.

What this trades, on purpose (docs/spec-readings.md): a daemon killed between an
answer and the commit of its entry loses the record of that read, never of a state
change (a call that changes state is journaled in the transaction of its change and
answered after it). Past `max_pending` queued entries a new read waits for its entry
as before, so a writer that is down does not turn into unbounded memory; stopping the
service commits what is queued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

# An entry is written by *write(conn, item)*; *item* is whatever the caller queued.
Writer = Callable[[Connection, Any], Any]


class ReadCallJournal(service.Service):
    """Queues read-only calls' journal entries and commits them behind the answers.

    *run* is the database's writer (`Database.run`): it takes a function of a
    connection and runs it in one transaction, returning a Deferred.
    """

    name = "read-journal"

    def __init__(self, run: Callable[..., defer.Deferred], write: Writer, *, max_pending: int = 10_000,
                 chunk: int = 500, lost: Callable[[int], None] | None = None) -> None:
        self._run, self._write, self._lost = run, write, lost
        self.max_pending, self.chunk = max_pending, chunk
        self._pending: list[Any] = []
        self._flushing: defer.Deferred | None = None
        self._in_flight = 0      # entries of the transaction being committed
        self._waiters: list[defer.Deferred] = []
        self.failed = 0          # entries whose commit failed: logged, and counted by *lost(n)*

    def add(self, item: Any) -> defer.Deferred:
        """Queue *item*; the Deferred fires at once, or once committed when the queue is full
        (or the service is not running: nothing would commit it later)."""
        self._pending.append(item)
        must_wait = len(self._pending) + self._in_flight > self.max_pending or not self.running
        self._kick()
        if must_wait:
            return self.drained()
        return defer.succeed(None)

    def drained(self) -> defer.Deferred:
        """Fires when every entry queued so far has been committed (or has failed, logged)."""
        if not self._pending and self._flushing is None:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    def _kick(self) -> None:
        if self._flushing is not None or not self._pending:
            return
        take, self._pending = self._pending[:self.chunk], self._pending[self.chunk:]
        self._in_flight = len(take)

        def write_all(conn: Connection) -> None:
            for item in take:
                self._write(conn, item)

        self._flushing = self._run(write_all)
        self._flushing.addErrback(self._failed, len(take))
        self._flushing.addBoth(self._flushed)

    def _failed(self, failure, n: int) -> None:
        self.failed += n
        log.failure("{n} read-only RPC call(s) answered but not journaled", failure, n=n)
        if self._lost is not None:
            self._lost(n)

    def _flushed(self, _: Any) -> None:
        self._flushing, self._in_flight = None, 0
        if self._pending:
            self._kick()
            return
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def stopService(self):  # noqa: N802
        super().stopService()
        return self.drained()
