"""Under the request clock, only an accepted request moves time.

A refused event (``InvalidArgument``) and a decision for an unknown sender
touch no state: no idempotency key or message id is pruned, no time-driven
change (an apply-mode upgrade here) is made, no scope clock moves, nothing
is journaled, and ``latest_ms`` — the time a request without ``at_unix_ms``
is decided at — stays where it was.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from tiergate.engine import constants as c
from tiergate.policy import columnar
from tiergate.policy import events as ev
from tiergate.policy.columnar import AdmitColumns, admit_columns
from tiergate.policy.persistence import SNAPSHOT_MAGIC
from tiergate.policy.requests import InvalidArgument
from tiergate.policy.service import AdmissionService

from .helpers import T0, D, H, S, add_sender, admit, rcpt, req, send_unique, service

AHEAD = T0 + 3 * D  # after every key's expiry and the upgrade's due time
FAILED = ev.SendStatus.FAILED


def state(svc: AdmissionService) -> dict[str, Any]:
    """The snapshot's policy state, decision counters aside (they count every answer)."""
    data = svc.snapshot()
    head = len(SNAPSHOT_MAGIC) + 6
    (size,) = struct.unpack_from("<I", data, len(SNAPSHOT_MAGIC) + 2)
    doc: dict[str, Any] = json.loads(data[head : head + size])
    doc.pop("unknown")
    for s in doc["senders"]:
        s.pop("counts", None)
    doc["engine"] = data[head + size :]
    return doc


def world() -> tuple[AdmissionService, str]:
    """meta-2024 (upgrades applied 24 h after the threshold): a sender past its
    upgrade threshold, a keyed admit, a de-duplicated inbound message id."""
    svc = service("meta-2024")
    add_sender(svc, "s1", tier="TIER_250", waba_id="w1")
    add_sender(svc, "s2", tier="TIER_250", display_phone_number="15550002")
    assert all(r.decision == c.ADMIT for r in send_unique(svc, "s1", T0, 130))
    keyed = admit(svc, "s1", rcpt(1), T0 + H, key="order-1")
    inbound = ev.InboundMessage("s1", rcpt(2), at_unix_ms=T0 + H, message_id="wamid.1")
    assert svc.apply(inbound, T0 + H).applied
    svc.drain_journal()
    return svc, keyed.ticket


REFUSED_EVENTS = {
    "inbound recipient": ev.InboundMessage("s1", "12ab", at_unix_ms=AHEAD),
    "opt_out recipient": ev.OptOut("1" * 16, sender_id="s1", at_unix_ms=AHEAD),
    "send_result status": ev.SendResult(9, ticket="t", at_unix_ms=AHEAD),  # type: ignore[arg-type]
    "send_result message_id": ev.SendResult(
        ev.SendStatus.SENT, ticket="t", message_id="m" * 300, at_unix_ms=AHEAD
    ),
    "send_result recipient": ev.SendResult(
        FAILED, sender_id="s1", recipient="12ab", idempotency_key="k", at_unix_ms=AHEAD
    ),
    "send_result names nothing": ev.SendResult(FAILED, sender_id="s1", at_unix_ms=AHEAD),
    "sender_update tier": ev.SenderUpdate("s1", tier="TIER_NOPE", at_unix_ms=AHEAD),
    "sender_update sender_id": ev.SenderUpdate("", at_unix_ms=AHEAD),
    "sender_update quality": ev.SenderUpdate(
        "s1",
        quality=42,  # type: ignore[arg-type]
        at_unix_ms=AHEAD,
    ),
    "template_update status": ev.TemplateUpdate(
        "t1",
        42,  # type: ignore[arg-type]
        at_unix_ms=AHEAD,
    ),
    "template_update pause": ev.TemplateUpdate(
        "t1", ev.TemplateStatus.PAUSED, paused_until_unix_ms=-1, at_unix_ms=AHEAD
    ),
}


@pytest.mark.parametrize("event", list(REFUSED_EVENTS.values()), ids=list(REFUSED_EVENTS))
def test_a_refused_event_changes_nothing(event: ev.Event) -> None:
    svc, ticket = world()
    before, latest = state(svc), svc.latest_ms
    with pytest.raises(InvalidArgument):
        svc.apply(event, AHEAD)
    assert svc.drain_journal() == []
    assert state(svc) == before  # no key or message id pruned, no upgrade made
    assert svc.latest_ms == latest == T0 + H
    assert admit(svc, "s1", rcpt(1), T0 + H + S, key="order-1").ticket == ticket


