"""The state oracles of the fuzz targets, on the defects known to break them.

Each test here is the minimal input of a defect the oracles catch: a refused
request that moves the request clock, an idempotency key answering for another
request, a ticket tiergate never issued releasing a slot. While a defect is
known and unfixed its test is ``xfail(strict=True)`` (see ``known_defects``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import known_defects as known
import pytest
import uvloop
from fuzz_session import Outcome, Session, fuzz_config, named_field
from fuzz_strategies import (
    DAY,
    HOUR,
    OTHER,
    RECIPIENTS,
    SENDER,
    TEMPLATE_OK,
    WEBHOOK_SECRET,
)
from server_harness import T0, serving

from tiergate.v1 import admission_pb2 as pb
from tiergate.webhooks.signature import sign

FUTURE = T0 + 25 * HOUR
LIMIT = 10  # SENDER's portfolio: TIER_250 with the fuzz profile's 4 % headroom


def run(scenario: Callable[[Session], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving(fuzz_config("request")) as h:
            session = Session(h, "request")
            try:
                await session.start()
                await scenario(session)
            finally:
                session.close()

    uvloop.run(main())


def template(
    recipient: str, at: int = T0, *, key: str = "", sender: str = SENDER
) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=sender,
        recipient=recipient,
        kind=pb.TEMPLATE,
        category=pb.UTILITY,
        template_id=TEMPLATE_OK,
        idempotency_key=key,
        at_unix_ms=at,
    )


async def admit(s: Session, r: pb.AdmitRequest) -> pb.AdmitResponse:
    reply = await s.ok("Admit", r)
    assert isinstance(reply, pb.AdmitResponse)
    return reply


async def state(s: Session, sender: str = SENDER, at: int = 0) -> pb.SenderState:
    reply = await s.ok("GetSenderState", pb.GetSenderStateRequest(sender_id=sender, at_unix_ms=at))
    assert isinstance(reply, pb.SenderState)
    return reply


async def fill(s: Session) -> None:
    """SENDER's portfolio at its limit at T0."""
    for i in range(LIMIT):
        assert (await admit(s, template(RECIPIENTS[i]))).counted
    assert (await state(s)).used_24h == LIMIT


# --- a refused request and the request clock --------------------------------------------


def _columns(at: int) -> pb.AdmitColumnsRequest:
    return pb.AdmitColumnsRequest(
        senders=[SENDER],
        sender_index=[0],
        recipients=["12x"],
        kinds=bytes([pb.TEMPLATE]),
        categories=bytes([pb.UTILITY]),
        templates=[TEMPLATE_OK],
        template_index=[1],
        at_unix_ms=[at],
    )


def _hook(body: bytes, signature: str) -> pb.IngestWebhookRequest:
    return pb.IngestWebhookRequest(body=body, signature=signature, at_unix_ms=FUTURE)


