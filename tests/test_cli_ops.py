"""`gatewayctl alarms` as an operator on duty uses it: open ones, history, ack with a comment."""

from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy import select

from gateway import config as configmod
from gateway import db as dbmod
from gateway.alarms import clear_alarm, raise_alarm
from gateway.journal import verify_chain
from gateway.models import alarms, journal
from simulators import harness


def _ctl(cfg, *args):
    return subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                           "--config", str(cfg), *args], capture_output=True, text=True, timeout=60)


def test_alarms_open_history_json_and_ack(tmp_path):
    """Open episodes are listed by default with how often they were seen, cleared ones only with
    --all; --json parses; ack records who and why in the alarm and in the journal (which still
    verifies); acking an unknown id or without a comment is refused; --version answers."""
    p = harness.Paths(tmp_path / "inst")
    cfg_path = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    harness.migrate(cfg_path)
    cfg = configmod.load(cfg_path)
    engine = dbmod.make_engine(cfg.database_url)
    with engine.begin() as conn:
        for i in range(3):
            raise_alarm(conn, f"2026-12-07T10:0{i}:00+08:00", "critical", "bank-link-down",
                        f"connect refused ({i})", bank_id="CNB01")
        raise_alarm(conn, "2026-12-07T09:00:00+08:00", "warning", "core-unreachable", "503", key="core")
        clear_alarm(conn, "2026-12-07T09:05:00+08:00", "core-unreachable", key="core")
        link = conn.execute(select(alarms.c.id).where(alarms.c.kind == "bank-link-down")).scalar_one()

    out = _ctl(cfg_path, "alarms")
    assert out.returncode == 0, out.stderr
    assert "bank-link-down" in out.stdout and "seen 3x" in out.stdout and "connect refused (2)" in out.stdout
    assert "core-unreachable" not in out.stdout
    hist = _ctl(cfg_path, "alarms", "--all", "--json")
    kinds = {a["kind"]: a for a in json.loads(hist.stdout)}
    assert set(kinds) == {"bank-link-down", "core-unreachable"} and kinds["core-unreachable"]["cleared_at"]

    ack = _ctl(cfg_path, "alarms", "ack", str(link), "--comment", "银行维护至22:00 / bank maintenance",
               "--by", "ops-wang")
    assert ack.returncode == 0, ack.stdout + ack.stderr
    assert _ctl(cfg_path, "alarms", "ack", "99999", "--comment", "x").returncode == 1
    assert _ctl(cfg_path, "alarms", "ack", str(link), "--comment", "  ").returncode == 2
    with engine.connect() as conn:
        a = conn.execute(select(alarms).where(alarms.c.id == link)).mappings().one()
        assert (a["acknowledged_by"], a["ack_comment"]) == ("ops-wang", "银行维护至22:00 / bank maintenance")
        e = conn.execute(select(journal).where(journal.c.tx_code == "alarm.ack")).mappings().one()
        assert e["peer"] == "operator:ops-wang" and "bank maintenance" in e["decoded"]
        assert verify_chain(conn, cfg.journal_archive_dir).ok
    engine.dispose()
    assert _ctl(cfg_path, "--version").stdout.startswith("gatewayctl ")
