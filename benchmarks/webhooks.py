"""The webhook receiver under abuse: idle connections, and a large body's hold on the loop.

A ``WebhookReceiver`` on 127.0.0.1 applies to a real ``AdmissionService``
(memory only, the sender of the bodies known):

- ``flood``: N idle keep-alive connections (opened, nothing sent), then M
  signed POSTs, each on a new connection: how many are answered 200, and how
  many idle connections the receiver closed to make room (``--max-connections``);
- ``hold``: one signed body of about 1 MiB with ~10 000 inbound messages, posted
  while a coroutine ticks every millisecond; the figure is the longest tick
  (how long the event loop was held up), with the body parsed off the loop and
  applied in slices (the receiver's way) and, for comparison, verified, parsed
  and applied at once on the loop.

    .venv/bin/python benchmarks/webhooks.py
    .venv/bin/python benchmarks/webhooks.py --idle 1100 --posts 50

Prints a table and writes ``benchmarks/results/webhooks.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _common
import uvloop

from tiergate.policy.events import Quality, SenderStatus, SenderUpdate
from tiergate.policy.profile import load_profile
from tiergate.policy.service import AdmissionService
from tiergate.webhooks.http import DEFAULT_MAX_CONNECTIONS, WebhookReceiver
from tiergate.webhooks.ingest import DEFAULT_SLICE_EVENTS, IngestResult, WebhookIngestor
from tiergate.webhooks.signature import sign

SECRET = "bench-secret"
SENDER = "1122334455667"
NOW_MS = 1_767_225_600_000


def body_of(n: int, first: int = 0) -> bytes:
    messages = [
        {
            "from": f"1555{(first + i) % 10_000_000:07d}",
            "id": f"w{first + i}",
            "timestamp": str(NOW_MS // 1000 - 60),
            "text": {"body": "hi"},
            "type": "text",
        }
        for i in range(n)
    ]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550100001", "phone_number_id": SENDER},
        "messages": messages,
    }
    doc = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"value": value, "field": "messages"}]}],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def post(body: bytes) -> bytes:
    return (
        f"POST /webhook HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
        f"X-Hub-Signature-256: {sign(body, SECRET)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def exchange(port: int, raw: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        await reader.read()
        return int(head.split(b" ")[1])
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        return 0
    finally:
        writer.close()


def service() -> AdmissionService:
    svc = AdmissionService(load_profile("meta-2025"), clock="request")
    svc.apply(
        SenderUpdate(
            sender_id=SENDER,
            portfolio_id="bench",
            tier="TIER_UNLIMITED",
            quality=Quality.GREEN,
            status=SenderStatus.CONNECTED,
        ),
        NOW_MS,
    )
    return svc


async def started(max_connections: int, slice_events: int) -> WebhookReceiver:
    svc = service()
    receiver = WebhookReceiver(
        svc,
        SECRET,
        "",
        lambda: NOW_MS,
        ingestor=WebhookIngestor(svc),
        max_connections=max_connections,
        slice_events=slice_events,
    )
    await receiver.start("127.0.0.1", 0)
    return receiver


async def flood(idle: int, posts: int, max_connections: int) -> dict[str, Any]:
    receiver = await started(max_connections, DEFAULT_SLICE_EVENTS)
    held = []
    try:
        for _ in range(idle):
            held.append((await asyncio.open_connection("127.0.0.1", receiver.port))[1])
        await asyncio.sleep(0.2)
        statuses = [await exchange(receiver.port, post(body_of(1, k))) for k in range(posts)]
        return {
            "idle": idle,
            "posts": posts,
            "max_connections": max_connections,
            "posts_ok": statuses.count(200),
            "evicted": receiver.evicted,
            "refused": receiver.refused,
        }
    finally:
        for writer in held:
            writer.close()
        await receiver.stop()


async def hold(events: int, slice_events: int) -> dict[str, Any]:
    """``slice_events`` 0: the body verified, parsed and applied at once on the loop."""
    receiver = await started(DEFAULT_MAX_CONNECTIONS, max(slice_events, 1))
    if slice_events == 0:
        ingestor = receiver.ingestor

        async def at_once(
            body: bytes, signature: Any, secret: Any, now_ms: int, **_: Any
        ) -> IngestResult:
            return ingestor.ingest(body, signature, secret, now_ms)

        ingestor.ingest_sliced = at_once  # type: ignore[method-assign]
    body = body_of(events)
    done = asyncio.Event()
    longest = 0.0

    async def tick() -> None:
        nonlocal longest
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            longest = max(longest, time.perf_counter() - t)

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.05)
    longest = 0.0
    t = time.perf_counter()
    status = await exchange(receiver.port, post(body))
    took = time.perf_counter() - t
    done.set()
    await ticker
    await receiver.stop()
    return {
        "events": events,
        "body_bytes": len(body),
        "slice_events": slice_events,
        "status": status,
        "post_ms": took * 1000,
        "longest_tick_ms": longest * 1000,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "flood": await flood(args.idle, args.posts, args.max_connections),
        "hold_sliced": await hold(args.events, DEFAULT_SLICE_EVENTS),
        "hold_at_once": await hold(args.events, 0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, default=1100, help="idle connections (default 1100)")
    ap.add_argument("--posts", type=int, default=50, help="signed posts after them (default 50)")
    ap.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    ap.add_argument("--events", type=int, default=10_090, help="events in the large body")
    ap.add_argument("--tiny", action="store_true", help="smallest run: proves it works")
    ap.add_argument("--results-dir", type=Path, default=None, help="where webhooks.json goes")
    args = ap.parse_args(argv)
    if args.tiny:
        args.idle, args.posts, args.events = 50, 5, 1000
    _common.print_machine()
    figures = uvloop.run(measure(args))
    f, s, a = figures["flood"], figures["hold_sliced"], figures["hold_at_once"]
    _common.print_table(
        "webhook receiver",
        ["what", "value"],
        [
            [f"signed posts answered 200 after {f['idle']} idle connections", f["posts_ok"]],
            ["idle connections closed to make room", f["evicted"]],
            [f"body of {s['events']} events ({s['body_bytes']:,} B): status", s["status"]],
            ["its POST, ms", s["post_ms"]],
            [f"longest loop tick ms, slices of {s['slice_events']}", s["longest_tick_ms"]],
            ["longest loop tick ms, applied at once", a["longest_tick_ms"]],
        ],
    )
    path = _common.write_results(
        "webhooks", {"mode": "tiny" if args.tiny else "full", **figures}, args.results_dir
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
