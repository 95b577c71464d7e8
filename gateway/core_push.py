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

from sqlalchemy import Connection, and_, func, literal, or_, select, update
from twisted.internet import defer
from twisted.logger import Logger

from adapters.core_interface import CoreContractError, CoreError, Exchange
from gateway.db import executemany
from gateway.flowctx import FlowContext
from gateway.journal import Entry, Journal
from gateway.models import ItemStatus, OrderState, items, orders

log = Logger()


def _sig_sql():
    """The item's current result as one string, in SQL (the same as _sig in Python)."""
    c = items.c
    parts = [func.coalesce(col, "") for col in (c.status, c.reason_code, c.reason_text, c.bank_serial,
                                                 c.result_at)]
    out = parts[0]
    for p in parts[1:]:
        out = out + literal("|") + p
    return out


def _sig(r: dict) -> str:
    return "|".join(r[k] or "" for k in ("status", "reason_code", "reason_text", "bank_serial",
                                          "result_at"))


def _unpushed(order_no: str):
    """Items of the order whose current result the core has not acknowledged."""
    c = items.c
    return and_(c.order_no == order_no, c.status.in_(ItemStatus.REPORTED),
                or_(c.version_sig.is_(None), c.result_version.is_(None), c.pushed_version.is_(None),
                    c.pushed_version != c.result_version, c.version_sig != _sig_sql(),
                    # `pushed` cleared (by an operator, or a tool) asks for the push again,
                    # with the same version if the result is the same
                    c.pushed.is_(None), c.pushed != c.status))


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

        def take(conn: Connection, after: int) -> list[dict]:
            rows = [dict(r) for r in conn.execute(select(
                items.c.seq, items.c.status, items.c.reason_code, items.c.reason_text,
                items.c.bank_serial, items.c.result_at, items.c.result_version, items.c.version_sig)
                .where(_unpushed(order_no), items.c.seq > after)
                .order_by(items.c.seq).limit(chunk_size)).mappings()]
            # A result not yet versioned gets the next version now, committed before it is
            # sent: a resend carries the same version, a later result a higher one.
            fresh = []
            for r in rows:
                if not r["result_at"]:
                    r["result_at"] = self.ctx.at()    # `at` must not change between resends
                sig = _sig(r)
                if r["version_sig"] != sig:
                    r["result_version"] = (r["result_version"] or 0) + 1
                    r["version_sig"] = sig
                    fresh.append((r["result_version"], sig, r["result_at"], order_no, r["seq"]))
            executemany(conn, "UPDATE items SET result_version = ?, version_sig = ?, result_at = ? "
                              "WHERE order_no = ? AND seq = ?", fresh)
            return rows

        def mark(conn: Connection, rows: list[dict], ex: Exchange) -> None:
            executemany(conn, "UPDATE items SET pushed = status, pushed_version = ? WHERE order_no = ? "
                              "AND seq = ? AND result_version = ?",
                        [(r["result_version"], order_no, r["seq"], r["result_version"]) for r in rows])
            self._core_entries(conn, ex, "POST results", order_no)

        async def push(rows: list[dict]) -> None:
            results = [{"seq": r["seq"], "version": r["result_version"], "status": r["status"],
                        "reason_code": r["reason_code"] or "", "reason_text": r["reason_text"] or "",
                        "bank_serial": r["bank_serial"] or "", "at": r["result_at"]} for r in rows]
            try:
                ex = await self.core.push_results(order_no, results)
            except CoreContractError as e:
                if e.status != 409:
                    raise
                # The core holds one of these (seq, version) with other content: journaled and
                # alarmed (one episode per order); the chunk stays unpushed for an operator.
                await self.contract_fault(e, order_no)
                raise CoreError(f"results of {order_no}: the core answered 409 (journaled)") from None
            await self.ctx.db.run_bulk(mark, rows, ex)

        # Two chunks in flight: the core parses one while it stores the other.
        slots = defer.DeferredSemaphore(2)
        pushes: list[defer.Deferred] = []
        rows = await self.ctx.db.run_bulk(take, 0)
        while rows:
            nxt = self.ctx.db.run_bulk(take, rows[-1]["seq"])
            await slots.acquire()
            d = defer.ensureDeferred(push(rows))
            d.addBoth(lambda r: (slots.release(), r)[1])
            pushes.append(d)
            rows = await nxt
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
