"""End to end over loopback: core simulator -> gatewayd (its own process) -> cnbank simulator and back.

Real HTTP, framed TCP and SFTP on 127.0.0.1, real SM2/SM3/SM4, the daemon
started as an operator would (`gatewayd --config ...`), on SQLite and on
PostgreSQL. The bank simulator keeps its own ledger of credits, so "each item
credited exactly once" is read from the bank's side, not the gateway's.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytest_twisted

from simulators import datagen, harness
from tests.support import ALL_CODES, install, spec, wait_for

pytestmark = [pytest.mark.loopback, pytest.mark.slow]

def gatewayctl(cfg, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                           "--config", str(cfg), *args], capture_output=True, text=True, timeout=60)


def order_finished(o: dict) -> bool:
    if o["corrupt"]:
        return o["state"] == "INVALID"
    return o["state"] in ("DISPATCHED", "SETTLED") and o["reported_items"] == o["item_count"] \
        and (o["state"] == "SETTLED" or set(o["intended"]) != {"0000"})


@pytest_twisted.ensureDeferred
async def test_orders_paid_end_to_end_each_item_credited_once(reactor, tmp_path, db_url):
    """Funded orders go out, every item's result comes back to the core matching the bank's
    decision, the bank credited each paid item exactly once, an order with a wrong header total
    is INVALID with nothing sent, the journal verifies, and SIGTERM stops the daemon cleanly."""
    specs = [spec("E2E0001", 120, failures=ALL_CODES), spec("E2E0002", 30),
             spec("E2E0003", 10, corrupt="sum")]
    p, keys, sims, cfg = await install(reactor, tmp_path, specs, db_url)
    try:
        await _paid_end_to_end(reactor, p, sims, cfg, specs)
    finally:
        await sims.stop()


async def _paid_end_to_end(reactor, p, sims, cfg, specs):
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()
    try:
        async def done():
            s = await sims.core.summary()
            return s if all(order_finished(o) for o in s["orders"].values()) else None
        summary = await wait_for(reactor, done, 90, "every order finished", daemon)
    finally:
        rc = await daemon.stop_async(reactor)
    assert rc == 0, p.log.read_text()[-2000:]
    orders = summary["orders"]
    assert orders["E2E0001"]["state"] == "DISPATCHED"       # failures wait for correction
    assert orders["E2E0002"]["state"] == "SETTLED"          # everything paid
    assert orders["E2E0003"]["state"] == "INVALID"
    assert "total_amount" in str(orders["E2E0003"]["state_history"][-1]["detail"])

    ledger = await sims.ledger_by_order()
    assert ledger["E2E0003"]["count"] == 0                   # nothing of the invalid order paid
    assert not sims.bank.double_credits()
    for s in specs[:2]:
        results = await sims.core.results(s.order_no)
        assert len(results) == s.count
        credits = {c.seq: c for c in sims.bank.credits(s.order_no)}
        for pos in range(1, s.count + 1):
            item = datagen.item(s, pos)
            want = datagen.intended_outcome(s, pos)
            got = results[item["seq"]]
            if want == "0000":
                assert got["status"] == "PAID" and got["bank_serial"], (pos, got)
                assert credits[item["seq"]].amount == item["amount"]
            else:
                assert got["status"] == "FAILED" and got["reason_code"] == want, (pos, got)
                assert item["seq"] not in credits
        assert len(credits) == sum(1 for pos in range(1, s.count + 1)
                                   if datagen.intended_outcome(s, pos) == "0000")
        assert orders[s.order_no]["duplicates"] == 0 or orders[s.order_no]["conflicts"] == 0

    verify = gatewayctl(cfg, "journal", "verify")
    assert verify.returncode == 0 and "journal intact" in verify.stdout, verify.stdout + verify.stderr
    shown = gatewayctl(cfg, "journal", "show", "--limit", "500").stdout
    item = datagen.item(specs[0], 1)
    assert item["id_number"] not in shown and item["account_no"] not in shown   # masked by default


@pytest_twisted.ensureDeferred
async def test_crash_after_bp01_resumes_without_second_bp01_or_credit(reactor, tmp_path):
    """The daemon is SIGKILLed right after the bank accepted BP01 and before the reply was
    recorded. Restarted, it asks BQ01 first, sends no second BP01, and the batch completes
    with every item credited once."""
    s = spec("CRASH001", 40, failures={"R001": 0.1})
    p, keys, sims, cfg = await install(reactor, tmp_path, [s], crash_after="BP01-reply-received")
    try:
        await _crash_and_resume(reactor, p, keys, sims, cfg, s)
    finally:
        await sims.stop()


async def _crash_and_resume(reactor, p, keys, sims, cfg, s):
    batch = "CRASH001-P01"
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()
    try:
        async def died():
            return not daemon.running()
        await wait_for(reactor, died, 60, "the daemon to kill itself after BP01")
        assert daemon.proc.returncode == -9, p.log.read_text()[-2000:]
        assert sims.bank.accepted_count(batch, "BP01") == 1
        assert (await sims.core.summary())["orders"]["CRASH001"]["reported_items"] == 0

        harness.write_config(p, keys, sims.ports, token="test-token", poll_s=0.3, status_poll_s=0.2)
        daemon = harness.Daemon(cfg, p.log)
        daemon.start()

        async def done():
            o = (await sims.core.summary())["orders"]["CRASH001"]
            return o["reported_items"] == s.count
        await wait_for(reactor, done, 90, "the batch to complete after restart", daemon)
    finally:
        rc = await daemon.stop_async(reactor)
    assert rc == 0
    assert sims.bank.accepted_count(batch, "BP01") == 1
    assert len(sims.bank.requests("BP01", batch)) == 1      # no second BP01 was even sent
    assert not sims.bank.double_credits()
    paid = sum(1 for pos in range(1, s.count + 1) if datagen.intended_outcome(s, pos) == "0000")
    assert len(sims.bank.credits("CRASH001")) == paid
    # After the restart the first thing said to the bank about this batch was BQ01.
    shown = gatewayctl(cfg, "journal", "show", "--batch", batch, "--limit", "1000").stdout
    out_tx = [line.split()[4] for line in shown.splitlines() if " out " in line and "/tcp " in line]
    assert out_tx[0] == "BP01" and out_tx[1] == "BQ01" and out_tx.count("BP01") == 1, out_tx

