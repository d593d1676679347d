"""PlanCampaign through gRPC on a request clock: each plan is replayed with AdmitBatch
at its times, and every recipient is admitted exactly then and refused a
millisecond earlier (where it waited); the plan consumes nothing (the
service's snapshot is the same bytes before and after)."""

from __future__ import annotations

import asyncio
import random
from itertools import groupby
from pathlib import Path

import grpc
import pytest
from server_harness import (
    SENDER,
    T0,
    Harness,
    make_config,
    run_async,
    sender,
    serving,
    template_request,
)

from tiergate.policy.events import Quality
from tiergate.policy.planning import CampaignPlan
from tiergate.policy.requests import InvalidArgument
from tiergate.server.plans import HeldPlans
from tiergate.v1 import admission_pb2 as pb

HOUR = 3_600_000
DAY = 24 * HOUR


def numbers(n: int, first: int = 0) -> list[str]:
    return [f"4477009{i:05d}" for i in range(first, first + n)]


def snapshot(h: Harness) -> bytes:
    assert h.sidecar.service is not None
    return h.sidecar.service.snapshot()


async def plan(
    h: Harness,
    recipients: list[str],
    *,
    category: pb.Category.ValueType = pb.UTILITY,
    template: str = "t1",
    start: int = T0,
    **kw: object,
) -> pb.PlanCampaignResponse:
    """A plan, checked to consume nothing."""
    before = snapshot(h)
    res: pb.PlanCampaignResponse = await h.stub.PlanCampaign(
        pb.PlanCampaignRequest(
            sender_id=SENDER,
            template_id=template,
            category=category,
            recipients=recipients,
            start_at_unix_ms=start,
            **kw,
        )
    )
    assert snapshot(h) == before
    assert len(res.earliest_at_unix_ms) == len(recipients)
    return res


async def replay(
    h: Harness,
    recipients: list[str],
    times: list[int],
    start: int,
    *,
    category: pb.Category.ValueType = pb.UTILITY,
    template: str = "t1",
    per_time: bool = False,
) -> None:
    """Send the list in order at its planned times (a recipient that waited is first
    tried a millisecond earlier); every one goes exactly at its time, and the
    ones planned never are refused. ``per_time``: one AdmitBatch per time (as a
    gateway sends), else up to 1 000 requests a call."""
    requests: list[tuple[str, pb.AdmitRequest]] = []
    prev = start
    for rcpt, t in zip(recipients, times, strict=True):

        def at(ms: int, rcpt: str = rcpt) -> pb.AdmitRequest:
            return template_request(rcpt, ms, category=category, template_id=template)

        if t == 0:
            requests.append(("never", at(prev)))
            continue
        assert t >= prev, "a plan keeps the list's order"
        if t > prev:
            requests.append(("early", at(t - 1)))
        requests.append(("admit", at(t)))
        prev = t
    parts = [requests[i : i + 1000] for i in range(0, len(requests), 1000)]
    if per_time:
        parts = [list(g) for _, g in groupby(requests, key=lambda r: r[1].at_unix_ms)]
    for part in parts:
        got: pb.AdmitBatchResponse = await h.stub.AdmitBatch(
            pb.AdmitBatchRequest(requests=[r for _, r in part])
        )
        for (what, req), res in zip(part, got.responses, strict=True):
            admitted = res.decision == pb.DECISION_ADMIT
            assert admitted == (what == "admit"), (what, req, res)


def never(res: pb.PlanCampaignResponse) -> dict[str, int]:
    return {pb.Reason.Name(c.reason): c.count for c in res.never_by_reason}


@run_async
async def test_throughput_paces_the_plan_and_admission_follows_it() -> None:
    config = make_config(senders=(sender(throughput_mps=10, tier="TIER_1K"),))
    async with serving(config) as h:
        recipients = numbers(95)
        res = await plan(h, recipients)
        times = list(res.earliest_at_unix_ms)
        # a one-second burst of 10 goes at once, then one each 100 ms
        assert times[:10] == [T0] * 10
        assert times[10] > T0 and times[-1] == res.completes_at_unix_ms
        assert res.completes_at_unix_ms - T0 == pytest.approx(8_500, abs=200)
        assert res.admissible_now == 95 and res.planned == 95
        assert [(x.sends, x.used, x.limit) for x in res.hours] == [(95, 95, 1000)]
        await replay(h, recipients, times, T0)


