"""Run every benchmark, then write ``benchmarks/results/summary.json`` and the chart.

``make bench`` runs ``benchmarks/run_all.py --quick`` (a few minutes on 2
cores); ``make bench-full`` runs it without ``--quick``. Each script runs in
its own process, in this order, if it exists: ceiling, load, peers, engine,
growth, memory, durability, batchpath, plan, state_growth, redis_store,
redis_memory (the last two print why and skip without redis-server). The chart
(``docs/performance.png``) shows throughput and p99 at half load per gRPC
shape, tiergate next to the no-op ceiling of the same run.

    .venv/bin/python benchmarks/run_all.py --quick
    .venv/bin/python benchmarks/run_all.py --only load,peers
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import _report

ORDER = (
    "ceiling",
    "load",
    "peers",
    "engine",
    "growth",
    "memory",
    "durability",
    "batchpath",
    "plan",
    "state_growth",
    "redis_store",
    "redis_memory",
)
MINE = {
    "ceiling",
    "load",
    "peers",
    "memory",
    "batchpath",
    "plan",
    "state_growth",
    "redis_store",
    "redis_memory",
}  # scripts that take --tiny (all take --results-dir)
#: scripts whose results the headline reshapes (the others' are copied whole)
SHAPED = {"ceiling", "load", "peers", "state_growth"}
CHART = _common.REPO_ROOT / "docs" / "performance.png"


def script_args(name: str, mode: str, results_dir: Path | None) -> list[str]:
    args: list[str] = []
    if mode == "tiny":
        args.append("--tiny" if name in MINE else "--quick")
    elif mode == "quick":
        args.append("--quick")
    if results_dir is not None:
        args += ["--results-dir", str(results_dir)]
    return args


def run_script(name: str, args: list[str], timeout: float) -> dict[str, Any]:
    path = _common.BENCH_DIR / f"{name}.py"
    cmd = [sys.executable, str(path), *args]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    try:
        rc = subprocess.run(
            cmd,
            cwd=_common.REPO_ROOT,
            timeout=timeout,
            check=False,
            preexec_fn=_common.die_with_parent(),
        ).returncode
    except subprocess.TimeoutExpired:
        rc = -1
        print(f"=== {name}: stopped after {timeout:.0f} s", flush=True)
    seconds = time.monotonic() - t0
    print(f"=== {name}: exit {rc} after {seconds:.0f} s", flush=True)
    return {"command": " ".join(["python", *cmd[1:]]), "exit_code": rc, "seconds": seconds}


def _load(path: Path, since: float) -> dict[str, Any] | None:
    """A result file written by this run (older files are ignored)."""
    if not path.exists() or path.stat().st_mtime < since:
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures docs/performance.md quotes, gathered from the scripts' results."""
    out: dict[str, Any] = {}
    load = results.get("load")
    if load:
        shapes = {}
        for name, rep in load["shapes"].items():
            runs, cmp_ = rep["runs"], rep["compare"]
            entry = {
                "label": rep["label"],
                "noop_calls_per_s": runs["ceiling_max"]["calls_per_s"],
                "noop_items_per_s": runs["ceiling_max"]["items_per_s"],
                "tiergate_calls_per_s": runs["tiergate_max"]["calls_per_s"],
                "tiergate_items_per_s": runs["tiergate_max"]["items_per_s"],
                "items_ratio": cmp_["items_ratio"],
                "items_ratio_vs_batch_ceiling": cmp_.get("items_ratio_vs_batch_ceiling"),
                "tiergate_server_cpu_s": runs["tiergate_max"].get("server_cpu_seconds"),
                "noop_server_cpu_s": runs["ceiling_max"].get("server_cpu_seconds"),
                "tiergate_items": runs["tiergate_max"]["items"],
                "noop_items": runs["ceiling_max"]["items"],
                "noop_seconds": runs["ceiling_max"]["seconds"],
                "tiergate_seconds": runs["tiergate_max"]["seconds"],
                "decisions_sampled": runs["tiergate_max"]["decisions"],
            }
            for side in ("ceiling", "tiergate"):
                fixed = runs.get(f"{side}_fixed")
                if fixed:
                    lat = fixed["latency"]
                    entry[f"{side}_half_load"] = {
                        "calls_per_s": fixed["calls_per_s"],
                        "p50_ms": lat.get("p50_ms"),
                        "p99_ms": lat.get("p99_ms"),
                        "p999_ms": lat.get("p999_ms"),
                    }
            entry["p99_half_load_ratio"] = cmp_.get("p99_half_load_ratio")
            entry["targets"] = cmp_.get("targets", {})
            shapes[name] = entry
        out["grpc"] = shapes
        loads = [
            r["load_average"]
            for rep in load["shapes"].values()
            for r in rep["runs"].values()
            if "load_average" in r
        ]
        if loads:
            out["grpc_load_average"] = {"min": min(loads), "max": max(loads)}
    peers = results.get("peers")
    if peers:
        out["peers"] = {
            f["name"]: {
                "decisions_per_s": f["decisions_per_s"],
                "decisions_per_cpu_s": f["decisions_per_cpu_s"],
                "decisions_per_total_cpu_s": f["decisions_per_total_cpu_s"],
            }
            for f in peers["figures"]
        }
        out["peers_ratios_vs_redis_per_core"] = peers["ratios_vs_redis_per_core"]
        out["peers_target"] = peers.get("target")
    for name in ORDER:
        if name in SHAPED:
            continue
        data = results.get(name)
        if data:
            out[name] = {k: v for k, v in data.items() if k not in ("benchmark", "machine")}
    ceiling = results.get("ceiling")
    if ceiling:
        out["ceiling"] = {
            name: {
                "calls_per_s": r["calls_per_s"],
                "items_per_s": r["items_per_s"],
                "p99_ms": r["latency"].get("p99_ms"),
            }
            for name, r in ceiling["shapes"].items()
        }
    return out


