"""Meta's 131048 (spam rate limit) under the default profile, through gRPC on a
request clock: after a FAILED 131048 the number's business-initiated sends are
held for ``feedback.spam_hold_minutes`` (60 in ``meta-2025``), and
GetSenderState shows until when. Replies inside a customer service window, and
templates sent inside one, pass."""

from __future__ import annotations

from rules_harness import admit, body, feedback, ingest, refused_alike, state
from server_harness import T0, Harness, make_config, run_async, sender, serving

from tiergate.v1 import admission_pb2 as pb

PYWA = "1122334455667"  # the business number of pywa's payloads (display 972123456789)
USER = "972987654321"  # their user
M = 60_000
HOLD = 60 * M


def config() -> object:
    return make_config(
        senders=(sender(PYWA, display_phone_number="972123456789", waba_id="5467539754836534"),)
    )


async def fail_131048(h: Harness, ticket: str, at: int) -> pb.RecordFeedbackResponse:
    failed = pb.SendResult(ticket=ticket, status=pb.FAILED, meta_error_code=131048, at_unix_ms=at)
    return await feedback(h, send_result=failed)


async def held(h: Harness, recipient: str, at: int, until: int) -> None:
    res = await refused_alike(h, recipient, at, sender_id=PYWA, template="promo")
    assert (res.decision, res.reason, res.retry_at_unix_ms) == (
        pb.DECISION_RETRY_LATER,
        pb.SENDER_RESTRICTED,
        until,
    ), res


@run_async
async def test_a_failed_131048_holds_business_initiated_sends_for_the_profile_time() -> None:
    async with serving(config()) as h:
        first = await admit(h, USER, T0, sender_id=PYWA, template="promo")
        assert first.decision == pb.DECISION_ADMIT
        out = await fail_131048(h, first.ticket, T0 + 1000)
        assert out.applied and "held until" in out.detail, out
        until = T0 + 1000 + HOLD
        assert (await state(h, PYWA, T0 + 2000)).spam_held_until_unix_ms == until
        await held(h, "15550001111", T0 + 2000, until)
        await held(h, "15550001111", until - 1, until)
        # A user who writes in opens a window: replies, and templates inside it, pass.
        inbound = pb.InboundMessage(
            sender_id=PYWA, recipient="15550002222", at_unix_ms=T0 + 3000, message_id="wamid.in1"
        )
        assert (await feedback(h, inbound_message=inbound)).applied
        reply = await admit(h, "15550002222", T0 + 4000, sender_id=PYWA, kind=pb.FREE_FORM)
        assert reply.decision == pb.DECISION_ADMIT
        inside = await admit(h, "15550002222", T0 + 5000, sender_id=PYWA, template="promo")
        assert inside.decision == pb.DECISION_ADMIT
        # When the hold ends, business-initiated sends pass again.
        after = await admit(h, "15550001111", until, sender_id=PYWA, template="promo")
        assert after.decision == pb.DECISION_ADMIT
        assert (await state(h, PYWA, until)).spam_held_until_unix_ms == 0


@run_async
async def test_another_131048_during_the_hold_extends_it() -> None:
    async with serving(config()) as h:
        a = await admit(h, USER, T0, sender_id=PYWA, template="promo")
        b = await admit(h, "15550003333", T0, sender_id=PYWA, template="promo")
        assert (await fail_131048(h, a.ticket, T0 + 1000)).applied
        assert (await fail_131048(h, b.ticket, T0 + 30 * M)).applied
        until = T0 + 30 * M + HOLD
        assert (await state(h, PYWA, T0 + 31 * M)).spam_held_until_unix_ms == until
        await held(h, "15550001111", T0 + 31 * M, until)


@run_async
async def test_a_131048_failure_webhook_holds_the_number() -> None:
    # pywa's failed-status body with its error code replaced by 131048 (no
    # published body fails with 131048); the send is linked to its ticket first.
    doc = body("messages__message_status-failed__pywa")
    status = doc["entry"][0]["changes"][0]["value"]["statuses"][0]
    status["errors"][0]["code"] = 131048
    at = int(status["timestamp"]) * 1000
    async with serving(config()) as h:
        first = await admit(h, USER, at - 5000, sender_id=PYWA, template="promo")
        sent = pb.SendResult(
            ticket=first.ticket, status=pb.SENT, message_id=status["id"], at_unix_ms=at - 4000
        )
        assert (await feedback(h, send_result=sent)).applied
        out = await ingest(h, doc, at)
        assert out.applied == 1, out
        assert (await state(h, PYWA, at)).spam_held_until_unix_ms == at + HOLD
        await held(h, "15550001111", at + 1, at + HOLD)
