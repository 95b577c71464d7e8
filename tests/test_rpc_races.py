"""RPC commands racing each other and the flows, with real concurrency on SQLite and PostgreSQL.

Each race starts two calls on two database threads while a third connection (the
"gate") holds what both would need next: on PostgreSQL the journal head's row lock,
on SQLite the database's write lock. The gate is released only once both calls are
waiting (PostgreSQL: two backends of this database wait on a lock; SQLite: both
threads have issued a statement that writes), so both have read what they decide
on before either can commit: the interleaving that lost corrections before the
fix, made certain instead of left to chance. No sleeps: the waits poll the server
and are bounded.
"""

from __future__ import annotations

import datetime
import sqlite3
import threading
from types import SimpleNamespace

import pytest
import pytest_twisted
from sqlalchemy import event, func, insert, select, text
from twisted.internet import defer, task

from adapters.core_interface import Exchange
from gateway import db as dbmod
from gateway.commands import Commands
from gateway.core_push import CorePushSteps
from gateway.flowctx import FlowContext
from gateway.journal import Entry, Journal
from gateway.models import (batches, corrections, disputes, items, journal, orders, refund_items,
                            refunds)
from gateway.rpc_api import WRONG_STATE, Caller, RpcError

ORDER = "FS3401212026110001"
BATCH = ORDER + "-P01"
BANK = "cnbank"
CALLER = Caller("unix", "uid=1000,gid=1000")
ID_NO = "110101199003078515"
AT = "2026-11-20T09:00:00+08:00"


def seed(conn, n: int, status: str = "FAILED") -> None:
    conn.execute(insert(orders).values(
        order_no=ORDER, bank_id=BANK, budget_unit="长丰县农业农村局", project_code="NY2026-01",
        project_name="2026年耕地地力保护补贴", project_short="耕地补贴", region="340121",
        total_amount=100 * n, total_count=n, funded_at=AT, state="DISPATCHED", results_pending=0,
        retry_requested=0, created_at=AT, updated_at=AT))
    conn.execute(insert(items), [
        {"order_no": ORDER, "seq": s, "name": "张三", "id_number": ID_NO,
         "account_no": f"62220212345678{s:05d}", "account_bank": "", "amount": 100, "remark": "",
         "status": status, "batch_no": BATCH, "reason_code": "R001", "reason_text": "account closed",
         "bank_serial": None, "result_at": AT, "pushed": None, "orig_batch_no": None}
        for s in range(1, n + 1)])
    conn.execute(insert(batches).values(
        batch_no=BATCH, order_no=ORDER, bank_id=BANK, kind="PAY", seq=1, state="DONE", total_count=n,
        total_amount=100 * n, attempts=1, created_at=AT, updated_at=AT, overdue_alarmed=0,
        bank_overdue_alarmed=0))


class Gate:
    """Holds what the racing calls need next, and lets go once both wait for it."""

    def __init__(self, engine, url: str):
        self.engine, self.url = engine, url
        self.sqlite = url.startswith("sqlite")
        self.writers: set[int] = set()
        self._lock = threading.Lock()
        if self.sqlite:
            event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE")):
            with self._lock:
                self.writers.add(threading.get_ident())

    def close(self) -> None:
        if self.sqlite:
            event.remove(self.engine, "before_cursor_execute", self._seen)

    def hold(self) -> None:
        self.writers = set()
        if self.sqlite:
            self.conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30,
                                        isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.conn = self.engine.connect()
            self.conn.begin()
            self.conn.execute(text("SELECT last_id FROM journal_head WHERE id = 1 FOR UPDATE"))

    def waiting(self) -> int:
        if self.sqlite:
            with self._lock:
                return len(self.writers)
        with self.engine.connect() as c:
            return c.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar_one()

    def release(self) -> None:
        if self.sqlite:
            self.conn.execute("ROLLBACK")
        else:
            self.conn.rollback()
        self.conn.close()


@pytest.fixture
def env(reactor, db_url, tmp_path):
    dbmod.upgrade(db_url)
    engine = dbmod.make_engine(db_url)
    database = dbmod.Database(reactor, engine, threads=3)
    database.start()
    clock = task.Clock()
    clock.advance(1_795_000_000)
    gateway = SimpleNamespace(flows={BANK: None}, tickers={}, core=None)
    commands = Commands(clock, database, Journal(str(tmp_path / "archive")), gateway)
    gate = Gate(engine, db_url)
    yield SimpleNamespace(engine=engine, db=database, commands=commands, gate=gate, reactor=reactor,
                          url=db_url)
    gate.close()
    database.stop()


async def outcome(d) -> object:
    try:
        return await d
    except Exception as e:  # noqa: BLE001 - the race reports every outcome; the test judges
        return e


async def race(env, *starts, waiting: int = 2):
    """Start each call while the gate is held; release it once *waiting* of them wait; their outcomes."""
    env.gate.hold()
    try:
        ds = [defer.ensureDeferred(outcome(start())) for start in starts]
        for _ in range(2000):
            if await env.db.run_plain(env.gate.waiting) >= waiting:
                break
            await task.deferLater(env.reactor, 0.005, lambda: None)
        else:
            raise AssertionError("the racing calls never both waited on the gate")
    finally:
        env.gate.release()
    return await defer.gatherResults(ds)


