"""Hypothesis stateful test: random interleavings never break conservation or pay twice.

The real daemon service (in this process) runs against the real core and bank
simulators on loopback. Hypothesis interleaves what the outside world does:
the bank rejecting a batch whole, the bank returning paid items late, the
department correcting failures, asking for retries and refunding. After every
step the invariants of domain.md are checked on the gateway's database and on
the bank's own ledger:

1. conservation: per order, the items' amounts add up to the funded total, in
   known states only (rule 1);
2. an item is in at most one live batch, and a live batch holds exactly its
   items (rule 2);
3. the bank never credited an item twice (net of late returns) (rule 2).

Each example starts a fresh installation, so the examples are few and short.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.internet import defer, task

from gateway.flow import check_conservation
from gateway.models import BatchState
from gateway.rpc_api import Caller, RpcError
from tests.support import in_process, spec

pytestmark = [pytest.mark.loopback, pytest.mark.slow]
ORDER = "PROP0001"
CALLER = Caller("unix", "uid=0,gid=0")
GOOD_ACCOUNT = "6228480000000230000"


def on_reactor(fn, *args):
    """Run fn(*args) (a Deferred or coroutine) on the reactor and wait for it, from the
    hypothesis thread: the machine runs off the reactor thread, the system on it."""
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread

    def start():
        return defer.ensureDeferred(_awaited(fn, *args))
    return blockingCallFromThread(reactor, start)


async def _awaited(fn, *args):
    result = fn(*args)
    if hasattr(result, "__await__") or isinstance(result, defer.Deferred):
        result = await result
    return result


class Lifecycle(RuleBasedStateMachine):
    done: set[str] = set()   # what the examples managed to do, across all of them

    def __init__(self):
        super().__init__()
        from twisted.internet import reactor
        self.reactor = reactor
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-prop-"))
        s = spec(ORDER, 12, failures={"R001": 0.25, "R010": 0.1}, seed=5)
        self.env = on_reactor(lambda: in_process(reactor, self.tmp, [s], return_poll_s=0.1))
        self.settle()

    def settle(self, ticks: int = 12) -> None:
        async def go():
            for _ in range(ticks):
                await self.env.flow.tick()
                await task.deferLater(self.reactor, 0.05, lambda: None)
        on_reactor(go)

    def rows(self, sql: str, **params):
        return on_reactor(lambda: self.env.query(sql, **params))

    def call(self, method: str, params: dict) -> None:
        try:
            on_reactor(self.env.gw.commands.call, method, params, CALLER)
            Lifecycle.done.add(method)
        except RpcError:
            pass   # refusals are part of the game: they must change nothing (checked below)

    def teardown(self):
        on_reactor(self.env.close)

    @rule(pick=st.integers(0, 50), and_retry=st.booleans())
    def correct_a_failed_item(self, pick, and_retry):
        failed = self.rows("select seq from items where status='FAILED' order by seq")
        if failed:
            seq = failed[pick % len(failed)]["seq"]
            self.call("item.correct", {"order_no": ORDER, "seq": seq, "account_no": GOOD_ACCOUNT,
                                       "confirmed_by": "本人", "approved_by": "科长", "approval_ref": "A1"})
        if and_retry:
            self.call("order.retry", {"order_no": ORDER})

    @rule()
    def ask_for_retry(self):
        self.call("order.retry", {"order_no": ORDER})

    @rule(pick=st.integers(0, 50))
    def refund_a_failed_item(self, pick):
        failed = self.rows("select seq from items where status='FAILED' order by seq")
        if failed:
            self.call("refund.request", {"order_no": ORDER, "seqs": [failed[pick % len(failed)]["seq"]],
                                         "reason": "退回", "approved_by": "科长"})

    @rule(pick=st.integers(0, 50))
    def bank_returns_a_paid_item_late(self, pick):
        paid = self.rows("select i.seq, i.batch_no from items i join batches b on b.batch_no = i.batch_no "
                         "where i.status='PAID' and b.state='DONE' order by i.seq")
        if paid:
            from simulators.cnbank.ledger import Refused
            row = paid[pick % len(paid)]
            try:
                on_reactor(self.env.sims.bank.return_item, row["batch_no"], row["seq"], "R004")
            except Refused:
                return   # the bank already returned it; the gateway has not heard yet
            Lifecycle.done.add("late return")

    @rule()
    def bank_rejects_the_next_batch(self):
        self.env.sims.bank.reject_next_batch("E005")

    @rule(ticks=st.integers(1, 15))
    def time_passes(self, ticks):
        self.settle(ticks)

    @invariant()
    def money_is_conserved(self):
        on_reactor(self.env.db.run, check_conservation, ORDER)

    @invariant()
    def an_item_is_in_at_most_one_live_batch(self):
        live = self.rows("select batch_no, total_count from batches where state in "
                         f"({', '.join(repr(s) for s in BatchState.LIVE)})")
        for b in live:
            n = self.rows("select count(*) n from items where batch_no=:b", b=b["batch_no"])[0]["n"]
            assert n == b["total_count"], (b, n)

    @invariant()
    def the_bank_never_credits_an_item_twice(self):
        assert not self.env.sims.bank.double_credits()


@pytest_twisted.ensureDeferred
async def test_random_interleavings_keep_the_rules():
    """Hypothesis drives corrections, retries, refunds, late returns and whole-batch rejections
    in random order against the real service and simulators; the invariants above hold after
    every step."""
    from hypothesis.stateful import run_state_machine_as_test
    from twisted.internet.threads import deferToThread
    Lifecycle.done = set()
    await deferToThread(run_state_machine_as_test, Lifecycle, settings=settings(
        max_examples=4, stateful_step_count=10, deadline=None, derandomize=True,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],   # no shrinking: bounded time in CI
        suppress_health_check=list(HealthCheck)))
    # The run must have reached the interesting states, or it proved little.
    assert {"item.correct", "order.retry", "refund.request", "late return"} <= Lifecycle.done, Lifecycle.done
