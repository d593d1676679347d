"""``tiergate simulate``: the day-by-day table of a scenario on a virtual clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiergate.simulate import main

SCENARIO = """
profile = "meta-2024"
days = 3

[[senders]]
id = "s1"
display_phone_number = "15550001"
quality = "GREEN"

[[sends]]
sender = "s1"
day = 1
unique = 500

[[sends]]
sender = "s1"
day = 2
unique = 1200
hour = 10
spacing_ms = 20

[[events]]
day = 3
hour = 1
type = "sender_update"
id = "s1"
quality = "RED"

[[sends]]
sender = "s1"
day = 3
unique = 10
repeat = 5
"""


def run(tmp_path: Path, body: str, *args: str) -> tuple[int, list[str]]:
    path = tmp_path / "scenario.toml"
    path.write_text(body, encoding="utf-8")
    lines: list[str] = []
    code = main([str(path), *args], out=lines.append)
    return code, lines


def test_table_follows_the_rules(tmp_path: Path) -> None:
    code, lines = run(tmp_path, SCENARIO, "--json")
    assert code == 0
    rows = json.loads(lines[0])["rows"]
    day1, day2, day3 = rows
    assert (day1["sent"], day1["admitted"], day1["limit"], day1["tier"]) == (
        500,
        500,
        1000,
        "TIER_1K",
    )
    # 10 000 from 24 h after the 500th: day 2's 1 200 all pass.
    assert (day2["admitted"], day2["deferred"], day2["limit"], day2["tier"]) == (
        1200,
        0,
        10000,
        "TIER_10K",
    )
    assert day3["sent"] == 15 and day3["admitted"] == 15
    code, lines = run(tmp_path, SCENARIO)
    assert (
        code == 0 and "TIER_10K" in lines[-1] and lines[1].split()[:3] == ["day", "sender", "sent"]
    )


def test_bad_scenarios_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "days = 1\n")[0] == 2
    assert "senders" in capsys.readouterr().err
    bad = SCENARIO.replace('sender = "s1"\nday = 1', 'sender = "zz"\nday = 1')
    assert run(tmp_path, bad)[0] == 2
    assert "sends[0].sender" in capsys.readouterr().err
    assert run(tmp_path, 'profile = "nope"\ndays = 1\n')[0] == 2
    assert "no shipped profile" in capsys.readouterr().err


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "usage.png"
    code, _ = run(tmp_path, SCENARIO, "--plot", str(out))
    assert code == 0 and out.read_bytes()[:4] == b"\x89PNG"


def test_shipped_examples_run(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "scenarios"
    portfolio = root / "meta-2025-portfolio.toml"
    lines: list[str] = []
    assert main([str(portfolio), "--json"], out=lines.append) == 0
    rows = json.loads(lines[0])["rows"]
    # Both numbers share the portfolio limit; it rises only with Meta's UPGRADE (day 3).
    assert {r["tier"] for r in rows if r["day"] < 3} == {"TIER_250"}
    assert {r["tier"] for r in rows if r["day"] >= 3} == {"TIER_2K"}
    assert all(r["used"] <= r["limit"] for r in rows)
