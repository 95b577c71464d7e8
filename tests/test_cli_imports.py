"""gatewayctl's quick commands import only what they use: `--version`, `rpc --list` and `health`
(an RPC call) load neither SQLAlchemy, Alembic nor Twisted's reactor and web, so they answer
quickly (no timing here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simulators import harness

_PROBE = """
import json, sys
from gateway.cli import gatewayctl_main
try:
    gatewayctl_main(sys.argv[1:])
except SystemExit:
    pass
heavy = ("sqlalchemy", "alembic", "twisted.internet", "twisted.web")
print(json.dumps(sorted({h for h in heavy for m in sys.modules if m == h or m.startswith(h + ".")})),
      file=sys.stderr)
"""


def _heavy_modules(*args) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=60)
    return json.loads(out.stderr.strip().splitlines()[-1])


def test_version_and_rpc_list_import_no_sqlalchemy_alembic_or_twisted():
    """`gatewayctl --version` and `gatewayctl rpc --list` load none of the heavy libraries."""
    assert _heavy_modules("--version") == []
    assert _heavy_modules("rpc", "--list") == []


def test_health_loads_the_configuration_without_sqlalchemy_or_twisted(tmp_path):
    """`gatewayctl health` reads the whole configuration (journal key, calendar, banks) and asks the
    daemon over its socket (none answers here: DOWN), without SQLAlchemy, Alembic or Twisted's
    reactor and web (the RPC client is http.client)."""
    p = harness.Paths(tmp_path / "inst")
    cfg = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    assert _heavy_modules("--config", str(cfg), "health") == []


def test_alarms_reads_through_the_driver_alone(tmp_path):
    """`gatewayctl alarms`, `orders` and `items`, what the night shift asks first, read through
    sqlite3 (or psycopg) without SQLAlchemy (gateway/quickread.py), and still refuse an unmigrated
    database."""
    p = harness.Paths(tmp_path / "inst")
    cfg = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    ctl = [sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
           "--config", str(cfg), "alarms"]
    empty = subprocess.run(ctl, capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "db upgrade" in empty.stderr and "Traceback" not in empty.stderr
    harness.migrate(cfg)
    assert _heavy_modules("--config", str(cfg), "alarms") == []
    assert _heavy_modules("--config", str(cfg), "orders") == []
    assert _heavy_modules("--config", str(cfg), "items", "--order", "X") == []
    ok = subprocess.run(ctl, capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stdout.strip()) == (0, "no open alarms")


@pytest.mark.parametrize("cmd", [["alarms"], ["orders"]])
def test_database_reads_do_not_load_alembic(tmp_path, cmd):
    """Reading the database checks its schema revision without Alembic (gateway.migrations.HEAD)."""
    p = harness.Paths(tmp_path / "inst")
    cfg = harness.write_config(p, harness.make_keys(p), harness.Ports(1, 2, 3), token="t")
    harness.migrate(cfg)
    assert "alembic" not in _heavy_modules("--config", str(cfg), *cmd)
