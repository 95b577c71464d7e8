"""The refund step's rules (gateway/refund_flow.py), each against a real database.

The bank is a script of verified replies and status answers (what an adapter hands the
flow after it has checked the bank's signature): the step is driven through every branch
in a second, so that a mutation of a rule is caught fast (tools/mutate.py). The real
banks, over the wire, pay and refund in tests/test_rules_flow.py and
tests/test_e2e_correction.py, where the bank's ledger proves what was returned.

Rules: domain.md rule 3 (after an unknown outcome RQ01 is asked first; only "unknown to
the bank" lets RF01 go again), rule 1 (a refund is applied whole, for the items it holds,
or not at all; the bank's amount must be ours), a refused or rejected refund puts its
items back to FAILED, REFUNDED only on the bank's DONE, and one alarm per episode.
"""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest
import pytest_twisted
from sqlalchemy import func, insert, select, update
from twisted.internet import defer, task

from adapters.interface import RefundStatus, Reply
from gateway import db as dbmod
from gateway.flowctx import FlowContext
from gateway.models import (ItemStatus, OrderState, RefundState, alarms, items, orders, refund_items,
                            refunds)
from gateway.refund_flow import RefundSteps
from gateway.rules import ConservationError

ORDER, BANK, BATCH, REFUND = "FS3401212026110007", "cnbank", "FS3401212026110007-P01", "RF-0001"
AT = "2026-11-20T09:00:00+08:00"
N = 4           # items of the order: 1..2 PAID, 3..4 FAILED and asked back
POLL = 10       # the bank's status_poll_s


class ScriptedBank:
    """An adapter whose verified replies are given by the test, one per call; records the calls."""

    def __init__(self):
        self.replies: list = []
        self.calls: list[str] = []

    def _next(self, what: str):
        self.calls.append(what)
        assert self.replies, f"the step asked the bank ({what}) when the test expected it not to"
        return defer.succeed(self.replies.pop(0))

    def send_refund(self, r, lines, recorder, mark):  # noqa: ANN001
        assert [x["seq"] for x in lines] == [3, 4]
        return recorder.db.run(mark).addCallback(lambda _: None).addCallback(
            lambda _: self._next("RF01"))

    def refund_status(self, r, recorder):  # noqa: ANN001
        return self._next("RQ01")


@pytest.fixture
def env(reactor, tmp_path):
    url = f"sqlite:///{tmp_path}/gw.db"
    dbmod.upgrade(url)
    database = dbmod.Database(reactor, dbmod.make_engine(url))
    database.start()
    clock = task.Clock()
    clock.advance(datetime.datetime.fromisoformat(AT).timestamp())
    bank = ScriptedBank()
    ctx = FlowContext(clock, SimpleNamespace(), SimpleNamespace(bank_id=BANK, status_poll_s=POLL), database)
    steps = RefundSteps(ctx, bank, SimpleNamespace(db=database))
    with database.engine.begin() as c:
        c.execute(insert(orders).values(
            order_no=ORDER, bank_id=BANK, budget_unit="长丰县农业农村局", project_code="NY2026-01",
            project_name="2026年耕地地力保护补贴", project_short="耕地补贴", region="340121",
            total_amount=100 * N, total_count=N, funded_at=AT, state=OrderState.DISPATCHED,
            results_pending=0, retry_requested=0, created_at=AT, updated_at=AT))
        c.execute(insert(items), [
            {"order_no": ORDER, "seq": s, "name": "张三", "id_number": "110101199003078515",
             "account_no": f"62220212345678{s:05d}", "account_bank": "", "amount": 100, "remark": "",
             "status": ItemStatus.PAID if s <= 2 else ItemStatus.REFUND_PENDING, "batch_no": BATCH,
             "reason_code": None if s <= 2 else "R001", "reason_text": "", "bank_serial": None,
             "result_at": AT, "pushed": None, "orig_batch_no": None} for s in range(1, N + 1)])
        c.execute(insert(refunds).values(
            refund_no=REFUND, order_no=ORDER, bank_id=BANK, state=RefundState.NEW, total_count=2,
            total_amount=200, reason="账户已销户", approved_by="财务科 王芳", caller="core", attempts=0,
            failures=0, created_at=AT, updated_at=AT))
        c.execute(insert(refund_items), [{"refund_no": REFUND, "seq": s, "order_no": ORDER,
                                          "batch_no": BATCH, "amount": 100} for s in (3, 4)])
    yield SimpleNamespace(db=database, clock=clock, bank=bank, steps=steps)
    database.stop()


def _q(env, stmt):
    with env.db.engine.connect() as c:
        return c.execute(stmt).all()


def refund(env) -> dict:
    with env.db.engine.connect() as c:
        return dict(c.execute(select(refunds).where(refunds.c.refund_no == REFUND)).mappings().one())


