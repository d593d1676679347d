"""The webhook receiver's bounds: a connection cap that closes idle connections first,
and large bodies applied in slices that let the event loop serve other requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from webhook_helpers import dumps, real

from tiergate.policy.events import Event
from tiergate.webhooks.http import WebhookReceiver
from tiergate.webhooks.ingest import IngestResult, WebhookIngestor
from tiergate.webhooks.parse import WebhookError
from tiergate.webhooks.signature import SignatureError, sign

pytestmark = pytest.mark.engine_independent

SECRET = "app-secret"
TOKEN = "verify-me"
NOW_MS = 1_700_000_000_000
HANDSHAKE = "/webhook?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=7"


@dataclass(slots=True)
class Applied:
    applied: bool
    detail: str


@dataclass
class CountingService:
    """Records what it applies; ``on_apply`` runs at each event (after recording it)."""

    events: list[Event] = field(default_factory=list)
    on_apply: Callable[[int], None] | None = None

    def apply(self, event: Event, now_ms: int) -> Applied:
        self.events.append(event)
        if self.on_apply is not None:
            self.on_apply(len(self.events))
        return Applied(True, "")


def messages_body(n: int, *, repeat_every: int = 0) -> bytes:
    """One change with ``n`` inbound text messages (every ``repeat_every``-th one a
    redelivery of the message before it, when set)."""
    doc = json.loads(real("messages__message-text__pywa"))
    value = doc["entry"][0]["changes"][0]["value"]
    template = value["messages"][0]
    messages = []
    for i in range(n):
        k = i - 1 if repeat_every and i % repeat_every == repeat_every - 1 else i
        messages.append({**template, "id": f"wamid.{k}", "from": f"97298{k % 1000:07d}"})
    value["messages"] = messages
    return dumps(doc)


def post(body: bytes, *, keep_alive: bool = False) -> bytes:
    return (
        "POST /webhook HTTP/1.1\r\nHost: tiergate\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Hub-Signature-256: {sign(body, SECRET)}\r\n"
        + ("" if keep_alive else "Connection: close\r\n")
        + "\r\n"
    ).encode() + body


def get(target: str, *, keep_alive: bool = False) -> bytes:
    close = "" if keep_alive else "Connection: close\r\n"
    return f"GET {target} HTTP/1.1\r\nHost: tiergate\r\n{close}\r\n".encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v.split(":")[1]) for v in lines if v.lower().startswith("content-length:"))
    return int(lines[0].split(" ")[1]), await reader.readexactly(length)


async def exchange(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


def run(
    scenario: Callable[[WebhookReceiver, CountingService], Awaitable[None]], **options: int
) -> None:
    service = CountingService()

    async def main() -> None:
        receiver = WebhookReceiver(
            service,
            SECRET,
            TOKEN,
            lambda: NOW_MS,
            ingestor=WebhookIngestor(service, max_body_bytes=8 << 20),
            max_body_bytes=8 << 20,
            **options,  # type: ignore[arg-type]
        )
        await receiver.start("127.0.0.1", 0)
        try:
            await scenario(receiver, service)
        finally:
            await receiver.stop()

    asyncio.run(main())


# --- connection cap -----------------------------------------------------------


def test_idle_connections_are_closed_so_a_signed_post_gets_through() -> None:
    body = real("messages__message-text__pywa")

    async def scenario(rx: WebhookReceiver, service: CountingService) -> None:
        # Keep-alive connections that were served once and now wait, then
        # connections that never send anything: four times the cap in all.
        held = []
        for _ in range(8):
            reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
            writer.write(get(HANDSHAKE, keep_alive=True))
            assert await read_response(reader) == (200, b"7")
            held.append(writer)
        for _ in range(24):
            _, writer = await asyncio.open_connection("127.0.0.1", rx.port)
            held.append(writer)
        for _ in range(5):
            assert (await exchange(rx.port, post(body)))[0] == 200
        assert len(service.events) == 1  # applied once, then redeliveries
        assert rx.evicted == 24 + 1  # the first post made room; the rest found it
        assert rx.open_connections <= 8
        assert rx.refused == 0
        for writer in held:
            writer.close()

    run(scenario, max_connections=8)


def test_a_new_connection_is_refused_503_when_every_connection_is_busy() -> None:
    async def scenario(rx: WebhookReceiver, _: CountingService) -> None:
        busy = []
        for _ in range(4):  # each in the middle of sending a body
            reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
            writer.write(post(b"{" + b" " * 99)[:-50])
            await writer.drain()
            busy.append((reader, writer))

        async def heads_read() -> None:
            while rx.open_connections < 4 or rx._idle:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(heads_read(), 30)
        status, payload = await exchange(rx.port, get(HANDSHAKE))
        assert (status, payload) == (503, b"too many connections")
        assert rx.refused == 1
        for _, writer in busy:
            writer.close()

    run(scenario, max_connections=4)


def test_the_connection_cap_comes_from_the_config() -> None:
    from tiergate import config as cfg

    assert cfg.ServeConfig().webhook_max_connections == cfg.DEFAULT_WEBHOOK_MAX_CONNECTIONS
    loaded = cfg.load({"webhook_max_connections": "64"}, env={})
    assert loaded.webhook_max_connections == 64
    env = {"TIERGATE_WEBHOOK_MAX_CONNECTIONS": "9"}
    assert cfg.load({}, env=env).webhook_max_connections == 9
    for bad in ("0", "70000", "many"):
        try:
            cfg.load({"webhook_max_connections": bad}, env={})
        except cfg.ConfigError as e:
            assert e.key == "webhook_max_connections"
        else:
            raise AssertionError(f"accepted {bad}")


# --- large bodies in slices ---------------------------------------------------


def test_a_10000_event_body_is_applied_while_other_requests_are_served() -> None:
    body = messages_body(10_000)

    async def scenario(rx: WebhookReceiver, service: CountingService) -> None:
        started = asyncio.Event()
        service.on_apply = lambda n: started.set() if n == 1 else None
        big = asyncio.create_task(exchange(rx.port, post(body)))
        await started.wait()  # the loop ran again after the body's first event
        applied_then = len(service.events)
        assert await exchange(rx.port, get(HANDSHAKE)) == (200, b"7")
        served_during = len(service.events)
        assert not big.done()
        status, payload = await big
        assert status == 200
        assert json.loads(payload) == {"applied": 10_000, "ignored": 0, "ignored_events": []}
        assert len(service.events) == 10_000
        # The handshake was answered between the body's first and last events.
        assert 0 < applied_then <= served_during < 10_000

    run(scenario, slice_events=1)


def test_slices_give_the_same_result_as_applying_at_once() -> None:
    body = messages_body(2_000, repeat_every=7)

    async def main() -> tuple[IngestResult, IngestResult, list[Event], list[Event]]:
        at_once, sliced = CountingService(), CountingService()
        a = WebhookIngestor(at_once).ingest(body, sign(body, SECRET), SECRET, NOW_MS)
        ingestor = WebhookIngestor(sliced)
        b = await ingestor.ingest_sliced(body, sign(body, SECRET), SECRET, NOW_MS, slice_events=13)
        assert ingestor.stats.duplicates == 2_000 // 7
        return a, b, at_once.events, sliced.events

    a, b, events_a, events_b = asyncio.run(main())
    assert a == b
    assert a.applied == 2_000 - 2_000 // 7
    assert events_a == events_b


def test_stop_lets_a_body_being_applied_finish_and_answers_it() -> None:
    body = messages_body(3_000)

    async def scenario(rx: WebhookReceiver, service: CountingService) -> None:
        started = asyncio.Event()
        service.on_apply = lambda n: started.set() if n == 1 else None
        big = asyncio.create_task(exchange(rx.port, post(body)))
        await started.wait()
        await rx.stop()
        status, payload = await big
        assert status == 200 and json.loads(payload)["applied"] == 3_000
        assert len(service.events) == 3_000

    run(scenario, slice_events=10)


def test_a_large_body_parsed_off_the_loop_is_refused_and_counted_like_a_small_one() -> None:
    body = messages_body(1_000)
    assert len(body) > 64 * 1024

    async def main() -> None:
        service = CountingService()
        ingestor = WebhookIngestor(service)
        for signature, error in (("sha256=" + "0" * 64, SignatureError), (None, WebhookError)):
            data = body if signature else body[:-1]
            try:
                await ingestor.ingest_sliced(data, signature, SECRET if signature else "", NOW_MS)
            except error:
                pass
            else:
                raise AssertionError("accepted")
        assert (ingestor.stats.bodies, ingestor.stats.bad_signature) == (2, 1)
        assert ingestor.stats.malformed == 1
        assert service.events == []

    asyncio.run(main())
