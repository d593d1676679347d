"""Where a unary Admit on the shared store spends its time, in the sidecar and in Redis.

The unary load of ``redis_store.py`` (one sidecar on a throwaway redis-server,
a gRPC client in the same event loop, IN_FLIGHT calls at a time, one sender),
then per decision: the sidecar's round trips to Redis and the decide calls per
round trip (how many requests one round trip carries), Redis's CPU (``INFO
cpu``) and its time in the decide function (``INFO commandstats``: µs per
call and per row), and this process's CPU (client and sidecar together). The
embedded store's run under the same load is measured beside it, in turn, each
round, and so is the Redis run with the round trips as they were made before
``store/redis_rounds.py`` (redis-py's pipeline from its connection pool, one
per loop pass however many are in flight: "as before").
Then, without gRPC, lone requests (2 000 in ``--quick``) decided one after another straight through
the policy layer (``admit_checked``; each on Redis a round trip of its own):
the event loop's CPU per request on either store. ``--profile`` adds a
cProfile of one Redis run (the loop thread's CPU; the profiler's own cost
inflates functions called often): the
functions with the most own time, per decision.

    .venv/bin/python benchmarks/redis_unary.py --quick
    .venv/bin/python benchmarks/redis_unary.py --quick --profile
    .venv/bin/python benchmarks/redis_unary.py --tiny      # proves it runs
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common
import grpc
import uvloop
from redis_store import IN_FLIGHT, _config, _redis_cpu, _request

from tiergate.server import Sidecar
from tiergate.store.location import EMBEDDED, StoreLocation, parse_store
from tiergate.v1 import admission_pb2_grpc as pb_grpc


async def _fcall_stats(client: Any) -> tuple[int, int]:
    """(calls, µs) of the decide function since the last reset."""
    stats = await client.info("commandstats")
    calls = usec = 0
    for k, v in stats.items():
        if k.startswith(("cmdstat_fcall", "cmdstat_evalsha")):
            calls += int(v["calls"])
            usec += int(v["usec"])
    return calls, usec


def _as_before(counting: Any) -> None:
    """``counting``'s round trips as they were: the client's pipeline, a round trip for
    every loop pass's calls however many are in flight."""
    counting.link = None
    rounds = counting.rounds
    add = rounds.add

    def add_any(scope: Any, rows: Any, fut: Any) -> None:
        rounds._in_flight = False  # (the gate off: the link is not used)
        add(scope, rows, fut)

    rounds.add = add_any


async def unary(
    store: StoreLocation,
    n: int,
    offset: int,
    client: Any = None,
    profile: cProfile.Profile | None = None,
    before: bool = False,
) -> dict[str, float]:
    """``n`` unary Admits, IN_FLIGHT at a time: decisions/s and, on Redis, what each
    cost there."""
    sidecar = Sidecar(_config(store))
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"{_common.LOOPBACK}:{sidecar.port}")
    stub = pb_grpc.AdmissionControlStub(channel)
    counting = sidecar.shared.counting if sidecar.shared is not None else None
    if before and counting is not None:
        _as_before(counting)
    try:
        reqs = [_request(offset + i) for i in range(n)]
        await asyncio.gather(*(stub.Admit(r) for r in reqs[:IN_FLIGHT]))  # (connected)
        reqs = reqs[IN_FLIGHT:]
        if client is not None:
            await client.config_resetstat()
            redis_cpu = await _redis_cpu(client)
        trips = counting.round_trips if counting is not None else 0
        own, loop_own = time.process_time(), time.thread_time()
        if profile is not None:
            profile.enable()
        started = time.perf_counter()
        for at in range(0, len(reqs), IN_FLIGHT):
            await asyncio.gather(*(stub.Admit(r) for r in reqs[at : at + IN_FLIGHT]))
        seconds = time.perf_counter() - started
        if profile is not None:
            profile.disable()
        m = len(reqs)
        out = {
            "rate": m / seconds,
            "process_cpu_us": (time.process_time() - own) / m * 1e6,
            "loop_cpu_us": (time.thread_time() - loop_own) / m * 1e6,
        }
        if counting is not None and client is not None:
            trips = counting.round_trips - trips
            cpu = await _redis_cpu(client) - redis_cpu
            calls, usec = await _fcall_stats(client)
            out.update(
                round_trips_per_decision=trips / m,
                decisions_per_round_trip=m / trips if trips else 0.0,
                decide_calls_per_round_trip=calls / trips if trips else 0.0,
                redis_cpu_us=cpu / m * 1e6,
                fcall_us_per_call=usec / calls if calls else 0.0,
                fcall_us_per_decision=usec / m,
            )
        return out
    finally:
        await channel.close(None)
        await sidecar.stop(0.5)


async def lone(store: StoreLocation, n: int, offset: int, before: bool = False) -> float:
    """The event loop's CPU (µs) per request of ``n`` requests decided one after
    another without gRPC (on Redis: a round trip each; ``before``: as before)."""
    from tiergate.policy.requests import well_formed

    sidecar = Sidecar(_config(store))
    await sidecar.start()
    try:
        fields = [well_formed(_request(offset + i)) for i in range(n)]
        shared, service = sidecar.shared, sidecar.service
        assert service is not None
        if before and shared is not None:
            _as_before(shared.counting)
        started = time.thread_time()
        for f in fields:
            assert f is not None
            if shared is not None:
                await shared.admit_checked(f, f[6])
            else:
                service.admit_checked(f, f[6])
        return (time.thread_time() - started) / n * 1e6
    finally:
        await sidecar.stop(0.5)