@run_async
async def test_the_limit_waits_for_slots_freed_as_the_window_moves() -> None:
    async with serving(make_config()) as h:  # TIER_250
        early = numbers(100, 500)
        sent: pb.AdmitBatchResponse = await h.stub.AdmitBatch(
            pb.AdmitBatchRequest(
                requests=[
                    template_request(r, T0 - 12 * HOUR + 100 * i) for i, r in enumerate(early)
                ]
            )
        )
        assert all(r.decision == pb.DECISION_ADMIT for r in sent.responses)
        # 150 slots are free now; the 100 counted 12 h ago free theirs in 12 h
        recipients = numbers(240) + early[:10]
        res = await plan(h, recipients)
        times = list(res.earliest_at_unix_ms)
        assert res.admissible_now == 150
        assert res.limit_reached_at_unix_ms > 0
        assert all(t < T0 + HOUR for t in times[:150])
        # the rest wait for the slots counted 12 h ago, freed 24 h after their minute
        assert all(T0 + 12 * HOUR <= t <= T0 + 12 * HOUR + 120_000 for t in times[150:])
        assert res.hours[-1].used == 250 and res.hours[-1].limit == 250
        assert sum(x.sends for x in res.hours) == 250
        await replay(h, recipients, times, T0)


@run_async
async def test_a_repeated_recipient_waits_for_its_pair_rate() -> None:
    async with serving(make_config()) as h:
        a, b, c = numbers(3)
        recipients = [a, b, *[a] * 49, c]
        res = await plan(h, recipients)
        times = list(res.earliest_at_unix_ms)
        assert times[:46] == [T0] * 46  # a 45 times, b once
        # the burst is paid back at one per 6 s before the pair sends again
        assert times[46] == T0 + 45 * 6_000
        assert times[51] == times[50]  # c follows at once
        assert res.admissible_now == 46
        await replay(h, recipients, times, T0)


@run_async
async def test_opted_out_and_us_marketing_never_go() -> None:
    async with serving(make_config()) as h:
        recipients = [*numbers(3), "12025550143", *numbers(2, 10)]
        await h.stub.RecordFeedback(
            pb.RecordFeedbackRequest(
                opt_out=pb.OptOut(
                    recipient=recipients[1], sender_id=SENDER, opted_out=True, at_unix_ms=T0
                )
            )
        )
        res = await plan(h, recipients, category=pb.MARKETING)
        times = list(res.earliest_at_unix_ms)
        assert [t == 0 for t in times] == [False, True, False, True, False, False]
        assert never(res) == {"RECIPIENT_OPTED_OUT": 1, "NOT_DELIVERED_TO_REGION": 1}
        assert res.admissible_now == 4
        await replay(h, recipients, times, T0, category=pb.MARKETING)


@run_async
async def test_a_paused_template_moves_the_plan_to_its_end() -> None:
    async with serving(make_config()) as h:
        await h.stub.RecordFeedback(
            pb.RecordFeedbackRequest(
                template_update=pb.TemplateUpdate(
                    template_id="t1",
                    status=pb.TEMPLATE_STATUS_PAUSED,
                    paused_until_unix_ms=T0 + 3 * HOUR,
                    at_unix_ms=T0,
                )
            )
        )
        recipients = numbers(5)
        res = await plan(h, recipients)
        assert res.start_at_unix_ms == T0 + 3 * HOUR and res.admissible_now == 5
        assert list(res.earliest_at_unix_ms) == [T0 + 3 * HOUR] * 5
        await replay(h, recipients, list(res.earliest_at_unix_ms), T0)
        # a disabled template: nothing goes
        await h.stub.RecordFeedback(
            pb.RecordFeedbackRequest(
                template_update=pb.TemplateUpdate(
                    template_id="t2", status=pb.TEMPLATE_STATUS_DISABLED, at_unix_ms=T0
                )
            )
        )
        off = await plan(h, recipients, template="t2", start=T0 + 4 * HOUR)
        assert list(off.earliest_at_unix_ms) == [0] * 5
        assert never(off) == {"TEMPLATE_DISABLED": 5} and off.completes_at_unix_ms == 0


async def restrict(h: Harness, until: int, *, at: int) -> None:
    """Meta restricted the sender until ``until`` (0: no known end)."""
    update = pb.SenderUpdate(
        sender_id=SENDER, status=pb.RESTRICTED, restricted_until_unix_ms=until, at_unix_ms=at
    )
    await h.stub.RecordFeedback(pb.RecordFeedbackRequest(sender_update=update))


