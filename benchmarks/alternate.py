"""Side-by-side rounds: the no-op server and one or more tiergate builds, in turns.

``load.py`` compares tiergate with the no-op ceiling in one run; on a shared
machine a change of a few percent hides in the spread between runs. This
script alternates short rounds of one shape against the no-op server and
against each tiergate variant (another checkout's ``src`` directory, built,
or the same code without a data directory), so every variant sees the same
minutes of the machine, and reports medians over the rounds:

    .venv/bin/python benchmarks/alternate.py --shape unary --rounds 16 \\
        --variant before=/path/to/other/checkout/src --variant after=src
    .venv/bin/python benchmarks/alternate.py --shape stream8 --in-memory-too
    .venv/bin/python benchmarks/alternate.py --variant interval=src \
        --variant 'write=src --durability=write'

Server CPU per call (user + system of the server process, all threads) is
the figure least moved by other work on the machine. Prints a table and
writes ``benchmarks/results/alternate.json``. Talks only to 127.0.0.1; every
round is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import _grpcload
import _traffic
import ceiling
import load


@dataclass(frozen=True)
class Variant:
    label: str
    src: Path
    serve_args: tuple[str, ...] = ()
    in_memory: bool = False


def parse_variant(text: str) -> Variant:
    """``LABEL=SRC_DIR`` then, optionally, ``tiergate serve`` flags after spaces."""
    head, *serve_args = shlex.split(text)
    label, sep, src = head.partition("=")
    if not sep or not label or not src:
        raise argparse.ArgumentTypeError(
            f"--variant: expected LABEL=SRC_DIR [SERVE FLAGS], got {text!r}"
        )
    path = Path(src).resolve()
    if not (path / "tiergate" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"--variant {label}: {path} holds no tiergate package")
    return Variant(label, path, tuple(serve_args))


def imported_from(src: Path) -> str:
    """Where ``tiergate`` resolves with ``src`` first on PYTHONPATH (checked, not assumed)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", "import tiergate, tiergate.engine as e; print(tiergate.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = _grpcload.SHAPES[args.shape]
    settings = {
        "clients": args.clients or _grpcload.default_clients(),
        "duration": args.duration,
        "max_calls": 10**9,
        "warmup": args.warmup,
        "pages": 2,
    }
    variants: list[Variant] = list(args.variant) or [Variant("tiergate", _common.REPO_ROOT / "src")]
    if args.in_memory_too:
        last = variants[-1]
        variants.append(replace(last, label=f"{last.label} (no data dir)", in_memory=True))
    if len({v.label for v in variants}) < len(variants):
        raise SystemExit("--variant: every label must be different")
    for v in variants:
        where = imported_from(v.src)
        if not where.startswith(str(v.src)):
            raise SystemExit(
                f"--variant {v.label}: tiergate resolves to {where}, not under {v.src}"
            )
    tags = [f"{shape.name}-alt{i}-" for i in range(args.rounds)]
    rows: dict[str, list[tuple[float, float]]] = {"no-op": []}
    saved = os.environ.get("PYTHONPATH")
    with contextlib.ExitStack() as stack:
        noop = stack.enter_context(ceiling.noop_server())
        servers = []
        for v in variants:
            os.environ["PYTHONPATH"] = str(v.src)
            server = load.tiergate_server(tags, settings["clients"], v.serve_args, v.in_memory)
            servers.append((v.label, stack.enter_context(server)))
            rows[v.label] = []
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        for i, tag in enumerate(tags):
            r = load._run(
                noop.target, shape, settings, tag, _traffic.noop_workload, cpu_of=noop.cpu_seconds
            )
            rows["no-op"].append(_figures(r))
            for label, server in servers:
                r = load._run(
                    server.target,
                    shape,
                    settings,
                    tag,
                    _traffic.tiergate_workload,
                    cpu_of=server.cpu_seconds,
                )
                rows[label].append(_figures(r))
            line = ", ".join(f"{k} {v[-1][0]:,.0f}/s {v[-1][1]:.1f} µs" for k, v in rows.items())
            print(f"round {i + 1}: {line}; load {os.getloadavg()[0]:.1f}", flush=True)
    return summarize(rows)


def _figures(r: _grpcload.RunResult) -> tuple[float, float]:
    if r.errors or not r.calls or r.server_cpu_seconds is None:
        raise RuntimeError(f"{r.label}: {r.errors} errors in {r.calls} calls {r.error_sample}")
    return r.items_per_s, r.server_cpu_seconds / r.calls * 1e6


def summarize(rows: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """Medians per side, and each variant's throughput over the no-op's, round by round."""
    base = rows["no-op"]
    out: dict[str, Any] = {}
    for label, values in rows.items():
        ratios = [v[0] / b[0] for v, b in zip(values, base, strict=True)]
        out[label] = {
            "items_per_s_median": statistics.median(v[0] for v in values),
            "server_cpu_us_per_call_median": statistics.median(v[1] for v in values),
            "ratio_to_noop_median": statistics.median(ratios),
            "rounds": [{"items_per_s": v[0], "server_cpu_us_per_call": v[1]} for v in values],
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    _common.exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(_grpcload.SHAPES), default="unary")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per round and side")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument(
        "--clients", type=int, default=0, help="client processes (default: cores - 1)"
    )
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        metavar="'LABEL=SRC_DIR [SERVE FLAGS]'",
        help="a tiergate build to alternate with, and flags for its tiergate serve "
        "(repeatable; default: this checkout)",
    )
    parser.add_argument(
        "--in-memory-too", action="store_true", help="also the last variant without a data dir"
    )
    parser.add_argument("--tiny", action="store_true", help="smallest run: proves it works")
    parser.add_argument("--results-dir")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rounds, args.duration, args.warmup = 1, 0.3, 0.1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    _common.print_machine()
    result = run(args)
    _common.print_table(
        f"{args.shape}: {args.rounds} alternating rounds of {args.duration:g} s (medians)",
        ["server", "items/s", "server CPU µs per call", "throughput / no-op"],
        [
            [
                label,
                r["items_per_s_median"],
                r["server_cpu_us_per_call_median"],
                r["ratio_to_noop_median"],
            ]
            for label, r in result.items()
        ],
    )
    settings = {k: getattr(args, k) for k in ("shape", "rounds", "duration", "warmup", "clients")}
    path = _common.write_results(
        "alternate",
        {
            "settings": settings,
            "variants": {
                v.label: {"src": str(v.src), "serve_args": list(v.serve_args)} for v in args.variant
            },
            "servers": result,
        },
        Path(args.results_dir) if args.results_dir else None,
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
