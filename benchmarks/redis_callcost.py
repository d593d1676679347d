"""What one decide call of one row costs Redis, whatever the row: the call's fixed work.

On a throwaway redis-server (no persistence) one limit scope and one number
decide new recipients, one row a call (template, utility, each admitted, the
time one ms on each call), through ``RedisCounting.decide``, with the library
as it is and with the same library returning a fixed answer at once (the
floor: Redis's own work to run a function with these keys and arguments);
``--against REV`` adds the library of another git revision of this tree. The
libraries run in turn, rounds of ``--calls`` calls each; per round the decide
function's time per call (``INFO commandstats``, FCALL) and the Redis commands
it called per call. Medians of the rounds.

    .venv/bin/python benchmarks/redis_callcost.py --quick
    .venv/bin/python benchmarks/redis_callcost.py --quick --against main
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import uuid
from pathlib import Path
from typing import Any

import _common

from tiergate.engine.constants import F_TEMPLATE
from tiergate.store import redis_counting as rc
from tiergate.store.location import parse_store

T0 = 1_765_000_000_000
ROOT = Path(__file__).resolve().parent.parent
LUA = "src/tiergate/store/redis_functions.lua"
#: The function answering one admitted row at once (time 0, the clock, two totals).
FLOOR = "  if true then return {0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0} end\n"


def bodies(against: str | None) -> dict[str, str]:
    body = (ROOT / LUA).read_text("utf-8")
    head = "local function decide(keys, args)\n"
    if body.count(head) != 1:
        raise SystemExit("redis_callcost: the library no longer reads its decide function")
    out = {"as it is": body, "returning at once": body.replace(head, head + FLOOR)}
    if against:
        cmd = ["git", "-C", str(ROOT), "show", f"{against}:{LUA}"]
        out[f"at {against}"] = subprocess.check_output(cmd, text=True)
    return out


async def run(port: int, libraries: dict[str, str], calls: int, rounds: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    num = rc.NumberSpec("n", 1, 1000, 1, 1000)
    stores, scopes = {}, {}
    for name, body in libraries.items():
        store = await rc.connect(parse_store(f"redis://127.0.0.1:{port}"), timeout=10)
        store.name, store.library, store.script = rc.library_source(body)
        await store.load()
        stores[name], scopes[name] = store, rc.ScopeSpec(f"pf-{uuid.uuid4().hex}")
    admin = aioredis.Redis(port=port)
    per_call: dict[str, list[float]] = {n: [] for n in stores}
    commands: dict[str, list[float]] = {n: [] for n in stores}
    at = 0
    for r in range(rounds):
        order = list(stores) if r % 2 == 0 else list(reversed(stores))
        for name in order:
            await admin.config_resetstat()
            for _ in range(calls):
                at += 1
                row = rc.Row(num, 10**11 + at, F_TEMPLATE, 10**6, T0 + at)
                await stores[name].decide(scopes[name], [row])
            stats = await admin.info("commandstats")
            per_call[name].append(stats["cmdstat_fcall"]["usec"] / calls)
            inner = sum(
                v["calls"] for k, v in stats.items() if k not in ("cmdstat_fcall",)
            ) - stats.get("cmdstat_config|resetstat", {}).get("calls", 0)
            commands[name].append(inner / calls)
    for store in stores.values():
        await store.aclose()
    await admin.aclose()
    return {
        n: {
            "fcall_us_per_call": statistics.median(per_call[n]),
            "commands_per_call": statistics.median(commands[n]),
            "rounds_us": per_call[n],
        }
        for n in stores
    }


def main() -> None:
    parser = _common.parser(
        __doc__, "1 000 calls a round, 5 rounds", "the fewest calls: proves it runs"
    )
    parser.add_argument("--against", default=None, help="a git revision's library beside")
    args = parser.parse_args()
    _common.exit_on_sigterm()
    if _common.redis_missing("redis_callcost", args.results_dir):
        return
    calls, rounds = (50, 2) if args.tiny else (1_000, 5) if args.quick else (5_000, 7)
    libraries = bodies(args.against)
    with _common.redis_server() as port:
        res = asyncio.run(run(port, libraries, calls, rounds))
    _common.report(
        "redis_callcost",
        f"One decide call of one row (medians of {rounds} rounds of {calls} calls)",
        ("library", "decide function µs/call", "Redis commands it calls per call"),
        [
            (n, round(v["fcall_us_per_call"], 1), round(v["commands_per_call"], 2))
            for n, v in res.items()
        ],
        res,
        args.results_dir,
    )


if __name__ == "__main__":
    main()
