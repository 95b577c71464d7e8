"""Pushing results and order states back to the core (core-api.md).

Results go in keyset-paged chunks, two POSTs in flight; a chunk is marked
pushed in the transaction that journals the exchange, so a crash in between
only pushes it again (the core takes results idempotently). Order states
follow: DISPATCHED, then SETTLED once every result is out, or INVALID.

Each result carries its item's `version` (core-api.md): an item paid, returned
and paid again is three results, versions 1, 2, 3. A version is given to a
result when it is first taken for pushing, committed before the POST, and kept
with the result it was given to (version_sig), so the POST sent again after a
lost answer carries the same version and content, and a later result of the
item always gets a higher one, even after a restart. A 409 (the core holds that
(seq, version) with other content) is journaled and alarmed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import (Connection, LargeBinary, Text, and_, bindparam, cast, func, literal, literal_column, or_, select,
                        update)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from twisted.internet import defer
from twisted.logger import Logger

from adapters.core_interface import CoreContractError, CoreError, Exchange, ICoreRawResults
from gateway.flowctx import FlowContext
from gateway.journal import Entry, Journal
from gateway.models import ItemStatus, OrderState, items, orders

log = Logger()


def _sig_sql(result_at=None):
    """The item's current result as one string, in SQL (what version_sig holds); with
    `result_at`, that expression stands for the column."""
    c = items.c
    parts = [func.coalesce(col, "") for col in (c.status, c.reason_code, c.reason_text, c.bank_serial,
                                                 c.result_at if result_at is None else result_at)]
    out = parts[0]
    for p in parts[1:]:
        out = out + literal("|") + p
    return out


def _unpushed(order_no: str):
    """Items of the order whose current result the core has not acknowledged.

    `(status + "")`, not `status`: a chunk is a range of seq read by the primary key (order_no,
    seq). On PostgreSQL, with statistics taken while the items were still SENT, `status IN
    (...)` chose the console's counts index and sorted every remaining result for each chunk
    (a million-item push: 87 s, quadratic in the order's size; tests/test_pg_plans.py)."""
    c = items.c
    return and_(c.order_no == order_no, (c.status + "").in_(ItemStatus.REPORTED),
                or_(c.version_sig.is_(None), c.result_version.is_(None), c.pushed_version.is_(None),
                    c.pushed_version != c.result_version, c.version_sig != _sig_sql(),
                    # `pushed` cleared (by an operator, or a tool) asks for the push again,
                    # with the same version if the result is the same
                    c.pushed.is_(None), c.pushed != c.status))


@dataclass
class _Chunk:
    """A chunk of results taken for pushing: seq in (after, last], `count` of them."""

    after: int
    last: int
    count: int
    results_json: bytes    # the JSON array of result records, as the core takes them
    sent: object           # the (seq, version) pairs sent: JSON text on SQLite, two lists on PostgreSQL


# The chunk is built by the database, not row by row in Python: the versions are given by one
# UPDATE, the records serialised by one aggregate, and the chunk marked pushed by one UPDATE.
_RESULT_FIELDS = ("seq", "version", "status", "reason_code", "reason_text", "bank_serial", "at")


def _take_chunk(conn: Connection, order_no: str, after: int, size: int, now: str) -> _Chunk | None:
    """The unpushed results of the first range of `size` items after seq `after` that holds any,
    each with its version (given now and committed with the caller's transaction, before the
    POST, if its result has none yet)."""
    while True:
        last, chunk = _take_range(conn, order_no, after, size, now)
        if chunk is not None or last is None:
            return chunk
        after = last    # nothing to push in this range (or all of it changed under us): on to the next


def _take_range(conn: Connection, order_no: str, after: int, size: int, now: str):
    """(last seq of the range, its chunk or None); (None, None) when nothing is left."""
    c = items.c
    # The range is the next `size` items by seq, pushed or not: a range of the primary key, read
    # in its order whatever the statistics say; its unpushed results are the chunk (none: the
    # caller goes on to the next range).
    first = select(c.seq).where(c.order_no == order_no, c.seq > after).order_by(c.seq).limit(size).subquery()
    last = conn.execute(select(func.max(first.c.seq))).scalar()
    if last is None:
        return None, None
    at = func.coalesce(func.nullif(c.result_at, ""), bindparam("now", now))   # kept between resends
    in_range = (_unpushed(order_no), c.seq > after, c.seq <= last)
    # A result not yet versioned (or changed since) gets the next version: a resend carries the
    # same version, a later result a higher one.
    conn.execute(update(items).where(*in_range, or_(c.version_sig.is_(None), c.version_sig != _sig_sql(at)))
                 .values(result_version=func.coalesce(c.result_version, 0) + 1,
                         version_sig=_sig_sql(at), result_at=at))
    # Only results whose version is given to exactly this content (on PostgreSQL the apply may
    # change one meanwhile: it waits for the next chunk, with a new version).
    rows = select(c.seq, c.result_version, c.status, func.coalesce(c.reason_code, ""),
                  func.coalesce(c.reason_text, ""), func.coalesce(c.bank_serial, ""), at.label("at")
                  ).where(*in_range, c.version_sig == _sig_sql(at)).order_by(c.seq).subquery()
    cols = list(rows.c)
    pairs = []
    for name, col in zip(_RESULT_FIELDS, cols):
        pairs += [literal_column(f"'{name}'"), col]     # constants: PostgreSQL needs their type
    if conn.dialect.name == "postgresql":
        record = cast(func.json_build_object(*pairs), Text)
        agg = select(func.count(),
                     func.convert_to(func.string_agg(record, aggregate_order_by(literal_column("','"), rows.c.seq)),
                                     literal_column("'UTF8'")),     # bytea: the bytes, never a str
                     func.array_agg(aggregate_order_by(rows.c.seq, rows.c.seq)),
                     func.array_agg(aggregate_order_by(rows.c.result_version, rows.c.seq)))
        n, records, seqs, versions = conn.execute(agg).one()
        results_json, sent = b"[" + bytes(records or b"") + b"]", (seqs, versions)
    else:
        # SQLite aggregates an ordered subquery in its order (it is not flattened into the aggregate).
        # As a BLOB: the UTF-8 bytes as they go out, never a Python str (2-4 bytes a character).
        agg = select(func.count(), cast(func.json_group_array(func.json_object(*pairs)), LargeBinary),
                     func.json_group_array(func.json_array(rows.c.seq, rows.c.result_version)))
        n, results_json, sent = conn.execute(agg).one()
    return last, (_Chunk(after, last, n, bytes(results_json), sent) if n else None)


def _mark_chunk(conn: Connection, order_no: str, chunk: _Chunk) -> None:
    """The chunk's results pushed: each item whose version is still the one sent (a result
    that arrived meanwhile keeps its own, unpushed)."""
    if conn.dialect.name == "postgresql":
        seqs, versions = chunk.sent
        conn.exec_driver_sql(
            "UPDATE items SET pushed = status, pushed_version = result_version "
            "WHERE order_no = %s AND seq > %s AND seq <= %s AND (seq, result_version) IN "
            "(SELECT * FROM unnest(%s::integer[], %s::integer[]))",
            (order_no, chunk.after, chunk.last, seqs, versions))
    else:
        conn.exec_driver_sql(
            "UPDATE items SET pushed = status, pushed_version = result_version "
            "WHERE order_no = ? AND seq > ? AND seq <= ? AND (seq, result_version) IN "
            "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))",
            (order_no, chunk.after, chunk.last, chunk.sent))


def journal_exchange(journal: Journal, conn: Connection, at: str, ex: Exchange, tx: str,
                     order_no=None) -> None:
    """An exchange with the core as two journal entries: what was asked and what came back."""
    journal.append(conn, Entry("out", "core", "http", tx, f"{ex.method} {ex.url}",
                               payload=ex.request, order_no=order_no), at)
    journal.append(conn, Entry("in", "core", "http", tx, f"HTTP {ex.status}",
                               payload=ex.response, order_no=order_no), at)


class CorePushSteps:
    """One bank's results and order states, pushed to the core (ICoreSystem).

    `contract_fault(error, order_no)` journals and alarms an answer the contract does not
    allow (the flow's, shared with its other calls to the core)."""

    def __init__(self, ctx: FlowContext, core, journal: Journal, contract_fault):
        self.ctx = ctx
        self.core = core
        self.journal = journal
        self.contract_fault = contract_fault

    def _core_entries(self, conn: Connection, ex: Exchange, tx: str, order_no=None) -> None:
        journal_exchange(self.journal, conn, self.ctx.at(), ex, tx, order_no)

    async def push_results(self) -> None:
        for order_no in await self.ctx.db.run(lambda c: list(c.execute(select(orders.c.order_no).where(
                orders.c.bank_id == self.ctx.bank_id, orders.c.results_pending == 1)).scalars())):
            await self.push_order_results(order_no)

    async def push_order_results(self, order_no: str) -> None:
        """Push unreported results in chunks, keyset-paged by seq.

        Pipelined: the next chunk is read while one is posted, and two POSTs are in
        flight. A crash between a POST and its mark only means that chunk is pushed
        again, which the core takes idempotently.
        """
        chunk_size = self.ctx.cfg.core.results_chunk
        began = self.ctx.started()
        raw = ICoreRawResults.providedBy(self.core)

        def take(conn: Connection, after: int) -> _Chunk | None:
            return _take_chunk(conn, order_no, after, chunk_size, self.ctx.at())

        def mark(conn: Connection, chunk: _Chunk, ex: Exchange) -> None:
            _mark_chunk(conn, order_no, chunk)
            self._core_entries(conn, ex, "POST results", order_no)

        async def push(chunk: _Chunk) -> None:
            try:
                if raw:
                    ex = await self.core.push_results_json(order_no, chunk.results_json)
                else:
                    ex = await self.core.push_results(order_no, json.loads(chunk.results_json))
                chunk.results_json = b""    # the request (ex) is what the journal keeps
            except CoreContractError as e:
                if e.status != 409:
                    raise
                # The core holds one of these (seq, version) with other content: journaled and
                # alarmed (one episode per order); the chunk stays unpushed for an operator.
                await self.contract_fault(e, order_no)
                raise CoreError(f"results of {order_no}: the core answered 409 (journaled)") from None
            await self.ctx.db.run_bulk(mark, chunk, ex)

        # Two chunks in flight: the core parses one while it stores the other.
        slots = defer.DeferredSemaphore(2)
        pushes: list[defer.Deferred] = []
        chunk = await self.ctx.db.run_bulk(take, 0)
        while chunk is not None:
            nxt = self.ctx.db.run_bulk(take, chunk.last)
            await slots.acquire()
            d = defer.ensureDeferred(push(chunk))
            d.addBoth(lambda r: (slots.release(), r)[1])
            pushes.append(d)
            chunk = await nxt
        failures = [r for ok, r in await defer.DeferredList(pushes, consumeErrors=True) if not ok]
        if failures:
            failures[0].raiseException()   # the unmarked chunks are pushed again next time

        def done(conn: Connection) -> None:
            # Not if a result arrived meanwhile (the bank's steps run apart from the core's).
            conn.execute(update(orders).where(orders.c.order_no == order_no,
                                              ~select(items.c.seq).where(_unpushed(order_no)).exists())
                         .values(results_pending=0))
        await self.ctx.db.run(done)
        self.ctx.stage("push", began)
        log.info("{bank}: results of {order} pushed to the core", bank=self.ctx.bank_id, order=order_no)

    async def push_states(self) -> None:
        rows = await self.ctx.db.run(lambda c: [dict(r) for r in c.execute(select(
            orders.c.order_no, orders.c.state, orders.c.core_state_pushed, orders.c.detail).where(
            orders.c.bank_id == self.ctx.bank_id, orders.c.results_pending == 0,
            orders.c.state.in_((OrderState.DISPATCHED, OrderState.SETTLED, OrderState.INVALID)),
            or_(orders.c.core_state_pushed.is_(None),
                orders.c.core_state_pushed != orders.c.state))).mappings()])
        for o in rows:
            steps = [o["state"]]
            if o["state"] == OrderState.SETTLED and o["core_state_pushed"] is None:
                steps = [OrderState.DISPATCHED, OrderState.SETTLED]
            for state in steps:
                detail = await self.ctx.db.run(self._state_detail, o["order_no"], state, o["detail"])
                ex = await self.core.push_state(o["order_no"], state, detail)

                def mark(conn: Connection, state=state, ex=ex, no=o["order_no"]) -> None:
                    conn.execute(update(orders).where(orders.c.order_no == no)
                                 .values(core_state_pushed=state))
                    self._core_entries(conn, ex, "POST state", no)
                await self.ctx.db.run(mark)
                log.info("{bank}: told the core order {order} is {state}", bank=self.ctx.bank_id,
                         order=o["order_no"], state=state)

    def _state_detail(self, conn: Connection, order_no: str, state: str, detail: str | None):
        if state == OrderState.INVALID:
            return json.loads(detail) if detail else {"reasons": []}
        per = dict(((r.status), {"count": r.n, "amount": int(r.amt)}) for r in conn.execute(
            select(items.c.status, func.count().label("n"), func.sum(items.c.amount).label("amt"))
            .where(items.c.order_no == order_no).group_by(items.c.status)))
        return {"items": per}