def statuses(env) -> dict:
    return dict(_q(env, select(items.c.seq, items.c.status).order_by(items.c.seq)))


def open_alarms(env) -> list[tuple[str, int]]:
    return _q(env, select(alarms.c.kind, alarms.c.count).where(alarms.c.cleared_at.is_(None))
              .order_by(alarms.c.id))


async def advance(env, *replies, wait: bool = True) -> None:
    """One pass of the step, with the bank's next answers; then past any backoff it set."""
    env.bank.replies.extend(replies)
    await env.steps.advance(refund(env))
    assert env.bank.replies == [], "the step did not ask the bank as often as expected"
    if wait:
        env.clock.advance(3600)


@pytest_twisted.ensureDeferred
async def test_a_refund_accepted_then_done_returns_exactly_its_items_and_settles_the_order(env):
    await advance(env, Reply("accepted"))
    assert refund(env)["state"] == RefundState.ACCEPTED
    await advance(env, RefundStatus("pending"))
    assert statuses(env) == {1: "PAID", 2: "PAID", 3: "REFUND_PENDING", 4: "REFUND_PENDING"}
    await advance(env, RefundStatus("done", serial="RS-77", amount=200, returned_to="payer"))
    r = refund(env)
    assert (r["state"], r["refund_serial"], r["refund_amount"]) == (RefundState.DONE, "RS-77", 200)
    assert statuses(env) == {1: "PAID", 2: "PAID", 3: "REFUNDED", 4: "REFUNDED"}
    assert _q(env, select(items.c.bank_serial).where(items.c.seq == 3)) == [("RS-77",)]
    assert _q(env, select(orders.c.state, orders.c.results_pending)) == [(OrderState.SETTLED, 1)]
    assert env.bank.calls == ["RF01", "RQ01", "RQ01"]
    assert open_alarms(env) == []


@pytest_twisted.ensureDeferred
async def test_after_a_lost_reply_the_bank_is_asked_first_and_rf01_goes_again_only_if_it_never_got_it(env):
    """Rule 3: RF01 journaled as sent and no verified reply: the refund stays SUBMITTING, the
    next step asks RQ01; "unknown to the bank" makes it NEW (sent again), any other answer
    shows the bank took it (ACCEPTED) and RF01 does not go again."""
    await advance(env, None)
    assert refund(env)["state"] == RefundState.SUBMITTING
    await advance(env, RefundStatus("unknown_to_bank", "E007"), wait=False)
    assert (refund(env)["state"], refund(env)["next_check_at"]) == (RefundState.NEW, None)   # at once
    await advance(env, None)
    await advance(env, RefundStatus("pending"))
    assert refund(env)["state"] == RefundState.ACCEPTED
    assert env.bank.calls == ["RF01", "RQ01", "RF01", "RQ01"]
    assert refund(env)["attempts"] == 2


@pytest_twisted.ensureDeferred
async def test_a_refund_the_bank_forgets_after_accepting_it_is_alarmed_and_never_sent_again(env):
    await advance(env, Reply("accepted"))
    await advance(env, RefundStatus("unknown_to_bank", "E007"))
    await advance(env, RefundStatus("unknown_to_bank", "E007"))
    assert refund(env)["state"] == RefundState.ACCEPTED
    assert env.bank.calls == ["RF01", "RQ01", "RQ01"]
    assert open_alarms(env) == [("refund-unknown", 2)]


@pytest.mark.parametrize("how", ["refused", "rejected"])
@pytest_twisted.ensureDeferred
async def test_a_refund_refused_or_rejected_puts_its_items_back_to_failed(env, how):
    if how == "refused":
        await advance(env, Reply("refused", "E003", "账户冻结"))
        want = RefundState.REFUSED
    else:
        await advance(env, Reply("accepted"))
        await advance(env, RefundStatus("rejected", "R021", "原账户已销户"))
        want = RefundState.RJCT
    assert refund(env)["state"] == want
    assert statuses(env) == {1: "PAID", 2: "PAID", 3: "FAILED", 4: "FAILED"}
    assert open_alarms(env) == [("refund-refused", 1)]


