"""Table growth pauses: the longest single engine call while a recipient table grows.

A limit scope's table is filled with new recipients from ``--start`` to
``--end`` entries (1 M to 8 M by default), by ``decide_batch`` calls of
1 000 new recipients and, in a second engine, by single ``decide`` calls;
every call is timed on its own (CPU time of the calling thread, which a shared
machine does not inflate, and wall clock). Reported per build: the longest call, the
99.9th and 99th percentiles and the median (milliseconds), and the entries
at which the longest call happened. With ``--baseline SRC`` (a ``src``
directory holding another build of ``tiergate._native``) both builds run,
in alternating child processes of this one run, so the two columns are
measured side by side. With ``--expire`` the engine's windows are short
(a 2-hour reclaim horizon) and the clock jumps past that horizon after
``--start`` recipients, then each time their number has grown by half, so
the nominal fills find the recipients before the last jump expired (at 1 M
to 8 M: fills of 1.47 M and 2.94 M entries dropping 1 M to 2.5 M): the calls
are timed through the reclaims at the fills (one pass inside one insert, or
a sweep a step per insert). Prints a table
and writes ``benchmarks/results/growth.json``.

    .venv/bin/python benchmarks/growth.py --quick          # 250 k -> 2 M entries
    .venv/bin/python benchmarks/growth.py                  # 1 M -> 8 M entries
    .venv/bin/python benchmarks/growth.py --marketing      # marketing sends: the map grows too
    .venv/bin/python benchmarks/growth.py --expire         # through the reclaims at the fills
    # the build of another commit, side by side (e.g. main):
    git archive main setup.py pyproject.toml ext src | tar -x -C /tmp/base \\
      && (cd /tmp/base && ../path/to/.venv/bin/python setup.py -q build_ext --inplace)
    .venv/bin/python benchmarks/growth.py --baseline /tmp/base/src
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

T0 = 1_780_000_000_000  # a Unix ms time; the clock advances 1 ms per decision
BATCH = 1_000
FIRST_KEY = 15_550_000_000
TARGET_MS = 10.0
#: --expire: windows of Engine(*SHORT) (a 2-hour reclaim horizon) and the jump
#: of the clock that expires every recipient counted before it
SHORT = (60_000, 3_600_000, 3_600_000, 3_600_000)
JUMP = 2 * 3_600_000 + 1


def child(
    src: str, mode: str, start: int, end: int, marketing: bool, expire: bool
) -> dict[str, Any]:
    """Run in a child process: grow one scope's table from start to end entries,
    timing each call (``mode``: ``batch`` or ``single``); with ``marketing``
    every send is a marketing template, so the scope's marketing map grows too;
    with ``expire`` the recipients expire at the jumps (see above)."""
    sys.path.insert(0, src)
    from tiergate._native.engine import Engine
    from tiergate.engine import DecisionBatch
    from tiergate.engine import constants as c

    e = Engine(*SHORT) if expire else Engine()

    jumps = []
    while expire and start and (not jumps or jumps[-1] < end):
        jumps.append(jumps[-1] * 3 // 2 if jumps else start)

    def now(i: int) -> int:
        # 1 ms per send, and with expire the jumps past the horizon
        return T0 + i + bisect.bisect_right(jumps, i) * JUMP

    e.add_scope()
    flags = c.F_TEMPLATE | (c.F_MARKETING if marketing else 0)
    # throughput and pair rate wide open: the figures are the table's work
    e.add_number(0, 1, 1 << 30, 1, 1 << 20)

    def batch(first: int) -> DecisionBatch:
        b = DecisionBatch()
        b.now = array("q", [now(i) for i in range(first, first + BATCH)])
        b.scope = array("i", [0]) * BATCH
        b.number = array("i", [0]) * BATCH
        b.recipient = array("Q", range(FIRST_KEY + first, FIRST_KEY + first + BATCH))
        b.flags = array("I", [flags]) * BATCH
        b.limit = array("q", [c.UNLIMITED]) * BATCH
        b.ticket = array("Q", range(first + 1, first + 1 + BATCH))
        return b

    for first in range(0, start, BATCH):  # untimed
        e.decide_batch(batch(first))
    wall: list[int] = []
    cpu: list[int] = []
    at: list[int] = []
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    if mode == "batch":
        for first in range(start, end, BATCH):
            b = batch(first)
            t, p = clock(), cpu_clock()
            e.decide_batch(b)
            cpu.append(cpu_clock() - p)
            wall.append(clock() - t)
            at.append(first)
    else:
        decide, unlimited = e.decide, c.UNLIMITED
        for i in range(start, end):
            t, p = clock(), cpu_clock()
            decide(now(i), 0, 0, FIRST_KEY + i, flags, unlimited)
            cpu.append(cpu_clock() - p)
            wall.append(clock() - t)
        at = list(range(start, end))
    out: dict[str, Any] = {
        "mode": mode + (" marketing" if marketing else "") + (" expire" if expire else ""),
        "calls": len(wall),
        "entries_after": e.entries(),
    }
    for name, times in (("cpu", cpu), ("wall", wall)):
        order = sorted(range(len(times)), key=times.__getitem__)
        n = len(order)
        out[f"{name}_max_ms"] = times[order[-1]] / 1e6
        out[f"{name}_max_at_entries"] = at[order[-1]]
        for label, q in (("p999", 0.999), ("p99", 0.99), ("p50", 0.5)):
            out[f"{name}_{label}_ms"] = times[order[min(n - 1, int(q * n))]] / 1e6
        out[f"{name}_over_target"] = sum(1 for t in times if t > TARGET_MS * 1e6)
    return out


def run_child(
    src: str, mode: str, start: int, end: int, marketing: bool, expire: bool
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", src, "--mode", mode]
    if marketing:
        cmd.append("--marketing")
    if expire:
        cmd.append("--expire")
    out = subprocess.run(
        [*cmd, "--start", str(start), "--end", str(end)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    _common.exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="250 k -> 2 M entries; < 60 s a build")
    ap.add_argument("--start", type=int, default=None, help="entries before the timed calls")
    ap.add_argument("--end", type=int, default=None, help="entries after them")
    ap.add_argument("--baseline", default=None, help="a src dir with another build, side by side")
    ap.add_argument("--modes", default="batch,single", help="batch, single or both")
    ap.add_argument(
        "--marketing",
        action="store_true",
        help="marketing templates: the scope's marketing map grows with its table",
    )
    ap.add_argument(
        "--expire",
        action="store_true",
        help="short windows, the recipients expiring at times: through the reclaims",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="batch", help=argparse.SUPPRESS)
    ap.add_argument("--results-dir", type=Path, default=None, help="where growth.json goes")
    args = ap.parse_args(argv)
    start = args.start if args.start is not None else (250_000 if args.quick else 1_000_000)
    end = args.end if args.end is not None else (2_000_000 if args.quick else 8_000_000)
    if args.child is not None:
        print(json.dumps(child(args.child, args.mode, start, end, args.marketing, args.expire)))
        return 0

    _common.print_machine()
    builds = {"this build": str(_common.REPO_ROOT / "src")}
    if args.baseline:
        builds["baseline"] = str(Path(args.baseline).resolve())
    rows: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        for name, src in builds.items():  # alternating: one mode, each build in turn
            r = run_child(src, mode, start, end, args.marketing, args.expire)
            rows.append({"build": name, "src": src, **r})
    for clock in ("cpu", "wall"):
        _common.print_table(
            f"longest call while one scope's table grows {start:,} -> {end:,} entries "
            f"(ms of {'CPU time of the calling thread' if clock == 'cpu' else 'wall clock'}; "
            f"decide_batch of {BATCH} new recipients, or single decide)",
            ["build", "call", "calls", "max", "at entries", "p99.9", "p99", "p50", "> 10 ms"],
            [
                [r["build"], r["mode"], r["calls"]]
                + [
                    r[f"{clock}_{k}"]
                    for k in ("max_ms", "max_at_entries", "p999_ms", "p99_ms", "p50_ms")
                ]
                + [r[f"{clock}_over_target"]]
                for r in rows
            ],
        )
    path = _common.write_results(
        "growth",
        {
            "marketing": args.marketing,
            "expire": args.expire,
            "start_entries": start,
            "end_entries": end,
            "batch_size": BATCH,
            "target_max_ms": TARGET_MS,
            "rows": rows,
        },
        args.results_dir,
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
