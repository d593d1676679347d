"""The compiled unary Admit wire reader and writer give exactly what protobuf gives."""

from __future__ import annotations

import random

import grpc
import pytest
from server_harness import SENDER, T0, run_async, serving, template_request, varint

from tiergate.policy.answers import AdmitResult
from tiergate.policy.requests import (
    MAX_ID_LEN,
    MAX_KEY_LEN,
    MAX_TEMPLATE_LEN,
    InvalidArgument,
    well_formed,
)
from tiergate.server import admit_wire, convert
from tiergate.v1 import admission_pb2 as pb

compiled = pytest.importorskip("tiergate._native.wire")
# The server reads Admit off the wire only when the compiled engine runs
# (TIERGATE_NO_EXTENSIONS=1: grpc hands it protobuf messages).
wire_reader = pytest.mark.skipif(not admit_wire.COMPILED, reason="the wire reader is not in use")


def _decode(data: bytes) -> object:
    return compiled.decode_admit(data, MAX_ID_LEN, MAX_TEMPLATE_LEN, MAX_KEY_LEN)


def _text(rng: random.Random, alphabet: str, longest: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, longest)))


def _random_request(rng: random.Random) -> pb.AdmitRequest:
    """Each field well-formed most of the time, odd (too long, not ASCII, out of
    range) otherwise, so both answers of the reader are exercised."""
    ascii_ = "abcXYZ019_-:."
    odd = "é€😀 " + ascii_

    def pick(good: object, *bad: object) -> object:
        return good if rng.random() < 0.85 else rng.choice(bad)

    kind = pick(rng.choice([1, 2]), 0, 3)
    return pb.AdmitRequest(
        sender_id=pick(
            "s" + _text(rng, ascii_, 12), "", _text(rng, odd, 6), "s" * (MAX_ID_LEN + 1)
        ),  # type: ignore[arg-type]
        recipient=pick(
            rng.choice(["", "+"]) + str(rng.randrange(1, 10**15)),
            "1234567890123456",
            "+",
            "",
            "12a4",
            "١٢٣",
            _text(rng, "0123456789+", 17),
        ),  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        category=pick(rng.randrange(1, 5), 0, 5),  # type: ignore[arg-type]
        template_id=pick(
            "t" + _text(rng, ascii_, 10) if kind == 1 or rng.random() < 0.5 else "",
            "",
            _text(rng, odd, 5),
            "t" * (MAX_TEMPLATE_LEN + 1),
            "t" * MAX_TEMPLATE_LEN,
        ),  # type: ignore[arg-type]
        idempotency_key=pick(
            rng.choice(["", _text(rng, ascii_, 20)]),
            "é",
            "k" * (MAX_KEY_LEN + 1),
            "k" * MAX_KEY_LEN,
        ),  # type: ignore[arg-type]
        at_unix_ms=pick(rng.choice([0, T0, 1 << 62]), -1, -(1 << 63)),  # type: ignore[arg-type]
        dry_run=rng.random() < 0.3,
    )


def _extras(rng: random.Random) -> bytes:
    """Unknown fields and repeated scalars: protobuf skips the first and keeps the
    last of the second."""
    out = bytearray()
    for _ in range(rng.randrange(1, 5)):
        roll = rng.randrange(5)
        if roll == 0:
            out += varint(99 << 3) + varint(rng.randrange(1 << 40))
        elif roll == 1:
            out += varint(77 << 3 | 2) + b"\x03abc"
        elif roll == 2:
            out += varint(55 << 3 | 1) + bytes(8) + varint(56 << 3 | 5) + bytes(4)
        elif roll == 3:
            out += b"\x38" + varint(T0 + rng.randrange(1000))  # at_unix_ms again
        else:
            out += b"\x0a\x03abc"  # sender_id again
    return bytes(out)


@pytest.mark.parametrize("seed", range(300))
def test_reader_agrees_with_protobuf_and_the_checks(seed: int) -> None:
    rng = random.Random(seed)
    data = _random_request(rng).SerializeToString()
    if seed % 3 == 0:
        data += _extras(rng)
    msg = pb.AdmitRequest.FromString(data)
    expected = well_formed(msg)
    got = _decode(data)
    if got is not None:
        assert got == expected
    ascii_text = all(s.isascii() for s in (msg.sender_id, msg.template_id, msg.idempotency_key))
    if expected is not None and ascii_text:
        assert got is not None  # a well-formed ASCII request takes the fast path


def test_the_random_requests_mix_both_answers() -> None:
    # The agreement above is tested on many fast-path requests, and on others.
    fast = sum(
        _decode(_random_request(random.Random(seed)).SerializeToString()) is not None
        for seed in range(300)
    )
    assert 100 <= fast < 300


def test_a_typical_request_takes_the_fast_path() -> None:
    msg = pb.AdmitRequest(
        sender_id=SENDER,
        recipient="+15550001234",
        kind=pb.TEMPLATE,
        category=pb.MARKETING,
        template_id="promo",
        idempotency_key="k1",
        at_unix_ms=T0,
        dry_run=True,
    )
    assert _decode(msg.SerializeToString()) == well_formed(msg)
    assert _decode(msg.SerializeToString()) is not None


