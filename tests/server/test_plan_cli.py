"""``tiergate plan``: the summary, the schedule CSV and the plot (the CLI runs its
own event loop, in a thread beside the sidecar's)."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest
from server_harness import SENDER, T0, make_config, run_async, sender, serving

from tiergate import cli


def test_plan_prints_the_summary_and_writes_the_schedule_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = tmp_path / "recipients.csv"
    rows = ["phone", *[f"4477009{i:05d}" for i in range(300)], "", "12025550143"]
    listed.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out, png = tmp_path / "schedule.csv", tmp_path / "plan.png"
    args = [
        "plan",
        SENDER,
        str(listed),
        "--template",
        "promo",
        "--category",
        "marketing",
        "--at-unix-ms",
        str(T0),
        "--start-at-unix-ms",
        str(T0),
        "--out",
        str(out),
        "--plot",
        str(png),
    ]

    @run_async
    async def main() -> None:
        async with serving(make_config(senders=(sender(throughput_mps=20),))) as h:
            assert await asyncio.to_thread(cli.main, [*args, "--target", h.target]) == 0

    main()
    text = capsys.readouterr().out
    assert "recipients       301" in text
    assert "go at the start  250 (held by nothing but pacing)" in text  # TIER_250
    assert "never            NOT_DELIVERED_TO_REGION 1" in text
    with out.open(newline="", encoding="utf-8") as f:
        schedule = list(csv.DictReader(f))
    assert len(schedule) == 301 and schedule[0]["recipient"] == "447700900000"
    assert schedule[-1]["earliest_at_utc"] == "never"
    assert int(schedule[0]["earliest_at_unix_ms"]) == T0
    assert all(int(r["earliest_at_unix_ms"]) >= T0 + 24 * 3_600_000 for r in schedule[250:300])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_against_no_sidecar_fails_with_the_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = tmp_path / "r.csv"
    listed.write_text("447700900001\n", encoding="utf-8")
    args = ["plan", SENDER, str(listed), "--target", "127.0.0.1:1", "--timeout", "1"]
    assert cli.main(args) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
