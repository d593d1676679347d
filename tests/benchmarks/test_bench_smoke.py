"""Each benchmark script runs end to end in its tiniest mode and writes its results.

These prove the harness works; they never assert on speed (speed is measured
by ``make bench``, not by tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.engine_independent

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def run(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    machine = data["machine"]
    assert machine["cores"] >= 1
    assert machine["python"] and machine["grpcio"] and machine["protobuf"]
    assert machine["engine"] in ("compiled", "python")
    return data


def test_ceiling_tiny(tmp_path: Path) -> None:
    proc = run(
        "ceiling.py", "--tiny", "--shapes", "unary,batch100,stream1", "--results-dir", str(tmp_path)
    )
    data = read(tmp_path / "ceiling.json")
    assert set(data["shapes"]) == {"unary", "batch100", "stream1"}
    for shape in data["shapes"].values():
        assert shape["calls"] > 0 and shape["errors"] == 0
        assert shape["latency"]["p99_ms"] >= shape["latency"]["p50_ms"] > 0
    assert data["shapes"]["batch100"]["items"] == 100 * data["shapes"]["batch100"]["calls"]
    assert "no-op ceiling" in proc.stdout


def test_peers_tiny_without_redis_or_server(tmp_path: Path) -> None:
    run("peers.py", "--tiny", "--no-redis", "--no-server", "--results-dir", str(tmp_path))
    data = read(tmp_path / "peers.json")
    names = [f["name"] for f in data["figures"]]
    assert names == [
        "python-dict",
        "tiergate-engine decide",
        "tiergate-engine decide_batch(1000)",
    ]
    for f in data["figures"]:
        assert sum(f["outcomes"].values()) == f["decisions"] == 2_000
        # one warm-up run, then the timed runs, each from empty state, all kept
        assert f["warmup_runs"] == 1 and f["timed_runs"] == len(f["runs"]) == 7
        assert f["run_outcomes_agree"]
        assert f["decisions_per_cpu_s_min"] <= f["decisions_per_cpu_s"]
        assert f["decisions_per_cpu_s"] <= f["decisions_per_cpu_s_max"]
    assert set(data["skipped"]) == {"redis-zset-lua", "tiergate-server"}


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_peers_tiny_with_redis(tmp_path: Path) -> None:
    run("peers.py", "--tiny", "--no-server", "--results-dir", str(tmp_path))
    data = read(tmp_path / "peers.json")
    redis, plain = data["figures"][0], data["figures"][1]
    assert redis["name"].startswith("redis-zset-lua")
    # The Lua sliding window and the in-process dict implement the same exact rule.
    assert redis["outcomes"] == plain["outcomes"]
    assert redis["timed_runs"] == len(redis["runs"]) == 2 and redis["run_outcomes_agree"]
    assert data["target"]["ratio"] > 0
    assert data["target"]["ratio_min"] <= data["target"]["ratio"] <= data["target"]["ratio_max"]


@pytest.mark.slow
def test_load_tiny_against_tiergate_serve(tmp_path: Path) -> None:
    proc = run(
        "load.py", "--tiny", "--shapes", "unary,batch100,stream1", "--results-dir", str(tmp_path)
    )
    data = read(tmp_path / "load.json")
    for name in ("unary", "batch100", "stream1"):
        rep = data["shapes"][name]
        for mode in ("ceiling_max", "tiergate_max", "ceiling_fixed", "tiergate_fixed"):
            r = rep["runs"][mode]
            assert r["calls"] > 0 and r["errors"] == 0, (name, mode, r)
        assert rep["compare"]["items_ratio"] > 0
        assert rep["compare"]["items_ratio_median_of_rounds"] > 0
        assert rep["compare"]["p99_half_load_ratio_median_of_rounds"] > 0
    assert "target Admit (unary) throughput" in proc.stdout
    assert "median of the paired rounds" in proc.stdout


def test_run_all_tiny_writes_summary_and_chart(tmp_path: Path) -> None:
    chart = tmp_path / "performance.png"
    run(
        "run_all.py",
        "--tiny",
        "--only",
        "peers",
        "--results-dir",
        str(tmp_path),
        "--chart",
        str(chart),
    )
    summary = read(tmp_path / "summary.json")
    assert summary["mode"] == "tiny"
    assert summary["runs"]["peers"]["exit_code"] == 0
    assert "python-dict" in summary["headline"]["peers"]


@pytest.mark.slow
def test_alternate_tiny_runs_every_variant_in_turns(tmp_path: Path) -> None:
    proc = run(
        "alternate.py",
        "--tiny",
        "--shape",
        "stream1",
        "--variant",
        f"this={ROOT / 'src'} --durability=write",
        "--in-memory-too",
        "--results-dir",
        str(tmp_path),
    )
    data = read(tmp_path / "alternate.json")
    servers = data["servers"]
    assert list(servers) == ["no-op", "this", "this (no data dir)"]
    for figures in servers.values():
        assert len(figures["rounds"]) == 1
        assert figures["items_per_s_median"] > 0
        assert figures["server_cpu_us_per_call_median"] > 0
    assert servers["no-op"]["ratio_to_noop_median"] == 1.0
    assert data["variants"]["this"]["serve_args"] == ["--durability=write"]
    assert "round 1:" in proc.stdout


def test_alternate_refuses_a_variant_without_tiergate(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "alternate.py"), "--tiny", "--variant", f"x={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "holds no tiergate package" in proc.stderr


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler"
)
def test_memory_probe_tiny(tmp_path: Path) -> None:
    proc = run("memory.py", "--tiny", "--results-dir", str(tmp_path))
    data = read(tmp_path / "memory.json")
    rows = data["rows"]
    configs = [(1, 0), (3, 0), (3, 13)]
    assert [(r["region_bytes"], r["lines"], r["streams"]) for r in rows] == [
        (region, lines, streams) for region in (256 * 1024, 8 << 20) for lines, streams in configs
    ]
    for k, r in enumerate(rows):
        assert r["ns_per_item"] > 0 and len(r["ns_runs"]) == data["rounds"] == 1
        cached = rows[k % len(configs)]
        assert r["ratio_to_cached"] == pytest.approx(r["ns_per_item"] / cached["ns_per_item"])
    assert rows[0]["added_ns"] == 0 and rows[1]["ratio_to_cached"] == 1
    assert "one decision's table access" in proc.stdout
    chased = data["chase"]
    assert [r["region_bytes"] for r in chased] == [256 * 1024, 8 << 20]
    assert all(r["ns_per_load"] > 0 and len(r["ns_runs"]) == 1 for r in chased)
    assert "one single call's table access" in proc.stdout


def test_batchpath_tiny_measures_both_ways_and_compares_their_replies(tmp_path: Path) -> None:
    from tiergate.server import batch_wire

    proc = run("batchpath.py", "--tiny", "--results-dir", str(tmp_path))
    data = read(tmp_path / "batchpath.json")
    assert data["replies_agree"] is True and data["timed_runs"] == 1
    ways = {f["way"] for f in data["figures"].values()}
    assert ways == ({"message", "wire"} if batch_wire.COMPILED else {"message"})
    for f in data["figures"].values():
        ns = f["ns_per_item"]
        assert ns["total"] > 0
        if f["way"] == "wire":
            assert ns["total"] == pytest.approx(ns["decode"] + ns["decide"] + ns["encode"])
    assert data["ratios"]["message: keys / no keys"] > 0
    assert "replies of the two ways agree: True" in proc.stdout


def test_plan_tiny_times_plans_beside_dry_runs(tmp_path: Path) -> None:
    proc = run("plan.py", "--tiny", "--results-dir", str(tmp_path))
    data = read(tmp_path / "plan.json")
    assert data["recipients"] == 10_000 and data["timed_runs"] == 1
    paced, over = data["figures"]["paced"], data["figures"]["over limit"]
    for f in (paced, over):
        assert f["plan_seconds"] > 0 and f["dry_runs_seconds"] > 0
        assert f["plan_over_dry_runs"] == pytest.approx(f["plan_seconds"] / f["dry_runs_seconds"])
        # a dry run admits what a plan sends at once
        assert f["dry_runs_admitted"] == f["admissible_now"] == 10_000
    assert "PlanCampaign beside AdmitBatch" in proc.stdout


def test_growth_times_every_call_while_a_table_grows(tmp_path: Path) -> None:
    proc = run("growth.py", "--start", "2000", "--end", "60000", "--results-dir", str(tmp_path))
    data = read(tmp_path / "growth.json")
    rows = {r["mode"]: r for r in data["rows"]}
    assert rows["batch"]["calls"] == 58 and rows["single"]["calls"] == 58_000
    for r in rows.values():
        assert r["entries_after"] >= 60_000  # one scope entry per recipient
        assert r["cpu_p50_ms"] <= r["cpu_p999_ms"] <= r["cpu_max_ms"]
        assert r["cpu_max_ms"] > 0 and r["wall_max_ms"] > 0
    assert "longest call while one scope's table grows" in proc.stdout


def test_growth_with_marketing_sends_grows_the_marketing_map_too(tmp_path: Path) -> None:
    run(
        "growth.py",
        "--start",
        "2000",
        "--end",
        "20000",
        "--modes",
        "batch",
        "--marketing",
        "--results-dir",
        str(tmp_path),
    )
    data = read(tmp_path / "growth.json")
    assert data["marketing"] is True
    (row,) = data["rows"]
    assert row["mode"] == "batch marketing" and row["calls"] == 18
    assert row["entries_after"] >= 20_000
