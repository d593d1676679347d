"""What a new sender costs does not grow with the senders already known.

Asserted structurally, never by timing: creating a sender (and deciding for it)
scans no list of every sender or of a portfolio's members, and the per-scope
count that replaces the scan (``LimitScope.held``) agrees with a full scan.
"""

from __future__ import annotations

import pytest

from tiergate.policy import events as ev
from tiergate.policy import tiers
from tiergate.policy.service import AdmissionService
from tiergate.policy.state import LimitScope, Sender

from .helpers import T0, add_sender, rcpt, req, service


class CountingList(list[Sender]):
    """A list that counts how often it is iterated over."""

    scans = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        CountingList.scans += 1
        return super().__iter__()


def _watch(svc: AdmissionService) -> None:
    st = svc.state
    st.by_index = CountingList(st.by_index)
    for scope in st.scopes:
        scope.senders = CountingList(scope.senders)
    CountingList.scans = 0


@pytest.mark.parametrize("portfolio", [None, "P1"])
def test_creating_senders_scans_no_list_of_senders(portfolio: str | None) -> None:
    svc = service("meta-2025")
    add_sender(svc, "first", portfolio_id=portfolio)
    _watch(svc)
    calls = {"recompute_due": 0}
    original = tiers.recompute_due

    def counted(st):  # type: ignore[no-untyped-def]
        calls["recompute_due"] += 1
        original(st)

    tiers.recompute_due = counted
    try:
        for i in range(300):
            sid = f"s{i}"
            add_sender(svc, sid, at=T0, portfolio_id=portfolio)
            svc.admit(req(sid, rcpt(i), T0 + i), T0 + i)
    finally:
        tiers.recompute_due = original
    assert calls["recompute_due"] == 0
    assert CountingList.scans == 0
    assert len(svc.senders()) == 301


def _held(svc: AdmissionService, scope: LimitScope) -> int:
    p = svc.profile
    return sum(
        1
        for s in scope.senders
        if not (s.quality in p.upgrade_qualities and s.status in p.upgrade_statuses)
    )


def test_held_count_agrees_with_a_scan_through_changes_and_restore() -> None:
    svc = service("meta-2025")  # one portfolio: one scope of six members
    for i in range(6):
        add_sender(svc, f"s{i}", portfolio_id="P1")
    changes = [
        ev.SenderUpdate("s1", quality=ev.Quality.RED),
        ev.SenderUpdate("s2", status=ev.SenderStatus.RESTRICTED),
        ev.SenderUpdate("s1", quality=ev.Quality.GREEN),
        ev.SenderUpdate("s3", status=ev.SenderStatus.BANNED),
        ev.SenderUpdate("s2", status=ev.SenderStatus.CONNECTED),
    ]
    for k, u in enumerate(changes):
        assert svc.apply(u, T0 + k).applied
        for scope in svc.state.scopes:
            assert scope.held == _held(svc, scope)
    restored = AdmissionService.from_snapshot(
        svc.profile, svc.snapshot(), clock="request", ticket_key=svc.ticket_key
    )
    (scope,) = restored.state.scopes
    assert scope.held == _held(restored, scope) == 1  # s3 is banned
    assert not tiers.eligible(restored.state, scope)
