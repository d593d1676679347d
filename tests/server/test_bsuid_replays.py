"""Business-scoped user IDs (BSUIDs) as recipients, through gRPC on a request
clock: every decision path (Admit, AdmitBatch, AdmitStream, AdmitColumns)
accepts a BSUID (``US.13491208655302741918``) and its parent form
(``US.ENT.11815799212886844830``) wherever an E.164 number goes, counts it as
one recipient, and answers a malformed one with INVALID_ARGUMENT naming the
field. Feedback and webhooks take it too: an inbound message that carries only
``from_user_id`` opens the user's window, a status that carries only
``recipient_user_id`` releases its send's slot."""

from __future__ import annotations

import grpc
import pytest
from rules_harness import admit, body, feedback, ingest, state
from server_harness import SENDER, T0, Harness, make_config, run_async, sender, serving

from tiergate.v1 import admission_pb2 as pb

BSUID = "US.13491208655302741918"  # Meta's example
PARENT = "US.ENT.11815799212886844830"  # Meta's example of the parent form
PHONE = "447700900123"
MALFORMED = ("us.1349", "US.", "US.ENT.", "USA.123", "US.12-34", "US." + "9" * 129, "1.23")


def request(recipient: str, at: int = T0, dry: bool = False) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=recipient,
        kind=pb.TEMPLATE,
        category=pb.UTILITY,
        template_id="promo",
        at_unix_ms=at,
        dry_run=dry,
    )


async def columns(h: Harness, recipients: list[str], dry: bool) -> pb.AdmitColumnsResponse:
    response: pb.AdmitColumnsResponse = await h.stub.AdmitColumns(
        pb.AdmitColumnsRequest(
            senders=[SENDER],
            sender_index=[0] * len(recipients),
            recipients=recipients,
            kinds=bytes([pb.TEMPLATE] * len(recipients)),
            categories=bytes([pb.UTILITY] * len(recipients)),
            templates=["promo"],
            template_index=[1] * len(recipients),
            at_unix_ms=[T0] * len(recipients),
            dry_run=dry,
        )
    )
    return response


@run_async
async def test_a_bsuid_is_a_recipient_on_every_path() -> None:
    async with serving(make_config()) as h:
        recipients = [BSUID, PARENT, PHONE, "BR.abcXYZ0123", "GB.ENT." + "Zz9" * 42 + "aa"]
        dry = [request(r, dry=True) for r in recipients]
        batch: pb.AdmitBatchResponse = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=dry))
        stream = [res async for res in h.stub.AdmitStream(iter(dry))]
        assert list(batch.responses) == stream
        assert all(r.decision == pb.DECISION_ADMIT for r in stream), stream
        cols = await columns(h, recipients, dry=True)
        assert list(cols.decisions) == [r.decision for r in stream]
        assert list(cols.counted) == [r.counted for r in stream]
        # Counted for real: each id is one recipient, the same id again is not a new one.
        for r in recipients:
            res = await admit(h, r, T0, sender_id=SENDER)
            assert res.decision == pb.DECISION_ADMIT and res.counted, (r, res)
        again = await admit(h, BSUID, T0 + 1, sender_id=SENDER)
        assert again.decision == pb.DECISION_ADMIT and not again.counted, again
        assert (await state(h, SENDER, T0 + 1)).used_24h == 5


