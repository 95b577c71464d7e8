"""Each console page's answer time with a 1,000,000-item order and 100,000 journal entries.

    python bench/console_pages.py [--backend sqlite|postgresql|both] [--items 1000000] [--journal 100000]

Fills a fresh database (SQLite file; PostgreSQL database console_bench on 127.0.0.1:5432),
serves the real console (gateway/console/) on loopback in a reactor thread, signs in and
GETs each page over HTTP: one warm-up, then --runs timed requests; prints a table and one
JSON line per backend (median and worst milliseconds a page). Not a test: a measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import http.cookiejar
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BIG = "BIG0000001"
PG_ADMIN = os.environ.get("GATEWAY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TX = ["BP01", "BQ01", "HB01", "GET items", "results", "RF01", "RQ01", "console.alarm.ack"]


def _fill(url: str, n_items: int, n_journal: int) -> None:
    import sqlalchemy as sa

    from gateway import db as dbmod
    from gateway.models import alarms, batches, corrections, items, journal, journal_head, orders
    dbmod.upgrade(url)
    engine = dbmod.make_engine(url)
    t0 = time.monotonic()
    with engine.begin() as c:
        c.execute(sa.insert(orders), [dict(order_no=no, bank_id="cnbank-demo", budget_unit="长丰县农业农村局",
                                           project_code="NY2026-01", project_name="2026年耕地地力保护补贴",
                                           project_short="耕地补贴", region="340121", total_amount=n * 10000,
                                           total_count=n, funded_at="2026-11-02T09:30:00+08:00",
                                           state="DISPATCHED", created_at="2026-11-02", updated_at="2026-11-02")
                                      for no, n in [(BIG, n_items)] + [(f"ORD{i:07d}", 100) for i in range(1000)]])
        c.execute(sa.insert(batches), [dict(batch_no=f"{BIG}-P{k:02d}", order_no=BIG, bank_id="cnbank-demo",
                                            kind="PAY", seq=k, state="DONE", total_count=n_items // 10,
                                            total_amount=n_items // 10 * 10000, bank_batch_no=f"0120261208{k:08d}",
                                            created_at="2026-11-02", updated_at="2026-11-03", bank_due="2026-11-04",
                                            confirm_due="2026-11-10", dispute_due="2026-11-13")
                                       for k in range(1, 11)])

    def item(seq: int) -> tuple:
        r = seq % 40
        status, code = ("FAILED", "R001") if r == 0 else ("FAILED", "R003") if r == 1 else \
            ("SENT", None) if r == 2 else ("PAID", None)
        return (BIG, seq, "张三", f"34012119800101{seq % 10000:04d}", f"62220202{seq:011d}", "农商行",
                10000, "", status, f"{BIG}-P{seq % 10 + 1:02d}", code)
    cols = "order_no, seq, name, id_number, account_no, account_bank, amount, remark, status, batch_no, reason_code"
    if url.startswith("postgresql"):
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur, cur.copy(f"COPY items ({cols}) FROM STDIN") as cp:
                for seq in range(1, n_items + 1):
                    cp.write_row(item(seq))
            raw.commit()
        finally:
            raw.close()
    else:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for start in range(1, n_items + 1, 100_000):
                cur.executemany(f"INSERT INTO items ({cols}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                [item(s) for s in range(start, min(start + 100_000, n_items + 1))])
            raw.commit()
        finally:
            raw.close()
    with engine.begin() as c:
        c.execute(sa.insert(corrections), [dict(order_no=BIG, seq=40 * k, at="2026-11-05", failed_batch_no=f"{BIG}-P01",
                                                reason_code="R001", old_values=json.dumps({"account_no": "6222020200112233445"}),
                                                new_values=json.dumps({"account_no": "6228480000000123457"}),
                                                confirmed_by="本人", approved_by="李科长", approval_ref="NY[2026]17号",
                                                caller="unix", journal_id=1) for k in range(1, 501)])
        c.execute(sa.insert(alarms), [dict(at="2026-11-05", severity="warning" if k % 3 else "critical",
                                           kind="bank-refusing", bank_id="cnbank-demo", message=f"alarm {k}",
                                           count=1, last_at="2026-11-05", key=str(k),
                                           cleared_at=None if k % 5 == 0 else "2026-11-06") for k in range(1, 1001)])
        rows, prev = [], "0" * 64
        for i in range(1, n_journal + 1):
            h = hashlib.sha256(f"{i}".encode()).hexdigest()
            tx = TX[i % len(TX)] if i % 1000 else "DP01"
            rows.append(dict(id=i, at=f"2026-11-{2 + i * 20 // n_journal:02d}T10:00:00+08:00",
                             direction="out" if i % 2 else "in", peer="cnbank-demo", channel="tcp", tx_code=tx,
                             msg_id=f"M{i // 2:09d}", order_no=BIG if i % 3 == 0 else f"ORD{i % 1000:07d}",
                             batch_no=f"{BIG}-P{i % 10 + 1:02d}" if i % 3 == 0 else None,
                             verified="ok" if i % 50 else "failed: bad signature",
                             payload=b"<Msg>" + b"x" * 400 + b"</Msg>", payload_ref=None, payload_size=411,
                             payload_sm3=h, decoded=json.dumps({"IdNo": "3401**********0001", "Amt": "100.00"}),
                             prev_hash=prev, hash=h, mac=None))
            prev = h
            if len(rows) == 20_000:
                c.execute(sa.insert(journal), rows)
                rows = []
        if rows:
            c.execute(sa.insert(journal), rows)
        c.execute(sa.update(journal_head).values(last_id=n_journal, last_hash=prev))
        if url.startswith("postgresql"):
            c.execute(sa.text("SELECT setval(pg_get_serial_sequence('journal', 'id'), :n)"), {"n": n_journal})
    if url.startswith("postgresql"):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            # What autovacuum does within a minute of a bulk load: without it the visibility
            # map is empty and the planner cannot use an index-only scan.
            c.execute(sa.text("VACUUM ANALYZE"))
    else:
        with engine.begin() as c:
            c.execute(sa.text("ANALYZE"))
    engine.dispose()
    print(f"  filled in {time.monotonic() - t0:.1f} s", flush=True)


def _serve(url: str, tmp: str):
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread
    from twisted.web import server

    from gateway import db as dbmod
    from gateway.console.auth import Auth, add_user, read_users
    from gateway.console.web import Console
    from gateway.journal import Journal
    users = os.path.join(tmp, "users")
    add_user(users, "bench", "auditor", "bench-password", rounds=4)
    if not reactor.running:
        threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True).start()
        while not reactor.running:
            time.sleep(0.01)

    def start():
        database = dbmod.Database(reactor, dbmod.make_engine(url), 2)
        database.start()
        gw = SimpleNamespace(flows={}, tickers={}, leadership=None, commands=None)
        res = Console(reactor, Auth(read_users(users), reactor.seconds), database, gw,
                      Journal(os.path.join(tmp, "journal")))
        if hasattr(res, "count_ttl_s"):
            res.count_ttl_s = 0.0     # every view counts: the cost of a view, not of a cache hit
        return reactor.listenTCP(0, server.Site(res), interface="127.0.0.1"), database
    port, database = blockingCallFromThread(reactor, start)
    return reactor, port, database


def _bench(url: str, runs: int, n_items: int, n_journal: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="console-bench-")
    _fill(url, n_items, n_journal)
    reactor, port, database = _serve(url, tmp)
    base = f"http://127.0.0.1:{port.getHost().port}"
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(base + "/login").read().decode()
    pre = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    opener.open(base + "/login", urllib.parse.urlencode({"csrf": pre, "user": "bench", "password": "bench-password",
                                                         "next": "/"}).encode()).read()
    pages = {
        "overview": "/",
        "orders search": f"/orders?order_no={BIG}",
        "order 1M items": f"/orders/{BIG}",
        "order items FAILED R003": f"/orders/{BIG}?status=FAILED&reason=R003",
        "order items after 900000": f"/orders/{BIG}?after=900000",
        "item + corrections": f"/orders/{BIG}/items/400",
        "journal": "/journal",
        "journal type=BP01": "/journal?type=BP01",
        "journal type=DP01 (rare)": "/journal?type=DP01",
        "journal order=BIG": f"/journal?order={BIG}",
        "journal verified=failed": "/journal?verified=failed",
        "journal older page": f"/journal?before={n_journal // 2}",
        "journal entry": f"/journal/{n_journal // 2}",
        "alarms open": "/alarms",
        "alarms history": "/alarms?which=all",
    }
    out = {}
    for name, path in pages.items():
        t = time.perf_counter()
        r = opener.open(base + path)
        body = r.read()
        first = (time.perf_counter() - t) * 1000
        assert r.status == 200 and b"Sign in" not in body[:2000] or b"/logout" in body, (name, body[:300])
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            opener.open(base + path).read()
            times.append((time.perf_counter() - t) * 1000)
        out[name] = {"first_ms": round(first, 1), "median_ms": round(statistics.median(times), 1),
                     "max_ms": round(max(times), 1)}
    from twisted.internet.threads import blockingCallFromThread
    blockingCallFromThread(reactor, port.stopListening)
    reactor.callFromThread(database.stop)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--journal", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    import sqlalchemy as sa
    results = {}
    for backend in (("sqlite", "postgresql") if a.backend == "both" else (a.backend,)):
        print(f"{backend}: filling {a.items:,} items and {a.journal:,} journal entries", flush=True)
        if backend == "sqlite":
            url = f"sqlite:///{tempfile.mkdtemp(prefix='console-bench-')}/bench.db"
        else:
            admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text("DROP DATABASE IF EXISTS console_bench"))
                c.execute(sa.text("CREATE DATABASE console_bench"))
            admin.dispose()
            url = PG_ADMIN.rsplit("/", 1)[0] + "/console_bench"
        results[backend] = _bench(url, a.runs, a.items, a.journal)
    names = list(next(iter(results.values())))
    print(f"\n{'page':28} " + " ".join(f"{b + ' first/median/max ms':>34}" for b in results))
    for n in names:
        print(f"{n:28} " + " ".join(f"{results[b][n]['first_ms']:>12} / {results[b][n]['median_ms']:>8} / "
                                    f"{results[b][n]['max_ms']:<8}" for b in results))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(json.dumps(results))
    os._exit(0)   # the reactor thread is a daemon thread


if __name__ == "__main__":
    main()