@pytest_twisted.ensureDeferred
async def test_a_refund_refused_for_now_waits_its_backoff_and_goes_again(env):
    env.bank.replies.append(Reply("retry", "E009", "时间偏差"))
    await env.steps.advance(refund(env))
    r = refund(env)
    assert (r["state"], r["failures"]) == (RefundState.NEW, 1)
    assert r["next_check_at"] > env.clock.seconds()
    await env.steps.advance(r)                   # before the backoff: the bank is not called
    assert env.bank.calls == ["RF01"]
    env.clock.advance(3600)
    with env.db.engine.begin() as c:   # another refund of this bank, its RF01 out, outcome unknown
        c.execute(insert(refunds).values(
            refund_no="RF-0002", order_no=ORDER, bank_id=BANK, state=RefundState.SUBMITTING,
            total_count=1, total_amount=100, reason="r", approved_by="a", caller="core", attempts=1,
            failures=0, created_at=AT, updated_at=AT))
    first_wait = r["next_check_at"] - env.clock.seconds() + 3600
    env.bank.replies.append(Reply("retry", "E009", "时间偏差"))
    await env.steps.advance(refund(env))
    r = refund(env)
    assert (r["state"], r["failures"]) == (RefundState.NEW, 2)     # the backoff counts on
    assert r["next_check_at"] - env.clock.seconds() > first_wait
    with env.db.engine.connect() as c:   # the retry put back this refund only
        assert c.execute(select(refunds.c.state).where(refunds.c.refund_no == "RF-0002")).scalar() \
            == RefundState.SUBMITTING
    env.clock.advance(3600)
    await advance(env, Reply("accepted"))
    assert env.bank.calls == ["RF01", "RF01", "RF01"]


@pytest_twisted.ensureDeferred
async def test_a_done_with_another_amount_is_alarmed_and_not_applied(env):
    await advance(env, Reply("accepted"))
    await advance(env, RefundStatus("done", serial="RS-78", amount=199, returned_to="payer"))
    assert refund(env)["state"] == RefundState.ACCEPTED
    assert statuses(env)[3] == "REFUND_PENDING"
    assert open_alarms(env) == [("refund-amount-mismatch", 1)]


@pytest_twisted.ensureDeferred
async def test_a_done_for_items_no_longer_waiting_changes_nothing(env):
    """Rule 1: the refund holds two items; if only one is still REFUND_PENDING the bank's DONE
    is refused whole (ConservationError, the transaction rolled back)."""
    await advance(env, Reply("accepted"))
    with env.db.engine.begin() as c:
        c.execute(update(items).where(items.c.seq == 4).values(status=ItemStatus.FAILED))
    with pytest.raises(ConservationError):
        await advance(env, RefundStatus("done", serial="RS-79", amount=200, returned_to="payer"))
    assert refund(env)["state"] == RefundState.ACCEPTED
    assert statuses(env) == {1: "PAID", 2: "PAID", 3: "REFUND_PENDING", 4: "FAILED"}


@pytest_twisted.ensureDeferred
async def test_a_refused_status_question_is_one_alarm_cleared_by_the_next_answer(env):
    await advance(env, Reply("accepted"))
    await advance(env, RefundStatus("unanswered", "E005", "系统繁忙"))
    await advance(env, RefundStatus("unanswered", "E005", "系统繁忙"))
    assert open_alarms(env) == [("refund-status-refused", 2)]
    assert refund(env)["failures"] == 2
    await advance(env, RefundStatus("pending"))
    assert open_alarms(env) == []
    assert refund(env)["failures"] == 0
    # A refusal the adapter alarms itself (its bank-refusing episode) is not alarmed here.
    await advance(env, RefundStatus("unanswered", "E009", "时间偏差", alarmed=True))
    assert open_alarms(env) == []
    assert _q(env, select(func.count()).select_from(alarms)) == [(1,)]


@pytest_twisted.ensureDeferred
async def test_the_refund_stage_is_timed_from_the_first_rf01_until_the_bank_holds_it(env):
    """gateway_stage_duration_seconds{stage="refund"} runs from the first RF01 until the bank is
    known to hold the refund: across a lost reply, an E007 that lets RF01 go again and the RQ01
    that finds it accepted, one observation of the three hours that passed (the metrics read the
    test's clock); the stage is not observed again by later status answers."""
    from gateway.metrics import Metrics
    m = Metrics(clock=env.clock.seconds)
    env.steps.ctx.metrics = m

    def observed():
        labels = {"bank": BANK, "stage": "refund"}
        return (m.registry.get_sample_value("gateway_stage_duration_seconds_count", labels),
                m.registry.get_sample_value("gateway_stage_duration_seconds_sum", labels))
    await advance(env, None)                                   # RF01's reply lost
    await advance(env, RefundStatus("unknown_to_bank", "E007"))
    await advance(env, None)                                   # RF01 again, lost again
    assert observed() == (None, None)
    await advance(env, RefundStatus("pending"))                # RQ01: the bank holds it
    assert observed() == (1.0, 3 * 3600.0)
    await advance(env, RefundStatus("done", serial="RS-77", amount=200, returned_to="payer"))
    assert observed() == (1.0, 3 * 3600.0)


