"""`make demo`: the core simulator, a cnbank bank simulator and the daemon, end to end.

Everything runs on loopback under one folder (var/demo by default, recreated
each run), the daemon on its embedded SQLite as its own process. Progress is
printed while the orders move. As the bank's results reach the core, the core
simulator plays the departments (业务科室, simulators/core/departments.py)
through the daemon's RPC: fixable failures are corrected (with who confirmed
and who approved) and sent again in a RETRY batch, unfixable ones (R009,
R010) are refunded to the original channel, and each batch whose results are
in is confirmed. At
the end a summary per order shows items and amounts PAID first time, PAID on
retry, REFUNDED, and FAILED by reason, whether the money is conserved, and
whether the bank's ledger shows each paid item credited exactly once. The exit
code is 0 only if every order reached the state it should (SETTLED, or
INVALID for the order with a wrong header total).
"""

from __future__ import annotations

import argparse
import shutil
import secrets
from pathlib import Path

from twisted.internet import defer, task

from twisted.internet.threads import deferToThread

from gateway import rpc_client
from simulators import datagen, harness
from protocols.iso20022 import REASONS as ISO_REASONS
from simulators.core.departments import NOT_FIXABLE, Departments, unix_socket_rpc
from simulators.isobank import install as isoinstall
from simulators.outcomes import REASONS


def iso_ledger(bank, specs) -> dict[str, dict]:
    """The ISO bank's credits per order still standing (not returned), and double credits."""
    doubles = bank.double_credits()
    out = {}
    for s in specs:
        mine = [c for c in bank.credits() if c["end_to_end_id"].startswith(s.order_no + "-")]
        standing = [c for c in mine if c["returned"] is None]
        out[s.order_no] = {"count": len(standing), "amount": sum(c["amount"] for c in standing),
                           "double": sum(1 for d in doubles if d.startswith(s.order_no + "-"))}
    return out


def reason_text(code: str) -> str:
    if code in REASONS:
        return REASONS[code][0]
    return ISO_REASONS.get(code, ("", "?"))[1]


def expected_state(o: dict) -> str:
    return "INVALID" if o["corrupt"] else "SETTLED"


def order_done(o: dict) -> bool:
    want = expected_state(o)
    if want == "INVALID":
        return o["state"] == "INVALID"
    return o["state"] == want and o["reported_items"] == o["item_count"] and \
        o["results"].get("FAILED", {}).get("count", 0) == 0


def fen(n: int) -> str:
    return f"{n // 100:,}.{n % 100:02d}"


def print_progress(summary: dict, started: float, clock) -> None:
    parts = []
    for no, o in sorted(summary["orders"].items()):
        r = o["results"]
        parts.append(f"{no[-4:]}: {o['state']:<10} paid {r.get('PAID', {}).get('count', 0):>5} "
                     f"failed {r.get('FAILED', {}).get('count', 0):>3} "
                     f"refunded {r.get('REFUNDED', {}).get('count', 0):>3}")
    print(f"[{clock.seconds() - started:6.1f}s] " + " | ".join(parts), flush=True)


