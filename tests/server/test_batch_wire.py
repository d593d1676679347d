"""AdmitBatch on the wire: the compiled reader and writer, and the server's two ways
(protobuf messages, wire bytes) giving the same bytes, state and errors."""

from __future__ import annotations

import random
from array import array
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_harness import (
    OTHER_SENDER,
    SENDER,
    T0,
    make_config,
    run_async,
    sender,
    serving,
    share_ticket_key,
    varint,
)

from tiergate.policy import columnar
from tiergate.policy.answers import BACK_OFF_DETAIL, DETAIL, DRY_RUN_DETAIL
from tiergate.policy.columnar import ColumnsResult
from tiergate.policy.events import SenderStatus, TemplateStatus, TemplateUpdate
from tiergate.policy.requests import InvalidArgument, well_formed
from tiergate.server import batch_wire
from tiergate.server.convert import MAX_AT_UNIX_MS
from tiergate.v1 import admission_pb2 as pb

compiled = pytest.importorskip("tiergate._native.wire")
pytestmark = pytest.mark.skipif(
    not batch_wire.COMPILED, reason="AdmitBatch is read off the wire only when compiled"
)


def _request(rng: random.Random, *, odd: float = 0.0, dry: bool | None = None) -> pb.AdmitRequest:
    """A request, well-formed unless the ``odd`` draw makes one field bad."""
    kind = rng.choice([pb.TEMPLATE, pb.TEMPLATE, pb.FREE_FORM])
    fields: dict[str, Any] = {
        "sender_id": rng.choice([SENDER, SENDER, SENDER, OTHER_SENDER, "999"]),
        "recipient": rng.choice(["", "+"])
        + f"1555{rng.randrange(1000 if rng.random() < 0.8 else 30):07d}",
        "kind": kind,
        "category": rng.choice([pb.MARKETING, pb.UTILITY, pb.AUTHENTICATION, pb.SERVICE]),
        "template_id": rng.choice(["t1", "t1", "t1", "tp", "td", "tx"])
        if kind == pb.TEMPLATE
        else rng.choice(["", "", "t1"]),
        "idempotency_key": rng.choices(["", "k1", f"k{rng.randrange(10**6)}"], [80, 2, 18])[0],
        "at_unix_ms": rng.choice([0, T0 + rng.randrange(1000)]),
        "dry_run": rng.random() < 0.2 if dry is None else dry,
    }
    # A key answers one request: "k1" is always the same one; the others name theirs.
    if fields["idempotency_key"] == "k1":
        fields.update(
            sender_id=SENDER, recipient="15550000001", kind=pb.TEMPLATE, category=pb.UTILITY
        )
        fields["template_id"] = "t1"
    elif fields["idempotency_key"]:
        what = (fields[f] for f in ("recipient", "kind", "category", "template_id"))
        fields["idempotency_key"] += "/" + "/".join(map(str, what))
    if rng.random() < odd:
        name, value = rng.choice(
            [
                ("sender_id", ""),
                ("sender_id", "sé"),
                ("recipient", "12a4"),
                ("recipient", "1234567890123456"),
                ("kind", 0),
                ("category", 0),
                ("category", 7),
                ("template_id", "" if kind == pb.TEMPLATE else "tü"),
                ("idempotency_key", "é"),
                ("at_unix_ms", -5),
                ("at_unix_ms", MAX_AT_UNIX_MS + 1),
            ]
        )
        fields[name] = value
    return pb.AdmitRequest(**fields)


def _extras(rng: random.Random) -> bytes:
    """Unknown fields between the requests (protobuf skips them)."""
    return rng.choice(
        [b"", varint(9 << 3) + varint(12345), varint(7 << 3 | 2) + b"\x02ab", b"\x11" + bytes(8)]
    )


def _encoded(rng: random.Random, reqs: list[pb.AdmitRequest]) -> bytes:
    out = bytearray()
    for r in reqs:
        body = r.SerializeToString()
        if rng.random() < 0.2:
            body += varint(99 << 3) + varint(1)  # an unknown field inside the request
        out += _extras(rng) + b"\x0a" + varint(len(body)) + body
    return bytes(out)


