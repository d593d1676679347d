"""benchmarks/durability.py runs end to end in its tiniest mode and writes its results.

Proves the harness works; it asserts nothing about speed (``make bench`` measures).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine_independent

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_durability_benchmark_tiny(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "durability.py"),
            "--quick",
            "--decisions",
            "400",
            "--repeats",
            "1",
            "--recipients",
            "5000",
            "--tail",
            "300",
            "--keyed",
            "2000",
            "--results-dir",
            str(tmp_path),
            "--work-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Admit throughput through AdmissionService" in proc.stdout
    data = json.loads((tmp_path / "durability.json").read_text())
    assert data["machine"]["engine"] in ("compiled", "python")
    for shape in ("unary64", "batch100", "serial"):
        modes = data["throughput"][shape]["modes"]
        assert set(modes) == {"off", "write", "fsync-interval", "fsync-always"}
        assert modes["fsync-always"]["fsyncs"] >= modes["fsync-always"]["writes"] > 0
        assert modes["write"]["journal_bytes_per_decision"] > 16  # framing + payload
    rec, keyed = data["recovery"]
    assert rec["recipients"] == 5000 and rec["tail_admits"] == 300
    assert keyed["recipients"] == keyed["idempotency_keys"] == 2000
    for r in (rec, keyed):
        assert r["records_replayed"] == r["tail_records"] >= 1  # one record per batch
        assert r["snapshot_bytes"] > 0 and r["recovery_seconds"] > 0
        assert r["served_snapshot_seconds"] >= r["served_snapshot_stall_seconds"] >= 0
    assert keyed["snapshot_bytes"] > rec["snapshot_bytes"] * 2000 / 5000  # the keys are in it
    assert not list(tmp_path.glob("tiergate-durability-*"))  # scratch data removed
