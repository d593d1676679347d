"""PlanCampaign's speed: a list of recipients planned, beside AdmitBatch dry runs of it.

An in-process sidecar (request clock, no data directory) on 127.0.0.1; one
client on the same event loop. Two campaigns of ``N`` fresh recipients
(UTILITY templates, 80 messages/s):

- ``paced``: a TIER_100K sender, every recipient under the limit: the plan is
  paced by throughput alone;
- ``over limit``: a TIER_10K sender: the first 10 000 go at once (paced), the
  rest wait for the slots freed day after day as the 24 h window moves.

Each is timed as one PlanCampaign call of the whole list, then as the same list
sent as AdmitBatch dry runs of 1 000 (what a gateway would do to learn only
whether each goes *now*), in the same run, alternating; each figure is the
median of its runs. Prints a table and writes ``benchmarks/results/plan.json``.

With ``--redis`` the same campaigns are also planned by a second sidecar whose
store is a throwaway redis-server on 127.0.0.1 (``--store redis://…``: the plan
reads the scope and the list's recipients from Redis and runs on a local
engine made from them), alternating with the embedded sidecar's runs.

    .venv/bin/python benchmarks/plan.py --quick [--redis]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _common
import grpc

from tiergate import config as cfg
from tiergate.policy.events import Quality, SenderStatus, SenderUpdate
from tiergate.server import Sidecar
from tiergate.store.location import parse_store
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

T0 = 1_780_000_000_000
CAMPAIGNS = {
    "paced": ("106540360000001", "TIER_100K"),
    "over limit": ("106540360000002", "TIER_10K"),
}


def recipients(n: int) -> list[str]:
    return [f"44770{i:07d}" for i in range(n)]


def config(store: str = "") -> cfg.ServeConfig:
    senders = tuple(
        SenderUpdate(
            sender_id=sid,
            portfolio_id=f"p-{sid}",
            display_phone_number=f"+1555{sid[-7:]}",
            verified=True,
            tier=tier,
            quality=Quality.GREEN,
            status=SenderStatus.CONNECTED,
        )
        for sid, tier in CAMPAIGNS.values()
    )
    return cfg.ServeConfig(
        listen=cfg.Endpoint(_common.LOOPBACK, 0),
        clock="request",
        data_dir=None,
        senders=senders,
        max_message_bytes=64 << 20,
        **({"store": parse_store(store)} if store else {}),
    )


async def plan_once(stub: Any, sender_id: str, rcpts: list[str]) -> tuple[float, Any]:
    req = pb.PlanCampaignRequest(
        sender_id=sender_id,
        template_id="t1",
        category=pb.UTILITY,
        recipients=rcpts,
        start_at_unix_ms=T0,
        at_unix_ms=T0,
    )
    t = time.perf_counter()
    res = await stub.PlanCampaign(req)
    return time.perf_counter() - t, res


async def dry_runs_once(stub: Any, sender_id: str, rcpts: list[str]) -> tuple[float, int]:
    batches = [
        pb.AdmitBatchRequest(
            requests=[
                pb.AdmitRequest(
                    sender_id=sender_id,
                    recipient=r,
                    kind=pb.TEMPLATE,
                    category=pb.UTILITY,
                    template_id="t1",
                    at_unix_ms=T0,
                    dry_run=True,
                )
                for r in rcpts[i : i + 1000]
            ]
        )
        for i in range(0, len(rcpts), 1000)
    ]
    t = time.perf_counter()
    admitted = 0
    for b in batches:
        res = await stub.AdmitBatch(b)
        admitted += sum(1 for r in res.responses if r.decision == pb.DECISION_ADMIT)
    return time.perf_counter() - t, admitted


async def measure(n: int, runs: int, redis_port: int = 0) -> dict[str, Any]:
    sidecars = {"": Sidecar(config())}
    if redis_port:
        sidecars[" (redis)"] = Sidecar(config(f"redis://{_common.LOOPBACK}:{redis_port}"))
    options = [("grpc.max_receive_message_length", 64 << 20)]
    stubs: dict[str, Any] = {}
    channels = []
    rcpts = recipients(n)
    out: dict[str, Any] = {}
    try:
        for suffix, sidecar in sidecars.items():
            await sidecar.start()
            target = f"{_common.LOOPBACK}:{sidecar.port}"
            channels.append(grpc.aio.insecure_channel(target, options=options))
            stubs[suffix] = pb_grpc.AdmissionControlStub(channels[-1])
        for name, (sid, tier) in CAMPAIGNS.items():
            plans: dict[str, list[float]] = {k: [] for k in stubs}
            dries: dict[str, list[float]] = {k: [] for k in stubs}
            res: dict[str, Any] = {}
            admitted: dict[str, int] = {}
            for _ in range(runs + 1):  # the first round warms up and is not kept
                for suffix, stub in stubs.items():  # the stores alternate
                    seconds, res[suffix] = await plan_once(stub, sid, rcpts)
                    plans[suffix].append(seconds)
                    seconds, admitted[suffix] = await dry_runs_once(stub, sid, rcpts)
                    dries[suffix].append(seconds)
            for suffix in stubs:
                plan_s = statistics.median(plans[suffix][1:])
                dry_s = statistics.median(dries[suffix][1:])
                r = res[suffix]
                out[name + suffix] = {
                    "tier": tier,
                    "recipients": n,
                    "plan_seconds": plan_s,
                    "plan_runs": plans[suffix][1:],
                    "dry_runs_seconds": dry_s,
                    "dry_runs_runs": dries[suffix][1:],
                    "plan_over_dry_runs": plan_s / dry_s,
                    "admissible_now": r.admissible_now,
                    "dry_runs_admitted": admitted[suffix],
                    "completes_after_hours": (r.completes_at_unix_ms - T0) / 3_600_000,
                    "hours_with_sends": len(r.hours),
                }
    finally:
        for channel in channels:
            await channel.close(None)
        for sidecar in sidecars.values():
            await sidecar.stop(0.5)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 000 recipients, 3 runs")
    ap.add_argument("--tiny", action="store_true", help="10 000 recipients, 1 run")
    ap.add_argument("--results-dir", type=Path, default=None, help="where plan.json goes")
    ap.add_argument("--redis", action="store_true", help="also plan on a Redis-store sidecar")
    args = ap.parse_args(argv)
    _common.print_machine()
    n, runs = (10_000, 1) if args.tiny else (100_000, 3) if args.quick else (100_000, 7)
    if args.redis:
        with _common.redis_server() as port:
            figures = asyncio.run(measure(n, runs, port))
    else:
        figures = asyncio.run(measure(n, runs))
    _common.print_table(
        f"{n:,} recipients: PlanCampaign beside AdmitBatch(1 000) dry runs "
        f"(median of {runs} runs, same server)",
        ["campaign", "plan s", "dry runs s", "plan / dry runs", "go now", "completes after h"],
        [
            [
                name,
                f["plan_seconds"],
                f["dry_runs_seconds"],
                f["plan_over_dry_runs"],
                f["admissible_now"],
                f["completes_after_hours"],
            ]
            for name, f in figures.items()
        ],
    )
    path = _common.write_results(
        "plan",
        {
            "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
            "redis": args.redis,
            "recipients": n,
            "timed_runs": runs,
            "figures": figures,
        },
        args.results_dir,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
