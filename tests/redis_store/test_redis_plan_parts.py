"""A plan over ``--store redis://`` of a list longer than one read's part
(``redis_reads.READ_PART``): read in several bounded calls of the read-only
``entries``, the plan is the one-call plan when nothing happens between them, and
never earlier than both the plan before and the plan after another sidecar's
batch that runs while it is read."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import redis.asyncio
import uvloop

from tiergate.store import redis_reads
from tiergate.v1 import admission_pb2 as pb

from . import test_redis_adopt as adopt
from .redis_harness import serving

pytestmark = pytest.mark.redis

T0 = adopt.T0


@pytest.mark.usefixtures("patient")
def test_a_long_list_is_read_in_bounded_calls_and_planned_as_in_one(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 100 recipients (some counted, the limit binding) read 250 a call: five calls
    of ``entries``, each FCALL_RO; the plan equals the embedded store's, and
    AdmitBatch at the other sidecar admits each recipient at its time."""

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        async with (
            serving(adopt._config(mps=50)) as alone,
            serving(adopt._config(redis_url, mps=50)) as a,
            serving(adopt._config(redis_url, mps=50)) as b,
        ):
            earlier = await adopt._sent_over_a_day(alone, b)
            recipients = earlier[::2] + adopt._numbers(1_000, 3_000)
            want = await adopt._plan(alone, recipients, T0, pb.UTILITY)
            monkeypatch.setattr(redis_reads, "READ_PART", 250)
            await client.config_resetstat()
            got = await adopt._plan(a, recipients, T0, pb.UTILITY)
            assert await adopt._function_calls(client) == {"fcall_ro": 5}
            assert got == want
            assert max(got) > T0 + adopt.HOUR  # past the limit: slots freed later
            await adopt._replay(b, recipients, got, T0, pb.UTILITY)
        await client.aclose()

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_a_plan_read_in_parts_during_another_sidecar_s_batch_is_never_early(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """25 times, a plan at A read 100 recipients a call (the limit binding) and, a
    moment later (0 to 20 ms, as random picks), an AdmitBatch at B of one of the
    plan's recipients and one other, in a bucket the earlier batches count in: no
    recipient is planned earlier than in both the plan made just before the batch
    and the one made just after it (a recipient a later call shows counted frees
    no slot the counts of an earlier call held: the plan counts with the last
    call's counts; with the first call's this fails)."""
    rng = random.Random(5)
    monkeypatch.setattr(redis_reads, "READ_PART", 100)

    async def batch_after(stub: Any, delay: float, batch: pb.AdmitBatchRequest) -> Any:
        await asyncio.sleep(delay)
        return await stub.AdmitBatch(batch)

    async def main() -> None:
        async with (
            serving(adopt._config(redis_url, mps=50)) as a,
            serving(adopt._config(redis_url, mps=50)) as b,
        ):
            earlier = await adopt._sent_over_a_day(b)
            recipients = earlier[::2] + adopt._numbers(1_000, 3_000)
            before = await adopt._plan(a, recipients, T0, pb.UTILITY)
            for k in range(25):
                batch = pb.AdmitBatchRequest(
                    requests=[
                        adopt._send(r, T0 - 100_000 + 1_000 * k + 25 * j)
                        for j, r in enumerate([recipients[150 + k], *adopt._numbers(1, 8_000 + k)])
                    ]
                )
                during, admitted = await asyncio.gather(
                    adopt._plan(a, recipients, T0, pb.UTILITY),
                    batch_after(b, rng.uniform(0, 0.02), batch),
                )
                assert all(r.decision == pb.DECISION_ADMIT for r in admitted.responses)
                after = await adopt._plan(a, recipients, T0, pb.UTILITY)
                assert after != before
                early = [i for i, t in enumerate(during) if t < min(before[i], after[i])]
                assert not early, (k, early[:5])
                before = after

    uvloop.run(main())
