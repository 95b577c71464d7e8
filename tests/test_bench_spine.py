"""The benchmark's own arithmetic and its raw baselines (bench/spine.py, bench/baselines.py).

No timing is asserted: these check that the figures the bench prints are computed from the
right things (a union of the simulators' busy spans, a baseline summed from its timed parts
only, each ratio against its own baseline) and that every baseline redoes the stage's work
on the same rows.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import pytest_twisted

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def spine():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("spine")
    finally:
        sys.path.remove(str(BENCH))


def test_busy_time_is_a_union_clipped_to_the_window(spine):
    """Two core stores in flight at once count once, and only the part inside the stage's window
    counts: [0,4] and [1,3] overlap (4 s), [5,7] is clipped to [5,6] by the window [0,6]."""
    m = spine.SimMeter(period=60)
    m.stop()
    m.busy = {"core": [(0.0, 4.0), (1.0, 3.0)], "bank": [(5.0, 7.0)]}
    assert m.busy_in("core", 0.0, 6.0) == pytest.approx(4.0)
    assert m.busy_in(None, 0.0, 6.0) == pytest.approx(5.0)
    assert m.busy_in("bank", 0.0, 6.0) == pytest.approx(1.0)
    assert m.busy_in(None, 2.0, 2.5) == pytest.approx(0.5)


def test_cpu_within_a_window_is_interpolated_between_samples(spine):
    """CPU seconds in [a, b] come from the samples around a and b, not from the nearest one."""
    m = spine.SimMeter(period=60)
    m.stop()
    m.samples = [(10.0, 1.0), (12.0, 3.0), (14.0, 3.0)]
    assert m.cpu(11.0, 13.0) == pytest.approx(1.0)
    assert m.cpu(9.0, 20.0) == pytest.approx(2.0)


def test_a_baseline_is_the_sum_of_its_timed_parts_and_the_sink_row_replaces_the_post(spine):
    """Row counts and byte counts are not seconds; the sink's POST is not in the core baseline,
    and the sink row is the same parts with the sink's POST in place of the core's."""
    result = {"stages_s": {"pull_validate_store": 4.0, "push_results_to_core": 6.0},
              "baselines": {"pull_validate_store": {"get": 1.0, "insert": 1.0, "rows": 100000},
                            "push_results_to_core": {"read": 0.5, "json": 0.5, "post": 2.0,
                                                     "post_sink": 0.1, "rows": 100000}}}
    rows = {r["stage"]: r for r in spine.table(result)}
    assert rows["pull_validate_store"]["baseline_s"] == 2.0 and rows["pull_validate_store"]["ratio"] == 2.0
    assert rows["push_results_to_core"]["baseline_s"] == 3.0 and rows["push_results_to_core"]["ratio"] == 2.0
    sink = rows["push_results_to_core (vs a bare sink)"]
    assert sink["baseline_s"] == 1.1 and sink["ratio"] == pytest.approx(5.45, abs=0.01)


@pytest.mark.loopback
@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_every_baseline_redoes_its_stage_on_the_same_rows(reactor, tmp_path, spine):
    """A small run with baselines: each stage that has one got it without error, over as many
    rows as the order has (the same items inserted, selected, updated and pushed), and the
    order still ends with every item reported to the core once."""
    n = 300
    result = await spine.run(reactor, n, tmp_path / "bench", baselines=True)
    base = result["baselines"]
    assert set(base) == {"pull_validate_store", "build_sign_encrypt", "upload_sftp",
                         "fetch_verify_apply", "push_results_to_core"}, base
    for stage, parts in base.items():
        assert "error" not in parts, (stage, parts)
    for stage in ("pull_validate_store", "build_sign_encrypt", "fetch_verify_apply", "push_results_to_core"):
        assert base[stage]["rows"] == n, (stage, base[stage])
    assert base["upload_sftp"]["bytes"] > 0
    assert result["all_reported"] and result["double_credits"] == 0
    assert {r["stage"] for r in result["table"] if "ratio" in r} >= set(base)
