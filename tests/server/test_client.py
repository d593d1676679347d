"""tiergate.client against a real in-process sidecar."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest
from server_harness import SENDER, T0, run_async, sender, serving, template_request

from tiergate.v1 import admission_pb2 as pb


def template(recipient: str, at: int = 0, key: str = "") -> pb.AdmitRequest:
    return template_request(recipient, at, template_id="order_update", key=key)


@run_async
async def test_admit_and_every_feedback_event() -> None:
    async with serving() as h:
        tg = h.client
        r = await tg.admit(
            SENDER, "+15550000001", category=pb.MARKETING, template_id="t", at_unix_ms=T0
        )
        assert r.decision == pb.DECISION_ADMIT
        events = [
            pb.InboundMessage(sender_id=SENDER, recipient="15550000002", at_unix_ms=T0),
            pb.SendResult(ticket=r.ticket, status=pb.DELIVERED, at_unix_ms=T0 + 1),
            pb.OptOut(recipient="15550000003", sender_id=SENDER, opted_out=True),
            pb.SenderUpdate(sender_id=SENDER, quality=pb.YELLOW, at_unix_ms=T0 + 2),
            pb.TemplateUpdate(template_id="t", status=pb.TEMPLATE_STATUS_APPROVED),
        ]
        for event in events:
            assert (await tg.record_feedback(event)).applied, event
        full = pb.RecordFeedbackRequest(
            send_result=pb.SendResult(ticket=r.ticket, status=pb.READ, at_unix_ms=T0 + 3)
        )
        assert isinstance((await tg.record_feedback(full)).applied, bool)
        with pytest.raises(TypeError, match="AdmitRequest"):
            await tg.record_feedback(pb.AdmitRequest())  # type: ignore[arg-type]
        s = await tg.sender_state(SENDER, at_unix_ms=T0 + 4)
        assert s.quality == pb.YELLOW
        assert s.open_windows == 1


@run_async
async def test_admit_wait_sleeps_until_retry_at_then_admits() -> None:
    # One message per second: the second send right after the first waits for a
    # token (a wide margin, so a loaded machine cannot refill it in between).
    async with serving(clock="server", senders=(sender(throughput_mps=1),)) as h:
        tg = h.client
        first = await tg.admit_request(template("15551000000"))
        assert first.decision == pb.DECISION_ADMIT
        held = await tg.admit_request(template("15552000000", key="held"))
        assert (held.decision, held.reason) == (pb.DECISION_RETRY_LATER, pb.THROUGHPUT)
        started = time.monotonic()
        r = await tg.admit_wait(template("15552000001", key="wait-1"), deadline_s=5)
        assert r.decision == pb.DECISION_ADMIT
        assert time.monotonic() - started < 5


@run_async
async def test_admit_wait_returns_retry_later_past_the_deadline() -> None:
    async with serving(clock="server", senders=(sender(tier="TIER_50"),)) as h:
        tg = h.client
        # 50 recipients fit the one-second burst, so only the limit binds next.
        filled = await tg.admit_batch([template(f"1555300{i:04d}") for i in range(50)])
        assert all(a.decision == pb.DECISION_ADMIT for a in filled)
        started = time.monotonic()
        r = await tg.admit_wait(template("15554000000"), deadline_s=60)
        assert (r.decision, r.reason) == (pb.DECISION_RETRY_LATER, pb.MESSAGING_LIMIT)
        assert time.monotonic() - started < 5  # a slot frees in ~24 h: no point waiting


@run_async
async def test_rpc_errors_surface_as_aio_rpc_error() -> None:
    async with serving() as h:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await h.client.admit(SENDER, "not-digits", kind=pb.FREE_FORM)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@run_async
async def test_admit_stream_answers_in_order() -> None:
    async with serving() as h:

        async def requests() -> AsyncIterator[pb.AdmitRequest]:
            for i in range(40):
                yield template(f"1555500{i:04d}", at=T0 + 20 * i)

        answers = [a async for a in h.client.admit_stream(requests())]
        assert [a.used for a in answers] == list(range(1, 41))
        assert all(a.decision == pb.DECISION_ADMIT for a in answers)
