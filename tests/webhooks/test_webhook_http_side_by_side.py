"""The hand-written webhook receiver next to aiohttp's server, in one run.

Both serve the same application: an aiohttp ``web.Application`` whose handler
calls the receiver's own handshake and POST code, so only the HTTP layer
differs. Each server gets the same hostile clients — slow-loris connections
trickling a head, bodies and heads over the limits, malformed requests, and 32
seeded mutations of valid requests — and the outcomes are printed
side by side (``pytest -s``). What the hand-written receiver must show:

- slow-loris connections are closed by the server (read timeout, and the
  connection cap closing the longest-waiting first) while a signed POST still
  gets its 200;
- an oversized body is answered 413 before it is read, an oversized head 431;
- every malformed request is answered 4xx/5xx or closed, never 2xx, and no
  mutation gets a POST applied unless its body and signature are the original;
- it still serves afterwards and logs no error.

docs/architecture.md says what the comparison showed and why the receiver stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from test_webhook_http_limits import SECRET, TOKEN, CountingService, get, post
from webhook_helpers import real

from tiergate.webhooks.http import WebhookReceiver
from tiergate.webhooks.ingest import WebhookIngestor

pytestmark = [pytest.mark.slow, pytest.mark.engine_independent]

NOW_MS = 1_700_000_000_000
MAX_BODY = 1 << 20
READ_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 32
MUTATIONS_AT_ONCE = MAX_CONNECTIONS // 2
BODY = real("messages__message-text__pywa")
HANDSHAKE = "/webhook?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=7"

MALFORMED = {
    "not HTTP": b"GARBAGE\r\n\r\n",
    "TLS hello to plaintext": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,
    "HTTP/9.9": b"GET /webhook HTTP/9.9\r\nHost: x\r\n\r\n",
    "NUL in target": b"GET /web\x00hook HTTP/1.1\r\nHost: x\r\n\r\n",
    "space in header name": b"GET /webhook HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    "control char in value": b"GET /webhook HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n",
    "obsolete line folding": b"GET /webhook HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    "two Content-Lengths": b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "negative Content-Length": b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "Content-Length and chunked": b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
    "POST without a length": b"POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "signed, not JSON": (
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n"
        b"X-Hub-Signature-256: sha256=00\r\n\r\n{{{{"
    ),
    "bad signature": post(BODY).replace(b"sha256=", b"sha256=00", 1),
}


class Server:
    """One of the two HTTP layers in front of the same receiver logic."""

    name: str
    port: int
    service: CountingService

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


def receiver_for(service: CountingService) -> WebhookReceiver:
    return WebhookReceiver(
        service,
        SECRET,
        TOKEN,
        lambda: NOW_MS,
        ingestor=WebhookIngestor(service, max_body_bytes=MAX_BODY),
        max_body_bytes=MAX_BODY,
        read_timeout_s=READ_TIMEOUT_S,
        idle_timeout_s=READ_TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
    )


class HandWritten(Server):
    name = "hand-written"

    def __init__(self) -> None:
        self.service = CountingService()
        self.receiver = receiver_for(self.service)

    async def start(self) -> None:
        await self.receiver.start("127.0.0.1", 0)
        self.port = self.receiver.port

    async def stop(self) -> None:
        await self.receiver.stop()


class Aiohttp(Server):
    """aiohttp's server with its defaults but the body limit, calling the receiver's
    own route code (handshake, verify and apply)."""

    name = "aiohttp"

    def __init__(self) -> None:
        self.service = CountingService()
        self.receiver = receiver_for(self.service)
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/webhook", self._handle)
        self.runner = web.AppRunner(app, access_log=None)

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            status, ctype, payload = self.receiver._handshake(request.query_string)
        elif request.method == "POST":
            body = await request.read()
            signature = request.headers.get("X-Hub-Signature-256")
            status, ctype, payload = await self.receiver._post(body, signature)
        else:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        return web.Response(
            status=status.value, body=payload.encode(), headers={"Content-Type": ctype}
        )

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        await self.runner.cleanup()


# --- one client's view ---------------------------------------------------------


async def answer(port: int, raw: bytes, timeout: float = 3.0) -> int | str:
    """The status the server answers ``raw`` with; "closed" if it closes without
    one, "no answer" if it neither answers nor closes within ``timeout``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            line = await asyncio.wait_for(reader.readline(), timeout)
        except TimeoutError:
            return "no answer"
        except ConnectionError:
            return "closed"
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            return "closed" if not line else f"not HTTP: {line[:20]!r}"
        return int(parts[1])
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (reading what it says)."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            data = await asyncio.wait_for(reader.read(4096), deadline - time.monotonic())
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return False


