"""Article 26: the department checks a batch within working days, disputes go to the bank.

Deadlines are counted in working days of the calendar in conf/calendar (never
weekday arithmetic): the check (batch.confirm) within 5 of the results
arriving, errors reported (DP01) within 3 more, and the bank's own deadline for
a batch's results. Each missed deadline raises one alarm.
"""

from __future__ import annotations

import datetime
import json

from sqlalchemy import Connection, or_, select, update

from adapters.interface import IBankAdapter, IBankRecorder
from gateway import backoff
from gateway.flowctx import FlowContext
from gateway.models import BatchState, DisputeState, batches, disputes
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
            for b in conn.execute(select(batches.c.batch_no, batches.c.order_no, batches.c.confirm_due)
                                  .where(batches.c.bank_id == self.ctx.bank_id,
                                         batches.c.state == BatchState.DONE,
                                         batches.c.confirmed_by.is_(None),
                                         batches.c.overdue_alarmed == 0,
                                         batches.c.confirm_due < today)):
                self.ctx.alarm(conn, "warning", "confirm-overdue",
                               f"the results of batch {b.batch_no} were due to be checked (batch.confirm) "
                               f"by {b.confirm_due} (article 26) and are not", order_no=b.order_no,
                               batch_no=b.batch_no)
                conn.execute(update(batches).where(batches.c.batch_no == b.batch_no)
                             .values(overdue_alarmed=1))
            for b in conn.execute(select(batches.c.batch_no, batches.c.order_no, batches.c.bank_due)
                                  .where(batches.c.bank_id == self.ctx.bank_id,
                                         batches.c.state == BatchState.ACCEPTED,
                                         batches.c.bank_overdue_alarmed == 0,
                                         batches.c.bank_due < today)):
                self.ctx.alarm(conn, "critical", "bank-overdue",
                               f"the bank owed the results of batch {b.batch_no} by {b.bank_due} and they "
                               f"are not in", order_no=b.order_no, batch_no=b.batch_no)
                conn.execute(update(batches).where(batches.c.batch_no == b.batch_no)
                             .values(bank_overdue_alarmed=1))
        await self.ctx.db.run(check)

    async def send_disputes(self) -> None:
        """DP01 for disputes not yet accepted; a resend carries the same DisputeNo (idempotent).

        One without a usable answer (none, or refused for now) is sent again after a backoff
        (gateway/backoff.py: `failures`, `next_check_at`), not on every tick."""
        now = self.ctx.now()
        for d in await self.ctx.db.run(lambda c: [dict(r) for r in c.execute(select(disputes).where(
                disputes.c.bank_id == self.ctx.bank_id,
                disputes.c.state.in_(DisputeState.LIVE),
                or_(disputes.c.next_check_at.is_(None), disputes.c.next_check_at <= int(now)))).mappings()]):
            def mark(conn: Connection, no=d["dispute_no"]) -> None:
                conn.execute(update(disputes).where(disputes.c.dispute_no == no).values(
                    state=DisputeState.SUBMITTING, attempts=disputes.c.attempts + 1, updated_at=self.ctx.at()))
            reply = await self.adapter.dispute({**d, "seqs": json.loads(d["seqs"])}, self.recorder, mark)

            def later(conn: Connection, d=d) -> None:
                failures = (d.get("failures") or 0) + 1
                conn.execute(update(disputes).where(disputes.c.dispute_no == d["dispute_no"]).values(
                    failures=failures,
                    next_check_at=backoff.next_at(self.ctx.now(), self.ctx.bank.status_poll_s, failures)))
            if reply is None:
                await self.ctx.db.run(later)
                continue

            step = after_submit(reply.outcome)

            def record(conn: Connection, d=d, reply=reply, later=later, step=step) -> None:
                if step.then is Next.ACCEPT:
                    conn.execute(update(disputes).where(disputes.c.dispute_no == d["dispute_no"])
                                 .values(state=DisputeState.ACCEPTED, updated_at=self.ctx.at(), failures=0))
                elif step.then is Next.SEND_LATER:
                    later(conn)
                else:
                    conn.execute(update(disputes).where(disputes.c.dispute_no == d["dispute_no"])
                                 .values(state=DisputeState.REFUSED, updated_at=self.ctx.at()))
                    self.ctx.alarm(conn, "critical", "dispute-refused",
                                   f"bank refused dispute {d['dispute_no']}: {reply.code} {reply.message}",
                                   order_no=d["order_no"], batch_no=d["batch_no"],
                                   journal_id=reply.journal_id)
            await self.ctx.db.run(record)
