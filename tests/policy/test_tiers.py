"""Tier state machines: seed 000 under meta-2024, legacy-2x, meta-2025 portfolios."""

from __future__ import annotations

import pytest

from tiergate.engine import constants as c
from tiergate.policy import events as ev

from .helpers import T0, D, H, add_sender, admit, admitted, rcpt, req, send_unique, service


def limit_at(svc, sid: str, at: int) -> int:  # type: ignore[no-untyped-def]
    """The limit a new recipient would meet at ``at`` (a dry run consumes nothing)."""
    return svc.admit(req(sid, rcpt(999_999_999), at, dry=True), at).limit  # type: ignore[no-any-return]


@pytest.mark.parametrize("day3", [3_500, 4_000])
def test_seed_000_table_meta_2024(day3: int) -> None:
    svc = service("meta-2024")
    add_sender(svc)
    # Day 1: 500 unique users at limit 1 000; the 500th crosses half the limit.
    day1 = send_unique(svc, "s1", T0, 500)
    assert admitted(day1) == 500
    t500 = T0 + 499 * 20
    state = svc.sender_state("s1", t500)
    assert state.tier == "TIER_1K" and state.limit == 1_000
    assert state.upgrade.eligible and state.upgrade.predicted_at_unix_ms == t500 + D
    # 10 000 exactly 24 h after the 500th, not a millisecond earlier.
    assert limit_at(svc, "s1", t500 + D - 1) == 1_000
    assert limit_at(svc, "s1", t500 + D) == 10_000
    assert svc.sender_state("s1", t500 + D).tier == "TIER_10K"
    # Day 2: 500 more; day 3: 3 500 or 4 000 more. The rule is >= half the limit (5 000):
    # 500 + 500 + 3 500 = 4 500 does not meet it (the seed's table says 5 000), 4 000 does.
    assert admitted(send_unique(svc, "s1", T0 + D + 2 * H, 500, first=500)) == 500
    assert admitted(send_unique(svc, "s1", T0 + 2 * D, day3, first=1_000)) == day3
    cross = T0 + 2 * D + (day3 - 1) * 20
    state = svc.sender_state("s1", cross)
    assert state.unique_7d == 1_000 + day3
    if day3 == 3_500:
        assert not state.upgrade.eligible
        assert state.upgrade.progress == pytest.approx(0.9)
        assert svc.sender_state("s1", T0 + 5 * D).tier == "TIER_10K"
        return
    assert state.upgrade.predicted_at_unix_ms == cross + D
    assert limit_at(svc, "s1", cross + D - 1) == 10_000
    assert limit_at(svc, "s1", cross + D) == 100_000
    # Day 4: 45 000 more (50 000 in 7 days = half of 100 000) → unlimited 24 h later.
    start = cross + D + H
    assert admitted(send_unique(svc, "s1", start, 45_000, first=10_000, spacing=13)) == 45_000
    last = start + 44_999 * 13
    assert svc.sender_state("s1", last).upgrade.predicted_at_unix_ms == last + D
    assert svc.sender_state("s1", last + D - 1).tier == "TIER_100K"
    state = svc.sender_state("s1", last + D)
    assert state.tier == "TIER_UNLIMITED" and state.limit == c.UNLIMITED
    assert state.upgrade.next_tier == ""


def test_legacy_2x_cumulative_and_48h_in_tier() -> None:
    svc = service("legacy-2x")
    add_sender(svc, at=T0)
    assert admitted(send_unique(svc, "s1", T0 + H, 1_000)) == 1_000
    # Limit reached: the 1 001st new recipient waits.
    assert admit(svc, "s1", rcpt(5_000), T0 + 2 * H).reason == c.MESSAGING_LIMIT
    # Day 2: the same 1 000 again count again (cumulative 2 000 = 2 x limit) while
    # unique users in 7 days stay 1 000.
    assert admitted(send_unique(svc, "s1", T0 + 26 * H, 1_000)) == 1_000
    state = svc.sender_state("s1", T0 + 27 * H)
    assert state.unique_7d == 1_000 and state.slots_7d == 2_000
    # Threshold crossed after ~26 h, but never sooner than 48 h in the tier.
    assert state.upgrade.predicted_at_unix_ms == T0 + 48 * H
    assert svc.sender_state("s1", T0 + 48 * H - 1).tier == "TIER_1K"
    assert svc.sender_state("s1", T0 + 48 * H).tier == "TIER_10K"


