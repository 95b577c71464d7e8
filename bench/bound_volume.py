"""Benchmark: the year's bound volume (装订成册) for 12 months of 50 orders x 100,000 items.

Seeds a SQLite database (once; kept at --db) as the flows leave a year: each order
funded, sent in one PAY batch and done in its month, about 97% of items PAID, 2%
FAILED, 1% REFUNDED (one refund per order), a few returned late, and each month's
cnbank statement. Then builds the bound volume in a fresh child process and prints,
as its last line, a JSON object: seconds, peak RSS of the child, pages, bytes.
Target: under 60 s and 300 MB.

    .venv/bin/python bench/bound_volume.py [--orders 50] [--items 100000] [--db var/bench/volume.db]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

YEAR = 2026
BANK = "CNB01"


def seed(db: Path, n_orders: int, n_items: int) -> None:
    from gateway import db as dbmod
    from gateway import statements
    from protocols.cnbank_files import (Statement, StatementBatch, StatementHeader, StatementRefund,
                                        read_statement_file, write_statement_file)
    db.parent.mkdir(parents=True, exist_ok=True)
    if db.exists():
        db.unlink()
    url = f"sqlite:///{db}"
    dbmod.upgrade(url)
    c = sqlite3.connect(db)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=OFF")
    per_month: dict[int, tuple[list, list]] = {}
    for i in range(n_orders):
        month = i % 12 + 1
        no = f"FS3401212026{i:06d}"
        day = f"{YEAR}-{month:02d}-{(i // 12) % 20 + 5:02d}"
        funded, done = f"{day}T09:00:00+08:00", f"{day}T18:00:00+08:00"
        project = f"NY{i % 5 + 1:02d}"
        amounts = [10000 + (s * 37) % 90000 for s in range(1, n_items + 1)]
        total = sum(amounts)

        def status(s: int) -> tuple[str, str]:
            return ("FAILED", "R001") if s % 50 == 0 else ("REFUNDED", "R010") if s % 100 == 1 else ("PAID", "0000")
        c.execute("INSERT INTO orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)" if False else
                  "INSERT INTO orders (order_no, bank_id, budget_unit, project_code, project_name, project_short, "
                  "region, total_amount, total_count, funded_at, state, detail, core_state_pushed, results_pending, "
                  "retry_requested, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                  (no, BANK, "长丰县农业农村局", project, f"补贴项目{project}", "耕地补贴", f"3401{i % 4 + 21:02d}",
                   total, n_items, funded, "DISPATCHED", None, None, 0, 0, funded, funded))
        rows = []
        paid_n = paid_a = fail_n = fail_a = ref_n = ref_a = 0
        for s, a in enumerate(amounts, 1):
            st, rc = status(s)
            if st == "PAID":
                paid_n, paid_a = paid_n + 1, paid_a + a
            else:
                fail_n, fail_a = fail_n + 1, fail_a + a
                if st == "REFUNDED":
                    ref_n, ref_a = ref_n + 1, ref_a + a
            rows.append((no, s, "张三", "110101199003078515", f"6222{s:015d}", "", a, "", st, f"{no}-P01", rc,
                         None, None, done if st != "REFUNDED" else f"{day}T20:00:00+08:00", None, None))
        c.executemany("INSERT INTO items (order_no, seq, name, id_number, account_no, account_bank, amount, remark, "
                      "status, batch_no, reason_code, reason_text, bank_serial, result_at, pushed, orig_batch_no) "
                      "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        done_s = int(datetime.datetime.fromisoformat(done).timestamp())
        c.execute("INSERT INTO batches (batch_no, order_no, bank_id, kind, seq, state, total_count, total_amount, "
                  "succ_cnt, succ_amt, fail_cnt, fail_amt, attempts, created_at, updated_at, done_at, overdue_alarmed, "
                  "bank_overdue_alarmed, bank_batch_no) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                  (f"{no}-P01", no, BANK, "PAY", 1, "DONE", n_items, total, paid_n, paid_a, fail_n, fail_a, 1,
                   funded, done, done_s, 0, 0, f"BK{i:08d}"))
        c.execute("INSERT INTO refunds (refund_no, order_no, bank_id, state, total_count, total_amount, reason, "
                  "approved_by, caller, refund_serial, returned_to, refund_amount, attempts, created_at, updated_at) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                  (f"{no}-F01", no, BANK, "DONE", ref_n, ref_a, "账户人已故", "李科长", "bench", f"RS{i}",
                   "6222000011112222", ref_a, 1, funded, f"{day}T20:00:00+08:00"))
        per_month.setdefault(month, ([], []))
        per_month[month][0].append(StatementBatch(f"{no}-P01", no, n_items, total, paid_n, paid_a, fail_n, fail_a,
                                                  0, 0))
        per_month[month][1].append(StatementRefund(f"{no}-F01", no, ref_n, ref_a, f"RS{i}"))
    c.commit()
    c.close()
    from gateway import db as dbmod2
    engine = dbmod2.make_engine(url)
    with engine.begin() as conn:
        for month, (bl, rl) in sorted(per_month.items()):
            period = f"M{YEAR}{month:02d}"
            h = StatementHeader(period, "6222000099990000", sum(b.succ_cnt for b in bl), sum(b.succ_amt for b in bl),
                                0, 0, sum(r.cnt for r in rl), sum(r.amt for r in rl))
            buf = io.BytesIO()
            write_statement_file(buf, Statement(h, bl, rl))
            statements.store_cnbank_statement(conn, BANK, period, read_statement_file(io.BytesIO(buf.getvalue()),
                                                                                      period=period),
                                              f"cnbank:STMT_{period}.txt", f"{YEAR + month // 12}-{month % 12 + 1:02d}-01T08:00:00+08:00")
    engine.dispose()


def build(db: Path, out: Path) -> None:
    from gateway import db as dbmod
    from gateway.paper import volume
    engine = dbmod.make_engine(f"sqlite:///{db}")
    t = time.monotonic()
    with engine.connect() as conn:
        data = volume.bound_volume(conn, YEAR, bank_names={BANK: "示范代发银行"}, produced_at="bench")
    secs = time.monotonic() - t
    out.write_bytes(data)
    pages = len(re.findall(rb"/Type /Page\b", data))
    use = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds too: on a shared, loaded machine the wall clock measures the neighbours.
    print(json.dumps({"seconds": round(secs, 2), "cpu_seconds": round(use.ru_utime + use.ru_stime, 2),
                      "peak_rss_mb": use.ru_maxrss // 1024, "pages": pages, "bytes": len(data),
                      "load_average": os.getloadavg()[0]}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--orders", type=int, default=50)
    p.add_argument("--items", type=int, default=100000)
    p.add_argument("--db", default="var/bench/volume.db")
    p.add_argument("--out", default="var/bench/volume.pdf")
    p.add_argument("--reseed", action="store_true")
    p.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    db, out = Path(a.db), Path(a.out)
    if a.build_only:
        build(db, out)
        return
    stamp = db.with_suffix(".seeded")
    want = f"{a.orders}x{a.items}"
    if a.reseed or not db.exists() or not stamp.exists() or stamp.read_text() != want:
        t = time.monotonic()
        seed(db, a.orders, a.items)
        stamp.write_text(want)
        print(f"seeded {a.orders} orders x {a.items} items in {time.monotonic() - t:.1f} s", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, __file__, "--build-only", "--db", str(db), "--out", str(out)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    sys.stderr.write(r.stderr)
    print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "{}")
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
