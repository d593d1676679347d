"""benchmarks/metrics.py runs end to end in its tiniest mode (no speed asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bench_smoke import read, run

pytestmark = pytest.mark.engine_independent


def test_metrics_tiny(tmp_path: Path) -> None:
    proc = run("metrics.py", "--tiny", "--results-dir", str(tmp_path), timeout=120)
    data = read(tmp_path / "metrics.json")
    medians = data["ns_per_decision_median"]
    assert set(medians) == {"tiergate counters", "prometheus-client metrics"}
    assert all(ns > 0 for ns in medians.values()) and data["scrape_us_median"] > 0
    assert "ns per decision" in proc.stdout
