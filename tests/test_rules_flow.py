"""Rules 1 and 2 of domain.md where a whole-batch rejection or a late return meets items already paid.

Each test drives the real flow against the real simulators on loopback (in
process, tick by tick) into the situation where a missing check would pay an
item twice or lose a fen, and proves the outcome from the bank simulator's own
ledger (`credits`, `double_credits`, the batches it accepted), not from the
gateway's tables. Written so that removing the code that enforces the rule
makes them fail (tools/mutate.py checks that).
"""

from __future__ import annotations

from collections import Counter

import pytest
import pytest_twisted

import sqlalchemy as sa

from adapters.interface import LateReturn
from gateway.models import batches, items, late_returns
from gateway.rpc_api import Caller
from simulators import datagen
from tests.support import in_process, spec

pytestmark = [pytest.mark.loopback]
CALLER = Caller("unix", "uid=0,gid=0")
GOOD = "6228480000000123457"


def _correct(seq: int, order_no: str) -> dict:
    return {"order_no": order_no, "seq": seq, "account_no": GOOD, "confirmed_by": "收款人本人",
            "approved_by": "李科长", "approval_ref": "NY[2026]18号"}


async def _states(env, order_no):
    rows = await env.query("select seq, status, batch_no from items where order_no=:o order by seq",
                           o=order_no)
    return {r["seq"]: (r["status"], r["batch_no"]) for r in rows}


async def _eq_rows(env, sql, n):
    return len(await env.query(sql)) == n


def _credited_once(env, order_no, seqs):
    """From the bank's ledger: every seq in *seqs* credited exactly once, net of returns."""
    per = Counter(c.seq for c in env.sims.bank.credits(order_no))
    assert {s: per[s] for s in seqs} == {s: 1 for s in seqs}, per
    assert not env.sims.bank.double_credits()


