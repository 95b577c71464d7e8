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

from sqlalchemy import Connection, select, update
from twisted.logger import Logger

from adapters.interface import RefundStatus
from gateway import backoff
from gateway.models import (ItemStatus, OrderState, RefundState, items, orders, refund_items,
                            refunds)
from gateway.rules import RETRYABLE_REFUSALS, ConservationError, check_conservation, clear_alarm

log = Logger()


class RefundSteps:
    """Steps of BankFlow (gateway/flow.py); `self` is the bank's flow."""

    def _live_refunds(self, conn: Connection) -> list[dict]:
        return [dict(r) for r in conn.execute(select(refunds).where(
            refunds.c.bank_id == self.bank_id, refunds.c.state.in_(RefundState.LIVE))
            .order_by(refunds.c.created_at, refunds.c.refund_no)).mappings()]

    async def advance_refund(self, r: dict) -> None:
        if (r["next_check_at"] or 0) > self.now():
            return
        if r["state"] == RefundState.NEW:
            await self.submit_refund(r)
        else:
            await self.query_refund(r)

    def _refund_again_later(self, conn: Connection, r: dict, **values) -> None:
        failures = (r.get("failures") or 0) + 1
        conn.execute(update(refunds).where(refunds.c.refund_no == r["refund_no"]).values(
            failures=failures, next_check_at=backoff.next_at(self.now(), self.bank.status_poll_s,
                                                             failures), **values))

    async def submit_refund(self, r: dict) -> None:
        lines = await self.db.run(lambda c: [dict(x) for x in c.execute(select(
            refund_items.c.seq, refund_items.c.batch_no, refund_items.c.amount).where(
            refund_items.c.refund_no == r["refund_no"]).order_by(refund_items.c.seq)).mappings()])

        def mark(conn: Connection) -> None:
            conn.execute(update(refunds).where(refunds.c.refund_no == r["refund_no"]).values(
                state=RefundState.SUBMITTING, attempts=refunds.c.attempts + 1, updated_at=self.at()))
        reply = await self.adapter.send_refund(r, lines, self, mark)
        if reply is None:
            return

        def record(conn: Connection) -> None:
            if reply.outcome == "accepted":
                self._refund_accepted(conn, r)
            elif reply.outcome in ("retry", "unsent"):
                # Sent again (a new MsgId) after a backoff; E008/E009 are the adapter's alarm.
                failures = (r.get("failures") or 0) + 1
                conn.execute(update(refunds).where(refunds.c.refund_no == r["refund_no"],
                                                   refunds.c.state == RefundState.SUBMITTING)
                             .values(state=RefundState.NEW, updated_at=self.at(), failures=failures,
                                     next_check_at=backoff.next_at(self.now(), self.bank.status_poll_s,
                                                                   failures)))
            else:
                self._refund_failed(conn, r, RefundState.REFUSED, reply.code, reply.message,
                                    reply.journal_id)
        await self.db.run(record)

    def _refund_accepted(self, conn: Connection, r: dict) -> None:
        conn.execute(update(refunds).where(refunds.c.refund_no == r["refund_no"]).values(
            state=RefundState.ACCEPTED, updated_at=self.at(), failures=0,
            next_check_at=int(self.now() + self.bank.status_poll_s)))
        r["state"] = RefundState.ACCEPTED

    def _refund_failed(self, conn: Connection, r: dict, state: str, code: str, msg: str,
                       jid: int | None) -> None:
        """The bank will not refund: the items go back to FAILED for the department to act on."""
        conn.execute(update(items).where(
            items.c.order_no == r["order_no"], items.c.status == ItemStatus.REFUND_PENDING,
            items.c.seq.in_(select(refund_items.c.seq).where(refund_items.c.refund_no == r["refund_no"])))
            .values(status=ItemStatus.FAILED))
        conn.execute(update(refunds).where(refunds.c.refund_no == r["refund_no"]).values(
            state=state, reject_code=code, reject_msg=(msg or "")[:500], updated_at=self.at()))
        check_conservation(conn, r["order_no"])
        self._alarm(conn, "critical", "refund-refused",
                    f"bank refused refund {r['refund_no']} ({state}): {code} {msg}; its items are FAILED again",
                    order_no=r["order_no"], batch_no=r["refund_no"], journal_id=jid)

    async def query_refund(self, r: dict) -> None:
        """Ask the refund's status, also first when a submission's outcome is unknown (rule 3)."""
        st = await self.adapter.refund_status(r, self)
        if st is None:
            await self.db.run(self._refund_again_later, r)
            return

        def record(conn: Connection) -> None:
            jid = st.journal_id
            if st.state == "unanswered":
                self._refund_again_later(conn, r)
                if st.code not in RETRYABLE_REFUSALS:   # those are the adapter's bank-refusing
                    self._alarm(conn, "warning", "refund-status-refused",
                                f"status query for refund {r['refund_no']} answered {st.code} {st.message}",
                                order_no=r["order_no"], batch_no=r["refund_no"], journal_id=jid)
                return
            if r.get("failures"):
                clear_alarm(conn, self.at(), "refund-status-refused", bank_id=self.bank_id,
                            order_no=r["order_no"], batch_no=r["refund_no"])
                conn.execute(update(refunds).where(refunds.c.refund_no == r["refund_no"])
                             .values(failures=0))
            if st.state == "unknown_to_bank":
                if r["state"] == RefundState.SUBMITTING:
                    conn.execute(update(refunds).where(refunds.c.refund_no == r["refund_no"])
                                 .values(state=RefundState.NEW, updated_at=self.at(), next_check_at=None))
                else:
                    self._refund_again_later(conn, r)
                    self._alarm(conn, "critical", "refund-unknown",
                                f"bank says it never accepted refund {r['refund_no']}, which it had "
                                f"accepted", order_no=r["order_no"], batch_no=r["refund_no"],
                                journal_id=jid)
                return
            if r["state"] == RefundState.SUBMITTING:
                self._refund_accepted(conn, r)
            if st.state == "done":
                self._refund_done(conn, r, st, jid)
            elif st.state == "rejected":
                self._refund_failed(conn, r, RefundState.RJCT, st.code, st.message, jid)
            else:
                conn.execute(update(refunds).where(refunds.c.refund_no == r["refund_no"]).values(
                    next_check_at=int(self.now() + self.bank.status_poll_s)))
        await self.db.run(record)

    def _refund_done(self, conn: Connection, r: dict, st: RefundStatus, jid: int | None) -> None:
        amount = st.amount
        if amount != r["total_amount"]:
            self._alarm(conn, "critical", "refund-amount-mismatch",
                        f"bank says refund {r['refund_no']} returned {amount} fen, we asked "
                        f"{r['total_amount']}: not applied", order_no=r["order_no"],
                        batch_no=r["refund_no"], journal_id=jid)
            return
        serial = st.serial
        n = conn.execute(update(items).where(
            items.c.order_no == r["order_no"], items.c.status == ItemStatus.REFUND_PENDING,
            items.c.seq.in_(select(refund_items.c.seq).where(refund_items.c.refund_no == r["refund_no"])))
            .values(status=ItemStatus.REFUNDED, bank_serial=serial, result_at=self.at())).rowcount
        if n != r["total_count"]:
            raise ConservationError(f"refund {r['refund_no']} holds {r['total_count']} items but {n} "
                                    f"were waiting for it")
        conn.execute(update(refunds).where(refunds.c.refund_no == r["refund_no"]).values(
            state=RefundState.DONE, refund_serial=serial, returned_to=st.returned_to,
            refund_amount=amount, updated_at=self.at()))
        per_order = check_conservation(conn, r["order_no"])
        settled = set(per_order) <= {ItemStatus.PAID, ItemStatus.REFUNDED}
        conn.execute(update(orders).where(orders.c.order_no == r["order_no"]).values(
            results_pending=1, updated_at=self.at(), **({"state": OrderState.SETTLED} if settled else {})))
        log.info("{bank}: refund {refund} done: {n} items, {amount} fen back to the original account",
                 bank=self.bank_id, refund=r["refund_no"], n=n, amount=amount)