# --- the hostile clients -------------------------------------------------------


@dataclass
class Outcome:
    slow_loris_closed: int = 0
    slow_loris_total: int = 0
    post_during_slow_loris: int | str = ""
    post_during_slow_loris_s: float = 0.0
    oversized_body: int | str = ""
    oversized_body_s: float = 0.0
    oversized_head: int | str = ""
    malformed: dict[str, int | str] = field(default_factory=dict)
    mutations: dict[str, int] = field(default_factory=dict)
    mutated_posts_applied_wrongly: int = 0  # events applied while they were answered
    served_after: int | str = ""
    error_logs: int = 0  # records at ERROR or above from the server's own loggers


async def slow_loris(server: Server, outcome: Outcome, n: int = 2 * MAX_CONNECTIONS) -> None:
    """``n`` connections trickle a request head, a byte every 0.2 s; meanwhile a signed
    POST is sent; then: how many did the server close within 3 read timeouts?"""
    head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
    connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(n)]
    stop = asyncio.Event()

    async def trickle(writer: asyncio.StreamWriter) -> None:
        for byte in head:
            if stop.is_set() or writer.is_closing():
                return
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    tricklers = [asyncio.ensure_future(trickle(w)) for _, w in connections]
    await asyncio.sleep(0.3)
    started = time.monotonic()
    outcome.post_during_slow_loris = await answer(server.port, post(BODY), timeout=5)
    outcome.post_during_slow_loris_s = time.monotonic() - started
    closed = await asyncio.gather(*(closed_within(r, 3 * READ_TIMEOUT_S) for r, _ in connections))
    stop.set()
    await asyncio.gather(*tricklers)
    for _, writer in connections:
        writer.close()
    outcome.slow_loris_total = n
    outcome.slow_loris_closed = sum(closed)


async def oversized(server: Server, outcome: Outcome) -> None:
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {2 * MAX_BODY}\r\n"
        f"X-Hub-Signature-256: sha256=00\r\n\r\n"
    ).encode()
    started = time.monotonic()
    outcome.oversized_body = await answer(server.port, head + b"{" * 65536)
    outcome.oversized_body_s = time.monotonic() - started
    huge = b"GET /webhook HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (20 * 1024) + b"\r\n\r\n"
    outcome.oversized_head = await answer(server.port, huge)


async def malformed(server: Server, outcome: Outcome) -> None:
    for name, raw in MALFORMED.items():
        outcome.malformed[name] = await answer(server.port, raw, timeout=2 * READ_TIMEOUT_S + 1)


def mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data))
        kind = rng.randrange(5)
        if kind == 0:
            data[i] = rng.randrange(256)
        elif kind == 1:
            data[i:i] = rng.choice([b"\r\n", b"\n", b"\x00", b" ", b":", b"\r\n\r\n"])
        elif kind == 2:
            del data[i : i + rng.randint(1, 8)]
        elif kind == 3:
            j = rng.randrange(len(data))
            data[i:i] = data[j : j + rng.randint(1, 40)]
        else:
            del data[i:]
    return bytes(data)


async def mutations(server: Server, outcome: Outcome, n: int = 32) -> None:
    """Seeded mutations of a signed POST and a handshake: the same ones for both servers.

    They are sent ``MUTATIONS_AT_ONCE`` at a time (well under the connection cap, which
    would otherwise close some): first every mutation that lost the signed body or its
    signature — no event may be applied while they are answered — then the intact ones,
    which may be."""
    rng = random.Random(20261207)
    signed = post(BODY)
    signature = signed.split(b"X-Hub-Signature-256: ")[1].split(b"\r\n")[0]
    raws = [mutate(signed if k % 2 == 0 else get(HANDSHAKE), rng) for k in range(n)]
    at_once = asyncio.Semaphore(MUTATIONS_AT_ONCE)

    async def send(raw: bytes) -> None:
        async with at_once:
            status = await answer(server.port, raw, timeout=READ_TIMEOUT_S + 0.5)
        key = f"{status // 100}xx" if isinstance(status, int) else status
        outcome.mutations[key] = outcome.mutations.get(key, 0) + 1

    intact = [raw for raw in raws if BODY in raw and signature in raw]
    before = len(server.service.events)
    await asyncio.gather(*(send(raw) for raw in raws if raw not in intact))
    outcome.mutated_posts_applied_wrongly = len(server.service.events) - before
    await asyncio.gather(*(send(raw) for raw in intact))


