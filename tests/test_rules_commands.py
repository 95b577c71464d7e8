"""The RPC's side of rule 2 and of article 23: what may enter a correction, a retry or a refund.

An item enters a new batch only from PENDING or CORRECTED; a correction needs
who confirmed it, who approved it and the approval reference, and only a
FAILED item that a correction can fix may be corrected; only FAILED items are
refunded. Each refusal must change nothing. Driven through the real
service's commands on loopback; what reaches the bank is read from the bank
simulator's ledger.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from gateway.rpc_api import (INVALID_PARAMS, MISSING_EVIDENCE, NOT_ALLOWED, UNKNOWN_ITEM,
                             UNKNOWN_ORDER, WRONG_STATE, Caller, RpcError)
from tests.support import in_process, spec

pytestmark = [pytest.mark.loopback]
CALLER = Caller("unix", "uid=0,gid=0")
NEW = "6228480000000123457"
EVIDENCE = {"confirmed_by": "收款人本人", "approved_by": "李科长", "approval_ref": "NY[2026]18号"}


async def _refused(env, method, params, code, field=None):
    with pytest.raises(RpcError) as e:
        await env.gw.commands.call(method, params, CALLER)
    assert e.value.code == code, (method, params, e.value)
    if field is not None:
        assert e.value.field == field, (method, params, e.value)


async def _snapshot(env):
    return (await env.query("select seq, status, account_no, batch_no from items order by seq"),
            await env.query("select count(*) n from corrections"),
            await env.query("select count(*) n from refunds"),
            await env.query("select orders.retry_requested from orders"))


async def _done_with(env, o):
    await env.until(lambda: env.query("select 1 from batches where state='DONE'"), what="DONE")
    rows = await env.query("select seq, status, reason_code from items where order_no=:o order by seq", o=o)
    by = {}
    for r in rows:
        by.setdefault(r["reason_code"] if r["status"] == "FAILED" else r["status"], []).append(r["seq"])
    return by


@pytest_twisted.ensureDeferred
async def test_corrections_need_a_fixable_failed_item_and_all_three_pieces_of_evidence(reactor, tmp_path):
    """item.correct is refused, changing nothing, for a PAID item (1003), an unknown seq (1002),
    an R010 (deceased) item (1008), without any one of confirmed_by / approved_by / approval_ref
    or with a blank one (1004), and with a malformed account (-32602); a FAILED R001 item with
    all three is CORRECTED with the new account, the correction kept with the values before and
    after; correcting it again is refused (1003)."""
    o = "CMDC0001"
    env = await in_process(reactor, tmp_path, [spec(o, 12, failures={"R001": 0.3, "R010": 0.2}, seed=5)])
    try:
        by = await _done_with(env, o)
        assert by.get("PAID") and by.get("R001") and by.get("R010"), by
        fixable, dead, paid = by["R001"][0], by["R010"][0], by["PAID"][0]
        before = await _snapshot(env)
        base = {"order_no": o, "account_no": NEW, **EVIDENCE}
        await _refused(env, "item.correct", {**base, "seq": paid}, WRONG_STATE, "seq")
        await _refused(env, "item.correct", {**base, "seq": 999}, UNKNOWN_ITEM, "seq")
        await _refused(env, "item.correct", {**base, "seq": dead}, NOT_ALLOWED, "seq")
        for k in EVIDENCE:
            await _refused(env, "item.correct", {**{x: v for x, v in base.items() if x != k}, "seq": fixable},
                           MISSING_EVIDENCE, k)
            await _refused(env, "item.correct", {**base, k: "  ", "seq": fixable}, MISSING_EVIDENCE, k)
        await _refused(env, "item.correct", {**base, "seq": fixable, "account_no": "62284800x"},
                       INVALID_PARAMS, "account_no")
        for bad_seq in ("1", True, 0, -1, None):
            await _refused(env, "item.correct", {**base, "seq": bad_seq}, INVALID_PARAMS, "seq")
        await _refused(env, "item.correct", {**base, "seq": fixable, "status": "PAID"}, INVALID_PARAMS)
        assert await _snapshot(env) == before
        old = (await env.query("select account_no from items where seq=:s", s=fixable))[0]["account_no"]
        out = await env.gw.commands.call("item.correct", {**base, "seq": fixable}, CALLER)
        assert (out["status"], out["corrections"]) == ("CORRECTED", 1)
        row = (await env.query("select status, account_no, batch_no from items where seq=:s", s=fixable))[0]
        assert row == {"status": "CORRECTED", "account_no": NEW, "batch_no": f"{o}-P01"}
        kept = (await env.query("select old_values, new_values, confirmed_by, approved_by, approval_ref, "
                                "reason_code, failed_batch_no from corrections"))
        assert len(kept) == 1 and old in kept[0]["old_values"] and NEW in kept[0]["new_values"]
        assert (kept[0]["confirmed_by"], kept[0]["approved_by"], kept[0]["approval_ref"]) == \
            tuple(EVIDENCE.values())
        assert (kept[0]["reason_code"], kept[0]["failed_batch_no"]) == ("R001", f"{o}-P01")
        await _refused(env, "item.correct", {**base, "seq": fixable}, WRONG_STATE, "seq")
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_retry_and_refund_take_only_the_items_the_rules_allow(reactor, tmp_path):
    """order.retry with nothing corrected is refused (1003); a refund of a PAID or a CORRECTED
    item is refused (1003), of an unknown seq (1002), without approved_by (1004), each changing
    nothing. Then order.retry sends exactly the corrected item, and refund.request
    "all_failed" exactly the items still FAILED (not the corrected one, not a paid one): the
    bank's ledger shows R02 holding one item and the refund holding the rest."""
    o, other = "CMDR0001", "CMDR0002"     # the other order: the same seqs fail (same seed)
    env = await in_process(reactor, tmp_path, [spec(o, 12, failures={"R001": 0.4}, seed=9),
                                               spec(other, 12, failures={"R001": 0.4}, seed=9)])
    try:
        await env.until(lambda: env.query("select 1 from batches where state='DONE' group by state "
                                          "having count(*) = 2"), what="both orders DONE")
        by = await _done_with(env, o)
        others_failed = await env.query("select seq from items where order_no=:o and status='FAILED'", o=other)
        assert others_failed
        failed, paid = by.get("R001", []), by.get("PAID", [])
        assert len(failed) >= 3 and paid, by
        await _refused(env, "order.retry", {"order_no": o}, WRONG_STATE, "order_no")
        await _refused(env, "order.retry", {"order_no": "NOSUCH01"}, UNKNOWN_ORDER, "order_no")
        await env.gw.commands.call("item.correct", {"order_no": o, "seq": failed[0], "account_no": NEW,
                                                    **EVIDENCE}, CALLER)
        before = await _snapshot(env)
        refund = {"order_no": o, "reason": "退回", "approved_by": "科长"}
        await _refused(env, "refund.request", {**refund, "seqs": [paid[0]]}, WRONG_STATE, "seqs")
        await _refused(env, "refund.request", {**refund, "seqs": [failed[0]]}, WRONG_STATE, "seqs")
        await _refused(env, "refund.request", {**refund, "seqs": [failed[1], 999]}, UNKNOWN_ITEM, "seqs")
        await _refused(env, "refund.request", {**refund, "seqs": [failed[1]], "approved_by": " "},
                       MISSING_EVIDENCE, "approved_by")
        assert await _snapshot(env) == before
        out = await env.gw.commands.call("refund.request", {**refund, "seqs": "all_failed"}, CALLER)
        assert out["items"] == len(failed) - 1
        # the other order's items with the same seqs are not this refund's
        assert await env.query("select seq from items where order_no=:o and status='FAILED'",
                               o=other) == others_failed
        # a new refund waits for its RF01 (NEW: not SUBMITTING, which would ask the bank first)
        assert [r["state"] for r in await env.query("select state from refunds")] == ["NEW"]
        assert len(await env.query("select 1 from journal where tx_code='refund.request'")) == 1   # journaled
        # nothing FAILED is left: a second "all_failed" is refused and creates nothing
        await _refused(env, "refund.request", {**refund, "seqs": "all_failed"}, WRONG_STATE)
        assert len(await env.query("select 1 from refunds")) == 1
        states = {r["seq"]: r["status"] for r in await env.query("select seq, status from items "
                                                                 "where order_no=:o", o=o)}
        assert {q: states[q] for q in failed} == {failed[0]: "CORRECTED",
                                                  **{q: "REFUND_PENDING" for q in failed[1:]}}
        retry = await env.gw.commands.call("order.retry", {"order_no": o}, CALLER)
        assert retry["items"] == 1
        assert len(await env.query("select 1 from journal where tx_code='order.retry'")) == 1   # journaled
        await env.until(lambda: env.query("select 1 from batches where batch_no=:b", b=f"{o}-R02"),
                        what="R02")
        # Its item is in a live batch now: nothing is left to retry.
        await _refused(env, "order.retry", {"order_no": o}, WRONG_STATE, "order_no")
        await env.until(lambda: env.query("select 1 from orders where order_no=:o and state='SETTLED'", o=o),
                        what="SETTLED")
        assert env.sims.bank.batch_now(f"{o}-R02")["total_count"] == 1
        assert [c.seq for c in env.sims.bank.credits(o) if c.batch_no == f"{o}-R02"] == [failed[0]]
        bank = env.sims.bank.ledger
        assert sorted(r["seq"] for r in bank._read("select seq from refund_items")) == failed[1:]
        assert not env.sims.bank.double_credits()
    finally:
        await env.close()
