"""What the fuzz targets found, kept as plain tests with the minimal input."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).parents[1] / "server"))

from server_harness import SENDER, serving

from tiergate.server import SERVICE_NAME
from tiergate.v1 import admission_pb2 as pb

# Bytes that are no protobuf message at all, a field cut short, a string field
# (field 1, or the signature of IngestWebhook) that is not UTF-8.
NOT_MESSAGES = [b"\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xff\xfe"]
UNARY = [
    "Admit",
    "AdmitBatch",
    "AdmitColumns",
    "RecordFeedback",
    "IngestWebhook",
    "GetSenderState",
]


@pytest.mark.parametrize("data", NOT_MESSAGES)
@pytest.mark.parametrize("rpc", UNARY)
def test_bytes_that_are_not_the_request_message_are_invalid_argument(rpc: str, data: bytes) -> None:
    """Every method, whatever the engine: INVALID_ARGUMENT naming the request (gRPC's
    own deserializer answered UNKNOWN "Unexpected DecodeError" for RecordFeedback,
    IngestWebhook and GetSenderState, and for Admit and AdmitBatch with the
    pure-Python engine)."""
    if rpc == "IngestWebhook" and data == NOT_MESSAGES[2]:
        data = b"\x12\x02\xff\xfe"  # its field 1 is bytes: any content is a body

    async def main() -> None:
        async with serving() as h:
            call = h.channel.unary_unary(f"/{SERVICE_NAME}/{rpc}")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(data, timeout=20)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (info.value.details() or "").startswith("request: not a")

    uvloop.run(main())


def _stream(target: str, messages: list[bytes]) -> tuple[grpc.StatusCode, str, int]:
    """AdmitStream through the synchronous client: (status, details, answers)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(f"/{SERVICE_NAME}/AdmitStream")
        answers = 0
        try:
            for _ in call(iter(messages), timeout=20):
                answers += 1
        except grpc.RpcError as e:
            return e.code(), e.details() or "", answers  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, "", answers


@pytest.mark.parametrize("data", NOT_MESSAGES)
def test_a_stream_message_that_is_not_an_admit_request_is_invalid_argument(data: bytes) -> None:
    async def main() -> None:
        async with serving() as h:
            code, details, answers = await asyncio.to_thread(_stream, h.target, [data])
            assert (code, answers) == (grpc.StatusCode.INVALID_ARGUMENT, 0)
            assert details.startswith("stream message 0: request: not an AdmitRequest")

    uvloop.run(main())


def test_a_bad_stream_message_followed_by_more_ends_the_stream_invalid_argument() -> None:
    """The sidecar ends the stream with INVALID_ARGUMENT naming the bad message even
    while the client is still sending (grpc.aio's client, though, often reports
    that as INTERNAL "Internal error from Core"; the synchronous client reports
    what the server sent)."""
    good = pb.AdmitRequest(
        sender_id=SENDER,
        recipient="15550000001",
        kind=pb.TEMPLATE,
        category=pb.UTILITY,
        template_id="t1",
    ).SerializeToString()
    bad = pb.AdmitRequest(sender_id=SENDER, recipient="x", kind=pb.TEMPLATE).SerializeToString()

    async def main() -> None:
        async with serving() as h:
            for _ in range(20):
                code, details, answers = await asyncio.to_thread(
                    _stream, h.target, [bad] + [good] * 19
                )
                assert (code, answers) == (grpc.StatusCode.INVALID_ARGUMENT, 0), details
                assert details.startswith("stream message 0: recipient")

    uvloop.run(main())


@pytest.mark.parametrize("tier", ["²", "¹⁰⁰⁰", "١٠٠٠", "１０００"])
def test_a_tier_of_digits_that_are_not_ascii_is_invalid_argument(tier: str) -> None:
    """A sender_update tier that str.isdigit() accepts but int() does not ("²") was
    INTERNAL (ValueError); one int() reads ("١٠٠٠") was taken as TIER_1K."""

    async def main() -> None:
        async with serving() as h:
            update = pb.SenderUpdate(sender_id=SENDER, tier=tier)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await h.stub.RecordFeedback(pb.RecordFeedbackRequest(sender_update=update))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (info.value.details() or "").startswith("tier: unknown tier")
            state = await h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
            assert state.tier == "TIER_250"

    uvloop.run(main())


@pytest.mark.parametrize(
    ("recipient", "valid"),
    [
        ("US.AbCdEf1234567890", True),
        ("US.ENT.abc123XYZ", True),
        ("+15550000000", True),
        ("US.", False),
        ("us.abc", False),
        ("US.ab-c", False),
    ],
)
def test_the_fuzz_oracle_takes_a_business_scoped_user_id_for_a_recipient(
    recipient: str, valid: bool
) -> None:
    """The oracle of the Admit fuzz target once called a BSUID recipient bad, so an
    Admit the server rightly decided looked like a bad request admitted."""
    from fuzz_session import admit_problems

    r = pb.AdmitRequest(
        sender_id=SENDER,
        recipient=recipient,
        kind=pb.TEMPLATE,
        category=pb.MARKETING,
        template_id="t-approved",
    )
    assert ("recipient" in admit_problems(r, request_clock=False)) is not valid
