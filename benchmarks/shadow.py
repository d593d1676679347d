"""What shadow mode and a state watcher cost the unary Admit path, in one process.

The server's Admit work without gRPC around it: the request's bytes read
(``admit_wire.decode_fast``, or protobuf with the pure-Python engine), one
``AdmissionService.admit_checked``, the metrics tally, what the sidecar's commit
does before the store (``Watches.poke`` while someone watches), the answer's
bytes. Variants, each on a fresh service, after one short warm-up run each, runs
alternating, the least CPU time of this process per item over the runs (on a
shared machine the least is the one other work disturbed least):

- ``enforced``: the meta-2025 profile, every send admitted;
- ``shadow, none shadowed``: ``serve --shadow``, the same sends (all admitted);
- ``enforced, 1 watcher``: as ``enforced``, one WatchSenderState stream on the sender
  (each admit's commit looks for changes);
- ``refused``: the sender at its limit, every send refused (MESSAGING_LIMIT);
- ``shadow, all shadowed``: the same with ``--shadow``: every send admitted
  and counted, with its would-be refusal.

Prints a table and writes ``benchmarks/results/shadow.json``.

    .venv/bin/python benchmarks/shadow.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _common

from tiergate.engine.constants import SHADOWABLE
from tiergate.policy import events as ev
from tiergate.policy.profile import load_profile
from tiergate.policy.service import AdmissionService
from tiergate.server import admit_wire
from tiergate.server.metrics import Metrics
from tiergate.server.watch import Watches
from tiergate.v1 import admission_pb2 as pb

T0 = 1_780_000_000_000
SENDER = "106540360000001"
LIMIT = 250  # TIER_250


def new_service(shadow: bool, full: bool) -> AdmissionService:
    profile = load_profile("meta-2025")
    if shadow:
        profile = dataclasses.replace(profile, shadow_reasons=frozenset(SHADOWABLE))
    svc = AdmissionService(profile, clock="request")
    update = ev.SenderUpdate(
        sender_id=SENDER,
        portfolio_id="portfolio-bench",
        tier="TIER_250" if full else "TIER_UNLIMITED",
        quality=ev.Quality.GREEN,
        status=ev.SenderStatus.CONNECTED,
        throughput_mps=1000,
        at_unix_ms=T0,
    )
    assert svc.apply(update, T0).applied
    if full:  # the limit reached before the measured sends
        for i in range(LIMIT):
            svc.admit(request(10_000_000 + i, T0 + i), T0 + i)
    svc.drain_journal()
    return svc


def request(i: int, at: int) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=f"1555{i:08d}",
        kind=pb.TEMPLATE,
        category=pb.UTILITY,
        template_id="order_update",
        at_unix_ms=at,
    )


def requests(n: int) -> list[bytes]:
    # 2 ms apart: under 1 000 msg/s, never refused for throughput or pair rate
    return [request(i, T0 + 10_000 + 2 * i).SerializeToString() for i in range(n)]


def run(data: list[bytes], shadow: bool, full: bool, watch: bool) -> tuple[float, dict[int, int]]:
    """CPU seconds for ``data``, and its answers' counts by decision (shadowed: 10 +
    reason)."""
    svc = new_service(shadow, full)
    metrics = Metrics()
    watches = Watches(lambda: svc, metrics=metrics)
    answers: dict[int, int] = {}

    async def body() -> float:
        stream = watches.watch(SENDER, "") if watch else None
        if stream is not None:
            await stream.__anext__()  # the first state: the watcher is registered
        t0 = time.process_time()
        for raw in data:
            fields = admit_wire.decode_fast(raw)
            if fields is not None:
                result = svc.admit_checked(fields, T0)
            else:
                req = pb.AdmitRequest.FromString(raw)
                result = svc.admit(req, T0)
            metrics.decided_one(result, "Admit")
            if watches.active:
                watches.poke()
            svc.drain_journal()
            admit_wire.encode_response(result)
            key = 10 + result.shadow_reason if result.shadow_decision else result.decision
            answers[key] = answers.get(key, 0) + 1
        elapsed = time.process_time() - t0
        if stream is not None:
            await stream.aclose()
        return elapsed

    return asyncio.run(body()), answers


VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "enforced": (False, False, False),
    "shadow, none shadowed": (True, False, False),
    "enforced, 1 watcher": (False, False, True),
    "refused": (False, True, False),
    "shadow, all shadowed": (True, True, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter runs")
    parser.add_argument("--items", type=int, default=0, help="admits per run")
    parser.add_argument("--runs", type=int, default=0, help="runs per variant")
    args = parser.parse_args()
    items = args.items or (2_000 if args.quick else 5_000)
    runs = args.runs or (3 if args.quick else 15)
    data = requests(items)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    answers: dict[str, dict[int, int]] = {}
    for shadow, full, watch in VARIANTS.values():  # warm-up, not counted
        run(data[: items // 10], shadow, full, watch)
    for _ in range(runs):
        for name, (shadow, full, watch) in VARIANTS.items():
            seconds, answers[name] = run(data, shadow, full, watch)
            times[name].append(seconds)
    base = min(times["enforced"])
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    for name in VARIANTS:
        least = min(times[name])
        per_item = least / items * 1e6
        rows.append([name, round(per_item, 2), round(least / base, 3), str(answers[name])])
        results[name] = {"us_per_admit": per_item, "vs_enforced": least / base, "runs": times[name]}
    _common.print_machine()
    _common.print_table(
        f"unary Admit path in one process, {items} admits x {runs} runs (least CPU time)",
        ["variant", "CPU us / admit", "x enforced", "answers (decision; 10+reason: shadowed)"],
        rows,
    )
    _common.write_results(
        "shadow", {"items": items, "runs": runs, "variants": results, "answers": answers}
    )


if __name__ == "__main__":
    main()