def _top(profile: cProfile.Profile, decisions: int, count: int = 25) -> str:
    """The functions with the most own time (the loop thread's CPU), in µs per decision."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (file, line, name), (_, calls, own, total, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}({name})" if line else name
        rows.append((own, total, calls, where))
    rows.sort(reverse=True)
    lines = [f"{'own µs':>8} {'total µs':>9} {'calls':>7}  function (per decision)"]
    for own, total, calls, where in rows[:count]:
        lines.append(
            f"{own / decisions * 1e6:8.1f} {total / decisions * 1e6:9.1f} "
            f"{calls / decisions:7.2f}  {where}"
        )
    return "\n".join(lines)


async def run(port: int, n: int, rounds: int, profile: bool, n_lone: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    url = f"redis://{_common.LOOPBACK}:{port}"
    client = aioredis.Redis(host=_common.LOOPBACK, port=port)
    runs: dict[str, list[dict[str, float]]] = {"embedded": [], "redis": [], "before": []}
    for r in range(rounds):
        base = r * 3 * n
        runs["embedded"].append(await unary(EMBEDDED, n, base))
        runs["redis"].append(await unary(parse_store(url), n, base + n, client))
        runs["before"].append(await unary(parse_store(url), n, base + 2 * n, client, None, True))
    lone_us: dict[str, list[float]] = {"embedded": [], "redis": [], "before": []}
    for r in range(rounds):
        base = (rounds * 3 + 1) * n + r * 3 * n_lone
        lone_us["embedded"].append(await lone(EMBEDDED, n_lone, base))
        lone_us["redis"].append(await lone(parse_store(url), n_lone, base + n_lone))
        lone_us["before"].append(await lone(parse_store(url), n_lone, base + 2 * n_lone, True))
    text = ""
    if profile:
        prof = cProfile.Profile(time.thread_time)
        await unary(parse_store(url), n, rounds * 3 * n, client, prof)  # (before LONE's)
        text = _top(prof, n - IN_FLIGHT)
    await client.aclose()

    def ratios(name: str) -> list[float]:
        return [r["rate"] / e["rate"] for e, r in zip(runs["embedded"], runs[name], strict=True)]

    medians = {
        name: {k: statistics.median(x[k] for x in got) for k in got[0]}
        for name, got in runs.items()
    }
    return {
        "medians": medians,
        "unary_redis_over_embedded": round(statistics.median(ratios("redis")), 3),
        "before_over_embedded": round(statistics.median(ratios("before")), 3),
        "lone_loop_cpu_us": {k: statistics.median(v) for k, v in lone_us.items()},
        "lone_requests": n_lone,
        "ratios": ratios("redis"),
        "ratios_before": ratios("before"),
        "rounds": rounds,
        "profile": text,
        "all": runs,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = _common.parser(
        __doc__, "fewer calls, three rounds", "the fewest calls: proves it runs"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one more Redis run")
    args = parser.parse_args()
    _common.exit_on_sigterm()
    if args.tiny:
        n, rounds, n_lone = 96, 1, 200
    elif args.quick:
        n, rounds, n_lone = 1_000, 3, 2_000
    else:
        n, rounds, n_lone = 5_000, 5, 5_000
    if _common.redis_missing("redis_unary", args.results_dir):
        return
    with _common.redis_server() as port:
        res = uvloop.run(run(port, n, rounds, args.profile, n_lone))
    _common.print_machine()
    e, r, b = (res["medians"][k] for k in ("embedded", "redis", "before"))
    _common.print_table(
        f"Unary Admit, {IN_FLIGHT} in flight (medians of {rounds} rounds)",
        ("what", "embedded", "--store redis", "as before"),
        [
            ("decisions/s", round(e["rate"]), round(r["rate"]), round(b["rate"])),
            *(
                (what, round(e[k]), round(r[k]), round(b[k]))
                for what, k in (
                    ("this process's CPU µs/decision", "process_cpu_us"),
                    ("its event loop's CPU µs/decision", "loop_cpu_us"),
                )
            ),
            *(
                (what, "-", round(r[k], 2), round(b[k], 2))
                for what, k in (
                    ("decisions/round trip", "decisions_per_round_trip"),
                    ("decide calls/round trip", "decide_calls_per_round_trip"),
                    ("Redis CPU µs/decision", "redis_cpu_us"),
                    ("decide function µs/call", "fcall_us_per_call"),
                    ("decide function µs/decision", "fcall_us_per_decision"),
                )
            ),
        ],
    )
    load = ", ".join(f"{x:.2f}" for x in res["load_average"])
    print(
        f"unary redis / embedded: {res['unary_redis_over_embedded']} (median of each round's "
        f"ratio; target 0.7), as before: {res['before_over_embedded']}; load average {load}"
    )
    lone_us = res["lone_loop_cpu_us"]
    print(
        f"{res['lone_requests']} lone requests one after another, without gRPC: the event "
        f"loop's CPU µs per request {lone_us['embedded']:.1f} embedded, "
        f"{lone_us['redis']:.1f} on Redis, {lone_us['before']:.1f} on Redis as before"
    )
    if res["profile"]:
        print("\ncProfile of one more --store redis run (client and sidecar in this process):")
        print(res["profile"])
    print(f"wrote {_common.write_results('redis_unary', res, args.results_dir)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