@run_async
async def test_a_malformed_bsuid_is_invalid_argument_naming_the_field() -> None:
    async with serving(make_config()) as h:
        for bad in MALFORMED:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admit(h, bad, T0, sender_id=SENDER)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert "recipient" in (info.value.details() or ""), (bad, info.value.details())
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await h.stub.AdmitBatch(
                    pb.AdmitBatchRequest(requests=[request(PHONE), request(bad)])
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert "recipient" in (info.value.details() or ""), (bad, info.value.details())
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await columns(h, [PHONE, bad], dry=True)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert "recipients[1]" in (info.value.details() or ""), (bad, info.value.details())
        assert (await state(h, SENDER, T0)).used_24h == 0


PYWA = "1122334455667"  # the business number of pywa's payloads (display 972123456789)


def pywa_config() -> object:
    return make_config(
        senders=(sender(PYWA, display_phone_number="972123456789", waba_id="5467539754836534"),)
    )


def without_phone(name: str, phone_field: str, item: str) -> tuple[dict[str, object], int]:
    """pywa's body ``name`` as Meta sends it for a user who shares no phone number:
    ``phone_field`` of the first ``item`` replaced by its ``*_user_id`` twin, and no
    wa_id in ``contacts`` (the change's time too)."""
    doc = body(name)
    value = doc["entry"][0]["changes"][0]["value"]
    entry = value[item][0]
    del entry[phone_field]
    entry[
        f"{phone_field.removesuffix('_id')}_user_id" if item == "statuses" else "from_user_id"
    ] = BSUID
    for contact in value.get("contacts", []):
        contact.pop("wa_id", None)
    return doc, int(entry["timestamp"]) * 1000


@run_async
async def test_an_inbound_message_by_user_id_opens_the_window() -> None:
    doc, at = without_phone("messages__message-text__pywa", "from", "messages")
    async with serving(pywa_config()) as h:
        before = await admit(h, BSUID, at - 1, sender_id=PYWA, kind=pb.FREE_FORM)
        assert before.reason == pb.OUTSIDE_WINDOW, before
        out = await ingest(h, doc, at)
        assert out.applied == 1, out
        reply = await admit(h, BSUID, at + 1, sender_id=PYWA, kind=pb.FREE_FORM)
        assert reply.decision == pb.DECISION_ADMIT, reply
        # RecordFeedback takes the user id the same way.
        inbound = pb.InboundMessage(
            sender_id=PYWA, recipient=PARENT, at_unix_ms=at + 2, message_id="wamid.in2"
        )
        assert (await feedback(h, inbound_message=inbound)).applied
        other = await admit(h, PARENT, at + 3, sender_id=PYWA, kind=pb.FREE_FORM)
        assert other.decision == pb.DECISION_ADMIT, other


@run_async
async def test_a_failed_status_by_user_id_releases_its_slot() -> None:
    doc, at = without_phone("messages__message_status-failed__pywa", "recipient_id", "statuses")
    status = doc["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert status["recipient_user_id"] == BSUID
    async with serving(pywa_config()) as h:
        first = await admit(h, BSUID, at - 5000, sender_id=PYWA, template="promo")
        assert first.counted and (await state(h, PYWA, at - 5000)).used_24h == 1
        sent = pb.SendResult(
            ticket=first.ticket, status=pb.SENT, message_id=status["id"], at_unix_ms=at - 4000
        )
        assert (await feedback(h, send_result=sent)).applied
        out = await ingest(h, doc, at)
        assert out.applied == 1, out
        assert (await state(h, PYWA, at)).used_24h == 0


@run_async
async def test_a_malformed_user_id_in_feedback_is_invalid_argument() -> None:
    async with serving(pywa_config()) as h:
        inbound = pb.InboundMessage(
            sender_id=PYWA, recipient="US.ENT.", at_unix_ms=T0, message_id="wamid.in3"
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await feedback(h, inbound_message=inbound)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "recipient" in (info.value.details() or "")


@run_async
async def test_a_webhook_naming_both_ids_makes_them_one_recipient() -> None:
    # pywa's inbound text: 'from' the phone number, its contact with the user id.
    doc = body("messages__message-text__pywa")
    value = doc["entry"][0]["changes"][0]["value"]
    phone, user_id = value["messages"][0]["from"], value["contacts"][0]["user_id"]
    assert user_id == BSUID
    at = int(value["messages"][0]["timestamp"]) * 1000
    async with serving(pywa_config()) as h:
        first = await admit(h, phone, at - 1000, sender_id=PYWA, template="promo")
        assert first.counted, first
        # Before the webhook, the BSUID is a recipient of its own.
        dry = await h.stub.Admit(
            pb.AdmitRequest(
                sender_id=PYWA,
                recipient=BSUID,
                kind=pb.TEMPLATE,
                category=pb.UTILITY,
                template_id="promo",
                at_unix_ms=at - 500,
                dry_run=True,
            )
        )
        assert dry.counted and dry.used == 2, dry
        assert (await ingest(h, doc, at)).applied == 1
        # After it, every path counts the BSUID as the phone number: not a new user.
        requests = [
            pb.AdmitRequest(
                sender_id=PYWA,
                recipient=r,
                kind=pb.TEMPLATE,
                category=pb.UTILITY,
                template_id="promo",
                at_unix_ms=at + 1,
                dry_run=True,
            )
            for r in (BSUID, phone, PARENT)
        ]
        batch: pb.AdmitBatchResponse = await h.stub.AdmitBatch(
            pb.AdmitBatchRequest(requests=requests)
        )
        stream = [res async for res in h.stub.AdmitStream(iter(requests))]
        assert list(batch.responses) == stream
        assert [r.counted for r in stream] == [False, False, True], stream
        cols: pb.AdmitColumnsResponse = await h.stub.AdmitColumns(
            pb.AdmitColumnsRequest(
                senders=[PYWA],
                sender_index=[0, 0, 0],
                recipients=[r.recipient for r in requests],
                kinds=bytes([pb.TEMPLATE] * 3),
                categories=bytes([pb.UTILITY] * 3),
                templates=["promo"],
                template_index=[1, 1, 1],
                at_unix_ms=[at + 1] * 3,
                dry_run=True,
            )
        )
        assert list(cols.counted) == [r.counted for r in stream]
        one = await admit(h, BSUID, at + 2, sender_id=PYWA, template="promo")
        assert one.decision == pb.DECISION_ADMIT and not one.counted, one
        assert (await state(h, PYWA, at + 2)).used_24h == 1
        # The window the phone number's message opened is the BSUID's too.
        reply = await admit(h, BSUID, at + 3, sender_id=PYWA, kind=pb.FREE_FORM)
        assert reply.decision == pb.DECISION_ADMIT, reply


@run_async
async def test_a_key_used_before_the_alias_was_learned_still_answers_its_repeats() -> None:
    doc = body("messages__message-text__pywa")
    at = int(doc["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"]) * 1000
    async with serving(pywa_config()) as h:
        first = await admit(h, BSUID, at - 1000, sender_id=PYWA, template="promo", key="k1")
        assert first.counted, first
        assert (await ingest(h, doc, at)).applied == 1
        again = await admit(h, BSUID, at + 1, sender_id=PYWA, template="promo", key="k1")
        assert again == first
        batch: pb.AdmitBatchResponse = await h.stub.AdmitBatch(
            pb.AdmitBatchRequest(
                requests=[
                    pb.AdmitRequest(
                        sender_id=PYWA,
                        recipient=BSUID,
                        kind=pb.TEMPLATE,
                        category=pb.UTILITY,
                        template_id="promo",
                        idempotency_key="k1",
                        at_unix_ms=at + 2,
                    )
                ]
            )
        )
        assert batch.responses[0] == first
