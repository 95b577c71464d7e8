"""Article 26: the department checks a batch within working days, disputes go to the bank.

Deadlines are counted in working days of the calendar in conf/calendar (never
weekday arithmetic): the check (batch.confirm) within 5 of the results
arriving, errors reported (DP01) within 3 more, and the bank's own deadline for
a batch's results. Each missed deadline raises one alarm.
"""

from __future__ import annotations

import datetime
import json

from sqlalchemy import Connection

from adapters.interface import IBankAdapter, IBankRecorder
from gateway import backoff
from gateway.flowctx import FlowContext
from gateway.models import DisputeState
from gateway.store import batches, disputes
from gateway.transitions import Next, after_submit


class Article26Steps:
    """One bank's article 26 deadlines (checks, disputes, the bank's own) and its disputes (DP01)."""

    def __init__(self, ctx: FlowContext, adapter: IBankAdapter, recorder: IBankRecorder):
        self.ctx = ctx
        self.adapter = adapter
        self.recorder = recorder

    def today(self) -> datetime.date:
        return self.ctx.today()

    def working_days_from_today(self, conn: Connection, b: dict, n: int) -> str | None:
        cal = self.ctx.cfg.calendar
        if cal is None:
            return None
        try:
            return cal.add_working_days(self.today(), n).isoformat()
        except LookupError as e:   # CalendarGap
            self.ctx.alarm(conn, "warning", "calendar-gap", f"no deadline for batch {b['batch_no']}: {e}",
                           order_no=b["order_no"], batch_no=b["batch_no"])
            return None

    def deadlines(self, conn: Connection, b: dict) -> tuple[str | None, str | None]:
        """Article 26 deadlines from the results' arrival, in working days of the calendar in conf/."""
        cal = self.ctx.cfg.calendar
        if cal is None:
            return None, None
        try:
            confirm = cal.add_working_days(self.today(), self.ctx.cfg.confirm_working_days)
            dispute = cal.add_working_days(confirm, self.ctx.cfg.dispute_working_days)
        except LookupError as e:   # CalendarGap: the year's holidays are not in conf/calendar/
            self.ctx.alarm(conn, "warning", "calendar-gap",
                           f"no deadline for batch {b['batch_no']}: {e}", order_no=b["order_no"],
                           batch_no=b["batch_no"])
            return None, None
        return confirm.isoformat(), dispute.isoformat()

    async def check_deadlines(self) -> None:
        """One alarm per missed deadline: results not checked (batch.confirm) by their due date,
        or not delivered by the bank by its due date."""
        def check(conn: Connection) -> None:
            today = self.today().isoformat()
            for b in batches.confirm_overdue(conn, self.ctx.bank_id, today):
                self.ctx.alarm(conn, "warning", "confirm-overdue",
                               f"the results of batch {b.batch_no} were due to be checked (batch.confirm) "
                               f"by {b.confirm_due} (article 26) and are not", order_no=b.order_no,
                               batch_no=b.batch_no)
                batches.confirm_overdue_alarmed(conn, b.batch_no)
            for b in batches.bank_overdue(conn, self.ctx.bank_id, today):
                self.ctx.alarm(conn, "critical", "bank-overdue",
                               f"the bank owed the results of batch {b.batch_no} by {b.bank_due} and they "
                               f"are not in", order_no=b.order_no, batch_no=b.batch_no)
                batches.bank_overdue_alarmed(conn, b.batch_no)
        await self.ctx.db.run(check)

    async def send_disputes(self) -> None:
        """DP01 for disputes not yet accepted; a resend carries the same DisputeNo (idempotent).

        One without a usable answer (none, or refused for now) is sent again after a backoff
        (gateway/backoff.py: `failures`, `next_check_at`), not on every tick."""
        now = self.ctx.now()
        for d in await self.ctx.db.run(disputes.due, self.ctx.bank_id, int(now)):
            def mark(conn: Connection, no=d["dispute_no"]) -> None:
                disputes.mark_submitting(conn, no, self.ctx.at())
            reply = await self.adapter.dispute({**d, "seqs": json.loads(d["seqs"])}, self.recorder, mark)

            def later(conn: Connection, d=d) -> None:
                failures = (d.get("failures") or 0) + 1
                disputes.set_(conn, d["dispute_no"], failures=failures,
                              next_check_at=backoff.next_at(self.ctx.now(), self.ctx.bank.status_poll_s, failures))
            if reply is None:
                await self.ctx.db.run(later)
                continue

            step = after_submit(reply.outcome)

            def record(conn: Connection, d=d, reply=reply, later=later, step=step) -> None:
                if step.then is Next.ACCEPT:
                    disputes.set_(conn, d["dispute_no"], state=DisputeState.ACCEPTED, updated_at=self.ctx.at(),
                                  failures=0)
                elif step.then is Next.SEND_LATER:
                    later(conn)
                else:
                    disputes.set_(conn, d["dispute_no"], state=DisputeState.REFUSED, updated_at=self.ctx.at())
                    self.ctx.alarm(conn, "critical", "dispute-refused",
                                   f"bank refused dispute {d['dispute_no']}: {reply.code} {reply.message}",
                                   order_no=d["order_no"], batch_no=d["batch_no"],
                                   journal_id=reply.journal_id)
            await self.ctx.db.run(record)
