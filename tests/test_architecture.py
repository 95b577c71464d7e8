"""The layering holds (issue 12): protocols <- adapters <- gateway, simulators beside them.

`lint-imports` checks the contracts in .importlinter (protocols imports neither adapters,
gateway nor simulators; adapters does not import gateway, but for the edges listed there
as still to remove; nothing of the daemon imports a simulator; gateway.store, the table
access, imports none of the steps, the RPC, the journal or a dialect). The key modules at start
(bankplugins, config, keystore, workdays) import each other in one direction only.
"""

from __future__ import annotations

import os
import subprocess
import sys

import grimp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_are_kept():
    """Every contract of .importlinter is kept (exit 0); a broken contract, or an ignored import
    that no longer exists, makes lint-imports exit 1 and this test fail. Run in its own process,
    as `make test` runs it, so the modules this test session imported play no part."""
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    done = subprocess.run([lint, "--config", ".importlinter", "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_start_up_modules_form_no_cycle():
    """gateway.bankplugins, config, keystore and workdays (and the layer below them) have no import
    cycle among them, counting imports made inside functions."""
    graph = grimp.build_graph("gateway", "adapters", "protocols")
    names = ["gateway.bankplugins", "gateway.config", "gateway.keystore", "gateway.workdays",
             "adapters.settings", "adapters.keys"]
    edges = {(a, b) for a in names for b in names if a != b and graph.direct_import_exists(importer=a, imported=b)}

    def reaches(a, b, seen=()):
        return any(x == a and (y == b or (y not in seen and reaches(y, b, seen + (y,)))) for x, y in edges)
    cycles = [a for a in names if reaches(a, a)]
    assert cycles == [], sorted(edges)
    assert ("gateway.config", "gateway.bankplugins") in edges   # the check sees the lazy imports
