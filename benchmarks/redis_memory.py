"""Bytes of Redis memory per tracked recipient of the shared store.

One limit scope and one phone number on a throwaway redis-server (no
persistence): N distinct recipients admitted through ``RedisCounting.decide``
in batches of 1 000, then ``INFO memory``'s ``used_memory`` against the empty
server. Two figures: with the number's entries (each admit leaves the
pair-rate TAT of its recipient in the scope's pair hash until the number's
pair interval has passed and a later decide call drops it), and the scope's
entries alone (last counted time and slot generation per recipient, the
rings, the scope's hash), after deleting the pair entries.

A third for comparison: the same recipients in one sorted set (member: the
recipient, score: its last send), the layout of the usual sliding-window script.

And the reach of a scope on Meta's volume scaling path (``tg3:{pf:S}:v``,
meta-2025's path: 30 days, at most 4 × 2 000 recipients kept): 1.25 × that many
new recipients decided in one such scope, then the key's ``MEMORY USAGE`` and
its members: what one scope on the path holds at most, whatever it sends.

    .venv/bin/python benchmarks/redis_memory.py --quick      # 100 000 recipients
    .venv/bin/python benchmarks/redis_memory.py              # 100 000 and 1 000 000
    .venv/bin/python benchmarks/redis_memory.py --tiny       # 10 000: proves it runs

Without redis-server it prints why and writes ``{"skipped": ...}``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import _common

from tiergate.engine.constants import F_TEMPLATE, UNLIMITED
from tiergate.store.location import parse_store
from tiergate.store.redis_counting import NumberSpec, Row, ScopeSpec, connect

T0 = 1_700_000_000_000
BATCH = 1_000


async def _used(client: Any) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def measure(port: int, n: int) -> dict[str, Any]:
    store = await connect(parse_store(f"redis://{_common.LOOPBACK}:{port}"), timeout=30.0)
    client = store.client
    await client.flushall()
    await store.load()
    scope = ScopeSpec(f"mem-{n}")
    # bursts so large that nothing but the limit refuses (UNLIMITED here)
    number = NumberSpec("106540352242922", 1, 1 << 20, 1, 1 << 20)
    empty = await _used(client)
    started = time.perf_counter()
    for at in range(0, n, BATCH):
        rows = [
            Row(number, 14_150_000_000 + i, F_TEMPLATE, UNLIMITED, T0 + i // 1000)
            for i in range(at, min(n, at + BATCH))
        ]
        got = await store.decide(scope, rows)
        assert all(d.decision == 1 for d in got), "a recipient was refused"
    seconds = time.perf_counter() - started
    full = await _used(client)
    await client.delete(*scope.fixed_keys()[5:7])  # the number's pair entries
    scope_only = await _used(client)
    await store.aclose()
    return {
        "recipients": n,
        "bytes_per_recipient": round((full - empty) / n, 1),
        "scope_bytes_per_recipient": round((scope_only - empty) / n, 1),
        "decisions_per_s": round(n / seconds),
        "used_memory_empty": empty,
        "used_memory_full": full,
    }


#: meta-2025's volume path: its window and the most recipients its reach keeps.
PATH_WINDOW_MS = 30 * 86_400_000
PATH_CAP = 4 * 2_000


async def measure_reach(port: int) -> dict[str, int | float]:
    """The reach of one scope on the volume path after more new recipients than it
    keeps: its members, ``MEMORY USAGE`` (bytes) and bytes per member."""
    store = await connect(parse_store(f"redis://{_common.LOOPBACK}:{port}"), timeout=30.0)
    client = store.client
    await client.flushall()
    await store.load()
    scope = ScopeSpec("mem-reach", path_window_ms=PATH_WINDOW_MS, path_cap=PATH_CAP)
    number = NumberSpec("106540352242922", 1, 1 << 20, 1, 1 << 20)
    n = PATH_CAP * 5 // 4
    for at in range(0, n, BATCH):
        rows = [
            Row(number, 14_150_000_000 + i, F_TEMPLATE, UNLIMITED, T0 + i)
            for i in range(at, min(n, at + BATCH))
        ]
        await store.decide(scope, rows)
    members = int(await client.zcard(scope.reach_key))
    used = int(await client.memory_usage(scope.reach_key, samples=0))
    await store.aclose()
    return {
        "decided": n,
        "members": members,
        "bytes": used,
        "bytes_per_member": round(used / members, 1),
    }


async def measure_zset(port: int, n: int) -> float:
    """Bytes per recipient of the usual alternative: one sorted set of recipients
    scored by their last send (``peers.ZSET_LUA``'s layout)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=_common.LOOPBACK, port=port)
    await client.flushall()
    empty = await _used(client)
    for at in range(0, n, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(at, min(n, at + BATCH)):
            pipe.zadd("zset:bench", {str(14_150_000_000 + i): T0 + i})
        await pipe.execute()
    full = await _used(client)
    await client.aclose()
    return round((full - empty) / n, 1)


def main() -> None:
    args = _common.parser(
        __doc__, "100 000 recipients only", "10 000 recipients: proves it runs"
    ).parse_args()
    _common.exit_on_sigterm()
    sizes = (10_000,) if args.tiny else (100_000,) if args.quick else (100_000, 1_000_000)
    if _common.redis_missing("redis_memory", args.results_dir):
        return
    rows = []
    with _common.redis_server() as port:
        for n in sizes:
            row = asyncio.run(measure(port, n))
            row["zset_bytes_per_recipient"] = asyncio.run(measure_zset(port, n))
            rows.append(row)
        reach = asyncio.run(measure_reach(port))
    _common.print_machine()
    _common.print_table(
        "Redis memory per tracked recipient (INFO memory used_memory)",
        ("recipients", "bytes/recipient", "scope entries only", "sorted set", "decisions/s"),
        [
            (
                r["recipients"],
                r["bytes_per_recipient"],
                r["scope_bytes_per_recipient"],
                r["zset_bytes_per_recipient"],
                r["decisions_per_s"],
            )
            for r in rows
        ],
    )
    _common.print_table(
        "The reach of a scope on the volume path (MEMORY USAGE)",
        ("recipients decided", "kept", "bytes", "bytes/kept"),
        [(reach["decided"], reach["members"], reach["bytes"], reach["bytes_per_member"])],
    )
    results = {"runs": rows, "reach": reach}
    path = _common.write_results("redis_memory", results, args.results_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