def _expected_columns(msg: pb.AdmitBatchRequest) -> tuple[Any, ...] | None:
    """What the reader must give for msg, from protobuf and the policy layer's checks."""
    checked = [well_formed(r) for r in msg.requests]
    if not checked or any(c is None for c in checked):
        return None
    texts = [(r.sender_id, r.template_id, r.idempotency_key) for r in msg.requests]
    if not all(t.isascii() for row in texts for t in row):
        return None
    if any(r.at_unix_ms > MAX_AT_UNIX_MS for r in msg.requests):
        return None
    if len({r.dry_run for r in msg.requests}) > 1:
        return None
    senders: dict[str, int] = {}
    templates: dict[str, int] = {}
    sidx = [senders.setdefault(r.sender_id, len(senders)) for r in msg.requests]
    tidx = [
        templates.setdefault(r.template_id, len(templates) + 1) if r.template_id else 0
        for r in msg.requests
    ]
    keys = [r.idempotency_key for r in msg.requests]
    return (
        list(senders),
        sidx,
        bytes(r.kind for r in msg.requests),
        bytes(r.category for r in msg.requests),
        list(templates),
        tidx,
        keys if any(keys) else [],
        [r.at_unix_ms for r in msg.requests],
        msg.requests[0].dry_run,
        [c[1] for c in checked if c is not None],
        [r.recipient for r in msg.requests],
    )


