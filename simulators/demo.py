"""`make demo`: the core simulator, a cnbank bank simulator and the daemon, end to end.

Everything runs on loopback under one folder (var/demo by default, recreated
each run), the daemon on its embedded SQLite as its own process. Progress is
printed while the orders move; at the end a summary per order shows items
and amounts PAID and FAILED by reason, whether the money is conserved, and
whether the bank's ledger shows each paid item credited exactly once. The
exit code is 0 only if every order reached the state it should.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from twisted.internet import defer, task

from simulators import datagen, harness
from simulators.outcomes import REASONS


def expected_state(o: dict) -> str:
    if o["corrupt"]:
        return "INVALID"
    return "SETTLED" if set(o["intended"]) <= {"0000"} else "DISPATCHED"


def order_done(o: dict) -> bool:
    want = expected_state(o)
    if want == "INVALID":
        return o["state"] == "INVALID"
    return o["state"] == want and o["reported_items"] == o["item_count"]


def fen(n: int) -> str:
    return f"{n // 100:,}.{n % 100:02d}"


def print_progress(summary: dict, started: float, clock) -> None:
    parts = []
    for no, o in sorted(summary["orders"].items()):
        parts.append(f"{no}: {o['state']:<10} {o['reported_items']:>6}/{o['item_count']:<6}")
    print(f"[{clock.seconds() - started:6.1f}s] " + " | ".join(parts), flush=True)


def print_summary(summary: dict, ledger: dict[str, dict]) -> bool:
    ok_all = True
    print()
    print("=" * 100)
    print("汇总 Summary per order (amounts in yuan)")
    print("=" * 100)
    for no, o in sorted(summary["orders"].items()):
        want = expected_state(o)
        reached = order_done(o)
        r = o["results"]
        paid = r.get("PAID", {"count": 0, "amount": 0})
        failed = r.get("FAILED", {"count": 0, "amount": 0})
        print(f"\n{no}  state {o['state']} (expected {want}) {'OK' if reached else 'NOT REACHED'}")
        print(f"  funded   {o['total_count']:>7} items {fen(o['total_amount']):>16}")
        if want == "INVALID":
            detail = o["state_history"][-1]["detail"] if o["state_history"] else None
            reasons = (detail or {}).get("reasons", []) if isinstance(detail, dict) else []
            print(f"  INVALID: {reasons[:3]}")
            ok_all &= reached
            continue
        print(f"  PAID     {paid['count']:>7} items {fen(paid['amount']):>16}")
        print(f"  FAILED   {failed['count']:>7} items {fen(failed['amount']):>16}")
        by_reason = o.get("failed_by_reason", {})
        for code in sorted(by_reason):
            v = by_reason[code]
            print(f"    {code} {REASONS.get(code, ('?',))[0]:<10} {v['count']:>6} items {fen(v['amount']):>14}")
        conserved = paid["amount"] + failed["amount"] == o["total_amount"] and \
            paid["count"] + failed["count"] == o["total_count"]
        bank = ledger.get(no, {"count": 0, "amount": 0, "double": 0})
        credited_once = bank["count"] == paid["count"] and bank["amount"] == paid["amount"] \
            and bank["double"] == 0
        print(f"  money conserved (paid + failed = funded): {'yes' if conserved else 'NO'}")
        print(f"  bank ledger: {bank['count']} credits, {fen(bank['amount'])}, "
              f"double credits {bank['double']}: {'each paid item credited once' if credited_once else 'MISMATCH'}")
        ok_all &= reached and conserved and credited_once
    print()
    return ok_all


async def run(args) -> int:
    from twisted.internet import reactor
    root = Path(args.dir)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    p = harness.Paths(root)
    print(f"demo folder: {p.root}")
    keys = harness.make_keys(p)
    specs = datagen.load_seed(args.seed)
    token = "demo-" + str(int(time.time()))
    env = await harness.start_simulators(reactor, p, keys, specs, token=token)
    config = harness.write_config(p, keys, env.ports, token=token)
    harness.migrate(config)
    daemon = harness.Daemon(config, p.log)
    daemon.start()
    print(f"gatewayd started (pid {daemon.proc.pid}), log: {p.log}")
    started = reactor.seconds()
    result = 1
    try:
        while True:
            await task.deferLater(reactor, 1.0, lambda: None)
            summary = await env.core.summary()
            print_progress(summary, started, reactor)
            if all(order_done(o) for o in summary["orders"].values()):
                break
            if not daemon.running():
                print(f"gatewayd exited early with {daemon.proc.returncode}; see {p.log}")
                break
            if reactor.seconds() - started > args.timeout:
                print(f"timed out after {args.timeout}s")
                break
        code = daemon.stop()
        print(f"gatewayd stopped on SIGTERM with exit code {code}")
        summary = await env.failed_by_reason(await env.core.summary())
        ledger = await env.ledger_by_order()
        ok = print_summary(summary, ledger)
        print("ALL ORDERS REACHED THEIR EXPECTED STATE" if ok else "SOME ORDERS DID NOT REACH THEIR EXPECTED STATE")
        result = 0 if ok and code == 0 else 1
    finally:
        daemon.stop()
        await env.stop()
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="var/demo")
    ap.add_argument("--seed", default=str(Path(__file__).resolve().parent.parent / "conf/demo/orders.toml"))
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)

    def go(reactor):
        d = defer.ensureDeferred(run(args))

        def done(code: int) -> None:
            if code:
                raise SystemExit(code)   # task.react exits with a SystemExit's code
        return d.addCallback(done)
    task.react(go)


if __name__ == "__main__":
    main()
