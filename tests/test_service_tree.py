"""The daemon's service tree: each bank's ticker under its BankService, under the lease it acts
for; stopping a service waits for what is in progress below it, in the tree's order."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from gateway.service import BankService, InOrder, Ticker
from simulators import harness
from tests.support import install, wait_for

TWO = "cnbank-two"


class _Held:
    """A tick standing for a bank step that takes long: the first run waits for `release`."""

    def __init__(self, events: list, tag: str):
        self.events, self.tag, self.runs = events, tag, 0
        self.entered, self.release = defer.Deferred(), defer.Deferred()

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs == 1:
            self.entered.callback(None)
            await self.release
            self.events.append(f"{self.tag} tick ended")


def test_ticker_stop_waits_for_its_run_in_progress():
    """A Ticker stopped while its job runs returns a Deferred that fires only when the job
    ends, and no run starts after the stop (the job counted)."""
    clock, events = task.Clock(), []
    job = _Held(events, "a")
    t = Ticker(clock, "t", job, 1.0)
    t.startService()
    clock.advance(0)
    assert job.entered.called
    d = defer.maybeDeferred(t.stopService)
    assert not d.called
    job.release.callback(None)
    assert d.called and events == ["a tick ended"]
    clock.advance(10)
    assert job.runs == 1


def test_bank_service_and_in_order_stop_children_one_after_another():
    """InOrder stops the last child first and waits for it before the next: a BankService whose
    tick is in progress holds back the stop of the service added before it."""
    from types import SimpleNamespace
    clock, events = task.Clock(), []

    class Recorder(Ticker):
        def stopService(self):  # noqa: N802
            events.append("first stopped")
            return super().stopService()
    job = _Held(events, "bank")
    flow = SimpleNamespace(bank_id="b", tick=job, stopping=False, core_idle=lambda: defer.succeed(None))
    root = InOrder()
    Recorder(clock, "first", lambda: defer.succeed(None), 5.0).setServiceParent(root)
    bank = BankService(clock, flow, 1.0)
    bank.setServiceParent(root)
    root.startService()
    clock.advance(0)
    assert job.entered.called and not flow.stopping
    d = root.stopService()
    assert flow.stopping and events == [] and not d.called
    job.release.callback(None)
    assert d.called and events == ["bank tick ended", "first stopped"]


def _second_bank(p, sims) -> None:
    first = (p.banks / f"{harness.BANK_ID}.toml").read_text()
    (p.banks / f"{TWO}.toml").write_text(first.replace(f'bank_id = "{harness.BANK_ID}"', f'bank_id = "{TWO}"'))


def _fired(d: defer.Deferred) -> list:
    """A list that gets an item when *d* has its result (`Deferred.called` is also true while
    it waits on another Deferred)."""
    out: list = []
    d.addBoth(lambda r: (out.append(True), r)[1])
    return out


async def _wrap(events, tag, fn, *args):
    r = await defer.maybeDeferred(fn, *args)
    events.append(tag)
    return r


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_stopping_the_service_waits_for_the_tick_in_progress(reactor, tmp_path):
    """The real service (make_service, SQLite, simulators), active: stopped while a bank's tick
    is in progress, it stops nothing below the flow's lease until the tick ends (given a second
    in which a stop that did not wait would have finished), then stops in the tree's order: the
    tick ends, the lease is released, the banks' adapters are closed, the database stops last."""
    from gateway import config as configmod
    from gateway.leadership import SINGLE
    from gateway.service import make_service

    p, keys, sims, cfg_path = await install(reactor, tmp_path, [])
    with open(cfg_path, "a") as f:
        f.write("\n[ha]\nretry_s = 0.2\n")
    gw = make_service(configmod.load(cfg_path), reactor)
    events: list[str] = []
    job = _Held(events, "bank")
    gw.tickers[harness.BANK_ID].job = job
    lead = gw.leadership.leaders[SINGLE]
    release, close, stop = lead.lease.release, gw.flows[harness.BANK_ID].adapter.close, gw.database.stop
    lead.lease.release = lambda epoch: (release(epoch), events.append("lease released"))[0]
    gw.flows[harness.BANK_ID].adapter.close = lambda: defer.ensureDeferred(_wrap(events, "adapter closed", close))
    gw.database.stop = lambda: (stop(), events.append("database stopped"))[0]
    stopped = None
    try:
        gw.startService()

        async def entered():
            return job.entered.called
        await wait_for(reactor, entered, 30, "the lease taken and the bank's tick started")
        stopped = gw.stopService()
        done = _fired(stopped)
        await task.deferLater(reactor, 1.0, lambda: None)
        assert not done and events == []
        assert not lead.running and gw.getServiceNamed("database").running
        job.release.callback(None)
        await stopped
        assert events == ["bank tick ended", "lease released", "adapter closed", "database stopped"]
        assert job.runs == 1 and not gw.tickers[harness.BANK_ID].running
    finally:
        if not job.release.called:
            job.release.callback(None)
        if stopped is None and gw.running:
            await gw.stopService()
        await sims.stop()


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_a_removed_bank_ticker_stops_after_its_tick_in_progress(reactor, tmp_path):
    """One lease, two banks, active. The second bank's file removed and reload() called while
    that bank's tick is in progress: the reload finishes only once the tick has ended, then
    the removed bank's ticker is stopped for good (it never runs again) and its service has
    left the tree, while the other bank's ticker runs on."""
    from gateway import config as configmod
    from gateway.leadership import SINGLE
    from gateway.service import make_service

    p, keys, sims, cfg_path = await install(reactor, tmp_path, [])
    _second_bank(p, sims)
    with open(cfg_path, "a") as f:
        f.write("\n[ha]\nretry_s = 0.2\n")
    gw = make_service(configmod.load(cfg_path), reactor)
    events: list[str] = []
    job = _Held(events, "two")
    ticker_two, bank_two = gw.tickers[TWO], gw.banks[TWO]
    ticker_two.job = job
    try:
        gw.startService()

        async def entered():
            return job.entered.called
        await wait_for(reactor, entered, 30, "the lease taken and the second bank's tick started")
        (p.banks / f"{TWO}.toml").unlink()
        reloaded = gw.reload()
        done = _fired(reloaded)
        await task.deferLater(reactor, 1.0, lambda: None)
        assert not done and TWO in gw.flows
        job.release.callback(None)
        summary = await reloaded
        assert summary == {"ok": True, "added": [], "changed": [], "removed": [TWO]}
        assert events == ["two tick ended"] and TWO not in gw.flows and TWO not in gw.tickers
        assert not ticker_two.running and bank_two.parent is None and not bank_two.running
        assert list(gw.leadership.leaders[SINGLE]) == [gw.getServiceNamed("leases")
                                                       .getServiceNamed(f"leadership-{SINGLE}")
                                                       .getServiceNamed("scheduler"), gw.banks[harness.BANK_ID]]
        await task.deferLater(reactor, 0.5, lambda: None)      # a few of the ticker's periods
        assert job.runs == 1 and gw.tickers[harness.BANK_ID].running
    finally:
        if not job.release.called:
            job.release.callback(None)
        if gw.running:
            await gw.stopService()
        await sims.stop()
