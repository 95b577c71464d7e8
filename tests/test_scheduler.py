"""The scheduled retry times: which orders the job marks, on which days, and a job that fails.

The job is called with an injected `now` (never the wall clock); the calendar is the
shipped conf/calendar (2026: 10-01 a holiday, 09-20 a Sunday worked in its place).
The scheduler itself is the real APScheduler TwistedScheduler on the test's reactor.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from gateway import config as configmod
from gateway import db as dbmod
from gateway.journal import Journal
from gateway.models import journal as journal_t
from gateway.models import orders
from gateway.rules import CST
from gateway.scheduler import RetryScheduler
from gateway.workdays import load_calendar

CALENDAR = load_calendar(Path(__file__).resolve().parent.parent / "conf" / "calendar")
BANK = "cnbank-demo"
AT = "2026-09-01T09:00:00+08:00"


def cst(y, m, d, hh=10, mm=0) -> datetime.datetime:
    return datetime.datetime(y, m, d, hh, mm, tzinfo=CST)


def _order(conn, order_no, state, bank_id=BANK):
    conn.execute(sa.insert(orders).values(
        order_no=order_no, bank_id=bank_id, budget_unit="长丰县农业农村局", project_code="NY2026-01",
        project_name="2026年耕地地力保护补贴", project_short="耕地补贴", region="340121",
        total_amount=10000, total_count=2, funded_at=AT, state=state, results_pending=0,
        retry_requested=0, created_at=AT, updated_at=AT))


def _item(conn, order_no, seq, status, batch_no):
    conn.execute(sa.text(
        "INSERT INTO items (order_no, seq, name, id_number, account_no, account_bank, amount, remark, "
        "status, batch_no) VALUES (:o, :s, '张三', '340121199001011234', '6228480000000123457', "
        "'示范银行', 5000, '', :st, :b)"), {"o": order_no, "s": seq, "st": status, "b": batch_no})


def _batch(conn, batch_no, order_no, state):
    conn.execute(sa.text(
        "INSERT INTO batches (batch_no, order_no, bank_id, kind, seq, state, total_count, total_amount, "
        "attempts, created_at, updated_at, overdue_alarmed, bank_overdue_alarmed) "
        "VALUES (:b, :o, :bank, 'PAY', 1, :st, 2, 10000, 0, :at, :at, 0, 0)"),
        {"b": batch_no, "o": order_no, "bank": BANK, "st": state, "at": AT})


def _seed(engine):
    """Orders that must and must not be marked for a scheduled retry."""
    with engine.begin() as c:
        # Eligible: DISPATCHED, a CORRECTED item whose batch (the one it failed in) is DONE.
        _order(c, "FS-ELIGIBLE", "DISPATCHED")
        _batch(c, "FS-ELIGIBLE-P01", "FS-ELIGIBLE", "DONE")
        _item(c, "FS-ELIGIBLE", 1, "CORRECTED", "FS-ELIGIBLE-P01")
        _item(c, "FS-ELIGIBLE", 2, "PAID", "FS-ELIGIBLE-P01")
        # Its corrected item is in a live batch already.
        _order(c, "FS-INFLIGHT", "DISPATCHED")
        _batch(c, "FS-INFLIGHT-R02", "FS-INFLIGHT", "ACCEPTED")
        _item(c, "FS-INFLIGHT", 1, "CORRECTED", "FS-INFLIGHT-R02")
        # Failed but not corrected.
        _order(c, "FS-FAILED", "DISPATCHED")
        _batch(c, "FS-FAILED-P01", "FS-FAILED", "DONE")
        _item(c, "FS-FAILED", 1, "FAILED", "FS-FAILED-P01")
        # Not DISPATCHED.
        _order(c, "FS-SETTLED", "SETTLED")
        _batch(c, "FS-SETTLED-P01", "FS-SETTLED", "DONE")
        _item(c, "FS-SETTLED", 1, "CORRECTED", "FS-SETTLED-P01")
        # A bank this daemon does not serve.
        _order(c, "FS-OTHERBANK", "DISPATCHED", bank_id="otherbank")
        _item(c, "FS-OTHERBANK", 1, "CORRECTED", None)


def _requested(engine) -> dict[str, int]:
    with engine.connect() as c:
        return dict(c.execute(sa.select(orders.c.order_no, orders.c.retry_requested)).all())


def _journaled(engine) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.select(journal_t.c.tx_code, journal_t.c.order_no,
                                                      journal_t.c.direction)
                                            .where(journal_t.c.tx_code == "scheduled-retry"))]


@pytest.fixture
def migrated(db_url):
    dbmod.upgrade(db_url)
    engine = dbmod.make_engine(db_url)
    yield engine
    engine.dispose()


def _scheduler(reactor, engine, tmp_path, woken, times=("10:00", "15:30"), clock=None):
    return RetryScheduler(reactor, engine, Journal(str(tmp_path / "journal")), CALENDAR, times, [BANK],
                          woken.append, clock=clock)


@pytest_twisted.ensureDeferred
async def test_job_marks_exactly_the_eligible_orders_journals_and_wakes_their_bank(reactor, tmp_path, migrated):
    """On a working day the job sets retry_requested for the DISPATCHED order with corrected
    items outside a live batch and for no other, journals one "scheduled-retry" event naming
    it, and wakes its bank's flow."""
    _seed(migrated)
    woken: list[str] = []
    rs = _scheduler(reactor, migrated, tmp_path, woken)
    marked = await deferToThread(rs.run_job, cst(2026, 9, 28))      # a Monday
    assert marked == {BANK: ["FS-ELIGIBLE"]}
    assert _requested(migrated) == {"FS-ELIGIBLE": 1, "FS-INFLIGHT": 0, "FS-FAILED": 0, "FS-SETTLED": 0,
                                    "FS-OTHERBANK": 0}
    assert _journaled(migrated) == [("scheduled-retry", "FS-ELIGIBLE", "event")]
    assert woken == [BANK]


