"""Tickets cannot be forged. Every RPC that hands out or takes a ticket, against a real
in-process server, also across restarts (journal replay, snapshot restore) and a
profile reload."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from server_harness import SENDER, T0, Harness, make_config, run_async, serving

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


async def usage(h: Harness, at: int = T0 + 50) -> tuple[int, dict[str, int]]:
    s = await h.client.sender_state(SENDER, at_unix_ms=at)
    counts = {pb.Reason.Name(c.reason): c.count for c in s.decision_counts if c.count}
    return s.used_24h, counts


async def fail(h: Harness, ticket: str, at: int = T0 + 40) -> pb.RecordFeedbackResponse:
    return await h.client.record_feedback(
        pb.SendResult(ticket=ticket, status=pb.FAILED, meta_error_code=131026, at_unix_ms=at)
    )


# --- across restarts --------------------------------------------------------------------


@pytest.mark.parametrize("through", ["journal", "snapshot"])
@run_async
async def test_a_ticket_stays_valid_across_a_restart(tmp_path: Path, through: str) -> None:
    config = make_config(data_dir=tmp_path / "data", durability="write")
    async with serving(config) as h:
        one = await h.stub.Admit(req())
        batch = await h.client.admit_batch([req(r, key="", at=T0 + 1) for r in fresh(3)])
        assert h.sidecar.store is not None
        if through == "journal":
            h.sidecar.store.snapshot_on_close = False
    async with serving(config) as h:
        assert h.sidecar.recovery is not None
        assert (h.sidecar.recovery.snapshot_path is None) == (through == "journal")
        assert (await h.stub.Admit(req(at=T0 + 10))).ticket == one.ticket
        for ticket in (one.ticket, batch[0].ticket):
            assert (await fail(h, ticket, T0 + 30)).applied
        assert (await usage(h, T0 + 40))[0] == 2


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
