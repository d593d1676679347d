"""Throughput under the default profile, through gRPC on a request clock.

Meta's THROUGHPUT_UPGRADE raises the number to 1 000 msg/s even when a rate was
configured (the newest information wins; the config's senders apply at their
first start only), and a later sender update with a rate wins over it in turn.
A FAILED 130429 stops the number for a second and halves its rate (at most
three times: 1/8), each halving undone after 60 s without another. Inbound
messages (feedback or webhook) take a send's worth of the number's throughput,
as Meta counts them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rules_harness import DOCS_SENDER, admit, body, docs_config, feedback, ingest, state
from server_harness import T0, Harness, make_config, run_async, sender, serving

from tiergate.v1 import admission_pb2 as pb

UPGRADE = "phone_number_quality_update__throughput_upgrade-0__meta-docs"  # Meta's example


async def upgrade(h: Harness) -> None:
    out = await ingest(h, body(UPGRADE))
    assert out.applied == 1, out


@run_async
async def test_throughput_upgrade_wins_over_a_configured_rate() -> None:
    async with serving(docs_config(throughput_mps=80)) as h:
        assert (await state(h, DOCS_SENDER)).throughput_mps == 80
        await upgrade(h)
        assert (await state(h, DOCS_SENDER)).throughput_mps == 1000
        # newer still: a sender update that sets a rate
        res = await feedback(
            h, sender_update=pb.SenderUpdate(sender_id=DOCS_SENDER, throughput_mps=50)
        )
        assert res.applied, res
        assert (await state(h, DOCS_SENDER)).throughput_mps == 50


@run_async
async def test_the_configured_rate_does_not_come_back_at_restart(tmp_path: Path) -> None:
    config = dataclasses.replace(docs_config(throughput_mps=80), data_dir=tmp_path)
    async with serving(config) as h:
        await upgrade(h)
        assert (await state(h, DOCS_SENDER)).throughput_mps == 1000
    async with serving(config) as h:
        assert (await state(h, DOCS_SENDER)).throughput_mps == 1000


# -- 130429: an adaptive slowdown, not a 60 s stop ------------------------------

S = 1000
RECOVER = 60 * S  # meta-2025 [throughput] slow_recover_seconds


async def a_ticket(h: Harness) -> str:
    """The ticket of a send made long before the 130429s that fail it."""
    return (await send(h, T0 - 100 * S, "15550009999")).ticket


async def fail_130429(h: Harness, ticket: str, at: int) -> pb.RecordFeedbackResponse:
    failed = pb.SendResult(ticket=ticket, status=pb.FAILED, meta_error_code=130429, at_unix_ms=at)
    return await feedback(h, send_result=failed)


async def send(h: Harness, at: int, recipient: str) -> pb.AdmitResponse:
    return await admit(h, recipient, at, sender_id=DOCS_SENDER)


async def mps_at(h: Harness, at: int) -> int:
    return (await state(h, DOCS_SENDER, at)).throughput_mps


@run_async
async def test_a_130429_halves_the_rate_after_a_one_second_stop() -> None:
    async with serving(docs_config()) as h:
        out = await fail_130429(h, await a_ticket(h), T0)
        assert out.applied and "slowed to 40 msg/s" in out.detail, out
        assert await mps_at(h, T0 + 1) == 40
        stopped = await send(h, T0 + 500, "15550001000")
        assert (stopped.decision, stopped.reason) == (pb.DECISION_RETRY_LATER, pb.THROUGHPUT)
        assert stopped.retry_at_unix_ms == T0 + S
        # then 40 msg/s with no burst credit left: one send each 25 ms
        assert (await send(h, T0 + S, "15550001001")).decision == pb.DECISION_ADMIT
        late = await send(h, T0 + S, "15550001002")
        assert (late.reason, late.retry_at_unix_ms) == (pb.THROUGHPUT, T0 + S + 25)
        assert (await send(h, T0 + S + 25, "15550001002")).decision == pb.DECISION_ADMIT


@run_async
async def test_repeated_130429s_slow_further_bounded_then_recover_step_by_step() -> None:
    async with serving(docs_config()) as h:
        ticket = await a_ticket(h)
        for i, rate in enumerate((40, 20, 10, 10)):  # at most 3 halvings: 80 / 8
            assert (await fail_130429(h, ticket, T0 + i * S)).applied
            assert await mps_at(h, T0 + i * S + 1) == rate
        last = T0 + 3 * S
        assert await mps_at(h, last + RECOVER - 1) == 10
        assert await mps_at(h, last + RECOVER) == 20
        assert await mps_at(h, last + 2 * RECOVER) == 40
        assert await mps_at(h, last + 3 * RECOVER) == 80
        # the engine admits at the recovered rate: a full second of burst again
        at = last + 3 * RECOVER + 5 * S
        answers = [await send(h, at, f"155500020{i:02d}") for i in range(81)]
        assert [a.decision for a in answers].count(pb.DECISION_ADMIT) == 80


@run_async
async def test_a_slowdown_survives_a_restart(tmp_path: Path) -> None:
    config = dataclasses.replace(docs_config(), data_dir=tmp_path)
    async with serving(config) as h:
        ticket = await a_ticket(h)
        assert (await fail_130429(h, ticket, T0)).applied
        assert (await fail_130429(h, ticket, T0 + S)).applied
        assert await mps_at(h, T0 + S + RECOVER) == 40  # one step recovered (journaled)
    async with serving(config) as h:
        assert await mps_at(h, T0 + S + RECOVER + 1) == 40
        assert await mps_at(h, T0 + S + 2 * RECOVER) == 80


# -- inbound messages count toward the number's throughput ----------------------

PYWA = "1122334455667"  # the business number of pywa's payloads (display 972123456789)


async def inbound(h: Harness, sender_id: str, i: int, at: int) -> None:
    message = pb.InboundMessage(
        sender_id=sender_id, recipient=f"1555003{i:04d}", at_unix_ms=at, message_id=f"wamid.in{i}"
    )
    assert (await feedback(h, inbound_message=message)).applied


@run_async
async def test_inbound_messages_take_the_numbers_throughput() -> None:
    # 80 msg/s with a second of burst: 80 inbound messages spend it all
    async with serving(docs_config()) as h:
        for i in range(79):
            await inbound(h, DOCS_SENDER, i, T0)
        assert (await send(h, T0, "15550004000")).decision == pb.DECISION_ADMIT
    async with serving(docs_config()) as h:
        for i in range(80):
            await inbound(h, DOCS_SENDER, i, T0)
        refused = await send(h, T0, "15550004000")
        assert (refused.reason, refused.retry_at_unix_ms) == (pb.THROUGHPUT, T0 + 13)  # 12.5 ms


@run_async
async def test_a_webhook_message_takes_a_send_of_throughput() -> None:
    # pywa's inbound text message (a published body) to the number of pywa's payloads
    doc = body("messages__message-text__pywa")
    at = int(doc["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"]) * 1000
    config = make_config(
        senders=(sender(PYWA, display_phone_number="972123456789", waba_id="5467539754836534"),)
    )
    async with serving(config) as h:
        for i in range(79):
            await inbound(h, PYWA, i, at)
        assert (await ingest(h, doc, at)).applied == 1
        refused = await admit(h, "15550004000", at, sender_id=PYWA)
        assert (refused.decision, refused.reason) == (pb.DECISION_RETRY_LATER, pb.THROUGHPUT)
