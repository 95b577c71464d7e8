"""`gatewayctl rpc --list` and `rpc METHOD --help` come from the RPC's own method table
(gateway.rpc_api.METHODS), which the daemon's Commands also serve and check parameters against."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.commands import Commands
from gateway.rpc_api import INVALID_PARAMS, METHODS, Caller, RpcError


def _ctl(*args):
    return subprocess.run([sys.executable, "-c", "from gateway.cli import gatewayctl_main; gatewayctl_main()",
                           *args], capture_output=True, text=True, timeout=60)


class _NoGateway:
    flows: dict = {}
    tickers: dict = {}


def test_list_prints_every_method_the_daemon_serves_with_its_summary():
    """`rpc --list` (no configuration needed) prints one line per method, exactly the methods the
    daemon's Commands serve, each with its summary from the table."""
    served = Commands(None, None, None, _NoGateway()).methods()
    out = _ctl("rpc", "--list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == served == sorted(METHODS)
    for line in lines:
        name = line.split()[0]
        assert line.endswith(METHODS[name].summary)


def test_method_help_prints_each_parameter_with_required_and_type():
    """`rpc item.correct --help` names every parameter, required or optional, and its type; a method
    without required parameters shows them in brackets."""
    out = _ctl("rpc", "item.correct", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("gatewayctl rpc item.correct order_no=... seq=... account_no=...")
    assert METHODS["item.correct"].summary in out.stdout
    rows = {line.split()[0]: line.split()[1:3] for line in out.stdout.splitlines()[3:]}
    assert rows["seq"] == ["required", "positive"]
    assert rows["account_no"] == ["required", "string"]
    assert rows["id_number"] == ["optional", "string"]
    assert set(rows) == METHODS["item.correct"].names()
    health = _ctl("--config", "/nonexistent.toml", "rpc", "health", "--help")
    assert health.returncode == 0 and "[check=...]" in health.stdout and "optional" in health.stdout


def test_unknown_method_help_is_a_clear_error_exit_2():
    """Help for a method that does not exist names it and the methods there are, exit 2."""
    out = _ctl("rpc", "order.cancel", "--help")
    assert out.returncode == 2
    assert "no RPC method 'order.cancel'" in out.stderr and "order.status" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("method, params", [("order.status", {"order_no": "O1", "orderno": "O1"}),
                                            ("report.yearly", {"year": 2026, "month": 1}),
                                            ("health", {"verbose": True})])
def test_a_parameter_the_table_does_not_declare_is_refused_before_the_method_runs(method, params):
    """The transport's call checks params against the table: an undeclared one is INVALID_PARAMS
    naming it and the method's parameters, before the method (which would need a database) runs."""
    cmds = Commands(None, None, None, _NoGateway())
    failure = []
    cmds.call(method, params, Caller("unix", "test")).addErrback(failure.append)
    assert failure, "the call was not refused"
    e = failure[0].value
    assert isinstance(e, RpcError) and e.code == INVALID_PARAMS
    bad = next(k for k in params if k not in METHODS[method].names())
    assert e.field == bad and f"unknown parameter {bad!r} for {method}" in e.message
    assert ", ".join(sorted(METHODS[method].names())) in e.message


def test_the_table_and_the_code_must_agree():
    """A method coded but not declared (or declared but not coded) stops Commands from being built."""
    class Extra(Commands):
        def _table(self):
            return {**super()._table(), "order.cancel": None}
    with pytest.raises(RuntimeError, match="coded only \\['order.cancel'\\]"):
        Extra(None, None, None, _NoGateway())
