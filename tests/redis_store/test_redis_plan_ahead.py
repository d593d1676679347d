"""PlanCampaign over ``--store redis://`` across changes time brings: the next warm-up
step takes effect in the plan when it would live (the plan equals the embedded
store's for the same traffic, and AdmitBatch at the other sidecar admits each
recipient exactly at its time); a tier raise the plan's own sends would cause is
not anticipated there, as the shared store's tier machine counts no admits
(docs/redis.md), while the embedded store's plan anticipates it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import uvloop

from tiergate.v1 import admission_pb2 as pb

from . import test_redis_adopt as adopt

pytestmark = pytest.mark.redis

T0, HOUR, DAY = adopt.T0, adopt.HOUR, adopt.DAY


def _profile(tmp_path: Path, extends: str, rules: str = "") -> str:
    path = tmp_path / f"{extends}-ahead.toml"
    path.write_text(f'extends = "{extends}"\nname = "ahead"\n{rules}\n')
    return str(path)


async def _sent(stubs: tuple[object, ...], recipients: list[str], at: int) -> None:
    """Earlier traffic, each recipient admitted from ``at`` (20 ms apart), at each
    of ``stubs`` (an embedded sidecar, and one of the shared store's)."""
    requests = [adopt._send(r, at + 20 * i) for i, r in enumerate(recipients)]
    for stub in stubs:
        got = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=requests))  # type: ignore[attr-defined]
        assert all(r.decision == pb.DECISION_ADMIT for r in got.responses)


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
    shared = adopt._config(redis_url, profile=config.profile, senders=(number,))

    async def main() -> None:
        async with (
            adopt.serving(config) as alone,
            adopt.serving(shared) as a,
            adopt.serving(shared) as b,
        ):
            await _sent((alone, b), adopt._numbers(40, 5000), T0 - 6 * HOUR)
            recipients = adopt._numbers(300)
            want = await adopt._plan(alone, recipients, T0, pb.UTILITY)
            got = await adopt._plan(a, recipients, T0, pb.UTILITY)
            assert got == want
            step = T0 + 12 * HOUR
            assert max(got[:60]) < T0 + 60_000 and got[60] == step
            await adopt._replay(b, recipients, got, T0, pb.UTILITY)

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_a_raise_the_plan_would_cause_is_not_anticipated_over_redis(
    redis_url: str, tmp_path: Path
) -> None:
    """meta-2024, 250 a day, 124 unique recipients 5 days ago: the embedded store's plan
    raises the tier 24 h after its first send; over Redis the list waits for the
    window, and AdmitBatch there admits it so."""
    config = adopt._config(profile=_profile(tmp_path, "meta-2024"))
    shared = replace(config, store=adopt._config(redis_url).store)

    async def main() -> None:
        async with (
            adopt.serving(config) as alone,
            adopt.serving(shared) as a,
            adopt.serving(shared) as b,
        ):
            await _sent((alone, b), adopt._numbers(124, 5000), T0 - 5 * DAY)
            recipients = adopt._numbers(260)
            embedded = await adopt._plan(alone, recipients, T0, pb.UTILITY)
            got = await adopt._plan(a, recipients, T0, pb.UTILITY)
            assert got[:250] == embedded[:250]
            assert embedded[250] == T0 + DAY < got[250]
            await adopt._replay(b, recipients, got, T0, pb.UTILITY)

    uvloop.run(main())
