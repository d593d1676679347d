"""The engine benchmark's target check reads the figures it is given (no timing here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
