"""The selected engine against a brute-force model (a plain dict of last-counted times).

These run on whichever engine ``tiergate.engine.Engine`` is (compiled, or the
pure-Python twin with ``TIERGATE_NO_EXTENSIONS=1``). Rings may over-state the
24 h count by the arrivals of the one boundary bucket and never under-state
it; the 7 d counts never over-state; ``next_slot_free_at`` is never earlier
than the true time; and no 24 h interval ever sees more distinct counted
recipients admitted than the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from tiergate.engine import NEVER, Engine
from tiergate.engine import constants as c

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000

POOL = [c.recipient_key(str(15_550_000_000 + i)) for i in range(14)]


@dataclass
class Model:
    """Plain truth: last counted time per recipient, slots created, released slots."""

    window: int
    long_window: int
    last: dict[int, int] = field(default_factory=dict)
    slot_ticket: dict[int, int] = field(default_factory=dict)
    # (recipient, slot stamp) -> time the slot was created
    slots: dict[tuple[int, int], int] = field(default_factory=dict)

    def count(self, now: int, window: int) -> int:
        return sum(1 for t in self.last.values() if t > now - window)

    def true_free_at(self, now: int, limit: int) -> int:
        live = sorted(t for t in self.last.values() if t > now - self.window)
        if len(live) < limit:
            return now
        return live[len(live) - limit] + self.window


Op = tuple[str, int, int, int]
OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("send"),
            st.integers(0, len(POOL) - 1),
            st.sampled_from([0, 1, 500, MIN, 17 * MIN, HOUR, 5 * HOUR, DAY, 3 * DAY, 10 * DAY]),
            st.sampled_from([c.F_TEMPLATE, c.F_TEMPLATE, c.F_TEMPLATE | c.F_MARKETING]),
        ),
        st.tuples(
            st.just("release"),
            st.integers(0, 10_000),
            st.integers(0, 3),
            st.just(0),
        ),
        st.tuples(
            st.just("wait"),
            st.integers(1, 10 * DAY),
            st.just(0),
            st.just(0),
        ),
    ),
    min_size=1,
    max_size=70,
)


def _engine() -> Engine:
    e = Engine()
    e.add_scope()
    e.add_number(0, 1, 10**6, 1, 10**6)  # throughput and pair rates never bind here
    return e


@settings(max_examples=150, deadline=None)
@given(ops=OPS, limit=st.integers(1, 6), start=st.integers(-3 * DAY, 3 * DAY))
def test_rings_match_brute_force(ops: list[Op], limit: int, start: int) -> None:
    e = _engine()
    m = Model(e.window_ms, e.long_window_ms)
    now = start
    admitted: list[tuple[int, int, int, int]] = []  # (slot stamp, recipient, prev, time)
    for kind, a, b, flags in ops:
        if kind == "wait":
            now += a
        elif kind == "send":
            now += b
            r = POOL[a]
            d = e.decide(now, 0, 0, r, flags, limit)
            known = m.last.get(r, NEVER)
            # an entry older than the reclaim horizon may have been reclaimed
            assert d[5] == known or (d[5] == NEVER and known < now - e.horizon_ms)
            if d[0] == c.ADMIT:
                already = m.last.get(r, NEVER) > now - m.window
                assert d[3] == (0 if already else 1)
                m.last[r] = now
                m.slot_ticket[r] = 0 if already else d[6]
                if not already:
                    m.slots[(r, d[6])] = now
                    admitted.append((d[6], r, d[5], now))
            else:
                assert d[0] == c.RETRY_LATER and d[1] == c.MESSAGING_LIMIT
                assert d[4] >= limit
                assert d[2] > now
                assert d[2] >= m.true_free_at(now, limit)
        elif admitted:
            tk, r, prev, t = admitted[a % len(admitted)]
            expect = m.slot_ticket.get(r) == tk and t > now - 7 * DAY
            ok = e.release(0, r, tk, prev)
            if t > now - 7 * DAY:
                assert ok == expect
            if ok:
                m.last[r] = prev
                m.slot_ticket[r] = 0
                m.slots.pop((r, tk), None)
        used, free_at, unique_7d, slots_7d = e.usage(0, now, limit)
        true24 = m.count(now, m.window)
        boundary_lo = ((now - m.window) // e.bucket_ms) * e.bucket_ms
        boundary = sum(1 for t in m.last.values() if boundary_lo <= t <= now - m.window)
        assert true24 <= used <= true24 + boundary
        assert free_at >= m.true_free_at(now, limit)
        assert unique_7d <= m.count(now, m.long_window)
        assert slots_7d <= sum(1 for t in m.slots.values() if t > now - m.long_window)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, len(POOL) - 1),
            st.sampled_from([0, 1, 999, MIN, 13 * MIN, 2 * HOUR, 11 * HOUR, DAY - 1, DAY, 2 * DAY]),
            st.booleans(),
        ),
        min_size=1,
        max_size=60,
    ),
    limit=st.integers(1, 5),
    geometry=st.sampled_from(
        [(MIN, DAY, HOUR, 7 * DAY), (7 * MIN, DAY, 5 * HOUR, 7 * DAY), (HOUR, DAY, DAY, 7 * DAY)]
    ),
)
def test_no_24h_interval_exceeds_the_limit(
    steps: list[tuple[int, int, bool]], limit: int, geometry: tuple[int, int, int, int]
) -> None:
    e = Engine(*geometry)
    e.add_scope()
    e.add_number(0, 1, 10**6, 1, 10**6)
    now = 1_700_000_000_000
    log: list[tuple[int, int]] = []  # (admitted at, recipient) of counting admits
    for who, dt, go_back in steps:
        now += dt
        # request clocks may run backwards; the engine clamps per scope
        at = now - HOUR if go_back else now
        d = e.decide(at, 0, 0, POOL[who], c.F_TEMPLATE, limit)
        if d[0] == c.ADMIT:
            log.append((e.scope_now(0), POOL[who]))
    window = geometry[1]
    for start, _ in log:
        distinct = {r for t, r in log if start <= t < start + window}
        assert len(distinct) <= limit


def test_used_counts_a_repeat_once_and_moves_its_time() -> None:
    e = _engine()
    r = POOL[0]
    assert e.decide(0, 0, 0, r, c.F_TEMPLATE, 2)[:5] == (c.ADMIT, c.OK, 0, 1, 1)
    assert e.decide(HOUR, 0, 0, r, c.F_TEMPLATE, 2)[:5] == (c.ADMIT, c.OK, 0, 0, 1)
    assert e.lookup(0, 0, r)[0] == HOUR
    # presence extends to the latest send + 24 h
    assert e.usage(0, DAY + HOUR - 1, 2)[0] == 1
    assert e.usage(0, DAY + HOUR + MIN, 2)[0] == 0


def test_limit_reached_answers_retry_at_the_end_of_the_oldest_bucket() -> None:
    e = _engine()
    e.decide(30_000, 0, 0, POOL[0], c.F_TEMPLATE, 2)
    e.decide(90_000, 0, 0, POOL[1], c.F_TEMPLATE, 2)
    d = e.decide(100_000, 0, 0, POOL[2], c.F_TEMPLATE, 2)
    # oldest needed bucket is [0, 60 s): free once the whole bucket left the 24 h window
    assert d[:3] == (c.RETRY_LATER, c.MESSAGING_LIMIT, MIN + DAY)
    assert e.decide(MIN + DAY - 1, 0, 0, POOL[2], c.F_TEMPLATE, 2)[0] == c.RETRY_LATER
    assert e.decide(MIN + DAY, 0, 0, POOL[2], c.F_TEMPLATE, 2)[0] == c.ADMIT
    assert e.decide(MIN + DAY, 0, 0, POOL[3], c.F_TEMPLATE, 0)[:2] == (
        c.REJECT,
        c.MESSAGING_LIMIT,
    )


def test_release_gives_back_only_an_unrelied_slot_once() -> None:
    e = _engine()
    r = POOL[0]
    d1 = e.decide(1_000, 0, 0, r, c.F_TEMPLATE, 5)
    assert e.usage(0, 1_000, 5)[0] == 1
    assert e.release(0, r, 99, d1[5]) is False  # unknown slot
    assert e.release(0, r, d1[6], d1[5]) is True
    assert e.release(0, r, d1[6], d1[5]) is False  # twice changes nothing
    assert e.usage(0, 1_000, 5)[:1] == (0,)
    assert e.lookup(0, 0, r)[0] == NEVER
    d2 = e.decide(2_000, 0, 0, r, c.F_TEMPLATE, 5)
    d3 = e.decide(3_000, 0, 0, r, c.F_TEMPLATE, 5)  # relies on d2's slot
    assert (d2[3], d3[3], d3[6]) == (1, 0, 0)
    assert e.release(0, r, d2[6], d2[5]) is False
    assert e.usage(0, 3_000, 5)[0] == 1


@given(
    start=st.integers(0, 3 * DAY),
    gaps=st.lists(st.integers(0, 3 * HOUR), min_size=1, max_size=12),
    limit=st.integers(1, 6),
)
@settings(max_examples=150, deadline=None)
def test_retry_at_a_full_limit_is_when_enough_buckets_left(
    start: int, gaps: list[int], limit: int
) -> None:
    # The retry time's scan walks the ring from its oldest counted bucket and
    # wraps at the ring's end; wherever it starts, the answer is the end of the
    # bucket whose leaving brings the count under the limit, plus 24 h.
    e = _engine()
    times, t = [], start
    for gap in gaps:
        t += gap
        times.append(t)
    admitted = []
    for i, t in enumerate(times):
        d = e.decide(t, 0, 0, POOL[i], c.F_TEMPLATE, limit)
        if d[0] == c.ADMIT:
            admitted.append(t)
    now = times[-1]
    live = sorted(x for x in admitted if x // MIN * MIN + MIN + DAY > now)
    d = e.decide(now, 0, 0, POOL[13], c.F_TEMPLATE, limit)
    if len(live) < limit:
        assert d[0] == c.ADMIT
    else:
        needed = live[len(live) - limit]  # this one's bucket must leave the window
        assert d[:3] == (c.RETRY_LATER, c.MESSAGING_LIMIT, needed // MIN * MIN + MIN + DAY)
