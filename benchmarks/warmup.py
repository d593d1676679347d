"""What a number in warm-up costs per decision: its own count next to none, in one run.

Two engines of the implementation in use, alike but for one thing: in the
second the sending number is in warm-up (``set_warmup``, a cap that never
binds), so every counting send also looks up, and moves, the recipient in the
number's own count and ring. Both decide the same ``decide_batch`` batches of
1 000 counted template sends, in alternating turns in this one process (which
engine goes first alternates too), so that both meet the same moments of a
shared machine. Two workloads: ``pool``, 750 recipients sent to again and
again (a number at the largest shipped warm-up cap); ``new``, a new recipient
every send, far past any cap (its own table keeps growing: the worst case).
Prints CPU ns per decision and the ratio; writes ``benchmarks/results/warmup.json``.

    .venv/bin/python benchmarks/warmup.py --quick     # < 30 s
    .venv/bin/python benchmarks/warmup.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _common

from tiergate.engine import IMPLEMENTATION, DecisionBatch, Engine
from tiergate.engine import constants as c

T0 = 1_780_000_000_000
BATCH = 1_000
TURN = 20  # batches per turn
POOL = 750
FIRST_KEY = c.recipient_key("15550000000")


def engine(warm: bool) -> Any:
    e = Engine()
    e.add_scope()
    e.add_number(0, 1, 1 << 30, 1, 1 << 20)  # throughput and pair rate wide open
    if warm:
        e.set_warmup(0, 10**12)
    return e


def batch(now: int, keys: array[int]) -> DecisionBatch:
    n = len(keys)
    b = DecisionBatch()
    b.now = array("q", range(now, now + n))
    b.scope = array("i", [0]) * n
    b.number = array("i", [0]) * n
    b.recipient = keys
    b.flags = array("I", [c.F_TEMPLATE]) * n
    b.limit = array("q", [c.UNLIMITED]) * n
    b.ticket = array("Q", range(1, n + 1))
    return b


def keys_for(workload: str, start: int, n: int) -> array[int]:
    if workload == "pool":
        return array("Q", (FIRST_KEY + (start + i) % POOL for i in range(n)))
    return array("Q", range(FIRST_KEY + start, FIRST_KEY + start + n))


def measure(workload: str, rounds: int, decisions: int) -> dict[str, Any]:
    engines = {"plain": engine(False), "warm-up": engine(True)}
    now = T0
    turn = TURN * BATCH
    out: dict[str, Any] = {"workload": workload, "rounds": []}
    sent = 0
    for r in range(rounds):
        cpu = dict.fromkeys(engines, 0.0)
        for t in range(max(1, decisions // turn)):
            batches = [
                batch(now + j * BATCH, keys_for(workload, sent + j * BATCH, BATCH))
                for j in range(TURN)
            ]
            # the same batches for both (decide_batch only writes their outputs)
            for name in list(engines) if (r + t) % 2 == 0 else list(engines)[::-1]:
                start = time.process_time()
                for b in batches:
                    engines[name].decide_batch(b)
                cpu[name] += time.process_time() - start
            sent += turn
            now += turn
        done = max(1, decisions // turn) * turn
        row = {f"{name}_ns": cpu[name] / done * 1e9 for name in engines}
        row["ratio"] = row["warm-up_ns"] / row["plain_ns"]
        out["rounds"].append(row)
    for key in ("plain_ns", "warm-up_ns", "ratio"):
        out[f"{key}_median"] = statistics.median(x[key] for x in out["rounds"])
    usage = engines["warm-up"].warmup_usage(0, now)
    out["warmup_count"] = usage[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer decisions; < 30 s")
    ap.add_argument("--decisions", type=int, default=0, help="per engine and round")
    args = ap.parse_args(argv)
    decisions = args.decisions or (100_000 if args.quick else 1_000_000)
    rounds = 3 if args.quick else 5
    _common.print_machine()
    results = [measure(w, rounds, decisions) for w in ("pool", "new")]
    _common.print_table(
        f"decide_batch, CPU ns per decision ({IMPLEMENTATION} engine; medians of {rounds} rounds)",
        ["workload", "plain", "in warm-up", "ratio"],
        [
            [r["workload"], r["plain_ns_median"], r["warm-up_ns_median"], r["ratio_median"]]
            for r in results
        ],
    )
    path = _common.write_results(
        "warmup",
        {
            "implementation": IMPLEMENTATION,
            "mode": "quick" if args.quick else "full",
            "decisions": decisions,
            "results": results,
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
