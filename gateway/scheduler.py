"""The retry times: at `[schedule] retry_times` on working days, corrected items go out again.

An APScheduler 3 `TwistedScheduler` runs one job per configured time (China
Standard Time, Asia/Shanghai). The job marks for retry every DISPATCHED order that
has CORRECTED items not in a live batch, journals it, and wakes the order's bank
flow, which sends them in a RETRY batch; `order.retry` does the same for one order
at any time. The job runs every day and does nothing on a day the calendar in
`conf/calendar/` says is not a working day, because the bank does not process
batches then. Jobs come from the configuration alone, so the job store is in
memory and built again each time the daemon becomes active: the scheduler only
runs on the active daemon (gateway/leadership.py), and a shared job store would
run each job once per daemon. Jobs run on the reactor's thread pool, so the
job's database work blocks only that thread.
"""

from __future__ import annotations

import datetime
import json
from typing import Callable
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_ERROR
from apscheduler.schedulers.twisted import TwistedScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Connection
from twisted.logger import Logger

from gateway.journal import Entry, Journal
from gateway.store import orders
from gateway.rules import CST, iso, raise_alarm

log = Logger()

TIMEZONE = ZoneInfo("Asia/Shanghai")

# A run delayed past its time (reactor busy, thread pool full, clock stepped) still
# happens within the hour: a retry an hour late is still useful the same day, one
# later than that gives way to the next configured time. Missed runs of one job are
# coalesced into one, because the job only sets a flag: running it twice in a row
# changes nothing. A fresh job store each start means downtime never "misfires".
MISFIRE_GRACE_S = 3600


class RetryScheduler:
    """The scheduled retries of one daemon; `start()` on becoming active, `shutdown()` on leaving it."""

    def __init__(self, reactor, engine, journal: Journal, calendar, retry_times, bank_ids,
                 wake: Callable[[str], None], clock=None):
        self.reactor = reactor
        self.clock = clock or reactor        # the job's `now`
        self.engine = engine
        self.journal = journal
        self.calendar = calendar
        self.retry_times = tuple(retry_times)
        self.bank_ids = tuple(bank_ids)
        self.wake = wake
        self.scheduler: TwistedScheduler | None = None
        self.fence = None     # gateway.leadership.Fence of the lease the job runs under, if any

    @property
    def running(self) -> bool:
        return self.scheduler is not None and self.scheduler.running

    def start(self) -> None:
        """A new scheduler with a memory job store, one job per retry time."""
        if self.running or not self.retry_times:
            return
        s = TwistedScheduler(reactor=self.reactor, timezone=TIMEZONE, job_defaults={
            "misfire_grace_time": MISFIRE_GRACE_S, "coalesce": True, "max_instances": 1})
        for at in self.retry_times:
            hour, minute = at.split(":")
            s.add_job(self._scheduled, CronTrigger(hour=int(hour), minute=int(minute), timezone=TIMEZONE),
                      id=f"retry-{at}", name=f"scheduled retry at {at}")
        s.add_listener(self._job_failed, EVENT_JOB_ERROR)
        s.start()
        self.scheduler = s
        log.info("scheduler: retries at {times} (Asia/Shanghai) on working days",
                 times=", ".join(self.retry_times))

    def shutdown(self) -> None:
        """Stop scheduling; a job already running finishes on its own."""
        s, self.scheduler = self.scheduler, None
        if s is not None and s.running:
            s.shutdown(wait=False)
            log.info("scheduler: stopped")

    def next_run_times(self) -> list[str]:
        """When the jobs run next (ISO 8601, +08:00); empty while not active or none configured."""
        if not self.running:
            return []
        return sorted(j.next_run_time.isoformat() for j in self.scheduler.get_jobs()
                      if j.next_run_time is not None)

    def _job_failed(self, event) -> None:
        # Called on the job's thread; APScheduler keeps the job and the scheduler running.
        self.reactor.callFromThread(log.error, "scheduler: job {job} failed: {error}\n{traceback}",
                                    job=event.job_id, error=repr(event.exception),
                                    traceback=event.traceback or "")

    def _scheduled(self) -> None:
        self.run_job(datetime.datetime.fromtimestamp(self.clock.seconds(), CST))

    def run_job(self, now: datetime.datetime) -> dict[str, list[str]]:
        """The job, at *now*: mark for retry, journal, then wake each bank with orders marked.

        Blocking (database); runs on a thread. Returns the orders marked, by bank.
        """
        fence = self.fence
        epoch = fence.epoch if fence is not None else None
        with self.engine.begin() as conn:
            if fence is not None:
                fence.check_in(conn, epoch)     # a deposed daemon's job writes nothing
            marked = self.mark_for_retry(conn, now)
        for bank_id in marked:
            self.reactor.callFromThread(self.wake, bank_id)
        return marked

    def mark_for_retry(self, conn: Connection, now: datetime.datetime) -> dict[str, list[str]]:
        """In one transaction: retry_requested = 1 for every DISPATCHED order of our banks with
        CORRECTED items outside a live batch, each journaled as a "scheduled-retry" event."""
        at = iso(now.timestamp())
        day = now.astimezone(CST).date()
        try:
            working = self.calendar.is_working_day(day)
        except LookupError as e:   # CalendarGap: never guess from weekdays
            raise_alarm(conn, at, "warning", "calendar-gap", f"scheduled retry skipped: {e}")
            return {}
        if not working:
            log.info("scheduler: {day} is not a working day; no scheduled retry", day=day.isoformat())
            return {}
        rows = orders.with_corrected_waiting(conn, self.bank_ids)
        marked: dict[str, list[str]] = {}
        # Every order row first, then the journal (docs/lock-order.md: rows, then the journal
        # head): journaling between two orders would hold the head while taking the next row,
        # a cycle with order.retry on that order.
        for r in rows:
            orders.request_retry(conn, r.order_no)
        for r in rows:
            payload = json.dumps({"order_no": r.order_no, "bank_id": r.bank_id, "items": r.n,
                                  "amount": int(r.amount or 0), "at": at}, ensure_ascii=False).encode()
            # One entry per order, so `journal show --order` finds why its RETRY batch went out.
            self.journal.append(conn, Entry(
                "event", "scheduler", "daemon", "scheduled-retry",
                f"scheduled retry {now.astimezone(CST):%H:%M}: order {r.order_no}: {r.n} corrected items, "
                f"{int(r.amount or 0)} fen", payload=payload, order_no=r.order_no), at)
            marked.setdefault(r.bank_id, []).append(r.order_no)
        if marked:
            log.info("scheduler: scheduled retry of {orders}",
                     orders=", ".join(o for v in marked.values() for o in v))
        return marked
