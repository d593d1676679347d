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
- ``1 watcher, server clock``: as ``enforced, 1 watcher`` with the server clock (each
  send 2 ms after the last): each commit's look also arms the scope's timer
  (the next time-driven change, here none);
- ``1 watcher, server clock, past 80 %``: the same on TIER_100K with 80 000
  recipients counted before: each look also reads when usage next falls
  under the threshold reached (the ring's next free slot for it);
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


@dataclasses.dataclass(frozen=True)
class Variant:
    shadow: bool = False
    #: The sender at its limit before the measured sends.
    full: bool = False
    watch: bool = False
    #: The server clock (sends 2 ms apart), else the request clock.
    server: bool = False
    #: TIER_100K with 80 000 recipients counted before.
    past_80: bool = False


def new_service(v: Variant) -> AdmissionService:
    profile = load_profile("meta-2025")
    if v.shadow:
        profile = dataclasses.replace(profile, shadow_reasons=frozenset(SHADOWABLE))
    if v.past_80:  # a second's burst: the counted recipients go 1 000 at a time
        profile = dataclasses.replace(profile, burst_seconds=1.0)
    svc = AdmissionService(profile, clock="server" if v.server else "request")
    tier = "TIER_250" if v.full else "TIER_100K" if v.past_80 else "TIER_UNLIMITED"
    update = ev.SenderUpdate(
        sender_id=SENDER,
        portfolio_id="portfolio-bench",
        tier=tier,
        quality=ev.Quality.GREEN,
        status=ev.SenderStatus.CONNECTED,
        throughput_mps=1000,
        at_unix_ms=T0,
    )
    assert svc.apply(update, T0).applied
    if v.full:  # the limit reached before the measured sends
        for i in range(LIMIT):
            svc.admit(request(10_000_000 + i, T0 + i), T0 + i)
    if v.past_80:  # 80 % of TIER_100K counted in the 200 s before the measured sends
        for k in range(80):
            at = T0 + 2_000 * k
            chunk = [request(10_000_000 + 1000 * k + i, at) for i in range(1000)]
            results = svc.admit_many(chunk, at)
            assert all(r.decision == pb.DECISION_ADMIT for r in results)
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


def run(data: list[bytes], v: Variant) -> tuple[float, dict[int, int]]:
    """CPU seconds for ``data``, and its answers' counts by decision (shadowed: 10 +
    reason)."""
    svc = new_service(v)
    metrics = Metrics()
    start = T0 + 200_000
    watches = Watches(lambda: svc, metrics=metrics, clock=lambda: start)
    answers: dict[int, int] = {}

    async def body() -> float:
        stream = watches.watch(SENDER, "") if v.watch else None
        if stream is not None:
            await stream.__anext__()  # the first state: the watcher is registered
        t0 = time.process_time()
        for i, raw in enumerate(data):
            # the request clock reads the request's time; the server clock this one
            now = start + 2 * i if v.server else T0
            fields = admit_wire.decode_fast(raw)
            if fields is not None:
                result = svc.admit_checked(fields, now)
            else:
                req = pb.AdmitRequest.FromString(raw)
                result = svc.admit(req, now)
            metrics.decided_one(result, "Admit")
            if watches.active:
                watches.poke()
            svc.drain_journal()
            admit_wire.encode_response(result)
            key = 10 + result.shadow_reason if result.shadow_decision else result.decision
            answers[key] = answers.get(key, 0) + 1
        elapsed = time.process_time() - t0
        if v.past_80:  # the scope's timer is armed at the next fall under 80 %
            assert len(watches.timers) == 1
        if stream is not None:
            await stream.aclose()
        return elapsed

    return asyncio.run(body()), answers


VARIANTS: dict[str, Variant] = {
    "enforced": Variant(),
    "shadow, none shadowed": Variant(shadow=True),
    "enforced, 1 watcher": Variant(watch=True),
    "1 watcher, server clock": Variant(watch=True, server=True),
    "1 watcher, server clock, past 80 %": Variant(watch=True, server=True, past_80=True),
    "refused": Variant(full=True),
    "shadow, all shadowed": Variant(shadow=True, full=True),
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
    for variant in VARIANTS.values():  # warm-up, not counted
        run(data[: items // 10], variant)
    for _ in range(runs):
        for name, variant in VARIANTS.items():
            seconds, answers[name] = run(data, variant)
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
