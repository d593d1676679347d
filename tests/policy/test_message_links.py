"""Send results link Meta's message id (wamid) to a ticket; a FAILED by wamid releases it.

A gateway reports ``SENT`` with its ticket and Meta's message id; Meta's webhook
later says ``failed`` naming only the sender, the recipient and that message id.
tiergate finds the ticket by the message id and releases exactly what a FAILED
with the ticket would have.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.profile import ProfileError, load_profile
from tiergate.policy.requests import InvalidArgument
from tiergate.policy.service import AdmissionService

from .helpers import T0, TICKET_KEY, D, H, S, add_sender, admit, custom, rcpt, send_unique, service

SENT, DELIVERED, READ, FAILED = (
    ev.SendStatus.SENT,
    ev.SendStatus.DELIVERED,
    ev.SendStatus.READ,
    ev.SendStatus.FAILED,
)
UNDELIVERABLE = 131026  # Meta: message undeliverable


def wamid(i: int) -> str:
    return f"wamid.HBgLNDkxNzAwMDAwMDAxFQIAERgS{i:08d}"


def failed_by_wamid(sid: str, to: str, mid: str, at: int, code: int = UNDELIVERABLE) -> ev.Event:
    """What the webhook parser makes of a ``failed`` status: no ticket."""
    return ev.SendResult(
        FAILED, sender_id=sid, recipient=to, meta_error_code=code, at_unix_ms=at, message_id=mid
    )


def full_tier50(svc: AdmissionService) -> list[str]:
    """A TIER_50 sender at its limit; the tickets of its 50 admits."""
    add_sender(svc, tier="TIER_50")
    results = send_unique(svc, "s1", T0, 50)
    assert all(r.decision == c.ADMIT for r in results)
    assert admit(svc, "s1", rcpt(100), T0 + S).reason == c.MESSAGING_LIMIT
    return [r.ticket for r in results]


def used(svc: AdmissionService, at: int) -> int:
    return svc.sender_state("s1", at).used_24h


def test_failed_by_message_id_releases_like_failed_by_ticket() -> None:
    by_ticket, by_wamid = service(), service()
    tickets = full_tier50(by_ticket)
    assert full_tier50(by_wamid) == tickets
    linked = by_wamid.apply(ev.SendResult(SENT, ticket=tickets[7], message_id=wamid(7)), T0 + S)
    assert linked.applied and "linked" in linked.detail

    direct = by_ticket.apply(
        ev.SendResult(FAILED, ticket=tickets[7], meta_error_code=UNDELIVERABLE), T0 + 2 * S
    )
    res = by_wamid.apply(failed_by_wamid("s1", rcpt(7), wamid(7), T0 + 2 * S), T0 + 2 * S)
    assert direct.applied and res.applied, res.detail
    assert "slot released" in res.detail and tickets[7] in res.detail
    assert used(by_wamid, T0 + 2 * S) == used(by_ticket, T0 + 2 * S) == 49
    # The freed slot admits one new recipient, as after a release by ticket.
    for svc in (by_ticket, by_wamid):
        assert admit(svc, "s1", rcpt(100), T0 + 3 * S).decision == c.ADMIT
        assert admit(svc, "s1", rcpt(101), T0 + 4 * S).reason == c.MESSAGING_LIMIT
    # Meta redelivers the status: nothing more is released.
    again = by_wamid.apply(failed_by_wamid("s1", rcpt(7), wamid(7), T0 + 5 * S), T0 + 5 * S)
    assert not again.applied and "already applied" in again.detail
    assert used(by_wamid, T0 + 5 * S) == 50


@pytest.mark.parametrize("first_status", [DELIVERED, READ])
def test_first_status_delivered_or_read_links_too(first_status: ev.SendStatus) -> None:
    svc = service()
    tickets = full_tier50(svc)
    svc.drain_journal()
    res = svc.apply(ev.SendResult(first_status, ticket=tickets[3], message_id=wamid(3)), T0 + S)
    assert res.applied and "linked" in res.detail
    assert len(svc.drain_journal()) == 1  # the link is state: journaled
    # A later SENT for the same message and ticket changes nothing.
    same = svc.apply(ev.SendResult(SENT, ticket=tickets[3], message_id=wamid(3)), T0 + S)
    assert same.applied and "already linked" in same.detail
    assert svc.drain_journal() == []
    assert svc.apply(failed_by_wamid("s1", rcpt(3), wamid(3), T0 + 2 * S), T0 + 2 * S).applied
    assert used(svc, T0 + 2 * S) == 49


def test_link_by_sender_and_idempotency_key() -> None:
    svc = service()
    add_sender(svc)
    admit(svc, "s1", rcpt(1), T0, key="order-1")
    res = svc.apply(
        ev.SendResult(SENT, sender_id="s1", idempotency_key="order-1", message_id=wamid(1)), T0 + S
    )
    assert res.applied and "linked" in res.detail
    assert svc.apply(failed_by_wamid("s1", rcpt(1), wamid(1), T0 + 2 * S), T0 + 2 * S).applied
    assert used(svc, T0 + 2 * S) == 0


def test_failed_by_message_id_without_link_releases_nothing() -> None:
    svc = service()
    tickets = full_tier50(svc)
    # A SENT naming only Meta's ids (as a webhook does) links nothing.
    plain = svc.apply(
        ev.SendResult(SENT, sender_id="s1", recipient=rcpt(5), message_id=wamid(5)), T0 + S
    )
    assert plain.applied and plain.detail == "sent: nothing to do"
    svc.apply(ev.SendResult(SENT, ticket=tickets[6], message_id=wamid(6)), T0 + S)
    res = svc.apply(failed_by_wamid("s1", rcpt(5), wamid(5), T0 + 2 * S), T0 + 2 * S)
    assert not res.applied
    assert res.detail.startswith(f"no ticket linked to message {wamid(5)}")
    assert used(svc, T0 + 2 * S) == 50
    # Without a link the error code still acts (130429 slows the sender).
    slowed = svc.apply(failed_by_wamid("s1", rcpt(5), wamid(55), T0 + 3 * S, 130429), T0 + 3 * S)
    assert slowed.applied and slowed.detail == "throughput paused"
    assert used(svc, T0 + 3 * S) == 50


def test_link_refused_for_unknown_ticket_other_ticket_or_other_sender() -> None:
    svc = service()
    tickets = full_tier50(svc)
    add_sender(svc, "s2")
    unknown = svc.apply(ev.SendResult(SENT, ticket="nonsense", message_id=wamid(1)), T0 + S)
    assert not unknown.applied and "unknown or invalid ticket" in unknown.detail
    assert svc.apply(ev.SendResult(SENT, ticket=tickets[1], message_id=wamid(1)), T0 + S).applied
    other = svc.apply(ev.SendResult(SENT, ticket=tickets[2], message_id=wamid(1)), T0 + S)
    assert not other.applied and "already linked to ticket" in other.detail
    # The status names another sender than the one that used the ticket: not released.
    wrong = svc.apply(failed_by_wamid("s2", rcpt(1), wamid(1), T0 + 2 * S), T0 + 2 * S)
    assert not wrong.applied and "was sent by sender 's1'" in wrong.detail
    assert used(svc, T0 + 2 * S) == 50
    with pytest.raises(InvalidArgument) as err:
        svc.apply(ev.SendResult(SENT, ticket=tickets[1], message_id="w" * 300), T0 + S)
    assert err.value.field == "message_id"


def test_links_expire_with_the_limit_window() -> None:
    svc = service()
    add_sender(svc)
    first = admit(svc, "s1", rcpt(1), T0)
    svc.apply(ev.SendResult(SENT, ticket=first.ticket, message_id=wamid(1)), T0)
    late = svc.apply(failed_by_wamid("s1", rcpt(1), wamid(1), T0 + D), T0 + D)
    assert not late.applied and "no ticket linked" in late.detail
    # Just inside the retention the link still applies.
    svc2 = service()
    add_sender(svc2)
    first = admit(svc2, "s1", rcpt(1), T0)
    svc2.apply(ev.SendResult(SENT, ticket=first.ticket, message_id=wamid(1)), T0)
    assert svc2.apply(failed_by_wamid("s1", rcpt(1), wamid(1), T0 + D - 1), T0 + D - 1).applied
    assert used(svc2, T0 + D - 1) == 0


def test_links_are_bounded_oldest_forgotten_first(tmp_path: Path) -> None:
    svc = service(custom(tmp_path, "meta-2024", "[retention]\nmessage_links = 3\n"))
    add_sender(svc)
    tickets = [r.ticket for r in send_unique(svc, "s1", T0, 5)]
    for i, ticket in enumerate(tickets):
        svc.apply(ev.SendResult(SENT, ticket=ticket, message_id=wamid(i)), T0 + S + i)
    at = T0 + 2 * S
    for i in (0, 1):
        res = svc.apply(failed_by_wamid("s1", rcpt(i), wamid(i), at), at)
        assert not res.applied and "no ticket linked" in res.detail
    for i in (2, 3, 4):
        assert svc.apply(failed_by_wamid("s1", rcpt(i), wamid(i), at), at).applied
    assert used(svc, at) == 2
    # The bound holds in snapshots too.
    restored = AdmissionService.from_snapshot(
        svc.profile, svc.snapshot(), clock="request", ticket_key=TICKET_KEY
    )
    assert restored.snapshot() == svc.snapshot()


def test_links_can_be_turned_off_and_the_bound_is_checked(tmp_path: Path) -> None:
    assert load_profile("meta-2025").message_links == 250_000
    off = service(custom(tmp_path, "meta-2024", "[retention]\nmessage_links = 0\n"))
    add_sender(off)
    first = admit(off, "s1", rcpt(1), T0)
    res = off.apply(ev.SendResult(SENT, ticket=first.ticket, message_id=wamid(1)), T0)
    assert res.applied and "links are off" in res.detail
    assert not off.apply(failed_by_wamid("s1", rcpt(1), wamid(1), T0 + S), T0 + S).applied
    with pytest.raises(ProfileError, match=r"retention\.message_links"):
        custom(tmp_path, "meta-2024", "[retention]\nmessage_links = -1\n")
    with pytest.raises(ProfileError, match=r"retention\.message_linkz"):
        custom(tmp_path, "meta-2024", "[retention]\nmessage_linkz = 5\n")


def test_link_survives_snapshot_and_restore() -> None:
    live = service()
    tickets = full_tier50(live)
    live.apply(ev.SendResult(SENT, ticket=tickets[9], message_id=wamid(9)), T0 + S)
    restored = AdmissionService.from_snapshot(
        live.profile, live.snapshot(), clock="request", ticket_key=TICKET_KEY
    )
    res = restored.apply(failed_by_wamid("s1", rcpt(9), wamid(9), T0 + H), T0 + H)
    assert res.applied and "slot released" in res.detail
    assert used(restored, T0 + H) == 49


def test_link_survives_journal_replay() -> None:
    live = service()
    tickets = full_tier50(live)
    live.apply(ev.SendResult(SENT, ticket=tickets[9], message_id=wamid(9)), T0 + S)
    records = live.drain_journal()
    copy = service()
    for record in records:
        copy.replay(record)
    res = copy.apply(failed_by_wamid("s1", rcpt(9), wamid(9), T0 + H), T0 + H)
    assert res.applied and "slot released" in res.detail
    assert used(copy, T0 + H) == 49


def test_replayed_release_by_message_id_is_exact() -> None:
    """The FAILED itself (no ticket in the record) replays to the same release."""
    live = service()
    tickets = full_tier50(live)
    base = live.snapshot()
    live.drain_journal()
    live.apply(ev.SendResult(SENT, ticket=tickets[9], message_id=wamid(9)), T0 + S)
    live.apply(ev.SendResult(SENT, ticket=tickets[10], message_id=wamid(10)), T0 + S)
    assert live.apply(failed_by_wamid("s1", rcpt(9), wamid(9), T0 + H), T0 + H).applied
    records = live.drain_journal()
    assert len(records) == 3
    copy = AdmissionService.from_snapshot(
        live.profile, base, clock="request", ticket_key=TICKET_KEY
    )
    for record in records:
        copy.replay(record)
    assert copy.snapshot() == live.snapshot()
    assert used(copy, T0 + H) == 49
    redelivered = copy.apply(failed_by_wamid("s1", rcpt(9), wamid(9), T0 + 2 * H), T0 + 2 * H)
    assert not redelivered.applied
    assert copy.apply(failed_by_wamid("s1", rcpt(10), wamid(10), T0 + 2 * H), T0 + 2 * H).applied
    assert used(copy, T0 + 2 * H) == 48