def test_the_fields_are_named_as_the_request_s() -> None:
    msg = pb.AdmitRequest(
        sender_id=SENDER,
        recipient="15550001234",
        kind=pb.FREE_FORM,
        category=pb.SERVICE,
        idempotency_key="k2",
        at_unix_ms=T0,
    )
    fields = compiled.decode_admit(
        msg.SerializeToString(), MAX_ID_LEN, MAX_TEMPLATE_LEN, MAX_KEY_LEN
    )
    assert isinstance(fields, compiled.AdmitFields) and isinstance(fields, tuple)
    assert fields._asdict() == {
        "sender_id": SENDER,
        "recipient_key": 15550001234 | (11 << 50),
        "kind": pb.FREE_FORM,
        "category": pb.SERVICE,
        "template_id": "",
        "idempotency_key": "k2",
        "at_unix_ms": T0,
        "dry_run": False,
    }
    assert tuple(fields) == well_formed(msg)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # truncated string
        b"\x18\x80",  # truncated varint
        b"\x0a\x02\xff\xfe",  # invalid UTF-8 in a string field
        b"\x80",  # truncated key
        b"\x0b",  # a group
        b"\x1a\x01\x01",  # kind with a length-delimited wire type
        b"\x0d\x00\x00\x00\x00",  # sender_id as a fixed32
    ],
)
def test_malformed_requests_are_left_to_protobuf(data: bytes) -> None:
    assert _decode(data) is None


def test_parse_names_the_request_when_it_is_not_one() -> None:
    with pytest.raises(InvalidArgument) as info:
        admit_wire.parse(b"\x0a\x05ab")
    assert info.value.field == "request"


def _random_result(rng: random.Random) -> AdmitResult:
    return AdmitResult(
        rng.randrange(4),
        rng.randrange(14),
        rng.choice([0, T0, (1 << 63) - 1, -5]),
        rng.choice(["", "1a.2.3ffff.40000000000.1f", "é€😀"]),
        rng.random() < 0.5,
        rng.choice([0, 250, (1 << 62) - 1, -1]),
        rng.randrange(100_000),
        rng.choice([0, 368, 131048, -1, -(1 << 31)]),
        rng.choice(["", "admitted", "unknown sender 'é€😀'", "x" * 300]),
    )


@pytest.mark.parametrize("seed", range(100))
def test_writer_agrees_with_protobuf(seed: int) -> None:
    result = _random_result(random.Random(seed))
    data = admit_wire.encode_response(result)
    assert data == convert.admit_response(result).SerializeToString()


@pytest.fixture
def fast_reads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What the server's wire reader answered, call by call."""
    calls: list[object] = []
    decode = admit_wire.decode_fast

    def counting(data: bytes) -> object:
        got = decode(data)
        calls.append(got)
        return got

    monkeypatch.setattr(admit_wire, "decode_fast", counting)
    return calls


@wire_reader
@run_async
async def test_the_server_serves_admit_from_wire_bytes(fast_reads: list[object]) -> None:
    calls = fast_reads
    async with serving() as h:
        ok = pb.AdmitRequest(
            sender_id=SENDER,
            recipient="15550001234",
            kind=pb.FREE_FORM,
            category=pb.SERVICE,
            at_unix_ms=T0,
        )
        reply = await h.stub.Admit(ok)
        assert reply.reason == pb.OUTSIDE_WINDOW
        # A bad field still gets INVALID_ARGUMENT naming it (protobuf's path).
        bad = pb.AdmitRequest(sender_id=SENDER, recipient="12x", kind=pb.TEMPLATE, at_unix_ms=T0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await h.stub.Admit(bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "recipient" in (info.value.details() or "")
    assert len(calls) == 2 and calls[0] is not None and calls[1] is None


@wire_reader
@run_async
async def test_a_stream_takes_lone_messages_from_wire_bytes(fast_reads: list[object]) -> None:
    calls = fast_reads
    async with serving() as h:
        call = h.stub.AdmitStream()
        for i in range(5):
            await call.write(template_request(f"1555000100{i}"))
            answer = await call.read()
            assert isinstance(answer, pb.AdmitResponse) and answer.decision == pb.DECISION_ADMIT
            assert answer.used == i + 1 and answer.ticket
        await call.done_writing()
        assert (await call.code()) == grpc.StatusCode.OK
    assert len(calls) == 5 and all(c is not None for c in calls)


async def _failing_raw_stream(
    channel: grpc.aio.Channel, messages: list[bytes]
) -> tuple[list[pb.AdmitResponse], grpc.aio.AioRpcError]:
    """Send wire bytes on AdmitStream; the answers before it failed, and its error."""
    raw = channel.stream_stream("/tiergate.v1.AdmissionControl/AdmitStream")
    call = raw(iter(messages))
    answers = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for a in call:
            answers.append(pb.AdmitResponse.FromString(a))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return answers, info.value


@wire_reader
@run_async
async def test_a_stream_message_that_is_no_admit_request_ends_the_stream_naming_it() -> None:
    async with serving() as h:
        good = [template_request(f"1555000200{i}").SerializeToString() for i in range(3)]
        answers, error = await _failing_raw_stream(h.channel, [*good, b"\x0a\x05ab", good[0]])
        assert "stream message 3: request: not an AdmitRequest" in (error.details() or "")
        # the three before it are answered (as one chunk or lone ones), nothing after
        assert [a.used for a in answers] == [1, 2, 3]


@wire_reader
@run_async
async def test_a_bad_field_before_an_unreadable_message_is_the_one_named() -> None:
    async with serving() as h:
        messages = [
            template_request("15550003000").SerializeToString(),
            template_request("15550003001").SerializeToString(),
            template_request("12x").SerializeToString(),
            b"\x0a\x05ab",
        ]
        answers, error = await _failing_raw_stream(h.channel, messages)
        details = error.details() or ""
        assert "stream message 2" in details and "recipient" in details
        assert [a.used for a in answers] == [1, 2]
