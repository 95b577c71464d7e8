"""The daemon's flow for one order, stage by stage, timed: run as its own process by bench/spine.py.

It builds the same service `gatewayd` builds from the same configuration and
calls the same BankFlow steps the ticker calls, in order, so each stage can be
timed on its own; its peak RSS (VmHWM) is the daemon's. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from sqlalchemy import text
from twisted.internet import defer, task


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(reactor, config_path: str) -> dict:
    from gateway import config as configmod
    from gateway.models import BatchState, OrderState
    from gateway.service import make_service

    cfg = configmod.load(config_path)
    gw = make_service(cfg, reactor)
    gw.database.start()
    # The stages drive the flow by hand: hold its lease for the run (its transactions are fenced).
    import math
    for lead in gw.leadership:
        lead.fence.grant(lead.lease.acquire(), math.inf)
    flow = next(iter(gw.flows.values()))
    db = gw.database
    stages: dict[str, float] = {}
    peaks: dict[str, float] = {}   # VmHWM after each stage: where memory peaked
    t_all = time.perf_counter()

    async def stage(name, coro_fn):
        t = time.perf_counter()
        await coro_fn()
        stages[name] = round(time.perf_counter() - t, 2)
        peaks[name] = round(peak_rss_mb(), 1)

    await stage("poll", flow.poll_core)

    async def load():
        for no in await db.run(flow._orders_in, (OrderState.FUNDED,)):
            await flow.load_order(no)
    await stage("pull_validate_store", load)

    async def build():
        for no in await db.run(flow._orders_needing_batch):
            await flow.create_pay_batch(no)
        for b in await db.run(flow._live_batches):
            await flow.build(b)
    await stage("build_sign_encrypt", build)

    async def upload():
        for b in await db.run(flow._live_batches):
            await flow.upload(b)
    await stage("upload_sftp", upload)

    async def submit():
        for b in await db.run(flow._live_batches):
            await flow.submit(b)
    await stage("submit_bp01", submit)

    # BQ01 until DONE. The query that finds DONE also downloads, verifies, decrypts,
    # parses and applies the result file: its duration is that stage; the rest is
    # the bank's processing (decrypt, verify, credit its ledger, write the result).
    t = time.perf_counter()
    apply_s = 0.0
    while True:
        live = [b for b in await db.run(flow._live_batches) if b["state"] == BatchState.ACCEPTED]
        if not live:
            break
        for b in live:
            tq = time.perf_counter()
            await flow.query(b)
            done = await db.run(lambda c, no=b["batch_no"]: c.execute(
                text("select state from batches where batch_no=:n"), {"n": no}).scalar_one())
            if done == BatchState.DONE:
                apply_s += time.perf_counter() - tq
        await task.deferLater(reactor, 0.2, lambda: None)
    stages["bank_processing"] = round(time.perf_counter() - t - apply_s, 2)
    stages["fetch_verify_apply"] = round(apply_s, 2)
    peaks["bank_processing_and_apply"] = round(peak_rss_mb(), 1)

    await stage("push_results_to_core", flow.push_results)
    await stage("push_states_to_core", flow.push_states)
    total = round(time.perf_counter() - t_all, 2)
    db.stop()
    await gw.flows[flow.bank_id].core.close()
    return {"stages_s": stages, "daemon_total_s": total, "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_after_stage_mb": peaks}


def main() -> None:
    async def go(reactor):
        print(json.dumps(await run(reactor, sys.argv[1])), flush=True)
    task.react(lambda r: defer.ensureDeferred(go(r)))


if __name__ == "__main__":
    main()
