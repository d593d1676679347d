"""``tiergate plan``: the summary, the schedule CSV and the plot, from a sidecar
served on another thread (the CLI runs its own event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import SENDER, T0, make_config, sender

from tiergate import cli
from tiergate.server import Sidecar


@contextlib.contextmanager
def sidecar_thread(**overrides: Any) -> Iterator[str]:
    ready = threading.Event()
    held: dict[str, Any] = {}

    async def main() -> None:
        sidecar = Sidecar(make_config(**overrides))
        await sidecar.start()
        held.update(port=sidecar.port, loop=asyncio.get_running_loop(), stop=asyncio.Event())
        ready.set()
        await held["stop"].wait()
        await sidecar.stop(0.5)

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    try:
        assert ready.wait(10)
        yield f"127.0.0.1:{held['port']}"
    finally:
        if "loop" in held:
            held["loop"].call_soon_threadsafe(held["stop"].set)
        thread.join(10)


def test_plan_prints_the_summary_and_writes_the_schedule_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = tmp_path / "recipients.csv"
    rows = ["phone", *[f"4477009{i:05d}" for i in range(300)], "", "12025550143"]
    listed.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out, png = tmp_path / "schedule.csv", tmp_path / "plan.png"
    with sidecar_thread(senders=(sender(throughput_mps=20),)) as target:
        code = cli.main(
            [
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
                "--target",
                target,
                "--out",
                str(out),
                "--plot",
                str(png),
            ]
        )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "recipients       301" in text
    assert "go at the start  250 (held by nothing but pacing)" in text  # TIER_250
    assert "never            NOT_DELIVERED_TO_REGION 1" in text
    with out.open(newline="", encoding="utf-8") as f:
        schedule = list(csv.DictReader(f))
    assert len(schedule) == 301 and schedule[0]["recipient"] == "447700900000"
    assert schedule[-1]["earliest_at_utc"] == "never"
    assert int(schedule[0]["earliest_at_unix_ms"]) == T0
    late = [r for r in schedule[250:300]]
    assert all(int(r["earliest_at_unix_ms"]) >= T0 + 24 * 3_600_000 for r in late)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_against_no_sidecar_fails_with_the_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = tmp_path / "r.csv"
    listed.write_text("447700900001\n", encoding="utf-8")
    args = ["plan", SENDER, str(listed), "--target", "127.0.0.1:1", "--timeout", "1"]
    assert cli.main(args) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
