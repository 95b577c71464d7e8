"""disk-space-low on the real gatewayd: free space under [work] min_free_mb is one warning episode,
under critical_free_mb the same episode turns critical, and a SIGHUP with thresholds the disk
meets clears it; the thresholds are validated by configuration loading (and so check-config)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import threads

from gateway import config as configmod
from simulators import harness
from tests.support import wait_for

MB = 1 << 20


def _set_work(cfg_path, **settings) -> None:
    text = re.sub(r"\n(min_free_mb|critical_free_mb|disk_check_s) = [0-9.]+", "", cfg_path.read_text())
    extra = "".join(f"{k} = {v}\n" for k, v in settings.items())
    cfg_path.write_text(text.replace('[work]\ndir = "../work"\n', '[work]\ndir = "../work"\n' + extra))


def _disk_alarms(db_path) -> list[dict]:
    with sqlite3.connect(db_path) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM alarms WHERE kind = 'disk-space-low' ORDER BY id")]


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_threshold_above_free_space_alarms_and_lowering_it_clears(reactor, tmp_path):
    """With min_free_mb above the real free space of the installation's file system the daemon
    raises one disk-space-low warning naming the host, the free space and the folders; a SIGHUP
    with critical_free_mb above it too makes the same episode critical; a SIGHUP with thresholds
    the disk meets clears it (no statvfs mocked: the thresholds move, not the disk)."""
    p = harness.Paths(tmp_path / "inst")
    cfg = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    harness.migrate(cfg)
    st = os.statvfs(tmp_path)
    free_mb = st.f_bavail * st.f_frsize // MB
    _set_work(cfg, min_free_mb=free_mb + 100_000, critical_free_mb=1, disk_check_s=0.3)
    daemon = harness.Daemon(cfg, p.log)
    daemon.start()
    db = str(p.gateway_db)

    def episodes(pred):
        async def check():
            rows = await threads.deferToThread(_disk_alarms, db)
            return rows if pred(rows) else None
        return check
    try:
        rows = await wait_for(reactor, episodes(lambda r: r), 30, "a disk-space-low alarm", daemon)
        assert len(rows) == 1
        a = rows[0]
        assert a["severity"] == "warning" and a["cleared_at"] is None
        assert "min_free_mb" in a["message"] and str(p.root / "work") in a["message"]
        assert "database" in a["message"] and a["key"].endswith("work+journal+database")

        _set_work(cfg, min_free_mb=free_mb + 100_000, critical_free_mb=free_mb + 50_000, disk_check_s=0.3)
        daemon.proc.send_signal(signal.SIGHUP)
        rows = await wait_for(reactor, episodes(lambda r: r and r[-1]["severity"] == "critical"), 30,
                              "the episode turned critical", daemon)
        assert len(rows) == 1 and rows[0]["count"] > 1 and "critical_free_mb" in rows[0]["last_message"]

        _set_work(cfg, min_free_mb=2, critical_free_mb=1, disk_check_s=0.3)
        daemon.proc.send_signal(signal.SIGHUP)
        rows = await wait_for(reactor, episodes(lambda r: r and r[-1]["cleared_at"]), 30,
                              "the episode cleared", daemon)
        assert len(rows) == 1
        assert daemon.running()
    finally:
        assert await daemon.stop_async(reactor) == 0


def test_thresholds_are_validated(tmp_path):
    """critical_free_mb must be below min_free_mb, both positive; the defaults are 2048 and 512 MiB."""
    p = harness.Paths(tmp_path / "inst")
    cfg = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    d = configmod.load(cfg).disk
    assert (d.min_free_mb, d.critical_free_mb, d.check_s) == (2048, 512, 60.0)
    _set_work(cfg, min_free_mb=100, critical_free_mb=100)
    with pytest.raises(configmod.ConfigError, match="work.critical_free_mb: must be below work.min_free_mb"):
        configmod.load(cfg)
    _set_work(cfg, min_free_mb=0)
    with pytest.raises(configmod.ConfigError, match="work.min_free_mb: must be greater than 0"):
        configmod.load(cfg)