def test_legacy_2x_unique_alone_is_not_enough() -> None:
    svc = service("legacy-2x")
    add_sender(svc, at=T0)
    send_unique(svc, "s1", T0 + H, 1_000)
    state = svc.sender_state("s1", T0 + 3 * D)
    assert state.tier == "TIER_1K" and state.upgrade.progress == pytest.approx(0.5)


def test_meta_2025_portfolio_shared_prediction_and_upgrade_event() -> None:
    svc = service("meta-2025")
    add_sender(svc, "a", at=T0, portfolio_id="P", waba_id="W", display_phone_number="15550001")
    add_sender(svc, "b", at=T0, portfolio_id="P", waba_id="W", display_phone_number="15550002")
    assert admitted(send_unique(svc, "a", T0 + H, 100)) == 100
    assert admitted(send_unique(svc, "b", T0 + 2 * H, 150, first=100)) == 150
    # One limit for the portfolio: 250 used by the two numbers together.
    for sid in ("a", "b"):
        st = svc.sender_state(sid, T0 + 3 * H)
        assert (st.tier, st.limit, st.used_24h, st.remaining) == ("TIER_250", 250, 250, 0)
    full = admit(svc, "a", rcpt(9_000), T0 + 3 * H)
    assert (full.decision, full.reason) == (c.RETRY_LATER, c.MESSAGING_LIMIT)
    assert full.meta_error_code == 131048
    # The first send of "a" (minute bucket T0+1h) frees its slot 24 h after that bucket ends.
    assert full.retry_at_unix_ms == T0 + H + 60_000 + D
    # Out of TIER_250 Meta's scaling paths apply, not the half-the-limit rule: an
    # unverified business needs 2 000 unique users within 30 days, then Meta's
    # review (no time predicted).
    st = svc.sender_state("a", T0 + 3 * H)
    assert (st.upgrade.path, st.upgrade.progress) == ("MESSAGING_VOLUME", 250 / 2000)
    assert not st.upgrade.eligible and st.upgrade.predicted_at_unix_ms == 0
    assert st.upgrade.next_tier == "TIER_2K"
    # predict mode: the limit stays until Meta says so, however long it takes.
    assert svc.sender_state("b", T0 + 3 * D).tier == "TIER_250"
    res = svc.apply(ev.QualityUpdate("+1 555 0002", "UPGRADE", current_limit="TIER_2K"), T0 + 3 * D)
    assert res.applied, res.detail
    assert svc.sender_state("a", T0 + 3 * D).limit == 2_000
    ok = admit(svc, "a", rcpt(9_001), T0 + 3 * D + 1)
    assert ok.decision == c.ADMIT and ok.limit == 2_000
    # From TIER_2K the threshold rule: 1 000 unique users in 7 days, within 6 h.
    assert admitted(send_unique(svc, "b", T0 + 3 * D + H, 1000, first=10_000)) == 1000
    st = svc.sender_state("a", T0 + 3 * D + 2 * H)
    assert (st.upgrade.path, st.upgrade.next_tier, st.upgrade.eligible) == (
        "AUTOMATIC_SCALING",
        "TIER_10K",
        True,
    )
    assert st.upgrade.predicted_at_unix_ms > 0
    # A business_capability_update sets the portfolio tier too.
    assert svc.apply(ev.CapabilityUpdate("W", "10000"), T0 + 4 * D).applied
    assert svc.sender_state("b", T0 + 4 * D).tier == "TIER_10K"


def test_red_flags_then_downgrades_after_7_days_meta_2024() -> None:
    svc = service("meta-2024")
    add_sender(svc, tier="TIER_10K")
    svc.apply(ev.SenderUpdate("s1", quality=ev.Quality.RED, at_unix_ms=T0), T0)
    st = svc.sender_state("s1", T0)
    assert st.status == ev.SenderStatus.FLAGGED and not st.upgrade.eligible
    assert svc.sender_state("s1", T0 + 7 * D - 1).tier == "TIER_10K"
    st = svc.sender_state("s1", T0 + 7 * D)
    assert (st.tier, st.status) == ("TIER_1K", ev.SenderStatus.CONNECTED)
    # Still Red at Tier 1 for another 7 days: the number is blocked from
    # business-initiated messages (profile floor status), replies still pass.
    st = svc.sender_state("s1", T0 + 14 * D)
    assert (st.tier, st.status) == ("TIER_1K", ev.SenderStatus.RESTRICTED)
    blocked = admit(svc, "s1", rcpt(1), T0 + 14 * D)
    assert (blocked.decision, blocked.reason) == (c.REJECT, c.SENDER_RESTRICTED)


