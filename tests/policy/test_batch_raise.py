"""One batch on the request clock whose items span the due time of a tier raise that
an item of the batch makes (profiles that apply upgrades: meta-2024's 24 h
delay, legacy-2x's none) is decided as the same requests one by one are: the
items at and after the due time see the raised limit. On both engines."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tiergate.engine.constants import RETRY_LATER
from tiergate.policy.profile import load_profile
from tiergate.policy.requests import AdmitRequest
from tiergate.policy.service import AdmissionService

from .helpers import T0, TICKET_KEY, D, H, add_sender, rcpt


def _world(twin: Any, profile: str, since: int) -> AdmissionService:
    prof = load_profile(profile)
    engine = twin.Engine(prof.bucket_ms, prof.window_ms, prof.long_bucket_ms, prof.lookback_ms)
    svc = AdmissionService(prof, clock="request", engine=engine, ticket_key=TICKET_KEY)
    add_sender(svc, "s1", since, tier=prof.ladder[0], throughput_mps=1000)
    return svc


@pytest.mark.parametrize(
    ("profile", "n", "since"),
    [
        ("meta-2024", 900, T0 - 3 * D),
        ("legacy-2x", 3200, T0 - 3 * D),
    ],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_one_batch_across_a_raise_is_decided_as_one_by_one(
    twin: Any, profile: str, n: int, since: int, seed: int
) -> None:
    rng = random.Random(seed)
    at, reqs = T0, []
    for i in range(n):
        at += rng.randrange(1, 6 * D // n)  # every item at a later time, over about 3 days
        to = rcpt(i if rng.random() < 0.9 else rng.randrange(i + 1))
        reqs.append(AdmitRequest("s1", to, template_id="t", at_unix_ms=at))
    batch, single = _world(twin, profile, since), _world(twin, profile, since)
    got = batch.admit_many(reqs, T0)
    want = [single.admit(r, T0) for r in reqs]

    def answers(results: list[Any]) -> list[tuple[int, ...]]:
        return [(r.decision, r.reason, r.retry_at_unix_ms, r.limit, r.used) for r in results]

    assert answers(got) == answers(want)
    ladder = batch.state.profile.ladder
    tiers = [svc.state.senders["s1"].scope.tier for svc in (batch, single)]
    assert tiers[0] == tiers[1] != ladder[0]  # a raise took effect inside the batch
    assert got[-1].limit > got[0].limit
    assert any(r.decision == RETRY_LATER for r in got)


@pytest.mark.parametrize("short", [1, 3])
def test_items_at_the_crossing_s_own_time_see_a_raise_without_delay(twin: Any, short: int) -> None:
    """legacy-2x (no delay once 48 h in tier): a scope ``short`` counts below its
    threshold, then one batch whose items share one time: the items after the one
    that meets the threshold are decided under the raise, as one by one."""
    batch, single = (_world(twin, "legacy-2x", T0 - 5 * D) for _ in range(2))
    for day in (2, 1):  # 2 000 less ``short`` recipients, 36 and 72 hours before
        n = 1_000 if day == 2 else 1_000 - short
        fill = [
            AdmitRequest(
                "s1", rcpt(day * 10_000 + k), template_id="t", at_unix_ms=T0 - day * 36 * H + 2 * k
            )
            for k in range(n)
        ]
        for svc in (batch, single):
            assert all(r.decision == 1 for r in svc.admit_many(fill, T0))
    reqs = [AdmitRequest("s1", rcpt(k), template_id="t", at_unix_ms=T0) for k in range(10)]
    got = batch.admit_many(reqs, T0)
    want = [single.admit(r, T0) for r in reqs]
    assert [(r.decision, r.limit, r.used) for r in got] == [
        (r.decision, r.limit, r.used) for r in want
    ]
    assert [r.limit for r in got] == [1_000] * short + [10_000] * (10 - short)
