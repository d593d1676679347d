"""benchmarks/reload.py runs end to end in its tiniest mode and writes its results
(it measures, it asserts nothing about speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine_independent

ROOT = Path(__file__).resolve().parents[2]


def test_reload_tiny_measures_reloads_and_the_event_loop(tmp_path: Path) -> None:
    script = str(ROOT / "benchmarks" / "reload.py")
    proc = subprocess.run(
        [sys.executable, script, "--tiny", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    data = json.loads((tmp_path / "reload.json").read_text(encoding="utf-8"))
    assert data["recipients"] == 20_000 and data["reloads"] == 12
    assert data["reload_ms"]["median"] > 0
    assert data["longest_tick_ms"]["reloads"] > 0 and data["longest_tick_ms"]["idle"] > 0
    assert "profile reloads at 20,000 recipients" in proc.stdout