def print_summary(summary: dict, ledger: dict[str, dict], statuses: dict[str, dict]) -> bool:
    ok_all = True
    print()
    print("=" * 100)
    print("汇总 Summary per order (amounts in yuan)")
    print("=" * 100)
    for no, o in sorted(summary["orders"].items()):
        want = expected_state(o)
        reached = order_done(o)
        r = o["results"]
        zero = {"count": 0, "amount": 0}
        paid = r.get("PAID", zero)
        failed = r.get("FAILED", zero)
        refunded = r.get("REFUNDED", zero)
        print(f"\n{no}  state {o['state']} (expected {want}) {'OK' if reached else 'NOT REACHED'}")
        print(f"  funded   {o['total_count']:>7} items {fen(o['total_amount']):>16}")
        if want == "INVALID":
            detail = o["state_history"][-1]["detail"] if o["state_history"] else None
            reasons = (detail or {}).get("reasons", []) if isinstance(detail, dict) else []
            print(f"  INVALID: {reasons[:3]}")
            ok_all &= reached
            continue
        retry = [b for b in statuses.get(no, {}).get("batches", []) if b["kind"] == "RETRY"]
        retried = sum(b["count"] for b in retry)
        retried_amt = sum(b["amount"] for b in retry)
        print(f"  PAID     {paid['count']:>7} items {fen(paid['amount']):>16}"
              f"   of which {retried} items {fen(retried_amt)} on retry ({', '.join(b['batch_no'] for b in retry) or '-'})")
        print(f"  REFUNDED {refunded['count']:>7} items {fen(refunded['amount']):>16}   原渠道退回")
        print(f"  FAILED   {failed['count']:>7} items {fen(failed['amount']):>16}   still open")
        confirmed = o.get("confirmed", [])
        unconfirmed = [b["batch_no"] for b in statuses.get(no, {}).get("batches", [])
                       if b["state"] == "DONE" and b["batch_no"] not in confirmed]
        print(f"  batches confirmed by the department: {', '.join(confirmed) or '-'}"
              + (f"; NOT confirmed: {', '.join(unconfirmed)}" if unconfirmed else ""))
        by_reason = o.get("failed_first_by_reason", {})
        if by_reason:
            print("  first-pass failures by reason:")
        for code in sorted(by_reason):
            v = by_reason[code]
            what = "refunded" if code in NOT_FIXABLE else "corrected and retried"
            print(f"    {code} {reason_text(code):<10} {v['count']:>6} items {fen(v['amount']):>14}  {what}")
        conserved = paid["amount"] + failed["amount"] + refunded["amount"] == o["total_amount"] and \
            paid["count"] + failed["count"] + refunded["count"] == o["total_count"]
        bank = ledger.get(no, {"count": 0, "amount": 0, "double": 0})
        credited_once = bank["count"] == paid["count"] and bank["amount"] == paid["amount"] \
            and bank["double"] == 0
        print(f"  money conserved (paid + refunded + failed = funded): {'yes' if conserved else 'NO'}")
        print(f"  bank ledger: {bank['count']} credits, {fen(bank['amount'])}, "
              f"double credits {bank['double']}: {'each paid item credited once' if credited_once else 'MISMATCH'}")
        ok_all &= reached and conserved and credited_once and not unconfirmed
    print()
    return ok_all


class DemoStuck(Exception):
    pass


def print_actions(actions: list, clock, started: float) -> None:
    """What the departments did since the last progress line, one line per order and kind."""
    grouped: dict[tuple[str, str], list] = {}
    for a in actions:
        grouped.setdefault((a.order_no, a.kind), []).append(a)
    for (no, kind), acts in sorted(grouped.items()):
        if kind == "correct":
            what = f"corrected {len(acts)} items (evidence given)"
        elif kind == "retry":
            what = "asked for the retry: " + "; ".join(a.detail for a in acts)
        elif kind == "refund":
            what = "refund requested: " + "; ".join(f"{len(a.seqs)} items ({a.detail})" for a in acts)
        else:
            what = "confirmed " + ", ".join(a.detail for a in acts)
        print(f"[{clock.seconds() - started:6.1f}s]   department {no[-4:]}: {what}", flush=True)


async def wait_all(reactor, env, daemon, p, started, timeout, done, what, departments) -> dict:
    shown = 0
    while True:
        await task.deferLater(reactor, 1.0, lambda: None)
        summary = await env.core.summary()
        print_progress(summary, started, reactor)
        print_actions(departments.actions[shown:], reactor, started)
        shown = len(departments.actions)
        if all(done(o) for o in summary["orders"].values()):
            return summary
        if not daemon.running():
            raise DemoStuck(f"gatewayd exited early with {daemon.proc.returncode}; see {p.log}")
        if reactor.seconds() - started > timeout:
            raise DemoStuck(f"timed out after {timeout}s waiting for {what}; see {p.log}")


