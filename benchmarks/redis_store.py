"""The shared store against the embedded one and against a sorted-set script, in one run.

One throwaway redis-server (no persistence), and in this process sidecars on
127.0.0.1 (request clock, memory only, one sender at TIER_UNLIMITED) with a
gRPC client in the same event loop; rounds alternate so the ratios are taken
side by side:

* unary Admit, 32 calls in flight: the embedded store, then ``--store redis://``;
* AdmitBatch(1000) through a sidecar on Redis, against the usual sorted-set +
  Lua sliding window (``peers.ZSET_LUA``: ZREMRANGEBYSCORE, ZSCORE, ZCARD, ZADD)
  called with EVALSHA pipelined 1 000 deep on the same Redis. Redis CPU per
  decision from ``INFO cpu`` (used_cpu_user + used_cpu_sys) around each run,
  and from ``INFO commandstats`` the share of the function's time spent in the
  Redis commands it calls (the rest is its Lua).

Client and server share the machine's cores (2 here, with whatever else runs):
the figures are for comparing the rows of one run, not for capacity planning.

    .venv/bin/python benchmarks/redis_store.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
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


def _request(i: int) -> pb.AdmitRequest:
    return pb.AdmitRequest(
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


async def batch(url: str, client: Any, n: int, offset: int) -> tuple[float, float, float]:
    """AdmitBatch(1000) through a sidecar on Redis: (decisions/s, Redis CPU µs each,
    the share of the function's time in the Redis commands it called)."""
    sidecar = Sidecar(_config(parse_store(url)))
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"{_common.LOOPBACK}:{sidecar.port}")
    stub = pb_grpc.AdmissionControlStub(channel)
    try:
        calls = [
            pb.AdmitBatchRequest(requests=[_request(offset + at + j) for j in range(1000)])
            for at in range(0, n, 1000)
        ]
        await client.config_resetstat()
        cpu, started = await _redis_cpu(client), time.perf_counter()
        for call in calls:
            await stub.AdmitBatch(call)
        seconds, cpu = time.perf_counter() - started, await _redis_cpu(client) - cpu
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


async def run(port: int, n_unary: int, n_batch: int, rounds: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    url = f"redis://{_common.LOOPBACK}:{port}"
    client = aioredis.Redis(host=_common.LOOPBACK, port=port)
    out: dict[str, list[float]] = {k: [] for k in ("embedded", "redis", "batch", "zset")}
    cpu: dict[str, list[float]] = {"batch": [], "zset": []}
    shares: list[float] = []
    for r in range(rounds):
        base = r * (2 * n_unary + 2 * n_batch)
        out["embedded"].append(await unary(EMBEDDED, n_unary, base))
        out["redis"].append(await unary(parse_store(url), n_unary, base + n_unary))
        rate, us, share = await batch(url, client, n_batch, base + 2 * n_unary)
        out["batch"].append(rate)
        cpu["batch"].append(us)
        shares.append(share)
        rate, us = await zset(client, n_batch, base + 2 * n_unary + n_batch)
        out["zset"].append(rate)
        cpu["zset"].append(us)
    await client.aclose()
    best = {k: max(v) for k, v in out.items()}
    least = {k: min(v) for k, v in cpu.items()}
    return {
        "decisions_per_s": best,
        "redis_cpu_us_per_decision": least,
        "unary_redis_over_embedded": round(best["redis"] / best["embedded"], 3),
        "batch_over_zset": round(best["batch"] / best["zset"], 3),
        "cpu_batch_over_zset": round(least["batch"] / least["zset"], 3),
        "function_share_in_commands": round(min(shares), 3),
        "rounds": rounds,
        "all": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, two rounds")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    _common.exit_on_sigterm()
    n_unary, n_batch, rounds = (1_000, 5_000, 2) if args.quick else (5_000, 50_000, 3)
    with _common.redis_server() as port:
        res = uvloop.run(run(port, n_unary, n_batch, rounds))
    _common.print_machine()
    d, c = res["decisions_per_s"], res["redis_cpu_us_per_decision"]
    _common.print_table(
        f"The shared store (best of {rounds} alternating rounds)",
        ("what", "decisions/s", "Redis CPU µs/decision"),
        [
            ("unary Admit, embedded store", round(d["embedded"]), "-"),
            ("unary Admit, --store redis", round(d["redis"]), "-"),
            ("AdmitBatch(1000), --store redis", round(d["batch"]), round(c["batch"], 2)),
            ("sorted-set + Lua, EVALSHA x1000", round(d["zset"]), round(c["zset"], 2)),
        ],
    )
    print(
        f"unary redis / embedded: {res['unary_redis_over_embedded']}; "
        f"AdmitBatch / zset script: {res['batch_over_zset']}; "
        f"Redis CPU per decision, AdmitBatch / zset script: {res['cpu_batch_over_zset']}; "
        f"share of the function's time in the commands it calls: "
        f"{res['function_share_in_commands']}"
    )
    print(f"wrote {_common.write_results('redis_store', res, args.results_dir)}")


if __name__ == "__main__":
    main()