def test_a_decision_for_an_unknown_sender_changes_nothing() -> None:
    svc, ticket = world()
    before = state(svc)
    nobody = [req("nobody", rcpt(i), AHEAD + i, key=f"k{i}") for i in range(3)]
    assert svc.admit(nobody[0], AHEAD).reason == c.UNKNOWN_SENDER
    assert {r.reason for r in svc.admit_many(nobody, AHEAD)} == {c.UNKNOWN_SENDER}
    columns = admit_columns(svc, AdmitColumns.from_requests(nobody), AHEAD)
    assert set(columns.reasons) == {c.UNKNOWN_SENDER}
    assert svc.drain_journal() == []
    assert state(svc) == before  # no key pruned, no upgrade made, no scope clock moved
    assert svc.latest_ms == T0 + H
    assert svc.unknown_sender_decisions == 7
    assert admit(svc, "s1", rcpt(1), T0 + H + S, key="order-1").ticket == ticket
    with pytest.raises(KeyError):
        svc.sender_state("nobody", AHEAD, AHEAD)
    assert state(svc) == before


def test_a_send_result_naming_a_ticket_never_issued_changes_nothing() -> None:
    svc, ticket = world()
    before = state(svc)
    first, _, rest = ticket.partition(".")
    for made_up in ("@ticket:0", f"{int(first, 16) + 1:x}.{rest}"):
        for status in (FAILED, ev.SendStatus.SENT):
            result = svc.apply(ev.SendResult(status, ticket=made_up, at_unix_ms=AHEAD), AHEAD)
            assert not result.applied and "ticket" in result.detail
    assert svc.drain_journal() == []
    assert state(svc) == before  # no key pruned, no upgrade made
    assert svc.latest_ms == T0 + H
    assert admit(svc, "s1", rcpt(1), T0 + H + S, key="order-1").ticket == ticket


def test_accepted_requests_move_latest_ms() -> None:
    svc, _ = world()
    assert svc.sender_state("s2", 0, T0 + 2 * H).at_unix_ms == T0 + 2 * H
    assert svc.latest_ms == T0 + 2 * H
    assert svc.apply(ev.InboundMessage("s2", rcpt(3), at_unix_ms=T0 + 3 * H), 0).applied
    assert svc.latest_ms == T0 + 3 * H
    admit(svc, "s2", rcpt(4), T0 + 4 * H)
    assert svc.latest_ms == T0 + 4 * H
    admit(svc, "s2", rcpt(5), T0 + 3 * H)  # an older time moves nothing back
    assert svc.latest_ms == T0 + 4 * H


@pytest.mark.parametrize("path", ["admit_many", "columns"])
def test_an_item_without_a_time_takes_the_latest_accepted_time_before_it(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def decide(svc: AdmissionService, reqs: list[Any]) -> list[int]:
        if path == "columns":
            now = svc.latest_ms
            return list(admit_columns(svc, AdmitColumns.from_requests(reqs), now).reasons)
        return [r.reason for r in svc.admit_many(reqs, svc.latest_ms)]

    def in_parts(*args: object) -> None:
        raise AssertionError("one engine call decides this batch")

    monkeypatch.setattr(columnar, "_decide_in_parts", in_parts)
    svc, _ = world()
    # An unknown sender's time is not taken; a known sender's is, from that item on.
    reqs = [
        req("s2", rcpt(10), 0),
        req("nobody", rcpt(11), T0 + 20 * H),  # before the upgrade falls due
        req("s2", rcpt(12), 0),
        req("s1", rcpt(13), T0 + 5 * H),
        req("s2", rcpt(14), 0),
    ]
    assert decide(svc, reqs) == [c.OK, c.UNKNOWN_SENDER, c.OK, c.OK, c.OK]
    assert svc.latest_ms == T0 + 5 * H
    journal = svc.drain_journal()
    assert len(journal) == 1
    rows = struct.iter_unpack("<qiQIQqH", journal[0][6 : 6 + 4 * 42])
    assert [row[0] for row in rows] == [T0 + H, T0 + H, T0 + 5 * H, T0 + 5 * H]
