"""The request clock (``--clock request``) moves only with accepted requests.

A refused request (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED) and a decision
for an unknown sender change nothing: a request without ``at_unix_ms`` is
still decided at the time of the accepted requests before it, usage and limit
hold, and a keyed retry still gets its first answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import grpc
import pytest
from server_harness import SENDER, T0, Harness, make_config, run_async, sender, serving

from tiergate.config import Endpoint, ServeConfig
from tiergate.v1 import admission_pb2 as pb
from tiergate.webhooks.signature import sign

HOUR = 3_600_000
AHEAD = T0 + 25 * HOUR  # a day and an hour later: the limit window has moved on by then
SECRET = "app-secret"
WABA = "waba-clock"
KEY = "retry-me"


def req(recipient: str, at: int = T0, *, sender_id: str = SENDER, key: str = "") -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=sender_id,
        recipient=recipient,
        kind=pb.TEMPLATE,
        category=pb.UTILITY,
        template_id="spring_sale",
        idempotency_key=key,
        at_unix_ms=at,
    )


def config(**overrides: object) -> ServeConfig:
    return make_config(
        senders=(sender(tier="TIER_250", waba_id=WABA),),
        webhook_secret=SECRET,
        **overrides,
    )


async def fill(h: Harness) -> str:
    """Use every slot of the 250 limit at T0; the last admit carries KEY. Its ticket."""
    # 50 ms apart: within the sender's throughput
    first = await h.client.admit_batch(
        [req(f"1555{i:07d}", T0 - (249 - i) * 50) for i in range(249)]
    )
    assert [(r.decision, r.reason) for r in first] == [(pb.DECISION_ADMIT, pb.OK)] * 249
    keyed = await h.stub.Admit(req("15559999999", key=KEY))
    assert keyed.decision == pb.DECISION_ADMIT and keyed.used == 250
    return keyed.ticket


async def assert_clock_at_t0(h: Harness, ticket: str) -> None:
    """Requests without at_unix_ms are decided at T0 still."""
    state = await h.client.sender_state(SENDER)
    assert state.at_unix_ms == T0
    assert (state.used_24h, state.effective_limit) == (250, 250)
    new = [await h.stub.Admit(req(f"1666{i:07d}", at=0)) for i in range(20)]
    assert {(r.decision, r.reason) for r in new} == {(pb.DECISION_RETRY_LATER, pb.MESSAGING_LIMIT)}
    columns = await h.client.admit_columns([req(f"1777{i:07d}", at=0) for i in range(20)])
    assert {c.reason for c in columns} == {pb.MESSAGING_LIMIT}
    batch = await h.client.admit_batch([req(f"1888{i:07d}", at=0) for i in range(20)])
    assert {r.reason for r in batch} == {pb.MESSAGING_LIMIT}
    retry = await h.stub.Admit(req("15559999999", at=0, key=KEY))
    assert (retry.decision, retry.ticket) == (pb.DECISION_ADMIT, ticket)
    assert (await h.client.sender_state(SENDER)).used_24h == 250


async def refused(call: Awaitable[object], code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()


def invalid_admit(h: Harness) -> Awaitable[object]:
    return refused(h.stub.Admit(req("12ab", at=AHEAD)), grpc.StatusCode.INVALID_ARGUMENT)


def invalid_batch(h: Harness) -> Awaitable[object]:
    batch = pb.AdmitBatchRequest(requests=[req("16660000001", at=AHEAD), req("12ab", at=AHEAD)])
    return refused(h.stub.AdmitBatch(batch), grpc.StatusCode.INVALID_ARGUMENT)


async def invalid_stream(h: Harness) -> None:
    call = h.stub.AdmitStream(iter([req("12ab", at=AHEAD)]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def invalid_columns(h: Harness) -> Awaitable[object]:
    return refused(
        h.client.admit_columns([req("16660000001", at=AHEAD), req("12ab", at=AHEAD)]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def invalid_sender_update(h: Harness) -> Awaitable[object]:
    event = pb.SenderUpdate(sender_id=SENDER, tier="TIER_NOPE", at_unix_ms=AHEAD)
    return refused(h.client.record_feedback(event), grpc.StatusCode.INVALID_ARGUMENT)


def webhook_bad_signature(h: Harness) -> Awaitable[object]:
    body = account_restriction(until=AHEAD + HOUR)
    return refused(
        h.client.ingest_webhook(body, "sha256=" + "0" * 64, at_unix_ms=AHEAD),
        grpc.StatusCode.UNAUTHENTICATED,
    )


def webhook_malformed(h: Harness) -> Awaitable[object]:
    body = b'{"object": "whatsapp_business_account", "entry": 7}'
    return refused(
        h.client.ingest_webhook(body, sign(body, SECRET), at_unix_ms=AHEAD),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def state_not_found(h: Harness) -> Awaitable[object]:
    return refused(h.client.sender_state("nobody", at_unix_ms=AHEAD), grpc.StatusCode.NOT_FOUND)


async def unknown_sender_admit(h: Harness) -> None:
    r = await h.stub.Admit(req("16660000001", at=AHEAD, sender_id="nobody", key=KEY))
    assert r.reason == pb.UNKNOWN_SENDER


async def unknown_sender_batch(h: Harness) -> None:
    batch = [req(f"1666000000{i}", at=AHEAD, sender_id="nobody", key=f"k{i}") for i in range(3)]
    assert {r.reason for r in await h.client.admit_batch(batch)} == {pb.UNKNOWN_SENDER}
    columns = await h.client.admit_columns(batch)
    assert {c.reason for c in columns} == {pb.UNKNOWN_SENDER}


async def unknown_sender_stream(h: Harness) -> None:
    answers = [
        r
        async for r in h.client.admit_stream(
            [req(f"1666000000{i}", at=AHEAD, sender_id="nobody") for i in range(3)]
        )
    ]
    assert {r.reason for r in answers} == {pb.UNKNOWN_SENDER}


REFUSALS: dict[str, Callable[[Harness], Awaitable[object]]] = {
    "Admit INVALID_ARGUMENT": invalid_admit,
    "AdmitBatch INVALID_ARGUMENT": invalid_batch,
    "AdmitStream INVALID_ARGUMENT": invalid_stream,
    "AdmitColumns INVALID_ARGUMENT": invalid_columns,
    "RecordFeedback INVALID_ARGUMENT": invalid_sender_update,
    "IngestWebhook UNAUTHENTICATED": webhook_bad_signature,
    "IngestWebhook INVALID_ARGUMENT": webhook_malformed,
    "GetSenderState NOT_FOUND": state_not_found,
    "Admit UNKNOWN_SENDER": unknown_sender_admit,
    "AdmitBatch and AdmitColumns UNKNOWN_SENDER": unknown_sender_batch,
    "AdmitStream UNKNOWN_SENDER": unknown_sender_stream,
}


@pytest.mark.parametrize("refusal", list(REFUSALS.values()), ids=list(REFUSALS))
@run_async
async def test_a_refused_request_leaves_the_request_clock_where_it_was(
    refusal: Callable[[Harness], Awaitable[object]],
) -> None:
    async with serving(config()) as h:
        ticket = await fill(h)
        await refusal(h)
        await refusal(h)
        await assert_clock_at_t0(h, ticket)
        # An accepted request does move it: its time is what un-stamped requests take.
        moved = await h.stub.Admit(req("16669999999", at=AHEAD))
        assert moved.decision == pb.DECISION_ADMIT
        later = await h.stub.Admit(req("16669999998", at=0))
        assert later.decision == pb.DECISION_ADMIT
        assert (await h.client.sender_state(SENDER)).at_unix_ms == AHEAD


def account_restriction(until: int, *, time: int | None = None) -> bytes:
    """A signed-able account_update restricting WABA's messaging until ``until``."""
    entry: dict[str, object] = {
        "id": WABA,
        "changes": [
            {
                "field": "account_update",
                "value": {
                    "event": "ACCOUNT_RESTRICTION",
                    "restriction_info": [
                        {
                            "restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
                            "expiration": until // 1000,
                        }
                    ],
                },
            }
        ],
    }
    if time is not None:
        entry["time"] = time // 1000
    return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()


