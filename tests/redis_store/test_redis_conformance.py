"""The Redis function library gives the reference engine's answers, call for call.

Random walks (hypothesis) over one limit scope with two phone numbers:
decisions one by one and in batches (some rules shadowed), releases of the slots admits created,
windows opened and closed, opt-outs, throughput slowed and taken, pairs held,
usage and the read-only counts (used, 7-day counts, the forecast) read; every
answer from Redis equals the reference engine's. The same
walks run against a three-master Redis Cluster, and through EVALSHA scripts
where Functions are refused.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiergate.engine.constants import (
    ADMIT,
    F_DRY_RUN,
    F_FEP_FREE_FORM,
    F_FEP_PRICING,
    F_MARKETING,
    F_QUALITY_BLOCK,
    F_REPLY_RESTRICTED,
    F_RESTRICTED,
    F_TEMPLATE,
    MARKETING_FREQUENCY,
    MESSAGING_LIMIT,
    OUTSIDE_WINDOW,
    PAIR_RATE,
    QUALITY_PROTECTION,
    RECIPIENT_OPTED_OUT,
    RETRY_LATER,
    SENDER_RESTRICTED,
    SHADOWABLE,
    THROUGHPUT,
    UNLIMITED,
    shadow_flags,
)
from tiergate.engine.reference import Engine
from tiergate.engine.reference.bounds import MAX_KEY
from tiergate.store.location import parse_store
from tiergate.store.redis_counting import NumberSpec, RedisCounting, Row, ScopeSpec, connect
from tiergate.store.redis_reads import scope_counts

pytestmark = pytest.mark.redis

T0 = 1_700_000_000_000
#: A bound for calls in tests that check answers, not time (a busy shared machine).
SLACK = 10.0
RECIPIENTS = (14155550001, 14155550002, 447700900003, 5511900000004, MAX_KEY)
FLAGS = (
    F_TEMPLATE,
    F_TEMPLATE | F_MARKETING,
    F_TEMPLATE | F_MARKETING | F_QUALITY_BLOCK,
    F_TEMPLATE | F_RESTRICTED,
    F_TEMPLATE | F_DRY_RUN,
    F_TEMPLATE | F_FEP_PRICING,
    0,
    F_FEP_FREE_FORM,
    F_REPLY_RESTRICTED,
    F_MARKETING,
)

step = st.one_of(st.integers(0, 50), st.integers(0, 120_000), st.integers(-5_000, 0))
#: Shadow masks: none, every rule, and some rules only (a shadowed rule does not refuse).
SHADOWS = (
    0,
    shadow_flags(SHADOWABLE),
    shadow_flags([MESSAGING_LIMIT]),
    shadow_flags([THROUGHPUT, PAIR_RATE]),
    shadow_flags([OUTSIDE_WINDOW, RECIPIENT_OPTED_OUT, MARKETING_FREQUENCY]),
    shadow_flags([SENDER_RESTRICTED, QUALITY_PROTECTION, MESSAGING_LIMIT]),
)
row = st.tuples(
    st.integers(0, 1),
    st.sampled_from(RECIPIENTS),
    st.sampled_from(FLAGS),
    step,
    st.sampled_from(SHADOWS),
)
op = st.one_of(
    st.tuples(st.just("decide"), st.lists(row, min_size=1, max_size=6)),
    st.tuples(st.just("release"), st.integers(0, 30)),
    st.tuples(
        st.just("open"),
        st.integers(0, 1),
        st.sampled_from(RECIPIENTS),
        st.integers(0, 86_400_000),
        st.integers(0, 259_200_000),
    ),
    st.tuples(st.just("close"), st.integers(0, 1), st.sampled_from(RECIPIENTS)),
    st.tuples(st.just("opt_out"), st.sampled_from(RECIPIENTS), st.booleans()),
    st.tuples(st.just("slow"), st.integers(0, 1), st.integers(0, 5_000)),
    st.tuples(st.just("take"), st.integers(0, 1)),
    st.tuples(
        st.just("hold"), st.integers(0, 1), st.sampled_from(RECIPIENTS), st.integers(0, 9000)
    ),
    st.tuples(
        st.just("usage"),
    ),
    st.tuples(
        st.just("jump"),
        st.one_of(
            st.integers(1, 30).map(lambda h: h * 3_600_000),
            # the edges of the 24 h window, its minute buckets and the 7 d window
            st.sampled_from(
                (86_400_000, 86_399_999, 86_400_001, 86_340_000, 604_800_000, 601_200_000)
            ),
        ),
    ),
)
params = st.fixed_dictionaries(
    {
        "limit": st.integers(0, 4),
        "freq_cap": st.integers(0, 2),
        "tput_burst": st.integers(1, 3),
        "pair_burst": st.integers(1, 2),
        # number 0 in warm-up under the scope's limit: its own cap (UNLIMITED: none)
        "warm_cap": st.sampled_from((UNLIMITED, UNLIMITED, 0, 1, 2)),
    }
)


class Walk:
    """The reference engine and a Redis store driven by the same calls."""

    def __init__(self, store: RedisCounting, p: dict[str, int]) -> None:
        self.store = store
        self.limit = p["limit"]
        self.engine = Engine()
        self.scope = ScopeSpec(
            f"walk-{uuid.uuid4().hex}", freq_cap=p["freq_cap"], freq_window_ms=3_600_000
        )
        s = self.engine.add_scope(p["freq_cap"], 3_600_000)
        warm = p.get("warm_cap", UNLIMITED)
        self.numbers = [
            NumberSpec(f"n{i}", 2_000, p["tput_burst"], 6_000, p["pair_burst"], cap)
            for i, cap in enumerate((warm, UNLIMITED))
        ]
        for i, n in enumerate(self.numbers):
            self.engine.add_number(
                s, n.tput_interval_us, n.tput_burst, n.pair_interval_ms, n.pair_burst
            )
            if n.warm_cap < UNLIMITED:
                self.engine.set_warmup(i, n.warm_cap)
        self.now = T0
        #: (number, recipient, slot, prev_counted) of each admit that made a slot
        self.slots: list[tuple[int, int, int, int]] = []

    async def apply(self, o: tuple[Any, ...]) -> None:
        name = o[0]
        e, s, sc = self.engine, self.store, self.scope
        if name == "decide":
            rows = []
            for num, rcpt, flags, dt, shadow in o[1]:
                self.now = max(0, self.now + dt)
                rows.append(Row(self.numbers[num], rcpt, flags | shadow, self.limit, self.now))
            got = await s.decide(sc, rows)
            want = [
                e.decide(r.now, 0, int(r.number.name[1:]), r.recipient, r.flags, r.limit)
                for r in rows
            ]
            assert got == want, (rows, got, want)
            self.slots += [
                (int(r.number.name[1:]), r.recipient, d.slot, d.prev_counted)
                for r, d in zip(rows, got, strict=True)
                if d.slot
            ]
        elif name == "release":
            if self.slots:
                num, rcpt, slot, prev = self.slots[o[1] % len(self.slots)]
                released = await s.release(sc, rcpt, slot, prev, self.numbers[num])
                assert released == e.release(0, rcpt, slot, prev, num)
        elif name == "open":
            _, num, rcpt, w, f = o
            await s.open_window(sc, f"n{num}", rcpt, self.now + w, self.now + f)
            e.open_window(num, rcpt, self.now + w, self.now + f)
        elif name == "close":
            await s.close_window(sc, f"n{o[1]}", o[2])
            e.close_window(o[1], o[2])
        elif name == "opt_out":
            await s.set_opt_out(sc, o[1], o[2])
            e.set_opt_out(0, o[1], o[2])
        elif name == "slow":
            await s.slow_throughput(sc, self.numbers[o[1]], self.now, o[2])
            e.slow_throughput(o[1], self.now, o[2])
        elif name == "take":
            await s.take_throughput(sc, self.numbers[o[1]], self.now)
            e.take_throughput(o[1], self.now)
        elif name == "hold":
            await s.hold_pair(sc, f"n{o[1]}", o[2], self.now + o[3])
            e.hold_pair(o[1], o[2], self.now + o[3])
        elif name == "usage":
            assert await s.usage(sc, self.now, self.limit) == e.usage(0, self.now, self.limit)
            # the read-only counts (GetSenderState's on the shared store): the same
            # usage, and the forecast the engine's ring gives, for limits either side
            counts = await scope_counts(s, sc, self.now)
            assert counts.now == e.scope_now(0)
            for limit in (0, 1, self.limit, self.limit + 1):
                assert counts.usage(limit) == e.usage(0, self.now, limit)
            for period, periods in ((3_600_000, 24), (60_000, 5), (7_000, 3)):
                assert counts.outlook(period, periods) == e.outlook(0, self.now, period, periods)
        else:
            self.now += o[1]


def run_walk(url: str, p: dict[str, int], ops: list[tuple[Any, ...]], functions: bool) -> None:
    async def main() -> None:
        store = await connect(parse_store(url), timeout=SLACK)
        try:
            assert store.functions  # FUNCTION LOAD took the library
            if not functions:
                store.functions = False
                assert await store.load() == "scripts"
            walk = Walk(store, p)
            for o in ops:
                await walk.apply(o)
            await walk.apply(("usage",))
        finally:
            await store.aclose()

    asyncio.run(main())


WALK = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@WALK
@given(p=params, ops=st.lists(op, max_size=25))
def test_walks_answer_as_the_reference_engine(
    redis_url: str, p: dict[str, int], ops: list[Any]
) -> None:
    run_walk(redis_url, p, ops, functions=True)


@settings(WALK, max_examples=8)
@given(p=params, ops=st.lists(op, max_size=25))
def test_walks_through_scripts_answer_alike(
    redis_url: str, p: dict[str, int], ops: list[Any]
) -> None:
    run_walk(redis_url, p, ops, functions=False)


@settings(WALK, max_examples=8)
@given(p=params, ops=st.lists(op, max_size=25))
def test_walks_on_a_cluster_answer_alike(
    redis_cluster: str, p: dict[str, int], ops: list[Any]
) -> None:
    run_walk(redis_cluster, p, ops, functions=True)


def test_messaging_limit_counts_unique_recipients_and_gives_the_bucket_edge(redis_url: str) -> None:
    """A fixed scenario the walks may miss: a limit of 3, recipients again, the exact
    retry time (end of the oldest minute bucket + 24 h), and the slot free then."""

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        scope, n = ScopeSpec("limit-edge"), NumberSpec("n0", 1, 1, 1, 1)
        engine = Engine()
        engine.add_scope()
        engine.add_number(0, 1, 1, 1, 1)
        times = itertools.count(T0 + 17, 1_000)
        rcpts = [*RECIPIENTS[:3], RECIPIENTS[0], RECIPIENTS[3]]
        rows = [Row(n, r, F_TEMPLATE, 3, next(times)) for r in rcpts]
        got = await store.decide(scope, rows)
        assert [d.decision for d in got] == [ADMIT] * 4 + [RETRY_LATER]
        assert got[4].reason == MESSAGING_LIMIT
        assert got[4].retry_at == (T0 // 60_000 + 1) * 60_000 + 86_400_000
        want = [engine.decide(r.now, 0, 0, r.recipient, r.flags, r.limit) for r in rows]
        assert got == want
        late = Row(n, RECIPIENTS[3], F_TEMPLATE, 3, got[4].retry_at)
        assert (await store.decide(scope, [late]))[0].decision == ADMIT
        await store.aclose()

    asyncio.run(main())


class Pair:
    """One scope and number on Redis and on the reference engine, called alike."""

    def __init__(self, store: RedisCounting, number: NumberSpec) -> None:
        self.store, self.number = store, number
        self.scope = ScopeSpec(f"edge-{uuid.uuid4().hex}")
        self.engine = Engine()
        self.engine.add_scope()
        self.engine.add_number(0, number.tput_interval_us, 1, number.pair_interval_ms, 1)

    async def decide(self, rcpt: int, now: int, limit: int = 5) -> Any:
        got = (
            await self.store.decide(self.scope, [Row(self.number, rcpt, F_TEMPLATE, limit, now)])
        )[0]
        assert got == self.engine.decide(now, 0, 0, rcpt, F_TEMPLATE, limit)
        return got

    async def release(self, rcpt: int, slot: int, prev: int) -> bool:
        done = await self.store.release(self.scope, rcpt, slot, prev)
        assert done == self.engine.release(0, rcpt, slot, prev)
        return done

    async def usage(self, now: int, limit: int = 5) -> Any:
        got = await self.store.usage(self.scope, now, limit)
        assert got == self.engine.usage(0, now, limit)
        return got


def run_pair(url: str, body: Any) -> None:
    async def main() -> None:
        store = await connect(parse_store(url), timeout=SLACK)
        try:
            await body(Pair(store, NumberSpec("n0", 1, 1, 1, 1)))
        finally:
            await store.aclose()

    asyncio.run(main())


def test_a_recipient_counts_again_exactly_24_hours_after(redis_url: str) -> None:
    async def body(p: Pair) -> None:
        r = RECIPIENTS[0]
        assert (await p.decide(r, T0)).counted == 1
        assert (await p.decide(r, T0 + 86_400_000 - 1)).counted == 0
        assert (await p.decide(r, T0 + 2 * 86_400_000 - 2)).counted == 0
        assert (await p.decide(r, T0 + 3 * 86_400_000 - 2)).counted == 1  # 24 h after its last

    run_pair(redis_url, body)


def test_seven_day_counts_take_only_whole_hours_inside(redis_url: str) -> None:
    async def body(p: Pair) -> None:
        t = T0 - T0 % 3_600_000 + 1_800_000  # the middle of an hour
        for i, r in enumerate(RECIPIENTS[:3]):
            await p.decide(r, t + i)
        assert (await p.usage(t + 1)).unique_7d == 3
        assert (await p.usage(t + 604_800_000 - 1_800_001)).unique_7d == 3
        assert (await p.usage(t + 604_800_000 - 1_800_000)).unique_7d == 0
        assert (await p.usage(t + 604_800_000)).slots_7d == 0

    run_pair(redis_url, body)


def test_slot_generations_wrap_as_the_engine_s(redis_url: str) -> None:
    """2 050 slots created and released for one recipient: the stamps (and so the
    tickets' release) follow the engine's generations through their wrap."""

    async def body(p: Pair) -> None:
        r = RECIPIENTS[1]
        for i in range(2_050):
            d = await p.decide(r, T0 + i * 2)
            assert d.slot and await p.release(r, d.slot, d.prev_counted)
        assert not await p.release(r, d.slot, d.prev_counted)  # once only

    run_pair(redis_url, body)


def test_marketing_history_near_time_zero(redis_url: str) -> None:
    """Early times (within the frequency window of 0) count only real marketing sends."""

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        engine = Engine()
        scope = ScopeSpec(f"early-{uuid.uuid4().hex}", freq_cap=2, freq_window_ms=3_600_000)
        engine.add_number(engine.add_scope(2, 3_600_000), 1, 1000, 1, 1000)
        number = NumberSpec("n0", 1, 1000, 1, 1000)
        flags = F_TEMPLATE | F_MARKETING
        try:
            for now in (1_000, 2_000, 3_000):
                got = await store.decide(scope, [Row(number, RECIPIENTS[0], flags, 10, now)])
                assert got == [engine.decide(now, 0, 0, RECIPIENTS[0], flags, 10)], now
            assert got[0].decision == RETRY_LATER  # the third within the hour
        finally:
            await store.aclose()

    asyncio.run(main())


def test_a_call_of_thousands_of_rows(redis_url: str) -> None:
    """One call of 4 500 rows (its reads and writes split in several Redis calls
    each) gives the engine's answers; a second over the same recipients too."""

    async def main() -> None:
        store = await connect(parse_store(redis_url), timeout=SLACK)
        engine = Engine()
        engine.add_number(engine.add_scope(), 1, 1000, 6_000, 1)
        scope = ScopeSpec(f"big-{uuid.uuid4().hex}")
        number = NumberSpec("n0", 1, 1000, 6_000, 1)
        try:
            for start in (T0, T0 + 3_000):
                rows = [
                    Row(number, 14_150_000_000 + i, F_TEMPLATE, 4_000, start + i // 100)
                    for i in range(4_500)
                ]
                got = await store.decide(scope, rows)
                want = [engine.decide(r.now, 0, 0, r.recipient, r.flags, r.limit) for r in rows]
                assert got == want
            assert await store.client.hlen(scope.fixed_keys()[5]) == 4_000
        finally:
            await store.aclose()

    asyncio.run(main())
