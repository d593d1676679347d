"""A request-clock batch on Redis whose items span the due time of a raise its own
earlier items' crossing sets (``apply`` profiles: meta-2024's 24 h delay,
legacy-2x's none after 48 h in tier) is decided as the embedded store decides it:
in parts, the crossing a part's reply shows recorded through the shared log
before the next part, whose items at or after the due time see the raised limit.
A batch whose scope is far from its threshold is one ``decide`` call, and a
``predict`` profile (meta-2025) raises nothing inside a batch."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from policy.helpers import T0, D, H, add_sender, rcpt, service

from tiergate.engine import NEVER
from tiergate.engine.constants import ADMIT, RETRY_LATER
from tiergate.policy.answers import AdmitResult
from tiergate.policy.requests import AdmitRequest
from tiergate.policy.service import AdmissionService
from tiergate.policy.tiers import threshold
from tiergate.store.shared import SharedAdmission
from tiergate.store.shared_policy import SNAPSHOT_KEY, STREAM_KEY, SharedPolicy
from tiergate.v1 import admission_pb2 as pb

from .test_redis_adopt import _answer, _report
from .test_redis_columns import _shared
from .test_redis_policy import SENDER, _config, _request, serving
from .test_redis_policy import T0 as T1
from .test_redis_tiers import _sender

pytestmark = pytest.mark.redis


def _world(profile: str, sender: str, since: int) -> AdmissionService:
    svc = service(profile)
    add_sender(svc, sender, since, tier=svc.state.profile.ladder[0], throughput_mps=1000)
    return svc


@asynccontextmanager
async def _sidecar(url: str, svc: AdmissionService) -> AsyncIterator[SharedAdmission]:
    """``svc`` on the shared store with a shared policy log of its own (crossings
    recorded through it), its ``decide`` calls counted in ``calls``."""
    shared = await _shared(url, svc)
    # no log or policy snapshot of an earlier sidecar: this one's state is the start
    await shared.counting.client.delete(SNAPSHOT_KEY, STREAM_KEY)
    policy = SharedPolicy(shared)
    await policy.start()
    counting: Any = shared.counting
    decide = counting.decide
    counting.calls = 0

    def counted(*args: Any) -> Any:
        counting.calls += 1
        return decide(*args)

    counting.decide = counted
    try:
        yield shared
    finally:
        await policy.aclose()
        await shared.counting.aclose()


def _answers(results: Sequence[AdmitResult]) -> list[tuple[int, ...]]:
    return [(r.decision, r.reason, r.retry_at_unix_ms, r.limit, r.used) for r in results]


def _tier_machine(svc: AdmissionService, sender: str) -> tuple[str, int, int, int]:
    sc = svc.state.senders[sender].scope
    return sc.tier, sc.tier_since, sc.crossed_at, sc.due_at


async def _same(
    embedded: AdmissionService, shared: SharedAdmission, reqs: list[AdmitRequest], sender: str
) -> list[AdmitResult]:
    """The batch to both: the same answers, item by item, and the same tier machine."""
    want = embedded.admit_many(reqs, T0)
    got = await shared.admit_many(reqs, T0)
    assert _answers(got) == _answers(want)
    assert _tier_machine(shared.service, sender) == _tier_machine(embedded, sender)
    return got


def _run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


@pytest.mark.parametrize(
    ("profile", "n"),
    [("meta-2024", 900), ("legacy-2x", 3200)],
)
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.usefixtures("patient")
def test_one_batch_across_its_own_raise_is_the_embedded_stores(
    redis_url: str, profile: str, n: int, seed: int
) -> None:
    """Over about three days, one batch: its crossing is dated and recorded in the
    log, the raise applied inside it, and every item answered as embedded."""
    sender = f"s-{uuid.uuid4().hex[:12]}"
    rng = random.Random(seed)
    at, reqs = T0, []
    for i in range(n):
        at += rng.randrange(1, 6 * D // n)
        to = rcpt(i if rng.random() < 0.9 else rng.randrange(i + 1))
        reqs.append(AdmitRequest(sender, to, template_id="t", at_unix_ms=at))
    embedded = _world(profile, sender, T0 - 3 * D)

    async def main() -> None:
        async with _sidecar(redis_url, _world(profile, sender, T0 - 3 * D)) as shared:
            got = await _same(embedded, shared, reqs, sender)
            counting: Any = shared.counting
            assert counting.calls < 20  # a few parts: never one per item near the threshold
            ladder = embedded.state.profile.ladder
            assert embedded.state.senders[sender].scope.tier != ladder[0]
            assert got[-1].limit > got[0].limit  # a raise took effect inside the batch
            assert any(r.decision == RETRY_LATER for r in got)

    _run(main)


@pytest.mark.usefixtures("patient")
def test_one_batch_across_its_own_raise_on_a_cluster(redis_cluster: str) -> None:
    """The same on the three-master Cluster (meta-2024, 900 items over three days)."""
    sender = f"s-{uuid.uuid4().hex[:12]}"
    at, reqs = T0, []
    for i in range(900):
        at += 300_000 + i % 7 * 1_000
        reqs.append(AdmitRequest(sender, rcpt(i % 400), template_id="t", at_unix_ms=at))
    embedded = _world("meta-2024", sender, T0 - 3 * D)

    async def main() -> None:
        async with _sidecar(redis_cluster, _world("meta-2024", sender, T0 - 3 * D)) as shared:
            got = await _same(embedded, shared, reqs, sender)
            assert got[0].limit == 250 and got[-1].limit == 1_000

    _run(main)


@pytest.mark.usefixtures("patient")
def test_a_batch_far_from_the_threshold_is_one_decide_call(redis_url: str) -> None:
    """meta-2024 (TIER_250: 125 unique recipients meet the threshold): once the
    sidecar has its scope's counts from Redis, batches spanning more than the 24 h
    delay are each one ``decide`` call while they cannot reach the threshold; one
    that can is decided in parts."""
    sender = f"s-{uuid.uuid4().hex[:12]}"
    embedded = _world("meta-2024", sender, T0 - 3 * D)

    def batch(first: int, n: int, at: int, step: int) -> list[AdmitRequest]:
        return [
            AdmitRequest(sender, rcpt(first + k), template_id="t", at_unix_ms=at + k * step)
            for k in range(n)
        ]

    async def main() -> None:
        async with _sidecar(redis_url, _world("meta-2024", sender, T0 - 3 * D)) as shared:
            counting: Any = shared.counting
            await _same(embedded, shared, batch(0, 3, T0, 1_000), sender)
            for k in range(3):  # 30 a batch over 29 h: at most 93 of 125
                counting.calls = 0
                at = T0 + (k + 1) * 2 * D
                got = await _same(embedded, shared, batch(100 * (k + 1), 30, at, H), sender)
                assert all(r.decision == ADMIT for r in got)
                assert counting.calls == 1
            assert shared.service.state.senders[sender].scope.crossed_at == NEVER
            counting.calls = 0  # 100 more can meet it: in parts, under the raise
            got = await _same(embedded, shared, batch(1_000, 100, T0 + 7 * D, H), sender)
            assert counting.calls > 1
            assert got[-1].limit > got[0].limit

    _run(main)


@pytest.mark.usefixtures("patient")
def test_a_predicting_profile_raises_nothing_inside_a_batch(redis_url: str) -> None:
    """meta-2025 (``predict``): a batch through its threshold over three days is one
    ``decide`` call; the crossing is recorded, the limit stays (Meta raises it)."""
    sender = f"s-{uuid.uuid4().hex[:12]}"
    reqs = [
        AdmitRequest(sender, rcpt(k), template_id="t", at_unix_ms=T0 + k * 10 * 60_000)
        for k in range(400)
    ]
    embedded = _world("meta-2025", sender, T0 - 3 * D)

    async def main() -> None:
        async with _sidecar(redis_url, _world("meta-2025", sender, T0 - 3 * D)) as shared:
            counting: Any = shared.counting
            got = await _same(embedded, shared, reqs, sender)
            assert counting.calls == 1
            assert {r.limit for r in got} == {250}
            assert shared.service.state.senders[sender].scope.crossed_at != NEVER

    _run(main)


#: A batch: each item's recipient (of 150) and its time after the item before.
_batch = st.lists(
    st.tuples(st.integers(0, 149), st.one_of(st.integers(0, 5), st.integers(0, 3 * H))),
    min_size=10,
    max_size=80,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    profile=st.sampled_from(["meta-2024", "legacy-2x"]),
    short=st.integers(1, 25),
    walk=st.lists(_batch, min_size=1, max_size=3),
)
def test_random_batches_near_the_threshold_are_the_embedded_stores(
    redis_url: str, profile: str, short: int, walk: list[list[tuple[int, int]]]
) -> None:
    """A scope filled to ``short`` counts below its upgrade threshold, then random
    request-clock batches (repeats, hours apart, spanning the due time or not): the
    same answers, crossing and raise on Redis as on the embedded store, and as the
    same requests one by one on the embedded store."""
    sender = f"s-{uuid.uuid4().hex[:12]}"
    embedded, single = _world(profile, sender, T0 - 3 * D), _world(profile, sender, T0 - 3 * D)

    async def main() -> None:
        async with _sidecar(redis_url, _world(profile, sender, T0 - 3 * D)) as shared:
            st_ = embedded.state
            fill = threshold(st_, st_.senders[sender].scope) - short
            day, first = T0 - 2 * D, 10_000
            while fill > 0:  # new recipients a millisecond apart, a day's limit at most
                n = min(fill, st_.profile.tier_limit(st_.profile.ladder[0]))
                reqs = [
                    AdmitRequest(sender, rcpt(first + k), template_id="t", at_unix_ms=day + k)
                    for k in range(n)
                ]
                got = await _same(embedded, shared, reqs, sender)
                single.admit_many(reqs, T0)
                fill -= sum(r.decision == ADMIT for r in got)
                day, first = day + D, first + n
            at = day
            for items in walk:
                reqs = []
                for to, dt in items:
                    at += dt
                    reqs.append(AdmitRequest(sender, rcpt(to), template_id="t", at_unix_ms=at))
                got = await _same(embedded, shared, reqs, sender)
                assert _answers(got) == _answers([single.admit(r, T0) for r in reqs])
                if got[-1].limit > got[0].limit:
                    event("raised inside a batch")

    _run(main)


@pytest.mark.usefixtures("patient")
def test_an_admit_batch_across_its_own_raise_through_two_sidecars(redis_url: str) -> None:
    """Through gRPC: one AdmitBatch over about three days to sidecar A on Redis and
    to an embedded sidecar gets the same answers and limits (the raise inside it);
    sidecar B, which decided nothing, holds the same crossing and tier."""
    sender = (_sender("TIER_250"),)
    embedded = _config("embedded", profile="meta-2024", senders=sender)
    shared = _config(redis_url, profile="meta-2024", senders=sender)
    reqs = [_request(k % 300, T1 + k * 10 * 60_000) for k in range(400)]
    batch = pb.AdmitBatchRequest(requests=reqs)

    async def main() -> None:
        async with serving(embedded) as alone, serving(shared) as a, serving(shared) as b:
            want = list((await alone.stub.AdmitBatch(batch)).responses)
            got = list((await a.stub.AdmitBatch(batch)).responses)
            assert [_answer(r) for r in got] == [_answer(r) for r in want]
            assert [r.limit for r in got] == [r.limit for r in want]
            assert got[0].limit == 250 and got[-1].limit == 1_000
            assert b.sidecar.policy is not None
            await b.sidecar.policy.catch_up()
            end = T1 + 400 * 10 * 60_000
            for s in (a, b):
                assert _report(await s.state(end)) == _report(await alone.state(end))
                assert _tier_machine(s.sidecar.service, SENDER) == _tier_machine(
                    alone.sidecar.service, SENDER
                )

    uvloop.run(main())
