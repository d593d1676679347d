"""The HTTP receiver on 127.0.0.1 with an ephemeral port, driven with raw HTTP/1.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from webhook_helpers import real

from tiergate.policy.events import Event, InboundMessage
from tiergate.webhooks.http import WebhookReceiver
from tiergate.webhooks.ingest import IngestResult, WebhookIngestor
from tiergate.webhooks.signature import sign

SECRET = "app-secret"
TOKEN = "verify-me"
BODY = real("messages__message-text__pywa")


@dataclass(slots=True)
class Applied:
    applied: bool
    detail: str


@dataclass
class RecordingService:
    """Stands in for AdmissionService: records what it is asked to apply."""

    events: list[Event] = field(default_factory=list)

    def apply(self, event: Event, now_ms: int) -> Applied:
        self.events.append(event)
        return Applied(True, "")


async def _exchange(port: int, raw: bytes, *, responses: int = 1) -> list[tuple[int, bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    out = []
    for _ in range(responses):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        length = 0
        for line in lines[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":")[1])
        out.append((status, await reader.readexactly(length)))
    writer.close()
    await writer.wait_closed()
    return out


def _post(body: bytes, signature: str | None, *, path: str = "/webhook", extra: str = "") -> bytes:
    sig = f"X-Hub-Signature-256: {signature}\r\n" if signature is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: tiergate\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{sig}{extra}Connection: close\r\n\r\n"
    ).encode() + body


def _get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: tiergate\r\nConnection: close\r\n\r\n".encode()


def _run(
    scenario: Callable[[WebhookReceiver, RecordingService], Awaitable[None]],
    *,
    secret: str = SECRET,
    max_body_bytes: int = 1 << 20,
) -> RecordingService:
    service = RecordingService()

    async def main() -> None:
        receiver = WebhookReceiver(
            service,
            secret,
            TOKEN,
            lambda: 1_700_000_000_000,
            ingestor=WebhookIngestor(service, max_body_bytes=max_body_bytes),
            max_body_bytes=max_body_bytes,
        )
        await receiver.start("127.0.0.1", 0)
        try:
            await scenario(receiver, service)
        finally:
            await receiver.stop()

    asyncio.run(main())
    return service


def test_verification_handshake() -> None:
    async def scenario(rx: WebhookReceiver, _: RecordingService) -> None:
        ok = "/webhook?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444"
        assert await _exchange(rx.port, _get(ok)) == [(200, b"1158201444")]
        wrong = "/webhook?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1"
        assert (await _exchange(rx.port, _get(wrong)))[0][0] == 403
        mode = "/webhook?hub.mode=unsubscribe&hub.verify_token=verify-me&hub.challenge=1"
        assert (await _exchange(rx.port, _get(mode)))[0][0] == 403
        assert (await _exchange(rx.port, _get("/webhook")))[0][0] == 403
        assert (await _exchange(rx.port, _get("/other?hub.mode=subscribe")))[0][0] == 404

    _run(scenario)


def test_signed_post_is_applied_and_answered_with_counts() -> None:
    async def scenario(rx: WebhookReceiver, service: RecordingService) -> None:
        ((status, payload),) = await _exchange(rx.port, _post(BODY, sign(BODY, SECRET)))
        assert status == 200
        assert json.loads(payload) == {"applied": 1, "ignored": 0, "ignored_events": []}
        assert len(service.events) == 1 and isinstance(service.events[0], InboundMessage)
        # Meta redelivers: answered 200 again, applied nothing the second time.
        ((status, payload),) = await _exchange(rx.port, _post(BODY, sign(BODY, SECRET)))
        assert status == 200 and json.loads(payload)["applied"] == 0
        assert len(service.events) == 1

    _run(scenario)


def test_bad_or_missing_signature_is_refused_and_nothing_applied() -> None:
    async def scenario(rx: WebhookReceiver, service: RecordingService) -> None:
        for signature in (None, "sha256=" + "0" * 64, sign(BODY, "wrong"), "garbage"):
            ((status, payload),) = await _exchange(rx.port, _post(BODY, signature))
            assert status == 403, signature
            assert b"signature" in payload
        altered = BODY.replace(b"Body Text", b"Body Texu")
        ((status, _),) = await _exchange(rx.port, _post(altered, sign(BODY, SECRET)))
        assert status == 403
        assert service.events == []
        assert rx.ingestor.stats.bad_signature == 5

    _run(scenario)


def test_malformed_and_oversize_bodies() -> None:
    async def scenario(rx: WebhookReceiver, service: RecordingService) -> None:
        bad = b'{"object": "whatsapp_business_account", "entry": 5}'
        ((status, payload),) = await _exchange(rx.port, _post(bad, sign(bad, SECRET)))
        assert status == 400 and b"entry: must be a list" in payload
        big = b" " * 5000
        ((status, _),) = await _exchange(rx.port, _post(big, sign(big, SECRET)))
        assert status == 413
        assert service.events == []
        assert rx.ingestor.stats.malformed == 1

    _run(scenario, max_body_bytes=4096)


def test_unsigned_bodies_accepted_without_a_secret() -> None:
    async def scenario(rx: WebhookReceiver, service: RecordingService) -> None:
        ((status, _),) = await _exchange(rx.port, _post(BODY, None))
        assert status == 200 and len(service.events) == 1

    _run(scenario, secret="")


def test_strict_http_parsing() -> None:
    async def scenario(rx: WebhookReceiver, service: RecordingService) -> None:
        cases = [
            (b"POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 411),
            (
                b"POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                501,
            ),
            (b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"POST /webhook HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n",
                400,
            ),
            (b"GET /webhook HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            (b"GET /webhook\r\nHost: x\r\n\r\n", 400),
            (b"GET /webhook HTTP/1.1\r\n\r\n", 400),
            (b"GET /webhook HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
            (b"DELETE /webhook HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 431),
        ]
        for raw, expected in cases:
            ((status, _),) = await _exchange(rx.port, raw)
            assert status == expected, raw[:60]
        assert service.events == []

    _run(scenario)


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async def scenario(rx: WebhookReceiver, service: RecordingService) -> None:
        other = real("messages__message-referral__pywa")
        first = _post(BODY, sign(BODY, SECRET)).replace(b"Connection: close\r\n", b"")
        expect = "Expect: 100-continue\r\n"
        second = _post(other, sign(other, SECRET), extra=expect)
        responses = await _exchange(rx.port, first + second, responses=3)
        assert [status for status, _ in responses] == [200, 100, 200]
        assert len(service.events) == 2

    _run(scenario)


def test_stop_closes_idle_connections() -> None:
    async def scenario(rx: WebhookReceiver, _: RecordingService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        await rx.stop()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()

    _run(scenario)


def test_after_ingest_runs_before_the_answer() -> None:
    seen: list[IngestResult] = []

    async def durable(result: IngestResult) -> None:
        seen.append(result)

    service = RecordingService()

    async def main() -> None:
        rx = WebhookReceiver(
            service,
            SECRET,
            TOKEN,
            lambda: 0,
            ingestor=WebhookIngestor(service),
            after_ingest=durable,
        )
        await rx.start("127.0.0.1", 0)
        try:
            ((status, _),) = await _exchange(rx.port, _post(BODY, sign(BODY, SECRET)))
            assert status == 200 and [r.applied for r in seen] == [1]
        finally:
            await rx.stop()

    asyncio.run(main())


def test_post_through_the_admission_service() -> None:
    from tiergate.engine import constants as c
    from tiergate.policy.events import Category, Kind, SenderUpdate
    from tiergate.policy.profile import load_profile
    from tiergate.policy.requests import AdmitRequest
    from tiergate.policy.service import AdmissionService

    at = 1697043223000  # the payload's message time
    service = AdmissionService(load_profile("meta-2025"))
    service.apply(SenderUpdate("1122334455667", display_phone_number="972123456789"), at)
    free_form = AdmitRequest(
        "1122334455667", "972987654321", kind=int(Kind.FREE_FORM), category=int(Category.SERVICE)
    )

    async def main() -> None:
        rx = WebhookReceiver(service, SECRET, TOKEN, lambda: at + 1000)
        await rx.start("127.0.0.1", 0)
        try:
            ((status, payload),) = await _exchange(rx.port, _post(BODY, sign(BODY, SECRET)))
            assert status == 200 and json.loads(payload)["applied"] == 1
        finally:
            await rx.stop()

    assert service.admit(free_form, at).reason == c.OUTSIDE_WINDOW
    asyncio.run(main())
    assert service.admit(free_form, at + 2000).decision == c.ADMIT
