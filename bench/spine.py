"""`make bench ITEMS=N [DB=postgresql://...]`: one order of N items through every stage of the spine.

On SQLite by default; with `--db URL` (a PostgreSQL server) on a fresh database made on that
server for the run and dropped after it.

The core and bank simulators run in this process on loopback; the daemon's
flow runs in its own process (bench/stage_runner.py), so its peak RSS is the
daemon's alone. After each stage that has one, the stage's raw baseline runs
(bench/baselines.py: the same job with the driver, http.client, OpenSSH sftp and
`cryptography` directly, in a process like the stage runner, on the same
database), timed apart from the stage. Meanwhile this process measures what its
simulators do: its CPU seconds within each stage's window (every simulator and
its HTTP/TCP/SFTP servers) and the wall seconds the core simulator spends storing
results and the bank simulator processing a batch or answering a request.

Prints a markdown table (stage, seconds, baseline, ratio, peak RSS, simulators'
CPU) and, last, one JSON object:
{"items", "total_s", "peak_rss_mb", "stages_s": {...}, "baselines": {...}, "table": [...], ...}.
--no-baselines runs the stages alone (the figures to quote for the end-to-end time);
--table OUT... prints one compact table (run, stage, s, baseline, ratio, RSS) of runs saved before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulators import datagen, harness  # noqa: E402

# Stage -> the baseline part that differs when the sink stands in for the core (reported beside).
ORDER = ("poll", "pull_validate_store", "build_sign_encrypt", "upload_sftp", "submit_bp01",
         "bank_processing", "fetch_verify_apply", "push_results_to_core", "push_states_to_core")
NOT_BASELINE = {"rows", "bytes", "post_sink", "error"}


def order_spec(n: int) -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no=f"BENCH{n}", bank_id=harness.BANK_ID, count=n, seed=42,
        budget_unit="市农业农村局", project_code="NY2026-01", project_name="2026年耕地地力保护补贴",
        project_short="耕地补贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={"R001": 0.01, "R004": 0.01, "R010": 0.005})


class SimMeter:
    """What the simulators in this process do: CPU seconds sampled against CLOCK_MONOTONIC
    (a thread, so a busy reactor does not delay the samples), and the wall intervals of
    their handlers (wrapped on the instances: the simulators' code is not changed)."""

    def __init__(self, period: float = 0.01) -> None:
        self.samples: list[tuple[float, float]] = [(time.monotonic(), time.process_time())]
        self.busy: dict[str, list[tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(period,), daemon=True)
        self._thread.start()

    def _sample(self, period: float) -> None:
        while not self._stop.wait(period):
            self.samples.append((time.monotonic(), time.process_time()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), time.process_time()))

    def wrap(self, obj, attr: str, label: str) -> None:
        orig = getattr(obj, attr)
        spans = self.busy.setdefault(label, [])

        async def timed(*a, **kw):
            t = time.monotonic()
            try:
                return await orig(*a, **kw)
            finally:
                spans.append((t, time.monotonic()))
        setattr(obj, attr, timed)

    def _cpu_at(self, t: float) -> float:
        import bisect
        s = self.samples
        i = bisect.bisect_left(s, (t, -1.0))
        if i <= 0:
            return s[0][1]
        if i >= len(s):
            return s[-1][1]
        (t0, c0), (t1, c1) = s[i - 1], s[i]
        return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0)

    def cpu(self, a: float, b: float) -> float:
        return max(0.0, self._cpu_at(b) - self._cpu_at(a))

    def busy_in(self, label: str | None, a: float, b: float) -> float:
        """Seconds within [a, b] when at least one `label` handler (any, for None) was running."""
        every = [x for k, v in self.busy.items() if label in (None, k) for x in v]
        spans = sorted((max(s, a), min(e, b)) for s, e in every if e > a and s < b)
        total, end = 0.0, a
        for s, e in spans:
            if e > end:
                total += e - max(s, end)
                end = e
        return total