def test_quality_recovery_stops_the_downgrade() -> None:
    svc = service("meta-2024")
    add_sender(svc, tier="TIER_10K")
    svc.apply(ev.SenderUpdate("s1", quality=ev.Quality.RED, at_unix_ms=T0), T0)
    svc.apply(ev.SenderUpdate("s1", quality=ev.Quality.YELLOW, at_unix_ms=T0 + 3 * D), T0 + 3 * D)
    st = svc.sender_state("s1", T0 + 10 * D)
    assert (st.tier, st.status) == ("TIER_10K", ev.SenderStatus.CONNECTED)


def test_meta_2025_no_automatic_downgrade() -> None:
    svc = service("meta-2025")
    add_sender(svc, tier="TIER_10K")
    svc.apply(ev.SenderUpdate("s1", quality=ev.Quality.RED, at_unix_ms=T0), T0)
    st = svc.sender_state("s1", T0 + 30 * D)
    assert st.tier == "TIER_10K" and not st.upgrade.eligible


def test_meta_downgrade_event_applies_at_once() -> None:
    svc = service("meta-2025")
    add_sender(svc, tier="TIER_10K", display_phone_number="15557777")
    res = svc.apply(ev.QualityUpdate("15557777", "DOWNGRADE", current_limit="TIER_2K"), T0)
    assert res.applied
    assert svc.sender_state("s1", T0).limit == 2_000


def test_flagged_and_unflagged_events() -> None:
    svc = service("meta-2024")
    add_sender(svc, display_phone_number="15557777")
    svc.apply(ev.QualityUpdate("15557777", "FLAGGED"), T0)
    st = svc.sender_state("s1", T0)
    assert (st.quality, st.status) == (ev.Quality.RED, ev.SenderStatus.FLAGGED)
    svc.apply(ev.QualityUpdate("15557777", "UNFLAGGED"), T0 + D)
    st = svc.sender_state("s1", T0 + D)
    assert (st.quality, st.status) == (ev.Quality.GREEN, ev.SenderStatus.CONNECTED)


def test_long_red_restriction_lifts_with_quality_but_meta_restrictions_stay() -> None:
    svc = service("meta-2024")
    add_sender(svc, "a", waba_id="W")
    svc.apply(ev.SenderUpdate("a", quality=ev.Quality.RED, at_unix_ms=T0), T0)
    assert svc.sender_state("a", T0 + 7 * D).status == ev.SenderStatus.RESTRICTED
    svc.apply(ev.SenderUpdate("a", quality=ev.Quality.GREEN, at_unix_ms=T0 + 8 * D), T0 + 8 * D)
    assert svc.sender_state("a", T0 + 8 * D).status == ev.SenderStatus.CONNECTED
    # A restriction from Meta is not lifted by tiergate's own quality rules.
    add_sender(svc, "b", tier="TIER_10K")
    svc.apply(ev.SenderUpdate("b", status=ev.SenderStatus.RESTRICTED, quality=ev.Quality.RED), T0)
    st = svc.sender_state("b", T0 + 7 * D)
    assert (st.tier, st.status) == ("TIER_1K", ev.SenderStatus.RESTRICTED)
    svc.apply(ev.SenderUpdate("b", quality=ev.Quality.GREEN, at_unix_ms=T0 + 8 * D), T0 + 8 * D)
    assert svc.sender_state("b", T0 + 8 * D).status == ev.SenderStatus.RESTRICTED


def test_account_events_are_recorded() -> None:
    svc = service()
    add_sender(svc, waba_id="W")
    assert svc.apply(ev.AccountUpdate("W", "ACCOUNT_VIOLATION"), T0).applied
    res = svc.apply(ev.AccountUpdate("W", "DISABLED_UPDATE", ban_state="SCHEDULE_FOR_DISABLE"), T0)
    assert res.applied
    st = svc.sender_state("s1", T0)
    assert st.account_violations == 1
    assert st.last_account_event == "DISABLED_UPDATE SCHEDULE_FOR_DISABLE"
    assert st.status == ev.SenderStatus.CONNECTED
    assert not svc.apply(ev.AccountUpdate("W", "SOMETHING_NEW"), T0).applied


def test_several_red_steps_after_a_long_silence() -> None:
    svc = service("meta-2024")
    add_sender(svc, tier="TIER_100K")
    svc.apply(ev.SenderUpdate("s1", quality=ev.Quality.RED, at_unix_ms=T0), T0)
    st = svc.sender_state("s1", T0 + 15 * D)
    assert (st.tier, st.status) == ("TIER_1K", ev.SenderStatus.CONNECTED)
