"""A pause is counted once: redelivered PAUSED events never bring a template closer to disabled.

A PAUSED event is the same pause as the last one counted when it names the
same end (``paused_until``), or — while the template is still paused — when it
has the same start (its event time). A new pause after an unpause counts.
"""

from __future__ import annotations

import struct

import pytest

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.persistence import SNAPSHOT_MAGIC
from tiergate.policy.service import AdmissionService
from tiergate.policy.state import HELD

from .helpers import T0, TICKET_KEY, D, H, add_sender, admit, rcpt, service

PAUSED, UNPAUSED = ev.TemplateStatus.PAUSED, ev.TemplateStatus.UNPAUSED


def pause(at: int, until: int = 0) -> ev.TemplateUpdate:
    return ev.TemplateUpdate("t1", PAUSED, paused_until_unix_ms=until, at_unix_ms=at)


def retry_at(svc: AdmissionService, at: int, i: int = 1) -> int:
    res = admit(svc, "s1", rcpt(i), at, template="t1")
    assert (res.decision, res.reason) == (c.RETRY_LATER, c.TEMPLATE_PAUSED), res
    return res.retry_at_unix_ms


def restarted(svc: AdmissionService, how: str, log: list[bytes]) -> AdmissionService:
    """A new service from ``svc``'s snapshot, or from its whole journal (kept in ``log``)."""
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
def test_same_pause_with_its_end_counts_once_across_restarts(how: str) -> None:
    log: list[bytes] = []
    svc = service()
    add_sender(svc)
    assert svc.apply(pause(T0, T0 + 3 * H), T0).applied
    assert retry_at(svc, T0 + H) == T0 + 3 * H
    svc = restarted(svc, how, log)
    again = svc.apply(pause(T0, T0 + 3 * H), T0 + H)
    assert not again.applied and "already applied" in again.detail
    assert retry_at(svc, T0 + H) == T0 + 3 * H
    # Redelivered after the pause ended: still the same pause.
    assert not svc.apply(pause(T0, T0 + 3 * H), T0 + 4 * H).applied
    assert admit(svc, "s1", rcpt(1), T0 + 4 * H, template="t1").decision == c.ADMIT
    # A new pause (another end) is the second: 6 h when Meta names no end.
    assert svc.apply(pause(T0 + D), T0 + D).applied
    assert retry_at(svc, T0 + D + H) == T0 + D + 6 * H
    svc = restarted(svc, how, log)
    assert not svc.apply(pause(T0 + D), T0 + D + 2 * H).applied  # same start, still paused
    assert retry_at(svc, T0 + D + 2 * H) == T0 + D + 6 * H
    assert svc.apply(ev.TemplateUpdate("t1", UNPAUSED), T0 + D + 3 * H).applied
    third = svc.apply(pause(T0 + 2 * D), T0 + 2 * D)
    assert third.applied and "disabled after 3 pauses" in third.detail
    res = admit(svc, "s1", rcpt(2), T0 + 3 * D, template="t1")
    assert (res.decision, res.reason) == (c.REJECT, c.TEMPLATE_DISABLED)


def test_pause_without_end_is_dated_by_its_event_time() -> None:
    """Under the server clock the pause runs from Meta's time, and a replay finds it."""
    svc = AdmissionService(service().profile, ticket_key=TICKET_KEY)  # server clock
    add_sender(svc)
    # The webhook arrives 20 minutes after Meta paused the template.
    assert svc.apply(pause(T0), T0 + 20 * 60_000).applied
    assert retry_at(svc, T0 + H) == T0 + 3 * H
    restored = AdmissionService.from_snapshot(svc.profile, svc.snapshot(), ticket_key=TICKET_KEY)
    assert not restored.apply(pause(T0), T0 + 2 * H).applied
    assert retry_at(restored, T0 + 2 * H) == T0 + 3 * H
    # The same start after the pause ended, without an end: still that pause.
    assert not restored.apply(pause(T0), T0 + 4 * H).applied
    assert restored.apply(pause(T0 + 5 * H), T0 + 5 * H).applied
    assert retry_at(restored, T0 + 6 * H) == T0 + 11 * H


def test_a_new_pause_while_still_paused_counts() -> None:
    """Meta's next pause may arrive before tiergate saw the unpause: another end, another pause."""
    svc = service()
    add_sender(svc)
    assert svc.apply(pause(T0, T0 + 3 * H), T0).applied
    assert svc.apply(pause(T0 + 2 * H, T0 + 8 * H), T0 + 2 * H).applied
    assert retry_at(svc, T0 + 3 * H) == T0 + 8 * H
    assert svc.apply(pause(T0 + 9 * H), T0 + 9 * H).applied
    res = admit(svc, "s1", rcpt(1), T0 + D, template="t1")
    assert res.reason == c.TEMPLATE_DISABLED
    # The third pause, redelivered, leaves the template as it is.
    assert not svc.apply(pause(T0 + 9 * H), T0 + D).applied


