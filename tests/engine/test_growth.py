"""Tables grow a few entries per insert, and answer like the reference throughout.

The compiled engine's recipient tables grow as Redis rehashes its dicts: the
bigger slots are allocated, and each insert moves the next few old slots'
entries across; lookups search both while the growth lasts. These tests
drive both engines through many growths of small tables (16 slots and up),
with lookups, writes, releases, opt-outs, reclaims, snapshots and copies
landing in the middle of a growth, and compare every answer and state.
"""

from __future__ import annotations

import gc
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.walks import Sent, walk_step
from tiergate.engine import IMPLEMENTATION, NEVER, DecisionBatch, PyEngine
from tiergate.engine import constants as c

if IMPLEMENTATION != "compiled":
    pytest.skip(
        "differential tests need the compiled engine (TIERGATE_NO_EXTENSIONS=1 or build missing)",
        allow_module_level=True,
    )

from tiergate._native.engine import Engine as CEngine
from tiergate._native.engine import table_bytes_held

DAY = 86_400_000
T0 = 1_780_000_000_000
OUTPUTS = ("decision", "reason", "retry_at", "counted", "used", "prev_counted", "slot")
FLAGS = [c.F_TEMPLATE, c.F_TEMPLATE, c.F_TEMPLATE | c.F_MARKETING, 0, c.F_MARKETING]


#: Hypothesis settings of the random walks.
_WALKS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _pair(pair_interval: int = 1) -> list[Any]:
    engines: list[Any] = [CEngine(), PyEngine()]
    for e in engines:
        e.add_scope(2, DAY)
        e.add_number(0, 1, 1 << 20, pair_interval, 3)
    return engines


def _same_state(engines: list[Any], keys: list[int]) -> None:
    assert engines[0].entries() == engines[1].entries()
    for key in keys:
        assert engines[0].lookup(0, 0, key) == engines[1].lookup(0, 0, key), key
    assert engines[0].snapshot() == engines[1].snapshot()


def test_a_growth_spans_many_inserts_and_lookups_find_entries_on_both_sides() -> None:
    # Single decisions to new recipients, one at a time: the insert that makes
    # a table four fifths full starts its growth and returns with old slots
    # still held; later inserts finish it. Repeats of recipients admitted
    # before (in the old slots or already moved) are found throughout.
    engines = _pair()
    rnd = random.Random(1)
    seen: list[int] = []
    growing_steps = 0
    growths = 0
    was_growing = False
    for i in range(12_000):
        now = T0 + i
        if seen and rnd.random() < 0.4:
            key = rnd.choice(seen)
        else:
            key = 7_000_000 + 13 * len(seen)
            seen.append(key)
        flags = rnd.choice(FLAGS)
        d = [e.decide(now, 0, 0, key, flags, c.UNLIMITED) for e in engines]
        assert d[0] == d[1], i
        growing = engines[0].growth_bytes() > 0
        growing_steps += growing
        growths += growing and not was_growing
        was_growing = growing
        if growing and i % 7 == 0:
            probe = rnd.choice(seen)
            assert engines[0].lookup(0, 0, probe) == engines[1].lookup(0, 0, probe)
    assert growths >= 5  # 16 slots to over ten thousand entries
    assert growing_steps > 2 * growths  # no growth ended within the insert that began it
    _same_state(engines, seen)


def test_snapshots_and_copies_taken_mid_growth_hold_the_whole_table() -> None:
    gc.collect()  # engines of earlier tests are gone
    held = table_bytes_held()
    engines = _pair()
    taken = growing = 0
    for i in range(6_000):
        key = 9_000_000 + i
        d = [
            e.decide(T0 + i, 0, 0, key, c.F_TEMPLATE | c.F_MARKETING, c.UNLIMITED) for e in engines
        ]
        assert d[0] == d[1]
        if engines[0].growth_bytes() == 0:
            continue
        growing += 1
        if growing % 4:
            continue
        taken += 1
        data = engines[0].snapshot()
        assert data == engines[1].snapshot()
        copy = engines[0].copy(CEngine.copy_room(engines[0].copy_sizes()))
        assert copy.growth_bytes() == engines[0].growth_bytes()
        assert copy.snapshot() == data
        # the copy goes on growing, and decides like a restore of the snapshot
        restored = PyEngine.restore(data)
        for j in range(100):
            args = (T0 + i + 1 + j, 0, 0, 8_000_000 + j, c.F_TEMPLATE, c.UNLIMITED)
            assert copy.decide(*args) == restored.decide(*args)
        assert copy.growth_bytes() == 0
        assert copy.snapshot() == restored.snapshot()
        assert CEngine.restore(data).snapshot() == data
        del copy
    assert taken > 20
    engines.clear()  # freed mid-growth or not, every byte comes back
    assert table_bytes_held() == held