async def http_post(port: int, body: bytes, signature: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        f"X-Hub-Signature-256: {signature}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]


@run_async
async def test_the_http_webhook_receiver_decides_at_the_clock_of_accepted_requests() -> None:
    async with serving(config(webhook_listen=Endpoint("127.0.0.1", 0))) as h:
        ticket = await fill(h)
        port = h.sidecar.webhook_port
        # Refused through gRPC and over HTTP, all stamped (or dated) a day ahead.
        for refusal in REFUSALS.values():
            await refusal(h)
        restriction = account_restriction(until=T0 + 2 * HOUR)
        status, _ = await http_post(port, account_restriction(AHEAD, time=AHEAD), "sha256=00")
        assert status == 403
        status, _ = await http_post(port, b"{", sign(b"{", SECRET))
        assert status == 400
        await assert_clock_at_t0(h, ticket)
        # A webhook without a time of its own is applied at the request clock's time,
        # T0: a messaging restriction until T0 + 2 h is in force, not already over.
        status, payload = await http_post(port, restriction, sign(restriction, SECRET))
        assert status == 200, payload
        assert json.loads(payload)["applied"] == 1
        assert (await h.client.sender_state(SENDER)).status == pb.RESTRICTED
        held = await h.stub.Admit(req("16669999999", at=0))
        assert (held.reason, held.retry_at_unix_ms) == (pb.SENDER_RESTRICTED, T0 + 2 * HOUR)