@pytest.mark.parametrize("seed", range(200))
def test_reader_agrees_with_protobuf_and_the_checks(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([1, 2, 5, 30])
    dry = None if seed % 4 == 0 else seed % 4 == 1
    reqs = [_request(rng, odd=0.03 if seed % 2 else 0.0, dry=dry) for _ in range(n)]
    data = _encoded(rng, reqs)
    msg = pb.AdmitBatchRequest.FromString(data)
    assert len(msg.requests) == n
    expected = _expected_columns(msg)
    cols = batch_wire.decode_fast(data)
    if expected is None:
        assert cols is None
        return
    assert cols is not None
    got = (
        cols.senders,
        cols.sender_index.tolist(),
        cols.kinds,
        cols.categories,
        cols.templates,
        cols.template_index.tolist(),
        cols.idempotency_keys,
        cols.at_unix_ms.tolist(),
        cols.dry_run,
        cols.recipient_keys.tolist() if cols.recipient_keys is not None else None,
        list(cols.recipients),
    )
    assert got == expected


def test_reader_names_many_distinct_senders_and_templates() -> None:
    # More distinct names than the reader keeps by their bytes (64): the rest
    # go by the dict, with the same indexes.
    rng = random.Random(3)
    reqs = [
        pb.AdmitRequest(
            sender_id=f"s{rng.randrange(150)}",
            recipient=f"1555{i:07d}",
            kind=pb.TEMPLATE,
            category=pb.UTILITY,
            template_id=f"t{rng.randrange(100)}",
            at_unix_ms=T0 + i,
        )
        for i in range(1000)
    ]
    msg = pb.AdmitBatchRequest(requests=reqs)
    cols = batch_wire.decode_fast(msg.SerializeToString())
    assert cols is not None
    assert len(cols.senders) > 64 and len(cols.templates) > 64
    assert [cols.senders[k] for k in cols.sender_index] == [r.sender_id for r in reqs]
    assert [cols.templates[k - 1] for k in cols.template_index] == [r.template_id for r in reqs]
    assert len(set(cols.senders)) == len(cols.senders)


@pytest.mark.parametrize(
    ("data", "requests"),
    [
        (b"", 0),  # no requests: the message way answers an empty batch
        (b"\x08\x01", 0),  # field 1 with the varint wire type: protobuf skips it
        (b"\x0a\x05ab", -1),  # truncated request
        (b"\x0a\x02\x0a", -1),  # a request whose sender_id is cut short
        (b"\x80", -1),  # truncated key
        (b"\x0b", -1),  # a group
    ],
)
def test_what_the_reader_does_not_take_goes_the_message_way(data: bytes, requests: int) -> None:
    assert batch_wire.decode_fast(data) is None
    if requests >= 0:
        assert len(batch_wire.parse(data).requests) == requests
        return
    with pytest.raises(InvalidArgument) as info:
        batch_wire.parse(data)
    assert info.value.field == "request"


def _random_answers(rng: random.Random, n: int) -> ColumnsResult:
    big = [0, 1, 127, 128, 1 << 40, -1, -(1 << 63), (1 << 63) - 1]
    return ColumnsResult(
        bytearray(rng.randrange(4) for _ in range(n)),
        bytearray(rng.randrange(14) for _ in range(n)),
        bytearray(rng.randrange(2) for _ in range(n)),
        array("q", (rng.choice(big) for _ in range(n))),
        array("q", (rng.choice(big) for _ in range(n))),
        array("q", (rng.choice(big) for _ in range(n))),
        array("i", (rng.choice([0, 131056, -7, (1 << 31) - 1, -(1 << 31)]) for _ in range(n))),
        [rng.choice(["", "tk-é", "x" * 200]) for _ in range(n)],
    )


@pytest.mark.parametrize("seed", range(40))
def test_writer_agrees_with_protobuf(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([0, 1, 3, 100])
    res = _random_answers(rng, n)
    details = tuple(None if r % 3 == 0 else f"reason {r}" + "é" * r for r in range(14))

    def special(i: int) -> str:
        return f"item {i}" * rng.randrange(3)

    made: list[str] = []

    def recording(i: int) -> str:
        made.append(special(i))
        return made[-1]

    data = compiled.encode_batch_response(res.answer_columns(), details, recording)
    replies = []
    asked = iter(made)
    for i in range(n):
        d, r = res.decisions[i], res.reasons[i]
        detail = details[r]
        if detail is None or (d == pb.DECISION_ADMIT and not res.tickets[i]):
            detail = next(asked)
        replies.append(
            pb.AdmitResponse(
                decision=d,  # type: ignore[arg-type]
                reason=r,  # type: ignore[arg-type]
                retry_at_unix_ms=res.retry_at_unix_ms[i],
                ticket=res.tickets[i],
                counted=res.counted[i] == 1,
                limit=res.limit[i],
                used=res.used[i],
                meta_error_code=res.meta_error_code[i],
                detail=detail,
            )
        )
    assert next(asked, None) is None  # special was asked once per item that needs it
    assert data == pb.AdmitBatchResponse(responses=replies).SerializeToString()


def test_writer_refuses_columns_of_other_lengths() -> None:
    res = _random_answers(random.Random(1), 3)
    with pytest.raises(ValueError):
        compiled.encode_batch_response(
            res.answer_columns()._replace(tickets=res.tickets[:2]),
            (),
            str,
        )


class _Context:
    def __init__(self) -> None:
        self.aborted: list[tuple[object, str]] = []

    async def abort(self, code: object, details: str) -> None:
        self.aborted.append((code, details))
        raise grpc.aio.AbortError()

    def time_remaining(self) -> float | None:
        return None


def _profile(tmp_path: Path) -> str:
    path = tmp_path / "batch-wire.toml"
    path.write_text(
        'extends = "meta-2025"\nname = "batch-wire"\n'
        '[templates]\nunknown = "reject"\n[protection]\nfrequency_cap = 2\n'
    )
    return str(path)


def _config(tmp_path: Path) -> Any:
    return make_config(
        profile=_profile(tmp_path),
        senders=(
            sender(),
            sender(OTHER_SENDER, display_phone_number="+15550100002", status=SenderStatus.BANNED),
        ),
        templates=(
            TemplateUpdate("t1", TemplateStatus.APPROVED, at_unix_ms=T0 - 1),
            TemplateUpdate(
                "tp", TemplateStatus.PAUSED, paused_until_unix_ms=T0 + 10**8, at_unix_ms=T0 - 1
            ),
            TemplateUpdate("td", TemplateStatus.DISABLED, at_unix_ms=T0 - 1),
        ),
    )


async def _feedback(servicers: list[Any], req: pb.RecordFeedbackRequest) -> None:
    replies = [(await s.RecordFeedback(req, _Context())).SerializeToString() for s in servicers]
    assert replies[0] == replies[1]


async def _windows_and_an_opt_out(servicers: list[Any]) -> None:
    """Windows open for every third recipient (one from an ad), and one opt-out."""
    for k in range(0, 60, 3):
        entry = pb.CTWA_AD if k % 2 else pb.ORGANIC
        inbound = pb.InboundMessage(
            sender_id=SENDER, recipient=f"1555{k:07d}", at_unix_ms=T0, entry_point=entry
        )
        await _feedback(servicers, pb.RecordFeedbackRequest(inbound_message=inbound))
    opt_out = pb.OptOut(recipient="15550000007", sender_id=SENDER, at_unix_ms=T0)
    await _feedback(servicers, pb.RecordFeedbackRequest(opt_out=opt_out))


def _round_requests(
    rng: random.Random, round_: int, now: int, held: list[str]
) -> tuple[list[pb.AdmitRequest], int]:
    """One round's batch and the time after it: random requests (times from ``now``
    on), in round 1 a burst past the sender's 80 a second (THROUGHPUT), and first
    marketing to a recipient Meta declined (held by the back-off)."""
    n = rng.choice([1, 4, 40, 120])
    dry = rng.random() < 0.15 if round_ % 5 else None
    reqs = []
    for _ in range(n):
        r = _request(rng, dry=dry)
        now += rng.randrange(0, 40)
        if r.at_unix_ms:
            r.at_unix_ms = now
        reqs.append(r)
    if round_ == 1:
        reqs = [
            pb.AdmitRequest(
                sender_id=SENDER,
                recipient=f"1555900{k:04d}",
                kind=pb.TEMPLATE,
                category=pb.UTILITY,
                template_id="t1",
                at_unix_ms=now,
            )
            for k in range(100)
        ]
    if held:
        reqs[0] = pb.AdmitRequest(
            sender_id=SENDER,
            recipient=held.pop(),
            kind=pb.TEMPLATE,
            category=pb.MARKETING,
            template_id="t1",
            at_unix_ms=now,
        )
    return reqs, now


@run_async
async def test_message_and_wire_ways_answer_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random batches over every reason, decided by two servers from one start: one
    given protobuf messages, one wire bytes. Same bytes back, same state after."""
    encoded: list[int] = []  # per batch the wire way answered: its size
    encode = batch_wire.encode_response

    def counting(cols: Any, result: ColumnsResult) -> bytes:
        encoded.append(len(result))
        return encode(cols, result)

    monkeypatch.setattr(batch_wire, "encode_response", counting)
    in_parts = columnar._decide_in_parts
    parted: list[int] = []  # batches decided in parts (a key repeated inside)

    def counting_parts(*args: Any) -> ColumnsResult:
        parted.append(1)
        return in_parts(*args)

    monkeypatch.setattr(columnar, "_decide_in_parts", counting_parts)
    rng = random.Random(7)
    async with serving(_config(tmp_path)) as a, serving(_config(tmp_path)) as b:
        share_ticket_key(a, b)
        sa, sb = a.sidecar._servicer, b.sidecar._servicer
        assert sa is not None and sb is not None
        both = [sa, sb]
        await _windows_and_an_opt_out(both)
        now = T0
        seen_details: set[str] = set()
        held: list[str] = []
        for round_ in range(120):
            reqs, now = _round_requests(rng, round_, now, held)
            msg = pb.AdmitBatchRequest(requests=reqs)
            via_message = await sa.AdmitBatch(msg, _Context())
            via_wire = await sb.AdmitBatch(msg.SerializeToString(), _Context())
            assert via_message.SerializeToString() == via_wire, f"round {round_}"
            seen_details.update(r.detail for r in via_message.responses)
            admitted = [
                (a.ticket, q.recipient)
                for q, a in zip(reqs, via_message.responses, strict=True)
                if a.ticket and q.category == pb.MARKETING and q.kind == pb.TEMPLATE
            ]
            if admitted and (round_ % 7 == 3 or BACK_OFF_DETAIL not in seen_details):
                # Meta declines marketing to a recipient: a 131049 back-off follows
                failed = pb.SendResult(
                    ticket=admitted[0][0],
                    status=pb.FAILED,
                    meta_error_code=131049,
                    at_unix_ms=now,
                )
                await _feedback(both, pb.RecordFeedbackRequest(send_result=failed))
                held.append(admitted[0][1])
        reasons: set[tuple[int, int]] = set()
        for s in both:
            reasons |= set(s._metrics.decisions)
        assert sa._metrics.decisions == sb._metrics.decisions
        state = pb.GetSenderStateRequest(sender_id=SENDER, at_unix_ms=now)
        sta = await sa.GetSenderState(state, _Context())
        stb = await sb.GetSenderState(state, _Context())
        assert sta.SerializeToString() == stb.SerializeToString()
    # every way an answer's detail is chosen was exercised, most through the columns
    for reason in (
        pb.OK,
        pb.SENDER_BLOCKED,
        pb.UNKNOWN_SENDER,
        pb.TEMPLATE_PAUSED,
        pb.TEMPLATE_DISABLED,
        pb.OUTSIDE_WINDOW,
        pb.MESSAGING_LIMIT,
        pb.MARKETING_FREQUENCY,
        pb.THROUGHPUT,
    ):
        assert any(r == reason for _, r in reasons), reason
    # every batch by the columns' loops, some in parts (a key repeated inside)
    assert len(encoded) > 50 and len(parted) > 3
    for detail in (BACK_OFF_DETAIL, DRY_RUN_DETAIL, DETAIL[pb.MARKETING_FREQUENCY]):
        assert detail in seen_details
    for words in ("unknown sender", "unknown template", "is paused", "is disabled"):
        assert any(words in d for d in seen_details), words


@run_async
async def test_bad_requests_are_named_as_the_message_way_names_them() -> None:
    async with serving(make_config(max_batch=5)) as h:
        s = h.sidecar._servicer
        assert s is not None
        good = pb.AdmitRequest(
            sender_id=SENDER, recipient="15550001111", kind=pb.FREE_FORM, category=pb.SERVICE
        )
        bad = pb.AdmitRequest(
            sender_id=SENDER, recipient="12a4", kind=pb.FREE_FORM, category=pb.SERVICE
        )
        for reqs, field in (
            ([good, good, good, bad], "requests[3].recipient"),
            ([good] * 6, "requests: at most 5 per call, got 6"),
        ):
            ctx = _Context()
            data = pb.AdmitBatchRequest(requests=reqs).SerializeToString()
            with pytest.raises(grpc.aio.AbortError):
                await s.AdmitBatch(data, ctx)
            code, details = ctx.aborted[0]
            assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details
        assert s._metrics.decisions == {}  # nothing was decided


@run_async
async def test_an_oversized_batch_is_refused_before_its_requests_are_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(data: bytes) -> Any:
        raise AssertionError("parsed an oversized batch")

    monkeypatch.setattr(batch_wire, "parse", never)
    monkeypatch.setattr(batch_wire, "decode_fast", never)
    async with serving(make_config(max_batch=5)) as h:
        s = h.sidecar._servicer
        assert s is not None
        ctx = _Context()
        with pytest.raises(grpc.aio.AbortError):
            await s.AdmitBatch(b"\x0a\x00" * 200_000, ctx)  # 200 000 empty requests
        code, details = ctx.aborted[0]
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details == "requests: at most 5 per call, got 200000"
    assert batch_wire.count_requests(b"\x0a\x00" * 3 + b"\x12\x01x") == 3
    assert batch_wire.count_requests(b"\x08\x01") == -1  # left to protobuf
    assert batch_wire.count_requests(b"\x0a\x05ab") == -1


@run_async
async def test_the_server_serves_admit_batch_from_wire_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    decode = batch_wire.decode_fast

    def counting(data: bytes) -> Any:
        calls.append(len(data))
        return decode(data)

    monkeypatch.setattr(batch_wire, "decode_fast", counting)
    async with serving() as h:
        reqs = [
            pb.AdmitRequest(
                sender_id=SENDER,
                recipient=f"1555000{i:04d}",
                kind=pb.TEMPLATE,
                category=pb.UTILITY,
                template_id="t1",
                at_unix_ms=T0 + 100 * i,
            )
            for i in range(3)
        ]
        reply = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
        assert [r.decision for r in reply.responses] == [pb.DECISION_ADMIT] * 3
        assert [r.detail for r in reply.responses] == ["admitted"] * 3
        assert len({r.ticket for r in reply.responses}) == 3
        empty = await h.stub.AdmitBatch(pb.AdmitBatchRequest())
        assert len(empty.responses) == 0
    assert len(calls) == 2