WEBHOOK = b'{"object": "whatsapp_business_account", "entry": []}'
BAD = template("12x", FUTURE)
#: One refused request of every kind, stamped 25 h ahead: (rpc, request, status).
REFUSED: dict[str, tuple[str, Any, grpc.StatusCode]] = {
    "Admit": ("Admit", BAD, grpc.StatusCode.INVALID_ARGUMENT),
    "AdmitBatch": (
        "AdmitBatch",
        pb.AdmitBatchRequest(requests=[BAD]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "AdmitStream": ("AdmitStream", [BAD], grpc.StatusCode.INVALID_ARGUMENT),
    "AdmitColumns": ("AdmitColumns", _columns(FUTURE), grpc.StatusCode.INVALID_ARGUMENT),
    "RecordFeedback-recipient": (
        "RecordFeedback",
        pb.RecordFeedbackRequest(
            inbound_message=pb.InboundMessage(sender_id=SENDER, recipient="12x", at_unix_ms=FUTURE)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "RecordFeedback-tier": (
        "RecordFeedback",
        pb.RecordFeedbackRequest(
            sender_update=pb.SenderUpdate(sender_id=SENDER, tier="TIER_X", at_unix_ms=FUTURE)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "IngestWebhook-signature": (
        "IngestWebhook",
        _hook(WEBHOOK, "sha256=" + "0" * 64),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    "IngestWebhook-body": (
        "IngestWebhook",
        _hook(b"{", sign(b"{", WEBHOOK_SECRET)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "GetSenderState-unknown": (
        "GetSenderState",
        pb.GetSenderStateRequest(sender_id="100000000000009", at_unix_ms=FUTURE),
        grpc.StatusCode.NOT_FOUND,
    ),
}
#: The refused requests that move the clock today.
MOVES_THE_CLOCK = set(REFUSED) - {"RecordFeedback-recipient"}


async def send(s: Session, rpc: str, request: Any) -> Outcome:
    if rpc == "AdmitStream":
        return await s.stream(rpc, [m.SerializeToString() for m in request])
    return await s.unary(rpc, request.SerializeToString())


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, marks=known.clock_moved_by_refused_requests) if k in MOVES_THE_CLOCK else k
        for k in REFUSED
    ],
)
def test_a_refused_request_does_not_move_the_request_clock(kind: str) -> None:
    """At a full limit, a refused request stamped 25 h ahead, then a request without
    a time: it is decided at the clock's latest time, where the limit is still full."""
    rpc, request, code = REFUSED[kind]

    async def scenario(s: Session) -> None:
        await fill(s)
        before = await state(s)
        out = await send(s, rpc, request)
        assert out.code == code, out
        assert (await state(s)).at_unix_ms == before.at_unix_ms, "the clock moved"
        late = await admit(s, template(RECIPIENTS[LIMIT], 0))
        assert (late.decision, late.reason) == (pb.DECISION_RETRY_LATER, pb.MESSAGING_LIMIT)

    run(scenario)


# --- idempotency keys are bound to their request ----------------------------------------


async def reuse(s: Session, path: str, r: pb.AdmitRequest) -> Outcome:
    """``r`` sent through ``path``."""
    if path == "Admit":
        return await s.unary(path, r.SerializeToString())
    if path == "AdmitBatch":
        return await s.unary(path, pb.AdmitBatchRequest(requests=[r]).SerializeToString())
    if path == "AdmitStream":
        return await s.stream(path, [r.SerializeToString()])
    columns = pb.AdmitColumnsRequest(
        senders=[r.sender_id],
        sender_index=[0],
        recipients=[r.recipient],
        kinds=bytes([r.kind]),
        categories=bytes([r.category]),
        templates=[r.template_id],
        template_index=[1],
        idempotency_keys=[r.idempotency_key],
        at_unix_ms=[r.at_unix_ms],
    )
    return await s.unary(path, columns.SerializeToString())


PATHS = ["Admit", "AdmitBatch", "AdmitStream", "AdmitColumns"]


def _refused_naming_the_key(out: Outcome) -> None:
    assert out.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), (
        f"another request's answer: {out}"
    )
    field = named_field(out.details.removeprefix("stream message 0: ")) or ""
    assert field.rsplit(".", 1)[-1].startswith("idempotency_key"), out.details


@pytest.mark.parametrize("path", PATHS)
@known.keys_not_bound
def test_a_key_used_for_another_recipient_is_refused_naming_it(path: str) -> None:
    async def scenario(s: Session) -> None:
        first = await admit(s, template(RECIPIENTS[0], key="k"))
        assert first.decision == pb.DECISION_ADMIT
        out = await reuse(s, path, template(RECIPIENTS[1], T0 + 1, key="k"))
        _refused_naming_the_key(out)
        assert (await state(s)).used_24h == 1

    run(scenario)


@known.keys_not_bound
def test_a_key_used_for_another_recipient_at_a_full_limit_admits_nobody() -> None:
    async def scenario(s: Session) -> None:
        await fill(s)
        keyed = await admit(s, template(RECIPIENTS[0], T0 + 1, key="k"))
        assert keyed.decision == pb.DECISION_ADMIT and not keyed.counted
        for i in range(LIMIT, LIMIT + 3):
            out = await reuse(s, "Admit", template(RECIPIENTS[i], T0 + 2, key="k"))
            _refused_naming_the_key(out)
        assert (await state(s)).used_24h == LIMIT

    run(scenario)


@known.keys_not_bound
def test_a_banned_sender_key_used_for_another_request_is_not_admitted() -> None:
    async def scenario(s: Session) -> None:
        assert (await admit(s, template(RECIPIENTS[0], key="k"))).decision == pb.DECISION_ADMIT
        ban = pb.SenderUpdate(sender_id=SENDER, status=pb.BANNED, at_unix_ms=T0 + 1)
        await s.ok("RecordFeedback", pb.RecordFeedbackRequest(sender_update=ban))
        out = await reuse(s, "Admit", template(RECIPIENTS[1], T0 + 2, key="k"))
        _refused_naming_the_key(out)

    run(scenario)


def test_the_same_request_under_its_key_gets_the_first_answer() -> None:
    """A retry (same sender, recipient, kind, category and template) is answered
    from memory on every path, and counts nothing again."""

    async def scenario(s: Session) -> None:
        first = await admit(s, template(RECIPIENTS[0], key="k"))
        for path in PATHS:
            out = await reuse(s, path, template(RECIPIENTS[0], T0 + 1, key="k"))
            assert out.code == grpc.StatusCode.OK, out
            if path == "AdmitBatch":
                ticket = pb.AdmitBatchResponse.FromString(out.replies[0]).responses[0].ticket
            elif path == "AdmitColumns":
                ticket = pb.AdmitColumnsResponse.FromString(out.replies[0]).tickets[0]
            else:
                ticket = pb.AdmitResponse.FromString(out.replies[0]).ticket
            assert ticket == first.ticket, path
        assert (await state(s)).used_24h == 1

    run(scenario)


# --- tickets ---------------------------------------------------------------------------


def _forged(ticket: str, field: int, change: Callable[[int], int]) -> str:
    parts = ticket.split(".")
    parts[field] = f"{change(int(parts[field], 16)):x}"
    return ".".join(parts)


async def _fail(s: Session, ticket: str) -> pb.RecordFeedbackResponse:
    e = pb.SendResult(ticket=ticket, status=pb.FAILED, meta_error_code=131026, at_unix_ms=T0 + 1)
    reply = await s.ok("RecordFeedback", pb.RecordFeedbackRequest(send_result=e))
    assert isinstance(reply, pb.RecordFeedbackResponse)
    return reply


FORGERIES = {
    "id+1": (0, lambda v: v + 1),
    "id+1000": (0, lambda v: v + 1000),
    "id*2": (0, lambda v: v * 2),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
@known.forged_tickets_release
def test_a_ticket_with_an_altered_first_field_releases_nothing(forgery: str) -> None:
    field, change = FORGERIES[forgery]

    async def scenario(s: Session) -> None:
        first = await admit(s, template(RECIPIENTS[0]))
        assert first.counted
        reply = await _fail(s, _forged(first.ticket, field, change))
        assert not reply.applied, reply
        assert (await state(s)).used_24h == 1

    run(scenario)


def test_a_real_ticket_releases_its_slot_once() -> None:
    async def scenario(s: Session) -> None:
        first = await admit(s, template(RECIPIENTS[0]))
        assert (await _fail(s, first.ticket)).applied
        assert (await state(s)).used_24h == 0
        assert not (await _fail(s, first.ticket)).applied
        assert (await state(s)).used_24h == 0

    run(scenario)


def test_another_sender_ticket_and_garbage_release_nothing() -> None:
    async def scenario(s: Session) -> None:
        mine = await admit(s, template(RECIPIENTS[0]))
        other = await admit(s, template(RECIPIENTS[1], sender=OTHER))
        for ticket in ("", "x", "1.2.3", "1.0.1.0.0", "f" * 64, mine.ticket + ".0", "." * 4):
            if ticket:
                await _fail(s, ticket)
        assert (await state(s)).used_24h == 1
        assert (await state(s, OTHER)).used_24h == 1
        assert other.counted

    run(scenario)


def test_a_day_later_the_limit_is_free_again() -> None:
    """The model's window: admits older than 24 h no longer count."""

    async def scenario(s: Session) -> None:
        await fill(s)
        later = await admit(s, template(RECIPIENTS[LIMIT], T0 + DAY + 2 * HOUR))
        assert later.decision == pb.DECISION_ADMIT and later.counted

    run(scenario)
