"""The core simulator plays the departments (simulators/core/departments.py).

End to end: the daemon runs as its own process, the core and bank simulators
on loopback in this process, and the departments act through the daemon's
RPC on its Unix socket as results reach the core: corrections with evidence,
retries, refunds of what cannot be paid and batch confirmations. The bank's
ledger and the gateway's own tables prove what happened. One fast test drives
the departments' loop on a task.Clock.
"""

from __future__ import annotations

from collections import Counter

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import defer, task

from gateway.rpc_client import RpcUnavailable
from simulators import datagen, harness
from simulators.core.departments import APPROVED_BY, CHECKER, Departments, good_account, unix_socket_rpc
from simulators.outcomes import account_failing_with
from tests.support import install, spec, wait_for

ORDER = "DEPT0001"


def gateway_rows(db_url: str, sql: str, **params) -> list[dict]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as c:
            return [dict(r) for r in c.execute(sa.text(sql), params).mappings()]
    finally:
        engine.dispose()


async def run_until_settled(reactor, tmp_path, s, db_url, departments_for):
    """Install, start the daemon and the departments, wait for SETTLED with every DONE batch
    confirmed; returns what the tests check, after stopping everything."""
    p, keys, sims, cfg = await install(reactor, tmp_path, [s], db_url)
    db_url = db_url or f"sqlite:///{p.gateway_db}"
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()
    departments = departments_for(reactor, sims.core, unix_socket_rpc(reactor, p.rpc_socket))
    departments.start()
    try:
        async def settled_and_confirmed():
            o = (await sims.core.summary())["orders"][s.order_no]
            if o["state"] != "SETTLED":
                return False
            done = gateway_rows(db_url, "SELECT batch_no FROM batches WHERE order_no = :o AND state = 'DONE'",
                                o=s.order_no)
            return {b["batch_no"] for b in done} <= set(departments.report(s.order_no)["confirmed"])
        await wait_for(reactor, settled_and_confirmed, 120, "the order SETTLED and its batches confirmed", daemon)
        await departments.stop()
        results = await sims.core.results(s.order_no)
    finally:
        await departments.stop()
        rc = await daemon.stop_async(reactor)
        credits: dict[int, list] = {}
        for c in sims.bank.credits(s.order_no):
            credits.setdefault(c.seq, []).append(c)
        doubles = sims.bank.double_credits()
        await sims.stop()
    assert rc == 0
    assert not doubles
    batches = gateway_rows(db_url, "SELECT batch_no, kind, state, confirmed_by FROM batches "
                                   "WHERE order_no = :o ORDER BY seq", o=s.order_no)
    corrections = gateway_rows(db_url, "SELECT seq, confirmed_by, approved_by, approval_ref FROM corrections "
                                       "WHERE order_no = :o", o=s.order_no)
    return departments, results, credits, batches, corrections


class LosesFirstReplies:
    """The real RPC, except that the first reply of each named method is lost after the call
    was made (the department cannot tell whether it happened) and the first call of each
    method in *unreachable* never reaches the gateway."""

    def __init__(self, rpc, lost=(), unreachable=()):
        self.rpc, self.lost, self.unreachable = rpc, set(lost), set(unreachable)
        self.calls = Counter()

    async def _call(self, method, params):
        self.calls[method] += 1
        if method in self.unreachable:
            self.unreachable.discard(method)
            raise RpcUnavailable(f"injected: {method} did not reach the gateway")
        result = await self.rpc(method, params)
        if method in self.lost:
            self.lost.discard(method)
            raise RpcUnavailable(f"injected: the reply to {method} was lost")
        return result

    def __call__(self, method, params):
        return defer.ensureDeferred(self._call(method, params))


@pytest.mark.loopback
@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_departments_correct_refund_and_confirm_until_settled(reactor, tmp_path, db_url):
    """With fixable (R001, R005) and unfixable (R009, R010) failures, the departments alone bring
    the order to SETTLED: each fixable item corrected once with evidence and paid once by the
    RETRY batch to its new account, the unfixable ones refunded and never credited, P01 and R02
    confirmed by the clerk; a lost reply (item.correct) and an unreachable gateway (batch.confirm,
    refund.request) are retried without acting twice."""
    s = spec(ORDER, 40, failures={"R001": 0.15, "R005": 0.1, "R009": 0.08, "R010": 0.08}, seed=23)
    faulty = {}

    def departments_for(reactor, core, rpc):
        faulty["rpc"] = LosesFirstReplies(rpc, lost={"item.correct"},
                                          unreachable={"batch.confirm", "refund.request"})
        return Departments(reactor, core, faulty["rpc"], interval=0.3)

    departments, results, credits, batches, corrections = await run_until_settled(
        reactor, tmp_path, s, db_url, departments_for)

    first = departments.report(ORDER)["failed_first_by_reason"]
    assert set(first) == {"R001", "R005", "R009", "R010"}
    aimed = {seq: datagen.intended_outcome(s, seq) for seq in range(1, s.count + 1)}
    fixable = sorted(seq for seq, code in aimed.items() if code in ("R001", "R005"))
    unfixable = sorted(seq for seq, code in aimed.items() if code in ("R009", "R010"))
    assert {code: v["count"] for code, v in first.items()} == dict(
        Counter(code for code in aimed.values() if code != "0000"))
    assert fixable and unfixable
    assert faulty["rpc"].calls["batch.confirm"] >= 3 and faulty["rpc"].calls["refund.request"] >= 2

    assert [(b["batch_no"], b["kind"], b["state"], b["confirmed_by"]) for b in batches] == [
        (f"{ORDER}-P01", "PAY", "DONE", CHECKER), (f"{ORDER}-R02", "RETRY", "DONE", CHECKER)]
    assert sorted(c["seq"] for c in corrections) == fixable          # once each, lost reply or not
    assert all(c["confirmed_by"] and c["approved_by"] == APPROVED_BY and c["approval_ref"]
               for c in corrections)
    for seq in fixable:
        assert results[seq]["status"] == "PAID" and results[seq]["statuses"] == ["FAILED", "PAID"]
        assert [(c.batch_no, c.account) for c in credits[seq]] == [(f"{ORDER}-R02", good_account(ORDER, seq))]
    for seq in unfixable:
        assert results[seq]["status"] == "REFUNDED" and seq not in credits
    assert all(r["status"] in ("PAID", "REFUNDED") for r in results.values()) and len(results) == s.count

    acts = Counter((a.kind, seq) for a in departments.actions for seq in a.seqs)
    assert all(n == 1 for n in acts.values())                        # never twice on one result
    assert {seq for (kind, seq) in acts if kind == "correct"} == set(fixable)
    assert {seq for (kind, seq) in acts if kind == "refund"} == set(unfixable)
    assert departments.report(ORDER)["refunded"] == {"unfixable": len(unfixable), "declined": 0,
                                                     "failed_again": 0}