async def start_sink(reactor):
    """A bare twisted.web POST sink: reads the body, answers 200 {}; the core without its storing."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Sink(Resource):
        isLeaf = True

        def render_POST(self, request):  # noqa: N802
            request.content.read()
            request.setHeader(b"content-type", b"application/json")
            return b"{}"
    return reactor.listenTCP(0, Site(Sink()), interface="127.0.0.1")


def table(result: dict) -> list[dict]:
    """One row per stage: seconds, baseline (sum of its parts), ratio, peak RSS, simulators."""
    rows = []
    stages, base = result["stages_s"], result.get("baselines", {})
    for name in ORDER:
        if name not in stages:
            continue
        b = base.get(name)
        row = {"stage": name, "s": stages[name], "cpu_s": result.get("stage_cpu_s", {}).get(name),
               "rss_mb": result.get("peak_rss_per_stage_mb", {}).get(name),
               "sim_cpu_s": result.get("sim", {}).get(name, {}).get("cpu_s"),
               "sim_busy_s": result.get("sim", {}).get(name, {}).get("busy_s")}
        if b and "error" not in b:
            row["baseline_s"] = round(sum(v for k, v in b.items() if k not in NOT_BASELINE), 2)
            row["ratio"] = round(stages[name] / row["baseline_s"], 2) if row["baseline_s"] else None
            row["parts"] = {k: v for k, v in b.items() if k not in ("rows", "bytes", "error")}
        elif b:
            row["baseline_error"] = b["error"]
        rows.append(row)
        if b and "post_sink" in b:
            sink = round(sum(v for k, v in b.items() if k not in NOT_BASELINE | {"post"}) + b["post_sink"], 2)
            rows.append({"stage": f"{name} (vs a bare sink)", "s": stages[name], "baseline_s": sink,
                         "ratio": round(stages[name] / sink, 2) if sink else None,
                         "parts": {k: v for k, v in b.items() if k not in NOT_BASELINE | {"post"}}
                         | {"post_sink": b["post_sink"]}})
    return rows


def markdown(result: dict) -> str:
    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)
    busy_all = result["sim_total_busy_s"]
    lines = [f"{result['items']:,} items, {result['db']}: daemon {result['total_s']} s end to end "
             f"({result.get('baseline_s', 0)} s of baselines apart), peak RSS {result['peak_rss_mb']} MB; "
             f"within the stages the simulators were busy {busy_all:.1f} s "
             f"({100 * busy_all / result['total_s']:.0f}% of the time) and used "
             f"{result['sim_total_cpu_s']} s of CPU",
             "",
             "| stage | s | baseline s | ratio | daemon CPU s | peak RSS MB | sims' CPU s | sims busy s | baseline parts (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["table"]:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r.get("parts", {}).items())
        if "baseline_error" in r:
            parts = f"baseline failed: {r['baseline_error']}"
        lines.append(f"| {r['stage']} | {f(r['s'])} | {f(r.get('baseline_s'))} | {f(r.get('ratio'))} | "
                     f"{f(r.get('cpu_s'))} | {f(r.get('rss_mb'), '{:.0f}')} | {f(r.get('sim_cpu_s'))} | "
                     f"{f(r.get('sim_busy_s'))} | {parts} |")
    busy = result.get("sim_busy_s", {})
    if busy:
        lines += ["", "sims' CPU: this process's CPU (every simulator and its servers) within the stage; "
                  "sims busy: wall seconds within it when a core store or a bank request/batch was being "
                  "handled. Over all stages: " + ", ".join(f"{k} {v} s" for k, v in busy.items())]
    return "\n".join(lines)


def make_pg_database(url: str, name: str) -> str:
    """A fresh database `name` on the server of `url` (as chaos/run.py makes its own); its URL."""
    import sqlalchemy as sa
    base = sa.engine.make_url(url)
    if base.drivername == "postgresql":
        base = base.set(drivername="postgresql+psycopg")
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    import sqlalchemy as sa
    u = sa.engine.make_url(url)
    admin = sa.create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
    admin.dispose()


async def run(reactor, n: int, root: Path, *, baselines: bool = True, db: str | None = None) -> dict:
    if root.exists():
        shutil.rmtree(root)
    p = harness.Paths(root)
    keys = harness.make_keys(p)
    spec = order_spec(n)
    sims = await harness.start_simulators(reactor, p, keys, [spec], token="bench",
                                          processing_delay_s=0.1, core_cache=True)
    meter = SimMeter()
    meter.wrap(sims.core, "_post_results", "core_store_results")
    meter.wrap(sims.core, "_post_state", "core_store_state")
    meter.wrap(sims.bank, "_handle", "bank_tcp_request")
    meter.wrap(sims.bank, "_process_batch", "bank_process_batch")
    sink = await start_sink(reactor) if baselines else None
    db_url = None
    try:
        db_url = make_pg_database(db, f"bench_{n}_{os.getpid()}") if db else None
        t = time.perf_counter()
        await sims.core.header(spec.order_no)     # the simulator renders and totals the order
        prep = time.perf_counter() - t
        cfg = harness.write_config(p, keys, sims.ports, db_url=db_url, token="bench", poll_s=0.2,
                                   status_poll_s=0.2, results_chunk=10000)
        harness.migrate(cfg)
        cmd = [sys.executable, str(Path(__file__).with_name("stage_runner.py")), str(cfg)]
        if baselines:
            cmd += ["--baselines", "--sink", f"http://127.0.0.1:{sink.getHost().port}"]
        t = time.perf_counter()
        proc = await deferToThread(
            subprocess.run, cmd, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"stage runner failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        meter.stop()
        summary = (await sims.core.summary())["orders"][spec.order_no]
        ledger = (await sims.ledger_by_order())[spec.order_no]
        paid = summary["results"].get("PAID", {}).get("count", 0)
        failed = summary["results"].get("FAILED", {}).get("count", 0)
        sim = {name: {"cpu_s": round(meter.cpu(a, b), 2), "busy_s": round(meter.busy_in(None, a, b), 2),
                      **{k: round(meter.busy_in(k, a, b), 2) for k in sorted(meter.busy)}}
               for name, (a, b) in child["windows"].items()}
        labels = sorted(meter.busy)
        busy = {label: round(sum(meter.busy_in(label, a, b) for a, b in child["windows"].values()), 2)
                for label in labels}
        result = {"items": n, "db": child.get("db", "sqlite"), "total_s": child["daemon_total_s"],
                  "wall_with_baselines_s": round(wall, 2), "baseline_s": child["baseline_s"],
                  "peak_rss_mb": child["peak_rss_mb"],
                  **{k: child[k] for k in ("peak_rss_per_stage_mb", "peak_rss_after_stage_mb") if k in child},
                  "stages_s": child["stages_s"], "stage_cpu_s": child["stage_cpu_s"],
                  "baselines": child["baselines"], "sim": sim,
                  "sim_total_cpu_s": round(sum(v["cpu_s"] for v in sim.values()), 2),
                  "sim_total_busy_s": round(sum(v["busy_s"] for v in sim.values()), 2), "sim_busy_s": busy,
                  "core_sim_prepare_s": round(prep, 2), "state": summary["state"],
                  "paid": paid, "failed": failed, "bank_credits": ledger["count"],
                  "double_credits": ledger["double"], "all_reported": paid + failed == n}
        result["table"] = table(result)
        return result
    finally:
        if sink is not None:
            await sink.stopListening()
        meter.stop() if not meter._stop.is_set() else None
        await sims.stop()
        if db_url:
            drop_pg_database(db_url)


def closing_table(results: list[dict]) -> str:
    """Several runs' results (their JSON lines) as one compact table: run, stage, seconds,
    baseline, ratio, peak RSS; for a closing note (issue 13: 100k and 1M, SQLite and PostgreSQL)."""
    lines = ["| run | stage | s | baseline s | ratio | peak RSS MB |", "|---|---|---:|---:|---:|---:|"]
    for r in results:
        run = f"{r['items']:,} {r['db']}"
        lines.append(f"| {run} | **end to end** | {r['total_s']} | | | {r['peak_rss_mb']:.0f} |")
        for row in r["table"]:
            rss = row.get("rss_mb")
            lines.append(f"| {run} | {row['stage']} | {row['s']} | {row.get('baseline_s', '')} | "
                         f"{row.get('ratio', '')} | {'' if rss is None else f'{rss:.0f}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dir", default="var/bench")
    ap.add_argument("--db", default="sqlite", help="sqlite, or a PostgreSQL server URL: the run makes "
                                                    "a fresh database on it (dropped after)")
    ap.add_argument("--no-baselines", action="store_true", help="the stages alone, no raw baselines")
    ap.add_argument("--table", nargs="+", metavar="OUTPUT",
                    help="print one compact table of earlier runs (files holding their output) and exit")
    args = ap.parse_args()
    if args.table:
        results = []
        for name in args.table:
            last = [ln for ln in Path(name).read_text().splitlines() if ln.startswith("{")][-1]
            results.append(json.loads(last))
        print(closing_table(results))
        return

    async def go(reactor):
        db = None if args.db in ("", "sqlite") else args.db
        result = await run(reactor, args.items, Path(args.dir).resolve(), baselines=not args.no_baselines,
                           db=db)
        print(markdown(result), flush=True)
        print(json.dumps(result, ensure_ascii=False), flush=True)
    task.react(lambda r: defer.ensureDeferred(go(r)))


if __name__ == "__main__":
    main()
