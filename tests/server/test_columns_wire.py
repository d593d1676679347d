"""The compiled AdmitColumns wire reader and writer give exactly what protobuf gives."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from server_harness import SENDER, T0, TICKET_KEY, run_async, serving, share_ticket_key, varint

from tiergate.client import AdmitItem, columns_request
from tiergate.engine.constants import recipient_key
from tiergate.policy.columnar import ColumnsResult
from tiergate.policy.requests import InvalidArgument
from tiergate.server import columns_wire
from tiergate.v1 import admission_pb2 as pb

compiled = pytest.importorskip("tiergate._native.wire")
# The server reads AdmitColumns off the wire with the compiled reader only when the
# compiled engine runs (TIERGATE_NO_EXTENSIONS=1: protobuf reads it).
wire_reader = pytest.mark.skipif(
    not columns_wire._COMPILED, reason="the compiled wire reader is not in use"
)


def test_wire_columns_take_the_reader_fields_in_order() -> None:
    """``WireColumns.from_reader`` passes the reader's fields by position."""
    names = tuple(f.name for f in dataclasses.fields(columns_wire.WireColumns))
    assert compiled.ReadColumns._fields == (*names, "recipient_spans")


def _text(rng: random.Random) -> str:
    pool = "0123456789+abcé€😀 "
    return "".join(rng.choice(pool) for _ in range(rng.randrange(0, 12)))


def _random_request(rng: random.Random) -> pb.AdmitColumnsRequest:
    n = rng.randrange(0, 30)
    big = [0, 1, 127, 128, 300, (1 << 32) - 1]
    return pb.AdmitColumnsRequest(
        senders=[_text(rng) for _ in range(rng.randrange(0, 4))],
        sender_index=[rng.choice([*big, rng.randrange(5)]) for _ in range(n)],
        recipients=[_text(rng) for _ in range(n)],
        kinds=bytes(rng.randrange(256) for _ in range(rng.choice([0, n]))),
        categories=bytes(rng.randrange(256) for _ in range(rng.choice([0, n]))),
        templates=[_text(rng) for _ in range(rng.randrange(0, 3))],
        template_index=[rng.choice(big) for _ in range(rng.choice([0, n]))],
        idempotency_keys=[_text(rng) for _ in range(rng.choice([0, n]))],
        at_unix_ms=[
            rng.choice([0, -1, 1 << 62, -(1 << 63), T0]) for _ in range(rng.choice([0, n]))
        ],
        dry_run=rng.random() < 0.5,
    )


def _fields(w: columns_wire.WireColumns) -> tuple[Any, ...]:
    return (
        w.senders,
        w.sender_index.tolist(),
        list(w.recipients),
        w.kinds,
        w.categories,
        w.templates,
        w.template_index.tolist(),
        w.idempotency_keys,
        w.at_unix_ms.tolist(),
        w.dry_run,
    )


def _unpacked_and_unknown(rng: random.Random, data: bytes) -> bytes:
    """Append unpacked scalars and unknown fields: protobuf accepts both."""
    extra = bytearray()
    for _ in range(rng.randrange(1, 6)):
        roll = rng.randrange(6)
        if roll == 0:
            extra += b"\x10" + varint(rng.randrange(1 << 33))  # sender_index, unpacked
        elif roll == 1:
            extra += b"\x38" + varint(rng.randrange(9))  # template_index, unpacked
        elif roll == 2:
            extra += b"\x48" + varint(-rng.randrange(1 << 40))  # at_unix_ms, unpacked
        elif roll == 3:
            extra += varint(99 << 3) + varint(rng.randrange(1 << 20))  # unknown varint
        elif roll == 4:
            extra += varint(77 << 3 | 2) + b"\x03abc"  # unknown bytes
        else:
            extra += varint(55 << 3 | 1) + bytes(8) + varint(56 << 3 | 5) + bytes(4)
    return data + bytes(extra)


