"""Every RPC of tiergate.v1.AdmissionControl against a real in-process server."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest
from server_harness import (
    OTHER_SENDER,
    PORTFOLIO,
    SENDER,
    T0,
    Harness,
    make_config,
    run_async,
    sender,
    serving,
)

from tiergate.v1 import admission_pb2 as pb

HOUR = 3_600_000
DAY = 24 * HOUR


def req(
    recipient: str = "15551230000",
    *,
    sender_id: str = SENDER,
    at: int = T0,
    kind: pb.MessageKind.ValueType = pb.TEMPLATE,
    category: pb.Category.ValueType = pb.MARKETING,
    template_id: str = "spring_sale",
    key: str = "",
    dry_run: bool = False,
) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=sender_id,
        recipient=recipient,
        kind=kind,
        category=category,
        template_id=template_id if kind == pb.TEMPLATE else "",
        idempotency_key=key,
        at_unix_ms=at,
        dry_run=dry_run,
    )


def recipients(n: int, start: int = 0) -> list[str]:
    return [f"1555{start + i:07d}" for i in range(n)]


async def feedback(h: Harness, event: object) -> pb.RecordFeedbackResponse:
    return await h.client.record_feedback(event)  # type: ignore[arg-type]


async def state(h: Harness, at: int = T0, sender_id: str = SENDER) -> pb.SenderState:
    return await h.client.sender_state(sender_id, at_unix_ms=at)


def counts(s: pb.SenderState) -> dict[str, int]:
    return {pb.Reason.Name(c.reason): c.count for c in s.decision_counts if c.count}


# --- Admit ---------------------------------------------------------------------------


@run_async
async def test_admit_counts_a_new_recipient_and_returns_a_ticket() -> None:
    async with serving() as h:
        r = await h.stub.Admit(req())
        assert (r.decision, r.reason) == (pb.DECISION_ADMIT, pb.OK)
        assert r.ticket
        assert r.counted
        assert (r.limit, r.used) == (250, 1)
        again = await h.stub.Admit(req(at=T0 + 10_000))
        assert again.decision == pb.DECISION_ADMIT
        assert not again.counted  # already counted in the rolling 24 h
        assert again.used == 1
        s = await state(h, T0 + 10_000)
        assert (s.used_24h, s.remaining, s.limit) == (1, 249, 250)


@run_async
async def test_idempotency_key_returns_the_first_decision_and_consumes_once() -> None:
    async with serving() as h:
        first = await h.stub.Admit(req("15550000001", key="msg-1"))
        retried = await h.stub.Admit(req("15550000001", key="msg-1", at=T0 + 5))
        assert first.decision == pb.DECISION_ADMIT
        assert retried.ticket == first.ticket
        assert (retried.decision, retried.reason) == (first.decision, first.reason)
        # Through the batch path too: the same key inside a batch is not counted again.
        batch = await h.client.admit_batch([req("15550000001", key="msg-1", at=T0 + 6)])
        assert batch[0].ticket == first.ticket
        assert (await state(h, T0 + 10)).used_24h == 1
        assert counts(await state(h, T0 + 10)).get("OK", 0) == 1


@run_async
async def test_dry_run_consumes_nothing() -> None:
    async with serving() as h:
        r = await h.stub.Admit(req(dry_run=True))
        assert r.decision == pb.DECISION_ADMIT
        assert (await state(h)).used_24h == 0


# --- every decision reason reachable through the API ---------------------------------


def protective_profile(tmp_path: Path) -> str:
    path = tmp_path / "protective.toml"
    path.write_text(
        'extends = "meta-2025"\nname = "protective"\n'
        "[protection]\nfrequency_cap = 1\nblock_marketing_on_red = true\n"
    )
    return str(path)


@run_async
async def test_reason_unknown_sender() -> None:
    async with serving() as h:
        r = await h.stub.Admit(req(sender_id="999"))
        assert (r.decision, r.reason) == (pb.DECISION_REJECT, pb.UNKNOWN_SENDER)


@pytest.mark.parametrize("status", [pb.BANNED, pb.DISABLED])
@run_async
async def test_reason_sender_blocked(status: pb.SenderStatus.ValueType) -> None:
    async with serving() as h:
        await feedback(h, pb.SenderUpdate(sender_id=SENDER, status=status, at_unix_ms=T0))
        r = await h.stub.Admit(req())
        assert (r.decision, r.reason) == (pb.DECISION_REJECT, pb.SENDER_BLOCKED)
        assert r.meta_error_code != 0


@run_async
async def test_reason_sender_restricted() -> None:
    async with serving() as h:
        await feedback(h, pb.SenderUpdate(sender_id=SENDER, status=pb.RESTRICTED, at_unix_ms=T0))
        r = await h.stub.Admit(req())
        assert r.decision != pb.DECISION_ADMIT
        assert r.reason == pb.SENDER_RESTRICTED
        # Replies inside an open window are still allowed.
        await feedback(
            h, pb.InboundMessage(sender_id=SENDER, recipient="15550009999", at_unix_ms=T0)
        )
        reply = await h.stub.Admit(req("15550009999", kind=pb.FREE_FORM, category=pb.SERVICE))
        assert reply.decision == pb.DECISION_ADMIT


@run_async
async def test_reason_template_paused_and_disabled() -> None:
    async with serving() as h:
        until = T0 + 3 * HOUR
        await feedback(
            h,
            pb.TemplateUpdate(
                template_id="spring_sale",
                status=pb.TEMPLATE_STATUS_PAUSED,
                paused_until_unix_ms=until,
                at_unix_ms=T0,
            ),
        )
        r = await h.stub.Admit(req())
        assert (r.decision, r.reason) == (pb.DECISION_RETRY_LATER, pb.TEMPLATE_PAUSED)
        assert r.retry_at_unix_ms == until
        assert (await state(h)).used_24h == 0  # paused sends do not count
        assert [t.template_id for t in (await state(h)).paused_templates] == ["spring_sale"]
        await feedback(
            h,
            pb.TemplateUpdate(
                template_id="spring_sale", status=pb.TEMPLATE_STATUS_DISABLED, at_unix_ms=T0 + 1
            ),
        )
        r = await h.stub.Admit(req(at=T0 + 2))
        assert (r.decision, r.reason) == (pb.DECISION_REJECT, pb.TEMPLATE_DISABLED)


@run_async
async def test_reason_outside_window_and_window_from_inbound() -> None:
    async with serving() as h:
        free = req("15550000077", kind=pb.FREE_FORM, category=pb.SERVICE)
        r = await h.stub.Admit(free)
        assert (r.decision, r.reason) == (pb.DECISION_REJECT, pb.OUTSIDE_WINDOW)
        assert r.meta_error_code == 131047
        applied = await feedback(
            h, pb.InboundMessage(sender_id=SENDER, recipient="15550000077", at_unix_ms=T0)
        )
        assert applied.applied
        r = await h.stub.Admit(free)
        assert r.decision == pb.DECISION_ADMIT
        assert not r.counted
        later = req("15550000077", kind=pb.FREE_FORM, category=pb.SERVICE, at=T0 + DAY + 1)
        assert (await h.stub.Admit(later)).reason == pb.OUTSIDE_WINDOW


@run_async
async def test_reason_recipient_opted_out() -> None:
    async with serving() as h:
        await feedback(h, pb.OptOut(recipient="15550000042", sender_id=SENDER, opted_out=True))
        r = await h.stub.Admit(req("15550000042"))
        assert (r.decision, r.reason) == (pb.DECISION_REJECT, pb.RECIPIENT_OPTED_OUT)
        assert r.meta_error_code == 131050
        utility = await h.stub.Admit(req("15550000042", category=pb.UTILITY))
        assert utility.decision == pb.DECISION_ADMIT


@run_async
async def test_reason_messaging_limit_with_exact_retry_time() -> None:
    async with serving(senders=(sender(tier="TIER_50"),)) as h:
        admitted = await h.client.admit_batch([req(r) for r in recipients(50)])
        assert all(r.decision == pb.DECISION_ADMIT for r in admitted)
        over = await h.stub.Admit(req("15559999999", at=T0 + 1000))
        assert (over.decision, over.reason) == (pb.DECISION_RETRY_LATER, pb.MESSAGING_LIMIT)
        assert (over.limit, over.used) == (50, 50)
        # A slot frees when the first recipients leave the rolling 24 h, never earlier.
        assert T0 + DAY <= over.retry_at_unix_ms <= T0 + DAY + 2 * 60_000
        s = await state(h, T0 + 1000)
        assert s.next_slot_free_at_unix_ms == over.retry_at_unix_ms
        # An already counted recipient costs nothing and is still admitted.
        assert (await h.stub.Admit(req(recipients(1)[0], at=T0 + 2000))).decision == (
            pb.DECISION_ADMIT
        )
        retry = await h.stub.Admit(req("15559999999", at=over.retry_at_unix_ms))
        assert retry.decision == pb.DECISION_ADMIT


@run_async
async def test_reason_marketing_frequency(tmp_path: Path) -> None:
    async with serving(profile=protective_profile(tmp_path)) as h:
        assert (await h.stub.Admit(req("15550000005"))).decision == pb.DECISION_ADMIT
        r = await h.stub.Admit(req("15550000005", at=T0 + 60_000))
        assert r.reason == pb.MARKETING_FREQUENCY
        assert r.decision != pb.DECISION_ADMIT


@run_async
async def test_reason_quality_protection(tmp_path: Path) -> None:
    config = make_config(profile=protective_profile(tmp_path), senders=(sender(quality=3),))
    async with serving(config) as h:
        r = await h.stub.Admit(req())
        assert r.reason == pb.QUALITY_PROTECTION
        assert r.decision != pb.DECISION_ADMIT
        assert (await h.stub.Admit(req(category=pb.UTILITY))).decision == pb.DECISION_ADMIT


@run_async
async def test_reason_throughput() -> None:
    async with serving() as h:
        answers = await h.client.admit_batch([req(r, category=pb.UTILITY) for r in recipients(120)])
        reasons = [a.reason for a in answers]
        assert pb.THROUGHPUT in reasons
        first = reasons.index(pb.THROUGHPUT)
        assert first >= 80  # the default 80 msg/s with a one-second burst
        throttled = answers[first]
        assert throttled.decision == pb.DECISION_RETRY_LATER
        assert T0 < throttled.retry_at_unix_ms <= T0 + 1000
        assert throttled.meta_error_code == 130429


@run_async
async def test_reason_pair_rate() -> None:
    async with serving() as h:
        answers = await h.client.admit_batch([req("15550000003", category=pb.UTILITY)] * 60)
        reasons = [a.reason for a in answers]
        assert pb.PAIR_RATE in reasons
        throttled = answers[reasons.index(pb.PAIR_RATE)]
        assert throttled.decision == pb.DECISION_RETRY_LATER
        assert throttled.meta_error_code == 131056
        assert throttled.retry_at_unix_ms > T0


# --- ordering ---------------------------------------------------------------------------


def mixed(n: int) -> list[pb.AdmitRequest]:
    """Known and unknown senders interleaved: each response says which it answered."""
    out = []
    for i in range(n):
        unknown = i % 3 == 2
        out.append(req(recipients(1, i)[0], sender_id="404" if unknown else SENDER, at=T0 + 20 * i))
    return out


def assert_in_order(requests: list[pb.AdmitRequest], answers: list[pb.AdmitResponse]) -> None:
    assert len(answers) == len(requests)
    for q, a in zip(requests, answers, strict=True):
        expected = pb.UNKNOWN_SENDER if q.sender_id == "404" else pb.OK
        assert a.reason == expected


@run_async
async def test_batch_answers_in_request_order_and_each_item_sees_the_ones_before() -> None:
    async with serving(senders=(sender(tier="TIER_50"),)) as h:
        requests = mixed(90)
        answers = await h.client.admit_batch(requests)
        known = [a for q, a in zip(requests, answers, strict=True) if q.sender_id == SENDER]
        assert [a.reason for a in known[:50]] == [pb.OK] * 50
        assert {a.reason for a in known[50:]} == {pb.MESSAGING_LIMIT}
        assert [a.used for a in known[:50]] == list(range(1, 51))
        unknown = [a for q, a in zip(requests, answers, strict=True) if q.sender_id != SENDER]
        assert {a.reason for a in unknown} == {pb.UNKNOWN_SENDER}


@run_async
async def test_stream_answers_in_request_order_across_chunks() -> None:
    async with serving(max_batch=7) as h:
        requests = mixed(300)  # 200 for the known sender: within its limit of 250
        call = h.stub.AdmitStream(iter(requests))
        answers = [a async for a in call]
        assert_in_order(requests, answers)
        assert (await call.code()) == grpc.StatusCode.OK
        # Whole chunks cross into the engine, never more than max_batch at once.
        crossings = h.sidecar.metrics.engine_crossings
        assert 300 / 7 <= crossings < 300


@run_async
async def test_stream_interleaved_write_and_read() -> None:
    async with serving() as h:
        call = h.stub.AdmitStream()
        for i, q in enumerate(mixed(30)):
            await call.write(q)
            a = await call.read()
            assert isinstance(a, pb.AdmitResponse)
            assert a.reason == (pb.UNKNOWN_SENDER if i % 3 == 2 else pb.OK)
        await call.done_writing()
        assert (await call.code()) == grpc.StatusCode.OK


# --- INVALID_ARGUMENT --------------------------------------------------------------------


async def invalid(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"sender_id": ""}, "sender_id"),
        ({"recipient": ""}, "recipient"),
        ({"recipient": "1555abc"}, "recipient"),
        ({"recipient": "1" * 16}, "recipient"),
        ({"recipient": "++1555"}, "recipient"),
        ({"kind": 9}, "kind"),
        ({"category": 9}, "category"),
        ({"sender_id": "x" * 300}, "sender_id"),
        ({"idempotency_key": "k" * 5000}, "idempotency_key"),
        ({"template_id": "t" * 5000}, "template_id"),
        ({"at_unix_ms": -1}, "at_unix_ms"),
        ({"at_unix_ms": 1 << 62}, "at_unix_ms"),
    ],
)
@run_async
async def test_admit_invalid_argument_names_the_field(bad: dict[str, object], field: str) -> None:
    async with serving() as h:
        q = req()
        for k, v in bad.items():
            setattr(q, k, v)
        details = await invalid(h.stub.Admit(q))
        assert field in details
        assert (await state(h)).used_24h == 0


@run_async
async def test_batch_invalid_item_consumes_nothing() -> None:
    async with serving() as h:
        requests = [req(r) for r in recipients(5)]
        requests[3].recipient = "not-a-number"
        details = await invalid(h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=requests)))
        assert "requests[3]" in details and "recipient" in details
        assert (await state(h)).used_24h == 0


@run_async
async def test_batch_over_the_maximum_is_invalid() -> None:
    async with serving(max_batch=10) as h:
        requests = [req(r) for r in recipients(11)]
        details = await invalid(h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=requests)))
        assert "requests" in details and "10" in details
        assert (await state(h)).used_24h == 0
        ok = await h.client.admit_batch(requests[:10])
        assert len(ok) == 10
        assert (await h.client.admit_batch([])) == []


@run_async
async def test_stream_answers_up_to_a_bad_message_then_fails_naming_it() -> None:
    async with serving() as h:
        requests = [req(r) for r in recipients(6)]
        requests[4].recipient = "12x"
        call = h.stub.AdmitStream(iter(requests))
        answers = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for a in call:
                answers.append(a)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "stream message 4" in str(info.value.details())
        assert "recipient" in str(info.value.details())
        assert len(answers) == 4
        assert all(a.decision == pb.DECISION_ADMIT for a in answers)
        assert (await state(h)).used_24h == 4  # the bad message and those after it: nothing


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.RecordFeedbackRequest(), "event"),
        (
            pb.RecordFeedbackRequest(inbound_message=pb.InboundMessage(recipient="1555")),
            "inbound_message.sender_id",
        ),
        (
            pb.RecordFeedbackRequest(inbound_message=pb.InboundMessage(sender_id=SENDER)),
            "inbound_message.recipient",
        ),
        (
            pb.RecordFeedbackRequest(
                inbound_message=pb.InboundMessage(
                    sender_id=SENDER, recipient="1555", entry_point=pb.EntryPoint.ValueType(7)
                )
            ),
            "inbound_message.entry_point",
        ),
        (
            pb.RecordFeedbackRequest(
                send_result=pb.SendResult(ticket="t", status=pb.SendStatus.ValueType(0))
            ),
            "send_result.status",
        ),
        (
            pb.RecordFeedbackRequest(send_result=pb.SendResult(status=pb.FAILED)),
            "send_result.ticket",
        ),
        (pb.RecordFeedbackRequest(opt_out=pb.OptOut(recipient="1555")), "opt_out.portfolio_id"),
        (pb.RecordFeedbackRequest(opt_out=pb.OptOut(sender_id=SENDER)), "opt_out.recipient"),
        (
            pb.RecordFeedbackRequest(sender_update=pb.SenderUpdate(tier="TIER_250")),
            "sender_update.sender_id",
        ),
        (
            pb.RecordFeedbackRequest(
                sender_update=pb.SenderUpdate(sender_id=SENDER, quality=pb.Quality.ValueType(42))
            ),
            "sender_update.quality",
        ),
        (
            pb.RecordFeedbackRequest(
                sender_update=pb.SenderUpdate(
                    sender_id=SENDER, status=pb.SenderStatus.ValueType(42)
                )
            ),
            "sender_update.status",
        ),
        (
            pb.RecordFeedbackRequest(template_update=pb.TemplateUpdate(template_id="t")),
            "template_update.status",
        ),
        (
            pb.RecordFeedbackRequest(
                template_update=pb.TemplateUpdate(status=pb.TEMPLATE_STATUS_PAUSED)
            ),
            "template_update.template_id",
        ),
        (
            pb.RecordFeedbackRequest(
                inbound_message=pb.InboundMessage(sender_id=SENDER, recipient="12ab")
            ),
            "inbound_message.recipient",
        ),
        (
            pb.RecordFeedbackRequest(
                opt_out=pb.OptOut(sender_id=SENDER, recipient="1" * 16, opted_out=True)
            ),
            "opt_out.recipient",
        ),
        (
            pb.RecordFeedbackRequest(send_result=pb.SendResult(ticket="t" * 129, status=pb.FAILED)),
            "send_result.ticket",
        ),
        (
            pb.RecordFeedbackRequest(
                sender_update=pb.SenderUpdate(sender_id="s" * 129, tier="TIER_250")
            ),
            "sender_update.sender_id",
        ),
        (
            pb.RecordFeedbackRequest(
                sender_update=pb.SenderUpdate(sender_id=SENDER, throughput_mps=-5)
            ),
            "sender_update.throughput_mps",
        ),
        (
            pb.RecordFeedbackRequest(
                template_update=pb.TemplateUpdate(
                    template_id="t", status=pb.TEMPLATE_STATUS_PAUSED, paused_until_unix_ms=-1
                )
            ),
            "template_update.paused_until_unix_ms",
        ),
    ],
)
@run_async
async def test_feedback_invalid_argument_names_the_field(
    request_: pb.RecordFeedbackRequest, field: str
) -> None:
    async with serving() as h:
        details = await invalid(h.stub.RecordFeedback(request_))
        assert field in details


@run_async
async def test_times_past_year_9999_are_invalid() -> None:
    async with serving() as h:
        requests = [req(r) for r in recipients(4)]
        requests[2].at_unix_ms = 1 << 60
        details = await invalid(h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=requests)))
        assert "requests[2].at_unix_ms" in details
        details = await invalid(
            h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER, at_unix_ms=1 << 60))
        )
        assert "at_unix_ms" in details
        event = pb.InboundMessage(sender_id=SENDER, recipient="1555", at_unix_ms=1 << 60)
        details = await invalid(
            h.stub.RecordFeedback(pb.RecordFeedbackRequest(inbound_message=event))
        )
        assert "inbound_message.at_unix_ms" in details
        assert (await state(h)).used_24h == 0


@run_async
async def test_sender_state_requires_a_sender_id() -> None:
    async with serving() as h:
        details = await invalid(h.stub.GetSenderState(pb.GetSenderStateRequest()))
        assert "sender_id" in details


# --- RecordFeedback ----------------------------------------------------------------------


@run_async
async def test_failed_send_result_releases_the_slot() -> None:
    async with serving() as h:
        r = await h.stub.Admit(req("15550000011"))
        assert (await state(h)).used_24h == 1
        out = await feedback(
            h, pb.SendResult(ticket=r.ticket, status=pb.FAILED, meta_error_code=131026)
        )
        assert out.applied
        assert (await state(h, T0 + 1)).used_24h == 0
        again = await feedback(h, pb.SendResult(ticket=r.ticket, status=pb.FAILED))
        assert (await state(h, T0 + 2)).used_24h == 0
        assert isinstance(again.applied, bool)


@run_async
async def test_sender_update_creates_and_changes_senders() -> None:
    async with serving() as h:
        out = await feedback(
            h,
            pb.SenderUpdate(
                sender_id=OTHER_SENDER, portfolio_id=PORTFOLIO, tier="TIER_2K", at_unix_ms=T0
            ),
        )
        assert out.applied
        s = await state(h, sender_id=OTHER_SENDER)
        assert (s.portfolio_id, s.tier, s.limit) == (PORTFOLIO, "TIER_2K", 2000)
        # Portfolio scope: the first sender shares the portfolio's tier and usage.
        assert (await state(h)).limit == 2000
        await h.stub.Admit(req("15550000001", sender_id=OTHER_SENDER))
        assert (await state(h)).used_24h == 1


# --- GetSenderState ------------------------------------------------------------------------


@run_async
async def test_sender_state_reports_usage_and_decision_counts() -> None:
    async with serving() as h:
        await h.client.admit_batch([req(r) for r in recipients(3)])
        await h.stub.Admit(req("1555", kind=pb.FREE_FORM, category=pb.SERVICE))
        s = await state(h, T0 + 1)
        assert s.sender_id == SENDER
        assert s.profile == "meta-2025"
        assert s.display_phone_number == "15550100001"  # Meta's digits-only form
        assert (s.tier, s.limit, s.used_24h, s.remaining) == ("TIER_250", 250, 3, 247)
        assert s.quality == pb.GREEN and s.status == pb.CONNECTED
        assert s.throughput_mps == 80
        assert counts(s) == {"OK": 3, "OUTSIDE_WINDOW": 1}
        assert 0.0 <= s.upgrade.progress <= 1.0


@run_async
async def test_sender_state_unknown_sender_is_not_found() -> None:
    async with serving() as h:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await state(h, sender_id="nobody")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nobody" in str(info.value.details())


# --- clock ---------------------------------------------------------------------------------


@run_async
async def test_server_clock_ignores_at_unix_ms() -> None:
    async with serving(clock="server", senders=(sender(tier="TIER_50"),)) as h:
        before = (await h.client.sender_state(SENDER)).at_unix_ms
        await h.client.admit_batch([req(r, at=1) for r in recipients(50)])
        over = await h.stub.Admit(req("15559999999", at=1))
        assert over.reason == pb.MESSAGING_LIMIT
        assert over.retry_at_unix_ms >= before + DAY  # server time, not 1970


# --- transport faults ----------------------------------------------------------------------


@run_async
async def test_internal_fault_is_internal_never_admit(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving() as h:
        assert h.sidecar.service is not None

        def broken(*args: object, **kwargs: object) -> object:
            raise RuntimeError("engine exploded")

        monkeypatch.setattr(h.sidecar.service, "admit", broken)
        monkeypatch.setattr(h.sidecar.service, "admit_checked", broken)  # the wire path
        monkeypatch.setattr(h.sidecar.service, "admit_many", broken)
        # AdmitBatch read off the wire is decided as columns
        monkeypatch.setattr("tiergate.server.servicer.admit_columns", broken)
        for call in (
            h.stub.Admit(req()),
            h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=[req()])),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.INTERNAL
        stream = h.stub.AdmitStream(iter([req()]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pytest.fail("a broken service must not answer")
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert h.sidecar.metrics.internal_errors["Admit"] == 1
        assert h.sidecar.metrics.internal_errors["AdmitBatch"] == 1


@run_async
async def test_concurrent_unary_admits_count_each_recipient_once() -> None:
    async with serving() as h:
        rs = recipients(40)
        answers = await asyncio.gather(*(h.stub.Admit(req(r, category=pb.UTILITY)) for r in rs * 2))
        assert sum(a.counted for a in answers) == 40
        assert (await state(h)).used_24h == 40


@run_async
async def test_a_full_batch_of_large_requests_fits_the_message_limit() -> None:
    # 5 500 requests with long template ids and keys: over gRPC's 4 MiB default.
    big = [
        req(r, category=pb.UTILITY, template_id="t" * 500, key=f"{i:0>250}")
        for i, r in enumerate(recipients(5500))
    ]
    assert pb.AdmitBatchRequest(requests=big).ByteSize() > 4 << 20
    async with serving(max_batch=5500, senders=(sender(tier="TIER_UNLIMITED"),)) as h:
        answers = await h.client.admit_batch(big, timeout=60)
        assert len(answers) == 5500
        assert answers[0].decision == pb.DECISION_ADMIT


@run_async
async def test_random_garbage_is_invalid_or_decided_never_internal() -> None:
    rng = random.Random(5)
    alphabet = "0123456789+-x é\x00"

    def text(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(n)))

    async with serving() as h:
        for _ in range(150):
            q = pb.AdmitRequest(
                sender_id=rng.choice([SENDER, "", text(20), "s" * 129]),
                recipient=rng.choice(["15550001111", text(18), "+" + text(16)]),
                kind=pb.MessageKind.ValueType(rng.randrange(-1, 4)),
                category=pb.Category.ValueType(rng.randrange(-1, 6)),
                template_id=rng.choice(["", "spring_sale", text(600)]),
                idempotency_key=rng.choice(["", text(10), "k" * 300]),
                at_unix_ms=rng.choice([0, T0, -5, 1 << 62]),
                dry_run=rng.random() < 0.5,
            )
            try:
                r = await h.stub.Admit(q)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
                continue
            assert r.decision in (pb.DECISION_ADMIT, pb.DECISION_RETRY_LATER, pb.DECISION_REJECT)
            if r.decision == pb.DECISION_ADMIT:
                assert q.sender_id == SENDER  # only a known sender is ever admitted
        assert h.sidecar.metrics.internal_errors == {}


@run_async
async def test_random_feedback_is_invalid_or_applied_never_internal() -> None:
    rng = random.Random(11)
    alphabet = "0123456789+-x é"

    def text(n: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(n)))

    def some_id() -> str:
        return rng.choice([SENDER, "", text(20), "s" * 200])

    def some_time() -> int:
        return rng.choice([0, T0, T0 + DAY, -1, 1 << 62])

    def enum_value() -> int:
        return rng.randrange(-1, 8)

    async with serving() as h:
        for _ in range(150):
            kind = rng.randrange(5)
            if kind == 0:
                event = pb.RecordFeedbackRequest(
                    inbound_message=pb.InboundMessage(
                        sender_id=some_id(),
                        recipient=text(18),
                        entry_point=enum_value(),  # type: ignore[arg-type]
                        at_unix_ms=some_time(),
                    )
                )
            elif kind == 1:
                event = pb.RecordFeedbackRequest(
                    send_result=pb.SendResult(
                        ticket=rng.choice(["", text(30), "1.0.2c.0"]),
                        sender_id=some_id(),
                        recipient=text(18),
                        idempotency_key=text(8),
                        status=enum_value(),  # type: ignore[arg-type]
                        meta_error_code=rng.choice([0, 130429, 131047, -3]),
                        at_unix_ms=some_time(),
                    )
                )
            elif kind == 2:
                event = pb.RecordFeedbackRequest(
                    opt_out=pb.OptOut(recipient=text(18), sender_id=some_id(), opted_out=True)
                )
            elif kind == 3:
                event = pb.RecordFeedbackRequest(
                    sender_update=pb.SenderUpdate(
                        sender_id=some_id(),
                        tier=rng.choice(["TIER_2K", "TIER_9", text(10)]),
                        quality=enum_value(),  # type: ignore[arg-type]
                        status=enum_value(),  # type: ignore[arg-type]
                        throughput_mps=rng.choice([0, 80, -1, 1 << 30]),
                        at_unix_ms=some_time(),
                    )
                )
            else:
                event = pb.RecordFeedbackRequest(
                    template_update=pb.TemplateUpdate(
                        template_id=text(12),
                        status=enum_value(),  # type: ignore[arg-type]
                        paused_until_unix_ms=some_time(),
                        at_unix_ms=some_time(),
                    )
                )
            try:
                reply = await h.stub.RecordFeedback(event)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (event, e.details())
                continue
            assert isinstance(reply.applied, bool)
        assert h.sidecar.metrics.internal_errors == {}
        # The sidecar still decides normally afterwards.
        assert (await h.stub.Admit(req("15550000001", at=T0 + 2 * DAY))).decision in (
            pb.DECISION_ADMIT,
            pb.DECISION_RETRY_LATER,
            pb.DECISION_REJECT,
        )
