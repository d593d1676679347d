"""Webhooks after the gateway's own feedback, and webhooks redelivered across a restart.

- A ``failed`` status names Meta's message id, the sender and the recipient only:
  when the gateway reported SENT with its ticket and that message id, the
  failure releases the ticket's slot.
- A restart loses the webhook de-duplication memory: a redelivered PAUSED must
  still be the pause already counted.

Bodies are the fixtures' JSON with ids and times set by the test.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from webhook_helpers import dumps, real, synthetic

from tiergate.engine import constants as c
from tiergate.policy.answers import AdmitResult
from tiergate.policy.events import (
    Category,
    Kind,
    SenderUpdate,
    SendResult,
    SendStatus,
)
from tiergate.policy.profile import load_profile
from tiergate.policy.requests import AdmitRequest
from tiergate.policy.service import AdmissionService
from tiergate.policy.state import HELD
from tiergate.webhooks.ingest import IngestResult, ingest

HOUR = 3_600_000
DAY = 24 * HOUR
PYWA = "1122334455667"  # phone_number_id of the pywa payloads (display 972123456789)
USER = "972987654321"  # their user
DOCS = "106540352242922"  # the sender of the synthetic payloads' WABA
WABA = "102290129340398"
TEMPLATE = "order_confirmation"  # id 1689556908129832 in the template payloads
T = 1_764_000_000_000  # the synthetic payloads' time
FAILED_FIXTURE = "messages__message_status-failed__pywa"

Restart = Callable[[AdmissionService, list[bytes]], AdmissionService]


def _service(at: int, profile: str = "meta-2025") -> AdmissionService:
    service = AdmissionService(load_profile(profile))
    for sid, display in ((PYWA, "972123456789"), (DOCS, "15550783881")):
        update = SenderUpdate(
            sender_id=sid, portfolio_id="P1", waba_id=WABA, display_phone_number=display
        )
        assert service.apply(update, at).applied
    return service


def _from_snapshot(service: AdmissionService, log: list[bytes]) -> AdmissionService:
    return AdmissionService.from_snapshot(
        service.profile, service.snapshot(), ticket_key=service.ticket_key
    )


def _from_journal(service: AdmissionService, log: list[bytes]) -> AdmissionService:
    log.extend(service.drain_journal())
    fresh = AdmissionService(service.profile, ticket_key=service.ticket_key)
    for record in log:
        fresh.replay(record)
    return fresh


RESTARTS = pytest.mark.parametrize(
    "restart", [_from_snapshot, _from_journal], ids=["snapshot", "journal"]
)


def _template(service: AdmissionService, sender: str, user: str, now: int) -> AdmitResult:
    req = AdmitRequest(
        sender,
        user,
        kind=int(Kind.TEMPLATE),
        category=int(Category.MARKETING),
        template_id=TEMPLATE,
    )
    return service.admit(req, now)


# --- failed statuses by message id ------------------------------------------------


def _failed_body(message_id: str, code: int | None = None) -> tuple[bytes, int]:
    """The real ``failed`` status with ``message_id``; and its time in ms."""
    doc = json.loads(real(FAILED_FIXTURE))
    status = doc["entry"][0]["changes"][0]["value"]["statuses"][0]
    status["id"] = message_id
    if code is not None:
        status["errors"][0]["code"] = code
    return dumps(doc), int(status["timestamp"]) * 1000


def _sent(service: AdmissionService, ticket: str, message_id: str, now: int) -> None:
    res = service.apply(SendResult(SendStatus.SENT, ticket=ticket, message_id=message_id), now)
    assert res.applied and "linked" in res.detail, res.detail


def _used(service: AdmissionService, now: int) -> int:
    return service.sender_state(PYWA, now).used_24h


def _check(result: IngestResult, applied: int) -> None:
    assert result.applied == applied, result.ignored_events
    assert result.ignored == len(result.ignored_events) == 1 - applied


@pytest.mark.parametrize("code", [None, 131026, 131000])
def test_failed_status_releases_the_ticket_linked_by_sent(code: int | None) -> None:
    body, at = _failed_body("wamid.HBgMOTcyOTg3NjU0MzIxFQIAERgSQTE=", code)
    service = _service(at - HOUR)
    admitted = _template(service, PYWA, USER, at - 60_000)
    assert admitted.decision == c.ADMIT and admitted.counted
    _sent(service, admitted.ticket, "wamid.HBgMOTcyOTg3NjU0MzIxFQIAERgSQTE=", at - 59_000)
    assert _used(service, at) == 1
    _check(ingest(service, body, None, "", at + 1000), 1)
    assert _used(service, at + 1000) == 0
    # The same as a FAILED send result with the ticket: releasing again changes nothing.
    twice = service.apply(
        SendResult(SendStatus.FAILED, ticket=admitted.ticket, meta_error_code=131026), at + 2000
    )
    assert not twice.applied
    assert _used(service, at + 2000) == 0


def test_failed_status_without_link_is_declined_with_the_reason() -> None:
    body, at = _failed_body("wamid.unlinked")
    service = _service(at - HOUR)
    admitted = _template(service, PYWA, USER, at - 60_000)
    _sent(service, admitted.ticket, "wamid.another", at - 59_000)
    result = ingest(service, body, None, "", at + 1000)
    _check(result, 0)
    field, reason = result.ignored_events[0]
    assert field == "messages"
    assert "no ticket linked to message wamid.unlinked" in reason
    assert _used(service, at + 1000) == 1


@RESTARTS
def test_link_survives_a_restart(restart: Restart) -> None:
    body, at = _failed_body("wamid.restart")
    service = _service(at - HOUR)
    admitted = _template(service, PYWA, USER, at - 60_000)
    _sent(service, admitted.ticket, "wamid.restart", at - 59_000)
    service = restart(service, [])
    assert _used(service, at) == 1
    _check(ingest(service, body, None, "", at + 1000), 1)
    assert _used(service, at + 1000) == 0
    # Redelivered after another restart (the webhook memory is gone): not applied twice.
    log: list[bytes] = []
    again = ingest(restart(service, log), body, None, "", at + 2000)
    _check(again, 0)


# --- redelivered PAUSED across restarts -------------------------------------------


def _template_body(name: str, at_s: int, *, titled: bool = True) -> bytes:
    """A template status fixture at ``at_s`` (Unix s); without Meta's pause title if asked."""
    doc = json.loads(synthetic(name))
    doc["entry"][0]["time"] = at_s
    if not titled:
        del doc["entry"][0]["changes"][0]["value"]["other_info"]
    return dumps(doc)


