"""The cnbank link under a hostile or broken bank, over real TCP and SFTP on loopback.

The daemon's flow runs in this process against the real bank simulator; where many
minutes must pass, the flow and the bank share one `task.Clock` that the test
advances (sockets, threads and the database still run on the real reactor). Each
test counts what the bank received (its own ledger of requests) and the alarms
the operators see: a condition that lasts is one episode, cleared when it ends.
"""

from __future__ import annotations

import os
import re

import pytest
import pytest_twisted
from twisted.internet import task

from simulators import harness
from tests.support import in_process, spec

pytestmark = [pytest.mark.loopback]


def shared_clock(env, reactor) -> task.Clock:
    """One simulated clock for the flow and the bank's business time, starting now."""
    clock = task.Clock()
    clock.advance(reactor.seconds())
    env.flow.reactor = clock
    env.sims.bank.clock = clock
    return clock


async def run_for(env, clock, seconds: float, step: float = 10.0) -> None:
    """Tick the flow every *step* simulated seconds for *seconds*."""
    for _ in range(int(seconds / step)):
        clock.advance(step)
        await env.flow.tick()


async def alarms(env, kind):
    return await env.query("select kind, key, batch_no, order_no, count, cleared_at, message "
                           "from alarms where kind=:k order by id", k=kind)


async def out_count(env, tx):
    return len(await env.query("select 1 from journal where direction='out' and tx_code=:t", t=tx))


async def until_state(env, state, what=None):
    return await env.until(lambda: env.query("select batch_no from batches where state=:s", s=state),
                           what=what or f"a batch {state}")


