"""load.py's median of paired rounds: tiergate's figure over the no-op's, round by round."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine_independent

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import load  # noqa: E402


def test_median_of_paired_rounds_skips_rounds_without_both_figures() -> None:
    rounds = [
        {"ceiling_items_per_s": 100.0, "tiergate_items_per_s": 70.0},
        {"ceiling_items_per_s": 100.0, "tiergate_items_per_s": 95.0},
        {"ceiling_items_per_s": 200.0, "tiergate_items_per_s": 180.0},
        {"rate": 50.0, "ceiling_p99_ms": 2.0, "tiergate_p99_ms": 3.0},
    ]
    assert load._median_ratio(rounds, "tiergate_items_per_s", "ceiling_items_per_s") == 0.9
    assert load._median_ratio(rounds, "tiergate_p99_ms", "ceiling_p99_ms") == 1.5
    assert load._median_ratio(rounds, "tiergate_items_per_s", "ceiling_other_items_per_s") is None
