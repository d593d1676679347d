"""131048 (spam rate limit): the hold of a number's business-initiated sends, in
the policy state — its end, its restore from snapshots and journals, and the
profile key that sets it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.service import AdmissionService

from .helpers import T0, TICKET_KEY, H, add_sender, admit, custom, rcpt, service

M = 60_000


def failed(ticket: str, at: int, code: int = 131048) -> ev.SendResult:
    return ev.SendResult(ev.SendStatus.FAILED, ticket=ticket, meta_error_code=code, at_unix_ms=at)


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


@pytest.mark.parametrize("profile", ["meta-2025", "meta-2024", "legacy-2x"])
@pytest.mark.parametrize("how", ["snapshot", "journal"])
def test_the_hold_restores_and_ends_on_time(profile: str, how: str) -> None:
    log: list[bytes] = []
    svc = service(profile)
    add_sender(svc)
    assert svc.profile.spam_hold_ms == 60 * M
    ticket = admit(svc, "s1", rcpt(1), T0).ticket
    res = svc.apply(failed(ticket, T0 + 1), T0 + 1)
    assert res.applied and "held until" in res.detail
    until = T0 + 1 + 60 * M
    svc = restarted(svc, how, log)
    assert svc.sender_state("s1", T0 + 2).spam_held_until_unix_ms == until
    held = admit(svc, "s1", rcpt(2), T0 + 2)
    assert (held.decision, held.reason, held.retry_at_unix_ms) == (
        c.RETRY_LATER,
        c.SENDER_RESTRICTED,
        until,
    )
    assert admit(svc, "s1", rcpt(2), until).decision == c.ADMIT
    svc = restarted(svc, how, log)  # the end was journaled: still over after a replay
    assert svc.sender_state("s1", until + 1).spam_held_until_unix_ms == 0
    assert admit(svc, "s1", rcpt(3), until + 1).decision == c.ADMIT


def test_a_restriction_without_an_end_still_rejects_during_a_hold() -> None:
    svc = service("meta-2025")
    add_sender(svc)
    ticket = admit(svc, "s1", rcpt(1), T0).ticket
    assert svc.apply(failed(ticket, T0 + 1), T0 + 1).applied
    restrict = ev.SenderUpdate("s1", status=ev.SenderStatus.RESTRICTED, at_unix_ms=T0 + 2)
    assert svc.apply(restrict, T0 + 2).applied
    res = admit(svc, "s1", rcpt(2), T0 + 3)
    assert (res.decision, res.reason) == (c.REJECT, c.SENDER_RESTRICTED)
    # A restriction with an end: retried at the later of the two ends.
    ends = ev.SenderUpdate("s1", restricted_until_unix_ms=T0 + 2 * H, at_unix_ms=T0 + 4)
    assert svc.apply(ends, T0 + 4).applied
    res = admit(svc, "s1", rcpt(2), T0 + 5)
    assert (res.decision, res.retry_at_unix_ms) == (c.RETRY_LATER, T0 + 2 * H)


def test_zero_minutes_turns_the_hold_off(tmp_path: Path) -> None:
    svc = service(custom(tmp_path, "meta-2025", "[feedback]\nspam_hold_minutes = 0\n"))
    add_sender(svc)
    ticket = admit(svc, "s1", rcpt(1), T0).ticket
    res = svc.apply(failed(ticket, T0 + 1), T0 + 1)
    assert res.applied and "held" not in res.detail  # the slot is released, nothing held
    assert admit(svc, "s1", rcpt(2), T0 + 2).decision == c.ADMIT
