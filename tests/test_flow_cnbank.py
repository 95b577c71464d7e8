"""The order/batch flow against the real simulators on loopback, driven tick by tick in-process.

Each test aims at one rule of domain.md: no blind resend after a lost reply
(rule 3), a whole-batch RJCT resent in a new batch without paying twice
(rule 2), nothing acted on before verification (rule 4), nothing lost when
the core fails (core-api.md), money conserved throughout (rule 1).
"""

from __future__ import annotations

import pytest
import pytest_twisted

from gateway.journal import verify_chain
from simulators import datagen
from tests.support import in_process, spec

pytestmark = [pytest.mark.loopback]


def paid_positions(s) -> int:
    return sum(1 for pos in range(1, s.count + 1) if datagen.intended_outcome(s, pos) == "0000")


async def item_states(env, order_no):
    rows = await env.query("select status, count(*) n, sum(amount) a from items where order_no=:o "
                           "group by status", o=order_no)
    return {r["status"]: (r["n"], int(r["a"])) for r in rows}


async def core_reported(env, order_no):
    return (await env.sims.core.summary())["orders"][order_no]["reported_items"]


@pytest_twisted.ensureDeferred
async def test_lost_bp01_reply_is_resolved_by_bq01_not_by_resending(reactor, tmp_path):
    """The bank accepts BP01 but the reply never arrives: the batch stays SUBMITTING, the next
    step asks BQ01, and the batch completes with one BP01 sent and every item credited once."""
    s = spec("LOST0001", 30, failures={"R002": 0.1})
    env = await in_process(reactor, tmp_path, [s])
    try:
        env.sims.bank.drop_reply_after("BP01")
        await env.until(lambda: env.query("select state from batches"), what="a batch")
        submitting = await env.until(
            lambda: env.query("select state from batches where state='SUBMITTING'"),
            what="BP01 sent with no reply")
        assert submitting
        await env.until(lambda: core_reported(env, "LOST0001"), what="results pushed")
        await env.until(lambda: _eq(core_reported(env, "LOST0001"), s.count), what="all results")
        assert len(env.sims.bank.requests("BP01", "LOST0001-P01")) == 1
        assert len(env.sims.bank.credits("LOST0001")) == paid_positions(s)
        assert not env.sims.bank.double_credits()
        tx = [r["tx_code"] for r in await env.query(
            "select tx_code from journal where direction='out' and channel='tcp' order by id")]
        assert tx[0] == "BP01" and tx[1] == "BQ01" and tx.count("BP01") == 1
    finally:
        await env.close()


async def _eq(awaitable, value):
    return (await awaitable) == value


