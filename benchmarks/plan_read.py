"""How long a plan's read of its list holds Redis: one read-only call per list.

A plan on the Redis store reads everything it depends on in one call of the
library's read-only ``entries`` (``store/redis_reads.py`` ``plan_reads``), so
Redis runs no other call while it reads. This measures that call for a list
of N recipients none of which Redis holds anything for (a fresh campaign) and
for one whose every recipient was counted with a marketing send (a repeat
campaign, the most a list can cost), on a throwaway redis-server on 127.0.0.1:
the call's wall time at the client and Redis's own time in it
(``INFO commandstats``), medians of the runs; and beside it the same list read
in calls of 2 000 recipients (not atomic), in the same run.

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
from tiergate.store.location import parse_store
from tiergate.store.redis_counting import NumberSpec, RedisCounting, Row, ScopeSpec, connect
from tiergate.store.redis_reads import plan_reads

T0 = 1_700_000_000_000
PART = 2_000


async def _redis_us(store: RedisCounting) -> float:
    stats = await store.client.info("commandstats")
    return float(stats.get("cmdstat_fcall_ro", {}).get("usec", 0))


async def measure(port: int, n: int, runs: int) -> dict[str, Any]:
    store = await connect(parse_store(f"redis://{_common.LOOPBACK}:{port}"), timeout=120.0)
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
            one, one_redis, parts = [], [], []
            for _ in range(runs):
                before = await _redis_us(store)
                t = time.perf_counter()
                await plan_reads(store, scope, T0 + 7_200_000, num, rs)
                one.append(time.perf_counter() - t)
                one_redis.append((await _redis_us(store) - before) / 1e6)
                t = time.perf_counter()
                for i in range(0, n, PART):
                    await plan_reads(store, scope, T0 + 7_200_000, num, rs[i : i + PART])
                parts.append(time.perf_counter() - t)
            out[name] = {
                "one_call_seconds": statistics.median(one),
                "one_call_redis_seconds": statistics.median(one_redis),
                "redis_us_per_recipient": statistics.median(one_redis) / n * 1e6,
                "calls_of_2000_seconds": statistics.median(parts),
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
        f"{n:,} recipients: a plan's read, one call (median of {runs} runs)",
        ["list", "one call s", "Redis s in it", "Redis µs/recipient", "calls of 2 000 s"],
        [
            [
                name,
                f["one_call_seconds"],
                f["one_call_redis_seconds"],
                f["redis_us_per_recipient"],
                f["calls_of_2000_seconds"],
            ]
            for name, f in figures.items()
        ],
    )
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    payload = {"mode": mode, "recipients": n, "timed_runs": runs, "figures": figures}
    print(f"wrote {_common.write_results('plan_read', payload, args.results_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
