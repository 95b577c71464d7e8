"""Late returns (退票): a paid item the bank later sends back becomes FAILED again.

DONE batches are asked their status (cnbank BQ01) at a low rate for the bank's window; each
ReturnSerial is applied once, and a return that matches no PAID item of the
batch is alarmed, not applied.
"""

from __future__ import annotations

from sqlalchemy import Connection
from twisted.logger import Logger

from gateway.flowctx import FlowContext
from gateway.store import batches, items, late_returns, orders
from gateway.rules import check_conservation, post_date

log = Logger()


class LateReturnSteps:
    """The late returns of one bank's finished batches (the status question is the batch's)."""

    def __init__(self, ctx: FlowContext):
        self.ctx = ctx

    def watched(self, conn: Connection) -> list[dict]:
        """DONE batches still inside the late-return window whose next BQ01 is due."""
        now = self.ctx.now()
        window = self.ctx.bank.late_return_window_days * 86400
        return batches.late_return_watch(conn, self.ctx.bank_id, int(now - window), int(now))

    def apply(self, conn: Connection, b: dict, returns: list, jid: int | None) -> None:
        """Late returns (退票): a PAID item of this batch goes back to FAILED, once per ReturnSerial.

        A return naming an item that is not PAID in this batch, or another amount, is not
        applied: it is alarmed for an operator, since money may have moved twice.
        """
        changed = False
        for r in returns:
            serial = r.serial
            if late_returns.seen(conn, self.ctx.bank_id, serial):
                continue
            n = items.returned_late(conn, b["order_no"], r.seq, b["batch_no"], r.amount,
                                    reason_code=r.reason_code,
                                    reason_text=f"late return {serial} on {r.return_date}"[:200],
                                    serial=serial, result_at=post_date(r.return_date))
            if n != 1:
                self.ctx.alarm(conn, "critical", "late-return-unmatched",
                               f"bank returned seq {r.seq} of {b['batch_no']} ({serial}, "
                               f"{r.amount} fen), which is not a PAID item of that batch: not applied",
                               order_no=b["order_no"], batch_no=b["batch_no"], journal_id=jid)
                continue
            late_returns.record(
                conn, return_serial=serial, bank_id=self.ctx.bank_id, batch_no=b["batch_no"],
                order_no=b["order_no"], seq=r.seq, amount=r.amount,
                reason_code=r.reason_code, return_date=r.return_date,
                applied_at=self.ctx.at(), journal_id=r.journal_id or jid)
            log.info("{bank}: late return {serial}: seq {seq} of {batch} is FAILED again ({code})",
                     bank=self.ctx.bank_id, serial=serial, seq=r.seq, batch=b["batch_no"],
                     code=r.reason_code)
            changed = True
        if changed:
            check_conservation(conn, b["order_no"])
            orders.results_changed(conn, b["order_no"], self.ctx.at())
            orders.reopen_settled(conn, b["order_no"])