@pytest_twisted.ensureDeferred
async def test_rjct_of_a_retry_batch_sends_only_its_own_items_again(reactor, tmp_path, db_url):
    """P01 pays most items and fails some; the corrected ones go out in R02, which the bank
    rejects whole (RJCT E005): only R02's items go out again (in R03, naming P01 as the batch
    they failed in), never an item P01 already paid. The bank's ledger shows R03 holding exactly
    the corrected items and every item of the order credited exactly once."""
    o = "RJRT0001"
    s = spec(o, 16, failures={"R001": 0.3}, seed=11)
    env = await in_process(reactor, tmp_path, [s], db_url=db_url)
    try:
        await env.until(lambda: env.query("select 1 from batches where state='DONE'"), what="P01 DONE")
        first = await _states(env, o)
        failed = sorted(seq for seq, (st, _) in first.items() if st == "FAILED")
        paid = sorted(seq for seq, (st, _) in first.items() if st == "PAID")
        assert failed and paid, first
        for seq in failed:
            await env.gw.commands.call("item.correct", _correct(seq, o), CALLER)
        env.sims.bank.reject_next_batch("E005")
        await env.gw.commands.call("order.retry", {"order_no": o}, CALLER)
        await env.until(lambda: env.query("select 1 from batches where batch_no=:b and state='RJCT'",
                                          b=f"{o}-R02"), what="R02 rejected whole")
        after = await _states(env, o)
        assert {seq: after[seq] for seq in failed} == {seq: ("CORRECTED", f"{o}-P01") for seq in failed}
        assert {seq: after[seq] for seq in paid} == {seq: ("PAID", f"{o}-P01") for seq in paid}
        await env.until(lambda: env.query("select 1 from batches where batch_no=:b and state='DONE'",
                                          b=f"{o}-R03"), what="R03 paid")
        r03 = env.sims.bank.batch_now(f"{o}-R03")
        assert r03["kind"] == "RETRY" and r03["total_count"] == len(failed)
        assert sorted(c.seq for c in env.sims.bank.credits(o) if c.batch_no == f"{o}-R03") == failed
        assert not [c for c in env.sims.bank.credits(o) if c.batch_no == f"{o}-R02"]
        _credited_once(env, o, range(1, s.count + 1))
        final = await _states(env, o)
        assert set(st for st, _ in final.values()) == {"PAID"}
        # A return listed under P01 for an item paid in R03 is not that batch's: not applied.
        p01 = (await env.query("select * from batches where batch_no=:b", b=f"{o}-P01"))[0]
        amt = (await env.query("select amount from items where seq=:s", s=failed[0]))[0]["amount"]
        jid = (await env.query("select max(id) m from journal"))[0]["m"]
        await env.db.run(env.flow.returns.apply, p01, [LateReturn("RTX-9", failed[0], amt, "R004",
                                                                   "20261203")], jid)
        assert (await _states(env, o))[failed[0]] == ("PAID", f"{o}-R03")
        assert await env.query("select 1 from alarms where kind='late-return-unmatched'")
        assert [r["seq"] for r in await env.query("select seq from batches order by seq")] == [1, 2, 3]
        assert (await env.query("select state from orders"))[0]["state"] == "SETTLED"
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_rjct_of_a_pay_batch_sends_every_item_again_once(reactor, tmp_path):
    """The PAY batch is rejected whole: the order goes back to LOADED and P02 carries every item,
    none left behind and none twice; the bank credits each item once, all in P02."""
    o = "RJPY0001"
    s = spec(o, 9)
    env = await in_process(reactor, tmp_path, [s])
    try:
        env.sims.bank.reject_next_batch("E005")
        await env.until(lambda: env.query("select 1 from batches where state='RJCT'"), what="RJCT")
        rows = await env.query("select status, batch_no from items")
        assert {(r["status"], r["batch_no"]) for r in rows} <= {("PENDING", None), ("PENDING", f"{o}-P02"),
                                                                 ("SENT", f"{o}-P02")}
        assert (await env.query("select count(*) n from alarms where kind='batch-rjct'"))[0]["n"] == 1
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        assert env.sims.bank.batch_now(f"{o}-P02")["total_count"] == s.count
        assert {c.batch_no for c in env.sims.bank.credits(o)} == {f"{o}-P02"}
        # nothing left to send: no empty batch is ever created (a number is never spent on nothing)
        assert await env.db.run(env.flow._new_batch, o, "RETRY", sa.and_(
            items.c.order_no == o, items.c.status == "CORRECTED")) is None
        assert len(await env.query("select 1 from batches")) == 2
        # each batch's creation is journaled with it (rule 5)
        assert [r["batch_no"] for r in await env.query(
            "select batch_no from journal where tx_code='batch-created' order by id")] == [f"{o}-P01", f"{o}-P02"]
        _credited_once(env, o, [datagen.item(s, p)["seq"] for p in range(1, s.count + 1)])
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_a_late_return_is_applied_and_its_item_paid_again_only_after_correction(reactor, tmp_path):
    """A paid item returned late must not stay PAID in the gateway (the core would be told it was
    paid while the money is back at the bank): it becomes FAILED with the return's reason, the
    order leaves SETTLED (only that order: another SETTLED order stays so), and conservation
    still holds. It is not sent again by itself: only a
    correction and a retry pay it again, and the ledger shows it credited twice and returned
    once, never credited twice net."""
    o = "LRET0001"
    s = spec(o, 6)
    other = spec("LRET0002", 2, seed=8)
    env = await in_process(reactor, tmp_path, [s, other], return_poll_s=0.1)
    try:
        await env.until(lambda: _eq_rows(env, "select 1 from orders where state='SETTLED'", 2),
                        what="both SETTLED")
        seq = datagen.item(s, 2)["seq"]
        await env.sims.bank.return_item(f"{o}-P01", seq, "R004")
        await env.until(lambda: env.query("select 1 from late_returns"), what="the return applied")
        for _ in range(4):
            await env.flow.tick()
        st = await _states(env, o)
        assert st[seq] == ("FAILED", f"{o}-P01")
        assert {r["order_no"]: r["state"] for r in await env.query("select order_no, state from orders")} \
            == {o: "DISPATCHED", "LRET0002": "SETTLED"}   # only the returned item's order reopens
        assert [b["batch_no"] for b in await env.query("select batch_no from batches where order_no=:o",
                                                       o=o)] == [f"{o}-P01"]
        applied = await env.query("select return_serial, seq, amount from late_returns")
        assert [(r["seq"], r["amount"]) for r in applied] == [(seq, datagen.item(s, 2)["amount"])]
        await env.gw.commands.call("item.correct", _correct(seq, o), CALLER)
        await env.gw.commands.call("order.retry", {"order_no": o}, CALLER)
        await env.until(lambda: _eq_rows(env, "select 1 from orders where state='SETTLED'", 2),
                        what="SETTLED again")
        credits = [c.batch_no for c in env.sims.bank.credits(o) if c.seq == seq]
        assert credits == [f"{o}-P01", f"{o}-R02"]
        assert env.sims.bank.batch_now(f"{o}-R02")["total_count"] == 1
        assert not env.sims.bank.double_credits()
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_a_late_return_that_matches_no_paid_item_is_alarmed_not_applied(reactor, tmp_path):
    """A return naming an item that is not PAID in that batch, or with another amount, or a
    serial already applied, changes nothing: the first two raise a critical alarm (money may
    have moved twice); a repeated serial is silently skipped, and a second return of the same
    bank under another serial is applied (not taken for the first)."""
    o = "LRUN0001"
    s = spec(o, 6, failures={"R001": 0.3}, seed=3)
    env = await in_process(reactor, tmp_path, [s])
    try:
        await env.until(lambda: env.query("select 1 from batches where state='DONE'"), what="DONE")
        st = await _states(env, o)
        paid = [q for q, (x, _) in st.items() if x == "PAID"]
        failed = [q for q, (x, _) in st.items() if x == "FAILED"]
        assert len(paid) >= 2 and failed, st
        b = (await env.query("select * from batches"))[0]
        amount = {r["seq"]: r["amount"] for r in await env.query("select seq, amount from items")}
        assert amount[paid[0]] != amount[paid[1]]
        wrong = [LateReturn("RTX-1", failed[0], amount[failed[0]], "R004", "20261201"),
                 LateReturn("RTX-2", paid[0], amount[paid[0]] + 1, "R004", "20261201"),
                 # one item's seq with another paid item's amount: matches neither
                 LateReturn("RTX-5", paid[0], amount[paid[1]], "R004", "20261201")]
        await env.db.run(env.flow.returns.apply, b, wrong, None)
        assert await _states(env, o) == st
        alarms = await env.query("select severity, count, message, last_message from alarms "
                                 "where kind='late-return-unmatched'")
        # one episode per batch (gateway/alarms.py), seen once per unmatched return
        assert [(a["severity"], a["count"]) for a in alarms] == [("critical", 3)], alarms
        assert "RTX-1" in alarms[0]["message"] and "RTX-5" in alarms[0]["last_message"]
        assert not await env.query("select 1 from late_returns")
        jid = (await env.query("select max(id) m from journal"))[0]["m"]
        # Another bank's return may carry the same serial: serials are unique per bank only.
        await env.db.run(lambda c: c.execute(sa.insert(late_returns).values(
            return_serial="RTX-3", bank_id="otherbank", batch_no="X-P01", order_no="X", seq=1,
            amount=1, reason_code="R004", return_date="20261201", applied_at="x", journal_id=jid)))
        good = LateReturn("RTX-3", paid[0], amount[paid[0]], "R004", "20261201")
        await env.db.run(env.flow.returns.apply, b, [good], jid)
        await env.db.run(env.flow.returns.apply, b, [good], jid)
        assert len(await env.query("select 1 from late_returns where bank_id=:b", b=env.flow.bank_id)) == 1
        # a second return, another serial of the same bank, is applied too
        await env.db.run(env.flow.returns.apply, b,
                         [LateReturn("RTX-4", paid[1], amount[paid[1]], "R004", "20261202")], jid)
        assert len(await env.query("select 1 from late_returns where bank_id=:b", b=env.flow.bank_id)) == 2
        assert (await _states(env, o))[paid[1]] == ("FAILED", b["batch_no"])
        # the repeat was recognised by its serial, not refused as unmatched
        assert [a["count"] for a in await env.query(
            "select count from alarms where kind='late-return-unmatched'")] == [3]
        assert (await _states(env, o))[paid[0]] == ("FAILED", b["batch_no"])
        # Whatever the gateway thinks, the bank's books were not touched by made-up returns.
        assert not env.sims.bank.double_credits()
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_a_refund_returns_only_the_failed_items_and_a_rejected_one_gives_them_back(reactor, tmp_path):
    """refund.request of FAILED items: the first refund is rejected by the bank (RJCT), so its
    items are FAILED again (alarmed) and nothing is marked REFUNDED; the second is done, its
    items become REFUNDED with the bank's serial and the order SETTLED. The bank's ledger holds
    both refunds with exactly those items, and no item both credited and refunded."""
    o = "REFD0001"
    s = spec(o, 8, failures={"R001": 0.4}, seed=3)
    env = await in_process(reactor, tmp_path, [s])
    try:
        await env.until(lambda: env.query("select 1 from batches where state='DONE'"), what="DONE")
        failed = sorted(q for q, (x, _) in (await _states(env, o)).items() if x == "FAILED")
        assert failed
        env.sims.bank.reject_next_refund("E005")
        first = await env.gw.commands.call("refund.request", {
            "order_no": o, "seqs": "all_failed", "reason": "退回", "approved_by": "科长"}, CALLER)
        assert first["items"] == len(failed)
        await env.until(lambda: env.query("select 1 from refunds where state='RJCT'"), what="refund RJCT")
        st = await _states(env, o)
        assert {q: st[q][0] for q in failed} == {q: "FAILED" for q in failed}
        assert await env.query("select 1 from alarms where kind='refund-refused'")
        await env.gw.commands.call("refund.request", {
            "order_no": o, "seqs": "all_failed", "reason": "退回", "approved_by": "科长"}, CALLER)
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        rows = await env.query("select seq, status, bank_serial from items where status='REFUNDED'")
        assert sorted(r["seq"] for r in rows) == failed and all(r["bank_serial"] for r in rows)
        ref = (await env.query("select refund_no, refund_serial, total_amount from refunds "
                               "where state='DONE'"))[0]
        assert rows[0]["bank_serial"] == ref["refund_serial"]
        bank = env.sims.bank.ledger
        done = bank._read("select refund_no, status, total_amount from refunds order by refund_no")
        assert [(r["status"]) for r in done] == ["RJCT", "DONE"]
        refunded = [r["seq"] for r in bank._read("select seq from refund_items where refund_no=?",
                                                 (ref["refund_no"],))]
        assert sorted(refunded) == failed
        credited = {c.seq for c in env.sims.bank.credits(o)}
        assert not credited & set(failed)
        assert done[1]["total_amount"] == ref["total_amount"]
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_done_batches_are_asked_for_returns_at_the_low_rate_inside_the_window_only(reactor, tmp_path):
    """After DONE, a batch is asked its status (for late returns) only when its next check is
    due (return_poll_s), only while inside the bank's window, and a flow asks only about its
    own bank's batches: the bank's request log shows no extra BQ01, and no alarm is raised."""
    o = "LRWN0001"
    env = await in_process(reactor, tmp_path, [spec(o, 3)], return_poll_s=3600)
    try:
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        b = (await env.query("select * from batches"))[0]

        def asked():
            return len(env.sims.bank.requests("BQ01", b["batch_no"]))
        n = asked()
        for _ in range(4):
            await env.flow.tick()
        assert asked() == n, "asked again before return_poll_s"
        other = {**b, "batch_no": "OTHR0001-P01", "bank_id": "otherbank", "next_check_at": 0}
        await env.db.run(lambda c: c.execute(sa.insert(batches).values(**other)))
        now = int(reactor.seconds())
        window = env.flow.bank.late_return_window_days * 86400
        await env.execute("update batches set next_check_at = 0, done_at = :d where batch_no = :b",
                          d=now - window - 10, b=b["batch_no"])
        for _ in range(3):
            await env.flow.tick()
        assert asked() == n, "asked after the window closed"
        assert not env.sims.bank.requests("BQ01", "OTHR0001-P01")
        await env.execute("update batches set done_at = :d where batch_no = :b", d=now, b=b["batch_no"])
        await env.flow.tick()
        assert asked() == n + 1, "a due check inside the window is asked (the test can see one)"
        # (not "no alarm at all": past 2027 the calendar's gap is rightly alarmed, whatever today is)
        assert not await env.query("select kind from alarms where kind <> 'calendar-gap'")
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_a_retry_takes_only_its_own_orders_corrected_items(reactor, tmp_path):
    """Two orders each hold a corrected item; a retry asked for one sends only that order's item
    (order.retry counts one, the bank's RETRY batch holds one), and the other order's item stays
    CORRECTED in the batch it failed in, waiting for its own retry."""
    a, b = spec("RTOW0001", 6, failures={"R001": 0.4}, seed=3), spec("RTOW0002", 6, failures={"R001": 0.4}, seed=3)
    env = await in_process(reactor, tmp_path, [a, b])
    try:
        await env.until(lambda: _eq_rows(env, "select 1 from batches where state='DONE'", 2), what="both DONE")
        fixed = {}
        for o in (a.order_no, b.order_no):
            seq = [q for q, (x, _) in (await _states(env, o)).items() if x == "FAILED"][0]
            await env.gw.commands.call("item.correct", _correct(seq, o), CALLER)
            fixed[o] = seq
        out = await env.gw.commands.call("order.retry", {"order_no": a.order_no}, CALLER)
        assert out["items"] == 1
        await env.until(lambda: env.query("select 1 from batches where batch_no=:b and state='DONE'",
                                          b=f"{a.order_no}-R02"), what="A's retry paid")
        assert env.sims.bank.batch_now(f"{a.order_no}-R02")["total_count"] == 1
        assert (await _states(env, b.order_no))[fixed[b.order_no]] == ("CORRECTED", f"{b.order_no}-P01")
        assert not [c for c in env.sims.bank.credits(b.order_no) if c.seq == fixed[b.order_no]]
    finally:
        await env.close()
