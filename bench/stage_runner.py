"""The daemon's flow for one order, stage by stage, timed: run as its own process by bench/spine.py.

    stage_runner.py CONFIG [--baselines] [--sink URL]

It builds the same service `gatewayd` builds from the same configuration and
calls the same BankFlow steps the ticker calls, in order, so each stage can be
timed on its own. Per stage: wall seconds, this process's CPU seconds, its peak
RSS during the stage (VmHWM, reset before each stage through /proc/self/clear_refs)
and the stage's window on CLOCK_MONOTONIC (shared by every process, so spine.py can
tell what its simulators did meanwhile). With --baselines, each stage that has one
is followed by its raw baseline (bench/baselines.py, a process of its own, on the
same database and files), timed apart: not in the stage's figures, nor in the total. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from sqlalchemy import text
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Start VmHWM again from the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Meter:
    """Each stage's wall and CPU seconds, peak RSS and CLOCK_MONOTONIC window; baselines apart."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.windows: dict[str, list[float]] = {}
        self.baselines: dict[str, dict] = {}
        self.baseline_windows: dict[str, list[float]] = {}
        self.outside = 0.0          # seconds spent on baselines: not the daemon's
        self.resettable = reset_peak_rss()

    def begin(self):
        if self.resettable:
            reset_peak_rss()
        return time.perf_counter(), time.process_time(), time.monotonic()

    def end(self, name: str, began, *, wall: float | None = None, cpu: float | None = None) -> None:
        t, c, m = began
        self.stages[name] = round(time.perf_counter() - t if wall is None else wall, 2)
        self.cpu[name] = round(time.process_time() - c if cpu is None else cpu, 2)
        self.peaks[name] = round(peak_rss_mb(), 1)
        self.windows[name] = [m, time.monotonic()]

    async def baseline(self, stage: str, config_path: str, number: str, sink_url: str | None) -> None:
        """bench/baselines.py for this stage, as a process of its own; its seconds are set apart."""
        import subprocess
        t, m = time.perf_counter(), time.monotonic()
        cmd = [sys.executable, str(Path(__file__).with_name("baselines.py")), config_path, stage, number]
        if sink_url:
            cmd += ["--sink", sink_url]
        proc = await deferToThread(subprocess.run, cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            parts = json.loads(proc.stdout.strip().splitlines()[-1])
        else:   # a baseline that fails is reported; the run goes on
            parts = {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else
                     f"exit {proc.returncode}"}
        prev = self.baselines.get(stage)
        if prev and "error" not in prev and "error" not in parts:   # several batches/orders: summed
            parts = {k: round(prev.get(k, 0) + v, 3) for k, v in parts.items()}
        self.baselines[stage] = parts
        self.baseline_windows.setdefault(stage, []).append([m, time.monotonic()])
        self.outside += time.perf_counter() - t


async def run(reactor, config_path: str, *, baselines: bool = False, sink_url: str | None = None) -> dict:
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
    m = Meter()

    async def baseline(stage: str, number: str) -> None:
        if baselines:
            await m.baseline(stage, config_path, number, sink_url)
    t_all = time.perf_counter()

    async def stage(name, coro_fn):
        began = m.begin()
        await coro_fn()
        m.end(name, began)

    await stage("poll", flow.poll_core)

    loaded: list[str] = []

    async def load():
        for no in await db.run(flow._orders_in, (OrderState.FUNDED,)):
            await flow.load_order(no)
            loaded.append(no)
    await stage("pull_validate_store", load)
    for no in loaded:
        await baseline("pull_validate_store", no)

    async def build():
        for no in await db.run(flow._orders_needing_batch):
            await flow.create_pay_batch(no)
        for b in await db.run(flow._live_batches):
            await flow.build(b)
    await stage("build_sign_encrypt", build)
    for b in await db.run(flow._live_batches):
        await baseline("build_sign_encrypt", b["batch_no"])

    async def upload():
        for b in await db.run(flow._live_batches):
            await flow.upload(b)
    await stage("upload_sftp", upload)
    for b in await db.run(flow._live_batches):
        await baseline("upload_sftp", b["batch_no"])

    async def submit():
        for b in await db.run(flow._live_batches):
            await flow.submit(b)
    await stage("submit_bp01", submit)

    # BQ01 until DONE. The query that finds DONE goes on to download, verify, decrypt, parse
    # and apply the result file (flow.fetch_results, timed here through a wrapper on the
    # instance): that is the fetch_verify_apply stage; the rest of the wait, including a BQ01
    # the bank answers only once it has processed the batch, is bank_processing.
    began = m.begin()
    t, c = began[0], began[1]
    fetched: list[tuple[str, float, float, float, float]] = []
    fetch_results = flow.fetch_results

    async def timed_fetch(batch_no: str) -> None:
        tf, cf, mf = time.perf_counter(), time.process_time(), time.monotonic()
        await fetch_results(batch_no)
        fetched.append((batch_no, time.perf_counter() - tf, time.process_time() - cf, mf, time.monotonic()))
    flow.fetch_results = timed_fetch
    while True:
        live = [b for b in await db.run(flow._live_batches) if b["state"] == BatchState.ACCEPTED]
        if not live:
            break
        for b in live:
            await flow.query(b)
        await task.deferLater(reactor, 0.2, lambda: None)
    del flow.fetch_results
    apply_s = sum(f[1] for f in fetched)
    apply_cpu = sum(f[2] for f in fetched)
    applied = [f[0] for f in fetched]
    m.end("bank_processing", began, wall=time.perf_counter() - t - apply_s,
          cpu=time.process_time() - c - apply_cpu)
    m.end("fetch_verify_apply", began, wall=apply_s, cpu=apply_cpu)
    m.peaks["bank_processing"] = m.peaks["fetch_verify_apply"]  # one VmHWM for both
    if fetched:
        m.windows["bank_processing"] = [began[2], fetched[0][3]]
        m.windows["fetch_verify_apply"] = [fetched[0][3], fetched[-1][4]]
    for no in applied:
        await baseline("fetch_verify_apply", no)

    pushed = await db.run(lambda c: [r[0] for r in c.execute(text(
        "select order_no from orders where results_pending = 1"))])
    await stage("push_results_to_core", flow.push_results)
    for no in pushed:
        await baseline("push_results_to_core", no)
    await stage("push_states_to_core", flow.push_states)
    total = round(time.perf_counter() - t_all - m.outside, 2)
    db.stop()
    await gw.flows[flow.bank_id].core.close()
    return {"stages_s": m.stages, "stage_cpu_s": m.cpu, "daemon_total_s": total,
            "peak_rss_mb": max(m.peaks.values()) if m.resettable else round(peak_rss_mb(), 1),
            "peak_rss_per_stage_mb" if m.resettable else "peak_rss_after_stage_mb": m.peaks,
            "windows": m.windows, "baselines": m.baselines, "baseline_windows": m.baseline_windows,
            "baseline_s": round(m.outside, 2), "db": db.engine.dialect.name}


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--baselines", action="store_true")
    ap.add_argument("--sink", default=None)
    a = ap.parse_args()

    async def go(reactor):
        print(json.dumps(await run(reactor, a.config, baselines=a.baselines, sink_url=a.sink)), flush=True)
    task.react(lambda r: defer.ensureDeferred(go(r)))


if __name__ == "__main__":
    main()
