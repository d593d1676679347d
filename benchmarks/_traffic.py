"""Realistic Admit traffic for the gRPC benchmarks: the mix a WhatsApp gateway sends.

Each client process owns its senders (so per-sender simulated time only moves
forward) and sends, per page of simulated time:

* 30 % in-window replies: FREE_FORM / SERVICE to users who wrote in (an
  ``InboundMessage`` opened their customer service window during set-up);
* 40 % templates (UTILITY, AUTHENTICATION) to the same recipients every page:
  counted on the first page, repeats to counted recipients after that;
* 20 % MARKETING templates to fresh recipients (a new unique-recipient slot
  each, under an unlimited tier);
* 10 % MARKETING templates from a sender whose TIER_250 limit was filled
  during set-up: RETRY_LATER / MESSAGING_LIMIT.

Every (sender, recipient) pair appears once per 16.384 s page of simulated
time, every sender stays under 80 messages/s of simulated time, so the
throughput and pair-rate rules pass and each item exercises the rule it is
meant to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from _grpcload import PAGE_MS, ClientPlan, Pool, encode_item, page_start

SENDERS_PER_CLIENT = 20  # a multiple of 10: the limited sender's items stay spread out
PAGE_ITEMS = 8_000  # a multiple of 1 000, so batches never straddle pages
DAY_MS = 86_400_000
WABA = "bench-waba"  # one WhatsApp Business Account holds the benchmark's templates

# item slot (i % 10) -> traffic class
_SLOTS = (
    "reply",
    "reply",
    "reply",
    "repeat-utility",
    "repeat-utility",
    "repeat-utility",
    "repeat-auth",
    "fresh",
    "fresh",
    "limited",
)
_CLASS_DIGIT = {"reply": 1, "repeat-utility": 2, "repeat-auth": 2, "fresh": 3, "limited": 4}
TEMPLATES = {"MARKETING": "bench_promo", "UTILITY": "bench_receipt", "AUTHENTICATION": "bench_otp"}


def sender_id(tag: str, client: int, k: int) -> str:
    return f"{tag}c{client}s{k:02d}"


def limited_sender_id(tag: str, client: int) -> str:
    return f"{tag}c{client}lim"


def recipient(client: int, cls: str, k: int, slot: int, page: int, j: int) -> str:
    # 13 digits: country code 55, client, class, sender, slot, page, index.
    return f"55{client % 100:02d}{_CLASS_DIGIT[cls]}{k:02d}{slot}{page % 1000:03d}{j:02d}"


def build_pool(pb2: Any, tag: str, client: int, pages: int) -> tuple[Pool, dict[str, Any]]:
    """The pre-serialized pages of one client, and what its set-up must create."""
    per_slot = PAGE_ITEMS // (10 * SENDERS_PER_CLIENT)
    req = pb2.AdmitRequest
    kind_t, kind_f = pb2.TEMPLATE, pb2.FREE_FORM
    cat = {name: pb2.Category.Value(name) for name in ("MARKETING", "UTILITY", "AUTHENTICATION")}
    service = pb2.SERVICE
    limited = limited_sender_id(tag, client)
    window_recipients: dict[str, list[str]] = {}
    unary_pages: list[list[bytes]] = []
    column_pages: list[list[tuple[bytes, list[bytes]]]] = []
    for page in range(pages):
        items: list[bytes] = []
        fields: list[Any] = []
        for i in range(PAGE_ITEMS):
            # Senders take turns item by item (each sends every 20th item);
            # the class rotates per sender, so even the limited sender's items
            # are spread out. (k, slot, j) is unique within a page.
            k = i % SENDERS_PER_CLIENT
            block = i // SENDERS_PER_CLIENT
            slot = (block + k) % 10
            j = block // 10
            cls = _SLOTS[slot]
            sender = sender_id(tag, client, k)
            if cls == "reply":
                rcpt = recipient(client, cls, k, slot, 0, j)
                if page == 0:
                    window_recipients.setdefault(sender, []).append(rcpt)
                msg = req(sender_id=sender, recipient=rcpt, kind=kind_f, category=service)
            elif cls.startswith("repeat"):
                category = "AUTHENTICATION" if cls == "repeat-auth" else "UTILITY"
                msg = req(
                    sender_id=sender,
                    recipient=recipient(client, cls, k, slot, 0, j),
                    kind=kind_t,
                    category=cat[category],
                    template_id=TEMPLATES[category],
                )
            else:
                msg = req(
                    sender_id=limited if cls == "limited" else sender,
                    recipient=recipient(client, cls, k, slot, page, j),
                    kind=kind_t,
                    category=cat["MARKETING"],
                    template_id=TEMPLATES["MARKETING"],
                )
            items.append(encode_item(msg.SerializeToString(), i * PAGE_MS // PAGE_ITEMS))
            fields.append(msg)
        unary_pages.append(items)
        column_pages.append(
            [
                columns_chunk(pb2, fields[c : c + COLUMNS_BATCH], items[c : c + COLUMNS_BATCH])
                for c in range(0, PAGE_ITEMS, COLUMNS_BATCH)
            ]
        )
    assert per_slot > 0
    setup = {
        "senders": [sender_id(tag, client, k) for k in range(SENDERS_PER_CLIENT)],
        "limited": limited,
        "portfolio": f"{tag}c{client}pf",
        "limited_portfolio": f"{tag}c{client}pflim",
        "waba": WABA,
        "windows": window_recipients,
    }
    return Pool(unary_pages, columns=column_pages, columns_batch=COLUMNS_BATCH), setup


COLUMNS_BATCH = 1_000  # items per AdmitColumns call (the columns1000 shape)


def columns_chunk(pb2: Any, msgs: list[Any], encoded: list[bytes]) -> tuple[bytes, list[bytes]]:
    """The AdmitColumnsRequest of ``msgs`` without at_unix_ms, and each item's low time
    bytes (the last two bytes of its pool item): the same requests as AdmitBatch sends."""
    senders: dict[str, int] = {}
    templates: dict[str, int] = {}
    body = pb2.AdmitColumnsRequest(
        sender_index=[senders.setdefault(m.sender_id, len(senders)) for m in msgs],
        recipients=[m.recipient for m in msgs],
        kinds=bytes(m.kind for m in msgs),
        categories=bytes(m.category for m in msgs),
        template_index=[
            templates.setdefault(m.template_id, len(templates) + 1) if m.template_id else 0
            for m in msgs
        ],
    )
    body.senders.extend(senders)
    body.templates.extend(templates)
    return body.SerializeToString(), [item[-2:] for item in encoded]


SETUP_LEAD_MS = 2 * 3_600_000


def start_time(after_ms: int = 0) -> int:
    """Simulated start of the measured traffic: two hours (simulated) after now.

    Set-up happens at simulated times between now (or ``after_ms``, where an
    earlier run's simulated clock ended) and then. Nothing is earlier than the
    server's clock at start, where it seeded the configured senders, nor than
    the latest request time it has seen: time never goes backwards for
    tiergate, so earlier times would be clamped.
    """
    base = max(int(time.time() * 1000), after_ms)
    return page_start(base + SETUP_LEAD_MS) + PAGE_MS


async def noop_workload(pb2: Any, stub: Any, plan: ClientPlan) -> tuple[Pool, int]:
    """The same request bytes, no server state: for the no-op ceiling server."""
    args = plan.workload_args
    pool, _ = build_pool(pb2, args.get("tag", "b"), plan.index, args.get("pages", 4))
    return pool, start_time()


async def _bounded(calls: list[Callable[[], Any]], limit: int = 64) -> list[Any]:
    """Run the RPCs ``calls`` start, at most ``limit`` in flight (a call starts when made)."""
    sem = asyncio.Semaphore(limit)

    async def one(c: Callable[[], Any]) -> Any:
        async with sem:
            return await c()

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def tiergate_workload(pb2: Any, stub: Any, plan: ClientPlan) -> tuple[Pool, int]:
    """Build the pool, then give tiergate the state the mix relies on (feedback RPCs)."""
    args = plan.workload_args
    pool, setup = build_pool(pb2, args.get("tag", "b"), plan.index, args.get("pages", 4))
    t0 = start_time(args.get("after_ms", 0))
    t_setup = t0 - SETUP_LEAD_MS
    fb = pb2.RecordFeedbackRequest
    calls = []
    for sender in setup["senders"]:
        upd = pb2.SenderUpdate(
            sender_id=sender,
            portfolio_id=setup["portfolio"],
            waba_id=setup["waba"],
            tier="TIER_UNLIMITED",
            quality=pb2.GREEN,
            status=pb2.CONNECTED,
            at_unix_ms=t_setup,
        )
        calls.append(partial(stub.RecordFeedback, fb(sender_update=upd), timeout=30))
    upd = pb2.SenderUpdate(
        sender_id=setup["limited"],
        portfolio_id=setup["limited_portfolio"],
        waba_id=setup["waba"],
        tier="TIER_250",
        quality=pb2.GREEN,
        status=pb2.CONNECTED,
        at_unix_ms=t_setup,
    )
    calls.append(partial(stub.RecordFeedback, fb(sender_update=upd), timeout=30))
    for name in TEMPLATES.values():
        tu = pb2.TemplateUpdate(
            template_id=name,
            template_name=name,
            status=pb2.TEMPLATE_STATUS_APPROVED,
            waba_id=setup["waba"],
            at_unix_ms=t_setup,
        )
        calls.append(partial(stub.RecordFeedback, fb(template_update=tu), timeout=30))
    await _bounded(calls)
    _check_applied(await _windows(pb2, stub, setup, t_setup + 60_000), "inbound_message")
    await _fill_limit(pb2, stub, setup, t_setup + 120_000)
    return pool, t0


async def _windows(pb2: Any, stub: Any, setup: dict[str, Any], at: int) -> list[Any]:
    calls = []
    for sender, recipients in setup["windows"].items():
        for i, rcpt in enumerate(recipients):
            msg = pb2.InboundMessage(
                sender_id=sender,
                recipient=rcpt,
                at_unix_ms=at + i,
                entry_point=pb2.ORGANIC,
                message_id=f"wamid.{sender}.{rcpt}",
            )
            req = pb2.RecordFeedbackRequest(inbound_message=msg)
            calls.append(partial(stub.RecordFeedback, req, timeout=30))
    return await _bounded(calls)


def _check_applied(replies: list[Any], what: str) -> None:
    refused = [r for r in replies if not r.applied]
    if refused:
        raise RuntimeError(f"tiergate did not apply {len(refused)} {what} events: {refused[0]}")


async def _fill_limit(pb2: Any, stub: Any, setup: dict[str, Any], at: int) -> None:
    """Use all 250 slots of the limited sender: counted templates in chunks of 50, 5 s apart.

    Chunks stay under the throughput burst (a batch may be decided at one instant).
    """
    admitted = 0
    for chunk in range(5):
        reqs = [
            pb2.AdmitRequest(
                sender_id=setup["limited"],
                recipient=f"5598{chunk * 50 + i:07d}",  # its own portfolio: no overlap
                kind=pb2.TEMPLATE,
                category=pb2.UTILITY,
                template_id=TEMPLATES["UTILITY"],
                at_unix_ms=at + chunk * 5_000 + 20 * i,
            )
            for i in range(50)
        ]
        reply = await stub.AdmitBatch(pb2.AdmitBatchRequest(requests=reqs), timeout=60)
        ok = [r for r in reply.responses if r.decision == pb2.DECISION_ADMIT and r.counted]
        admitted += len(ok)
        if len(ok) != len(reqs):
            first = next(r for r in reply.responses if r.decision != pb2.DECISION_ADMIT)
            raise RuntimeError(f"filling the TIER_250 sender admitted {admitted}/250: {first}")
