"""The core behind `ICoreSystem` (adapters/core_interface.py): the HTTP client and the in-memory
core (simulators/memory_core.py) both provide it, and the daemon's flow works with either.

With the in-memory core the whole order (poll, load, batch over the real cnbank simulator,
results, push) runs without the core's HTTP, and the core's faults come on cue.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor as _reactor
from zope.interface.verify import verifyClass, verifyObject

from adapters.core_http import CoreClient
from adapters.core_interface import CoreContractError, CoreError, ICoreSystem
from simulators.memory_core import MemoryCore
from tests.support import in_process, spec


def test_both_cores_provide_the_interface():
    verifyClass(ICoreSystem, CoreClient)
    verifyClass(ICoreSystem, MemoryCore)
    verifyObject(ICoreSystem, CoreClient(_reactor, "http://127.0.0.1:9", "t"))
    verifyObject(ICoreSystem, MemoryCore())


@pytest_twisted.ensureDeferred
async def test_an_order_is_paid_and_reported_through_the_in_memory_core(reactor, tmp_path):
    s = spec("MEMCORE01", 12, failures={"R001": 0.25}, seed=3)
    core = MemoryCore([s])
    env = await in_process(reactor, tmp_path, [s], core=core)   # [s]: the bank is funded for it
    try:
        await env.until(lambda: env.query("select 1 from orders where state in ('SETTLED', 'DISPATCHED') "
                                          "and results_pending = 0 and core_state_pushed is not null"),
                        what="results pushed to the in-memory core")
        ours = {r["seq"]: r["status"] for r in await env.query("select seq, status from items")}
        theirs = {seq: r["status"] for seq, r in core.latest("MEMCORE01").items()}
        assert theirs == ours and len(ours) == 12
        assert "FAILED" in ours.values() and "PAID" in ours.values()
        credited = [c.seq for c in env.sims.bank.ledger.credits("MEMCORE01")]
        assert sorted(credited) == sorted(seq for seq, st in ours.items() if st == "PAID")
        assert core.states["MEMCORE01"][0][0] == "DISPATCHED"
        # Every exchange with the core is journaled, as with the HTTP core.
        journaled = await env.query("select count(*) n from journal where peer='core'")
        assert journaled[0]["n"] >= 2 * 3
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_the_cores_faults_on_cue_are_one_alarm_and_a_retry(reactor, tmp_path):
    """The core unreachable while listing: nothing is loaded and the next poll does; a 4xx on a
    result push is journaled and alarmed as a contract fault, and the chunk pushed again later."""
    s = spec("MEMCORE02", 3, seed=4)
    core = MemoryCore([s])
    env = await in_process(reactor, tmp_path, [s], core=core)   # [s]: the bank is funded for it
    try:
        core.fail_next(CoreError("GET orders: connection refused"))
        await env.flow.core_idle()
        await env.flow.tick()
        await env.flow.core_idle()
        assert await env.query("select order_no from orders") == []
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        core.fail_next(CoreContractError("POST", "memory://core/api/orders/MEMCORE02/results", 422,
                                         b'{"error":"bad_request","field":"results"}'))
        await env.until(lambda: env.query("select 1 from alarms where kind='core-contract'"),
                        what="the contract fault alarmed")
        await env.until(lambda: env.query("select 1 from orders where results_pending=0 and "
                                          "core_state_pushed='SETTLED'"), what="pushed again")
        assert set(core.latest("MEMCORE02")) == {1, 2, 3}
        fault = await env.query("select verified from journal where peer='core' and "
                                "verified like 'failed%'")
        assert fault and "422" in fault[0]["verified"]
    finally:
        await env.close()
