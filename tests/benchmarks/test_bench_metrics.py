"""benchmarks/metrics.py runs end to end in its tiniest mode (no speed asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_metrics_tiny(tmp_path: Path) -> None:
    script = str(ROOT / "benchmarks" / "metrics.py")
    proc = subprocess.run(
        [sys.executable, script, "--tiny", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "metrics.json").read_text())
    medians = data["ns_per_decision_median"]
    assert set(medians) == {"tiergate counters", "prometheus-client metrics"}
    assert all(ns > 0 for ns in medians.values()) and data["scrape_us_median"] > 0
    assert "ns per decision" in proc.stdout
