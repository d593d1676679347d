"""What a SIGHUP profile reload costs the event loop, at a large state.

A sidecar runs in this process (``Sidecar``, request clock, a data directory
with ``durability = write``) with one sender and N counted recipients. A
coroutine ticks every millisecond; the figure is the longest time one tick
took (how long the event loop was held up) over the same number of seconds:

- ``idle``: nothing else runs;
- ``reloads``: ``Sidecar.reload`` back to back, in overlapping pairs, the
  profile switched between ``meta-2025`` and a user profile differing from it
  in one number (what repeated SIGHUPs do).

Also each reload's own time (call to return, the journal record committed).
A snapshot is taken first, so no snapshot falls due while measuring.

    .venv/bin/python benchmarks/reload.py                  # 1 M recipients
    .venv/bin/python benchmarks/reload.py --recipients 10000000

Prints a table and writes ``benchmarks/results/reload.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _common
import uvloop

from tiergate.config import Endpoint, ServeConfig
from tiergate.policy.columnar import AdmitColumns, admit_columns
from tiergate.policy.events import Quality, SenderStatus, SenderUpdate
from tiergate.policy.requests import AdmitRequest
from tiergate.server import Sidecar

SENDER = "106540352242922"
T0 = 1_767_225_600_000
CHUNK = 10_000


async def longest_tick(seconds: float, work: Any = None) -> tuple[float, int]:
    """The longest tick (s) while ``work`` runs (or for ``seconds``), and the ticks."""
    done = asyncio.Event()
    longest = 0.0
    ticks = 0

    async def tick() -> None:
        nonlocal longest, ticks
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            longest = max(longest, time.perf_counter() - started)
            ticks += 1

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.05)
    longest, ticks = 0.0, 0
    if work is None:
        await asyncio.sleep(seconds)
    else:
        await work
    done.set()
    await ticker
    return longest, ticks


async def measure(recipients: int, reloads: int, data_dir: Path) -> dict[str, Any]:
    cautious = data_dir.parent / "cautious.toml"
    cautious.write_text(
        'extends = "meta-2025"\nname = "cautious"\n[protection]\nheadroom_pct = 97\n'
    )
    sender = SenderUpdate(
        sender_id=SENDER,
        portfolio_id="bench",
        tier="TIER_UNLIMITED",
        quality=Quality.GREEN,
        status=SenderStatus.CONNECTED,
        throughput_mps=1000,
    )
    config = ServeConfig(
        listen=Endpoint("127.0.0.1", 0),
        clock="request",
        data_dir=data_dir,
        durability="write",
        senders=(sender,),
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    try:
        service, store = sidecar.service, sidecar.store
        assert service is not None and store is not None
        started = time.perf_counter()
        for lo in range(0, recipients, CHUNK):
            hi = min(recipients, lo + CHUNK)
            reqs = [
                AdmitRequest(SENDER, f"1{i:011d}", 1, 2, "receipt", at_unix_ms=T0 + i)
                for i in range(lo, hi)
            ]
            admit_columns(service, AdmitColumns.from_requests(reqs), T0 + lo)
            await sidecar._commit()
        fill_s = time.perf_counter() - started
        used = service.sender_state(SENDER, T0 + recipients).used_24h
        await store.snapshot(service)

        times: list[float] = []

        async def one(cfg: ServeConfig) -> None:
            t = time.perf_counter()
            await sidecar.reload(cfg)
            times.append(time.perf_counter() - t)

        async def run_reloads() -> None:
            for k in range(reloads // 2):
                profile = str(cautious) if k % 2 == 0 else "meta-2025"
                cfg = dataclasses.replace(config, profile=profile)
                await asyncio.gather(one(cfg), one(cfg))

        t = time.perf_counter()
        busy, busy_ticks = await longest_tick(0, run_reloads())
        took = time.perf_counter() - t
        idle, idle_ticks = await longest_tick(max(took, 0.2))
        return {
            "recipients": used,
            "fill_seconds": fill_s,
            "reloads": len(times),
            "reload_ms": {
                "median": statistics.median(times) * 1000,
                "max": max(times) * 1000,
            },
            "longest_tick_ms": {"idle": idle * 1000, "reloads": busy * 1000},
            "ticks": {"idle": idle_ticks, "reloads": busy_ticks},
            "reloads_seconds": took,
        }
    finally:
        await sidecar.stop(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--reloads", type=int, default=12)
    ap.add_argument("--tiny", action="store_true", help="smallest run: proves it works")
    ap.add_argument("--results-dir", type=Path, default=None, help="where reload.json goes")
    args = ap.parse_args(argv)
    recipients = 20_000 if args.tiny else args.recipients
    _common.print_machine()
    with tempfile.TemporaryDirectory(prefix="tiergate-reload-") as tmp:
        figures = uvloop.run(measure(recipients, args.reloads, Path(tmp) / "data"))
    _common.print_table(
        f"profile reloads at {figures['recipients']:,} recipients "
        f"({figures['reloads']} reloads, in overlapping pairs)",
        ["what", "ms"],
        [
            ["one reload, median", figures["reload_ms"]["median"]],
            ["one reload, longest", figures["reload_ms"]["max"]],
            ["longest event-loop tick, during the reloads", figures["longest_tick_ms"]["reloads"]],
            ["longest event-loop tick, idle as long", figures["longest_tick_ms"]["idle"]],
        ],
    )
    path = _common.write_results(
        "reload", {"mode": "tiny" if args.tiny else "full", **figures}, args.results_dir
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
