"""Shadow mode through the gRPC contract: the same traffic with and without shadow.

Under ``serve --shadow`` (or a profile's ``[shadow] reasons``) a request a
shadowed rule refuses is answered ADMIT, with what tiergate would have answered
in ``shadow_decision`` / ``shadow_reason`` / ``shadow_retry_at_unix_ms``, and is
counted like any admit (state follows what the gateway sends). Every admit path
gives the same answers, and journal replay rebuilds the same state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_harness import SENDER, T0, Harness, run_async, serving, template_request

from tiergate.client import columns_request
from tiergate.v1 import admission_pb2 as pb

LIMIT = 250  # the test sender's TIER_250
SENT = LIMIT + 10
Answer = tuple[int, int, int, int, int, int, int]


def traffic(n: int = SENT) -> list[pb.AdmitRequest]:
    """``n`` template sends to distinct recipients, 20 ms apart (no throughput refusal)."""
    return [template_request(f"1555{i:07d}", T0 + 20 * i) for i in range(n)]


def answer(r: Any) -> Answer:
    return (
        r.decision,
        r.reason,
        r.retry_at_unix_ms,
        r.used,
        r.shadow_decision,
        r.shadow_reason,
        r.shadow_retry_at_unix_ms,
    )


async def by_admit(h: Harness, reqs: list[pb.AdmitRequest]) -> list[Answer]:
    return [answer(await h.stub.Admit(r)) for r in reqs]


async def by_batch(h: Harness, reqs: list[pb.AdmitRequest]) -> list[Answer]:
    reply = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
    return [answer(r) for r in reply.responses]


async def by_stream(h: Harness, reqs: list[pb.AdmitRequest]) -> list[Answer]:
    async def gen() -> AsyncIterator[pb.AdmitRequest]:
        for r in reqs:
            yield r

    return [answer(r) async for r in h.stub.AdmitStream(gen())]


async def by_columns(h: Harness, reqs: list[pb.AdmitRequest]) -> list[Answer]:
    c = await h.stub.AdmitColumns(columns_request(reqs))
    n = len(c.decisions)
    shadowed = len(c.shadow_decisions) == n
    return [
        (
            c.decisions[i],
            c.reasons[i],
            c.retry_at_unix_ms[i],
            c.used[i],
            c.shadow_decisions[i] if shadowed else 0,
            c.shadow_reasons[i] if shadowed else 0,
            c.shadow_retry_at_unix_ms[i] if shadowed else 0,
        )
        for i in range(n)
    ]


PATHS = {"Admit": by_admit, "AdmitBatch": by_batch, "AdmitStream": by_stream}
PATHS["AdmitColumns"] = by_columns


async def state(h: Harness) -> pb.SenderState:
    return await h.stub.GetSenderState(
        pb.GetSenderStateRequest(sender_id=SENDER, at_unix_ms=T0 + 20 * SENT)
    )


@pytest.mark.parametrize("path", sorted(PATHS))
@run_async
async def test_shadow_admits_what_the_limit_refuses_and_counts_it(path: str) -> None:
    send = PATHS[path]
    async with serving() as plain, serving(shadow=True) as shadow:
        real = await send(plain, traffic())
        shown = await send(shadow, traffic())
        plain_state, shadow_state = await state(plain), await state(shadow)
        plain_metrics = plain.sidecar.metrics.decisions
        shadow_metrics = shadow.sidecar.metrics.decisions
        shadow_counts = shadow.sidecar.metrics.shadow_decisions
    refused = [i for i, a in enumerate(real) if a[0] != pb.DECISION_ADMIT]
    assert refused == list(range(LIMIT, SENT))
    for i, (r, s) in enumerate(zip(real, shown, strict=True)):
        assert s[0:2] == (pb.DECISION_ADMIT, pb.OK)
        # the shadowed sends count: used goes past the limit
        assert s[3] == i + 1
        if i < LIMIT:
            assert r == s  # the answer stands: no shadow fields
            assert s[4:] == (0, 0, 0)
        else:
            assert r[0:2] == (pb.DECISION_RETRY_LATER, pb.MESSAGING_LIMIT)
            assert r[2] > T0
            assert s[4:] == (pb.DECISION_RETRY_LATER, pb.MESSAGING_LIMIT, r[2])
    assert plain_state.used_24h == LIMIT
    assert shadow_state.used_24h == SENT
    assert plain_metrics == {
        (pb.DECISION_ADMIT, pb.OK): LIMIT,
        (pb.DECISION_RETRY_LATER, pb.MESSAGING_LIMIT): SENT - LIMIT,
    }
    assert shadow_metrics == {(pb.DECISION_ADMIT, pb.OK): SENT}
    assert shadow_counts == {(pb.DECISION_RETRY_LATER, pb.MESSAGING_LIMIT): SENT - LIMIT}
    assert plain.sidecar.metrics.shadow_decisions == {}


@run_async
async def test_metrics_endpoint_names_the_shadow_counts() -> None:
    async with serving(shadow=True) as h:
        await by_batch(h, traffic())
        text = h.sidecar.metrics.render()
    assert (
        'tiergate_shadow_decisions_total{decision="RETRY_LATER",reason="MESSAGING_LIMIT"} 10'
        in text
    )
    assert 'tiergate_decisions_total{decision="ADMIT",reason="OK"} 260' in text


@run_async
async def test_state_after_shadow_is_the_state_after_the_same_sends_admitted() -> None:
    # A server whose limit the traffic never reaches admits all of it: the shadow
    # server's state afterwards is that one's (only the would-be refusals differ).
    async with serving(shadow=True) as shadow:
        await by_admit(shadow, traffic())
        after_shadow = await state(shadow)
        assert shadow.sidecar.service is not None
        engine_shadow = shadow.sidecar.service.state.engine.snapshot()
    async with serving(senders=(_sender(tier="TIER_1K"),)) as wide:
        answers = await by_admit(wide, traffic())
        after_wide = await state(wide)
        assert wide.sidecar.service is not None
        engine_wide = wide.sidecar.service.state.engine.snapshot()
    assert all(a[0] == pb.DECISION_ADMIT and a[4] == 0 for a in answers)
    for f in ("used_24h", "unique_7d", "open_windows"):
        assert getattr(after_shadow, f) == getattr(after_wide, f), f
    # every recipient, bucket and rate the engine holds is the same
    assert engine_shadow == engine_wide


def _sender(**overrides: Any) -> Any:
    from server_harness import sender

    return sender(**overrides)


@run_async
async def test_free_form_outside_a_window_and_throughput_are_shadowed_too() -> None:
    free = pb.AdmitRequest(
        sender_id=SENDER, recipient="15550009999", kind=pb.FREE_FORM, at_unix_ms=T0
    )
    async with serving(shadow=True) as h:
        r = await h.stub.Admit(free)
        # two sends in the same millisecond beyond the burst: throughput refuses
        burst = [template_request(f"1666{i:07d}", T0 + 1) for i in range(200)]
        answers = await by_batch(h, burst)
    assert (r.decision, r.shadow_decision, r.shadow_reason) == (
        pb.DECISION_ADMIT,
        pb.DECISION_REJECT,
        pb.OUTSIDE_WINDOW,
    )
    assert r.ticket  # consumed like an admit
    shadowed = {a[5] for a in answers if a[4]}
    assert all(a[0] == pb.DECISION_ADMIT for a in answers)
    assert pb.THROUGHPUT in shadowed


@run_async
async def test_unknown_senders_and_bad_input_are_never_shadowed() -> None:
    async with serving(shadow=True) as h:
        r = await h.stub.Admit(
            pb.AdmitRequest(
                sender_id="nobody",
                recipient="15550001",
                kind=pb.TEMPLATE,
                category=pb.UTILITY,
                template_id="t1",
            )
        )
        assert (r.decision, r.reason, r.shadow_decision) == (
            pb.DECISION_REJECT,
            pb.UNKNOWN_SENDER,
            0,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.Admit(template_request("not-a-number"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "recipient" in (err.value.details() or "")


@run_async
async def test_a_profile_shadows_only_its_reasons(tmp_path: Path) -> None:
    profile = tmp_path / "watchful.toml"
    profile.write_text(
        'extends = "meta-2025"\nname = "watchful"\n[shadow]\nreasons = ["MESSAGING_LIMIT"]\n'
    )
    free = pb.AdmitRequest(
        sender_id=SENDER, recipient="15550009999", kind=pb.FREE_FORM, at_unix_ms=T0
    )
    async with serving(profile=str(profile)) as h:
        answers = await by_admit(h, traffic())
        r = await h.stub.Admit(free)
    assert all(a[0] == pb.DECISION_ADMIT for a in answers)
    assert [a[5] for a in answers[LIMIT:]] == [pb.MESSAGING_LIMIT] * (SENT - LIMIT)
    # OUTSIDE_WINDOW is not shadowed by this profile: the refusal stands
    assert (r.decision, r.reason, r.shadow_decision) == (
        pb.DECISION_REJECT,
        pb.OUTSIDE_WINDOW,
        0,
    )


def test_a_profile_names_only_shadowable_reasons(tmp_path: Path) -> None:
    from tiergate.policy.profile import load_profile

    profile = tmp_path / "typo.toml"
    profile.write_text('extends = "meta-2025"\n[shadow]\nreasons = ["UNKNOWN_SENDER"]\n')
    with pytest.raises(Exception, match=r"shadow\.reasons\[0\]"):
        load_profile(str(profile))


@run_async
async def test_journal_replay_rebuilds_the_shadow_admits(tmp_path: Path) -> None:
    async with serving(shadow=True, data_dir=tmp_path) as h:
        await by_admit(h, traffic()[: SENT // 2])
        await by_batch(h, traffic()[SENT // 2 :])
        before = await state(h)
    async with serving(shadow=True, data_dir=tmp_path) as h:
        after = await state(h)
    assert before.used_24h == after.used_24h == SENT
    assert before.unique_7d == after.unique_7d


@run_async
async def test_dry_runs_show_the_shadow_answer_and_consume_nothing() -> None:
    async with serving(shadow=True) as h:
        await by_batch(h, traffic(LIMIT))
        probe = template_request("15559999999", T0 + 20 * LIMIT)
        probe.dry_run = True
        r = await h.stub.Admit(probe)
        used = (await state(h)).used_24h
    assert (r.decision, r.ticket, r.shadow_reason) == (pb.DECISION_ADMIT, "", pb.MESSAGING_LIMIT)
    assert used == LIMIT
