"""A broken file in conf/banks/ does not stop the gatewayctl commands that never touch a bank
(alarms, journal show, orders, health): they run and warn once, naming the file and key;
check-config (what start-up checks) still refuses it."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway import config as configmod
from gateway import db as dbmod
from gateway.alarms import raise_alarm
from simulators import harness


def _ctl(cfg, *args):
    return subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                           "--config", str(cfg), *args], capture_output=True, text=True, timeout=60)


def _installation(tmp_path):
    p = harness.Paths(tmp_path / "inst")
    cfg_path = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    harness.migrate(cfg_path)
    engine = dbmod.make_engine(configmod.load(cfg_path).database_url)
    with engine.begin() as conn:
        raise_alarm(conn, "2026-12-07T10:00:00+08:00", "critical", "core-unreachable", "503", key="core")
    engine.dispose()
    bank_file = next((p.root / "conf" / "banks").glob("*.toml"))
    return cfg_path, bank_file


def test_read_commands_run_and_warn_once_naming_file_and_key(tmp_path):
    """An unknown key in a bank file: alarms, journal show, orders and health run as usual (health
    says DOWN: no daemon), each printing one warning line on stderr naming the file and the key;
    --json output stays pure JSON; check-config refuses with exit 2 naming the same."""
    cfg_path, bank_file = _installation(tmp_path)
    with open(bank_file, "a") as f:
        f.write("link_timeout_s = 5\n")
    for cmd, rc in ((["alarms"], 0), (["alarms", "--json"], 0), (["journal", "show"], 0), (["orders"], 0),
                    (["health"], 2)):
        out = _ctl(cfg_path, *cmd)
        assert out.returncode == rc, (cmd, out.stdout, out.stderr)
        warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1, (cmd, out.stderr)
        assert str(bank_file) in warnings[0] and "link_timeout_s" in warnings[0]
        if cmd == ["alarms", "--json"]:
            assert [a["kind"] for a in json.loads(out.stdout)] == ["core-unreachable"]
        if cmd == ["health"]:
            assert "DOWN" in out.stdout
    checked = _ctl(cfg_path, "check-config")
    assert checked.returncode == 2 and str(bank_file) in checked.stderr and "link_timeout_s" in checked.stderr


def test_a_bank_file_that_is_not_toml_is_left_out_too(tmp_path):
    """A bank file that does not parse: `alarms` still lists the open alarm, warning once about the file."""
    cfg_path, bank_file = _installation(tmp_path)
    bank_file.write_text(bank_file.read_text() + "\n[keys\n")
    out = _ctl(cfg_path, "alarms")
    assert out.returncode == 0, out.stderr
    assert "core-unreachable" in out.stdout
    assert [line for line in out.stderr.splitlines() if line.startswith("warning:")] == \
        [line for line in out.stderr.splitlines() if str(bank_file) in line]
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_broken_main_file_is_still_refused(tmp_path):
    """Leniency is for bank files only: an unknown key in gateway.toml stops every command (exit 2)."""
    cfg_path, _ = _installation(tmp_path)
    with open(cfg_path, "a") as f:
        f.write("\n[unknown_table]\nx = 1\n")
    out = _ctl(cfg_path, "alarms")
    assert out.returncode == 2 and "unknown_table" in out.stderr
