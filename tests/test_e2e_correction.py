"""Failures -> corrections through the RPC (Unix socket) -> RETRY batch -> paid -> refund -> SETTLED.

The daemon runs as its own process; the test is the department: it reads the
failed items from the core simulator, corrects the fixable ones through
`gatewayctl rpc`-style calls on the daemon's Unix socket (with the evidence
article 23 asks for), and asks for the retry. The bank's ledger proves each
corrected item was credited once, to its new account.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from gateway import rpc_client
from gateway.rpc_api import MISSING_EVIDENCE, NOT_ALLOWED, WRONG_STATE, RpcError
from simulators import datagen, harness
from tests.support import install, spec, wait_for
from tests.test_e2e_cnbank import gatewayctl

pytestmark = [pytest.mark.loopback, pytest.mark.slow]
NEW_ACCOUNT = "6228480000000123457"   # an account the simulated bank credits


def rpc(p, method, **params):
    return deferToThread(rpc_client.call, method, params, unix_path=str(p.rpc_socket))


async def refused(p, method, **params):
    try:
        await rpc(p, method, **params)
    except RpcError as e:
        return e
    raise AssertionError(f"{method} {params} was not refused")


@pytest_twisted.ensureDeferred
async def test_failed_items_corrected_over_rpc_are_paid_by_a_retry_batch(reactor, tmp_path, db_url):
    """Fixable failures corrected with evidence go out in {OrderNo}-R02 with OrigBatchNo and are
    paid once; an unfixable one (R010) and a correction without evidence are refused and change
    nothing; a retry with nothing corrected is refused; the unfixable items are refunded (RF01,
    RQ01) and the order is SETTLED with every fen paid or returned."""
    s = spec("CORR0001", 30, failures={"R001": 0.2, "R010": 0.1}, seed=11)
    p, keys, sims, cfg = await install(reactor, tmp_path, [s], db_url)
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()
    try:
        async def all_reported():
            return (await sims.core.summary())["orders"]["CORR0001"]["reported_items"] == s.count
        await wait_for(reactor, all_reported, 90, "first results", daemon)
        results = await sims.core.results("CORR0001")
        fixable = sorted(seq for seq, r in results.items() if r["reason_code"] == "R001")
        deceased = sorted(seq for seq, r in results.items() if r["reason_code"] == "R010")
        assert fixable and deceased

        e = await refused(p, "order.retry", order_no="CORR0001")
        assert e.code == WRONG_STATE
        e = await refused(p, "item.correct", order_no="CORR0001", seq=fixable[0], account_no=NEW_ACCOUNT,
                          confirmed_by="张三（本人）", approved_by="李科长")
        assert e.code == MISSING_EVIDENCE and e.field == "approval_ref"
        e = await refused(p, "item.correct", order_no="CORR0001", seq=deceased[0], account_no=NEW_ACCOUNT,
                          confirmed_by="张三之子（监护人）", approved_by="李科长", approval_ref="NY[2026]17号")
        assert e.code == NOT_ALLOWED
        status = await rpc(p, "order.status", order_no="CORR0001")
        assert status["items"]["FAILED"]["count"] == len(fixable) + len(deceased)

        for seq in fixable:
            r = await rpc(p, "item.correct", order_no="CORR0001", seq=seq, account_no=NEW_ACCOUNT,
                          confirmed_by="收款人本人", approved_by="李科长", approval_ref="NY[2026]17号")
            assert r["status"] == "CORRECTED" and r["corrections"] == 1
        e = await refused(p, "item.correct", order_no="CORR0001", seq=fixable[0], account_no=NEW_ACCOUNT,
                          confirmed_by="收款人本人", approved_by="李科长", approval_ref="NY[2026]17号")
        assert e.code == WRONG_STATE            # CORRECTED, not FAILED: one correction per failure
        r = await rpc(p, "order.retry", order_no="CORR0001")
        assert r["items"] == len(fixable)

        async def fixed_paid():
            res = await sims.core.results("CORR0001")
            return all(res[seq]["status"] == "PAID" for seq in fixable)
        await wait_for(reactor, fixed_paid, 90, "corrected items paid", daemon)

        # What cannot be paid (the deceased) goes back to the original channel.
        e = await refused(p, "refund.request", order_no="CORR0001", seqs=[fixable[0]],
                          reason="退回", approved_by="李科长")
        assert e.code == WRONG_STATE                 # paid items are never refunded
        e = await refused(p, "refund.request", order_no="CORR0001", seqs="all_failed", reason="退回")
        assert e.code == MISSING_EVIDENCE and e.field == "approved_by"
        refund = await rpc(p, "refund.request", order_no="CORR0001", seqs="all_failed",
                           reason="账户人已故，原渠道退回", approved_by="李科长")
        assert refund["refund_no"] == "CORR0001-F01" and refund["items"] == len(deceased)

        async def settled():
            o = (await sims.core.summary())["orders"]["CORR0001"]
            return o["state"] == "SETTLED" and o["results"].get("REFUNDED", {}).get("count") == len(deceased)
        await wait_for(reactor, settled, 90, "the refund done and the order SETTLED", daemon)
        refund_status = await rpc(p, "refund.status", refund_no="CORR0001-F01")
        status = await rpc(p, "order.status", order_no="CORR0001")
    finally:
        rc = await daemon.stop_async(reactor)
        try:
            assert rc == 0
            credits = {}
            for c in sims.bank.credits("CORR0001"):
                credits.setdefault(c.seq, []).append(c)
            assert not sims.bank.double_credits()
        finally:
            await sims.stop()
    retry = "CORR0001-R02"
    assert [(b["batch_no"], b["kind"], b["state"]) for b in status["batches"]] == [
        ("CORR0001-P01", "PAY", "DONE"), (retry, "RETRY", "DONE")]
    for seq in fixable:
        assert len(credits[seq]) == 1 and credits[seq][0].batch_no == retry
        assert credits[seq][0].account == NEW_ACCOUNT
    for seq in deceased:
        assert seq not in credits
    paid_first = sum(1 for pos in range(1, s.count + 1) if datagen.intended_outcome(s, pos) == "0000")
    assert len(credits) == paid_first + len(fixable)
    assert refund_status["state"] == "DONE" and refund_status["bank_serial"]
    assert refund_status["refund_amount"] == refund["amount"]
    assert status["state"] == "SETTLED"
    assert set(status["items"]) == {"PAID", "REFUNDED"}
    assert sum(v["amount"] for v in status["items"].values()) == status["total_amount"]
    # Every call is journaled with its caller: the corrections with their evidence, the refusals too.
    shown = gatewayctl(cfg, "journal", "show", "--order", "CORR0001", "--limit", "1000").stdout
    rpc_lines = [line for line in shown.splitlines() if "/rpc " in line]
    assert sum("item.correct" in line and "approved by" in line for line in rpc_lines) == len(fixable)
    assert any("refused 1004" in line and "approval_ref" in line for line in rpc_lines)
    assert any("refused 1008" in line for line in rpc_lines)
    assert NEW_ACCOUNT not in shown                   # masked in the decoded view
    assert gatewayctl(cfg, "journal", "verify").returncode == 0
