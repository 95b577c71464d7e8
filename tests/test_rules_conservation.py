"""Rule 1 of domain.md, conservation: funded = paid + refunded + in flight, or the change is refused.

First `check_conservation` itself on a database written by hand (each way the
items can stop adding up), then each step that calls it, driven by the real
flow on loopback, with the order's funded figures changed behind the daemon's
back so that the step's own change would leave the order unbalanced: the change
must not be written, and an operator must see it as an alarm. Removing the
check, or its call in any of these steps, makes a test here fail.
"""

from __future__ import annotations

import pytest
import pytest_twisted
import sqlalchemy as sa

from gateway.models import metadata, ItemStatus, items, orders
from gateway.rpc_api import Caller
from gateway.rules import ConservationError, check_conservation
from tests.support import in_process, spec

CALLER = Caller("unix", "uid=0,gid=0")


@pytest.fixture
def conn(db_url):
    engine = sa.create_engine(db_url)
    metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(sa.insert(orders).values(
            order_no="C1", bank_id="b", budget_unit="u", project_code="p", project_name="n",
            project_short="耕地补贴", region="340121", total_amount=600, total_count=3,
            funded_at="2026-11-02T09:30:00+08:00", state="DISPATCHED", created_at="x",
            updated_at="x", results_pending=0))
        for seq, (status, amount) in enumerate([(ItemStatus.PAID, 100), (ItemStatus.FAILED, 200),
                                                (ItemStatus.REFUNDED, 300)], 1):
            c.execute(sa.insert(items).values(
                order_no="C1", seq=seq, name="张三", id_number="11010519491231002X",
                account_no="6228480000000123457", account_bank="", amount=amount, remark="",
                status=status))
    with engine.begin() as c:
        yield c
    engine.dispose()


def test_balanced_order_passes_and_reports_count_and_amount_per_state(conn):
    """An order whose items add up to its funded count and amount passes, and the figures
    per state are the items' own."""
    assert check_conservation(conn, "C1") == {"PAID": (1, 100), "FAILED": (1, 200), "REFUNDED": (1, 300)}


@pytest.mark.parametrize("change, why", [
    (sa.update(items).where(items.c.seq == 2).values(amount=201), "a fen too many"),
    (sa.update(items).where(items.c.seq == 2).values(amount=199), "a fen missing"),
    (sa.delete(items).where(items.c.seq == 3), "an item lost"),
    (sa.update(orders).values(total_count=4), "an item too few"),
    (sa.update(items).where(items.c.seq == 1).values(status="GONE"), "a state the rule does not know"),
])
def test_any_unbalanced_order_is_refused(conn, change, why):
    """Every way the items can stop adding up to the funded figures raises ConservationError,
    naming the order ({why})."""
    conn.execute(change)
    with pytest.raises(ConservationError, match="C1"):
        check_conservation(conn, "C1")


def test_amount_moved_between_items_is_still_balanced(conn):
    """The rule is about the order's totals: a fen moved from one item to another (same count,
    same sum) passes. (Amounts per item are guarded by the batch and result checks.)"""
    conn.execute(sa.update(items).where(items.c.seq == 1).values(amount=99))
    conn.execute(sa.update(items).where(items.c.seq == 2).values(amount=201))
    assert check_conservation(conn, "C1")["PAID"] == (1, 99)


# --- each step that changes items refuses a change that leaves the order unbalanced --------------

