"""``tiergate plan SENDER recipients.csv``: a campaign's schedule from the sidecar.

Reads the recipients (first column of the CSV, one a row, in send order; a
header row and blank rows are skipped), asks PlanCampaign for their plan (in
calls of 100 000, each carrying the plan on), prints the summary, writes the
schedule as CSV (``--out``) and, with ``--plot``, a chart of the unique
recipients used against the limit over the campaign's hours (matplotlib, the
``plot`` extra).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from tiergate.engine.constants import recipient_key
from tiergate.v1 import admission_pb2 as pb

__all__ = ["format_plan", "read_recipients", "write_plot", "write_schedule"]

CATEGORIES = ("MARKETING", "UTILITY", "AUTHENTICATION", "SERVICE")


def read_recipients(path: Path) -> list[str]:
    """The first cell of each row; a first row that is no recipient is a header."""
    out: list[str] = []
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f)):
            cell = row[0].strip() if row else ""
            if not cell:
                continue
            if n == 0:
                try:
                    recipient_key(cell)
                except ValueError:
                    continue  # a header
            out.append(cell)
    return out


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _when(ms: int) -> str:
    return f"{_utc(ms)} UTC" if ms > 0 else "-"


def format_plan(res: pb.PlanCampaignResponse, n: int, hours: int = 48) -> str:
    """The summary: what goes at the start, when the limit is reached, when the list
    completes, what never goes, and the sends of the first ``hours`` hours."""
    never = sum(c.count for c in res.never_by_reason)
    rows = [
        ("recipients", f"{n:,}"),
        ("start", _when(res.start_at_unix_ms)),
        ("go at the start", f"{res.admissible_now:,} (held by nothing but pacing)"),
        ("limit reached", _when(res.limit_reached_at_unix_ms)),
        ("completes", _when(res.completes_at_unix_ms)),
        ("planned", f"{n - never:,}"),
        (
            "never",
            ", ".join(f"{pb.Reason.Name(c.reason)} {c.count:,}" for c in res.never_by_reason)
            or "-",
        ),
    ]
    lines = [f"{k:<16} {v}" for k, v in rows]
    if res.hours:
        lines += ["", f"{'hour (UTC)':<17} {'sends':>9} {'used':>9} {'limit':>9}"]
        for h in res.hours[:hours]:
            stamp = _utc(h.hour_start_unix_ms)[:16]
            lines.append(f"{stamp:<17} {h.sends:>9,} {h.used:>9,} {h.limit:>9,}")
        if len(res.hours) > hours:
            lines.append(f"... {len(res.hours) - hours} more hours with sends")
    return "\n".join(lines)


def write_schedule(path: Path, recipients: Iterable[str], times: Iterable[int]) -> None:
    """recipient, earliest_at_unix_ms (0: never), earliest_at_utc ("never")."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["recipient", "earliest_at_unix_ms", "earliest_at_utc"])
        for rcpt, t in zip(recipients, times, strict=True):
            w.writerow([rcpt, t, _utc(t) if t else "never"])


def write_plot(path: Path, res: pb.PlanCampaignResponse, title: str) -> None:
    """Unique recipients used against the limit, and the sends, per campaign hour."""
    import matplotlib  # imported on use: the ``plot`` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = res.hours[0].hour_start_unix_ms if res.hours else res.start_at_unix_ms
    x = [(h.hour_start_unix_ms - start) / 3_600_000 for h in res.hours]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(x, [h.sends for h in res.hours], width=0.9, color="#b8d4ea", label="sends in the hour")
    used = [h.used for h in res.hours]
    ax.step(x, used, where="post", color="#1f77b4", marker="o", label="used (24 h), last send")
    ax.step(x, [h.limit for h in res.hours], where="post", color="#d62728", label="limit")
    ax.set_xlabel(f"hours since {_utc(start)[:16]} UTC")
    ax.set_ylabel("recipients")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sender", metavar="SENDER", help="sender id (phone number id)")
    p.add_argument("recipients", metavar="RECIPIENTS.csv", type=Path, help="one a row, in order")
    p.add_argument("--template", default="campaign", help="template id or name")
    p.add_argument("--category", default="MARKETING", choices=CATEGORIES, type=str.upper)
    p.add_argument("--start-at-unix-ms", type=int, default=0, help="campaign start (0: now)")
    p.add_argument("--out", metavar="FILE.csv", type=Path, help="write the schedule here")
    p.add_argument("--plot", metavar="FILE.png", type=Path, help="draw used vs limit per hour")


def report(args: argparse.Namespace, times: list[int], res: pb.PlanCampaignResponse) -> int:
    """Print the summary; write the schedule and the plot when asked."""
    recipients = args.recipient_list
    print(f"{'sender':<16} {args.sender}")
    print(f"{'template':<16} {args.template} ({args.category})")
    print(format_plan(res, len(recipients)))
    if args.out:
        write_schedule(args.out, recipients, times)
        print(f"\nschedule written to {args.out}")
    if args.plot:
        try:
            write_plot(args.plot, res, f"{args.sender}: {len(recipients):,} recipients")
        except ImportError:
            print("tiergate: --plot needs matplotlib (pip install tiergate[plot])", file=sys.stderr)
            return 1
        print(f"plot written to {args.plot}")
    return 0
