"""What Redis's CPU per decision can come down to with the shared store's layout.

On a throwaway redis-server (no persistence), fresh recipients of one limit
scope in calls of 1 000 rows, each way in turn every round, Redis's CPU
(``INFO cpu``) per row:

* the usual sorted-set + Lua sliding window (``peers.ZSET_LUA``), EVALSHA
  pipelined 1 000 deep: the line ``redis_store.py`` measures against;
* ``decide`` as it is (``RedisCounting.decide``: steps 4-9 decided in Lua);
* each row's scope entry read and written, nothing decided in Redis: an
  ``HMGET`` per shard hash (pipelined), then one call that checks the scope's
  version and writes each shard hash's entries with one ``HSET`` (the values
  made by the caller) - the Redis side of a sidecar that decides from what it
  read and commits under the version, keeping the 4 096 shard hashes that hold
  a recipient in about 20 bytes (docs/redis.md, "Memory per tracked
  recipient");
* the same call alone, no read (a sidecar whose copy of the scope is current);
* the same writes as plain commands, an ``HSET`` per shard hash in a
  MULTI/EXEC that WATCHes the version (no Lua at all).

The last three do none of the rest of a decision's work in Redis (the scope's
meta and rings, pair entries, opt-outs, TTLs): they are floors, below any
design that keeps a recipient's entry in those shard hashes. Medians of the
rounds; ratios to the sorted-set script's CPU per decision.

    .venv/bin/python benchmarks/redis_floor.py --quick
"""

from __future__ import annotations

import asyncio
import statistics
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import _common
import peers

from tiergate.engine.constants import F_TEMPLATE
from tiergate.store import redis_counting as rc
from tiergate.store.location import parse_store

T0 = 1_765_000_000_000
ROWS = 1_000
TINY = "the fewest calls: proves it runs"
#: A scope entry as the library packs it (last counted time, generation and freshness).
ENTRY = b"\x00\x00\x01\x9a\xe4\xd3\x00\x03"

#: Checks the scope's version (KEYS[1]), then per shard hash (KEYS[2..]) its count of
#: entries and the entries (field, value) in ARGV, one HSET each; bumps the version.
COMMIT = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
local at = 2
for k = 2, #KEYS do
  local n = tonumber(ARGV[at])
  redis.call('HSET', KEYS[k], unpack(ARGV, at + 1, at + 2 * n))
  at = at + 1 + 2 * n
end
redis.call('INCR', KEYS[1])
return 1
"""

WAYS = (
    "sorted-set script, EVALSHA x1000",
    "decide as it is (Lua)",
    "entries read, then written under a version",
    "entries written under a version, no read",
    "entries written as commands under WATCH, no read",
)


async def _cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Ways:
    """The five ways, each deciding (or storing) ``ROWS`` fresh recipients a call."""

    def __init__(self, client: Any, store: rc.RedisCounting) -> None:
        self.client, self.store = client, store
        self.num = rc.NumberSpec("n", 1, 1000, 1, 1000)
        self.scope = rc.ScopeSpec(f"pf-{uuid.uuid4().hex}")
        self.next = 10**11
        self.zsha = self.csha = ""

    async def prepare(self) -> None:
        self.zsha = await self.client.script_load(peers.ZSET_LUA)
        self.csha = await self.client.script_load(COMMIT)

    def _recipients(self) -> list[int]:
        self.next += ROWS
        return list(range(self.next - ROWS, self.next))

    async def zset(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for r in self._recipients():
            pipe.evalsha(self.zsha, 1, "zset:{floor}", T0 + r, peers.WINDOW_MS, 1 << 40, r)
        await pipe.execute()

    async def decide(self) -> None:
        rows = [rc.Row(self.num, r, F_TEMPLATE, 10**6, T0 + r) for r in self._recipients()]
        await self.store.decide(self.scope, rows)

    async def entries(self, read: bool) -> None:
        shards: dict[str, list[str]] = {}
        for r in self._recipients():
            shards.setdefault(self.scope.scope_shard(r), []).append(str(r))
        version = f"{self.scope.tag}:version"
        pipe = self.client.pipeline(transaction=False)
        pipe.get(version)
        if read:
            for key, fields in shards.items():
                pipe.hmget(key, fields)
        got = await pipe.execute()
        args: list[Any] = [got[0] or b"0"]
        for fields in shards.values():
            args.append(len(fields))
            for f in fields:
                args += (f, ENTRY)
        keys = [version, *shards]
        if await self.client.evalsha(self.csha, len(keys), *keys, *args) != 1:
            raise SystemExit("redis_floor: the scope's version moved under a lone writer")

    async def commands(self) -> None:
        """The rows' entries written as plain commands (an HSET per shard hash) in a
        MULTI/EXEC that WATCHes the scope's version: no Lua."""
        shards: dict[str, dict[str, bytes]] = {}
        for r in self._recipients():
            shards.setdefault(self.scope.scope_shard(r), {})[str(r)] = ENTRY
        version = f"{self.scope.tag}:version"
        async with self.client.pipeline(transaction=True) as pipe:
            await pipe.watch(version)
            pipe.multi()
            for key, entries in shards.items():
                pipe.hset(key, mapping=entries)
            pipe.incr(version)
            await pipe.execute()

    def calls(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return dict(
            zip(
                WAYS,
                (
                    self.zset,
                    self.decide,
                    lambda: self.entries(True),
                    lambda: self.entries(False),
                    self.commands,
                ),
                strict=True,
            )
        )


async def run(port: int, calls: int, rounds: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis(port=port)
    store = await rc.connect(parse_store(f"redis://127.0.0.1:{port}"), timeout=10)
    ways = Ways(client, store)
    await ways.prepare()
    per_row: dict[str, list[float]] = {w: [] for w in WAYS}
    for r in range(rounds):
        order = list(ways.calls().items())
        for name, call in order if r % 2 == 0 else reversed(order):
            cpu = await _cpu(client)
            for _ in range(calls):
                await call()
            per_row[name].append((await _cpu(client) - cpu) / (calls * ROWS) * 1e6)
    await store.aclose()
    await client.aclose()
    line = statistics.median(per_row[WAYS[0]])
    return {
        w: {
            "redis_cpu_us_per_row": statistics.median(v),
            "to_the_script": statistics.median(v) / line if line else 0.0,
            "rounds_us": v,
        }
        for w, v in per_row.items()
    }


def main() -> None:
    args = _common.parser(__doc__, "20 calls a way, 3 rounds", TINY).parse_args()
    _common.exit_on_sigterm()
    if _common.redis_missing("redis_floor", args.results_dir):
        return
    calls, rounds = (1, 1) if args.tiny else (20, 3) if args.quick else (50, 5)
    with _common.redis_server() as port:
        res = asyncio.run(run(port, calls, rounds))
    _common.report(
        "redis_floor",
        f"Redis CPU per row, calls of {ROWS} fresh recipients "
        f"(medians of {rounds} rounds of {calls} calls a way)",
        ("way", "Redis CPU µs/row", "to the sorted-set script"),
        [
            (w, round(v["redis_cpu_us_per_row"], 2), round(v["to_the_script"], 2))
            for w, v in res.items()
        ],
        res,
        args.results_dir,
    )


if __name__ == "__main__":
    main()