async def exercise(server: Server) -> Outcome:
    outcome = Outcome()
    await server.start()
    try:
        await slow_loris(server, outcome)
        await oversized(server, outcome)
        await malformed(server, outcome)
        await mutations(server, outcome)
        outcome.served_after = await answer(server.port, get(HANDSHAKE))
    finally:
        await server.stop()
    return outcome


def print_side_by_side(outcomes: dict[str, Outcome]) -> None:
    rows: list[tuple[str, ...]] = []
    hw, ah = outcomes["hand-written"], outcomes["aiohttp"]
    rows.append(
        (
            f"slow-loris closed by the server (of {hw.slow_loris_total}, {3 * READ_TIMEOUT_S:g} s)",
            str(hw.slow_loris_closed),
            str(ah.slow_loris_closed),
        )
    )
    rows.append(
        (
            "signed POST during slow-loris",
            f"{hw.post_during_slow_loris} in {hw.post_during_slow_loris_s:.2f} s",
            f"{ah.post_during_slow_loris} in {ah.post_during_slow_loris_s:.2f} s",
        )
    )
    rows.append(
        (
            "body of 2 MiB (limit 1 MiB), 64 KiB sent",
            f"{hw.oversized_body} in {hw.oversized_body_s:.2f} s",
            f"{ah.oversized_body} in {ah.oversized_body_s:.2f} s",
        )
    )
    rows.append(("head of 20 KiB", str(hw.oversized_head), str(ah.oversized_head)))
    for name in MALFORMED:
        rows.append((name, str(hw.malformed[name]), str(ah.malformed[name])))
    rows.append(
        (
            "mutated requests, by answer",
            ", ".join(f"{k} {v}" for k, v in sorted(hw.mutations.items())),
            ", ".join(f"{k} {v}" for k, v in sorted(ah.mutations.items())),
        )
    )
    rows.append(
        (
            "events applied from mutations without the signed body",
            str(hw.mutated_posts_applied_wrongly),
            str(ah.mutated_posts_applied_wrongly),
        )
    )
    rows.append(("a handshake afterwards", str(hw.served_after), str(ah.served_after)))
    rows.append(("error log records", str(hw.error_logs), str(ah.error_logs)))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  {'hand-written':<24}  aiohttp")
    for what, a, b in rows:
        print(f"{what:<{width}}  {a:<24}  {b}")


def test_the_hand_written_receiver_holds_up_next_to_aiohttp(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> dict[str, Outcome]:
        # One after the other on one loop: the two never compete for the CPU.
        return {server.name: await exercise(server) for server in (HandWritten(), Aiohttp())}

    with caplog.at_level(logging.WARNING):
        outcomes = asyncio.run(main())
    for name, logger in (("hand-written", "tiergate"), ("aiohttp", "aiohttp")):
        outcomes[name].error_logs = sum(
            r.levelno >= logging.ERROR and r.name.startswith(logger) for r in caplog.records
        )
    print_side_by_side(outcomes)
    hw = outcomes["hand-written"]

    assert hw.slow_loris_closed == hw.slow_loris_total
    assert hw.post_during_slow_loris == 200
    assert hw.oversized_body == 413 and hw.oversized_body_s < 1.0
    assert hw.oversized_head == 431
    for name, status in hw.malformed.items():
        assert status == "closed" or (isinstance(status, int) and status >= 400), name
    assert set(hw.mutations) <= {"2xx", "4xx", "5xx", "closed"}
    assert hw.mutated_posts_applied_wrongly == 0
    assert hw.served_after == 200
    assert hw.error_logs == 0
    assert outcomes["aiohttp"].served_after == 200  # the same application behind both
    assert outcomes["aiohttp"].post_during_slow_loris == 200
