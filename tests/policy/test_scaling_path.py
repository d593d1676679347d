"""Meta's scaling paths out of TIER_250 (``upgrade.scaling_path``, meta-2025): the
recipients reached within the path's window survive restarts, and only a
predict-mode profile follows the paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiergate.policy.service import AdmissionService

from .helpers import T0, TICKET_KEY, D, H, add_sender, admitted, custom, send_unique, service


def restarted(svc: AdmissionService, how: str, log: list[bytes]) -> AdmissionService:
    if how == "snapshot":
        return AdmissionService.from_snapshot(
            svc.profile, svc.snapshot(), clock="request", ticket_key=TICKET_KEY
        )
    log.extend(svc.drain_journal())
    copy = service(svc.profile)
    for record in log:
        copy.replay(record)
    return copy


@pytest.mark.parametrize("how", ["snapshot", "journal"])
def test_reach_within_30_days_restores(how: str) -> None:
    log: list[bytes] = []
    svc = service("meta-2025")
    add_sender(svc, "a", at=T0, portfolio_id="P", verified=False)
    assert admitted(send_unique(svc, "a", T0 + H, 250)) == 250
    assert admitted(send_unique(svc, "a", T0 + 10 * D, 250, first=250)) == 250
    svc = restarted(svc, how, log)
    up = svc.sender_state("a", T0 + 10 * D + H).upgrade
    assert (up.path, up.progress) == ("MESSAGING_VOLUME", 500 / 2000)
    assert admitted(send_unique(svc, "a", T0 + 20 * D, 250, first=500)) == 250
    svc = restarted(svc, how, log)
    assert svc.sender_state("a", T0 + 20 * D + H).upgrade.progress == 750 / 2000
    assert svc.sender_state("a", T0 + 31 * D).upgrade.progress == 500 / 2000


def test_only_predict_mode_profiles_follow_the_paths(tmp_path: Path) -> None:
    assert service("meta-2025").profile.path_tier == "TIER_250"
    for name in ("meta-2024", "legacy-2x"):
        assert service(name).profile.path_tier == ""
    applied = custom(tmp_path, "meta-2025", '[upgrade]\nmode = "apply"\n')
    assert applied.path_tier == ""  # loads; the threshold rule applies from every tier
    svc = service(applied)
    add_sender(svc, "a", at=T0, verified=False)
    up = svc.sender_state("a", T0).upgrade
    assert up.path == "AUTOMATIC_SCALING"


@pytest.mark.parametrize("batch", [True, False])
def test_memory_is_pruned_to_the_window_and_the_count_stays(tmp_path: Path, batch: bool) -> None:
    prof = custom(
        tmp_path,
        "meta-2025",
        '[upgrade.scaling_path]\nfrom_tier = "TIER_250"\nunique_users = 10\ndays = 1\n'
        'low_template_qualities = ["RED"]\n',
    )
    svc = service(prof)
    add_sender(svc, "a", at=T0, verified=False)
    for day in range(4):  # 30 users a day: more than 4 × 10 kept only inside the window
        at = T0 + day * (D + H)
        if batch:
            assert admitted(send_unique(svc, "a", at, 30, first=day * 30)) == 30
        else:
            for i in range(30):
                assert admitted(send_unique(svc, "a", at + i * 20, 1, first=day * 30 + i)) == 1
        scope = svc.state.senders["a"].scope
        assert len(scope.reach) <= 4 * 10 + 30
        up = svc.sender_state("a", at + H).upgrade
        assert (up.progress, up.eligible) == (1.0, True)
    assert svc.sender_state("a", T0 + 3 * (D + H) + D + H).upgrade.progress == 0.0
