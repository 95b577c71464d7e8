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


def test_check_config_runs_start_up_checks(tmp_path):
    """check-config refuses what start-up refuses, naming it, with exit 2: a bank key readable
    by others, an unmigrated database, a misspelt database URL; a good installation gives 0."""
    import os
    p = harness.Paths(tmp_path / "inst")
    keys = harness.make_keys(p)
    cfg_path = harness.write_config(p, keys, harness.Ports(1, 2, 3), token="t")
    r = _ctl(cfg_path, "check-config")
    assert r.returncode == 2 and "db upgrade" in r.stderr, r.stdout + r.stderr   # not migrated
    harness.migrate(cfg_path)
    r = _ctl(cfg_path, "check-config")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout + r.stderr
    key = p.keys / "gateway_sm2.pem"
    os.chmod(key, 0o644)
    r = _ctl(cfg_path, "check-config")
    assert r.returncode == 2 and key.name in r.stderr, r.stdout + r.stderr
    os.chmod(key, 0o600)
    text = cfg_path.read_text()
    cfg_path.write_text(text.replace('url = "sqlite:///', 'url = "sqlit:///'))
    r = _ctl(cfg_path, "check-config")
    assert r.returncode == 2 and "database.url" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_orders_in_yuan_and_failed_items_with_their_corrections(tmp_path):
    """`orders` shows amounts in 元 beside fen (exact from integer fen), `items --status FAILED`
    lists failed items with reason and each correction's who/approved/reference, masked; --json
    parses; no clear ID or account number in any output."""
    from sqlalchemy import insert

    from gateway.models import corrections, items, orders
    p = harness.Paths(tmp_path / "inst")
    cfg_path = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    harness.migrate(cfg_path)
    engine = dbmod.make_engine(configmod.load(cfg_path).database_url)
    at = "2026-12-07T10:00:00+08:00"
    with engine.begin() as conn:
        conn.execute(insert(orders).values(order_no="FS1", bank_id="CNB01", budget_unit="u", project_code="P1",
                                           project_name="耕地地力保护补贴", project_short="耕地补贴", region="341221",
                                           total_amount=123456789, total_count=3, funded_at=at, state="DISPATCHED",
                                           created_at=at, updated_at=at))
        for seq, status, amt, code in ((1, "PAID", 100000000, "0000"), (2, "FAILED", 23456700, "R001"),
                                       (3, "CORRECTED", 89, None)):
            conn.execute(insert(items).values(order_no="FS1", seq=seq, name="张三丰", id_number="110101199003078515",
                                              account_no="6228480000000123457", account_bank="农行", amount=amt,
                                              remark="", status=status, batch_no="FS1-P01", reason_code=code,
                                              reason_text="账号不存在" if code == "R001" else None))
        conn.execute(insert(corrections).values(order_no="FS1", seq=2, at=at, failed_batch_no="FS1-P01",
                                                reason_code="R001", old_values="{}",
                                                new_values='{"account_no": "6228480000000999999"}',
                                                confirmed_by="收款人本人", approved_by="李科长",
                                                approval_ref="NY[2026]17号", caller="unix:core", journal_id=1))
    engine.dispose()
    o = _ctl(cfg_path, "orders")
    assert o.returncode == 0, o.stderr
    assert "1,234,567.89 元 (123456789 fen)" in o.stdout and "PAID 1 / 1,000,000.00 元" in o.stdout
    assert "CORRECTED 1 / 0.89 元" in o.stdout
    f = _ctl(cfg_path, "items", "--order", "FS1", "--status", "failed")
    assert f.returncode == 0, f.stderr
    assert "FS1#2" in f.stdout and "R001 账号不存在" in f.stdout and "234,567.00" in f.stdout
    assert "FS1#1" not in f.stdout and "FS1#3" not in f.stdout
    assert "approved by 李科长 (NY[2026]17号)" in f.stdout and "confirmed by 收款人本人" in f.stdout
    js = json.loads(_ctl(cfg_path, "items", "--order", "FS1", "--json").stdout)
    assert [i["seq"] for i in js] == [1, 2, 3] and js[1]["corrections"][0]["changed"] == ["account_no"]
    everything = o.stdout + f.stdout + json.dumps(js, ensure_ascii=False)
    assert "110101199003078515" not in everything and "6228480000000123457" not in everything
    assert "6228480000000999999" not in everything