async def wait_confirmed(reactor, p, final: dict, departments, timeout: float) -> dict[str, dict]:
    """order.status of each valid order, once the department has confirmed every DONE batch
    (the last confirmation may follow the last result by a moment); as they are at *timeout*."""
    deadline = reactor.seconds() + timeout
    while True:
        statuses = {}
        for no, o in final["orders"].items():
            if not o["corrupt"]:
                statuses[no] = await deferToThread(rpc_client.call, "order.status", {"order_no": no},
                                                   unix_path=str(p.rpc_socket))
        if all(b["state"] != "DONE" or b["batch_no"] in departments.report(no)["confirmed"]
               for no, st in statuses.items() for b in st["batches"]) or reactor.seconds() > deadline:
            return statuses
        await task.deferLater(reactor, 0.5, lambda: None)


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
    token = secrets.token_hex(16)
    env = await harness.start_simulators(reactor, p, keys, specs, token=token)
    config = harness.write_config(p, keys, env.ports, token=token)
    # The second bank: ISO 20022 over HTTPS with mutual TLS and XMLDSig (its own PKI per run).
    pki = isoinstall.make_pki(p.keys)
    iso_bank, iso_port = isoinstall.start_iso_bank(reactor, pki)
    isoinstall.write_bank_file(p.banks, pki, iso_port)
    print(f"banks: cnbank-demo (TCP {env.ports.bank_tcp}, SFTP {env.ports.bank_sftp}), "
          f"{isoinstall.ISO_BANK_ID} (HTTPS {iso_port}, mutual TLS)")
    harness.migrate(config)
    daemon = harness.Daemon(config, p.log)
    daemon.start()
    print(f"gatewayd started (pid {daemon.proc.pid}), log: {p.log}")
    started = reactor.seconds()
    result = 1
    # One department desk for the whole run: it acts as results reach the core.
    departments = Departments(reactor, env.core, unix_socket_rpc(reactor, p.rpc_socket))
    departments.start()
    try:
        final = await wait_all(reactor, env, daemon, p, started, args.timeout, order_done,
                               "every order SETTLED (or INVALID)", departments)
        statuses = await wait_confirmed(reactor, p, final, departments, 30)
        code = await daemon.stop_async(reactor)
        print(f"gatewayd stopped on SIGTERM with exit code {code}")
        await departments.stop()
        summary = await env.core.summary()
        for no, o in summary["orders"].items():
            seen = departments.report(no)
            o["failed_first_by_reason"] = seen["failed_first_by_reason"]
            o["confirmed"] = seen["confirmed"]
        ledger = await env.ledger_by_order()
        ledger.update(iso_ledger(iso_bank, [s for s in specs if s.bank_id == isoinstall.ISO_BANK_ID]))
        ok = print_summary(summary, ledger, statuses)
        from simulators.paper_demo import write_paper   # articles 25-27: the month on paper, and the archive
        print("\n".join(write_paper(p.root, config, p.keys)))
        print("ALL ORDERS REACHED THEIR EXPECTED STATE" if ok else "SOME ORDERS DID NOT REACH THEIR EXPECTED STATE")
        print(f"\nThe daemon's state is kept: configuration {config}\n"
              f"  .venv/bin/gatewayctl --config {config} orders\n"
              f"  .venv/bin/gatewayctl --config {config} alarms --all\n"
              f"  .venv/bin/gatewayctl --config {config} journal show --type BP01 --full\n"
              f"  .venv/bin/gatewayctl --config {config} journal verify\n"
              f"  .venv/bin/gatewayd --config {config}    (then gatewayctl health; the simulators are "
              f"stopped, so its banks' links fail and are alarmed)")
        result = 0 if ok and code == 0 else 1
    except DemoStuck as e:
        print(str(e))
    finally:
        await departments.stop()
        daemon.stop()
        await iso_bank.stop()
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