def test_reclaim_and_compaction_mid_growth_agree() -> None:
    # Number entries expire an hour after their pair-rate send; reclaims and
    # the compaction at the nominal fill land inside growths.
    engines = _pair(pair_interval=3_600_000)
    rnd = random.Random(3)
    keys = [5_000_000 + 7 * i for i in range(4_000)]
    now = T0
    mid_growth = 0
    for step in range(60):
        batches = [DecisionBatch() for _ in engines]
        for j in range(rnd.choice([50, 200, 333])):
            now += rnd.choice([1, 1, 60_000, 3_600_000])
            key = rnd.choice(keys[: 500 + 60 * step])
            flags = rnd.choice(FLAGS)
            for b in batches:
                b.add(now, 0, 0, key, flags, 400, step * 1_000 + j + 1)
        for e, b in zip(engines, batches, strict=True):
            e.decide_batch(b)
        for name in OUTPUTS:
            assert getattr(batches[0], name) == getattr(batches[1], name), (step, name)
        growing = engines[0].growth_bytes() > 0
        if step % 9 == 4 or (growing and mid_growth < 3):
            now += rnd.choice([DAY, 8 * DAY])
            mid_growth += growing
            assert engines[0].reclaim(now) == engines[1].reclaim(now)
            assert engines[0].growth_bytes() == 0  # a reclaim ends a growth first
        if step % 5 == 0:
            key = rnd.choice(keys)
            for e in engines:
                e.set_opt_out(0, key, True)
            assert engines[0].open_windows(0, now) == engines[1].open_windows(0, now)
    assert mid_growth > 0
    _same_state(engines, keys)


@_WALKS
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2_999),  # recipient index
            st.sampled_from(FLAGS),
            st.sampled_from([1, 1, 1, 1_000, 3_600_000, DAY, 8 * DAY]),  # clock step
            st.sampled_from(["decide", "decide", "decide", "release", "opt", "snap", "reclaim"]),
        ),
        min_size=50,
        max_size=1_500,
    )
)
def test_random_walks_across_growth_boundaries_agree(ops: list[tuple[int, int, int, str]]) -> None:
    engines = _pair(pair_interval=60_000)
    now = T0
    sent: Sent = []
    for idx, flags, step, op in ops:
        now += step
        walk_step(engines, op, idx, 3_000_000 + 11 * idx, flags, now, sent, 900)
    probe = [3_000_000 + 11 * i for i in range(0, 3_000, 37)]
    _same_state(engines, probe)
    assert engines[0].lookup(0, 0, 1)[0] == NEVER