@run_async
async def test_a_restriction_with_a_known_end_moves_the_plan_to_its_end() -> None:
    async with serving(make_config()) as h:
        await restrict(h, T0 + 2 * HOUR, at=T0)
        recipients = numbers(4)
        res = await plan(h, recipients)
        assert res.start_at_unix_ms == T0 + 2 * HOUR and res.admissible_now == 4
        assert list(res.earliest_at_unix_ms) == [T0 + 2 * HOUR] * 4
        await replay(h, recipients, list(res.earliest_at_unix_ms), T0)
        # restricted with no known end: nothing goes
        await restrict(h, 0, at=T0 + 3 * HOUR)
        off = await plan(h, numbers(3, 10), start=T0 + 3 * HOUR)
        assert list(off.earliest_at_unix_ms) == [0] * 3
        assert never(off) == {"SENDER_RESTRICTED": 3}


@run_async
async def test_a_list_planned_across_calls_is_the_same_plan() -> None:
    async with serving(make_config(senders=(sender(throughput_mps=20),))) as h:
        recipients = numbers(300)
        whole = await plan(h, recipients)
        first = await plan(h, recipients[:120], more_follow=True)
        assert first.continuation and first.continuation_expires_at_unix_ms > 0
        second = await plan(h, recipients[120:], start=0, continuation=first.continuation)
        assert not second.continuation
        joined = [*first.earliest_at_unix_ms, *second.earliest_at_unix_ms]
        assert joined == list(whole.earliest_at_unix_ms)
        for name in ("admissible_now", "completes_at_unix_ms", "planned", "hours"):
            assert getattr(second, name) == getattr(whole, name), name
        # the client plans a list in calls of per_call recipients the same way
        times, last = await h.client.plan_campaign(
            SENDER,
            recipients,
            template_id="t1",
            category=pb.UTILITY,
            start_at_unix_ms=T0,
            per_call=70,
        )
        assert times == list(whole.earliest_at_unix_ms) and last.planned == 300
        # another sender's continuation is refused, and the token still serves
        again = await plan(h, recipients[:120], more_follow=True)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.PlanCampaign(
                pb.PlanCampaignRequest(sender_id="other", continuation=again.continuation)
            )
        assert (err.value.details() or "").startswith("sender_id:")
        tail = await plan(h, recipients[120:], start=0, continuation=again.continuation)
        assert list(tail.earliest_at_unix_ms) == list(second.earliest_at_unix_ms)
        # a held plan is forgotten when its time is up, without another call
        held = h.sidecar._servicer.plans  # type: ignore[union-attr]
        held.held_for_s = 0.05
        await plan(h, recipients[:1], more_follow=True)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not len(held):
                break
        assert len(held) == 0
        # a token serves one call
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await plan(h, recipients[:1], continuation=first.continuation)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "continuation" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"recipients": ["447700900001", "447700900002", "12ab"]}, "recipients[2]"),
        ({"sender_id": ""}, "sender_id"),
        ({"template_id": ""}, "template_id"),
        ({"category": pb.CATEGORY_UNSPECIFIED}, "category"),
        ({"start_at_unix_ms": -1}, "start_at_unix_ms"),
        ({"continuation": "nope"}, "continuation"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(
    fields: dict[str, object], named: str
) -> None:
    @run_async
    async def body() -> None:
        async with serving(make_config()) as h:
            before = snapshot(h)
            request = pb.PlanCampaignRequest(
                sender_id=SENDER,
                template_id="t1",
                category=pb.UTILITY,
                recipients=["447700900001"],
                at_unix_ms=T0,
            )
            for name, value in fields.items():
                if isinstance(value, list):
                    request.ClearField(name)  # type: ignore[arg-type]
                    getattr(request, name).extend(value)
                else:
                    setattr(request, name, value)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.stub.PlanCampaign(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith(named + ":"), err.value.details()
            assert snapshot(h) == before

    body()


@run_async
async def test_an_unknown_sender_plans_nothing() -> None:
    async with serving(make_config()) as h:
        res: pb.PlanCampaignResponse = await h.stub.PlanCampaign(
            pb.PlanCampaignRequest(
                sender_id="999", template_id="t1", category=pb.UTILITY, recipients=numbers(2)
            )
        )
        assert list(res.earliest_at_unix_ms) == [0, 0]
        assert never(res) == {"UNKNOWN_SENDER": 2}


def test_held_plans_are_bounded_in_number_and_time() -> None:
    def held_plan() -> CampaignPlan:
        return CampaignPlan.__new__(CampaignPlan)

    def asking(token: str) -> pb.PlanCampaignRequest:
        return pb.PlanCampaignRequest(continuation=token)

    book = HeldPlans(capacity=2, held_for_s=60.0)
    first, second, third = (held_plan() for _ in range(3))
    for p in (first, second, third):
        p.sender_id, p.template_id, p.category = SENDER, "t1", pb.UTILITY
    t1, _ = book.hold(first)
    t2, _ = book.hold(second)
    t3, _ = book.hold(third)  # the oldest makes room
    assert len(book) == 2
    with pytest.raises(InvalidArgument):
        book.take(asking(t1))
    assert book.take(asking(t2)) is second and book.take(asking(t3)) is third
    assert len(book) == 0
    gone = HeldPlans(held_for_s=0.0)
    token, _ = gone.hold(first)
    with pytest.raises(InvalidArgument) as err:
        gone.take(asking(token))  # expired at once
    assert err.value.field == "continuation"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_mixed_list_is_admitted_exactly_as_planned(seed: int) -> None:
    """Repeats, opt-outs, earlier sends spread over the last day, a slow number and
    a low limit, in one list: every recipient goes at its planned time."""
    rng = random.Random(seed)
    pool = numbers(320)

    @run_async
    async def body() -> None:
        config = make_config(senders=(sender(throughput_mps=rng.choice([2, 5, 30])),))
        async with serving(config) as h:
            at = T0 - DAY
            for rcpt in rng.sample(pool, 150):
                at += rng.randrange(60_000, 300_000)
                sent = await h.stub.Admit(template_request(rcpt, at, category=pb.MARKETING))
                assert sent.decision == pb.DECISION_ADMIT
            for rcpt in rng.sample(pool, 10):
                await h.stub.RecordFeedback(
                    pb.RecordFeedbackRequest(
                        opt_out=pb.OptOut(
                            recipient=rcpt, sender_id=SENDER, opted_out=True, at_unix_ms=T0
                        )
                    )
                )
            recipients = [rng.choice(pool) for _ in range(400)]
            res = await plan(h, recipients, category=pb.MARKETING)
            times = list(res.earliest_at_unix_ms)
            assert sum(c.count for c in res.never_by_reason) == times.count(0) > 0
            assert res.completes_at_unix_ms == max(times)
            # the limit is reached, and the rest go as the earlier sends leave the window
            assert T0 < res.limit_reached_at_unix_ms < T0 + HOUR < res.completes_at_unix_ms
            await replay(h, recipients, times, T0, category=pb.MARKETING)

    body()


def protective(tmp_path: Path, name: str, rules: str) -> str:
    profile = tmp_path / f"{name}.toml"
    profile.write_text(f'extends = "meta-2025"\nname = "protective"\n[protection]\n{rules}\n')
    return str(profile)


def test_the_marketing_frequency_cap_and_the_red_quality_block(tmp_path: Path) -> None:
    capped = protective(tmp_path, "capped", "frequency_cap = 2\nfrequency_window_hours = 1")
    blocking = protective(tmp_path, "blocking", "block_marketing_on_red = true")

    @run_async
    async def body() -> None:
        a, b = numbers(2)
        async with serving(make_config(profile=capped)) as h:
            recipients = [a, a, a, b]
            res = await plan(h, recipients, category=pb.MARKETING)
            times = list(res.earliest_at_unix_ms)
            assert times[:2] == [T0, T0] and times[2] == times[3] == T0 + HOUR
            assert res.admissible_now == 2
            await replay(h, recipients, times, T0, category=pb.MARKETING)
        red = make_config(profile=blocking, senders=(sender(quality=Quality.RED),))
        async with serving(red) as h:
            res = await plan(h, [a, b], category=pb.MARKETING)
            assert list(res.earliest_at_unix_ms) == [0, 0]
            assert never(res) == {"QUALITY_PROTECTION": 2}
            assert (await plan(h, [a, b])).admissible_now == 2  # utility goes

    body()


@run_async
async def test_a_recipient_meta_declined_marketing_to_waits_for_its_back_off() -> None:
    async with serving(make_config()) as h:
        x, y = numbers(2)
        sent = await h.stub.Admit(template_request(x, T0 - HOUR, category=pb.MARKETING))
        failed = pb.SendResult(
            ticket=sent.ticket, status=pb.FAILED, meta_error_code=131049, at_unix_ms=T0 - HOUR
        )
        assert (await h.stub.RecordFeedback(pb.RecordFeedbackRequest(send_result=failed))).applied
        recipients = [y, x, y]
        res = await plan(h, recipients, category=pb.MARKETING)
        times = list(res.earliest_at_unix_ms)
        assert times[0] == T0 and times[1] == times[2] == T0 + 23 * HOUR  # 24 h after 131049
        assert res.admissible_now == 1
        await replay(h, recipients, times, T0, category=pb.MARKETING)
