"""What client-created state costs a running sidecar, and how it stops with it.

Starts ``tiergate serve`` (127.0.0.1, request clock, a temporary data
directory) and, over gRPC:

- creates senders with RecordFeedback ``sender_update``, 16 calls in flight,
  and measures the creation rate over the 500 senders before each checkpoint
  (1k, 10k, 40k by default): the last rate over the first should be about 1
  (creation is O(1));
- bytes per sender: the server's RSS growth over the senders made;
- bytes per admit: AdmitBatch items to distinct recipients, once without a
  key and once with a 256-character key each, side by side (the server's RSS
  also holds what its snapshots allocated meanwhile, and reuses it: the
  difference of the two is no measure of a key; the state alone's is);
- the same for the state alone (creation rates too, and the Python calls one
  creation makes, counted by cProfile: the same at every size when creation
  is O(1)): an AdmissionService in this process, no journal, no snapshots;
  the server's own rate also pays for the snapshots that fall due meanwhile,
  whose cost grows with the state;
- the event loop's part of a snapshot at each checkpoint (state alone): the
  time ``snapshot_image`` takes (the state's image as the store would take it
  at the journal's cut), the longest of SNAPSHOT_TAKES, with its room made
  ahead as the store does;
- the longest loop stall during a snapshot at each checkpoint: a journalled
  AdmissionService and an EmbeddedStore in a temporary directory, a task that
  wakes every millisecond on the event loop while ``store.snapshot`` runs;
  its longest gap between wake-ups, next to the longest gap over as long a
  time with no snapshot (what the machine alone causes), and the snapshot's
  wall time (cut to written), the longest of SNAPSHOT_TAKES;
- shutdown: SIGTERM at the largest state, the time until the process exited
  next to ``--shutdown-grace``, and whether it exited cleanly (code 0).

    .venv/bin/python benchmarks/state_growth.py --tiny    # proves it works
    .venv/bin/python benchmarks/state_growth.py --quick   # 1k/5k/10k senders, 20k keys
    .venv/bin/python benchmarks/state_growth.py           # 1k/10k/40k senders, 200k keys
    .venv/bin/python benchmarks/state_growth.py --stall-only --senders 40000,100000

Prints a table and writes ``benchmarks/results/state_growth.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import grpc
from load import tiergate_command

pb, pb_grpc = _common.load_stubs()

T0 = 1_767_225_600_000
WINDOW = 500  # senders per measured rate
WARM_UP = 200  # senders made before any is timed (connections, first calls)
COUNTED = 100  # senders whose Python calls are counted, after each timed window
IN_FLIGHT = 16
BATCH = 1000
KEY_LENGTH = 256
SNAPSHOT_TAKES = 3  # snapshot images timed per checkpoint (the longest is reported)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def create_senders(stub: Any, start: int, count: int) -> float:
    """Create senders start..start+count-1; the seconds it took."""
    queue = iter(range(start, start + count))

    async def worker() -> None:
        for i in queue:
            update = pb.SenderUpdate(
                sender_id=f"1{i:014d}",
                waba_id=f"waba-{i // 20}",
                display_phone_number=f"+1{i:010d}",
            )
            req = pb.RecordFeedbackRequest(sender_update=update)
            answer = await stub.RecordFeedback(req)
            if not answer.applied:
                raise RuntimeError(f"sender {i} not created: {answer.detail}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started


async def admit_items(stub: Any, sender: str, first: int, count: int, keyed: bool) -> int:
    """``count`` template admits to distinct recipients, 1 ms apart; the admits."""
    admitted = 0
    for b in range(first, first + count, BATCH):
        reqs = [
            pb.AdmitRequest(
                sender_id=sender,
                recipient=f"49{i:011d}",
                kind=pb.TEMPLATE,
                category=pb.UTILITY,
                template_id="t1",
                idempotency_key=(f"{i:012d}".rjust(KEY_LENGTH, "k") if keyed else ""),
                at_unix_ms=T0 + i,
            )
            for i in range(b, min(b + BATCH, first + count))
        ]
        out = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
        admitted += sum(1 for r in out.responses if r.decision == pb.DECISION_ADMIT)
    return admitted


async def drive(port: int, pid: int, checkpoints: list[int], keys: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.AdmissionControlStub(channel)
        rates = []
        rss0 = rss_bytes(pid)
        await create_senders(stub, 0, WARM_UP)
        made = WARM_UP
        for point in checkpoints:
            if point - WINDOW > made:
                await create_senders(stub, made, point - WINDOW - made)
            seconds = await create_senders(stub, point - WINDOW, WINDOW)
            made = point
            rates.append({"senders": point, "per_s": WINDOW / seconds})
        rss1 = rss_bytes(pid)
        # one sender that may admit as fast as the items come
        fast = pb.SenderUpdate(sender_id="keys-sender", tier="TIER_UNLIMITED", throughput_mps=1000)
        await stub.RecordFeedback(pb.RecordFeedbackRequest(sender_update=fast))
        base = rss_bytes(pid)
        plain = await admit_items(stub, "keys-sender", 0, keys, keyed=False)
        mid = rss_bytes(pid)
        keyed = await admit_items(stub, "keys-sender", keys, keys, keyed=True)
        end = rss_bytes(pid)
    return {
        "rates": rates,
        "bytes_per_sender": (rss1 - rss0) / made,
        "admits_plain": plain,
        "admits_keyed": keyed,
        "bytes_per_admit_plain": (mid - base) / max(plain, 1),
        "bytes_per_admit_keyed": (end - mid) / max(keyed, 1),
        "rss_bytes": end,
    }


def in_process(checkpoints: list[int], keys: int) -> dict[str, Any]:
    """The state alone: an AdmissionService in this process, no journal, no
    snapshot (whose transient copies the server's RSS also holds, and whose
    work, in proportion to the state, the server's creation rate includes):
    creation rate over the WINDOW senders before each checkpoint, bytes per
    sender and per idempotency key."""
    import gc

    from tiergate.policy import events as ev
    from tiergate.policy.profile import load_profile
    from tiergate.policy.requests import AdmitRequest
    from tiergate.policy.service import AdmissionService

    svc = AdmissionService(load_profile("meta-2025"), journal=False, clock="request")
    svc.apply(ev.SenderUpdate("keys-sender", tier="TIER_UNLIMITED", throughput_mps=1000), T0)

    def admits(first: int, keyed: bool) -> None:
        for b in range(first, first + keys, BATCH):
            reqs = [
                AdmitRequest(
                    "keys-sender",
                    f"49{i:011d}",
                    pb.TEMPLATE,
                    pb.UTILITY,
                    "t1",
                    f"{i:012d}".rjust(KEY_LENGTH, "k") if keyed else "",
                    T0 + i,
                )
                for i in range(b, min(b + BATCH, first + keys))
            ]
            svc.admit_many(reqs, T0)

    pid = os.getpid()
    gc.collect()
    r0 = rss_bytes(pid)

    def create(first: int, end: int) -> None:
        for i in range(first, end):
            svc.apply(ev.SenderUpdate(f"1{i:014d}", display_phone_number=f"+1{i:010d}"), T0)

    rates = []
    made = 0
    for point in checkpoints:
        create(made, point - WINDOW)
        started = time.perf_counter()
        create(point - WINDOW, point - COUNTED)
        seconds = time.perf_counter() - started
        # the last few counted by the profiler: Python calls per creation
        profiler = cProfile.Profile()
        profiler.enable()
        create(point - COUNTED, point)
        profiler.disable()
        calls = pstats.Stats(profiler).total_calls / COUNTED
        rates.append(
            {
                "senders": point,
                "per_s": (WINDOW - COUNTED) / seconds,
                "calls_per_sender": calls,
                "snapshot_stall_ms": snapshot_stall(svc) * 1e3,
            }
        )
        made = point
    gc.collect()
    r1 = rss_bytes(pid)
    admits(0, keyed=False)
    gc.collect()
    r2 = rss_bytes(pid)
    admits(keys, keyed=True)
    gc.collect()
    r3 = rss_bytes(pid)
    return {
        "rates": rates,
        "bytes_per_sender": (r1 - r0) / made,
        "bytes_per_admit_plain": (r2 - r1) / keys,
        "bytes_per_key": ((r3 - r2) - (r2 - r1)) / keys,
    }


def snapshot_stall(svc: Any) -> float:
    """The longest of SNAPSHOT_TAKES times the event loop holds for a snapshot of
    ``svc`` (seconds): its image, taken as the store takes it (room made first,
    collections paused); the image is then encoded, outside the timing."""
    import gc

    longest = 0.0
    for _ in range(SNAPSHOT_TAKES):
        room = svc.snapshot_room()()
        paused = gc.isenabled()
        gc.disable()
        try:
            started = time.perf_counter()
            encode = svc.snapshot_image(room)
            longest = max(longest, time.perf_counter() - started)
            del room
            encode()
        finally:
            if paused:
                gc.enable()
    return longest


async def _longest_gap(work: Any) -> tuple[float, float, float]:
    """Await ``work`` (a coroutine, or a number of seconds to sleep) while a task
    wakes every millisecond on this event loop: (longest gap between its
    wake-ups, longest CPU time the loop's thread spent between two wake-ups,
    seconds ``work`` took), in seconds. The CPU time leaves out what the
    machine's other processes and the wait for the GIL add to a gap."""
    done = asyncio.Event()
    longest = busiest = 0.0

    async def tick() -> None:
        nonlocal longest, busiest
        last, last_cpu = time.perf_counter(), time.thread_time()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now, cpu = time.perf_counter(), time.thread_time()
            longest, busiest = max(longest, now - last), max(busiest, cpu - last_cpu)
            last, last_cpu = now, cpu

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    if isinstance(work, float):
        await asyncio.sleep(work)
    else:
        await work
    took = time.perf_counter() - started
    done.set()
    await ticker
    return longest, busiest, took


def loop_stalls(checkpoints: list[int]) -> list[dict[str, Any]]:
    """At each checkpoint: the longest event-loop stall during a snapshot of a
    journalled service with that many senders (see the module docstring)."""
    import gc

    from tiergate.policy import events as ev
    from tiergate.policy.profile import load_profile
    from tiergate.policy.service import AdmissionService
    from tiergate.store.embedded import EmbeddedStore

    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tiergate-stall-") as data:
        svc = AdmissionService(load_profile("meta-2025"), clock="request")
        store = EmbeddedStore.open(data, "write", snapshot_on_close=False)
        store.recover(svc)

        async def measure() -> dict[str, float]:
            stall = cpu = idle = wall = 0.0
            for _ in range(SNAPSHOT_TAKES):
                gap, busy, took = await _longest_gap(store.snapshot(svc))
                quiet, _, _ = await _longest_gap(float(took))
                stall, cpu, wall = max(stall, gap), max(cpu, busy), max(wall, took)
                idle = max(idle, quiet)
            return {
                "stall_ms": stall * 1e3,
                "stall_cpu_ms": cpu * 1e3,
                "idle_gap_ms": idle * 1e3,
                "wall_s": wall,
            }

        made = 0
        try:
            for point in checkpoints:
                for i in range(made, point):
                    update = ev.SenderUpdate(f"1{i:014d}", display_phone_number=f"+1{i:010d}")
                    svc.apply(update, T0)
                    if i % 1000 == 999:
                        store.commit_sync(svc.drain_journal())
                store.commit_sync(svc.drain_journal())
                made = point
                gc.collect()
                out.append({"senders": point, **asyncio.run(measure())})
        finally:
            store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k/5k/10k senders, 20k keys")
    ap.add_argument("--tiny", action="store_true", help="smallest run: proves it works")
    ap.add_argument("--senders", default="1000,10000,40000", help="checkpoints, comma-separated")
    ap.add_argument("--keys", type=int, default=200_000, help="admits with keys (and without)")
    ap.add_argument("--grace", type=float, default=10.0, help="--shutdown-grace of the server")
    ap.add_argument("--results-dir", type=Path, default=None)
    ap.add_argument(
        "--stall-only", action="store_true", help="only the loop stalls during snapshots"
    )
    args = ap.parse_args(argv)
    _common.exit_on_sigterm()
    if args.tiny:
        checkpoints, keys = [800, 1300], 2_000
    elif args.quick:
        checkpoints, keys = [1000, 5000, 10000], 20_000
    else:
        checkpoints, keys = [int(x) for x in args.senders.split(",")], args.keys
    _common.print_machine()
    if args.stall_only:
        return stall_report(argv, checkpoints, args.results_dir)
    port = _common.free_port()
    with tempfile.TemporaryDirectory(prefix="tiergate-growth-") as data:
        cmd = [
            *tiergate_command(), "serve",
            "--listen", f"127.0.0.1:{port}",
            "--data-dir", data,
            "--clock", "request",
            "--durability", "write",
            "--shutdown-grace", f"{args.grace:g}",
            "--log-level", "warning",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, preexec_fn=_common.die_with_parent())
        try:
            _common.wait_for_port(port, 60, proc)
            result = asyncio.run(drive(port, proc.pid, checkpoints, keys))
            snapshot_bytes = sum(p.stat().st_size for p in Path(data).glob("snapshot-*"))
            journal_bytes = sum(p.stat().st_size for p in Path(data).glob("journal-*"))
            started = time.perf_counter()
            os.kill(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=args.grace + 60)
            except subprocess.TimeoutExpired:
                code = None
            stop_s = time.perf_counter() - started
            final_snapshot = sum(p.stat().st_size for p in Path(data).glob("snapshot-*"))
        finally:
            _common.stop_process(proc)
    alone = in_process(checkpoints, keys)
    stalls = loop_stalls(checkpoints)
    alone_ratio = alone["rates"][-1]["per_s"] / alone["rates"][0]["per_s"]
    rates = result["rates"]
    ratio = rates[-1]["per_s"] / rates[0]["per_s"]
    rows = [[f"{r['senders']:,} senders", f"{r['per_s']:.0f} senders/s"] for r in rates]
    rows += [
        ["creation rate last / first", f"{ratio:.2f}"],
        ["server RSS: bytes per sender", f"{result['bytes_per_sender']:.0f}"],
        ["server RSS: bytes per admit, no key", f"{result['bytes_per_admit_plain']:.0f}"],
        [
            f"server RSS: bytes per admit, {KEY_LENGTH}-char key",
            f"{result['bytes_per_admit_keyed']:.0f}",
        ],
        *[
            [
                f"state alone: {r['senders']:,} senders",
                f"{r['per_s']:.0f} senders/s, {r['calls_per_sender']:.0f} calls each",
            ]
            for r in alone["rates"]
        ],
        ["state alone: creation rate last / first", f"{alone_ratio:.2f}"],
        *[
            [
                f"state alone: event loop held by a snapshot, {r['senders']:,} senders",
                f"{r['snapshot_stall_ms']:.1f} ms (longest of {SNAPSHOT_TAKES})",
            ]
            for r in alone["rates"]
        ],
        *stall_rows(stalls),
        ["state alone: bytes per sender", f"{alone['bytes_per_sender']:.0f}"],
        ["state alone: bytes per admit, no key", f"{alone['bytes_per_admit_plain']:.0f}"],
        [f"state alone: bytes per {KEY_LENGTH}-char key", f"{alone['bytes_per_key']:.0f}"],
        ["server RSS at SIGTERM", f"{result['rss_bytes'] / 1e6:.0f} MB"],
        ["snapshots + journal before SIGTERM", f"{(snapshot_bytes + journal_bytes) / 1e6:.1f} MB"],
        ["shutdown (SIGTERM to exit)", f"{stop_s:.2f} s (grace {args.grace:g} s), exit {code}"],
    ]
    _common.print_table("state growth", ["measure", "value"], rows)
    payload = {
        "command": " ".join(["python", "benchmarks/state_growth.py", *(argv or sys.argv[1:])]),
        "machine": _common.machine_info(),
        "checkpoints": checkpoints,
        "keys": keys,
        "key_length": KEY_LENGTH,
        **result,
        "creation_ratio_last_first": ratio,
        "state_alone": alone,
        "state_alone_creation_ratio_last_first": alone_ratio,
        "snapshot_stalls": stalls,
        "snapshot_bytes_before_stop": snapshot_bytes,
        "journal_bytes_before_stop": journal_bytes,
        "snapshot_bytes_after_stop": final_snapshot,
        "shutdown_seconds": stop_s,
        "shutdown_grace_seconds": args.grace,
        "exit_code": code,
    }
    path = _common.write_results("state_growth", payload, args.results_dir)
    print(f"wrote {path}")
    return 0 if code == 0 and stop_s <= args.grace else 1


def stall_rows(stalls: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            f"longest loop stall during a snapshot, {r['senders']:,} senders",
            f"{r['stall_ms']:.1f} ms, loop CPU {r['stall_cpu_ms']:.1f} ms "
            f"(no snapshot: {r['idle_gap_ms']:.1f} ms; snapshot wall {r['wall_s']:.2f} s)",
        ]
        for r in stalls
    ]


def stall_report(argv: list[str] | None, checkpoints: list[int], results_dir: Path | None) -> int:
    stalls = loop_stalls(checkpoints)
    _common.print_table("state growth: snapshots", ["measure", "value"], stall_rows(stalls))
    payload = {
        "command": " ".join(["python", "benchmarks/state_growth.py", *(argv or sys.argv[1:])]),
        "machine": _common.machine_info(),
        "checkpoints": checkpoints,
        "snapshot_stalls": stalls,
    }
    path = _common.write_results("state_growth_stalls", payload, results_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