def correct(env, seq: int, account: str = "6222021234567890123"):
    return env.commands.call("item.correct", {
        "order_no": ORDER, "seq": seq, "account_no": account, "confirmed_by": "收款人本人",
        "approved_by": "李科长", "approval_ref": "NY[2026]17号"}, CALLER)


def refund(env, seqs):
    return env.commands.call("refund.request", {
        "order_no": ORDER, "seqs": seqs, "reason": "账户已销户", "approved_by": "李科长"}, CALLER)


def scalar(env, q):
    with env.engine.connect() as c:
        return c.execute(q).scalar_one()


@pytest_twisted.ensureDeferred
async def test_correction_racing_a_refund_never_records_a_correction_that_did_not_happen(env):
    """60 races of item.correct against refund.request on the same FAILED item: exactly one of the two
    is answered ok, and every recorded correction is an item that is CORRECTED (before the fix both were
    answered ok and the correction row stayed with an item that went to REFUND_PENDING)."""
    with env.engine.begin() as c:
        seed(c, 60)
    both_ok = []
    for seq in range(1, 61):
        got = await race(env, lambda seq=seq: correct(env, seq), lambda seq=seq: refund(env, [seq]))
        oks = [g for g in got if not isinstance(g, Exception)]
        refused = [g for g in got if isinstance(g, Exception)]
        if len(oks) != 1:
            both_ok.append(seq)
        assert all(isinstance(r, RpcError) and r.code == WRONG_STATE for r in refused), refused
    assert both_ok == []
    with env.engine.connect() as c:
        corrected = set(c.execute(select(items.c.seq).where(items.c.status == "CORRECTED")).scalars())
        recorded = set(c.execute(select(corrections.c.seq)).scalars())
        pending = set(c.execute(select(items.c.seq).where(items.c.status == "REFUND_PENDING")).scalars())
        refunded = set(c.execute(select(refund_items.c.seq)).scalars())
    assert recorded == corrected and refunded == pending and len(corrected | pending) == 60
    assert not corrected & pending


@pytest_twisted.ensureDeferred
async def test_concurrent_refunds_of_one_order_get_distinct_numbers(env):
    """Ten races of two refund.request calls on different items of one order: both are answered ok with
    different refund numbers (before the fix both counted the same refunds and one failed on the key)."""
    with env.engine.begin() as c:
        seed(c, 20)
    numbers = []
    for i in range(10):
        a, b = await race(env, lambda i=i: refund(env, [2 * i + 1]), lambda i=i: refund(env, [2 * i + 2]))
        assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
        numbers += [a["refund_no"], b["refund_no"]]
    assert sorted(numbers) == [f"{ORDER}-F{n:02d}" for n in range(1, 21)]
    assert scalar(env, select(func.count()).select_from(refunds)) == 20


@pytest_twisted.ensureDeferred
async def test_concurrent_disputes_of_one_batch_get_distinct_numbers(env):
    """Two batch.dispute calls on one batch at once both get a number, and not the same one."""
    with env.engine.begin() as c:
        seed(c, 4)

    def dispute(seq):
        return env.commands.call("batch.dispute", {"batch_no": BATCH, "seqs": [seq], "reason": "金额不符",
                                                   "raised_by": "王会计"}, CALLER)
    for round_ in range(3):
        a, b = await race(env, lambda: dispute(1), lambda: dispute(2))
        assert not isinstance(a, Exception) and not isinstance(b, Exception), (a, b)
        assert {a["dispute_no"], b["dispute_no"]} == {f"{BATCH}-D{2 * round_ + 1:02d}",
                                                       f"{BATCH}-D{2 * round_ + 2:02d}"}
    assert scalar(env, select(func.count()).select_from(disputes)) == 6


@pytest_twisted.ensureDeferred
async def test_concurrent_confirmations_of_one_batch_record_one(env):
    """Two batch.confirm calls at once: one is recorded, the other refused WRONG_STATE naming who
    confirmed (before the fix both were answered ok and the second overwrote the first)."""
    with env.engine.begin() as c:
        seed(c, 1)

    def confirm(who):
        return env.commands.call("batch.confirm", {"batch_no": BATCH, "confirmed_by": who}, CALLER)
    a, b = await race(env, lambda: confirm("王会计"), lambda: confirm("赵科员"))
    oks = [g for g in (a, b) if not isinstance(g, Exception)]
    refused = [g for g in (a, b) if isinstance(g, Exception)]
    assert len(oks) == 1 and len(refused) == 1 and refused[0].code == WRONG_STATE
    with env.engine.connect() as c:
        who = c.execute(select(batches.c.confirmed_by)).scalar_one()
        entries = c.execute(select(func.count()).where(journal.c.tx_code == "batch.confirm")).scalar_one()
    assert who == oks[0]["confirmed_by"] and entries == 1