def test_a_banks_flow_takes_only_its_own_live_refunds(env):
    """Another bank's refund (same order number space, NEW) is not this bank's to send."""
    with env.db.engine.begin() as c:
        c.execute(insert(refunds).values(
            refund_no="RF-OTHER", order_no=ORDER, bank_id="iso-other", state=RefundState.NEW,
            total_count=1, total_amount=100, reason="r", approved_by="a", caller="core", attempts=0,
            failures=0, created_at=AT, updated_at=AT))
        c.execute(insert(refunds).values(
            refund_no="RF-DONE", order_no=ORDER, bank_id=BANK, state=RefundState.DONE,
            total_count=1, total_amount=100, reason="r", approved_by="a", caller="core", attempts=0,
            failures=0, created_at=AT, updated_at=AT))
        live = env.steps.live(c)
    assert [r["refund_no"] for r in live] == [REFUND]


def _other_pending(env) -> None:
    """Seq 3 of another order, and seq 4... of this order in another refund: both REFUND_PENDING,
    neither this refund's to settle."""
    with env.db.engine.begin() as c:
        c.execute(insert(orders).values(
            order_no="FS-OTHER", bank_id=BANK, budget_unit="u", project_code="p", project_name="n",
            project_short="s", region="340121", total_amount=300, total_count=3, funded_at=AT,
            state=OrderState.DISPATCHED, results_pending=0, retry_requested=0, created_at=AT, updated_at=AT))
        c.execute(insert(items), [
            {"order_no": "FS-OTHER", "seq": s, "name": "李四", "id_number": "110101199003078515",
             "account_no": f"62220299999999{s:05d}", "account_bank": "", "amount": 100, "remark": "",
             "status": ItemStatus.REFUND_PENDING, "batch_no": "FS-OTHER-P01", "reason_code": "R001",
             "reason_text": "", "bank_serial": None, "result_at": AT, "pushed": None, "orig_batch_no": None}
            for s in (1, 2, 3)])
        c.execute(update(items).where(items.c.order_no == ORDER, items.c.seq == 2)
                  .values(status=ItemStatus.REFUND_PENDING))
        c.execute(update(orders).where(orders.c.order_no == ORDER).values(total_count=N))


def other_statuses(env) -> dict:
    return dict(_q(env, select(items.c.seq, items.c.status).where(items.c.order_no == "FS-OTHER")))


@pytest.mark.parametrize("end", ["done", "rejected"])
@pytest_twisted.ensureDeferred
async def test_a_refund_settles_exactly_its_own_items(env, end):
    """DONE makes REFUNDED, and RJCT makes FAILED, only this refund's items of this order: seq 3 of
    another order and seq 2 of this order (waiting for another refund) stay REFUND_PENDING."""
    _other_pending(env)
    await advance(env, Reply("accepted"))
    if end == "done":
        await advance(env, RefundStatus("done", serial="RS-80", amount=200, returned_to="payer"))
        want = "REFUNDED"
    else:
        await advance(env, RefundStatus("rejected", "R021", "原账户已销户"))
        want = "FAILED"
        assert refund(env)["reject_msg"] == "原账户已销户"
    assert statuses(env) == {1: "PAID", 2: "REFUND_PENDING", 3: want, 4: want}
    assert other_statuses(env) == {1: "REFUND_PENDING", 2: "REFUND_PENDING", 3: "REFUND_PENDING"}


@pytest_twisted.ensureDeferred
async def test_each_answer_sets_when_the_bank_is_asked_next(env):
    """No verified answer, or a refusal, or a forgotten refund: asked again after the doubling
    backoff (20 s, then 40 s for a 10 s poll), the failures counted; a good answer resets the
    count and asks again at the poll interval."""
    await advance(env, Reply("accepted"))
    now = env.clock.seconds()
    await advance(env, None, wait=False)                      # RQ01 without a verified answer
    r = refund(env)
    assert (r["state"], r["failures"], r["next_check_at"]) == (RefundState.ACCEPTED, 1, int(now + 2 * POLL))
    env.clock.advance(3600)
    now = env.clock.seconds()
    await advance(env, RefundStatus("unanswered", "E005", "系统繁忙"), wait=False)
    r = refund(env)
    assert (r["failures"], r["next_check_at"]) == (2, int(now + 4 * POLL))
    env.clock.advance(3600)
    now = env.clock.seconds()
    await advance(env, RefundStatus("pending"), wait=False)
    r = refund(env)
    assert (r["failures"], r["next_check_at"]) == (0, int(now + POLL))
    env.clock.advance(3600)
    now = env.clock.seconds()
    await advance(env, RefundStatus("unknown_to_bank", "E007"), wait=False)
    r = refund(env)
    assert (r["state"], r["failures"], r["next_check_at"]) == (RefundState.ACCEPTED, 1, int(now + 2 * POLL))
