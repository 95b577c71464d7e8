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
    the bank-link, critical-alarm, no-active-daemon and core rules firing and clearing as written."""
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


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_real_daemon_serves_figures_from_its_database(reactor, tmp_path):
    """The real gatewayd with [metrics] serves /metrics on loopback: once an order is paid the
    scrape shows its items and amounts per state for the bank, the batch DONE, no open alarm,
    this daemon active and the release; the scrape parses as the Prometheus text format."""
    specs = [spec("MET0001", 30)]
    p, keys, sims, cfg = await install(reactor, tmp_path, specs)
    port = _free_port()
    with open(cfg, "a") as f:
        f.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\nrefresh_s = 0.2\n')
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