def chart(summary: dict[str, Any], path: Path) -> Path | None:
    """Throughput and p99 at half load per shape, tiergate next to the no-op ceiling."""
    grpc = summary.get("headline", {}).get("grpc")
    if not grpc:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [v["label"] for v in grpc.values()]
    xs = list(range(len(labels)))
    w = 0.38
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    noop = [v["noop_items_per_s"] for v in grpc.values()]
    tg = [v["tiergate_items_per_s"] for v in grpc.values()]
    ax1.bar([x - w / 2 for x in xs], noop, w, label="no-op ceiling", color="#b0b0b0")
    ax1.bar([x + w / 2 for x in xs], tg, w, label="tiergate", color="#2a7ab9")
    for x, n, t in zip(xs, noop, tg, strict=True):
        ax1.annotate(f"{t / n:.0%}" if n else "-", (x + w / 2, t), ha="center", va="bottom")
    ax1.set_yscale("log")
    ax1.set_ylabel("decisions / s (log scale)")
    ax1.set_title("Throughput at full load (label: tiergate / ceiling)")
    ax1.set_xticks(xs, labels, rotation=20, ha="right")
    ax1.legend()

    def p99(v: dict[str, Any], side: str) -> float:
        return float(v.get(f"{side}_half_load", {}).get("p99_ms") or 0.0)

    noop_p = [p99(v, "ceiling") for v in grpc.values()]
    tg_p = [p99(v, "tiergate") for v in grpc.values()]
    ax2.bar([x - w / 2 for x in xs], noop_p, w, label="no-op ceiling", color="#b0b0b0")
    ax2.bar([x + w / 2 for x in xs], tg_p, w, label="tiergate", color="#2a7ab9")
    ax2.set_yscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax2.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax2.yaxis.set_major_formatter(ScalarFormatter())
    ax2.yaxis.set_minor_formatter(NullFormatter())
    ax2.set_ylabel("p99 latency, ms (log scale)")
    ax2.set_title("p99 at 50 % of tiergate's maximum rate (same rate for both)")
    ax2.set_xticks(xs, labels, rotation=20, ha="right")
    ax2.legend()
    m = summary.get("machine", {})
    la = summary.get("headline", {}).get("grpc_load_average")
    busy = f"; load average {la['min']:.1f}–{la['max']:.1f}" if la else ""
    fig.suptitle(
        f"tiergate vs a no-op grpc.aio+uvloop server — {m.get('cores')} cores, "
        f"{m.get('cpu_model')}, client and server on one box, engine {m.get('engine')}{busy}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    _common.exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (make bench)")
    parser.add_argument("--tiny", action="store_true", help="smallest runs: proves it all works")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--results-dir", help="where result JSON files go")
    parser.add_argument("--chart", default=str(CHART), help="PNG path ('' for none)")
    args = parser.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    wanted = [s.strip() for s in args.only.split(",")] if args.only else list(ORDER)
    unknown = [s for s in wanted if s not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(ORDER)}")
    results_dir = Path(args.results_dir) if args.results_dir else _common.RESULTS_DIR
    timeout = {"tiny": 300.0, "quick": 900.0, "full": 3600.0}[mode]
    _common.print_machine()
    started = time.time()
    runs: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    for name in ORDER:
        if name not in wanted:
            continue
        if not (_common.BENCH_DIR / f"{name}.py").exists():
            runs[name] = {"skipped": "script not present"}
            continue
        runs[name] = run_script(name, script_args(name, mode, results_dir), timeout)
        data = _load(results_dir / f"{name}.json", started)
        if data is not None:
            results[name] = data
            runs[name]["results"] = str(results_dir / f"{name}.json")
    summary = {
        "mode": mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "runs": runs,
        "headline": headline(results),
    }
    path = _common.write_results("summary", summary, results_dir)
    summary["machine"] = _common.machine_info()
    png = chart(summary, Path(args.chart)) if args.chart else None
    md = results_dir / "summary.md"
    md.write_text(_report.markdown(summary), encoding="utf-8")
    print()
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {path}, {md}" + (f" and {png}" if png else ""))
    failed = [n for n, r in runs.items() if r.get("exit_code", 0) != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
