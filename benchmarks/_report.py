"""Markdown tables from ``summary.json``: what docs/performance.md quotes, generated."""

from __future__ import annotations

from typing import Any

from _common import fmt


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _per_item_us(cpu_s: float | None, items: int | None) -> float | None:
    if cpu_s is None or not items:
        return None
    return cpu_s / items * 1e6


def markdown(summary: dict[str, Any]) -> str:
    head = summary.get("headline", {})
    parts: list[str] = []
    m = summary.get("machine", {})
    parts.append(
        f"Machine: {m.get('cores')} cores ({m.get('cpu_model')}), Python {m.get('python')}, "
        f"grpcio {m.get('grpcio')}, protobuf {m.get('protobuf')} ({m.get('protobuf_backend')}), "
        f"uvloop {m.get('uvloop')}, Cython {m.get('cython')}, engine {m.get('engine')}; "
        f"mode {summary.get('mode')}, run at {summary.get('started_at')}."
    )
    grpc = head.get("grpc")
    la = head.get("grpc_load_average")
    if la:
        parts.append(
            f"1-minute load average at the end of the gRPC runs: {la['min']:.1f} to "
            f"{la['max']:.1f} (2 cores: above 2 means other work competed for the CPU)."
        )
    if grpc:
        rows = []
        for v in grpc.values():
            cpu = v.get("tiergate_server_cpu_s")
            secs = v.get("tiergate_seconds")
            rows.append(
                [
                    v["label"],
                    v["noop_calls_per_s"],
                    v["noop_items_per_s"],
                    v["tiergate_calls_per_s"],
                    v["tiergate_items_per_s"],
                    _pct(v["items_ratio"]),
                    cpu / secs if cpu is not None and secs else None,
                ]
            )
        parts.append(
            "Throughput at full load (best round; same run, same machine):\n\n"
            + _table(
                [
                    "shape",
                    "no-op calls/s",
                    "no-op decisions/s",
                    "tiergate calls/s",
                    "tiergate decisions/s",
                    "tiergate / no-op",
                    "tiergate server cores busy",
                ],
                rows,
            )
        )
        for v in grpc.values():
            if v.get("items_ratio_vs_batch_ceiling") is not None:
                parts.append(
                    f"{v['label']} against the no-op AdmitBatch of the same size: "
                    f"{_pct(v['items_ratio_vs_batch_ceiling'])} of its decisions/s."
                )
        rows = []
        for v in grpc.values():
            noop_us = _per_item_us(v.get("noop_server_cpu_s"), v.get("noop_items"))
            tg_us = _per_item_us(v.get("tiergate_server_cpu_s"), v.get("tiergate_items"))
            ratio = noop_us / tg_us if noop_us and tg_us else None
            rows.append([v["label"], noop_us, tg_us, ratio])
        parts.append(
            "Server CPU per decision (user + system time of the server process, all its "
            "threads, divided by decisions answered; less sensitive to other work on the "
            "machine than throughput):\n\n"
            + _table(
                ["shape", "no-op µs/decision", "tiergate µs/decision", "no-op / tiergate"], rows
            )
        )
        rows = []
        for v in grpc.values():
            c, t = v.get("ceiling_half_load", {}), v.get("tiergate_half_load", {})
            if not t:
                continue
            rows.append(
                [
                    v["label"],
                    t.get("calls_per_s"),
                    c.get("p50_ms"),
                    c.get("p99_ms"),
                    t.get("p50_ms"),
                    t.get("p99_ms"),
                    t.get("p999_ms"),
                    v.get("p99_half_load_ratio"),
                ]
            )
        if rows:
            parts.append(
                "Latency at a fixed rate of 50 % of tiergate's maximum (the same rate for "
                "both; ms, from each request's scheduled send time):\n\n"
                + _table(
                    [
                        "shape",
                        "calls/s",
                        "no-op p50",
                        "no-op p99",
                        "tiergate p50",
                        "tiergate p99",
                        "tiergate p99.9",
                        "p99 ratio",
                    ],
                    rows,
                )
            )
        rows = []
        for v in grpc.values():
            for what, chk in v.get("targets", {}).items():
                rows.append(
                    [
                        v["label"],
                        what,
                        chk["target"],
                        chk["ratio"],
                        "met" if chk["met"] else "missed",
                        chk.get("median_of_rounds"),
                    ]
                )
        if rows:
            parts.append(
                "Targets (measured: each side's best round; the median of the paired rounds "
                "shows how far one round may land from it):\n\n"
                + _table(
                    ["shape", "what", "target", "measured", "verdict", "median of rounds"], rows
                )
            )
    peers = head.get("peers")
    if peers:
        ratios = head.get("peers_ratios_vs_redis_per_core", {})
        rows = [
            [
                name,
                f["decisions_per_s"],
                f["decisions_per_cpu_s"],
                f["decisions_per_total_cpu_s"],
                ratios.get(name),
            ]
            for name, f in peers.items()
        ]
        parts.append(
            "The unique-recipient decision next to what users build today:\n\n"
            + _table(
                [
                    "implementation",
                    "decisions/s",
                    "per CPU-second",
                    "per CPU-second, all processes",
                    "x Redis per core",
                ],
                rows,
            )
        )
        target = head.get("peers_target")
        if target:
            verdict = "met" if target["met"] else "missed"
            parts.append(f"Target {target['what']}: {fmt(target['ratio'])}x, {verdict}.")
    return "\n\n".join(parts) + "\n"


# Where a py-spy sample of the tiergate server belongs, first match wins
# (matched against the whole stack, innermost first).
PROFILE_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("set-up feedback (not measured)", ("RecordFeedback",)),
    ("journal flusher thread (fsync)", ("IntervalFlusher",)),
    (
        "response messages (one per decision)",
        ("admit_response", "admit_columns_response", "AdmitBatch.<locals>.<listcomp>"),
    ),
    ("metrics", ("metrics.py",)),
    ("journal: encode + write (event loop)", ("store/", "_commit")),
    ("decision: policy + engine", ("policy/", "engine", "_decide")),
    ("gRPC handler code (Python)", ("servicer.py",)),
    ("other threads (grpc completion-queue poller, in C)", ("Thread._bootstrap",)),
    ("event loop: grpc core + protobuf (C)", ("Runner.run", "uvloop")),
)


def profile_breakdown(path: str) -> dict[str, float]:
    """Share of samples per bucket in a py-spy ``--format raw`` (collapsed stacks) file."""
    counts: dict[str, int] = {}
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, n_text = line.rstrip().rpartition(" ")
            if not n_text.isdigit():
                continue
            n = int(n_text)
            total += n
            frames = stack.split(";")
            bucket = "other"
            for name, markers in PROFILE_BUCKETS:
                if any(m in fr for fr in reversed(frames) for m in markers):
                    bucket = name
                    break
            counts[bucket] = counts.get(bucket, 0) + n
    if not total:
        return {}
    return {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
