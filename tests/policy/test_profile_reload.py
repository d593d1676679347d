"""A profile switched in place (SIGHUP) is journaled; a replay reproduces the state.

The restarted process loads its profile from the config it starts with, so a
replay does not load the profile named in the journal: it re-derives the state
at that point for the profile it runs — the switched-to one when the config
was reloaded before the crash.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.profile import Profile
from tiergate.policy.service import AdmissionService

from .helpers import T0, D, H, S, add_sender, admit, custom, rcpt, send_unique, service


def reports(svc: AdmissionService, at: int) -> list[dict[str, object]]:
    out = []
    for sid in svc.senders():
        d = dataclasses.asdict(svc.sender_state(sid, at))
        d["decision_counts"] = {k: v for k, v in d["decision_counts"].items() if k == c.OK}
        out.append(d)
    return out


def settled(svc: AdmissionService, at: int) -> bytes:
    """The engine's bytes with every clock at ``at`` (refusals move clocks, not state)."""
    svc.engine.reclaim(at)
    return svc.engine.snapshot()


def cautious(tmp_path: Path) -> Profile:
    """meta-2024 with 80 % headroom and a marketing frequency cap."""
    return custom(
        tmp_path,
        "meta-2024",
        "[protection]\nheadroom_pct = 80\nfrequency_cap = 1\nfrequency_window_hours = 24\n",
    )


def history(svc: AdmissionService, switch_to: Profile) -> None:
    """Admits, an upgrade threshold crossed, a switch, admits and a pause after it."""
    add_sender(svc, "a", tier="TIER_1K")
    add_sender(svc, "b", tier="TIER_250", display_phone_number="15550002")
    send_unique(svc, "a", T0, 600)
    send_unique(svc, "b", T0, 100, first=10_000)
    svc.reload_profile(switch_to, T0 + H)
    send_unique(svc, "a", T0 + 2 * H, 300, first=20_000)
    admit(svc, "b", rcpt(10_000), T0 + 2 * H)  # a second marketing send: frequency cap
    svc.apply(ev.TemplateUpdate("promo", ev.TemplateStatus.PAUSED, at_unix_ms=T0 + 3 * H), 0)


def test_the_switch_is_one_small_journal_record(tmp_path: Path) -> None:
    svc = service("meta-2024")
    add_sender(svc, "a")
    send_unique(svc, "a", T0, 50)
    svc.drain_journal()
    svc.reload_profile(cautious(tmp_path), T0 + H)
    (record,) = svc.drain_journal()
    assert json.loads(record[2:]) == {"k": "profile", "name": "custom", "now": T0 + H}


def test_replay_under_the_switched_to_profile_reproduces_the_state(tmp_path: Path) -> None:
    new = cautious(tmp_path)
    live = service("meta-2024")
    history(live, new)
    assert live.sender_state("a", T0 + 4 * H).effective_limit == 800
    restarted = service(new)  # the config now names the new profile
    for record in live.drain_journal():
        restarted.replay(record)
    at = T0 + 4 * H
    assert reports(restarted, at) == reports(live, at)
    assert settled(restarted, at) == settled(live, at)
    # ... and from a snapshot taken before the switch, with the journal after it.
    before = service("meta-2024")
    add_sender(before, "a", tier="TIER_1K")
    add_sender(before, "b", tier="TIER_250", display_phone_number="15550002")
    send_unique(before, "a", T0, 600)
    send_unique(before, "b", T0, 100, first=10_000)
    snap = before.snapshot()
    before.drain_journal()
    before.reload_profile(new, T0 + H)
    send_unique(before, "a", T0 + 2 * H, 300, first=20_000)
    admit(before, "b", rcpt(10_000), T0 + 2 * H)
    before.apply(ev.TemplateUpdate("promo", ev.TemplateStatus.PAUSED, at_unix_ms=T0 + 3 * H), 0)
    recovered = AdmissionService.from_snapshot(new, snap, clock="request")
    for record in before.drain_journal():
        recovered.replay(record)
    assert reports(recovered, at) == reports(before, at)
    assert settled(recovered, at) == settled(before, at)


def test_replay_under_another_profile_derives_for_that_one(tmp_path: Path) -> None:
    live = service("meta-2024")
    history(live, cautious(tmp_path))
    # The config was changed back before the restart: the state is the same, the
    # rules are the running profile's.
    restarted = service("meta-2024")
    for record in live.drain_journal():
        restarted.replay(record)
    at = T0 + 4 * H
    state = restarted.sender_state("a", at)
    assert (state.profile, state.effective_limit) == ("meta-2024", 1_000)
    assert state.used_24h == live.sender_state("a", at).used_24h == 800


def test_upgrade_due_times_follow_the_switch(tmp_path: Path) -> None:
    predict = custom(tmp_path, "meta-2024", '[upgrade]\nmode = "predict"\n')
    svc = service("meta-2024")
    add_sender(svc, "a", tier="TIER_250")
    send_unique(svc, "a", T0, 130)  # past half of 250: an upgrade falls due 24 h later
    svc.reload_profile(predict, T0 + H)
    assert svc.sender_state("a", T0 + 2 * D).tier == "TIER_250"  # predicted, not applied
    svc.reload_profile(service("meta-2024").profile, T0 + 2 * D + S)
    assert svc.sender_state("a", T0 + 2 * D + 2 * S).tier == "TIER_1K"


def test_a_switch_that_needs_a_restart_changes_nothing(tmp_path: Path) -> None:
    svc = service("meta-2024")
    add_sender(svc, "a")
    svc.drain_journal()
    before = svc.snapshot()
    for profile, words in (
        (service("meta-2025").profile, "limit_scope"),
        (custom(tmp_path, "meta-2024", "[limit]\nwindow_hours = 12\n"), "window_ms"),
    ):
        with pytest.raises(ValueError, match=words):
            svc.reload_profile(profile, T0)
    assert svc.snapshot() == before
    assert svc.drain_journal() == []