@pytest.mark.parametrize("seed", range(30))
def test_reader_agrees_with_protobuf(seed: int) -> None:
    rng = random.Random(seed)
    data = _random_request(rng).SerializeToString()
    if seed % 2:
        data = _unpacked_and_unknown(rng, data)
    read = compiled.decode_request(data)
    assert isinstance(read, compiled.ReadColumns)
    names = [f.name for f in pb.AdmitColumnsRequest.DESCRIPTOR.fields]
    assert read._fields == (*names, "recipient_keys", "recipient_spans")
    assert _fields(columns_wire.decode_request(data)) == _fields(columns_wire.protobuf_decode(data))


def _keys(recipients: list[str]) -> list[int]:
    return [recipient_key(r) for r in recipients]


@wire_reader
@pytest.mark.parametrize("seed", range(20))
def test_e164_recipients_are_read_as_keys(seed: int) -> None:
    # Every recipient an E.164 number: keys straight from the bytes, no strings
    # until asked for; the strings, when made, are protobuf's.
    rng = random.Random(seed)
    n = rng.randrange(1, 40)
    digits = "0123456789"
    recipients = [
        rng.choice(["", "+"]) + "".join(rng.choice(digits) for _ in range(rng.randrange(1, 16)))
        for _ in range(n)
    ]
    data = _random_request(rng).SerializeToString()
    msg = pb.AdmitColumnsRequest.FromString(data)
    del msg.recipients[:]
    msg.recipients.extend(recipients)
    data = msg.SerializeToString()
    if seed % 2:
        data = _unpacked_and_unknown(rng, data)
    wire = columns_wire.decode_request(data)
    assert isinstance(wire.recipients, columns_wire.WireRecipients)
    assert wire.recipient_keys is not None and wire.recipient_keys.tolist() == _keys(recipients)
    assert _fields(wire) == _fields(columns_wire.protobuf_decode(data))
    assert len(wire.recipients) == n
    assert wire.recipients[-1] == recipients[-1] and wire.recipients[1:3] == recipients[1:3]
    with pytest.raises(IndexError):
        wire.recipients[n]


@wire_reader
@pytest.mark.parametrize(
    "bad", ["", "+", "1234567890123456", "+1234567890123456", "12a4", "١٢٣", "+-1", "1 2"]
)
def test_one_recipient_that_is_no_key_gives_strings_for_all(bad: str) -> None:
    recipients = ["15550001111", bad, "+4915123456789"]
    data = pb.AdmitColumnsRequest(recipients=recipients).SerializeToString()
    wire = columns_wire.decode_request(data)
    assert wire.recipient_keys is None
    assert wire.recipients == recipients


@wire_reader
def test_keys_read_off_the_wire_decide_as_strings_do() -> None:
    # The same request decided from wire keys and from protobuf's strings.
    from tiergate.policy import events as ev
    from tiergate.policy.columnar import admit_columns
    from tiergate.policy.profile import load_profile
    from tiergate.policy.service import AdmissionService

    def decide(wire: columns_wire.WireColumns) -> tuple[Any, ...]:
        svc = AdmissionService(load_profile("meta-2025"), clock="request", ticket_key=TICKET_KEY)
        update = ev.SenderUpdate("s1", at_unix_ms=T0 - 1, tier="TIER_250", quality=ev.Quality.GREEN)
        assert svc.apply(update, T0 - 1).applied
        r = admit_columns(svc, wire, T0)
        return (bytes(r.decisions), bytes(r.reasons), r.tickets, r.used.tolist())

    recipients = [f"+1555{i:07d}" if i % 3 else f"4915{i:08d}" for i in range(300)]
    msg = pb.AdmitColumnsRequest(
        senders=["s1"],
        sender_index=[0] * 300,
        recipients=recipients,
        kinds=bytes([pb.TEMPLATE]) * 300,
        categories=bytes([pb.UTILITY]) * 300,
        templates=["t"],
        template_index=[1] * 300,
        at_unix_ms=[T0 + 100 * i for i in range(300)],  # 10 a second: under the throughput
    )
    data = msg.SerializeToString()
    wire = columns_wire.decode_request(data)
    assert wire.recipient_keys is not None
    got = decide(wire)
    assert got == decide(columns_wire.protobuf_decode(data))
    assert got[0].count(pb.DECISION_ADMIT) == 250 and got[1].count(pb.MESSAGING_LIMIT) == 50
    # A key repeated inside the batch has it decided in parts, from the
    # recipient keys read off the wire.
    msg.idempotency_keys.extend(["k"] * 2 + [f"k{i}" for i in range(298)])
    msg.recipients[1] = msg.recipients[0]  # the same request twice under "k"
    data = msg.SerializeToString()
    wire = columns_wire.decode_request(data)
    assert wire.recipient_keys is not None
    got = decide(wire)
    assert got == decide(columns_wire.protobuf_decode(data))
    assert got[2][0] == got[2][1] != ""  # the repeat answers the first admit's ticket


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # truncated string
        b"\x12\x02\x80\x80",  # truncated packed varint
        b"\x0a\x02\xff\xfe",  # invalid UTF-8 in a string field
        b"\x80",  # truncated key
        b"\x0b",  # a group
    ],
)
def test_malformed_requests_are_left_to_protobuf(data: bytes) -> None:
    assert compiled.decode_request(data) is None
    with pytest.raises(InvalidArgument) as info:
        columns_wire.decode_request(data)
    assert info.value.field == "request"


