"""Where the Redis decide function spends its time: the function with parts taken out.

On a throwaway redis-server (no persistence) one limit scope and one number
decide N new recipients in calls of 1 000 rows (template, utility, no limit
reached: every row admitted, as in ``redis_store.py``'s AdmitBatch) through
``RedisCounting.decide``, once with the library as it is and then with its
parts taken out one after another, each variant loaded as a library of its
own. Redis's CPU per row (``INFO cpu`` around the run) of each variant, less
the next one's, is what the part taken out costs; the sorted-set script of
``redis_store.py`` runs in the same run for scale, and the function as it is
with the number in warm-up under portfolio scope (a cap above N: every row
admitted, each also counted in the number's own ring and entry), and with its
scope on Meta's volume scaling path (meta-2025's: every row counted also in the
scope's reach, kept to 8 000 recipients). The variants
give wrong answers on purpose: they measure, nothing else.

    .venv/bin/python benchmarks/redis_profile.py --quick
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
import peers

from tiergate.engine.constants import F_TEMPLATE, UNLIMITED
from tiergate.store import redis_counting as rc
from tiergate.store.location import parse_store

T0 = 1_760_000_000_000

Patch = Callable[[str], str]


def _cut(*pairs: tuple[str, str]) -> Patch:
    def patch(body: str) -> str:
        for old, new in pairs:
            if body.count(old) != 1:
                raise SystemExit(f"redis_profile: the library no longer reads {old!r}")
            body = body.replace(old, new)
        return body

    return patch


_PAIRS = _cut(
    ("    chunked('ZADD', keys[7], z)\n", ""),
    ("    chunked('HSET', keys[6], w)\n", ""),
    ("    cache_read(keys[6], pfields, s.pairs, 1)\n", ""),
    ("redis.call('ZRANGEBYSCORE', keys[7], '-inf', s.clock, 'LIMIT', 0, bound)", "{}"),
)
_SHARDS = _cut(
    ("    chunked('HSET', keys[k], w)\n", ""),
    ("    s.marks[k] = cache_read(keys[k], fields, s.v, 2)\n", ""),
)
_DECIDE = _cut(
    (
        "      decide_one(s, r.num[i]",
        "      answer(s, 1, 1, 0, 0, 0, 0, 0, 0)\n      local _ = false and decide_one(s, r.num[i]",
    ),
)
# (the rows of the calls here are 52 bytes each: 39, an 11-digit recipient, then
# the 2-byte length of an empty binding)
_PARSE = _cut(
    (
        "rows_parse(args[at], nums)",
        "{n = math.floor(#args[at] / 52), kidx = {}, flags = {}, now = {}}, {}, {}, {}",
    ),
    ("    local kidx = r.kidx[i]\n    local was", "    local kidx = 0\n    local was"),
    ("local kidx, flags = r.kidx[i], r.flags[i]", "local kidx, flags = 0, 0"),
)

#: The function as it is, its number in warm-up.
WARM = "the function, its number in warm-up"
#: The function as it is, its scope on the volume path (meta-2025's path).
PATH = "the function, its scope on the volume path"
#: (name, what the next row takes out, the patches applied)
VARIANTS: list[tuple[str, str, list[Patch]]] = [
    ("the function as it is", "pair entries (HMGET, HSET, ZADD, sweep)", []),
    ("without pair entries", "shard hashes (HMGET, HSET)", [_PAIRS]),
    ("without shard hashes", "deciding the rows (Lua)", [_PAIRS, _SHARDS]),
    ("without deciding", "parsing the packed rows (Lua)", [_PAIRS, _SHARDS, _DECIDE]),
    (
        "without parsing",
        "the call itself (keys, meta, rings, reply)",
        [_PAIRS, _SHARDS, _DECIDE, _PARSE],
    ),
]


def _library(patches: list[Patch]) -> tuple[str, str, str]:
    body = (Path(rc.__file__).parent / "redis_functions.lua").read_text("utf-8")
    for p in patches:
        body = p(body)
    return rc.library_source(body)


async def _cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def variant(
    port: int, patches: list[Patch], n: int, warm_cap: int = UNLIMITED, path: bool = False
) -> float:
    """Redis CPU µs per row of ``n`` rows decided by the library with ``patches``
    (``warm_cap``: the number's own cap in warm-up; UNLIMITED: not in warm-up;
    ``path``: the scope on the volume path)."""
    store = await rc.connect(parse_store(f"redis://{_common.LOOPBACK}:{port}"), timeout=30.0)
    store.name, store.library, store.script = _library(patches)
    store.script_sha = hashlib.sha1(store.script.encode()).hexdigest()
    client = store.client
    await client.flushall()
    await store.load()
    window, cap = (30 * 86_400_000, 8_000) if path else (0, 0)
    scope = rc.ScopeSpec("profile", path_window_ms=window, path_cap=cap)
    number = rc.NumberSpec("100000000000001", 1000, 1, 6000, 1, warm_cap)
    cpu = await _cpu(client)
    for at in range(0, n, 1000):
        rows = [
            rc.Row(number, 14_150_000_000 + i, F_TEMPLATE, UNLIMITED, T0 + i * 2)
            for i in range(at, at + 1000)
        ]
        await store.decide(scope, rows)
    used = await _cpu(client) - cpu
    await store.aclose()
    return used / n * 1e6


async def zset(port: int, n: int) -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=_common.LOOPBACK, port=port)
    await client.flushall()
    sha = await client.script_load(peers.ZSET_LUA)
    cpu = await _cpu(client)
    for at in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for j in range(at, at + 1000):
            pipe.evalsha(sha, 1, "zset:bench", T0 + j * 2, peers.WINDOW_MS, 1 << 40, j)
        await pipe.execute()
    used = await _cpu(client) - cpu
    await client.aclose()
    return used / n * 1e6


async def run(port: int, n: int, rounds: int) -> dict[str, Any]:
    got: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
    got["sorted-set script"] = []
    got[WARM] = []
    got[PATH] = []
    for _ in range(rounds):
        for name, _, patches in VARIANTS:
            got[name].append(await variant(port, patches, n))
        got[WARM].append(await variant(port, [], n, warm_cap=2 * n))
        got[PATH].append(await variant(port, [], n, path=True))
        got["sorted-set script"].append(await zset(port, n))
    return {k: statistics.median(v) for k, v in got.items()} | {"rounds": rounds, "rows": n}


def main() -> None:
    args = _common.parser(__doc__, "20 000 rows, three rounds").parse_args()
    _common.exit_on_sigterm()
    n, rounds = (20_000, 3) if args.quick else (100_000, 5)
    started = time.perf_counter()
    with _common.redis_server() as port:
        res = asyncio.run(run(port, n, rounds))
    _common.print_machine()
    rows = []
    for k, (name, takes, _) in enumerate(VARIANTS):
        nxt = res[VARIANTS[k + 1][0]] if k + 1 < len(VARIANTS) else 0.0
        rows.append((name, round(res[name], 2), takes, round(res[name] - nxt, 2)))
    rows.append((WARM, round(res[WARM], 2), "-", "-"))
    rows.append((PATH, round(res[PATH], 2), "-", "-"))
    rows.append(
        ("sorted-set script (EVALSHA, 1 000 deep)", round(res["sorted-set script"], 2), "-", "-")
    )
    _common.print_table(
        f"Redis CPU µs per row (medians of {rounds} rounds of {n} rows)",
        ("variant", "µs/row", "the next row takes out", "so that costs µs/row"),
        rows,
    )
    print(f"({time.perf_counter() - started:.0f} s)")
    print(f"wrote {_common.write_results('redis_profile', res, args.results_dir)}")


if __name__ == "__main__":
    main()
