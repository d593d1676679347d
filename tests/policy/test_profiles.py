"""Profiles: shipped files, extends/overrides, and errors naming file, key and reason."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from tiergate.engine import constants as c
from tiergate.policy.profile import ProfileError, load_profile, shipped_profiles

H = 3_600_000


def test_shipped_profiles_load() -> None:
    assert set(shipped_profiles()) >= {"meta-2025", "meta-2024", "legacy-2x"}
    p = load_profile()
    assert p.name == "meta-2025" and p.limit_scope == "portfolio" and p.upgrade_mode == "predict"
    assert [p.tier_limit(t) for t in p.ladder] == [250, 2_000, 10_000, 100_000, c.UNLIMITED]
    assert p.predict_within_ms == 6 * H and p.upgrade_threshold == 0.5
    assert not p.free_entry_point_allows_free_form
    m24 = load_profile("meta-2024")
    assert m24.limit_scope == "phone_number" and m24.upgrade_mode == "apply"
    assert m24.upgrade_delay_ms == 24 * H and m24.red_days_to_downgrade == 7
    assert (m24.starting_tier, m24.starting_tier_unverified) == ("TIER_1K", "TIER_250")
    assert m24.free_entry_point_allows_free_form
    legacy = load_profile("legacy-2x")
    assert (legacy.upgrade_basis, legacy.upgrade_threshold) == ("cumulative", 2.0)
    assert legacy.min_in_tier_ms == 48 * H
    # meta-2025: only Meta's DISABLED disables; a pause without a title is held
    # until Meta lifts it; 132015 / 132016 failures hold the template.
    assert (p.disable_after_pauses, p.untitled_pause) == (0, "until_lifted")
    assert p.template_hold_codes == {132015, 132016}
    for prof in (m24, legacy):
        assert (prof.disable_after_pauses, prof.untitled_pause) == (3, "pause_hours")
        assert prof.template_hold_codes == frozenset()
    for prof in (p, m24, legacy):
        assert prof.pause_ms == (3 * H, 6 * H)
        assert (prof.default_mps, prof.upgraded_mps, prof.coexistence_mps) == (80, 1000, 20)
        assert (prof.pair_interval_ms, prof.pair_burst) == (6_000, 45)
        assert prof.service_window_ms == 24 * H and prof.free_entry_point_window_ms == 72 * H
        assert [(s.until_day, s.cap) for s in prof.warmup] == [(7, 100), (14, 500), (21, 750)]


def write(tmp_path: Path, body: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def test_user_file_extends_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'extends = "meta-2024"\nname = "ops"\n'
        "[protection]\nheadroom_pct = 80\nfrequency_cap = 2\n"
        '[throughput.overrides]\n"123" = 15\n',
    )
    p = load_profile(path)
    assert (p.name, p.headroom_pct, p.frequency_cap) == ("ops", 80.0, 2)
    assert p.throughput_override("123") == 15
    assert p.upgrade_delay_ms == 24 * H  # inherited
    # A file may extend another user file by relative path.
    child = write(
        tmp_path, 'extends = "p.toml"\nname = "child"\n[upgrade]\ndelay_hours = 12\n', "c.toml"
    )
    q = load_profile(child)
    assert (q.headroom_pct, q.upgrade_delay_ms) == (80.0, 12 * H)


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ("[limit]\nscope = 'global'\n", "limit.scope", "must be one of"),
        ("[upgrade]\nthreshold = -1\n", "upgrade.threshold", "must be"),
        ("[upgrade]\nmode = 3\n", "upgrade.mode", "must be a string"),
        ("[tiers]\nstarting = 'TIER_3'\n", "tiers.starting", "no entry"),
        ("[tiers]\nladder = ['TIER_10K', 'TIER_1K']\n", "tiers.ladder", "increase"),
        ("[tiers.limits]\nTIER_1K = -5\n", "tiers.limits.TIER_1K", "non-negative"),
        ("[protection]\nfrequency_cap = 9\n", "protection.frequency_cap", "0..4"),
        ("[protection]\nheadroom_pct = 120\n", "protection.headroom_pct", "in 0.0..100.0"),
        ("[protection]\nheadrom_pct = 90\n", "protection.headrom_pct", "unknown key"),
        ("[counting]\nfree_form = true\n", "counting.free_form", "supported"),
        ("[upgrade]\nallowed_qualities = ['PURPLE']\n", "upgrade.allowed_qualities", "PURPLE"),
        ("[warmup]\nschedule = [{ until_day = 7 }]\n", "warmup.schedule[0]", "until_day and cap"),
        ("[templates]\ndisable_after_pauses = 9\n", "templates.disable_after_pauses", "pause"),
        ("[quality]\nfloor_status = 'ASLEEP'\n", "quality.floor_status", "one of"),
    ],
)
def test_bad_profile_names_file_key_and_reason(
    tmp_path: Path, body: str, key: str, reason: str
) -> None:
    path = write(tmp_path, f'extends = "meta-2025"\nname = "bad"\n{body}')
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert err.value.file == str(path) and err.value.key == key
    assert reason in err.value.reason and str(path) in str(err.value)


def test_unreadable_unknown_invalid_and_circular(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no shipped profile named 'meta-1999'"):
        load_profile("meta-1999")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.toml")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(write(tmp_path, "name = \n"))
    write(tmp_path, 'extends = "b.toml"\nname = "a"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\nname = "b"\n', "b.toml")
    with pytest.raises(ProfileError) as err:
        load_profile(tmp_path / "a.toml")
    assert err.value.key == "extends" and "circular" in err.value.reason
    with pytest.raises(ProfileError) as err:
        load_profile(write(tmp_path, "name = 'x'\n"))
    assert err.value.key == "description" and err.value.reason == "is missing"


def test_message_links_come_from_the_toml_and_a_whole_user_file_may_omit_them(
    tmp_path: Path,
) -> None:
    for name in shipped_profiles():
        assert load_profile(name).message_links == 250_000
    shipped = (resources.files("tiergate") / "profiles" / "meta-2025.toml").read_text()
    assert "message_links = 250000" in shipped
    # A whole profile (no extends) written before the key existed loads as it did.
    lines = [line for line in shipped.splitlines() if "message_links" not in line]
    whole = write(tmp_path, "\n".join(lines).replace('"meta-2025"', '"mine"', 1))
    own = load_profile(whole)
    assert own.name == "mine" and own.message_links == 250_000
    assert own.idempotency_ms == 24 * H  # the rest of [retention] is the file's own
    # Setting it, or extending a profile that sets it, wins over the default.
    assert (
        load_profile(write(tmp_path, shipped.replace("250000", "7"), "set.toml")).message_links == 7
    )
    child = write(tmp_path, 'extends = "set.toml"\nname = "child"\n', "child.toml")
    assert load_profile(child).message_links == 7
