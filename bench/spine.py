"""`make bench ITEMS=N [DB=postgresql://...]`: one order of N items through every stage of the spine.

On SQLite by default; with `--db URL` (a PostgreSQL server) on a fresh database made on that
server for the run and dropped after it.

The core and bank simulators run in this process on loopback; the daemon's
flow runs in its own process (bench/stage_runner.py), so its peak RSS is the
daemon's alone. The last line printed is one JSON object:
{"items", "total_s", "peak_rss_mb", "stages_s": {...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

from simulators import datagen, harness


def order_spec(n: int) -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no=f"BENCH{n}", bank_id=harness.BANK_ID, count=n, seed=42,
        budget_unit="市农业农村局", project_code="NY2026-01", project_name="2026年耕地地力保护补贴",
        project_short="耕地补贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={"R001": 0.01, "R004": 0.01, "R010": 0.005})


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


async def run(reactor, n: int, root: Path, db: str | None = None) -> dict:
    if root.exists():
        shutil.rmtree(root)
    p = harness.Paths(root)
    keys = harness.make_keys(p)
    spec = order_spec(n)
    sims = await harness.start_simulators(reactor, p, keys, [spec], token="bench",
                                          processing_delay_s=0.1, core_cache=True)
    db_url = None
    try:
        db_url = make_pg_database(db, f"bench_{n}_{os.getpid()}") if db else None
        t = time.perf_counter()
        await sims.core.header(spec.order_no)     # the simulator renders and totals the order
        prep = time.perf_counter() - t
        cfg = harness.write_config(p, keys, sims.ports, db_url=db_url, token="bench", poll_s=0.2,
                                   status_poll_s=0.2, results_chunk=10000)
        harness.migrate(cfg)
        t = time.perf_counter()
        proc = await deferToThread(
            subprocess.run, [sys.executable, str(Path(__file__).with_name("stage_runner.py")), str(cfg)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
        total = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"stage runner failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        summary = (await sims.core.summary())["orders"][spec.order_no]
        ledger = (await sims.ledger_by_order())[spec.order_no]
        paid = summary["results"].get("PAID", {}).get("count", 0)
        failed = summary["results"].get("FAILED", {}).get("count", 0)
        return {"items": n, "db": "postgresql" if db_url else "sqlite",
                "total_s": round(total, 2), "peak_rss_mb": child["peak_rss_mb"],
                "peak_rss_after_stage_mb": child["peak_rss_after_stage_mb"],
                "stages_s": child["stages_s"], "daemon_process_s": child["daemon_total_s"],
                "core_sim_prepare_s": round(prep, 2), "state": summary["state"],
                "paid": paid, "failed": failed, "bank_credits": ledger["count"],
                "double_credits": ledger["double"], "all_reported": paid + failed == n}
    finally:
        await sims.stop()
        if db_url:
            drop_pg_database(db_url)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dir", default="var/bench")
    ap.add_argument("--db", default="sqlite", help="sqlite, or a PostgreSQL server URL: the run makes "
                                                    "a fresh database on it (dropped after)")
    args = ap.parse_args()

    async def go(reactor):
        db = None if args.db in ("", "sqlite") else args.db
        result = await run(reactor, args.items, Path(args.dir).resolve(), db)
        print(json.dumps(result, ensure_ascii=False), flush=True)
    task.react(lambda r: defer.ensureDeferred(go(r)))


if __name__ == "__main__":
    main()
