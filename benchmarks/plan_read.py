"""How long a plan's read of its list holds Redis.

A plan on the Redis store reads everything it depends on with the library's
read-only ``entries`` (``store/redis_reads.py`` ``plan_reads``): a list of at
most ``READ_PART`` recipients in one call, a longer one in calls of that many;
Redis runs no other call while one runs. This measures, for a list of N
recipients none of which Redis holds anything for (a fresh campaign) and one
whose every recipient was counted with a marketing send (a repeat campaign, the
most a list can cost), on a throwaway redis-server on 127.0.0.1, side by side in
one run: the read as made (in parts) and the whole list in one call: wall time
at the client, Redis's own time per call (``INFO commandstats``), and the
longest single call Redis ran (its latency monitor, ``LATENCY LATEST``: what
every other client waited at worst); medians of the runs.

    .venv/bin/python benchmarks/plan_read.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common

from tiergate.engine.constants import F_MARKETING, F_TEMPLATE
from tiergate.store import redis_reads
from tiergate.store.location import parse_store
from tiergate.store.redis_counting import NumberSpec, RedisCounting, Row, ScopeSpec, connect
from tiergate.store.redis_reads import plan_reads

T0 = 1_700_000_000_000
PART = 2_000


async def _redis_us(store: RedisCounting) -> tuple[float, int]:
    """Redis's time in read-only function calls so far (µs), and their number."""
    stats = await store.client.info("commandstats")
    got = stats.get("cmdstat_fcall_ro", {})
    return float(got.get("usec", 0)), int(got.get("calls", 0))


async def _read(
    store: RedisCounting, scope: ScopeSpec, num: NumberSpec, rs: list[int]
) -> tuple[float, float, float]:
    """One plan read of ``rs``: (wall s, Redis s per call, the longest call Redis ran
    meanwhile, s: its latency monitor's ``command`` event, kept from 1 ms)."""
    await store.client.execute_command("LATENCY", "RESET")
    before, calls = await _redis_us(store)
    t = time.perf_counter()
    await plan_reads(store, scope, T0 + 7_200_000, num, rs)
    wall = time.perf_counter() - t
    after, calls_after = await _redis_us(store)
    latest = await store.client.execute_command("LATENCY", "LATEST")
    longest = max((int(e[3]) for e in latest if _text(e[0]) == "command"), default=0)
    return wall, (after - before) / 1e6 / max(1, calls_after - calls), longest / 1e3


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def measure(port: int, n: int, runs: int) -> dict[str, Any]:
    store = await connect(parse_store(f"redis://{_common.LOOPBACK}:{port}"), timeout=120.0)
    await store.client.config_set("latency-monitor-threshold", 1)
    read_part = redis_reads.READ_PART
    num = NumberSpec("n1", tput_interval_us=1)
    out: dict[str, Any] = {}
    try:
        for name, counted in (("fresh list", 0), ("every recipient counted", n)):
            scope = ScopeSpec(f"bench-{counted}")
            rs = [14155550000 + i for i in range(n)]
            flags = F_TEMPLATE | F_MARKETING
            for i in range(0, counted, PART):
                part = rs[i : min(counted, i + PART)]
                await store.decide(
                    scope, [Row(num, r, flags, 1 << 40, T0 + i + j) for j, r in enumerate(part)]
                )
            split: list[tuple[float, float, float]] = []
            whole: list[tuple[float, float, float]] = []
            for _ in range(runs):
                split.append(await _read(store, scope, num, rs))
                redis_reads.READ_PART = n  # the whole list in one call
                try:
                    whole.append(await _read(store, scope, num, rs))
                finally:
                    redis_reads.READ_PART = read_part
            for how, got in (("in parts", split), ("one call", whole)):
                out[f"{name}, {how}"] = {
                    "calls": -(-n // read_part) if how == "in parts" else 1,
                    "wall_seconds": statistics.median(g[0] for g in got),
                    "redis_seconds_per_call": statistics.median(g[1] for g in got),
                    "longest_call_seconds": statistics.median(g[2] for g in got),
                }
    finally:
        await store.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 000 recipients, 3 runs")
    ap.add_argument("--tiny", action="store_true", help="10 000 recipients, 1 run")
    ap.add_argument("--results-dir", type=Path, default=None, help="where plan_read.json goes")
    args = ap.parse_args(argv)
    if _common.redis_missing("plan_read", args.results_dir):
        return 0
    _common.print_machine()
    n, runs = (10_000, 1) if args.tiny else (100_000, 3) if args.quick else (100_000, 7)
    with _common.redis_server() as port:
        figures = asyncio.run(measure(port, n, runs))
    _common.print_table(
        f"{n:,} recipients: a plan's read (median of {runs} runs)",
        ["list, read", "calls", "wall s", "Redis ms a call", "longest call ms"],
        [
            [
                name,
                f["calls"],
                f["wall_seconds"],
                round(f["redis_seconds_per_call"] * 1e3, 1),
                round(f["longest_call_seconds"] * 1e3, 1),
            ]
            for name, f in figures.items()
        ],
    )
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    payload = {
        "mode": mode,
        "recipients": n,
        "timed_runs": runs,
        "read_part": redis_reads.READ_PART,
        "figures": figures,
    }
    print(f"wrote {_common.write_results('plan_read', payload, args.results_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
