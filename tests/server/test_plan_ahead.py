"""PlanCampaign over changes time brings, through gRPC on a request clock: the next
warm-up step, a tier raise already recorded, and a tier raise the plan's own sends
cause (meta-2024: the next tier 24 h after the threshold) take effect in the plan
when they would live. Each plan is replayed with AdmitBatch, each recipient at its
planned time (in calls of up to 1 000 requests spanning days, or one call per time
as a gateway sends): it is admitted exactly then and refused a millisecond earlier
where it waited, so a recipient planned earlier or later than tiergate then admits
it fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
from test_plan_campaign import numbers, plan, replay

from tiergate.v1 import admission_pb2 as pb

HOUR = 3_600_000
DAY = 24 * HOUR


async def send_at(
    h: Harness, recipients: list[str], at: int, *, gap: int = 20, all_go: bool = True
) -> None:
    """Earlier traffic: the recipients sent from ``at``, ``gap`` ms apart."""
    requests = [template_request(r, at + gap * i) for i, r in enumerate(recipients)]
    sent: pb.AdmitBatchResponse = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=requests))
    assert not all_go or all(r.decision == pb.DECISION_ADMIT for r in sent.responses)


async def told(h: Harness, **event: Any) -> None:
    """A feedback event (RecordFeedbackRequest's field), applied."""
    got: pb.RecordFeedbackResponse = await h.stub.RecordFeedback(pb.RecordFeedbackRequest(**event))
    assert got.applied


def profile(tmp_path: Path, extends: str, rules: str = "") -> str:
    path = tmp_path / f"{extends}-ahead.toml"
    path.write_text(f'extends = "{extends}"\nname = "ahead"\n{rules}\n')
    return str(path)


WARM = "[warmup]\nenabled = true\n"
#: A ladder of small limits (legacy-2x's upgrades: twice the limit, cumulative).
SMALL = '[tiers]\nladder = ["TIER_50", "TIER_250", "TIER_1K"]\nstarting = "TIER_250"\n'


@pytest.mark.parametrize(("extends", "tier"), [("meta-2025", "TIER_2K"), ("meta-2024", "TIER_1K")])
def test_the_next_warm_up_step_raises_the_cap_in_the_plan(
    tmp_path: Path, extends: str, tier: str
) -> None:
    """A number 6.5 days old (week 1: 100 a day) under portfolio scope (its own count
    capped) and per-number scope (its limit capped): 100 go now, the rest at day 7's
    step (500) in 12 h, not when the first 100 leave the window in 24 h."""
    config = make_config(
        profile=profile(tmp_path, extends, WARM),
        senders=(sender(tier=tier, registered_at_unix_ms=T0 - 6 * DAY - 12 * HOUR),),
    )

    @run_async
    async def body() -> None:
        async with serving(config) as h:
            recipients = numbers(300)
            res = await plan(h, recipients)
            times = list(res.earliest_at_unix_ms)
            assert res.admissible_now == 100
            assert all(t < T0 + 60_000 for t in times[:100])
            step = T0 + 12 * HOUR
            assert times[100] == step and all(step <= t < step + 60_000 for t in times[100:])
            assert res.limit_reached_at_unix_ms > 0
            await replay(h, recipients, times, T0, per_time=False)

    body()


def test_a_recorded_tier_raise_takes_effect_in_the_plan_when_due(tmp_path: Path) -> None:
    """meta-2024, 250 a day: half the limit reached 20 h ago (its last 25 then), so the
    1 000 tier applies in 4 h; the limit is full since an hour ago. Nothing goes
    until 4 h from now, then every recipient goes (not 25 then and the rest in 23 h)."""
    config = make_config(profile=profile(tmp_path, "meta-2024"))

    @run_async
    async def body() -> None:
        async with serving(config) as h:
            pool = numbers(350, 1000)
            await send_at(h, pool[:100], T0 - 6 * DAY)
            await send_at(h, pool[100:125], T0 - 20 * HOUR)
            await send_at(h, pool[125:], T0 - HOUR)
            # a raise due before the plan starts applies from its start: 30 go, not 25
            late = await plan(h, numbers(30, 900), start=T0 + 5 * HOUR)
            assert list(late.earliest_at_unix_ms) == [T0 + 5 * HOUR] * 30
            recipients = numbers(400)
            res = await plan(h, recipients)
            times = list(res.earliest_at_unix_ms)
            due = T0 + 4 * HOUR + 480  # 24 h after the 125th, sent at T0 - 20 h + 480 ms
            assert res.admissible_now == 0 and times[0] == due
            assert all(due <= t < due + 60_000 for t in times)
            assert [x.limit for x in res.hours] == [1000]
            await replay(h, recipients, times, T0, per_time=False)

    body()


@pytest.mark.parametrize(("mps", "per_time"), [(5, False), (80, True)])
def test_a_tier_raise_the_plan_itself_causes_takes_effect_when_due(
    tmp_path: Path, mps: int, per_time: bool
) -> None:
    """meta-2024, 250 a day, 124 unique recipients in the last 7 days: the plan's first
    send meets the threshold, so the 1 000 tier applies 24 h later, before the
    plan's first sends leave the window; a second crossing (500) is met later too."""
    config = make_config(
        profile=profile(tmp_path, "meta-2024"), senders=(sender(throughput_mps=mps),)
    )

    @run_async
    async def body() -> None:
        async with serving(config) as h:
            await send_at(h, numbers(124, 5000), T0 - 5 * DAY, gap=1000)
            recipients = numbers(420)
            res = await plan(h, recipients)
            times = list(res.earliest_at_unix_ms)
            assert res.admissible_now == 250
            due = T0 + DAY  # the threshold was met by the first send, at T0
            assert times[250] == due
            # the slots of the first sends free only after their minute has passed
            assert times[250] < T0 - T0 % 60_000 + 60_000 + DAY
            assert res.hours[-1].limit == 1000
            await replay(h, recipients, times, T0, per_time=per_time)

    body()


def test_a_raise_waits_for_the_time_in_tier(tmp_path: Path) -> None:
    """legacy-2x (twice the limit, cumulative; no delay, 48 h in tier) on a ladder of
    50 → 250: the tier was lowered to 50 20 h ago; the plan's second 50 meet the
    threshold a day later, and the raise waits for 48 h in tier, 28 h from now."""
    config = make_config(profile=profile(tmp_path, "legacy-2x", SMALL))

    @run_async
    async def body() -> None:
        async with serving(config) as h:
            lowered = pb.SenderUpdate(sender_id=SENDER, tier="TIER_50", at_unix_ms=T0 - 20 * HOUR)
            await told(h, sender_update=lowered)
            recipients = numbers(200)
            res = await plan(h, recipients)
            times = list(res.earliest_at_unix_ms)
            assert res.admissible_now == 50 and DAY < times[50] - T0 < DAY + 60_000
            assert times[100] == T0 + 28 * HOUR
            assert [x.limit for x in res.hours] == [50, 50, 250]
            await replay(h, recipients, times, T0, per_time=True)

    body()


def test_a_slowed_number_s_recovery_speeds_the_plan_up() -> None:
    """A 130429 halves a 10 msg/s number's rate for a minute: the plan goes at 5 a
    second, then at 10 from the minute's end, as the number is admitted."""
    config = make_config(senders=(sender(throughput_mps=10, tier="TIER_1K"),))

    @run_async
    async def body() -> None:
        async with serving(config) as h:
            sent = await h.stub.Admit(template_request(numbers(1, 900)[0], T0 - 5_000))
            failed = pb.SendResult(
                ticket=sent.ticket, status=pb.FAILED, meta_error_code=130429, at_unix_ms=T0
            )
            await told(h, send_result=failed)
            recipients = numbers(700)
            res = await plan(h, recipients)
            times = list(res.earliest_at_unix_ms)
            recovered = T0 + 60_000
            slow = [t for t in times if t < recovered]
            assert 250 < len(slow) < 310  # 5 a second after the 1 s back-off
            fast = [t for t in times if t >= recovered + 1_000]
            assert (fast[-1] - fast[0]) / (len(fast) - 1) == pytest.approx(100, abs=1)
            await replay(h, recipients, times, T0)

    body()


def test_a_long_red_run_s_step_down_takes_effect_in_the_plan(tmp_path: Path) -> None:
    """meta-2024: 7 Red days cost a tier. A number at 10 000 (1 msg/s), Red for 7 days
    in 10 minutes: 600 go before the step down to 1 000, 400 more after it, and the
    rest a day later as the first leave the window."""
    config = make_config(
        profile=profile(tmp_path, "meta-2024"),
        senders=(sender(throughput_mps=1, tier="TIER_10K"),),
    )

    @run_async
    async def body() -> None:
        async with serving(config) as h:
            red = pb.SenderUpdate(
                sender_id=SENDER, quality=pb.RED, at_unix_ms=T0 - 7 * DAY + 600_000
            )
            await told(h, sender_update=red)
            recipients = numbers(1100)
            res = await plan(h, recipients)
            times = list(res.earliest_at_unix_ms)
            down = T0 + 600_000
            assert sum(t < down for t in times) == 600
            assert sum(down <= t < T0 + HOUR for t in times) == 400
            assert min(times[1000:]) > T0 + DAY
            assert res.hours[0].limit == 10_000
            assert res.hours[-1].limit == 1000
            await replay(h, recipients, times, T0)

    body()


def test_a_predicting_profile_never_anticipates_a_raise(tmp_path: Path) -> None:
    """meta-2025 raises a tier only on Meta's event: a plan waits for the window."""

    async def body() -> None:
        async with serving(make_config()) as h:  # TIER_250, upgrades predicted
            await send_at(h, numbers(124, 5000), T0 - 5 * DAY)
            recipients = numbers(260)
            res = await plan(h, recipients)
            times = list(res.earliest_at_unix_ms)
            assert times[250] > T0 + DAY and [x.limit for x in res.hours][-1] == 250
            await replay(h, recipients, times, T0, per_time=False)

    run_async(body)()


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    earlier=st.integers(0, 200),
    earlier_at=st.integers(1, 6 * 24),
    n=st.integers(1, 400),
    mps=st.sampled_from([3, 40]),
    age_h=st.integers(6 * 24, 8 * 24),
    rules=st.sampled_from([("meta-2024", WARM), ("legacy-2x", WARM + SMALL)]),
    per_time=st.booleans(),
)
def test_plans_over_tier_raises_and_warm_up_steps_are_admitted_as_planned(
    tmp_path: Path,
    earlier: int,
    earlier_at: int,
    n: int,
    mps: int,
    age_h: int,
    rules: tuple[str, str],
    per_time: bool,
) -> None:
    """Profiles that apply upgrades, with warm-up; small lists after earlier traffic:
    the plan's times are AdmitBatch's."""
    config = make_config(
        profile=profile(tmp_path, *rules),
        senders=(sender(throughput_mps=mps, registered_at_unix_ms=T0 - age_h * HOUR),),
    )

    async def body() -> None:
        async with serving(config) as h:
            if earlier:
                at = T0 - earlier_at * HOUR
                await send_at(h, numbers(earlier, 5000), at, gap=500, all_go=False)
            recipients = numbers(n)
            res = await plan(h, recipients)
            await replay(h, recipients, list(res.earliest_at_unix_ms), T0, per_time=per_time)

    run_async(body)()