def test_snapshot_without_pause_fields_still_loads() -> None:
    """Snapshots written before pauses were dated load: the end is the pause end."""
    svc = service()
    add_sender(svc)
    svc.apply(pause(T0, T0 + 3 * H), T0)
    data = svc.snapshot()
    old = data.replace(b',"pause_start":' + str(T0).encode(), b"").replace(
        b',"pause_end":' + str(T0 + 3 * H).encode(), b""
    )
    assert len(old) < len(data)
    # The JSON length in the header must match the shortened body.
    head = len(SNAPSHOT_MAGIC)
    version, size = struct.unpack_from("<HI", data, head)
    old = old[:head] + struct.pack("<HI", version, size - (len(data) - len(old))) + old[head + 6 :]
    restored = AdmissionService.from_snapshot(
        svc.profile, old, clock="request", ticket_key=TICKET_KEY
    )
    assert not restored.apply(pause(T0, T0 + 3 * H), T0 + H).applied
    assert retry_at(restored, T0 + H) == T0 + 3 * H


# --- meta-2025: only Meta's DISABLED disables; untitled pauses and failures hold ----


@pytest.mark.parametrize("how", ["snapshot", "journal"])
def test_meta_2025_holds_restore_with_their_reason(how: str) -> None:
    log: list[bytes] = []
    svc = service("meta-2025")
    add_sender(svc)
    assert svc.apply(pause(T0), T0).applied  # no end, no title: held until lifted
    titled = ev.TemplateUpdate("t2", PAUSED, at_unix_ms=T0, pause_reason="SECOND_PAUSE")
    assert svc.apply(titled, T0).applied
    ticket = admit(svc, "s1", rcpt(5), T0, template="t3").ticket
    failed = ev.SendResult(
        ev.SendStatus.FAILED, ticket=ticket, meta_error_code=132016, template_id="t3"
    )
    assert "held" in svc.apply(failed, T0 + 1).detail
    svc = restarted(svc, how, log)
    assert retry_at(svc, T0 + H) == HELD
    reports = {
        p.template_id: (p.reason, p.paused_until_unix_ms, p.until_lifted)
        for p in svc.sender_state("s1", T0 + H).paused_templates
    }
    assert reports == {
        "t1": ("PAUSED", 0, True),
        "t2": ("SECOND_PAUSE", T0 + 6 * H, False),
        "t3": ("FAILED 132016", 0, True),
    }
    # The same pause redelivered after the restart is that pause; UNPAUSED lifts it.
    assert not svc.apply(pause(T0), T0 + D).applied
    assert svc.apply(ev.TemplateUpdate("t1", UNPAUSED), T0 + D).applied
    assert admit(svc, "s1", rcpt(1), T0 + D, template="t1").decision == c.ADMIT
    # A third and fourth pause hold again; nothing is disabled by a count.
    for k in (2, 3, 4):
        assert svc.apply(pause(T0 + k * D), T0 + k * D).applied
        assert retry_at(svc, T0 + k * D + H) == HELD
        assert svc.apply(ev.TemplateUpdate("t1", UNPAUSED), T0 + k * D + 2 * H).applied
    assert admit(svc, "s1", rcpt(2), T0 + 5 * D, template="t1").decision == c.ADMIT


def test_meta_2025_failure_without_a_template_holds_nothing() -> None:
    svc = service("meta-2025")
    add_sender(svc)
    ticket = admit(svc, "s1", rcpt(5), T0, template="t3").ticket
    failed = ev.SendResult(ev.SendStatus.FAILED, ticket=ticket, meta_error_code=132015)
    assert "held" not in svc.apply(failed, T0 + 1).detail
    assert admit(svc, "s1", rcpt(6), T0 + 2, template="t3").decision == c.ADMIT


def test_meta_2025_failure_during_a_pause_with_an_end_leaves_that_end() -> None:
    svc = service("meta-2025")
    add_sender(svc)
    ticket = admit(svc, "s1", rcpt(5), T0, template="t1").ticket
    titled = ev.TemplateUpdate("t1", PAUSED, at_unix_ms=T0 + 1, pause_reason="FIRST_PAUSE")
    assert svc.apply(titled, T0 + 1).applied
    failed = ev.SendResult(
        ev.SendStatus.FAILED, ticket=ticket, meta_error_code=132015, template_id="t1"
    )
    assert "held" not in svc.apply(failed, T0 + 2).detail
    assert retry_at(svc, T0 + H) == T0 + 1 + 3 * H
    assert admit(svc, "s1", rcpt(6), T0 + 1 + 3 * H, template="t1").decision == c.ADMIT