@pytest_twisted.ensureDeferred
async def test_job_does_nothing_on_a_day_off_and_runs_on_a_make_up_working_day(reactor, tmp_path, migrated):
    """National Day (2026-10-01, a Thursday) and a plain Saturday are skipped: nothing marked,
    journaled or woken. Sunday 2026-09-20 is a make-up working day (调休上班): the job runs."""
    _seed(migrated)
    woken: list[str] = []
    rs = _scheduler(reactor, migrated, tmp_path, woken)
    assert CALENDAR.is_working_day(datetime.date(2026, 9, 20)) and datetime.date(2026, 9, 20).weekday() == 6
    for day_off in (cst(2026, 10, 1), cst(2026, 9, 19, 15, 30)):
        assert await deferToThread(rs.run_job, day_off) == {}
    assert _requested(migrated)["FS-ELIGIBLE"] == 0 and _journaled(migrated) == [] and woken == []
    assert await deferToThread(rs.run_job, cst(2026, 9, 20)) == {BANK: ["FS-ELIGIBLE"]}
    assert _requested(migrated)["FS-ELIGIBLE"] == 1 and woken == [BANK]


@pytest_twisted.ensureDeferred
async def test_job_on_a_date_beyond_the_calendar_alarms_and_marks_nothing(reactor, tmp_path, migrated):
    """A date in a year without a calendar file is never guessed from weekdays: the job
    raises a calendar-gap alarm and marks nothing."""
    _seed(migrated)
    woken: list[str] = []
    rs = _scheduler(reactor, migrated, tmp_path, woken)
    assert await deferToThread(rs.run_job, cst(2031, 3, 3)) == {}
    with migrated.connect() as c:
        kinds = list(c.execute(sa.text("SELECT kind FROM alarms")).scalars())
    assert kinds == ["calendar-gap"]
    assert _requested(migrated)["FS-ELIGIBLE"] == 0 and woken == []