@pytest_twisted.ensureDeferred
async def test_e009_on_status_questions_backs_off_and_is_one_alarm_cleared_when_the_clock_is_back(
        reactor, tmp_path):
    """A DONE batch is watched for late returns every return_poll_s (60 s). For 30 simulated
    minutes the bank's clock is 400 s off, so every BQ01 is answered E009: the question is
    asked with a growing backoff, never sooner than return_poll_s (at most 30 questions, not
    one per tick), and the operators see one bank-refusing episode (key E009), no per-batch
    alarm. When the clock is right again the next answer clears the episode."""
    s = spec("SKEW0001", 6)
    env = await in_process(reactor, tmp_path, [s], return_poll_s=60)
    bank = env.sims.bank
    try:
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        clock = shared_clock(env, reactor)
        bank.clock_offset_s = 400
        before = len(bank.requests("BQ01"))
        await run_for(env, clock, 1800, step=30)
        asked = len(bank.requests("BQ01")) - before
        assert 3 <= asked <= 30, asked
        assert all(r["ret_code"] == "E009" for r in bank.requests("BQ01")[before:])
        refusing = await alarms(env, "bank-refusing")
        assert [(a["key"], a["cleared_at"]) for a in refusing] == [("E009", None)]
        assert refusing[0]["count"] == asked
        assert await alarms(env, "status-refused") == []

        bank.clock_offset_s = 0
        await run_for(env, clock, 1000, step=30)
        refusing = await alarms(env, "bank-refusing")
        assert len(refusing) == 1 and refusing[0]["cleared_at"] is not None
        assert bank.requests("BQ01")[-1]["ret_code"] == "0000"
        # Good answers put the question back on its own interval.
        b = (await env.query("select failures, next_check_at from batches"))[0]
        assert b["failures"] == 0 and b["next_check_at"] <= clock.seconds() + 60
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_e009_on_bp01_is_sent_again_with_backoff_and_pays_once_when_the_clock_is_back(
        reactor, tmp_path):
    """The bank's clock is 400 s off from the start: BP01 is answered E009 (refused for now).
    Over 30 simulated minutes it goes out again with a growing backoff (at most 20 times, not
    once per 30 s tick) under one bank-refusing episode; once the clock is right the batch is
    accepted, the episode cleared, and every item credited once by the bank's ledger."""
    s = spec("SKEWBP01", 5)
    env = await in_process(reactor, tmp_path, [s])
    bank = env.sims.bank
    try:
        clock = shared_clock(env, reactor)
        bank.clock_offset_s = 400
        await env.until(lambda: bank.requests("BP01"), what="a first BP01")
        await run_for(env, clock, 1800, step=30)
        sent = bank.requests("BP01")
        assert 3 <= len(sent) <= 20, len(sent)
        assert {r["ret_code"] for r in sent} == {"E009"}
        assert len({r["msg_id"] for r in sent}) == len(sent)          # each resend a new MsgId
        refusing = await alarms(env, "bank-refusing")
        assert [(a["key"], a["cleared_at"]) for a in refusing] == [("E009", None)]

        bank.clock_offset_s = 0
        for _ in range(100):
            clock.advance(30)
            await env.flow.tick()
            if await env.query("select 1 from orders where state='SETTLED'"):
                break
        assert await env.query("select state from batches") == [{"state": "DONE"}]
        assert (await alarms(env, "bank-refusing"))[0]["cleared_at"] is not None
        assert len(bank.credits("SKEWBP01")) == s.count and not bank.double_credits()
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_bank_down_status_questions_back_off_and_one_link_down_alarm_cleared_on_return(
        reactor, tmp_path):
    """An accepted batch is asked BQ01 every status_poll_s. The bank's message port goes away
    for 30 simulated minutes: connection attempts back off (at most 20, not one per tick), the
    adapter's link_state() counts the failures, and after link_alarm_after_s (300 s) one
    bank-link-down episode is raised. When the port is back, the next question is answered
    and the episode cleared."""
    s = spec("DOWN0001", 4)
    env = await in_process(reactor, tmp_path, [s])
    bank = env.sims.bank
    try:
        bank.processing_delay_s = 7200                      # the batch stays ACCEPTED
        await until_state(env, "ACCEPTED")
        clock = shared_clock(env, reactor)
        port = bank._ports[0]
        number = port.getHost().port
        await port.stopListening()
        bank._ports.remove(port)
        before = await out_count(env, "BQ01")
        await run_for(env, clock, 1800, step=30)
        tried = await out_count(env, "BQ01") - before
        assert 3 <= tried <= 20, tried
        state = env.flow.adapter.link_state()
        assert state["failures"] == tried and state["last_error"] and state["failing_since"]
        down = await alarms(env, "bank-link-down")
        assert len(down) == 1 and down[0]["cleared_at"] is None and down[0]["order_no"] is None

        bank.listen_tcp(number)
        await run_for(env, clock, 960, step=30)
        down = await alarms(env, "bank-link-down")
        assert len(down) == 1 and down[0]["cleared_at"] is not None
        assert env.flow.adapter.link_state()["failures"] == 0
        assert await env.query("select state from batches") == [{"state": "ACCEPTED"}]
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_bp01_reply_with_a_wrong_msg_id_is_refused_and_bq01_decides(reactor, tmp_path):
    """The bank accepts BP01 but its (properly signed) reply carries another MsgId: the reply is
    journaled as failed and alarmed, the batch is not assumed refused (it stays SUBMITTING),
    BQ01 finds it accepted, and the bank's ledger shows one BP01 and every item credited once."""
    s = spec("MSGID001", 6)
    env = await in_process(reactor, tmp_path, [s])
    bank = env.sims.bank
    try:
        bank.misreply_next("BP01", msg_id="0" * 32)
        await until_state(env, "SUBMITTING", "BP01 answered with a reply that does not answer it")
        assert await alarms(env, "bank-reply-rejected")
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        assert len(bank.requests("BP01")) == 1
        assert len(bank.credits("MSGID001")) == s.count and not bank.double_credits()
        bad = await env.query("select verified from journal where direction='in' and tx_code='BP01'")
        assert len(bad) == 1 and "MsgId" in bad[0]["verified"] and bad[0]["verified"].startswith("failed")
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_replies_with_swapped_ids_or_another_tx_code_are_refused(reactor, tmp_path):
    """A BQ01 reply whose SenderId/ReceiverId are not swapped, and one carrying another TxCode,
    are refused (journaled as failed, one bank-reply-rejected episode for the batch) though
    signed by the bank's key; nothing is acted on, the question is asked again, and the batch
    then completes with every item credited once."""
    s = spec("SWAP0001", 3)
    env = await in_process(reactor, tmp_path, [s])
    bank = env.sims.bank
    try:
        bank.misreply_next("BQ01", sender_id=harness.GATEWAY_SENDER, receiver_id=harness.BANK_RECEIVER)
        bank.misreply_next("BQ01", tx_code="RQ01")
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        refused = [r["verified"] for r in await env.query(
            "select verified from journal where direction='in' and verified like 'failed%' order by id")]
        assert len(refused) == 2
        assert "SenderId/ReceiverId" in refused[0] and "TxCode RQ01" in refused[1]
        rejected = await alarms(env, "bank-reply-rejected")
        assert len(rejected) == 1 and rejected[0]["count"] == 2 and rejected[0]["batch_no"] == "SWAP0001-P01"
        bq = bank.requests("BQ01")
        assert len(bq) >= 3 and all(r["ret_code"] == "0000" for r in bq)   # both were answered
        assert len(bank.credits("SWAP0001")) == s.count and not bank.double_credits()
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_reply_time_outside_the_window_is_accepted_and_alarmed_once_as_clock_skew(reactor, tmp_path):
    """The bank's clock is 400 s off but it tolerates 1000 s: its replies are dated outside our
    300 s window. They answer our MsgId, so they are accepted and the order is paid, under one
    bank-clock-skew episode; when the bank's clock is right again the episode is cleared."""
    s = spec("CLOCK001", 4)
    env = await in_process(reactor, tmp_path, [s])
    bank = env.sims.bank
    try:
        bank.clock_offset_s = 400
        bank.max_skew_s = 1000
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        skew = await alarms(env, "bank-clock-skew")
        assert len(skew) == 1 and skew[0]["cleared_at"] is None and skew[0]["count"] >= 2
        assert re.search(r"dated \+(39[0-9]|40[0-9]) s from our clock", skew[0]["message"])
        marked = await env.query("select verified from journal where direction='in' and channel='tcp'")
        assert marked and all("clock skew" in r["verified"] for r in marked)
        bank.clock_offset_s = 0
        assert await env.flow.adapter.heartbeat(env.flow) is True
        skew = await alarms(env, "bank-clock-skew")
        assert len(skew) == 1 and skew[0]["cleared_at"] is not None
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_batch_refused_e006_is_rebuilt_under_a_new_number_and_paid_once(reactor, tmp_path, db_url):
    """Issue 9: our own file is refused (E006: the file in /in is not the one BP01 describes,
    as when two daemons wrote it). The batch is REFUSED, one batch-refused alarm is raised for
    the order, its items go back to PENDING and out again as {OrderNo}-P02; the bank's ledger
    credits every item exactly once; the alarm is cleared once P02 is accepted; and the
    refused batch's uploads are removed from /in like those of the finished one."""
    s = spec("REFU0001", 12, failures={"R001": 0.2})
    env = await in_process(reactor, tmp_path, [s], db_url=db_url)
    bank = env.sims.bank
    try:
        await until_state(env, "UPLOADED")
        path = os.path.join(bank.in_dir, "REFU0001-P01.req")
        data = bytearray(open(path, "rb").read())
        data[-1] ^= 0x01                                    # not the file BP01 describes
        with open(path, "wb") as f:
            f.write(bytes(data))
        await until_state(env, "REFUSED")
        await env.until(lambda: env.query("select 1 from batches where batch_no='REFU0001-P02' and "
                                          "state='DONE'"), what="P02 DONE")
        batches = {r["batch_no"]: (r["state"], r["reject_code"]) for r in
                   await env.query("select batch_no, state, reject_code from batches")}
        assert batches == {"REFU0001-P01": ("REFUSED", "E006"), "REFU0001-P02": ("DONE", None)}
        assert [r["ret_code"] for r in bank.requests("BP01")] == ["E006", "0000"]
        credits = bank.credits("REFU0001")
        paid = await env.query("select seq from items where status='PAID' order by seq")
        assert sorted(c.seq for c in credits) == [r["seq"] for r in paid] and paid
        assert not bank.double_credits()
        assert len(await env.query("select 1 from items where batch_no='REFU0001-P02'")) == s.count
        refused = await alarms(env, "batch-refused")
        assert len(refused) == 1 and refused[0]["order_no"] == "REFU0001"
        assert "E006" in refused[0]["message"] and refused[0]["cleared_at"] is not None
        assert sorted(os.listdir(bank.in_dir)) == []
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_uploads_of_a_rjct_batch_are_removed_from_the_banks_in(reactor, tmp_path):
    """A batch the bank rejects whole (RJCT E005) is done with at the bank: its file and .sig
    are removed from /in, as those of a DONE batch are."""
    s = spec("RJIN0001", 4)
    env = await in_process(reactor, tmp_path, [s])
    bank = env.sims.bank
    try:
        bank.reject_next_batch("E005")
        await until_state(env, "UPLOADED")
        assert {"RJIN0001-P01.req", "RJIN0001-P01.req.sig"} <= set(os.listdir(bank.in_dir))
        await until_state(env, "RJCT")
        await env.until(lambda: "RJIN0001-P01.req" not in os.listdir(bank.in_dir)
                        and "RJIN0001-P01.req.sig" not in os.listdir(bank.in_dir), timeout=10,
                        what="the RJCT batch's uploads removed")
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_heartbeat_round_trip_and_link_state(reactor, tmp_path):
    """HB01 is one journaled round trip whose reply Head is judged: True against the live
    bank (link_state records the success), False with the port gone (a failure counted, the
    error kept), True again when it is back (failures reset)."""
    env = await in_process(reactor, tmp_path, [spec("HBEAT001", 1)])
    bank = env.sims.bank
    adapter = env.flow.adapter
    try:
        assert await adapter.heartbeat(env.flow) is True
        st = adapter.link_state()
        assert st["last_ok_at"] is not None and st["failures"] == 0
        port = bank._ports[0]
        number = port.getHost().port
        await port.stopListening()
        bank._ports.remove(port)
        assert await adapter.heartbeat(env.flow) is False
        st = adapter.link_state()
        assert st["failures"] == 1 and "HB01" in st["last_error"]
        bank.listen_tcp(number)
        assert await adapter.heartbeat(env.flow) is True
        assert adapter.link_state()["failures"] == 0
        hb = await env.query("select direction, verified from journal where tx_code='HB01' order by id")
        assert [r["direction"] for r in hb] == ["out", "in", "out", "event", "out", "in"]
        assert hb[1]["verified"] == "ok"
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_flow_sends_hb01_every_heartbeat_s_and_a_dead_link_is_one_alarm(reactor, tmp_path):
    """With heartbeat_s = 60 an idle flow ticked every 20 simulated seconds sends HB01 once a
    minute (10 in 10 minutes, not one per tick); with the bank's port gone the heartbeats
    fail and, past link_alarm_after_s (300 s), raise one bank-link-down episode, cleared by
    the first heartbeat answered once the port is back. heartbeat_s = 0 sends none."""
    import dataclasses
    env = await in_process(reactor, tmp_path, [])
    bank = env.sims.bank
    try:
        flow = env.flow
        flow.bank = dataclasses.replace(flow.bank, cnbank=dataclasses.replace(flow.bank.cnbank, heartbeat_s=0))
        clock = shared_clock(env, reactor)
        await run_for(env, clock, 120, step=20)
        assert await out_count(env, "HB01") == 0
        flow.bank = dataclasses.replace(flow.bank, cnbank=dataclasses.replace(flow.bank.cnbank, heartbeat_s=60))
        await run_for(env, clock, 600, step=20)
        assert 9 <= await out_count(env, "HB01") <= 11
        assert [r["ret_code"] for r in bank.requests("HB01")] == ["0000"] * await out_count(env, "HB01")

        port = bank._ports[0]
        number = port.getHost().port
        await port.stopListening()
        bank._ports.remove(port)
        await run_for(env, clock, 600, step=20)
        down = await alarms(env, "bank-link-down")
        assert len(down) == 1 and down[0]["cleared_at"] is None
        bank.listen_tcp(number)
        await run_for(env, clock, 80, step=20)
        down = await alarms(env, "bank-link-down")
        assert len(down) == 1 and down[0]["cleared_at"] is not None
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_e009_on_rq01_and_dp01_backs_off_under_one_alarm(reactor, tmp_path):
    """A refund (RF01) is accepted, a dispute raised, then the bank's clock goes 400 s off for
    30 simulated minutes: RQ01 and DP01 are each asked again with a growing backoff (at most
    20 times each, not once per 30 s tick), all answered E009 under one bank-refusing
    episode and no per-refund alarm; with the clock right again the refund completes
    (items REFUNDED), the dispute is accepted and the episode is cleared."""
    from gateway.rpc_api import Caller
    s = spec("RQDP0001", 12, failures={"R010": 0.3})
    env = await in_process(reactor, tmp_path, [s])
    bank = env.sims.bank
    call = env.gw.commands.call
    caller = Caller("unix", "uid=0,gid=0")
    try:
        await until_state(env, "DONE")
        failed = await env.query("select seq from items where status='FAILED'")
        paid = await env.query("select seq from items where status='PAID'")
        assert failed and paid
        clock = shared_clock(env, reactor)
        await call("refund.request", {"order_no": "RQDP0001", "seqs": "all_failed",
                                      "reason": "账户人已故，原渠道退回", "approved_by": "李科长"}, caller)
        for _ in range(100):
            clock.advance(0.05)
            await env.flow.tick()
            if await env.query("select 1 from refunds where state='ACCEPTED'"):
                break
        assert await env.query("select 1 from refunds where state='ACCEPTED'")
        bank.clock_offset_s = 400
        rq_before = len(bank.requests("RQ01"))
        await call("batch.dispute", {"batch_no": "RQDP0001-P01", "seqs": [paid[0]["seq"]],
                                     "reason": "到账金额与明细不符", "raised_by": "财务科 王芳"}, caller)
        await run_for(env, clock, 1800, step=30)
        rq = bank.requests("RQ01")[rq_before:]
        dp = bank.requests("DP01")
        assert 3 <= len(rq) <= 20 and 3 <= len(dp) <= 20, (len(rq), len(dp))
        assert {r["ret_code"] for r in rq + dp} == {"E009"}
        refusing = await alarms(env, "bank-refusing")
        assert [(a["key"], a["cleared_at"]) for a in refusing] == [("E009", None)]
        assert await alarms(env, "refund-status-refused") == []

        bank.clock_offset_s = 0
        await run_for(env, clock, 960, step=30)
        assert await env.query("select state from refunds") == [{"state": "DONE"}]
        assert await env.query("select state from disputes") == [{"state": "ACCEPTED"}]
        assert len(await env.query("select 1 from items where status='REFUNDED'")) == len(failed)
        assert (await alarms(env, "bank-refusing"))[0]["cleared_at"] is not None
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_a_refused_retry_batch_goes_out_again_as_a_new_retry_and_pays_once(reactor, tmp_path):
    """A RETRY batch of corrected items is refused (E003): it is REFUSED, its items go back to
    CORRECTED pointing again at the batch they failed in, the order asks for another retry,
    and they are paid by the next RETRY batch (-R03, OrigBatchNo the PAY batch); the bank's
    ledger credits each corrected item once, to its new account."""
    from gateway.rpc_api import Caller
    s = spec("RETRYREF", 10, failures={"R001": 0.3})
    env = await in_process(reactor, tmp_path, [s])
    bank = env.sims.bank
    call = env.gw.commands.call
    caller = Caller("unix", "uid=0,gid=0")
    try:
        await until_state(env, "DONE")
        failed = [r["seq"] for r in await env.query("select seq from items where status='FAILED'")]
        assert failed
        for seq in failed:
            await call("item.correct", {"order_no": "RETRYREF", "seq": seq, "account_no": "6228480000000123457",
                                        "confirmed_by": "收款人本人", "approved_by": "李科长",
                                        "approval_ref": "NY[2026]18号"}, caller)
        bank.refuse_next_submission("E003", "totals do not match")
        await call("order.retry", {"order_no": "RETRYREF"}, caller)
        await until_state(env, "REFUSED")
        await env.until(lambda: env.query("select 1 from batches where batch_no='RETRYREF-R03' and "
                                          "state='DONE'"), what="R03 DONE")
        batches = {r["batch_no"]: r["state"] for r in await env.query("select batch_no, state from batches")}
        assert batches == {"RETRYREF-P01": "DONE", "RETRYREF-R02": "REFUSED", "RETRYREF-R03": "DONE"}
        r03 = await env.query("select seq, status, orig_batch_no from items where batch_no='RETRYREF-R03' "
                              "order by seq")
        assert [r["seq"] for r in r03] == sorted(failed)
        assert all(r["status"] == "PAID" and r["orig_batch_no"] == "RETRYREF-P01" for r in r03)
        again = [c for c in bank.credits("RETRYREF") if c.seq in failed]
        assert sorted(c.seq for c in again) == sorted(failed) and {c.batch_no for c in again} == {"RETRYREF-R03"}
        assert not bank.double_credits()
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_e004_holds_the_items_with_the_refused_batch_for_an_operator(reactor, tmp_path):
    """E004 says the bank holds another batch under this number: the batch is REFUSED with a
    critical alarm naming it, but its items stay with it (no new batch is built, however
    long the flow runs), since the bank may hold them; nothing is credited."""
    s = spec("HOLD0001", 4)
    env = await in_process(reactor, tmp_path, [s])
    bank = env.sims.bank
    try:
        bank.refuse_next_submission("E004", "same number, different content")
        await until_state(env, "REFUSED")
        clock = shared_clock(env, reactor)
        await run_for(env, clock, 3600, step=300)
        assert await env.query("select batch_no, state from batches") == [
            {"batch_no": "HOLD0001-P01", "state": "REFUSED"}]
        held = await env.query("select status, batch_no from items")
        assert held == [{"status": "PENDING", "batch_no": "HOLD0001-P01"}] * s.count
        refused = await alarms(env, "batch-refused")
        assert len(refused) == 1 and "E004" in refused[0]["message"] and "held" in refused[0]["message"]
        assert len(bank.requests("BP01")) == 1 and bank.credits("HOLD0001") == []
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_a_refused_status_question_is_one_episode_per_batch_cleared_by_the_next_answer(
        reactor, tmp_path):
    """Three BQ01 in a row answered E999 (a refusal that is not "for now"): one status-refused
    episode for the batch, seen three times, the consecutive failures counted in the row
    (its backoff); the next good answer clears it and the batch completes."""
    s = spec("STREF001", 3)
    env = await in_process(reactor, tmp_path, [s])
    bank = env.sims.bank
    try:
        for _ in range(3):
            bank.refuse_next("BQ01", "E999", "BatchNo: cannot be judged now")
        await env.until(lambda: env.query("select 1 from batches where failures=3"), what="three refusals")
        open_ = await alarms(env, "status-refused")
        assert len(open_) == 1 and open_[0]["count"] == 3 and open_[0]["cleared_at"] is None
        assert open_[0]["batch_no"] == "STREF001-P01"
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        done = await alarms(env, "status-refused")
        assert len(done) == 1 and done[0]["cleared_at"] is not None
        bq = bank.requests("BQ01")
        assert [r["ret_code"] for r in bq[:3]] == ["E999"] * 3
        assert await alarms(env, "bank-refusing") == []
    finally:
        await env.close()
