"""PlanCampaign over ``--store redis://`` across changes time brings: the next warm-up
step takes effect in the plan when it would live (the plan equals the embedded
store's for the same traffic, and AdmitBatch at the other sidecar admits each
recipient exactly at its time), and so does the tier raise the plan's own sends
cause: the plan's copy holds Redis's 7-day counts, so its sends date the crossing
as the shared store dates it (docs/redis.md, "Upgrades by usage")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import uvloop

from tiergate import config as cfg
from tiergate.store.location import parse_store
from tiergate.v1 import admission_pb2 as pb

from . import test_redis_adopt as adopt

pytestmark = pytest.mark.redis

T0, HOUR, DAY = adopt.T0, adopt.HOUR, adopt.DAY


def _profile(tmp_path: Path, extends: str, rules: str = "") -> str:
    path = tmp_path / f"{extends}-ahead.toml"
    path.write_text(f'extends = "{extends}"\nname = "ahead"\n{rules}\n')
    return str(path)


def _planned(
    config: cfg.ServeConfig, url: str, earlier: list[str], at: int, recipients: list[str]
) -> tuple[list[int], list[int]]:
    """``earlier`` admitted from ``at`` (20 ms apart) by an embedded sidecar and through
    a Redis one; then the list's plan by each store (the shared store's made at a
    second sidecar), and the shared store's plan replayed at the Redis one: each
    recipient admitted exactly at its time and refused a millisecond earlier, one
    AdmitBatch per run of the plan without an hour's gap (as a gateway sends them:
    what time alone changes applies between the batches)."""
    shared = replace(config, store=parse_store(url))
    plans: list[list[int]] = []

    async def main() -> None:
        async with (
            adopt.serving(config) as alone,
            adopt.serving(shared) as a,
            adopt.serving(shared) as b,
        ):
            requests = [adopt._send(r, at + 20 * i) for i, r in enumerate(earlier)]
            for stub in (alone, b):
                got = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=requests))
                assert all(r.decision == pb.DECISION_ADMIT for r in got.responses)
            for stub in (alone, a):
                plans.append(await adopt._plan(stub, recipients, T0, pb.UTILITY))
            times = plans[1]
            cuts = [i for i in range(1, len(times)) if times[i] - times[i - 1] > HOUR]
            for lo, hi in zip([0, *cuts], [*cuts, len(times)], strict=True):
                start = times[lo - 1] if lo else T0
                await adopt._replay(b, recipients[lo:hi], times[lo:hi], start, pb.UTILITY)

    uvloop.run(main())
    return plans[0], plans[1]


@pytest.mark.usefixtures("patient")
@pytest.mark.parametrize(("extends", "tier"), [("meta-2025", "TIER_2K"), ("meta-2024", "TIER_1K")])
def test_the_next_warm_up_step_over_redis_is_the_embedded_plan(
    redis_url: str, tmp_path: Path, extends: str, tier: str
) -> None:
    """A number 6.5 days old (100 a day, 500 from day 7) that counted 40 recipients
    6 hours ago: 60 go now, the rest when day 7 begins in 12 h."""
    base = adopt._config(profile=_profile(tmp_path, extends, "[warmup]\nenabled = true"))
    number = replace(base.senders[0], tier=tier, registered_at_unix_ms=T0 - 6 * DAY - 12 * HOUR)
    config = replace(base, senders=(number,))
    want, got = _planned(
        config, redis_url, adopt._numbers(40, 5000), T0 - 6 * HOUR, adopt._numbers(300)
    )
    assert got == want
    assert max(got[:60]) < T0 + 60_000 and got[60] == T0 + 12 * HOUR


@pytest.mark.usefixtures("patient")
def test_a_raise_the_plan_causes_over_redis_is_the_embedded_plan(
    redis_url: str, tmp_path: Path
) -> None:
    """meta-2024, 250 a day, 124 unique recipients 5 days ago (outside the list, so
    only in Redis's 7-day rings): the plan's own sends reach the threshold, and the
    tier is raised 24 h after its first send, as the embedded store's plan has it;
    AdmitBatch at the other sidecar admits the list at those times across the raise
    (the 251st exactly when the tier rises, not a millisecond before)."""
    config = adopt._config(profile=_profile(tmp_path, "meta-2024"))
    embedded, got = _planned(
        config, redis_url, adopt._numbers(124, 5000), T0 - 5 * DAY, adopt._numbers(260)
    )
    assert got == embedded
    assert got[249] < T0 + HOUR and got[250] == T0 + DAY