async def _unbalance(env, order_no):
    """The order's funded total no longer matches its items (what a bug or a bad hand edit does)."""
    await env.execute("update orders set total_amount = total_amount + 1 where order_no=:o", o=order_no)


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_results_that_would_unbalance_the_order_are_refused_whole_and_alarmed(reactor, tmp_path):
    """The batch is accepted, then the order's funded total changes: applying the bank's results
    would leave the order unbalanced, so none is applied (items stay SENT, the batch is not DONE)
    and a critical alarm names the conservation failure."""
    o = "CONS0001"
    env = await in_process(reactor, tmp_path, [spec(o, 5, failures={"R001": 0.3})])
    try:
        await env.until(lambda: env.query("select 1 from batches where state='ACCEPTED'"), what="accepted")
        await _unbalance(env, o)
        await env.until(lambda: env.query("select 1 from alarms where kind='result-file-rejected'"),
                        what="results refused")
        alarm = (await env.query("select severity, message from alarms where kind='result-file-rejected'"))[0]
        assert alarm["severity"] == "critical" and "ConservationError" in alarm["message"]
        assert {r["status"] for r in await env.query("select status from items")} == {"SENT"}
        assert (await env.query("select state from batches"))[0]["state"] == "ACCEPTED"
    finally:
        await env.close()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_acceptance_that_would_unbalance_the_order_is_refused_and_alarmed(reactor, tmp_path):
    """The order's funded total changes while its batch is on the way: when the bank accepts it,
    marking the items SENT would confirm an unbalanced order, so nothing is marked and an alarm
    says why (rule 1: refused and alarmed)."""
    o = "CONS0002"
    env = await in_process(reactor, tmp_path, [spec(o, 5)])
    try:
        await env.until(lambda: env.query("select 1 from batches"), what="a batch")
        await _unbalance(env, o)
        await env.until(lambda: env.query("select 1 from alarms where kind='conservation'"),
                        what="the conservation alarm")
        assert {r["status"] for r in await env.query("select status from items")} == {"PENDING"}
        assert (await env.query("select state from orders"))[0]["state"] == "LOADED"
        for _ in range(3):
            await env.flow.tick()
        alarms = await env.query("select severity, message, cleared_at from alarms where kind='conservation'")
        assert [(a["severity"], a["cleared_at"]) for a in alarms] == [("critical", None)], alarms
        assert o in alarms[0]["message"]
        # Put right, the step goes through and the episode ends.
        await env.execute("update orders set total_amount = total_amount - 1 where order_no=:o", o=o)
        await env.until(lambda: env.query("select 1 from alarms where kind='conservation' and "
                                          "cleared_at is not null"), what="the alarm cleared")
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
    finally:
        await env.close()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_rpc_changes_that_would_unbalance_the_order_change_nothing(reactor, tmp_path):
    """item.correct and refund.request on an unbalanced order are refused: the item stays
    FAILED, no refund is recorded."""
    o = "CONS0003"
    env = await in_process(reactor, tmp_path, [spec(o, 6, failures={"R001": 0.4}, seed=3)])
    try:
        await env.until(lambda: env.query("select 1 from batches where state='DONE'"), what="DONE")
        failed = [r["seq"] for r in await env.query("select seq from items where status='FAILED'")]
        assert len(failed) >= 2
        await _unbalance(env, o)
        with pytest.raises(ConservationError):
            await env.gw.commands.call("item.correct", {
                "order_no": o, "seq": failed[0], "account_no": "6228480000000123457",
                "confirmed_by": "本人", "approved_by": "科长", "approval_ref": "A1"}, CALLER)
        with pytest.raises(ConservationError):
            await env.gw.commands.call("refund.request", {
                "order_no": o, "seqs": [failed[1]], "reason": "退回", "approved_by": "科长"}, CALLER)
        assert {r["status"] for r in await env.query(
            "select status from items where seq in (:a, :b)", a=failed[0], b=failed[1])} == {"FAILED"}
        assert not await env.query("select 1 from refunds")
        assert not await env.query("select 1 from corrections")
    finally:
        await env.close()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_a_late_return_on_an_unbalanced_order_is_refused(reactor, tmp_path):
    """A late return applied to an order that no longer balances is refused whole: the
    transaction rolls back (the item stays PAID, no return is recorded), so it is asked again
    once the order is put right."""
    from adapters.interface import LateReturn
    o = "CONS0004"
    env = await in_process(reactor, tmp_path, [spec(o, 3)])
    try:
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        b = (await env.query("select * from batches"))[0]
        it = (await env.query("select seq, amount from items order by seq"))[0]
        jid = (await env.query("select max(id) m from journal"))[0]["m"]
        await _unbalance(env, o)
        with pytest.raises(ConservationError):
            await env.db.run(env.flow.returns.apply, b,
                             [LateReturn("RTC-1", it["seq"], it["amount"], "R004", "20261201")], jid)
        assert (await env.query("select status from items where seq=:s", s=it["seq"]))[0]["status"] == "PAID"
        assert not await env.query("select 1 from late_returns")
    finally:
        await env.close()
