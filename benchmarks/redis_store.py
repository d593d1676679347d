"""The shared store against the embedded one and against a sorted-set script, in one run.

One throwaway redis-server (no persistence), and in this process sidecars on
127.0.0.1 (request clock, memory only, one sender at TIER_UNLIMITED) with a
gRPC client in the same event loop; each round measures every row once, in
turn, so the ratios are taken side by side, and the figures are the medians
over the rounds (of each rate, and of each round's ratio):

* unary Admit, 32 calls in flight: the embedded store, then ``--store redis://``;
* AdmitBatch(1000) through a sidecar on Redis, against the usual sorted-set +
  Lua sliding window (``peers.ZSET_LUA``: ZREMRANGEBYSCORE, ZSCORE, ZCARD, ZADD)
  called with EVALSHA pipelined 1 000 deep on the same Redis. Redis CPU per
  decision from ``INFO cpu`` (used_cpu_user + used_cpu_sys) around each run,
  and from ``INFO commandstats`` the share of the function's time spent in the
  Redis commands it calls (the rest is its Lua);
* AdmitBatch(1000) on Redis again, every item under a new idempotency key: the
  batch reads its keys (the read-only function ``keys``) before it decides;
* two sidecars against the same Redis, each in its own process with its own
  client sending AdmitBatch(1000) for its own recipients at the same time: the
  aggregate decisions/s (all decisions over the span from the first start to
  the last end).

Client, sidecars and redis-server share the machine's cores (2 here, with
whatever else runs): two sidecars cannot run twice as fast on 2 cores that
also run Redis and the clients. The figures compare the rows of one run; they
are not capacity figures. Without redis-server the script prints why and
writes ``{"skipped": ...}``.

    .venv/bin/python benchmarks/redis_store.py --quick
    .venv/bin/python benchmarks/redis_store.py --tiny      # proves it runs
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common
import grpc
import peers
import uvloop

from tiergate import config as cfg
from tiergate.policy.events import Quality, SenderStatus, SenderUpdate
from tiergate.server import Sidecar
from tiergate.store.location import EMBEDDED, StoreLocation, parse_store
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

T0 = 1_760_000_000_000
SENDER = "100000000000001"
IN_FLIGHT = 32


def _config(store: StoreLocation) -> cfg.ServeConfig:
    sender = SenderUpdate(
        sender_id=SENDER,
        portfolio_id="bench",
        display_phone_number="+15550100001",
        verified=True,
        tier="TIER_UNLIMITED",
        quality=Quality.GREEN,
        status=SenderStatus.CONNECTED,
        throughput_mps=1000,
    )
    return cfg.ServeConfig(
        listen=cfg.Endpoint(_common.LOOPBACK, 0), clock="request", senders=(sender,), store=store
    )


def _request(i: int, keyed: bool = False) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        idempotency_key=f"order-{i}" if keyed else "",
        sender_id=SENDER,
        recipient=f"+1415{i:07d}",
        kind=pb.TEMPLATE,
        category=pb.UTILITY,
        template_id="t1",
        at_unix_ms=T0 + i * 2,
    )


async def _redis_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def unary(store: StoreLocation, n: int, offset: int) -> float:
    """Decisions per second of ``n`` unary Admits, IN_FLIGHT at a time."""
    sidecar = Sidecar(_config(store))
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"{_common.LOOPBACK}:{sidecar.port}")
    stub = pb_grpc.AdmissionControlStub(channel)
    try:
        reqs = [_request(offset + i) for i in range(n)]
        started = time.perf_counter()
        for at in range(0, n, IN_FLIGHT):
            await asyncio.gather(*(stub.Admit(r) for r in reqs[at : at + IN_FLIGHT]))
        return n / (time.perf_counter() - started)
    finally:
        await channel.close(None)
        await sidecar.stop(0.5)


async def _inner_share(client: Any) -> float:
    """Of the time Redis spent in FCALL, the share spent in the commands the function
    called (``INFO commandstats``): the rest is the Lua itself."""
    stats = await client.info("commandstats")
    fcall = sum(v["usec"] for k, v in stats.items() if k.startswith("cmdstat_fcall"))
    inner = sum(
        v["usec"]
        for k, v in stats.items()
        if not k.startswith(("cmdstat_fcall", "cmdstat_config", "cmdstat_info"))
    )
    return inner / fcall if fcall else 0.0


async def batch(
    url: str,
    client: Any,
    n: int,
    offset: int,
    stamps: dict[str, float] | None = None,
    keyed: bool = False,
) -> tuple[float, float, float]:
    """AdmitBatch(1000) through a sidecar on Redis (``keyed``: each item under a new
    idempotency key): (decisions/s, Redis CPU µs each, the share of the function's
    time in the Redis commands it called); the wall clock's start and end go into
    ``stamps``."""
    sidecar = Sidecar(_config(parse_store(url)))
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"{_common.LOOPBACK}:{sidecar.port}")
    stub = pb_grpc.AdmissionControlStub(channel)
    try:
        calls = [
            pb.AdmitBatchRequest(requests=[_request(offset + at + j, keyed) for j in range(1000)])
            for at in range(0, n, 1000)
        ]
        await client.config_resetstat()
        cpu, started, wall = await _redis_cpu(client), time.perf_counter(), time.time()
        for call in calls:
            await stub.AdmitBatch(call)
        seconds, cpu = time.perf_counter() - started, await _redis_cpu(client) - cpu
        if stamps is not None:
            stamps.update(start=wall, end=wall + seconds)
        return n / seconds, cpu / n * 1e6, await _inner_share(client)
    finally:
        await channel.close(None)
        await sidecar.stop(0.5)


async def zset(client: Any, n: int, offset: int) -> tuple[float, float]:
    """The sorted-set script, EVALSHA pipelined 1 000 deep: (decisions/s, Redis CPU µs each)."""
    sha = await client.script_load(peers.ZSET_LUA)
    cpu, started = await _redis_cpu(client), time.perf_counter()
    for at in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for j in range(at, at + 1000):
            now = T0 + (offset + j) * 2
            pipe.evalsha(sha, 1, "zset:bench", now, peers.WINDOW_MS, 1 << 40, offset + j)
        await pipe.execute()
    seconds, cpu = time.perf_counter() - started, await _redis_cpu(client) - cpu
    return n / seconds, cpu / n * 1e6


def _worker(url: str, n: int, offset: int) -> None:
    """One of the two sidecars (a process of its own): prints its decisions and
    its wall-clock start and end as JSON."""
    import redis.asyncio as aioredis

    async def go() -> dict[str, float]:
        client = aioredis.Redis(host=_common.LOOPBACK, port=int(url.rsplit(":", 1)[1]))
        stamps: dict[str, float] = {}
        rate, _, _ = await batch(url, client, n, offset, stamps)
        await client.aclose()
        return {"decisions": n, "rate": rate, **stamps}

    print(json.dumps(uvloop.run(go())), flush=True)


def two_sidecars(url: str, n: int, offset: int) -> float:
    """Aggregate decisions/s of two sidecar processes deciding AdmitBatch(1000)
    against one Redis at once, each for its own ``n`` recipients."""
    me = str(Path(__file__).resolve())
    procs = [
        subprocess.Popen(
            [sys.executable, me, "--worker", url, str(n), str(offset + k * n)],
            stdout=subprocess.PIPE,
            preexec_fn=_common.die_with_parent(),
        )
        for k in range(2)
    ]
    got = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"a sidecar process exited {proc.returncode}")
        got.append(json.loads(out.decode().strip().splitlines()[-1]))
    span = max(g["end"] for g in got) - min(g["start"] for g in got)
    return sum(g["decisions"] for g in got) / span


async def run(port: int, n_unary: int, n_batch: int, rounds: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    url = f"redis://{_common.LOOPBACK}:{port}"
    client = aioredis.Redis(host=_common.LOOPBACK, port=port)
    names = ("embedded", "redis", "batch", "zset", "two", "batch_keyed")
    out: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {"batch": [], "zset": [], "batch_keyed": []}
    shares: list[float] = []
    for r in range(rounds):
        base = r * (2 * n_unary + 5 * n_batch)
        out["embedded"].append(await unary(EMBEDDED, n_unary, base))
        out["redis"].append(await unary(parse_store(url), n_unary, base + n_unary))
        rate, us, share = await batch(url, client, n_batch, base + 2 * n_unary)
        out["batch"].append(rate)
        cpu["batch"].append(us)
        shares.append(share)
        rate, us = await zset(client, n_batch, base + 2 * n_unary + n_batch)
        out["zset"].append(rate)
        cpu["zset"].append(us)
        # (blocking: the two processes run while this loop waits for them)
        out["two"].append(two_sidecars(url, n_batch, base + 2 * n_unary + 2 * n_batch))
        rate, us, _ = await batch(
            url, client, n_batch, base + 2 * n_unary + 4 * n_batch, None, True
        )
        out["batch_keyed"].append(rate)
        cpu["batch_keyed"].append(us)
    await client.aclose()

    def ratio(a: list[float], b: list[float]) -> float:
        return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)

    return {
        "decisions_per_s": {k: statistics.median(v) for k, v in out.items()},
        "redis_cpu_us_per_decision": {k: statistics.median(v) for k, v in cpu.items()},
        "unary_redis_over_embedded": ratio(out["redis"], out["embedded"]),
        "batch_over_zset": ratio(out["batch"], out["zset"]),
        "cpu_batch_over_zset": ratio(cpu["batch"], cpu["zset"]),
        "two_sidecars_over_one": ratio(out["two"], out["batch"]),
        "keyed_batch_over_batch": ratio(out["batch_keyed"], out["batch"]),
        "function_share_in_commands": round(statistics.median(shares), 3),
        "targets": {
            "unary_redis_over_embedded": 0.7,
            "batch_over_zset": 4.0,
            "cpu_batch_over_zset": round(1 / 3, 3),
        },
        "rounds": rounds,
        "all": out,
        "all_cpu": cpu,
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    args = _common.parser(
        __doc__, "fewer calls, three rounds", "the fewest calls: proves it runs"
    ).parse_args()
    _common.exit_on_sigterm()
    if args.tiny:
        n_unary, n_batch, rounds = 64, 1_000, 1
    elif args.quick:
        n_unary, n_batch, rounds = 1_000, 5_000, 3
    else:
        n_unary, n_batch, rounds = 5_000, 50_000, 5
    if _common.redis_missing("redis_store", args.results_dir):
        return
    with _common.redis_server() as port:
        res = uvloop.run(run(port, n_unary, n_batch, rounds))
    _common.print_machine()
    d, c = res["decisions_per_s"], res["redis_cpu_us_per_decision"]
    _common.print_table(
        f"The shared store (medians of {rounds} rounds, each row once a round)",
        ("what", "decisions/s", "Redis CPU µs/decision"),
        [
            ("unary Admit, embedded store", round(d["embedded"]), "-"),
            ("unary Admit, --store redis", round(d["redis"]), "-"),
            ("AdmitBatch(1000), --store redis", round(d["batch"]), round(c["batch"], 2)),
            ("sorted-set + Lua, EVALSHA x1000", round(d["zset"]), round(c["zset"], 2)),
            ("two sidecars, AdmitBatch(1000), together", round(d["two"]), "-"),
            (
                "AdmitBatch(1000), a new key each, --store redis",
                round(d["batch_keyed"]),
                round(c["batch_keyed"], 2),
            ),
        ],
    )
    print(
        f"unary redis / embedded: {res['unary_redis_over_embedded']} (target 0.7); "
        f"AdmitBatch / zset script: {res['batch_over_zset']} (target 4); "
        f"Redis CPU per decision, AdmitBatch / zset script: {res['cpu_batch_over_zset']} "
        f"(target 0.333); two sidecars / one: {res['two_sidecars_over_one']}; "
        f"AdmitBatch with keys / without: {res['keyed_batch_over_batch']}; "
        f"share of the function's time in the commands it calls: "
        f"{res['function_share_in_commands']}"
    )
    print(
        f"caveat: {os.cpu_count()} cores run the client, the sidecars and Redis together; "
        "two sidecars share them with Redis, so their aggregate is not twice one's"
    )
    print(f"wrote {_common.write_results('redis_store', res, args.results_dir)}")


if __name__ == "__main__":
    main()
