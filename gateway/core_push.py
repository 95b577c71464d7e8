"""Pushing results and order states back to the core (core-api.md).

Results go in keyset-paged chunks, two POSTs in flight; a chunk is marked
pushed in the transaction that journals the exchange, so a crash in between
only pushes it again (the core takes results idempotently). Order states
follow: DISPATCHED, then SETTLED once every result is out, or INVALID.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, func, or_, select, update
from twisted.internet import defer
from twisted.logger import Logger

from adapters.core_http import Exchange
from gateway.db import executemany
from gateway.models import ItemStatus, OrderState, items, orders

log = Logger()


class CorePushSteps:
    """Steps of BankFlow (gateway/flow.py); `self` is the bank's flow."""

    async def push_results(self) -> None:
        for order_no in await self.db.run(lambda c: list(c.execute(select(orders.c.order_no).where(
                orders.c.bank_id == self.bank_id, orders.c.results_pending == 1)).scalars())):
            await self._push_order_results(order_no)

    async def _push_order_results(self, order_no: str) -> None:
        """Push unreported results in chunks, keyset-paged by seq.

        Pipelined: the next chunk is read while one is posted, and two POSTs are in
        flight. A crash between a POST and its mark only means that chunk is pushed
        again, which the core takes idempotently.
        """
        chunk_size = self.cfg.core.results_chunk

        def take(conn: Connection, after: int) -> list[dict]:
            return [dict(r) for r in conn.execute(select(
                items.c.seq, items.c.status, items.c.reason_code, items.c.reason_text,
                items.c.bank_serial, items.c.result_at).where(
                items.c.order_no == order_no, items.c.seq > after,
                items.c.status.in_(ItemStatus.REPORTED),
                or_(items.c.pushed.is_(None), items.c.pushed != items.c.status))
                .order_by(items.c.seq).limit(chunk_size)).mappings()]

        def mark(conn: Connection, rows: list[dict], ex: Exchange) -> None:
            executemany(conn, "UPDATE items SET pushed = ? WHERE order_no = ? AND seq = ? "
                              "AND status = ?",
                        [(r["status"], order_no, r["seq"], r["status"]) for r in rows])
            self._core_entries(conn, ex, "POST results", order_no)

        async def push(rows: list[dict]) -> None:
            results = [{"seq": r["seq"], "status": r["status"], "reason_code": r["reason_code"] or "",
                        "reason_text": r["reason_text"] or "", "bank_serial": r["bank_serial"] or "",
                        "at": r["result_at"] or self.at()} for r in rows]
            ex = await self.core.push_results(order_no, results)
            await self.db.run(mark, rows, ex)

        # Two chunks in flight: the core parses one while it stores the other.
        slots = defer.DeferredSemaphore(2)
        pushes: list[defer.Deferred] = []
        rows = await self.db.run(take, 0)
        while rows:
            nxt = self.db.run(take, rows[-1]["seq"])
            await slots.acquire()
            d = defer.ensureDeferred(push(rows))
            d.addBoth(lambda r: (slots.release(), r)[1])
            pushes.append(d)
            rows = await nxt
        failures = [r for ok, r in await defer.DeferredList(pushes, consumeErrors=True) if not ok]
        if failures:
            failures[0].raiseException()   # the unmarked chunks are pushed again next time

        def done(conn: Connection) -> None:
            conn.execute(update(orders).where(orders.c.order_no == order_no).values(results_pending=0))
        await self.db.run(done)
        log.info("{bank}: results of {order} pushed to the core", bank=self.bank_id, order=order_no)

    async def push_states(self) -> None:
        rows = await self.db.run(lambda c: [dict(r) for r in c.execute(select(
            orders.c.order_no, orders.c.state, orders.c.core_state_pushed, orders.c.detail).where(
            orders.c.bank_id == self.bank_id, orders.c.results_pending == 0,
            orders.c.state.in_((OrderState.DISPATCHED, OrderState.SETTLED, OrderState.INVALID)),
            or_(orders.c.core_state_pushed.is_(None),
                orders.c.core_state_pushed != orders.c.state))).mappings()])
        for o in rows:
            steps = [o["state"]]
            if o["state"] == OrderState.SETTLED and o["core_state_pushed"] is None:
                steps = [OrderState.DISPATCHED, OrderState.SETTLED]
            for state in steps:
                detail = await self.db.run(self._state_detail, o["order_no"], state, o["detail"])
                ex = await self.core.push_state(o["order_no"], state, detail)

                def mark(conn: Connection, state=state, ex=ex, no=o["order_no"]) -> None:
                    conn.execute(update(orders).where(orders.c.order_no == no)
                                 .values(core_state_pushed=state))
                    self._core_entries(conn, ex, "POST state", no)
                await self.db.run(mark)
                log.info("{bank}: told the core order {order} is {state}", bank=self.bank_id,
                         order=o["order_no"], state=state)

    def _state_detail(self, conn: Connection, order_no: str, state: str, detail: str | None):
        if state == OrderState.INVALID:
            return json.loads(detail) if detail else {"reasons": []}
        per = dict(((r.status), {"count": r.n, "amount": int(r.amt)}) for r in conn.execute(
            select(items.c.status, func.count().label("n"), func.sum(items.c.amount).label("amt"))
            .where(items.c.order_no == order_no).group_by(items.c.status)))
        return {"items": per}
