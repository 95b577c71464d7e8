"""Does a big order hold up everything else? (issue 12: no single thread that everything waits on)

    python bench/concurrency.py --items 1000000 [--db postgresql://postgres@127.0.0.1:5432/postgres]

The real `gatewayd` (its own process) gets two banks, each a cnbank bank simulator in this
process on loopback: bank A with one order of ITEMS items, bank B with one of 1,000 items,
both funded at the core. While A's order is loaded, built, submitted and applied, this asks
`order.status` of B's order over the RPC's Unix socket every 50 ms and records how long each
answer took; it notes when B's order and A's order have every item PAID or FAILED. A second
1,000-item order for bank B is funded at the core the moment bank A has published the big
batch's results, so that it is loaded, sent and applied while A's results are fetched and
applied: `b2_paid_s` is how long it took from then. The last line printed is one JSON object:

    {"items", "db", "a_settled_s", "b_settled_s", "b2_paid_s", "b2_after_a", "status_calls",
     "status_ms": {"p50", "p95", "p99", "max"}, "status_calls_during_a": ...}

Run it on a checkout before and after a change to compare (it uses only the harness and the
daemon's command line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from simulators import datagen, harness, sftp_server  # noqa: E402

SMALL = 1000


def spec(order_no: str, bank_id: str, n: int, seed: int) -> datagen.OrderSpec:
    return datagen.OrderSpec(
        order_no=order_no, bank_id=bank_id, count=n, seed=seed,
        budget_unit="市农业农村局", project_code="NY2026-01", project_name="2026年耕地地力保护补贴",
        project_short="耕地补贴", region="340121", funded_at="2026-11-02T09:30:00+08:00",
        failures={"R001": 0.01})


async def second_bank(reactor, p: harness.Paths, keys: harness.Keys, bank_id: str):
    """Another cnbank simulator (its own ledger and SFTP root) and its bank file."""
    from simulators.cnbank.bank import CnBankSimulator
    bank = CnBankSimulator(reactor, data_dir=str(p.root / "bank-b"), bank_key=keys.bank_sm2,
                           gateway_key=keys.gw_sm2.public_key, bank_id=harness.BANK_RECEIVER,
                           settings=harness.envelope_settings(), sftp_root=str(p.root / "bank-b-sftp"),
                           processing_delay_s=0.1, auto_fund=True, payer_acct=harness.PAYER_ACCT)
    await bank.ready
    tcp = bank.listen_tcp()
    sftp = bank.listen_sftp(authorized_keys=[sftp_server.public_key_line(keys.gw_ssh)],
                            host_key_path=keys.bank_host, username="gateway")
    text = (p.banks / f"{harness.BANK_ID}.toml").read_text()
    text = text.replace(f'bank_id = "{harness.BANK_ID}"', f'bank_id = "{bank_id}"')
    a_tcp = text.split("[tcp]")[1].split("port = ")[1].split("\n")[0]
    a_sftp = text.split("[sftp]")[1].split("port = ")[1].split("\n")[0]
    text = text.replace(f"port = {a_tcp}\n", f"port = {tcp.getHost().port}\n", 1)
    text = text.replace(f"port = {a_sftp}\n", f"port = {sftp.getHost().port}\n", 1)
    (p.banks / f"{bank_id}.toml").write_text(text)
    return bank


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 1) if v else None


async def run(reactor, n: int, db: str | None, root: Path) -> dict:
    from gateway import rpc_client
    if root.exists():
        shutil.rmtree(root)
    p = harness.Paths(root)
    keys = harness.make_keys(p)
    big, small = spec(f"BIGA{n}", harness.BANK_ID, n, 42), spec("SMALLB1000", "cnbank-b", SMALL, 43)
    late = spec("LATEB1000", "cnbank-b", SMALL, 44)
    sims = await harness.start_simulators(reactor, p, keys, [big, small], token="bench",
                                          processing_delay_s=0.1, core_cache=True)
    await sims.core.header(big.order_no)      # rendered and totalled before the clock starts
    cfg = harness.write_config(p, keys, sims.ports, db_url=db, token="bench", poll_s=0.2,
                               status_poll_s=0.2, results_chunk=10000)
    bank_b = await second_bank(reactor, p, keys, "cnbank-b")
    if db:
        from sqlalchemy import create_engine, text
        e = create_engine(db, isolation_level="AUTOCOMMIT")
        with e.connect() as c:
            c.execute(text("DROP SCHEMA public CASCADE"))
            c.execute(text("CREATE SCHEMA public"))
        e.dispose()
    harness.migrate(cfg)
    daemon = harness.Daemon(cfg, p.log)
    t0 = time.perf_counter()
    daemon.start()
    lat: list[tuple[float, float]] = []
    settled: dict[str, float] = {}

    async def state(order_no: str) -> dict | None:
        try:
            return await deferToThread(rpc_client.call, "order.status", {"order_no": order_no},
                                       unix_path=str(p.rpc_socket), timeout=120)
        except Exception:  # noqa: BLE001 - not known yet, or the socket not up yet
            return None

    def done(s: dict | None, count: int) -> bool:
        if not s:
            return False
        per = s["items"]
        return (per.get("PAID", {}).get("count", 0) + per.get("FAILED", {}).get("count", 0) == count
                and all(b["state"] == "DONE" for b in s["batches"]))
    late_at = None
    try:
        while len(settled) < 3:
            if not daemon.running():
                raise SystemExit(f"gatewayd exited:\n{p.log.read_text()[-3000:]}")
            t = time.perf_counter()
            s = await state(small.order_no)
            if s is not None:
                lat.append((t - t0, (time.perf_counter() - t) * 1000))
            if small.order_no not in settled and done(s, SMALL):
                settled[small.order_no] = time.perf_counter() - t0
            if big.order_no not in settled and (s is None or len(lat) % 20 == 0):
                if done(await state(big.order_no), n):
                    settled[big.order_no] = time.perf_counter() - t0
            if late_at is None:
                b = sims.bank.ledger.batch_now(f"{big.order_no}-P01")
                if b is not None and b.get("result_file"):     # A's results are out: fund the late order
                    sims.core.add_order(late)
                    late_at = time.perf_counter() - t0
            elif late.order_no not in settled and done(await state(late.order_no), SMALL):
                settled[late.order_no] = time.perf_counter() - t0
            if time.perf_counter() - t0 > 3600:
                raise SystemExit("not settled within an hour")
            await task.deferLater(reactor, 0.05, lambda: None)
    finally:
        await daemon.stop_async(reactor)
        await bank_b.stop()
        await sims.stop()
    a_end = settled[big.order_no]
    during = [ms for at, ms in lat if at <= a_end]
    credits_b = await defer.maybeDeferred(bank_b.credits, small.order_no)
    return {"items": n, "db": "postgresql" if db else "sqlite",
            "a_settled_s": round(a_end, 1), "b_settled_s": round(settled[small.order_no], 1),
            "b2_funded_at_s": round(late_at, 1), "b2_paid_s": round(settled[late.order_no] - late_at, 1),
            "b2_after_a": settled[late.order_no] > a_end,
            "b_credited": len(credits_b),
            "status_calls": len(lat), "status_calls_during_a": len(during),
            "status_ms": {"p50": pct(during, .50), "p95": pct(during, .95), "p99": pct(during, .99),
                          "max": round(max(during), 1) if during else None}}


def main() -> None:
    ap = argparse.ArgumentParser(description="a big order and a small one on two banks, order.status timed")
    ap.add_argument("--items", type=int, default=200000)
    ap.add_argument("--db", default=None, help="a PostgreSQL URL (its public schema is emptied); SQLite if not given")
    ap.add_argument("--dir", default="var/bench-concurrency")
    a = ap.parse_args()
    result: dict = {}

    async def go(reactor):
        result.update(await run(reactor, a.items, a.db, Path(a.dir).resolve()))
    try:
        task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