@pytest.mark.loopback
@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_an_item_failing_again_after_correction_is_refunded_not_corrected_twice(reactor, tmp_path):
    """With fix_share 0.5 some fixable failures are corrected and the rest refunded as declined;
    one corrected item is given an account that fails again (R004): the department refunds it
    after its RETRY batch is done instead of correcting it a second time, so the gateway holds
    exactly one correction for it, the bank never credits it, and the order is SETTLED."""
    s = spec(ORDER, 40, failures={"R002": 0.4}, seed=5)
    stubborn = {}

    def departments_for(reactor, core, rpc):
        d = Departments(reactor, core, rpc, fix_share=0.5, rng_seed=3, interval=0.3,
                        account_for=lambda order_no, seq: account_for(d, order_no, seq))
        return d

    def account_for(d, order_no, seq):
        if not stubborn:
            stubborn["seq"] = seq
        if seq == stubborn["seq"]:
            return account_failing_with("622848000000000", "R004")
        return good_account(order_no, seq)

    departments, results, credits, batches, corrections = await run_until_settled(
        reactor, tmp_path, s, None, departments_for)

    failed_first = [seq for seq in range(1, s.count + 1) if datagen.intended_outcome(s, seq) == "R002"]
    chosen = [seq for seq in failed_first if departments.chooses_to_fix(ORDER, seq)]
    declined = [seq for seq in failed_first if not departments.chooses_to_fix(ORDER, seq)]
    assert len(chosen) >= 2 and declined            # the seed splits them
    # The choice is a function of (rng_seed, order, seq): another desk with the same seed agrees.
    assert chosen == [q for q in failed_first
                      if Departments(reactor, None, None, fix_share=0.5, rng_seed=3).chooses_to_fix(ORDER, q)]
    again = stubborn["seq"]
    assert again in chosen

    assert Counter(c["seq"] for c in corrections) == Counter(chosen)     # one correction each
    assert results[again]["status"] == "REFUNDED" and again not in credits
    for seq in declined:
        assert results[seq]["status"] == "REFUNDED" and seq not in credits
    for seq in chosen:
        if seq != again:
            assert results[seq]["status"] == "PAID" and len(credits[seq]) == 1
    assert [(b["kind"], b["state"], b["confirmed_by"]) for b in batches] == [
        ("PAY", "DONE", CHECKER), ("RETRY", "DONE", CHECKER)]
    refunds = {a.detail: set(a.seqs) for a in departments.actions if a.kind == "refund"}
    assert refunds == {"declined": set(declined), "failed_again": {again}}
    assert sum(1 for a in departments.actions if a.kind == "correct" and again in a.seqs) == 1


class ScriptedCore:
    """A stand-in for the core simulator's read side: each summary() is answered by the test."""

    def __init__(self):
        self.asked: list[defer.Deferred] = []
        self.listeners = []

    def summary(self):
        d = defer.Deferred()
        self.asked.append(d)
        return d

    def add_report_listener(self, f):
        self.listeners.append(f)

    def remove_report_listener(self, f):
        self.listeners.remove(f)


def test_the_loop_survives_a_failing_pass_never_overlaps_and_wakes_on_reports():
    """A pass that fails is logged and the next one still comes an interval later; a report
    arriving during a pass causes one more pass right after it, not a second pass at once;
    stop() waits for the pass under way and nothing runs afterwards."""
    clock = task.Clock()
    core = ScriptedCore()
    d = Departments(clock, core, lambda m, p: defer.fail(AssertionError("no RPC expected")),
                    clock=clock, interval=2.0)
    d.start()
    clock.advance(0)
    assert len(core.asked) == 1
    core.asked[0].errback(RuntimeError("core database locked"))      # the pass fails
    clock.advance(1.7)
    assert len(core.asked) == 1
    clock.advance(0.6)                                               # interval with jitter: 1.8-2.2 s
    assert len(core.asked) == 2
    core.listeners[0]("X")                                           # a report during the pass
    core.listeners[0]("X")
    clock.advance(0)
    assert len(core.asked) == 2                                      # no overlap
    core.asked[1].callback({"orders": {}})
    clock.advance(0)
    assert len(core.asked) == 3                                      # one more pass at once
    stopped = d.stop()
    assert not stopped.called and not core.listeners
    core.asked[2].callback({"orders": {}})
    assert stopped.called
    clock.advance(10)
    assert len(core.asked) == 3
