"""/metrics and the shipped alert rules: what Prometheus scrapes and when an operator is paged."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from simulators import harness
from tests.support import install, spec, wait_for

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "conf" / "prometheus"


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing (Debian package prometheus; tests/services.sh installs it)")
        pytest.skip("promtool missing")
    return tool


def test_alert_rules_load_and_fire_in_promtool():
    """`promtool check rules` accepts conf/prometheus/alerts.yml and `promtool test rules` shows
    the bank-link, critical-alarm, no-active-daemon and core rules firing and clearing as written,
    and the latency and error rules (bank slow, bank requests failing, core slow, database wait)
    firing from histograms and counters shaped as the daemon exports them."""
    tool = _promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES / "alerts.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True, text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _count(samples: dict, histogram: str, **labels) -> float:
    """How many observations a histogram holds over the series matching `labels`."""
    return _over(samples, histogram + "_count", labels)


def _sum(samples: dict, histogram: str, **labels) -> float:
    return _over(samples, histogram + "_sum", labels)


def _over(samples: dict, name: str, labels: dict) -> float:
    return sum(v for (n, lv), v in samples.items() if n == name and set(labels.items()) <= set(lv))


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_real_daemon_serves_figures_from_its_database(reactor, tmp_path):
    """The real gatewayd with [metrics] serves /metrics on loopback: once an order is paid the
    scrape shows its items and amounts per state for the bank, the batch DONE, no open alarm,
    this daemon active and the release; the scrape parses as the Prometheus text format.

    The durations are the daemon's own: each stage the order went through (load, build, submit,
    apply, push) has a duration observed for the bank, the BP01 and BQ01 round trips and the SFTP
    upload and download were timed as answered well, the core's order list, item stream and
    results POST too, and database jobs had their wait for a pool thread observed. Then the
    bank's message port closes: the HB01 heartbeats fail, and the bank error counter moves with
    the failure's class (connect_failed)."""
    specs = [spec("MET0001", 30)]
    p, keys, sims, cfg = await install(reactor, tmp_path, specs)
    port = _free_port()
    with open(cfg, "a") as f:
        f.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\nrefresh_s = 0.2\n')
    with open(p.banks / f"{harness.BANK_ID}.toml", "a") as f:
        f.write("heartbeat_s = 0.5\n")     # [cnbank] is the file's last table
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()
    try:
        async def paid():
            s = await sims.core.summary()
            o = s["orders"]["MET0001"]
            return o if o["state"] == "SETTLED" else None
        await wait_for(reactor, paid, 60, "order settled", daemon)

        async def figures():
            d = await _thread(reactor, _scrape, port)
            return d if _get(d, "gateway_items", bank=harness.BANK_ID, state="PAID") == 30 else None
        samples = await wait_for(reactor, figures, 20, "the paid items in /metrics", daemon)

        async def pushed():
            d = await _thread(reactor, _scrape, port)
            return d if _count(d, "gateway_stage_duration_seconds", stage="push") else None
        durations = await wait_for(reactor, pushed, 20, "the push stage in /metrics", daemon)

        bank_tcp = sims.bank._ports[0]      # the message port (listen_tcp came first)
        await bank_tcp.stopListening()

        async def heartbeat_failed():
            d = await _thread(reactor, _scrape, port)
            return d if _get(d, "gateway_bank_request_errors_total", bank=harness.BANK_ID, tx="HB01",
                             code="connect_failed") else None
        broken = await wait_for(reactor, heartbeat_failed, 20, "an HB01 error in /metrics", daemon)
    finally:
        rc = await daemon.stop_async(reactor)
        await sims.stop()
    assert rc == 0
    amount = sum(i["amount"] for i in (harness_items(specs[0])))
    assert _get(samples, "gateway_items_amount_fen", bank=harness.BANK_ID, state="PAID") == amount
    assert _get(samples, "gateway_batches", bank=harness.BANK_ID, state="DONE") == 1
    assert _get(samples, "gateway_alarms_open", severity="critical") == 0
    assert _get(samples, "gateway_leader_active") == 1
    assert any(k[0] == "gateway_build_info" for k in samples)
    assert any(k[0] == "gateway_dir_free_bytes" and ("dir", "work") in k[1] for k in samples)

    bank = harness.BANK_ID
    for stage in ("load", "build", "submit", "apply", "push"):
        assert _count(durations, "gateway_stage_duration_seconds", bank=bank, stage=stage) >= 1, stage
        assert _sum(durations, "gateway_stage_duration_seconds", bank=bank, stage=stage) > 0, stage
    for tx in ("BP01", "BQ01", "sftp_put", "sftp_get"):
        assert _count(durations, "gateway_bank_request_duration_seconds", bank=bank, tx=tx, outcome="ok") >= 1, tx
    assert not [k for k in durations if k[0] == "gateway_bank_request_errors_total"]
    for endpoint in ("GET /api/orders", "GET /api/orders/{order_no}/items",
                     "POST /api/orders/{order_no}/results", "POST /api/orders/{order_no}/state"):
        assert _count(durations, "gateway_core_request_duration_seconds", endpoint=endpoint, outcome="ok") >= 1, \
            endpoint
    assert _count(durations, "gateway_db_wait_seconds") > 10
    assert _count(broken, "gateway_bank_request_duration_seconds", bank=bank, tx="HB01", outcome="error") >= 1
    assert _count(broken, "gateway_bank_request_duration_seconds", bank=bank, tx="HB01", outcome="ok") >= 1


def harness_items(s):
    from simulators import datagen
    return [datagen.item(s, pos) for pos in range(1, s.count + 1)]


def _thread(reactor, fn, *args):
    from twisted.internet import threads
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)


def test_metrics_listen_must_be_loopback_unless_allowed(tmp_path):
    """[metrics] listen on a non-loopback address is refused naming the key, unless allow_remote."""
    from gateway import config as configmod
    p = harness.Paths(tmp_path / "inst")
    cfg = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    base = cfg.read_text()
    cfg.write_text(base + '\n[metrics]\nlisten = "10.1.2.3:9464"\n')
    with pytest.raises(configmod.ConfigError) as e:
        configmod.load(cfg)
    assert any("metrics.listen" in m and "loopback" in m for m in e.value.errors)
    cfg.write_text(base + '\n[metrics]\nlisten = "10.1.2.3:9464"\nallow_remote = true\n')
    assert configmod.load(cfg).metrics.host == "10.1.2.3"