@pytest_twisted.ensureDeferred
async def test_correct_many_racing_refund_all_failed_is_all_or_nothing(env):
    """item.correct_many over every failed item against refund.request all_failed: one wins whole; the
    other is refused and changed nothing (no item split between them)."""
    with env.engine.begin() as c:
        seed(c, 30)

    def many():
        return env.commands.call("item.correct_many", {
            "order_no": ORDER, "approved_by": "李科长", "approval_ref": "NY[2026]18号",
            "corrections": [{"seq": s, "account_no": f"62220299999999{s:05d}", "confirmed_by": "本人"}
                            for s in range(1, 31)]}, CALLER)
    for _ in range(5):
        got = await race(env, many, lambda: refund(env, "all_failed"))
        assert len([g for g in got if not isinstance(g, Exception)]) == 1, got
        with env.engine.connect() as c:
            states = dict(c.execute(select(items.c.status, func.count()).group_by(items.c.status)).all())
        assert states in ({"CORRECTED": 30}, {"REFUND_PENDING": 30}), states
        with env.engine.begin() as c:    # back to FAILED for the next round
            c.execute(items.update().values(status="FAILED"))
            c.execute(corrections.delete())
            c.execute(refund_items.delete())
            c.execute(refunds.delete())


# --- lock order: the RPC against the flows (issue 9) ----------------------------------------

def Pusher(env) -> CorePushSteps:  # noqa: N802 - reads as the class it builds
    """The flow's result push step (gateway/core_push.py) with a core that takes every chunk at once."""
    clock = task.Clock()
    clock.advance(datetime.datetime.fromisoformat(AT).timestamp())
    ctx = FlowContext(clock, SimpleNamespace(core=SimpleNamespace(results_chunk=1000)),
                      SimpleNamespace(bank_id=BANK), env.db)
    core = SimpleNamespace(push_results=lambda order_no, results: defer.succeed(Exchange(
        "POST", f"http://core/api/orders/{order_no}/results", b"{}", 200, b"{}")))

    async def contract_fault(e, order_no=None):  # noqa: ANN001 - never called: the core takes every chunk
        raise AssertionError(f"contract fault {e}")
    return CorePushSteps(ctx, core, env.commands.journal, contract_fault)


@pytest_twisted.ensureDeferred
async def test_a_correction_and_the_result_push_marking_the_same_item_never_deadlock(env):
    """item.correct (as on a standby daemon) racing the leader's push marking of the same FAILED item,
    20 times: both always finish. Before the fix the correction took the journal head then the item and
    the push the item then the journal head, and PostgreSQL aborted one with DeadlockDetected."""
    with env.engine.begin() as c:
        seed(c, 20)
    pusher = Pusher(env)
    failures, marked = [], 0
    for seq in range(1, 21):
        with env.engine.begin() as c:
            c.execute(items.update().where(items.c.status == "FAILED").values(pushed=None, pushed_version=None))
        got = await race(env, lambda seq=seq: correct(env, seq),
                         lambda: pusher.push_order_results(ORDER))
        failures += [(seq, g) for g in got if isinstance(g, Exception)]
        marked += scalar(env, select(func.count()).where(items.c.pushed_version.is_not(None))) > 0
    assert failures == []
    assert marked == 20   # every race really pushed (and marked) the failed items
    assert scalar(env, select(func.count()).where(items.c.status == "CORRECTED")) == 20


class RetryFlow:
    """The flow's retry-batch step (gateway/flow.py create_retry_batch and _new_batch), unchanged."""

    from gateway.flow import BankFlow as _BankFlow
    create_retry_batch = _BankFlow.create_retry_batch
    _new_batch = _BankFlow._new_batch

    def __init__(self, env):
        self.db, self.bank_id, self.journal = env.db, BANK, env.commands.journal

    def at(self) -> str:
        return AT

    def _journal(self, conn, e) -> int:  # noqa: ANN001 - as BankFlow journals
        return self.journal.append(conn, e, AT)


@pytest_twisted.ensureDeferred
async def test_order_retry_and_the_flow_building_the_retry_batch_never_deadlock(env):
    """order.retry (order row, then the journal head) racing the flow's retry batch of the same order, 10
    times: both always finish. Before the fix the flow journaled the new batch and then reset the order's
    retry flag, and PostgreSQL aborted one of the two with DeadlockDetected."""
    with env.engine.begin() as c:
        seed(c, 6)
        c.execute(items.update().where(items.c.seq <= 3).values(status="CORRECTED"))
    flow = RetryFlow(env)
    failures = []
    for i in range(10):
        with env.engine.begin() as c:
            c.execute(batches.delete().where(batches.c.batch_no != BATCH))
            c.execute(items.update().where(items.c.seq <= 3).values(batch_no=BATCH, orig_batch_no=None))
        got = await race(env, lambda: env.commands.call("order.retry", {"order_no": ORDER}, CALLER),
                         lambda: flow.create_retry_batch(ORDER))
        failures += [(i, g) for g in got if isinstance(g, Exception) and not
                     (isinstance(g, RpcError) and g.code == WRONG_STATE)]
    assert failures == []
