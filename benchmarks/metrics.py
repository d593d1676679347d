"""What counting a decision costs: tiergate's counters next to prometheus-client's own.

tiergate bumps a slot of a list of integers per decision (and a chunk-size
histogram per engine crossing) and hands prometheus-client metric families only
at scrape time; the alternative is a prometheus-client ``Counter`` with
(decision, reason) labels and a ``Histogram`` with an rpc label, bumped per
decision. Both are timed in alternating rounds in one process, then the cost
of one scrape (``Metrics.render``) with every reason in use. Prints a table and
writes ``benchmarks/results/metrics.json``.

    .venv/bin/python benchmarks/metrics.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _common
from prometheus_client import CollectorRegistry, Counter, Histogram

from tiergate.policy.answers import AdmitResult
from tiergate.server.metrics import CHUNK_BUCKETS, REASON_SLOTS, Metrics


def per_call_ns(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - started) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--tiny", action="store_true", help="smallest run: proves it works")
    parser.add_argument("--results-dir", type=Path)
    args = parser.parse_args(argv)
    rounds, n = (1, 2_000) if args.tiny else (5, 50_000) if args.quick else (15, 200_000)

    ours = Metrics()
    result = AdmitResult(1, 0, 0, "", False, 0, 0, 0, "")
    registry = CollectorRegistry()
    decisions = Counter("d", "decisions", ["decision", "reason"], registry=registry)
    chunks = Histogram("c", "chunk sizes", ["rpc"], buckets=CHUNK_BUCKETS, registry=registry)

    def tiergate_counts() -> None:
        ours.decided_one(result, "Admit")

    def client_counts() -> None:
        decisions.labels("ADMIT", "OK").inc()
        chunks.labels("Admit").observe(1)

    samples: dict[str, list[float]] = {"tiergate counters": [], "prometheus-client metrics": []}
    for _ in range(rounds):  # alternating: both see the same minutes of the machine
        samples["tiergate counters"].append(per_call_ns(tiergate_counts, n))
        samples["prometheus-client metrics"].append(per_call_ns(client_counts, n))
    medians = {k: statistics.median(v) for k, v in samples.items()}

    full = Metrics()
    for reason in range(REASON_SLOTS):
        full.decided_one(AdmitResult(3, reason, 0, "", False, 0, 0, 0, ""), "Admit")
    scrape_us = statistics.median(per_call_ns(full.render, 200) for _ in range(rounds)) / 1000

    _common.print_machine()
    base = medians["tiergate counters"]
    _common.print_table(
        f"counting one Admit decision: median of {rounds} alternating rounds of {n:,}",
        ["counting", "ns per decision", "× tiergate's"],
        [[name, round(ns), round(ns / base, 1)] for name, ns in medians.items()],
    )
    print(f"one scrape (/metrics text, every reason in use): {scrape_us:,.0f} µs")
    path = _common.write_results(
        "metrics",
        {
            "rounds": rounds,
            "calls_per_round": n,
            "ns_per_decision_median": medians,
            "scrape_us_median": scrape_us,
        },
        args.results_dir,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
