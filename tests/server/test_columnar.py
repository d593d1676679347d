"""AdmitColumns against a real in-process server: the answers AdmitBatch gives."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest
from server_harness import (
    OTHER_SENDER,
    SENDER,
    T0,
    Harness,
    run_async,
    sender,
    serving,
    share_ticket_key,
)

from tiergate.client import AdmitItem, ColumnsReply, columns_request
from tiergate.policy.events import SenderStatus, TemplateStatus, TemplateUpdate
from tiergate.v1 import admission_pb2 as pb

HOUR = 3_600_000
TEMPLATES = ("spring_sale", "receipt", "paused_one", "gone", "never_heard_of")
BANNED = "100000000000009"


def _config_overrides(tmp_path: Path, name: str) -> dict[str, object]:
    return {
        "senders": (
            sender(tier="TIER_50"),
            sender(
                OTHER_SENDER,
                portfolio_id="pf-2",
                tier="TIER_1K",
                display_phone_number="+15550100002",
            ),
            sender(
                BANNED,
                portfolio_id="pf-3",
                status=SenderStatus.BANNED,
                display_phone_number="+15550100009",
            ),
        ),
        "templates": (
            TemplateUpdate("spring_sale", TemplateStatus.APPROVED, template_name="spring_sale"),
            TemplateUpdate("receipt", TemplateStatus.APPROVED, template_name="receipt"),
            TemplateUpdate("paused_one", TemplateStatus.PAUSED, paused_until_unix_ms=T0 + 2 * HOUR),
            TemplateUpdate("gone", TemplateStatus.DISABLED),
        ),
        "data_dir": tmp_path / name,
    }


def _random_items(rng: random.Random, t: int, n: int, keys: bool) -> list[pb.AdmitRequest]:
    items = []
    for _ in range(n):
        free = rng.random() < 0.2
        t += rng.choice([0, 3, 250, 1_000])
        q = pb.AdmitRequest(
            sender_id=rng.choice([SENDER, SENDER, OTHER_SENDER, BANNED, "404"]),
            recipient=f"1555{rng.randrange(80):07d}",
            kind=pb.FREE_FORM if free else pb.TEMPLATE,
            category=pb.SERVICE if free else rng.choice([pb.MARKETING, pb.UTILITY]),
            template_id="" if free else rng.choice(TEMPLATES),
            at_unix_ms=t,
        )
        if keys and rng.random() < 0.5:  # a key for this request (repeats are retries)
            q.idempotency_key = f"k/{q.recipient}/{q.kind}/{q.category}/{q.template_id}"
        items.append(q)
    return items


def _fields(a: object) -> tuple[object, ...]:
    return tuple(
        getattr(a, f)
        for f in (
            "decision",
            "reason",
            "retry_at_unix_ms",
            "ticket",
            "counted",
            "limit",
            "used",
            "meta_error_code",
        )
    )


@run_async
async def test_columns_answer_as_batch_on_two_fresh_servers(tmp_path: Path) -> None:
    rng = random.Random(7)
    async with (
        serving(**_config_overrides(tmp_path, "a")) as a,
        serving(**_config_overrides(tmp_path, "b")) as b,
    ):
        share_ticket_key(a, b)
        t = T0
        admitted = []
        for rnd in range(12):
            items = _random_items(rng, t, rng.choice([1, 30, 200]), keys=rnd % 3 == 2)
            t = items[-1].at_unix_ms + rng.choice([1_000, HOUR])
            dry = rnd % 5 == 4
            if dry:
                for q in items:
                    q.dry_run = True
            expected = await a.client.admit_batch(items)
            got = await b.client.admit_columns(items, dry_run=dry)
            assert len(got) == len(expected)
            for i, (e, g) in enumerate(zip(expected, got, strict=True)):
                assert _fields(e) == _fields(g), (rnd, i, items[i])
            admitted += [g.ticket for g in got if g.ticket]
        assert admitted
        # A columnar ticket releases through RecordFeedback exactly as a batch ticket does.
        for ticket in admitted[-3:]:
            fail = pb.SendResult(ticket=ticket, status=pb.FAILED, at_unix_ms=t)
            ra, rb = await a.client.record_feedback(fail), await b.client.record_feedback(fail)
            assert (ra.applied, ra.detail) == (rb.applied, rb.detail)
        for sid in (SENDER, OTHER_SENDER):
            sa = await a.client.sender_state(sid, at_unix_ms=t)
            sb = await b.client.sender_state(sid, at_unix_ms=t)
            assert sa == sb


async def _invalid(h: Harness, request: pb.AdmitColumnsRequest) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.client.admit_columns(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


def _good(n: int = 3) -> pb.AdmitColumnsRequest:
    return columns_request(
        [
            AdmitItem(SENDER, f"1555000{i:04d}", pb.TEMPLATE, pb.UTILITY, "receipt", "", T0 + i)
            for i in range(n)
        ]
    )


@pytest.mark.parametrize(
    ("column", "value", "field"),
    [
        ("recipients", ["15550000000", "15550000001", "nope"], "recipients[2]"),
        ("sender_index", [0, 0, 5], "sender_index[2]"),
        ("kinds", b"\x01\x01", "kinds"),
        ("categories", b"\x02\x07\x02", "categories[1]"),
        ("template_index", [1, 9, 1], "template_index[1]"),
        ("at_unix_ms", [T0, T0, 1 << 62], "at_unix_ms[2]"),
        ("idempotency_keys", ["a"], "idempotency_keys"),
    ],
)
@run_async
async def test_bad_column_is_invalid_argument_naming_column_and_item(
    column: str, value: object, field: str
) -> None:
    async with serving() as h:
        request = _good()
        request.ClearField(column)  # type: ignore[arg-type]
        if isinstance(value, bytes):
            setattr(request, column, value)
        else:
            getattr(request, column).extend(value)
        details = await _invalid(h, request)
        assert details.startswith(field + ":"), details
        st = await h.client.sender_state(SENDER, at_unix_ms=T0)
        assert st.used_24h == 0


@run_async
async def test_max_batch_and_empty_request() -> None:
    async with serving(max_batch=2) as h:
        details = await _invalid(h, _good(3))
        assert details.startswith("recipients:") and "2" in details
        reply = await h.client.admit_columns(_good(2))
        assert [r.decision for r in reply] == [pb.DECISION_ADMIT] * 2
        assert len(await h.client.admit_columns([])) == 0


@run_async
async def test_idempotency_key_and_dry_run_over_the_wire() -> None:
    async with serving() as h:
        item = AdmitItem(SENDER, "15550001111", pb.TEMPLATE, pb.UTILITY, "receipt", "o-1", T0)
        first = await h.client.admit_columns([item])
        again = await h.client.admit_columns([item])
        assert first[0] == again[0] and first[0].ticket
        assert first[-1] == first[0] and list(first) == [first[0]]
        dry = await h.client.admit_columns(
            [AdmitItem(SENDER, "15550002222", pb.TEMPLATE, pb.UTILITY, "receipt", "", T0 + 1)],
            dry_run=True,
        )
        assert dry[0].decision == pb.DECISION_ADMIT and dry[0].ticket == ""
        assert (await h.client.sender_state(SENDER, at_unix_ms=T0 + 2)).used_24h == 1
        assert isinstance(dry, ColumnsReply) and dry.response.decisions == b"\x01"