def test_scheduler_runs_one_job_per_time_in_china_time_and_is_rebuilt_each_start(reactor, tmp_path):
    """Each start builds a fresh scheduler with one job per configured time (Asia/Shanghai,
    coalescing, an hour's grace); shutdown leaves no next run; no times, no scheduler."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/x.db")
    rs = _scheduler(reactor, engine, tmp_path, [])
    rs.start()
    try:
        first = rs.scheduler
        nxt = rs.next_run_times()
        assert len(nxt) == 2
        times = sorted(datetime.datetime.fromisoformat(t).strftime("%H:%M%z") for t in nxt)
        assert times == ["10:00+0800", "15:30+0800"]
        job = first.get_job("retry-10:00")
        assert job.coalesce is True and job.misfire_grace_time == 3600 and job.max_instances == 1
        rs.shutdown()
        assert rs.next_run_times() == [] and not rs.running
        rs.start()
        assert rs.scheduler is not first and len(rs.next_run_times()) == 2
    finally:
        rs.shutdown()
        engine.dispose()
    empty = _scheduler(reactor, engine, tmp_path, [], times=())
    empty.start()
    assert not empty.running and empty.next_run_times() == []


@pytest_twisted.ensureDeferred
async def test_a_job_that_raises_is_logged_and_the_scheduler_keeps_running(reactor, tmp_path):
    """The job fails (its database has no schema yet): the failure is logged, the scheduler
    and the job stay scheduled, and once the database is migrated the same job runs and marks
    the eligible order."""
    url = f"sqlite:///{tmp_path}/late.db"
    engine = dbmod.make_engine(url)
    clock = task.Clock()
    clock.advance(cst(2026, 9, 28).timestamp())                 # the job's `now`: a Monday
    woken: list[str] = []
    rs = _scheduler(reactor, engine, tmp_path, woken, times=("10:00",), clock=clock)
    failures: list[dict] = []

    def observe(event):
        if "scheduler: job" in event.get("log_format", ""):
            failures.append(event)
    globalLogPublisher.addObserver(observe)
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
    outcomes: list[defer.Deferred] = []

    def run_now() -> defer.Deferred:
        d = defer.Deferred()
        outcomes.append(d)
        job = rs.scheduler.get_job("retry-10:00")
        job.modify(next_run_time=datetime.datetime.now(CST))
        return d.addTimeout(30, reactor)

    def on_event(ev):
        reactor.callFromThread(lambda: outcomes and not outcomes[-1].called
                               and outcomes[-1].callback(ev.code))
    rs.start()
    try:
        rs.scheduler.add_listener(on_event, EVENT_JOB_ERROR | EVENT_JOB_EXECUTED)
        assert await run_now() == EVENT_JOB_ERROR
        await task.deferLater(reactor, 0, lambda: None)   # the log call queued from the job's thread
        assert len(failures) == 1 and "retry-10:00" in failures[0]["job"]
        assert rs.running and rs.scheduler.get_job("retry-10:00").next_run_time > datetime.datetime.now(CST)

        dbmod.upgrade(url)
        _seed(engine)
        assert await run_now() == EVENT_JOB_EXECUTED
        assert _requested(engine)["FS-ELIGIBLE"] == 1
        await task.deferLater(reactor, 0, lambda: None)
        assert woken == [BANK] and len(failures) == 1
    finally:
        globalLogPublisher.removeObserver(observe)
        rs.shutdown()
        engine.dispose()


def test_config_schedule_and_ha(tmp_path):
    """[schedule] retry_times and [ha] retry_s are read and validated: absent sections give
    no retry times and 2 s; bad times, duplicates, a zero period and unknown keys are each
    reported naming the key; retry times without a calendar are refused."""
    from simulators import harness
    p = harness.Paths(tmp_path / "inst")
    cfg_path = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3))
    text = cfg_path.read_text()

    def load(extra: str, calendar: bool = True):
        body = text if calendar else text.split("\n[calendar]")[0]
        cfg_path.write_text(body + "\n" + extra)
        try:
            return configmod.load(cfg_path), []
        except configmod.ConfigError as e:
            return None, e.errors

    cfg, errs = load("")
    assert errs == [] and cfg.retry_times == () and cfg.ha_retry_s == 2.0
    cfg, errs = load('[schedule]\nretry_times = ["15:30", "10:00"]\n[ha]\nretry_s = 2\n')
    assert errs == [] and cfg.retry_times == ("10:00", "15:30") and cfg.ha_retry_s == 2.0
    _, errs = load('[schedule]\nretry_times = ["10:00", "24:00", "9:30", 10]\n[ha]\nretry_s = 0\n')
    assert len(errs) == 2, errs
    assert "schedule.retry_times: must be a list of times" in errs[0] and "item 2 '24:00'" in errs[0] \
        and "item 3 '9:30'" in errs[0] and "item 4 10" in errs[0] and str(cfg_path) in errs[0], errs
    assert "ha.retry_s: must be greater than 0" in errs[1], errs
    _, errs = load('[schedule]\nretry_times = ["10:00", "10:00"]\n')
    assert len(errs) == 1 and "schedule.retry_times: lists 10:00 more than once" in errs[0], errs
    _, errs = load('[schedule]\nretry_times = ["10:00"]\n', calendar=False)
    assert len(errs) == 1 and "schedule.retry_times: needs [calendar] dir" in errs[0], errs
    _, errs = load('[schedule]\nretry_time = ["10:00"]\n[ha]\nretry = 1\n')
    assert len(errs) == 2 and "schedule.retry_time: unknown key" in errs[0] and "ha.retry: unknown key" in errs[1]


@pytest_twisted.ensureDeferred
async def test_job_marks_every_order_before_it_takes_the_journal_head(reactor, tmp_path, migrated):
    """docs/lock-order.md: rows, then the journal head. With two eligible orders, no order row is
    updated after the first journal append (marking the second order while holding the head is a
    lock cycle with order.retry on that order)."""
    _seed(migrated)
    with migrated.begin() as c:
        _order(c, "FS-ELIGIBLE2", "DISPATCHED")
        _batch(c, "FS-ELIGIBLE2-P01", "FS-ELIGIBLE2", "DONE")
        _item(c, "FS-ELIGIBLE2", 1, "CORRECTED", "FS-ELIGIBLE2-P01")
    seen: list[str] = []

    def statement(conn, cursor, sql, params, context, executemany):
        low = " ".join(sql.split()).lower()
        if low.startswith("update orders"):
            seen.append("order")
        elif low.startswith("insert into journal ") or low.startswith("insert into journal("):
            seen.append("journal")
    sa.event.listen(migrated, "before_cursor_execute", statement)
    try:
        marked = await deferToThread(_scheduler(reactor, migrated, tmp_path, []).run_job, cst(2026, 9, 28))
    finally:
        sa.event.remove(migrated, "before_cursor_execute", statement)
    assert sorted(marked[BANK]) == ["FS-ELIGIBLE", "FS-ELIGIBLE2"]
    assert seen.count("order") == 2 and seen.count("journal") == 2, seen
    assert seen.index("journal") > max(i for i, s in enumerate(seen) if s == "order"), seen