def test_marketing_maps_grow_a_few_records_per_insert_and_agree() -> None:
    # Marketing records (send times of recipients that got marketing) live in a
    # map of their own per scope, which grows as the tables do: the reserve
    # that finds it full allocates the bigger slots and later reserves and
    # decisions move the old records across. The frequency cap reads the
    # records on both sides; snapshots and copies taken mid-growth hold them all.
    engines = _pair()
    rnd = random.Random(5)
    seen: list[int] = []
    growing_steps = growths = taken = 0
    was_growing = False
    for i in range(9_000):
        now = T0 + 1_000 * i
        if seen and rnd.random() < 0.5:
            key = rnd.choice(seen)
        else:
            key = 6_000_000 + 17 * len(seen)
            seen.append(key)
        flags = c.F_TEMPLATE | c.F_MARKETING if rnd.random() < 0.8 else c.F_MARKETING
        d = [e.decide(now, 0, 0, key, flags, c.UNLIMITED) for e in engines]
        assert d[0] == d[1], i
        growing = engines[0].marketing_growth_bytes() > 0
        growing_steps += growing
        growths += growing and not was_growing
        was_growing = growing
        if growing and growing_steps % 50 == 1:
            taken += 1
            data = engines[0].snapshot()
            assert data == engines[1].snapshot()
            copy = engines[0].copy(CEngine.copy_room(engines[0].copy_sizes()))
            assert copy.marketing_growth_bytes() == engines[0].marketing_growth_bytes()
            assert copy.snapshot() == data
            restored = PyEngine.restore(data)
            assert CEngine.restore(data).marketing_growth_bytes() == 0  # restored whole
            for j in range(50):
                args = (now + 1 + j, 0, 0, rnd.choice(seen), c.F_MARKETING, c.UNLIMITED)
                assert copy.decide(*args) == restored.decide(*args)
            assert copy.snapshot() == restored.snapshot()
    assert growths >= 5  # 16 records to several thousand
    assert growing_steps > 2 * growths  # no growth ended within the insert that began it
    assert taken >= 5
    # a reclaim (a rebuild of the table) takes the map whole
    assert engines[0].reclaim(T0 + 30 * DAY) == engines[1].reclaim(T0 + 30 * DAY)
    assert engines[0].marketing_growth_bytes() == 0
    _same_state(engines, seen)


@_WALKS
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1_999),  # recipient index
            st.sampled_from([1, 1, 1, 1_000, 3_600_000, DAY]),  # clock step
            st.sampled_from(["decide", "decide", "decide", "opt", "snap", "copy", "reclaim"]),
        ),
        min_size=50,
        max_size=1_500,
    )
)
def test_random_marketing_walks_across_map_growths_agree(ops: list[tuple[int, int, str]]) -> None:
    engines = _pair(pair_interval=1)
    now = T0
    for k, (idx, step, op) in enumerate(ops):
        now += step
        key = 4_000_000 + 13 * idx
        if op == "opt":
            for e in engines:
                e.set_opt_out(0, key, bool(idx % 2))
        elif op == "snap":
            assert engines[0].snapshot() == engines[1].snapshot()
        elif op == "copy" and idx % 5 == 0:
            # the compiled engine goes on from its own copy
            engines[0] = engines[0].copy(CEngine.copy_room(engines[0].copy_sizes()))
        elif op == "reclaim" and idx % 10 == 0:
            assert engines[0].reclaim(now) == engines[1].reclaim(now)
        else:
            flags = c.F_TEMPLATE | c.F_MARKETING if idx % 3 else c.F_MARKETING
            d = [e.decide(now, 0, 0, key, flags, 900) for e in engines]
            assert d[0] == d[1], k
    _same_state(engines, [4_000_000 + 13 * i for i in range(0, 2_000, 29)])


def test_a_big_marketing_map_grows_into_slots_touched_ahead_and_frees_them() -> None:
    # A map whose next slots get their own mapping (2 MB or more) has them
    # allocated from half full and touched in step with the inserts; the
    # growth takes them. Freed, every byte comes back.
    gc.collect()
    held = table_bytes_held()
    engines = _pair()
    first = 20_000_000
    grew = 0
    for step in range(26):
        batches = [DecisionBatch() for _ in engines]
        for j in range(1_000):
            i = step * 1_000 + j
            for b in batches:
                b.add(T0 + i, 0, 0, first + 3 * i, c.F_TEMPLATE | c.F_MARKETING, c.UNLIMITED, i + 1)
        for e, b in zip(engines, batches, strict=True):
            e.decide_batch(b)
        for name in OUTPUTS:
            assert getattr(batches[0], name) == getattr(batches[1], name), (step, name)
        grew += engines[0].marketing_growth_bytes() > 0
    assert grew > 0  # 32 768 to 65 536 records' slots at 22 938 records
    assert engines[0].snapshot() == engines[1].snapshot()
    engines.clear()
    assert table_bytes_held() == held
