"""A step that keeps failing with an unexpected error is one alarm episode, not only log lines.

In the million-item benchmark the pay batch's UPDATE was cancelled by a statement timeout tick
after tick and only the log said so. Here the batch step is made to fail (its transaction
raises, as a cancelled statement does) until the fault is lifted: one critical `step-failed`
episode, seen again and again (count), then cleared by the daemon when the step goes through,
and the order is paid once.
"""

from __future__ import annotations

import pytest_twisted

from tests.support import in_process, spec


@pytest_twisted.ensureDeferred
async def test_a_step_failing_again_and_again_is_one_alarm_cleared_when_it_goes_through(reactor, tmp_path):
    o = "STEPF001"
    env = await in_process(reactor, tmp_path, [spec(o, 5)])
    flow = env.flow
    real = flow._new_batch
    failing = {"on": True}

    def new_batch(conn, *a, **kw):
        if failing["on"]:
            raise RuntimeError("QueryCanceled: canceling statement due to statement timeout")
        return real(conn, *a, **kw)
    flow._new_batch = new_batch
    try:
        await env.until(lambda: env.query("select 1 from alarms where kind='step-failed' and count >= 2"),
                        what="the failing step alarmed and seen again")
        episodes = await env.query("select severity, key, message, cleared_at from alarms where kind='step-failed'")
        assert len(episodes) == 1 and episodes[0]["severity"] == "critical"
        assert episodes[0]["key"] == f"batch order {o}" and "statement timeout" in episodes[0]["message"]
        assert not await env.query("select 1 from batches")
        failing["on"] = False
        await env.until(lambda: env.query("select 1 from alarms where kind='step-failed' and cleared_at is not null"),
                        what="the episode cleared")
        await env.until(lambda: env.query("select 1 from orders where state='SETTLED'"), what="SETTLED")
        assert len(env.sims.bank.credits(o)) == 5 and not env.sims.bank.double_credits()
        assert len(await env.query("select 1 from alarms where kind='step-failed'")) == 1
    finally:
        await env.close()
