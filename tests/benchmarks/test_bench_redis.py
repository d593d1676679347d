"""The shared store's benchmarks run end to end in their tiniest mode, from run_all too.

They prove the harness works (every row measured, ratios from the same run);
they never assert on speed (``make bench`` measures it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from test_bench_smoke import BENCH, read, run

sys.path.insert(0, str(BENCH))

import _common

pytestmark = pytest.mark.engine_independent


def _need_redis_server() -> None:
    """Skip without redis-server on a developer's machine; fail under CI."""
    try:
        _common.find_redis_server()
    except _common.RedisMissing:
        if os.environ.get("CI"):
            raise
        pytest.skip("needs redis-server (`make system-deps`)")


@pytest.mark.redis
def test_redis_store_and_memory_tiny_from_run_all(tmp_path: Path) -> None:
    _need_redis_server()
    proc = run(
        "run_all.py",
        "--tiny",
        "--only",
        "redis_store,redis_memory",
        "--results-dir",
        str(tmp_path),
        "--chart",
        "",
        timeout=400,
    )
    summary = read(tmp_path / "summary.json")
    assert summary["runs"]["redis_store"]["exit_code"] == 0
    assert summary["runs"]["redis_memory"]["exit_code"] == 0

    store = read(tmp_path / "redis_store.json")
    rates = store["decisions_per_s"]
    assert set(rates) == {"embedded", "redis", "batch", "zset", "two", "batch_keyed"}
    assert all(v > 0 for v in rates.values())
    assert all(len(v) == store["rounds"] == 1 for v in store["all"].values())
    assert store["batch_over_zset"] == round(rates["batch"] / rates["zset"], 3)
    assert store["redis_cpu_us_per_decision"]["batch"] > 0
    assert store["keyed_batch_over_batch"] == round(rates["batch_keyed"] / rates["batch"], 3)
    assert 0 < store["function_share_in_commands"] < 1
    assert "two sidecars, AdmitBatch(1000), together" in proc.stdout
    assert "caveat:" in proc.stdout
    assert summary["headline"]["redis_store"]["targets"]["batch_over_zset"] == 4.0

    memory = read(tmp_path / "redis_memory.json")
    (row,) = memory["runs"]
    assert row["recipients"] == 10_000
    assert 0 < row["scope_bytes_per_recipient"] <= row["bytes_per_recipient"]
    assert row["zset_bytes_per_recipient"] > 0
    reach = memory["reach"]
    assert reach["members"] == 8_000 < reach["decided"]  # bounded: 4 × the path's users
    assert reach["bytes"] > 0


def test_without_redis_server_the_benchmarks_say_so_and_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> str:
        raise _common.RedisMissing("redis-server not found")

    monkeypatch.setattr(_common, "find_redis_server", missing)
    assert _common.redis_missing("redis_store", tmp_path)
    data = json.loads((tmp_path / "redis_store.json").read_text(encoding="utf-8"))
    assert data["skipped"] == "redis-server not found"


@pytest.mark.redis
def test_redis_unary_tiny_writes_every_figure(tmp_path: Path) -> None:
    """``redis_unary.py --tiny``: the embedded store, Redis and Redis as before side by
    side, each with its figures, the lone requests' CPU, and the ratios of that run."""
    _need_redis_server()
    proc = run("redis_unary.py", "--tiny", "--results-dir", str(tmp_path), timeout=400)
    got = read(tmp_path / "redis_unary.json")
    medians = got["medians"]
    assert set(medians) == {"embedded", "redis", "before"}
    assert all(m["rate"] > 0 and m["loop_cpu_us"] > 0 for m in medians.values())
    for name in ("redis", "before"):
        assert medians[name]["decisions_per_round_trip"] >= 1
        assert medians[name]["fcall_us_per_call"] > 0
    assert got["unary_redis_over_embedded"] == round(got["ratios"][0], 3)
    assert got["before_over_embedded"] == round(got["ratios_before"][0], 3)
    assert set(got["lone_loop_cpu_us"]) == {"embedded", "redis", "before"}
    assert "lone requests one after another" in proc.stdout


@pytest.mark.redis
def test_redis_callcost_tiny_measures_the_library_beside_its_floor(tmp_path: Path) -> None:
    """``redis_callcost.py --tiny --against HEAD``: one-row decide calls of the library
    as it is, of the same library returning at once, and of a revision's, each with
    its time per call and the Redis commands it called."""
    _need_redis_server()
    proc = run("redis_callcost.py", "--tiny", "--against", "HEAD", "--results-dir", str(tmp_path))
    got = read(tmp_path / "redis_callcost.json")
    lib, floor, head = got["as it is"], got["returning at once"], got["at HEAD"]
    assert lib["fcall_us_per_call"] > 0 and lib["commands_per_call"] > 1
    assert head["commands_per_call"] > 1
    assert floor["fcall_us_per_call"] > 0 and floor["commands_per_call"] < 1
    assert "returning at once" in proc.stdout


@pytest.mark.redis
def test_redis_floor_tiny_measures_every_way_beside_the_script(tmp_path: Path) -> None:
    """``redis_floor.py --tiny``: Redis's CPU per row of the sorted-set script, of the
    decide function and of the three floors (entries read and written under a version,
    written alone, written as commands under WATCH), each with its ratio to the
    script's."""
    _need_redis_server()
    proc = run("redis_floor.py", "--tiny", "--results-dir", str(tmp_path))
    got = read(tmp_path / "redis_floor.json")
    ways = [v for v in got.values() if isinstance(v, dict) and "to_the_script" in v]
    assert len(ways) == 5
    for way in ways:
        assert way["redis_cpu_us_per_row"] > 0 and way["to_the_script"] > 0
    assert got["sorted-set script, EVALSHA x1000"]["to_the_script"] == 1.0
    assert "no read" in proc.stdout
