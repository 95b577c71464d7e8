"""The daemon as a systemd service: the unit file verifies, and gatewayd speaks sd_notify."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simulators import harness

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "conf" / "systemd" / "subsidy-gateway.service"


def test_unit_file_verifies(tmp_path):
    """`systemd-analyze verify` accepts the shipped unit (paths pointed at this checkout's venv)
    and it keeps the settings the README promises: notify, watchdog, restart, umask, hardening."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze missing (Debian package systemd)")
        pytest.skip("systemd-analyze missing")
    text = UNIT.read_text()
    for want in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "UMask=0077", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "PrivateTmp=yes", "User=subsidy-gw"):
        assert want in text, want
    unit = tmp_path / "subsidy-gateway.service"
    unit.write_text(text.replace("/opt/subsidy-gateway", str(ROOT)))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if "subsidy-gateway.service" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_gatewayd_notifies_ready_watchdog_and_stopping(tmp_path):
    """Under a NOTIFY_SOCKET gatewayd sends READY=1 once started, WATCHDOG=1 at half of
    WATCHDOG_USEC while running, and STOPPING=1 on SIGTERM, then exits 0."""
    p = harness.Paths(tmp_path / "inst")
    cfg = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    harness.migrate(cfg)
    addr = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(addr)
    srv.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen([sys.executable, "-c", "from gateway.cli import gatewayd_main; gatewayd_main()",
                             "--config", str(cfg), "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    got: list[str] = []
    try:
        while not any(m.startswith("READY=1") for m in got):
            got.append(srv.recv(4096).decode())
        while got.count("WATCHDOG=1") < 3:
            got.append(srv.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in got:
            got.append(srv.recv(4096).decode())
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.close()
    ready = next(m for m in got if m.startswith("READY=1"))
    assert "STATUS=serving 1 bank(s)" in ready
    assert got.index(ready) < got.index("WATCHDOG=1") < got.index("STOPPING=1")
