"""``benchmarks/overload.py`` runs end to end in a tiny mode: the Python load
(h2load is the measured one; ``make bench`` and the README's command run it),
one round, the server's event loop on a CPU of its own when two are allowed.
It proves the harness (every figure measured, the shed calls' statuses read);
it never asserts on speed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_bench_smoke import read, run

pytestmark = pytest.mark.engine_independent


def test_overload_tiny_measures_the_probe_and_reads_the_shed_statuses(tmp_path: Path) -> None:
    two = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2
    loop_cpu = min(os.sched_getaffinity(0)) if two else -1
    args = ["--seconds", "1", "--rounds", "1", "--max-in-flight", "8", "--max-queued", "4"]
    args += ["--callers", "4", "--procs", "1", "--channels", "2", "--loop-cpu", str(loop_cpu)]
    proc = run("overload.py", *args, "--results-dir", str(tmp_path))
    got = read(tmp_path / "overload.json")
    assert got["loop_cpu"] == loop_cpu
    (one,) = got["runs"]
    assert one["max_queued"] == 4 and one["sustainable_calls_per_s"] > 0
    median = one["median"]
    for figure in ("unloaded_p99_ms", "probe_p99_under_load_ms", "p99_vs_unloaded"):
        assert median[figure] > 0
    assert one["load_outcomes"].get("OK", 0) > 0
    assert one["shed_statuses"].get("RESOURCE_EXHAUSTED", 0) > 0
    assert "target probe p99 <= 3x unloaded" in proc.stdout
    if two:
        assert f"event loop runs alone on CPU {loop_cpu}" in proc.stdout
