"""Idempotency keys answer only the request they were first used for; tickets cannot
be forged. Every RPC that takes a key or a ticket, against a real in-process server,
also across restarts (journal replay, snapshot restore) and a profile reload."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import grpc
import pytest
from server_harness import SENDER, T0, Harness, make_config, run_async, sender, serving

from tiergate.v1 import admission_pb2 as pb

HOUR = 3_600_000
FIRST = "15550000001"


def req(
    recipient: str = FIRST,
    *,
    key: str = "order-1",
    at: int = T0,
    kind: pb.MessageKind.ValueType = pb.TEMPLATE,
    category: pb.Category.ValueType = pb.MARKETING,
    template_id: str = "spring_sale",
) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=recipient,
        kind=kind,
        category=category,
        template_id=template_id,
        idempotency_key=key,
        at_unix_ms=at,
    )


def fresh(n: int, start: int = 100) -> list[str]:
    return [f"1555{start + i:07d}" for i in range(n)]


#: The request ``req()`` with one part of what a key binds changed (and the word
#: the error uses for it).
OTHER_REQUESTS = [
    ("recipient", {"recipient": "15559999999"}),
    ("kind", {"kind": pb.FREE_FORM}),
    ("category", {"category": pb.UTILITY}),
    ("template", {"template_id": "autumn_sale"}),
]


def other(what: str, **fields: object) -> pb.AdmitRequest:
    change = dict(OTHER_REQUESTS)[what]
    return req(**{**change, **fields})  # type: ignore[arg-type]


async def invalid(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


async def usage(h: Harness, at: int = T0 + 50) -> tuple[int, dict[str, int]]:
    s = await h.client.sender_state(SENDER, at_unix_ms=at)
    counts = {pb.Reason.Name(c.reason): c.count for c in s.decision_counts if c.count}
    return s.used_24h, counts


async def fail(h: Harness, ticket: str, at: int = T0 + 40) -> pb.RecordFeedbackResponse:
    return await h.client.record_feedback(
        pb.SendResult(ticket=ticket, status=pb.FAILED, meta_error_code=131026, at_unix_ms=at)
    )


# --- a reused key on each RPC -----------------------------------------------------------


@pytest.mark.parametrize("what", [w for w, _ in OTHER_REQUESTS])
@run_async
async def test_admit_a_key_reused_for_another_request_is_invalid_and_changes_nothing(
    what: str,
) -> None:
    async with serving() as h:
        first = await h.stub.Admit(req())
        assert first.decision == pb.DECISION_ADMIT and first.ticket
        before = await usage(h)
        details = await invalid(h.stub.Admit(other(what, at=T0 + 5)))
        assert details.startswith("idempotency_key:"), details
        assert what in details
        assert await usage(h) == before
        again = await h.stub.Admit(req(at=T0 + 10))
        assert (again.decision, again.ticket) == (pb.DECISION_ADMIT, first.ticket)
        assert await usage(h) == before


@run_async
async def test_at_a_full_limit_a_reused_key_admits_no_new_recipient() -> None:
    async with serving(senders=(sender(tier="TIER_50"),)) as h:
        filled = await h.client.admit_batch(
            [req(r, key=f"k{i}", at=T0 + i) for i, r in enumerate(fresh(50))]
        )
        assert [a.used for a in filled] == list(range(1, 51))
        full = await h.stub.Admit(req("15558888888", key="", at=T0 + 60))
        assert full.reason == pb.MESSAGING_LIMIT
        for i, r in enumerate(fresh(30, start=500)):
            details = await invalid(h.stub.Admit(req(r, key="k0", at=T0 + 100 + i)))
            assert "idempotency_key" in details
        batch = [req(r, key="k1", at=T0 + 200) for r in fresh(3, start=600)]
        details = await invalid(h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=batch)))
        assert "requests[0].idempotency_key" in details
        details = await invalid(h.client.admit_columns(batch))
        assert "idempotency_keys[0]" in details
        assert (await usage(h, T0 + 300))[0] == 50


@run_async
async def test_admit_batch_checks_every_key_before_deciding_anything() -> None:
    async with serving() as h:
        first = await h.stub.Admit(req())
        before = await usage(h)
        batch = [req(r, key=f"new-{i}", at=T0 + 10) for i, r in enumerate(fresh(5))]
        batch[3] = other("recipient", at=T0 + 10)
        details = await invalid(h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=batch)))
        assert details.startswith("requests[3].idempotency_key:"), details
        assert await usage(h) == before
        # Two items of one batch under one key: the second must be the same request.
        batch = [req(r, key=f"new-{i}", at=T0 + 10) for i, r in enumerate(fresh(5))]
        batch[4] = req("15557777777", key="new-1", at=T0 + 10)
        details = await invalid(h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=batch)))
        assert details.startswith("requests[4].idempotency_key:"), details
        assert await usage(h) == before
        # The same request twice in a batch, and the remembered one: one ticket each.
        batch = [req(at=T0 + 20), req(fresh(1)[0], key="twice", at=T0 + 20)]
        batch.append(req(fresh(1)[0], key="twice", at=T0 + 21))
        answers = await h.client.admit_batch(batch)
        assert answers[0].ticket == first.ticket
        assert answers[1].ticket == answers[2].ticket != ""
        assert (await usage(h))[0] == 2


@run_async
async def test_admit_columns_checks_every_key_before_deciding_anything() -> None:
    async with serving() as h:
        first = await h.stub.Admit(req())
        before = await usage(h)
        items = [req(r, key=f"new-{i}", at=T0 + 10) for i, r in enumerate(fresh(5))]
        items[3] = other("template", at=T0 + 10)
        details = await invalid(h.client.admit_columns(items))
        assert details.startswith("idempotency_keys[3]:"), details
        assert "template" in details
        items = [req(r, key=f"new-{i}", at=T0 + 10) for i, r in enumerate(fresh(5))]
        items[2] = req(fresh(1)[0], key="new-0", at=T0 + 10, category=pb.UTILITY)
        details = await invalid(h.client.admit_columns(items))
        assert details.startswith("idempotency_keys[2]:"), details
        assert await usage(h) == before
        reply = await h.client.admit_columns([req(at=T0 + 30)])
        assert reply[0].ticket == first.ticket


@run_async
async def test_admit_stream_ends_at_a_reused_key_and_it_consumes_nothing() -> None:
    async with serving() as h:
        await h.stub.Admit(req())
        messages = [req(r, key=f"new-{i}", at=T0 + 10) for i, r in enumerate(fresh(2))]
        messages += [other("kind", at=T0 + 10), req(fresh(1, start=900)[0], key="", at=T0 + 10)]
        call = h.stub.AdmitStream(iter(messages))
        answers = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for a in call:
                answers.append(a)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = str(info.value.details())
        assert "stream message 2" in details and "idempotency_key" in details
        assert [a.decision for a in answers] == [pb.DECISION_ADMIT] * 2
        assert (await usage(h))[0] == 3  # the first, then the two before the bad message


@run_async
async def test_admit_stream_names_a_reused_key_before_a_later_bad_field() -> None:
    """Fields are checked before keys: a bad field after the key's repeat must not
    hide it. The stream ends at the earlier message, the repeat, named as such."""
    async with serving() as h:
        messages = [req(r, key="", at=T0 + 10) for r in fresh(2)]
        messages += [req(at=T0 + 10), other("template", at=T0 + 10)]
        messages.append(req(fresh(1, start=900)[0], key="", category=pb.CATEGORY_UNSPECIFIED))
        answers = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for a in h.stub.AdmitStream(iter(messages)):
                answers.append(a)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = str(info.value.details())
        assert details.startswith("stream message 3: idempotency_key:"), details
        assert [a.decision for a in answers] == [pb.DECISION_ADMIT] * 3
        assert (await usage(h))[0] == 3


@run_async
async def test_send_result_by_key_names_the_keys_recipient() -> None:
    async with serving() as h:
        await h.stub.Admit(req())
        wrong = pb.SendResult(
            sender_id=SENDER, recipient="15559999999", idempotency_key="order-1", status=pb.FAILED
        )
        details = await invalid(h.client.record_feedback(wrong))
        assert "idempotency_key" in details
        assert (await usage(h))[0] == 1
        right = pb.SendResult(
            sender_id=SENDER, recipient=FIRST, idempotency_key="order-1", status=pb.FAILED
        )
        assert (await h.client.record_feedback(right)).applied
        assert (await usage(h))[0] == 0


@run_async
async def test_a_banned_senders_key_repeat_is_rejected_until_reinstated() -> None:
    async with serving() as h:
        first = await h.stub.Admit(req())
        banned = pb.SenderUpdate(sender_id=SENDER, status=pb.BANNED, at_unix_ms=T0 + 1)
        assert (await h.client.record_feedback(banned)).applied
        for answer in (
            await h.stub.Admit(req(at=T0 + 2)),
            (await h.client.admit_batch([req(at=T0 + 3), req(fresh(1)[0], key="", at=T0 + 3)]))[0],
            (await h.client.admit_columns([req(at=T0 + 4)]))[0],
        ):
            assert (answer.decision, answer.reason) == (pb.DECISION_REJECT, pb.SENDER_BLOCKED)
            assert answer.ticket == ""
        back = pb.SenderUpdate(sender_id=SENDER, status=pb.CONNECTED, at_unix_ms=T0 + 5)
        assert (await h.client.record_feedback(back)).applied
        again = await h.stub.Admit(req(at=T0 + 6))
        assert (again.decision, again.ticket) == (pb.DECISION_ADMIT, first.ticket)
        assert (await usage(h))[0] == 1


# --- across restarts --------------------------------------------------------------------


@pytest.mark.parametrize("through", ["journal", "snapshot"])
@run_async
async def test_a_key_stays_bound_and_a_ticket_valid_across_a_restart(
    tmp_path: Path, through: str
) -> None:
    config = make_config(data_dir=tmp_path / "data", durability="write")
    async with serving(config) as h:
        one = await h.stub.Admit(req())
        batch = await h.client.admit_batch(
            [
                req(r, key=f"b{i}", at=T0 + 1, category=pb.UTILITY, template_id="receipt")
                for i, r in enumerate(fresh(3))
            ]
        )
        cols = await h.client.admit_columns(
            [req(r, key=f"c{i}", at=T0 + 2) for i, r in enumerate(fresh(3, start=300))]
        )
        assert h.sidecar.store is not None
        if through == "journal":
            h.sidecar.store.snapshot_on_close = False
    async with serving(config) as h:
        assert h.sidecar.recovery is not None
        if through == "journal":
            assert h.sidecar.recovery.snapshot_path is None
        else:
            assert h.sidecar.recovery.snapshot_path is not None
        assert (await h.stub.Admit(req(at=T0 + 10))).ticket == one.ticket
        b1 = req(fresh(3)[1], key="b1", at=T0 + 10, category=pb.UTILITY, template_id="receipt")
        assert (await h.stub.Admit(b1)).ticket == batch[1].ticket
        c2 = req(fresh(3, start=300)[2], key="c2", at=T0 + 10)
        assert (await h.client.admit_columns([c2]))[0].ticket == cols[2].ticket
        for what in ("recipient", "kind", "category", "template"):
            details = await invalid(h.stub.Admit(other(what, at=T0 + 11)))
            assert "idempotency_key" in details and what in details
        b1.category = pb.MARKETING
        assert "category" in await invalid(h.stub.Admit(b1))
        c2.template_id = "receipt"
        assert "template" in await invalid(h.client.admit_columns([c2]))
        assert (await usage(h, T0 + 20))[0] == 7
        for ticket in (one.ticket, batch[0].ticket, cols[0].ticket):
            assert (await fail(h, ticket, T0 + 30)).applied
        assert (await usage(h, T0 + 40))[0] == 4


@run_async
async def test_the_ticket_key_is_kept_private_in_the_data_dir(tmp_path: Path) -> None:
    config = make_config(data_dir=tmp_path / "data")
    async with serving(config):
        pass
    path = tmp_path / "data" / "ticket.key"
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    key = path.read_bytes()
    async with serving(config):
        pass
    assert path.read_bytes() == key  # made once, then only read


# --- forged tickets ---------------------------------------------------------------------


def _altered(part: str) -> str:
    return format(int(part, 16) ^ 2, "x") if part else "2"


@run_async
async def test_a_forged_ticket_releases_nothing_and_a_genuine_one_does() -> None:
    async with serving() as h:
        first = await h.stub.Admit(req(key=""))
        await h.stub.Admit(req(fresh(1)[0], key=""))
        parts = first.ticket.split(".")
        forged = []
        for i in range(len(parts)):
            changed = list(parts)
            changed[i] = _altered(parts[i])
            forged.append(".".join(changed))
        forged += [".".join(parts[:-1]), first.ticket + ".0", first.ticket.upper()]
        for ticket in forged:
            out = await fail(h, ticket)
            assert not out.applied, ticket
            assert "ticket" in out.detail and ("unknown" in out.detail or "invalid" in out.detail)
            linked = await h.client.record_feedback(
                pb.SendResult(ticket=ticket, status=pb.SENT, message_id="wamid.forged")
            )
            assert not linked.applied, ticket
        assert (await usage(h))[0] == 2
        assert (await fail(h, first.ticket)).applied
        assert (await usage(h))[0] == 1


@pytest.mark.parametrize("rpc", ["batch", "columns", "stream"])
@run_async
async def test_batch_tickets_are_forgery_proof_too(rpc: str) -> None:
    async with serving() as h:
        items = [req(r, key="", at=T0 + 1) for r in fresh(4)]
        if rpc == "batch":
            tickets = [a.ticket for a in await h.client.admit_batch(items)]
        elif rpc == "columns":
            tickets = [a.ticket for a in await h.client.admit_columns(items)]
        else:
            tickets = [a.ticket async for a in h.client.admit_stream(iter(items))]
        for ticket in tickets:
            parts = ticket.split(".")
            parts[0] = _altered(parts[0])
            assert not (await fail(h, ".".join(parts))).applied
        assert (await usage(h))[0] == 4
        for ticket in tickets:
            assert (await fail(h, ticket)).applied
        assert (await usage(h))[0] == 0


@run_async
async def test_a_ticket_stays_valid_across_a_profile_reload(tmp_path: Path) -> None:
    config = make_config(data_dir=tmp_path / "data")
    async with serving(config) as h:
        first = await h.stub.Admit(req())
        profile = tmp_path / "cautious.toml"
        profile.write_text(
            'extends = "meta-2025"\nname = "cautious"\n[protection]\nheadroom_pct = 80\n'
        )
        await h.sidecar.reload(make_config(data_dir=tmp_path / "data", profile=str(profile)))
        assert (await h.stub.Admit(req(at=T0 + 10))).ticket == first.ticket
        assert (await fail(h, first.ticket)).applied
        assert (await usage(h))[0] == 0


@run_async
async def test_tickets_without_a_data_dir_verify_within_the_process() -> None:
    async with serving(data_dir=None) as h:
        first = await h.stub.Admit(req())
        assert (await fail(h, first.ticket)).applied
