"""benchmarks/state_growth.py runs end to end in its tiniest mode and writes its
results (speed and sizes are measured by ``make bench``, not asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bench_smoke import read, run

pytestmark = pytest.mark.engine_independent


def test_state_growth_tiny(tmp_path: Path) -> None:
    proc = run("state_growth.py", "--tiny", "--results-dir", str(tmp_path))
    data = read(tmp_path / "state_growth.json")
    assert [r["senders"] for r in data["rates"]] == [800, 1300]
    assert data["exit_code"] == 0
    assert data["shutdown_seconds"] <= data["shutdown_grace_seconds"]
    alone = data["state_alone"]
    assert set(alone) == {"rates", "bytes_per_sender", "bytes_per_admit_plain", "bytes_per_key"}
    assert [r["senders"] for r in alone["rates"]] == [800, 1300]
    assert all(r["snapshot_stall_ms"] > 0 for r in alone["rates"])
    assert "event loop held by a snapshot, 1,300 senders" in proc.stdout
    stalls = data["snapshot_stalls"]
    assert [r["senders"] for r in stalls] == [800, 1300]
    assert all(r["wall_s"] > 0 and r["stall_ms"] >= r["stall_cpu_ms"] > 0 for r in stalls)
    assert "longest loop stall during a snapshot, 1,300 senders" in proc.stdout
    assert "shutdown (SIGTERM to exit)" in proc.stdout
