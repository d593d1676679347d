"""The compiled engine and the pure-Python reference give identical answers.

A hypothesis state machine drives both engines with the same random
operations (counted template sends to a small recipient pool, free-form and
marketing sends, some with rules shadowed, repeats, time jumps of 1 ms to 10
days, releases of real and bogus tickets, windows, opt-outs, throughput
pauses, usage reads, outlooks, batches, reclaims, warm-up caps of numbers that
share a scope and their own counts, snapshot + restore across the two
implementations) and compares every answer.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from tiergate.engine import IMPLEMENTATION, NEVER, DecisionBatch, PyEngine
from tiergate.engine import constants as c

if IMPLEMENTATION != "compiled":
    pytest.skip(
        "differential tests need the compiled engine (TIERGATE_NO_EXTENSIONS=1 or build missing)",
        allow_module_level=True,
    )

from tiergate._native.engine import Engine as CEngine

DAY = 86_400_000
POOL = [
    c.recipient_key(d)
    for d in (
        "1",
        "15551230001",
        "15551230002",
        "447700900123",
        "0123",
        "123",
        "999999999999999",
        "4915112345678",
    )
]
LIMITS = [0, 1, 2, 3, 5, c.UNLIMITED]
JUMPS = st.one_of(
    st.sampled_from([1, 999, 60_000, 3_600_000, DAY, 3 * DAY, 10 * DAY]),
    st.integers(1, 10 * DAY),
)
KIND = st.sampled_from(
    [
        c.F_TEMPLATE,
        c.F_TEMPLATE,
        c.F_TEMPLATE | c.F_MARKETING,
        0,
        c.F_FEP_FREE_FORM,
        c.F_TEMPLATE | c.F_FEP_PRICING,
        c.F_MARKETING,
    ]
)
EXTRA = st.sampled_from(
    [0, 0, 0, c.F_RESTRICTED, c.F_REPLY_RESTRICTED, c.F_QUALITY_BLOCK, c.F_DRY_RUN, c.F_FORCE]
)
#: Shadowed reasons: none mostly, else some or all of the shadowable ones.
SHADOW = st.one_of(
    st.just(0),
    st.just(0),
    st.just(c.shadow_flags(c.SHADOWABLE)),
    st.sets(st.sampled_from(c.SHADOWABLE)).map(c.shadow_flags),
)

OUTPUTS = ("decision", "reason", "retry_at", "counted", "used", "prev_counted", "slot")


class EnginesAgree(RuleBasedStateMachine):
    tickets = Bundle("tickets")

    def __init__(self) -> None:
        super().__init__()
        self.engines: list[Any] = []
        self.now = 0
        self.next_ticket = 1

    @initialize(
        start=st.integers(-10 * DAY, 10 * DAY),
        freq_cap=st.integers(0, c.MARKETING_HISTORY),
        freq_window=st.sampled_from([0, 1000, DAY, 9 * DAY]),
        tput=st.sampled_from([(12_500, 1), (1_000, 5), (250_000, 2)]),
        pair=st.sampled_from([(6_000, 1), (1, 1), (10_000, 3), (6_000, 45)]),
        small=st.booleans(),
    )
    def setup(
        self,
        start: int,
        freq_cap: int,
        freq_window: int,
        tput: tuple[int, int],
        pair: tuple[int, int],
        small: bool,
    ) -> None:
        geometry = (1_000, 20_000, 7_000, 100_000) if small else (60_000, DAY, 3_600_000, 7 * DAY)
        self.engines = [CEngine(*geometry), PyEngine(*geometry)]
        self.now = start
        for e in self.engines:
            e.add_scope(freq_cap, freq_window)
            e.add_scope()
            e.add_number(0, tput[0], tput[1], pair[0], pair[1])
            e.add_number(0)
            e.add_number(1, 1, 1, 1, 1)

    def both(self, name: str, *args: Any) -> Any:
        answers = [getattr(e, name)(*args) for e in self.engines]
        assert answers[0] == answers[1], (name, args, answers)
        return answers[0]

    @rule(dt=JUMPS)
    def advance(self, dt: int) -> None:
        self.now += dt

    @rule(dt=st.integers(1, DAY))
    def step_back(self, dt: int) -> None:
        # time that goes backwards is clamped per scope
        self.now -= dt

    @rule(
        target=tickets,
        scope=st.integers(0, 1),
        number=st.integers(0, 2),
        recipient=st.sampled_from(POOL),
        kind=KIND,
        extra=EXTRA,
        shadow=SHADOW,
        limit=st.sampled_from(LIMITS),
        dt=st.integers(0, 5_000),
    )
    def send(
        self,
        scope: int,
        number: int,
        recipient: int,
        kind: int,
        extra: int,
        shadow: int,
        limit: int,
        dt: int,
    ) -> tuple[int, int, int, int, int]:
        self.now += dt
        flags = kind | extra | shadow
        d = self.both("decide", self.now, scope, number, recipient, flags, limit)
        return (scope, recipient, d[6], d[5], number)

    @rule(ticket=consumes(tickets))
    def release(self, ticket: tuple[int, int, int, int, int]) -> None:
        self.both("release", *ticket)

    @rule(ticket=tickets)
    def release_again(self, ticket: tuple[int, int, int, int, int]) -> None:
        self.both("release", *ticket)

    @rule(number=st.integers(0, 2), cap=st.sampled_from([0, 1, 2, 3, 5, c.UNLIMITED]))
    def set_warmup(self, number: int, cap: int) -> None:
        self.both("set_warmup", number, cap)

    @rule(number=st.integers(0, 2))
    def warmup_usage(self, number: int) -> None:
        self.both("warmup_usage", number, self.now)

    @rule(
        ticket=tickets,
        scope=st.integers(0, 1),
        recipient=st.sampled_from(POOL),
        shift=st.sampled_from([0, 1, -1, 1 << 11, -(1 << 11), 10**9]),
    )
    def release_bogus(
        self, ticket: tuple[int, int, int, int, int], scope: int, recipient: int, shift: int
    ) -> None:
        # another recipient's stamp, or a stamp moved by a generation or a millisecond
        self.both("release", scope, recipient, max(0, ticket[2] + shift), NEVER)

    @rule(
        number=st.integers(0, 2),
        recipient=st.sampled_from(POOL),
        window=st.integers(-DAY, 3 * DAY),
        fep=st.one_of(st.none(), st.integers(-DAY, 3 * DAY)),
    )
    def open_window(self, number: int, recipient: int, window: int, fep: int | None) -> None:
        fep_until = NEVER if fep is None else self.now + fep
        self.both("open_window", number, recipient, self.now + window, fep_until)

    @rule(number=st.integers(0, 2), recipient=st.sampled_from(POOL))
    def close_window(self, number: int, recipient: int) -> None:
        self.both("close_window", number, recipient)

    @rule(scope=st.integers(0, 1), recipient=st.sampled_from(POOL), opted=st.booleans())
    def opt_out(self, scope: int, recipient: int, opted: bool) -> None:
        self.both("set_opt_out", scope, recipient, opted)

    @rule(number=st.integers(0, 2), pause=st.integers(0, 120_000))
    def slow_throughput(self, number: int, pause: int) -> None:
        self.both("slow_throughput", number, self.now, pause)

    @rule(number=st.integers(0, 2))
    def take_throughput(self, number: int) -> None:
        self.both("take_throughput", number, self.now)

    @rule(
        number=st.integers(0, 2),
        recipient=st.sampled_from(POOL),
        hold=st.sampled_from([-1_000, 0, 4_000, 16_000, 1_024_000]),
    )
    def hold_pair(self, number: int, recipient: int, hold: int) -> None:
        self.both("hold_pair", number, recipient, self.now + hold)

    @rule(scope=st.integers(0, 1), limit=st.sampled_from(LIMITS))
    def usage(self, scope: int, limit: int) -> None:
        self.both("usage", scope, self.now, limit)

    @rule(
        scope=st.integers(0, 1),
        period=st.sampled_from([1, 1_000, 60_000, 3_600_000, DAY]),
        periods=st.sampled_from([0, 1, 24, 1000]),
    )
    def outlook(self, scope: int, period: int, periods: int) -> None:
        recent, leaving = self.both("outlook", scope, self.now, period, periods)
        assert len(leaving) == periods and min([recent, *leaving]) >= 0

    @rule(number=st.integers(0, 2))
    def open_windows(self, number: int) -> None:
        self.both("open_windows", number, self.now)

    @rule()
    def reclaim(self) -> None:
        self.both("reclaim", self.now)

    @rule(
        scope=st.integers(0, 1),
        freq_cap=st.integers(0, c.MARKETING_HISTORY),
        freq_window=st.sampled_from([0, 1000, DAY, 9 * DAY]),
    )
    def set_scope_params(self, scope: int, freq_cap: int, freq_window: int) -> None:
        self.both("set_scope_params", scope, freq_cap, freq_window)

    @rule(
        number=st.integers(0, 2),
        tput=st.sampled_from([(12_500, 1), (1_000, 5), (1, 1)]),
        pair=st.sampled_from([(6_000, 1), (1, 1), (10_000, 3), (6_000, 45)]),
    )
    def set_number_params(self, number: int, tput: tuple[int, int], pair: tuple[int, int]) -> None:
        self.both("set_number_params", number, tput[0], tput[1], pair[0], pair[1])

    @rule(
        items=st.lists(
            st.tuples(
                st.integers(0, 2_000),
                st.integers(0, 1),
                st.integers(0, 2),
                st.sampled_from(POOL),
                KIND,
                EXTRA,
                SHADOW,
                st.sampled_from(LIMITS),
            ),
            max_size=12,
        ),
        halt=st.booleans(),
    )
    def batch(self, items: list[tuple[int, int, int, int, int, int, int, int]], halt: bool) -> None:
        batches = []
        for e in self.engines:
            b = DecisionBatch()
            b.halt = halt
            ticket = self.next_ticket
            for dt, scope, number, recipient, kind, extra, shadow, limit in items:
                flags = kind | extra | shadow
                b.add(self.now + dt, scope, number, recipient, flags, limit, ticket)
                ticket += 1
            e.decide_batch(b)
            batches.append(b)
        self.next_ticket += len(items)
        for col in (*OUTPUTS, "decided"):
            assert getattr(batches[0], col) == getattr(batches[1], col), col
        # with halt, every row decided but the last is admitted; the rest are not decided
        b = batches[0]
        admitted = [d == c.ADMIT for d in b.decision[: b.decided]]
        if halt:
            assert all(admitted[:-1]) and (b.decided == len(items) or not admitted[-1])
            assert not any(b.decision[b.decided :])
        else:
            assert b.decided == len(items)

    @precondition(lambda self: bool(self.engines))
    @rule(cross=st.booleans())
    def snapshot_restore(self, cross: bool) -> None:
        compiled, python = (e.snapshot() for e in self.engines)
        assert compiled == python
        if cross:
            self.engines = [CEngine.restore(python), PyEngine.restore(compiled)]
        else:
            self.engines = [CEngine.restore(compiled), PyEngine.restore(python)]

    @invariant()
    def same_state(self) -> None:
        if not self.engines:
            return
        self.both("entries")
        for scope in (0, 1):
            self.both("scope_now", scope)
        for recipient in POOL[:3]:
            self.both("lookup", 0, 0, recipient)


EnginesAgree.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEnginesAgree = EnginesAgree.TestCase


def test_busy_scope_grows_and_reclaims_identically() -> None:
    """Many recipients over weeks: growth and reclaim-before-growth happen in step."""
    engines = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope(2, DAY)
        e.add_number(0, 1, 1, 1, 1)
    now = 0
    for i in range(6_000):
        now += 7_919 * (1 + i % 13)
        key = c.recipient_key(str(1_000_000 + (i * 7_717) % 3_001))
        flags = c.F_TEMPLATE | (c.F_MARKETING if i % 3 == 0 else 0)
        answers = [e.decide(now, 0, 0, key, flags, 400) for e in engines]
        assert answers[0] == answers[1], i
        if i % 500 == 0:
            assert engines[0].entries() == engines[1].entries()
            assert engines[0].snapshot() == engines[1].snapshot()
    assert engines[0].usage(0, now, 400) == engines[1].usage(0, now, 400)


def test_scope_reclaim_after_opt_out_and_release_agrees() -> None:
    """Entries that stop being protected (an opt-out lifted, a released slot that
    leaves no counted time) are reclaimed at the next nominal fill exactly as the
    reference reclaims them, also though the compiled engine skips reclaim passes
    while nothing can be expired."""
    engines = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope()
        e.add_number(0, 1, 1 << 20, 1, 1 << 20)
    opted = [c.recipient_key(str(4_930_000_000 + i)) for i in range(20)]
    now = 1_780_000_000_000
    for e in engines:
        for key in opted:
            e.set_opt_out(0, key, True)
    assert engines[0].entries() == engines[1].entries() == 20
    for e in engines:
        for key in opted:
            e.set_opt_out(0, key, False)  # no time left in them: expired
    stamps = []
    for i in range(30):
        now += 1_000
        key = c.recipient_key(str(4_940_000_000 + i))
        answers = [e.decide(now, 0, 0, key, c.F_TEMPLATE, c.UNLIMITED) for e in engines]
        assert answers[0] == answers[1], i
        stamps.append((key, answers[0][6], answers[0][5]))
        assert engines[0].entries() == engines[1].entries(), i
    # releasing a first slot leaves the entry with no counted time: expired too
    for key, slot, prev in stamps[:10]:
        assert [e.release(0, key, slot, prev) for e in engines] == [True, True]
    for i in range(60):
        now += 1_000
        key = c.recipient_key(str(4_950_000_000 + i))
        answers = [e.decide(now, 0, 0, key, c.F_TEMPLATE, c.UNLIMITED) for e in engines]
        assert answers[0] == answers[1], i
        assert engines[0].entries() == engines[1].entries(), i
    assert engines[0].snapshot() == engines[1].snapshot()


def test_number_tables_reclaim_in_place_identically() -> None:
    """Thousands of pair-rate and window entries expiring at different times: the
    compiled engine reclaims them in place (closing the gaps they leave in its
    Robin Hood runs) at the moments the reference reclaims, and every answer,
    entry count and snapshot stays the same."""
    rnd = random.Random(11)
    engines = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope(2, DAY)
        e.add_number(0, 1, 1 << 20, 6_000, 3)
    keys = [c.recipient_key(str(4_917_000_000 + i)) for i in range(9_000)]
    now = 1_780_000_000_000
    for i in range(24_000):
        now += rnd.choice([1, 1, 3, 40, 700, 9_000])
        key = rnd.choice(keys)
        if i % 7 == 0:
            until = now + rnd.choice([5_000, 60_000, DAY])
            for e in engines:
                e.open_window(0, key, until, until if i % 14 == 0 else NEVER)
            continue
        flags = rnd.choice([c.F_TEMPLATE, 0, c.F_TEMPLATE | c.F_MARKETING])
        answers = [e.decide(now, 0, 0, key, flags, c.UNLIMITED) for e in engines]
        assert answers[0] == answers[1], i
        if i % 1_000 == 0:
            assert engines[0].entries() == engines[1].entries(), i
    assert engines[0].snapshot() == engines[1].snapshot()


BAD_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("decide", (0, 2, 0, 5, c.F_TEMPLATE, 1)),
    ("decide", (0, -1, 0, 5, c.F_TEMPLATE, 1)),
    ("decide", (0, 0, 1, 5, c.F_TEMPLATE, 1)),
    ("decide", (0, 0, 0, 0, c.F_TEMPLATE, 1)),
    ("decide", ((1 << 50) + 1, 0, 0, 5, c.F_TEMPLATE, 1)),
    ("release", (3, 5, 1, 0)),
    ("open_window", (0, 0, 10, 10)),
    ("open_window", (4, 5, 10, 10)),
    ("open_window", (0, 5, 1 << 60, 10)),
    ("set_opt_out", (0, 0, True)),
    ("slow_throughput", (0, 0, -1)),
    ("usage", (9, 0, 1)),
    ("reclaim", (-(1 << 60),)),
    ("add_scope", (5, 0)),
    ("add_scope", (1, -1)),
    ("set_scope_params", (3, 1, 1)),
    ("add_number", (7,)),
    ("add_number", (0, 0, 1, 1, 1)),
    ("add_number", (0, 1 << 40, 1 << 20, 1, 1)),
    ("set_number_params", (0, 1, 1, 1, 0)),
    ("set_warmup", (0, -1)),
    ("set_warmup", (0, 1 << 63)),
    ("set_warmup", (3, 1)),
    ("warmup_usage", (5, 0)),
    ("warmup_usage", (0, 1 << 60)),
]


@pytest.mark.parametrize(("name", "args"), BAD_CALLS, ids=[f"{n}{a}" for n, a in BAD_CALLS])
def test_both_refuse_bad_input_alike(name: str, args: tuple[Any, ...]) -> None:
    errors = []
    for cls in (CEngine, PyEngine):
        e = cls()
        e.add_scope()
        e.add_number(0)
        with pytest.raises((ValueError, IndexError)) as info:
            getattr(e, name)(*args)
        errors.append(type(info.value))
        assert e.entries() == 0
    assert errors[0] is errors[1]


@pytest.mark.parametrize(
    "geometry", [(0, 1, 1, 1), (1, 1, 1, 1 << 41), (1, 1 << 21, 1, 1), (10, 5, 3, 2)]
)
def test_both_check_the_geometry_alike(geometry: tuple[int, int, int, int]) -> None:
    outcomes = []
    for cls in (CEngine, PyEngine):
        try:
            e = cls(*geometry)
        except ValueError as exc:
            outcomes.append(str(exc))
        else:
            outcomes.append(e.snapshot())
    assert outcomes[0] == outcomes[1]


def test_compiled_engine_pickles_through_its_snapshot() -> None:
    import copy
    import pickle

    e = CEngine()
    e.add_scope(1, 1_000)
    e.add_number(0)
    e.decide(5, 0, 0, 77, c.F_TEMPLATE | c.F_MARKETING, 10)
    assert pickle.loads(pickle.dumps(e)).snapshot() == e.snapshot()
    assert copy.deepcopy(e).snapshot() == e.snapshot()


def _random_walk(seed: int, steps: int) -> None:
    """Seeded random operations over a larger recipient pool and short windows, so
    tables grow, reclaim and reuse marketing records many times; every answer agrees."""
    import random

    rnd = random.Random(seed)
    geometry = (1_000, 10_000, 5_000, 40_000)
    engines: list[Any] = [CEngine(*geometry), PyEngine(*geometry)]
    for e in engines:
        e.add_scope(2, 7_000)
        e.add_scope(4, 100_000)
        e.add_number(0, 1_000, 3, 50, 2)
        e.add_number(1, 1, 100, 1, 100)
        e.add_number(0, 1, 100, 1, 100)  # shares scope 0 with number 0, in warm-up
        e.set_warmup(2, 40)
    now = rnd.randrange(-(10**6), 10**6)
    pool = rnd.choice([30, 300, 1_500])
    sent: list[tuple[int, int, int, int, int]] = []

    def both(name: str, *args: Any) -> Any:
        answers = [getattr(e, name)(*args) for e in engines]
        assert answers[0] == answers[1], (seed, name, args)
        return answers[0]

    for _ in range(steps):
        now += rnd.choice([0, 1, 7, 100, 999, 3_000, 20_000, 100_000])
        if rnd.random() < 0.05:
            now -= 50_000
        number, r = rnd.randrange(3), rnd.randrange(1, pool)
        scope = number % 2
        op = rnd.random()
        if op < 0.6:
            flags = rnd.randrange(64) | (c.F_TEMPLATE | c.F_MARKETING if rnd.random() < 0.5 else 0)
            limit = rnd.choice([0, 3, 10, 100, 10**6])
            d = both("decide", now, scope, number, r, flags, limit)
            if d[0] == c.ADMIT and d[3]:
                sent.append((scope, r, d[6], d[5], number))
        elif op < 0.65 and sent:
            both("release", *rnd.choice(sent))
        elif op < 0.72:
            both("open_window", number, r, now + rnd.randrange(20_000), now + rnd.randrange(50_000))
        elif op < 0.74:
            both("close_window", number, r)
        elif op < 0.77:
            both("set_opt_out", scope, r, rnd.random() < 0.5)
        elif op < 0.79:
            both("slow_throughput", number, now, rnd.randrange(5_000))
        elif op < 0.86:
            both("usage", scope, now, rnd.choice([0, 3, 10]))
        elif op < 0.87:
            both("reclaim", now)
        elif op < 0.93:
            both("open_windows", number, now)
        elif op < 0.98:
            both("warmup_usage", 2, now)
        elif op < 0.985:
            both("set_warmup", 2, rnd.choice([0, 5, 40, 200, c.UNLIMITED]))
        else:
            data = both("snapshot")
            engines = [CEngine.restore(data), PyEngine.restore(data)]
        both("entries")
        both("lookup", scope, number, r)
    assert engines[0].snapshot() == engines[1].snapshot()


@pytest.mark.parametrize("seed", range(10))
def test_random_walks_agree(seed: int) -> None:
    _random_walk(seed, 4_000)
