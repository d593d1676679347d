"""The engine benchmark's target check reads the figures it is given (no timing here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine_independent

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

# benchmarks/engine.py under a name of its own: "engine" is also the test package
_spec = importlib.util.spec_from_file_location("tiergate_bench_engine", BENCH / "engine.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _row(tracked: int, batch_ns: float, single_ns: float, nbytes: float) -> dict[str, float]:
    return {
        "tracked_recipients": tracked,
        "compiled_batch_cpu_ns": batch_ns,
        "compiled_single_cpu_ns": single_ns,
        "compiled_bytes_per_recipient": nbytes,
    }


def test_targets_compare_the_largest_size_with_the_smallest() -> None:
    rows = [
        {**_row(1_000, 50.0, 200.0, 60.0), "batch_ratio_cpu": 45.0},
        {**_row(1_000_000, 90.0, 300.0, 40.0), "batch_ratio_cpu": 31.0},
        _row(10_000_000, 110.0, 450.0, 34.0),
    ]
    goals = {g["target"]: g for g in bench.targets(rows)}
    assert goals["compiled / reference, batch (lowest size)"]["value"] == 31.0
    assert goals["compiled / reference, batch (lowest size)"]["met"]
    batch = goals["batch ns/decision at 10,000,000 / at 1,000"]
    assert batch["value"] == 2.2 and not batch["met"]
    assert goals["single ns/decision at 10,000,000 / at 1,000"]["value"] == 2.25
    assert goals["bytes per tracked recipient at 10,000,000"]["met"]


def test_missed_targets_say_so() -> None:
    rows = [
        {**_row(1_000, 50.0, 200.0, 60.0), "batch_ratio_cpu": 20.0},
        _row(10_000_000, 90.0, 300.0, 107.4),
    ]
    met = {g["target"]: g["met"] for g in bench.targets(rows)}
    assert met == {
        "compiled / reference, batch (lowest size)": False,
        "batch ns/decision at 10,000,000 / at 1,000": True,
        "single ns/decision at 10,000,000 / at 1,000": True,
        "bytes per tracked recipient at 10,000,000": False,
    }


def test_side_by_side_figures_decide_the_size_ratios() -> None:
    rows = [_row(1_000, 50.0, 200.0, 60.0), _row(10_000_000, 130.0, 520.0, 34.0)]
    paired = {"big": 10_000_000, "batch_ratio_median": 1.9, "single_ratio_median": 2.3}
    goals = {g["target"]: g for g in bench.targets(rows, paired)}
    batch = goals["batch ns/decision at 10,000,000 / at 1,000, side by side"]
    assert batch["value"] == 1.9 and batch["met"]
    single = goals["single ns/decision at 10,000,000 / at 1,000, side by side"]
    assert single["value"] == 2.3 and not single["met"]
    # figures paired at another size than the table's largest are not used
    goals = {g["target"] for g in bench.targets(rows, {**paired, "big": 1_000_000})}
    assert "batch ns/decision at 10,000,000 / at 1,000" in goals


@pytest.mark.skipif(bench.CEngine is None, reason="the side-by-side run times the compiled engine")
def test_side_by_side_times_both_sizes_in_every_round() -> None:
    out = bench.side_by_side(1_000, 3_000, 2, bench.TURN_BATCHES * bench.BATCH)
    assert (out["small"], out["big"]) == (1_000, 3_000)
    assert len(out["rounds"]) == 2
    for row in out["rounds"]:
        for key in ("batch_ns_1000", "batch_ns_3000", "single_ns_1000", "single_ns_3000"):
            assert row[key] > 0
        assert row["batch_ratio"] == row["batch_ns_3000"] / row["batch_ns_1000"]
    assert out["batch_ratio_median"] > 0 and out["single_ratio_median"] > 0