def _random_result(rng: random.Random) -> ColumnsResult:
    n = rng.randrange(0, 40)
    r = ColumnsResult.empty(n)
    for i in range(n):
        r.decisions[i] = rng.randrange(4)
        r.reasons[i] = rng.randrange(14)
        r.counted[i] = rng.randrange(2)
        r.retry_at_unix_ms[i] = rng.choice([0, T0, (1 << 62) - 1, -5])
        r.limit[i] = rng.choice([0, 250, (1 << 62) - 1])
        r.used[i] = rng.randrange(100_000)
        r.meta_error_code[i] = rng.choice([0, 368, 131048, -1])
        r.tickets[i] = rng.choice(["", "1a.2.3ffff.40000000000", "é€😀"])
    return r


@pytest.mark.parametrize("seed", range(30))
def test_writer_agrees_with_protobuf(seed: int) -> None:
    result = _random_result(random.Random(seed))
    data = columns_wire.encode_response(result)
    assert data == columns_wire.protobuf_encode(result)
    back = pb.AdmitColumnsResponse.FromString(data)
    assert back.decisions == bytes(result.decisions)
    assert list(back.tickets) == result.tickets
    assert list(back.meta_error_code) == result.meta_error_code.tolist()


def test_writer_refuses_a_ticket_that_is_not_text() -> None:
    result = ColumnsResult.empty(1)
    result.tickets[0] = b"x"  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        compiled.encode_response(result.answer_columns())


@run_async
async def test_the_server_serves_admit_columns_from_wire_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    decode = columns_wire.decode_request

    def counting(data: bytes, max_items: int | None = None) -> columns_wire.WireColumns:
        calls.append(len(data))
        return decode(data, max_items)

    monkeypatch.setattr(columns_wire, "decode_request", counting)
    async with serving() as h:
        items = [AdmitItem(SENDER, "15550001234", pb.TEMPLATE, pb.UTILITY, "t1", "", T0)]
        reply = await h.client.admit_columns(items)
        assert len(reply) == 1 and reply[0].reason in (pb.OK, pb.TEMPLATE_DISABLED)
    assert len(calls) == 1


class _Context:
    async def abort(self, code: object, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")

    def time_remaining(self) -> float | None:
        return None


@run_async
async def test_message_and_wire_handlers_answer_alike() -> None:
    """The generated-servicer method (protobuf messages) and the wire-bytes one."""
    items = [
        AdmitItem(SENDER, f"1555000{i % 7:04d}", pb.TEMPLATE, pb.UTILITY, "t1", f"k{i % 7}", T0 + i)
        for i in range(40)
    ]
    async with serving() as a, serving() as b:
        share_ticket_key(a, b)
        sa, sb = a.sidecar._servicer, b.sidecar._servicer
        assert sa is not None and sb is not None
        for chunk in (items[:7], items[7:25], items[25:]):
            req = columns_request(chunk)
            via_message = await sa.AdmitColumns(req, _Context())  # type: ignore[arg-type]
            via_wire = await sb.AdmitColumnsWire(req.SerializeToString(), _Context())  # type: ignore[arg-type]
            assert via_message.SerializeToString() == via_wire
