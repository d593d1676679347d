"""Warm-up under portfolio scope over ``--store redis://``: a new number's own cap on
the unique recipients it counts in 24 h holds across sidecars, while the
portfolio's limit stays the portfolio's (docs/rules.md, *Warm-up*)."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tiergate.store.location import parse_store
from tiergate.v1 import admission_pb2 as pb

from . import test_redis_adopt as adopt
from .test_redis_serve import SENDER, T0, _config, _failed, _request, serving

pytestmark = pytest.mark.redis

OLD = "100000000000002"
DAY = 86_400_000
HOUR = 3_600_000


def _from(sender: str, i: int, at: int) -> pb.AdmitRequest:
    req = _request(i, at)
    req.sender_id = sender
    return req


@pytest.mark.usefixtures("patient")
def test_a_new_number_s_warm_up_cap_holds_across_sidecars(redis_url: str, tmp_path: Path) -> None:
    """Two sidecars, a portfolio of 250 with a number registered two days ago (week 1
    of warm-up: 100 a day of its own) and an older one. Sent alternately through
    both sidecars, the new number admits 100 recipients, not 150; the older number
    then admits the rest of the portfolio's limit; one of the new number's
    recipients again takes no slot of its cap, and a FAILED send gives one back."""
    profile = tmp_path / "warm.toml"
    profile.write_text('extends = "meta-2025"\nname = "warm"\n[warmup]\nenabled = true\n')
    base = _config(redis_url)
    old = replace(base.senders[0], sender_id=OLD, display_phone_number="+15550100002")
    new = replace(base.senders[0], registered_at_unix_ms=T0 - 2 * DAY)
    config = replace(base, profile=str(profile), senders=(new, old))

    async def main() -> None:
        async with serving(config) as a, serving(config) as b:
            admitted, at, tickets = 0, T0, []
            for i in range(150):
                at += 100
                res: Any = await (a, b)[i % 2].Admit(_from(SENDER, i, at))
                if res.decision == pb.DECISION_ADMIT:
                    admitted += 1
                    tickets.append((i, res.ticket))
                else:
                    assert res.reason == pb.MESSAGING_LIMIT
                    assert res.decision == pb.DECISION_RETRY_LATER
            assert admitted == 100
            again: Any = await b.Admit(_from(SENDER, 3, at + 100))
            assert again.decision == pb.DECISION_ADMIT and not again.counted
            # a FAILED send told to A gives the number's own slot back in Redis
            i, ticket = tickets[-1]
            failed = _failed(i, ticket, at + 200)
            await a.RecordFeedback(pb.RecordFeedbackRequest(send_result=failed))
            freed: Any = await b.Admit(_from(SENDER, 150, at + 300))
            assert freed.decision == pb.DECISION_ADMIT and freed.counted
            full: Any = await b.Admit(_from(SENDER, 151, at + 400))
            assert full.reason == pb.MESSAGING_LIMIT
            at += 400
            more, limit = 0, 0
            for i in range(200, 400):
                at += 100
                res = await (a, b)[i % 2].Admit(_from(OLD, i, at))
                limit = res.limit
                if res.decision != pb.DECISION_ADMIT:
                    assert res.reason == pb.MESSAGING_LIMIT
                    break
                more += 1
            assert limit > 100 and admitted + more == limit

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
@pytest.mark.parametrize("seed", [1, 2])
def test_a_plan_for_a_number_in_warm_up_over_redis_is_the_embedded_plan(
    redis_url: str, tmp_path: Path, seed: int
) -> None:
    """A number in week 1 of warm-up (100 of its own a day) that counted 60
    recipients over the last day, an older number of the portfolio that counted
    others (some of them the new number's too), all at the other sidecar: the plan
    of a list for the new number over Redis equals the embedded store's for the
    same traffic (its own cap binds: the list waits for its own counts to leave the
    window), and AdmitBatch at the plan's times admits each recipient exactly then."""
    rng = random.Random(seed)
    profile = tmp_path / "warm.toml"
    profile.write_text('extends = "meta-2025"\nname = "warm"\n[warmup]\nenabled = true\n')
    base = adopt._config()
    old = replace(base.senders[0], sender_id=OLD, display_phone_number="+15550100002")
    new = replace(base.senders[0], registered_at_unix_ms=T0 - 2 * DAY)
    config = replace(base, profile=str(profile), senders=(new, old))
    shared = replace(config, store=parse_store(redis_url))
    pool = adopt._numbers(200)

    async def main() -> None:
        async with serving(config) as alone, serving(shared) as a, serving(shared) as b:
            own = rng.sample(pool, 60)
            by_old = rng.sample(own, 10) + rng.sample([r for r in pool if r not in own], 30)
            sends = [(adopt.SENDER, r) for r in own] + [(OLD, r) for r in by_old]
            rng.shuffle(sends)
            at = T0 - DAY
            for sender, rcpt in sends:
                at += rng.randrange(60_000, 1_200_000) if at < T0 - 2 * HOUR else 1_000
                req = adopt._send(rcpt, at)
                req.sender_id = sender
                for stub in (alone, b):
                    assert (await stub.Admit(req)).decision == pb.DECISION_ADMIT
            recipients = own[:40] + by_old[10:25] + adopt._numbers(100, 1000)
            rng.shuffle(recipients)
            start = at + 1_000
            want = await adopt._plan(alone, recipients, start, pb.UTILITY)
            got = await adopt._plan(a, recipients, start, pb.UTILITY)
            assert got == want
            assert 0 not in got and max(got) > start + HOUR  # its own cap binds
            await adopt._replay(b, recipients, got, start, pb.UTILITY)

    uvloop.run(main())


@pytest.mark.usefixtures("patient")
def test_a_plan_for_a_number_in_warm_up_waits_for_pair_bursts_exactly_as_redis(
    redis_url: str, tmp_path: Path
) -> None:
    """A number in warm-up that sent, at the other sidecar, one recipient a send a
    second ago (within its pair-rate burst), another two sends eight seconds ago (a
    burst of 2, past its interval: owed until 12 s after its start) and a third a
    burst of 45 (Meta's pair-rate burst: spent, owed until paid back): the plan of a
    list holding them over Redis gives each the millisecond Redis then admits it at
    (its own count in warm-up being one of its burst's sends), the embedded store's
    plan, and AdmitBatch at those times admits each exactly then, refused a
    millisecond earlier."""
    profile = tmp_path / "warm.toml"
    profile.write_text('extends = "meta-2025"\nname = "warm"\n[warmup]\nenabled = true\n')
    base = adopt._config(mps=60)
    new = replace(base.senders[0], registered_at_unix_ms=T0 - 2 * DAY)
    config = replace(base, profile=str(profile), senders=(new,))
    shared = replace(config, store=parse_store(redis_url))
    once, pair, spent = adopt._numbers(3, 300)
    start = T0 + 10 * HOUR
    burst = [(spent, start - 2_000 + 20 * i) for i in range(45)]
    sends = [(pair, start - 8_000), (pair, start - 7_000), *burst, (once, start - 1_000)]

    async def main() -> None:
        async with serving(config) as alone, serving(shared) as a, serving(shared) as b:
            for i, rcpt in enumerate(adopt._numbers(30)):  # its own count: 30 of 100
                req = adopt._send(rcpt, T0 + 60_000 * i)
                for stub in (alone, b):
                    assert (await stub.Admit(req)).decision == pb.DECISION_ADMIT
            for rcpt, at in sends:
                for stub in (alone, b):
                    assert (await stub.Admit(adopt._send(rcpt, at))).decision == pb.DECISION_ADMIT
            recipients = [once, pair, *adopt._numbers(5, 1000), *adopt._numbers(3, 20), spent]
            want = await adopt._plan(alone, recipients, start, pb.UTILITY)
            got = await adopt._plan(a, recipients, start, pb.UTILITY)
            assert got[0] == start  # within its burst
            assert got[1] == start - 8_000 + 2 * 6_000  # past its interval: paid back
            assert got[-1] == start - 2_000 + 45 * 6_000  # the spent burst paid back
            assert got == want
            await adopt._replay(b, recipients, got, start, pb.UTILITY)

    uvloop.run(main())
