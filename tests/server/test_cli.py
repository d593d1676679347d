"""The tiergate CLI in-process: check-config, simulate delegation, state formatting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiergate import cli
from tiergate.v1 import admission_pb2 as pb

REPO = Path(__file__).resolve().parents[2]


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config", str(REPO / "examples" / "tiergate.toml")]) == 0
    out = capsys.readouterr().out
    assert "config ok" in out
    assert "106540352242922" in out  # the sample senders apply cleanly


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--profile", "meta-1999"], "profile"),
        (["--listen", "localhost"], "listen"),
        (["--max-batch", "0"], "max_batch"),
        (["--durability", "never"], "durability"),
    ],
)
def test_check_config_rejects_with_the_key(
    args: list[str], key: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERGATE_CONFIG", raising=False)
    assert cli.main(["check-config", *args]) == 2
    assert f"{key}: " in capsys.readouterr().err


def test_check_config_env_overrides_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "t.toml"
    config.write_text('profile = "meta-2024"\nmax_batch = 5\n')
    monkeypatch.setenv("TIERGATE_MAX_BATCH", "7")
    assert cli.main(["check-config", "--config", str(config), "--profile", "legacy-2x"]) == 0
    out = capsys.readouterr().out
    assert "legacy-2x" in out and "[flag]" in out
    assert "7" in out and "[env]" in out


def test_simulate_delegates(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = REPO / "examples" / "scenarios" / "meta-2025-portfolio.toml"
    assert cli.main(["simulate", str(scenario), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["profile"] == "meta-2025"
    assert data["rows"]


def sample_state() -> pb.SenderState:
    return pb.SenderState(
        sender_id="111",
        portfolio_id="p",
        profile="meta-2025",
        tier="TIER_250",
        limit=250,
        effective_limit=250,
        used_24h=250,
        remaining=0,
        next_slot_free_at_unix_ms=1_760_086_460_000,
        unique_7d=250,
        upgrade=pb.UpgradeState(eligible=True, progress=1.0, next_tier="TIER_2K"),
        quality=pb.GREEN,
        status=pb.CONNECTED,
        throughput_mps=80,
        open_windows=3,
        paused_templates=[pb.PausedTemplate(template_id="t1", template_name="sale", disabled=True)],
        decision_counts=[
            pb.ReasonCount(reason=pb.OK, count=250),
            pb.ReasonCount(reason=pb.MESSAGING_LIMIT, count=7),
        ],
        at_unix_ms=1_760_000_000_000,
    )


def test_state_table_is_readable() -> None:
    table = cli.format_state(sample_state())
    assert "TIER_250" in table
    assert "2025-10-10 08:54:20 UTC" in table  # next slot free, in UTC
    assert "eligible, progress 100.0%, next TIER_2K" in table
    assert "sale (disabled)" in table
    assert "OK 250, MESSAGING_LIMIT 7" in table


def test_state_json_has_every_field_with_enum_names() -> None:
    data = cli.message_to_dict(sample_state())
    assert data["quality"] == "GREEN" and data["status"] == "CONNECTED"
    assert data["limit"] == 250 and isinstance(data["limit"], int)
    assert data["upgrade"]["next_tier"] == "TIER_2K"
    assert data["decision_counts"][1] == {"reason": "MESSAGING_LIMIT", "count": 7}
    assert data["display_phone_number"] == ""  # unset fields are present too
    assert set(data) == {f.name for f in pb.SenderState.DESCRIPTOR.fields}


def test_check_config_rejects_a_data_dir_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERGATE_CONFIG", raising=False)
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    assert cli.main(["check-config", "--data-dir", str(blocker)]) == 2
    assert "data_dir: " in capsys.readouterr().err
    assert cli.main(["check-config", "--data-dir", str(tmp_path / "new" / "data")]) == 0