@pytest_twisted.ensureDeferred
async def test_rjct_batch_goes_out_again_in_a_new_batch_paid_once(reactor, tmp_path, db_url):
    """The bank rejects the whole PAY batch (E005): an alarm is raised, its items return to
    PENDING, a new batch P02 carries them, and each item is credited exactly once."""
    s = spec("RJCT0001", 25)
    env = await in_process(reactor, tmp_path, [s], db_url=db_url)
    try:
        env.sims.bank.reject_next_batch("E005")
        await env.until(lambda: env.query("select 1 from batches where state='RJCT'"), what="RJCT")
        states = await item_states(env, "RJCT0001")
        assert set(states) <= {"PENDING", "SENT"} and sum(n for n, _ in states.values()) == s.count
        alarms = await env.query("select kind, message from alarms")
        assert any(a["kind"] == "batch-rjct" and "E005" in a["message"] for a in alarms)
        await env.until(lambda: _eq(core_reported(env, "RJCT0001"), s.count), what="results")
        batches = {r["batch_no"]: r["state"] for r in await env.query("select batch_no, state from batches")}
        assert batches == {"RJCT0001-P01": "RJCT", "RJCT0001-P02": "DONE"}
        assert len(env.sims.bank.credits("RJCT0001")) == s.count
        assert not env.sims.bank.double_credits()
        assert await item_states(env, "RJCT0001") == {"PAID": (s.count, datagen.order_totals(s)[1])}
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_reply_signed_by_another_key_is_journaled_and_never_acted_on(reactor, tmp_path):
    """The gateway is configured with the wrong bank public key: every reply fails verification,
    is journaled with verified=failed and alarmed, and no batch or item changes state."""
    from protocols import sm
    s = spec("BADKEY01", 10)
    env = await in_process(reactor, tmp_path, [s])
    try:
        # Swap in an unrelated key as "the bank's": what a forged or misrouted reply looks like.
        env.flow.adapter.link.bank_key = sm.generate_keypair().public_key
        await env.until(lambda: env.query("select 1 from alarms where kind='bank-reply-rejected'"),
                        what="a rejected reply")
        for _ in range(5):
            await env.flow.tick()
        batches = await env.query("select state from batches")
        assert [b["state"] for b in batches] in (["SUBMITTING"], ["UPLOADED"])
        assert set(await item_states(env, "BADKEY01")) == {"PENDING"}
        bad = await env.query("select verified from journal where direction='in' and channel='tcp'")
        assert bad and all(r["verified"].startswith("failed") for r in bad)
        assert await core_reported(env, "BADKEY01") == 0
        with env.gw.database.engine.connect() as conn:
            assert verify_chain(conn, env.cfg.journal_archive_dir).ok
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_core_503s_are_retried_and_nothing_is_lost(reactor, tmp_path):
    """Every third call to the core answers 503: polls, the item stream and result pushes are
    retried with backoff, and the core still ends up holding every result exactly once."""
    s = spec("FLAKY001", 40, failures={"R001": 0.05})
    env = await in_process(reactor, tmp_path, [s], results_chunk=7)
    try:
        env.sims.core.fail_every = 3
        await env.until(lambda: _eq(core_reported(env, "FLAKY001"), s.count), timeout=90,
                        what="all results despite 503s")
        summary = (await env.sims.core.summary())
        assert summary["requests"]["injected_503"] > 0
        o = summary["orders"]["FLAKY001"]
        assert o["conflicts"] == 0
        assert o["results"]["PAID"]["count"] == paid_positions(s)
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_late_return_turns_paid_back_to_failed_once_then_correction_pays_again(reactor, tmp_path):
    """An item paid and later returned by the bank (BQ01 <Returns>) becomes FAILED with the
    return's reason, exactly once however often BQ01 repeats it; the SETTLED order is
    DISPATCHED again and the core hears FAILED; corrected and retried, it is paid again (and the
    order SETTLED again), and the bank's ledger, net of the return, shows no double credit."""
    from gateway.rpc_api import Caller
    s = spec("LATE0001", 8)
    env = await in_process(reactor, tmp_path, [s], return_poll_s=0.1)
    try:
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED' and "
                                          "core_state_pushed='SETTLED'"), what="SETTLED")
        seq = datagen.item(s, 3)["seq"]
        await env.sims.bank.return_item("LATE0001-P01", seq, "R004")
        await env.until(lambda: env.query("select 1 from items where seq=:s and status='FAILED'", s=seq),
                        what="the return applied")
        for _ in range(5):          # BQ01 keeps listing the same return: applied once only
            await env.flow.tick()
        applied = await env.query("select return_serial from late_returns")
        assert len(applied) == 1
        item = (await env.query("select status, reason_code from items where seq=:s", s=seq))[0]
        assert item == {"status": "FAILED", "reason_code": "R004"}
        assert (await env.query("select state from orders"))[0]["state"] == "DISPATCHED"
        await env.until(lambda: _core_status(env, "LATE0001", seq, "FAILED"), what="core told FAILED")
        assert set(await item_states(env, "LATE0001")) == {"PAID", "FAILED"}

        caller = Caller("unix", "uid=0,gid=0")
        await env.gw.commands.call("item.correct", {
            "order_no": "LATE0001", "seq": seq, "account_no": "6228480000000123457",
            "confirmed_by": "收款人本人", "approved_by": "李科长", "approval_ref": "NY[2026]18号"}, caller)
        await env.gw.commands.call("order.retry", {"order_no": "LATE0001"}, caller)
        await env.until(lambda: env.query("select 1 from items where seq=:s and status='PAID' and "
                                          "batch_no='LATE0001-R02' and pushed='PAID'", s=seq),
                        what="paid again by the RETRY batch and pushed")
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED again")
        # core-api.md result versions: PAID v1, FAILED v2 (the return), PAID v3 (the retry): the
        # core holds the retry's PAID with its new bank serial, without any conflict.
        await env.until(lambda: _core_version(env, "LATE0001", seq, 3), what="version 3 at the core")
        record = (await env.sims.core.results("LATE0001"))[seq]
        assert (record["status"], record["version"], record["conflicts"]) == ("PAID", 3, 0)
        assert record["statuses"] == ["PAID", "FAILED", "PAID"]
        assert record["bank_serial"] == (await env.query(
            "select bank_serial from items where seq=:s", s=seq))[0]["bank_serial"]
        assert not env.sims.bank.double_credits()
        assert len([c for c in env.sims.bank.credits("LATE0001") if c.seq == seq]) == 2   # paid, returned, paid
    finally:
        await env.close()


async def _core_version(env, order_no, seq, version):
    return (await env.sims.core.results(order_no)).get(seq, {}).get("version") == version


async def _core_status(env, order_no, seq, status):
    return (await env.sims.core.results(order_no)).get(seq, {}).get("status") == status


