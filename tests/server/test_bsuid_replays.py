"""Business-scoped user IDs (BSUIDs) as recipients, through gRPC on a request
clock: every decision path (Admit, AdmitBatch, AdmitStream, AdmitColumns)
accepts a BSUID (``US.13491208655302741918``) and its parent form
(``US.ENT.11815799212886844830``) wherever an E.164 number goes, counts it as
one recipient, and answers a malformed one with INVALID_ARGUMENT naming the
field."""

from __future__ import annotations

import grpc
import pytest
from rules_harness import admit, state
from server_harness import SENDER, T0, Harness, make_config, run_async, serving

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
        recipients = [BSUID, PARENT, PHONE, "BR.abcXYZ0123"]
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
        assert (await state(h, SENDER, T0 + 1)).used_24h == 4


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
