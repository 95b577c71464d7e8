"""SIGHUP reloads conf/banks/ on the real gatewayd: banks added, refused whole, removed."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import threads

from simulators import harness
from tests.support import install, spec, wait_for

TWO = "cnbank-two"


def _ctl(cfg, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                           "--config", str(cfg), *args], capture_output=True, text=True, timeout=60)


def _read_alarms(db_path) -> list[dict]:
    # read from the database: while a broken bank file lies in conf/banks/, gatewayctl (which
    # loads the whole configuration) refuses to run, naming it
    import sqlite3
    with sqlite3.connect(db_path) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM alarms ORDER BY id")]


async def _alarms(p, everything=False) -> list[dict]:
    rows = await threads.deferToThread(_read_alarms, str(p.gateway_db))
    return [a for a in rows if everything or not a["cleared_at"]]


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_sighup_adds_refuses_and_removes_banks(reactor, tmp_path):
    """The real gatewayd, one bank paying. A second bank file is written and SIGHUP sent: the
    daemon lives on (SIGHUP used to end it with 129), the new bank's flow starts and pays its
    order, health lists it. A broken bank file (a port out of range) is then refused whole:
    one config-reload-refused alarm naming the file and the key, the running banks keep paying
    a new order each. Removing the broken file and sending SIGHUP clears the alarm; removing the
    second bank's file stops its flow (health no longer lists it); the daemon stops with 0."""
    p, keys, sims, cfg = await install(reactor, tmp_path, [spec("RLD0001", 4)])
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()

    def settled(order_no):
        async def check():
            o = (await sims.core.summary())["orders"].get(order_no)
            return o is not None and o["state"] == "SETTLED"
        return check
    try:
        await wait_for(reactor, settled("RLD0001"), 60, "the first order settled", daemon)

        first = (p.banks / f"{harness.BANK_ID}.toml").read_text()
        (p.banks / f"{TWO}.toml").write_text(first.replace(f'bank_id = "{harness.BANK_ID}"', f'bank_id = "{TWO}"'))
        sims.core.add_order(dataclasses.replace(spec("RLD0002", 3), bank_id=TWO))
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_for(reactor, settled("RLD0002"), 60, "the added bank's order settled", daemon)
        r = await threads.deferToThread(_ctl, cfg, "health", "--json")
        assert set(json.loads(r.stdout)["banks"]) == {harness.BANK_ID, TWO}
        assert not [a for a in await _alarms(p) if a["kind"] == "config-reload-refused"]

        broken = p.banks / "broken.toml"
        broken.write_text(first.replace(f'bank_id = "{harness.BANK_ID}"', 'bank_id = "broken"')
                          .replace(f"port = {sims.ports.bank_tcp}", "port = 70000"))
        daemon.proc.send_signal(signal.SIGHUP)

        async def refused():
            return [a for a in await _alarms(p) if a["kind"] == "config-reload-refused"] or None
        rows = await wait_for(reactor, refused, 20, "the refused reload alarmed", daemon)
        assert len(rows) == 1 and str(broken) in rows[0]["message"] and "tcp.port" in rows[0]["message"]
        sims.core.add_order(spec("RLD0003", 2))
        sims.core.add_order(dataclasses.replace(spec("RLD0004", 2), bank_id=TWO))
        await wait_for(reactor, settled("RLD0003"), 60, "the first bank still paying", daemon)
        await wait_for(reactor, settled("RLD0004"), 60, "the added bank still paying", daemon)
        daemon.proc.send_signal(signal.SIGHUP)          # the same broken file: still one episode
        os.remove(broken)
        (p.banks / f"{TWO}.toml").unlink()
        daemon.proc.send_signal(signal.SIGHUP)

        async def cleared_and_removed():
            if [a for a in await _alarms(p) if a["kind"] == "config-reload-refused"]:
                return None
            r = await threads.deferToThread(_ctl, cfg, "health", "--json")
            return set(json.loads(r.stdout)["banks"]) == {harness.BANK_ID}
        await wait_for(reactor, cleared_and_removed, 20, "the alarm cleared and the bank removed", daemon)
        episodes = [a for a in await _alarms(p, everything=True) if a["kind"] == "config-reload-refused"]
        assert len(episodes) == 1 and episodes[0]["cleared_at"]
        assert daemon.running()
    finally:
        rc = await daemon.stop_async(reactor)
        await sims.stop()
    assert rc == 0
    assert not os.path.exists(p.rpc_socket)


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_per_bank_leases_follow_banks_added_and_removed(reactor, tmp_path):
    """[ha] mode = "per-bank", the service in this process: a bank file added and reload() gives
    the bank its own lease (taken, then its flow runs, fenced by that lease); the scheduler
    covers it; its file removed and reload() stops the lease's service (its flow's ticker
    stopped first, the lease released after) and forgets the flow; a refused reload leaves leases and flows as they were."""
    from gateway import config as configmod
    from gateway.leadership import CORE
    from gateway.service import make_service

    p, keys, sims, cfg_path = await install(reactor, tmp_path, [spec("RLD0101", 2)])
    with open(cfg_path, "a") as f:
        f.write('\n[ha]\nretry_s = 0.2\nmode = "per-bank"\n')
    gw = make_service(configmod.load(cfg_path), reactor)
    first = (p.banks / f"{harness.BANK_ID}.toml").read_text()
    try:
        gw.startService()

        async def acting(bank_id):
            async def check():
                lead = gw.leadership.leaders.get(bank_id)
                return lead is not None and lead.active and gw.tickers[bank_id].running
            return check
        await wait_for(reactor, await acting(harness.BANK_ID), 30, "the first bank's lease")
        (p.banks / f"{TWO}.toml").write_text(first.replace(f'bank_id = "{harness.BANK_ID}"', f'bank_id = "{TWO}"'))
        summary = await gw.reload()
        assert summary == {"ok": True, "added": [TWO], "changed": [], "removed": []}
        await wait_for(reactor, await acting(TWO), 30, "the added bank's lease")
        assert set(gw.leadership.leaders) == {CORE, harness.BANK_ID, TWO}
        assert gw.flows[TWO].db.fence is gw.leadership.leaders[TWO].fence
        assert set(gw.scheduler.bank_ids) == {harness.BANK_ID, TWO}
        lead_two, ticker_two = gw.leadership.leaders[TWO], gw.tickers[TWO]

        (p.banks / "broken.toml").write_text(first.replace(f'bank_id = "{harness.BANK_ID}"', 'bank_id = "b3"')
                                             .replace('dialect = "cnbank"', 'dialect = "nope"'))
        refused = await gw.reload()
        assert not refused["ok"] and any("broken.toml" in e and "dialect" in e for e in refused["errors"])
        assert set(gw.leadership.leaders) == {CORE, harness.BANK_ID, TWO} and set(gw.flows) == {harness.BANK_ID, TWO}
        (p.banks / "broken.toml").unlink()

        (p.banks / f"{TWO}.toml").unlink()
        summary = await gw.reload()
        assert summary == {"ok": True, "added": [], "changed": [], "removed": [TWO]}
        assert set(gw.leadership.leaders) == {CORE, harness.BANK_ID} and TWO not in gw.flows
        assert not lead_two.running and not lead_two.active and not ticker_two.running
        assert gw.tickers[harness.BANK_ID].running and set(gw.scheduler.bank_ids) == {harness.BANK_ID}
        status = gw.leadership.status()["leases"]
        assert TWO not in status
    finally:
        if gw.running:
            await gw.stopService()
        await sims.stop()