@pytest_twisted.ensureDeferred
async def test_a_persisting_contract_fault_is_alarmed_once_not_every_tick(reactor, tmp_path):
    """The core refuses our token (401, a contract fault): it is journaled and alarmed, and the
    failed step then waits (backoff) instead of raising a new alarm on every tick."""
    s = spec("AUTH0001", 3)
    env = await in_process(reactor, tmp_path, [s])
    try:
        env.flow.core._auth = b"Bearer not-the-token"
        for _ in range(10):
            await env.flow.tick()
        alarms = await env.query("select kind, message from alarms")
        assert len(alarms) == 1 and alarms[0]["kind"] == "core-contract" and "401" in alarms[0]["message"]
        faults = await env.query("select verified from journal where verified like 'failed: HTTP 401%'")
        assert len(faults) == 1
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_article_26_confirmation_dispute_and_overdue_alarms(reactor, tmp_path):
    """A DONE batch gets its check and dispute deadlines in working days from conf/calendar;
    batch.confirm records the check once; batch.dispute sends DP01 and the bank accepts it;
    a check not made by its due date raises one alarm (not one per tick); a dispute raised
    after its due date is sent but alarmed."""
    import datetime as dt

    from gateway.rpc_api import MISSING_EVIDENCE, UNKNOWN_BATCH, WRONG_STATE, Caller, RpcError
    s1, s2 = spec("ART26001", 4), spec("ART26002", 4, seed=9)
    env = await in_process(reactor, tmp_path, [s1, s2])
    call = env.gw.commands.call
    caller = Caller("unix", "uid=0,gid=0")

    async def refused(method, params):
        try:
            await call(method, params, caller)
        except RpcError as e:
            return e
        raise AssertionError(f"{method} was not refused")
    try:
        await env.until(lambda: _eq(_count(env, "select count(*) n from batches where state='DONE'"), 2),
                        what="both batches DONE")
        b = (await env.query("select confirm_due, dispute_due from batches where batch_no='ART26001-P01'"))[0]
        today = dt.datetime.fromtimestamp(reactor.seconds(), dt.timezone(dt.timedelta(hours=8))).date()
        cal = env.cfg.calendar
        assert b["confirm_due"] == cal.add_working_days(today, 5).isoformat()
        assert b["dispute_due"] == cal.add_working_days(cal.add_working_days(today, 5), 3).isoformat()

        assert (await refused("batch.confirm", {"batch_no": "NOPE-P01", "confirmed_by": "王"})).code == UNKNOWN_BATCH
        assert (await refused("batch.confirm", {"batch_no": "ART26001-P01"})).code == MISSING_EVIDENCE
        r = await call("batch.confirm", {"batch_no": "ART26001-P01", "confirmed_by": "财务科 王芳"}, caller)
        assert r["on_time"] is True
        assert (await refused("batch.confirm", {"batch_no": "ART26001-P01", "confirmed_by": "王"})).code == WRONG_STATE

        seq = datagen.item(s1, 2)["seq"]
        d = await call("batch.dispute", {"batch_no": "ART26001-P01", "seqs": [seq],
                                         "reason": "到账金额与明细不符", "raised_by": "财务科 王芳"}, caller)
        assert d["dispute_no"] == "ART26001-P01-D01" and d["on_time"] is True
        await env.until(lambda: env.query("select 1 from disputes where state='ACCEPTED'"), what="DP01 accepted")
        assert [x["dispute_no"] for x in env.sims.bank.ledger.disputes()] == ["ART26001-P01-D01"]

        # Time passes: the second batch's check and dispute dates are behind us.
        assert await env.execute("update batches set confirm_due='2026-01-05', dispute_due='2026-01-08' "
                                 "where batch_no='ART26002-P01'") == 1
        for _ in range(5):
            await env.flow.tick()
        overdue = await env.query("select batch_no from alarms where kind='confirm-overdue'")
        assert overdue == [{"batch_no": "ART26002-P01"}]
        late = await call("batch.dispute", {"batch_no": "ART26002-P01", "seqs": [datagen.item(s2, 1)["seq"]],
                                            "reason": "户名不符", "raised_by": "财务科 王芳"}, caller)
        assert late["on_time"] is False
        assert await env.query("select batch_no from alarms where kind='dispute-overdue'") == [
            {"batch_no": "ART26002-P01"}]
    finally:
        await env.close()


async def _count(env, sql):
    return (await env.query(sql))[0]["n"]


@pytest_twisted.ensureDeferred
async def test_results_not_in_by_the_bank_deadline_raise_one_alarm(reactor, tmp_path):
    """An accepted batch gets the bank's deadline (result_working_days of the calendar); when
    the bank has not delivered by then, one critical alarm is raised, not one per tick."""
    import datetime as dt
    s = spec("SLOW0001", 3)
    env = await in_process(reactor, tmp_path, [s])
    try:
        env.sims.bank.processing_delay_s = 3600          # the bank sits on the batch
        await env.until(lambda: env.query("select 1 from batches where state='ACCEPTED'"), what="accepted")
        due = (await env.query("select bank_due from batches"))[0]["bank_due"]
        today = dt.datetime.fromtimestamp(reactor.seconds(), dt.timezone(dt.timedelta(hours=8))).date()
        assert due == env.cfg.calendar.add_working_days(today, 2).isoformat()
        for _ in range(3):
            await env.flow.tick()
        assert await env.query("select 1 from alarms where kind='bank-overdue'") == []
        assert await env.execute("update batches set bank_due='2026-01-05'") == 1   # time passes
        for _ in range(5):
            await env.flow.tick()
        alarms = await env.query("select batch_no, severity from alarms where kind='bank-overdue'")
        assert alarms == [{"batch_no": "SLOW0001-P01", "severity": "critical"}]
    finally:
        await env.close()
