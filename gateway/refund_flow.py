"""The refund flow (原渠道退回): the refund is sent, then its status asked until the bank confirms.

Items the department cannot have paid go back to the account the money came
from. The request (cnbank RF01) is journaled as sent before it leaves; after an
unknown outcome its status (RQ01) is asked first ("unknown to the bank" lets it
go again), as for batches. Every question or resend without a usable answer waits
a backoff (gateway/backoff.py, `failures` and `next_check_at` in the row); a
refusal of RQ01 that persists is one alarm episode, cleared by the next good
answer. A refund the
bank refuses puts its items back to FAILED; DONE makes them REFUNDED with the
bank's serial, and the order SETTLED once every fen is paid or returned.
"""

from __future__ import annotations

from sqlalchemy import Connection
from twisted.logger import Logger

from adapters.interface import IBankAdapter, IBankRecorder, RefundStatus
from gateway import backoff
from gateway.flowctx import FlowContext
from gateway.models import ItemStatus, OrderState, RefundState
from gateway.store import items, orders, refunds
from gateway.rules import ConservationError, check_conservation
from gateway.transitions import Next, Phase, after_status, after_submit

log = Logger()


class RefundSteps:
    """The refunds of one bank: submitted, asked about, applied."""

    def __init__(self, ctx: FlowContext, adapter: IBankAdapter, recorder: IBankRecorder):
        self.ctx = ctx
        self.adapter = adapter
        self.recorder = recorder

    def live(self, conn: Connection) -> list[dict]:
        return refunds.live(conn, self.ctx.bank_id)

    async def advance(self, r: dict) -> None:
        if (r["next_check_at"] or 0) > self.ctx.now():
            return
        if r["state"] == RefundState.NEW:
            await self.submit(r)
        else:
            await self.query(r)

    def _again_later(self, conn: Connection, r: dict, **values) -> None:
        failures = (r.get("failures") or 0) + 1
        refunds.set_(conn, r["refund_no"], failures=failures,
                     next_check_at=backoff.next_at(self.ctx.now(), self.ctx.bank.status_poll_s, failures),
                     **values)

    async def submit(self, r: dict) -> None:
        ctx = self.ctx
        lines = await ctx.db.run(refunds.lines, r["refund_no"])

        def mark(conn: Connection) -> None:
            refunds.mark_submitting(conn, r["refund_no"], ctx.at())
        ctx.stage_began("refund", r["refund_no"])
        reply = await self.adapter.send_refund(r, lines, self.recorder, mark)
        if reply is None:
            return   # outcome unknown: the refund stays SUBMITTING and RQ01 decides (rule 3)
        step = after_submit(reply.outcome)

        def record(conn: Connection) -> None:
            if step.then is Next.ACCEPT:
                self._accepted(conn, r)
            elif step.then is Next.SEND_LATER:
                # Sent again (a new MsgId) after a backoff; E008/E009 are the adapter's alarm.
                failures = (r.get("failures") or 0) + 1
                refunds.send_later(conn, r["refund_no"], ctx.at(), failures,
                                   backoff.next_at(ctx.now(), ctx.bank.status_poll_s, failures))
            else:
                self._failed(conn, r, RefundState.REFUSED, reply.code, reply.message, reply.journal_id)
        await ctx.db.run(record)
        if step.then is not Next.SEND_LATER:   # accepted, or refused for good
            ctx.stage_ended("refund", r["refund_no"], well=step.then is Next.ACCEPT)

    def _accepted(self, conn: Connection, r: dict) -> None:
        refunds.set_(conn, r["refund_no"], state=RefundState.ACCEPTED, updated_at=self.ctx.at(), failures=0,
                     next_check_at=int(self.ctx.now() + self.ctx.bank.status_poll_s))
        r["state"] = RefundState.ACCEPTED

    def _failed(self, conn: Connection, r: dict, state: str, code: str, msg: str,
                jid: int | None) -> None:
        """The bank will not refund: the items go back to FAILED for the department to act on."""
        items.refund_refused(conn, r["order_no"], r["refund_no"])
        refunds.set_(conn, r["refund_no"], state=state, reject_code=code, reject_msg=(msg or "")[:500],
                     updated_at=self.ctx.at())
        check_conservation(conn, r["order_no"])
        self.ctx.alarm(conn, "critical", "refund-refused",
                       f"bank refused refund {r['refund_no']} ({state}): {code} {msg}; its items are FAILED again",
                       order_no=r["order_no"], batch_no=r["refund_no"], journal_id=jid)

    async def query(self, r: dict) -> None:
        """Ask the refund's status, also first when a submission's outcome is unknown (rule 3)."""
        ctx = self.ctx
        st = await self.adapter.refund_status(r, self.recorder)
        if st is None:
            await ctx.db.run(self._again_later, r)
            return
        phase = Phase.SUBMITTING if r["state"] == RefundState.SUBMITTING else Phase.ACCEPTED
        step = after_status(phase, st.state, alarmed=st.alarmed)

        def record(conn: Connection) -> None:
            jid = st.journal_id
            if step.then is Next.ASK_LATER:
                self._again_later(conn, r)
                if step.alarm:
                    ctx.alarm(conn, "warning", "refund-status-refused",
                              f"status query for refund {r['refund_no']} answered {st.code} {st.message}",
                              order_no=r["order_no"], batch_no=r["refund_no"], journal_id=jid)
                return
            if r.get("failures"):
                ctx.clear(conn, "refund-status-refused", order_no=r["order_no"], batch_no=r["refund_no"])
                refunds.set_(conn, r["refund_no"], failures=0)
            if step.then is Next.SEND_AGAIN:
                refunds.set_(conn, r["refund_no"], state=RefundState.NEW, updated_at=ctx.at(),
                             next_check_at=None)
                return
            if step.then is Next.FORGOTTEN:
                self._again_later(conn, r)
                ctx.alarm(conn, "critical", "refund-unknown",
                          f"bank says it never accepted refund {r['refund_no']}, which it had "
                          f"accepted", order_no=r["order_no"], batch_no=r["refund_no"], journal_id=jid)
                return
            if step.accepted_first:
                self._accepted(conn, r)
            if step.then is Next.FINISH:
                self._done(conn, r, st, jid)
            elif step.then is Next.REJECT:
                self._failed(conn, r, RefundState.RJCT, st.code, st.message, jid)
            else:
                refunds.set_(conn, r["refund_no"], next_check_at=int(ctx.now() + ctx.bank.status_poll_s))
        await ctx.db.run(record)
        if step.accepted_first:
            ctx.stage_ended("refund", r["refund_no"])

    def _done(self, conn: Connection, r: dict, st: RefundStatus, jid: int | None) -> None:
        ctx = self.ctx
        amount = st.amount
        if amount != r["total_amount"]:
            ctx.alarm(conn, "critical", "refund-amount-mismatch",
                      f"bank says refund {r['refund_no']} returned {amount} fen, we asked "
                      f"{r['total_amount']}: not applied", order_no=r["order_no"],
                      batch_no=r["refund_no"], journal_id=jid)
            return
        serial = st.serial
        n = items.refunded(conn, r["order_no"], r["refund_no"], serial, ctx.at())
        if n != r["total_count"]:
            raise ConservationError(f"refund {r['refund_no']} holds {r['total_count']} items but {n} "
                                    f"were waiting for it")
        refunds.set_(conn, r["refund_no"], state=RefundState.DONE, refund_serial=serial,
                     returned_to=st.returned_to, refund_amount=amount, updated_at=ctx.at())
        per_order = check_conservation(conn, r["order_no"])
        settled = set(per_order) <= {ItemStatus.PAID, ItemStatus.REFUNDED}
        orders.results_changed(conn, r["order_no"], ctx.at(), state=OrderState.SETTLED if settled else None)
        log.info("{bank}: refund {refund} done: {n} items, {amount} fen back to the original account",
                 bank=ctx.bank_id, refund=r["refund_no"], n=n, amount=amount)
