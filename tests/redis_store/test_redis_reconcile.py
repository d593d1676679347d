"""The Redis function ``reconcile``: admits a sidecar decided on its own while Redis was
gone, counted as the reference engine counts a forced admit, in order, and never twice.

Random walks (hypothesis): decisions, then a reconciliation of admits (some sent
again, as after a reply that was lost, some in overlapping parts), then more
decisions: every answer from Redis equals the reference engine's, which took the
admits once each as forced decisions (a number's throughput TAT then the later of
its own before them and theirs at their own times).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiergate.engine.constants import ADMIT, F_FORCE, F_MARKETING, F_TEMPLATE
from tiergate.engine.reference.bounds import NEVER
from tiergate.store.location import parse_store
from tiergate.store.redis_counting import Row, connect

from .test_redis_conformance import RECIPIENTS, SLACK, WALK, Walk, op, params

pytestmark = pytest.mark.redis

kept = st.tuples(
    st.integers(0, 1),
    st.sampled_from(RECIPIENTS),
    st.sampled_from((F_TEMPLATE, F_TEMPLATE | F_MARKETING, F_MARKETING, 0)),
    st.integers(-200_000, 200_000),
)


@WALK
@given(
    p=params,
    before=st.lists(op, max_size=10),
    rows=st.lists(kept, min_size=1, max_size=12),
    cut=st.integers(0, 12),
    after=st.lists(op, max_size=10),
)
def test_reconciled_admits_count_as_forced_decisions_once(
    redis_url: str,
    p: dict[str, int],
    before: list[Any],
    rows: list[Any],
    cut: int,
    after: list[Any],
) -> None:
    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        try:
            walk = Walk(store, p)
            for o in before:
                await walk.apply(o)
            kept_rows = []
            e = walk.engine
            tat0 = [n.tput_tat for n in e.numbers]
            own = [NEVER, NEVER]
            for seq, (num, rcpt, flags, dt) in enumerate(rows, 1):
                at = max(0, walk.now + dt)  # times before the scope's clock too
                kept_rows.append((Row(walk.numbers[num], rcpt, flags, 0, at), seq))
                e.decide(at, 0, num, rcpt, flags | F_FORCE, 0)
                # a number's throughput TAT: the later of its own and the rows' (at
                # their times), not the clock's
                own[num] = max(own[num], at * 1000) + walk.numbers[num].tput_interval_us
                e.numbers[num].tput_tat = max(tat0[num], own[num])
            part = kept_rows[: min(cut, len(kept_rows))]
            assert await store.reconcile(walk.scope, "origin-a", part) == len(part)
            # the whole list again (its first part was counted: a reply lost), twice
            assert await store.reconcile(walk.scope, "origin-a", kept_rows) == len(rows) - len(part)
            assert await store.reconcile(walk.scope, "origin-a", kept_rows) == 0
            # both numbers decide at once: their throughput TATs as the engine's
            probe = [(n, RECIPIENTS[n], F_TEMPLATE, 0, 0) for n in (0, 1)]
            await walk.apply(("decide", probe))
            for o in after:
                await walk.apply(o)
            await walk.apply(("usage",))
        finally:
            await store.aclose()

    asyncio.run(main())


def test_a_reconciled_admit_under_a_key_answers_its_repeat(redis_url: str) -> None:
    """An admit kept under an idempotency key: once reconciled, a repeat of the key at
    any sidecar answers that admit and consumes nothing; a key admitted in Redis
    meanwhile keeps its own admit. Sidecars' marks are their own (origins)."""

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        try:
            walk = Walk(store, {"limit": 5, "freq_cap": 0, "tput_burst": 3, "pair_burst": 1})
            n, sc, t = walk.numbers[0], walk.scope, walk.now
            first = Row(n, RECIPIENTS[0], F_TEMPLATE, 0, t, "s:k1", 60_000)
            assert await store.reconcile(sc, "a", [(first, 1)]) == 1
            # another sidecar's sequence numbers are its own: counted too
            other = Row(n, RECIPIENTS[1], F_TEMPLATE, 0, t + 10, "", 0)
            assert await store.reconcile(sc, "b", [(other, 1)]) == 1
            repeat = Row(n, RECIPIENTS[2], F_TEMPLATE, 5, t + 20_000, "s:k1", 60_000)
            (d,) = await store.decide(sc, [repeat])
            assert d.decision == ADMIT and d.counted == 1 and d.used == 1  # the kept admit's
            usage = await store.usage(sc, t + 20_000, 5)
            assert usage.used_24h == 2
        finally:
            await store.aclose()

    asyncio.run(main())
