"""Warm-up by limit scope: the number's own count under portfolio scope, the
scope's limit under number scope; its steps, headroom, journal and snapshots."""

from __future__ import annotations

from pathlib import Path

from tiergate.engine import constants as c
from tiergate.policy.service import AdmissionService

from .helpers import T0, D, H, S, add_sender, admit, admitted, custom, rcpt, send_unique, service

WARM = "[warmup]\nenabled = true\n"


def portfolio(tmp_path: Path, body: str = WARM) -> AdmissionService:
    """Two numbers of one portfolio at TIER_1K: "old" (no warm-up) and "new"
    (registered at T0)."""
    svc = service(custom(tmp_path, "meta-2025", body))
    add_sender(svc, "old", portfolio_id="p", tier="TIER_1K", throughput_mps=1000)
    add_sender(
        svc, "new", portfolio_id="p", tier="TIER_1K", throughput_mps=1000, registered_at_unix_ms=T0
    )
    return svc


def test_under_number_scope_the_cap_lowers_the_numbers_limit_as_before(tmp_path: Path) -> None:
    svc = service(custom(tmp_path, "meta-2025", WARM + '[limit]\nscope = "phone_number"\n'))
    add_sender(svc, "s1", tier="TIER_10K", registered_at_unix_ms=T0, throughput_mps=1000)
    assert admitted(send_unique(svc, "s1", T0 + H, 120)) == 100
    st = svc.sender_state("s1", T0 + H + 10 * S)
    assert (st.effective_limit, st.used_24h, st.warmup_cap) == (100, 100, 0)


def test_under_portfolio_scope_the_cap_follows_the_schedule_on_the_numbers_own_count(
    tmp_path: Path,
) -> None:
    svc = portfolio(tmp_path)
    assert admitted(send_unique(svc, "old", T0 + H, 300, first=10_000, spacing=2)) == 300
    assert admitted(send_unique(svc, "new", T0 + 2 * H, 120, spacing=2)) == 100
    st = svc.sender_state("new", T0 + 2 * H + S)
    assert (st.effective_limit, st.used_24h, st.remaining) == (1000, 400, 0)
    assert (st.warmup_cap, st.warmup_used_24h) == (100, 100)
    assert svc.sender_state("old", T0 + 2 * H + S).warmup_cap == 0
    # week 2: 500 of its own; week 4: no cap, and no count of its own kept
    st = svc.sender_state("new", T0 + 7 * D)
    assert (st.warmup_cap, st.warmup_used_24h, st.effective_limit) == (500, 0, 1000)
    assert svc.sender_state("new", T0 + 14 * D).warmup_cap == 750
    st = svc.sender_state("new", T0 + 21 * D)
    assert (st.warmup_cap, st.warmup_used_24h, st.effective_limit) == (0, 0, 1000)
    assert svc.engine.warmup_usage(svc.state.senders["new"].engine_index, T0 + 21 * D)[:2] == (0, 0)


def test_headroom_applies_to_the_numbers_own_cap(tmp_path: Path) -> None:
    svc = portfolio(tmp_path, WARM + "[protection]\nheadroom_pct = 90\n")
    assert admitted(send_unique(svc, "new", T0 + H, 120, spacing=2)) == 90
    assert svc.sender_state("new", T0 + H + S).warmup_cap == 90


def test_journal_replay_and_snapshots_keep_the_numbers_own_count(tmp_path: Path) -> None:
    live = portfolio(tmp_path)
    send_unique(live, "new", T0 + H, 100, spacing=2)
    refused = admit(live, "new", rcpt(500), T0 + 2 * H)
    assert (refused.decision, refused.reason) == (c.RETRY_LATER, c.MESSAGING_LIMIT)
    replayed = service(live.profile)
    for record in live.drain_journal():
        replayed.replay(record)
    restored = AdmissionService.from_snapshot(live.profile, live.snapshot(), clock="request")
    for svc in (live, replayed, restored):
        again = admit(svc, "new", rcpt(500), T0 + 2 * H + S)
        assert (again.decision, again.reason, again.retry_at_unix_ms) == (
            c.RETRY_LATER,
            c.MESSAGING_LIMIT,
            refused.retry_at_unix_ms,
        )
        assert admit(svc, "old", rcpt(500), T0 + 2 * H + S).decision == c.ADMIT


def test_switching_to_a_profile_without_warm_up_drops_the_cap(tmp_path: Path) -> None:
    svc = portfolio(tmp_path)
    send_unique(svc, "new", T0 + H, 100, spacing=2)
    assert admit(svc, "new", rcpt(500), T0 + 2 * H).decision == c.RETRY_LATER
    svc.reload_profile(custom(tmp_path, "meta-2025", ""), T0 + 2 * H)
    assert admit(svc, "new", rcpt(500), T0 + 2 * H + S).decision == c.ADMIT
    assert svc.sender_state("new", T0 + 2 * H + S).warmup_cap == 0
