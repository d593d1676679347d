"""Decision engine speed: the compiled engine next to its pure-Python twin, in one run.

Next to them a plain-dict Python implementation of the same checks
(:class:`DictEngine`), the yardstick a hand-written Python service sets.
Measures decisions per second for single ``decide`` calls and for
``decide_batch`` of 1 000, at several numbers of tracked recipients; the
resident memory per tracked recipient; and snapshot / restore time for
1 M table entries (10 M too for the compiled engine outside quick mode).
The compiled engine at the smallest and largest sizes is also timed side by
side, in alternating turns in one process (:func:`side_by_side`): the target
ratio between the two sizes comes from there.
Prints a table and writes ``benchmarks/results/engine.json``.

    .venv/bin/python benchmarks/engine.py --quick     # < 60 s
    .venv/bin/python benchmarks/engine.py             # adds 10 M tracked recipients
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
import tracemalloc
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _common

from tiergate.engine import IMPLEMENTATION, DecisionBatch, PyEngine
from tiergate.engine import constants as c

if IMPLEMENTATION == "compiled":
    from tiergate._native.engine import Engine as CEngine
else:
    CEngine = None

DAY = 86_400_000
T0 = 1_780_000_000_000  # a Unix ms time; the clock advances 1 ms per decision
BATCH = 1_000
FIRST_KEY = c.recipient_key("15550000000")
FLAGS = c.F_TEMPLATE


class DictEngine:
    """What a plain Python implementation would do: one dict per table, a dict of
    minute buckets for the rolling 24 h count, GCRA in ints.

    It covers only what this benchmark sends (counted template sends, no
    windows, marketing or release) and gives the same decision, counted and
    used as the engines for it (``check_dict_engine`` compares them); it is
    here as the yardstick a hand-written Python service would set.
    """

    def __init__(self) -> None:
        self.bucket_ms, self.window_ms = 60_000, DAY
        self.last: dict[int, int] = {}  # scope table: recipient -> last counted
        self.slot: dict[int, int] = {}  # recipient -> stamp of the slot it holds (0: relied on)
        self.gen: dict[int, int] = {}  # recipient -> generation of its latest slot
        self.pair_tat: dict[int, int] = {}  # number table: recipient -> pair TAT
        self.buckets: dict[int, int] = {}  # minute bucket -> recipients last counted in it
        self.used = 0
        self.lo = -(1 << 62)
        self.clock = -(1 << 62)
        self.tput_tat = -(1 << 62)
        self.tput_interval, self.tput_tolerance = 1, 0
        self.pair_interval, self.pair_tolerance = 1, 0

    def add_scope(self) -> int:
        return 0

    def add_number(
        self, scope: int, tput_interval_us: int, tput_burst: int, pair_ms: int, pair_burst: int
    ) -> int:
        self.tput_interval = tput_interval_us
        self.tput_tolerance = (tput_burst - 1) * tput_interval_us
        self.pair_interval = pair_ms
        self.pair_tolerance = (pair_burst - 1) * pair_ms
        return 0

    def entries(self) -> int:
        return len(self.last) + len(self.pair_tat)

    def decide(
        self, now: int, scope: int, number: int, recipient: int, flags: int, limit: int
    ) -> tuple[int, int, int, int, int, int, int]:
        if now < self.clock:
            now = self.clock
        else:
            self.clock = now
            new_lo = (now - self.window_ms) // self.bucket_ms
            if new_lo > self.lo:  # drop buckets wholly out of the window
                for b in [b for b in self.buckets if b < new_lo]:
                    self.used -= self.buckets.pop(b)
                self.lo = new_lo
        last = self.last.get(recipient, -(1 << 62))
        already = last > now - self.window_ms
        if not already and self.used >= limit:
            return (c.RETRY_LATER, c.MESSAGING_LIMIT, self.next_free(limit), 0, self.used, last, 0)
        now_us = now * 1000
        tput_tat = max(self.tput_tat, now_us)
        if tput_tat - self.tput_tolerance > now_us:
            return (
                c.RETRY_LATER,
                c.THROUGHPUT,
                -((self.tput_tolerance - tput_tat) // 1000),
                0,
                self.used,
                last,
                0,
            )
        pair_tat = max(self.pair_tat.get(recipient, -(1 << 62)), now)
        if pair_tat - self.pair_tolerance > now:
            retry = pair_tat - self.pair_tolerance
            return (c.RETRY_LATER, c.PAIR_RATE, retry, 0, self.used, last, 0)
        b = last // self.bucket_ms
        if b >= self.lo:
            self.buckets[b] -= 1
            self.used -= 1
        b = now // self.bucket_ms
        self.buckets[b] = self.buckets.get(b, 0) + 1
        self.used += 1
        self.last[recipient] = now
        slot = 0
        if not already:
            g = self.gen.get(recipient, 0) % 2047 + 1
            self.gen[recipient] = g
            slot = ((now + (1 << 50)) << 11) | g
        self.slot[recipient] = slot
        self.tput_tat = tput_tat + self.tput_interval
        self.pair_tat[recipient] = pair_tat + self.pair_interval
        return (c.ADMIT, c.OK, 0, 0 if already else 1, self.used, last, slot)

    def next_free(self, limit: int) -> int:
        need, acc = self.used - limit + 1, 0
        for b in sorted(self.buckets):
            acc += self.buckets[b]
            if acc >= need:
                return (b + 1) * self.bucket_ms + self.window_ms
        raise AssertionError("bucket counts out of step with the total")

    def decide_batch(self, batch: DecisionBatch) -> None:
        batch.prepare_outputs()
        decide = self.decide
        for i, (now, sc, nu, r, f, lim) in enumerate(
            zip(
                batch.now,
                batch.scope,
                batch.number,
                batch.recipient,
                batch.flags,
                batch.limit,
                strict=True,
            )
        ):
            d = decide(now, sc, nu, r, f, lim)
            batch.decision[i] = d[0]
            batch.reason[i] = d[1]
            batch.retry_at[i] = d[2]
            batch.counted[i] = d[3]
            batch.used[i] = d[4]
            batch.prev_counted[i] = d[5]
            batch.slot[i] = d[6]


def check_dict_engine() -> None:
    """The plain-dict yardstick answers this workload as the reference engine does."""
    ref, plain = new_engine(PyEngine), new_engine(DictEngine)
    populate(ref, 2_000)
    populate(plain, 2_000)
    keys = workload_keys(2_000, 3 * BATCH, 3)
    for k, b in enumerate(columns(T0 + DAY - 7_000 + 997 * k, keys, 1) for k in range(2)):
        ref.decide_batch(b)
        out = [bytes(b.decision), bytes(b.counted), b.used.tobytes(), b.prev_counted.tobytes()]
        plain.decide_batch(b)
        if out != [bytes(b.decision), bytes(b.counted), b.used.tobytes(), b.prev_counted.tobytes()]:
            raise AssertionError(f"plain-dict yardstick disagrees with the reference (batch {k})")
    for i, k in enumerate(keys[:500]):
        now = T0 + 3 * DAY + 61_000 * i
        args = (now, 0, 0, k, FLAGS, 40)
        if ref.decide(*args) != plain.decide(*args):
            raise AssertionError("plain-dict yardstick disagrees with the reference (single)")


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def new_engine(cls: Any) -> Any:
    e = cls()
    e.add_scope()
    # throughput and pair rate set wide open: the figures are the table and ring work
    e.add_number(0, 1, 1 << 30, 1, 1 << 20)
    return e


def columns(now: int, keys: array[int], ticket0: int) -> DecisionBatch:
    n = len(keys)
    b = DecisionBatch()
    b.now = array("q", range(now, now + n))
    b.scope = array("i", [0]) * n
    b.number = array("i", [0]) * n
    b.recipient = keys
    b.flags = array("I", [FLAGS]) * n
    b.limit = array("q", [c.UNLIMITED]) * n
    b.ticket = array("Q", range(ticket0, ticket0 + n))
    return b


def populate(e: Any, tracked: int) -> None:
    """Track ``tracked`` recipients (each in the scope table and the number table)."""
    chunk = 200_000
    for start in range(0, tracked, chunk):
        n = min(chunk, tracked - start)
        keys = array("Q", range(FIRST_KEY + start, FIRST_KEY + start + n))
        e.decide_batch(columns(T0 + start, keys, start + 1))


def workload_keys(tracked: int, n: int, seed: int) -> array[int]:
    """Mostly repeats of tracked recipients, 1 in 10 a new one."""
    rnd = random.Random(seed)
    out = array("Q")
    for _ in range(n):
        if rnd.random() < 0.1:
            out.append(FIRST_KEY + tracked + rnd.randrange(10 * tracked + 1))
        else:
            out.append(FIRST_KEY + rnd.randrange(tracked))
    return out


def time_single(e: Any, keys: array[int], now: int) -> tuple[float, float]:
    decide = e.decide
    t, cpu = time.perf_counter(), time.process_time()
    for i, k in enumerate(keys):
        decide(now + i, 0, 0, k, FLAGS, c.UNLIMITED)
    return time.perf_counter() - t, time.process_time() - cpu


def time_batches(e: Any, keys: array[int], now: int) -> tuple[float, float]:
    batches = [
        columns(now + i, keys[i : i + BATCH], i + 1) for i in range(0, len(keys) - BATCH + 1, BATCH)
    ]
    t, cpu = time.perf_counter(), time.process_time()
    for b in batches:
        e.decide_batch(b)
    return time.perf_counter() - t, time.process_time() - cpu


Timer = Callable[[Any, "array[int]", int], tuple[float, float]]


def rates(fn: Timer, e: Any, keys: array[int], now: int) -> tuple[float, float, int]:
    """Decisions per wall second and per CPU second of this process (medians of three
    runs), and the time after them: the clock keeps moving forward, from run to run and
    from one call to the next (a clock sent back would be clamped to the latest time
    seen, and every decision of the run would then happen in the same millisecond). On
    a shared box the CPU figure is the steadier."""
    wall, cpu = [], []
    for _ in range(3):
        w, p = fn(e, keys, now)
        wall.append(len(keys) / w)
        cpu.append(len(keys) / max(p, 1e-9))
        now += len(keys) + 60_000
    return statistics.median(wall), statistics.median(cpu), now


def measure_size(tracked: int, quick: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"tracked_recipients": tracked}
    # the reference first: its freed objects stay in the interpreter's arenas,
    # which would hide the compiled engine's growth if it ran second
    impls: list[tuple[str, Any]] = [("python", PyEngine), ("dict", DictEngine)]
    if CEngine is not None:
        impls.append(("compiled", CEngine))
    for name, cls in impls:
        if name != "compiled" and tracked > (100_000 if quick else 1_000_000):
            continue
        gc.collect()
        before = rss_bytes()
        if name == "dict":
            # after the reference, the RSS delta would reuse its freed arenas:
            # count the dict engine's own allocations instead
            tracemalloc.start()
        e = new_engine(cls)
        populate(e, tracked)
        gc.collect()
        if name == "dict":
            row[f"{name}_bytes_per_recipient"] = tracemalloc.get_traced_memory()[0] / tracked
            tracemalloc.stop()
        else:
            row[f"{name}_bytes_per_recipient"] = (rss_bytes() - before) / tracked
        n_single = (200_000 if name == "compiled" else 20_000) // (2 if quick else 1)
        # (the dict engine takes the reference's sizes)
        n_batch = (1_000_000 if name == "compiled" else 20_000) // (2 if quick else 1)
        now = T0 + 2 * DAY
        *single, now = rates(time_single, e, workload_keys(tracked, n_single, 1), now)
        *batch, now = rates(time_batches, e, workload_keys(tracked, n_batch, 2), now)
        row[f"{name}_single_per_s"], row[f"{name}_single_per_cpu_s"] = single
        row[f"{name}_batch_per_s"], row[f"{name}_batch_per_cpu_s"] = batch
        row[f"{name}_entries"] = e.entries()
        del e
    for kind in ("single", "batch"):
        if f"python_{kind}_per_s" in row and f"compiled_{kind}_per_s" in row:
            row[f"{kind}_ratio"] = row[f"compiled_{kind}_per_s"] / row[f"python_{kind}_per_s"]
            row[f"{kind}_ratio_cpu"] = (
                row[f"compiled_{kind}_per_cpu_s"] / row[f"python_{kind}_per_cpu_s"]
            )
        if f"dict_{kind}_per_s" in row and f"compiled_{kind}_per_s" in row:
            row[f"{kind}_ratio_dict_cpu"] = (
                row[f"compiled_{kind}_per_cpu_s"] / row[f"dict_{kind}_per_cpu_s"]
            )
        if f"compiled_{kind}_per_s" in row:
            row[f"compiled_{kind}_ns"] = 1e9 / row[f"compiled_{kind}_per_s"]
            row[f"compiled_{kind}_cpu_ns"] = 1e9 / row[f"compiled_{kind}_per_cpu_s"]
    return row


TURN_BATCHES = 100  # batch phase: decide_batch calls per turn
TURN_SINGLE = 20_000  # single phase: decide calls per turn


def side_by_side(small: int, big: int, rounds: int, decisions: int) -> dict[str, Any]:
    """The compiled engine at ``small`` and at ``big`` tracked recipients, timed in
    alternating turns in this one process (100 batches, or 20 000 single calls,
    at one size, then the other; which size goes first alternates too).

    Timed one after the other, each size meets a different moment of a shared
    machine: a neighbour's burst on the memory bus slows the big tables more than
    the small ones, so two separate figures from a few seconds apart can put the
    ratio anywhere from 1.7 to 3. Turns a few milliseconds long put both sizes
    through the same moments; the small engine's tables (a few hundred KB) are
    back in cache within a few microseconds of its turn starting. Returns the
    per-round CPU ns per decision at each size and their ratio, and medians.
    """
    if CEngine is None:
        return {}
    sizes = (small, big)
    engines, keys, now = {}, {}, {}
    for n in sizes:
        engines[n] = new_engine(CEngine)
        populate(engines[n], n)
        keys[n] = workload_keys(n, decisions, 3)
        now[n] = T0 + 2 * DAY
    out: dict[str, Any] = {"small": small, "big": big, "rounds": []}
    for r in range(rounds):
        row: dict[str, float] = {}
        # single calls
        cpu = dict.fromkeys(sizes, 0.0)
        n_single = min(decisions, 10 * TURN_SINGLE)
        for t, lo in enumerate(range(0, n_single, TURN_SINGLE)):
            for n in sizes if (r + t) % 2 == 0 else sizes[::-1]:
                part = keys[n][lo : lo + TURN_SINGLE]
                cpu[n] += time_single(engines[n], part, now[n])[1]
                now[n] += len(part)
        for n in sizes:
            row[f"single_ns_{n}"] = cpu[n] / n_single * 1e9
        # batches, built before the timed turns
        turn = TURN_BATCHES * BATCH
        cpu = dict.fromkeys(sizes, 0.0)
        for t, lo in enumerate(range(0, decisions - turn + 1, turn)):
            for n in sizes if (r + t) % 2 == 0 else sizes[::-1]:
                part = keys[n][lo : lo + turn]
                cpu[n] += time_batches(engines[n], part, now[n])[1]
                now[n] += len(part)
        done = (decisions // turn) * turn
        for n in sizes:
            row[f"batch_ns_{n}"] = cpu[n] / done * 1e9
            now[n] += 60_000
        row["batch_ratio"] = row[f"batch_ns_{big}"] / row[f"batch_ns_{small}"]
        row["single_ratio"] = row[f"single_ns_{big}"] / row[f"single_ns_{small}"]
        out["rounds"].append(row)
    for key in ("batch_ratio", "single_ratio", f"batch_ns_{small}", f"batch_ns_{big}"):
        out[f"{key}_median"] = statistics.median(x[key] for x in out["rounds"])
    del engines
    gc.collect()
    return out


def measure_snapshots(quick: bool) -> list[dict[str, Any]]:
    """Snapshot and restore of 1 M table entries (500 000 recipients in both tables),
    and of 10 M for the compiled engine outside quick mode."""
    out = []
    runs: list[tuple[str, Any, int]] = [("python", PyEngine, 500_000)]
    if CEngine is not None:
        runs.insert(0, ("compiled", CEngine, 500_000))
        if not quick:
            runs.append(("compiled", CEngine, 5_000_000))
    for name, cls, recipients in runs:
        e = new_engine(cls)
        populate(e, recipients)
        t, cpu = time.perf_counter(), time.process_time()
        data = e.snapshot()
        snap = (time.perf_counter() - t, time.process_time() - cpu)
        del e
        gc.collect()
        t, cpu = time.perf_counter(), time.process_time()
        r = cls.restore(data)
        restore = (time.perf_counter() - t, time.process_time() - cpu)
        out.append(
            {
                "engine": name,
                "entries": r.entries(),
                "bytes": len(data),
                "snapshot_s": snap[0],
                "snapshot_cpu_s": snap[1],
                "restore_s": restore[0],
                "restore_cpu_s": restore[1],
            }
        )
        del r, data
        gc.collect()
    return out


def targets(
    rows: list[dict[str, Any]], paired: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The engine's targets, from this run's figures: compiled >= 30x the reference
    twin in batch; ns per decision at the largest size <= 2x the figure at 1 000
    (batch, and single calls for comparison); <= 48 bytes per tracked recipient
    at the largest size. The targets name 10 M tracked recipients: --quick stops
    at 1 M, so its figures only indicate.

    With ``paired`` (from :func:`side_by_side`), the size ratios are its medians:
    both sizes timed in alternating turns. Without, they come from ``rows``, the
    sizes timed one after the other."""
    first, last = rows[0], rows[-1]
    out: list[dict[str, Any]] = []
    ratios = [r["batch_ratio_cpu"] for r in rows if "batch_ratio_cpu" in r]
    if ratios:
        out.append(
            {
                "target": "compiled / reference, batch (lowest size)",
                "limit": ">= 30",
                "value": min(ratios),
                "met": min(ratios) >= 30,
            }
        )
    for kind in ("batch", "single"):
        key = f"compiled_{kind}_cpu_ns"
        if paired and paired.get("big") == last["tracked_recipients"]:
            v = paired[f"{kind}_ratio_median"]
            how = ", side by side"
        elif key in first and key in last:
            v = last[key] / first[key]
            how = ""
        else:
            continue
        out.append(
            {
                "target": f"{kind} ns/decision at {last['tracked_recipients']:,} / at "
                f"{first['tracked_recipients']:,}{how}",
                "limit": "<= 2",
                "value": v,
                "met": v <= 2,
            }
        )
    if "compiled_bytes_per_recipient" in last:
        v = last["compiled_bytes_per_recipient"]
        out.append(
            {
                "target": f"bytes per tracked recipient at {last['tracked_recipients']:,}",
                "limit": "<= 48",
                "value": v,
                "met": v <= 48,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    _common.exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes; finishes in < 60 s")
    ap.add_argument("--results-dir", type=Path, default=None, help="where engine.json goes")
    args = ap.parse_args(argv)

    _common.print_machine()
    check_dict_engine()
    started = time.monotonic()
    sizes = [1_000, 100_000, 1_000_000] if args.quick else [1_000, 1_000_000, 10_000_000]
    rows = [measure_size(n, args.quick) for n in sizes]
    paired = side_by_side(sizes[0], sizes[-1], 3 if args.quick else 5, 1_000_000)
    snaps = measure_snapshots(args.quick)

    headers = [
        "tracked",
        "compiled decide/s",
        "python decide/s",
        "ratio",
        "dict decide/s",
        "compiled batch/s",
        "python batch/s",
        "ratio",
        "dict batch/s",
        "ratio vs dict",
        "ns/decision (batch, CPU)",
        "RSS B/recipient (compiled)",
        "RSS B/recipient (python)",
        "B/recipient (dict, traced)",
    ]
    table = [
        [
            r["tracked_recipients"],
            r.get("compiled_single_per_cpu_s"),
            r.get("python_single_per_cpu_s"),
            r.get("single_ratio_cpu"),
            r.get("dict_single_per_cpu_s"),
            r.get("compiled_batch_per_cpu_s"),
            r.get("python_batch_per_cpu_s"),
            r.get("batch_ratio_cpu"),
            r.get("dict_batch_per_cpu_s"),
            r.get("batch_ratio_dict_cpu"),
            r.get("compiled_batch_cpu_ns"),
            r.get("compiled_bytes_per_recipient"),
            r.get("python_bytes_per_recipient"),
            r.get("dict_bytes_per_recipient"),
        ]
        for r in rows
    ]
    _common.print_table(
        f"decision engine: single decide and decide_batch({BATCH}), counted template sends "
        "(decisions per CPU second of this process, steady on a shared box; wall-clock "
        "figures are in the JSON; ratio = compiled / python reference twin; dict = a "
        "plain-dict Python implementation of the same checks)",
        headers,
        table,
    )
    _common.print_table(
        "snapshot / restore (seconds, wall and CPU)",
        ["engine", "entries", "MB", "snapshot s", "CPU s", "restore s", "CPU s"],
        [
            [
                s["engine"],
                s["entries"],
                s["bytes"] / 1e6,
                s["snapshot_s"],
                s["snapshot_cpu_s"],
                s["restore_s"],
                s["restore_cpu_s"],
            ]
            for s in snaps
        ],
    )
    if paired:
        _common.print_table(
            f"compiled engine at {sizes[0]:,} and {sizes[-1]:,} tracked recipients, side by "
            "side (alternating turns in one process; CPU ns per decision, each round)",
            ["round", f"batch {sizes[0]:,}", f"batch {sizes[-1]:,}", "ratio", "single ratio"],
            [
                [
                    i + 1,
                    x[f"batch_ns_{sizes[0]}"],
                    x[f"batch_ns_{sizes[-1]}"],
                    x["batch_ratio"],
                    x["single_ratio"],
                ]
                for i, x in enumerate(paired["rounds"])
            ]
            + [
                [
                    "median",
                    paired[f"batch_ns_{sizes[0]}_median"],
                    paired[f"batch_ns_{sizes[-1]}_median"],
                    paired["batch_ratio_median"],
                    paired["single_ratio_median"],
                ]
            ],
        )
    goals = targets(rows, paired)
    _common.print_table(
        "targets (ratios from this run)",
        ["target", "limit", "measured", "met"],
        [[g["target"], g["limit"], g["value"], "yes" if g["met"] else "NO"] for g in goals],
    )
    path = _common.write_results(
        "engine",
        {
            "mode": "quick" if args.quick else "full",
            "seconds": time.monotonic() - started,
            "batch_size": BATCH,
            "workload": "counted template sends; 90 % repeats of tracked recipients, "
            "10 % new ones; clock +1 ms per decision; limit unlimited",
            "sizes": rows,
            "side_by_side": paired,
            "snapshots": snaps,
            "targets": goals,
        },
        args.results_dir,
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