def _paused_until(service: AdmissionService, now: int) -> int:
    res = _template(service, DOCS, "15550004444", now)
    assert (res.decision, res.reason) == (c.RETRY_LATER, c.TEMPLATE_PAUSED), res
    return res.retry_at_unix_ms


@RESTARTS
def test_redelivered_pause_after_restart_is_still_the_first(restart: Restart) -> None:
    # meta-2024's pause rules: a pause without a title runs the next pause_hours
    # duration, and a third pause disables.
    log: list[bytes] = []
    service = _service(T, "meta-2024")
    first = synthetic("message_template_status_update__paused-first")
    _check(ingest(service, first, None, "", T + 1000), 1)
    assert _paused_until(service, T + 2000) == T + 3 * HOUR

    service = restart(service, log)  # the webhook de-duplication memory is lost
    replayed = ingest(service, first, None, "", T + HOUR)
    _check(replayed, 0)
    assert "already applied" in replayed.ignored_events[0][1]
    assert _paused_until(service, T + HOUR) == T + 3 * HOUR  # first pause, not second
    # Meta unpauses; a new pause is the second: 6 h from Meta's time.
    reinstated = _template_body("message_template_status_update__reinstated", T // 1000 + 4 * 3600)
    _check(ingest(service, reinstated, None, "", T + 4 * HOUR), 1)
    assert _template(service, DOCS, "15550004444", T + 4 * HOUR).decision == c.ADMIT
    at2 = T + 5 * HOUR
    second = _template_body(
        "message_template_status_update__paused-first", at2 // 1000, titled=False
    )
    _check(ingest(service, second, None, "", at2 + 1000), 1)
    assert _paused_until(service, at2 + 2000) == at2 + 6 * HOUR

    service = restart(service, log)
    _check(ingest(service, second, None, "", at2 + HOUR), 0)  # still the second pause
    assert _paused_until(service, at2 + HOUR) == at2 + 6 * HOUR
    reinstated = _template_body(
        "message_template_status_update__reinstated", at2 // 1000 + 7 * 3600
    )
    _check(ingest(service, reinstated, None, "", at2 + 7 * HOUR), 1)
    at3 = at2 + 8 * HOUR
    third = _template_body(
        "message_template_status_update__paused-first", at3 // 1000, titled=False
    )
    _check(ingest(service, third, None, "", at3 + 1000), 1)
    disabled = _template(service, DOCS, "15550004444", at3 + 2000)
    assert (disabled.decision, disabled.reason) == (c.REJECT, c.TEMPLATE_DISABLED)


@RESTARTS
def test_meta_2025_pause_without_title_holds_until_lifted_across_restarts(
    restart: Restart,
) -> None:
    log: list[bytes] = []
    service = _service(T)
    untitled = _template_body(
        "message_template_status_update__paused-first", T // 1000, titled=False
    )
    _check(ingest(service, untitled, None, "", T + 1000), 1)
    assert _paused_until(service, T + 2000) == HELD
    service = restart(service, log)
    _check(ingest(service, untitled, None, "", T + HOUR), 0)  # the same pause
    assert _paused_until(service, T + 30 * DAY) == HELD  # no end of its own
    state = service.sender_state(DOCS, T + 30 * DAY)
    (paused,) = state.paused_templates
    assert (paused.reason, paused.until_lifted, paused.paused_until_unix_ms) == ("PAUSED", True, 0)
    at2 = T + 30 * DAY
    reinstated = _template_body("message_template_status_update__reinstated", at2 // 1000)
    _check(ingest(service, reinstated, None, "", at2), 1)
    assert _template(service, DOCS, "15550004444", at2).decision == c.ADMIT
    # Pauses two and three: never a disable inferred from a count.
    for k in (1, 2):
        at = at2 + k * DAY
        pause = _template_body(
            "message_template_status_update__paused-first", at // 1000, titled=False
        )
        _check(ingest(service, pause, None, "", at), 1)
        assert _paused_until(service, at + HOUR) == HELD
        service = restart(service, log)
        lifted = _template_body("message_template_status_update__reinstated", at // 1000 + 60)
        _check(ingest(service, lifted, None, "", at + 60_000), 1)
        assert _template(service, DOCS, "15550004444", at + 60_000).decision == c.ADMIT
